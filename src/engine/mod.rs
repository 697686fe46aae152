//! The decision: `decide(rules, observation, now) -> Decision`, a pure function.
//!
//! `decide` never knows why it runs. It compares what the rules say should be with what it
//! observes and emits only the missing effects, so running it twice, or again after a crash
//! halfway through carrying out a decision, is safe. Events, audit records and metrics come from
//! transitions (and the one-time cooldown release), never from re-runs: once a transition's
//! status is written, the same observation no longer takes it.
//!
//! [`decide`] makes one decision (in named steps, `decide.rs`, over the evaluation scope of
//! `scope.rs`, with the effect builders of `effects.rs`); [`drive::drive`] is the one loop every
//! world runs it in: observe, decide, carry out, until nothing is left to do.
//!
//! The engine knows nothing about any particular resource kind: every name, message and field
//! comes from the rules. It never touches the network, the clock, the environment or files.

mod attempts;
#[cfg(test)]
mod children_tests;
mod decide;
pub mod drive;
#[cfg(test)]
mod drive_tests;
mod effects;
pub mod explain;
mod lookups;
pub mod rollout;
mod scope;
#[cfg(test)]
mod security_tests;
pub mod status;

pub use decide::{ERROR_CONDITION, child_keys, decide, execution_key};
pub use effects::render_tree;
pub use lookups::{matches as lookup_matches, requests_all as lookup_requests_all};
pub use scope::{children_doc, phase_of, related_requests};

use serde::Serialize;
use serde_json::Value;

/// What the shell observed for one resource.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// The governed resource, as JSON.
    pub resource: Value,
    /// The execution object with the deterministic name, if it exists.
    pub execution: Option<Value>,
    /// The other named children, by name: each the object, or null when it does not exist
    /// (a child missing from the map reads as null).
    pub children: serde_json::Map<String, Value>,
    /// Related objects that were read, by list name: each a list of `{ref, object}` entries
    /// in the order of the references (`object` is null when not read or missing).
    pub related: serde_json::Map<String, Value>,
    /// The error of the action just attempted on the execution object, if it failed for good.
    pub error: Option<ActionError>,
    /// Objects found for each lookup the decision asked for, by lookup name (a list).
    pub lookups: serde_json::Map<String, Value>,
}

/// A permanent error from an action on the execution object (`error` in rules).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionError {
    /// `create` or `delete`.
    pub action: String,
    /// The child acted on, when it is not the execution object (the lock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
    /// HTTP status code (0 when there was no response).
    pub code: u16,
    /// Kubernetes reason (`AlreadyExists`, `Forbidden`, `Invalid`, …).
    pub reason: String,
    /// Message from the API server.
    pub message: String,
}

/// Identity of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectKey {
    /// `group/version`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Effect {
    /// The child a create, delete or patch acts on: its name in the rules (the lock's for the
    /// execution object), none for other effects.
    pub fn child<'a>(&'a self, lock: &'a str) -> Option<&'a str> {
        match self {
            Effect::CreateExecution { .. }
            | Effect::DeleteExecution { .. }
            | Effect::PatchExecution { .. } => Some(lock),
            Effect::CreateChild { child, .. }
            | Effect::DeleteChild { child, .. }
            | Effect::PatchChild { child, .. } => Some(child),
            _ => None,
        }
    }
}

impl ObjectKey {
    /// The identity of an object from its own fields.
    pub fn of(obj: &Value) -> Option<ObjectKey> {
        Some(ObjectKey {
            api_version: obj.get("apiVersion")?.as_str()?.to_string(),
            kind: obj.get("kind")?.as_str()?.to_string(),
            namespace: obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            name: obj.pointer("/metadata/name")?.as_str()?.to_string(),
        })
    }
}

/// Whether an API failure with this HTTP code is retried by the shell rather than shown to the
/// rules (no response, conflicts, throttling, server errors). The controller and the simulated
/// world share it, so simulations fail exactly where the controller would.
pub fn is_transient(code: u16) -> bool {
    code == 0 || code == 409 || code == 429 || code >= 500
}

/// Related objects the decision needs before it can be made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelatedRequest {
    /// List name.
    pub name: String,
    /// One entry per reference: the reference itself and the object to read, if any.
    pub entries: Vec<(Value, Option<ObjectKey>)>,
}

/// Objects a decision asks the world to find for a lookup: every object of this kind in this
/// namespace (or all), with this name (if given) and these labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LookupRequest {
    /// Lookup name.
    pub name: String,
    /// `group/version`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace; none: every namespace (and cluster-scoped objects).
    pub namespace: Option<String>,
    /// Only the object of this name.
    #[serde(rename = "objectName")]
    pub object_name: Option<String>,
    /// Labels the objects must carry, with these values.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// An Event to record on the resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Reason.
    pub reason: String,
    /// Action.
    pub action: String,
    /// Message.
    pub message: String,
}

/// A metric update.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricRecord {
    /// Metric name.
    pub name: String,
    /// Label values in declaration order.
    pub labels: Vec<(String, String)>,
    /// Increment (counter), observation (histogram) or value (gauge).
    pub value: f64,
}

/// One thing the shell must do. Effects are listed in the order to carry them out; the shell
/// stops at the first that fails and decides again.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "effect", rename_all = "camelCase")]
pub enum Effect {
    /// Add the finalizer.
    AddFinalizer {
        /// Finalizer name.
        finalizer: String,
    },
    /// Create the execution object (AlreadyExists: read it and decide again).
    CreateExecution {
        /// The full object.
        object: Value,
    },
    /// Delete the execution object (NotFound is success).
    DeleteExecution {
        /// Which object.
        key: ObjectKey,
        /// Its uid, as a precondition.
        uid: Option<String>,
    },
    /// Patch the execution object with this JSON merge patch (NotFound is success).
    PatchExecution {
        /// Which object.
        key: ObjectKey,
        /// The merge patch.
        patch: Value,
    },
    /// Create a named child (AlreadyExists: read it and decide again).
    CreateChild {
        /// The child's name in the rules.
        child: String,
        /// The full object.
        object: Value,
    },
    /// Delete a named child (NotFound is success).
    DeleteChild {
        /// The child's name in the rules.
        child: String,
        /// Which object.
        key: ObjectKey,
        /// Its uid, as a precondition.
        uid: Option<String>,
    },
    /// Patch a named child with this JSON merge patch (NotFound is success).
    PatchChild {
        /// The child's name in the rules.
        child: String,
        /// Which object.
        key: ObjectKey,
        /// The merge patch.
        patch: Value,
    },
    /// Patch the resource's status subresource with this JSON merge patch of `status`.
    PatchStatus {
        /// The merge patch (the value of `status`).
        patch: Value,
    },
    /// Record an Event.
    Event(EventRecord),
    /// Deliver an audit record.
    Audit {
        /// The record.
        record: Value,
    },
    /// Update a metric.
    Metric(MetricRecord),
    /// Remove the finalizer (the resource may then disappear).
    RemoveFinalizer {
        /// Finalizer name.
        finalizer: String,
    },
}

/// A decision could not be made as the rules say (a template or expression failed at run time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{category}: {message}")]
pub struct DecideError {
    /// What kind of failure.
    pub category: Category,
    /// What went wrong, naming the rule.
    pub message: String,
}

/// The kind of a [`DecideError`]; its name is the condition reason, Event reason and metric
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Category {
    /// A template or expression failed to render or evaluate (or a value it made is unusable).
    TemplateError,
    /// The execution object's identity or rendered object breaks the rules' contract.
    ExecutionObjectInvalid,
    /// The resource's phase is not one the rules define.
    UnknownPhase,
    /// An action failed and no transition of the phase handles it.
    UnhandledError,
}

impl Category {
    /// The stable name, for metric labels, condition and Event reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::TemplateError => "TemplateError",
            Category::ExecutionObjectInvalid => "ExecutionObjectInvalid",
            Category::UnknownPhase => "UnknownPhase",
            Category::UnhandledError => "UnhandledError",
        }
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the shell must do for one resource now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The phase after this decision.
    pub phase: String,
    /// The transition taken, if any (`release` for the cooldown release, `delete` on deletion).
    pub transition: Option<String>,
    /// Effects, in order.
    pub effects: Vec<Effect>,
    /// Look again after this many seconds (none: only on events).
    pub requeue_after: Option<f64>,
    /// Related objects to read first; when set, `effects` is empty: read them and decide again.
    pub needs: Vec<RelatedRequest>,
    /// Lookups to find first; when set, `effects` is empty: find them and decide again.
    pub lookups: Vec<LookupRequest>,
    /// Set when the rules failed at run time; the effects then only report it.
    pub error: Option<DecideError>,
}

impl Decision {
    /// Whether carrying this out changes anything.
    pub fn is_noop(&self) -> bool {
        self.effects.is_empty() && self.needs.is_empty() && self.lookups.is_empty()
    }

    /// The status patch, if any.
    pub fn status_patch(&self) -> Option<&Value> {
        self.effects.iter().find_map(|e| match e {
            Effect::PatchStatus { patch } => Some(patch),
            _ => None,
        })
    }
}
