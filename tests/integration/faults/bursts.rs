use super::*;

#[tokio::test]
async fn a_burst_for_one_target_runs_exactly_one_and_leaves_nothing_locked() {
    let burst = size("LIFECYCLE_FAULT_BURST", 10);
    let s = Scope::new("fault-burst").await;
    let watch = RunWatch::start(s.runs()).await;
    let ctl = s.start("ctl", "3s").await;
    let target = "default/deployment/burst";
    let run = run_name(target);
    let names: Vec<String> = (0..burst).map(|_| unique_name("burst")).collect();
    futures::future::join_all(names.iter().map(|n| s.create_wfe(n, target))).await;
    let mut finished = Vec::new();
    for n in &names {
        finished.push(
            wait_for(&s, n, 60, "Running or Failed", |v| {
                matches!(phase(v), "Running" | "Failed")
            })
            .await,
        );
    }
    let r = s.wait_run(&run).await;
    let owner = text(&r, "/metadata/labels/kubernaut.ai~1workflow-execution");
    let winners: Vec<&Value> = finished.iter().filter(|v| phase(v) == "Running").collect();
    assert_eq!(winners.len(), 1, "exactly one runs: {finished:#?}");
    assert_eq!(text(winners[0], "/metadata/name"), owner);
    for v in finished.iter().filter(|v| phase(v) == "Failed") {
        assert_eq!(
            v["status"]["failureDetails"]["reason"], "ExecutionRaceCondition",
            "{v:#}"
        );
        assert_eq!(
            v["status"]["failureDetails"]["message"],
            format!("Race condition: PipelineRun '{run}' already exists for target resource (created by {owner}). This indicates RO routing may have failed.").as_str()
        );
        assert_eq!(v["status"]["failureDetails"]["wasExecutionFailure"], false);
    }
    // the winner finishes; after its cooldown the run is gone and the target free again
    let started = text(winners[0], "/status/startTime");
    tekton::set_status(
        &s.runs(),
        &run,
        tekton::pipelinerun_finished(
            &run,
            &[],
            "True",
            "Succeeded",
            &tekton::tasks_message(0, 0, 0, 0),
            &started,
            &tekton::now(),
        ),
    )
    .await;
    wait_for(&s, &owner, 60, "LockReleased", |v| {
        condition_status(v, "LockReleased") == "True"
    })
    .await;
    s.wait_run_gone(&run).await;
    let next = unique_name("after");
    s.create_wfe(&next, target).await;
    let v = s.wait_phase(&next, "Running").await;
    assert_eq!(text(&v, "/status/pipelineRunRef/name"), run);
    let r2 = s.wait_run(&run).await;
    assert_eq!(
        text(&r2, "/metadata/labels/kubernaut.ai~1workflow-execution"),
        next
    );
    assert_ne!(text(&r2, "/metadata/uid"), text(&r, "/metadata/uid"));
    watch.assert(&BTreeMap::from([(target_label(target), 2)]));
    // the losers' audit: one failure each
    for n in names.iter().filter(|n| **n != owner) {
        let records = until(30, "the losers' audit", || async {
            let r = s.audit_records(n);
            (!r.is_empty()).then_some(r)
        })
        .await;
        let types: Vec<&str> = records
            .iter()
            .map(|r| r["event_type"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(types, vec!["workflow.failed"], "{n}");
    }
    assert_no_panic(&s);
    drop(ctl);
    eprintln!(
        "figures: burst: {burst} resources for one target, 1 run, {} races",
        burst - 1
    );
}

// ---------------------------------------------------------------------------------------------
// 5. reload storms
