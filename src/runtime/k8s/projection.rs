//! What a watch cache keeps of an object: what the rules read of its kind (as
//! [`crate::rules::WatchedKind::fields`] says, below the top level too), the metadata the engine
//! and the controller read ([`crate::rules::RUNTIME_METADATA`]), and never `managedFields`.
//! Applied to each object before its cache stores it.

use crate::rules::Keep;
use kube::api::DynamicObject;

/// Keeps of an object what the rules read of it. `keep` is the kind's
/// [`Keep::with_runtime_fields`].
pub fn project(o: &mut DynamicObject, keep: &Keep) {
    let m = &mut o.metadata;
    m.managed_fields = None;
    if let Keep::Part { fields, .. } = keep {
        let meta = fields.get("metadata");
        let kept = |name: &str| meta.is_some_and(|k| k.keeps(name));
        if !kept("annotations") {
            m.annotations = None;
        }
        if !kept("creationTimestamp") {
            m.creation_timestamp = None;
        }
        if !kept("deletionGracePeriodSeconds") {
            m.deletion_grace_period_seconds = None;
        }
        if !kept("generateName") {
            m.generate_name = None;
        }
        if !kept("selfLink") {
            m.self_link = None;
        }
    }
    keep.project(&mut o.data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn projection_keeps_the_runtime_metadata_and_the_fields_read() {
        let mut o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {"name": "a", "namespace": "n", "uid": "u", "resourceVersion": "7",
                "labels": {"x": "y"}, "managedFields": [{"manager": "m"}],
                "annotations": {"big": "z"}, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"big": true}, "status": {"conditions": [], "podName": "p"}
        }))
        .expect("object");
        let mut keep = Keep::nothing();
        keep.insert(&[Some("status".into()), Some("conditions".into())], true);
        let mut whole = o.clone();
        project(&mut o, &keep.with_runtime_fields());
        let v = serde_json::to_value(&o).expect("json");
        assert_eq!(
            v,
            json!({"apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
                "metadata": {"name": "a", "namespace": "n", "uid": "u", "resourceVersion": "7",
                    "labels": {"x": "y"}},
                "status": {"conditions": []}})
        );
        project(&mut whole, &Keep::Whole);
        assert_eq!(whole.data["spec"]["big"], true);
        assert!(whole.metadata.managed_fields.is_none());
        assert!(whole.metadata.annotations.is_some());
    }
}
