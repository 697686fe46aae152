//! Smoke tests of the control plane itself: the API behaviours the controller relies on (custom
//! resources, watches, the status subresource, optimistic concurrency, RBAC, the
//! WorkflowExecution CRD's validation) work here as they do in a real cluster.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use crate::support::{self, CONTROLLER_USER, api_code, eventually, unique_name};
use crate::tekton;

fn workflowexecution_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "kubernaut.ai",
        "v1alpha1",
        "WorkflowExecution",
    ))
}

fn object(name: &str, resource: &ApiResource, body: Value) -> DynamicObject {
    DynamicObject::new(name, resource).data(body)
}

fn valid_workflowexecution_body() -> Value {
    json!({
        "spec": {
            "remediationRequestRef": {
                "apiVersion": "remediation.kubernaut.ai/v1alpha1",
                "kind": "RemediationRequest",
                "name": "rr-1",
            },
            "workflowRef": {
                "workflowId": "restart-deployment",
                "version": "1.0.0",
                "containerImage": "registry.example/workflows/restart@sha256:0123",
            },
            "targetResource": "default/deployment/nginx",
            "parameters": {"NAMESPACE": "default"},
            "executionConfig": {"timeout": "30m"},
        }
    })
}

#[tokio::test]
async fn crds_from_the_repository_are_established() {
    let env = support::env().await;
    let api = Api::<CustomResourceDefinition>::all(env.admin().await);
    for name in [
        "workflowexecutions.kubernaut.ai",
        "pipelineruns.tekton.dev",
        "taskruns.tekton.dev",
    ] {
        let crd = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("CRD {name}: {e}"));
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "CRD {name} is not Established");
    }
}

#[tokio::test]
async fn custom_resource_changes_are_seen_by_a_watch() {
    let env = support::env().await;
    let client = env.admin().await;
    let ns = env.namespace("watch").await;

    // A CRD of this test's own, under a group no other test uses.
    let group = format!("{}.lifecycle.test", unique_name("g"));
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                        "status": {"type": "object", "properties": {"seen": {"type": "integer"}}},
                    },
                }},
            }],
        },
    }))
    .unwrap();
    let name = crd.metadata.name.clone().unwrap();
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds.clone(), &name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD Established within 30 s")
    .expect("watching the CRD");

    let widgets = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, "v1", "Widget"));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &widgets);
    let widget_name = unique_name("widget");
    api.create(
        &PostParams::default(),
        &object(&widget_name, &widgets, json!({"spec": {"size": 1}})),
    )
    .await
    .expect("create widget");

    let config = watcher::Config::default().fields(&format!("metadata.name={widget_name}"));
    let mut seen = watcher(api.clone(), config).applied_objects().boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), seen.try_next())
        .await
        .expect("first watch event within 10 s")
        .expect("watch stream")
        .expect("an object");
    assert_eq!(first.data["spec"]["size"], 1);

    api.patch(
        &widget_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 2}})),
    )
    .await
    .expect("patch widget");
    let changed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let obj = seen
                .try_next()
                .await
                .expect("watch stream")
                .expect("an object");
            if obj.data["spec"]["size"] == 2 {
                return obj;
            }
        }
    })
    .await
    .expect("the change seen by the watch within 10 s");
    assert_eq!(changed.metadata.generation, Some(2));

    api.patch_status(
        &widget_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"seen": 2}})),
    )
    .await
    .expect("patch widget status");
    let status_seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let obj = seen
                .try_next()
                .await
                .expect("watch stream")
                .expect("an object");
            if obj.data["status"]["seen"] == 2 {
                return obj;
            }
        }
    })
    .await
    .expect("the status change seen by the watch within 10 s");
    assert_eq!(
        status_seen.metadata.generation,
        Some(2),
        "status writes leave generation alone"
    );

    crds.delete(&name, &Default::default())
        .await
        .expect("delete CRD");
}

#[tokio::test]
async fn status_subresource_owns_status() {
    let env = support::env().await;
    let ns = env.namespace("status").await;
    let runs = tekton::pipelineruns();
    let api: Api<DynamicObject> = Api::namespaced_with(env.admin().await, &ns, &runs);
    let name = unique_name("run");

    // Status sent on create is dropped.
    let created = api
        .create(
            &PostParams::default(),
            &object(
                &name,
                &runs,
                json!({
                    "spec": {"pipelineRef": {"name": "workflow"}},
                    "status": {"startTime": "2026-01-01T00:00:00Z"},
                }),
            ),
        )
        .await
        .expect("create PipelineRun");
    assert!(
        created.data.get("status").is_none(),
        "status on create must be dropped: {:?}",
        created.data
    );

    // Tekton's part, played by the test: status through the subresource.
    let patched = api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}],
            }})),
        )
        .await
        .expect("patch PipelineRun status");
    assert_eq!(patched.data["status"]["conditions"][0]["reason"], "Running");
    assert_eq!(patched.metadata.generation, Some(1));

    // A write to the main resource cannot change status.
    let updated = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"labels": {"touched": "yes"}},
                "status": {"conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded"}]},
            })),
        )
        .await
        .expect("patch PipelineRun");
    assert_eq!(updated.metadata.labels.unwrap()["touched"], "yes");
    assert_eq!(updated.data["status"]["conditions"][0]["reason"], "Running");
}

#[tokio::test]
async fn stale_resource_version_is_a_conflict() {
    let env = support::env().await;
    let ns = env.namespace("conflict").await;
    let wfe = workflowexecution_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(env.admin().await, &ns, &wfe);
    let name = unique_name("wfe");
    let original = api
        .create(
            &PostParams::default(),
            &object(&name, &wfe, valid_workflowexecution_body()),
        )
        .await
        .expect("create WorkflowExecution");

    let mut first = original.clone();
    first.metadata.labels = Some([("writer".to_string(), "first".to_string())].into());
    api.replace(&name, &PostParams::default(), &first)
        .await
        .expect("first update");

    let mut stale = original.clone();
    stale.metadata.labels = Some([("writer".to_string(), "second".to_string())].into());
    let err = api
        .replace(&name, &PostParams::default(), &stale)
        .await
        .expect_err("an update with a stale resourceVersion must fail");
    assert_eq!(api_code(&err), Some(409), "{err}");

    let mut stale_status = original.clone();
    stale_status.data["status"] = json!({"phase": "Pending"});
    let err = api
        .replace_status(&name, &PostParams::default(), &stale_status)
        .await
        .expect_err("a status update with a stale resourceVersion must fail");
    assert_eq!(api_code(&err), Some(409), "{err}");
}

#[tokio::test]
async fn controller_identity_gets_only_what_rbac_grants() {
    let env = support::env().await;
    let ns = env.namespace("rbac").await;
    let runs = tekton::pipelineruns();
    let as_controller: Api<DynamicObject> =
        Api::namespaced_with(env.controller().await, &ns, &runs);

    let err = as_controller
        .list(&ListParams::default())
        .await
        .expect_err("list must be forbidden");
    assert_eq!(api_code(&err), Some(403), "{err}");

    let admin = env.admin().await;
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "pipelinerun-reader", "namespace": ns},
        "rules": [{"apiGroups": ["tekton.dev"], "resources": ["pipelineruns"], "verbs": ["get", "list", "watch"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("create Role");
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "pipelinerun-reader", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pipelinerun-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "lifecycle-controller", "namespace": "lifecycle-system"}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin, &ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("create RoleBinding");

    // The authorizer reads RBAC objects from an informer, so the grant takes effect shortly after.
    eventually(
        Duration::from_secs(10),
        "the RoleBinding to take effect",
        || async { as_controller.list(&ListParams::default()).await.ok() },
    )
    .await;

    let err = as_controller
        .create(
            &PostParams::default(),
            &object(&unique_name("run"), &runs, json!({"spec": {}})),
        )
        .await
        .expect_err("create is not granted");
    assert_eq!(api_code(&err), Some(403), "{err}");
    assert!(err.to_string().contains(CONTROLLER_USER), "{err}");
}

#[tokio::test]
async fn workflowexecution_crd_validates_spec_and_status() {
    let env = support::env().await;
    let ns = env.namespace("wfe").await;
    let wfe = workflowexecution_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(env.admin().await, &ns, &wfe);
    let pp = PostParams::default();

    // Required fields are enforced by the API...
    let err = api
        .create(
            &pp,
            &object(
                &unique_name("missing"),
                &wfe,
                json!({"spec": {"workflowRef": {"workflowId": "x"}}}),
            ),
        )
        .await
        .expect_err("missing required fields");
    assert_eq!(api_code(&err), Some(422), "{err}");
    for field in [
        "spec.targetResource",
        "spec.workflowRef.containerImage",
        "spec.remediationRequestRef",
    ] {
        assert!(
            err.to_string().contains(field),
            "{field} not reported: {err}"
        );
    }

    // ...but empty values are left for the controller to report as a ConfigurationError.
    let mut empty = valid_workflowexecution_body();
    empty["spec"]["workflowRef"]["containerImage"] = json!("");
    empty["spec"]["targetResource"] = json!("");
    api.create(&pp, &object(&unique_name("empty"), &wfe, empty))
        .await
        .expect("empty containerImage and targetResource are accepted");

    let mut bad_timeout = valid_workflowexecution_body();
    bad_timeout["spec"]["executionConfig"]["timeout"] = json!("soon");
    let err = api
        .create(&pp, &object(&unique_name("timeout"), &wfe, bad_timeout))
        .await
        .expect_err("timeout must be a Go duration");
    assert_eq!(api_code(&err), Some(422), "{err}");

    // Spec is immutable.
    let name = unique_name("wfe");
    api.create(&pp, &object(&name, &wfe, valid_workflowexecution_body()))
        .await
        .expect("create WorkflowExecution");
    let err = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"targetResource": "default/deployment/other"}})),
        )
        .await
        .expect_err("spec change must be rejected");
    assert_eq!(api_code(&err), Some(422), "{err}");
    assert!(err.to_string().contains("spec is immutable"), "{err}");

    // Status enums.
    let err = api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Done"}})),
        )
        .await
        .expect_err("unknown phase");
    assert_eq!(api_code(&err), Some(422), "{err}");
    let err = api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"failureDetails": {"reason": "Exploded", "message": "", "wasExecutionFailure": true}}})),
        )
        .await
        .expect_err("unknown failure reason");
    assert_eq!(api_code(&err), Some(422), "{err}");

    let status = json!({"status": {
        "phase": "Failed",
        "observedGeneration": 1,
        "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T00:02:00Z",
        "duration": "2m0s",
        "pipelineRunRef": {"name": "wfe-0123456789abcdef"},
        "pipelineRunStatus": {"status": "False", "reason": "Failed", "message": "Container killed: OOMKilled", "completedTasks": 0, "totalTasks": 1},
        "failureDetails": {
            "failedTaskIndex": 0,
            "failedTaskName": "wfe-0123456789abcdef-restart",
            "failedStepName": "step-restart",
            "reason": "OOMKilled",
            "message": "Container killed: OOMKilled",
            "exitCode": 137,
            "failedAt": "2026-01-01T00:02:00Z",
            "executionTimeBeforeFailure": "2m0s",
            "naturalLanguageSummary": "Workflow 'restart-deployment' failed on target 'default/deployment/nginx'.\n",
            "wasExecutionFailure": true,
        },
        "conditions": [{
            "type": "Ready",
            "status": "False",
            "reason": "OOMKilled",
            "message": "Pipeline task killed due to out of memory",
            "lastTransitionTime": "2026-01-01T00:02:00Z",
        }],
        "rulesRevision": "sha256:abc",
    }});
    let written = api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(status.clone()),
        )
        .await
        .expect("a complete status is valid");
    assert_eq!(
        written.data["status"], status["status"],
        "no status field may be pruned"
    );
}

#[tokio::test]
async fn workflowexecution_is_explained_and_listed_by_kubectl() {
    let env = support::env().await;
    let ns = env.namespace("kubectl").await;
    let wfe = workflowexecution_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(env.admin().await, &ns, &wfe);
    let name = unique_name("wfe");
    api.create(
        &PostParams::default(),
        &object(&name, &wfe, valid_workflowexecution_body()),
    )
    .await
    .expect("create WorkflowExecution");
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [{
            "type": "Ready", "status": "Unknown", "reason": "InProgress", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]}})),
    )
    .await
    .expect("patch status");

    let table = env.kubectl(&["get", "wfe", "-n", &ns, "-o", "wide"]).await;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PHASE",
            "WORKFLOWID",
            "TARGET",
            "DURATION",
            "REASON",
            "AGE"
        ]
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..4],
        [
            name.as_str(),
            "Running",
            "restart-deployment",
            "default/deployment/nginx"
        ]
    );
    assert_eq!(
        row[4], "InProgress",
        "Duration is empty, so Reason comes next: {table}"
    );

    let explained = env
        .kubectl(&["explain", "workflowexecutions.spec.targetResource"])
        .await;
    assert!(explained.contains("the lock key"), "{explained}");
}

#[tokio::test]
async fn tekton_is_played_through_status() {
    let env = support::env().await;
    let ns = env.namespace("tekton").await;
    let client = env.admin().await;
    let runs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &tekton::pipelineruns());
    let taskruns: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &tekton::taskruns());
    let run = unique_name("wfe");
    let tasks = ["build", "restart", "verify"];
    runs.create(
        &PostParams::default(),
        &object(
            &run,
            &tekton::pipelineruns(),
            json!({"spec": {"pipelineRef": {"resolver": "bundles"}}}),
        ),
    )
    .await
    .expect("create PipelineRun");

    let started = tekton::now();
    let running = tekton::set_status(
        &runs,
        &run,
        tekton::pipelinerun_running(&run, &tasks, &started),
    )
    .await;
    assert_eq!(running.data["status"]["conditions"][0]["status"], "Unknown");
    assert_eq!(
        running.data["status"]["childReferences"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );

    tekton::create_taskruns(client.clone(), &ns, &run, &tasks).await;
    let at = tekton::now();
    let ok = tekton::taskrun_status(
        &run,
        "build",
        "True",
        "Succeeded",
        "All Steps have completed executing",
        vec![tekton::step_terminated("compile", 0, "Completed")],
        &at,
    );
    tekton::set_status(&taskruns, &tekton::taskrun_name(&run, "build"), ok).await;
    tekton::set_status(
        &taskruns,
        &tekton::taskrun_name(&run, "restart"),
        tekton::taskrun_oom(&run, "restart", "apply", &at),
    )
    .await;
    tekton::set_status(
        &taskruns,
        &tekton::taskrun_name(&run, "verify"),
        tekton::taskrun_oom_legacy(&run, "verify", "check", &at),
    )
    .await;

    let finished = tekton::set_status(
        &runs,
        &run,
        tekton::pipelinerun_finished(
            &run,
            &tasks,
            "False",
            "Failed",
            &tekton::tasks_message(1, 2, 0, 0),
            &started,
            &at,
        ),
    )
    .await;
    let status = &finished.data["status"];
    assert_eq!(status["conditions"][0]["reason"], "Failed");
    assert_eq!(
        status["conditions"][0]["message"],
        "Tasks Completed: 1 (Failed: 2, Cancelled 0), Skipped: 0"
    );
    assert_eq!(status["completionTime"], at.as_str());

    let children = taskruns
        .list(&ListParams::default().labels(&format!("tekton.dev/pipelineRun={run}")))
        .await
        .expect("list TaskRuns");
    let mut reasons: Vec<(String, String, i64)> = children
        .items
        .iter()
        .map(|tr| {
            let status = &tr.data["status"];
            (
                tr.metadata.name.clone().unwrap_or_default(),
                status["conditions"][0]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                status["steps"][0]["terminated"]["exitCode"]
                    .as_i64()
                    .unwrap_or_default(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            (format!("{run}-build"), "Succeeded".to_string(), 0),
            (format!("{run}-restart"), "StepOOM".to_string(), 137),
            (format!("{run}-verify"), "Failed".to_string(), 137),
        ]
    );
}
