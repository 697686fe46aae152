//! Related objects (the TaskRuns a PipelineRun lists) are read from their watch cache only once
//! it shows the changes up to the PipelineRun's revision. Here Tekton writes the failed TaskRun
//! and then the failed PipelineRun, and nothing else touches TaskRuns: the TaskRun cache is
//! behind the run's revision by construction, until another TaskRun changes.

use super::*;
use std::time::Duration;

const GET_TASKRUN: &str = "lifecycle_api_requests_total{verb=\"get\",kind=\"TaskRun\"}";
const WAITING: &str = "lifecycle_related_waiting";

fn reads(result: &str) -> String {
    format!("lifecycle_related_reads_total{{kind=\"TaskRun\",result=\"{result}\"}}")
}

/// A controller on the default rules with `--cache-wait`.
async fn start(s: &Scope, cache_wait: &str) -> ControllerProcess {
    let mut args = s.run_args(&support::repo_root().join("lifecycle.yaml"), "1h");
    args.extend(["--cache-wait".to_string(), cache_wait.to_string()]);
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &args);
    ctl.wait_ready().await;
    ctl
}

/// Plays Tekton up to a failed run of two tasks, `prepare` succeeded and `restart` failed (the
/// TaskRuns first, then the run); returns the run's name.
async fn fail_run(s: &Scope, name: &str, target: &str) -> String {
    let run = run_name(target);
    let running = s.wait_phase(name, "Running").await;
    let started = text(&running, "/status/startTime");
    s.wait_run(&run).await;
    s.start_run(&run, &["prepare", "restart"], &started).await;
    finish_tasks_and_fail(s, &run, &started).await;
    run
}

async fn finish_tasks_and_fail(s: &Scope, run: &str, started: &str) {
    s.finish_task(
        run,
        "prepare",
        tekton::taskrun_status(
            run,
            "prepare",
            "True",
            "Succeeded",
            "All Steps have completed executing",
            vec![tekton::step_terminated("prepare", 0, "Completed")],
            started,
        ),
    )
    .await;
    s.finish_task(
        run,
        "restart",
        tekton::taskrun_status(
            run,
            "restart",
            "False",
            "Failed",
            "\"step-rollout\" exited with code 3",
            vec![
                tekton::step_terminated("drain", 0, "Completed"),
                tekton::step_terminated("rollout", 3, "Error"),
            ],
            started,
        ),
    )
    .await;
    tekton::set_status(
        &s.runs(),
        run,
        tekton::pipelinerun_finished(
            run,
            &["prepare", "restart"],
            "False",
            "Failed",
            &tekton::tasks_message(2, 1, 0, 0),
            started,
            started,
        ),
    )
    .await;
}

fn assert_failed_task(failed: &Value, run: &str) {
    let details = &failed["status"]["failureDetails"];
    assert_eq!(
        (
            &details["failedTaskIndex"],
            &details["failedTaskName"],
            &details["failedStepName"],
            &details["exitCode"],
            &details["reason"],
        ),
        (
            &json!(1),
            &json!(tekton::taskrun_name(run, "restart")),
            &json!("rollout"),
            &json!(3),
            &json!("TaskFailed"),
        ),
        "{failed}"
    );
    assert_eq!(
        failed["status"]["pipelineRunStatus"]["completedTasks"], 1,
        "{failed}"
    );
}

#[tokio::test]
async fn a_failed_run_waits_for_the_taskrun_cache_to_catch_up_and_reads_no_taskrun_from_the_api() {
    let s = Scope::new("related-wait").await;
    // long enough that only a TaskRun event can end the wait
    let ctl = start(&s, "120s").await;
    let name = unique_name("wait");
    let target = "shop/deployment/lagging";
    s.create_wfe(&name, target).await;
    let run = fail_run(&s, &name, target).await;

    // the run is Failed, its TaskRun cache behind: the decision waits instead of failing the
    // resource with a TaskRun read as it was before
    support::eventually(
        Duration::from_secs(30),
        "a read waiting for the TaskRun cache",
        || async { (ctl.metric(WAITING).await >= 1.0).then_some(()) },
    )
    .await;
    let waiting = s.get(&name).await.expect("the resource");
    assert_eq!(
        waiting["status"]["phase"], "Running",
        "decided on a cache behind the run: {waiting}"
    );

    // any later TaskRun change brings the cache past the run's revision
    tekton::create_taskruns(s.admin.clone(), &s.exec_ns, "neighbour", &["touch"]).await;
    let failed = s.wait_phase(&name, "Failed").await;
    assert_failed_task(&failed, &run);

    let m = ctl.metrics().await;
    assert_eq!(metric_value(&m, GET_TASKRUN), 0.0, "{m}");
    assert_eq!(metric_value(&m, &reads("api")), 0.0, "{m}");
    assert!(metric_value(&m, &reads("cache_after_wait")) >= 1.0, "{m}");
    assert_eq!(metric_value(&m, WAITING), 0.0, "{m}");
}

#[tokio::test]
async fn a_taskrun_cache_still_behind_after_the_wait_is_read_once_per_run_revision_from_the_api() {
    let s = Scope::new("related-read").await;
    let ctl = start(&s, "200ms").await;
    let name = unique_name("read");
    let target = "shop/deployment/quiet";
    s.create_wfe(&name, target).await;
    let run = run_name(target);
    let running = s.wait_phase(&name, "Running").await;
    let started = text(&running, "/status/startTime");
    s.wait_run(&run).await;
    s.start_run(&run, &["prepare", "restart"], &started).await;

    // Running, polled every second, the run unchanged: its two TaskRuns were read from the API
    // once, at the run's revision, and every later poll is served by that read
    s.wait(&name, "the run's Running mirrored", |v| {
        v.pointer("/status/pipelineRunStatus/totalTasks") == Some(&json!(2))
    })
    .await;
    support::eventually(
        Duration::from_secs(30),
        "polls served by the earlier read",
        || async { (ctl.metric(&reads("read_before")).await >= 4.0).then_some(()) },
    )
    .await;
    let m = ctl.metrics().await;
    assert_eq!(metric_value(&m, GET_TASKRUN), 2.0, "{m}");
    assert_eq!(metric_value(&m, &reads("api")), 2.0, "{m}");

    finish_tasks_and_fail(&s, &run, &started).await;
    let failed = s.wait_phase(&name, "Failed").await;
    assert_failed_task(&failed, &run);
    let m = ctl.metrics().await;
    // the failed run's revision: read once more, each TaskRun one GET
    assert_eq!(metric_value(&m, GET_TASKRUN), 4.0, "{m}");
    assert_eq!(metric_value(&m, &reads("api")), 4.0, "{m}");
}
