//! `lifecycle explain` and `lifecycle diff` against live resources on the real API server: the
//! binary as a user runs it, reading what a controller left behind.

use crate::support::{ADMIN_CONTEXT, Scope, repo_root, run_name, text, unique_name, wfe_body};
use crate::tekton;
use serde_json::Value;
use std::process::Output;

/// Runs the built `lifecycle` with `args` against the shared control plane (admin identity),
/// with the settings the scope's controller runs with.
pub fn lifecycle(s: &Scope, args: &[&str]) -> Output {
    let kubeconfig = s.env.kubeconfig().display().to_string();
    std::process::Command::new(env!("CARGO_BIN_EXE_lifecycle"))
        .args(args)
        .args(["--kubeconfig", &kubeconfig, "--context", ADMIN_CONTEXT])
        .args(["--set", &format!("executionNamespace={}", s.exec_ns)])
        .args(["--set", "pollInterval=1s"])
        .current_dir(repo_root())
        .output()
        .expect("running lifecycle")
}

fn explain_json(s: &Scope, name: &str) -> Value {
    let out = lifecycle(s, &["explain", name, "-n", &s.ns, "--format", "json"]);
    assert!(
        out.status.success(),
        "explain failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("explain --format json prints JSON")
}

fn chosen(e: &Value) -> Vec<String> {
    e["explanation"]["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter(|t| t["chosen"] == true)
        .map(|t| t["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn explain_shows_a_live_resource_its_guards_and_the_decision_a_change_would_bring() {
    let s = Scope::new("explain").await;
    let mut ctl = s.start("ctl", "1h").await;
    let revision = ctl.revision().await;
    let name = unique_name("explain");
    let target = "payments/deployment/api";
    let run = run_name(target);
    s.create(&name, wfe_body(target)).await;
    let running = s.wait_phase(&name, "Running").await;
    let started = text(&running, "/status/startTime");
    s.wait_run(&run).await;
    s.start_run(&run, &["prepare"], &started).await;
    s.wait(&name, "the running PipelineRun mirrored", |v| {
        v["status"]["pipelineRunStatus"]["reason"] == "Running"
    })
    .await;
    // from here on nothing acts: explain shows what the controller would do
    ctl.kill();

    let e = explain_json(&s, &name);
    let x = &e["explanation"];
    assert_eq!(x["phase"], "Running", "{e:#}");
    assert_eq!(x["revision"], revision.as_str());
    assert_eq!(x["recordedRevision"], revision.as_str());
    assert_eq!(x["execution"]["exists"], true);
    assert_eq!(x["execution"]["owned"], true);
    assert_eq!(x["execution"]["key"]["name"], run.as_str());
    assert!(chosen(&e).is_empty(), "{e:#}");
    assert_eq!(x["decision"]["transition"], Value::Null);
    assert_eq!(x["decision"]["effects"], serde_json::json!([]));
    assert_eq!(x["decision"]["requeueAfter"], 1.0);
    let run_status = x["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "runStatus")
        .unwrap();
    assert_eq!(run_status["value"], "Unknown");

    // Tekton finishes the run: explain shows `succeeded` holding and the decision taking it
    let completion = {
        let t: jiff::Timestamp = started.parse().expect("a timestamp");
        (t + jiff::SignedDuration::from_secs(5)).to_string()
    };
    tekton::set_status(
        &s.runs(),
        &run,
        tekton::pipelinerun_finished(
            &run,
            &["prepare"],
            "True",
            "Succeeded",
            &tekton::tasks_message(1, 0, 0, 0),
            &started,
            &completion,
        ),
    )
    .await;
    let e = explain_json(&s, &name);
    assert_eq!(chosen(&e), vec!["succeeded".to_string()], "{e:#}");
    assert_eq!(e["explanation"]["decision"]["transition"], "succeeded");
    assert_eq!(e["explanation"]["decision"]["phase"], "Completed");

    // the text form, like kubectl describe
    let out = lifecycle(
        &s,
        &["explain", &format!("workflowexecution/{name}"), "-n", &s.ns],
    );
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.contains(&format!("Resource:    WorkflowExecution {}/{name}", s.ns)),
        "{t}"
    );
    assert!(t.contains("Phase:       Running"), "{t}");
    assert!(
        t.contains(". succeeded -> Completed: holds: taken now"),
        "{t}"
    );
    assert!(t.contains("Transition:  succeeded"), "{t}");

    // a resource that is not there
    let out = lifecycle(&s, &["explain", "nope", "-n", &s.ns]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("WorkflowExecution {}/nope not found", s.ns))
    );
}

/// The default rules in `dir` with `edit` applied, and their templates beside them.
fn edited_rules(dir: &std::path::Path, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let root = repo_root();
    std::fs::create_dir_all(dir.join("templates")).expect("a templates folder");
    for f in std::fs::read_dir(root.join("templates")).expect("templates") {
        let f = f.expect("a template");
        std::fs::copy(f.path(), dir.join("templates").join(f.file_name())).expect("copied");
    }
    let text = std::fs::read_to_string(root.join("lifecycle.yaml")).expect("lifecycle.yaml");
    let file = dir.join("lifecycle.yaml");
    std::fs::write(&file, edit(text)).expect("written");
    file
}

#[tokio::test]
async fn diff_lists_the_live_resources_whose_next_decision_differs_with_both_decisions() {
    let s = Scope::new("diff").await;
    let ctl = s.start("ctl", "1h").await;
    let running = unique_name("diff-running");
    s.create(&running, wfe_body("payments/deployment/api"))
        .await;
    s.wait_phase(&running, "Running").await;
    // an invalid target fails validation: Failed, no run
    let failed = unique_name("diff-failed");
    s.create(&failed, wfe_body("not-a-target")).await;
    s.wait_phase(&failed, "Failed").await;
    drop(ctl);

    // the proposed rules poll Running resources every 30 s instead of the setting
    let dir = s.dir.path().join("proposed");
    let proposed = edited_rules(&dir, |t| {
        assert!(t.contains("poll: \"{{ settings.pollInterval }}\""));
        t.replacen("poll: \"{{ settings.pollInterval }}\"", "poll: 30s", 1)
    });
    let proposed = proposed.display().to_string();
    let out = lifecycle(
        &s,
        &[
            "diff",
            "lifecycle.yaml",
            &proposed,
            "-n",
            &s.ns,
            "--format",
            "json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "diff exits 1 when the rules differ: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let changes: Vec<&str> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["what"].as_str().unwrap())
        .collect();
    assert_eq!(changes, vec!["phases.Running"], "{d:#}");
    assert_eq!(d["live"]["resources"], 2, "{d:#}");
    let differ = d["live"]["differ"].as_array().unwrap();
    assert_eq!(
        differ.len(),
        1,
        "only the Running resource's decision differs: {d:#}"
    );
    assert_eq!(differ[0]["resource"], format!("{}/{running}", s.ns));
    assert_eq!(differ[0]["phase"], "Running");
    assert_eq!(differ[0]["old"]["requeueAfter"], 1.0);
    assert_eq!(differ[0]["new"]["requeueAfter"], 30.0);

    let out = lifecycle(&s, &["diff", "lifecycle.yaml", &proposed, "-n", &s.ns]);
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("Live resources: 2, 1 whose next decision differs:"),
        "{t}"
    );
    assert!(
        t.contains(&format!("  {}/{running} (phase Running)", s.ns)),
        "{t}"
    );
    assert!(
        t.contains("    old: stays in Running; no effects; next look in 1s"),
        "{t}"
    );
    assert!(
        t.contains("    new: stays in Running; no effects; next look in 30s"),
        "{t}"
    );

    // the same rules: no change, and no live resource differs
    let out = lifecycle(
        &s,
        &["diff", "lifecycle.yaml", "lifecycle.yaml", "-n", &s.ns],
    );
    assert_eq!(out.status.code(), Some(0));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("No changes.") && t.contains("Live resources: 2, 0 whose next decision differs"),
        "{t}"
    );
}
