//! Compiling rules held in memory: no file is read, and problems in a template name the
//! template's place in the templates folder. (That only `sources.rs` reads files is checked with
//! the rest of the pure core, in `repo_tests.rs`.)

use super::{LoadError, Rules, Sources};
use std::path::Path;

const RULES: &str = "version: 1
resource:
  apiVersion: example.com/v1
  kind: Task
  fieldManager: task-controller
  component: task-controller
execution:
  apiVersion: batch/v1
  kind: Job
  namespace: \"{{ resource.metadata.namespace }}\"
  name: \"task-{{ resource.metadata.name }}\"
  template: job.yaml
  ownerLabels:
    name: example.com/task
    namespace: example.com/task-namespace
phases:
  Pending:
    initial: true
    transitions:
      - name: started
        to: Done
        execution: create
  Done:
    terminal: true
";

const JOB: &str =
    "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {{ object.name | tojson }}\n";

/// The problems of a compilation that must fail, as `file:line:column: path: message`.
fn problems(r: Result<Rules, LoadError>) -> Vec<String> {
    match r {
        Ok(_) => panic!("compiled, but it should fail"),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn rules_compile_from_strings_without_any_file() {
    // neither the rules file nor its folder exists: everything comes from memory
    let sources =
        Sources::from_text("/nonexistent/rules.yaml", RULES).with_template("job.yaml", JOB);
    assert_eq!(sources.templates_dir, Path::new("/nonexistent/templates"));
    let rules = Rules::compile(&sources, &[]).expect("compiles");
    assert_eq!(rules.file, Path::new("/nonexistent/rules.yaml"));
    assert_eq!(rules.phases.len(), 2);
    assert_eq!(rules.phases[rules.initial].name, "Pending");
    assert_eq!(rules.execution.kind, "Job");
    assert!(rules.templates.file_id("job.yaml").is_some());
}

#[test]
fn the_revision_follows_the_rules_text_and_every_template() {
    let base = Sources::from_text("rules.yaml", RULES).with_template("job.yaml", JOB);
    let revision = |s: &Sources| Rules::compile(s, &[]).expect("compiles").revision;
    let first = revision(&base);
    assert_eq!(first.len(), 12, "{first}");
    assert_eq!(
        revision(&base.clone()),
        first,
        "the same sources, the same revision"
    );
    let other_template = base
        .clone()
        .with_template("job.yaml", format!("{JOB}# changed\n"));
    assert_ne!(revision(&other_template), first);
    let extra_template = base.clone().with_template("notes.txt", "hello");
    assert_ne!(revision(&extra_template), first);
    let mut other_text = base.clone();
    other_text.text.push_str("# a comment\n");
    assert_ne!(revision(&other_text), first);
}

#[test]
fn problems_in_a_template_held_in_memory_name_its_file() {
    let sources = Sources::from_text("rules.yaml", RULES)
        .with_template("job.yaml", "apiVersion: batch/v1\n{{ oops(\n");
    let got = problems(Rules::compile(&sources, &[]));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("templates/job.yaml:2:1: (template): template syntax error: "),
        "{got:?}"
    );
}

#[test]
fn the_templates_entry_names_the_folder_of_the_sources() {
    let text = RULES.replace("version: 1\n", "version: 1\ntemplates: bodies\n");
    let sources = Sources::from_text("deploy/rules.yaml", text);
    assert_eq!(sources.templates_dir, Path::new("deploy/bodies"));
    assert_eq!(
        problems(Rules::compile(&sources, &[])),
        [
            "deploy/rules.yaml:13:13: execution.template: template `job.yaml` is not in deploy/bodies (found: none)"
        ]
    );
    let found = sources.with_template("other.yaml", JOB);
    assert_eq!(
        problems(Rules::compile(&found, &[])),
        [
            "deploy/rules.yaml:13:13: execution.template: template `job.yaml` is not in deploy/bodies (found: other.yaml)"
        ]
    );
}

#[test]
fn what_the_reader_could_not_read_is_reported_in_its_place() {
    let mut sources = Sources::from_text("rules.yaml", RULES).with_template("job.yaml", JOB);
    sources
        .unreadable
        .push(("big.txt".into(), "file is too big".into()));
    assert_eq!(
        problems(Rules::compile(&sources, &[])),
        ["templates/big.txt:1:1: (template): file is too big"]
    );
    sources.templates_dir_error = Some("permission denied".into());
    assert_eq!(
        problems(Rules::compile(&sources, &[])),
        [
            "rules.yaml:12:13: execution.template: cannot read the templates folder templates: permission denied"
        ]
    );
}

#[test]
fn a_cycle_among_values_is_reported_once_with_its_path() {
    let text = RULES.replace(
        "phases:\n",
        "values:\n  a:\n    expr: values.b + 1\n  b:\n    expr: values.a + 1\n  c:\n    expr: values.a\nphases:\n",
    );
    let sources = Sources::from_text("rules.yaml", text).with_template("job.yaml", JOB);
    assert_eq!(
        problems(Rules::compile(&sources, &[])),
        ["rules.yaml:17:3: values.a: values depend on each other in a cycle: a → b → a"]
    );
}

#[test]
fn values_record_what_they_read() {
    let text = RULES.replace(
        "phases:\n",
        "values:\n  name:\n    path: $.resource.metadata.name\n  greeting:\n    expr: \"'hello ' ~ values.name\"\nphases:\n",
    );
    let sources = Sources::from_text("rules.yaml", text).with_template("job.yaml", JOB);
    let rules = Rules::compile(&sources, &[]).expect("compiles");
    assert!(rules.values[0].deps.values.is_empty());
    assert_eq!(
        rules.values[1]
            .deps
            .values
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        [0]
    );
}
