//! Any bytes as a rules file, with the default templates: compiling returns rules or problems,
//! never panics or hangs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifecycle_engine::rules::{Rules, Sources};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

/// The default rules' template files, read once.
fn templates() -> &'static BTreeMap<String, String> {
    static TEMPLATES: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lifecycle.yaml");
        Sources::read(&file).expect("default rules read").templates
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut sources = Sources::from_text("fuzz.yaml", text);
    sources.templates = templates().clone();
    if let Err(e) = Rules::compile(&sources, &[]) {
        // every problem has a place
        for p in e.problems() {
            assert!(p.line >= 1 && p.column >= 1);
        }
    }
});
