//! What the controller's caches hold of each kind the rules read: the mean JSON size of the
//! objects in the cluster whole (without managedFields), kept to the top-level fields the
//! rules read, and projected as the controller projects them (`Rules::watched_kinds`, the
//! fields below the top level too). Computed from the objects listed, independent of the
//! machine's load.

use std::collections::BTreeMap;

use anyhow::Result;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use lifecycle_engine::rules::{Keep, Rules};
use serde::Serialize;
use serde_json::Value;

/// Mean JSON bytes of one kind's objects, three ways.
#[derive(Serialize, Clone, Debug, Default)]
pub struct CachedSize {
    pub objects: usize,
    /// Whole, without managedFields.
    pub whole_bytes_mean: f64,
    /// Only the top-level fields the rules read (and all of metadata).
    pub top_level_bytes_mean: f64,
    /// As the controller's cache keeps it.
    pub projected_bytes_mean: f64,
}

/// The top-level fields `keep` names, each whole, and all of metadata.
fn top_level(keep: &Keep) -> Keep {
    match keep {
        Keep::Whole => Keep::Whole,
        Keep::Part { fields, .. } => {
            let mut k = Keep::nothing();
            for f in fields.keys().map(String::as_str).chain(["metadata"]) {
                k.insert(&[Some(f.to_string())], true);
            }
            k.with_runtime_fields()
        }
    }
}

fn len(v: &Value) -> usize {
    serde_json::to_string(v).map(|s| s.len()).unwrap_or(0)
}

/// The sizes of the first page (up to 500) of each watched kind's objects in `namespace`.
pub async fn measure(
    client: &Client,
    rules: &Rules,
    namespace: &str,
) -> Result<BTreeMap<String, CachedSize>> {
    let mut out = BTreeMap::new();
    for w in rules.watched_kinds() {
        let (group, version) = w
            .api_version
            .split_once('/')
            .unwrap_or(("", &w.api_version));
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &w.kind));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
        let items = api.list(&ListParams::default().limit(500)).await?.items;
        let n = items.len().max(1) as f64;
        let (top, projected) = (top_level(&w.fields), w.fields.with_runtime_fields());
        let mut size = CachedSize {
            objects: items.len(),
            ..Default::default()
        };
        for mut o in items {
            o.metadata.managed_fields = None;
            let whole = serde_json::to_value(&o)?;
            let (mut t, mut p) = (whole.clone(), whole.clone());
            top.project(&mut t);
            projected.project(&mut p);
            size.whole_bytes_mean += len(&whole) as f64 / n;
            size.top_level_bytes_mean += len(&t) as f64 / n;
            size.projected_bytes_mean += len(&p) as f64 / n;
        }
        out.insert(w.kind.clone(), size);
    }
    Ok(out)
}
