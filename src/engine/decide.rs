//! The decision procedure.

use super::status::{self, Condition, truncate};
use super::{
    ActionError, DecideError, Decision, Effect, EventRecord, MetricRecord, ObjectKey, Observation,
    RelatedRequest,
};
use crate::expr::{Env, Pred, PredError, Root};
use crate::render::{RenderError, Templates, Tmpl};
use crate::rules::model::{EventType, ExecutionAction, MetricKind};
use crate::rules::{ActionRules, Deps, Rules, TmplTree, ValueKind};
use minijinja::{Value as JValue, context};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::cell::Cell;

/// Why evaluation stopped early.
enum Stop {
    /// Related objects must be read first.
    Needs(usize),
    /// The rules failed.
    Fail(DecideError),
}

impl From<DecideError> for Stop {
    fn from(e: DecideError) -> Self {
        Stop::Fail(e)
    }
}

fn template_error(e: RenderError) -> DecideError {
    DecideError {
        category: "TemplateError",
        message: e.message,
    }
}

fn pred_error(e: PredError) -> DecideError {
    DecideError {
        category: "TemplateError",
        message: e.0,
    }
}

/// The identity of the execution object the rules give this resource.
pub fn execution_key(rules: &Rules, resource: &Value, now: f64) -> Result<ObjectKey, DecideError> {
    let obs = Observation {
        resource: resource.clone(),
        ..Observation::default()
    };
    let d = Decider::new(rules, &obs, now);
    d.object_key().map_err(|e| match e {
        Stop::Fail(e) => e,
        Stop::Needs(_) => DecideError {
            category: "TemplateError",
            message: "the execution object's name cannot depend on related objects".into(),
        },
    })
}

/// The objects related list `index` refers to, given the execution object.
pub fn related_requests(rules: &Rules, index: usize, execution: Option<&Value>) -> RelatedRequest {
    let Some(r) = rules.related.get(index) else {
        return RelatedRequest {
            name: String::new(),
            entries: Vec::new(),
        };
    };
    let mut entries = Vec::new();
    if let Some(ex) = execution {
        let ex_ns = ex
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for entry in r.from.select(ex) {
            let wanted = match &r.filter {
                Some(f) => f.eval(&NoEnv, Some(entry)).unwrap_or(false),
                None => true,
            };
            let name = r.name_path.first(entry).and_then(Value::as_str);
            let namespace = match &r.namespace_path {
                Some(p) => p.first(entry).and_then(Value::as_str).map(str::to_string),
                None => Some(ex_ns.clone()),
            };
            let key = match (wanted, name, namespace) {
                (true, Some(name), Some(namespace)) if !name.is_empty() => Some(ObjectKey {
                    api_version: r.api_version.clone(),
                    kind: r.kind.clone(),
                    namespace,
                    name: name.to_string(),
                }),
                _ => None,
            };
            entries.push((entry.clone(), key));
        }
    }
    RelatedRequest {
        name: r.name.clone(),
        entries,
    }
}

/// An environment for filters that may only read their item.
struct NoEnv;

impl Env for NoEnv {
    fn root(&self, _: Root) -> Option<&Value> {
        None
    }
    fn truthy(&self, _: usize, _: Option<&Value>) -> Result<bool, PredError> {
        Err(PredError("expressions are not available here".into()))
    }
    fn duration_secs(&self, _: usize, _: Option<&Value>) -> Result<f64, PredError> {
        Err(PredError("durations are not available here".into()))
    }
    fn now_secs(&self) -> f64 {
        0.0
    }
    fn wake_at(&self, _: f64) {}
}

/// Decides what to do for one resource. Pure, total and deterministic.
pub fn decide(rules: &Rules, obs: &Observation, now: f64) -> Decision {
    let mut d = Decider::new(rules, obs, now);
    match d.run() {
        Ok(decision) => decision,
        Err(Stop::Needs(index)) => {
            let mut needs = vec![related_requests(rules, index, obs.execution.as_ref())];
            // ask for every related list the observation lacks at once
            for (i, r) in rules.related.iter().enumerate() {
                if i != index && !obs.related.contains_key(&r.name) {
                    needs.push(related_requests(rules, i, obs.execution.as_ref()));
                }
            }
            Decision {
                phase: d.phase_name.clone(),
                transition: None,
                effects: Vec::new(),
                requeue_after: None,
                needs,
                error: None,
            }
        }
        Err(Stop::Fail(e)) => d.failure(e),
    }
}

struct Decider<'a> {
    rules: &'a Rules,
    obs: &'a Observation,
    now: f64,
    now_text: String,
    phase_name: String,
    owned: Value,
    error: Value,
    validation: Value,
    values: Value,
    computed: Vec<bool>,
    related: Value,
    null: Value,
    phase_value: Value,
    now_value: Value,
    object: Value,
    wake: Cell<Option<f64>>,
    base: JValue,
    jvalues: JValue,
    jvalue_map: std::collections::BTreeMap<String, JValue>,
    jobject: JValue,
    jvalidation: JValue,
    jrelated: JValue,
}

impl<'a> Decider<'a> {
    fn new(rules: &'a Rules, obs: &'a Observation, now: f64) -> Decider<'a> {
        let status = obs.resource.get("status");
        let phase_name = status
            .and_then(|s| s.get(&rules.resource.status.phase))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| rules.phases[rules.initial].name.clone());
        let owned = Value::Bool(
            obs.execution
                .as_ref()
                .is_some_and(|ex| is_owned(rules, &obs.resource, ex)),
        );
        let error = obs
            .error
            .as_ref()
            .map(|e: &ActionError| serde_json::to_value(e).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        let now_text = crate::time::format_secs(now);
        let base = context! {
            resource => JValue::from_serialize(&obs.resource),
            execution => JValue::from_serialize(&obs.execution),
            owned => JValue::from_serialize(&owned),
            error => JValue::from_serialize(&error),
            settings => JValue::from_serialize(&rules.settings),
            phase => JValue::from(phase_name.as_str()),
            now => JValue::from(now_text.as_str()),
        };
        Decider {
            rules,
            obs,
            now,
            phase_value: Value::String(phase_name.clone()),
            now_value: Value::String(now_text.clone()),
            now_text,
            phase_name,
            owned,
            error,
            validation: Value::Null,
            values: Value::Object(Map::new()),
            computed: vec![false; rules.values.len()],
            related: Value::Object(obs.related.clone()),
            null: Value::Null,
            object: Value::Null,
            wake: Cell::new(None),
            base,
            jvalues: JValue::from_serialize(Map::new()),
            jvalue_map: std::collections::BTreeMap::new(),
            jobject: JValue::from(()),
            jvalidation: JValue::from(()),
            jrelated: JValue::from_serialize(&obs.related),
        }
    }

    fn ctx(&self, extra: Option<(&JValue, &JValue)>, item: Option<&Value>) -> JValue {
        let (vars, transition) = match extra {
            Some((v, t)) => (v.clone(), t.clone()),
            None => (JValue::UNDEFINED, JValue::UNDEFINED),
        };
        let item = item
            .map(JValue::from_serialize)
            .unwrap_or(JValue::UNDEFINED);
        context! {
            values => self.jvalues.clone(),
            validation => self.jvalidation.clone(),
            related => self.jrelated.clone(),
            object => self.jobject.clone(),
            vars => vars,
            transition => transition,
            item => item,
            ..self.base.clone()
        }
    }

    // ---- values ----

    fn ensure(&mut self, deps: &Deps) -> Result<(), Stop> {
        for &r in &deps.related {
            if let Some(rel) = self.rules.related.get(r)
                && !self.obs.related.contains_key(&rel.name)
            {
                return Err(Stop::Needs(r));
            }
        }
        for &v in &deps.values {
            self.compute(v, 0)?;
        }
        Ok(())
    }

    fn compute(&mut self, index: usize, depth: usize) -> Result<(), Stop> {
        if self.computed.get(index).copied().unwrap_or(true) {
            return Ok(());
        }
        if depth > self.rules.values.len() {
            return Err(Stop::Fail(DecideError {
                category: "TemplateError",
                message: "values depend on each other in a cycle".into(),
            }));
        }
        let rule = &self.rules.values[index];
        for &r in &rule.deps.related {
            if let Some(rel) = self.rules.related.get(r)
                && !self.obs.related.contains_key(&rel.name)
            {
                return Err(Stop::Needs(r));
            }
        }
        for &v in &rule.deps.values {
            self.compute(v, depth + 1)?;
        }
        let ctx_err = |e: DecideError| {
            Stop::Fail(DecideError {
                category: e.category,
                message: format!("value `{}`: {}", rule.name, e.message),
            })
        };
        let result = match &rule.kind {
            ValueKind::Path(p) => self
                .first(p)
                .cloned()
                .filter(|v| !v.is_null())
                .unwrap_or_else(|| rule.default.clone()),
            ValueKind::List(p, f) => {
                let items = self.filtered(p, f.as_ref()).map_err(ctx_err)?;
                Value::Array(items.into_iter().map(|(_, v)| v).collect())
            }
            ValueKind::Count(p, f) => {
                Value::from(self.filtered(p, f.as_ref()).map_err(ctx_err)?.len())
            }
            ValueKind::Find(p, f) => match self
                .filtered(p, f.as_ref())
                .map_err(ctx_err)?
                .into_iter()
                .next()
            {
                Some((i, v)) => json!({"index": i, "value": v}),
                None => rule.default.clone(),
            },
            ValueKind::Expr(id) | ValueKind::Template(id) => {
                let ctx = self.ctx(None, None);
                let v = self
                    .rules
                    .templates
                    .eval(*id, &ctx)
                    .map_err(|e| ctx_err(template_error(e)))?;
                if v.is_null() { rule.default.clone() } else { v }
            }
            ValueKind::Table(t) => {
                let ctx = self.ctx(None, None);
                let mut inputs = Vec::with_capacity(t.inputs.len());
                for (_, tmpl) in &t.inputs {
                    let text = self
                        .rules
                        .templates
                        .text(tmpl, &ctx)
                        .map_err(|e| ctx_err(template_error(e)))?;
                    let lower = text.to_lowercase();
                    inputs.push((text, lower));
                }
                t.rows
                    .iter()
                    .find(|(tests, _)| {
                        tests
                            .iter()
                            .all(|(i, m)| inputs.get(*i).is_some_and(|(t, l)| m.test(t, l)))
                    })
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| t.default.clone())
            }
        };
        if let Value::Object(m) = &mut self.values {
            m.insert(rule.name.clone(), result);
        }
        self.computed[index] = true;
        // convert only the new value; the map of template values shares the rest
        if let Some(v) = self.values.get(&rule.name) {
            self.jvalue_map
                .insert(rule.name.clone(), JValue::from_serialize(v));
        }
        self.jvalues = JValue::from_object(self.jvalue_map.clone());
        Ok(())
    }

    fn first(&self, p: &crate::expr::Path) -> Option<&Value> {
        p.root()
            .and_then(|r| self.root(r))
            .and_then(|doc| p.first(doc))
    }

    fn filtered(
        &self,
        p: &crate::expr::Path,
        f: Option<&Pred>,
    ) -> Result<Vec<(usize, Value)>, DecideError> {
        let Some(doc) = p.root().and_then(|r| self.root(r)) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (i, item) in p.select(doc).into_iter().enumerate() {
            let keep = match f {
                Some(f) => f.eval(self, Some(item)).map_err(pred_error)?,
                None => true,
            };
            if keep {
                out.push((i, item.clone()));
            }
        }
        Ok(out)
    }

    fn test(&mut self, p: &Pred, deps: &Deps) -> Result<bool, Stop> {
        self.ensure(deps)?;
        Ok(p.eval(self, None).map_err(pred_error)?)
    }

    // ---- identity ----

    fn object_key(&self) -> Result<ObjectKey, Stop> {
        let ex = &self.rules.execution;
        if let Some(field) = &self.rules.resource.status.execution
            && let Some(recorded) = self.obs.resource.get("status").and_then(|s| s.get(field))
            && let (Some(ns), Some(name)) = (
                recorded.get("namespace").and_then(Value::as_str),
                recorded.get("name").and_then(Value::as_str),
            )
        {
            // where the object was created, whatever the templates say now
            return Ok(ObjectKey {
                api_version: ex.api_version.clone(),
                kind: ex.kind.clone(),
                namespace: ns.to_string(),
                name: name.to_string(),
            });
        }
        let ctx = self.ctx(None, None);
        let t = &self.rules.templates;
        let ex = &self.rules.execution;
        let name = t.text(&ex.name, &ctx).map_err(template_error)?;
        let namespace = t.text(&ex.namespace, &ctx).map_err(template_error)?;
        if let Err(e) = check_dns_name(&name, 253) {
            return Err(Stop::Fail(DecideError {
                category: "ExecutionObjectInvalid",
                message: format!("execution name `{name}` {e}"),
            }));
        }
        if let Err(e) = check_dns_name(&namespace, 63) {
            return Err(Stop::Fail(DecideError {
                category: "ExecutionObjectInvalid",
                message: format!("execution namespace `{namespace}` {e}"),
            }));
        }
        Ok(ObjectKey {
            api_version: ex.api_version.clone(),
            kind: ex.kind.clone(),
            namespace,
            name,
        })
    }

    // ---- the procedure ----

    fn run(&mut self) -> Result<Decision, Stop> {
        let rules = self.rules;
        let Some(phase_index) = rules.phase_index(&self.phase_name) else {
            return Err(Stop::Fail(DecideError {
                category: "UnknownPhase",
                message: format!(
                    "status.{} is `{}`, which the rules do not define (phases: {})",
                    rules.resource.status.phase,
                    self.phase_name,
                    rules
                        .phases
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }));
        };
        // the identity may fail to render (a broken resource); deletion must still work then
        let key = match self.ensure(&rules.execution.deps) {
            Ok(()) => self.object_key(),
            Err(e) => Err(e),
        };
        if let Ok(k) = &key {
            self.object = serde_json::to_value(k).unwrap_or(Value::Null);
            self.jobject = JValue::from_serialize(&self.object);
        }
        let phase = &rules.phases[phase_index];
        let meta = self.obs.resource.get("metadata");
        let finalizers: Vec<&str> = meta
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let has_finalizer = |f: &str| finalizers.contains(&f);

        // deletion
        if meta
            .and_then(|m| m.get("deletionTimestamp"))
            .is_some_and(|v| !v.is_null())
        {
            let mut effects = Vec::new();
            let Some(fin) = &rules.resource.finalizer else {
                return Ok(self.decision(None, effects, None));
            };
            if !has_finalizer(fin) {
                return Ok(self.decision(None, effects, None));
            }
            if let Some(action) = &rules.on_delete {
                let transition = self.transition_value("delete", &self.phase_name.clone());
                self.effects_of(action, &transition, "delete", &mut effects, None)?;
            }
            effects.push(Effect::RemoveFinalizer {
                finalizer: fin.clone(),
            });
            return Ok(self.decision(Some("delete".into()), effects, None));
        }

        let key = key?;
        let mut effects = Vec::new();
        if let Some(fin) = &rules.resource.finalizer
            && !has_finalizer(fin)
        {
            effects.push(Effect::AddFinalizer {
                finalizer: fin.clone(),
            });
        }
        let current = self
            .obs
            .resource
            .get("status")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| Value::Object(Map::new()));
        let mut desired = current.clone();
        let phase_field = rules.resource.status.phase.clone();
        set_field(
            &mut desired,
            &phase_field,
            Value::String(self.phase_name.clone()),
        );
        let mut requeue: Option<f64> = None;
        let mut transition_taken: Option<String> = None;
        let mut tail = Vec::new();

        if let Some(sync) = &phase.sync {
            self.ensure(&sync.deps)?;
            let transition = self.transition_value("sync", &self.phase_name.clone());
            let vars = self.vars(sync, &transition)?;
            self.apply_status(sync, &mut desired, (&vars, &transition))?;
        }

        if phase.terminal {
            if let Some(c) = &rules.cooldown
                && c.phases.contains(&phase_index)
            {
                let since = desired
                    .get(&c.since)
                    .and_then(Value::as_str)
                    .and_then(crate::time::parse_secs);
                let since = match since {
                    Some(s) => s,
                    None => {
                        set_field(&mut desired, &c.since, Value::String(self.now_text.clone()));
                        self.now
                    }
                };
                let released =
                    condition_status(&current, &rules.resource.status.conditions, &c.marker)
                        == Some("True");
                let applies = match &c.when {
                    Some(w) => self.test(w, &c.deps)?,
                    None => true,
                };
                if !released && applies {
                    self.ensure(&c.deps)?;
                    let ctx = self.ctx(None, None);
                    let period = self.duration(&c.period, &ctx)?;
                    let due = since + period;
                    if self.now >= due {
                        let transition = self.transition_value("release", &self.phase_name.clone());
                        self.ensure(&c.release.deps)?;
                        let vars = self.vars(&c.release, &transition)?;
                        self.apply_status(&c.release, &mut desired, (&vars, &transition))?;
                        let list = conditions_mut(&mut desired, &rules.resource.status.conditions);
                        if !list.iter().any(|x| {
                            x.get("type").and_then(Value::as_str) == Some(c.marker.as_str())
                                && x.get("status").and_then(Value::as_str) == Some("True")
                        }) {
                            status::set_condition(
                                list,
                                Condition {
                                    kind: &c.marker,
                                    status: "True".into(),
                                    reason: "Released".into(),
                                    message: String::new(),
                                },
                                &self.now_text,
                                self.generation(),
                            );
                        }
                        self.effects_of(
                            &c.release,
                            &transition,
                            "release",
                            &mut tail,
                            Some(&vars),
                        )?;
                        transition_taken = Some("release".into());
                    } else {
                        requeue = Some(due - self.now);
                    }
                }
            }
        } else {
            if phase.validate {
                for v in &rules.validation {
                    if !self.test(&v.require, &v.deps)? {
                        self.ensure(&v.deps)?;
                        let ctx = self.ctx(None, None);
                        let message = rules
                            .templates
                            .text(&v.message, &ctx)
                            .map_err(template_error)?;
                        self.validation = json!({"rule": v.name, "message": message});
                        self.jvalidation = JValue::from_serialize(&self.validation);
                        break;
                    }
                }
            }
            for t in &phase.transitions {
                let guard = match &t.when {
                    Some(w) => self.test(w, &t.when_deps)?,
                    None => true,
                };
                if !guard {
                    continue;
                }
                if t.action.execution == Some(ExecutionAction::Create)
                    && self.owned != Value::Bool(true)
                {
                    if self.obs.execution.is_some() || self.obs.error.is_some() {
                        continue;
                    }
                    let object = self.render_execution(&key)?;
                    effects.push(Effect::CreateExecution { object });
                    break;
                }
                let to = rules
                    .phases
                    .get(t.to)
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                let transition = self.transition_value(&t.name, &to);
                self.ensure(&t.action.deps)?;
                let vars = self.vars(&t.action, &transition)?;
                self.apply_status(&t.action, &mut desired, (&vars, &transition))?;
                set_field(&mut desired, &phase_field, Value::String(to.clone()));
                self.effects_of(&t.action, &transition, &t.name, &mut tail, Some(&vars))?;
                transition_taken = Some(t.name.clone());
                self.phase_name = to;
                break;
            }
            if transition_taken.is_none() {
                if self.obs.error.is_some() {
                    return Err(Stop::Fail(DecideError {
                        category: "UnhandledError",
                        message: format!(
                            "no transition of phase {} handles the error of `{}`: {}",
                            phase.name,
                            self.obs
                                .error
                                .as_ref()
                                .map(|e| e.action.as_str())
                                .unwrap_or(""),
                            self.obs
                                .error
                                .as_ref()
                                .map(|e| e.message.as_str())
                                .unwrap_or("")
                        ),
                    }));
                }
                if let Some(poll) = &phase.poll {
                    let ctx = self.ctx(None, None);
                    let secs = self.duration(poll, &ctx)?;
                    requeue = Some(requeue.map_or(secs, |r: f64| r.min(secs)));
                }
            }
        }
        if let Some(w) = self.wake.get() {
            let secs = (w - self.now).max(0.0);
            requeue = Some(requeue.map_or(secs, |r| r.min(secs)));
        }

        // the engine's own bookkeeping: where our execution object is, once it exists (only
        // while a status is being written anyway, so this never costs a write of its own)
        if let Some(field) = &rules.resource.status.execution
            && self.owned == Value::Bool(true)
            && desired.get(field).is_none()
            && status::merge_patch(&current, &desired).is_some()
        {
            set_field(
                &mut desired,
                field,
                json!({"namespace": key.namespace, "name": key.name}),
            );
        }
        // recovery from an earlier rules error
        let list = conditions_mut(&mut desired, &rules.resource.status.conditions);
        if list.iter().any(|x| {
            x.get("type").and_then(Value::as_str) == Some(ERROR_CONDITION)
                && x.get("status").and_then(Value::as_str) == Some("False")
        }) {
            status::set_condition(
                list,
                Condition {
                    kind: ERROR_CONDITION,
                    status: "True".into(),
                    reason: "Applied".into(),
                    message: "The rules apply cleanly".into(),
                },
                &self.now_text,
                self.generation(),
            );
        }
        if conditions_mut(&mut desired, &rules.resource.status.conditions).is_empty()
            && current.get(&rules.resource.status.conditions).is_none()
            && let Value::Object(m) = &mut desired
        {
            m.remove(&rules.resource.status.conditions);
        }
        // Audit records go out before the status write that records their transition: if the
        // process dies in between, the transition is taken again and the record is sent again
        // with the same id (at least once). Events and metrics follow the write, so that they
        // are not repeated when the write loses a conflict.
        let (audits, rest): (Vec<Effect>, Vec<Effect>) = tail
            .into_iter()
            .partition(|e| matches!(e, Effect::DeleteExecution { .. } | Effect::Audit { .. }));
        effects.extend(audits);
        if let Some(patch) = self.status_patch(&current, desired) {
            // the status reflects what was observed before the execution object is created
            let at = effects
                .iter()
                .position(|e| matches!(e, Effect::CreateExecution { .. }))
                .unwrap_or(effects.len());
            effects.insert(at, Effect::PatchStatus { patch });
        }
        effects.extend(rest);
        if transition_taken.is_some() {
            requeue = Some(0.0);
        }
        Ok(self.decision(transition_taken, effects, requeue))
    }

    fn generation(&self) -> Option<i64> {
        self.obs
            .resource
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
    }

    fn status_patch(&self, current: &Value, mut desired: Value) -> Option<Value> {
        status::merge_patch(current, &desired)?;
        let fields = &self.rules.resource.status;
        if let Some(f) = &fields.observed_generation
            && let Some(g) = self.generation()
        {
            set_field(&mut desired, f, Value::from(g));
        }
        if let Some(f) = &fields.revision {
            set_field(&mut desired, f, Value::String(self.rules.revision.clone()));
        }
        status::merge_patch(current, &desired)
    }

    fn decision(
        &self,
        transition: Option<String>,
        effects: Vec<Effect>,
        requeue: Option<f64>,
    ) -> Decision {
        Decision {
            phase: self.phase_name.clone(),
            transition,
            effects,
            requeue_after: requeue,
            needs: Vec::new(),
            error: None,
        }
    }

    /// The decision that reports a rules failure on the resource, once.
    fn failure(&self, e: DecideError) -> Decision {
        let rules = self.rules;
        let current = self
            .obs
            .resource
            .get("status")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| Value::Object(Map::new()));
        let mut desired = current.clone();
        let message = e.message.clone();
        let list = conditions_mut(&mut desired, &rules.resource.status.conditions);
        status::set_condition(
            list,
            Condition {
                kind: ERROR_CONDITION,
                status: "False".into(),
                reason: e.category.to_string(),
                message: truncate(&message, 32 * 1024),
            },
            &self.now_text,
            self.generation(),
        );
        let mut effects = Vec::new();
        if let Some(patch) = self.status_patch(&current, desired) {
            effects.push(Effect::PatchStatus { patch });
            effects.push(Effect::Event(EventRecord {
                kind: "Warning".into(),
                reason: e.category.to_string(),
                action: "Reconcile".into(),
                message: truncate(&message, 1024),
            }));
        }
        Decision {
            phase: self.phase_name.clone(),
            transition: None,
            effects,
            requeue_after: Some(60.0),
            needs: Vec::new(),
            error: Some(e),
        }
    }

    fn transition_value(&self, name: &str, to: &str) -> JValue {
        JValue::from_serialize(json!({"name": name, "from": self.phase_name, "to": to}))
    }

    fn vars(&self, action: &ActionRules, transition: &JValue) -> Result<JValue, Stop> {
        let mut vars = Map::new();
        for (name, t) in &action.vars {
            // each var may read the ones before it
            let ctx = self.ctx(Some((&JValue::from_serialize(&vars), transition)), None);
            let v = self
                .rules
                .templates
                .value(t, &ctx)
                .map_err(template_error)?;
            vars.insert(name.clone(), v);
        }
        Ok(JValue::from_serialize(&vars))
    }

    fn duration(&self, t: &Tmpl, ctx: &JValue) -> Result<f64, Stop> {
        let text = self.rules.templates.text(t, ctx).map_err(template_error)?;
        crate::time::parse_duration(&text).map_err(|e| {
            Stop::Fail(DecideError {
                category: "TemplateError",
                message: e,
            })
        })
    }

    fn apply_status(
        &self,
        action: &ActionRules,
        desired: &mut Value,
        extra: (&JValue, &JValue),
    ) -> Result<(), Stop> {
        let ctx = self.ctx(Some(extra), None);
        for tree in &action.status {
            if let Value::Object(m) = desired {
                self.apply_tree(tree, m, &mut Vec::new(), &ctx)?;
            }
        }
        for c in &action.conditions {
            if let Some(w) = &c.when
                && !w.eval(self, None).map_err(pred_error)?
            {
                continue;
            }
            let t = &self.rules.templates;
            let cond = Condition {
                kind: &c.kind,
                status: t.text(&c.status, &ctx).map_err(template_error)?,
                reason: t
                    .text(&c.reason, &ctx)
                    .map_err(template_error)?
                    .trim()
                    .to_string(),
                message: t.text(&c.message, &ctx).map_err(template_error)?,
            };
            let list = conditions_mut(desired, &self.rules.resource.status.conditions);
            status::set_condition(list, cond, &self.now_text, self.generation());
        }
        Ok(())
    }

    fn apply_tree(
        &self,
        tree: &TmplTree,
        obj: &mut Map<String, Value>,
        path: &mut Vec<String>,
        ctx: &JValue,
    ) -> Result<(), Stop> {
        match tree {
            TmplTree::Map(entries) => {
                for (k, sub) in entries {
                    path.push(k.clone());
                    self.apply_tree(sub, obj, path, ctx)?;
                    path.pop();
                }
            }
            TmplTree::Remove => status::remove_path(obj, path),
            other => {
                let v = self.render_tree(other, ctx)?;
                if !v.is_null() {
                    status::set_path(obj, path, v);
                }
            }
        }
        Ok(())
    }

    fn render_tree(&self, tree: &TmplTree, ctx: &JValue) -> Result<Value, Stop> {
        Ok(render_tree(&self.rules.templates, tree, ctx).map_err(template_error)?)
    }

    /// Appends the execution action, Events, audit record and metrics of `action`.
    fn effects_of(
        &self,
        action: &ActionRules,
        transition: &JValue,
        step: &str,
        out: &mut Vec<Effect>,
        vars: Option<&JValue>,
    ) -> Result<(), Stop> {
        let computed;
        let vars = match vars {
            Some(v) => v,
            None => {
                computed = self.vars(action, transition)?;
                &computed
            }
        };
        let ctx = self.ctx(Some((vars, transition)), None);
        let t = &self.rules.templates;
        if action.execution == Some(ExecutionAction::Delete)
            && self.owned == Value::Bool(true)
            && let Some(ex) = &self.obs.execution
        {
            out.insert(
                0,
                Effect::DeleteExecution {
                    key: ObjectKey {
                        api_version: self.rules.execution.api_version.clone(),
                        kind: self.rules.execution.kind.clone(),
                        namespace: ex
                            .pointer("/metadata/namespace")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        name: ex
                            .pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    },
                    uid: ex
                        .pointer("/metadata/uid")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                },
            );
        }
        for e in &action.events {
            out.push(Effect::Event(EventRecord {
                kind: match e.kind {
                    EventType::Normal => "Normal".into(),
                    EventType::Warning => "Warning".into(),
                },
                reason: e.reason.clone(),
                action: e.action.clone(),
                message: truncate(
                    t.text(&e.message, &ctx).map_err(template_error)?.trim(),
                    1024,
                ),
            }));
        }
        if !action.audit.is_empty() {
            let mut record = match &self.rules.audit.record {
                Some(base) => self.render_tree(base, &ctx)?,
                None => Value::Object(Map::new()),
            };
            for tree in &action.audit {
                let over = self.render_tree(tree, &ctx)?;
                status::deep_merge(&mut record, over);
            }
            if let Value::Object(m) = &mut record {
                m.insert(
                    self.rules.audit.id_field.clone(),
                    Value::String(self.event_id(step)),
                );
                m.insert(
                    self.rules.audit.time_field.clone(),
                    Value::String(self.now_text.clone()),
                );
            }
            out.push(Effect::Audit { record });
        }
        for m in &action.metrics {
            let spec = self.rules.metrics.get(&m.name);
            let mut labels = Vec::new();
            for (k, v) in &m.labels {
                labels.push((k.clone(), t.text(v, &ctx).map_err(template_error)?));
            }
            if let Some(spec) = spec {
                labels.sort_by_key(|(k, _)| spec.labels.iter().position(|l| l == k));
            }
            let value = match &m.value {
                None => 1.0,
                Some(v) => {
                    let text = t.text(v, &ctx).map_err(template_error)?;
                    text.trim().parse::<f64>().map_err(|_| {
                        Stop::Fail(DecideError {
                            category: "TemplateError",
                            message: format!("metric `{}` value `{text}` is not a number", m.name),
                        })
                    })?
                }
            };
            if spec.is_some_and(|s| s.kind == MetricKind::Counter) && value < 0.0 {
                return Err(Stop::Fail(DecideError {
                    category: "TemplateError",
                    message: format!("counter `{}` cannot decrease (value {value})", m.name),
                }));
            }
            out.push(Effect::Metric(MetricRecord {
                name: m.name.clone(),
                labels,
                value,
            }));
        }
        Ok(())
    }

    /// A record id that is the same every time this resource takes this step.
    fn event_id(&self, step: &str) -> String {
        let meta = self.obs.resource.get("metadata");
        let field = |k: &str| {
            meta.and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let mut h = Sha256::new();
        for part in [
            field("uid"),
            field("namespace"),
            field("name"),
            self.rules.resource.kind.as_str(),
            step,
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        let hex: String = h
            .finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    fn render_execution(&self, key: &ObjectKey) -> Result<Value, Stop> {
        let ctx = self.ctx(None, None);
        let text = self
            .rules
            .templates
            .render_text(self.rules.execution.template, &ctx)
            .map_err(template_error)?;
        let invalid = |m: String| {
            Stop::Fail(DecideError {
                category: "ExecutionObjectInvalid",
                message: format!("template {}: {m}", self.rules.raw.execution.template),
            })
        };
        let mut obj: Value = serde_yaml::from_str(&text)
            .map_err(|e| invalid(format!("rendered text is not YAML: {e}")))?;
        let Value::Object(m) = &mut obj else {
            return Err(invalid("rendered YAML is not a mapping".into()));
        };
        for (field, want) in [("apiVersion", &key.api_version), ("kind", &key.kind)] {
            pin_field(m, field, want, field).map_err(invalid)?;
        }
        let meta = m
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(meta) = meta else {
            return Err(invalid("metadata is not a mapping".into()));
        };
        for (field, want) in [("name", &key.name), ("namespace", &key.namespace)] {
            pin_field(meta, field, want, &format!("metadata.{field}")).map_err(invalid)?;
        }
        if meta.contains_key("generateName") || meta.contains_key("ownerReferences") {
            return Err(invalid(
                "must not set metadata.generateName or metadata.ownerReferences".into(),
            ));
        }
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(labels) = labels else {
            return Err(invalid("metadata.labels is not a mapping".into()));
        };
        let rmeta = self.obs.resource.get("metadata");
        let rfield = |k: &str| {
            rmeta
                .and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let owner = &self.rules.execution.owner_labels;
        labels.insert(owner.name.clone(), Value::String(rfield("name")));
        labels.insert(owner.namespace.clone(), Value::String(rfield("namespace")));
        for (k, v) in labels.iter() {
            let Some(s) = v.as_str() else {
                return Err(invalid(format!("label `{k}` is not a string")));
            };
            if s.len() > 63
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(invalid(format!(
                    "label `{k}` has an invalid value `{s}` (use the label_value filter)"
                )));
            }
        }
        Ok(obj)
    }
}

/// Condition type the engine uses to report run-time rules failures on a resource.
pub const ERROR_CONDITION: &str = "RulesApplied";

impl Env for Decider<'_> {
    fn root(&self, root: Root) -> Option<&Value> {
        Some(match root {
            Root::Resource => &self.obs.resource,
            Root::Execution => self.obs.execution.as_ref().unwrap_or(&self.null),
            Root::Owned => &self.owned,
            Root::Related => &self.related,
            Root::Error => &self.error,
            Root::Validation => &self.validation,
            Root::Values => &self.values,
            Root::Settings => &self.rules.settings,
            Root::Phase => &self.phase_value,
            Root::Now => &self.now_value,
            Root::Object => &self.object,
        })
    }

    fn truthy(&self, id: usize, item: Option<&Value>) -> Result<bool, PredError> {
        let ctx = self.ctx(None, item);
        self.rules
            .templates
            .eval_jinja(id, &ctx)
            .map(|v| v.is_true())
            .map_err(|e| PredError(e.message))
    }

    fn duration_secs(&self, id: usize, item: Option<&Value>) -> Result<f64, PredError> {
        let ctx = self.ctx(None, item);
        let v = self
            .rules
            .templates
            .eval(id, &ctx)
            .map_err(|e| PredError(e.message))?;
        match v {
            Value::Number(n) => n.as_f64().ok_or_else(|| PredError("bad number".into())),
            Value::String(s) => crate::time::parse_duration(&s).map_err(PredError),
            other => Err(PredError(format!("`{other}` is not a duration"))),
        }
    }

    fn now_secs(&self) -> f64 {
        self.now
    }

    fn wake_at(&self, secs: f64) {
        let w = self.wake.get().map_or(secs, |w| w.min(secs));
        self.wake.set(Some(w));
    }
}

/// Makes `obj[field]` equal `want`: fills it in when absent, refuses a different value.
fn pin_field(
    obj: &mut Map<String, Value>,
    field: &str,
    want: &str,
    label: &str,
) -> Result<(), String> {
    match obj.get(field).and_then(Value::as_str) {
        Some(got) if got == want => Ok(()),
        Some(got) => Err(format!(
            "renders {label} `{got}`, but the rules give `{want}`"
        )),
        None => {
            obj.insert(field.into(), Value::String(want.to_string()));
            Ok(())
        }
    }
}

/// Renders templates arranged as JSON; leaves that evaluate to null are left out.
pub fn render_tree(t: &Templates, tree: &TmplTree, ctx: &JValue) -> Result<Value, RenderError> {
    Ok(match tree {
        TmplTree::Leaf(x) => t.value(x, ctx)?,
        TmplTree::Remove => Value::Null,
        TmplTree::Map(entries) => {
            let mut m = Map::new();
            for (k, sub) in entries {
                let v = render_tree(t, sub, ctx)?;
                if !v.is_null() {
                    m.insert(k.clone(), v);
                }
            }
            Value::Object(m)
        }
        TmplTree::List(items) => Value::Array(
            items
                .iter()
                .map(|i| render_tree(t, i, ctx))
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn is_owned(rules: &Rules, resource: &Value, execution: &Value) -> bool {
    let labels = execution.pointer("/metadata/labels");
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let meta = |k: &str| {
        resource
            .pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
    };
    let owner = &rules.execution.owner_labels;
    label(&owner.name).is_some()
        && label(&owner.name) == meta("name")
        && label(&owner.namespace) == meta("namespace")
}

fn set_field(status: &mut Value, field: &str, v: Value) {
    if let Value::Object(m) = status {
        m.insert(field.to_string(), v);
    }
}

fn conditions_mut<'v>(status: &'v mut Value, field: &str) -> &'v mut Vec<Value> {
    if !status.is_object() {
        *status = Value::Object(Map::new());
    }
    let Value::Object(m) = status else {
        unreachable!("made an object above")
    };
    let entry = m
        .entry(field.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    match entry {
        Value::Array(a) => a,
        _ => unreachable!("made an array above"),
    }
}

fn condition_status<'v>(status: &'v Value, field: &str, kind: &str) -> Option<&'v str> {
    status
        .get(field)?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))?
        .get("status")?
        .as_str()
}

fn check_dns_name(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > max {
        return Err(format!("is longer than {max} characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err("may contain only lowercase letters, digits, '-' and '.'".into());
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !s.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}
