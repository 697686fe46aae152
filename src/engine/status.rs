//! Status arithmetic: setting fields, merging conditions, and the merge patch between two
//! versions of a status.

use serde_json::{Map, Value};

/// Sets `value` at `path` (a list of keys) inside `obj`, creating objects on the way.
pub fn set_path(obj: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for key in parents {
        let entry = cur
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { return };
        cur = next;
    }
    cur.insert(last.clone(), value);
}

/// Removes the field at `path`, if present.
pub fn remove_path(obj: &mut Map<String, Value>, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for key in parents {
        match cur.get_mut(key) {
            Some(Value::Object(next)) => cur = next,
            _ => return,
        }
    }
    cur.remove(last);
}

/// A condition in the standard Kubernetes shape.
pub struct Condition<'a> {
    /// Type.
    pub kind: &'a str,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
}

/// Longest condition message Kubernetes accepts (`metav1.Condition`).
pub const MAX_CONDITION_MESSAGE: usize = 32_768;
/// Longest condition reason Kubernetes accepts.
pub const MAX_CONDITION_REASON: usize = 1_024;

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut with `...`.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Sets a condition in `list`: `lastTransitionTime` moves only when the status flips. Reason and
/// message are cut to the lengths Kubernetes accepts, so a long value can never make the whole
/// status write fail.
pub fn set_condition(list: &mut Vec<Value>, c: Condition<'_>, now: &str, generation: Option<i64>) {
    let c = Condition {
        reason: truncate(&c.reason, MAX_CONDITION_REASON),
        message: truncate(&c.message, MAX_CONDITION_MESSAGE),
        ..c
    };
    let existing = list
        .iter_mut()
        .find(|x| x.get("type").and_then(Value::as_str) == Some(c.kind));
    let transition_time = match &existing {
        Some(x) if x.get("status").and_then(Value::as_str) == Some(c.status.as_str()) => x
            .get("lastTransitionTime")
            .cloned()
            .unwrap_or_else(|| Value::String(now.to_string())),
        _ => Value::String(now.to_string()),
    };
    let mut m = Map::new();
    m.insert("type".into(), Value::String(c.kind.to_string()));
    m.insert("status".into(), Value::String(c.status));
    m.insert("reason".into(), Value::String(c.reason));
    m.insert("message".into(), Value::String(c.message));
    m.insert("lastTransitionTime".into(), transition_time);
    if let Some(g) = generation {
        m.insert("observedGeneration".into(), Value::from(g));
    }
    match existing {
        Some(x) => *x = Value::Object(m),
        None => list.push(Value::Object(m)),
    }
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`, or `None` when they are equal.
/// Lists are replaced whole, as merge patches do.
pub fn merge_patch(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(p) = merge_patch(ov, nv) {
                            patch.insert(k.clone(), p);
                        }
                    }
                    None => {
                        patch.insert(k.clone(), strip_nulls(nv));
                    }
                }
            }
            for k in o.keys() {
                if !n.contains_key(k) {
                    patch.insert(k.clone(), Value::Null);
                }
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        _ => Some(strip_nulls(new)),
    }
}

/// Nulls inside a merge patch mean "remove"; values being added must not carry them.
fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Applies a merge patch to a value (for simulations and tests of the patch itself).
pub fn apply_merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        apply_merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Folds merge patch `b` into merge patch `a`, so that applying `a` once does what applying the
/// old `a` and then `b` did. Returns false, leaving `a` as it was, when one patch cannot say it
/// (`b` merges fields into a value `a` replaces or removes).
pub fn compose_merge_patches(a: &mut Value, b: &Value) -> bool {
    fn composable(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
        b.iter().all(|(k, vb)| match (vb, a.get(k)) {
            (_, None) => true,
            (Value::Object(bo), Some(Value::Object(ao))) => composable(ao, bo),
            (Value::Object(_), Some(_)) => false,
            _ => true,
        })
    }
    fn fold(a: &mut Map<String, Value>, b: &Map<String, Value>) {
        for (k, vb) in b {
            match (vb, a.get_mut(k)) {
                (Value::Object(bo), Some(Value::Object(ao))) => fold(ao, bo),
                _ => {
                    a.insert(k.clone(), vb.clone());
                }
            }
        }
    }
    match (a, b) {
        (Value::Object(ao), Value::Object(bo)) if composable(ao, bo) => {
            fold(ao, bo);
            true
        }
        _ => false,
    }
}

/// Deep-merges `over` into `base` (objects merge, everything else replaces).
pub fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(bv) => deep_merge(bv, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Sets a top-level field of a status.
pub(super) fn set_field(status: &mut Value, field: &str, v: Value) {
    if let Value::Object(m) = status {
        m.insert(field.to_string(), v);
    }
}

/// The status's list of conditions under `field`, made an (empty) list if it is anything else.
pub(super) fn conditions_mut<'v>(status: &'v mut Value, field: &str) -> &'v mut Vec<Value> {
    if !status.is_object() {
        *status = Value::Object(Map::new());
    }
    let Value::Object(m) = status else {
        unreachable!("made an object above")
    };
    let entry = m
        .entry(field.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    match entry {
        Value::Array(a) => a,
        _ => unreachable!("made an array above"),
    }
}

/// The `status` of the condition of type `kind`, if there is one.
pub(super) fn condition_status<'v>(status: &'v Value, field: &str, kind: &str) -> Option<&'v str> {
    status
        .get(field)?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))?
        .get("status")?
        .as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn composed_patches_do_what_the_two_did_in_turn() {
        let targets = [
            json!({}),
            json!({"phase": "Pending", "ref": {"name": "a", "ns": "x"}, "list": [1, 2]}),
            json!({"ref": 3, "deep": {"a": {"b": 1}}}),
        ];
        let patches = [
            json!({"phase": "Running", "ref": {"name": "b"}}),
            json!({"ref": null, "list": [3]}),
            json!({"ref": {"ns": null, "extra": true}, "deep": {"a": {"c": 2}}}),
            json!({"deep": {"a": null}, "phase": null}),
            json!({"deep": 5}),
        ];
        let mut composed_some = 0;
        let mut refused_some = 0;
        for t in &targets {
            for a in &patches {
                for b in &patches {
                    let mut twice = t.clone();
                    apply_merge_patch(&mut twice, a);
                    apply_merge_patch(&mut twice, b);
                    let mut ab = a.clone();
                    if compose_merge_patches(&mut ab, b) {
                        composed_some += 1;
                        let mut once = t.clone();
                        apply_merge_patch(&mut once, &ab);
                        assert_eq!(once, twice, "{t} + {a} + {b} as {ab}");
                    } else {
                        refused_some += 1;
                        assert_eq!(&ab, a, "a refused fold leaves the first patch alone");
                    }
                }
            }
        }
        assert!(composed_some > 0 && refused_some > 0);
    }

    #[test]
    fn merge_patch_round_trips() {
        let cases = [
            (json!({}), json!({"a": 1})),
            (
                json!({"a": 1, "b": {"c": 2}}),
                json!({"b": {"c": 3, "d": 4}}),
            ),
            (json!({"l": [1, 2]}), json!({"l": [2]})),
            (json!({"a": {"b": 1}}), json!({"a": 5})),
        ];
        for (old, new) in cases {
            let patch = merge_patch(&old, &new).unwrap();
            let mut applied = old.clone();
            apply_merge_patch(&mut applied, &patch);
            assert_eq!(applied, new, "patch {patch}");
        }
        assert_eq!(merge_patch(&json!({"a": 1}), &json!({"a": 1})), None);
    }

    #[test]
    fn conditions_keep_transition_time_unless_status_flips() {
        let mut list = Vec::new();
        let c = |s: &str, r: &str| Condition {
            kind: "Ready",
            status: s.into(),
            reason: r.into(),
            message: String::new(),
        };
        set_condition(&mut list, c("Unknown", "A"), "t1", Some(1));
        set_condition(&mut list, c("Unknown", "B"), "t2", Some(2));
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["lastTransitionTime"], "t1");
        assert_eq!(list[0]["reason"], "B");
        assert_eq!(list[0]["observedGeneration"], 2);
        set_condition(&mut list, c("True", "C"), "t3", None);
        assert_eq!(list[0]["lastTransitionTime"], "t3");
    }

    #[test]
    fn long_condition_messages_are_cut_to_what_kubernetes_accepts() {
        let mut list = Vec::new();
        let long = "é".repeat(40_000);
        set_condition(
            &mut list,
            Condition {
                kind: "LockReleased",
                status: "True".into(),
                reason: "R".repeat(2_000),
                message: long,
            },
            "t",
            None,
        );
        let message = list[0]["message"].as_str().unwrap();
        assert!(message.len() <= MAX_CONDITION_MESSAGE && message.ends_with("..."));
        assert!(list[0]["reason"].as_str().unwrap().len() <= MAX_CONDITION_REASON);
    }

    #[test]
    fn paths_are_set_and_removed() {
        let mut m = Map::new();
        set_path(&mut m, &["a".into(), "b".into()], json!(1));
        set_path(&mut m, &["a".into(), "c".into()], json!(2));
        assert_eq!(Value::Object(m.clone()), json!({"a": {"b": 1, "c": 2}}));
        remove_path(&mut m, &["a".into(), "b".into()]);
        remove_path(&mut m, &["x".into(), "y".into()]);
        assert_eq!(Value::Object(m), json!({"a": {"c": 2}}));
    }
}
