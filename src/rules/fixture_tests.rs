//! Rules fixtures: every file under `tests/fixtures/rules/valid` loads; every file under
//! `tests/fixtures/rules/invalid` fails with exactly the problems pinned in its `.expected`
//! file (one `line:column: path: message` per line).
