//! Why a resource is where it is: `lifecycle explain`.
//!
//! [`explain`] evaluates, over the same [`Scope`] a decision reads, every guard of the phase the
//! resource is in (each test of each guard on its own, with what it read), the validation, the
//! values and the cooldown, and then takes the decision itself with [`decide`]: what is shown
//! as taken is what the engine does, by construction. Pure, like `decide`: the shell gathers
//! the observation (see [`related_requests_all`]) and formats the result.

use super::decide::validation;
use super::scope::{Need, Scope, Stop, phase_of, related_requests};
use super::{ActionError, Decision, ObjectKey, Observation, RelatedRequest, decide};
use crate::expr::{Env, Path, Pred, Root};
use crate::rules::model::ExecutionAction;
use crate::rules::{Deps, Rules};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// Everything `explain` shows about one resource.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The rules' revision.
    pub revision: String,
    /// The revision the resource's status records (the rules that last wrote it).
    pub recorded_revision: Option<String>,
    /// The revision these rules' `rollout` pins the resource to (the controller decides it by
    /// that revision while it is loaded), when it is not these rules.
    pub pinned_to: Option<String>,
    /// The phase the rules read the resource in.
    pub phase: String,
    /// The phase its status names, when that differs (a phase mapped by `renamedPhases`) or
    /// is unknown to the rules.
    pub recorded_phase: Option<String>,
    /// Whether the rules know the phase.
    pub phase_known: bool,
    /// Whether the phase is terminal.
    pub terminal: bool,
    /// Whether the resource is being deleted.
    pub deleting: bool,
    /// The execution object.
    pub execution: ExecutionView,
    /// The other named children, in the order of the rules, by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<(String, ExecutionView)>,
    /// The error of the last action on the execution object, as the rules see it.
    pub error: Option<ActionError>,
    /// The first validation rule that fails, when the phase validates (`null`: all pass).
    pub validation: Option<Value>,
    /// Whether the phase runs validation.
    pub validates: bool,
    /// The transitions of the phase, in the order they are tried.
    pub transitions: Vec<TransitionView>,
    /// Whether the phase has a `sync` block (it runs on every decision).
    pub sync: bool,
    /// The phase's poll interval, rendered.
    pub poll: Option<String>,
    /// The cooldown, in a terminal phase it applies to.
    pub cooldown: Option<CooldownView>,
    /// Every computed value.
    pub values: Vec<ValueView>,
    /// The decision the engine takes now.
    pub decision: DecisionView,
}

/// The execution object as observed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionView {
    /// Its identity (none when it cannot be rendered).
    pub key: Option<ObjectKey>,
    /// Why the identity could not be rendered.
    pub key_error: Option<String>,
    /// Whether it exists.
    pub exists: bool,
    /// Whether it carries this resource's owner labels.
    pub owned: bool,
}

/// One transition and its guard.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransitionView {
    /// Name.
    pub name: String,
    /// Target phase.
    pub to: String,
    /// Whether it creates the execution object first (`execution: create`).
    pub creates: bool,
    /// When its timer (`after`) lets it be considered.
    pub timer: Option<String>,
    /// Whether it has a retry policy.
    pub retry: bool,
    /// Its guard, test by test (none: always holds).
    pub guard: Option<Test>,
    /// Whether the guard holds (none when it could not be evaluated).
    pub holds: Option<bool>,
    /// Whether this is the transition the decision takes (or, for a create, acts on).
    pub chosen: bool,
    /// What happens with it, in words.
    pub note: String,
}

/// One test of a guard, with what it read and its value.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Test {
    /// `exists`, `equals`, `in`, `matches`, `elapsed`, `expr`, `all`, `any`, `not`.
    pub test: String,
    /// The path, or the expression's source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// What it is compared with (the value, values, regex or duration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub against: Option<Value>,
    /// What it read: path or variable → value (null: nothing there).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<(String, Value)>,
    /// Its value (none when it failed).
    pub holds: Option<bool>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The tests it combines.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub of: Vec<Test>,
}

/// The cooldown of a terminal phase.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CooldownView {
    /// The timestamp it counts from (none: not stamped yet; the decision stamps it now).
    pub since: Option<String>,
    /// The period, in seconds.
    pub period: Option<f64>,
    /// When it ends.
    pub due: Option<String>,
    /// Whether the release already happened.
    pub released: bool,
    /// Its guard, when it has one.
    pub guard: Option<Test>,
}

/// One computed value.
#[derive(Debug, Clone, Serialize)]
pub struct ValueView {
    /// Name.
    pub name: String,
    /// Its value (null when it failed).
    pub value: Value,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The decision, as `decide` takes it now.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionView {
    /// The phase after it.
    pub phase: String,
    /// The transition taken.
    pub transition: Option<String>,
    /// Its effects, in words, in order.
    pub effects: Vec<String>,
    /// Look again after this many seconds.
    pub requeue_after: Option<f64>,
    /// When that is.
    pub next_look: Option<String>,
    /// The rules error it reports.
    pub error: Option<String>,
    /// Related lists it still needs read.
    pub needs: Vec<String>,
    /// The decision itself.
    pub detail: Decision,
}

/// Every related list the rules can read, for the shell to fill an observation with before
/// [`explain`] (which reports values that need a list it lacks).
pub fn related_requests_all(
    rules: &Rules,
    execution: Option<&Value>,
    children: &serde_json::Map<String, Value>,
) -> Vec<RelatedRequest> {
    (0..rules.related.len())
        .map(|i| related_requests(rules, i, execution, children))
        .collect()
}

/// Explains the decision `decide(rules, obs, now)` takes.
pub fn explain(rules: &Rules, obs: &Observation, now: f64) -> Explanation {
    let decision = decide(rules, obs, now);
    crate::render::lend(|loan| {
        let mut s = Scope::new(rules, obs, now, loan);
        let recorded = |field: &Option<String>| {
            field.as_ref().and_then(|f| {
                obs.resource
                    .get("status")
                    .and_then(|st| st.get(f))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
        };
        let recorded_revision = recorded(&rules.resource.status.revision);
        let named_phase = recorded(&Some(rules.resource.status.phase.clone()));
        let phase_index = phase_of(rules, &obs.resource).ok();
        let recorded_phase = named_phase.filter(|p| *p != s.phase_name);
        let (key, key_error) = match super::execution_key(rules, &obs.resource, now) {
            Ok(k) => {
                s.object
                    .set(serde_json::to_value(&k).unwrap_or(Value::Null));
                (Some(k), None)
            }
            Err(e) => (None, Some(e.message)),
        };
        let execution = ExecutionView {
            key,
            key_error,
            exists: obs.execution.is_some(),
            owned: s.owned,
        };
        let children = rules
            .children
            .iter()
            .enumerate()
            .zip(super::child_keys(rules, &obs.resource, now))
            .map(|((i, c), key)| {
                let view = ExecutionView {
                    key_error: key.is_none().then(|| {
                        format!("the name or namespace of child {} does not render", c.name)
                    }),
                    key,
                    exists: s.child(i).is_some(),
                    owned: s.child_owned(i),
                };
                (c.name.clone(), view)
            })
            .collect();
        let phase = phase_index.map(|i| &rules.phases[i]);
        let values = values(&mut s);
        let validates = phase.is_some_and(|p| p.validate && !p.terminal);
        let validation_result = if validates {
            match validation(&mut s) {
                Ok(()) => None,
                Err(stop) => Some(stop_text(rules, stop)),
            }
        } else {
            None
        };
        let validation = if validates {
            match validation_result {
                Some(e) => Some(serde_json::json!({ "error": e })),
                None => Some(s.validation.json.clone()).filter(|v| !v.is_null()),
            }
        } else {
            None
        };
        let mut transitions = Vec::new();
        let mut cooldown = None;
        if let Some(p) = phase {
            if p.terminal {
                cooldown = cooldown_view(&mut s, phase_index.unwrap_or(0));
            } else {
                transitions = transition_views(&mut s, p, &decision);
            }
        }
        let poll = phase.and_then(|p| p.poll.as_ref()).and_then(|t| {
            rules
                .templates
                .text(t, &s.ctx(None, None))
                .ok()
                .filter(|x| !x.is_empty())
        });
        Explanation {
            revision: rules.revision.clone(),
            recorded_revision,
            pinned_to: super::rollout::pinned_revision(rules, &obs.resource).map(str::to_string),
            phase: s.phase_name.clone(),
            recorded_phase,
            phase_known: phase.is_some(),
            terminal: phase.is_some_and(|p| p.terminal),
            deleting: obs
                .resource
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|v| !v.is_null()),
            execution,
            children,
            error: obs.error.clone(),
            validation,
            validates,
            transitions,
            sync: phase.is_some_and(|p| p.sync.is_some()),
            poll,
            cooldown,
            values,
            decision: decision_view(decision, now),
        }
    })
}

fn stop_text(rules: &Rules, stop: Stop) -> String {
    match stop {
        Stop::Fail(e) => e.message,
        Stop::Needs(Need::Related(i)) => format!(
            "needs the related list `{}`, which was not read",
            rules.related.get(i).map_or("?", |r| r.name.as_str())
        ),
        Stop::Needs(Need::Lookup(i)) => format!(
            "needs the lookup `{}`, which was not found",
            rules.lookups.get(i).map_or("?", |l| l.name.as_str())
        ),
    }
}

fn values(s: &mut Scope<'_>) -> Vec<ValueView> {
    let rules = s.rules;
    let mut out = Vec::with_capacity(rules.values.len());
    for (i, v) in rules.values.iter().enumerate() {
        let deps = Deps {
            values: BTreeSet::from([i]),
            related: BTreeSet::new(),
            lookups: BTreeSet::new(),
        };
        match s.ensure(&deps) {
            Ok(()) => out.push(ValueView {
                name: v.name.clone(),
                value: s
                    .root(Root::Values)
                    .and_then(|m| m.get(&v.name))
                    .cloned()
                    .unwrap_or(Value::Null),
                error: None,
            }),
            Err(stop) => out.push(ValueView {
                name: v.name.clone(),
                value: Value::Null,
                error: Some(stop_text(rules, stop)),
            }),
        }
    }
    out
}

fn transition_views(
    s: &mut Scope<'_>,
    phase: &crate::rules::PhaseRules,
    decision: &Decision,
) -> Vec<TransitionView> {
    let rules = s.rules;
    let fields = &rules.resource.status;
    let status = s.obs.resource.get("status");
    let retry_pending = fields
        .retry
        .as_ref()
        .and_then(|f| status.and_then(|st| st.get(f)))
        .is_some_and(Value::is_object);
    // nothing is chosen when the decision fails, waits for related objects, deletes, or waits
    // for a retry's previous attempt and backoff
    let mut chosen_found = decision.error.is_some()
        || !decision.needs.is_empty()
        || decision.transition.as_deref() == Some("delete")
        || retry_pending;
    let creates_now = decision
        .effects
        .iter()
        .any(|e| matches!(e, super::Effect::CreateExecution { .. }));
    let mut out = Vec::new();
    for t in &phase.transitions {
        let creates = t.action.execution == Some(ExecutionAction::Create);
        let (guard, holds) = match &t.when {
            None => (None, Some(true)),
            Some(w) => match s.ensure(&t.when_deps) {
                Ok(()) => {
                    let test = test(s, w);
                    let holds = test.holds;
                    (Some(test), holds)
                }
                Err(stop) => {
                    let error = stop_text(rules, stop);
                    (Some(failed(error)), None)
                }
            },
        };
        // a timer: the transition is considered only once it is due
        let due = super::attempts::timer_deadline(s, t);
        let timer = due.as_ref().map(|d| match d {
            Ok(at) => crate::time::format_secs(*at),
            Err(e) => format!("cannot be evaluated: {e}"),
        });
        let waiting = match &due {
            Some(Ok(at)) => s.now < *at,
            Some(Err(_)) => true,
            None => false,
        };
        let to = rules
            .phases
            .get(t.to)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let mut chosen = false;
        let note = match holds {
            _ if retry_pending => "a retry is pending: the decision waits for it".to_string(),
            _ if waiting => match &due {
                Some(Ok(at)) => format!(
                    "its timer runs out at {} (in {}): not considered before",
                    crate::time::format_secs(*at),
                    crate::time::go_duration(*at - s.now)
                ),
                _ => format!("its timer {}", timer.clone().unwrap_or_default()),
            },
            None => "its guard could not be evaluated".to_string(),
            Some(false) => "its guard does not hold".to_string(),
            Some(true) if chosen_found => "holds, but an earlier transition comes first".into(),
            Some(true) if creates && !s.owned && s.obs.execution.is_some() => {
                "holds, but the execution object exists and is not this resource's: skipped".into()
            }
            Some(true) if creates && !s.owned && s.obs.error.is_some() => {
                "holds, but the create failed (`error` is set): skipped".into()
            }
            Some(true) => {
                chosen_found = true;
                chosen = true;
                match decision.transition.as_deref() {
                    Some(name) if name == t.name => format!("holds: taken now, to {to}"),
                    Some("retry") if t.retry.is_some() => {
                        "holds: its retry policy makes another attempt instead".into()
                    }
                    _ if creates && creates_now => format!(
                        "holds: the {} is created now; the transition is taken once it exists",
                        rules.execution.kind
                    ),
                    _ if creates => {
                        "holds: waits until the previous attempt's object is gone".into()
                    }
                    _ => "holds".into(),
                }
            }
        };
        out.push(TransitionView {
            name: t.name.clone(),
            to,
            creates,
            timer,
            retry: t.retry.is_some(),
            guard,
            holds,
            chosen,
            note,
        });
    }
    out
}

fn cooldown_view(s: &mut Scope<'_>, phase_index: usize) -> Option<CooldownView> {
    let rules = s.rules;
    let c = rules.cooldown.as_ref()?;
    if !c.phases.contains(&phase_index) {
        return None;
    }
    let status = s.obs.resource.get("status");
    let since = status
        .and_then(|st| st.get(&c.since))
        .and_then(Value::as_str)
        .map(str::to_string);
    let released = status
        .and_then(|st| st.get(&rules.resource.status.conditions))
        .and_then(Value::as_array)
        .is_some_and(|l| {
            l.iter().any(|x| {
                x.get("type").and_then(Value::as_str) == Some(c.marker.as_str())
                    && x.get("status").and_then(Value::as_str) == Some("True")
            })
        });
    let guard = c.when.as_ref().and_then(|w| match s.ensure(&c.deps) {
        Ok(()) => Some(test(s, w)),
        Err(_) => None,
    });
    let period = s.ensure(&c.deps).ok().and_then(|()| {
        let ctx = s.ctx(None, None);
        s.duration(&c.period, &ctx).ok()
    });
    let start = since
        .as_deref()
        .and_then(crate::time::parse_secs)
        .unwrap_or(s.now);
    Some(CooldownView {
        due: period.map(|p| crate::time::format_secs(start + p)),
        since,
        period,
        released,
        guard,
    })
}

fn decision_view(d: Decision, now: f64) -> DecisionView {
    DecisionView {
        phase: d.phase.clone(),
        transition: d.transition.clone(),
        effects: d.effects.iter().map(super::drive::describe).collect(),
        requeue_after: d.requeue_after,
        next_look: d.requeue_after.map(|r| crate::time::format_secs(now + r)),
        error: d.error.as_ref().map(ToString::to_string),
        needs: d.needs.iter().map(|n| n.name.clone()).collect(),
        detail: d,
    }
}

/// Evaluates one test of a guard and each test it combines.
fn test(s: &Scope<'_>, p: &Pred) -> Test {
    let (holds, error) = match p.eval(s, None) {
        Ok(h) => (Some(h), None),
        Err(e) => (None, Some(e.0)),
    };
    let leaf = |name: &str, path: &Path, against: Option<Value>| Test {
        test: name.into(),
        subject: Some(path.source().to_string()),
        against,
        read: vec![(path.source().to_string(), read(s, path))],
        holds,
        error: error.clone(),
        of: Vec::new(),
    };
    let combined = |name: &str, of: Vec<Test>| Test {
        test: name.into(),
        subject: None,
        against: None,
        read: Vec::new(),
        holds,
        error: error.clone(),
        of,
    };
    match p {
        Pred::Exists(path) => leaf("exists", path, None),
        Pred::Equals(path, v) => leaf("equals", path, Some(v.clone())),
        Pred::In(path, vs) => leaf("in", path, Some(Value::Array(vs.clone()))),
        Pred::Matches(path, re) => leaf("matches", path, Some(Value::String(re.to_string()))),
        Pred::Elapsed { since, at_least } => {
            let d = s.duration_secs(*at_least, None).ok();
            let mut t = leaf(
                "elapsed",
                since,
                d.map(|d| Value::from(crate::time::go_duration(d))),
            );
            t.read
                .push(("now".into(), Value::String(s.now_text.clone())));
            t
        }
        Pred::Expr(id) => {
            let templates = &s.rules.templates;
            Test {
                test: "expr".into(),
                subject: templates.as_written(*id),
                against: None,
                read: templates
                    .variables(*id)
                    .into_iter()
                    .filter_map(|v| variable(s, &v).map(|x| (v, x)))
                    .collect(),
                holds,
                error,
                of: Vec::new(),
            }
        }
        Pred::All(ps) => combined("all", ps.iter().map(|q| test(s, q)).collect()),
        Pred::Any(ps) => combined("any", ps.iter().map(|q| test(s, q)).collect()),
        Pred::Not(q) => combined("not", vec![test(s, q)]),
    }
}

/// A guard that could not be evaluated.
fn failed(error: String) -> Test {
    Test {
        test: "guard".into(),
        subject: None,
        against: None,
        read: Vec::new(),
        holds: None,
        error: Some(error),
        of: Vec::new(),
    }
}

/// What a path selects first (null when nothing).
fn read(s: &Scope<'_>, path: &Path) -> Value {
    path.root()
        .and_then(|r| s.root(r))
        .and_then(|doc| path.first(doc))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The value of a template variable (`values.reason`, `resource.status.phase`), when it names
/// something the scope holds.
fn variable(s: &Scope<'_>, dotted: &str) -> Option<Value> {
    let mut parts = dotted.split('.');
    let root = Root::from_name(parts.next()?)?;
    let mut v = s.root(root)?;
    let empty = Value::Object(Map::new());
    for part in parts {
        v = match v {
            Value::Object(m) => m.get(part).unwrap_or(&Value::Null),
            Value::Null => return Some(Value::Null),
            _ => &empty,
        };
    }
    Some(v.clone())
}
