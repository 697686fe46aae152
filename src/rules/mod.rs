//! The rules file: raw serde model → validated, compiled [`Rules`].
//!
//! One loader serves every door (`check`, `render`, `simulate`, `test`, start-up, hot reload).
//! It reads the file in two stages: serde (each section and entry on its own, so that one bad
//! entry does not hide the problems of the others) and compilation (JSONPaths parsed, templates
//! compiled, references resolved, the phase graph checked). Every problem carries
//! file:line:column and the path inside the document, and all of them are reported together.
//! Loading never panics, whatever the input.

mod compile;
#[cfg(test)]
mod fixture_tests;
pub mod locate;
pub mod model;
mod schema;

pub use compile::{
    ActionRules, CondRules, CooldownRules, Deps, EventRules, ExecutionRules, Matcher, MetricRules,
    PhaseRules, RelatedRules, ResourceRules, SimChange, SimRules, TableRules, TmplTree,
    TransitionRules, ValidationRules, ValueKind, ValueRules,
};
pub use schema::json_schema;

use crate::render::Templates;
use indexmap::IndexMap;
use model::{MetricSpec, RulesFile};
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest rules file or template accepted.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

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
    /// The governed resource.
    pub resource: ResourceRules,
    /// The execution object.
    pub execution: ExecutionRules,
    /// Related objects.
    pub related: Vec<RelatedRules>,
    /// Validation rules in order.
    pub validation: Vec<ValidationRules>,
    /// Computed values (dependencies always point backwards in evaluation order).
    pub values: Vec<ValueRules>,
    /// Phases.
    pub phases: Vec<PhaseRules>,
    /// Index of the initial phase.
    pub initial: usize,
    /// Cooldown policy.
    pub cooldown: Option<CooldownRules>,
    /// Deletion handling.
    pub on_delete: Option<ActionRules>,
    /// Audit record base and field names.
    pub audit: compile::AuditRules,
    /// Declared metrics.
    pub metrics: IndexMap<String, MetricSpec>,
    /// Simulation behaviour of the execution object.
    pub simulation: Option<SimRules>,
}

impl Rules {
    /// Loads and checks a rules file, with `overrides` replacing settings (`NAME=VALUE`).
    pub fn load(file: &Path, overrides: &[(String, String)]) -> Result<Rules, LoadError> {
        let display = file.display().to_string();
        let text = read_limited(file).map_err(|message| LoadError::Unusable {
            file: display.clone(),
            message,
        })?;
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        compile::compile(file, &display, &text, &dir, overrides)
    }

    /// Loads rules from text (templates are read from `dir`); for tests and tools.
    pub fn from_text(
        name: &str,
        text: &str,
        dir: &Path,
        overrides: &[(String, String)],
    ) -> Result<Rules, LoadError> {
        compile::compile(Path::new(name), name, text, dir, overrides)
    }

    /// Index of a phase by name.
    pub fn phase_index(&self, name: &str) -> Option<usize> {
        self.phases.iter().position(|p| p.name == name)
    }

    /// Files the rules were read from (the rules file and every template), for reload watching.
    pub fn templates_dir(&self) -> PathBuf {
        let dir = self.file.parent().unwrap_or(Path::new(".")).to_path_buf();
        dir.join(self.raw.templates.as_deref().unwrap_or("templates"))
    }
}

/// Reads a file of at most [`MAX_FILE_BYTES`] as UTF-8.
pub fn read_limited(file: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("cannot read: not a regular file".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes; the limit is {} bytes",
            meta.len(),
            MAX_FILE_BYTES
        ));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    String::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

/// Parses a `--set NAME=VALUE` override of a setting of the rules.
pub fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected NAME=VALUE, got `{s}`"))
}
