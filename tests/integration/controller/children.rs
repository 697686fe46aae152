//! Named children on the real API server (examples/configured-job-lifecycle.yaml, CRD
//! tests/crds/configuredjobs.example.com.yaml): a ConfiguredJob gets its ConfigMap, then the
//! batch/v1 Job that mounts it; the Job's status (written by the test, as a Job controller
//! would: this control plane runs none) drives the phase; deleting the resource deletes both.
//! The controller's request counter shows the children are read from its watch caches: no
//! `get` or `list` request for them.

use super::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use std::time::Duration;

pub(super) fn configured_jobs() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("example.com", "v1", "ConfiguredJob"))
}

/// Lets the controller identity govern ConfiguredJobs and manage ConfigMaps and Jobs, in every
/// namespace (the children are in their resource's namespace, which no setting fixes).
pub(super) async fn grant(s: &Scope, name: &str) {
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [
            {"apiGroups": ["example.com"], "resources": ["configuredjobs"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["example.com"], "resources": ["configuredjobs/status"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "delete"]},
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "delete"]},
        ],
    }))
    .expect("ClusterRole");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "lifecycle-controller", "namespace": support::controller_namespace()}],
    }))
    .expect("ClusterRoleBinding");
    Api::<ClusterRole>::all(s.admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .expect("creating the ClusterRole");
    Api::<ClusterRoleBinding>::all(s.admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("creating the ClusterRoleBinding");
    support::wait_until_allowed(s.env, "watch", "example.com", "configuredjobs", None).await;
    support::wait_until_allowed(s.env, "create", "batch", "jobs", None).await;
    support::wait_until_allowed(s.env, "create", "", "configmaps", None).await;
}

async fn start(s: &Scope) -> ControllerProcess {
    let args: Vec<String> = vec![
        "run".into(),
        "--rules".into(),
        support::repo_root()
            .join("examples/configured-job-lifecycle.yaml")
            .display()
            .to_string(),
        "--context".into(),
        support::CONTROLLER_CONTEXT.into(),
        "--metrics-address".into(),
        "127.0.0.1:0".into(),
        "--log-format".into(),
        "text".into(),
        "--namespace".into(),
        s.ns.clone(),
    ];
    let mut c = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &args);
    c.wait_ready().await;
    c
}

pub(super) async fn wait_phase(api: &Api<DynamicObject>, name: &str, phase: &'static str) -> Value {
    support::eventually(
        Duration::from_secs(60),
        &format!("{name} {phase}"),
        || async {
            let v = serde_json::to_value(api.get(name).await.ok()?).ok()?;
            (v.pointer("/status/phase") == Some(&json!(phase))).then_some(v)
        },
    )
    .await
}

/// Creates a ConfiguredJob and waits until it runs; returns it.
async fn running(s: &Scope, api: &Api<DynamicObject>, name: &str) -> Value {
    let object = DynamicObject::new(name, &configured_jobs())
        .within(&s.ns)
        .data(json!({"spec": {
            "image": "busybox:1.36",
            "command": ["sh", "-c", "cat /config/greeting"],
            "config": {"greeting": "hello"},
        }}));
    api.create(&PostParams::default(), &object)
        .await
        .expect("creating the ConfiguredJob");
    wait_phase(api, name, "Running").await
}

/// Writes the Job's status as the Job controller would when it finishes.
pub(super) async fn finish_job(s: &Scope, job: &str, condition: &str, reason: &str, message: &str) {
    let jobs = Api::<DynamicObject>::namespaced_with(
        s.admin.clone(),
        &s.ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk("batch", "v1", "Job")),
    );
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .expect("now");
    let at = now.to_string();
    let cond = |type_: &str| {
        json!({"type": type_, "status": "True", "reason": reason, "message": message,
               "lastProbeTime": at, "lastTransitionTime": at})
    };
    let status = if condition == "Complete" {
        json!({"startTime": at, "completionTime": at, "succeeded": 1, "active": 0,
               "conditions": [cond("SuccessCriteriaMet"), cond("Complete")]})
    } else {
        json!({"startTime": at, "failed": 1, "active": 0,
               "conditions": [cond("FailureTarget"), cond("Failed")]})
    };
    tekton::set_status(&jobs, job, status).await;
}

#[tokio::test]
async fn a_config_map_then_a_job_the_job_drives_the_phase_and_deletion_removes_both() {
    let s = Scope::new("children").await;
    let name = unique_name("report");
    grant(&s, &format!("lifecycle-{name}")).await;
    let ctl = start(&s).await;
    let api = Api::<DynamicObject>::namespaced_with(s.admin.clone(), &s.ns, &configured_jobs());

    // the ConfigMap, then the Job that mounts it, each ours
    let v = running(&s, &api, &name).await;
    let (config, job) = (format!("{name}-config"), format!("{name}-job"));
    assert_eq!(text(&v, "/status/configMap"), config);
    assert_eq!(text(&v, "/status/job"), job);
    let cm = Api::<ConfigMap>::namespaced(s.admin.clone(), &s.ns)
        .get(&config)
        .await
        .expect("the ConfigMap");
    assert_eq!(
        cm.data
            .unwrap_or_default()
            .get("greeting")
            .map(String::as_str),
        Some("hello")
    );
    let labels = cm.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("configuredjob.example.com/name"), Some(&name));
    let jobs = Api::<Job>::namespaced(s.admin.clone(), &s.ns);
    let j = jobs.get(&job).await.expect("the Job");
    let volumes = j
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.volumes)
        .unwrap_or_default();
    assert_eq!(
        volumes[0].config_map.as_ref().map(|c| c.name.as_str()),
        Some(config.as_str())
    );
    // in order: the ConfigMap existed before the Job was created
    let cm_created = cm.metadata.creation_timestamp.expect("created").0;
    let job_created = j.metadata.creation_timestamp.expect("created").0;
    assert!(cm_created <= job_created, "{cm_created} > {job_created}");

    // the Job's status drives the phase
    finish_job(
        &s,
        &job,
        "Complete",
        "CompletionsReached",
        "Reached expected number of succeeded pods",
    )
    .await;
    let v = wait_phase(&api, &name, "Succeeded").await;
    let ready = condition(&v, "Ready").expect("a Ready condition");
    assert_eq!(ready["reason"], "Succeeded", "{v}");

    // a second one fails with its Job
    let other = unique_name("broken");
    running(&s, &api, &other).await;
    finish_job(
        &s,
        &format!("{other}-job"),
        "Failed",
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
    )
    .await;
    let v = wait_phase(&api, &other, "Failed").await;
    assert_eq!(
        text(&v, "/status/failure/reason"),
        "BackoffLimitExceeded",
        "{v}"
    );

    // deleting the resource deletes both children, then lets it go
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("deleting the ConfiguredJob");
    support::eventually(
        Duration::from_secs(60),
        "the ConfiguredJob gone",
        || async { api.get_opt(&name).await.ok()?.is_none().then_some(()) },
    )
    .await;
    let cm = Api::<ConfigMap>::namespaced(s.admin.clone(), &s.ns)
        .get_opt(&config)
        .await
        .expect("reading the ConfigMap");
    assert!(cm.is_none(), "the ConfigMap is still there");
    let j = jobs.get_opt(&job).await.expect("reading the Job");
    assert!(
        j.is_none_or(|j| j.metadata.deletion_timestamp.is_some()),
        "the Job is not being deleted"
    );

    // every read of the children came from the watch caches; each was created once
    let metrics = ctl.metrics().await;
    for kind in ["ConfigMap", "Job"] {
        let requests = |verb: &str| {
            metric_value(
                &metrics,
                &format!("lifecycle_api_requests_total{{verb=\"{verb}\",kind=\"{kind}\"}}"),
            )
        };
        assert_eq!(requests("create"), 2.0, "{kind}: {metrics}");
        assert_eq!(requests("delete"), 1.0, "{kind}: {metrics}");
        assert_eq!(requests("get"), 0.0, "{kind}: {metrics}");
        assert_eq!(requests("list"), 0.0, "{kind}: {metrics}");
    }
}
