//! The governed kind's CustomResourceDefinition, read once at start so that the rules (at start
//! and on every reload) are checked against the schema the API server really prunes with.

use super::resolve;
use crate::rules::{KindSchema, Rules, find_kind_schema};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;

/// The schema of the rules' governed kind from the cluster's CRD; `None` (with a warning) when
/// it cannot be read, so that a missing permission never stops the controller.
pub async fn governed_schema(client: &Client, rules: &Rules) -> Option<KindSchema> {
    let res = &rules.resource;
    let ar = resolve(client, &res.api_version, &res.kind, "resource")
        .await
        .ok()?;
    if ar.group.is_empty() {
        return None;
    }
    let name = format!("{}.{}", ar.plural, ar.group);
    let crd = match Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt(&name)
        .await
    {
        Ok(Some(crd)) => crd,
        // a kind served without a CRD (an aggregated API): nothing to check against
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(crd = %name, error = %e, "cannot read the governed kind's CustomResourceDefinition; the rules are not checked against its schema (grant `get` on it)");
            return None;
        }
    };
    let doc = serde_json::to_value(&crd).ok()?;
    match find_kind_schema(
        &[(format!("the cluster's CRD {name}"), doc)],
        &res.api_version,
        &res.kind,
    ) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(crd = %name, error = %e, "the governed kind's CustomResourceDefinition does not fit the rules");
            None
        }
    }
}
