//! `lifecycle run` end to end: the controller runs as a separate process, as the unprivileged
//! controller identity with exactly the RBAC of deploy/rbac.yaml, on the default rules (or a copy
//! of them), against the real control plane. Tekton is played by the tests (tekton.rs).
//!
//! Every test has its own resource and execution namespaces and its own controller process, so
//! tests run in parallel. Nothing here waits for a fixed time: each step polls, with a deadline,
//! for the state it expects, and then compares exact values.
//!
//! By subject: one whole lifecycle and its exact status (`lifecycle`), the per-target lock, its
//! races and its cooldown (`locking`), live rules changes (`reload`), kills and start-up
//! (`restarts`), pinned revisions kept across restarts (`stored_revisions`), answers of the API
//! server and the audit endpoint (`api`).

mod api;
mod attempts;
mod children;
mod children_reload;
mod lifecycle;
mod locking;
mod pinned;
mod related;
mod reload;
mod restarts;
mod scope_and_patch;
mod stored_revisions;

use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};

use crate::support::{
    self, ConfigMapVolume, ControllerProcess, Scope, SeenEvent, assert_condition, condition,
    metric_value, run_name, text, unique_name, wfe_body,
};
use crate::tekton;

const COMPLETED_TOTAL: &str = "workflowexecution_reconciler_total{outcome=\"Completed\"}";
const FAILED_TOTAL: &str = "workflowexecution_reconciler_total{outcome=\"Failed\"}";
const CREATIONS_TOTAL: &str = "workflowexecution_reconciler_pipelinerun_creations_total";

/// RFC 3339 text (whole seconds, UTC) of a timestamp text moved by `secs`.
fn plus(timestamp: &str, secs: i64) -> String {
    let t: jiff::Timestamp = timestamp.parse().expect("a timestamp");
    (t + jiff::SignedDuration::from_secs(secs)).to_string()
}

fn seconds_between(from: &str, to: &str) -> i64 {
    let a: jiff::Timestamp = from.parse().expect("a timestamp");
    let b: jiff::Timestamp = to.parse().expect("a timestamp");
    b.duration_since(a).as_secs()
}

fn event(type_: &str, reason: &str, note: &str) -> (String, String, String) {
    (type_.into(), reason.into(), note.into())
}

fn shapes(events: &[SeenEvent]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| (e.type_.clone(), e.reason.clone(), e.note.clone()))
        .collect()
}

fn is_event_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Drives a new resource for `target` to Running; returns the run's name and the start time.
async fn running(s: &Scope, name: &str, target: &str) -> (String, String) {
    s.create_wfe(name, target).await;
    let v = s.wait_phase(name, "Running").await;
    let run = run_name(target);
    s.wait_run(&run).await;
    (run, text(&v, "/status/startTime"))
}

/// Plays Tekton finishing `run` successfully at `at`.
async fn succeed(s: &Scope, run: &str, at: &str) {
    tekton::set_status(
        &s.runs(),
        run,
        tekton::pipelinerun_finished(
            run,
            &[],
            "True",
            "Succeeded",
            &tekton::tasks_message(0, 0, 0, 0),
            at,
            at,
        ),
    )
    .await;
}

fn count(events: &[SeenEvent], reason: &str) -> i32 {
    events
        .iter()
        .filter(|e| e.reason == reason)
        .map(|e| e.count)
        .sum()
}

/// The exact message of a lost race for `run`, held by resource `holder`.
fn race_message(run: &str, holder: &str) -> String {
    format!(
        "Race condition: PipelineRun '{run}' already exists for target resource (created by {holder}). This indicates RO routing may have failed."
    )
}

/// Copies lifecycle.yaml and templates/ into `<scope dir>/<folder>`; returns the rules file.
fn copy_rules(s: &Scope, folder: &str) -> std::path::PathBuf {
    let root = support::repo_root();
    let dir = s.dir.path().join(folder);
    std::fs::create_dir_all(dir.join("templates")).expect("rules folder");
    std::fs::copy(root.join("lifecycle.yaml"), dir.join("lifecycle.yaml")).expect("copy rules");
    for f in std::fs::read_dir(root.join("templates")).expect("templates") {
        let f = f.expect("template");
        std::fs::copy(f.path(), dir.join("templates").join(f.file_name())).expect("copy template");
    }
    dir.join("lifecycle.yaml")
}

/// Replaces `from` (which must occur) by `to` in a file.
fn edit(path: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("reading for an edit");
    assert!(text.contains(from), "{} lacks `{from}`", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).expect("writing an edit");
}

fn revision_of(rules: &std::path::Path) -> String {
    lifecycle_engine::rules::Rules::load(rules, &[])
        .expect("valid rules")
        .revision
}
