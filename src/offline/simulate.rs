//! An in-memory world with a virtual clock, for `lifecycle simulate` and rule-file tests.
//!
//! The world holds the governed resource and every other object by identity. Reconciling runs
//! `decide` and carries out its effects the way the controller would (creating, deleting,
//! patching status, recording Events, audit records and metrics) until nothing is left to do.
//! How the execution object progresses on its own (starting, finishing) comes from the rules'
//! `simulation` block, so the world knows nothing about any particular kind.

use crate::engine::drive::{self, DriveError, Outcome};
use crate::engine::{
    self, ActionError, Decision, Effect, LookupRequest, ObjectKey, Observation,
    status::apply_merge_patch,
};
use crate::rules::{Rules, SimulatedChangeRules};
use minijinja::{Value as JValue, context};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;

/// One line of a timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Virtual time, seconds since the start.
    pub at: f64,
    /// What happened.
    pub what: String,
    /// Details.
    pub detail: String,
    /// Structured data (the effect or change), for JSON output.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

/// The in-memory world.
pub struct World<'r> {
    rules: &'r Rules,
    /// Virtual time (seconds since the epoch).
    pub now: f64,
    start: f64,
    /// The governed resource (`None` once deleted).
    pub resource: Option<Value>,
    /// Every other object, by identity.
    pub objects: BTreeMap<ObjectKey, Value>,
    /// Errors the next create / delete of the execution object fails with.
    pub fail_next: BTreeMap<String, ActionError>,
    /// What happened so far.
    pub timeline: Vec<Entry>,
    /// Every effect carried out so far, with the time.
    pub effects: Vec<(f64, Effect)>,
    /// Every decision taken so far.
    pub decisions: Vec<(f64, Decision)>,
    next_uid: u64,
    resource_version: u64,
    /// The execution object's identity while the resource was last there, so that it can
    /// still be found once the resource is gone (an object the deletion kept).
    last_execution_key: Option<ObjectKey>,
    /// Likewise for the other children.
    last_child_keys: Vec<Option<ObjectKey>>,
    /// Whether the execution and related objects are observed as the controller's caches keep
    /// them (only what the rules read: [`crate::rules::WatchedKind::fields`]) instead of whole.
    pub projected: bool,
}

impl<'r> World<'r> {
    /// An object as a decision observes it: whole, or as the controller's cache of its kind
    /// keeps it.
    fn observed(&self, key: &ObjectKey) -> Option<Value> {
        let mut o = self.objects.get(key).cloned()?;
        if self.projected
            && let Some(w) = self
                .rules
                .watched_kinds()
                .into_iter()
                .find(|w| w.api_version == key.api_version && w.kind == key.kind)
        {
            w.fields.with_runtime_fields().project(&mut o);
        }
        Some(o)
    }

    /// A world holding `resource` at time `now`.
    pub fn new(rules: &'r Rules, resource: Value, now: f64) -> World<'r> {
        let mut w = World {
            rules,
            now,
            start: now,
            resource: None,
            objects: BTreeMap::new(),
            fail_next: BTreeMap::new(),
            timeline: Vec::new(),
            effects: Vec::new(),
            decisions: Vec::new(),
            next_uid: 1,
            resource_version: 1,
            last_execution_key: None,
            last_child_keys: Vec::new(),
            projected: false,
        };
        let resource = w.stamp(resource);
        w.resource = Some(resource);
        w
    }

    /// Gives an object a uid, resourceVersion and creationTimestamp, as the API server would.
    fn stamp(&mut self, mut obj: Value) -> Value {
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            if !meta.contains_key("uid") {
                meta.insert(
                    "uid".into(),
                    Value::String(format!("00000000-0000-4000-8000-{:012}", self.next_uid)),
                );
                self.next_uid += 1;
            }
            meta.entry("creationTimestamp")
                .or_insert_with(|| Value::String(crate::time::format_secs(self.now)));
            meta.entry("generation").or_insert(Value::from(1));
            self.resource_version += 1;
            meta.insert(
                "resourceVersion".into(),
                Value::String(self.resource_version.to_string()),
            );
        }
        obj
    }

    fn note(&mut self, what: &str, detail: String, data: Value) {
        self.timeline.push(Entry {
            at: self.now - self.start,
            what: what.to_string(),
            detail,
            data,
        });
    }

    /// Adds or replaces an object.
    pub fn put(&mut self, obj: Value) -> Result<(), String> {
        let key =
            ObjectKey::of(&obj).ok_or("an object needs apiVersion, kind and metadata.name")?;
        let obj = self.stamp(obj);
        self.objects.insert(key, obj);
        Ok(())
    }

    /// Applies a merge patch to the governed resource (someone edited it); its
    /// `resourceVersion` moves, and its `generation` when anything but `metadata` and `status`
    /// changed, as the API server does.
    pub fn patch_resource(&mut self, patch: &Value) -> Result<(), String> {
        let Some(mut resource) = self.resource.take() else {
            return Err("the resource is gone".into());
        };
        let before = resource.clone();
        apply_merge_patch(&mut resource, patch);
        let spec_changed = before.as_object().is_some_and(|b| {
            resource.as_object().is_some_and(|r| {
                b.iter()
                    .chain(r.iter())
                    .filter(|(k, _)| !["metadata", "status"].contains(&k.as_str()))
                    .any(|(k, _)| b.get(k) != r.get(k))
            })
        });
        if spec_changed
            && let Some(meta) = resource.get_mut("metadata").and_then(Value::as_object_mut)
        {
            let generation = meta.get("generation").and_then(Value::as_i64).unwrap_or(1);
            meta.insert("generation".into(), Value::from(generation + 1));
        }
        let resource = self.stamp(resource);
        self.note("world", "resource changed".into(), patch.clone());
        self.resource = Some(resource);
        Ok(())
    }

    /// The execution object the rules give the resource, if it exists.
    pub fn execution(&self) -> Option<&Value> {
        let key = self.execution_key()?;
        self.objects.get(&key)
    }

    /// The identity of the resource's execution object.
    pub fn execution_key(&self) -> Option<ObjectKey> {
        match &self.resource {
            Some(r) => engine::execution_key(self.rules, r, self.now).ok(),
            None => self.last_execution_key.clone(),
        }
    }

    /// The identity of the child of this name (the lock's name, or `execution`, is the
    /// execution object); an unknown name is an error naming the children.
    pub fn child_key(&self, name: &str) -> Result<ObjectKey, String> {
        let rules = self.rules;
        if name == rules.lock || name == "execution" {
            return self
                .execution_key()
                .ok_or_else(|| "the resource has no execution object".to_string());
        }
        let Some(i) = rules.children.iter().position(|c| c.name == name) else {
            return Err(format!(
                "unknown child `{name}` (children: {})",
                rules.child_names().join(", ")
            ));
        };
        let keys = match &self.resource {
            Some(r) => engine::child_keys(rules, r, self.now),
            None => self.last_child_keys.clone(),
        };
        keys.get(i)
            .cloned()
            .flatten()
            .ok_or_else(|| format!("the name of child `{name}` does not render"))
    }

    /// Removes an object (as if someone else deleted it); false when there is none.
    pub fn delete_object(&mut self, k: &ObjectKey) -> bool {
        let removed = self.objects.remove(k).is_some();
        if removed {
            self.note(
                "world",
                format!("{} {}/{} deleted externally", k.kind, k.namespace, k.name),
                Value::Null,
            );
        }
        removed
    }

    /// The resource's status (null when it has none or is gone).
    pub fn status(&self) -> Value {
        self.resource
            .as_ref()
            .and_then(|r| r.get("status"))
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Moves the clock forward.
    pub fn advance(&mut self, secs: f64) {
        self.now += secs;
    }

    /// Marks the resource deleted (it goes away when its finalizers are gone).
    pub fn delete_resource(&mut self) {
        let now = crate::time::format_secs(self.now);
        let gone = match &mut self.resource {
            Some(r) => {
                let finalizers = r
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty());
                if let Some(meta) = r.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.entry("deletionTimestamp")
                        .or_insert(Value::String(now));
                }
                !finalizers
            }
            None => false,
        };
        self.note("delete", "resource deletion requested".into(), Value::Null);
        if gone {
            self.last_execution_key = self.execution_key();
            self.resource = None;
            self.note("gone", "resource removed".into(), Value::Null);
        }
    }

    /// Applies a simulated change (`started` or an outcome) to the execution object.
    pub fn apply_change(
        &mut self,
        change: &SimulatedChangeRules,
        outcome: &Value,
    ) -> Result<(), String> {
        let Some(key) = self.execution_key() else {
            return Err("the resource has no execution object".into());
        };
        let Some(execution) = self.objects.get(&key).cloned() else {
            return Err(format!(
                "{} {}/{} does not exist",
                key.kind, key.namespace, key.name
            ));
        };
        let ctx = context! {
            execution => JValue::from_serialize(&execution),
            object => JValue::from_serialize(&key),
            resource => JValue::from_serialize(&self.resource),
            settings => JValue::from_serialize(&self.rules.settings),
            now => JValue::from(crate::time::format_secs(self.now)),
            outcome => JValue::from_serialize(outcome),
        };
        let t = &self.rules.templates;
        let mut created = Vec::new();
        for tree in &change.objects {
            let mut obj = engine::render_tree(t, tree, &ctx).map_err(|e| e.message)?;
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.entry("namespace")
                    .or_insert(Value::String(key.namespace.clone()));
            }
            created.push(obj);
        }
        let mut updated = execution;
        if let Some(tree) = &change.status {
            let patch = engine::render_tree(t, tree, &ctx).map_err(|e| e.message)?;
            let status = updated
                .as_object_mut()
                .map(|m| m.entry("status").or_insert(Value::Object(Map::new())));
            if let Some(status) = status {
                apply_merge_patch(status, &patch);
            }
        }
        for obj in created {
            let k = ObjectKey::of(&obj)
                .ok_or("a simulated object needs apiVersion, kind and metadata.name")?;
            self.note(
                "appears",
                format!("{} {}/{}", k.kind, k.namespace, k.name),
                Value::Null,
            );
            self.put(obj)?;
        }
        let updated = self.stamp(updated);
        self.objects.insert(key, updated);
        Ok(())
    }

    /// Removes the objects whose deletion only waited for their finalizers, now gone.
    pub fn remove_finalized(&mut self) {
        let done: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                o.pointer("/metadata/deletionTimestamp").is_some()
                    && o.pointer("/metadata/finalizers")
                        .and_then(Value::as_array)
                        .is_none_or(|a| a.is_empty())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in done {
            self.objects.remove(&k);
            self.note(
                "world",
                format!(
                    "{} {}/{} is gone (finalizers removed)",
                    k.kind, k.namespace, k.name
                ),
                Value::Null,
            );
        }
    }

    /// Removes the execution object (as if someone else deleted it).
    pub fn delete_execution(&mut self) -> bool {
        match self.execution_key() {
            Some(k) => {
                let removed = self.objects.remove(&k).is_some();
                if removed {
                    self.note(
                        "world",
                        format!("{} {}/{} deleted externally", k.kind, k.namespace, k.name),
                        Value::Null,
                    );
                }
                removed
            }
            None => false,
        }
    }

    /// Reconciles until nothing is left to do, with the engine's one loop (the controller's
    /// too); returns when to look again (seconds). A transient failure is noted and retried
    /// after [`BACKOFF_SECS`], as the controller's first backoff step; rules that do not
    /// settle are an error.
    pub fn reconcile(&mut self) -> Result<Option<f64>, String> {
        let rules = self.rules;
        let result = drive::run_ready(drive::drive(rules, self))
            .ok_or("the simulated world waited, which it never does")?;
        match result {
            Ok(requeue) => Ok(requeue),
            Err(DriveError::Backoff(never)) => match never {},
            Err(e @ DriveError::Refused { .. }) => {
                self.note("retry", format!("{e}: retried later"), Value::Null);
                Ok(Some(BACKOFF_SECS))
            }
            Err(DriveError::Unsettled(u)) => {
                self.note("error", u.message.clone(), Value::Null);
                Err(u.message)
            }
        }
    }

    fn phase_of(&self, resource: &Value) -> String {
        resource
            .pointer(&format!("/status/{}", self.rules.resource.status.phase))
            .and_then(Value::as_str)
            .unwrap_or(&self.rules.phases[self.rules.initial].name)
            .to_string()
    }

    /// Creates an object, as the API server would (AlreadyExists when the name is taken).
    fn create(&mut self, object: &Value, data: Value, held: &str) -> Outcome<Infallible> {
        let Some(key) = ObjectKey::of(object) else {
            return Outcome::Refused(ActionError {
                child: None,
                action: "create".into(),
                code: 422,
                reason: "Invalid".into(),
                message: "object has no name".into(),
            });
        };
        if let Some(err) = self.fail_next.remove("create") {
            self.note(
                "create",
                format!("failed: {} {} {}", err.code, err.reason, err.message),
                data,
            );
            return Outcome::Refused(err);
        }
        if self.objects.contains_key(&key) {
            self.note(
                "create",
                format!("{} {}/{} already exists", key.kind, key.namespace, key.name),
                data,
            );
            return Outcome::Refused(ActionError {
                child: None,
                action: "create".into(),
                code: 409,
                reason: "AlreadyExists".into(),
                message: format!("{} \"{}\" already exists", key.kind, key.name),
            });
        }
        self.note(
            "create",
            format!("{} {}/{} ({held})", key.kind, key.namespace, key.name),
            data,
        );
        let obj = self.stamp(object.clone());
        self.objects.insert(key, obj);
        Outcome::Done
    }

    /// Patches an object (NotFound counts as done).
    fn patch(&mut self, key: &ObjectKey, patch: &Value, data: Value) -> Outcome<Infallible> {
        if let Some(err) = self.fail_next.remove("patch") {
            self.note(
                "patch",
                format!("failed: {} {}", err.code, err.message),
                data,
            );
            return Outcome::Refused(err);
        }
        let what = format!("{} {}/{}", key.kind, key.namespace, key.name);
        match self.objects.get(key).cloned() {
            Some(mut obj) => {
                crate::engine::status::apply_merge_patch(&mut obj, patch);
                let obj = self.stamp(obj);
                self.objects.insert(key.clone(), obj);
                self.note("patch", format!("{what} {patch}"), data);
            }
            None => self.note("patch", format!("{what} was already gone"), data),
        }
        Outcome::Done
    }

    /// Deletes an object if its uid matches; one with finalizers is only marked deleted.
    fn delete(
        &mut self,
        key: &ObjectKey,
        uid: Option<&str>,
        data: Value,
        released: &str,
    ) -> Outcome<Infallible> {
        if let Some(err) = self.fail_next.remove("delete") {
            self.note(
                "delete",
                format!("failed: {} {}", err.code, err.message),
                data,
            );
            return Outcome::Refused(err);
        }
        let matches = self.objects.get(key).is_some_and(|o| {
            uid.is_none() || o.pointer("/metadata/uid").and_then(Value::as_str) == uid
        });
        let held = self.objects.get(key).is_some_and(|o| {
            o.pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        });
        if matches && held {
            // as the API server does: an object with finalizers is only marked deleted
            let now = crate::time::format_secs(self.now);
            if let Some(meta) = self
                .objects
                .get_mut(key)
                .and_then(|o| o.get_mut("metadata"))
                .and_then(Value::as_object_mut)
            {
                meta.entry("deletionTimestamp")
                    .or_insert(Value::String(now));
            }
            self.note(
                "delete",
                format!(
                    "{} {}/{} is terminating (it has finalizers)",
                    key.kind, key.namespace, key.name
                ),
                data,
            );
        } else if matches {
            self.objects.remove(key);
            self.note(
                "delete",
                format!("{} {}/{} ({released})", key.kind, key.namespace, key.name),
                data,
            );
        } else {
            self.note(
                "delete",
                format!(
                    "{} {}/{} was already gone",
                    key.kind, key.namespace, key.name
                ),
                data,
            );
        }
        Outcome::Done
    }

    /// Carries out one effect the way the controller does.
    fn apply(&mut self, effect: &Effect) -> Outcome<Infallible> {
        self.effects.push((self.now, effect.clone()));
        let data = serde_json::to_value(effect).unwrap_or(Value::Null);
        match effect {
            Effect::AddFinalizer { finalizer } => {
                if let Some(meta) = self
                    .resource
                    .as_mut()
                    .and_then(|r| r.get_mut("metadata"))
                    .and_then(Value::as_object_mut)
                {
                    let list = meta.entry("finalizers").or_insert(Value::Array(Vec::new()));
                    if let Value::Array(a) = list {
                        a.push(Value::String(finalizer.clone()));
                    }
                }
                self.note("finalizer", format!("added {finalizer}"), data);
            }
            Effect::RemoveFinalizer { finalizer } => {
                let mut gone = false;
                if let Some(r) = self.resource.as_mut() {
                    if let Some(Value::Array(a)) = r.pointer_mut("/metadata/finalizers") {
                        a.retain(|f| f.as_str() != Some(finalizer.as_str()));
                    }
                    gone = r.pointer("/metadata/deletionTimestamp").is_some()
                        && r.pointer("/metadata/finalizers")
                            .and_then(Value::as_array)
                            .is_none_or(|a| a.is_empty());
                }
                self.note("finalizer", format!("removed {finalizer}"), data);
                if gone {
                    self.last_execution_key = self.execution_key();
                    if let Some(r) = &self.resource {
                        self.last_child_keys = engine::child_keys(self.rules, r, self.now);
                    }
                    self.resource = None;
                    self.note("gone", "resource removed".into(), Value::Null);
                    return Outcome::Gone;
                }
            }
            Effect::CreateExecution { object } => {
                return self.create(object, data, "lock held");
            }
            Effect::CreateChild { child, object } => {
                return self.create(object, data, &format!("child {child}"));
            }
            Effect::PatchExecution { key, patch } | Effect::PatchChild { key, patch, .. } => {
                return self.patch(key, patch, data);
            }
            Effect::DeleteExecution { key, uid } => {
                return self.delete(key, uid.as_deref(), data, "lock released");
            }
            Effect::DeleteChild { child, key, uid } => {
                return self.delete(key, uid.as_deref(), data, &format!("child {child}"));
            }
            Effect::PatchStatus { patch } => {
                let fields = changed_fields(patch, "");
                if let Some(r) = self.resource.as_mut() {
                    let status = r
                        .as_object_mut()
                        .map(|m| m.entry("status").or_insert(Value::Object(Map::new())));
                    if let Some(status) = status {
                        apply_merge_patch(status, patch);
                    }
                }
                self.resource_version += 1;
                let rv = self.resource_version.to_string();
                if let Some(meta) = self
                    .resource
                    .as_mut()
                    .and_then(|r| r.get_mut("metadata"))
                    .and_then(Value::as_object_mut)
                {
                    meta.insert("resourceVersion".into(), Value::String(rv));
                }
                self.note("status", fields.join(", "), data);
            }
            Effect::Event(e) => self.note(
                "event",
                format!("{} {}: {}", e.kind, e.reason, e.message),
                data,
            ),
            Effect::Audit { record } => {
                let kind = record
                    .get("event_type")
                    .or_else(|| record.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("record");
                let id = record
                    .get(&self.rules.audit.id_field)
                    .and_then(Value::as_str)
                    .unwrap_or("");
                self.note("audit", format!("{kind} (id {id})"), data);
            }
            Effect::Metric(m) => {
                let labels: Vec<String> =
                    m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                self.note(
                    "metric",
                    format!("{}{{{}}} {}", m.name, labels.join(","), m.value),
                    data,
                );
            }
        }
        Outcome::Done
    }
}

/// The simulated cluster as the engine's world: reads never fail and nothing waits.
impl engine::drive::World for World<'_> {
    type Error = Infallible;

    fn now(&self) -> f64 {
        self.now
    }

    fn resource(&self) -> Option<&Value> {
        self.resource.as_ref()
    }

    async fn execution(&mut self, key: &ObjectKey) -> Result<Option<Value>, Infallible> {
        Ok(self.observed(key))
    }

    async fn related(&mut self, key: &ObjectKey) -> Result<Option<Value>, Infallible> {
        Ok(self.observed(key))
    }

    /// Every object of the world that the request asks for, the governed resource included.
    async fn lookup(&mut self, request: &LookupRequest) -> Result<Vec<Value>, Infallible> {
        Ok(self
            .resource
            .iter()
            .chain(self.objects.values())
            .filter(|o| engine::lookup_matches(request, o))
            .cloned()
            .collect())
    }

    async fn carry_out(&mut self, effect: &Effect) -> Outcome<Infallible> {
        self.apply(effect)
    }

    fn decided(&mut self, observation: &Observation, d: &Decision) {
        self.decisions.push((self.now, d.clone()));
        if let Some(e) = &d.error {
            self.note("error", e.to_string(), Value::Null);
        }
        if let Some(t) = &d.transition {
            let from = self.phase_of(&observation.resource);
            self.note(
                "transition",
                format!("{t}: {from} → {}", d.phase),
                Value::Null,
            );
        }
    }
}

/// Wait before retrying after a transient failure, as the controller's first backoff step.
pub const BACKOFF_SECS: f64 = 1.0;

/// Dotted names of the fields a merge patch sets or removes, for readable timelines.
fn changed_fields(patch: &Value, prefix: &str) -> Vec<String> {
    match patch {
        Value::Object(m) if !m.is_empty() => m
            .iter()
            .flat_map(|(k, v)| {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if v.is_object() && k != "conditions" {
                    changed_fields(v, &name)
                } else if v.is_null() {
                    vec![format!("-{name}")]
                } else if let Some(s) = v.as_str() {
                    vec![format!("{name}={}", short(s))]
                } else if v.is_array() {
                    vec![name]
                } else {
                    vec![format!("{name}={v}")]
                }
            })
            .collect(),
        _ => vec![prefix.to_string()],
    }
}

fn short(s: &str) -> String {
    let first = s.lines().next().unwrap_or("");
    if first.chars().count() > 60 || s.contains('\n') {
        format!("{}…", first.chars().take(60).collect::<String>())
    } else {
        first.to_string()
    }
}

/// A scripted run: the resource is created, the execution object starts, then ends as the
/// outcome says, and the clock runs until nothing is left to do. Each new execution object (a
/// retry's next attempt) starts and ends the same way, with the next outcome of `then`.
pub struct Script {
    /// Outcome name (`succeeded`, `failed`, …, or `deleted`).
    pub outcome: String,
    /// Outcome reason and message, for the outcome's templates.
    pub reason: String,
    /// Message.
    pub message: String,
    /// Outcomes of the later attempts' objects, `NAME[:REASON[:MESSAGE]]` each; the last one
    /// (or the first outcome, when empty) repeats.
    pub then: Vec<String>,
    /// Seconds from creation of the execution object to the outcome.
    pub after: f64,
    /// Stop after this much virtual time.
    pub limit: f64,
    /// Other objects that exist from the start (for lookups).
    pub objects: Vec<Value>,
}

/// Runs a script to its end and returns the world.
pub fn run<'r>(
    rules: &'r Rules,
    resource: Value,
    start: f64,
    script: &Script,
) -> Result<World<'r>, String> {
    let mut world = World::new(rules, resource, start);
    for o in &script.objects {
        world.put(o.clone())?;
    }
    world.note("resource", "created".into(), Value::Null);
    let first = format!("{}:{}:{}", script.outcome, script.reason, script.message);
    let mut outcomes = vec![scripted(rules, &first)?];
    for o in &script.then {
        outcomes.push(scripted(rules, o)?);
    }
    // the object of the current attempt, when it appeared, and how many came before it
    let mut current: Option<(ObjectKey, f64)> = None;
    let mut attempt = 0usize;
    let mut started = false;
    let mut ended = false;
    loop {
        let requeue = world.reconcile()?;
        if let Some(key) = world.execution_key()
            && world.objects.contains_key(&key)
            && current.as_ref().is_none_or(|(k, _)| k != &key)
        {
            if current.is_some() {
                attempt += 1;
            }
            current = Some((key, world.now));
            started = false;
            ended = false;
        }
        let (outcome, outcome_change) = &outcomes[attempt.min(outcomes.len() - 1)];
        // what happens next in the world, and when
        let mut next: Vec<(f64, u8)> = Vec::new();
        if let Some((_, c)) = &current {
            if !started && world.execution().is_some() {
                next.push((c + 1.0_f64.min(script.after), 0));
            }
            if !ended {
                next.push((c + script.after, 1));
            }
        }
        if let Some(r) = requeue {
            next.push((world.now + r.max(0.0), 2));
        }
        next.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let Some(&(at, what)) = next.first() else {
            break;
        };
        if at - start > script.limit {
            world.note(
                "stop",
                format!(
                    "time limit of {} reached",
                    crate::time::go_duration(script.limit)
                ),
                Value::Null,
            );
            break;
        }
        world.now = at.max(world.now);
        match what {
            0 => {
                started = true;
                if world.execution().is_some()
                    && let Some(change) = rules.simulation.as_ref().and_then(|s| s.started.as_ref())
                {
                    world.note("world", "execution object started".into(), Value::Null);
                    world.apply_change(change, outcome)?;
                }
            }
            1 => {
                ended = true;
                started = true;
                if world.execution().is_some() {
                    match outcome_change {
                        None => {
                            world.delete_execution();
                        }
                        Some(change) => {
                            world.note(
                                "world",
                                format!(
                                    "execution object outcome: {}",
                                    outcome["name"].as_str().unwrap_or("")
                                ),
                                Value::Null,
                            );
                            world.apply_change(change, outcome)?;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(world)
}

/// A scripted outcome, `NAME[:REASON[:MESSAGE]]`: its `outcome` value and its change (none for
/// `deleted`).
fn scripted(rules: &Rules, text: &str) -> Result<(Value, Option<SimulatedChangeRules>), String> {
    let mut parts = text.splitn(3, ':');
    let name = parts.next().unwrap_or("succeeded");
    let value = json!({"name": name, "reason": parts.next().unwrap_or(""), "message": parts.next().unwrap_or("")});
    if name == "deleted" {
        return Ok((value, None));
    }
    let sim = rules.simulation.as_ref().ok_or(
        "the rules have no `simulation` block describing how the execution object progresses",
    )?;
    let change = sim
        .outcomes
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, c)| c.clone())
        .ok_or_else(|| {
            format!(
                "unknown outcome `{name}` (the rules' simulation defines: {}, and `deleted` is built in)",
                sim.outcomes.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
            )
        })?;
    Ok((value, Some(change)))
}

/// Formats a timeline for people.
pub fn format_timeline(entries: &[Entry]) -> String {
    let mut out = String::new();
    for e in entries {
        let at = format!("+{}", crate::time::go_duration(e.at));
        out.push_str(&format!("{at:>9}  {:<10} {}\n", e.what, e.detail));
    }
    out
}
