use super::*;

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
