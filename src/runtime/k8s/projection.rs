//! What a watch cache keeps of an object: the fields the rules read of its kind (as
//! [`crate::rules::WatchedKind::fields`] lists them), and never `managedFields`. Applied to each
//! object before its cache stores it.

use kube::api::DynamicObject;

/// Keeps of an object what the rules read of it.
pub(super) fn project(o: &mut DynamicObject, fields: &crate::rules::FieldReads) {
    o.metadata.managed_fields = None;
    if let (Some(keep), Some(data)) = (fields, o.data.as_object_mut()) {
        data.retain(|k, _| keep.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn projection_keeps_metadata_and_the_fields_read() {
        let mut o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {"name": "a", "namespace": "n", "uid": "u", "resourceVersion": "7",
                "labels": {"x": "y"}, "managedFields": [{"manager": "m"}]},
            "spec": {"big": true}, "status": {"conditions": []}
        }))
        .expect("object");
        project(&mut o, &Some(["status".to_string()].into()));
        let v = serde_json::to_value(&o).expect("json");
        assert_eq!(v["metadata"]["labels"]["x"], "y");
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        assert!(v["metadata"].get("managedFields").is_none(), "{v}");
        assert!(v.get("spec").is_none(), "{v}");
        assert_eq!(v["status"], json!({"conditions": []}));
        let mut whole = o.clone();
        whole.data["spec"] = json!(1);
        project(&mut whole, &None);
        assert_eq!(whole.data["spec"], 1);
    }
}
