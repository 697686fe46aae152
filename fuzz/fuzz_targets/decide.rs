//! Any JSON as the observed resource and execution object, with the default rules: `decide`
//! returns a decision, never panics, and is deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifecycle_engine::engine::{Observation, decide};
use lifecycle_engine::rules::Rules;
use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;

static RULES: OnceLock<Rules> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let rules = RULES.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        Rules::load(&root.join("lifecycle.yaml"), &[]).expect("default rules load")
    });
    // input: a JSON array [resource, execution?, related?]
    let Ok(Value::Array(parts)) = serde_json::from_slice::<Value>(data) else { return };
    let mut parts = parts.into_iter();
    let resource = parts.next().unwrap_or(Value::Null);
    let execution = parts.next().filter(|v| !v.is_null());
    let related = match parts.next() {
        Some(Value::Object(m)) => m,
        _ => Default::default(),
    };
    let obs = Observation {
        resource,
        execution,
        children: Default::default(),
        related,
        error: None,
        lookups: Default::default(),
    };
    let now = 1_767_225_600.0;
    let a = decide(rules, &obs, now);
    let b = decide(rules, &obs, now);
    assert_eq!(a, b, "decide must be deterministic");
});
