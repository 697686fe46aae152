//! The compiled form of a rules file: what the engine reads when it decides.
//!
//! Each section or entry of the raw model ([`super::model`]) has its checked counterpart here,
//! named after it with a `Rules` suffix (`phases.X` → [`PhaseRules`], a condition →
//! [`ConditionRules`]); the pieces they share are named for what they are ([`TmplTree`],
//! [`ValueKind`], [`Deps`]). JSONPaths are parsed, templates are ids into
//! [`crate::render::Templates`], references to phases, values and related lists are indices, and
//! each piece records what it reads. Nothing here parses or checks: the compiler builds these
//! values once, when the rules load, and they never change afterwards.

use super::model::{EventType, ExecutionAction, LookupSelect, OwnerLabels, StatusFields};
use crate::expr::{Path as JPath, Pred};
use crate::render::Tmpl;
use regex::Regex;
use serde_json::Value;
use std::collections::BTreeSet;

/// Values and related objects a piece of the rules reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deps {
    /// Indices into [`super::Rules::values`].
    pub values: BTreeSet<usize>,
    /// Indices into [`super::Rules::related`].
    pub related: BTreeSet<usize>,
    /// Indices into [`super::Rules::lookups`].
    pub lookups: BTreeSet<usize>,
}

/// The governed resource.
#[derive(Debug, Clone)]
pub struct ResourceRules {
    /// `group/version`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Finalizer, if any.
    pub finalizer: Option<String>,
    /// Field manager.
    pub field_manager: String,
    /// Reporting component.
    pub component: String,
    /// Engine-maintained status fields.
    pub status: StatusFields,
}

/// The execution object.
#[derive(Debug, Clone)]
pub struct ExecutionRules {
    /// `group/version`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace template; none for a cluster-scoped object.
    pub namespace: Option<Tmpl>,
    /// Name template.
    pub name: Tmpl,
    /// Template id of the object body.
    pub template: usize,
    /// The template file's name, for messages.
    pub template_name: String,
    /// Owner labels.
    pub owner_labels: OwnerLabels,
    /// What the name, namespace and body read.
    pub deps: Deps,
    /// What the rules read of the execution object.
    pub reads: super::reads::Keep,
}

/// A named child other than the lock (the lock is [`super::Rules::execution`]).
#[derive(Debug, Clone)]
pub struct ChildRules {
    /// Name (`children.NAME`).
    pub name: String,
    /// Its identity, body and owner labels, as the lock's.
    pub object: ExecutionRules,
}

/// The object a patch or a related list's `from` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildRef {
    /// The lock (`execution`).
    Lock,
    /// A child other than the lock (index into [`super::Rules::children`]).
    Child(usize),
}

/// Related objects.
#[derive(Debug, Clone)]
pub struct RelatedRules {
    /// Name (`related.NAME`).
    pub name: String,
    /// `group/version`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// The object the references are in.
    pub from_child: ChildRef,
    /// Selects the reference entries (inside that object).
    pub from: JPath,
    /// Name inside an entry.
    pub name_path: JPath,
    /// Namespace inside an entry.
    pub namespace_path: Option<JPath>,
    /// Which entries are read.
    pub filter: Option<Pred>,
    /// What the rules read of the objects.
    pub reads: super::reads::Keep,
}

/// Where a lookup looks.
#[derive(Debug, Clone)]
pub enum LookupNamespace {
    /// The governed resource's namespace.
    Resource,
    /// Every namespace (and cluster-scoped objects).
    All,
    /// The namespace this template gives.
    Template(Tmpl),
}

/// A lookup of other objects.
#[derive(Debug, Clone)]
pub struct LookupRules {
    /// Name (`lookups.NAME`).
    pub name: String,
    /// `group/version`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Where to look.
    pub namespace: LookupNamespace,
    /// Only the object of this name.
    pub object_name: Option<Tmpl>,
    /// Label equality selector: key and value template.
    pub match_labels: Vec<(String, Tmpl)>,
    /// Leave out the governed resource itself (by uid).
    pub exclude_self: bool,
    /// Which objects count (`$` and `item` are the object).
    pub filter: Option<Pred>,
    /// Sort key inside each object.
    pub sort_by: Option<JPath>,
    /// What the rules see.
    pub select: LookupSelect,
}

/// A validation rule.
#[derive(Debug, Clone)]
pub struct ValidationRules {
    /// Name.
    pub name: String,
    /// What must hold.
    pub require: Pred,
    /// Failure message.
    pub message: Tmpl,
    /// What it reads.
    pub deps: Deps,
}

/// A text test of a table row.
#[derive(Debug, Clone)]
pub enum MatcherRules {
    /// Contains any (lowercased needles).
    Contains(Vec<String>),
    /// Contains all (lowercased needles).
    ContainsAll(Vec<String>),
    /// Equal.
    Equals(String),
    /// One of.
    In(Vec<String>),
    /// Regex.
    Regex(Regex),
}

impl MatcherRules {
    /// Whether `text` passes.
    pub fn test(&self, text: &str, lower: &str) -> bool {
        match self {
            MatcherRules::Contains(n) => n.iter().any(|n| lower.contains(n.as_str())),
            MatcherRules::ContainsAll(n) => n.iter().all(|n| lower.contains(n.as_str())),
            MatcherRules::Equals(s) => text == s,
            MatcherRules::In(v) => v.iter().any(|s| s == text),
            MatcherRules::Regex(r) => r.is_match(text),
        }
    }
}

/// A classification table.
#[derive(Debug, Clone)]
pub struct TableRules {
    /// Named inputs.
    pub inputs: Vec<(String, Tmpl)>,
    /// Rows: tests by input index, and the value.
    pub rows: Vec<(Vec<(usize, MatcherRules)>, Value)>,
    /// Value when nothing matches.
    pub default: Value,
}

/// How a value is computed.
#[derive(Debug, Clone)]
pub enum ValueKind {
    /// First node.
    Path(JPath),
    /// All (filtered) nodes.
    List(JPath, Option<Pred>),
    /// Count of (filtered) nodes.
    Count(JPath, Option<Pred>),
    /// First matching node with its index.
    Find(JPath, Option<Pred>),
    /// Expression template id.
    Expr(usize),
    /// Text template id.
    Template(usize),
    /// Table.
    Table(TableRules),
}

/// A computed value.
#[derive(Debug, Clone)]
pub struct ValueRules {
    /// Name.
    pub name: String,
    /// How.
    pub kind: ValueKind,
    /// Result when nothing is selected.
    pub default: Value,
    /// What it reads.
    pub deps: Deps,
}

/// Templates arranged like the JSON they produce.
#[derive(Debug, Clone)]
pub enum TmplTree {
    /// A leaf.
    Leaf(Tmpl),
    /// Explicit null: remove the field.
    Remove,
    /// A mapping.
    Map(Vec<(String, TmplTree)>),
    /// A list.
    List(Vec<TmplTree>),
}

/// A condition to set.
#[derive(Debug, Clone)]
pub struct ConditionRules {
    /// Type.
    pub kind: String,
    /// Status template.
    pub status: Tmpl,
    /// Reason template.
    pub reason: Tmpl,
    /// Message template.
    pub message: Tmpl,
    /// Guard.
    pub when: Option<Pred>,
}

/// An Event to emit.
#[derive(Debug, Clone)]
pub struct EventRules {
    /// Normal or Warning.
    pub kind: EventType,
    /// Reason.
    pub reason: String,
    /// Message template.
    pub message: Tmpl,
    /// Action.
    pub action: String,
}

/// A metric update.
#[derive(Debug, Clone)]
pub struct MetricRules {
    /// Metric name.
    pub name: String,
    /// Label values.
    pub labels: Vec<(String, Tmpl)>,
    /// Amount / observation.
    pub value: Option<Tmpl>,
}

/// A block of effects, with shared blocks (`use`) already merged in.
#[derive(Debug, Clone, Default)]
pub struct ActionRules {
    /// Variables.
    pub vars: Vec<(String, Tmpl)>,
    /// Execution object (lock) action.
    pub execution: Option<ExecutionAction>,
    /// Actions on the other children (index into [`super::Rules::children`]), in order.
    pub children: Vec<(usize, ExecutionAction)>,
    /// Where the lock's action was written among them (`children: {lock: …}`): that many of
    /// `children` come before it. None: it comes first (`execution: …`).
    pub lock_at: Option<usize>,
    /// Merge patches, by object.
    pub patch: Vec<(ChildRef, TmplTree)>,
    /// Status to set (several trees, applied in order).
    pub status: Vec<TmplTree>,
    /// Conditions.
    pub conditions: Vec<ConditionRules>,
    /// Events.
    pub events: Vec<EventRules>,
    /// Audit record (merged over the base).
    pub audit: Vec<TmplTree>,
    /// Metrics.
    pub metrics: Vec<MetricRules>,
    /// What it reads.
    pub deps: Deps,
    /// Its templates compiled together, by the place that evaluates them.
    pub batches: ActionBatches,
}

/// The combined templates of a block of effects (ids of [`crate::render::Templates`] batches):
/// what one context evaluates together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActionBatches {
    /// Status trees and conditions.
    pub status: Option<usize>,
    /// Patches, Events, the audit record and metrics.
    pub effects: Option<usize>,
}

/// A transition.
#[derive(Debug, Clone)]
pub struct TransitionRules {
    /// Name.
    pub name: String,
    /// Target phase index.
    pub to: usize,
    /// Guard.
    pub when: Option<Pred>,
    /// What the guard (and the timer) reads.
    pub when_deps: Deps,
    /// Timer: considered only this long after the phase was entered (duration template).
    pub after: Option<Tmpl>,
    /// Retry policy.
    pub retry: Option<RetryRules>,
    /// Effects.
    pub action: ActionRules,
}

/// A retry policy: instead of taking its transition, make another attempt while it applies.
#[derive(Debug, Clone)]
pub struct RetryRules {
    /// Only retry when this holds.
    pub when: Option<Pred>,
    /// Most attempts in all (a number template).
    pub max_attempts: Tmpl,
    /// Wait before the second attempt (duration template); none: no wait.
    pub initial: Option<Tmpl>,
    /// Multiplier per further attempt.
    pub factor: f64,
    /// Longest wait (duration template).
    pub max: Option<Tmpl>,
    /// Keep the previous attempt's execution object (else delete it and wait until gone).
    pub keep_previous: bool,
    /// Phase index the next attempt starts in.
    pub to: usize,
    /// What the guard and the templates of the policy read.
    pub deps: Deps,
    /// Effects of deciding to retry.
    pub action: ActionRules,
}

/// A phase.
#[derive(Debug, Clone)]
pub struct PhaseRules {
    /// Name.
    pub name: String,
    /// Terminal.
    pub terminal: bool,
    /// Runs validation.
    pub validate: bool,
    /// Poll interval template.
    pub poll: Option<Tmpl>,
    /// Per-observation sync.
    pub sync: Option<ActionRules>,
    /// Transitions.
    pub transitions: Vec<TransitionRules>,
}

/// The cooldown policy.
#[derive(Debug, Clone)]
pub struct CooldownRules {
    /// Phase indices it applies to.
    pub phases: Vec<usize>,
    /// Period template.
    pub period: Tmpl,
    /// Status field with the start timestamp.
    pub since: String,
    /// Condition type recording the release.
    pub marker: String,
    /// Guard.
    pub when: Option<Pred>,
    /// What the guard and period read.
    pub deps: Deps,
    /// Release effects.
    pub release: ActionRules,
}

/// Audit record base.
#[derive(Debug, Clone)]
pub struct AuditRules {
    /// Field for the record id.
    pub id_field: String,
    /// Field for the record time.
    pub time_field: String,
    /// Base record.
    pub record: Option<TmplTree>,
}

/// A simulated change to the execution object.
#[derive(Debug, Clone)]
pub struct SimulatedChangeRules {
    /// Status merge patch.
    pub status: Option<TmplTree>,
    /// Objects that appear.
    pub objects: Vec<TmplTree>,
}

/// How the execution object behaves in simulations.
#[derive(Debug, Clone)]
pub struct SimulationRules {
    /// Applied after creation.
    pub started: Option<SimulatedChangeRules>,
    /// Named outcomes.
    pub outcomes: Vec<(String, SimulatedChangeRules)>,
}

/// The rollout policy, per phase.
#[derive(Debug, Clone, Default)]
pub struct RolloutRules {
    /// The policy of each phase, by phase index.
    pub phases: Vec<super::model::RolloutPolicy>,
}
