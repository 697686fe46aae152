//! The decision procedure, as the named steps of `docs/rules.md` §2: identity, deletion,
//! finalizer, sync, then the cooldown (terminal phases) or validation and the transitions (other
//! phases), then the engine's own status bookkeeping and the order of the effects.
//!
//! Each step reads the [`Scope`] and adds to a [`Draft`]; none touches the world. What the rules
//! can read lives in `scope.rs`, what a step writes and emits in `effects.rs`.

use super::scope::{Need, Scope, Stop, related_requests, template_error};
use super::status::{self, Condition, condition_status, conditions_mut, set_field, truncate};
use super::{Category, DecideError, Decision, Effect, EventRecord, ObjectKey, Observation};
use crate::rules::model::ExecutionAction;
use crate::rules::{PhaseRules, Rules};
use serde_json::{Map, Value, json};

/// Condition type the engine uses to report run-time rules failures on a resource.
pub const ERROR_CONDITION: &str = "RulesApplied";

/// The identity of the execution object the rules give this resource.
pub fn execution_key(rules: &Rules, resource: &Value, now: f64) -> Result<ObjectKey, DecideError> {
    let obs = Observation {
        resource: resource.clone(),
        ..Observation::default()
    };
    crate::render::lend(|loan| {
        let d = Decider {
            s: Scope::new(rules, &obs, now, loan),
        };
        d.object_key().map_err(|e| match e {
            Stop::Fail(e) => e,
            Stop::Needs(_) => DecideError {
                category: Category::TemplateError,
                message: "the execution object's name cannot depend on related objects or lookups"
                    .into(),
            },
        })
    })
}

/// The identity of each of the rules' other children for this resource (none where its
/// name or namespace does not render), in the order of `rules.children`.
pub fn child_keys(rules: &Rules, resource: &Value, now: f64) -> Vec<Option<ObjectKey>> {
    let obs = Observation {
        resource: resource.clone(),
        ..Observation::default()
    };
    crate::render::lend(|loan| {
        let d = Decider {
            s: Scope::new(rules, &obs, now, loan),
        };
        (0..rules.children.len())
            .map(|i| d.child_key(i).ok())
            .collect()
    })
}

/// Decides what to do for one resource. Pure, total and deterministic.
pub fn decide(rules: &Rules, obs: &Observation, now: f64) -> Decision {
    // the observed objects are lent to templates for the decision, not copied
    crate::render::lend(|loan| decide_with(rules, obs, now, loan))
}

fn decide_with<'a>(
    rules: &'a Rules,
    obs: &'a Observation,
    now: f64,
    loan: &crate::render::Loan<'a>,
) -> Decision {
    let mut d = Decider {
        s: Scope::new(rules, obs, now, loan),
    };
    match d.run() {
        Ok(decision) => decision,
        Err(Stop::Needs(Need::Related(index))) => {
            let ex = obs.execution.as_ref();
            let mut needs = vec![related_requests(rules, index, ex, &obs.children)];
            // ask for every related list the observation lacks at once
            for (i, r) in rules.related.iter().enumerate() {
                if i != index && !obs.related.contains_key(&r.name) {
                    needs.push(related_requests(rules, i, ex, &obs.children));
                }
            }
            Decision {
                needs,
                ..d.decision(None, Vec::new(), None)
            }
        }
        Err(Stop::Needs(Need::Lookup(index))) => match d.lookup_requests(index) {
            Ok(lookups) => Decision {
                lookups,
                ..d.decision(None, Vec::new(), None)
            },
            Err(e) => d.failure(e),
        },
        Err(Stop::Fail(e)) => d.failure(e),
    }
}

/// Where the children a step creates are.
enum Children {
    /// Each exists and is ours.
    Ready,
    /// One is another's, or a create failed: the step is not taken.
    Skip,
    /// One is being created: the step waits.
    Creating,
}

/// One decision being made.
pub(super) struct Decider<'a> {
    pub(super) s: Scope<'a>,
}

/// The decision as the steps build it.
pub(super) struct Draft {
    /// The status as observed.
    current: Value,
    /// The status as it should be.
    pub(super) desired: Value,
    /// Effects that go before the status write's place: the finalizer, the create.
    head: Vec<Effect>,
    /// Effects of the step taken (delete, audit, Events, metrics), ordered at the end.
    pub(super) tail: Vec<Effect>,
    requeue: Option<f64>,
    pub(super) transition: Option<String>,
    /// A new attempt starts in this decision (its execution object is not the observed one).
    pub(super) fresh_attempt: bool,
}

impl Draft {
    pub(super) fn look_again_in(&mut self, secs: f64) {
        self.requeue = Some(self.requeue.map_or(secs, |r| r.min(secs)));
    }
}

impl Decider<'_> {
    fn run(&mut self) -> Result<Decision, Stop> {
        let rules = self.s.rules;
        let phase_index = self.phase_index()?;
        // the identity may fail to render (a broken resource); deletion must still work then
        let key = self.identity();
        if let Some(decision) = self.deletion()? {
            return Ok(decision);
        }
        let key = key?;
        let phase = &rules.phases[phase_index];
        let mut draft = self.draft();
        self.finalizer(&mut draft);
        self.sync(phase, &mut draft)?;
        if phase.terminal {
            self.cooldown(phase_index, &mut draft)?;
        } else {
            self.validate(phase)?;
            self.transition(phase, &key, &mut draft)?;
        }
        if let Some(w) = self.s.wake() {
            draft.look_again_in((w - self.s.now).max(0.0));
        }
        self.bookkeeping(&key, &mut draft);
        Ok(self.effects(draft))
    }

    /// What the world must find for lookup `index`, and for every other lookup the observation
    /// lacks whose request renders (so that one round of finding is enough).
    fn lookup_requests(&self, index: usize) -> Result<Vec<super::LookupRequest>, DecideError> {
        let mut requests = vec![super::lookups::request(&self.s, index)?];
        for i in 0..self.s.rules.lookups.len() {
            if i != index
                && !self.s.lookup_found(i)
                && let Ok(r) = super::lookups::request(&self.s, i)
            {
                requests.push(r);
            }
        }
        Ok(requests)
    }

    /// The phase the resource is in, as an index into the rules' phases.
    fn phase_index(&self) -> Result<usize, Stop> {
        let rules = self.s.rules;
        rules.phase_index(&self.s.phase_name).ok_or_else(|| {
            Stop::Fail(DecideError {
                category: Category::UnknownPhase,
                message: format!(
                    "status.{} is `{}`, which the rules do not define (phases: {})",
                    rules.resource.status.phase,
                    self.s.phase_name,
                    rules
                        .phases
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        })
    }

    /// Step 1: the execution object's identity, readable as `object` from here on.
    fn identity(&mut self) -> Result<ObjectKey, Stop> {
        let rules = self.s.rules;
        self.s.ensure(&rules.execution.deps)?;
        let key = self.object_key()?;
        self.s
            .object
            .set(serde_json::to_value(&key).unwrap_or(Value::Null));
        Ok(key)
    }

    fn object_key(&self) -> Result<ObjectKey, Stop> {
        let ex = &self.s.rules.execution;
        if let Some(field) = &self.s.rules.resource.status.execution
            && let Some(recorded) = self.s.obs.resource.get("status").and_then(|s| s.get(field))
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
        identity(&self.s, ex, "execution")
    }

    /// The identity of child `index` (of the rules' other children).
    pub(super) fn child_key(&self, index: usize) -> Result<ObjectKey, Stop> {
        let c = &self.s.rules.children[index];
        identity(&self.s, &c.object, &format!("child {}", c.name))
    }

    fn finalizers(&self) -> Vec<&str> {
        self.s
            .obs
            .resource
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// Step 2: a resource being deleted runs `onDelete`, then loses its finalizer; nothing else.
    fn deletion(&mut self) -> Result<Option<Decision>, Stop> {
        let rules = self.s.rules;
        let deleting = self
            .s
            .obs
            .resource
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null());
        if !deleting {
            return Ok(None);
        }
        let mut effects = Vec::new();
        let Some(fin) = &rules.resource.finalizer else {
            return Ok(Some(self.decision(None, effects, None)));
        };
        if !self.finalizers().contains(&fin.as_str()) {
            return Ok(Some(self.decision(None, effects, None)));
        }
        if let Some(action) = &rules.on_delete {
            self.s.ensure(&action.deps)?;
            let transition = self.s.transition_value("delete", &self.s.phase_name);
            self.s
                .effects_of(action, &transition, "delete", &mut effects, None)?;
        }
        effects.push(Effect::RemoveFinalizer {
            finalizer: fin.clone(),
        });
        Ok(Some(self.decision(Some("delete".into()), effects, None)))
    }

    /// The resource's status as observed (an empty object when it has none).
    fn observed_status(&self) -> Value {
        self.s
            .obs
            .resource
            .get("status")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| Value::Object(Map::new()))
    }

    /// The status as observed, and the desired status starting from it, in the current phase.
    fn draft(&self) -> Draft {
        let current = self.observed_status();
        let mut desired = current.clone();
        set_field(
            &mut desired,
            &self.s.rules.resource.status.phase,
            Value::String(self.s.phase_name.clone()),
        );
        let mut draft = Draft {
            current,
            desired,
            head: Vec::new(),
            tail: Vec::new(),
            requeue: None,
            transition: None,
            fresh_attempt: false,
        };
        self.stamp_attempt_fields(&mut draft);
        draft
    }

    /// Step 3: the rules' finalizer, added first when missing.
    fn finalizer(&self, draft: &mut Draft) {
        if let Some(fin) = &self.s.rules.resource.finalizer
            && !self.finalizers().contains(&fin.as_str())
        {
            draft.head.push(Effect::AddFinalizer {
                finalizer: fin.clone(),
            });
        }
    }

    /// Step 5: the phase's `sync` block.
    fn sync(&mut self, phase: &PhaseRules, draft: &mut Draft) -> Result<(), Stop> {
        if let Some(sync) = &phase.sync {
            self.s.ensure(&sync.deps)?;
            let transition = self.s.transition_value("sync", &self.s.phase_name);
            let vars = self.s.vars(sync, &transition)?;
            self.s
                .apply_status(sync, &mut draft.desired, (&vars, &transition))?;
        }
        Ok(())
    }

    /// Step 6, terminal phases: the cooldown, released once when its period is over.
    fn cooldown(&mut self, phase_index: usize, draft: &mut Draft) -> Result<(), Stop> {
        let rules = self.s.rules;
        let Some(c) = &rules.cooldown else {
            return Ok(());
        };
        if !c.phases.contains(&phase_index) {
            return Ok(());
        }
        let since = draft
            .desired
            .get(&c.since)
            .and_then(Value::as_str)
            .and_then(crate::time::parse_secs);
        let since = match since {
            Some(s) => s,
            None => {
                let now = Value::String(self.s.now_text.clone());
                set_field(&mut draft.desired, &c.since, now);
                self.s.now
            }
        };
        let conditions = &rules.resource.status.conditions;
        let released = condition_status(&draft.current, conditions, &c.marker) == Some("True");
        let applies = match &c.when {
            Some(w) => self.s.test(w, &c.deps)?,
            None => true,
        };
        if released || !applies {
            return Ok(());
        }
        self.s.ensure(&c.deps)?;
        let ctx = self.s.ctx(None, None);
        let due = since + self.s.duration(&c.period, &ctx)?;
        if self.s.now < due {
            draft.requeue = Some(due - self.s.now);
            return Ok(());
        }
        let transition = self.s.transition_value("release", &self.s.phase_name);
        self.s.ensure(&c.release.deps)?;
        let vars = self.s.vars(&c.release, &transition)?;
        self.s
            .apply_status(&c.release, &mut draft.desired, (&vars, &transition))?;
        let list = conditions_mut(&mut draft.desired, conditions);
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
                &self.s.now_text,
                self.s.generation(),
            );
        }
        self.s.effects_of(
            &c.release,
            &transition,
            "release",
            &mut draft.tail,
            Some(&vars),
        )?;
        draft.transition = Some("release".into());
        Ok(())
    }

    /// Step 6, other phases: the first validation rule that fails, readable as `validation`.
    fn validate(&mut self, phase: &PhaseRules) -> Result<(), Stop> {
        if !phase.validate {
            return Ok(());
        }
        validation(&mut self.s)
    }

    /// Step 6, other phases: the first transition whose guard holds (a create first creates the
    /// execution object; the transition that follows sees it); else the phase's `poll`.
    fn transition(
        &mut self,
        phase: &PhaseRules,
        key: &ObjectKey,
        draft: &mut Draft,
    ) -> Result<(), Stop> {
        let rules = self.s.rules;
        if self.pending_retry(draft)? {
            return Ok(());
        }
        for t in &phase.transitions {
            if !self.timer_due(t, draft)? {
                continue;
            }
            let guard = match &t.when {
                Some(w) => self.s.test(w, &t.when_deps)?,
                None => true,
            };
            if !guard {
                continue;
            }
            // children are created in the order written, the lock among them
            let children = &t.action.children;
            let (before, after) =
                children.split_at(t.action.lock_at.unwrap_or(0).min(children.len()));
            match self.children_created(before, draft)? {
                Children::Ready => {}
                Children::Skip => continue,
                Children::Creating => break,
            }
            if t.action.execution == Some(ExecutionAction::Create) && !self.s.owned {
                if self.s.obs.execution.is_some() || self.s.obs.error.is_some() {
                    continue;
                }
                let object = self.s.render_execution(key)?;
                draft.head.push(Effect::CreateExecution { object });
                break;
            }
            if t.action.execution == Some(ExecutionAction::Create) && self.must_not_adopt() {
                // the previous attempt's object is still going away: wait for it
                break;
            }
            match self.children_created(after, draft)? {
                Children::Ready => {}
                Children::Skip => continue,
                Children::Creating => break,
            }
            if self.retry(t, draft)? {
                return Ok(());
            }
            let to = rules
                .phases
                .get(t.to)
                .map(|p| p.name.clone())
                .unwrap_or_default();
            let transition = self.s.transition_value(&t.name, &to);
            self.s.ensure(&t.action.deps)?;
            let vars = self.s.vars(&t.action, &transition)?;
            self.s
                .apply_status(&t.action, &mut draft.desired, (&vars, &transition))?;
            set_field(
                &mut draft.desired,
                &rules.resource.status.phase,
                Value::String(to.clone()),
            );
            self.s.effects_of(
                &t.action,
                &transition,
                &t.name,
                &mut draft.tail,
                Some(&vars),
            )?;
            self.entered_now(draft);
            draft.transition = Some(t.name.clone());
            self.s.phase_name = to;
            return Ok(());
        }
        if let Some(e) = &self.s.obs.error {
            return Err(Stop::Fail(DecideError {
                category: Category::UnhandledError,
                message: format!(
                    "no transition of phase {} handles the error of `{}`{}: {}",
                    phase.name,
                    e.action,
                    e.child
                        .as_ref()
                        .map(|c| format!(" (child {c})"))
                        .unwrap_or_default(),
                    e.message
                ),
            }));
        }
        if let Some(poll) = &phase.poll {
            let ctx = self.s.ctx(None, None);
            let secs = self.s.duration(poll, &ctx)?;
            draft.look_again_in(secs);
        }
        Ok(())
    }

    /// Whether the children a step creates exist and are ours: if one exists but is not ours,
    /// or a create error is pending, the step is skipped; the first one absent is created (the
    /// step waits for it).
    fn children_created(
        &mut self,
        children: &[(usize, ExecutionAction)],
        draft: &mut Draft,
    ) -> Result<Children, Stop> {
        for &(i, x) in children {
            if x != ExecutionAction::Create || self.s.child_owned(i) {
                continue;
            }
            if self.s.child(i).is_some() || self.s.obs.error.is_some() {
                return Ok(Children::Skip);
            }
            let c = &self.s.rules.children[i];
            self.s.ensure(&c.object.deps)?;
            let key = self.child_key(i)?;
            let object = self.s.render_object(&c.object, &key)?;
            draft.head.push(Effect::CreateChild {
                child: c.name.clone(),
                object,
            });
            return Ok(Children::Creating);
        }
        Ok(Children::Ready)
    }

    /// Step 7a: the engine's own status fields: where the execution object is, and recovery
    /// from an earlier rules error.
    fn bookkeeping(&self, key: &ObjectKey, draft: &mut Draft) {
        let rules = self.s.rules;
        let conditions = &rules.resource.status.conditions;
        // where our execution object is, once it exists (only while a status is being written
        // anyway, so this never costs a write of its own)
        if let Some(field) = &rules.resource.status.execution
            && self.s.owned
            && !draft.fresh_attempt
            && !self.must_not_adopt()
            && draft.desired.get(field).is_none()
            && status::merge_patch(&draft.current, &draft.desired).is_some()
        {
            set_field(
                &mut draft.desired,
                field,
                json!({"namespace": key.namespace, "name": key.name}),
            );
        }
        let list = conditions_mut(&mut draft.desired, conditions);
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
                &self.s.now_text,
                self.s.generation(),
            );
        }
        if conditions_mut(&mut draft.desired, conditions).is_empty()
            && draft.current.get(conditions).is_none()
            && let Value::Object(m) = &mut draft.desired
        {
            m.remove(conditions);
        }
    }

    /// Step 7b: the effects in the order to carry them out.
    ///
    /// Audit records go out before the status write that records their transition: if the
    /// process dies in between, the transition is taken again and the record is sent again with
    /// the same id (at least once). Events and metrics follow the write, so that they are not
    /// repeated when the write loses a conflict. The status reflects what was observed before
    /// the execution object is created.
    fn effects(&self, draft: Draft) -> Decision {
        let Draft {
            current,
            desired,
            mut head,
            tail,
            mut requeue,
            transition,
            ..
        } = draft;
        let (audits, rest): (Vec<Effect>, Vec<Effect>) = tail.into_iter().partition(|e| {
            matches!(
                e,
                Effect::DeleteExecution { .. }
                    | Effect::PatchExecution { .. }
                    | Effect::DeleteChild { .. }
                    | Effect::PatchChild { .. }
                    | Effect::Audit { .. }
            )
        });
        head.extend(audits);
        if let Some(patch) = self.status_patch(&current, desired) {
            let at = head
                .iter()
                .position(|e| {
                    matches!(
                        e,
                        Effect::CreateExecution { .. } | Effect::CreateChild { .. }
                    )
                })
                .unwrap_or(head.len());
            head.insert(at, Effect::PatchStatus { patch });
        }
        head.extend(rest);
        if transition.is_some() {
            requeue = Some(0.0);
        }
        self.decision(transition, head, requeue)
    }

    /// The merge patch from `current` to `desired`, with the engine's generation and revision
    /// fields when anything changes.
    fn status_patch(&self, current: &Value, mut desired: Value) -> Option<Value> {
        status::merge_patch(current, &desired)?;
        let fields = &self.s.rules.resource.status;
        if let Some(f) = &fields.observed_generation
            && let Some(g) = self.s.generation()
        {
            set_field(&mut desired, f, Value::from(g));
        }
        if let Some(f) = &fields.revision {
            set_field(
                &mut desired,
                f,
                Value::String(self.s.rules.revision.clone()),
            );
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
            phase: self.s.phase_name.clone(),
            transition,
            effects,
            requeue_after: requeue,
            needs: Vec::new(),
            lookups: Vec::new(),
            error: None,
        }
    }

    /// The decision that reports a rules failure on the resource, once.
    fn failure(&self, e: DecideError) -> Decision {
        let current = self.observed_status();
        let mut desired = current.clone();
        let list = conditions_mut(&mut desired, &self.s.rules.resource.status.conditions);
        status::set_condition(
            list,
            Condition {
                kind: ERROR_CONDITION,
                status: "False".into(),
                reason: e.category.as_str().to_string(),
                message: truncate(&e.message, 32 * 1024),
            },
            &self.s.now_text,
            self.s.generation(),
        );
        let mut effects = Vec::new();
        if let Some(patch) = self.status_patch(&current, desired) {
            effects.push(Effect::PatchStatus { patch });
            effects.push(Effect::Event(EventRecord {
                kind: "Warning".into(),
                reason: e.category.as_str().to_string(),
                action: "Reconcile".into(),
                message: truncate(&e.message, 1024),
            }));
        }
        Decision {
            phase: self.s.phase_name.clone(),
            transition: None,
            effects,
            requeue_after: Some(60.0),
            needs: Vec::new(),
            lookups: Vec::new(),
            error: Some(e),
        }
    }
}

/// Sets `validation` in the scope to the first validation rule that fails, if any.
pub(super) fn validation(s: &mut Scope<'_>) -> Result<(), Stop> {
    let rules = s.rules;
    for v in &rules.validation {
        if !s.test(&v.require, &v.deps)? {
            s.ensure(&v.deps)?;
            let ctx = s.ctx(None, None);
            let message = rules
                .templates
                .text(&v.message, &ctx)
                .map_err(template_error)?;
            s.validation
                .set(json!({"rule": v.name, "message": message}));
            break;
        }
    }
    Ok(())
}

/// The identity an object's name and namespace templates give (`object` names it in errors).
fn identity(
    s: &Scope<'_>,
    ex: &crate::rules::ExecutionRules,
    object: &str,
) -> Result<ObjectKey, Stop> {
    let ctx = s.ctx(None, None);
    let t = &s.rules.templates;
    let name = t.text(&ex.name, &ctx).map_err(template_error)?;
    // a cluster-scoped object has no namespace
    let namespace = match &ex.namespace {
        Some(ns) => t.text(ns, &ctx).map_err(template_error)?,
        None => String::new(),
    };
    let mut checks = vec![("name", &name, 253)];
    if ex.namespace.is_some() {
        checks.push(("namespace", &namespace, 63));
    }
    for (what, value, max) in checks {
        if let Err(e) = check_dns_name(value, max) {
            return Err(Stop::Fail(DecideError {
                category: Category::ExecutionObjectInvalid,
                message: format!("{object} {what} `{value}` {e}"),
            }));
        }
    }
    Ok(ObjectKey {
        api_version: ex.api_version.clone(),
        kind: ex.kind.clone(),
        namespace,
        name,
    })
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
