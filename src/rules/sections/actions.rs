//! `actions`, and every block of effects that uses them (transitions, `sync`, a cooldown's
//! release, `onDelete`): variables, the execution object action, status, conditions, Events,
//! audit records and metric updates, with shared blocks merged in.
//!
//! Metric updates are checked against the declared metrics here, where they happen.

use crate::render::Tmpl;
use crate::rules::compiled::{ActionRules, ChildRef, ConditionRules, EventRules, MetricRules};
use crate::rules::compiler::{Compiler, Scope, list_or_none};
use crate::rules::locate::DocPath;
use crate::rules::model::{
    Action, ConditionSpec, EventSpec, ExecutionAction, MetricKind, MetricSpec, MetricUpdate,
    Transition,
};
use crate::rules::suggest::did_you_mean;
use indexmap::IndexMap;
use serde_json::Value;
use std::collections::BTreeSet;

impl Compiler<'_> {
    /// A block of effects: the shared blocks it `use`s first, then its own. Where the block runs
    /// on every observation (`allow_effects` false) only status and conditions are allowed.
    pub(crate) fn action(
        &mut self,
        at: &DocPath,
        own: ActionParts<'_>,
        actions: &IndexMap<String, Action>,
        metrics: &IndexMap<String, MetricSpec>,
        allow_effects: bool,
    ) -> ActionRules {
        let mut out = ActionRules::default();
        let var_names: BTreeSet<String> = own.vars.keys().cloned().collect();
        let mut earlier = BTreeSet::new();
        for (k, v) in own.vars {
            // a variable may read the ones declared before it
            let t = self.value_tmpl(&at.key("vars").key(k), v, Scope::Action, Some(&earlier));
            out.vars.push((k.clone(), t));
            earlier.insert(k.clone());
        }
        // shared blocks first, then this block's own effects
        for (i, name) in own.uses.iter().enumerate() {
            let Some(shared) = actions.get(name) else {
                if !self.broken.contains(&format!("actions.{name}")) {
                    let known: Vec<_> = actions.keys().cloned().collect();
                    self.problem(
                        &at.key("use").index(i),
                        format!(
                            "unknown action `{name}`{} (defined: {})",
                            did_you_mean(name, &known),
                            list_or_none(&known)
                        ),
                    );
                }
                continue;
            };
            if !shared.uses.is_empty() {
                self.problem(
                    &DocPath::root().key("actions").key(name).key("use"),
                    "shared actions cannot `use` other actions",
                );
            }
            if !shared.vars.is_empty() {
                self.problem(&DocPath::root().key("actions").key(name).key("vars"), "shared actions cannot declare `vars`; declare them on the transitions that use this action");
            }
            let shared_at = DocPath::root().key("actions").key(name);
            self.action_body(
                &shared_at,
                ActionParts::of_action(shared),
                &var_names,
                metrics,
                &mut out,
            );
        }
        self.action_body(at, own, &var_names, metrics, &mut out);
        if !allow_effects {
            let mut bad = Vec::new();
            if out.execution.is_some() {
                bad.push("execution");
            }
            if !out.children.is_empty() {
                bad.push("children");
            }
            if !out.patch.is_empty() {
                bad.push("patch");
            }
            if !out.events.is_empty() {
                bad.push("events");
            }
            if !out.audit.is_empty() {
                bad.push("audit");
            }
            if !out.metrics.is_empty() {
                bad.push("metrics");
            }
            if !bad.is_empty() {
                self.problem(at, format!("{} would repeat on every observation here; only `status` and `conditions` are allowed (move them to a transition)", bad.join(", ")));
            }
        }
        out
    }

    /// Adds one block's effects to `out`.
    fn action_body(
        &mut self,
        at: &DocPath,
        part: ActionParts<'_>,
        vars: &BTreeSet<String>,
        metrics: &IndexMap<String, MetricSpec>,
        out: &mut ActionRules,
    ) {
        if let Some(x) = part.execution {
            if out.execution.is_some_and(|e| e != x) {
                self.problem(&at.key("execution"), "conflicting `execution` actions");
            }
            out.execution = Some(x);
        }
        for (name, &x) in part.children {
            let cat = at.key("children").key(name);
            match self.child_ref(&cat, name, true) {
                // the lock's action is the `execution` action
                Some(ChildRef::Lock) => {
                    if out.execution.is_some_and(|e| e != x) {
                        self.problem(&cat, "conflicting actions on the lock child");
                    }
                    out.execution = Some(x);
                    out.lock_at.get_or_insert(out.children.len());
                }
                Some(ChildRef::Child(i)) => {
                    if out.children.iter().any(|&(j, y)| j == i && y != x) {
                        self.problem(&cat, format!("conflicting actions on child `{name}`"));
                    }
                    out.children.retain(|&(j, _)| j != i);
                    out.children.push((i, x));
                }
                None => {}
            }
        }
        for (name, p) in part.patch {
            let pat = at.key("patch").key(name);
            let Some(target) = self.child_ref(&pat, name, true) else {
                continue;
            };
            if !p.is_object() {
                self.problem(
                    &pat,
                    "a patch must be a mapping (a JSON merge patch of the object)",
                );
            } else {
                for field in [
                    "name",
                    "namespace",
                    "generateName",
                    "ownerReferences",
                    "uid",
                ] {
                    if p.pointer(&format!("/metadata/{field}")).is_some() {
                        self.problem(
                            &pat.key("metadata").key(field),
                            format!("a patch cannot change metadata.{field}: it is the object's identity or ownership"),
                        );
                    }
                }
                let t = self.tree(&pat, p, Scope::Action, Some(vars));
                if matches!(target, ChildRef::Lock) {
                    self.note_patch_reads(&t);
                }
                out.patch.push((target, t));
            }
        }
        if let Some(s) = part.status {
            if !s.is_object() {
                self.problem(
                    &at.key("status"),
                    "`status` must be a mapping of field names to values",
                );
            } else {
                let t = self.tree(&at.key("status"), s, Scope::Action, Some(vars));
                out.status.push(t);
            }
        }
        for (i, c) in part.conditions.iter().enumerate() {
            let cat = at.key("conditions").index(i);
            let cond = ConditionRules {
                kind: c.kind.clone(),
                status: self.tmpl(&cat.key("status"), &c.status, Scope::Action, Some(vars)),
                reason: self.tmpl(&cat.key("reason"), &c.reason, Scope::Action, Some(vars)),
                message: self.tmpl(&cat.key("message"), &c.message, Scope::Action, Some(vars)),
                when: c
                    .when
                    .as_ref()
                    .and_then(|w| self.pred(&cat.key("when"), w, Scope::Plain)),
            };
            if let Tmpl::Literal(Value::String(s)) = &cond.status
                && !["True", "False", "Unknown"].contains(&s.as_str())
            {
                self.problem(
                    &cat.key("status"),
                    format!("condition status must be True, False or Unknown, not `{s}`"),
                );
            }
            out.conditions.push(cond);
        }
        for (i, e) in part.events.iter().enumerate() {
            let eat = at.key("events").index(i);
            out.events.push(EventRules {
                kind: e.kind,
                reason: e.reason.clone(),
                message: self.tmpl(&eat.key("message"), &e.message, Scope::Action, Some(vars)),
                action: e.action.clone().unwrap_or_else(|| e.reason.clone()),
            });
        }
        if let Some(a) = part.audit {
            if !a.is_object() {
                self.problem(
                    &at.key("audit"),
                    "`audit` must be a mapping of record fields",
                );
            } else {
                let t = self.tree(&at.key("audit"), a, Scope::Action, Some(vars));
                out.audit.push(t);
            }
        }
        for (i, m) in part.metrics.iter().enumerate() {
            let mat = at.key("metrics").index(i);
            match metrics.get(&m.name) {
                None => {
                    if !self.broken.contains(&format!("metrics.{}", m.name)) {
                        let known: Vec<_> = metrics.keys().cloned().collect();
                        self.problem(
                            &mat.key("name"),
                            format!(
                                "unknown metric `{}` (declared: {})",
                                m.name,
                                list_or_none(&known)
                            ),
                        );
                    }
                }
                Some(spec) => {
                    let given: BTreeSet<_> = m.labels.keys().cloned().collect();
                    let declared: BTreeSet<_> = spec.labels.iter().cloned().collect();
                    if given != declared {
                        self.problem(
                            &mat.key("labels"),
                            format!(
                                "metric `{}` has labels [{}], this update gives [{}]",
                                m.name,
                                spec.labels.join(", "),
                                given.into_iter().collect::<Vec<_>>().join(", ")
                            ),
                        );
                    }
                    if spec.kind != MetricKind::Counter && m.value.is_none() {
                        self.problem(
                            &mat,
                            format!(
                                "metric `{}` is a {:?}: give the `value` to record",
                                m.name, spec.kind
                            )
                            .to_lowercase(),
                        );
                    }
                }
            }
            let labels = m
                .labels
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        self.tmpl(&mat.key("labels").key(k), v, Scope::Action, Some(vars)),
                    )
                })
                .collect();
            let value = m
                .value
                .as_ref()
                .map(|v| self.tmpl(&mat.key("value"), v, Scope::Action, Some(vars)));
            out.metrics.push(MetricRules {
                name: m.name.clone(),
                labels,
                value,
            });
        }
    }
}

/// A transition's or action's effect fields, seen the same way.
pub(crate) struct ActionParts<'a> {
    vars: &'a IndexMap<String, Value>,
    uses: &'a [String],
    execution: Option<ExecutionAction>,
    children: &'a IndexMap<String, ExecutionAction>,
    patch: &'a IndexMap<String, Value>,
    status: Option<&'a Value>,
    conditions: &'a [ConditionSpec],
    events: &'a [EventSpec],
    audit: Option<&'a Value>,
    metrics: &'a [MetricUpdate],
}

impl<'a> ActionParts<'a> {
    /// The parts of a shared or phase action.
    pub(crate) fn of_action(a: &'a Action) -> Self {
        ActionParts {
            vars: &a.vars,
            uses: &a.uses,
            execution: a.execution,
            children: &a.children,
            patch: &a.patch,
            status: a.status.as_ref(),
            conditions: &a.conditions,
            events: &a.events,
            audit: a.audit.as_ref(),
            metrics: &a.metrics,
        }
    }
    /// The parts of a transition.
    pub(crate) fn of_transition(t: &'a Transition) -> Self {
        ActionParts {
            vars: &t.vars,
            uses: &t.uses,
            execution: t.execution,
            children: &t.children,
            patch: &t.patch,
            status: t.status.as_ref(),
            conditions: &t.conditions,
            events: &t.events,
            audit: t.audit.as_ref(),
            metrics: &t.metrics,
        }
    }
}
