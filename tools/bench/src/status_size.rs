//! What each part of a terminal status costs: the bytes of each top-level field, of each
//! condition (by type) and of each field of a nested object (`failureDetails.reason`), in the
//! compact JSON the API server stores, averaged over the resources of each terminal phase.

use std::collections::BTreeMap;

use serde_json::Value;

fn len(v: &Value) -> usize {
    serde_json::to_string(v).map(|s| s.len()).unwrap_or(0)
}

/// `"key":value` and the comma after it.
fn member(key: &str, v: &Value) -> usize {
    key.len() + 3 + len(v) + 1
}

/// The parts of one status and their bytes. Top-level parts (`phase`, `conditions[Ready]`,
/// `conditions` for the list's own brackets and key) add up to the whole; nested ones
/// (`failureDetails.reason`) are parts of their parent, listed too.
pub fn parts(status: &Value) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let Some(m) = status.as_object() else {
        return out;
    };
    for (k, v) in m {
        match (k.as_str(), v) {
            ("conditions", Value::Array(items)) => {
                out.push(("conditions".into(), k.len() + 3 + 2 + 1));
                for c in items {
                    let t = c.get("type").and_then(Value::as_str).unwrap_or("?");
                    out.push((format!("conditions[{t}]"), len(c) + 1));
                }
            }
            (_, Value::Object(inner)) => {
                out.push((k.clone(), member(k, v)));
                for (ik, iv) in inner {
                    out.push((format!("{k}.{ik}"), member(ik, iv)));
                }
            }
            _ => out.push((k.clone(), member(k, v))),
        }
    }
    out
}

/// Mean bytes of each part, by phase, over `statuses` (a part a status lacks counts as 0).
pub fn by_phase<'a>(
    statuses: impl IntoIterator<Item = &'a Value>,
) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut sums: BTreeMap<String, (usize, BTreeMap<String, usize>)> = BTreeMap::new();
    for s in statuses {
        let phase = s
            .get("phase")
            .and_then(Value::as_str)
            .unwrap_or("none")
            .to_string();
        let e = sums.entry(phase).or_default();
        e.0 += 1;
        e.1.entry("(whole status)".into()).or_default();
        *e.1.get_mut("(whole status)").expect("entry") += len(s);
        for (p, b) in parts(s) {
            *e.1.entry(p).or_default() += b;
        }
    }
    sums.into_iter()
        .map(|(phase, (n, parts))| {
            let means = parts
                .into_iter()
                .map(|(p, b)| (p, b as f64 / n.max(1) as f64))
                .collect();
            (format!("{phase} ({n})"), means)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_top_level_parts_add_up_to_the_whole() {
        let s = json!({"phase": "Failed", "conditions": [
            {"type": "Ready", "status": "False"}, {"type": "LockReleased", "status": "True"}],
            "failureDetails": {"reason": "TaskFailed", "message": "m"}, "startTime": "t"});
        let p = parts(&s);
        let top: usize = p
            .iter()
            .filter(|(k, _)| !k.contains('.'))
            .map(|(_, b)| b)
            .sum();
        // the outer braces, less the last member's comma
        assert_eq!(top + 2 - 1, len(&s), "{p:?}");
        let nested: usize = p
            .iter()
            .filter(|(k, _)| k.starts_with("failureDetails."))
            .map(|(_, b)| b)
            .sum();
        let fd = p
            .iter()
            .find(|(k, _)| k == "failureDetails")
            .expect("part")
            .1;
        assert_eq!(nested + 2 - 1, len(&s["failureDetails"]));
        assert_eq!(fd, member("failureDetails", &s["failureDetails"]));
        let means = by_phase([&s, &json!({"phase": "Failed"})]);
        assert_eq!(means["Failed (2)"]["phase"], 11.0);
        assert_eq!(means["Failed (2)"]["startTime"], 7.0);
    }
}
