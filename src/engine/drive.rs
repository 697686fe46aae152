//! The one loop: observe, decide, carry out; again until nothing is left to do.
//!
//! Every world runs a resource through [`drive`]: the controller (the Kubernetes API), and the
//! simulated world behind `simulate`, `render` and rule-file scenarios. The rules about rounds,
//! errors of actions, related objects and settling live here once, so a simulation fails exactly
//! where the controller would, by construction. A world only reads objects and carries out one
//! effect at a time, saying how it went ([`Outcome`]).
//!
//! Why a trait with `async fn` rather than a sans-IO step machine: the loop stays a loop that
//! reads top to bottom, and no world needs a pump of its own (a step machine hands every world a
//! loop that feeds answers back in: a second copy of the control flow, the thing this module
//! exists to remove). The engine needs no async runtime for it: `drive` only awaits the world's
//! own futures. The controller awaits it on its runtime; the simulated world never waits, so
//! [`run_ready`] polls its future once, to completion, with nothing but the standard library.
//! Worlds are concrete types, so whether the loop's future is `Send` follows from the world's
//! methods (the controller's are), which is why the `async_fn_in_trait` lint is allowed here.

use super::{
    ActionError, Decision, Effect, LookupRequest, ObjectKey, Observation, child_keys, decide,
    execution_key,
};
use crate::rules::Rules;
use serde_json::{Map, Value, json};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Most decisions (rounds of decide and carry out) one reconcile may take. A resource that
/// still has effects after this many does not settle: a transition or write repeats.
pub const MAX_DECISIONS: usize = 16;

/// Most times one decision may ask for related objects before the rules are declared unsettled
/// (each request names every list the observation lacks, so one is enough for sound rules).
pub const MAX_NEEDS: usize = 4;

/// What carrying out one effect led to.
#[derive(Debug)]
pub enum Outcome<E> {
    /// Done; go on with the next effect.
    Done,
    /// The API server answered an action on the execution object (create, delete) with this
    /// error; [`drive`] decides what follows, the same for every world.
    Refused(ActionError),
    /// The resource changed since it was read (a write lost a conflict): decide again on what
    /// is there now.
    Stale,
    /// Give up this reconcile; the world retries it later.
    Backoff(E),
    /// The resource is gone.
    Gone,
}

/// A place resources live in: the cluster, or a simulated one.
#[allow(async_fn_in_trait)]
pub trait World {
    /// Why this world gives up a reconcile (to retry it later).
    type Error;

    /// The time of the next decision, in seconds since the epoch.
    fn now(&self) -> f64;

    /// The governed resource as last seen or written (none once it is gone).
    fn resource(&self) -> Option<&Value>;

    /// Reads the execution object (none when it does not exist).
    async fn execution(&mut self, key: &ObjectKey) -> Result<Option<Value>, Self::Error>;

    /// Reads a related object (none when it does not exist).
    async fn related(&mut self, key: &ObjectKey) -> Result<Option<Value>, Self::Error>;

    /// Finds the objects a lookup asks for (see [`super::lookup_matches`]); the engine filters,
    /// sorts and selects among them.
    async fn lookup(&mut self, request: &LookupRequest) -> Result<Vec<Value>, Self::Error>;

    /// Carries out one effect.
    async fn carry_out(&mut self, effect: &Effect) -> Outcome<Self::Error>;

    /// Hears of each decision before its effects are carried out (logs, timelines).
    fn decided(&mut self, _observation: &Observation, _decision: &Decision) {}

    /// Runs one decision; a world may time it (the engine has no clock).
    fn timed(&mut self, decide: impl FnOnce() -> Decision) -> Decision {
        decide()
    }
}

/// Why a reconcile ended without settling.
#[derive(Debug, thiserror::Error)]
pub enum DriveError<E> {
    /// The world gave up (a read or write failed); retry later.
    #[error(transparent)]
    Backoff(E),
    /// The API server refused an action in a way the rules do not handle (a transient failure,
    /// or a failed delete); retry later.
    #[error("{effect} failed: {} {}: {}", .error.code, .error.reason, .error.message)]
    Refused {
        /// The effect, in words.
        effect: String,
        /// The API server's answer.
        error: Box<ActionError>,
    },
    /// The rules did not settle.
    #[error(transparent)]
    Unsettled(Unsettled),
}

/// The rules kept changing something, or kept asking for related objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Unsettled {
    /// What repeated, naming the effect and the phase.
    pub message: String,
}

impl Unsettled {
    /// Stable category for metric labels and logs.
    pub const CATEGORY: &'static str = "Unsettled";
}

/// Runs one reconcile of the world's resource: decide, carry out, decide again, until a decision
/// leaves nothing to do. Returns when to look again (seconds; none: only on a change).
///
/// The rules, the same for every world:
/// - a decision that needs related objects or lookups gets them read, and is made again (at most
///   [`MAX_NEEDS`] times);
/// - effects are carried out in order; the first that does not finish ends the round;
/// - a created execution object ends the round: the next decision sees it;
/// - a refused create is shown to the next decision as `error`, except `AlreadyExists`, where the
///   next decision sees the object instead (ours, or another's), or the error if it vanished;
///   a transient refusal, and any refused delete but `NotFound` and `Conflict` (gone already, or
///   not ours), give up the reconcile;
/// - a decision that reports a rules error is carried out once, then the reconcile ends;
/// - more than [`MAX_DECISIONS`] decisions is an [`Unsettled`] error naming what repeated.
pub async fn drive<W: World>(
    rules: &Rules,
    world: &mut W,
) -> Result<Option<f64>, DriveError<W::Error>> {
    let mut error: Option<ActionError> = None;
    let mut last: Option<Decision> = None;
    let mut before_last: Option<Decision> = None;
    for _ in 0..MAX_DECISIONS {
        let Some(resource) = world.resource().cloned() else {
            return Ok(None);
        };
        let now = world.now();
        let execution = match execution_key(rules, &resource, now) {
            Ok(key) => world.execution(&key).await.map_err(DriveError::Backoff)?,
            Err(_) => None,
        };
        let mut children = Map::new();
        for (c, key) in rules.children.iter().zip(child_keys(rules, &resource, now)) {
            let object = match key {
                Some(key) => world.execution(&key).await.map_err(DriveError::Backoff)?,
                None => None,
            };
            children.insert(c.name.clone(), object.unwrap_or(Value::Null));
        }
        let there = |e: &ActionError| match &e.child {
            None => execution.is_some(),
            Some(c) => children.get(c).is_some_and(|o| !o.is_null()),
        };
        if error
            .as_ref()
            .is_some_and(|e| already_exists(e) && there(e))
        {
            // the object is there after all: the decision adopts it or sees the race
            error = None;
        }
        let mut observation = Observation {
            resource,
            execution,
            children,
            related: Map::new(),
            error: error.take(),
            lookups: Map::new(),
        };
        let decision = decide_with_related(rules, world, &mut observation, now).await?;
        world.decided(&observation, &decision);
        if decision.effects.is_empty() {
            return Ok(decision.requeue_after);
        }
        for effect in &decision.effects {
            match world.carry_out(effect).await {
                Outcome::Done
                    if matches!(
                        effect,
                        Effect::CreateExecution { .. } | Effect::CreateChild { .. }
                    ) =>
                {
                    break;
                }
                Outcome::Done => {}
                Outcome::Refused(mut e) => match refused(&e, effect) {
                    Refusal::Ignore => {}
                    Refusal::Observe => {
                        if let Effect::CreateChild { child, .. } = effect {
                            e.child = Some(child.clone());
                        }
                        error = Some(e);
                        break;
                    }
                    Refusal::GiveUp => {
                        return Err(DriveError::Refused {
                            effect: describe(effect),
                            error: Box::new(e),
                        });
                    }
                },
                Outcome::Stale => break,
                Outcome::Backoff(e) => return Err(DriveError::Backoff(e)),
                Outcome::Gone => return Ok(None),
            }
        }
        if decision.error.is_some() {
            return Ok(decision.requeue_after);
        }
        before_last = last.replace(decision);
    }
    Err(DriveError::Unsettled(unsettled(
        last.as_ref(),
        before_last.as_ref(),
    )))
}

/// Decides, reading the related objects and finding the lookups the decision asks for first.
async fn decide_with_related<W: World>(
    rules: &Rules,
    world: &mut W,
    observation: &mut Observation,
    now: f64,
) -> Result<Decision, DriveError<W::Error>> {
    let mut decision = world.timed(|| decide(rules, observation, now));
    for _ in 0..MAX_NEEDS {
        if decision.needs.is_empty() && decision.lookups.is_empty() {
            return Ok(decision);
        }
        for request in &decision.lookups {
            let found = world.lookup(request).await.map_err(DriveError::Backoff)?;
            observation
                .lookups
                .insert(request.name.clone(), Value::Array(found));
        }
        for request in &decision.needs {
            let mut list = Vec::with_capacity(request.entries.len());
            for (reference, key) in &request.entries {
                let object = match key {
                    Some(k) => world.related(k).await.map_err(DriveError::Backoff)?,
                    None => None,
                };
                list.push(json!({"ref": reference, "object": object}));
            }
            observation
                .related
                .insert(request.name.clone(), Value::Array(list));
        }
        decision = world.timed(|| decide(rules, observation, now));
    }
    if decision.needs.is_empty() && decision.lookups.is_empty() {
        return Ok(decision);
    }
    let names: Vec<&str> = (decision.needs.iter().map(|n| n.name.as_str()))
        .chain(decision.lookups.iter().map(|l| l.name.as_str()))
        .collect();
    Err(DriveError::Unsettled(Unsettled {
        message: format!(
            "the rules keep asking for related objects or lookups ({}) after {MAX_NEEDS} reads, in phase {}",
            names.join(", "),
            decision.phase
        ),
    }))
}

/// What a refused action leads to.
enum Refusal {
    /// Decide again with the error observed.
    Observe,
    /// As good as done: go on.
    Ignore,
    /// Give up this reconcile.
    GiveUp,
}

fn refused(e: &ActionError, effect: &Effect) -> Refusal {
    match effect {
        // gone already, or replaced by another object of the same name: not ours
        Effect::DeleteExecution { .. } | Effect::DeleteChild { .. }
            if e.code == 404 || e.code == 409 =>
        {
            Refusal::Ignore
        }
        // gone already: nothing left to patch
        Effect::PatchExecution { .. } | Effect::PatchChild { .. } if e.code == 404 => {
            Refusal::Ignore
        }
        Effect::CreateExecution { .. } | Effect::CreateChild { .. } if already_exists(e) => {
            Refusal::Observe
        }
        Effect::CreateExecution { .. } | Effect::CreateChild { .. }
            if !super::is_transient(e.code) =>
        {
            Refusal::Observe
        }
        _ => Refusal::GiveUp,
    }
}

fn already_exists(e: &ActionError) -> bool {
    e.action == "create" && e.code == 409
}

/// The error for a resource that did not settle: the effect that repeats, preferring one the
/// last two decisions share.
fn unsettled(last: Option<&Decision>, before: Option<&Decision>) -> Unsettled {
    let Some(last) = last else {
        return Unsettled {
            message: format!("the rules did not settle after {MAX_DECISIONS} decisions"),
        };
    };
    let repeated = last
        .effects
        .iter()
        .find(|e| before.is_some_and(|b| b.effects.contains(e)))
        .or_else(|| last.effects.first());
    let what = match (repeated, &last.transition) {
        (Some(effect), _) => describe(effect),
        (None, Some(t)) => format!("the transition `{t}`"),
        (None, None) => "a decision".into(),
    };
    Unsettled {
        message: format!(
            "the rules did not settle after {MAX_DECISIONS} decisions: {what} repeats in phase {}",
            last.phase
        ),
    }
}

/// An effect in words, for errors.
pub fn describe(effect: &Effect) -> String {
    let object = |k: &ObjectKey| format!("{} {}/{}", k.kind, k.namespace, k.name);
    match effect {
        Effect::AddFinalizer { finalizer } => format!("adding the finalizer {finalizer}"),
        Effect::RemoveFinalizer { finalizer } => format!("removing the finalizer {finalizer}"),
        Effect::CreateExecution { object: o } => match ObjectKey::of(o) {
            Some(k) => format!("the create of {}", object(&k)),
            None => "the create of the execution object".into(),
        },
        Effect::CreateChild { child, object: o } => match ObjectKey::of(o) {
            Some(k) => format!("the create of {} (child {child})", object(&k)),
            None => format!("the create of child {child}"),
        },
        Effect::DeleteExecution { key, .. } | Effect::DeleteChild { key, .. } => {
            format!("the delete of {}", object(key))
        }
        Effect::PatchExecution { key, .. } | Effect::PatchChild { key, .. } => {
            format!("the patch of {}", object(key))
        }
        Effect::PatchStatus { patch } => {
            format!("the status write {}", clip(&patch.to_string(), 200))
        }
        Effect::Event(e) => format!("the {} Event {}", e.kind, e.reason),
        Effect::Audit { .. } => "the audit record".into(),
        Effect::Metric(m) => format!("the metric update {}", m.name),
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    format!("{}…", s.chars().take(max).collect::<String>())
}

/// Runs a future that never waits (a simulated world's `drive`) to its end, without an async
/// runtime; `None` if it waited after all.
pub fn run_ready<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}
