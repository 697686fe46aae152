//! One reconcile: the cluster as the engine's world. The loop itself (observe, decide, carry
//! out, again until nothing is left to do) is the engine's [`drive`]; this file reads objects
//! (the watch cache first) and carries out one effect at a time against the API server.

use super::compact::CompactResource;
use super::events::{Event, EventType};
use super::progress::parse_version;
use super::status_guard::{STATUS_NOT_PERSISTED, lost_fields};
use super::{Cached, Ctx, Error, backoff, shard_of};
use crate::engine::drive::{DriveError, Outcome, World, drive};
use crate::engine::{self, ActionError, Decision, Effect, LookupRequest, ObjectKey, Observation};
use crate::rules::Rules;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
};
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
            child: None,
            action: action.into(),
            code: s.code,
            reason: s.reason.clone(),
            message: s.message.clone(),
        },
        other => ActionError {
            child: None,
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
pub async fn reconcile(obj: Arc<CompactResource>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let started = Instant::now();
    // the resource as the cache has it, decoded once for the whole reconcile
    let cached = obj.value();
    // the latest rules, or the revision the resource is pinned to (`rollout`; read from the
    // resource's status, so the status is not copied out for it)
    let chosen = ctx.rules.choose(&cached);
    let rules = chosen.rules;
    if let Some(unavailable) = &chosen.unavailable {
        super::revision_store::report_unavailable(
            &ctx,
            &obj.object(),
            unavailable,
            &rules.revision,
        )
        .await;
    }
    let uid = text_at(&cached, "/metadata/uid");
    let result = reconcile_with(&obj, cached, &ctx, &rules).await;
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
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
pub fn error_policy(obj: Arc<CompactResource>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let uid = obj.version().uid.unwrap_or_default();
    let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
    let n = failures.entry(uid).or_insert(0);
    *n += 1;
    tracing::warn!(
        resource = %format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name()),
        error = %err,
        attempt = *n,
        "reconcile failed; retrying"
    );
    Action::requeue(backoff(*n - 1))
}

async fn reconcile_with(
    obj: &CompactResource,
    cached: Value,
    ctx: &Ctx,
    rules: &Rules,
) -> Result<Action, Error> {
    let name = obj.name().to_string();
    let namespace = obj.namespace().unwrap_or_default().to_string();
    let resource = newest(ctx, cached);

    if let Some((index, count)) = ctx.shard {
        match engine::execution_key(rules, &resource, now_secs()) {
            Ok(k) if shard_of(&k.name, count) != index => return Ok(Action::await_change()),
            _ => {}
        }
    }

    let mut world = Cluster {
        ctx,
        rules,
        api: super::api_in(&ctx.client, &namespace, &ctx.resource_ar),
        label: format!("{namespace}/{name}"),
        name,
        resource: Some(resource),
        held: None,
        observed_version: None,
        behind: Default::default(),
    };
    // a held status write that loses a conflict at the end: decide again on what is there now
    let mut result = drive(rules, &mut world).await;
    for _ in 0..MAX_LATE_CONFLICTS {
        match world.flush().await {
            Outcome::Stale => result = drive(rules, &mut world).await,
            Outcome::Backoff(e) => return Err(e),
            Outcome::Gone => return Ok(Action::await_change()),
            Outcome::Done | Outcome::Refused(_) => break,
        }
    }
    match result {
        Ok(requeue_after) => Ok(requeue(requeue_after)),
        Err(DriveError::Backoff(e)) => Err(e),
        Err(DriveError::Refused { effect, error }) => {
            let message = format!(
                "{effect}: {} {}: {}",
                error.code, error.reason, error.message
            );
            Err(if engine::is_transient(error.code) {
                Error::Transient(message)
            } else {
                Error::Api(message)
            })
        }
        Err(DriveError::Unsettled(u)) => Err(Error::Unsettled(u.message)),
    }
}

fn requeue(after: Option<f64>) -> Action {
    match after {
        Some(s) if s > 0.0 => {
            Action::requeue(Duration::from_secs_f64(s.min(86_400.0)) + Duration::from_millis(50))
        }
        Some(_) => Action::requeue(Duration::from_millis(100)),
        None => Action::await_change(),
    }
}

/// Times the held status write may lose a conflict at the end of a reconcile before the
/// reconcile gives up on it (the next one starts from the cache).
const MAX_LATE_CONFLICTS: usize = 3;

/// A status write not made yet: the decisions that follow in the same reconcile see it (it is
/// applied to the reconcile's copy of the resource), and their own status writes fold into it,
/// so a transition and the new phase's first sync cost one request. The Events and metric
/// updates that came after it wait for it; any other effect, and the end of the reconcile, make
/// it.
struct Held {
    patch: Value,
    after: Vec<Effect>,
}

/// The cluster as the engine's world, for one reconcile of one resource.
struct Cluster<'a> {
    ctx: &'a Ctx,
    rules: &'a Rules,
    /// The governed resource's API.
    api: Api<DynamicObject>,
    name: String,
    /// `namespace/name`, for logs.
    label: String,
    /// The resource as last read or written (none once gone), with the held status write.
    resource: Option<Value>,
    /// The status write held back, if any.
    held: Option<Held>,
    /// The newest revision among the execution objects (children) this reconcile observed:
    /// related objects are listed by them (none: none observed; `Some(None)`: one had a version
    /// that is not a number).
    observed_version: Option<Option<u64>>,
    /// Related kinds whose cache had not caught up even after a wait.
    behind: super::related::Behind,
}

impl Cluster<'_> {
    /// Holds a status write, folding it into the one already held when one patch can say both.
    async fn hold(&mut self, patch: &Value) -> Outcome<Error> {
        let folded = match &mut self.held {
            Some(held) => engine::status::compose_merge_patches(&mut held.patch, patch),
            None => false,
        };
        if !folded {
            match self.flush().await {
                Outcome::Done => {}
                other => return other,
            }
            self.held = Some(Held {
                patch: patch.clone(),
                after: Vec::new(),
            });
        }
        match self.resource.as_mut() {
            Some(resource) => {
                pretend_written(resource, patch);
                Outcome::Done
            }
            None => Outcome::Gone,
        }
    }

    /// Makes the held status write, then the effects that waited for it.
    async fn flush(&mut self) -> Outcome<Error> {
        let Some(held) = self.held.take() else {
            return Outcome::Done;
        };
        let write = Effect::PatchStatus { patch: held.patch };
        for effect in std::iter::once(&write).chain(&held.after) {
            match carry_out(self, effect).await {
                Ok(Outcome::Done) => {}
                Ok(other) => return other,
                Err(e) => return Outcome::Backoff(e),
            }
        }
        Outcome::Done
    }
}

impl World for Cluster<'_> {
    type Error = Error;

    fn now(&self) -> f64 {
        now_secs()
    }

    fn resource(&self) -> Option<&Value> {
        self.resource.as_ref()
    }

    async fn execution(&mut self, key: &ObjectKey) -> Result<Option<Value>, Error> {
        let found = observe(self.ctx, key).await?;
        if let Some(o) = &found {
            let version = o
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(parse_version);
            self.observed_version = match (self.observed_version, version) {
                (Some(Some(seen)), Some(v)) => Some(Some(seen.max(v))),
                (None, v) => Some(v),
                // a version that is not a number: no cache can be shown to have passed it
                _ => Some(None),
            };
        }
        Ok(found)
    }

    async fn related(&mut self, key: &ObjectKey) -> Result<Option<Value>, Error> {
        // from its cache once the cache shows the changes up to the objects that list it
        let as_of = self.observed_version.flatten();
        super::related::read(self.ctx, key, as_of, &mut self.behind).await
    }

    async fn lookup(&mut self, request: &LookupRequest) -> Result<Vec<Value>, Error> {
        self.ctx.lookups.find(request).await
    }

    async fn carry_out(&mut self, effect: &Effect) -> Outcome<Error> {
        match effect {
            Effect::PatchStatus { patch } => return self.hold(patch).await,
            Effect::Event(_) | Effect::Metric(_) if self.held.is_some() => {
                if let Some(held) = &mut self.held {
                    held.after.push(effect.clone());
                }
                return Outcome::Done;
            }
            _ => match self.flush().await {
                Outcome::Done => {}
                other => return other,
            },
        }
        match carry_out(self, effect).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Backoff(e),
        }
    }

    fn decided(&mut self, _: &Observation, d: &Decision) {
        let rules = self.rules;
        if let Some(e) = &d.error {
            self.ctx.metrics.error(e.category.as_str());
            tracing::warn!(resource = %self.label, phase = %d.phase, revision = %rules.revision, category = e.category.as_str(), error = %e.message, "the rules failed for this resource");
        }
        if let Some(t) = &d.transition {
            tracing::info!(resource = %self.label, phase = %d.phase, revision = %rules.revision, transition = %t, "transition");
        }
    }

    fn timed(&mut self, decide: impl FnOnce() -> Decision) -> Decision {
        let t0 = Instant::now();
        let d = decide();
        self.ctx
            .metrics
            .decision_seconds
            .observe(t0.elapsed().as_secs_f64());
        d
    }
}

/// The resource as its cache has it, or as this controller last wrote it when the cache has not
/// shown that write yet (a decision on the older copy would only lose a conflict).
fn newest(ctx: &Ctx, cached: Value) -> Value {
    let uid = text_at(&cached, "/metadata/uid");
    let mut written = ctx.written.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(w) = written.get(&uid) {
        // resourceVersions are opaque; the API server's are numbers that grow, and only then
        // is the copy used
        let version = |v: &Value| text_at(v, "/metadata/resourceVersion").parse::<u64>().ok();
        if let (Some(mine), Some(seen)) = (version(w), version(&cached))
            && mine > seen
        {
            return w.clone();
        }
        written.remove(&uid);
    }
    cached
}

/// Remembers the resource as a write returned it (none: gone).
fn wrote(ctx: &Ctx, resource: Option<&Value>, uid: &str) {
    let mut written = ctx.written.lock().unwrap_or_else(|e| e.into_inner());
    match resource {
        Some(r) => {
            written.insert(uid.to_string(), r.clone());
        }
        None => {
            written.remove(uid);
        }
    }
}

pub(super) fn to_value(obj: &DynamicObject) -> Value {
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
    Ok(super::api_in(&ctx.client, &k.namespace, &ar))
}

/// Reads an object the rules observe: from the watch caches, from the API server only when
/// they cannot say.
pub(super) async fn observe(ctx: &Ctx, k: &ObjectKey) -> Result<Option<Value>, Error> {
    match ctx.caches.get(k) {
        Cached::Found(obj) => Ok(Some(obj)),
        Cached::Absent => Ok(None),
        Cached::Unknown => get_object(ctx, k).await.map(|o| o.as_ref().map(to_value)),
    }
}

pub(super) async fn get_object(ctx: &Ctx, k: &ObjectKey) -> Result<Option<DynamicObject>, Error> {
    let api = api_for(ctx, k).await?;
    ctx.metrics.api("get", &k.kind);
    match api.get_opt(&k.name).await {
        Ok(o) => Ok(o),
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

/// Carries out one effect; an error gives up this reconcile.
async fn carry_out(w: &mut Cluster<'_>, effect: &Effect) -> Result<Outcome<Error>, Error> {
    let ctx = w.ctx;
    let rules = w.rules;
    let kind = rules.resource.kind.clone();
    let pp = PatchParams {
        field_manager: Some(rules.resource.field_manager.clone()),
        ..PatchParams::default()
    };
    let Some(resource) = w.resource.as_mut() else {
        return Ok(Outcome::Gone);
    };
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
            let uid = text_at(resource, "/metadata/uid");
            match w.api.patch(&w.name, &pp, &Patch::Merge(&patch)).await {
                Ok(o) => *resource = to_value(&o),
                Err(e) if code(&e) == 404 => {
                    wrote(ctx, None, &uid);
                    return Ok(Outcome::Gone);
                }
                Err(e) if code(&e) == 409 => return refresh(w, &kind).await,
                Err(e) => return Err(classify(&e, "patch finalizers")),
            }
            if !adding && resource.pointer("/metadata/deletionTimestamp").is_some() {
                // the API server removes the object once the last finalizer is gone
                wrote(ctx, None, &uid);
                return Ok(Outcome::Gone);
            }
            wrote(ctx, Some(resource), &uid);
        }
        Effect::PatchStatus { patch } => {
            let rv = resource
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(Value::Null);
            let uid = text_at(resource, "/metadata/uid");
            if ctx
                .status_guard
                .is_futile(&uid, patch, rv.as_str().unwrap_or(""))
            {
                // sent from this very version before, and the API server did not keep it
                pretend_written(resource, patch);
                return Ok(Outcome::Done);
            }
            let body = json!({"metadata": {"resourceVersion": rv}, "status": patch});
            ctx.metrics.api("patch-status", &kind);
            match w.api.patch_status(&w.name, &pp, &Patch::Merge(&body)).await {
                Ok(o) => *resource = to_value(&o),
                Err(e) if code(&e) == 404 => {
                    ctx.status_guard.forget(&uid);
                    wrote(ctx, None, &uid);
                    return Ok(Outcome::Gone);
                }
                Err(e) if code(&e) == 409 => return refresh(w, &kind).await,
                Err(e) => return Err(classify(&e, "patch status")),
            }
            let lost = lost_fields(patch, resource.get("status"));
            let after = text_at(resource, "/metadata/resourceVersion");
            if ctx.status_guard.record(&uid, patch, &after, &lost) {
                report_not_persisted(ctx, resource, &w.label, &lost).await;
            }
            wrote(ctx, Some(resource), &uid);
            if !lost.is_empty() {
                pretend_written(resource, patch);
            }
        }
        Effect::CreateExecution { object } | Effect::CreateChild { object, .. } => {
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
                Ok(created) => {
                    tracing::info!(execution = %format!("{}/{}", key.namespace, key.name), "created {}", key.kind);
                    // the next decision sees it, before its watch event arrives
                    ctx.caches.created(&key, created);
                }
                Err(e) => {
                    if code(&e) == 409 {
                        // someone's object holds the name: the next decision sees whose
                        if let Some(existing) = get_object(ctx, &key).await? {
                            ctx.caches.created(&key, existing);
                        }
                    }
                    return Ok(Outcome::Refused(api_error("create", &e)));
                }
            }
        }
        Effect::PatchExecution { key, patch } | Effect::PatchChild { key, patch, .. } => {
            let exec_api = api_for(ctx, key).await?;
            ctx.metrics.api("patch", &key.kind);
            match exec_api.patch(&key.name, &pp, &Patch::Merge(patch)).await {
                Ok(patched) => {
                    // the next decision sees the patch, before its watch event arrives
                    ctx.caches.patched(key, patched);
                    tracing::info!(execution = %format!("{}/{}", key.namespace, key.name), "patched {}", key.kind)
                }
                Err(e) => return Ok(Outcome::Refused(api_error("patch", &e))),
            }
        }
        Effect::DeleteExecution { key, uid } | Effect::DeleteChild { key, uid, .. } => {
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
                    ctx.caches.deleted(key);
                    tracing::info!(execution = %format!("{}/{}", key.namespace, key.name), "deleted {}", key.kind)
                }
                Err(e) => return Ok(Outcome::Refused(api_error("delete", &e))),
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
                reason: &ev.reason,
                note: &ev.message,
                action: &ev.action,
            };
            ctx.metrics.api("create", "Event");
            if let Err(e) = ctx.recorder.publish(&event, &reference).await {
                // Events are best effort: a failure never holds the lifecycle back
                tracing::warn!(error = %e, reason = %ev.reason, "cannot record an Event");
                ctx.metrics.error("EventFailed");
            }
        }
        // accepted by every audit target before the status write that makes the transition
        Effect::Audit { record } => ctx
            .audit
            .deliver(record.clone())
            .await
            .map_err(|e| Error::Transient(e.to_string()))?,
        Effect::Metric(m) => ctx.metrics.record(m),
    }
    Ok(Outcome::Done)
}

fn text_at(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Applies a status patch the API server did not keep to this reconcile's copy of the resource,
/// so that the next decision does not ask for it again (the copy is dropped with the reconcile).
fn pretend_written(resource: &mut Value, patch: &Value) {
    if let Some(obj) = resource.as_object_mut() {
        let status = obj
            .entry("status")
            .or_insert_with(|| Value::Object(Default::default()));
        engine::status::apply_merge_patch(status, patch);
    }
}

/// Reports, once, a status write whose fields the API server did not keep.
async fn report_not_persisted(ctx: &Ctx, resource: &Value, label: &str, lost: &[String]) {
    let fields = lost.join(", ");
    tracing::warn!(resource = %label, fields = %fields, "the API server did not keep these status fields as written (pruned or changed by the CRD's schema); the same write is not repeated until the resource changes");
    ctx.metrics.error(STATUS_NOT_PERSISTED);
    let note = engine::status::truncate(
        &format!(
            "The API server did not keep {fields} as written: the CRD's schema prunes or changes them. Declare them in the CRD or change the rules (lifecycle check --crd)."
        ),
        1024,
    );
    let event = Event {
        type_: EventType::Warning,
        reason: STATUS_NOT_PERSISTED,
        note: &note,
        action: "PatchStatus",
    };
    ctx.metrics.api("create", "Event");
    if let Err(e) = ctx
        .recorder
        .publish(&event, &object_reference(resource, &ctx.resource_ar))
        .await
    {
        tracing::warn!(error = %e, reason = STATUS_NOT_PERSISTED, "cannot record an Event");
        ctx.metrics.error("EventFailed");
    }
}

/// Re-reads the resource after a write lost a conflict.
async fn refresh(w: &mut Cluster<'_>, kind: &str) -> Result<Outcome<Error>, Error> {
    w.ctx.metrics.api("get", kind);
    match w.api.get_opt(&w.name).await {
        Ok(Some(o)) => {
            w.resource = Some(to_value(&o));
            Ok(Outcome::Stale)
        }
        Ok(None) => {
            w.resource = None;
            Ok(Outcome::Gone)
        }
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
