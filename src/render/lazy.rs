//! JSON documents as template values without converting them up front.
//!
//! A map or list becomes a minijinja object that reads the JSON in place: only what a template
//! reads is converted (a scalar when it is read, a map or list as another such object pointing
//! further into the same document). The values behave exactly as `Value::from_serialize` of the
//! same JSON would: the same kinds and number types, `none` for null, undefined for a missing
//! key, maps iterated (and printed, serialized, compared) in key order as minijinja's own maps
//! are, lists with their length and negative indexes.
//!
//! A document is either shared ([`lazy`], [`lazy_copy`]: the value keeps it alive) or lent
//! ([`lend`]: borrowed for the length of one call, so nothing is copied). A lent document's
//! values are revoked when the call returns: a value that outlived it reads as an empty map and
//! never touches the document again.

use minijinja::Value as JValue;
use minijinja::value::{Enumerator, Object, ObjectRepr};
use serde_json::Value;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

/// The template value of `doc`: scalars converted, maps and lists read in place.
pub fn lazy(doc: Arc<Value>) -> JValue {
    match &*doc {
        Value::Object(_) | Value::Array(_) => {
            let at: *const Value = &*doc;
            node(Owner::Shared(doc), at)
        }
        scalar => scalar_value(scalar),
    }
}

/// The template value of a copy of `json` (a scalar converted at once, a map or list copied and
/// read in place).
pub fn lazy_copy(json: &Value) -> JValue {
    match json {
        Value::Object(_) | Value::Array(_) => lazy(Arc::new(json.clone())),
        scalar => scalar_value(scalar),
    }
}

/// Lends documents that live at least `'d` to templates for the length of `f`: each value
/// [`Loan::value`] makes reads its document in place, and is revoked when `f` returns (or
/// unwinds).
pub fn lend<'d, R>(f: impl FnOnce(&Loan<'d>) -> R) -> R {
    let loan = Loan {
        valid: Arc::new(RwLock::new(true)),
        lifetime: PhantomData,
    };
    let _revoke = Revoke(loan.valid.clone());
    f(&loan)
}

/// Documents lent for one call of [`lend`].
pub struct Loan<'d> {
    /// Whether the documents may still be read; cleared, under the write lock, when the loan
    /// ends. Every read of a lent document holds the read lock.
    valid: Arc<RwLock<bool>>,
    /// `'d` exactly (invariant): a document that lives less long cannot be lent.
    lifetime: PhantomData<fn(&'d ()) -> &'d ()>,
}

impl<'d> Loan<'d> {
    /// The template value of `doc`, read in place while the loan lasts.
    pub fn value(&self, doc: &'d Value) -> JValue {
        match doc {
            Value::Object(_) | Value::Array(_) => node(Owner::Lent(self.valid.clone()), doc),
            scalar => scalar_value(scalar),
        }
    }
}

/// Ends a loan when dropped.
struct Revoke(Arc<RwLock<bool>>);

impl Drop for Revoke {
    fn drop(&mut self) {
        let mut valid = self.0.write().unwrap_or_else(|e| e.into_inner());
        *valid = false;
    }
}

/// What keeps a node's document readable.
#[derive(Debug, Clone)]
enum Owner {
    /// The node shares the document, which lives as long as any node does.
    Shared(
        #[expect(
            dead_code,
            reason = "held to keep the document alive, read through `at`"
        )]
        Arc<Value>,
    ),
    /// The document is lent: readable while the flag is set.
    Lent(Arc<RwLock<bool>>),
}

/// A map or list inside a document.
#[derive(Debug)]
struct Node {
    owner: Owner,
    /// The node, inside the document `owner` keeps readable. Only read through [`Node::with`].
    at: *const Value,
}

// SAFETY: a node only reads its JSON (`&Value` is `Send` and `Sync`), through `Node::with`, and
// only while the document is alive: a shared document is kept alive by the node's own `Arc`,
// which nobody mutates; a lent one is borrowed for `'d`, which outlasts the loan, and is read
// only under the loan's read lock while its flag is set (the flag is cleared under the write
// lock before `lend` returns).
unsafe impl Send for Node {}
// SAFETY: as for `Send`.
unsafe impl Sync for Node {}

fn node(owner: Owner, at: *const Value) -> JValue {
    JValue::from_object(Node { owner, at })
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

impl Node {
    /// `f` of the JSON this node stands for; `None` once a lent document's loan has ended.
    fn with<R>(&self, f: impl FnOnce(&Value) -> R) -> Option<R> {
        match &self.owner {
            // SAFETY: `at` points into the document the `Arc` keeps alive (see `Send`)
            Owner::Shared(_) => Some(f(unsafe { &*self.at })),
            Owner::Lent(valid) => {
                let valid = valid.read().ok()?;
                // SAFETY: the loan is still on, and cannot end while the read lock is held
                (*valid).then(|| f(unsafe { &*self.at }))
            }
        }
    }

    /// The template value of `child`, a node of this node's document.
    fn child(&self, child: &Value) -> JValue {
        match child {
            Value::Object(_) | Value::Array(_) => node(self.owner.clone(), child),
            scalar => scalar_value(scalar),
        }
    }

    /// The value of map key `key`, when this node is a map that has it.
    fn by_key(&self, key: &str) -> Option<JValue> {
        self.with(|v| match v {
            Value::Object(m) => m.get(key).map(|c| self.child(c)),
            _ => None,
        })
        .flatten()
    }
}

impl Object for Node {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.with(Value::is_array) {
            Some(true) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &JValue) -> Option<JValue> {
        self.with(|v| match v {
            Value::Object(m) => m.get(key.as_str()?).map(|c| self.child(c)),
            Value::Array(a) => a.get(key.as_usize()?).map(|c| self.child(c)),
            _ => None,
        })
        .flatten()
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<JValue> {
        self.by_key(key)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.with(|v| match v {
            Value::Object(m) => {
                // minijinja's own maps iterate in key order
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort_unstable();
                Enumerator::Values(keys.into_iter().map(|k| JValue::from(k.as_str())).collect())
            }
            Value::Array(a) => Enumerator::Seq(a.len()),
            _ => Enumerator::Empty,
        })
        .unwrap_or(Enumerator::Empty)
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(
            self.with(|v| match v {
                Value::Object(m) => m.len(),
                Value::Array(a) => a.len(),
                _ => 0,
            })
            .unwrap_or(0),
        )
    }
}

/// The JSON of a template value made by [`lazy`] (maps in key order, as serializing it would
/// give), or `None` for any other value.
pub fn json_of(v: &JValue) -> Option<Value> {
    let node = v.as_object()?.downcast_ref::<Node>()?;
    node.with(sorted)
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
        for d in &docs {
            lend(|loan| check(d, &exprs, loan));
        }
    }

    fn check<'d>(d: &'d Value, exprs: &[&str], loan: &Loan<'d>) {
        let plain = minijinja::context! { r => JValue::from_serialize(d) };
        for lazy_ctx in [
            minijinja::context! { r => lazy(Arc::new(d.clone())) },
            minijinja::context! { r => loan.value(d) },
        ] {
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
                to_json(&JValue::from_serialize(d)),
                to_json(&lazy_ctx.get_attr("r").unwrap())
            );
        }
    }

    #[test]
    fn a_lent_value_that_outlives_its_loan_reads_nothing() {
        let doc = json!({"a": {"b": 1}, "list": [1, 2]});
        let (kept, inner) = lend(|loan| {
            let v = loan.value(&doc);
            let inner = v.get_attr("a").unwrap();
            assert_eq!(inner.get_attr("b").unwrap(), JValue::from(1));
            assert_eq!(v.len(), Some(2));
            (v, inner)
        });
        assert_eq!(kept.len(), Some(0));
        assert!(kept.get_attr("a").unwrap().is_undefined());
        assert!(inner.get_attr("b").unwrap().is_undefined());
        assert_eq!(to_json(&kept), json!({}));
        // a shared document stays readable
        let shared = lazy(Arc::new(doc.clone()));
        assert_eq!(to_json(&shared), doc);
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
