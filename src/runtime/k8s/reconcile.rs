//! One reconcile: observe, decide, carry out; again until nothing is left to do.

use super::{Ctx, Error, backoff, shard_of};
use crate::engine::{self, ActionError, Decision, Effect, ObjectKey, Observation};
use crate::rules::Rules;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most decide-and-carry-out rounds in one reconcile.
const MAX_ROUNDS: usize = 16;

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Whether an API error is worth retrying (timeouts, throttling, server errors, conflicts).
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => engine::is_transient(s.code),
        _ => true,
    }
}

fn api_error(action: &str, e: &kube::Error) -> ActionError {
    match e {
        kube::Error::Api(s) => ActionError {
            action: action.into(),
            code: s.code,
            reason: s.reason.clone(),
            message: s.message.clone(),
        },
        other => ActionError {
            action: action.into(),
            code: 0,
            reason: "Unknown".into(),
            message: other.to_string(),
        },
    }
}

fn code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        _ => 0,
    }
}

/// Reconciles one governed resource.
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let started = Instant::now();
    let rules = ctx.rules.current();
    let result = reconcile_with(&obj, &ctx, &rules).await;
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    match &result {
        Ok(_) => {
            ctx.metrics
                .reconciles
                .get_or_create(&vec![("result".into(), "ok".into())])
                .inc();
            ctx.failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&uid);
        }
        Err(e) => {
            ctx.metrics
                .reconciles
                .get_or_create(&vec![("result".into(), "error".into())])
                .inc();
            ctx.metrics.error(e.category());
        }
    }
    result
}

/// What the controller runtime does after a failed reconcile: retry with capped backoff.
pub fn error_policy(obj: Arc<DynamicObject>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
    let n = failures.entry(uid).or_insert(0);
    *n += 1;
    tracing::warn!(
        resource = %format!("{}/{}", obj.metadata.namespace.clone().unwrap_or_default(), obj.metadata.name.clone().unwrap_or_default()),
        error = %err,
        attempt = *n,
        "reconcile failed; retrying"
    );
    Action::requeue(backoff(*n - 1))
}

async fn reconcile_with(obj: &DynamicObject, ctx: &Ctx, rules: &Rules) -> Result<Action, Error> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let namespace = obj.metadata.namespace.clone().unwrap_or_default();
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &namespace, &ctx.resource_ar);
    let mut resource = to_value(obj);
    let mut error: Option<ActionError> = None;
    let mut last: Option<Decision> = None;

    if let Some((index, count)) = ctx.shard {
        match engine::execution_key(rules, &resource, now_secs()) {
            Ok(k) if shard_of(&k.name, count) != index => return Ok(Action::await_change()),
            _ => {}
        }
    }

    for _ in 0..MAX_ROUNDS {
        let now = now_secs();
        let key = engine::execution_key(rules, &resource, now).ok();
        let execution = match &key {
            Some(k) => observe_execution(ctx, k).await?,
            None => None,
        };
        let mut obs = Observation {
            resource: resource.clone(),
            execution,
            related: serde_json::Map::new(),
            error: error.take(),
        };
        let t0 = Instant::now();
        let mut d = engine::decide(rules, &obs, now);
        ctx.metrics
            .decision_seconds
            .observe(t0.elapsed().as_secs_f64());
        for _ in 0..4 {
            if d.needs.is_empty() {
                break;
            }
            for req in &d.needs {
                let mut list = Vec::new();
                for (reference, k) in &req.entries {
                    let object = match k {
                        Some(k) => get_object(ctx, k).await?,
                        None => None,
                    };
                    list.push(json!({"ref": reference, "object": object}));
                }
                obs.related.insert(req.name.clone(), Value::Array(list));
            }
            let t0 = Instant::now();
            d = engine::decide(rules, &obs, now);
            ctx.metrics
                .decision_seconds
                .observe(t0.elapsed().as_secs_f64());
        }
        let span_phase = d.phase.clone();
        if let Some(e) = &d.error {
            ctx.metrics.error(e.category);
            tracing::warn!(resource = %format!("{namespace}/{name}"), phase = %span_phase, revision = %rules.revision, category = e.category, error = %e.message, "the rules failed for this resource");
        }
        if let Some(t) = &d.transition {
            tracing::info!(resource = %format!("{namespace}/{name}"), phase = %span_phase, revision = %rules.revision, transition = %t, "transition");
        }
        if d.effects.is_empty() {
            return Ok(requeue(&d));
        }
        let outcome = carry_out(ctx, rules, &api, &name, &mut resource, &d).await?;
        match outcome {
            Step::Continue => {}
            Step::Retry(e) => error = Some(e),
            Step::Gone => return Ok(Action::await_change()),
        }
        let stop = d.error.is_some();
        last = Some(d);
        if stop {
            break;
        }
    }
    Ok(last
        .as_ref()
        .map(requeue)
        .unwrap_or_else(Action::await_change))
}

fn requeue(d: &Decision) -> Action {
    match d.requeue_after {
        Some(s) if s > 0.0 => {
            Action::requeue(Duration::from_secs_f64(s.min(86_400.0)) + Duration::from_millis(50))
        }
        Some(_) => Action::requeue(Duration::from_millis(100)),
        None => Action::await_change(),
    }
}

enum Step {
    Continue,
    /// Decide again with this error observed.
    Retry(ActionError),
    /// The resource is gone.
    Gone,
}

fn to_value(obj: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    v
}

fn api_resource(ctx: &Ctx, api_version: &str, kind: &str) -> Option<ApiResource> {
    ctx.kinds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(api_version.to_string(), kind.to_string()))
        .cloned()
}

async fn api_for(ctx: &Ctx, k: &ObjectKey) -> Result<Api<DynamicObject>, Error> {
    let ar = match api_resource(ctx, &k.api_version, &k.kind) {
        Some(ar) => ar,
        None => {
            // a reload may name a kind not seen at start-up
            let ar = super::resolve(&ctx.client, &k.api_version, &k.kind, "object").await?;
            ctx.kinds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((k.api_version.clone(), k.kind.clone()), ar.clone());
            ar
        }
    };
    Ok(Api::namespaced_with(ctx.client.clone(), &k.namespace, &ar))
}

async fn observe_execution(ctx: &Ctx, k: &ObjectKey) -> Result<Option<Value>, Error> {
    if let Some(ar) = api_resource(ctx, &k.api_version, &k.kind) {
        let cached = ctx
            .executions
            .get(&ObjectRef::new_with(&k.name, ar).within(&k.namespace));
        if let Some(obj) = cached {
            return Ok(Some(to_value(&obj)));
        }
    }
    get_object(ctx, k).await
}

async fn get_object(ctx: &Ctx, k: &ObjectKey) -> Result<Option<Value>, Error> {
    let api = api_for(ctx, k).await?;
    ctx.metrics.api("get", &k.kind);
    match api.get_opt(&k.name).await {
        Ok(o) => Ok(o.as_ref().map(to_value)),
        Err(e) if transient(&e) => Err(Error::Transient(format!(
            "get {} {}/{}: {e}",
            k.kind, k.namespace, k.name
        ))),
        // a read we are not allowed to make is a configuration problem worth surfacing
        Err(e) => Err(Error::Api(format!(
            "get {} {}/{}: {e}",
            k.kind, k.namespace, k.name
        ))),
    }
}

async fn carry_out(
    ctx: &Ctx,
    rules: &Rules,
    api: &Api<DynamicObject>,
    name: &str,
    resource: &mut Value,
    d: &Decision,
) -> Result<Step, Error> {
    let kind = rules.resource.kind.clone();
    let pp = PatchParams {
        field_manager: Some(rules.resource.field_manager.clone()),
        ..PatchParams::default()
    };
    for effect in &d.effects {
        match effect {
            Effect::AddFinalizer { finalizer } | Effect::RemoveFinalizer { finalizer } => {
                let adding = matches!(effect, Effect::AddFinalizer { .. });
                let mut list: Vec<Value> = resource
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                list.retain(|f| f.as_str() != Some(finalizer.as_str()));
                if adding {
                    list.push(Value::String(finalizer.clone()));
                }
                let rv = resource
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                let patch = json!({"metadata": {"finalizers": list, "resourceVersion": rv}});
                ctx.metrics.api("patch", &kind);
                match api.patch(name, &pp, &Patch::Merge(&patch)).await {
                    Ok(o) => *resource = to_value(&o),
                    Err(e) if code(&e) == 404 => return Ok(Step::Gone),
                    Err(e) if code(&e) == 409 => {
                        return refresh(ctx, api, name, resource, &kind).await;
                    }
                    Err(e) => return Err(classify(&e, "patch finalizers")),
                }
                if !adding && resource.pointer("/metadata/deletionTimestamp").is_some() {
                    // the API server removes the object once the last finalizer is gone
                    return Ok(Step::Gone);
                }
            }
            Effect::PatchStatus { patch } => {
                let rv = resource
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                let body = json!({"metadata": {"resourceVersion": rv}, "status": patch});
                ctx.metrics.api("patch-status", &kind);
                match api.patch_status(name, &pp, &Patch::Merge(&body)).await {
                    Ok(o) => *resource = to_value(&o),
                    Err(e) if code(&e) == 404 => return Ok(Step::Gone),
                    Err(e) if code(&e) == 409 => {
                        return refresh(ctx, api, name, resource, &kind).await;
                    }
                    Err(e) => return Err(classify(&e, "patch status")),
                }
            }
            Effect::CreateExecution { object } => {
                let Some(key) = ObjectKey::of(object) else {
                    return Err(Error::Api(
                        "the rendered execution object has no identity".into(),
                    ));
                };
                let exec_api = api_for(ctx, &key).await?;
                let obj: DynamicObject = serde_json::from_value(object.clone())
                    .map_err(|e| Error::Api(format!("rendered execution object: {e}")))?;
                ctx.metrics.api("create", &key.kind);
                let post = PostParams {
                    field_manager: Some(rules.resource.field_manager.clone()),
                    ..PostParams::default()
                };
                match exec_api.create(&post, &obj).await {
                    Ok(_) => {
                        tracing::info!(execution = %format!("{}/{}", key.namespace, key.name), "created {}", key.kind);
                        return Ok(Step::Continue);
                    }
                    Err(e) if code(&e) == 409 => {
                        // AlreadyExists: ours (adopt), another's (race), or gone again
                        ctx.metrics.api("get", &key.kind);
                        return match exec_api.get_opt(&key.name).await {
                            Ok(Some(_)) => Ok(Step::Continue),
                            Ok(None) => Ok(Step::Retry(api_error("create", &e))),
                            Err(e2) => Err(classify(&e2, "get after AlreadyExists")),
                        };
                    }
                    Err(e) if transient(&e) => return Err(classify(&e, "create")),
                    Err(e) => return Ok(Step::Retry(api_error("create", &e))),
                }
            }
            Effect::DeleteExecution { key, uid } => {
                let exec_api = api_for(ctx, key).await?;
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: uid.clone(),
                        resource_version: None,
                    }),
                    propagation_policy: Some(kube::api::PropagationPolicy::Background),
                    ..DeleteParams::default()
                };
                ctx.metrics.api("delete", &key.kind);
                match exec_api.delete(&key.name, &dp).await {
                    Ok(_) => {
                        tracing::info!(execution = %format!("{}/{}", key.namespace, key.name), "deleted {}", key.kind)
                    }
                    // gone already, or replaced by another object of the same name: not ours
                    Err(e) if code(&e) == 404 || code(&e) == 409 => {}
                    Err(e) => return Err(classify(&e, "delete")),
                }
            }
            Effect::Event(ev) => {
                let reference = object_reference(resource, &ctx.resource_ar);
                let event = Event {
                    type_: if ev.kind == "Warning" {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: ev.reason.clone(),
                    note: Some(ev.message.clone()),
                    action: ev.action.clone(),
                    secondary: None,
                };
                ctx.metrics.api("create", "Event");
                if let Err(e) = ctx.recorder.publish(&event, &reference).await {
                    // Events are best effort: a failure never holds the lifecycle back
                    tracing::warn!(error = %e, reason = %ev.reason, "cannot record an Event");
                    ctx.metrics.error("EventFailed");
                }
            }
            Effect::Audit { record } => ctx.audit.send(record.clone()),
            Effect::Metric(m) => ctx.metrics.record(m),
        }
    }
    Ok(Step::Continue)
}

async fn refresh(
    ctx: &Ctx,
    api: &Api<DynamicObject>,
    name: &str,
    resource: &mut Value,
    kind: &str,
) -> Result<Step, Error> {
    ctx.metrics.api("get", kind);
    match api.get_opt(name).await {
        Ok(Some(o)) => {
            *resource = to_value(&o);
            Ok(Step::Continue)
        }
        Ok(None) => Ok(Step::Gone),
        Err(e) => Err(classify(&e, "re-read after a conflict")),
    }
}

fn classify(e: &kube::Error, what: &str) -> Error {
    if transient(e) {
        Error::Transient(format!("{what}: {e}"))
    } else {
        Error::Api(format!("{what}: {e}"))
    }
}

fn object_reference(
    resource: &Value,
    ar: &ApiResource,
) -> k8s_openapi::api::core::v1::ObjectReference {
    let field = |p: &str| {
        resource
            .pointer(p)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(ar.api_version.clone()),
        kind: Some(ar.kind.clone()),
        name: field("/metadata/name"),
        namespace: field("/metadata/namespace"),
        uid: field("/metadata/uid"),
        resource_version: field("/metadata/resourceVersion"),
        field_path: None,
    }
}
