//! The timer, retry and lookup examples: their scenario folders pass, and `simulate` plays every
//! attempt and every wait of them over the virtual clock, and the lookups of the objects it is
//! given.

use super::scenario::{collect, run_file};
use super::simulate::{self, Script};
use crate::rules::Rules;
use serde_json::Value;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scenarios_pass(folder: &str, rules: &str, at_least: usize) {
    let files = collect(&[root().join(folder)]).expect("the folder has scenarios");
    assert!(files.len() >= at_least, "{files:?}");
    let failures: Vec<String> = files
        .iter()
        .map(|f| run_file(f, &root().join(rules)))
        .filter(|o| !o.failures.is_empty())
        .map(|o| {
            format!(
                "{} ({}): {}",
                o.name,
                o.file.display(),
                o.failures.join("; ")
            )
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_retry_example_scenarios_pass() {
    scenarios_pass("tests/lifecycle-retry", "examples/pipeline-retry.yaml", 8);
}

#[test]
fn the_approval_example_scenarios_pass() {
    scenarios_pass("tests/lifecycle-approval", "examples/approval-gate.yaml", 4);
}

fn simulate(rules: &str, resource: &str, outcomes: &[&str]) -> (Value, Vec<(f64, String)>) {
    let rules = Rules::load(&root().join(rules), &[]).unwrap_or_else(|e| panic!("{e}"));
    let resource = super::read_object(&root().join(resource)).expect("resource");
    let start = crate::time::parse_secs("2026-01-01T00:00:00Z").expect("start");
    let mut parts = outcomes[0].splitn(3, ':');
    let script = Script {
        outcome: parts.next().unwrap_or_default().into(),
        reason: parts.next().unwrap_or_default().into(),
        message: parts.next().unwrap_or_default().into(),
        then: outcomes[1..].iter().map(|s| s.to_string()).collect(),
        after: 45.0,
        limit: 24.0 * 3600.0,
        objects: Vec::new(),
    };
    let world = simulate::run(&rules, resource, start, &script).unwrap_or_else(|e| panic!("{e}"));
    let creates = world
        .timeline
        .iter()
        .filter(|e| e.what == "create")
        .map(|e| (e.at, e.detail.clone()))
        .collect();
    let status = world.resource.as_ref().expect("resource")["status"].clone();
    (status, creates)
}

#[test]
fn simulate_plays_every_attempt_and_every_backoff() {
    let (status, creates) = simulate(
        "examples/pipeline-retry.yaml",
        "examples/pipeline-task.yaml",
        &["failed:PipelineRunTimeout"],
    );
    assert_eq!(status["phase"], "Failed", "{status}");
    assert_eq!(status["attempt"], 3, "{status}");
    // attempt 1 at 0s fails at 45s; 30s backoff; attempt 2 fails 45s later; 1m backoff
    let times: Vec<f64> = creates.iter().map(|(at, _)| *at).collect();
    assert_eq!(times, vec![0.0, 75.0, 180.0], "{creates:?}");
    assert!(creates[2].1.contains("nightly-build-3"), "{creates:?}");
}

#[test]
fn simulate_takes_one_outcome_per_attempt() {
    let (status, creates) = simulate(
        "examples/pipeline-retry.yaml",
        "examples/pipeline-task.yaml",
        &["failed:PipelineRunTimeout", "succeeded"],
    );
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(status["attempt"], 2, "{status}");
    assert_eq!(creates.len(), 2, "{creates:?}");
}

#[test]
fn simulate_plays_the_approval_timeout_at_its_deadline() {
    let (status, creates) = simulate(
        "examples/approval-gate.yaml",
        "examples/change-request.yaml",
        &["succeeded"],
    );
    assert_eq!(status["phase"], "Expired", "{status}");
    assert_eq!(status["phaseEnteredAt"], "2026-01-01T01:00:00Z", "{status}");
    assert!(creates.is_empty(), "{creates:?}");
}

#[test]
fn the_remediation_example_scenarios_pass() {
    scenarios_pass(
        "tests/lifecycle-remediation",
        "examples/remediation-lifecycle.yaml",
        11,
    );
}

#[test]
fn simulate_plays_the_lookups_of_the_objects_it_is_given() {
    let rules = Rules::load(&root().join("examples/remediation-lifecycle.yaml"), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let resource = super::read_object(&root().join("examples/remediation.yaml")).expect("example");
    let start = crate::time::parse_secs("2026-01-01T00:00:00Z").expect("start");
    let busy = serde_json::json!({
        "apiVersion": "example.com/v1", "kind": "Remediation",
        "metadata": {"name": "other", "namespace": "elsewhere"},
        "spec": {"image": "x", "target": "shop/web"},
        "status": {"phase": "Running"},
    });
    for (objects, phase) in [(vec![], "Succeeded"), (vec![busy], "Skipped")] {
        let script = Script {
            outcome: "succeeded".into(),
            reason: String::new(),
            message: String::new(),
            then: Vec::new(),
            after: 45.0,
            limit: 3600.0,
            objects,
        };
        let world = simulate::run(&rules, resource.clone(), start, &script)
            .unwrap_or_else(|e| panic!("{phase}: {e}"));
        let status = &world.resource.as_ref().expect("the resource exists")["status"];
        assert_eq!(status["phase"], phase, "{status}");
    }
}

#[test]
fn the_router_example_scenarios_pass() {
    scenarios_pass(
        "tests/lifecycle/router",
        "examples/router-lifecycle.yaml",
        24,
    );
}

/// One WorkflowExecution of the router profile, simulated with the earlier ones of its target
/// as objects; its status at the end.
fn route(rules: &Rules, n: usize, start: f64, earlier: &[Value], outcome: &str) -> Value {
    let mut resource =
        super::read_object(&root().join("examples/workflowexecution.yaml")).expect("example");
    resource["metadata"]["name"] = format!("restart-nginx-{n}").into();
    resource["metadata"]["uid"] = format!("router-chain-{n}").into();
    // a different workflow each time: the same one would wait for the cooldown
    resource["spec"]["workflowRef"]["workflowId"] = format!("workflow-{n}").into();
    let mut parts = outcome.splitn(3, ':');
    let script = Script {
        outcome: parts.next().unwrap_or_default().into(),
        reason: parts.next().unwrap_or_default().into(),
        message: parts.next().unwrap_or_default().into(),
        then: Vec::new(),
        after: 45.0,
        limit: 3600.0,
        objects: earlier.to_vec(),
    };
    let world = simulate::run(rules, resource, start, &script).unwrap_or_else(|e| panic!("{e}"));
    world.resource.expect("the resource exists")
}

#[test]
fn the_router_carries_the_counter_over_resources_until_the_target_is_exhausted() {
    let rules = Rules::load(&root().join("examples/router-lifecycle.yaml"), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let pull = "failed:Failed:ImagePullBackOff: image pull failed";
    let mut earlier: Vec<Value> = Vec::new();
    let mut start = crate::time::parse_secs("2026-01-01T00:00:00Z").expect("start");
    let mut backoffs = Vec::new();
    for n in 1..=5 {
        let done = route(&rules, n, start, &earlier, pull);
        let status = &done["status"];
        assert_eq!(status["phase"], "Failed", "{n}: {status}");
        assert_eq!(status["consecutiveFailures"], n, "{n}: {status}");
        let failed = crate::time::parse_secs(status["completionTime"].as_str().expect("time"))
            .expect("completionTime");
        let next = crate::time::parse_secs(status["nextAllowedExecution"].as_str().expect("next"))
            .expect("nextAllowedExecution");
        backoffs.push(next - failed);
        // one second too early: held back by the backoff (at the limit, by the limit first)
        let early = route(
            &rules,
            100 + n,
            next - 1.0,
            std::slice::from_ref(&done),
            "succeeded",
        );
        let skip = &early["status"]["skipDetails"];
        assert_eq!(
            early["status"]["phase"], "Skipped",
            "{n}: {}",
            early["status"]
        );
        if n < 5 {
            assert_eq!(skip["reason"], "RecentlyRemediated", "{n}: {skip}");
            assert_eq!(skip["recentRemediation"]["cooldownRemaining"], "1s");
        } else {
            assert_eq!(skip["reason"], "ExhaustedRetries", "{n}: {skip}");
        }
        earlier.push(done);
        start = next;
    }
    assert_eq!(backoffs, vec![60.0, 120.0, 240.0, 480.0, 600.0]);
    let sixth = route(&rules, 6, start, &earlier, "succeeded");
    let status = &sixth["status"];
    assert_eq!(status["phase"], "Skipped", "{status}");
    assert_eq!(
        status["skipDetails"]["reason"], "ExhaustedRetries",
        "{status}"
    );
    assert_eq!(
        status["skipDetails"]["message"],
        "Max consecutive failures (5) reached for target 'default/deployment/nginx'. Manual intervention required."
    );
    assert_eq!(
        status["skipDetails"]["recentRemediation"]["name"],
        "restart-nginx-5"
    );
}

/// The default lifecycle's scenarios whose resource loses the race for the PipelineRun: the
/// router skips it (ResourceBusy) where the executor fails it.
const RACES_THE_ROUTER_SKIPS: [&str; 4] = [
    "create-race-same-name-other-namespace.yaml",
    "create-race-with-another-resources-run.yaml",
    "create-race-with-unlabelled-run.yaml",
    "delete-does-not-touch-another-resources-run.yaml",
];

#[test]
fn the_router_keeps_the_default_lifecycle_but_for_the_lost_race_and_its_gauge() {
    // Every default scenario, run with the router rules, passes; or differs only where router.md
    // says: a lost race is Skipped, and every terminal transition also sets the
    // consecutive-failures gauge (one more metric update, one more effect).
    let files = collect(&[root().join("tests/lifecycle")]).expect("the default scenarios");
    let rules = root().join("examples/router-lifecycle.yaml");
    let (mut passed, mut races, mut gauge) = (0, 0, 0);
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let outcome = run_file(f, &rules);
        if outcome.failures.is_empty() {
            passed += 1;
        } else if RACES_THE_ROUTER_SKIPS.contains(&name) {
            assert!(
                outcome.failures.iter().any(|m| m.contains("got `Skipped`")),
                "{name}: {:?}",
                outcome.failures
            );
            races += 1;
        } else {
            // each difference of each step on its own: the metric updates (the gauge among
            // them) or the effects (one metric update more)
            for part in outcome
                .failures
                .iter()
                .flat_map(|m| m.split("expected ").skip(1))
            {
                let metrics = part.starts_with("metrics [")
                    && part.contains("workflowexecution_consecutive_failures");
                let one_more_metric = part.starts_with("effects [")
                    && part.split_once(", got [").is_some_and(|(want, got)| {
                        got.matches("\"metric\"").count() == want.matches("\"metric\"").count() + 1
                    });
                assert!(
                    metrics || one_more_metric,
                    "{name}: the router changed more than the gauge: {part}"
                );
            }
            gauge += 1;
        }
    }
    assert_eq!(races, RACES_THE_ROUTER_SKIPS.len());
    assert!(
        passed >= 100,
        "{passed} passed, {gauge} differ by the gauge"
    );
}

#[test]
fn simulate_creates_the_config_map_then_the_job_and_follows_the_job() {
    let (status, creates) = simulate(
        "examples/configured-job-lifecycle.yaml",
        "examples/configured-job.yaml",
        &["failed:DeadlineExceeded:too slow"],
    );
    let created: Vec<&str> = creates.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(
        created,
        vec![
            "ConfigMap default/report-config (child config)",
            "Job default/report-job (lock held)"
        ]
    );
    assert_eq!(status["phase"], "Failed", "{status}");
    assert_eq!(status["failure"]["reason"], "DeadlineExceeded", "{status}");
    assert_eq!(status["configMap"], "report-config", "{status}");
}
