//! The rules against the governed kind's CustomResourceDefinition: every status field the rules
//! or the engine write must survive the API server's pruning.
//!
//! The API server silently drops (prunes) a field its structural schema does not declare. A rules
//! file that writes such a field would look right to every other check, and then the controller
//! would see the field missing after each write and write it again, forever. So the status the
//! rules can write is walked against the CRD's `openAPIV3Schema`: `properties` descend,
//! `additionalProperties` (a schema, or `true`) and `x-kubernetes-preserve-unknown-fields` accept
//! what they cover, and anything else is reported at its place in the rules file with the schema
//! path that lacks it. Literal values are also checked against the declared `type` and `enum`
//! (the API server would refuse the whole write), and so are the phase names written to the
//! phase field. Values that templates compute are known only at run time; the controller guards
//! those writes itself (a write that does not stick is reported, never repeated in a loop).
//!
//! Pure: a function of the compiled rules and the CRD as JSON. Reading the CRD (a file, the
//! cluster) is the caller's business.

use super::locate::DocPath;
use super::model::{Action, RulesFile};
use super::{LoadError, Problem, Rules};
use serde_json::Value;

/// The part of a CRD that governs one kind: where it came from and its `openAPIV3Schema`.
#[derive(Debug, Clone, PartialEq)]
pub struct KindSchema {
    /// Where the CRD was read (a file, or `the cluster`), for messages.
    pub source: String,
    /// The CRD's name (`plural.group`).
    pub crd: String,
    /// The version's `openAPIV3Schema`; `None` when the version declares none (nothing is
    /// pruned then).
    pub schema: Option<Value>,
    /// Whether the version has the status subresource (the engine writes `/status`).
    pub status_subresource: bool,
}

/// Finds the CRD of `api_version` / `kind` among `crds` (each a parsed CRD document; other
/// documents are ignored). `Ok(None)` when none of them defines that kind; an error when one
/// does but does not serve the version.
pub fn find_kind_schema(
    crds: &[(String, Value)],
    api_version: &str,
    kind: &str,
) -> Result<Option<KindSchema>, String> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    for (source, doc) in crds {
        if doc.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
            continue;
        }
        let spec = doc.get("spec").unwrap_or(&Value::Null);
        let same_group = spec.get("group").and_then(Value::as_str) == Some(group);
        let same_kind = spec.pointer("/names/kind").and_then(Value::as_str) == Some(kind);
        if !(same_group && same_kind) {
            continue;
        }
        let crd = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)")
            .to_string();
        let versions = spec
            .get("versions")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some(v) = versions
            .iter()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(version))
        else {
            let served: Vec<&str> = versions
                .iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .collect();
            return Err(format!(
                "{source}: the CRD {crd} does not define version {version} of {kind} (versions: {})",
                if served.is_empty() {
                    "none".to_string()
                } else {
                    served.join(", ")
                }
            ));
        };
        let status_subresource = v.pointer("/subresources/status").is_some()
            || spec.pointer("/subresources/status").is_some();
        return Ok(Some(KindSchema {
            source: source.clone(),
            crd,
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
            status_subresource,
        }));
    }
    Ok(None)
}

impl Rules {
    /// Checks every status field the rules and the engine write against `schema`; the
    /// problems are located in the rules file like every load error.
    pub fn check_schema(&self, schema: &KindSchema) -> Result<(), LoadError> {
        let problems = status_problems(self, schema);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LoadError::Invalid(problems))
        }
    }
}

/// Every problem of the rules' status writes against `schema`.
pub fn status_problems(rules: &Rules, schema: &KindSchema) -> Vec<Problem> {
    let mut w = Walker {
        rules,
        kind: format!(
            "{} ({}, CRD {} from {})",
            rules.resource.kind, rules.resource.api_version, schema.crd, schema.source
        ),
        problems: Vec::new(),
    };
    let res = DocPath::root().key("resource");
    if !schema.status_subresource {
        w.problem(
            &res.key("kind"),
            format!(
                "{} has no status subresource: the controller writes the status through /status; add `subresources: {{status: {{}}}}` to the CRD's version",
                w.kind
            ),
        );
    }
    let Some(root) = &schema.schema else {
        return w.problems;
    };
    if preserves(root) && root.get("properties").is_none() {
        return w.problems;
    }
    let status = match child(root, "status") {
        Child::Schema(s) => Some(s),
        Child::Any => None,
        Child::Pruned => {
            w.problem(
                &res.key("kind"),
                format!(
                    "{} declares no `status` (schema path openAPIV3Schema.properties): the API server would drop everything the controller writes; declare `status` in the CRD",
                    w.kind
                ),
            );
            return w.problems;
        }
    };
    let Some(status) = status else {
        return w.problems;
    };
    w.engine_fields(status);
    let raw: &RulesFile = &rules.raw;
    for (name, phase) in &raw.phases {
        let at = DocPath::root().key("phases").key(name);
        if let Some(sync) = &phase.sync {
            w.action(status, sync, &at.key("sync"));
        }
        for (i, t) in phase.transitions.iter().enumerate() {
            if let Some(tree) = &t.status {
                let tat = at.key("transitions").index(i).key("status");
                w.tree(status, tree, &tat, "status");
            }
        }
    }
    for (name, a) in &raw.actions {
        w.action(status, a, &DocPath::root().key("actions").key(name));
    }
    if let Some(c) = &raw.cooldown {
        w.action(
            status,
            &c.release,
            &DocPath::root().key("cooldown").key("release"),
        );
    }
    let mut problems = w.problems;
    problems.sort_by_key(|p| (p.line, p.column));
    problems.dedup();
    problems
}

struct Walker<'r> {
    rules: &'r Rules,
    kind: String,
    problems: Vec<Problem>,
}

/// What the schema says about one key of an object.
enum Child<'s> {
    /// Declared (by `properties` or an `additionalProperties` schema).
    Schema(&'s Value),
    /// Kept whatever it holds (`x-kubernetes-preserve-unknown-fields`, `additionalProperties: true`).
    Any,
    /// Dropped by the API server.
    Pruned,
}

fn child<'s>(node: &'s Value, key: &str) -> Child<'s> {
    if let Some(s) = node.get("properties").and_then(|p| p.get(key)) {
        return Child::Schema(s);
    }
    match node.get("additionalProperties") {
        Some(Value::Bool(true)) => return Child::Any,
        Some(s @ Value::Object(_)) => return Child::Schema(s),
        _ => {}
    }
    if preserves(node)
        || (node.get("x-kubernetes-embedded-resource") == Some(&Value::Bool(true))
            && ["apiVersion", "kind", "metadata"].contains(&key))
    {
        return Child::Any;
    }
    Child::Pruned
}

fn preserves(node: &Value) -> bool {
    node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
}

fn declared_type(node: &Value) -> Option<&str> {
    node.get("type").and_then(Value::as_str)
}

/// Why a literal does not fit `node`'s `type` or `enum`, if it does not.
fn literal_misfit(node: &Value, v: &Value) -> Option<String> {
    let int_or_string = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let fits = match declared_type(node) {
        _ if int_or_string => v.is_string() || v.is_i64() || v.is_u64(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        _ => true,
    };
    if !fits {
        return Some(format!(
            "is declared `type: {}`, and the rules write {}",
            declared_type(node).unwrap_or("int-or-string"),
            kind_of(v)
        ));
    }
    if let Some(allowed) = node.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        return Some(format!(
            "allows only {} (enum), and the rules write {v}",
            allowed
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    None
}

fn kind_of(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the text {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

impl Walker<'_> {
    fn problem(&mut self, at: &DocPath, message: String) {
        let pos = self.rules.locations.key_pos(at);
        self.problems.push(Problem {
            file: self.rules.file.display().to_string(),
            line: pos.line,
            column: pos.column,
            path: at.to_string(),
            message,
        });
    }

    /// A field of the status the rules file names (`at`) is dropped, or holds the wrong shape.
    fn pruned(&mut self, at: &DocPath, field: &str, schema_path: &str) {
        let msg = format!(
            "`{field}` is not in the schema of {}: the API server would drop it (schema path {schema_path} has no `{}`), and the controller would find it missing after every write; declare it in the CRD or remove it from the rules",
            self.kind,
            field.rsplit('.').next().unwrap_or(field)
        );
        self.problem(at, msg);
    }

    /// The fields the engine itself writes: phase, conditions, observedGeneration, revision,
    /// where the execution object is, the phase entry, the attempt and the waiting retry, and
    /// the cooldown's `since`.
    fn engine_fields(&mut self, status: &Value) {
        let rules = self.rules;
        let fields = &rules.resource.status;
        let at = DocPath::root().key("resource").key("status");
        // the phase names the engine writes
        if let Some(node) = self.top(status, &fields.phase, &at.key("phase")) {
            for p in &rules.phases {
                if let Some(why) = literal_misfit(node, &Value::String(p.name.clone())) {
                    let pat = DocPath::root().key("phases").key(&p.name);
                    self.problem(
                        &pat,
                        format!(
                            "phase `{}` cannot be written to `status.{}`: the field {why}",
                            p.name, fields.phase
                        ),
                    );
                }
            }
        }
        if let Some(node) = self.top(status, &fields.conditions, &at.key("conditions")) {
            self.conditions(node, &fields.conditions, &at.key("conditions"));
        }
        if let Some(f) = &fields.observed_generation
            && let Some(node) = self.top(status, f, &at.key("observedGeneration"))
            && let Some(why) = literal_misfit(node, &Value::from(1))
        {
            self.problem(
                &at.key("observedGeneration"),
                format!("`status.{f}` receives metadata.generation (an integer), but it {why}"),
            );
        }
        if let Some(f) = &fields.revision
            && let Some(node) = self.top(status, f, &at.key("revision"))
            && let Some(why) = literal_misfit(node, &Value::String(String::new()))
                .filter(|_| node.get("enum").is_none())
        {
            self.problem(
                &at.key("revision"),
                format!("`status.{f}` receives the rules revision (text), but it {why}"),
            );
        }
        if let Some(f) = &fields.execution
            && let Some(node) = self.top(status, f, &at.key("execution"))
        {
            let ex = serde_json::json!({"namespace": "", "name": ""});
            self.value(node, &ex, &at.key("execution"), &format!("status.{f}"));
        }
        if let Some(f) = &fields.phase_entered_at
            && let Some(node) = self.top(status, f, &at.key("phaseEnteredAt"))
            && let Some(why) = literal_misfit(node, &Value::String(String::new()))
                .filter(|_| node.get("enum").is_none())
        {
            self.problem(
                &at.key("phaseEnteredAt"),
                format!("`status.{f}` receives when the phase was entered (a timestamp, text), but it {why}"),
            );
        }
        if let Some(f) = &fields.attempt
            && let Some(node) = self.top(status, f, &at.key("attempt"))
            && let Some(why) = literal_misfit(node, &Value::from(1))
        {
            self.problem(
                &at.key("attempt"),
                format!("`status.{f}` receives the attempt number (an integer), but it {why}"),
            );
        }
        if let Some(f) = &fields.retry
            && let Some(node) = self.top(status, f, &at.key("retry"))
        {
            let retry = serde_json::json!({"attempt": 2, "at": "", "previous": "delete"});
            self.value(node, &retry, &at.key("retry"), &format!("status.{f}"));
        }
        if let Some(c) = &rules.raw.cooldown
            && let Some(node) = self.top(
                status,
                &c.since,
                &DocPath::root().key("cooldown").key("since"),
            )
            && let Some(why) = literal_misfit(node, &Value::String(String::new()))
                .filter(|_| node.get("enum").is_none())
        {
            self.problem(
                &DocPath::root().key("cooldown").key("since"),
                format!(
                    "`status.{}` is stamped with a timestamp (text) when missing, but it {why}",
                    c.since
                ),
            );
        }
    }

    /// The schema of top-level status field `field`, reporting it at `at` when it is dropped.
    fn top<'s>(&mut self, status: &'s Value, field: &str, at: &DocPath) -> Option<&'s Value> {
        match child(status, field) {
            Child::Schema(s) => Some(s),
            Child::Any => None,
            Child::Pruned => {
                self.pruned(
                    at,
                    &format!("status.{field}"),
                    "openAPIV3Schema.properties.status.properties",
                );
                None
            }
        }
    }

    /// The conditions list: a list of objects with the standard fields.
    fn conditions(&mut self, node: &Value, field: &str, at: &DocPath) {
        if let Some(t) = declared_type(node)
            && t != "array"
        {
            self.problem(
                at,
                format!(
                    "`status.{field}` holds the conditions (a list), but it is declared `type: {t}`"
                ),
            );
            return;
        }
        let Some(items) = node.get("items") else {
            if !preserves(node) {
                self.problem(at, format!("`status.{field}` declares no `items`: the API server would drop every field of the conditions"));
            }
            return;
        };
        let example = serde_json::json!({
            "type": "Ready", "status": "True", "reason": "Reason", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1,
        });
        for key in [
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        ] {
            match child(items, key) {
                Child::Pruned => {
                    let msg = format!(
                        "the conditions the engine writes have `{key}`, which the schema of {} does not declare (schema path openAPIV3Schema.properties.status.properties.{field}.items.properties): the API server would drop it",
                        self.kind
                    );
                    self.problem(at, msg);
                }
                Child::Schema(s) => {
                    // the type and reason come from the rules, checked where they are written
                    let engine_made = !matches!(key, "type" | "reason");
                    if engine_made && let Some(why) = literal_misfit(s, &example[key]) {
                        self.problem(at, format!("the conditions' `{key}` {why}"));
                    }
                }
                Child::Any => {}
            }
        }
    }

    /// The status tree and conditions of an action block.
    fn action(&mut self, status: &Value, a: &Action, at: &DocPath) {
        if let Some(tree) = &a.status {
            self.tree(status, tree, &at.key("status"), "status");
        }
        let field = &self.rules.resource.status.conditions;
        let Child::Schema(list) = child(status, field) else {
            return;
        };
        let Some(items) = list.get("items") else {
            return;
        };
        let Some(status_schema) = items.get("properties").and_then(|p| p.get("status")) else {
            return;
        };
        for (i, c) in a.conditions.iter().enumerate() {
            if !is_template(&c.status)
                && let Some(why) = literal_misfit(status_schema, &Value::String(c.status.clone()))
            {
                let cat = at.key("conditions").index(i).key("status");
                self.problem(&cat, format!("the condition's status {why}"));
            }
        }
    }

    /// A status tree written at `at` (its keys are fields of the status node `node`).
    fn tree(&mut self, node: &Value, tree: &Value, at: &DocPath, field: &str) {
        let Value::Object(m) = tree else {
            return;
        };
        if let Some(t) = declared_type(node)
            && t != "object"
        {
            self.problem(
                at,
                format!(
                    "`{field}` is declared `type: {t}` in the schema of {}, and the rules write a mapping into it: the API server would refuse the write",
                    self.kind
                ),
            );
            return;
        }
        for (k, v) in m {
            let kat = at.key(k);
            let kfield = format!("{field}.{k}");
            match child(node, k) {
                Child::Any => {}
                Child::Pruned => {
                    let sp = schema_path(&kfield);
                    self.pruned(&kat, &kfield, &sp);
                }
                Child::Schema(s) => self.value(s, v, &kat, &kfield),
            }
        }
    }

    /// A value written at `at` into the field whose schema is `node`.
    fn value(&mut self, node: &Value, v: &Value, at: &DocPath, field: &str) {
        match v {
            // removes the field: always fine
            Value::Null => {}
            Value::Object(_) => self.tree(node, v, at, field),
            Value::Array(items) => {
                if let Some(t) = declared_type(node)
                    && t != "array"
                {
                    self.problem(at, format!("`{field}` is declared `type: {t}` in the schema of {}, and the rules write a list into it: the API server would refuse the write", self.kind));
                    return;
                }
                if let Some(item_schema) = node.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.value(item_schema, item, &at.index(i), &format!("{field}[{i}]"));
                    }
                }
            }
            Value::String(s) if is_template(s) => {}
            literal => {
                if let Some(why) = literal_misfit(node, literal) {
                    self.problem(
                        at,
                        format!("`{field}` {why}: the API server would refuse the write"),
                    );
                }
            }
        }
    }
}

/// The schema path of the object that should declare the last key of `field`
/// (`status.a.b` → `openAPIV3Schema.properties.status.properties.a.properties`).
fn schema_path(field: &str) -> String {
    let mut parts: Vec<&str> = field.split('.').collect();
    parts.pop();
    let mut out = String::from("openAPIV3Schema");
    for p in parts {
        // list items: `conds[0]` → `conds.items`
        match p.split_once('[') {
            Some((name, _)) => {
                out.push_str(".properties.");
                out.push_str(name);
                out.push_str(".items");
            }
            None => {
                out.push_str(".properties.");
                out.push_str(p);
            }
        }
    }
    out.push_str(".properties");
    out
}
