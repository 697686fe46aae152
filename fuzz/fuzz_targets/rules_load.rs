//! Any bytes as a rules file: loading returns rules or problems, never panics or hangs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifecycle_engine::rules::Rules;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if let Err(e) = Rules::from_text("fuzz.yaml", text, &dir, &[]) {
        // every problem has a place
        for p in e.problems() {
            assert!(p.line >= 1 && p.column >= 1);
        }
    }
});
