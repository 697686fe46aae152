//! Attempts and phase timers, as steps of a decision.
//!
//! The engine keeps three status fields when the rules declare them: when the resource entered
//! its phase (`phaseEnteredAt`), its attempt number (`attempt`), and the retry waiting for its
//! time (`retry`: `{attempt, at, previous}`). A transition's `after` timer counts from the first;
//! a retry policy turns a transition into another attempt while attempts remain:
//!
//! 1. the failing transition's guard holds and the policy applies: the resource moves to the
//!    policy's phase with `retry` set (the next attempt's number, the end of the backoff, what to
//!    do with the previous object) — the step named `retry`;
//! 2. while `retry` is set, nothing but `sync` runs in that phase: the previous execution object
//!    is deleted once (`previous: delete`), and the decision waits until it is gone and the
//!    backoff is over, looking again exactly at its end;
//! 3. then the attempt number moves on, `retry` and the recorded execution object are removed,
//!    and the phase's transitions (a create, with a name that may read `attempt`) run again.
//!
//! Every wait is a requeue at its exact deadline; nothing polls.

use super::Value;
use super::decide::{Decider, Draft};
use super::scope::{Stop, template_error};
use super::status::set_field;
use super::{Category, DecideError};
use crate::rules::{Rules, TransitionRules};
use serde_json::json;

/// The attempt number the resource's status records (1 when none).
pub(super) fn observed_attempt(rules: &Rules, resource: &Value) -> u64 {
    rules
        .resource
        .status
        .attempt
        .as_ref()
        .and_then(|f| resource.get("status")?.get(f)?.as_u64())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

/// When a transition's `after` timer runs out, from the phase entry the status records (now on
/// first sight); none without a timer.
pub(super) fn timer_deadline(
    s: &super::scope::Scope<'_>,
    t: &TransitionRules,
) -> Option<Result<f64, String>> {
    let after = t.after.as_ref()?;
    let entered = s
        .rules
        .resource
        .status
        .phase_entered_at
        .as_ref()
        .and_then(|f| s.obs.resource.get("status")?.get(f)?.as_str())
        .and_then(crate::time::parse_secs)
        .unwrap_or(s.now);
    let ctx = s.ctx(None, None);
    Some(match s.duration(after, &ctx) {
        Ok(d) => Ok(entered + d),
        Err(Stop::Fail(e)) => Err(e.message),
        Err(Stop::Needs(_)) => Err("it reads related objects".into()),
    })
}

/// Whether an object is being deleted (it has a `deletionTimestamp`).
pub(super) fn terminating(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

fn remove_field(status: &mut Value, field: &str) {
    if let Value::Object(m) = status {
        m.remove(field);
    }
}

impl Decider<'_> {
    /// First sight: the time the phase was entered and the first attempt, where declared.
    pub(super) fn stamp_attempt_fields(&self, draft: &mut Draft) {
        let fields = &self.s.rules.resource.status;
        if let Some(f) = &fields.phase_entered_at
            && draft.desired.get(f).is_none()
        {
            set_field(
                &mut draft.desired,
                f,
                Value::String(self.s.now_text.clone()),
            );
        }
        if let Some(f) = &fields.attempt
            && draft.desired.get(f).is_none()
        {
            set_field(&mut draft.desired, f, Value::from(self.s.attempt));
        }
    }

    /// The resource enters a phase now.
    pub(super) fn entered_now(&self, draft: &mut Draft) {
        if let Some(f) = &self.s.rules.resource.status.phase_entered_at {
            set_field(
                &mut draft.desired,
                f,
                Value::String(self.s.now_text.clone()),
            );
        }
    }

    /// Whether a create transition must wait rather than adopt its object: with attempts kept,
    /// an object being deleted is never taken as the new attempt.
    pub(super) fn must_not_adopt(&self) -> bool {
        self.s.rules.resource.status.attempt.is_some()
            && self.s.owned
            && self.s.obs.execution.as_ref().is_some_and(terminating)
    }

    /// Step 2 and 3 of a retry: while one waits, the decision is this and nothing else (true).
    pub(super) fn pending_retry(&mut self, draft: &mut Draft) -> Result<bool, Stop> {
        let fields = &self.s.rules.resource.status;
        let Some(field) = &fields.retry else {
            return Ok(false);
        };
        let Some(state) = draft.desired.get(field).filter(|v| v.is_object()).cloned() else {
            return Ok(false);
        };
        let now = self.s.now;
        let at = state
            .get("at")
            .and_then(Value::as_str)
            .and_then(crate::time::parse_secs)
            .unwrap_or(now);
        let previous = state.get("previous").and_then(Value::as_str).unwrap_or("");
        if previous != "keep"
            && self.s.owned
            && let Some(ex) = &self.s.obs.execution
        {
            if previous == "delete" && !terminating(ex) {
                // once: the state records that the delete was sent, so a cache that still
                // shows the object does not make the decision send it again
                draft.tail.push(self.s.delete_execution(ex));
                let mut state = state.clone();
                state["previous"] = json!("deleted");
                set_field(&mut draft.desired, field, state);
            }
            if now < at {
                draft.look_again_in(at - now);
            }
            return Ok(true);
        }
        if now < at {
            draft.look_again_in(at - now);
            return Ok(true);
        }
        let next = state
            .get("attempt")
            .and_then(Value::as_u64)
            .unwrap_or(self.s.attempt + 1);
        if let Some(f) = &fields.attempt {
            set_field(&mut draft.desired, f, Value::from(next));
        }
        remove_field(&mut draft.desired, field);
        if let Some(f) = &fields.execution {
            remove_field(&mut draft.desired, f);
        }
        self.entered_now(draft);
        draft.fresh_attempt = true;
        Ok(true)
    }

    /// A transition's `after` timer: whether it is due; if not, when to look again.
    pub(super) fn timer_due(
        &mut self,
        t: &TransitionRules,
        draft: &mut Draft,
    ) -> Result<bool, Stop> {
        let Some(after) = &t.after else {
            return Ok(true);
        };
        self.s.ensure(&t.when_deps)?;
        let Some(field) = &self.s.rules.resource.status.phase_entered_at else {
            return Ok(false);
        };
        let entered = draft
            .desired
            .get(field)
            .and_then(Value::as_str)
            .and_then(crate::time::parse_secs)
            .unwrap_or(self.s.now);
        let ctx = self.s.ctx(None, None);
        let due = entered + self.s.duration(after, &ctx)?;
        if self.s.now >= due {
            return Ok(true);
        }
        draft.look_again_in(due - self.s.now);
        Ok(false)
    }

    /// Step 1 of a retry: `t`'s guard holds; if its policy applies and attempts remain, the
    /// resource moves to the policy's phase to wait for the next attempt (true). Otherwise `t`
    /// is taken as written (false).
    pub(super) fn retry(&mut self, t: &TransitionRules, draft: &mut Draft) -> Result<bool, Stop> {
        let Some(r) = &t.retry else {
            return Ok(false);
        };
        let rules = self.s.rules;
        let fields = &rules.resource.status;
        let (Some(retry_field), Some(_)) = (&fields.retry, &fields.attempt) else {
            return Ok(false);
        };
        self.s.ensure(&r.deps)?;
        if let Some(w) = &r.when
            && !self.s.test(w, &r.deps)?
        {
            return Ok(false);
        }
        // the backoff counts from the time the status records for this step (whole seconds)
        let ctx = self.s.ctx(None, None);
        let fail = |message: String| {
            Stop::Fail(DecideError {
                category: Category::TemplateError,
                message: format!("retry of transition `{}`: {message}", t.name),
            })
        };
        let max = rules
            .templates
            .value(&r.max_attempts, &ctx)
            .map_err(template_error)?;
        let max = match &max {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|m| m.is_finite() && *m >= 1.0 && m.fract() == 0.0)
        .ok_or_else(|| {
            fail(format!(
                "maxAttempts is `{max}`, not a whole number of at least 1"
            ))
        })?;
        let n = self.s.attempt;
        if n as f64 >= max {
            return Ok(false);
        }
        let mut wait = match &r.initial {
            Some(i) => self.s.duration(i, &ctx)? * r.factor.powi((n - 1).min(1000) as i32),
            None => 0.0,
        };
        if let Some(m) = &r.max {
            wait = wait.min(self.s.duration(m, &ctx)?);
        }
        if !wait.is_finite() {
            return Err(fail(format!(
                "the backoff before attempt {} is not finite",
                n + 1
            )));
        }
        let to = rules
            .phases
            .get(r.to)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let transition = self.s.transition_value("retry", &to);
        self.s.ensure(&r.action.deps)?;
        let vars = self.s.vars(&r.action, &transition)?;
        self.s
            .apply_status(&r.action, &mut draft.desired, (&vars, &transition))?;
        set_field(
            &mut draft.desired,
            retry_field,
            json!({
                "attempt": n + 1,
                "at": crate::time::format_secs((self.s.now.floor() + wait).ceil()),
                "previous": if r.keep_previous { "keep" } else { "delete" },
            }),
        );
        set_field(
            &mut draft.desired,
            &rules.resource.status.phase,
            Value::String(to.clone()),
        );
        self.entered_now(draft);
        self.s.effects_of(
            &r.action,
            &transition,
            &format!("retry#{n}"),
            &mut draft.tail,
            Some(&vars),
        )?;
        draft.transition = Some("retry".into());
        self.s.phase_name = to;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::{Effect, Observation, decide};
    use crate::rules::{Rules, Sources};
    use serde_json::{Value, json};

    fn rules() -> Rules {
        let sources = Sources::from_text(
            "pipeline-retry.yaml",
            include_str!("../../examples/pipeline-retry.yaml")
                .replace("templates: pipeline-retry-templates\n", ""),
        )
        .with_template(
            "pipelinerun.yaml",
            include_str!("../../examples/pipeline-retry-templates/pipelinerun.yaml"),
        );
        Rules::compile(&sources, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn task(attempt: u64) -> Value {
        json!({
            "apiVersion": "example.com/v1", "kind": "PipelineTask",
            "metadata": {"name": "t", "namespace": "ci", "uid": "u-1",
                         "finalizers": ["pipelinetask.example.com/cleanup"]},
            "spec": {"pipeline": "build"},
            "status": {"phase": "Pending", "attempt": attempt,
                       "phaseEnteredAt": "2026-01-01T00:00:00Z"},
        })
    }

    fn run(attempt: u64, terminating: bool) -> Value {
        let mut run = json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {"name": format!("t-{attempt}"), "namespace": "ci", "uid": "r-1",
                         "labels": {"pipelinetask.example.com/name": "t",
                                    "pipelinetask.example.com/namespace": "ci"}},
        });
        if terminating {
            run["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        run
    }

    fn observe(attempt: u64, terminating: bool) -> Observation {
        Observation {
            resource: task(attempt),
            execution: Some(run(attempt, terminating)),
            ..Observation::default()
        }
    }

    fn audit_id(d: &crate::engine::Decision) -> String {
        d.effects
            .iter()
            .find_map(|e| match e {
                Effect::Audit { record } => record["event_id"].as_str().map(str::to_string),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no audit record: {:?}", d.effects))
    }

    #[test]
    fn each_attempt_has_audit_ids_of_its_own() {
        let rules = rules();
        let first = decide(&rules, &observe(1, false), 100.0);
        let again = decide(&rules, &observe(1, false), 200.0);
        let second = decide(&rules, &observe(2, false), 100.0);
        assert_eq!(first.transition.as_deref(), Some("started"));
        assert_eq!(second.transition.as_deref(), Some("started"));
        assert_eq!(audit_id(&first), audit_id(&again), "ids are stable");
        assert_ne!(audit_id(&first), audit_id(&second), "attempts share an id");
    }

    #[test]
    fn an_owned_object_being_deleted_is_not_adopted_as_the_attempt() {
        let rules = rules();
        let adopted = decide(&rules, &observe(2, false), 100.0);
        assert_eq!(adopted.transition.as_deref(), Some("started"));
        let waiting = decide(&rules, &observe(2, true), 100.0);
        assert_eq!(waiting.transition, None, "{:?}", waiting.effects);
        assert_eq!(waiting.phase, "Pending");
        assert!(
            !waiting
                .effects
                .iter()
                .any(|e| matches!(e, Effect::CreateExecution { .. })),
            "{:?}",
            waiting.effects
        );
    }

    #[test]
    fn the_execution_name_follows_the_attempt() {
        let rules = rules();
        for n in [1, 2, 7] {
            let key = crate::engine::execution_key(&rules, &task(n), 0.0).expect("a name");
            assert_eq!(key.name, format!("t-{n}"));
        }
    }
}
