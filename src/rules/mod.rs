//! The rules file: sources → raw serde model → validated, compiled [`Rules`].
//!
//! One loader serves every door (`check`, `render`, `simulate`, `test`, start-up, hot reload).
//! Reading files is one step ([`Sources::read`]: the rules file and its templates folder, as
//! text); compiling is a pure function of those sources ([`Rules::compile`]), so tests compile
//! rules held in memory. Compilation has two stages: serde (each section and entry on its own,
//! so that one bad entry does not hide the problems of the others) and the section compilers
//! (JSONPaths parsed, templates compiled, references resolved), followed by the checks of the
//! whole (variables in scope, the phase graph, cycles among values). Every problem carries
//! file:line:column and the path inside the document, and all of them are reported together.
//! Loading never panics, whatever the input.
//!
//! Files: [`sources`] (the only file reading), [`model`] (the raw model), `parse` (the serde
//! pass), `compiler` (the pipeline and shared building blocks), `predicate`, `sections` (one
//! compiler per section), `deps` (what reads what, cycles), `checks` (static checks of the
//! whole), `compiled` (the compiled types), [`locate`] (positions in the YAML text), `suggest`
//! ("did you mean" for misspelt names), [`kind`] (rules file or scenario).

mod batches;
mod checks;
#[cfg(test)]
mod compile_tests;
mod compiled;
mod compiler;
mod crd;
mod deps;
#[cfg(test)]
mod fixture_tests;
pub mod kind;
pub mod locate;
pub mod model;
mod parse;
mod predicate;
mod reads;
mod schema;
mod sections;
pub mod sources;
mod suggest;
mod watch;

pub use compiled::{
    ActionBatches, ActionRules, AuditRules, ChildRef, ChildRules, ConditionRules, CooldownRules,
    Deps, EventRules, ExecutionRules, LookupNamespace, LookupRules, MatcherRules, MetricRules,
    PhaseRules, RelatedRules, ResourceRules, RetryRules, RolloutRules, SimulatedChangeRules,
    SimulationRules, TableRules, TmplTree, TransitionRules, ValidationRules, ValueKind, ValueRules,
};
pub use crd::{KindSchema, find_kind_schema, status_problems};
pub use reads::{Keep, ObjectReads, RUNTIME_METADATA, Steps};
pub use schema::json_schema;
pub use sources::{MAX_FILE_BYTES, Sources, read_limited};
pub use watch::WatchedKind;

use crate::render::Templates;
use indexmap::IndexMap;
use model::{MetricSpec, RulesFile};
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in the rules, with its place.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// File the problem is in.
    pub file: String,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// Path inside the document (`phases.Running.transitions[0].to`).
    pub path: String,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.path, self.message
        )
    }
}

/// Why rules could not be loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read at all.
    #[error("{file}: {message}")]
    Unusable {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
    /// The file was read and has problems.
    #[error("{}", report(.0))]
    Invalid(Vec<Problem>),
}

impl LoadError {
    /// Stable category for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            LoadError::Unusable { .. } => "RulesUnreadable",
            LoadError::Invalid(_) => "RulesInvalid",
        }
    }

    /// The problems (one synthetic problem for an unreadable file).
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            LoadError::Invalid(p) => p.clone(),
            LoadError::Unusable { file, message } => vec![Problem {
                file: file.clone(),
                line: 1,
                column: 1,
                path: "(document)".into(),
                message: message.clone(),
            }],
        }
    }
}

fn report(problems: &[Problem]) -> String {
    let mut s = format!(
        "{} problem{} in the rules:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        s.push_str("\n  ");
        s.push_str(&p.to_string());
    }
    s
}

/// A compiled, checked rule set. Immutable; reloads build a new one.
#[derive(Debug)]
pub struct Rules {
    /// The rules file.
    pub file: PathBuf,
    /// Short content hash of the file and its templates (identifies this rule set).
    pub revision: String,
    /// The file as read (for `graph`, docs and tools).
    pub raw: RulesFile,
    /// Every compiled template.
    pub templates: Templates,
    /// Settings after overrides, as a JSON object.
    pub settings: Value,
    /// The same settings as a template value, made once.
    settings_value: crate::render::JValue,
    /// The governed resource.
    pub resource: ResourceRules,
    /// The execution object: the lock child (`execution`, or the child with `lock: true`).
    pub execution: ExecutionRules,
    /// The lock child's name (`execution` for the shorthand).
    pub lock: String,
    /// The other named children, in the order of the rules file.
    pub children: Vec<ChildRules>,
    /// Related objects.
    pub related: Vec<RelatedRules>,
    /// Lookups of other objects.
    pub lookups: Vec<LookupRules>,
    /// Validation rules in order.
    pub validation: Vec<ValidationRules>,
    /// Computed values (dependencies always point backwards in evaluation order).
    pub values: Vec<ValueRules>,
    /// Phases.
    pub phases: Vec<PhaseRules>,
    /// Index of the initial phase.
    pub initial: usize,
    /// Removed phases by their old name, with the index of the phase that replaces each
    /// (`renamedPhases`).
    pub renamed_phases: Vec<(String, usize)>,
    /// Which rules decide a resource in flight after a change (`rollout`).
    pub rollout: RolloutRules,
    /// Cooldown policy.
    pub cooldown: Option<CooldownRules>,
    /// Deletion handling.
    pub on_delete: Option<ActionRules>,
    /// Audit record base and field names.
    pub audit: AuditRules,
    /// Declared metrics.
    pub metrics: IndexMap<String, MetricSpec>,
    /// Simulation behaviour of the execution object.
    pub simulation: Option<SimulationRules>,
    /// Positions in the rules file, for checks made after loading (against a CRD).
    pub(crate) locations: locate::SourceMap,
}

impl Rules {
    /// Reads and compiles a rules file, with `overrides` replacing settings (`NAME=VALUE`).
    pub fn load(file: &Path, overrides: &[(String, String)]) -> Result<Rules, LoadError> {
        Rules::compile(&Sources::read(file)?, overrides)
    }

    /// Compiles rules from their sources, with `overrides` replacing settings (`NAME=VALUE`).
    /// Pure: reads no file, environment or clock.
    pub fn compile(sources: &Sources, overrides: &[(String, String)]) -> Result<Rules, LoadError> {
        compiler::compile(sources, overrides)
    }

    /// The settings as templates read them (`settings`), shared by every decision.
    pub fn settings_value(&self) -> crate::render::JValue {
        self.settings_value.clone()
    }

    /// Index of a phase by name.
    pub fn phase_index(&self, name: &str) -> Option<usize> {
        self.phases.iter().position(|p| p.name == name)
    }

    /// Index of the phase a resource whose status names `name` is in: the phase of that name,
    /// else the phase `renamedPhases` maps it to.
    pub fn resolve_phase(&self, name: &str) -> Option<usize> {
        self.phase_index(name).or_else(|| {
            self.renamed_phases
                .iter()
                .find(|(old, _)| old == name)
                .map(|&(_, i)| i)
        })
    }

    /// The names `children.NAME` accepts: the lock's, then the others'.
    pub fn child_names(&self) -> Vec<&str> {
        std::iter::once(self.lock.as_str())
            .chain(self.children.iter().map(|c| c.name.as_str()))
            .collect()
    }

    /// The templates folder the rules were read from, for reload watching.
    pub fn templates_dir(&self) -> PathBuf {
        let dir = self.file.parent().unwrap_or(Path::new(".")).to_path_buf();
        dir.join(self.raw.templates.as_deref().unwrap_or("templates"))
    }
}

/// Parses a `--set NAME=VALUE` override of a setting of the rules.
pub fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected NAME=VALUE, got `{s}`"))
}
