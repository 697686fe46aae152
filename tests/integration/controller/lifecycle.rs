use super::*;

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
