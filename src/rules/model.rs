//! The raw model of a rules file: what serde reads, before any check.
//!
//! Every struct rejects unknown fields, so a typo is an error with a location rather than a
//! silently ignored key. Fields that hold "one of several forms" (values, predicates, matchers)
//! are plain structs with optional members; the compiler checks that exactly one is set, which
//! gives far clearer messages than serde's untagged enums. The JSON Schema served by
//! `lifecycle schema` is generated from these types, so the doc comments here are what editors
//! show.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A lifecycle: the resource it governs, the object it runs, its phases and policies.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RulesFile {
    /// Version of the rules language. Only `1` exists.
    pub version: u32,
    /// Human description of this lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Folder of templates, relative to this file. Default `templates`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<String>,
    /// Named settings with their defaults; a deployment may override each one
    /// (`lifecycle run --set NAME=VALUE`). Templates read them as `settings.NAME`.
    #[serde(default)]
    pub settings: IndexMap<String, Setting>,
    /// The governed custom resource.
    pub resource: ResourceSpec,
    /// The object created to carry out a resource (one per lock: its name is the lock): the
    /// shorthand for one child named `execution` that is the lock. Required unless `children`
    /// names the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<ExecutionSpec>,
    /// Named children: objects a resource creates, patches and deletes through its transitions
    /// (`children.NAME` in templates, `$.children.NAME` in paths). One of them (or `execution`)
    /// is the lock.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub children: IndexMap<String, ChildSpec>,
    /// Objects read on demand, listed by references inside the execution object.
    #[serde(default)]
    pub related: IndexMap<String, RelatedSpec>,
    /// Declared reads of other objects, by name or label selector (`lookups.NAME` in
    /// templates, `$.lookups.NAME` in paths), served from watch caches.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub lookups: IndexMap<String, LookupSpec>,
    /// Ordered validation rules; the first that fails is reported (`validation` in templates).
    #[serde(default)]
    pub validation: Vec<ValidationRule>,
    /// Named computed values, evaluated on demand (`values.NAME` in templates, `$.values.NAME`
    /// in paths).
    #[serde(default)]
    pub values: IndexMap<String, ValueSpec>,
    /// Named blocks of effects that transitions share through `use`.
    #[serde(default)]
    pub actions: IndexMap<String, Action>,
    /// The phases, by name.
    pub phases: IndexMap<String, Phase>,
    /// Phases these rules no longer have, each mapped to the phase that replaces it
    /// (`OldName: NewName`). A resource whose status still names an old phase continues in the
    /// new one; a hot reload that would leave resources in a removed phase is refused unless
    /// that phase is mapped here.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub renamed_phases: IndexMap<String, String>,
    /// Which rules decide a resource that was in flight when the rules changed: the revision its
    /// status records, while the controller has it loaded (`pinned`, the default), or the latest
    /// (`latest`). A global policy, and per-phase exceptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// Keep the lock for a while after a terminal phase, then release it once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Cooldown>,
    /// What to do when the resource is deleted (before its finalizer is removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_delete: Option<Action>,
    /// Shape of audit records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSpec>,
    /// Prometheus metrics that transitions may increment or observe.
    #[serde(default)]
    pub metrics: IndexMap<String, MetricSpec>,
    /// How the execution object behaves in `lifecycle simulate` and rule-file tests: what
    /// starting and each scripted outcome do to it. Not used by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulation: Option<Simulation>,
}

/// How the execution object progresses in simulations.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Simulation {
    /// Applied to the execution object shortly after it is created (it starts running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<SimulatedChange>,
    /// Scripted outcomes by name (`lifecycle simulate --outcome NAME[:REASON[:MESSAGE]]`).
    /// `deleted` (the object disappears) is built in.
    #[serde(default)]
    pub outcomes: IndexMap<String, SimulatedChange>,
}

/// A change to the execution object in a simulation. Templates may read `execution`, `object`,
/// `resource`, `settings`, `now` and `outcome` (`{name, reason, message}`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SimulatedChange {
    /// Merge patch applied to the execution object's `status` (templates as leaves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    /// Further objects that appear (e.g. child objects), each a full object (templates as leaves).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<Value>,
}

/// A setting's default: a string, number or boolean.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum Setting {
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(serde_json::Number),
    /// A string (durations are strings such as `5m`).
    String(String),
}

/// The governed resource.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceSpec {
    /// `group/version` of the resource, e.g. `example.com/v1`.
    pub api_version: String,
    /// Kind of the resource.
    pub kind: String,
    /// Finalizer added before anything is created, removed after `onDelete` ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalizer: Option<String>,
    /// Field manager used for every write.
    pub field_manager: String,
    /// Name this controller reports as (Events' reporting controller, audit actor).
    pub component: String,
    /// Status fields the engine itself maintains.
    #[serde(default)]
    pub status: StatusFields,
}

/// Names of the status fields the engine maintains.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StatusFields {
    /// Field holding the phase name. Default `phase`.
    #[serde(default = "default_phase_field")]
    pub phase: String,
    /// Field holding the list of conditions. Default `conditions`.
    #[serde(default = "default_conditions_field")]
    pub conditions: String,
    /// Field recording `metadata.generation` at each write, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<String>,
    /// Field recording the revision of the rules that last acted on the resource, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Field recording where the execution object is (`{namespace, name}`) once it exists, so
    /// that a later change of the rules' name or namespace templates never loses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
    /// Field recording when the resource entered its current phase (RFC 3339), written on
    /// first sight and with every transition. Needed by `after` timers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_entered_at: Option<String>,
    /// Field holding the attempt number (1, 2, …). Needed by `retry` and by templates that
    /// read `attempt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<String>,
    /// Field holding the pending retry while it waits (`{attempt, at, previous}`), removed when
    /// the next attempt starts. Needed by `retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
}

impl Default for StatusFields {
    fn default() -> Self {
        StatusFields {
            phase: default_phase_field(),
            conditions: default_conditions_field(),
            observed_generation: None,
            revision: None,
            execution: None,
            phase_entered_at: None,
            attempt: None,
            retry: None,
        }
    }
}

fn default_phase_field() -> String {
    "phase".into()
}
fn default_conditions_field() -> String {
    "conditions".into()
}

/// The execution object: created from a template, named deterministically (the name is the lock).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecutionSpec {
    /// `group/version` of the execution object.
    pub api_version: String,
    /// Kind of the execution object.
    pub kind: String,
    /// Namespace template (may differ from the resource's namespace). Absent: the object is
    /// cluster-scoped and created without a namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name template. Must be deterministic: the same resource always yields the same name.
    pub name: String,
    /// Template file (in the templates folder) rendering the whole object as YAML.
    pub template: String,
    /// Labels that map the object back to its resource; they are also the ownership test.
    pub owner_labels: OwnerLabels,
}

/// A named child: an object a resource creates from a template, named deterministically.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChildSpec {
    /// `group/version` of the child.
    pub api_version: String,
    /// Kind of the child.
    pub kind: String,
    /// Namespace template. Absent: the child is cluster-scoped and created without a namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name template. Must be deterministic: the same resource always yields the same name.
    pub name: String,
    /// Template file (in the templates folder) rendering the whole object as YAML.
    pub template: String,
    /// Labels that map the child back to its resource; they are also the ownership test.
    pub owner_labels: OwnerLabels,
    /// This child is the lock: `execution`, `owned`, `object` and `error` read it, the
    /// cooldown keeps it, retries replace it and `simulation` plays it. Exactly one child is
    /// the lock when there is no `execution`; none when there is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lock: bool,
}

impl ChildSpec {
    /// The child as an execution object (the lock's form).
    pub fn as_execution(&self) -> ExecutionSpec {
        ExecutionSpec {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            template: self.template.clone(),
            owner_labels: self.owner_labels.clone(),
        }
    }
}

/// Labels written on the execution object naming the resource that owns it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OwnerLabels {
    /// Label holding the resource's name.
    pub name: String,
    /// Label holding the resource's namespace.
    pub namespace: String,
}

/// Objects listed by references inside the execution object, read when a rule needs them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RelatedSpec {
    /// `group/version` of the related objects.
    pub api_version: String,
    /// Kind of the related objects.
    pub kind: String,
    /// Path selecting the reference entries, e.g. `$.execution.status.childReferences[*]`.
    /// Every selected entry counts for `index`, whether or not it is read.
    pub from: String,
    /// Path inside each entry (`$` is the entry) giving the object's name.
    pub name: String,
    /// Path inside each entry giving the namespace. Default: the execution's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Only entries for which this holds (`$` is the entry) are read; others get no object.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<Predicate>,
}

/// A declared read of other objects of one kind: which objects (namespace, name, labels), which
/// of them count (`where`), in what order (`sortBy`) and what the rules see (`select`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LookupSpec {
    /// Human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `group/version` of the objects (`v1` for the core group).
    pub api_version: String,
    /// Kind of the objects; may be the governed kind.
    pub kind: String,
    /// Namespace template. Default: the resource's namespace. Not with `allNamespaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Look in every namespace (and at cluster-scoped objects).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_namespaces: bool,
    /// Name template: only the object of this name (an empty name selects nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only objects carrying every one of these labels with these values (value templates).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub match_labels: IndexMap<String, String>,
    /// Leave out the governed resource itself (compared by uid).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclude_self: bool,
    /// Only objects for which this holds (`$` and `item` are the object).
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<Predicate>,
    /// Path inside each object (`$` is the object) to sort by; objects where it selects
    /// nothing come first. Without it, objects are in namespace/name order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort_by: Option<String>,
    /// What the rules see: `all` (a list, the default), `first` or `last` (one object, or null).
    #[serde(default)]
    pub select: LookupSelect,
}

/// Which of the objects a lookup found the rules see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LookupSelect {
    /// Every object, as a list.
    #[default]
    All,
    /// The first object in order, or null.
    First,
    /// The last object in order, or null.
    Last,
}

/// One validation rule: `require` must hold, else `message` is the failure.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ValidationRule {
    /// Name of the rule (`validation.rule` in templates).
    pub name: String,
    /// What must hold.
    pub require: Predicate,
    /// Message template when it does not (`validation.message`).
    pub message: String,
}

/// A named computed value. Exactly one of `path`, `list`, `count`, `find`, `expr`, `template`,
/// `table` is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ValueSpec {
    /// The first node a path selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Every node a path selects (filtered by `where`), as a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    /// How many nodes a path selects (filtered by `where`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<String>,
    /// The first node a path selects for which `where` holds, as `{index, value}`; `index`
    /// counts every selected node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub find: Option<String>,
    /// A template expression (its result keeps its type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    /// A text template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// An ordered classification table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<Table>,
    /// Filter for `list`, `count` and `find` (`$` is each node).
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<Predicate>,
    /// Result when nothing is selected (default `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An ordered classification table: the first row whose tests all hold gives the value.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Table {
    /// Named inputs, each a template rendered to text.
    pub inputs: IndexMap<String, String>,
    /// Rows, first match wins.
    pub rows: Vec<TableRow>,
    /// Value when no row matches.
    pub default: Value,
}

/// One row of a table.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TableRow {
    /// Tests by input name; all must hold. An empty map always matches.
    #[serde(default)]
    pub when: IndexMap<String, Matcher>,
    /// The result (any YAML value).
    pub value: Value,
}

/// A text test. Exactly one member is set. `contains` and `containsAll` ignore case.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Matcher {
    /// The text contains any of these (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<Vec<String>>,
    /// The text contains all of these (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains_all: Option<Vec<String>>,
    /// The text is exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// The text is one of these.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
    /// The text matches this regular expression (use `(?i)` to ignore case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A condition over the observation. Exactly one member is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Predicate {
    /// The path selects at least one node that is not null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<String>,
    /// The first node the path selects equals `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<PathValue>,
    /// The first node the path selects is one of `values`.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<PathValues>,
    /// The first node the path selects is a string matching `regex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<PathRegex>,
    /// At least `atLeast` has passed since the timestamp the path selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed: Option<Elapsed>,
    /// A template expression, true when its result is truthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    /// All of these hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Vec<Predicate>>,
    /// Any of these holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<Predicate>>,
    /// This does not hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<Predicate>>,
}

/// A path and a value to compare with.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathValue {
    /// JSONPath (RFC 9535).
    pub path: String,
    /// The expected value.
    pub value: Value,
}

/// A path and the values it may have.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathValues {
    /// JSONPath (RFC 9535).
    pub path: String,
    /// The allowed values.
    pub values: Vec<Value>,
}

/// A path and a regular expression.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathRegex {
    /// JSONPath (RFC 9535).
    pub path: String,
    /// Regular expression (Rust `regex` syntax; not anchored unless you anchor it).
    pub regex: String,
}

/// Time passed since a timestamp.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Elapsed {
    /// JSONPath to an RFC 3339 timestamp. When it selects nothing the test is false.
    pub since: String,
    /// Duration template such as `1h30m` or `{{ settings.timeout }}`.
    pub at_least: String,
}

/// What to do to the execution object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ExecutionAction {
    /// Make sure it exists and is ours (create it, or adopt ours); the step waits until then.
    Create,
    /// Delete it if it is ours.
    Delete,
}

/// Event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum EventType {
    /// Normal event.
    Normal,
    /// Warning event.
    Warning,
}

/// A condition to set on the resource (standard Kubernetes shape).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConditionSpec {
    /// Condition type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown` (template).
    pub status: String,
    /// Reason (template; CamelCase).
    pub reason: String,
    /// Message (template).
    #[serde(default)]
    pub message: String,
    /// Only set when this holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Predicate>,
}

/// An Event to emit.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventSpec {
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Reason (CamelCase).
    pub reason: String,
    /// Message (template).
    pub message: String,
    /// Action (events.k8s.io); default: the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// A metric update.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricUpdate {
    /// Name of a metric declared under `metrics`.
    pub name: String,
    /// Label values (templates), one per declared label.
    #[serde(default)]
    pub labels: IndexMap<String, String>,
    /// Amount (counter, default 1), observation (histogram) or value (gauge); a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

macro_rules! action_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// Variables for this block's templates (`vars.NAME`), templates or literals.
            #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
            pub vars: IndexMap<String, Value>,
            /// Shared blocks from `actions` applied too (after this block's own vars are set).
            #[serde(default, rename = "use", skip_serializing_if = "Vec::is_empty")]
            pub uses: Vec<String>,
            /// Create or delete the execution object.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub execution: Option<ExecutionAction>,
            /// Create or delete named children, by name (`create` waits until each exists and
            /// is ours).
            #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
            pub children: IndexMap<String, ExecutionAction>,
            /// JSON merge patches of created objects, by child name (`execution` for the
            /// lock): nested maps whose
            /// leaves are templates or literals. Sent when the object exists, is ours, and the
            /// patch would change it.
            #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
            pub patch: IndexMap<String, Value>,
            /// Status fields to set: a nested map whose leaves are templates or literals; a
            /// leaf that is a single `{{ expression }}` keeps the expression's type, `null`
            /// removes the field.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub status: Option<Value>,
            /// Conditions to set.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub conditions: Vec<ConditionSpec>,
            /// Events to emit.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub events: Vec<EventSpec>,
            /// An audit record: fields merged over `audit.record`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub audit: Option<Value>,
            /// Metric updates.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub metrics: Vec<MetricUpdate>,
        }
    };
}

action_struct! {
    /// A block of effects: status, conditions, Events, audit, metrics and the execution object.
    pub struct Action {
        /// Human description.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub description: Option<String>,
    }
}

action_struct! {
    /// A transition: when `when` holds (and `execution: create` is satisfied), move to `to`
    /// and carry out the effects.
    pub struct Transition {
        /// Name (used in timelines, audit ids and graph labels).
        pub name: String,
        /// Target phase.
        pub to: String,
        /// Guard; absent means always.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub when: Option<Predicate>,
        /// Timer: the transition is considered only once this long (a duration template) has
        /// passed since the resource entered the phase; the engine looks again exactly then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub after: Option<String>,
        /// Retry policy: when the transition is taken and the policy applies, a new attempt is
        /// made instead (after a backoff); when attempts are exhausted the transition is taken.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub retry: Option<Retry>,
        /// Human description.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub description: Option<String>,
    }
}

/// A retry policy on a transition.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retry {
    /// Only retry when this holds (absent: always), e.g. a transient failure reason.
    #[serde(default, rename = "when", skip_serializing_if = "Option::is_none")]
    pub filter: Option<Predicate>,
    /// Most attempts in all, the first included: a whole number ≥ 1, or a template (a setting).
    pub max_attempts: Value,
    /// Wait before the next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// What happens to the previous attempt's execution object: `delete` (default; the next
    /// attempt waits until it is gone) or `keep` (the name must then read `attempt`).
    #[serde(default)]
    pub previous: PreviousObject,
    /// Phase the next attempt starts in. Default: the initial phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Effects of deciding to retry (status, conditions, Events, audit, metrics, vars, use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_retry: Option<Action>,
}

/// Exponential backoff: `initial × factor^(n−1)` before attempt `n + 1`, at most `max`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backoff {
    /// Wait before the second attempt (duration template).
    pub initial: String,
    /// Multiplier for each further attempt (≥ 1). Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// Longest wait (duration template). Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
}

/// What a retry does with the previous attempt's execution object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PreviousObject {
    /// Delete it (if ours) and wait until it is gone.
    #[default]
    Delete,
    /// Leave it.
    Keep,
}

/// A phase.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Phase {
    /// The phase of a resource without one. Exactly one phase is initial.
    #[serde(default)]
    pub initial: bool,
    /// A terminal phase never changes again.
    #[serde(default)]
    pub terminal: bool,
    /// Run the validation rules in this phase (`validation` is set when one fails).
    #[serde(default)]
    pub validate: bool,
    /// Look again after this long even without events (duration template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<String>,
    /// Status and conditions kept in sync on every observation in this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<Action>,
    /// Transitions, tried in order; the first whose guard holds is taken.
    #[serde(default)]
    pub transitions: Vec<Transition>,
    /// Human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Keep the lock after a terminal phase, then release it once.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cooldown {
    /// Phases the cooldown applies to (they must be able to hold the lock).
    pub phases: Vec<String>,
    /// Duration template, e.g. `{{ settings.cooldown }}`.
    pub period: String,
    /// Status field with the timestamp the period is measured from; stamped with the current
    /// time when missing.
    pub since: String,
    /// Condition type that records the release; set True once, never again.
    pub marker: String,
    /// Only release when this holds (e.g. the lock was ever taken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Predicate>,
    /// Effects of the release (the marker condition is added by the engine).
    #[serde(default)]
    pub release: Action,
}

/// Shape of audit records.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditSpec {
    /// Field receiving the stable record id. Default `event_id`.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// Field receiving the record time. Default `event_timestamp`.
    #[serde(default = "default_time_field")]
    pub time_field: String,
    /// Fields common to every record (templates); a transition's `audit` is merged over them.
    #[serde(default)]
    pub record: Value,
}

fn default_id_field() -> String {
    "event_id".into()
}
fn default_time_field() -> String {
    "event_timestamp".into()
}

/// Metric kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MetricKind {
    /// Monotonic counter.
    #[default]
    Counter,
    /// Histogram of observations.
    Histogram,
    /// Gauge set to a value.
    Gauge,
}

/// A metric declaration.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricSpec {
    /// `counter`, `histogram` or `gauge`.
    #[serde(rename = "type")]
    pub kind: MetricKind,
    /// Help text.
    #[serde(default)]
    pub help: String,
    /// Label names.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Histogram buckets (upper bounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<f64>>,
}

impl Default for Setting {
    fn default() -> Self {
        Setting::String(String::new())
    }
}

/// How a rules change reaches resources already in flight.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rollout {
    /// The policy for every non-terminal phase: `pinned` (default) or `latest`.
    #[serde(default)]
    pub policy: RolloutPolicy,
    /// The policy of single phases, overriding `policy` (`PHASE: latest|pinned`).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub phases: IndexMap<String, RolloutPolicy>,
}

/// Which rules decide a resource in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RolloutPolicy {
    /// The rules loaded now.
    Latest,
    /// The revision the resource's status records, while it is loaded.
    #[default]
    Pinned,
}
