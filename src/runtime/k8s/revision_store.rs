//! The rules revisions kept in the cluster, so that pinned resources (`rollout`) keep their
//! revision across restarts and failovers.
//!
//! The controller that acts (the leader) keeps one ConfigMap per loaded revision in its own
//! namespace, named after the revision and labelled with the scope it governs (its component,
//! namespace and shard, hashed: controllers of other scopes never touch it), holding the rules
//! file and its templates ([`crate::runtime::stored_rules`]). At start, before any reconcile, it
//! lists them once and compiles each into [`Revisions`]; afterwards it writes each revision it
//! loads and deletes each one no resource in its watch cache is pinned to any more, following
//! what [`Revisions`] holds. Nothing is read per decision.
//!
//! A resource pinned to a revision that is not loaded (its ConfigMap was deleted, or no longer
//! compiles) is decided by the latest rules, with a `RulesRevisionUnavailable` Warning Event
//! once per resource ([`report_unavailable`]).

use super::Ctx;
use super::events::{Event, EventType};
use crate::rules::Rules;
use crate::runtime::revisions::Revisions;
use crate::runtime::stored_rules::{self, Stored};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, ObjectMeta, PostParams};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Label of every stored revision.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "lifecycle-engine");
/// Label: the hashed scope (component, namespace, shard) of the controller that stores it.
const SCOPE_LABEL: &str = "lifecycle-engine/scope";
/// Label: the revision.
const REVISION_LABEL: &str = "lifecycle-engine/revision";
/// Annotation: the scope, readable.
const SCOPE_ANNOTATION: &str = "lifecycle-engine/scope";
/// How often the copies are checked again after a failed write or delete.
const RETRY: Duration = Duration::from_secs(30);

/// Where and how revisions are stored.
#[derive(Debug, Clone)]
pub struct Config {
    /// The controller's own namespace.
    pub namespace: String,
    /// The rules file (stored revisions report problems under its name).
    pub rules_file: PathBuf,
    /// The setting overrides every revision is compiled with (the deployment's).
    pub overrides: Vec<(String, String)>,
}

/// What tells one controller scope's stored revisions from another's.
#[derive(Debug, PartialEq, Eq)]
struct Scope {
    /// Name of a revision's ConfigMap, without the revision.
    prefix: String,
    /// The value of the scope label: a hash of `described`.
    scope: String,
    /// The scope, readable.
    described: String,
}

impl Scope {
    /// The scope of the controller of `component` governing `namespace` (every namespace when
    /// `None`) as shard `shard`.
    fn of(component: &str, namespace: Option<&str>, shard: Option<(u32, u32)>) -> Scope {
        let described = format!(
            "component={component}, namespace={}, shard={}",
            namespace.unwrap_or("*"),
            shard.map_or("*".to_string(), |(i, n)| format!("{i}/{n}"))
        );
        let scope: String = Sha256::digest(described.as_bytes())
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        // the deployed case (every namespace, one shard) gets the readable name
        let prefix = if namespace.is_none() && shard.is_none() {
            format!("{component}-rules-")
        } else {
            format!("{component}-rules-{scope}-")
        };
        Scope {
            prefix,
            scope,
            described,
        }
    }
}

/// The stored revisions of one controller scope.
pub struct RevisionStore {
    api: Api<ConfigMap>,
    config: Config,
    /// Name of a revision's ConfigMap, without the revision.
    prefix: String,
    scope: String,
    described: String,
}

impl RevisionStore {
    /// The store of the controller of `component` governing `namespace` (every namespace when
    /// `None`) as shard `shard`, through `client`.
    pub fn new(
        client: kube::Client,
        config: Config,
        component: &str,
        namespace: Option<&str>,
        shard: Option<(u32, u32)>,
    ) -> RevisionStore {
        let Scope {
            prefix,
            scope,
            described,
        } = Scope::of(component, namespace, shard);
        RevisionStore {
            api: Api::namespaced(client, &config.namespace),
            config,
            prefix,
            scope,
            described,
        }
    }

    /// The name of `revision`'s ConfigMap.
    pub fn name(&self, revision: &str) -> String {
        format!("{}{revision}", self.prefix)
    }

    fn selector(&self) -> String {
        format!(
            "{}={},{SCOPE_LABEL}={}",
            MANAGED_BY.0, MANAGED_BY.1, self.scope
        )
    }

    /// Lists the stored revisions once and loads each into `revisions` (the latest's is already
    /// there); returns the revisions stored. `None` when the ConfigMaps cannot be listed (a
    /// missing permission): the controller runs on, with its revisions in memory only.
    pub async fn restore(&self, revisions: &Revisions, latest: &Rules) -> Option<BTreeSet<String>> {
        let list = match self.list().await {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(error = %e, "rules revisions are kept in memory only: resources pinned to an older revision follow the latest rules after a restart");
                revisions.set_missing_reason(format!(
                    "revisions are kept in this process's memory only, and it never loaded this one: {e}"
                ));
                return None;
            }
        };
        revisions.set_missing_reason(format!(
            "no ConfigMap in namespace {} holds it (those of this controller are labelled {SCOPE_LABEL}={})",
            self.config.namespace, self.scope
        ));
        let mut stored = BTreeSet::new();
        for cm in list {
            let Some(revision) = cm
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL))
                .cloned()
            else {
                continue;
            };
            stored.insert(revision.clone());
            if revision == latest.revision {
                continue;
            }
            let name = cm.metadata.name.clone().unwrap_or_default();
            match self.compile(&cm, &revision) {
                Ok((rules, sources)) => {
                    tracing::info!(revision = %revision, configmap = %name, "rules revision restored");
                    revisions.keep(&Arc::new(rules), Some(Arc::new(sources)));
                }
                Err(why) => {
                    tracing::warn!(revision = %revision, configmap = %name, error = %why, "a stored rules revision cannot be loaded; resources pinned to it follow the latest rules");
                    revisions.unavailable(
                        &revision,
                        format!("its ConfigMap {}/{name} {why}", self.config.namespace),
                    );
                }
            }
        }
        Some(stored)
    }

    /// The stored ConfigMaps of this scope; a refusal is final, other failures are tried again
    /// a few times (about half a minute in all).
    async fn list(&self) -> Result<Vec<ConfigMap>, String> {
        let params = ListParams::default().labels(&self.selector());
        let mut attempt = 0;
        loop {
            match self.api.list(&params).await {
                Ok(list) => return Ok(list.items),
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    return Err(format!(
                        "cannot list ConfigMaps in namespace {} ({}): grant the controller list, create and delete on configmaps there (deploy/base/rbac.yaml does), or name another namespace with --revisions-namespace",
                        self.config.namespace, s.message
                    ));
                }
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "cannot list the stored rules revisions; trying again");
                    tokio::time::sleep(Duration::from_secs(1 << attempt.min(4))).await;
                }
                Err(e) => {
                    return Err(format!(
                        "cannot list ConfigMaps in namespace {}: {e}",
                        self.config.namespace
                    ));
                }
            }
        }
    }

    /// The rules a stored ConfigMap holds, checked to be `revision`.
    fn compile(
        &self,
        cm: &ConfigMap,
        revision: &str,
    ) -> Result<(Rules, crate::rules::Sources), String> {
        let stored = Stored {
            data: cm.data.clone().unwrap_or_default(),
            binary: cm
                .binary_data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
        };
        let sources = stored_rules::decode(&stored, &self.config.rules_file)?;
        let rules = Rules::compile(&sources, &self.config.overrides)
            .map_err(|e| format!("no longer compiles: {e}"))?;
        if rules.revision != revision {
            return Err(format!(
                "is damaged: it holds revision {}, not {revision}",
                rules.revision
            ));
        }
        Ok((rules, sources))
    }

    /// Keeps the stored ConfigMaps following `revisions` until the process ends: writes every
    /// loaded revision not stored yet, deletes every stored one neither loaded nor pinned to by
    /// a resource (once a prune has seen the watch cache). `stored` is what [`Self::restore`]
    /// found.
    pub async fn follow(self: Arc<Self>, revisions: Arc<Revisions>, mut stored: BTreeSet<String>) {
        let mut unstorable = BTreeSet::new();
        loop {
            let changed = revisions.changed();
            let (loaded, used) = revisions.snapshot();
            let mut failed = false;
            for (revision, kept) in &loaded {
                if stored.contains(revision) || unstorable.contains(revision) {
                    continue;
                }
                let Some(sources) = &kept.sources else {
                    continue;
                };
                match stored_rules::encode(sources) {
                    Ok(data) => match self.create(revision, data).await {
                        Ok(()) => {
                            stored.insert(revision.clone());
                        }
                        Err(e) => {
                            failed = true;
                            tracing::warn!(revision = %revision, error = %e, "cannot store the rules revision; trying again");
                        }
                    },
                    Err(why) => {
                        tracing::warn!(revision = %revision, error = %why, "the rules revision is too large to store: it is kept in memory only");
                        unstorable.insert(revision.clone());
                    }
                }
            }
            if let Some(used) = used {
                let unused: Vec<String> = stored
                    .iter()
                    .filter(|r| !used.contains(*r) && !loaded.iter().any(|(l, _)| l == *r))
                    .cloned()
                    .collect();
                for revision in unused {
                    let name = self.name(&revision);
                    let deleted = match self.api.delete(&name, &DeleteParams::default()).await {
                        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                        other => other.map(|_| ()),
                    };
                    match deleted {
                        Ok(()) => {
                            tracing::info!(revision = %revision, configmap = %name, "stored rules revision deleted: no resource is pinned to it");
                            stored.remove(&revision);
                        }
                        Err(e) => {
                            failed = true;
                            tracing::warn!(revision = %revision, error = %e, "cannot delete the stored rules revision; trying again");
                        }
                    }
                }
            }
            if failed {
                tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep(RETRY) => {}
                }
            } else {
                changed.await;
            }
        }
    }

    async fn create(&self, revision: &str, data: Stored) -> Result<(), kube::Error> {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name(revision)),
                namespace: Some(self.config.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                    (SCOPE_LABEL.to_string(), self.scope.clone()),
                    (REVISION_LABEL.to_string(), revision.to_string()),
                ])),
                annotations: Some(BTreeMap::from([(
                    SCOPE_ANNOTATION.to_string(),
                    self.described.clone(),
                )])),
                ..ObjectMeta::default()
            },
            data: (!data.data.is_empty()).then_some(data.data),
            binary_data: (!data.binary.is_empty()).then(|| {
                data.binary
                    .into_iter()
                    .map(|(k, v)| (k, ByteString(v)))
                    .collect()
            }),
            ..ConfigMap::default()
        };
        match self.api.create(&PostParams::default(), &cm).await {
            Ok(_) => {
                tracing::info!(revision = %revision, configmap = %self.name(revision), "rules revision stored");
                Ok(())
            }
            // stored before (by this scope's earlier process): the name is the revision
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Tells, once per resource and revision, that the revision `obj` is pinned to is unavailable
/// and the latest rules decide it: a Warning Event on the resource, and the log.
pub(crate) async fn report_unavailable(
    ctx: &Ctx,
    obj: &DynamicObject,
    (revision, why): &(String, String),
    latest: &str,
) {
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    if !ctx.rules.revisions().first_report(&uid, revision) {
        return;
    }
    let label = format!(
        "{}/{}",
        obj.metadata.namespace.as_deref().unwrap_or_default(),
        obj.metadata.name.as_deref().unwrap_or_default()
    );
    let note = format!(
        "pinned to rules revision {revision} by the rollout policy, which cannot be loaded ({why}); decided by the latest rules, revision {latest}"
    );
    tracing::warn!(resource = %label, revision = %revision, latest = %latest, reason = %why, "the rules revision a resource is pinned to is unavailable; the latest rules decide it");
    let event = Event {
        type_: EventType::Warning,
        reason: "RulesRevisionUnavailable",
        note: &truncated(note, 1000),
        action: "Decide",
    };
    let reference = kube::Resource::object_ref(obj, &ctx.resource_ar);
    ctx.metrics.api("create", "Event");
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(error = %e, "cannot record the RulesRevisionUnavailable Event");
        ctx.metrics.error("EventFailed");
    }
}

fn truncated(mut s: String, at_most: usize) -> String {
    if s.len() > at_most {
        let mut end = at_most;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_keep_controllers_apart_and_the_deployed_one_has_readable_names() {
        let deployed = Scope::of("wfe-controller", None, None);
        assert_eq!(deployed.prefix, "wfe-controller-rules-");
        assert_eq!(
            deployed.described,
            "component=wfe-controller, namespace=*, shard=*"
        );
        let others = [
            Scope::of("other-controller", None, None),
            Scope::of("wfe-controller", Some("team-a"), None),
            Scope::of("wfe-controller", Some("team-b"), None),
            Scope::of("wfe-controller", None, Some((0, 2))),
            Scope::of("wfe-controller", None, Some((1, 2))),
        ];
        let mut labels: Vec<&str> = others.iter().map(|s| s.scope.as_str()).collect();
        labels.push(&deployed.scope);
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), others.len() + 1, "one label per scope");
        for s in &others[1..] {
            // a narrowed controller's names carry its scope, so they never collide
            assert_eq!(s.prefix, format!("wfe-controller-rules-{}-", s.scope));
            assert_eq!(s.scope.len(), 12);
            assert!(s.scope.chars().all(|c| c.is_ascii_hexdigit()), "{s:?}");
        }
        assert_eq!(Scope::of("wfe-controller", Some("team-a"), None), others[1]);
    }
}
