//! Lookups against the real API server: a lookup of the other resources of the governed kind
//! (tests/lookups/lifecycle.yaml) carries a counter from one WorkflowExecution of a target to
//! the next, and is served from the controller's cache: no API request per lookup.

use crate::support::{self, ControllerProcess, Scope, metric_value, text, unique_name, wfe_body};

/// Every `lifecycle_api_requests_total` series of a metrics text, as `(labels, value)`.
fn api_requests(metrics: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("lifecycle_api_requests_total{"))
        .filter_map(|l| l.split_once("} "))
        .map(|(labels, v)| (labels.to_string(), v.trim().parse().unwrap_or(0.0)))
        .collect()
}

#[tokio::test]
async fn a_counter_is_carried_through_a_lookup_of_other_resources_with_no_request_per_lookup() {
    let s = Scope::new("lookups").await;
    let rules = support::repo_root().join("tests/lookups/lifecycle.yaml");
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &s.run_args(&rules, "1h"));
    ctl.wait_ready().await;

    // another target: its count must never be taken for this target's
    let other = unique_name("other");
    s.create(&other, wfe_body("default/deployment/other")).await;
    let done = s.wait_phase(&other, "Failed").await;
    assert_eq!(
        done["status"]["failureDetails"]["failedTaskIndex"], 1,
        "{done}"
    );
    assert_eq!(text(&done, "/status/failureDetails/message"), "after none");

    let target = "default/deployment/carried";
    let mut previous = "none".to_string();
    let rounds = 5;
    for i in 1..=rounds {
        let name = unique_name(&format!("carried-{i}"));
        s.create(&name, wfe_body(target)).await;
        let done = s.wait_phase(&name, "Failed").await;
        assert_eq!(
            done["status"]["failureDetails"]["failedTaskIndex"], i,
            "round {i}: {done}"
        );
        assert_eq!(
            text(&done, "/status/failureDetails/message"),
            format!("after {previous}"),
            "round {i}"
        );
        previous = name;
    }

    let metrics = ctl.metrics().await;
    let requests = api_requests(&metrics);
    eprintln!("API requests after {} resources: {requests:?}", rounds + 1);
    // every resource read the lookup; none of those reads reached the API server
    for (labels, value) in &requests {
        assert!(
            !(labels.contains("kind=\"WorkflowExecution\"")
                && (labels.contains("verb=\"get\"") || labels.contains("verb=\"list\""))),
            "a lookup reached the API server: {labels} = {value}"
        );
    }
    let writes = metric_value(
        &metrics,
        "lifecycle_api_requests_total{verb=\"patch-status\",kind=\"WorkflowExecution\"}",
    );
    assert_eq!(
        writes,
        f64::from(rounds + 1),
        "one status write per resource: {requests:?}"
    );
}
