//! Rules fixtures: every file under `tests/fixtures/rules/valid` loads; every file under
//! `tests/fixtures/rules/invalid` fails with exactly the problems pinned in its `.expected`
//! file (one `line:column: path: message` per line; a problem in another file, such as a
//! template, is prefixed with that file's name relative to the fixture folder).
//!
//! Hostile inputs that are awkward to commit (a file over the size limit, bytes that are not
//! UTF-8) are generated into a temporary folder. Every load runs on its own thread with a time
//! limit, so a panic or a hang fails the test instead of taking the test run down with it.
//!
//! Also here: the committed JSON Schema matches the rules model, the `check` exit codes, the
//! JSON shape of problems, and the example Job lifecycle with its scenarios.
//!
//! A fixture with a `NAME.pending` file shows a known loader problem (the file says which): its
//! `.expected` holds the output wanted once that is fixed, the test only requires that loading
//! neither panics nor hangs, and it fails as soon as the output matches, so that the `.pending`
//! file gets removed.
//!
//! Set `LIFECYCLE_BLESS=1` to rewrite the `.expected` files of fixtures that are not pending from
//! the loader's current output; review the diff before committing it.

use super::{LoadError, Problem, Rules, Sources};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Longest a single load may take before it counts as a hang.
const LOAD_TIME_LIMIT: Duration = Duration::from_secs(20);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/rules")
}

/// `*.yaml` files directly in `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Loads rules on a separate thread; a panic or a load slower than [`LOAD_TIME_LIMIT`] is an
/// error naming the file. A fixture `NAME.yaml` with a CRD in `_crds/NAME.yaml` next to it is
/// also checked against that CRD's schema, as `lifecycle check --crd` does.
fn load_guarded(
    file: &Path,
    overrides: &[(String, String)],
) -> Result<Result<Rules, LoadError>, String> {
    let f = file.to_path_buf();
    let o = overrides.to_vec();
    let crd = file
        .parent()
        .zip(file.file_name())
        .map(|(dir, name)| dir.join("_crds").join(name))
        .filter(|p| p.is_file());
    guarded(&file.display().to_string(), move || {
        let rules = Rules::load(&f, &o)?;
        if let Some(crd) = crd {
            let text = std::fs::read_to_string(&crd).expect("readable CRD fixture");
            let doc: serde_json::Value = serde_yaml::from_str(&text).expect("a CRD document");
            let schema = super::find_kind_schema(
                &[("the fixture's CRD".into(), doc)],
                &rules.resource.api_version,
                &rules.resource.kind,
            )
            .expect("the CRD serves the version")
            .expect("the CRD defines the kind");
            rules.check_schema(&schema)?;
        }
        Ok(rules)
    })
}

/// Compiles in-memory sources on a separate thread, like [`load_guarded`].
fn compile_guarded(
    sources: Sources,
    overrides: &[(String, String)],
) -> Result<Result<Rules, LoadError>, String> {
    let name = sources.file.display().to_string();
    let o = overrides.to_vec();
    guarded(&name, move || Rules::compile(&sources, &o))
}

/// Runs `load` on its own thread with the time limit.
fn guarded(
    name: &str,
    load: impl FnOnce() -> Result<Rules, LoadError> + Send + 'static,
) -> Result<Result<Rules, LoadError>, String> {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("load {name}"))
        .spawn(move || {
            let _ = tx.send(load());
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    match rx.recv_timeout(LOAD_TIME_LIMIT) {
        Ok(r) => {
            let _ = handle.join();
            Ok(r)
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "{name}: loading took longer than {LOAD_TIME_LIMIT:?}"
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(format!("{name}: loading panicked")),
    }
}

/// One problem as pinned in `.expected` files: without the rules file's name, other files
/// relative to `dir`, and `dir` removed from messages so that they do not depend on where the
/// checkout lives.
fn pinned(p: &Problem, file: &Path, dir: &Path) -> String {
    let prefix = format!("{}/", dir.display());
    let line = if p.file == file.display().to_string() {
        format!("{}:{}: {}: {}", p.line, p.column, p.path, p.message)
    } else {
        format!(
            "{}:{}:{}: {}: {}",
            p.file.replace(&prefix, ""),
            p.line,
            p.column,
            p.path,
            p.message
        )
    };
    line.replace(&prefix, "")
}

fn pinned_all(e: &LoadError, file: &Path, dir: &Path) -> String {
    let mut out = String::new();
    for p in e.problems() {
        out.push_str(&pinned(&p, file, dir));
        out.push('\n');
    }
    out
}

fn blessing() -> bool {
    std::env::var_os("LIFECYCLE_BLESS").is_some_and(|v| !v.is_empty() && v != "0")
}

#[test]
fn valid_fixtures_load() {
    let files = yaml_files(&fixtures().join("valid"));
    assert!(files.len() >= 3, "expected valid fixtures, found {files:?}");
    let mut failures = Vec::new();
    for f in &files {
        match load_guarded(f, &[]) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => failures.push(format!("{}:\n{e}", f.display())),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn invalid_fixtures_report_exactly_the_pinned_problems() {
    let dir = fixtures().join("invalid");
    let files = yaml_files(&dir);
    assert!(
        files.len() >= 30,
        "expected invalid fixtures, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for f in &files {
        let expected_file = f.with_extension("expected");
        let pending = f.with_extension("pending").is_file();
        let got = match load_guarded(f, &[]) {
            Ok(Ok(_)) if pending => "(loads without problems)\n".to_string(),
            Ok(Ok(_)) => {
                failures.push(format!("{}: loaded, but it should fail", f.display()));
                continue;
            }
            Ok(Err(e)) => pinned_all(&e, f, &dir),
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        if pending {
            let want = std::fs::read_to_string(&expected_file).unwrap_or_default();
            if got == want {
                failures.push(format!(
                    "{}: now reports exactly what {} expects; delete {}",
                    f.display(),
                    expected_file.display(),
                    f.with_extension("pending").display()
                ));
            }
            continue;
        }
        if blessing() {
            std::fs::write(&expected_file, &got).unwrap_or_else(|e| panic!("{e}"));
            continue;
        }
        let want = std::fs::read_to_string(&expected_file)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})\n", expected_file.display()));
        if got != want {
            failures.push(format!(
                "{}:\n--- expected\n{want}--- got\n{got}",
                f.display()
            ));
        }
    }
    // every expectation belongs to a fixture
    for e in std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let p = e.path();
        let orphan = p
            .extension()
            .is_some_and(|x| x == "expected" || x == "pending")
            && !p.with_extension("yaml").is_file();
        if orphan {
            failures.push(format!("{}: no fixture for this file", p.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} invalid fixture(s) differ (set LIFECYCLE_BLESS=1 to rewrite, then review):\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_default_lifecycle_fits_the_shipped_crd() {
    let rules = Rules::load(&root().join("lifecycle.yaml"), &[]).expect("default rules load");
    let text = std::fs::read_to_string(root().join("deploy/crds/workflowexecution.yaml"))
        .expect("the shipped CRD");
    let doc: serde_json::Value = serde_yaml::from_str(&text).expect("a CRD document");
    let schema = super::find_kind_schema(
        &[("deploy/crds/workflowexecution.yaml".into(), doc)],
        &rules.resource.api_version,
        &rules.resource.kind,
    )
    .expect("the CRD serves the rules' version")
    .expect("the CRD defines the governed kind");
    if let Err(e) = rules.check_schema(&schema) {
        panic!("{e}");
    }
    // and the same CRD without a field the rules write is refused, at the place that writes it
    let mut trimmed = schema.clone();
    if let Some(props) = trimmed
        .schema
        .as_mut()
        .and_then(|s| s.pointer_mut("/properties/status/properties"))
        .and_then(serde_json::Value::as_object_mut)
    {
        props.remove("pipelineRunStatus");
    }
    let problems = rules
        .check_schema(&trimmed)
        .expect_err("pruned field")
        .problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        problems[0].path,
        "phases.Running.sync.status.pipelineRunStatus"
    );
}

#[test]
fn committed_schema_matches_the_rules_model() {
    let file = root().join("docs/lifecycle.schema.json");
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    let current = super::json_schema();
    if committed != current {
        let line = committed
            .lines()
            .zip(current.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(current.lines().count()))
            + 1;
        panic!(
            "{} differs from the rules model (first at line {line}); run `lifecycle schema > docs/lifecycle.schema.json`",
            file.display()
        );
    }
}

/// A temporary folder with the shared fixture templates in `templates/`.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary folder");
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).expect("templates folder");
    for name in ["job.yaml", "summary.txt"] {
        std::fs::copy(
            fixtures().join("valid/_templates").join(name),
            templates.join(name),
        )
        .expect("copy template");
    }
    dir
}

/// The minimal valid fixture without its `templates:` line (scratch folders use `templates/`).
fn minimal_rules() -> String {
    std::fs::read_to_string(fixtures().join("valid/minimal.yaml"))
        .expect("minimal fixture")
        .replace("templates: _templates\n", "")
}

/// `text` as the rules file `name`, with the shared fixture templates in `templates/`, in memory.
fn in_memory(name: &str, text: String) -> Sources {
    let mut sources = Sources::from_text(name, text);
    for template in ["job.yaml", "summary.txt"] {
        let body = std::fs::read_to_string(fixtures().join("valid/_templates").join(template))
            .expect("fixture template");
        sources = sources.with_template(template, body);
    }
    sources
}

fn problems_of(file: &Path, overrides: &[(String, String)]) -> Vec<String> {
    pinned_lines(load_guarded(file, overrides), file)
}

fn pinned_lines(loaded: Result<Result<Rules, LoadError>, String>, file: &Path) -> Vec<String> {
    match loaded {
        Ok(Ok(_)) => Vec::new(),
        Ok(Err(e)) => pinned_all(&e, file, file.parent().unwrap_or(Path::new(".")))
            .lines()
            .map(str::to_string)
            .collect(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_file_over_the_size_limit_is_unusable() {
    let dir = scratch();
    let file = dir.path().join("big.yaml");
    let limit = super::MAX_FILE_BYTES as usize;
    let mut text = minimal_rules();
    text.push_str("# ");
    text.push_str(&"x".repeat(limit + 1 - text.len() - 1));
    text.push('\n');
    assert_eq!(text.len(), limit + 1);
    std::fs::write(&file, &text).expect("write");
    match load_guarded(&file, &[]).expect("no panic or hang") {
        Err(LoadError::Unusable { message, .. }) => assert_eq!(
            message,
            format!("file is {} bytes; the limit is {limit} bytes", limit + 1)
        ),
        other => panic!("expected an unusable file, got {other:?}"),
    }
    // one byte less is accepted
    text.replace_range(text.len() - 2..text.len() - 1, "");
    std::fs::write(&file, &text).expect("write");
    assert!(matches!(load_guarded(&file, &[]), Ok(Ok(_))));
}

#[test]
fn bytes_that_are_not_utf8_are_unusable() {
    let dir = scratch();
    let file = dir.path().join("latin1.yaml");
    let mut bytes = b"version: 1\ndescription: caf".to_vec();
    bytes.push(0xe9);
    bytes.extend_from_slice(b"\n");
    std::fs::write(&file, &bytes).expect("write");
    match load_guarded(&file, &[]).expect("no panic or hang") {
        Err(e @ LoadError::Unusable { .. }) => {
            assert_eq!(e.category(), "RulesUnreadable");
            assert_eq!(
                pinned_all(&e, &file, dir.path()),
                "1:1: (document): not UTF-8 text (byte 27)\n"
            );
        }
        other => panic!("expected an unusable file, got {other:?}"),
    }
}

#[test]
fn missing_files_and_folders_are_unusable() {
    let dir = scratch();
    for (path, want) in [
        (dir.path().join("nope.yaml"), "cannot read: "),
        (dir.path().to_path_buf(), "cannot read: not a regular file"),
    ] {
        match load_guarded(&path, &[]).expect("no panic or hang") {
            Err(LoadError::Unusable { message, .. }) => {
                assert!(message.starts_with(want), "{message}")
            }
            other => panic!(
                "{}: expected an unusable file, got {other:?}",
                path.display()
            ),
        }
    }
}

/// Generated hostile inputs, each loaded in a child process so that a crash (a stack overflow
/// aborts the whole process) fails one test instead of the test run: name, text, and the problems
/// wanted, or `None` for a known crash still to be fixed.
fn hostile_inputs() -> Vec<(&'static str, String, Option<&'static str>)> {
    let mut block = String::from("version: 1\ndescription:\n");
    for depth in 1..=1000 {
        block.push_str(&" ".repeat(depth));
        block.push_str("k:\n");
    }
    let dashes = format!("version: 1\ndescription:\n{}a\n", "- ".repeat(100_000));
    let flow = format!(
        "version: 1\ndescription: {}{}\n",
        "{a: ".repeat(10_000),
        "}".repeat(10_000)
    );
    let wide = minimal_rules().replace(
        "version: 1\n",
        &format!(
            "version: 1\ndescription: [{}]\n",
            vec!["1"; 100_000].join(",")
        ),
    );
    vec![
        (
            "flow mappings nested 10000 deep",
            flow,
            Some(
                "2:410: (document): YAML syntax error: nesting deeper than 100 levels; a rules file needs far fewer\n",
            ),
        ),
        (
            "a flow sequence of 100000 numbers",
            wide,
            Some("3:14: description: invalid type: sequence, expected a string\n"),
        ),
        (
            "block mappings nested 1000 deep",
            block,
            Some(
                "102:102: (document): YAML syntax error: nesting deeper than 100 levels; a rules file needs far fewer\n",
            ),
        ),
        (
            "block sequences nested 100000 deep on one line",
            dashes,
            Some(
                "3:199: (document): YAML syntax error: nesting deeper than 100 levels; a rules file needs far fewer\n",
            ),
        ),
    ]
}

/// Mark the problems a [`hostile_child`] prints among libtest's own output.
const HOSTILE_BEGIN: &str = "--- hostile input problems ---\n";
const HOSTILE_END: &str = "--- end of hostile input problems ---\n";

/// Compiles hostile input number `LIFECYCLE_HOSTILE_INPUT` from memory and prints its problems
/// between [`HOSTILE_BEGIN`] and [`HOSTILE_END`]; run by [`hostile_inputs_fail_cleanly`] in a child process.
#[test]
#[ignore = "run in a child process by hostile_inputs_fail_cleanly"]
fn hostile_child() {
    let Some(index) = std::env::var("LIFECYCLE_HOSTILE_INPUT")
        .ok()
        .and_then(|i| i.parse::<usize>().ok())
    else {
        return;
    };
    let Some((_, text, _)) = hostile_inputs().into_iter().nth(index) else {
        return;
    };
    let file = PathBuf::from(format!("hostile-{index}.yaml"));
    let out = match Rules::compile(&in_memory(&file.display().to_string(), text), &[]) {
        Ok(_) => "(loads without problems)\n".to_string(),
        Err(e) => pinned_all(&e, &file, Path::new(".")),
    };
    print!("{HOSTILE_BEGIN}{out}{HOSTILE_END}");
}

#[test]
fn hostile_inputs_fail_cleanly() {
    let exe = std::env::current_exe().expect("the test binary");
    let mut failures = Vec::new();
    for (i, (name, _, want)) in hostile_inputs().into_iter().enumerate() {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "rules::fixture_tests::hostile_child",
                "--ignored",
                "--quiet",
                "--nocapture",
            ])
            .env("LIFECYCLE_HOSTILE_INPUT", i.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the child test");
        let deadline = std::time::Instant::now() + LOAD_TIME_LIMIT;
        let status = loop {
            match child.try_wait().expect("wait for the child") {
                Some(status) => break Some(status),
                None if std::time::Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let mut stdout = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stdout);
        }
        let got = stdout
            .split_once(HOSTILE_BEGIN)
            .and_then(|(_, rest)| rest.split_once(HOSTILE_END))
            .map(|(problems, _)| problems.to_string());
        let clean = status.is_some_and(|s| s.success()) && got.is_some();
        match (want, clean) {
            (Some(want), true) if got.as_deref() == Some(want) => {}
            (Some(want), true) => failures.push(format!(
                "{name}:\n--- expected\n{want}--- got\n{}",
                got.unwrap_or_default()
            )),
            (Some(_), false) => failures.push(format!(
                "{name}: the loader crashed or hung ({})",
                status.map_or("time limit".into(), |s| s.to_string())
            )),
            (None, true) => failures.push(format!(
                "{name}: no longer crashes; pin what it reports:\n{}",
                got.unwrap_or_default()
            )),
            (None, false) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn template_files_that_cannot_be_read_are_problems_of_their_own() {
    let dir = scratch();
    let templates = dir.path().join("templates");
    std::fs::write(
        templates.join("big.txt"),
        "x".repeat(super::MAX_FILE_BYTES as usize + 1),
    )
    .expect("write");
    std::fs::write(templates.join("latin1.txt"), b"caf\xe9").expect("write");
    std::fs::create_dir(templates.join("folder")).expect("a folder is ignored");
    std::fs::write(templates.join(".hidden"), "{{ oops(").expect("hidden files are ignored");
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, minimal_rules()).expect("write");
    assert_eq!(
        problems_of(&file, &[]),
        [
            "templates/big.txt:1:1: (template): file is 1048577 bytes; the limit is 1048576 bytes",
            "templates/latin1.txt:1:1: (template): not UTF-8 text (byte 3)",
        ]
    );
}

#[test]
fn a_missing_templates_folder_is_reported_at_the_execution_template() {
    let dir = scratch();
    let file = dir.path().join("rules.yaml");
    std::fs::write(
        &file,
        minimal_rules().replace("version: 1\n", "version: 1\ntemplates: tmpl\n"),
    )
    .expect("write");
    let problems = problems_of(&file, &[]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .starts_with("14:13: execution.template: cannot read the templates folder tmpl: "),
        "{problems:?}"
    );
}

#[test]
fn setting_overrides_are_checked() {
    let text = minimal_rules().replace(
        "version: 1\n",
        "version: 1\nsettings:\n  retries: 3\n  strict: true\n  name: x\n",
    );
    let sources = in_memory("rules.yaml", text);
    let set = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let ok = set(&[("retries", "5"), ("strict", "false"), ("name", "y")]);
    match compile_guarded(sources.clone(), &ok).expect("no panic or hang") {
        Ok(rules) => assert_eq!(
            rules.settings,
            serde_json::json!({"retries": 5, "strict": false, "name": "y"})
        ),
        Err(e) => panic!("{e}"),
    }
    let bad = set(&[("retries", "many"), ("strict", "yes"), ("colour", "red")]);
    assert_eq!(
        pinned_lines(compile_guarded(sources, &bad), Path::new("rules.yaml")),
        [
            "--set:1:1: retries: setting `retries` is a number, `many` is not",
            "--set:1:1: strict: setting `strict` is a boolean, `yes` is not",
            "--set:1:1: colour: unknown setting `colour` (the rules define: retries, strict, name)",
        ]
    );
}

#[test]
fn check_exit_codes_are_0_valid_1_invalid_2_unreadable() {
    use std::process::ExitCode;
    let valid = fixtures().join("valid/minimal.yaml");
    let invalid = fixtures().join("invalid/unknown-action.yaml");
    let unreadable = fixtures().join("invalid/does-not-exist.yaml");
    assert!(crate::cli::load(&valid, &[]).is_ok());
    assert_eq!(
        crate::cli::load(&invalid, &[]).err(),
        Some(ExitCode::from(1))
    );
    assert_eq!(
        crate::cli::load(&unreadable, &[]).err(),
        Some(ExitCode::from(2))
    );
}

#[test]
fn problems_serialize_for_check_format_json() {
    let file = fixtures().join("invalid/unknown-action.yaml");
    let e = match load_guarded(&file, &[]).expect("no panic or hang") {
        Err(e) => e,
        Ok(_) => panic!("should fail"),
    };
    assert_eq!(e.category(), "RulesInvalid");
    assert_eq!(
        serde_json::to_value(e.problems()).expect("serializes"),
        serde_json::json!([{
            "file": file.display().to_string(),
            "line": 29,
            "column": 23,
            "path": "phases.Pending.transitions[0].use[1]",
            "message": "unknown action `notify` (defined: finish)"
        }])
    );
    let unreadable = fixtures().join("invalid/does-not-exist.yaml");
    let e = match load_guarded(&unreadable, &[]).expect("no panic or hang") {
        Err(e) => e,
        Ok(_) => panic!("should fail"),
    };
    let p = serde_json::to_value(e.problems()).expect("serializes");
    assert_eq!(p[0]["path"], "(document)");
    assert_eq!(p[0]["line"], 1);
}

#[test]
fn the_default_lifecycle_loads() {
    match load_guarded(&root().join("lifecycle.yaml"), &[]) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("lifecycle.yaml:\n{e}"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_job_lifecycle_scenarios_pass() {
    example_scenarios_pass("examples/job-lifecycle.yaml", "tests/lifecycle-job", 10);
}

#[test]
fn the_cluster_scoped_tenant_scenarios_pass() {
    example_scenarios_pass(
        "examples/tenant-lifecycle.yaml",
        "tests/lifecycle-tenant",
        6,
    );
}

#[test]
fn the_cancel_on_delete_scenarios_pass() {
    example_scenarios_pass(
        "examples/pipelinerun-cancel-lifecycle.yaml",
        "tests/lifecycle-cancel",
        3,
    );
}

#[test]
fn the_two_children_scenarios_pass() {
    example_scenarios_pass(
        "examples/configured-job-lifecycle.yaml",
        "tests/lifecycle-children",
        6,
    );
}

/// Every scenario of `dir` passes against the example rules `rules` (at least `min` of them).
fn example_scenarios_pass(rules: &str, dir: &str, min: usize) {
    let rules = root().join(rules);
    let files = crate::offline::scenario::collect(&[root().join(dir)])
        .unwrap_or_else(|e| panic!("{dir} has scenarios: {e}"));
    assert!(files.len() >= min, "{files:?}");
    let failures: Vec<String> = files
        .iter()
        .map(|f| crate::offline::scenario::run_file(f, &rules))
        .filter(|o| !o.failures.is_empty())
        .map(|o| {
            format!(
                "{} ({}): {}",
                o.name,
                o.file.display(),
                o.failures.join("; ")
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn the_job_lifecycle_simulates_a_success_and_a_failure() {
    let rules = match load_guarded(&root().join("examples/job-lifecycle.yaml"), &[]) {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("examples/job-lifecycle.yaml:\n{e}"),
        Err(e) => panic!("{e}"),
    };
    let resource = crate::offline::read_object(&root().join("examples/job.yaml")).expect("example");
    let start = crate::time::parse_secs("2026-01-01T00:00:00Z").expect("start");
    for (outcome, phase, reason) in [
        ("succeeded", "Succeeded", "Succeeded"),
        ("failed", "Failed", "BackoffLimitExceeded"),
    ] {
        let script = crate::offline::simulate::Script {
            outcome: outcome.into(),
            reason: String::new(),
            message: String::new(),
            then: Vec::new(),
            after: 45.0,
            limit: 24.0 * 3600.0,
            objects: Vec::new(),
        };
        let world = crate::offline::simulate::run(&rules, resource.clone(), start, &script)
            .unwrap_or_else(|e| panic!("{outcome}: {e}"));
        let status = &world.resource.as_ref().expect("the resource exists")["status"];
        assert_eq!(status["phase"], phase, "{outcome}: {status}");
        let condition = |kind: &str| {
            status["conditions"]
                .as_array()
                .and_then(|l| l.iter().find(|c| c["type"] == kind))
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(condition("Ready")["reason"], reason, "{outcome}: {status}");
        assert_eq!(
            condition("LockReleased")["status"],
            "True",
            "{outcome}: {status}"
        );
        assert!(
            world.execution().is_none(),
            "{outcome}: the Job is deleted after the cooldown"
        );
    }
}
