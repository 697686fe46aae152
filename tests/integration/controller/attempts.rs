//! Timers and retries on the real API server, with the example rules (examples/pipeline-retry.yaml
//! and examples/approval-gate.yaml) and their kinds (tests/crds/example-kinds.yaml): a retry that
//! deletes the previous PipelineRun and waits until it is really gone (held by a finalizer), and
//! an approval that times out at its deadline. Durations are shortened with `--set`.

use super::*;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use std::time::Duration;

fn kind(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("example.com", "v1", kind))
}

/// Lets the controller identity govern the example kinds in the scope's namespace, and run Jobs
/// in its execution namespace (PipelineRuns it may run there already).
async fn grant_example_kinds(s: &Scope) {
    let sa = support::controller_namespace();
    let subject =
        json!([{"kind": "ServiceAccount", "name": "lifecycle-controller", "namespace": sa}]);
    for (ns, rules) in [
        (
            &s.ns,
            json!([
                {"apiGroups": ["example.com"], "resources": ["pipelinetasks", "changerequests"], "verbs": ["get", "list", "watch", "patch"]},
                {"apiGroups": ["example.com"], "resources": ["pipelinetasks/status", "changerequests/status"], "verbs": ["patch"]},
            ]),
        ),
        (
            &s.exec_ns,
            json!([{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "delete"]}]),
        ),
    ] {
        let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
            "metadata": {"name": "example-kinds", "namespace": ns}, "rules": rules,
        }))
        .expect("Role");
        let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "example-kinds", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "example-kinds"},
            "subjects": subject,
        }))
        .expect("RoleBinding");
        Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(s.admin.clone(), ns)
            .create(&PostParams::default(), &role)
            .await
            .expect("creating the Role");
        Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(s.admin.clone(), ns)
            .create(&PostParams::default(), &binding)
            .await
            .expect("creating the RoleBinding");
    }
    support::wait_until_allowed(s.env, "watch", "example.com", "pipelinetasks", Some(&s.ns)).await;
    support::wait_until_allowed(s.env, "watch", "batch", "jobs", Some(&s.exec_ns)).await;
}

/// Starts `lifecycle run` on an example rules file, in the scope's namespace.
async fn start_example(s: &Scope, rules: &str, set: &[String]) -> ControllerProcess {
    let mut args: Vec<String> = [
        "run",
        "--rules",
        &support::repo_root().join(rules).display().to_string(),
        "--namespace",
        &s.ns,
        "--context",
        support::CONTROLLER_CONTEXT,
        "--metrics-address",
        "127.0.0.1:0",
        "--log-format",
        "text",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    for kv in set {
        args.push("--set".into());
        args.push(kv.clone());
    }
    let mut c = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &args);
    c.wait_ready().await;
    c
}

async fn create(s: &Scope, kind_name: &str, name: &str, spec: Value) {
    let object = DynamicObject::new(name, &kind(kind_name))
        .within(&s.ns)
        .data(json!({"spec": spec}));
    Api::<DynamicObject>::namespaced_with(s.admin.clone(), &s.ns, &kind(kind_name))
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {kind_name} {name}: {e}"));
}

/// Waits (up to a minute) until the resource satisfies `check`.
async fn wait_for(
    s: &Scope,
    kind_name: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let api = Api::<DynamicObject>::namespaced_with(s.admin.clone(), &s.ns, &kind(kind_name));
    support::eventually(Duration::from_secs(60), what, || async {
        let v = serde_json::to_value(api.get(name).await.ok()?).ok()?;
        check(&v).then_some(v)
    })
    .await
}

async fn run_of(s: &Scope, name: &str) -> Option<Value> {
    s.runs()
        .get_opt(name)
        .await
        .expect("reading a PipelineRun")
        .map(|o| serde_json::to_value(o).expect("json"))
}

#[tokio::test]
async fn a_retry_deletes_the_previous_run_and_waits_until_it_is_gone() {
    let s = Scope::new("retry").await;
    grant_example_kinds(&s).await;
    let set = [
        format!("runNamespace={}", s.exec_ns),
        "backoffInitial=2s".to_string(),
        "backoffMax=2s".to_string(),
    ];
    let _ctl = start_example(&s, "examples/pipeline-retry.yaml", &set).await;
    let name = unique_name("build");
    create(&s, "PipelineTask", &name, json!({"pipeline": "build"})).await;
    let first = format!("{name}-1");
    let v = wait_for(&s, "PipelineTask", &name, "attempt 1 running", |v| {
        v.pointer("/status/phase") == Some(&json!("Running"))
    })
    .await;
    assert_eq!(v["status"]["attempt"], 1, "{v}");
    assert_eq!(text(&v, "/status/runRef/name"), first);
    // a finalizer holds the first run, so its delete leaves it terminating for a while
    s.runs()
        .patch(
            &first,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
        )
        .await
        .expect("adding a finalizer");
    let at = tekton::now();
    tekton::set_status(
        &s.runs(),
        &first,
        tekton::pipelinerun_finished(
            &first,
            &[],
            "False",
            "PipelineRunTimeout",
            "PipelineRun timed out",
            &at,
            &at,
        ),
    )
    .await;

    let v = wait_for(&s, "PipelineTask", &name, "the retry waiting", |v| {
        v.pointer("/status/retry/previous") == Some(&json!("deleted"))
    })
    .await;
    assert_eq!(text(&v, "/status/phase"), "Pending");
    assert_eq!(v["status"]["attempt"], 1, "{v}");
    assert_eq!(v["status"]["retry"]["attempt"], 2, "{v}");
    let retry_at = text(&v, "/status/retry/at");
    assert_eq!(
        seconds_between(&text(&v, "/status/phaseEnteredAt"), &retry_at),
        2
    );
    let held = run_of(&s, &first)
        .await
        .expect("the first run is still there");
    assert!(
        held.pointer("/metadata/deletionTimestamp").is_some(),
        "the first run was not deleted: {held}"
    );

    // past the backoff the first run is still terminating: the next attempt must not start
    support::eventually(Duration::from_secs(20), "the backoff to pass", || async {
        (seconds_between(&retry_at, &tekton::now()) >= 2).then_some(())
    })
    .await;
    let v = wait_for(&s, "PipelineTask", &name, "still attempt 1", |_| true).await;
    assert_eq!(v["status"]["attempt"], 1, "{v}");
    assert_eq!(text(&v, "/status/phase"), "Pending");
    assert!(run_of(&s, &format!("{name}-2")).await.is_none());

    // the finalizer goes, the run is gone, and attempt 2 starts with its own run
    s.runs()
        .patch(
            &first,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("removing the finalizer");
    let v = wait_for(&s, "PipelineTask", &name, "attempt 2 running", |v| {
        v.pointer("/status/attempt") == Some(&json!(2))
            && v.pointer("/status/phase") == Some(&json!("Running"))
    })
    .await;
    let second = format!("{name}-2");
    assert_eq!(text(&v, "/status/runRef/name"), second);
    assert!(v.pointer("/status/retry").is_none(), "{v}");
    assert!(run_of(&s, &first).await.is_none(), "the first run is back");
    let run = run_of(&s, &second).await.expect("the second run");
    assert_eq!(
        run["metadata"]["labels"]["pipelinetask.example.com/name"],
        json!(name)
    );
    assert_eq!(run["metadata"]["labels"]["example.com/attempt"], json!("2"));

    let at = tekton::now();
    tekton::set_status(
        &s.runs(),
        &second,
        tekton::pipelinerun_finished(&second, &[], "True", "Succeeded", "done", &at, &at),
    )
    .await;
    let v = wait_for(&s, "PipelineTask", &name, "Succeeded", |v| {
        v.pointer("/status/phase") == Some(&json!("Succeeded"))
    })
    .await;
    assert_condition(&v, "Ready", "True", "Succeeded", "Succeeded in attempt 2");
}

#[tokio::test]
async fn an_approval_times_out_at_its_deadline() {
    let s = Scope::new("approval").await;
    grant_example_kinds(&s).await;
    let set = [
        format!("jobNamespace={}", s.exec_ns),
        "approvalTimeout=4s".to_string(),
        "reminderAfter=2s".to_string(),
    ];
    let _ctl = start_example(&s, "examples/approval-gate.yaml", &set).await;
    let name = unique_name("change");
    create(&s, "ChangeRequest", &name, json!({"image": "busybox"})).await;
    let waiting = wait_for(&s, "ChangeRequest", &name, "AwaitingApproval", |v| {
        v.pointer("/status/phase") == Some(&json!("AwaitingApproval"))
    })
    .await;
    let entered = text(&waiting, "/status/phaseEnteredAt");
    let v = wait_for(&s, "ChangeRequest", &name, "Expired", |v| {
        v.pointer("/status/phase") == Some(&json!("Expired"))
    })
    .await;
    // no event woke it: the look-again at the deadlines did, each at its second
    assert_eq!(
        seconds_between(&entered, &text(&v, "/status/phaseEnteredAt")),
        4
    );
    let reminder = condition(&v, "ApprovalOverdue").expect("the reminder");
    assert_eq!(
        seconds_between(
            &entered,
            reminder["lastTransitionTime"].as_str().unwrap_or("")
        ),
        2
    );
    assert_condition(
        &v,
        "Ready",
        "False",
        "ApprovalTimedOut",
        "Not approved within 4s",
    );
    let jobs = Api::<DynamicObject>::namespaced_with(
        s.admin.clone(),
        &s.exec_ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk("batch", "v1", "Job")),
    );
    assert!(
        jobs.get_opt(&format!("change-{name}"))
            .await
            .expect("jobs")
            .is_none()
    );
}
