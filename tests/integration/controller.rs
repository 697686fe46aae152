//! `lifecycle run` end to end: the controller runs as a separate process, as the unprivileged
//! controller identity with exactly the RBAC of deploy/rbac.yaml, on the default rules (or a copy
//! of them), against the real control plane. Tekton is played by the tests (tekton.rs).
//!
//! Every test has its own resource and execution namespaces and its own controller process, so
//! tests run in parallel. Nothing here waits for a fixed time: each step polls, with a deadline,
//! for the state it expects, and then compares exact values.

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

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_successful_run_completes_with_status_events_audit_and_metrics() {
    let s = Scope::new("success").await;
    let mut ctl = s.start("ctl", "1h").await;
    let revision = ctl.revision().await;
    let name = unique_name("restart");
    let target = "payments/deployment/api";
    let run = run_name(target);
    let mut body = wfe_body(target);
    body["metadata"] = json!({"labels": {"kubernaut.ai/correlation-id": "rr-77"}});
    s.create(&name, body).await;

    // Pending -> Running: the run is created, the resource points at it
    let running = s.wait_phase(&name, "Running").await;
    let started = text(&running, "/status/startTime");
    assert!(!started.is_empty(), "{running}");
    assert_eq!(text(&running, "/status/pipelineRunRef/name"), run);
    assert_eq!(text(&running, "/status/rulesRevision"), revision);
    assert_eq!(running["status"]["observedGeneration"], 1);
    assert_eq!(
        running["metadata"]["finalizers"],
        json!(["workflowexecution.kubernaut.ai/workflowexecution-cleanup"])
    );
    assert_condition(
        &running,
        "TektonPipelineCreated",
        "True",
        "PipelineCreated",
        &format!("PipelineRun {run} created in {} namespace", s.exec_ns),
    );
    assert_condition(
        &running,
        "Ready",
        "Unknown",
        "InProgress",
        "Workflow is running",
    );
    s.wait_run(&run).await;

    // Tekton starts two tasks; the first finishes
    s.start_run(&run, &["prepare", "restart"], &started).await;
    let mirrored = s
        .wait(&name, "the running PipelineRun mirrored", |v| {
            v["status"]["pipelineRunStatus"]["reason"] == "Running"
                && v["status"]["pipelineRunStatus"]["totalTasks"] == 2
        })
        .await;
    assert_eq!(
        mirrored["status"]["pipelineRunStatus"],
        json!({"status": "Unknown", "reason": "Running", "message": tekton::tasks_message(0, 0, 0, 0),
               "completedTasks": 0, "totalTasks": 2})
    );
    assert_condition(
        &mirrored,
        "TektonPipelineRunning",
        "True",
        "PipelineStarted",
        "Pipeline executing (Running)",
    );
    let done = |task: &str| {
        tekton::taskrun_status(
            &run,
            task,
            "True",
            "Succeeded",
            "All Steps have completed executing",
            vec![tekton::step_terminated(task, 0, "Completed")],
            &started,
        )
    };
    s.finish_task(&run, "prepare", done("prepare")).await;
    // a TaskRun change alone wakes no one: the 1 s poll picks it up
    s.wait(&name, "one completed task mirrored", |v| {
        v["status"]["pipelineRunStatus"]["completedTasks"] == 1
    })
    .await;
    s.finish_task(&run, "restart", done("restart")).await;

    // the run succeeds 75 s after the start (Tekton's completionTime, not the clock, counts)
    let completion = plus(&started, 75);
    let message = tekton::tasks_message(2, 0, 0, 0);
    tekton::set_status(
        &s.runs(),
        &run,
        tekton::pipelinerun_finished(
            &run,
            &["prepare", "restart"],
            "True",
            "Succeeded",
            &message,
            &started,
            &completion,
        ),
    )
    .await;
    let completed = s.wait_phase(&name, "Completed").await;
    let st = &completed["status"];
    assert_eq!(text(&completed, "/status/startTime"), started);
    assert_eq!(text(&completed, "/status/completionTime"), completion);
    assert_eq!(st["duration"], "1m15s");
    assert_eq!(st["pipelineRunRef"], json!({"name": run}));
    assert_eq!(
        st["pipelineRunStatus"],
        json!({"status": "True", "reason": "Succeeded", "message": message,
               "completedTasks": 2, "totalTasks": 2})
    );
    assert!(st.get("failureDetails").is_none(), "{st}");
    assert_eq!(st["observedGeneration"], 1);
    assert_eq!(st["rulesRevision"], revision.as_str());
    assert_condition(
        &completed,
        "TektonPipelineCreated",
        "True",
        "PipelineCreated",
        &format!("PipelineRun {run} created in {} namespace", s.exec_ns),
    );
    assert_condition(
        &completed,
        "TektonPipelineRunning",
        "True",
        "PipelineStarted",
        "Pipeline executing (Running)",
    );
    assert_condition(
        &completed,
        "TektonPipelineComplete",
        "True",
        "PipelineSucceeded",
        "All tasks completed successfully in 1m15s",
    );
    assert_condition(
        &completed,
        "AuditRecorded",
        "True",
        "AuditEventRecorded",
        "Audit event workflow.completed recorded",
    );
    assert_condition(
        &completed,
        "Ready",
        "True",
        "Succeeded",
        "Workflow completed successfully",
    );
    // the cooldown (1 h) holds the lock: the run stays, no release yet
    assert!(condition(&completed, "LockReleased").is_none());
    assert!(s.run(&run).await.is_some());

    // Events, exactly, once each, from the component named by the rules
    let events = s.wait_event(&name, "WorkflowCompleted").await;
    assert_eq!(
        shapes(&events),
        vec![
            event(
                "Normal",
                "PipelineRunCreated",
                &format!("Created PipelineRun {}/{run}", s.exec_ns)
            ),
            event(
                "Normal",
                "WorkflowCompleted",
                "Workflow restart-deployment completed successfully in 1m15s"
            ),
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| e.count == 1 && e.controller == "workflowexecution-controller"),
        "{events:?}"
    );

    // audit: workflow.started, then workflow.completed
    let records = s.wait_audit(&name, "workflow.completed").await;
    assert_eq!(records.len(), 2, "{records:#?}");
    let base = json!({
        "event_category": "workflow",
        "actor_type": "service",
        "actor_id": "workflowexecution-controller",
        "resource_type": "WorkflowExecution",
        "resource_id": name,
        "correlation_id": "rr-77",
        "namespace": s.ns,
    });
    for (record, (type_, action, phase)) in records.iter().zip([
        ("workflow.started", "started", "Running"),
        ("workflow.completed", "completed", "Completed"),
    ]) {
        for (k, v) in base.as_object().unwrap() {
            assert_eq!(&record[k], v, "{k} of {record}");
        }
        assert_eq!(record["event_type"], type_, "{record}");
        assert_eq!(record["event_action"], action, "{record}");
        assert_eq!(record["event_outcome"], "success", "{record}");
        let data = &record["event_data"];
        assert_eq!(data["workflow_id"], "restart-deployment");
        assert_eq!(data["workflow_version"], "1.2.0");
        assert_eq!(data["target_resource"], target);
        assert_eq!(data["phase"], phase);
        assert_eq!(
            data["container_image"],
            "quay.io/kubernaut/workflows/restart-deployment:v1.2.0"
        );
        assert_eq!(data["execution_name"], name.as_str());
        assert_eq!(data["pipelinerun_name"], run.as_str());
        assert_eq!(data["started_at"], started.as_str());
        assert!(
            is_event_id(record["event_id"].as_str().unwrap_or_default()),
            "{record}"
        );
    }
    assert_eq!(
        records[1]["event_data"]["completed_at"],
        completion.as_str()
    );
    assert_eq!(records[1]["event_data"]["duration"], "1m15s");
    assert_ne!(records[0]["event_id"], records[1]["event_id"]);
    assert!(records[0]["event_data"].get("completed_at").is_none());

    // metrics
    ctl.wait_metric(COMPLETED_TOTAL, 1.0).await;
    let m = ctl.metrics().await;
    assert_eq!(metric_value(&m, COMPLETED_TOTAL), 1.0, "{m}");
    assert_eq!(metric_value(&m, FAILED_TOTAL), 0.0, "{m}");
    assert_eq!(metric_value(&m, CREATIONS_TOTAL), 1.0, "{m}");
    let bucket = |le: &str| {
        metric_value(
            &m,
            &format!(
                "workflowexecution_reconciler_duration_seconds_bucket{{le=\"{le}\",outcome=\"Completed\"}}"
            ),
        )
    };
    assert_eq!((bucket("40.0"), bucket("80.0")), (0.0, 1.0), "{m}");
    assert_eq!(
        metric_value(
            &m,
            "workflowexecution_reconciler_duration_seconds_sum{outcome=\"Completed\"}"
        ),
        75.0
    );
    assert_eq!(metric_value(&m, "lifecycle_audit_delivered_total"), 2.0);
    assert_eq!(metric_value(&m, "lifecycle_audit_dropped_total"), 0.0);
    assert_eq!(
        metric_value(
            &m,
            "lifecycle_api_requests_total{verb=\"create\",kind=\"PipelineRun\"}"
        ),
        1.0
    );

    // SIGTERM: a clean stop
    let (code, log) = ctl.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        !log.contains(" WARN ") && !log.contains(" ERROR "),
        "warnings or errors logged:\n{log}"
    );
}

/// What a failed run writes, given the task that failed.
struct FailureCase {
    target: &'static str,
    /// The failed TaskRun's status (of task `restart`; task `prepare` succeeded before it).
    failed_task: fn(&str, &str) -> Value,
    reason: &'static str,
    step: &'static str,
    exit_code: i64,
    recommendation: Option<&'static str>,
    complete_reason: &'static str,
    complete_message: Option<&'static str>,
}

#[tokio::test]
async fn a_failed_task_fails_the_workflow_with_exact_failure_details() {
    let s = Scope::new("failure").await;
    let ctl = s.start("ctl", "1h").await;
    let cases = [
        FailureCase {
            // Tekton 1.12+: reason StepOOM on the TaskRun
            target: "shop/deployment/cart",
            failed_task: |run, at| tekton::taskrun_oom(run, "restart", "restart", at),
            reason: "OOMKilled",
            step: "restart",
            exit_code: 137,
            recommendation: Some(
                "The workflow task ran out of memory. Consider increasing task resource limits.",
            ),
            complete_reason: "OOMKilled",
            complete_message: Some("Pipeline task killed due to out of memory"),
        },
        FailureCase {
            // before Tekton 1.12: OOMKilled only in the step's terminated reason
            target: "shop/deployment/checkout",
            failed_task: |run, at| tekton::taskrun_oom_legacy(run, "restart", "restart", at),
            reason: "OOMKilled",
            step: "restart",
            exit_code: 137,
            recommendation: Some(
                "The workflow task ran out of memory. Consider increasing task resource limits.",
            ),
            complete_reason: "OOMKilled",
            complete_message: Some("Pipeline task killed due to out of memory"),
        },
        FailureCase {
            // a plain non-zero exit code in the second step
            target: "shop/deployment/search",
            failed_task: |run, at| {
                tekton::taskrun_status(
                    run,
                    "restart",
                    "False",
                    "Failed",
                    "\"step-rollout\" exited with code 3",
                    vec![
                        tekton::step_terminated("drain", 0, "Completed"),
                        tekton::step_terminated("rollout", 3, "Error"),
                        tekton::step_terminated("verify", 1, "Error"),
                    ],
                    at,
                )
            },
            reason: "TaskFailed",
            step: "rollout",
            exit_code: 3,
            recommendation: None,
            complete_reason: "TaskFailed",
            complete_message: None,
        },
    ];
    let mut names = Vec::new();
    for case in &cases {
        let name = unique_name("fail");
        s.create_wfe(&name, case.target).await;
        names.push(name);
    }
    for (case, name) in cases.iter().zip(&names) {
        let run = run_name(case.target);
        let running = s.wait_phase(name, "Running").await;
        let started = text(&running, "/status/startTime");
        s.wait_run(&run).await;
        s.start_run(&run, &["prepare", "restart"], &started).await;
        s.finish_task(
            &run,
            "prepare",
            tekton::taskrun_status(
                &run,
                "prepare",
                "True",
                "Succeeded",
                "All Steps have completed executing",
                vec![tekton::step_terminated("prepare", 0, "Completed")],
                &started,
            ),
        )
        .await;
        s.finish_task(&run, "restart", (case.failed_task)(&run, &started))
            .await;
        tekton::set_status(
            &s.runs(),
            &run,
            tekton::pipelinerun_finished(
                &run,
                &["prepare", "restart"],
                "False",
                "Failed",
                &tekton::tasks_message(2, 1, 0, 0),
                &started,
                &started,
            ),
        )
        .await;
    }
    for (case, name) in cases.iter().zip(&names) {
        let run = run_name(case.target);
        let message = tekton::tasks_message(2, 1, 0, 0);
        let failed = s.wait_phase(name, "Failed").await;
        let st = &failed["status"];
        let details = &st["failureDetails"];
        let started = text(&failed, "/status/startTime");
        let failed_at = text(&failed, "/status/failureDetails/failedAt");
        let before =
            lifecycle_engine::time::go_duration(seconds_between(&started, &failed_at) as f64);
        let mut summary = format!(
            "Workflow 'restart-deployment' failed on target '{}'.\nReason: {}\nError: {message}\nFailed after: {before}\n",
            case.target, case.reason
        );
        if let Some(r) = case.recommendation {
            summary.push_str(&format!("Recommendation: {r}\n"));
        }
        assert_eq!(
            details,
            &json!({
                "failedTaskIndex": 1,
                "failedTaskName": tekton::taskrun_name(&run, "restart"),
                "failedStepName": case.step,
                "exitCode": case.exit_code,
                "reason": case.reason,
                "message": message,
                "failedAt": failed_at,
                "executionTimeBeforeFailure": before,
                "naturalLanguageSummary": summary,
                "wasExecutionFailure": true,
            }),
            "{}",
            case.target
        );
        assert_eq!(text(&failed, "/status/completionTime"), failed_at);
        assert_eq!(st["duration"], before.as_str());
        assert_eq!(
            st["pipelineRunStatus"],
            json!({"status": "False", "reason": "Failed", "message": message,
                   "completedTasks": 1, "totalTasks": 2})
        );
        assert_condition(
            &failed,
            "TektonPipelineComplete",
            "False",
            case.complete_reason,
            case.complete_message.unwrap_or(&message),
        );
        assert_condition(&failed, "Ready", "False", case.reason, &message);
        assert_condition(
            &failed,
            "AuditRecorded",
            "True",
            "AuditEventRecorded",
            "Audit event workflow.failed recorded",
        );
        let events = s.wait_event(name, "WorkflowFailed").await;
        assert_eq!(
            shapes(&events),
            vec![
                event(
                    "Normal",
                    "PipelineRunCreated",
                    &format!("Created PipelineRun {}/{run}", s.exec_ns)
                ),
                event(
                    "Warning",
                    "WorkflowFailed",
                    &format!("Workflow restart-deployment failed: {}", case.reason)
                ),
            ]
        );
        let records = s.wait_audit(name, "workflow.failed").await;
        assert_eq!(records.len(), 2, "{records:#?}");
        let r = &records[1];
        assert_eq!(
            (&r["event_action"], &r["event_outcome"]),
            (&json!("failed"), &json!("failure"))
        );
        let data = &r["event_data"];
        assert_eq!(data["phase"], "Failed");
        assert_eq!(data["failure_reason"], case.reason);
        assert_eq!(data["failure_message"], message.as_str());
        assert_eq!(
            data["failed_task_name"],
            tekton::taskrun_name(&run, "restart").as_str()
        );
        assert_eq!(data["pipelinerun_name"], run.as_str());
        assert_eq!(data["started_at"], started.as_str());
        assert_eq!(data["completed_at"], failed_at.as_str());
        assert_eq!(data["duration"], before.as_str());
    }
    ctl.wait_metric(FAILED_TOTAL, 3.0).await;
    let m = ctl.metrics().await;
    assert_eq!(metric_value(&m, FAILED_TOTAL), 3.0, "{m}");
    assert_eq!(metric_value(&m, COMPLETED_TOTAL), 0.0, "{m}");
    assert_eq!(metric_value(&m, CREATIONS_TOTAL), 3.0, "{m}");
}

#[tokio::test]
async fn invalid_resources_fail_validation_with_exact_messages_and_create_no_run() {
    let s = Scope::new("invalid").await;
    let ctl = s.start("ctl", "1s").await;
    let parts = "targetResource must be in format {namespace}/{kind}/{name} (namespaced) or {kind}/{name} (cluster-scoped), got";
    let cases: Vec<(Value, String)> = vec![
        (
            {
                let mut b = wfe_body("default/deployment/nginx");
                b["spec"]["workflowRef"]["containerImage"] = json!("");
                b
            },
            "workflowRef.containerImage is required".into(),
        ),
        (wfe_body(""), "targetResource is required".into()),
        (wfe_body("default"), format!("{parts} 1 parts")),
        (wfe_body("a/b/c/d"), format!("{parts} 4 parts")),
        (
            wfe_body("ns//app"),
            "targetResource has empty part at position 1".into(),
        ),
        (
            wfe_body("/deployment/app"),
            "targetResource has empty part at position 0".into(),
        ),
    ];
    let mut names = Vec::new();
    for (body, _) in &cases {
        // the CRD admits every one of them: the controller reports the problem
        let name = unique_name("invalid");
        s.create(&name, body.clone()).await;
        names.push(name);
    }
    for ((body, message), name) in cases.iter().zip(&names) {
        let failed = s.wait_phase(name, "Failed").await;
        let target = text(body, "/spec/targetResource");
        let st = &failed["status"];
        let failed_at = text(&failed, "/status/failureDetails/failedAt");
        assert_eq!(
            st["failureDetails"],
            json!({
                "failedTaskIndex": 0,
                "failedTaskName": "",
                "reason": "ConfigurationError",
                "message": message,
                "failedAt": failed_at,
                "executionTimeBeforeFailure": "",
                "naturalLanguageSummary": format!(
                    "Workflow 'restart-deployment' failed on target '{target}'.\nReason: ConfigurationError\nError: {message}\n"
                ),
                "wasExecutionFailure": false,
            }),
            "{name}"
        );
        assert!(st.get("startTime").is_none(), "{st}");
        assert!(st.get("pipelineRunRef").is_none(), "{st}");
        assert_eq!(text(&failed, "/status/completionTime"), failed_at);
        assert_condition(&failed, "Ready", "False", "ConfigurationError", message);
        let events = s.wait_event(name, "WorkflowFailed").await;
        assert_eq!(
            shapes(&events),
            vec![event(
                "Warning",
                "WorkflowFailed",
                &format!("Pre-execution failure: ConfigurationError - {message}")
            )]
        );
        let records = s.wait_audit(name, "workflow.failed").await;
        assert_eq!(records.len(), 1, "{records:#?}");
        assert_eq!(
            records[0]["event_data"]["failure_reason"],
            "ConfigurationError"
        );
        assert_eq!(
            records[0]["event_data"]["failure_message"],
            message.as_str()
        );
    }
    assert_eq!(s.run_list().await, Vec::<Value>::new());
    ctl.wait_metric(FAILED_TOTAL, cases.len() as f64).await;
    let m = ctl.metrics().await;
    assert_eq!(metric_value(&m, FAILED_TOTAL), cases.len() as f64, "{m}");
    assert_eq!(metric_value(&m, CREATIONS_TOTAL), 0.0, "{m}");
    assert_eq!(
        metric_value(
            &m,
            "lifecycle_api_requests_total{verb=\"create\",kind=\"PipelineRun\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn the_pipelinerun_carries_params_labels_annotation_account_and_timeout() {
    let s = Scope::new("shape").await;
    let _ctl = s.start("ctl", "1h").await;

    // every kind of value, names in an order byte order sorts differently from case-folding
    let target = "payments-prod/statefulset/db.primary-replica_set-with-a-long-name--x-0123456789";
    let name = unique_name("shape");
    let mut body = wfe_body(target);
    body["spec"]["workflowRef"]["workflowId"] = json!("restart deployment/v2");
    body["spec"]["parameters"] = json!({
        "b_lower": "x=1,y=2",
        "NAMESPACE": "payments-prod",
        "B_UPPER": "line one\nline two\n",
        "Z": "héllo wörld ✓ 🚀",
        "A": "",
        "TARGET_RESOURCE": "someone/else/entirely",
        "QUOTE": "\"quoted\" 'single' {{ not a template }} ${NOT_EXPANDED}",
    });
    body["spec"]["executionConfig"] =
        json!({"timeout": "45m", "serviceAccountName": "cluster-admin-please"});
    s.create(&name, body).await;

    // no parameters, no executionConfig
    let bare_target = "node/worker-node-1";
    let bare = unique_name("bare");
    let mut bare_body = wfe_body(bare_target);
    bare_body["spec"]
        .as_object_mut()
        .unwrap()
        .remove("parameters");
    s.create(&bare, bare_body).await;

    s.wait_phase(&name, "Running").await;
    s.wait_phase(&bare, "Running").await;
    let run = s.wait_run(&run_name(target)).await;
    let expected_params = json!([
        {"name": "A", "value": ""},
        {"name": "B_UPPER", "value": "line one\nline two\n"},
        {"name": "NAMESPACE", "value": "payments-prod"},
        {"name": "QUOTE", "value": "\"quoted\" 'single' {{ not a template }} ${NOT_EXPANDED}"},
        {"name": "Z", "value": "héllo wörld ✓ 🚀"},
        {"name": "b_lower", "value": "x=1,y=2"},
        {"name": "TARGET_RESOURCE", "value": target},
    ]);
    assert_eq!(run["spec"]["params"], expected_params);
    assert_eq!(
        run["metadata"]["labels"],
        json!({
            "kubernaut.ai/workflow-execution": name,
            "kubernaut.ai/source-namespace": s.ns,
            "kubernaut.ai/workflow-id": "restart_deployment_v2",
            "kubernaut.ai/target-resource": "payments-prod__statefulset__db.primary-replica_set-with-a-long",
        })
    );
    assert_eq!(
        run["metadata"]["annotations"],
        json!({"kubernaut.ai/target-resource": target})
    );
    assert!(run["metadata"].get("ownerReferences").is_none(), "{run}");
    assert_eq!(
        run["spec"]["pipelineRef"],
        json!({"resolver": "bundles", "params": [
            {"name": "bundle", "value": "quay.io/kubernaut/workflows/restart-deployment:v1.2.0"},
            {"name": "name", "value": "workflow"},
            {"name": "kind", "value": "pipeline"},
        ]})
    );
    // the resource cannot pick the account its workflow runs as
    assert_eq!(
        run["spec"]["taskRunTemplate"],
        json!({"serviceAccountName": "kubernaut-workflow-runner"})
    );
    assert_eq!(run["spec"]["timeouts"], json!({"pipeline": "45m"}));

    let bare_run = s.wait_run(&run_name(bare_target)).await;
    assert_eq!(
        bare_run["spec"]["params"],
        json!([{"name": "TARGET_RESOURCE", "value": bare_target}])
    );
    assert!(bare_run["spec"].get("timeouts").is_none(), "{bare_run}");
    assert_eq!(
        bare_run["metadata"]["labels"]["kubernaut.ai/target-resource"],
        "node__worker-node-1"
    );
    assert_eq!(s.run_list().await.len(), 2);
}

#[tokio::test]
async fn a_run_of_ours_that_already_exists_is_adopted() {
    let s = Scope::new("adopt").await;
    let name = unique_name("adopt");
    let target = "default/deployment/adopted";
    let run = run_name(target);
    // as if a controller created the run and crashed before writing status
    let mut object = kube::api::DynamicObject::new(&run, &tekton::pipelineruns())
        .within(&s.exec_ns)
        .data(json!({"spec": {"params": [{"name": "TARGET_RESOURCE", "value": target}]}}));
    object.metadata.labels = Some(
        [
            ("kubernaut.ai/workflow-execution".to_string(), name.clone()),
            ("kubernaut.ai/source-namespace".to_string(), s.ns.clone()),
        ]
        .into(),
    );
    let existing = s
        .runs()
        .create(&PostParams::default(), &object)
        .await
        .expect("creating the PipelineRun");
    let ctl = s.start("ctl", "1h").await;
    s.create_wfe(&name, target).await;

    let running = s.wait_phase(&name, "Running").await;
    assert_eq!(text(&running, "/status/pipelineRunRef/name"), run);
    assert_condition(
        &running,
        "TektonPipelineCreated",
        "True",
        "PipelineCreated",
        &format!("PipelineRun {run} created in {} namespace", s.exec_ns),
    );
    let runs = s.run_list().await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(
        runs[0]["metadata"]["uid"].as_str(),
        existing.metadata.uid.as_deref(),
        "the run was replaced"
    );
    let events = s.wait_event(&name, "PipelineRunCreated").await;
    assert_eq!(
        shapes(&events),
        vec![event(
            "Normal",
            "PipelineRunCreated",
            &format!("Created PipelineRun {}/{run}", s.exec_ns)
        )]
    );
    ctl.wait_metric(CREATIONS_TOTAL, 1.0).await;
}

/// The exact message of a lost race for `run`, held by resource `holder`.
fn race_message(run: &str, holder: &str) -> String {
    format!(
        "Race condition: PipelineRun '{run}' already exists for target resource (created by {holder}). This indicates RO routing may have failed."
    )
}

#[tokio::test]
async fn a_second_resource_for_a_busy_target_loses_the_race_and_leaves_the_first_alone() {
    let s = Scope::new("race").await;
    let _ctl = s.start("ctl", "1h").await;
    let target = "default/deployment/busy";
    let run = run_name(target);
    let first = unique_name("first");
    s.create_wfe(&first, target).await;
    let running = s.wait_phase(&first, "Running").await;
    let before = s.wait_run(&run).await;

    let second = unique_name("second");
    s.create_wfe(&second, target).await;
    let lost = s.wait_phase(&second, "Failed").await;
    let message = race_message(&run, &first);
    let details = &lost["status"]["failureDetails"];
    assert_eq!(details["reason"], "ExecutionRaceCondition");
    assert_eq!(details["message"], message.as_str());
    assert_eq!(details["wasExecutionFailure"], false);
    assert!(lost["status"].get("pipelineRunRef").is_none(), "{lost}");
    assert_condition(&lost, "Ready", "False", "ExecutionRaceCondition", &message);
    let events = s.wait_event(&second, "WorkflowFailed").await;
    assert_eq!(
        shapes(&events),
        vec![event(
            "Warning",
            "WorkflowFailed",
            &format!("Pre-execution failure: ExecutionRaceCondition - {message}")
        )]
    );
    let records = s.wait_audit(&second, "workflow.failed").await;
    assert_eq!(records.len(), 1);
    // the loser's audit record names no run: the one with the lock's name is not its own
    assert!(
        records[0]["event_data"].get("pipelinerun_name").is_none(),
        "{}",
        records[0]
    );

    // the first resource and its run are untouched
    let after = s.run(&run).await.expect("the first resource's run");
    assert_eq!(before["metadata"]["uid"], after["metadata"]["uid"]);
    assert_eq!(before["metadata"]["labels"], after["metadata"]["labels"]);
    assert_eq!(before["spec"], after["spec"]);
    let still = s.get(&first).await.expect("the first resource");
    assert_eq!(still["status"]["phase"], "Running");
    assert_eq!(still["status"]["startTime"], running["status"]["startTime"]);
    assert_eq!(s.events(&first).await.len(), 1);
}

#[tokio::test]
async fn five_resources_created_at_once_for_one_target_make_exactly_one_run() {
    let s = Scope::new("five").await;
    let ctl = s.start("ctl", "3s").await;
    let target = "default/deployment/contended";
    let run = run_name(target);
    let names: Vec<String> = (0..5).map(|_| unique_name("contender")).collect();
    futures::future::join_all(names.iter().map(|n| s.create_wfe(n, target))).await;

    let mut finals = Vec::new();
    for n in &names {
        finals.push(
            s.wait(n, "Running or Failed", |v| {
                matches!(v["status"]["phase"].as_str(), Some("Running" | "Failed"))
            })
            .await,
        );
    }
    let runs = s.run_list().await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let winner = text(
        &runs[0],
        "/metadata/labels/kubernaut.ai~1workflow-execution",
    );
    assert!(names.contains(&winner), "{winner}");
    let message = race_message(&run, &winner);
    for (n, v) in names.iter().zip(&finals) {
        if *n == winner {
            assert_eq!(v["status"]["phase"], "Running", "{v}");
            assert_eq!(text(v, "/status/pipelineRunRef/name"), run);
        } else {
            assert_eq!(v["status"]["phase"], "Failed", "{v}");
            assert_eq!(
                v["status"]["failureDetails"]["reason"],
                "ExecutionRaceCondition"
            );
            assert_eq!(v["status"]["failureDetails"]["message"], message.as_str());
        }
    }
    ctl.wait_metric(CREATIONS_TOTAL, 1.0).await;
    ctl.wait_metric(FAILED_TOTAL, 4.0).await;

    // the winner finishes; after its cooldown the lock is free again, and only the winner
    // released it
    let started = text(
        &finals[names.iter().position(|n| *n == winner).unwrap()],
        "/status/startTime",
    );
    tekton::set_status(
        &s.runs(),
        &run,
        tekton::pipelinerun_finished(&run, &[], "True", "Succeeded", "done", &started, &started),
    )
    .await;
    s.wait_phase(&winner, "Completed").await;
    s.wait(&winner, "the lock released", |v| {
        condition(v, "LockReleased").is_some()
    })
    .await;
    s.wait_run_gone(&run).await;
    for n in names.iter().filter(|n| **n != winner) {
        let v = s.get(n).await.expect("a loser");
        assert!(condition(&v, "LockReleased").is_none(), "{v}");
        assert!(
            !s.events(n).await.iter().any(|e| e.reason == "LockReleased"),
            "{n}"
        );
    }

    // a new request for the same target now runs
    let next = unique_name("next");
    s.create_wfe(&next, target).await;
    let running = s.wait_phase(&next, "Running").await;
    assert_eq!(text(&running, "/status/pipelineRunRef/name"), run);
    let runs = s.run_list().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(
        text(
            &runs[0],
            "/metadata/labels/kubernaut.ai~1workflow-execution"
        ),
        next
    );
}

#[tokio::test]
async fn a_run_deleted_from_outside_fails_the_workflow() {
    let s = Scope::new("external").await;
    let ctl = s.start("ctl", "1h").await;
    let name = unique_name("external");
    let target = "default/deployment/external";
    let run = run_name(target);
    s.create_wfe(&name, target).await;
    let running = s.wait_phase(&name, "Running").await;
    let started = text(&running, "/status/startTime");
    s.wait_run(&run).await;
    tekton::set_status(
        &s.runs(),
        &run,
        tekton::pipelinerun_running(&run, &["a"], &started),
    )
    .await;
    s.wait(&name, "the running run mirrored", |v| {
        v["status"]["pipelineRunStatus"]["reason"] == "Running"
    })
    .await;

    s.runs()
        .delete(&run, &DeleteParams::default())
        .await
        .expect("deleting the PipelineRun");
    let failed = s.wait_phase(&name, "Failed").await;
    let details = &failed["status"]["failureDetails"];
    assert_eq!(details["reason"], "Unknown");
    assert_eq!(details["message"], "PipelineRun was deleted externally");
    assert_eq!(details["wasExecutionFailure"], false);
    assert_eq!(details["failedTaskIndex"], 0);
    assert_eq!(details["failedTaskName"], "");
    // the last state seen of the run stays
    assert_eq!(failed["status"]["pipelineRunStatus"]["reason"], "Running");
    assert_eq!(text(&failed, "/status/pipelineRunRef/name"), run);
    assert_condition(
        &failed,
        "Ready",
        "False",
        "Unknown",
        "PipelineRun was deleted externally",
    );
    let events = s.wait_event(&name, "WorkflowFailed").await;
    assert_eq!(
        shapes(&events)[1..],
        [event(
            "Warning",
            "WorkflowFailed",
            "Workflow restart-deployment failed: Unknown"
        )]
    );
    let records = s.wait_audit(&name, "workflow.failed").await;
    assert_eq!(records[1]["event_data"]["failure_reason"], "Unknown");
    // nothing re-creates it
    assert!(s.run(&run).await.is_none());
    ctl.wait_metric(CREATIONS_TOTAL, 1.0).await;
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

#[tokio::test]
async fn the_cooldown_releases_the_lock_once() {
    let s = Scope::new("cooldown").await;
    let mut ctl = s.start("ctl-1", "3s").await;
    let name = unique_name("cool");
    let target = "default/deployment/cooling";
    let (run, started) = running(&s, &name, target).await;
    succeed(&s, &run, &started).await;
    let completed = s.wait_phase(&name, "Completed").await;
    assert!(condition(&completed, "LockReleased").is_none());
    // the process that waits for the cooldown's end goes; the next one releases the lock
    ctl.kill();
    let mut ctl = s.start("ctl-2", "3s").await;

    let released = s
        .wait(&name, "LockReleased", |v| {
            condition(v, "LockReleased").is_some()
        })
        .await;
    let message = format!("Lock released for {target} after cooldown");
    assert_condition(
        &released,
        "LockReleased",
        "True",
        "CooldownElapsed",
        &message,
    );
    let since = condition(&released, "LockReleased").unwrap()["lastTransitionTime"].clone();
    assert_eq!(released["status"]["phase"], "Completed");
    s.wait_run_gone(&run).await;
    let events = s.wait_event(&name, "LockReleased").await;
    assert_eq!(
        shapes(&events)[2..],
        [event("Normal", "LockReleased", &message)]
    );
    const DELETES: &str = "lifecycle_api_requests_total{verb=\"delete\",kind=\"PipelineRun\"}";
    ctl.wait_metric(DELETES, 1.0).await;

    // later reconciles (a change to the resource, then a restart) release nothing again
    const RECONCILES: &str = "lifecycle_reconciles_total{result=\"ok\"}";
    let before = ctl.metric(RECONCILES).await;
    let patch = json!({"metadata": {"annotations": {"example.com/touched": "1"}}});
    s.wfes()
        .patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("annotating the resource");
    support::eventually(
        std::time::Duration::from_secs(30),
        "a reconcile after the change",
        || async { (ctl.metric(RECONCILES).await > before).then_some(()) },
    )
    .await;
    ctl.wait_metric(DELETES, 1.0).await;
    ctl.kill();
    let ctl2 = s.start("ctl-3", "3s").await;
    support::eventually(
        std::time::Duration::from_secs(30),
        "a reconcile by the restarted controller",
        || async { (ctl2.metric(RECONCILES).await >= 1.0).then_some(()) },
    )
    .await;
    ctl2.wait_metric(DELETES, 0.0).await;
    let after = s.get(&name).await.expect("the resource");
    assert_eq!(
        condition(&after, "LockReleased").unwrap()["lastTransitionTime"],
        since
    );
    let events = s.events(&name).await;
    assert_eq!(count(&events, "LockReleased"), 1, "{events:?}");
    assert_eq!(events.len(), 3, "{events:?}");
}

#[tokio::test]
async fn deleting_a_resource_deletes_its_own_run_and_never_another() {
    let s = Scope::new("delete").await;
    let ctl = s.start("ctl", "1h").await;

    // a Running resource: its run is deleted (the workflow cancelled)
    let active = unique_name("active");
    let (active_run, _) = running(&s, &active, "default/deployment/active").await;
    // a Completed one in its cooldown: its run, still holding the lock, is deleted too
    let cooling = unique_name("cooling");
    let (cooling_run, started) = running(&s, &cooling, "default/deployment/cooling").await;
    succeed(&s, &cooling_run, &started).await;
    s.wait_phase(&cooling, "Completed").await;
    // a race loser: the run with its lock's name belongs to the winner
    let winner = unique_name("winner");
    let (shared_run, _) = running(&s, &winner, "default/deployment/shared").await;
    let loser = unique_name("loser");
    s.create_wfe(&loser, "default/deployment/shared").await;
    s.wait_phase(&loser, "Failed").await;
    let shared_before = s.run(&shared_run).await.expect("the winner's run");

    let wfes = s.wfes();
    for n in [&active, &cooling, &loser] {
        wfes.delete(n, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting {n}: {e}"));
    }
    for (n, run, phase) in [
        (&active, &active_run, "Running"),
        (&cooling, &cooling_run, "Completed"),
    ] {
        s.wait_gone(n).await;
        s.wait_run_gone(run).await;
        let events = s.wait_event(n, "WorkflowExecutionDeleted").await;
        assert_eq!(
            shapes(&events).last().unwrap(),
            &event(
                "Normal",
                "WorkflowExecutionDeleted",
                &format!("WorkflowExecution cleanup completed (phase: {phase})")
            )
        );
    }
    s.wait_gone(&loser).await;
    let events = s.wait_event(&loser, "WorkflowExecutionDeleted").await;
    assert_eq!(
        shapes(&events),
        vec![
            event(
                "Warning",
                "WorkflowFailed",
                &format!(
                    "Pre-execution failure: ExecutionRaceCondition - {}",
                    race_message(&shared_run, &winner)
                )
            ),
            event(
                "Normal",
                "WorkflowExecutionDeleted",
                "WorkflowExecution cleanup completed (phase: Failed)"
            ),
        ]
    );
    // the winner and its run are untouched
    let shared_after = s.run(&shared_run).await.expect("the winner's run survives");
    assert_eq!(
        shared_before["metadata"]["uid"],
        shared_after["metadata"]["uid"]
    );
    assert_eq!(
        s.get(&winner).await.expect("the winner")["status"]["phase"],
        "Running"
    );
    ctl.wait_metric(
        "lifecycle_api_requests_total{verb=\"delete\",kind=\"PipelineRun\"}",
        2.0,
    )
    .await;
    let names: Vec<String> = s
        .run_list()
        .await
        .iter()
        .map(|r| text(r, "/metadata/name"))
        .collect();
    assert_eq!(names, vec![shared_run]);
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

#[tokio::test]
async fn rules_changes_are_reloaded_live_and_broken_ones_rejected() {
    let s = Scope::new("reload").await;
    let rules = copy_rules(&s, "rules");
    let template = rules.with_file_name("templates").join("pipelinerun.yaml");
    // as in a Pod: rejected changes are also recorded as Events on the Pod
    let pod = "lifecycle-controller-5f7b9c8d4-q2w3e";
    let mut ctl = ControllerProcess::spawn_with_env(
        s.env,
        s.dir.path(),
        "ctl",
        &s.run_args(&rules, "1h"),
        &[("POD_NAME", pod), ("POD_NAMESPACE", &s.ns)],
    );
    ctl.wait_ready().await;
    let first = ctl.revision().await;
    assert_eq!(
        first,
        revision_of(&support::repo_root().join("lifecycle.yaml"))
    );

    let before = unique_name("before");
    let (run, _) = running(&s, &before, "default/deployment/before").await;
    let v = s.get(&before).await.unwrap();
    assert_eq!(v["status"]["rulesRevision"], first.as_str());
    let r = s.run(&run).await.unwrap();
    assert!(
        r["metadata"]["labels"].get("example.com/variant").is_none(),
        "{r}"
    );
    assert_eq!(
        r["spec"]["taskRunTemplate"]["serviceAccountName"],
        "kubernaut-workflow-runner"
    );

    // a valid change: a new label in the template, a new default for a setting
    edit(
        &template,
        "    kubernaut.ai/source-namespace:",
        "    example.com/variant: \"v2\"\n    kubernaut.ai/source-namespace:",
    );
    edit(
        &rules,
        "runnerServiceAccount: kubernaut-workflow-runner",
        "runnerServiceAccount: runner-v2",
    );
    let second = revision_of(&rules);
    assert_ne!(second, first);
    support::eventually(
        std::time::Duration::from_secs(30),
        "the changed rules to be loaded",
        || async { (ctl.revision().await == second).then_some(()) },
    )
    .await;
    let after = unique_name("after");
    let (run2, _) = running(&s, &after, "default/deployment/after").await;
    let v = s.get(&after).await.unwrap();
    assert_eq!(v["status"]["rulesRevision"], second.as_str());
    let r = s.run(&run2).await.unwrap();
    assert_eq!(r["metadata"]["labels"]["example.com/variant"], "v2");
    assert_eq!(
        r["spec"]["taskRunTemplate"]["serviceAccountName"],
        "runner-v2"
    );
    // the run made under the first rules is left as it was
    let r = s.run(&run).await.unwrap();
    assert!(
        r["metadata"]["labels"].get("example.com/variant").is_none(),
        "{r}"
    );
    let m = ctl.metrics().await;
    assert!(
        metric_value(&m, "lifecycle_rules_reload_total{result=\"ok\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "lifecycle_rules_reload_total{result=\"error\"}"),
        0.0
    );

    // a broken change: rejected, reported, and the last good rules keep working
    let good = std::fs::read_to_string(&rules).unwrap();
    edit(&rules, "        to: Running\n", "        to: Runnning\n");
    let (code, body) = support::eventually(
        std::time::Duration::from_secs(30),
        "/readyz to show the rejected change",
        || async {
            ctl.readyz()
                .await
                .filter(|(_, body)| body.contains("REJECTED"))
        },
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&format!("(revision {second})"))
            && body.contains("unknown phase `Runnning`")
            && body.contains("lifecycle.yaml:"),
        "{body}"
    );
    assert_eq!(
        ctl.metric("lifecycle_rules_reload_total{result=\"error\"}")
            .await,
        1.0
    );
    let log = ctl.log();
    assert!(
        log.contains("rules change rejected") && log.contains("unknown phase `Runnning`"),
        "{log}"
    );
    let rejected = support::eventually(
        std::time::Duration::from_secs(30),
        "the RulesRejected Event on the Pod",
        || async {
            use k8s_openapi::api::events::v1::Event;
            let events = kube::Api::<Event>::namespaced(s.admin.clone(), &s.ns)
                .list(&Default::default())
                .await
                .expect("listing Events");
            events.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("RulesRejected")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
            })
        },
    )
    .await;
    assert_eq!(rejected.type_.as_deref(), Some("Warning"));
    assert_eq!(
        rejected.regarding.as_ref().and_then(|r| r.kind.as_deref()),
        Some("Pod")
    );
    assert!(
        rejected
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("unknown phase `Runnning`"),
        "{rejected:?}"
    );
    let third = unique_name("third");
    let (run3, _) = running(&s, &third, "default/deployment/third").await;
    let v = s.get(&third).await.unwrap();
    assert_eq!(v["status"]["rulesRevision"], second.as_str());
    let r = s.run(&run3).await.unwrap();
    assert_eq!(r["metadata"]["labels"]["example.com/variant"], "v2");

    // the resource started under the first rules finishes under the rules acting now
    let started = text(&s.get(&before).await.unwrap(), "/status/startTime");
    succeed(&s, &run, &started).await;
    let v = s.wait_phase(&before, "Completed").await;
    assert_eq!(v["status"]["rulesRevision"], second.as_str());

    // putting the good rules back clears the report
    std::fs::write(&rules, good).unwrap();
    support::eventually(
        std::time::Duration::from_secs(30),
        "/readyz to drop the report",
        || async {
            ctl.readyz()
                .await
                .filter(|(_, body)| !body.contains("REJECTED"))
        },
    )
    .await;
    assert_eq!(ctl.revision().await, second);
    assert_eq!(
        ctl.metric("lifecycle_rules_reload_total{result=\"error\"}")
            .await,
        1.0
    );
}

/// Asserts that every audit record sent about `name` (repeats included: a transition taken
/// again after a crash is sent again) carries the one id of its transition, so that a receiver
/// de-duplicating by id keeps one record per transition.
#[track_caller]
fn assert_one_id_per_transition(s: &Scope, name: &str) {
    let sent = s.audit_records_sent(name);
    let mut ids: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for r in &sent {
        ids.entry(r["event_type"].as_str().unwrap_or_default().to_string())
            .or_default()
            .insert(r["event_id"].as_str().unwrap_or_default().to_string());
    }
    let all: std::collections::BTreeSet<&String> = ids.values().flatten().collect();
    assert!(
        ids.values().all(|set| set.len() == 1) && all.len() == ids.len(),
        "{name}: a transition has several ids, or two share one: {ids:#?}\n{sent:#?}"
    );
}

/// Asserts every resource ends where it should after crashes: each target has exactly one run,
/// owned by the resource that is Running; the others for that target lost the race; every
/// transition was audited under one id and recorded as an Event at most once.
async fn assert_one_run_per_target(s: &Scope, resources: &[(String, &str)]) {
    let runs = s.run_list().await;
    let mut targets: Vec<&str> = resources.iter().map(|(_, t)| *t).collect();
    targets.sort();
    targets.dedup();
    let names: Vec<String> = runs.iter().map(|r| text(r, "/metadata/name")).collect();
    let mut expected: Vec<String> = targets.iter().map(|t| run_name(t)).collect();
    expected.sort();
    assert_eq!(names, expected, "one run per target");
    for target in &targets {
        let run = runs
            .iter()
            .find(|r| text(r, "/metadata/name") == run_name(target))
            .unwrap();
        let owner = text(run, "/metadata/labels/kubernaut.ai~1workflow-execution");
        for (n, _) in resources.iter().filter(|(_, t)| t == target) {
            let v = s.get(n).await.expect("resource");
            if *n == owner {
                assert_eq!(v["status"]["phase"], "Running", "{v}");
                assert_eq!(text(&v, "/status/pipelineRunRef/name"), run_name(target));
            } else {
                assert_eq!(v["status"]["phase"], "Failed", "{v}");
                assert_eq!(
                    v["status"]["failureDetails"]["message"],
                    race_message(&run_name(target), &owner).as_str()
                );
            }
        }
    }
    for (n, _) in resources {
        assert_one_id_per_transition(s, n);
        let events = s.events(n).await;
        for reason in ["PipelineRunCreated", "WorkflowFailed"] {
            assert!(count(&events, reason) <= 1, "{n}: {events:?}");
        }
    }
}

#[tokio::test]
async fn a_controller_killed_right_after_resources_appear_finishes_them_after_restart() {
    let s = Scope::new("crash-early").await;
    let mut ctl = s.start("ctl-1", "1h").await;
    let resources: Vec<(String, &str)> = [
        "default/deployment/a",
        "default/deployment/b",
        "default/deployment/c",
        "default/deployment/d",
        "default/deployment/shared",
        "default/deployment/shared",
    ]
    .into_iter()
    .map(|t| (unique_name("early"), t))
    .collect();
    futures::future::join_all(resources.iter().map(|(n, t)| s.create_wfe(n, t))).await;
    ctl.kill();

    // again: killed as soon as anything has happened
    let mut ctl = s.start("ctl-2", "1h").await;
    support::eventually(
        std::time::Duration::from_secs(60),
        "the first PipelineRun",
        || async { (!s.run_list().await.is_empty()).then_some(()) },
    )
    .await;
    ctl.kill();

    let ctl = s.start("ctl-3", "1h").await;
    for (n, _) in &resources {
        s.wait(n, "Running or Failed", |v| {
            matches!(v["status"]["phase"].as_str(), Some("Running" | "Failed"))
        })
        .await;
    }
    assert_one_run_per_target(&s, &resources).await;
    // the survivors run to completion
    for (n, t) in &resources {
        let v = s.get(n).await.unwrap();
        if v["status"]["phase"] == "Running" {
            succeed(&s, &run_name(t), &text(&v, "/status/startTime")).await;
            s.wait_phase(n, "Completed").await;
        }
    }
    ctl.wait_metric(COMPLETED_TOTAL, 5.0).await;
}

#[tokio::test]
async fn a_controller_killed_mid_lifecycle_finishes_every_resource_after_restart() {
    let s = Scope::new("crash-mid").await;
    let mut ctl = s.start("ctl-1", "1h").await;
    let targets = [
        "default/deployment/succeeds",
        "default/deployment/fails",
        "default/deployment/keeps-running",
        "default/deployment/deleted-meanwhile",
    ];
    let mut resources = Vec::new();
    let mut started = Vec::new();
    for t in targets {
        let n = unique_name("mid");
        let (_, at) = running(&s, &n, t).await;
        resources.push((n, t));
        started.push(at);
    }
    ctl.kill();

    // while no controller runs: one run succeeds, one fails, a new resource appears
    succeed(&s, &run_name(targets[0]), &started[0]).await;
    tekton::set_status(
        &s.runs(),
        &run_name(targets[1]),
        tekton::pipelinerun_finished(
            &run_name(targets[1]),
            &[],
            "False",
            "PipelineRunTimeout",
            "PipelineRun \"x\" failed to finish within \"1h0m0s\"",
            &started[1],
            &started[1],
        ),
    )
    .await;
    let late = unique_name("late");
    s.create_wfe(&late, "default/deployment/late").await;
    s.wfes()
        .delete(&resources[3].0, &DeleteParams::default())
        .await
        .expect("deleting a resource");

    let ctl = s.start("ctl-2", "1h").await;
    s.wait_phase(&resources[0].0, "Completed").await;
    let failed = s.wait_phase(&resources[1].0, "Failed").await;
    assert_eq!(
        failed["status"]["failureDetails"]["reason"],
        "DeadlineExceeded"
    );
    s.wait_phase(&late, "Running").await;
    let v = s.get(&resources[2].0).await.unwrap();
    assert_eq!(v["status"]["phase"], "Running");
    succeed(&s, &run_name(targets[2]), &started[2]).await;
    s.wait_phase(&resources[2].0, "Completed").await;
    s.wait_gone(&resources[3].0).await;
    s.wait_run_gone(&run_name(targets[3])).await;
    let events = s
        .wait_event(&resources[3].0, "WorkflowExecutionDeleted")
        .await;
    assert_eq!(
        shapes(&events).last().unwrap(),
        &event(
            "Normal",
            "WorkflowExecutionDeleted",
            "WorkflowExecution cleanup completed (phase: Running)"
        )
    );

    let runs = s.run_list().await;
    assert_eq!(runs.len(), 4, "{runs:#?}");
    for (n, _) in resources.iter().chain([(late.clone(), "")].iter()) {
        assert_one_id_per_transition(&s, n);
    }
    // the second process created only the late resource's run
    ctl.wait_metric(CREATIONS_TOTAL, 1.0).await;
    ctl.wait_metric(COMPLETED_TOTAL, 2.0).await;
    ctl.wait_metric(FAILED_TOTAL, 1.0).await;
}

#[tokio::test]
async fn start_up_fails_on_broken_rules_and_on_kinds_the_cluster_lacks() {
    let s = Scope::new("startup").await;

    // broken rules: exit code 1 and the report, before touching the cluster
    let broken = copy_rules(&s, "broken");
    edit(&broken, "        to: Running\n", "        to: Runnning\n");
    let mut c = ControllerProcess::spawn(s.env, s.dir.path(), "broken", &s.run_args(&broken, "1h"));
    let (code, log) = c.wait_exit(std::time::Duration::from_secs(30)).await;
    assert_eq!(code, Some(1), "{log}");
    // the typo alone: not also the phases and the cooldown behind it
    assert!(log.contains("1 problem in the rules:"), "{log}");
    assert!(
        log.contains(&format!(
            "{}:273:13: phases.Pending.transitions[4].to: unknown phase `Runnning`",
            broken.display()
        )) || log.contains("unknown phase `Runnning`"),
        "{log}"
    );

    // no rules file at all: exit code 2
    let missing = s.dir.path().join("missing/lifecycle.yaml");
    let mut c =
        ControllerProcess::spawn(s.env, s.dir.path(), "missing", &s.run_args(&missing, "1h"));
    let (code, log) = c.wait_exit(std::time::Duration::from_secs(30)).await;
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains(&missing.display().to_string()) && log.contains("cannot read"),
        "{log}"
    );

    // rules that need a kind with no CustomResourceDefinition
    let unserved = copy_rules(&s, "unserved");
    edit(&unserved, "    kind: TaskRun\n", "    kind: StepRun\n");
    let mut c = ControllerProcess::spawn(
        s.env,
        s.dir.path(),
        "unserved",
        &s.run_args(&unserved, "1h"),
    );
    let (code, log) = c.wait_exit(std::time::Duration::from_secs(30)).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("error: the rules' related list `taskRuns` is StepRun (tekton.dev/v1), which this cluster does not serve"),
        "{log}"
    );
    assert!(
        log.contains("install its CustomResourceDefinition"),
        "{log}"
    );

    let unserved = copy_rules(&s, "unserved-execution");
    edit(
        &unserved,
        "  apiVersion: tekton.dev/v1\n  kind: PipelineRun\n",
        "  apiVersion: tekton.dev/v1beta7\n  kind: PipelineRun\n",
    );
    let mut c = ControllerProcess::spawn(
        s.env,
        s.dir.path(),
        "unserved-execution",
        &s.run_args(&unserved, "1h"),
    );
    let (code, log) = c.wait_exit(std::time::Duration::from_secs(30)).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("error: the rules' execution object is PipelineRun (tekton.dev/v1beta7), which this cluster does not serve"),
        "{log}"
    );

    // a kubeconfig context that does not exist
    let mut args = s.run_args(&support::repo_root().join("lifecycle.yaml"), "1h");
    let at = args.iter().position(|a| a == "--context").unwrap() + 1;
    args[at] = "no-such-context".into();
    let mut c = ControllerProcess::spawn(s.env, s.dir.path(), "no-context", &args);
    let (code, log) = c.wait_exit(std::time::Duration::from_secs(30)).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("error: cannot connect to the cluster: ") && log.contains("no-such-context"),
        "{log}"
    );
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(support::repo_root().join(path)).expect("repository file")
}

#[tokio::test]
async fn rules_mounted_from_configmaps_load_and_reload_on_the_kubelets_symlink_swap() {
    // as deploy/deployment.yaml mounts them: the rules ConfigMap at /etc/lifecycle, the
    // templates ConfigMap at /etc/lifecycle/templates
    let s = Scope::new("configmap").await;
    let etc = s.dir.path().join("etc-lifecycle");
    let rules_files = [("lifecycle.yaml", repo_file("lifecycle.yaml"))];
    let mut rules_volume = ConfigMapVolume::create(&etc, &rules_files);
    let template_files = |pipelinerun: String| {
        [
            (
                "failure-summary.txt",
                repo_file("templates/failure-summary.txt"),
            ),
            ("pipelinerun.yaml", pipelinerun),
        ]
    };
    let mut templates = ConfigMapVolume::create(
        &etc.join("templates"),
        &template_files(repo_file("templates/pipelinerun.yaml")),
    );
    let rules = etc.join("lifecycle.yaml");
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &s.run_args(&rules, "1h"));
    ctl.wait_ready().await;
    let first = ctl.revision().await;
    assert_eq!(
        first,
        revision_of(&support::repo_root().join("lifecycle.yaml"))
    );
    let before = unique_name("before");
    let (run, _) = running(&s, &before, "default/deployment/before").await;
    let r = s.run(&run).await.unwrap();
    assert!(
        r["metadata"]["labels"].get("example.com/variant").is_none(),
        "{r}"
    );

    // `kubectl apply -k deploy/` with a changed template: the kubelet swaps the folder
    templates.update(&template_files(
        repo_file("templates/pipelinerun.yaml").replacen(
            "    kubernaut.ai/source-namespace:",
            "    example.com/variant: \"v2\"\n    kubernaut.ai/source-namespace:",
            1,
        ),
    ));
    let second = revision_of(&rules);
    assert_ne!(second, first);
    support::eventually(
        std::time::Duration::from_secs(30),
        "the swapped templates to be loaded",
        || async { (ctl.revision().await == second).then_some(()) },
    )
    .await;
    let after = unique_name("after");
    let (run, _) = running(&s, &after, "default/deployment/after").await;
    let r = s.run(&run).await.unwrap();
    assert_eq!(r["metadata"]["labels"]["example.com/variant"], "v2");
    assert_eq!(
        s.get(&after).await.unwrap()["status"]["rulesRevision"],
        second.as_str()
    );

    // and a changed setting default in the rules ConfigMap
    rules_volume.update(&[(
        "lifecycle.yaml",
        repo_file("lifecycle.yaml").replacen(
            "runnerServiceAccount: kubernaut-workflow-runner",
            "runnerServiceAccount: runner-v3",
            1,
        ),
    )]);
    let third = revision_of(&rules);
    assert_ne!(third, second);
    support::eventually(
        std::time::Duration::from_secs(30),
        "the swapped rules to be loaded",
        || async { (ctl.revision().await == third).then_some(()) },
    )
    .await;
    let last = unique_name("last");
    let (run, _) = running(&s, &last, "default/deployment/last").await;
    let r = s.run(&run).await.unwrap();
    assert_eq!(
        r["spec"]["taskRunTemplate"]["serviceAccountName"],
        "runner-v3"
    );
    assert_eq!(r["metadata"]["labels"]["example.com/variant"], "v2");
    assert_eq!(
        ctl.metric("lifecycle_rules_reload_total{result=\"error\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_create_forbidden_by_rbac_fails_the_workflow_with_the_api_servers_message() {
    // deploy/rbac.yaml's execution Role without `create` on PipelineRuns
    let s = Scope::with_execution_role("forbidden", |role| {
        for rule in role.rules.iter_mut().flatten() {
            if rule.resources.iter().flatten().any(|r| r == "pipelineruns") {
                rule.verbs.retain(|v| v != "create");
            }
        }
    })
    .await;
    let _ctl = s.start("ctl", "1s").await;
    let name = unique_name("forbidden");
    s.create_wfe(&name, "default/deployment/forbidden").await;
    let failed = s.wait_phase(&name, "Failed").await;
    let error = format!(
        "pipelineruns.tekton.dev is forbidden: User \"{}\" cannot create resource \"pipelineruns\" in API group \"tekton.dev\" in the namespace \"{}\"",
        support::CONTROLLER_USER,
        s.exec_ns
    );
    let message = format!("Failed to create PipelineRun: {error}");
    let details = &failed["status"]["failureDetails"];
    assert_eq!(details["reason"], "Forbidden");
    assert_eq!(details["message"], message.as_str());
    assert_eq!(details["wasExecutionFailure"], false);
    assert!(failed["status"].get("pipelineRunRef").is_none(), "{failed}");
    assert_condition(
        &failed,
        "TektonPipelineCreated",
        "False",
        "RBACDenied",
        &error,
    );
    assert_condition(&failed, "Ready", "False", "Forbidden", &message);
    let events = s.wait_event(&name, "WorkflowFailed").await;
    assert_eq!(
        shapes(&events),
        vec![event(
            "Warning",
            "WorkflowFailed",
            &format!("Pre-execution failure: Forbidden - {message}")
        )]
    );
    assert_eq!(s.run_list().await, Vec::<Value>::new());
}

#[tokio::test]
async fn a_create_over_quota_fails_the_workflow_as_resource_exhausted() {
    use k8s_openapi::api::core::v1::ResourceQuota;
    let s = Scope::new("quota").await;
    // no quota controller runs here: the quota's status is written as it would write it
    let quotas: kube::Api<ResourceQuota> = kube::Api::namespaced(s.admin.clone(), &s.exec_ns);
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "no-runs"},
        "spec": {"hard": {"count/pipelineruns.tekton.dev": "0"}},
    }))
    .unwrap();
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("creating the ResourceQuota");
    quotas
        .patch_status(
            "no-runs",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {
                "hard": {"count/pipelineruns.tekton.dev": "0"},
                "used": {"count/pipelineruns.tekton.dev": "0"},
            }})),
        )
        .await
        .expect("writing the ResourceQuota's status");
    let _ctl = s.start("ctl", "1s").await;
    let name = unique_name("quota");
    s.create_wfe(&name, "default/deployment/quota").await;
    let failed = s.wait_phase(&name, "Failed").await;
    let error = format!(
        "pipelineruns.tekton.dev \"{}\" is forbidden: exceeded quota: no-runs, requested: count/pipelineruns.tekton.dev=1, used: count/pipelineruns.tekton.dev=0, limited: count/pipelineruns.tekton.dev=0",
        run_name("default/deployment/quota")
    );
    let message = format!("Failed to create PipelineRun: {error}");
    let details = &failed["status"]["failureDetails"];
    assert_eq!(details["reason"], "ResourceExhausted", "{failed}");
    assert_eq!(details["message"], message.as_str());
    assert_condition(
        &failed,
        "TektonPipelineCreated",
        "False",
        "QuotaExceeded",
        &error,
    );
    assert_condition(&failed, "Ready", "False", "ResourceExhausted", &message);
    assert_eq!(s.run_list().await, Vec::<Value>::new());
}

#[tokio::test]
async fn a_reload_that_moves_the_execution_namespace_never_fails_running_workflows() {
    // the execution namespace comes from the rules file here (no --set), as in a deployment
    // that changes it in its ConfigMap
    let s = Scope::new("move").await;
    let rules = copy_rules(&s, "rules");
    let setting = |ns: &str| format!("executionNamespace: {ns}");
    edit(
        &rules,
        &setting("kubernaut-workflows"),
        &setting(&s.exec_ns),
    );
    let moved_to = s.env.namespace("move-y").await;
    support::grant_namespaced_rbac(s.env, &support::default_execution_namespace(), &moved_to).await;
    let mut args = s.run_args(&rules, "1h");
    let at = args
        .iter()
        .position(|a| a.starts_with("executionNamespace="))
        .expect("the execution namespace argument");
    args.drain(at - 1..=at);
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &args);
    ctl.wait_ready().await;
    let name = unique_name("moving");
    let (run, started) = running(&s, &name, "default/deployment/moving").await;

    edit(&rules, &setting(&s.exec_ns), &setting(&moved_to));
    let second = revision_of(&rules);
    support::eventually(
        std::time::Duration::from_secs(30),
        "the changed rules to be loaded",
        || async { (ctl.revision().await == second).then_some(()) },
    )
    .await;

    // the workflow still runs (its run is where it was created); it ends when its run ends
    succeed(&s, &run, &started).await;
    let v = s
        .wait(&name, "a terminal phase", |v| {
            matches!(v["status"]["phase"].as_str(), Some("Completed" | "Failed"))
        })
        .await;
    assert_eq!(
        v["status"]["phase"],
        "Completed",
        "a running workflow was failed by a rules change: {}",
        serde_json::to_string_pretty(&v["status"]).unwrap_or_default()
    );
}

/// A stand-in audit receiver: answers 503 to the first `failures` batches, then accepts;
/// returns its base URL and what it accepted (path, content type, body).
async fn audit_receiver(
    failures: usize,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String, Value)>>>,
) {
    use axum::http::{HeaderMap, StatusCode, Uri};
    let accepted: std::sync::Arc<std::sync::Mutex<Vec<(String, String, Value)>>> =
        Default::default();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let store = accepted.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
        let store = store.clone();
        let refused = refused.clone();
        async move {
            if refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < failures {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            store
                .lock()
                .unwrap()
                .push((uri.path().to_string(), content_type, body));
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the receiver");
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, accepted)
}

#[tokio::test]
async fn audit_records_reach_an_http_endpoint_at_least_once() {
    let s = Scope::new("audit-http").await;
    let (url, accepted) = audit_receiver(2).await;
    let mut args = s.run_args(&support::repo_root().join("lifecycle.yaml"), "1h");
    args.extend(["--audit".to_string(), format!("{url}/")]);
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &args);
    ctl.wait_ready().await;
    let name = unique_name("audited");
    let (run, started) = running(&s, &name, "default/deployment/audited").await;
    succeed(&s, &run, &started).await;
    s.wait_phase(&name, "Completed").await;
    // the file has both records; the endpoint gets the same, after refusing twice
    let in_file = s.wait_audit(&name, "workflow.completed").await;
    let received = support::eventually(
        std::time::Duration::from_secs(30),
        "both records at the endpoint",
        || async {
            let batches = accepted.lock().unwrap().clone();
            let mut seen = std::collections::HashSet::new();
            let records: Vec<Value> = batches
                .iter()
                .flat_map(|(_, _, body)| body.as_array().cloned().unwrap_or_default())
                .filter(|r| r["resource_id"] == name.as_str())
                .filter(|r| seen.insert(r["event_id"].to_string()))
                .collect();
            (records.len() == 2).then_some((batches, records))
        },
    )
    .await;
    let (batches, records) = received;
    for (path, content_type, body) in &batches {
        assert_eq!(path, "/api/v1/audit/events/batch");
        assert_eq!(content_type, "application/json");
        assert!(body.is_array(), "{body}");
    }
    assert_eq!(records, in_file);
    ctl.wait_metric("lifecycle_audit_dropped_total", 0.0).await;
}
