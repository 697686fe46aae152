//! The caches keep of the execution and related objects only what the rules read
//! (`rules/reads.rs`): every scenario of the default rules and of the examples decides the same,
//! decision for decision, on objects so projected as on whole ones.

use super::scenario::{collect, run_file_observing};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs every scenario of `folder` (rules `rules` unless a scenario names its own) both ways.
fn decides_the_same_on_projected_objects(folder: &str, rules: &str, at_least: usize) {
    let files = collect(&[root().join(folder)]).expect("the folder has scenarios");
    assert!(files.len() >= at_least, "{files:?}");
    let mut differ = Vec::new();
    let mut decisions = 0;
    for f in &files {
        let (whole, whole_trace) = run_file_observing(f, &root().join(rules), false);
        let (projected, projected_trace) = run_file_observing(f, &root().join(rules), true);
        decisions += whole_trace.decisions.len();
        if whole.failures != projected.failures {
            differ.push(format!(
                "{}: outcome whole {:?}, projected {:?}",
                f.display(),
                whole.failures,
                projected.failures
            ));
        }
        if let Some(i) = (0..whole_trace
            .decisions
            .len()
            .max(projected_trace.decisions.len()))
            .find(|&i| whole_trace.decisions.get(i) != projected_trace.decisions.get(i))
        {
            differ.push(format!(
                "{}: decision {} differs:\nwhole:     {}\nprojected: {}",
                f.display(),
                i + 1,
                whole_trace
                    .decisions
                    .get(i)
                    .map_or("none".into(), |d| d.to_string()),
                projected_trace
                    .decisions
                    .get(i)
                    .map_or("none".into(), |d| d.to_string()),
            ));
        }
        if whole_trace.effects != projected_trace.effects
            || whole_trace.status != projected_trace.status
        {
            differ.push(format!("{}: effects or final status differ", f.display()));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    assert!(
        decisions >= files.len(),
        "{decisions} decisions in {folder}"
    );
}

#[test]
fn the_default_scenarios_decide_the_same_on_projected_objects() {
    decides_the_same_on_projected_objects("tests/lifecycle", "lifecycle.yaml", 100);
}

#[test]
fn the_router_scenarios_decide_the_same_on_projected_objects() {
    decides_the_same_on_projected_objects(
        "tests/lifecycle/router",
        "examples/router-lifecycle.yaml",
        24,
    );
}

#[test]
fn the_example_scenarios_decide_the_same_on_projected_objects() {
    for (folder, rules, at_least) in [
        ("tests/lifecycle-retry", "examples/pipeline-retry.yaml", 8),
        ("tests/lifecycle-approval", "examples/approval-gate.yaml", 4),
        (
            "tests/lifecycle-remediation",
            "examples/remediation-lifecycle.yaml",
            11,
        ),
        ("tests/lifecycle-job", "examples/job-lifecycle.yaml", 10),
        (
            "tests/lifecycle-tenant",
            "examples/tenant-lifecycle.yaml",
            6,
        ),
        // the run is cancelled by a patch: the engine compares it with the run as observed
        (
            "tests/lifecycle-cancel",
            "examples/pipelinerun-cancel-lifecycle.yaml",
            3,
        ),
    ] {
        decides_the_same_on_projected_objects(folder, rules, at_least);
    }
}

/// The projection is not a no-op for the default rules: their scenarios observe less than
/// the whole objects (or the test above could not fail).
#[test]
fn the_default_rules_observe_less_than_whole_objects() {
    let rules = crate::rules::Rules::load(&root().join("lifecycle.yaml"), &[]).expect("rules");
    for w in rules.watched_kinds() {
        assert!(!w.fields.is_whole(), "{} is kept whole", w.kind);
    }
}
