//! The compiler: [`Sources`] → [`Rules`], collecting every problem with its place.
//!
//! [`compile`] is the whole pipeline, in order: the first serde pass ([`super::parse`]), the
//! template files, one compiler per section of the rules file ([`super::sections`]), then the
//! checks that need the whole rule set ([`super::checks`]) and the dependency analysis
//! ([`super::deps`]). This file owns the [`Compiler`] state they share and the building blocks
//! every section uses: templates, expressions, JSONPaths, durations, trees of templates.
//! Compilation is a pure function of its sources: it reads no file, environment or clock.

use super::compiled::TmplTree;
use super::locate::{DocPath, SourceMap};
use super::sources::Sources;
use super::suggest::did_you_mean;
use super::{LoadError, Problem, Rules};
use crate::expr::{Path as JPath, Root};
use crate::render::{RenderError, Templates, Tmpl};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Where a template is used, to decide which variables it may read.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Scope {
    /// Values, guards, validation: no `vars`.
    Plain,
    /// The execution object's name and namespace: only `resource` and `settings`.
    Identity,
    /// Inside an action: `vars` allowed.
    Action,
    /// Inside a `where` filter: `item` allowed.
    Item,
    /// Simulation changes: `outcome` allowed.
    Sim,
}

/// A template in use: its id, scope, place, and the action variables in scope there.
pub(crate) type TemplateUse = (usize, Scope, DocPath, Option<BTreeSet<String>>);

/// State shared by the stages of one compilation.
pub(crate) struct Compiler<'a> {
    /// The rules file as problems name it.
    pub(crate) file: &'a str,
    /// Positions of the rules file's keys and values.
    pub(crate) map: SourceMap,
    /// Every problem found so far.
    pub(crate) problems: Vec<Problem>,
    /// Templates compiled so far.
    pub(crate) templates: Templates,
    /// Every template in use, for the variable check.
    pub(crate) uses: Vec<TemplateUse>,
    /// Names of `values`, in order.
    pub(crate) value_names: Vec<String>,
    /// Names of `related`, in order.
    pub(crate) related_names: Vec<String>,
    /// Names of `lookups`, in order.
    pub(crate) lookup_names: Vec<String>,
    /// Names of `settings`.
    pub(crate) setting_names: Vec<String>,
    /// Names `children.NAME` accepts, the lock's first.
    pub(crate) child_names: Vec<String>,
    /// The lock child's name (`execution` for the shorthand).
    pub(crate) lock_name: String,
    /// Names of entries that failed to parse, so that references to them are not reported.
    pub(crate) broken: BTreeSet<String>,
    /// The templates folder, to name a template file in problems.
    pub(crate) templates_dir: std::path::PathBuf,
    /// What the paths and templates compiled so far read of observed objects.
    pub(crate) reads: super::reads::ReadLog,
}

/// Compiles rules from their sources, `overrides` replacing settings (`NAME=VALUE`).
pub(crate) fn compile(
    sources: &Sources,
    overrides: &[(String, String)],
) -> Result<Rules, LoadError> {
    let display = sources.file.display().to_string();
    let mut c = Compiler {
        file: &display,
        map: SourceMap::default(),
        problems: Vec::new(),
        templates: Templates::new(),
        uses: Vec::new(),
        value_names: Vec::new(),
        related_names: Vec::new(),
        lookup_names: Vec::new(),
        setting_names: Vec::new(),
        child_names: Vec::new(),
        lock_name: String::new(),
        broken: BTreeSet::new(),
        templates_dir: sources.templates_dir.clone(),
        reads: Default::default(),
    };
    let Some(raw) = c.parse(&sources.text) else {
        return Err(invalid(c.problems, &display));
    };
    c.compile_templates(sources, &raw);
    let mut rules = c.build(sources, raw, overrides);
    if c.problems.is_empty() {
        rules.locations = std::mem::take(&mut c.map);
        Ok(rules)
    } else {
        Err(invalid(c.problems, &display))
    }
}

/// The problems in file order (the rules file first), without repeats.
fn invalid(mut problems: Vec<Problem>, display: &str) -> LoadError {
    problems.sort_by(|a, b| {
        (a.file != display, &a.file, a.line, a.column).cmp(&(
            b.file != display,
            &b.file,
            b.line,
            b.column,
        ))
    });
    problems.dedup();
    LoadError::Invalid(problems)
}

impl Compiler<'_> {
    /// Every section, in the order of the rules file, then the checks of the whole.
    fn build(
        &mut self,
        sources: &Sources,
        raw: super::model::RulesFile,
        overrides: &[(String, String)],
    ) -> Rules {
        let settings = self.compile_settings(&raw.settings, overrides);
        self.setting_names = raw.settings.keys().cloned().collect();
        self.value_names = raw.values.keys().cloned().collect();
        self.related_names = raw.related.keys().cloned().collect();
        self.lookup_names = raw.lookups.keys().cloned().collect();
        let resource = self.compile_resource(&raw.resource);
        let (execution, children) = self.compile_children(&raw);
        let related = self.compile_related(&raw.related);
        let lookups = self.compile_lookups(
            &raw.lookups,
            (&raw.resource.api_version, &raw.resource.kind),
        );
        let validation = self.compile_validation(&raw.validation);
        let values = self.compile_values(&raw.values);
        let (phases, initial) = self.compile_phases(&raw);
        let renamed_phases = self.compile_renamed_phases(&raw);
        let phase_names: Vec<String> = raw.phases.keys().cloned().collect();
        let rollout = self.compile_rollout(raw.rollout.as_ref(), &phase_names);
        let cooldown = raw
            .cooldown
            .as_ref()
            .map(|c| self.compile_cooldown(c, &phase_names, &raw));
        let on_delete = raw
            .on_delete
            .as_ref()
            .map(|a| self.compile_on_delete(a, &raw));
        let audit = self.compile_audit(raw.audit.as_ref());
        let simulation = raw.simulation.as_ref().map(|s| self.compile_simulation(s));
        self.check_metrics(&raw.metrics);
        let mut rules = Rules {
            file: sources.file.clone(),
            revision: revision(&sources.text, &sources.templates),
            metrics: raw.metrics.clone(),
            raw,
            templates: std::mem::take(&mut self.templates),
            settings_value: crate::render::lazy(std::sync::Arc::new(settings.clone())),
            settings,
            resource,
            execution,
            lock: self.lock_name.clone(),
            children,
            related,
            lookups,
            validation,
            values,
            phases,
            initial,
            renamed_phases,
            rollout,
            cooldown,
            on_delete,
            audit,
            simulation,
            locations: SourceMap::default(),
        };
        self.check_variables(&rules);
        self.compute_deps(&mut rules);
        let reads = self.object_reads(&rules);
        rules.execution.reads = reads.execution;
        for r in &mut rules.related {
            if let Some(k) = reads.related.get(&r.name) {
                r.reads = k.clone();
            }
        }
        self.check_graph(&rules);
        self.check_attempts(&rules);
        super::batches::plan(&mut rules);
        rules
    }

    /// A problem at the value of `path` in the rules file.
    pub(crate) fn problem(&mut self, path: &DocPath, message: impl Into<String>) {
        let pos = self.map.value_pos(path);
        self.problems.push(Problem {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// A problem at the key of `path` in the rules file.
    pub(crate) fn key_problem(&mut self, path: &DocPath, message: impl Into<String>) {
        let pos = self.map.key_pos(path);
        self.problems.push(Problem {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// A template string used in `scope` (`vars`: the action variables in scope there).
    pub(crate) fn tmpl(
        &mut self,
        at: &DocPath,
        source: &str,
        scope: Scope,
        vars: Option<&BTreeSet<String>>,
    ) -> Tmpl {
        match self.templates.compile(&at.to_string(), source) {
            Ok(t) => {
                if let Tmpl::Text(id) | Tmpl::Expr(id) = t {
                    self.uses.push((id, scope, at.clone(), vars.cloned()));
                    self.note_template_item(id, scope);
                }
                t
            }
            Err(e) => {
                self.template_error(at, &e);
                Tmpl::Literal(Value::Null)
            }
        }
    }

    /// A template that does not compile.
    pub(crate) fn template_error(&mut self, at: &DocPath, e: &RenderError) {
        self.problem(at, format!("template syntax error: {}", e.message));
    }

    /// A YAML value: strings are templates, anything else a literal.
    pub(crate) fn value_tmpl(
        &mut self,
        at: &DocPath,
        v: &Value,
        scope: Scope,
        vars: Option<&BTreeSet<String>>,
    ) -> Tmpl {
        match v {
            Value::String(s) => self.tmpl(at, s, scope, vars),
            other => Tmpl::Literal(other.clone()),
        }
    }

    /// An expression; its template id, or `usize::MAX` when it does not compile.
    pub(crate) fn expr(&mut self, at: &DocPath, source: &str, scope: Scope) -> usize {
        match self.templates.compile_expr(&at.to_string(), source) {
            Ok(id) => {
                self.uses.push((id, scope, at.clone(), None));
                self.note_template_item(id, scope);
                id
            }
            Err(e) => {
                self.problem(at, format!("expression syntax error: {}", e.message));
                usize::MAX
            }
        }
    }

    /// A JSONPath; a reference to an undefined value, setting or related list is a problem.
    pub(crate) fn path(&mut self, at: &DocPath, source: &str, relative: bool) -> Option<JPath> {
        let r = if relative {
            JPath::relative(source)
        } else {
            JPath::rooted(source)
        };
        match r {
            Ok(p) => {
                self.note_path_reads(&p);
                let names = match p.root() {
                    Some(Root::Values) => Some((&self.value_names, "value", "values")),
                    Some(Root::Settings) => Some((&self.setting_names, "setting", "settings")),
                    Some(Root::Related) => {
                        Some((&self.related_names, "related object list", "related"))
                    }
                    Some(Root::Lookups) => Some((&self.lookup_names, "lookup", "lookups")),
                    Some(Root::Children) => Some((&self.child_names, "child", "children")),
                    _ => None,
                };
                if let (Some((known, what, section)), Some(key)) = (names, p.key())
                    && !known.iter().any(|k| k == key)
                    && !self.broken.contains(&format!("{section}.{key}"))
                {
                    let msg = format!(
                        "`{source}` reads unknown {what} `{key}`{} (defined: {})",
                        did_you_mean(key, known),
                        list_or_none(known)
                    );
                    self.problem(at, msg);
                }
                Some(p)
            }
            Err(e) => {
                self.problem(at, e.to_string());
                None
            }
        }
    }

    /// A duration template; a literal duration must parse.
    pub(crate) fn duration_tmpl(&mut self, at: &DocPath, source: &str, scope: Scope) -> Tmpl {
        let t = self.tmpl(at, source, scope, None);
        if let Tmpl::Literal(Value::String(s)) = &t
            && let Err(e) = crate::time::parse_duration(s)
        {
            self.problem(at, e);
        }
        t
    }

    /// Predicates refer to durations by template id; literals become constant expressions.
    pub(crate) fn tmpl_id_for_duration(&mut self, at: &DocPath, t: Tmpl, scope: Scope) -> usize {
        match t {
            Tmpl::Text(id) | Tmpl::Expr(id) => id,
            Tmpl::Literal(v) => {
                let lit = serde_json::to_string(&v).unwrap_or_else(|_| "\"0s\"".into());
                self.expr(at, &lit, scope)
            }
        }
    }

    /// A tree of templates shaped like the JSON it produces (`null` removes a field).
    pub(crate) fn tree(
        &mut self,
        at: &DocPath,
        v: &Value,
        scope: Scope,
        vars: Option<&BTreeSet<String>>,
    ) -> TmplTree {
        match v {
            Value::Null => TmplTree::Remove,
            Value::Object(m) => TmplTree::Map(
                m.iter()
                    .map(|(k, v)| (k.clone(), self.tree(&at.key(k), v, scope, vars)))
                    .collect(),
            ),
            Value::Array(items) => TmplTree::List(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.tree(&at.index(i), v, scope, vars))
                    .collect(),
            ),
            other => TmplTree::Leaf(self.value_tmpl(at, other, scope, vars)),
        }
    }

    /// `group/version`, or `version` for the core group; taken literally, never a template.
    pub(crate) fn check_api_version(&mut self, at: &DocPath, v: &str) {
        if is_templated(v) {
            self.problem(at, format!("`{v}` is a template, but an apiVersion is taken literally: the controller watches the kinds the rules name before any resource is read"));
            return;
        }
        let group_ok = |g: &str| {
            !g.is_empty()
                && g.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        let version_ok = |v: &str| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        };
        let parts: Vec<_> = v.split('/').collect();
        let ok = match parts.as_slice() {
            [version] => version_ok(version),
            [group, version] => group_ok(group) && version_ok(version),
            _ => false,
        };
        if !ok {
            self.problem(
                at,
                format!("`{v}` is not an apiVersion (`group/version`, or `v1` for the core group)"),
            );
        }
    }
}

impl Compiler<'_> {
    /// A kind: a name such as `ConfigMap`, taken literally, never a template.
    pub(crate) fn check_kind(&mut self, at: &DocPath, kind: &str) {
        if is_templated(kind) {
            self.problem(at, format!("`{kind}` is a template, but a kind is taken literally: the controller watches the kinds the rules name before any resource is read"));
        } else if !kind.starts_with(|c: char| c.is_ascii_alphabetic())
            || !kind.chars().all(|c| c.is_ascii_alphanumeric())
        {
            self.problem(
                at,
                format!("`{kind}` is not a kind (letters and digits, starting with a letter, e.g. `ConfigMap`)"),
            );
        }
    }
}

/// Whether a string holds template syntax.
fn is_templated(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// Items joined with commas, or `none`.
pub(crate) fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// A multi-line message (a regex error) on one line.
pub(crate) fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Short content hash of the rules text and the template files that were read.
fn revision(text: &str, templates: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    h.update(text.as_bytes());
    for (name, body) in templates {
        h.update([0u8]);
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update(body.as_bytes());
    }
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}
