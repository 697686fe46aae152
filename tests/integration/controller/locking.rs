use super::*;

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
