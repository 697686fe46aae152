//! Attempts and timers on transitions: `after` (a timer relative to entering the phase) and
//! `retry` (another attempt instead of the transition, with backoff, until attempts run out).
//!
//! Both rely on status fields the engine maintains only when the rules declare them
//! (`resource.status.phaseEnteredAt`, `attempt`, `retry`); [`Compiler::check_attempts`] reports
//! a rules file that uses them without the field, at the place that uses it.

use crate::render::Tmpl;
use crate::rules::Rules;
use crate::rules::compiled::{Deps, RetryRules};
use crate::rules::compiler::{Compiler, Scope};
use crate::rules::locate::DocPath;
use crate::rules::model::{ExecutionAction, PreviousObject, Retry, RulesFile};
use crate::rules::sections::actions::ActionParts;
use crate::rules::suggest::did_you_mean;
use serde_json::Value;

impl Compiler<'_> {
    /// A transition's `after` timer: a duration template.
    pub(crate) fn compile_after(&mut self, at: &DocPath, after: &str) -> Tmpl {
        self.duration_tmpl(&at.key("after"), after, Scope::Plain)
    }

    /// A transition's retry policy (`at` is the transition).
    pub(crate) fn compile_retry(&mut self, at: &DocPath, r: &Retry, raw: &RulesFile) -> RetryRules {
        let rat = at.key("retry");
        let phase_names: Vec<String> = raw.phases.keys().cloned().collect();
        let when = r
            .filter
            .as_ref()
            .and_then(|w| self.pred(&rat.key("when"), w, Scope::Plain));
        let max_attempts = match &r.max_attempts {
            Value::String(s) => self.tmpl(&rat.key("maxAttempts"), s, Scope::Plain, None),
            Value::Number(n) if n.as_u64().is_some_and(|n| n >= 1) => {
                Tmpl::Literal(r.max_attempts.clone())
            }
            other => {
                self.problem(
                    &rat.key("maxAttempts"),
                    format!("`maxAttempts` must be a whole number of at least 1 (the first attempt included) or a template such as `{{{{ settings.maxAttempts }}}}`, not `{other}`"),
                );
                Tmpl::Literal(Value::from(1))
            }
        };
        let (initial, factor, max) = match &r.backoff {
            None => (None, 1.0, None),
            Some(b) => {
                let bat = rat.key("backoff");
                let factor = b.factor.unwrap_or(2.0);
                if !(factor.is_finite() && factor >= 1.0) {
                    self.problem(
                        &bat.key("factor"),
                        format!("`factor` must be a number of at least 1, not {factor}"),
                    );
                }
                (
                    Some(self.duration_tmpl(&bat.key("initial"), &b.initial, Scope::Plain)),
                    factor,
                    b.max
                        .as_ref()
                        .map(|m| self.duration_tmpl(&bat.key("max"), m, Scope::Plain)),
                )
            }
        };
        let to = match &r.to {
            None => raw
                .phases
                .iter()
                .position(|(_, p)| p.initial)
                .unwrap_or(usize::MAX),
            Some(name) => match raw.phases.get_index_of(name) {
                Some(i) if raw.phases[i].terminal => {
                    self.problem(
                        &rat.key("to"),
                        format!("`{name}` is a terminal phase: the next attempt must start in a phase that can create the execution object"),
                    );
                    i
                }
                Some(i) => i,
                None => {
                    self.problem(
                        &rat.key("to"),
                        format!(
                            "unknown phase `{name}`{} (phases: {})",
                            did_you_mean(name, &phase_names),
                            phase_names.join(", ")
                        ),
                    );
                    usize::MAX
                }
            },
        };
        let empty = Default::default();
        let on_retry = r.on_retry.as_ref().unwrap_or(&empty);
        let action = self.action(
            &rat.key("onRetry"),
            ActionParts::of_action(on_retry),
            &raw.actions,
            &raw.metrics,
            true,
        );
        if action.execution.is_some() {
            let place = if on_retry.execution.is_some() {
                rat.key("onRetry").key("execution")
            } else {
                rat.key("onRetry").key("use")
            };
            self.problem(
                &place,
                "`onRetry` cannot act on the execution object: `previous` says what happens to it (delete, the default, or keep)",
            );
        }
        RetryRules {
            when,
            max_attempts,
            initial,
            factor,
            max,
            keep_previous: r.previous == PreviousObject::Keep,
            to,
            deps: Deps::default(),
            action,
        }
    }

    /// Timers and retries need the status fields that record them; `previous: keep` needs a
    /// name that differs from one attempt to the next.
    pub(crate) fn check_attempts(&mut self, rules: &Rules) {
        let fields = &rules.resource.status;
        let name_reads_attempt = match &rules.execution.name {
            Tmpl::Text(id) | Tmpl::Expr(id) => rules
                .templates
                .variables(*id)
                .iter()
                .any(|v| v == "attempt" || v.starts_with("attempt.")),
            Tmpl::Literal(_) => false,
        };
        for (pname, p) in &rules.raw.phases {
            for (i, t) in p.transitions.iter().enumerate() {
                let at = DocPath::root()
                    .key("phases")
                    .key(pname)
                    .key("transitions")
                    .index(i);
                if t.after.is_some() && fields.phase_entered_at.is_none() {
                    self.problem(
                        &at.key("after"),
                        "`after` counts from when the resource entered its phase, which the engine records only in a declared status field: add `phaseEnteredAt: phaseEnteredAt` (any field name) under `resource.status`",
                    );
                }
                let Some(r) = &t.retry else { continue };
                let rat = at.key("retry");
                let mut missing = Vec::new();
                if fields.attempt.is_none() {
                    missing.push("`attempt: attempt` (the attempt number)");
                }
                if fields.retry.is_none() {
                    missing.push("`retry: retry` (the retry waiting for its time)");
                }
                if !missing.is_empty() {
                    self.problem(
                        &rat,
                        format!(
                            "a retry needs status fields the engine maintains: add {} (any field names) under `resource.status`",
                            missing.join(" and ")
                        ),
                    );
                }
                if r.previous == PreviousObject::Keep && !name_reads_attempt {
                    self.problem(
                        &rat.key("previous"),
                        "`previous: keep` leaves the previous attempt's object in place, so the next attempt needs another name: make `execution.name` read `attempt` (e.g. `run-{{ resource.metadata.name }}-{{ attempt }}`), or use `previous: delete`",
                    );
                }
                if t.execution == Some(ExecutionAction::Create) {
                    self.problem(
                        &rat,
                        "a transition that creates the execution object cannot retry: put `retry` on the transition that sees the attempt fail",
                    );
                }
            }
        }
    }
}
