//! Compilation: raw model → [`Rules`], collecting every problem with its place.

use super::locate::{DocPath, Seg, SourceMap};
use super::model::*;
use super::{LoadError, Problem, Rules, read_limited};
use crate::expr::{Path as JPath, Pred, Root};
use crate::render::{FUNCTIONS, RenderError, Templates, Tmpl};
use indexmap::IndexMap;
use regex::Regex;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Values and related objects a piece of the rules reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deps {
    /// Indices into [`Rules::values`].
    pub values: BTreeSet<usize>,
    /// Indices into [`Rules::related`].
    pub related: BTreeSet<usize>,
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
    /// Namespace template.
    pub namespace: Tmpl,
    /// Name template.
    pub name: Tmpl,
    /// Template id of the object body.
    pub template: usize,
    /// Owner labels.
    pub owner_labels: OwnerLabels,
    /// What the name, namespace and body read.
    pub deps: Deps,
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
    /// Selects the reference entries.
    pub from: JPath,
    /// Name inside an entry.
    pub name_path: JPath,
    /// Namespace inside an entry.
    pub namespace_path: Option<JPath>,
    /// Which entries are read.
    pub filter: Option<Pred>,
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
pub enum Matcher {
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

impl Matcher {
    /// Whether `text` passes.
    pub fn test(&self, text: &str, lower: &str) -> bool {
        match self {
            Matcher::Contains(n) => n.iter().any(|n| lower.contains(n.as_str())),
            Matcher::ContainsAll(n) => n.iter().all(|n| lower.contains(n.as_str())),
            Matcher::Equals(s) => text == s,
            Matcher::In(v) => v.iter().any(|s| s == text),
            Matcher::Regex(r) => r.is_match(text),
        }
    }
}

/// A classification table.
#[derive(Debug, Clone)]
pub struct TableRules {
    /// Named inputs.
    pub inputs: Vec<(String, Tmpl)>,
    /// Rows: tests by input index, and the value.
    pub rows: Vec<(Vec<(usize, Matcher)>, Value)>,
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
pub struct CondRules {
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
    /// Execution object action.
    pub execution: Option<ExecutionAction>,
    /// Status to set (several trees, applied in order).
    pub status: Vec<TmplTree>,
    /// Conditions.
    pub conditions: Vec<CondRules>,
    /// Events.
    pub events: Vec<EventRules>,
    /// Audit record (merged over the base).
    pub audit: Vec<TmplTree>,
    /// Metrics.
    pub metrics: Vec<MetricRules>,
    /// What it reads.
    pub deps: Deps,
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
    /// What the guard reads.
    pub when_deps: Deps,
    /// Effects.
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
pub struct SimChange {
    /// Status merge patch.
    pub status: Option<TmplTree>,
    /// Objects that appear.
    pub objects: Vec<TmplTree>,
}

/// How the execution object behaves in simulations.
#[derive(Debug, Clone)]
pub struct SimRules {
    /// Applied after creation.
    pub started: Option<SimChange>,
    /// Named outcomes.
    pub outcomes: Vec<(String, SimChange)>,
}

/// Where a template is used, to decide which variables it may read.
#[derive(Clone, Copy, PartialEq)]
enum Scope {
    /// Values, guards, validation, execution identity: no `vars`.
    Plain,
    /// Inside an action: `vars` allowed.
    Action,
    /// Inside a `where` filter: `item` allowed.
    Item,
    /// Simulation changes: `outcome` allowed.
    Sim,
}

struct Compiler<'a> {
    file: &'a str,
    map: SourceMap,
    problems: Vec<Problem>,
    templates: Templates,
    /// Template id → (scope, where it is, action vars in scope) for the variable check.
    uses: Vec<(usize, Scope, DocPath, Option<BTreeSet<String>>)>,
    value_names: Vec<String>,
    related_names: Vec<String>,
    setting_names: Vec<String>,
    /// Names of entries that failed to parse, so that references to them are not reported.
    broken: BTreeSet<String>,
}

pub(super) fn compile(
    file: &Path,
    display: &str,
    text: &str,
    dir: &Path,
    overrides: &[(String, String)],
) -> Result<Rules, LoadError> {
    let mut c = Compiler {
        file: display,
        map: SourceMap::default(),
        problems: Vec::new(),
        templates: Templates::new(),
        uses: Vec::new(),
        value_names: Vec::new(),
        related_names: Vec::new(),
        setting_names: Vec::new(),
        broken: BTreeSet::new(),
    };
    match SourceMap::build(text) {
        Ok(map) => c.map = map,
        Err((pos, msg)) => {
            return Err(LoadError::Invalid(vec![Problem {
                file: display.to_string(),
                line: pos.line,
                column: pos.column,
                path: "(document)".into(),
                message: format!("YAML syntax error: {msg}"),
            }]));
        }
    }
    for (path, pos) in std::mem::take(&mut c.map.duplicates) {
        c.problems.push(Problem {
            file: display.to_string(),
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            message: "duplicate key: each key may appear only once in a mapping".into(),
        });
    }
    if !c.problems.is_empty() {
        return Err(invalid(c.problems, display));
    }
    let doc: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            c.problems.push(Problem {
                file: display.to_string(),
                line,
                column,
                path: "(document)".into(),
                message: format!("YAML error: {}", strip_location(&e.to_string())),
            });
            return Err(invalid(c.problems, display));
        }
    };
    let Some(raw) = c.read_file(&doc) else {
        return Err(invalid(c.problems, display));
    };
    let templates_dir = dir.join(raw.templates.as_deref().unwrap_or("templates"));
    let template_files = c.load_template_files(&templates_dir, &raw);
    let rules = c.build(file, raw, overrides, &template_files, text);
    match rules {
        Some(r) if c.problems.is_empty() => Ok(r),
        _ => Err(invalid(c.problems, display)),
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

fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

impl Compiler<'_> {
    fn problem(&mut self, path: &DocPath, message: impl Into<String>) {
        let pos = self.map.value_pos(path);
        self.problems.push(Problem {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn key_problem(&mut self, path: &DocPath, message: impl Into<String>) {
        let pos = self.map.key_pos(path);
        self.problems.push(Problem {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            message: message.into(),
        });
    }

    // ---- stage 1: serde, entry by entry ----

    fn de<T: DeserializeOwned>(&mut self, v: &serde_yaml::Value, at: &DocPath) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                let mut path = at.clone();
                for seg in e.path().iter() {
                    match seg {
                        serde_path_to_error::Segment::Seq { index } => {
                            path.0.push(Seg::Index(*index))
                        }
                        serde_path_to_error::Segment::Map { key } => {
                            path.0.push(Seg::Key(key.clone()))
                        }
                        serde_path_to_error::Segment::Enum { variant } => {
                            path.0.push(Seg::Key(variant.clone()))
                        }
                        serde_path_to_error::Segment::Unknown => {}
                    }
                }
                let msg = e.inner().to_string();
                if let Some(field) = unknown_field(&msg) {
                    // the error's path may already end at the unknown key
                    let p = if path.0.last() == Some(&Seg::Key(field.clone())) {
                        path.clone()
                    } else {
                        path.key(&field)
                    };
                    self.key_problem(
                        &p,
                        format!(
                            "{} (check the spelling, or see `lifecycle schema`)",
                            strip_location(&msg)
                        ),
                    );
                } else {
                    self.problem(&path, strip_location(&msg));
                }
                None
            }
        }
    }

    fn read_file(&mut self, doc: &serde_yaml::Value) -> Option<RulesFile> {
        let root = DocPath::root();
        let Some(top) = doc.as_mapping() else {
            self.problem(
                &root,
                "the rules file must be a YAML mapping (see `lifecycle schema`)",
            );
            return None;
        };
        const KNOWN: &[&str] = &[
            "version",
            "description",
            "templates",
            "settings",
            "resource",
            "execution",
            "related",
            "validation",
            "values",
            "actions",
            "phases",
            "cooldown",
            "onDelete",
            "audit",
            "metrics",
            "simulation",
        ];
        for k in top.keys() {
            let name = k.as_str().unwrap_or("");
            if !KNOWN.contains(&name) {
                self.key_problem(
                    &root.key(name),
                    format!(
                        "unknown field `{name}`, expected one of {}",
                        KNOWN.join(", ")
                    ),
                );
            }
        }
        let get = |k: &str| top.get(serde_yaml::Value::String(k.into()));
        let mut ok = true;
        macro_rules! required {
            ($key:literal, $ty:ty) => {
                match get($key) {
                    Some(v) => {
                        let r: Option<$ty> = self.de(v, &root.key($key));
                        ok &= r.is_some();
                        r
                    }
                    None => {
                        self.problem(&root, format!("missing field `{}`", $key));
                        ok = false;
                        None
                    }
                }
            };
        }
        let version = required!("version", u32);
        if let Some(v) = version
            && v != 1
        {
            self.problem(
                &root.key("version"),
                format!("unsupported version {v}: only version 1 exists"),
            );
        }
        let resource = required!("resource", ResourceSpec);
        let execution = required!("execution", ExecutionSpec);
        let description = get("description").and_then(|v| self.de(v, &root.key("description")));
        let templates = get("templates").and_then(|v| self.de(v, &root.key("templates")));
        let cooldown = get("cooldown").and_then(|v| {
            let r = self.de(v, &root.key("cooldown"));
            ok &= r.is_some();
            r
        });
        let on_delete = get("onDelete").and_then(|v| {
            let r = self.de(v, &root.key("onDelete"));
            ok &= r.is_some();
            r
        });
        let simulation = get("simulation").and_then(|v| {
            let r = self.de(v, &root.key("simulation"));
            ok &= r.is_some();
            r
        });
        let audit = get("audit").and_then(|v| {
            let r = self.de(v, &root.key("audit"));
            ok &= r.is_some();
            r
        });
        let settings = self.de_map::<Setting>(get("settings"), "settings");
        let related = self.de_map::<RelatedSpec>(get("related"), "related");
        let values = self.de_map::<ValueSpec>(get("values"), "values");
        let actions = self.de_map::<Action>(get("actions"), "actions");
        let metrics = self.de_map::<MetricSpec>(get("metrics"), "metrics");
        let phases = match get("phases") {
            Some(v) => self.de_map::<Phase>(Some(v), "phases"),
            None => {
                self.problem(&root, "missing field `phases`");
                IndexMap::new()
            }
        };
        let mut validation = Vec::new();
        if let Some(v) = get("validation") {
            match v.as_sequence() {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(r) = self.de(item, &root.key("validation").index(i)) {
                            validation.push(r);
                        }
                    }
                }
                None => self.problem(
                    &root.key("validation"),
                    "expected a list of validation rules",
                ),
            }
        }
        if !ok {
            return None;
        }
        Some(RulesFile {
            version: version?,
            description,
            templates,
            settings,
            resource: resource?,
            execution: execution?,
            related,
            validation,
            values,
            actions,
            phases,
            cooldown,
            on_delete,
            audit,
            metrics,
            simulation,
        })
    }

    fn de_map<T: DeserializeOwned + Default>(
        &mut self,
        v: Option<&serde_yaml::Value>,
        section: &str,
    ) -> IndexMap<String, T> {
        let mut out = IndexMap::new();
        let Some(v) = v else { return out };
        let at = DocPath::root().key(section);
        if v.is_null() {
            return out;
        }
        let Some(m) = v.as_mapping() else {
            self.problem(
                &at,
                format!("`{section}` must be a mapping of names to entries"),
            );
            return out;
        };
        for (k, item) in m {
            let Some(name) = k.as_str() else {
                self.problem(&at, format!("`{section}` keys must be strings"));
                continue;
            };
            match self.de::<T>(item, &at.key(name)) {
                Some(t) => {
                    out.insert(name.to_string(), t);
                }
                None => {
                    self.broken.insert(format!("{section}.{name}"));
                    out.insert(name.to_string(), T::default());
                }
            }
        }
        out
    }

    fn load_template_files(&mut self, dir: &Path, raw: &RulesFile) -> BTreeMap<String, String> {
        let mut files = BTreeMap::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                self.problem(
                    &DocPath::root().key("execution").key("template"),
                    format!("cannot read the templates folder {}: {e}", dir.display()),
                );
                return files;
            }
        };
        let mut names: Vec<_> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                // follows symlinks: a mounted ConfigMap's files are links into `..data`
                std::fs::metadata(e.path()).is_ok_and(|m| m.is_file())
            })
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            match read_limited(&path) {
                Ok(text) => {
                    files.insert(name, text);
                }
                Err(e) => self.problems.push(Problem {
                    file: path.display().to_string(),
                    line: 1,
                    column: 1,
                    path: "(template)".into(),
                    message: e,
                }),
            }
        }
        if !files.contains_key(&raw.execution.template) {
            self.problem(
                &DocPath::root().key("execution").key("template"),
                format!(
                    "template `{}` is not in {} (found: {})",
                    raw.execution.template,
                    dir.display(),
                    if files.is_empty() {
                        "none".to_string()
                    } else {
                        files.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            );
        }
        for (name, text) in &files {
            if let Err(e) = self.templates.add_file(name, text.clone()) {
                self.problems.push(Problem {
                    file: dir.join(name).display().to_string(),
                    line: e.line.unwrap_or(1),
                    column: 1,
                    path: "(template)".into(),
                    message: format!("template syntax error: {}", e.message),
                });
            }
        }
        files
    }

    // ---- stage 2: compile ----

    fn tmpl(
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
                }
                t
            }
            Err(e) => {
                self.template_error(at, &e);
                Tmpl::Literal(Value::Null)
            }
        }
    }

    fn template_error(&mut self, at: &DocPath, e: &RenderError) {
        self.problem(at, format!("template syntax error: {}", e.message));
    }

    fn value_tmpl(
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

    fn expr(&mut self, at: &DocPath, source: &str, scope: Scope) -> usize {
        match self.templates.compile_expr(&at.to_string(), source) {
            Ok(id) => {
                self.uses.push((id, scope, at.clone(), None));
                id
            }
            Err(e) => {
                self.problem(at, format!("expression syntax error: {}", e.message));
                usize::MAX
            }
        }
    }

    fn path(&mut self, at: &DocPath, source: &str, relative: bool) -> Option<JPath> {
        let r = if relative {
            JPath::relative(source)
        } else {
            JPath::rooted(source)
        };
        match r {
            Ok(p) => {
                let names = match p.root() {
                    Some(Root::Values) => Some((&self.value_names, "value", "values")),
                    Some(Root::Settings) => Some((&self.setting_names, "setting", "settings")),
                    Some(Root::Related) => {
                        Some((&self.related_names, "related object list", "related"))
                    }
                    _ => None,
                };
                if let (Some((known, what, section)), Some(key)) = (names, p.key())
                    && !known.iter().any(|k| k == key)
                    && !self.broken.contains(&format!("{section}.{key}"))
                {
                    let msg = format!(
                        "`{source}` reads unknown {what} `{key}` (defined: {})",
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

    fn duration_tmpl(&mut self, at: &DocPath, source: &str, scope: Scope) -> Tmpl {
        let t = self.tmpl(at, source, scope, None);
        if let Tmpl::Literal(Value::String(s)) = &t
            && let Err(e) = crate::time::parse_duration(s)
        {
            self.problem(at, e);
        }
        t
    }

    fn pred(&mut self, at: &DocPath, p: &Predicate, scope: Scope) -> Option<Pred> {
        let relative = scope == Scope::Item;
        let mut set = Vec::new();
        if p.exists.is_some() {
            set.push("exists");
        }
        if p.equals.is_some() {
            set.push("equals");
        }
        if p.one_of.is_some() {
            set.push("in");
        }
        if p.matches.is_some() {
            set.push("matches");
        }
        if p.elapsed.is_some() {
            set.push("elapsed");
        }
        if p.expr.is_some() {
            set.push("expr");
        }
        if p.all.is_some() {
            set.push("all");
        }
        if p.any.is_some() {
            set.push("any");
        }
        if p.not.is_some() {
            set.push("not");
        }
        if set.len() != 1 {
            self.problem(
                at,
                if set.is_empty() {
                    "empty predicate: set one of exists, equals, in, matches, elapsed, expr, all, any, not".to_string()
                } else {
                    format!("a predicate has exactly one form, found {}: split it with `all` or `any`", set.join(" and "))
                },
            );
            return None;
        }
        if let Some(s) = &p.exists {
            return self.path(&at.key("exists"), s, relative).map(Pred::Exists);
        }
        if let Some(pv) = &p.equals {
            return self
                .path(&at.key("equals").key("path"), &pv.path, relative)
                .map(|x| Pred::Equals(x, pv.value.clone()));
        }
        if let Some(pv) = &p.one_of {
            return self
                .path(&at.key("in").key("path"), &pv.path, relative)
                .map(|x| Pred::In(x, pv.values.clone()));
        }
        if let Some(pr) = &p.matches {
            let path = self.path(&at.key("matches").key("path"), &pr.path, relative);
            let re = match Regex::new(&pr.regex) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.problem(
                        &at.key("matches").key("regex"),
                        format!("invalid regex: {}", one_line(&e.to_string())),
                    );
                    None
                }
            };
            return Some(Pred::Matches(path?, re?));
        }
        if let Some(el) = &p.elapsed {
            let since = self.path(&at.key("elapsed").key("since"), &el.since, relative);
            let t = self.duration_tmpl(&at.key("elapsed").key("atLeast"), &el.at_least, scope);
            let id = self.tmpl_id_for_duration(&at.key("elapsed").key("atLeast"), t, scope);
            return Some(Pred::Elapsed {
                since: since?,
                at_least: id,
            });
        }
        if let Some(e) = &p.expr {
            let id = self.expr(&at.key("expr"), e, scope);
            return (id != usize::MAX).then_some(Pred::Expr(id));
        }
        let list = |c: &mut Self, items: &[Predicate], key: &str| -> Option<Vec<Pred>> {
            let mut out = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match c.pred(&at.key(key).index(i), item, scope) {
                    Some(p) => out.push(p),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        };
        if let Some(items) = &p.all {
            return list(self, items, "all").map(Pred::All);
        }
        if let Some(items) = &p.any {
            return list(self, items, "any").map(Pred::Any);
        }
        if let Some(inner) = &p.not {
            return self
                .pred(&at.key("not"), inner, scope)
                .map(|p| Pred::Not(Box::new(p)));
        }
        None
    }

    /// Predicates refer to durations by template id; literals become constant expressions.
    fn tmpl_id_for_duration(&mut self, at: &DocPath, t: Tmpl, scope: Scope) -> usize {
        match t {
            Tmpl::Text(id) | Tmpl::Expr(id) => id,
            Tmpl::Literal(v) => {
                let lit = serde_json::to_string(&v).unwrap_or_else(|_| "\"0s\"".into());
                self.expr(at, &lit, scope)
            }
        }
    }

    fn tree(
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

    fn action(
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
                            "unknown action `{name}` (defined: {})",
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
            let cond = CondRules {
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

    fn build(
        &mut self,
        file: &Path,
        raw: RulesFile,
        overrides: &[(String, String)],
        template_files: &BTreeMap<String, String>,
        text: &str,
    ) -> Option<Rules> {
        let root = DocPath::root();
        // settings
        let mut settings = serde_json::Map::new();
        for (k, v) in &raw.settings {
            settings.insert(k.clone(), serde_json::to_value(v).unwrap_or(Value::Null));
        }
        for (k, v) in overrides {
            match settings.get(k) {
                None => self.problems.push(Problem {
                    file: "--set".into(),
                    line: 1,
                    column: 1,
                    path: k.clone(),
                    message: format!(
                        "unknown setting `{k}` (the rules define: {})",
                        list_or_none(&raw.settings.keys().cloned().collect::<Vec<_>>())
                    ),
                }),
                Some(old) => {
                    let new = match old {
                        Value::Number(_) => match v.trim().parse::<i64>() {
                            Ok(i) => Some(Value::from(i)),
                            Err(_) => v
                                .trim()
                                .parse::<f64>()
                                .ok()
                                .and_then(serde_json::Number::from_f64)
                                .map(Value::Number),
                        },
                        Value::Bool(_) => v.parse::<bool>().ok().map(Value::Bool),
                        _ => Some(Value::String(v.clone())),
                    };
                    match new {
                        Some(n) => {
                            settings.insert(k.clone(), n);
                        }
                        None => self.problems.push(Problem {
                            file: "--set".into(),
                            line: 1,
                            column: 1,
                            path: k.clone(),
                            message: format!(
                                "setting `{k}` is a {}, `{v}` is not",
                                if old.is_number() { "number" } else { "boolean" }
                            ),
                        }),
                    }
                }
            }
        }
        self.setting_names = raw.settings.keys().cloned().collect();
        self.value_names = raw.values.keys().cloned().collect();
        self.related_names = raw.related.keys().cloned().collect();

        // resource
        let res = &raw.resource;
        let rat = root.key("resource");
        self.check_api_version(&rat.key("apiVersion"), &res.api_version);
        let resource = ResourceRules {
            api_version: res.api_version.clone(),
            kind: res.kind.clone(),
            finalizer: res.finalizer.clone(),
            field_manager: res.field_manager.clone(),
            component: res.component.clone(),
            status: res.status.clone(),
        };

        // execution
        let ex = raw.execution.clone();
        let ex = &ex;
        let xat = root.key("execution");
        self.check_api_version(&xat.key("apiVersion"), &ex.api_version);
        let namespace = self.tmpl(&xat.key("namespace"), &ex.namespace, Scope::Plain, None);
        let name = self.tmpl(&xat.key("name"), &ex.name, Scope::Plain, None);
        let template = self.templates.file_id(&ex.template).unwrap_or(usize::MAX);
        if template != usize::MAX {
            self.uses
                .push((template, Scope::Plain, xat.key("template"), None));
        }
        for (k, label) in [
            ("name", &ex.owner_labels.name),
            ("namespace", &ex.owner_labels.namespace),
        ] {
            if let Err(e) = check_label_key(label) {
                self.problem(&xat.key("ownerLabels").key(k), e);
            }
        }
        if ex.owner_labels.name == ex.owner_labels.namespace {
            self.problem(
                &xat.key("ownerLabels"),
                "the name and namespace labels must differ",
            );
        }

        // related
        let mut related = Vec::new();
        for (rname, r) in &raw.related {
            let at = root.key("related").key(rname);
            if self.broken.contains(&format!("related.{rname}")) {
                continue;
            }
            self.check_api_version(&at.key("apiVersion"), &r.api_version);
            let from = self.path(&at.key("from"), &r.from, false);
            let name_path = self.path(&at.key("name"), &r.name, true);
            let namespace_path = r
                .namespace
                .as_ref()
                .and_then(|n| self.path(&at.key("namespace"), n, true));
            let filter = r
                .filter
                .as_ref()
                .and_then(|f| self.pred(&at.key("where"), f, Scope::Item));
            if let Some(f) = &filter {
                // the shell chooses what to read before any template runs
                let mut templated = false;
                f.visit_templates(&mut |_| templated = true);
                if templated {
                    self.problem(&at.key("where"), "a related list's `where` may only use exists, equals, in and matches (with all, any, not): it is evaluated before templates can run");
                }
            }
            if let (Some(from), Some(name_path)) = (from, name_path) {
                related.push(RelatedRules {
                    name: rname.clone(),
                    api_version: r.api_version.clone(),
                    kind: r.kind.clone(),
                    from,
                    name_path,
                    namespace_path,
                    filter,
                });
            }
        }

        // validation
        let mut validation = Vec::new();
        let mut seen_rules = BTreeSet::new();
        for (i, v) in raw.validation.iter().enumerate() {
            let at = root.key("validation").index(i);
            if !seen_rules.insert(v.name.clone()) {
                self.problem(
                    &at.key("name"),
                    format!("duplicate validation rule name `{}`", v.name),
                );
            }
            let require = self.pred(&at.key("require"), &v.require, Scope::Plain);
            let message = self.tmpl(&at.key("message"), &v.message, Scope::Plain, None);
            if let Some(require) = require {
                validation.push(ValidationRules {
                    name: v.name.clone(),
                    require,
                    message,
                    deps: Deps::default(),
                });
            }
        }

        // values
        let mut values = Vec::new();
        for (vname, v) in &raw.values {
            let at = root.key("values").key(vname);
            if self.broken.contains(&format!("values.{vname}")) {
                values.push(ValueRules {
                    name: vname.clone(),
                    kind: ValueKind::Expr(usize::MAX),
                    default: Value::Null,
                    deps: Deps::default(),
                });
                continue;
            }
            let kind = self.value_kind(&at, v);
            values.push(ValueRules {
                name: vname.clone(),
                kind: kind.unwrap_or(ValueKind::Expr(usize::MAX)),
                default: v.default.clone().unwrap_or(Value::Null),
                deps: Deps::default(),
            });
        }

        // phases
        let phase_names: Vec<String> = raw.phases.keys().cloned().collect();
        let mut phases = Vec::new();
        let mut initial = Vec::new();
        for (pname, p) in &raw.phases {
            let at = root.key("phases").key(pname);
            if p.initial {
                initial.push(pname.clone());
            }
            let poll = p
                .poll
                .as_ref()
                .map(|s| self.duration_tmpl(&at.key("poll"), s, Scope::Plain));
            let sync = p.sync.as_ref().map(|s| {
                self.action(
                    &at.key("sync"),
                    ActionParts::of_action(s),
                    &raw.actions,
                    &raw.metrics,
                    false,
                )
            });
            let mut transitions = Vec::new();
            let mut seen = BTreeSet::new();
            for (i, t) in p.transitions.iter().enumerate() {
                let tat = at.key("transitions").index(i);
                if !seen.insert(t.name.clone()) {
                    self.problem(
                        &tat.key("name"),
                        format!("duplicate transition name `{}` in phase {pname}", t.name),
                    );
                }
                let to = match phase_names.iter().position(|n| n == &t.to) {
                    Some(i) => i,
                    None => {
                        if !self.broken.contains(&format!("phases.{}", t.to)) {
                            self.problem(
                                &tat.key("to"),
                                format!(
                                    "unknown phase `{}` (phases: {})",
                                    t.to,
                                    phase_names.join(", ")
                                ),
                            );
                        }
                        usize::MAX
                    }
                };
                let when = t
                    .when
                    .as_ref()
                    .and_then(|w| self.pred(&tat.key("when"), w, Scope::Plain));
                let action = self.action(
                    &tat,
                    ActionParts::of_transition(t),
                    &raw.actions,
                    &raw.metrics,
                    true,
                );
                transitions.push(TransitionRules {
                    name: t.name.clone(),
                    to,
                    when,
                    when_deps: Deps::default(),
                    action,
                });
            }
            phases.push(PhaseRules {
                name: pname.clone(),
                terminal: p.terminal,
                validate: p.validate,
                poll,
                sync,
                transitions,
            });
        }
        if phase_names.is_empty() {
            self.problem(
                &root.key("phases"),
                "no phases: declare at least an initial and a terminal phase",
            );
        }
        let phases_broken = self.broken.iter().any(|b| b.starts_with("phases."));
        match initial.len() {
            0 if !phase_names.is_empty() && !phases_broken => self.problem(
                &root.key("phases"),
                "no initial phase: mark exactly one phase `initial: true`",
            ),
            0 => {}
            1 => {}
            _ => self.problem(
                &root.key("phases"),
                format!("more than one initial phase: {}", initial.join(", ")),
            ),
        }
        let initial = initial
            .first()
            .and_then(|n| phase_names.iter().position(|p| p == n))
            .unwrap_or(0);

        // cooldown
        let cooldown = raw.cooldown.as_ref().map(|c| {
            let at = root.key("cooldown");
            let mut idx = Vec::new();
            for (i, p) in c.phases.iter().enumerate() {
                match phase_names.iter().position(|n| n == p) {
                    Some(x) => idx.push(x),
                    None => self.problem(
                        &at.key("phases").index(i),
                        format!("unknown phase `{p}` (phases: {})", phase_names.join(", ")),
                    ),
                }
            }
            let period = self.duration_tmpl(&at.key("period"), &c.period, Scope::Plain);
            let when = c
                .when
                .as_ref()
                .and_then(|w| self.pred(&at.key("when"), w, Scope::Plain));
            let release = self.action(
                &at.key("release"),
                ActionParts::of_action(&c.release),
                &raw.actions,
                &raw.metrics,
                true,
            );
            CooldownRules {
                phases: idx,
                period,
                since: c.since.clone(),
                marker: c.marker.clone(),
                when,
                deps: Deps::default(),
                release,
            }
        });

        let on_delete = raw.on_delete.as_ref().map(|a| {
            let at = root.key("onDelete");
            let r = self.action(
                &at,
                ActionParts::of_action(a),
                &raw.actions,
                &raw.metrics,
                true,
            );
            if r.execution == Some(ExecutionAction::Create) {
                self.problem(
                    &at.key("execution"),
                    "`onDelete` cannot create the execution object; use `delete`",
                );
            }
            if !r.status.is_empty() || !r.conditions.is_empty() {
                self.problem(
                    &at,
                    "`onDelete` cannot write status: the resource is going away",
                );
            }
            r
        });

        let audit = match &raw.audit {
            Some(a) => AuditRules {
                id_field: a.id_field.clone(),
                time_field: a.time_field.clone(),
                record: (!a.record.is_null()).then(|| {
                    self.tree(
                        &root.key("audit").key("record"),
                        &a.record,
                        Scope::Action,
                        None,
                    )
                }),
            },
            None => AuditRules {
                id_field: "event_id".into(),
                time_field: "event_timestamp".into(),
                record: None,
            },
        };

        let simulation = raw.simulation.as_ref().map(|sim| {
            let at = root.key("simulation");
            let change = |c: &mut Self, at: DocPath, ch: &SimulatedChange| SimChange {
                status: ch
                    .status
                    .as_ref()
                    .map(|s| c.tree(&at.key("status"), s, Scope::Sim, None)),
                objects: ch
                    .objects
                    .iter()
                    .enumerate()
                    .map(|(i, o)| c.tree(&at.key("objects").index(i), o, Scope::Sim, None))
                    .collect(),
            };
            SimRules {
                started: sim
                    .started
                    .as_ref()
                    .map(|s| change(self, at.key("started"), s)),
                outcomes: sim
                    .outcomes
                    .iter()
                    .map(|(k, o)| (k.clone(), change(self, at.key("outcomes").key(k), o)))
                    .collect(),
            }
        });

        for (mname, m) in &raw.metrics {
            let at = root.key("metrics").key(mname);
            if !valid_metric_name(mname) {
                self.key_problem(
                    &at,
                    format!(
                        "`{mname}` is not a valid Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"
                    ),
                );
            }
            if m.buckets.is_some() && m.kind != MetricKind::Histogram {
                self.problem(&at.key("buckets"), "only histograms have buckets");
            }
        }

        let mut rules = Rules {
            file: file.to_path_buf(),
            revision: revision(text, template_files),
            raw,
            templates: std::mem::take(&mut self.templates),
            settings: Value::Object(settings),
            resource,
            execution: ExecutionRules {
                api_version: ex.api_version.clone(),
                kind: ex.kind.clone(),
                namespace,
                name,
                template,
                owner_labels: ex.owner_labels.clone(),
                deps: Deps::default(),
            },
            related,
            validation,
            values,
            phases,
            initial,
            cooldown,
            on_delete,
            audit,
            metrics: IndexMap::new(),
            simulation,
        };
        rules.metrics = rules.raw.metrics.clone();
        self.check_variables(&rules);
        self.compute_deps(&mut rules);
        self.check_graph(&rules);
        Some(rules)
    }

    fn check_api_version(&mut self, at: &DocPath, v: &str) {
        let parts: Vec<_> = v.split('/').collect();
        let ok = match parts.as_slice() {
            [version] => !version.is_empty(),
            [group, version] => !group.is_empty() && !version.is_empty(),
            _ => false,
        };
        if !ok {
            self.problem(
                at,
                format!("`{v}` is not an apiVersion (`group/version`, or `v1` for the core group)"),
            );
        }
    }

    fn value_kind(&mut self, at: &DocPath, v: &ValueSpec) -> Option<ValueKind> {
        let mut set = Vec::new();
        if v.path.is_some() {
            set.push("path");
        }
        if v.list.is_some() {
            set.push("list");
        }
        if v.count.is_some() {
            set.push("count");
        }
        if v.find.is_some() {
            set.push("find");
        }
        if v.expr.is_some() {
            set.push("expr");
        }
        if v.template.is_some() {
            set.push("template");
        }
        if v.table.is_some() {
            set.push("table");
        }
        if set.len() != 1 {
            self.problem(
                at,
                if set.is_empty() {
                    "a value needs exactly one of path, list, count, find, expr, template, table"
                        .to_string()
                } else {
                    format!("a value has exactly one form, found {}", set.join(" and "))
                },
            );
            return None;
        }
        let filter = |c: &mut Self| {
            v.filter
                .as_ref()
                .and_then(|f| c.pred(&at.key("where"), f, Scope::Item))
        };
        if v.filter.is_some()
            && (v.path.is_some() || v.expr.is_some() || v.template.is_some() || v.table.is_some())
        {
            self.problem(
                &at.key("where"),
                "`where` applies only to list, count and find",
            );
        }
        if let Some(p) = &v.path {
            return self.path(&at.key("path"), p, false).map(ValueKind::Path);
        }
        if let Some(p) = &v.list {
            let path = self.path(&at.key("list"), p, false);
            let f = filter(self);
            return path.map(|p| ValueKind::List(p, f));
        }
        if let Some(p) = &v.count {
            let path = self.path(&at.key("count"), p, false);
            let f = filter(self);
            return path.map(|p| ValueKind::Count(p, f));
        }
        if let Some(p) = &v.find {
            let path = self.path(&at.key("find"), p, false);
            let f = filter(self);
            return path.map(|p| ValueKind::Find(p, f));
        }
        if let Some(e) = &v.expr {
            let id = self.expr(&at.key("expr"), e, Scope::Plain);
            return (id != usize::MAX).then_some(ValueKind::Expr(id));
        }
        if let Some(t) = &v.template {
            return match self.tmpl(&at.key("template"), t, Scope::Plain, None) {
                Tmpl::Text(id) | Tmpl::Expr(id) => Some(ValueKind::Template(id)),
                Tmpl::Literal(_) => {
                    let lit = serde_json::to_string(t).unwrap_or_default();
                    let id = self.expr(&at.key("template"), &lit, Scope::Plain);
                    (id != usize::MAX).then_some(ValueKind::Template(id))
                }
            };
        }
        let t = v.table.as_ref()?;
        let tat = at.key("table");
        let inputs: Vec<(String, Tmpl)> = t
            .inputs
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    self.tmpl(&tat.key("inputs").key(k), s, Scope::Plain, None),
                )
            })
            .collect();
        let mut rows = Vec::new();
        for (i, row) in t.rows.iter().enumerate() {
            let rat = tat.key("rows").index(i);
            let mut tests = Vec::new();
            for (input, m) in &row.when {
                let mat = rat.key("when").key(input);
                let Some(idx) = inputs.iter().position(|(k, _)| k == input) else {
                    self.key_problem(
                        &mat,
                        format!(
                            "unknown input `{input}` (inputs: {})",
                            list_or_none(&t.inputs.keys().cloned().collect::<Vec<_>>())
                        ),
                    );
                    continue;
                };
                if let Some(m) = self.matcher(&mat, m) {
                    tests.push((idx, m));
                }
            }
            rows.push((tests, row.value.clone()));
        }
        Some(ValueKind::Table(TableRules {
            inputs,
            rows,
            default: t.default.clone(),
        }))
    }

    fn matcher(&mut self, at: &DocPath, m: &super::model::Matcher) -> Option<Matcher> {
        let mut forms = Vec::new();
        if let Some(v) = &m.contains {
            forms.push(Matcher::Contains(
                v.iter().map(|s| s.to_lowercase()).collect(),
            ));
        }
        if let Some(v) = &m.contains_all {
            forms.push(Matcher::ContainsAll(
                v.iter().map(|s| s.to_lowercase()).collect(),
            ));
        }
        if let Some(v) = &m.equals {
            forms.push(Matcher::Equals(v.clone()));
        }
        if let Some(v) = &m.one_of {
            forms.push(Matcher::In(v.clone()));
        }
        if let Some(r) = &m.regex {
            match Regex::new(r) {
                Ok(re) => forms.push(Matcher::Regex(re)),
                Err(e) => {
                    self.problem(
                        &at.key("regex"),
                        format!("invalid regex: {}", one_line(&e.to_string())),
                    );
                    return None;
                }
            }
        }
        if forms.len() != 1 {
            self.problem(
                at,
                "a test has exactly one of contains, containsAll, equals, in, regex",
            );
            return None;
        }
        forms.pop()
    }

    /// Every template may read only the documented context.
    fn check_variables(&mut self, rules: &Rules) {
        let uses = std::mem::take(&mut self.uses);
        for (id, scope, at, vars) in &uses {
            for missing in rules.templates.missing_includes(*id) {
                self.problem(
                    at,
                    format!("includes `{missing}`, which is not in the templates folder"),
                );
            }
            for var in rules.templates.variables(*id) {
                let mut parts = var.split('.');
                let top = parts.next().unwrap_or("");
                let second = parts.next();
                if FUNCTIONS.contains(&top) || top == "loop" {
                    continue;
                }
                if top == "vars" {
                    if *scope != Scope::Action {
                        self.problem(
                            at,
                            "`vars` is available in the effects of a transition or action (status, conditions, events, audit, metrics, vars), not in guards, values, validation or the execution object",
                        );
                    } else if let (Some(name), Some(declared)) = (second, vars)
                        && !declared.contains(name)
                    {
                        self.problem(at, format!("`vars.{name}` is not declared: the transition that uses this must declare it in `vars` (a variable can read only those declared before it; declared here: {})", list_or_none(&declared.iter().cloned().collect::<Vec<_>>())));
                    }
                    continue;
                }
                if top == "transition" {
                    if *scope != Scope::Action {
                        self.problem(
                            at,
                            "`transition` is available in the effects of a transition or action (status, conditions, events, audit, metrics, vars), not in guards, values, validation or the execution object",
                        );
                    }
                    continue;
                }
                if top == "outcome" {
                    if *scope != Scope::Sim {
                        self.problem(at, "`outcome` is only available inside `simulation`");
                    }
                    continue;
                }
                if top == "item" {
                    if *scope != Scope::Item {
                        self.problem(at, "`item` is only available inside `where` filters");
                    }
                    continue;
                }
                if *scope == Scope::Sim
                    && !["execution", "object", "resource", "settings", "now"].contains(&top)
                {
                    self.problem(at, format!("`{top}` is not available in simulation changes: they can read execution, object, resource, settings, now and outcome"));
                    continue;
                }
                let Some(root) = Root::from_name(top) else {
                    self.problem(
                        at,
                        format!(
                            "unknown variable `{top}`: templates can read {}{}",
                            Root::ALL
                                .iter()
                                .map(|r| r.name())
                                .collect::<Vec<_>>()
                                .join(", "),
                            match scope {
                                Scope::Action => ", vars, transition",
                                Scope::Item => ", item",
                                Scope::Sim => ", outcome",
                                Scope::Plain => "",
                            }
                        ),
                    );
                    continue;
                };
                if let Some(name) = second {
                    let (known, what) = match root {
                        Root::Values => (&self.value_names, "value"),
                        Root::Settings => (&self.setting_names, "setting"),
                        Root::Related => (&self.related_names, "related object list"),
                        _ => continue,
                    };
                    if !known.iter().any(|k| k == name)
                        && !self.broken.contains(&format!(
                            "{}.{name}",
                            if root == Root::Values {
                                "values"
                            } else if root == Root::Related {
                                "related"
                            } else {
                                "settings"
                            }
                        ))
                    {
                        let msg =
                            format!("unknown {what} `{name}` (defined: {})", list_or_none(known));
                        self.problem(at, msg);
                    }
                }
            }
        }
        self.uses = uses;
    }

    fn compute_deps(&mut self, rules: &mut Rules) {
        let value_names = self.value_names.clone();
        let related_names = self.related_names.clone();
        let t = &rules.templates;
        let of_template = |id: usize, d: &mut Deps| {
            if id == usize::MAX {
                return;
            }
            for var in t.variables(id) {
                let mut parts = var.split('.');
                match (parts.next(), parts.next()) {
                    (Some("values"), Some(n)) => {
                        if let Some(i) = value_names.iter().position(|v| v == n) {
                            d.values.insert(i);
                        }
                    }
                    (Some("related"), Some(n)) => {
                        if let Some(i) = related_names.iter().position(|v| v == n) {
                            d.related.insert(i);
                        }
                    }
                    (Some("values"), None) => d.values.extend(0..value_names.len()),
                    (Some("related"), None) => d.related.extend(0..related_names.len()),
                    _ => {}
                }
            }
        };
        let of_path = |p: &JPath, d: &mut Deps| match (p.root(), p.key()) {
            (Some(Root::Values), Some(n)) => {
                if let Some(i) = value_names.iter().position(|v| v == n) {
                    d.values.insert(i);
                }
            }
            (Some(Root::Related), Some(n)) => {
                if let Some(i) = related_names.iter().position(|v| v == n) {
                    d.related.insert(i);
                }
            }
            (Some(Root::Values), None) => d.values.extend(0..value_names.len()),
            (Some(Root::Related), None) => d.related.extend(0..related_names.len()),
            _ => {}
        };
        let of_tmpl = |x: &Tmpl, d: &mut Deps| {
            if let Tmpl::Text(id) | Tmpl::Expr(id) = x {
                of_template(*id, d)
            }
        };
        let of_pred = |p: &Pred, d: &mut Deps| {
            p.visit_paths(&mut |x| of_path(x, d));
            p.visit_templates(&mut |id| of_template(id, d));
        };
        fn of_tree(tree: &TmplTree, f: &dyn Fn(&Tmpl, &mut Deps), d: &mut Deps) {
            match tree {
                TmplTree::Leaf(x) => f(x, d),
                TmplTree::Remove => {}
                TmplTree::Map(m) => m.iter().for_each(|(_, t)| of_tree(t, f, d)),
                TmplTree::List(l) => l.iter().for_each(|t| of_tree(t, f, d)),
            }
        }
        let of_action = |a: &ActionRules| -> Deps {
            let mut d = Deps::default();
            for (_, v) in &a.vars {
                of_tmpl(v, &mut d);
            }
            for s in &a.status {
                of_tree(s, &of_tmpl, &mut d);
            }
            for s in &a.audit {
                of_tree(s, &of_tmpl, &mut d);
            }
            if let Some(r) = &rules.audit.record {
                of_tree(r, &of_tmpl, &mut d);
            }
            for c in &a.conditions {
                of_tmpl(&c.status, &mut d);
                of_tmpl(&c.reason, &mut d);
                of_tmpl(&c.message, &mut d);
                if let Some(w) = &c.when {
                    of_pred(w, &mut d);
                }
            }
            for e in &a.events {
                of_tmpl(&e.message, &mut d);
            }
            for m in &a.metrics {
                for (_, l) in &m.labels {
                    of_tmpl(l, &mut d);
                }
                if let Some(v) = &m.value {
                    of_tmpl(v, &mut d);
                }
            }
            d
        };
        // values
        let mut value_deps = Vec::new();
        for v in &rules.values {
            let mut d = Deps::default();
            match &v.kind {
                ValueKind::Path(p) => of_path(p, &mut d),
                ValueKind::List(p, f) | ValueKind::Count(p, f) | ValueKind::Find(p, f) => {
                    of_path(p, &mut d);
                    if let Some(f) = f {
                        of_pred(f, &mut d);
                    }
                }
                ValueKind::Expr(id) | ValueKind::Template(id) => of_template(*id, &mut d),
                ValueKind::Table(t) => t.inputs.iter().for_each(|(_, x)| of_tmpl(x, &mut d)),
            }
            value_deps.push(d);
        }
        for (v, d) in rules.values.iter_mut().zip(value_deps) {
            v.deps = d;
        }
        // related lists read their `from` path
        let mut ex = Deps::default();
        of_tmpl(&rules.execution.name, &mut ex);
        of_tmpl(&rules.execution.namespace, &mut ex);
        of_template(rules.execution.template, &mut ex);
        rules.execution.deps = ex;
        for v in &mut rules.validation {
            let mut d = Deps::default();
            of_pred(&v.require, &mut d);
            of_tmpl(&v.message, &mut d);
            v.deps = d;
        }
        for p in &mut rules.phases {
            for t in &mut p.transitions {
                let mut d = Deps::default();
                if let Some(w) = &t.when {
                    of_pred(w, &mut d);
                }
                t.when_deps = d;
                t.action.deps = of_action(&t.action);
            }
            if let Some(s) = &mut p.sync {
                let mut d = of_action(s);
                if let Some(poll) = &p.poll {
                    of_tmpl(poll, &mut d);
                }
                s.deps = d;
            }
        }
        if let Some(c) = &mut rules.cooldown {
            let mut d = Deps::default();
            of_tmpl(&c.period, &mut d);
            if let Some(w) = &c.when {
                of_pred(w, &mut d);
            }
            c.deps = d;
            c.release.deps = of_action(&c.release);
        }
        if let Some(a) = &mut rules.on_delete {
            a.deps = of_action(a);
        }
        // cycles among values
        let n = rules.values.len();
        let mut state = vec![0u8; n];
        fn visit(
            i: usize,
            rules: &Rules,
            state: &mut [u8],
            stack: &mut Vec<usize>,
        ) -> Option<Vec<usize>> {
            match state[i] {
                2 => return None,
                1 => {
                    let start = stack.iter().position(|&x| x == i).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(i);
                    return Some(cycle);
                }
                _ => {}
            }
            state[i] = 1;
            stack.push(i);
            for &d in &rules.values[i].deps.values {
                if let Some(c) = visit(d, rules, state, stack) {
                    return Some(c);
                }
            }
            stack.pop();
            state[i] = 2;
            None
        }
        for i in 0..n {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(i, rules, &mut state, &mut stack) {
                let names: Vec<_> = cycle
                    .iter()
                    .map(|&x| rules.values[x].name.clone())
                    .collect();
                self.problem(
                    &DocPath::root()
                        .key("values")
                        .key(&rules.values[cycle[0]].name),
                    format!(
                        "values depend on each other in a cycle: {}",
                        names.join(" → ")
                    ),
                );
                // break the cycle so evaluation can never loop
                for &x in &cycle {
                    rules.values[x].deps.values.clear();
                }
                break;
            }
        }
    }

    fn check_graph(&mut self, rules: &Rules) {
        let root = DocPath::root().key("phases");
        let n = rules.phases.len();
        // a phase that did not parse has its own problem; a graph built without it would only
        // add misleading ones
        if n == 0 || self.broken.iter().any(|b| b.starts_with("phases.")) {
            return;
        }
        // reachability from the initial phase
        let mut reach = vec![false; n];
        let mut todo = vec![rules.initial];
        while let Some(i) = todo.pop() {
            if reach[i] {
                continue;
            }
            reach[i] = true;
            for t in &rules.phases[i].transitions {
                if t.to < n {
                    todo.push(t.to);
                }
            }
        }
        for (i, p) in rules.phases.iter().enumerate() {
            if self.broken.contains(&format!("phases.{}", p.name)) {
                continue;
            }
            let at = root.key(&p.name);
            if !reach[i] {
                self.key_problem(
                    &at,
                    format!(
                        "phase `{}` is unreachable from the initial phase `{}`",
                        p.name, rules.phases[rules.initial].name
                    ),
                );
            }
            if p.terminal && !p.transitions.is_empty() {
                self.problem(&at.key("transitions"), format!("terminal phase `{}` has transitions; a terminal phase never changes (remove them or `terminal: true`)", p.name));
            }
            if !p.terminal && p.transitions.is_empty() {
                self.key_problem(&at, format!("phase `{}` is not terminal and has no transitions: a resource entering it would stay forever", p.name));
            }
            if p.terminal && p.validate {
                self.problem(
                    &at.key("validate"),
                    "validation in a terminal phase can never change anything",
                );
            }
        }
        if !rules.phases.iter().any(|p| p.terminal) {
            self.problem(
                &root,
                "no terminal phase: mark at least one phase `terminal: true`",
            );
        }
        // the lock: phases a resource can be in while its execution object exists
        let mut holds = vec![false; n];
        let mut todo: Vec<usize> = rules
            .phases
            .iter()
            .flat_map(|p| p.transitions.iter())
            .filter(|t| t.action.execution == Some(ExecutionAction::Create) && t.to < n)
            .map(|t| t.to)
            .collect();
        while let Some(i) = todo.pop() {
            if holds[i] {
                continue;
            }
            holds[i] = true;
            for t in &rules.phases[i].transitions {
                if t.to < n && t.action.execution != Some(ExecutionAction::Delete) {
                    todo.push(t.to);
                }
            }
        }
        if let Some(c) = &rules.cooldown {
            let at = DocPath::root().key("cooldown");
            for (k, &i) in c.phases.iter().enumerate() {
                if !holds[i] {
                    self.problem(&at.key("phases").index(k), format!("phase `{}` never holds the lock (no transition with `execution: create` leads to it), so a cooldown there releases nothing", rules.phases[i].name));
                }
                if !rules.phases[i].terminal {
                    self.problem(
                        &at.key("phases").index(k),
                        format!(
                            "cooldown applies after a terminal phase; `{}` is not terminal",
                            rules.phases[i].name
                        ),
                    );
                }
            }
            if c.release.execution == Some(ExecutionAction::Create) {
                self.problem(
                    &at.key("release").key("execution"),
                    "a release cannot create the execution object",
                );
            }
        }
        let _ = &rules.settings;
    }
}

/// A transition's or action's effect fields, seen the same way.
struct ActionParts<'a> {
    vars: &'a IndexMap<String, Value>,
    uses: &'a [String],
    execution: Option<ExecutionAction>,
    status: Option<&'a Value>,
    conditions: &'a [ConditionSpec],
    events: &'a [EventSpec],
    audit: Option<&'a Value>,
    metrics: &'a [MetricUpdate],
}

impl<'a> ActionParts<'a> {
    fn of_action(a: &'a Action) -> Self {
        ActionParts {
            vars: &a.vars,
            uses: &a.uses,
            execution: a.execution,
            status: a.status.as_ref(),
            conditions: &a.conditions,
            events: &a.events,
            audit: a.audit.as_ref(),
            metrics: &a.metrics,
        }
    }
    fn of_transition(t: &'a Transition) -> Self {
        ActionParts {
            vars: &t.vars,
            uses: &t.uses,
            execution: t.execution,
            status: t.status.as_ref(),
            conditions: &t.conditions,
            events: &t.events,
            audit: t.audit.as_ref(),
            metrics: &t.metrics,
        }
    }
}

fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn valid_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Checks a label key (`prefix/name`).
fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(format!(
            "`{key}` is not a valid label key (an optional DNS prefix, `/`, and a name of up to 63 characters [A-Za-z0-9-_.])"
        ))
    }
}

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
