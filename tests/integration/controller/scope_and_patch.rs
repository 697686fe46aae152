//! Cluster scope and patches on the real API server: a cluster-scoped Tenant that gets a
//! cluster-scoped Namespace of its own, owns it, labels it by merge patch while suspended and
//! deletes it with itself (examples/tenant-lifecycle.yaml, CRD tests/crds/tenants.example.com.yaml);
//! and a PipelineRun cancelled by a merge patch when its WorkflowExecution is deleted
//! (examples/pipelinerun-cancel-lifecycle.yaml). The controller's own request counter shows the
//! objects it observes are read from its watch caches: no `get` request for them at all.

use super::*;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use std::time::Duration;

fn tenants() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("example.com", "v1", "Tenant"))
}

/// Lets the controller identity govern Tenants and manage Namespaces, cluster-wide (both kinds
/// are cluster-scoped), under names of this test's own.
async fn grant_tenants(s: &Scope, name: &str) {
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [
            {"apiGroups": ["example.com"], "resources": ["tenants"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["example.com"], "resources": ["tenants/status"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch", "create", "delete", "patch"]},
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
    support::wait_until_allowed(s.env, "watch", "example.com", "tenants", None).await;
    support::wait_until_allowed(s.env, "create", "", "namespaces", None).await;
}

/// Starts `lifecycle run` on an example rules file; `namespace` limits the governed resources.
async fn start(
    s: &Scope,
    rules: &str,
    namespace: Option<&str>,
    set: &[String],
) -> ControllerProcess {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--rules".into(),
        support::repo_root().join(rules).display().to_string(),
        "--context".into(),
        support::CONTROLLER_CONTEXT.into(),
        "--metrics-address".into(),
        "127.0.0.1:0".into(),
        "--log-format".into(),
        "text".into(),
    ];
    if let Some(ns) = namespace {
        args.extend(["--namespace".into(), ns.to_string()]);
    }
    for kv in set {
        args.extend(["--set".into(), kv.clone()]);
    }
    let mut c = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &args);
    c.wait_ready().await;
    c
}

async fn wait_tenant(
    api: &Api<DynamicObject>,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    support::eventually(Duration::from_secs(60), what, || async {
        let v = serde_json::to_value(api.get(name).await.ok()?).ok()?;
        check(&v).then_some(v)
    })
    .await
}

fn phase_is(phase: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v.pointer("/status/phase") == Some(&json!(phase))
}

async fn namespace_labels(s: &Scope, name: &str) -> Value {
    let ns = Api::<Namespace>::all(s.admin.clone())
        .get(name)
        .await
        .expect("reading the Namespace");
    json!(ns.metadata.labels.unwrap_or_default())
}

#[tokio::test]
async fn a_cluster_scoped_tenant_owns_its_namespace_patches_it_and_deletes_it() {
    let s = Scope::new("tenant").await;
    let tenant = unique_name("acme");
    grant_tenants(&s, &format!("lifecycle-{tenant}")).await;
    let ctl = start(&s, "examples/tenant-lifecycle.yaml", None, &[]).await;
    let api = Api::<DynamicObject>::all_with(s.admin.clone(), &tenants());
    let object =
        DynamicObject::new(&tenant, &tenants()).data(json!({"spec": {"owner": "team-acme"}}));
    api.create(&PostParams::default(), &object)
        .await
        .expect("creating the Tenant");

    // ours although neither has a namespace (before: its own Namespace was taken for another's)
    let namespace = format!("tenant-{tenant}");
    let v = wait_tenant(&api, &tenant, "the Tenant Active", phase_is("Active")).await;
    assert_eq!(text(&v, "/status/namespace"), namespace);
    let ready = condition(&v, "Ready").expect("a Ready condition");
    assert_eq!(ready["reason"], "NamespaceCreated", "{v}");
    assert_eq!(
        namespace_labels(&s, &namespace).await,
        json!({
            "kubernetes.io/metadata.name": namespace,
            "tenant.example.com/name": tenant,
            "tenant.example.com/namespace": "",
            "tenant.example.com/owner": "team-acme",
        })
    );

    // suspended: the Namespace is labelled by a merge patch; resumed: the label is removed
    let pp = PatchParams::default();
    api.patch(
        &tenant,
        &pp,
        &Patch::Merge(json!({"spec": {"suspended": true}})),
    )
    .await
    .expect("suspending");
    wait_tenant(&api, &tenant, "the Tenant Suspended", phase_is("Suspended")).await;
    assert_eq!(
        namespace_labels(&s, &namespace).await["tenant.example.com/suspended"],
        "true"
    );
    api.patch(
        &tenant,
        &pp,
        &Patch::Merge(json!({"spec": {"suspended": false}})),
    )
    .await
    .expect("resuming");
    wait_tenant(&api, &tenant, "the Tenant Active again", phase_is("Active")).await;
    let labels = namespace_labels(&s, &namespace).await;
    assert!(
        labels.get("tenant.example.com/suspended").is_none(),
        "{labels}"
    );

    // every read of the Namespace came from the watch cache; each patch was sent once
    let metrics = ctl.metrics().await;
    let requests = |verb: &str| {
        metric_value(
            &metrics,
            &format!("lifecycle_api_requests_total{{verb=\"{verb}\",kind=\"Namespace\"}}"),
        )
    };
    assert_eq!(requests("create"), 1.0, "{metrics}");
    assert_eq!(requests("patch"), 2.0, "{metrics}");
    assert_eq!(requests("get"), 0.0, "{metrics}");

    // deleting the Tenant deletes its Namespace (which stays terminating here: this control
    // plane runs no namespace controller), then lets the Tenant go
    api.delete(&tenant, &DeleteParams::default())
        .await
        .expect("deleting the Tenant");
    support::eventually(Duration::from_secs(60), "the Tenant gone", || async {
        api.get_opt(&tenant).await.ok()?.is_none().then_some(())
    })
    .await;
    let ns = Api::<Namespace>::all(s.admin.clone())
        .get_opt(&namespace)
        .await
        .expect("reading the Namespace");
    assert!(
        ns.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "the Namespace is not being deleted"
    );
}

#[tokio::test]
async fn deleting_a_running_workflow_execution_cancels_its_run_by_patch() {
    // the default Role of the execution namespace, plus `patch` on PipelineRuns
    let s = Scope::with_execution_role("cancel", |role| {
        for rule in role.rules.iter_mut().flatten() {
            if rule
                .resources
                .as_ref()
                .is_some_and(|r| r.contains(&"pipelineruns".to_string()))
            {
                rule.verbs.push("patch".into());
            }
        }
    })
    .await;
    let set = [format!("executionNamespace={}", s.exec_ns)];
    let ctl = start(
        &s,
        "examples/pipelinerun-cancel-lifecycle.yaml",
        Some(&s.ns),
        &set,
    )
    .await;
    let name = unique_name("cancel");
    let target = format!("{}/deployment/{name}", s.ns);
    s.create_wfe(&name, &target).await;
    s.wait_phase(&name, "Running").await;
    let run = run_name(&target);
    s.wait_run(&run).await;

    s.wfes()
        .delete(&name, &DeleteParams::default())
        .await
        .expect("deleting the WorkflowExecution");
    s.wait_gone(&name).await;
    // the run is kept, cancelled; the rest of its spec is as created
    let v = s.run(&run).await.expect("the PipelineRun is kept");
    assert_eq!(text(&v, "/spec/status"), "Cancelled");
    assert_eq!(
        text(&v, "/spec/taskRunTemplate/serviceAccountName"),
        "kubernaut-workflow-runner"
    );
    let metrics = ctl.metrics().await;
    let requests = |verb: &str| {
        metric_value(
            &metrics,
            &format!("lifecycle_api_requests_total{{verb=\"{verb}\",kind=\"PipelineRun\"}}"),
        )
    };
    assert_eq!(requests("create"), 1.0, "{metrics}");
    assert_eq!(requests("patch"), 1.0, "{metrics}");
    assert_eq!(requests("delete"), 0.0, "{metrics}");
    assert_eq!(requests("get"), 0.0, "{metrics}");
}
