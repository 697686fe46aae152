//! Time of one `decide` on the default rules in each phase, rendering and failure analysis
//! included. Report: docs/performance.md.

use criterion::{Criterion, criterion_group, criterion_main};
use lifecycle_engine::engine::{Observation, decide};
use lifecycle_engine::rules::Rules;
use serde_json::{Value, json};
use std::hint::black_box;
use std::path::Path;

fn rules() -> Rules {
    Rules::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("lifecycle.yaml"),
        &[],
    )
    .expect("default rules load")
}

fn resource(status: Value) -> Value {
    json!({
        "apiVersion": "kubernaut.ai/v1alpha1",
        "kind": "WorkflowExecution",
        "metadata": {
            "name": "restart-nginx-7f3a", "namespace": "kubernaut-system", "uid": "6f1c2d9e-0000-4000-8000-000000000001",
            "generation": 1, "resourceVersion": "100",
            "finalizers": ["workflowexecution.kubernaut.ai/workflowexecution-cleanup"],
            "labels": {"kubernaut.ai/correlation-id": "rr-2f9c1d"}
        },
        "spec": {
            "remediationRequestRef": {"name": "rr-2f9c1d", "namespace": "kubernaut-system"},
            "workflowRef": {"workflowId": "restart-deployment", "version": "1.2.0",
                "containerImage": "quay.io/kubernaut/workflows/restart-deployment:v1.2.0"},
            "targetResource": "default/deployment/nginx",
            "parameters": {"NAMESPACE": "default", "DEPLOYMENT": "nginx", "GRACE_PERIOD": "30s"},
            "executionConfig": {"timeout": "30m"}
        },
        "status": status
    })
}

fn run(name: &str, status: &str, cond: Value, children: Value) -> Value {
    json!({
        "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
        "metadata": {"name": name, "namespace": "kubernaut-workflows", "uid": "u-run",
            "labels": {"kubernaut.ai/workflow-execution": "restart-nginx-7f3a", "kubernaut.ai/source-namespace": "kubernaut-system"}},
        "status": {"startTime": "2026-01-01T00:00:01Z", "conditions": [cond], "childReferences": children, "_s": status}
    })
}

fn bench(c: &mut Criterion) {
    let rules = rules();
    let now = lifecycle_engine::time::parse_secs("2026-01-01T00:01:00Z").unwrap();
    let name = "wfe-f3457dcc8fbcb6d9";
    let running_status = json!({"phase": "Running", "startTime": "2026-01-01T00:00:00Z", "pipelineRunRef": {"name": name}, "observedGeneration": 1});
    let children = json!([{"apiVersion": "tekton.dev/v1", "kind": "TaskRun", "name": format!("{name}-run"), "pipelineTaskName": "run"}]);
    let taskrun = |status: &str, reason: &str| {
        json!({"ref": children[0], "object": {
        "apiVersion": "tekton.dev/v1", "kind": "TaskRun", "metadata": {"name": format!("{name}-run"), "namespace": "kubernaut-workflows"},
        "status": {"conditions": [{"type": "Succeeded", "status": status, "reason": reason}],
            "steps": [{"name": "run", "terminated": {"exitCode": 137, "reason": "OOMKilled"}}]}}})
    };

    let pending = Observation {
        resource: resource(Value::Null),
        ..Observation::default()
    };
    c.bench_function(
        "decide/pending-create (validate + render PipelineRun)",
        |b| b.iter(|| decide(black_box(&rules), black_box(&pending), now)),
    );

    let mut started = pending.clone();
    started.resource = resource(json!({"phase": "Pending", "observedGeneration": 1}));
    started.execution = Some(run(
        name,
        "",
        json!({"type": "Succeeded", "status": "Unknown", "reason": "Running"}),
        json!([]),
    ));
    c.bench_function("decide/pending-started (transition to Running)", |b| {
        b.iter(|| decide(black_box(&rules), black_box(&started), now))
    });

    let mut running = Observation {
        resource: resource(running_status.clone()),
        ..Observation::default()
    };
    running.execution = Some(run(
        name,
        "",
        json!({"type": "Succeeded", "status": "Unknown", "reason": "Running"}),
        children.clone(),
    ));
    running
        .related
        .insert("taskRuns".into(), json!([taskrun("Unknown", "Running")]));
    // settle the mirror first, so the benchmark measures the steady state (no status change)
    let d = decide(&rules, &running, now);
    if let Some(p) = d.status_patch() {
        let status = running.resource.get_mut("status").unwrap();
        lifecycle_engine::engine::status::apply_merge_patch(status, p);
    }
    c.bench_function("decide/running-steady (mirror, no change)", |b| {
        b.iter(|| decide(black_box(&rules), black_box(&running), now))
    });

    let mut failed = running.clone();
    failed.execution = Some(run(
        name,
        "",
        json!({"type": "Succeeded", "status": "False", "reason": "Failed", "message": "Tasks Completed: 1 (Failed: 1, Cancelled 0), Skipped: 0"}),
        children.clone(),
    ));
    failed
        .related
        .insert("taskRuns".into(), json!([taskrun("False", "StepOOM")]));
    c.bench_function("decide/running-failed (failure analysis + summary)", |b| {
        b.iter(|| decide(black_box(&rules), black_box(&failed), now))
    });

    let mut succeeded = running.clone();
    succeeded.execution = Some(run(
        name,
        "",
        json!({"type": "Succeeded", "status": "True", "reason": "Succeeded"}),
        children.clone(),
    ));
    succeeded
        .related
        .insert("taskRuns".into(), json!([taskrun("True", "Succeeded")]));
    c.bench_function("decide/running-succeeded (transition to Completed)", |b| {
        b.iter(|| decide(black_box(&rules), black_box(&succeeded), now))
    });

    let mut cooling = Observation {
        resource: resource(
            json!({"phase": "Completed", "completionTime": "2026-01-01T00:00:50Z", "pipelineRunRef": {"name": name}}),
        ),
        ..Observation::default()
    };
    cooling.execution = succeeded.execution.clone();
    c.bench_function("decide/terminal-cooldown (waiting)", |b| {
        b.iter(|| decide(black_box(&rules), black_box(&cooling), now))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
