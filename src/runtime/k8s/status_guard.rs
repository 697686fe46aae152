//! The guard against status writes that do not stick.
//!
//! The API server may change a status write: it prunes fields the CRD's schema does not declare
//! (the CRD changed after the rules were checked, or a template computed a mapping with a field
//! the schema lacks). The engine would then see the field missing and write it again, on every
//! reconcile, forever. So after each status write the fields that did not come back as sent are
//! compared; when some did not, the write is remembered with the resourceVersion it produced,
//! reported once (log line, `lifecycle_errors_total{category="StatusNotPersisted"}`, a Warning
//! Event), and the same write is not sent again while the resource stays at that version: the
//! reconcile carries on as if it had been written, so it settles instead of looping.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;

/// Category (metric label, Event reason) of a status write the API server did not keep.
pub(crate) const STATUS_NOT_PERSISTED: &str = "StatusNotPersisted";

/// The last status write per resource that did not stick.
#[derive(Default)]
pub(crate) struct StatusGuard {
    last: Mutex<HashMap<String, Sent>>,
}

struct Sent {
    patch: Value,
    resource_version: String,
    lost: Vec<String>,
}

impl StatusGuard {
    /// Whether sending `patch` to resource `uid` at `resource_version` is the write that was
    /// already sent from there and did not stick.
    pub(crate) fn is_futile(&self, uid: &str, patch: &Value, resource_version: &str) -> bool {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.get(uid)
            .is_some_and(|s| s.resource_version == resource_version && &s.patch == patch)
    }

    /// Records what a write to `uid` produced: `lost` are the fields that did not stick
    /// (empty: it did). Returns true when this loss is new, so that it is reported once.
    pub(crate) fn record(
        &self,
        uid: &str,
        patch: &Value,
        resource_version: &str,
        lost: &[String],
    ) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if lost.is_empty() {
            last.remove(uid);
            return false;
        }
        let new = last.get(uid).is_none_or(|s| s.lost != lost);
        last.insert(
            uid.to_string(),
            Sent {
                patch: patch.clone(),
                resource_version: resource_version.to_string(),
                lost: lost.to_vec(),
            },
        );
        new
    }

    /// Forgets a resource that is gone.
    pub(crate) fn forget(&self, uid: &str) {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }
}

/// The fields of merge patch `patch` that `status` (as the API server returned it) does not hold
/// as sent, as `status.a.b` paths.
pub(crate) fn lost_fields(patch: &Value, status: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    walk(patch, status, "status", &mut out);
    out
}

fn walk(patch: &Value, got: Option<&Value>, at: &str, out: &mut Vec<String>) {
    match patch {
        Value::Object(m) => {
            for (k, p) in m {
                let sub = got.and_then(|g| g.get(k));
                walk(p, sub, &format!("{at}.{k}"), out);
            }
        }
        // removed: must be gone
        Value::Null => {
            if got.is_some_and(|g| !g.is_null()) {
                out.push(at.to_string());
            }
        }
        sent => {
            if got != Some(sent) {
                out.push(at.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pruned_and_changed_fields_are_lost_kept_ones_are_not() {
        let patch = json!({"phase": "Running", "teamNote": "x", "ref": {"name": "a", "uid": "u"}, "old": null});
        let got = json!({"phase": "Running", "ref": {"name": "a"}, "other": 1});
        assert_eq!(
            lost_fields(&patch, Some(&got)),
            vec!["status.teamNote", "status.ref.uid"]
        );
        assert!(lost_fields(&json!({"phase": "Running"}), Some(&got)).is_empty());
        assert_eq!(lost_fields(&json!({"a": 1}), None), vec!["status.a"]);
    }

    #[test]
    fn a_lost_write_is_reported_once_and_not_repeated_at_the_same_version() {
        let g = StatusGuard::default();
        let patch = json!({"teamNote": "x"});
        let lost = vec!["status.teamNote".to_string()];
        assert!(!g.is_futile("u1", &patch, "7"));
        assert!(
            g.record("u1", &patch, "7", &lost),
            "reported the first time"
        );
        assert!(g.is_futile("u1", &patch, "7"));
        assert!(!g.is_futile("u1", &patch, "8"), "the resource changed");
        assert!(!g.is_futile("u1", &json!({"teamNote": "y"}), "7"));
        assert!(!g.is_futile("u2", &patch, "7"));
        assert!(!g.record("u1", &patch, "8", &lost), "the same loss again");
        assert!(!g.record("u1", &patch, "9", &[]));
        assert!(
            !g.is_futile("u1", &patch, "8"),
            "a write that stuck clears it"
        );
        g.record("u1", &patch, "9", &lost);
        g.forget("u1");
        assert!(!g.is_futile("u1", &patch, "9"));
    }
}
