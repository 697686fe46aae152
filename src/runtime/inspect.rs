//! Read-only views of live resources, for `lifecycle explain` and `lifecycle diff`: reads the
//! governed resources, their execution objects and every related object the rules can read,
//! into the [`Observation`] a decision is made on. It writes nothing.

use crate::engine::explain::related_requests_all;
use crate::engine::{ObjectKey, Observation, execution_key};
use crate::rules::Rules;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::path::Path;

/// A connection to the cluster for reading.
pub struct Cluster {
    client: kube::Client,
    kinds: HashMap<(String, String), ApiResource>,
}

impl Cluster {
    /// Connects with the kubeconfig file given (default: `KUBECONFIG`, `~/.kube/config`, or
    /// in-cluster) and its context.
    pub async fn connect(
        kubeconfig: Option<&Path>,
        context: Option<&str>,
    ) -> Result<Cluster, String> {
        let options = KubeConfigOptions {
            context: context.map(str::to_string),
            ..Default::default()
        };
        let config = match kubeconfig {
            Some(path) => {
                let kc =
                    Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => match kube::Config::from_kubeconfig(&options).await {
                Ok(c) => c,
                Err(e) => kube::Config::incluster()
                    .map_err(|_| format!("no cluster to connect to: {e}"))?,
            },
        };
        let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
        Ok(Cluster {
            client,
            kinds: HashMap::new(),
        })
    }

    async fn api(
        &mut self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
    ) -> Result<Api<DynamicObject>, String> {
        let k = (api_version.to_string(), kind.to_string());
        let ar = match self.kinds.get(&k) {
            Some(ar) => ar.clone(),
            None => {
                let ar = super::k8s::resolve(&self.client, api_version, kind, "kind")
                    .await
                    .map_err(|e| e.to_string())?;
                self.kinds.insert(k, ar.clone());
                ar
            }
        };
        Ok(match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        })
    }

    /// The governed resource `namespace/name` (none when it does not exist).
    pub async fn resource(
        &mut self,
        rules: &Rules,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, String> {
        let api = self
            .api(
                &rules.resource.api_version,
                &rules.resource.kind,
                Some(namespace),
            )
            .await?;
        let found = api
            .get_opt(name)
            .await
            .map_err(|e| format!("reading {} {namespace}/{name}: {e}", rules.resource.kind))?;
        Ok(found.map(to_json))
    }

    /// Every governed resource (in `namespace`, or in all namespaces).
    pub async fn resources(
        &mut self,
        rules: &Rules,
        namespace: Option<&str>,
    ) -> Result<Vec<Value>, String> {
        let api = self
            .api(&rules.resource.api_version, &rules.resource.kind, namespace)
            .await?;
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing {}: {e}", rules.resource.kind))?;
        Ok(list.items.into_iter().map(to_json).collect())
    }

    async fn object(&mut self, key: &ObjectKey) -> Result<Option<Value>, String> {
        let ns = (!key.namespace.is_empty()).then_some(key.namespace.as_str());
        let api = self.api(&key.api_version, &key.kind, ns).await?;
        let found = api
            .get_opt(&key.name)
            .await
            .map_err(|e| format!("reading {} {}/{}: {e}", key.kind, key.namespace, key.name))?;
        Ok(found.map(to_json))
    }

    /// What the controller would observe for `resource` under `rules`: its execution object
    /// and every related object the rules can read.
    pub async fn observe(
        &mut self,
        rules: &Rules,
        resource: Value,
        now: f64,
    ) -> Result<Observation, String> {
        let execution = match execution_key(rules, &resource, now) {
            Ok(key) => self.object(&key).await?,
            Err(_) => None,
        };
        let mut children = Map::new();
        for (c, key) in rules
            .children
            .iter()
            .zip(crate::engine::child_keys(rules, &resource, now))
        {
            let object = match key {
                Some(key) => self.object(&key).await?,
                None => None,
            };
            children.insert(c.name.clone(), object.unwrap_or(Value::Null));
        }
        let mut related = Map::new();
        for request in related_requests_all(rules, execution.as_ref(), &children) {
            let mut list = Vec::with_capacity(request.entries.len());
            for (reference, key) in &request.entries {
                let object = match key {
                    Some(k) => self.object(k).await?,
                    None => None,
                };
                list.push(json!({"ref": reference, "object": object}));
            }
            related.insert(request.name.clone(), Value::Array(list));
        }
        let mut lookups = Map::new();
        for request in crate::engine::lookup_requests_all(rules, &resource, now) {
            let api = self
                .api(
                    &request.api_version,
                    &request.kind,
                    request.namespace.as_deref(),
                )
                .await?;
            let selector: Vec<String> = request
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let list = api
                .list(&ListParams::default().labels(&selector.join(",")))
                .await
                .map_err(|e| {
                    format!(
                        "listing {} for lookup `{}`: {e}",
                        request.kind, request.name
                    )
                })?;
            let found = list
                .items
                .into_iter()
                .map(to_json)
                .map(|mut v| {
                    // list items of built-in kinds come without their type
                    if let Some(m) = v.as_object_mut() {
                        m.entry("apiVersion")
                            .or_insert_with(|| Value::String(request.api_version.clone()));
                        m.entry("kind")
                            .or_insert_with(|| Value::String(request.kind.clone()));
                    }
                    v
                })
                .filter(|o| crate::engine::lookup_matches(&request, o))
                .collect();
            lookups.insert(request.name.clone(), Value::Array(found));
        }
        Ok(Observation {
            resource,
            execution,
            children,
            related,
            error: None,
            lookups,
        })
    }
}

fn to_json(o: DynamicObject) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    v
}
