//! Playing Tekton: no Tekton controller runs in the local control plane, so the integration tests
//! and the load harness write the PipelineRun and TaskRun status that Tekton would, through the
//! `/status` subresource of the test-only CRDs in `tests/crds/`: [`set_status`] replaces a whole
//! status (reading the object first), [`patch_status`] merges one in with a single patch. The shapes follow Tekton v1: a `Succeeded` condition,
//! `startTime`/`completionTime`, `childReferences` to TaskRuns named `<pipelinerun>-<task>` and
//! labelled `tekton.dev/pipelineRun`, and per-step `terminated` states. Both ways an out-of-memory
//! step shows up are covered: TaskRun reason `StepOOM` (Tekton v1.12 and later) and, before that,
//! reason `Failed` with `OOMKilled` only in the step's `terminated.reason` and the message.

use kube::Client;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

/// The `tekton.dev/v1` PipelineRun resource.
pub fn pipelineruns() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("tekton.dev", "v1", "PipelineRun"))
}

/// The `tekton.dev/v1` TaskRun resource.
pub fn taskruns() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("tekton.dev", "v1", "TaskRun"))
}

/// The current time as Kubernetes writes it (RFC 3339, whole seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .expect("rounding the current time")
        .to_string()
}

/// A `Succeeded` condition: `status` is "Unknown", "True" or "False".
pub fn succeeded(status: &str, reason: &str, message: &str, at: &str) -> Value {
    json!({
        "type": "Succeeded",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": at,
    })
}

/// Name Tekton gives the TaskRun of `task` in `pipelinerun`.
pub fn taskrun_name(pipelinerun: &str, task: &str) -> String {
    format!("{pipelinerun}-{task}")
}

/// `childReferences` entries for the TaskRuns of `tasks`, in order.
pub fn child_references(pipelinerun: &str, tasks: &[&str]) -> Value {
    Value::Array(
        tasks
            .iter()
            .map(|task| {
                json!({
                    "apiVersion": "tekton.dev/v1",
                    "kind": "TaskRun",
                    "name": taskrun_name(pipelinerun, task),
                    "pipelineTaskName": task,
                })
            })
            .collect(),
    )
}

/// Tekton's summary message: `Tasks Completed: N (Failed: F, Cancelled C), Skipped: S`.
pub fn tasks_message(completed: usize, failed: usize, cancelled: usize, skipped: usize) -> String {
    format!(
        "Tasks Completed: {completed} (Failed: {failed}, Cancelled {cancelled}), Skipped: {skipped}"
    )
}

/// PipelineRun status while running: started, the TaskRuns of `tasks` created.
pub fn pipelinerun_running(pipelinerun: &str, tasks: &[&str], started: &str) -> Value {
    json!({
        "startTime": started,
        "conditions": [succeeded("Unknown", "Running", &tasks_message(0, 0, 0, 0), started)],
        "childReferences": child_references(pipelinerun, tasks),
    })
}

/// PipelineRun status once finished. `status` "True" with reason `Succeeded`/`Completed`, or
/// "False" with `Failed`, `Cancelled`, `PipelineRunTimeout`, `CreateRunFailed`,
/// `PipelineValidationFailed`, ...; `tasks` may be empty for a run that never started a task.
pub fn pipelinerun_finished(
    pipelinerun: &str,
    tasks: &[&str],
    status: &str,
    reason: &str,
    message: &str,
    started: &str,
    completed: &str,
) -> Value {
    json!({
        "startTime": started,
        "completionTime": completed,
        "conditions": [succeeded(status, reason, message, completed)],
        "childReferences": child_references(pipelinerun, tasks),
    })
}

/// A TaskRun as the Tekton controller creates it for `task` of `pipelinerun` (no status yet).
pub fn taskrun(pipelinerun: &str, task: &str) -> DynamicObject {
    let mut object =
        DynamicObject::new(&taskrun_name(pipelinerun, task), &taskruns()).data(json!({
            "spec": {"serviceAccountName": "default", "taskRef": {"name": task}},
        }));
    object.metadata.labels = Some(
        [
            (
                "tekton.dev/pipelineRun".to_string(),
                pipelinerun.to_string(),
            ),
            ("tekton.dev/pipelineTask".to_string(), task.to_string()),
        ]
        .into(),
    );
    object
}

/// One step's final state.
pub fn step_terminated(step: &str, exit_code: i32, reason: &str) -> Value {
    json!({
        "name": step,
        "container": format!("step-{step}"),
        "terminated": {"exitCode": exit_code, "reason": reason},
    })
}

/// TaskRun status: succeeded when `steps` all exited 0, or failed with the given reason and message.
pub fn taskrun_status(
    pipelinerun: &str,
    task: &str,
    status: &str,
    reason: &str,
    message: &str,
    steps: Vec<Value>,
    at: &str,
) -> Value {
    json!({
        "podName": format!("{}-pod", taskrun_name(pipelinerun, task)),
        "startTime": at,
        "completionTime": at,
        "conditions": [succeeded(status, reason, message, at)],
        "steps": steps,
    })
}

/// The final status of a PipelineRun of one task whose single step exited 0 (`succeeded`) or 1,
/// and that of its TaskRun: `(PipelineRun status, TaskRun status)`, both started at `started`
/// and completed at `completed`.
pub fn one_task_finished(
    pipelinerun: &str,
    task: &str,
    succeeded: bool,
    started: &str,
    completed: &str,
) -> (Value, Value) {
    let (status, reason, failed) = if succeeded {
        ("True", "Succeeded", 0)
    } else {
        ("False", "Failed", 1)
    };
    let run = pipelinerun_finished(
        pipelinerun,
        &[task],
        status,
        reason,
        &tasks_message(1, failed, 0, 0),
        started,
        completed,
    );
    let (message, step) = if succeeded {
        (
            "All Steps have completed executing".to_string(),
            step_terminated(task, 0, "Completed"),
        )
    } else {
        (
            format!("\"step-{task}\" exited with code 1"),
            step_terminated(task, 1, "Error"),
        )
    };
    let mut taskrun = taskrun_status(
        pipelinerun,
        task,
        status,
        reason,
        &message,
        vec![step],
        completed,
    );
    taskrun["startTime"] = Value::from(started);
    (run, taskrun)
}

/// TaskRun status of a step killed for memory, as Tekton v1.12 and later report it (`StepOOM`).
pub fn taskrun_oom(pipelinerun: &str, task: &str, step: &str, at: &str) -> Value {
    taskrun_status(
        pipelinerun,
        task,
        "False",
        "StepOOM",
        &format!("\"step-{step}\" exited with code 137: OOMKilled"),
        vec![step_terminated(step, 137, "OOMKilled")],
        at,
    )
}

/// TaskRun status of a step killed for memory, as Tekton before v1.12 reports it: reason `Failed`,
/// `OOMKilled` only in the step's `terminated.reason` and the message.
pub fn taskrun_oom_legacy(pipelinerun: &str, task: &str, step: &str, at: &str) -> Value {
    taskrun_status(
        pipelinerun,
        task,
        "False",
        "Failed",
        &format!(
            "\"step-{step}\" exited with code 137 (image: \"registry.example/step\"); for logs run: kubectl -n default logs pod -c step-{step}\nOOMKilled"
        ),
        vec![step_terminated(step, 137, "OOMKilled")],
        at,
    )
}

/// Replaces the object's whole status with `status` in one write through the `/status`
/// subresource (as Tekton's controller does), retrying on a conflict.
pub async fn set_status(api: &Api<DynamicObject>, name: &str, status: Value) -> DynamicObject {
    for _ in 0..10 {
        let mut object = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading {name}: {e}"));
        object.data["status"] = status.clone();
        match api
            .replace_status(name, &PostParams::default(), &object)
            .await
        {
            Ok(written) => return written,
            Err(e) if crate::api_code(&e) == Some(409) => continue,
            Err(e) => panic!("writing status of {name}: {e}"),
        }
    }
    panic!("writing status of {name}: still conflicting after 10 attempts")
}

/// Merges `status` into the object's status with one merge patch of the `/status` subresource
/// (no read first, so no conflict: what a player under load does). The error is the API's,
/// for the caller to retry or report.
pub async fn patch_status(
    api: &Api<DynamicObject>,
    name: &str,
    status: &Value,
) -> Result<(), kube::Error> {
    let body = json!({ "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map(|_| ())
}

/// Creates the TaskRuns of `tasks` for `pipelinerun` in `namespace`, as Tekton would.
pub async fn create_taskruns(client: Client, namespace: &str, pipelinerun: &str, tasks: &[&str]) {
    let api: Api<DynamicObject> = Api::namespaced_with(client, namespace, &taskruns());
    for task in tasks {
        api.create(&PostParams::default(), &taskrun(pipelinerun, task))
            .await
            .unwrap_or_else(|e| panic!("creating TaskRun for {task}: {e}"));
    }
}
