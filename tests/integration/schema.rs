//! A status write the API server does not keep never loops.
//!
//! The rules are checked against the CRD when they load, so the only way to get a write pruned
//! is to change the CRD after the controller started. This test does exactly that on a copy of
//! the WorkflowExecution CRD in a group of its own (so that no other test sees the change): once
//! the controller runs, `pipelineRunStatus` (written by the Running phase's `sync` on every
//! observation) is removed from the schema. The controller must report the lost write once and
//! then stop sending it: over ten seconds of a 1 s poll, the status patches stay bounded.

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use std::time::Duration;

use crate::support::{
    self, ADMIN_CONTEXT, CONTROLLER_CONTEXT, ControllerProcess, Scope, eventually, repo_root, text,
    unique_name, wfe_body,
};

const GROUP: &str = "schema-guard.test.kubernaut.ai";
const CRD: &str = "workflowexecutions.schema-guard.test.kubernaut.ai";

fn resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        GROUP,
        "v1alpha1",
        "WorkflowExecution",
    ))
}

/// The shipped CRD, moved to [`GROUP`], with or without `status.pipelineRunStatus`.
fn crd(with_run_status: bool) -> Value {
    let text = std::fs::read_to_string(repo_root().join("deploy/crds/workflowexecution.yaml"))
        .expect("the shipped CRD");
    let mut crd: Value = serde_yaml::from_str(&text).expect("a CRD");
    crd["metadata"] = json!({"name": CRD});
    crd["spec"]["group"] = json!(GROUP);
    if !with_run_status {
        crd.pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/status/properties")
            .and_then(Value::as_object_mut)
            .expect("status properties")
            .remove("pipelineRunStatus");
    }
    crd
}

async fn apply_crd(s: &Scope, with_run_status: bool) {
    let file = s.dir.path().join(format!("crd-{with_run_status}.json"));
    std::fs::write(&file, crd(with_run_status).to_string()).expect("CRD file");
    let file = file.display().to_string();
    s.env
        .kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &file])
        .await;
    s.env
        .kubectl(&[
            "wait",
            "--for",
            "condition=Established",
            &format!("crd/{CRD}"),
        ])
        .await;
}

#[tokio::test]
async fn a_status_write_the_api_server_prunes_is_reported_once_and_not_repeated() {
    let s = Scope::new("schema").await;
    apply_crd(&s, true).await;

    // the default rules, governing the copy of the kind (as the admin: the shipped RBAC names
    // the real group only)
    let rules_dir = s.dir.path().join("rules");
    std::fs::create_dir_all(rules_dir.join("templates")).expect("rules folder");
    let rules = std::fs::read_to_string(repo_root().join("lifecycle.yaml"))
        .expect("default rules")
        .replace(
            "apiVersion: kubernaut.ai/v1alpha1",
            &format!("apiVersion: {GROUP}/v1alpha1"),
        );
    std::fs::write(rules_dir.join("lifecycle.yaml"), rules).expect("rules copy");
    for name in ["pipelinerun.yaml", "failure-summary.txt"] {
        std::fs::copy(
            repo_root().join("templates").join(name),
            rules_dir.join("templates").join(name),
        )
        .expect("template copy");
    }
    let args: Vec<String> = s
        .run_args(&rules_dir.join("lifecycle.yaml"), "1h")
        .into_iter()
        .map(|a| {
            if a == CONTROLLER_CONTEXT {
                ADMIN_CONTEXT.to_string()
            } else {
                a
            }
        })
        .collect();
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &args);
    ctl.wait_ready().await;

    // the CRD changes under the running controller; wait until the API server prunes the field
    apply_crd(&s, false).await;
    let probe_ns = s.env.namespace("schema-probe").await;
    let probes: Api<DynamicObject> = Api::namespaced_with(s.admin.clone(), &probe_ns, &resource());
    let probe: DynamicObject = serde_json::from_value(
        json!({"apiVersion": format!("{GROUP}/v1alpha1"), "kind": "WorkflowExecution", "metadata": {"name": "probe"}, "spec": wfe_body("a/b/c")["spec"]}),
    )
    .expect("probe object");
    probes
        .create(&PostParams::default(), &probe)
        .await
        .expect("probe created");
    eventually(
        Duration::from_secs(30),
        "the API server to prune pipelineRunStatus",
        || {
            let probes = probes.clone();
            async move {
                let patch = json!({"status": {"pipelineRunStatus": {"status": "Unknown"}}});
                let o = probes
                    .patch_status("probe", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .ok()?;
                let v = serde_json::to_value(o).ok()?;
                v.pointer("/status/pipelineRunStatus")
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;

    // a resource reaches Running, whose sync writes the pruned field on every observation
    let wfes: Api<DynamicObject> = Api::namespaced_with(s.admin.clone(), &s.ns, &resource());
    let name = unique_name("pruned");
    let mut body = wfe_body("payments/deployment/api");
    body["metadata"] = json!({"name": name});
    body["apiVersion"] = json!(format!("{GROUP}/v1alpha1"));
    body["kind"] = json!("WorkflowExecution");
    let obj: DynamicObject = serde_json::from_value(body).expect("resource");
    wfes.create(&PostParams::default(), &obj)
        .await
        .expect("resource created");
    let running = eventually(Duration::from_secs(30), "phase Running", || {
        let wfes = wfes.clone();
        let name = name.clone();
        async move {
            let v = serde_json::to_value(wfes.get(&name).await.ok()?).ok()?;
            (text(&v, "/status/phase") == "Running").then_some(v)
        }
    })
    .await;
    assert!(
        running.pointer("/status/pipelineRunStatus").is_none(),
        "{running}"
    );

    // reported once: a Warning Event and the error metric
    let lost = "lifecycle_errors_total{category=\"StatusNotPersisted\"}";
    ctl.wait_metric(lost, 1.0).await;
    let events = s
        .wait_event(&name, "StatusNotPersisted")
        .await
        .into_iter()
        .filter(|e| e.reason == "StatusNotPersisted")
        .collect::<Vec<_>>();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].type_.as_str(), events[0].count), ("Warning", 1));
    assert!(
        events[0].note.contains("status.pipelineRunStatus"),
        "{}",
        events[0].note
    );

    // and not repeated: over ten seconds of 1 s polls, the status patches stay flat
    let patches = "lifecycle_api_requests_total{verb=\"patch-status\",kind=\"WorkflowExecution\"}";
    let before = ctl.metric(patches).await;
    let version_before = text(
        &serde_json::to_value(wfes.get(&name).await.expect("resource")).expect("json"),
        "/metadata/resourceVersion",
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = ctl.metric(patches).await;
    let now = serde_json::to_value(wfes.get(&name).await.expect("resource")).expect("json");
    eprintln!(
        "status patches in 10 s after the first lost write: {}",
        after - before
    );
    assert!(
        after - before <= 1.0,
        "{} status patches in 10 s: the lost write is being repeated\n{}",
        after - before,
        ctl.log()
    );
    assert_eq!(
        text(&now, "/metadata/resourceVersion"),
        version_before,
        "the resource kept changing"
    );
    assert_eq!(ctl.metric(lost).await, 1.0, "reported once");
    assert_eq!(text(&now, "/status/phase"), "Running");
    support::assert_condition(
        &now,
        "Ready",
        "Unknown",
        "InProgress",
        "Workflow is running",
    );
}

/// The default rules with `teamNote` written by the Running phase's `sync`, which the CRD does
/// not declare.
fn rules_with_team_note() -> String {
    let rules = std::fs::read_to_string(repo_root().join("lifecycle.yaml")).expect("default rules");
    let anchor = "        pipelineRunStatus: >-\n";
    assert!(
        rules.contains(anchor),
        "the Running sync writes pipelineRunStatus"
    );
    rules.replacen(
        anchor,
        &format!("        teamNote: \"on call\"\n{anchor}"),
        1,
    )
}

#[tokio::test]
async fn the_controller_checks_the_rules_against_the_cluster_crd_at_start_and_on_reload() {
    let s = Scope::new("crdcheck").await;
    let rules_dir = s.dir.path().join("rules");
    std::fs::create_dir_all(rules_dir.join("templates")).expect("rules folder");
    let file = rules_dir.join("lifecycle.yaml");
    std::fs::copy(repo_root().join("lifecycle.yaml"), &file).expect("rules copy");
    for name in ["pipelinerun.yaml", "failure-summary.txt"] {
        std::fs::copy(
            repo_root().join("templates").join(name),
            rules_dir.join("templates").join(name),
        )
        .expect("template copy");
    }

    // the shipped RBAC lets the controller identity read the CRD, and the default rules fit it
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &s.run_args(&file, "1h"));
    ctl.wait_ready().await;
    assert!(
        ctl.log()
            .contains("rules checked against the governed kind's CRD"),
        "{}",
        ctl.log()
    );

    // a reload that writes a field the CRD lacks is refused, with its place in the rules file
    std::fs::write(&file, rules_with_team_note()).expect("rules edit");
    let (_, body) = eventually(
        Duration::from_secs(30),
        "/readyz to show the rejected change",
        || async {
            ctl.readyz()
                .await
                .filter(|(_, body)| body.contains("REJECTED"))
        },
    )
    .await;
    assert!(
        body.contains("phases.Running.sync.status.teamNote")
            && body.contains("lifecycle.yaml:")
            && body.contains("would drop it"),
        "{body}"
    );
    ctl.terminate().await;

    // and a controller started on those rules stops at once, with the report
    let mut broken =
        ControllerProcess::spawn(s.env, s.dir.path(), "broken", &s.run_args(&file, "1h"));
    let (code, log) = broken.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("phases.Running.sync.status.teamNote")
            && log.contains("`status.teamNote` is not in the schema"),
        "{log}"
    );
}
