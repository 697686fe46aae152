//! The first pass: YAML text → the raw model ([`RulesFile`]), entry by entry.
//!
//! The text is parsed twice: once into a [`SourceMap`] that knows where every key and value is
//! (and refuses duplicate keys and input nested too deep), then by serde, section by section and
//! entry by entry, so that one bad entry does not hide the problems of the others. An entry that
//! fails is recorded as broken, so that later stages do not also report references to it. Nothing
//! here checks meaning: that is the sections' work.

use super::Problem;
use super::compiler::Compiler;
use super::locate::{DocPath, Seg, SourceMap};
use super::model::*;
use super::suggest::closest;
use indexmap::IndexMap;
use serde::de::DeserializeOwned;

impl Compiler<'_> {
    /// Parses the rules text; `None` when it is not YAML, has duplicate keys, or a section or a
    /// required field does not deserialize (the problems say which).
    pub(crate) fn parse(&mut self, text: &str) -> Option<RulesFile> {
        match SourceMap::build(text) {
            Ok(map) => self.map = map,
            Err((pos, msg)) => {
                self.problems.push(Problem {
                    file: self.file.to_string(),
                    line: pos.line,
                    column: pos.column,
                    path: "(document)".into(),
                    message: format!("YAML syntax error: {msg}"),
                });
                return None;
            }
        }
        for (path, pos) in std::mem::take(&mut self.map.duplicates) {
            self.problems.push(Problem {
                file: self.file.to_string(),
                line: pos.line,
                column: pos.column,
                path: path.to_string(),
                message: "duplicate key: each key may appear only once in a mapping".into(),
            });
        }
        if !self.problems.is_empty() {
            return None;
        }
        let doc: serde_yaml::Value = match serde_yaml::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
                self.problems.push(Problem {
                    file: self.file.to_string(),
                    line,
                    column,
                    path: "(document)".into(),
                    message: format!("YAML error: {}", strip_location(&e.to_string())),
                });
                return None;
            }
        };
        self.read_file(&doc)
    }

    /// Deserializes one section or entry; a failure is a problem at its place.
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
                let msg = plain(&strip_location(&e.inner().to_string()));
                if let Some(field) = unknown_field(&msg) {
                    // the error's path may already end at the unknown key
                    let p = if path.0.last() == Some(&Seg::Key(field.clone())) {
                        path.clone()
                    } else {
                        path.key(&field)
                    };
                    let msg = if msg.contains("did you mean") {
                        msg
                    } else {
                        format!("{msg} (check the spelling, or see `lifecycle schema`)")
                    };
                    self.key_problem(&p, msg);
                } else {
                    self.problem(&path, msg);
                }
                None
            }
        }
    }

    /// Every section of the document, each on its own.
    fn read_file(&mut self, doc: &serde_yaml::Value) -> Option<RulesFile> {
        let root = DocPath::root();
        let Some(top) = doc.as_mapping() else {
            self.problem(
                &root,
                "the rules file must be a YAML mapping (see `lifecycle schema`)",
            );
            return None;
        };
        if let Some(hint) = super::kind::not_rules_hint(doc, self.file) {
            self.problem(&root, hint);
            return None;
        }
        const KNOWN: &[&str] = &[
            "version",
            "description",
            "templates",
            "settings",
            "resource",
            "execution",
            "children",
            "related",
            "lookups",
            "validation",
            "values",
            "actions",
            "phases",
            "renamedPhases",
            "rollout",
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
                    match closest(name, KNOWN.iter().copied()) {
                        Some(k) => format!(
                            "unknown field `{name}`; did you mean `{k}`? (expected one of {})",
                            KNOWN.join(", ")
                        ),
                        None => format!(
                            "unknown field `{name}`, expected one of {}",
                            KNOWN.join(", ")
                        ),
                    },
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
        let execution: Option<ExecutionSpec> = get("execution").and_then(|v| {
            let r = self.de(v, &root.key("execution"));
            ok &= r.is_some();
            r
        });
        let children = self.de_map::<ChildSpec>(get("children"), "children");
        if execution.is_none() && get("execution").is_none() && children.is_empty() {
            self.problem(
                &root,
                "missing field `execution` (or `children` with one child that is the `lock`)",
            );
            ok = false;
        }
        let description = get("description").and_then(|v| self.de(v, &root.key("description")));
        let templates = get("templates").and_then(|v| self.de(v, &root.key("templates")));
        let cooldown = get("cooldown").and_then(|v| {
            let r = self.de(v, &root.key("cooldown"));
            ok &= r.is_some();
            r
        });
        let rollout = get("rollout").and_then(|v| {
            let r = self.de(v, &root.key("rollout"));
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
        let renamed_phases = get("renamedPhases").and_then(|v| {
            let r = self.de(v, &root.key("renamedPhases"));
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
        let lookups = self.de_map::<LookupSpec>(get("lookups"), "lookups");
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
            execution,
            children,
            related,
            lookups,
            validation,
            values,
            actions,
            phases,
            renamed_phases: renamed_phases.unwrap_or_default(),
            rollout,
            cooldown,
            on_delete,
            audit,
            metrics,
            simulation,
        })
    }

    /// A section of named entries, each deserialized on its own; a broken entry is kept as a
    /// default so that the names stay known.
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
}

/// A serde message without serde_yaml's own position (problems carry theirs).
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// A serde message in the words of the rules file: no Rust type names, and a "did you mean"
/// for a misspelt field or variant name.
fn plain(msg: &str) -> String {
    if msg.starts_with("data did not match any variant of untagged enum Setting") {
        return "expected a string, number or boolean".into();
    }
    let mut out = msg.to_string();
    // `expected struct ExecutionSpec`, `expected enum EventType`, `expected u32`, ...
    if let Some(i) = out.find("expected ") {
        let (head, tail) = out.split_at(i + "expected ".len());
        let what = match tail.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["struct", _, ..] | ["a", "map"] => Some("a mapping"),
            ["enum", _, ..] => Some("one of the names `lifecycle schema` lists"),
            ["u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64"] => {
                Some("a whole number (no sign, no fraction)")
            }
            ["f32" | "f64"] => Some("a number"),
            ["a", "sequence"] => Some("a list"),
            _ => None,
        };
        if let Some(what) = what {
            out = format!("{head}{what}");
        }
    }
    for prefix in ["unknown field `", "unknown variant `"] {
        let Some(rest) = out.strip_prefix(prefix) else {
            continue;
        };
        let Some(end) = rest.find('`') else { break };
        let word = &rest[..end];
        let after = &rest[end + 1..];
        let expected: Vec<&str> = after
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(k) = closest(word, expected.iter().copied()) {
            let listed = after.trim_start_matches(", ");
            out = format!("{prefix}{word}`; did you mean `{k}`? ({listed})");
        }
        break;
    }
    out
}

/// The field named by serde's "unknown field" message.
fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}
