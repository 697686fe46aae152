//! Parsed JSONPaths with their root document.

use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;
use std::fmt;

/// The documents a rule can read. A path's first segment names one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Root {
    /// The governed resource.
    Resource,
    /// The execution object, `null` when there is none.
    Execution,
    /// Whether the execution object is ours (boolean).
    Owned,
    /// Related objects, by name: lists of `{ref, object}`.
    Related,
    /// Lookups of other objects, by name: an object, `null`, or a list.
    Lookups,
    /// The error of the last action on the execution object, if any.
    Error,
    /// The first failed validation rule as `{rule, message}`, if any.
    Validation,
    /// Computed values.
    Values,
    /// Settings.
    Settings,
    /// The current phase (string).
    Phase,
    /// The current time (RFC 3339 string).
    Now,
    /// Identity of the execution object the rules would create: `{apiVersion, kind, name, namespace}`.
    Object,
    /// The attempt number (1 for the first attempt).
    Attempt,
    /// The named children, by name: each the object, or `null` when there is none.
    Children,
}

impl Root {
    /// Every root, in documentation order.
    pub const ALL: [Root; 14] = [
        Root::Resource,
        Root::Execution,
        Root::Owned,
        Root::Related,
        Root::Lookups,
        Root::Error,
        Root::Validation,
        Root::Values,
        Root::Settings,
        Root::Phase,
        Root::Now,
        Root::Object,
        Root::Attempt,
        Root::Children,
    ];

    /// The name used in paths and templates.
    pub fn name(self) -> &'static str {
        match self {
            Root::Resource => "resource",
            Root::Execution => "execution",
            Root::Owned => "owned",
            Root::Related => "related",
            Root::Lookups => "lookups",
            Root::Error => "error",
            Root::Validation => "validation",
            Root::Values => "values",
            Root::Settings => "settings",
            Root::Phase => "phase",
            Root::Now => "now",
            Root::Object => "object",
            Root::Attempt => "attempt",
            Root::Children => "children",
        }
    }

    /// The root with this name.
    pub fn from_name(name: &str) -> Option<Root> {
        Root::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// Why a path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not valid RFC 9535 syntax.
    #[error("invalid JSONPath `{path}`: {reason}")]
    Syntax {
        /// The path as written.
        path: String,
        /// The parser's explanation.
        reason: String,
    },
    /// The first segment does not name a document.
    #[error(
        "JSONPath `{0}` must start with `$.` followed by one of: resource, execution, children, owned, related, lookups, error, validation, values, settings, phase, now, object, attempt"
    )]
    UnknownRoot(String),
}

/// A parsed JSONPath. In rooted form the first segment was split off as [`Root`].
#[derive(Clone)]
pub struct Path {
    source: String,
    root: Option<Root>,
    /// Name of the second segment when it is a plain name (`$.values.NAME`), for dependencies.
    second: Option<String>,
    query: JpQuery,
    /// The same query as plain steps, when it has only names and indices (evaluated directly,
    /// without the general machinery).
    simple: Option<Vec<Step>>,
}

#[derive(Debug, Clone)]
enum Step {
    Name(String),
    Index(usize),
}

/// Steps of a path made only of `.name`, `['name']` and `[N]` after `$`.
fn simple_steps(source: &str) -> Option<Vec<Step>> {
    let mut rest = source.trim().strip_prefix('$')?;
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(r.len());
            if end == 0 {
                return None;
            }
            steps.push(Step::Name(r[..end].to_string()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find('\'')?;
            let name = &r[..end];
            if name.contains('\\') {
                return None;
            }
            steps.push(Step::Name(name.to_string()));
            rest = r[end + 1..].strip_prefix(']')?;
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let n: usize = r[..end].parse().ok()?;
            steps.push(Step::Index(n));
            rest = &r[end + 1..];
        } else {
            return None;
        }
    }
    Some(steps)
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({})", self.source)
    }
}

impl Path {
    /// Parses a path whose first segment names a document (`$.resource.spec`).
    pub fn rooted(source: &str) -> Result<Path, PathError> {
        if !source.trim_start().starts_with('$') {
            return Err(PathError::UnknownRoot(source.to_string()));
        }
        let query = parse(source)?;
        let (root_name, rest) =
            split_first(source).ok_or_else(|| PathError::UnknownRoot(source.to_string()))?;
        let root = Root::from_name(&root_name)
            .ok_or_else(|| PathError::UnknownRoot(source.to_string()))?;
        let rest_query = parse(&format!("${rest}")).map_err(|_| PathError::Syntax {
            path: source.to_string(),
            reason: "the path after its first segment is not valid".into(),
        })?;
        drop(query);
        let second = split_first(&format!("${rest}")).map(|(n, _)| n);
        Ok(Path {
            source: source.to_string(),
            root: Some(root),
            second,
            simple: simple_steps(&format!("${rest}")),
            query: rest_query,
        })
    }

    /// Parses a path relative to an item (`$` is the item).
    pub fn relative(source: &str) -> Result<Path, PathError> {
        Ok(Path {
            source: source.to_string(),
            root: None,
            second: None,
            query: parse(source)?,
            simple: simple_steps(source),
        })
    }

    /// The path as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The document this path reads, for rooted paths.
    pub fn root(&self) -> Option<Root> {
        self.root
    }

    /// The first name after the root (`NAME` in `$.values.NAME`), when it is a plain name.
    pub fn key(&self) -> Option<&str> {
        self.second.as_deref()
    }

    /// What the path reads, for the caches' projection: the names it steps through after its
    /// root (`None`: every element or entry: a wildcard, an index, a slice, a filter), and
    /// whether everything below the last of them may be read (a filter reads each element's
    /// fields, a descendant or a union of names reads unknown ones).
    pub fn read_steps(&self) -> (Vec<Option<String>>, bool) {
        use jsonpath_rust::parser::model::{Segment, Selector};
        let mut steps = Vec::new();
        for seg in &self.query.segments {
            match seg {
                Segment::Selector(Selector::Name(n)) => steps.push(Some(n.clone())),
                Segment::Selector(
                    Selector::Wildcard | Selector::Index(_) | Selector::Slice(..),
                ) => steps.push(None),
                Segment::Selector(Selector::Filter(_)) => {
                    steps.push(None);
                    return (steps, true);
                }
                Segment::Descendant(_) | Segment::Selectors(_) => return (steps, true),
            }
        }
        (steps, false)
    }

    /// Every node the path selects in `doc` (the root document, or the item for relative paths).
    pub fn select<'a>(&self, doc: &'a Value) -> Vec<&'a Value> {
        if let Some(steps) = &self.simple {
            return walk(doc, steps).into_iter().collect();
        }
        // Evaluation of a parsed query over plain JSON cannot fail in a way that matters to a
        // rule: a failure means "nothing selected".
        js_path_process(&self.query, doc)
            .map(|refs| refs.into_iter().map(|r| r.val()).collect())
            .unwrap_or_default()
    }

    /// The first node the path selects, if any.
    pub fn first<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        if let Some(steps) = &self.simple {
            return walk(doc, steps);
        }
        self.select(doc).into_iter().next()
    }
}

fn walk<'a>(doc: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    let mut cur = doc;
    for step in steps {
        cur = match (step, cur) {
            (Step::Name(n), Value::Object(m)) => m.get(n)?,
            (Step::Index(i), Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn parse(source: &str) -> Result<JpQuery, PathError> {
    parse_json_path(source).map_err(|e| PathError::Syntax {
        path: source.to_string(),
        reason: first_line(&e.to_string()),
    })
}

/// Turns the parser's multi-line report into `syntax error at character N (expected …)`.
fn first_line(s: &str) -> String {
    let column = s
        .split("--> ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|pos| pos.split(':').nth(1))
        .map(str::to_string);
    let expected = s
        .lines()
        .find_map(|l| l.trim().strip_prefix("= "))
        .map(|e| {
            e.replace("name_segment, ", "")
                .replace(", or ALPHA", "")
                .replace("ALPHA, ", "")
        });
    match (column, expected) {
        (Some(c), Some(e)) => format!("syntax error at character {c} ({e})"),
        (Some(c), None) => format!("syntax error at character {c}"),
        _ => s
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Splits `$.name…` or `$['name']…` into the name and the remainder after it.
fn split_first(source: &str) -> Option<(String, String)> {
    let s = source.trim();
    let after = s.strip_prefix('$')?;
    if let Some(rest) = after.strip_prefix('.') {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        return Some((rest[..end].to_string(), rest[end..].to_string()));
    }
    for quote in ['\'', '"'] {
        let prefix = format!("[{quote}");
        if let Some(rest) = after.strip_prefix(prefix.as_str()) {
            let close = format!("{quote}]");
            let end = rest.find(close.as_str())?;
            return Some((rest[..end].to_string(), rest[end + 2..].to_string()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rooted_paths_split_their_document() {
        let p = Path::rooted("$.resource.spec.targetResource").unwrap();
        assert_eq!(p.root(), Some(Root::Resource));
        assert_eq!(p.key(), Some("spec"));
        let doc = json!({"spec": {"targetResource": "a/b"}});
        assert_eq!(p.first(&doc), Some(&json!("a/b")));
    }

    #[test]
    fn bracket_roots_and_filters_work() {
        let p = Path::rooted("$['execution'].status.conditions[?@.type == 'Succeeded'].status")
            .unwrap();
        assert_eq!(p.root(), Some(Root::Execution));
        let doc = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "Succeeded", "status": "True"}]}});
        assert_eq!(p.first(&doc), Some(&json!("True")));
    }

    #[test]
    fn whole_root_selects_the_document() {
        let p = Path::rooted("$.execution").unwrap();
        assert_eq!(p.first(&json!({"a": 1})), Some(&json!({"a": 1})));
        assert_eq!(p.key(), None);
    }

    #[test]
    fn unknown_roots_and_bad_syntax_are_rejected() {
        assert!(matches!(
            Path::rooted("$.spec.x"),
            Err(PathError::UnknownRoot(_))
        ));
        assert!(matches!(Path::rooted("$"), Err(PathError::UnknownRoot(_))));
        let err = Path::rooted("$.resource.spec[").unwrap_err();
        assert!(matches!(err, PathError::Syntax { .. }), "{err}");
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn simple_paths_agree_with_the_general_evaluator() {
        let doc = json!({"a": {"b c": [10, {"d": 1}], "e": null}, "x": [1, 2]});
        for src in [
            "$.a['b c'][1].d",
            "$.a.e",
            "$.x[1]",
            "$.x[5]",
            "$.a.missing.deeper",
            "$.x.a",
            "$",
        ] {
            let fast = Path::relative(src).unwrap();
            assert!(fast.simple.is_some(), "{src} should take the fast path");
            let general: Vec<&Value> = js_path_process(&fast.query, &doc)
                .map(|r| r.into_iter().map(|q| q.val()).collect())
                .unwrap_or_default();
            assert_eq!(fast.select(&doc), general, "{src}");
        }
        assert!(Path::relative("$.x[*]").unwrap().simple.is_none());
        assert!(Path::relative("$.x[-1]").unwrap().simple.is_none());
    }

    #[test]
    fn read_steps_name_what_a_path_reads() {
        let steps = |p: &str| Path::rooted(p).unwrap().read_steps();
        let name = |s: &str| Some(s.to_string());
        assert_eq!(
            steps("$.execution.status.childReferences[*].name"),
            (
                vec![name("status"), name("childReferences"), None, name("name")],
                false
            )
        );
        assert_eq!(
            steps("$.execution.status.conditions[?@.type == 'Succeeded'].status"),
            (vec![name("status"), name("conditions"), None], true)
        );
        assert_eq!(steps("$.execution..name"), (vec![], true));
        assert_eq!(steps("$.execution"), (vec![], false));
        assert_eq!(
            steps("$.related['taskRuns'][0]"),
            (vec![name("taskRuns"), None], false)
        );
        assert_eq!(
            Path::relative("$.terminated.exitCode")
                .unwrap()
                .read_steps(),
            (vec![name("terminated"), name("exitCode")], false)
        );
    }

    #[test]
    fn relative_paths_read_the_item() {
        let p = Path::relative("$.terminated.exitCode").unwrap();
        assert_eq!(
            p.first(&json!({"terminated": {"exitCode": 137}})),
            Some(&json!(137))
        );
        assert_eq!(p.first(&json!({})), None);
    }
}
