//! JSON documents as template values without converting them up front.
//!
//! [`lazy`] wraps a shared JSON document as a minijinja object: a map or list is read in place,
//! and only what a template reads is converted (a scalar when it is read, a map or list as
//! another such object pointing further into the same document). The values behave exactly as
//! `Value::from_serialize` of the same JSON would: the same kinds and number types, `none` for
//! null, undefined for a missing key, maps iterated (and printed, serialized, compared) in key
//! order as minijinja's own maps are, lists with their length and negative indexes.

use minijinja::Value as JValue;
use minijinja::value::{Enumerator, Object, ObjectRepr};
use serde_json::Value;
use std::sync::Arc;

/// The template value of `doc`: scalars converted, maps and lists read in place.
pub fn lazy(doc: Arc<Value>) -> JValue {
    match &*doc {
        Value::Object(_) | Value::Array(_) => JValue::from_object(Node {
            doc,
            path: Box::new([]),
        }),
        scalar => scalar_value(scalar),
    }
}

/// The template value of a JSON scalar, as `Value::from_serialize` gives it (a map or list
/// gives `none`: callers pass scalars only).
fn scalar_value(v: &Value) -> JValue {
    match v {
        Value::Bool(b) => JValue::from(*b),
        Value::Number(n) => {
            // serde_json serializes a non-negative integer as u64, a negative one as i64, and
            // anything else as f64
            if let Some(u) = n.as_u64() {
                JValue::from(u)
            } else if let Some(i) = n.as_i64() {
                JValue::from(i)
            } else {
                JValue::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => JValue::from(s.as_str()),
        Value::Null | Value::Object(_) | Value::Array(_) => JValue::from(()),
    }
}

/// A map or list inside a shared JSON document: the document, and the position of the node
/// (at each level, the index of the entry in its map's order or in its list).
#[derive(Debug)]
struct Node {
    doc: Arc<Value>,
    path: Box<[u32]>,
}

impl Node {
    /// The JSON this node stands for.
    fn json(&self) -> &Value {
        let mut v: &Value = &self.doc;
        for &i in &*self.path {
            let next = match v {
                Value::Object(m) => m.values().nth(i as usize),
                Value::Array(a) => a.get(i as usize),
                _ => None,
            };
            // the path was taken from this same document, so every step is there
            v = next.unwrap_or(&Value::Null);
        }
        v
    }

    /// The template value of `child`, found at index `i` of this node.
    fn child(&self, i: usize, child: &Value) -> JValue {
        match child {
            Value::Object(_) | Value::Array(_) => {
                let mut path = Vec::with_capacity(self.path.len() + 1);
                path.extend_from_slice(&self.path);
                path.push(u32::try_from(i).unwrap_or(u32::MAX));
                JValue::from_object(Node {
                    doc: self.doc.clone(),
                    path: path.into_boxed_slice(),
                })
            }
            scalar => scalar_value(scalar),
        }
    }

    /// The value of map key `key`, when this node is a map that has it.
    fn by_key(&self, key: &str) -> Option<JValue> {
        let Value::Object(m) = self.json() else {
            return None;
        };
        let (i, (_, v)) = m.iter().enumerate().find(|(_, (k, _))| k.as_str() == key)?;
        Some(self.child(i, v))
    }
}

impl Object for Node {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.json() {
            Value::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &JValue) -> Option<JValue> {
        match self.json() {
            Value::Object(_) => self.by_key(key.as_str()?),
            Value::Array(a) => {
                let i = key.as_usize()?;
                a.get(i).map(|v| self.child(i, v))
            }
            _ => None,
        }
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<JValue> {
        self.by_key(key)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.json() {
            Value::Object(m) => {
                // minijinja's own maps iterate in key order
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort_unstable();
                Enumerator::Values(keys.into_iter().map(|k| JValue::from(k.as_str())).collect())
            }
            Value::Array(a) => Enumerator::Seq(a.len()),
            _ => Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(match self.json() {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        })
    }
}

/// The JSON of a template value made by [`lazy`] (maps in key order, as serializing it would
/// give), or `None` for any other value.
pub fn json_of(v: &JValue) -> Option<Value> {
    let node = v.as_object()?.downcast_ref::<Node>()?;
    Some(sorted(node.json()))
}

/// A copy of `v` with every map's keys in order.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        scalar => scalar.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{Templates, to_json};
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "metadata": {"name": "a", "labels": {"z": "1", "b": "2", "a": "3"}, "generation": 3},
            "spec": {
                "f": 1.5, "neg": -2, "big": 18446744073709551615u64, "yes": true, "no": false,
                "none": null, "empty": {}, "nothing": [], "text": "",
                "list": [1, "b", {"k": [true, null]}, [2, 3]],
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "Succeeded", "status": "False"}],
            },
        })
    }

    /// Every expression gives the same result, or the same error, over the lazy value as over
    /// `Value::from_serialize` of the same JSON.
    #[test]
    fn lazy_values_behave_as_converted_ones() {
        let exprs = [
            "r",
            "r.metadata",
            "r.metadata.labels",
            "r.metadata.labels | items | list",
            "r.metadata.labels | dictsort",
            "r.metadata.labels | tojson",
            "r | tojson",
            "r.metadata.labels | length",
            "r.metadata.labels.z",
            "r.metadata.labels['b']",
            "r.metadata.missing",
            "r.metadata.missing is defined",
            "r.metadata.missing.deeper",
            "r.spec.none",
            "r.spec.none is none",
            "r.spec.none.deeper",
            "r.spec.f + r.spec.neg",
            "r.spec.big",
            "r.spec.big + 1",
            "r.spec.neg * 2",
            "r.spec.yes and not r.spec.no",
            "r.spec.empty",
            "r.spec.empty is mapping",
            "r.spec.nothing is sequence",
            "'x' if r.spec.empty else 'y'",
            "'x' if r.spec.nothing else 'y'",
            "'x' if r.spec.list else 'y'",
            "'x' if r.spec.text else 'y'",
            "r.spec.list",
            "r.spec.list[0]",
            "r.spec.list[-1]",
            "r.spec.list[-1][1]",
            "r.spec.list[9]",
            "r.spec.list[1:]",
            "r.spec.list | first",
            "r.spec.list | last",
            "r.spec.list | reverse | list",
            "r.spec.list | length",
            "r.spec.list[2].k",
            "r.spec.list[2]['k'][0]",
            "r.spec.list[3] | sort",
            "r.spec.list[3] | max",
            "'b' in r.spec.list",
            "'z' in r.metadata.labels",
            "'q' in r.metadata.labels",
            "r.metadata.labels == {'a': '3', 'b': '2', 'z': '1'}",
            "r.metadata.labels == {'a': '3'}",
            "r.spec.list[3] == [2, 3]",
            "r.spec.list[3] == r.spec.list[3]",
            "r.metadata == r.metadata",
            "r.spec.conditions | selectattr('type', 'equalto', 'Succeeded') | first",
            "(r.spec.conditions | map(attribute='status') | join(','))",
            "condition(r, 'Ready')",
            "r.spec.conditions | sort(attribute='type') | map(attribute='type') | list",
            "[r.spec.list[3], [1]] | sort",
            "r.spec.list + [4]",
            "r.metadata.labels.items()",
            "r.metadata.labels.keys() | list",
            "r.metadata.get('name')",
            "r.metadata.name ~ '-' ~ r.metadata.generation",
            "r.metadata.name | upper",
            "r.spec.list | tojson",
            "r.spec.f | string",
            "r.spec.list[2] | string",
        ];
        let docs = [
            doc(),
            json!([1, {"a": 2}]),
            json!("text"),
            json!(7),
            json!(null),
        ];
        for d in docs {
            let plain = minijinja::context! { r => JValue::from_serialize(&d) };
            let lazy_ctx = minijinja::context! { r => lazy(Arc::new(d.clone())) };
            for e in exprs {
                let mut t = Templates::new();
                for src in [format!("{{{{ {e} }}}}"), format!("[{{{{ {e} }}}}]")] {
                    let tmpl = t.compile("t", &src).unwrap();
                    let a = t.value(&tmpl, &plain);
                    let b = t.value(&tmpl, &lazy_ctx);
                    assert_eq!(a, b, "{src} over {d}");
                }
                // as text, in a loop
                let src = format!("{{% for x in [{e}] %}}{{{{ x }}}};{{% endfor %}}");
                let tmpl = t.compile("t", &src).unwrap();
                assert_eq!(
                    t.value(&tmpl, &plain),
                    t.value(&tmpl, &lazy_ctx),
                    "{src} over {d}"
                );
            }
            for keys in ["r.metadata.labels", "r"] {
                let mut t = Templates::new();
                let src = format!(
                    "{{% for k, v in {keys} | items %}}{{{{ k }}}}={{{{ v }}}};{{% endfor %}}{{% for k in {keys} %}}{{{{ k }}}}{{% endfor %}}"
                );
                let tmpl = t.compile("t", &src).unwrap();
                assert_eq!(t.value(&tmpl, &plain), t.value(&tmpl, &lazy_ctx), "{src}");
            }
            assert_eq!(
                to_json(&JValue::from_serialize(&d)),
                to_json(&lazy(Arc::new(d.clone()))),
            );
        }
    }

    #[test]
    fn maps_read_in_key_order_and_convert_to_the_same_json() {
        let v = lazy(Arc::new(
            json!({"b": {"y": 1, "x": [{"q": 1, "p": 2}]}, "a": 2}),
        ));
        let keys: Vec<String> = v.try_iter().unwrap().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["a", "b"]);
        let json = to_json(&v);
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            r#"{"a":2,"b":{"x":[{"p":2,"q":1}],"y":1}}"#
        );
        assert_eq!(
            json,
            serde_json::to_value(JValue::from_serialize(&json)).unwrap()
        );
    }
}
