//! Observations from files: a resource and the objects around it (its execution object, related
//! objects), as a scenario step would hold them, for `lifecycle explain --resource`.

use crate::engine::explain::related_requests_all;
use crate::engine::{ObjectKey, Observation, execution_key};
use crate::rules::Rules;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// Reads every object of a YAML file: several documents, or a `List` with `items`.
pub fn read_objects(path: &Path) -> Result<Vec<Value>, String> {
    let text = crate::rules::read_limited(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).map_err(|e| format!("{}: {e}", path.display()))?;
        match v {
            Value::Null => {}
            Value::Object(ref m) if m.get("items").is_some_and(Value::is_array) => {
                out.extend(m["items"].as_array().into_iter().flatten().cloned());
            }
            Value::Object(_) => out.push(v),
            _ => {
                return Err(format!(
                    "{}: expected YAML mappings (objects)",
                    path.display()
                ));
            }
        }
    }
    for o in &out {
        if ObjectKey::of(o).is_none() {
            return Err(format!(
                "{}: every object needs apiVersion, kind and metadata.name",
                path.display()
            ));
        }
    }
    Ok(out)
}

/// What the controller would observe for `resource` among `objects`: its execution object and
/// the related objects the rules can read (missing ones are read as absent).
pub fn observation(rules: &Rules, resource: Value, objects: &[Value], now: f64) -> Observation {
    let by_key: BTreeMap<ObjectKey, &Value> = objects
        .iter()
        .filter_map(|o| ObjectKey::of(o).map(|k| (k, o)))
        .collect();
    let get = |k: &ObjectKey| by_key.get(k).map(|v| (*v).clone());
    let execution = execution_key(rules, &resource, now)
        .ok()
        .and_then(|k| get(&k));
    let children: Map<String, Value> = rules
        .children
        .iter()
        .zip(crate::engine::child_keys(rules, &resource, now))
        .map(|(c, key)| {
            (
                c.name.clone(),
                key.and_then(|k| get(&k)).unwrap_or(Value::Null),
            )
        })
        .collect();
    let mut related = Map::new();
    for request in related_requests_all(rules, execution.as_ref(), &children) {
        let list = request
            .entries
            .iter()
            .map(|(reference, key)| json!({"ref": reference, "object": key.as_ref().and_then(get)}))
            .collect();
        related.insert(request.name.clone(), Value::Array(list));
    }
    let mut lookups = Map::new();
    for request in crate::engine::lookup_requests_all(rules, &resource, now) {
        let own = ObjectKey::of(&resource);
        let found = std::iter::once(&resource)
            .chain(objects.iter().filter(|o| ObjectKey::of(o) != own))
            .filter(|o| crate::engine::lookup_matches(&request, o))
            .cloned()
            .collect();
        lookups.insert(request.name.clone(), Value::Array(found));
    }
    Observation {
        resource,
        execution,
        children,
        related,
        error: None,
        lookups,
    }
}
