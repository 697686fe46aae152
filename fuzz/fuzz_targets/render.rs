//! Any text as a template, rendered over a fixed context: a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifecycle_engine::render::Templates;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let mut t = Templates::new();
    let ctx = minijinja_ctx();
    if let Ok(tmpl) = t.compile("fuzz", source) {
        let _ = t.value(&tmpl, &ctx);
    }
});

fn minijinja_ctx() -> lifecycle_engine::render::JValue {
    lifecycle_engine::render::JValue::from_serialize(serde_json::json!({
        "resource": {"metadata": {"name": "x", "namespace": "ns"},
                     "spec": {"targetResource": "default/deployment/nginx", "parameters": {"A": "1"}}},
        "values": {"reason": "OOMKilled", "n": 3},
        "settings": {"cooldown": "5m"},
        "now": "2026-01-01T00:00:00Z"
    }))
}
