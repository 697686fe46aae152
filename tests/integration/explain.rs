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
