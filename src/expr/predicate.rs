//! Predicates: exists / equals / in / matches / elapsed / expr, combined with all / any / not.

use super::path::{Path, Root};
use regex::Regex;
use serde_json::Value;

/// A compiled predicate.
#[derive(Debug, Clone)]
pub enum Pred {
    /// The path selects a node that is not null.
    Exists(Path),
    /// The first selected node equals the value.
    Equals(Path, Value),
    /// The first selected node is one of the values.
    In(Path, Vec<Value>),
    /// The first selected node is a string matching the regex.
    Matches(Path, Regex),
    /// At least the duration (a template id) has passed since the selected timestamp.
    Elapsed {
        /// Path to the timestamp.
        since: Path,
        /// Template id of the duration.
        at_least: usize,
    },
    /// A template expression (by id), true when truthy.
    Expr(usize),
    /// All hold (true when empty).
    All(Vec<Pred>),
    /// Any holds (false when empty).
    Any(Vec<Pred>),
    /// Negation.
    Not(Box<Pred>),
}

/// A predicate could not be evaluated (a template failed, a duration did not parse).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct PredError(pub String);

/// What predicates need from the engine.
pub trait Env {
    /// The document for a root (`None` when it is absent, e.g. no execution object).
    fn root(&self, root: Root) -> Option<&Value>;
    /// Evaluates template expression `id` for truthiness; `item` is set inside `where` filters.
    fn truthy(&self, id: usize, item: Option<&Value>) -> Result<bool, PredError>;
    /// Evaluates duration template `id` to seconds.
    fn duration_secs(&self, id: usize, item: Option<&Value>) -> Result<f64, PredError>;
    /// The current time in seconds since the epoch.
    fn now_secs(&self) -> f64;
    /// Records that the answer of a time-based test changes at this time (seconds since the
    /// epoch), so the caller can look again then.
    fn wake_at(&self, secs: f64);
}

impl Pred {
    /// Evaluates the predicate. `item` is the current item inside `where` filters, where paths
    /// are relative; elsewhere it is `None` and paths are rooted.
    pub fn eval(&self, env: &dyn Env, item: Option<&Value>) -> Result<bool, PredError> {
        Ok(match self {
            Pred::Exists(p) => all(env, p, item).iter().any(|v| !v.is_null()),
            Pred::Equals(p, want) => first(env, p, item).is_some_and(|v| loose_eq(v, want)),
            Pred::In(p, wants) => {
                first(env, p, item).is_some_and(|v| wants.iter().any(|w| loose_eq(v, w)))
            }
            Pred::Matches(p, re) => {
                first(env, p, item).is_some_and(|v| v.as_str().is_some_and(|s| re.is_match(s)))
            }
            Pred::Elapsed { since, at_least } => {
                let Some(ts) = first(env, since, item)
                    .and_then(Value::as_str)
                    .and_then(crate::time::parse_secs)
                else {
                    return Ok(false);
                };
                let due = ts + env.duration_secs(*at_least, item)?;
                if env.now_secs() >= due {
                    true
                } else {
                    env.wake_at(due);
                    false
                }
            }
            Pred::Expr(id) => env.truthy(*id, item)?,
            Pred::All(ps) => {
                for p in ps {
                    if !p.eval(env, item)? {
                        return Ok(false);
                    }
                }
                true
            }
            Pred::Any(ps) => {
                for p in ps {
                    if p.eval(env, item)? {
                        return Ok(true);
                    }
                }
                false
            }
            Pred::Not(p) => !p.eval(env, item)?,
        })
    }

    /// Calls `f` for every path in the predicate (for dependency analysis).
    pub fn visit_paths(&self, f: &mut dyn FnMut(&Path)) {
        match self {
            Pred::Exists(p) | Pred::Equals(p, _) | Pred::In(p, _) | Pred::Matches(p, _) => f(p),
            Pred::Elapsed { since, .. } => f(since),
            Pred::Expr(_) => {}
            Pred::All(ps) | Pred::Any(ps) => ps.iter().for_each(|p| p.visit_paths(f)),
            Pred::Not(p) => p.visit_paths(f),
        }
    }

    /// Calls `f` for every template id in the predicate.
    pub fn visit_templates(&self, f: &mut dyn FnMut(usize)) {
        match self {
            Pred::Elapsed { at_least, .. } => f(*at_least),
            Pred::Expr(id) => f(*id),
            Pred::All(ps) | Pred::Any(ps) => ps.iter().for_each(|p| p.visit_templates(f)),
            Pred::Not(p) => p.visit_templates(f),
            _ => {}
        }
    }
}

fn all<'a>(env: &'a dyn Env, path: &Path, item: Option<&'a Value>) -> Vec<&'a Value> {
    match (path.root(), item) {
        (Some(root), _) => env.root(root).map(|d| path.select(d)).unwrap_or_default(),
        (None, Some(item)) => path.select(item),
        (None, None) => Vec::new(),
    }
}

fn first<'a>(env: &'a dyn Env, path: &Path, item: Option<&'a Value>) -> Option<&'a Value> {
    match (path.root(), item) {
        (Some(root), _) => path.first(env.root(root)?),
        (None, Some(item)) => path.first(item),
        (None, None) => None,
    }
}

/// Equality that treats numbers by value (`1` equals `1.0`) and compares a string with a
/// number or boolean by its text, since YAML authors write `value: "0"` and `value: 0` alike.
pub fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(s), Value::Number(n)) | (Value::Number(n), Value::String(s)) => {
            s.parse::<f64>().ok() == n.as_f64()
        }
        (Value::String(s), Value::Bool(b)) | (Value::Bool(b), Value::String(s)) => {
            s == if *b { "true" } else { "false" }
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::cell::Cell;

    struct TestEnv {
        resource: Value,
        now: f64,
        wake: Cell<Option<f64>>,
    }

    impl Env for TestEnv {
        fn root(&self, root: Root) -> Option<&Value> {
            (root == Root::Resource).then_some(&self.resource)
        }
        fn truthy(&self, id: usize, _: Option<&Value>) -> Result<bool, PredError> {
            if id == 99 {
                Err(PredError("boom".into()))
            } else {
                Ok(id == 1)
            }
        }
        fn duration_secs(&self, _: usize, _: Option<&Value>) -> Result<f64, PredError> {
            Ok(60.0)
        }
        fn now_secs(&self) -> f64 {
            self.now
        }
        fn wake_at(&self, secs: f64) {
            self.wake.set(Some(secs));
        }
    }

    fn env() -> TestEnv {
        TestEnv {
            resource: json!({"spec": {"n": 3, "s": "abc", "t": "2026-01-01T00:00:00Z", "z": null}}),
            now: crate::time::parse_secs("2026-01-01T00:00:30Z").unwrap(),
            wake: Cell::new(None),
        }
    }

    fn path(s: &str) -> Path {
        Path::rooted(s).unwrap()
    }

    #[test]
    fn leaf_predicates() {
        let e = env();
        assert!(
            Pred::Exists(path("$.resource.spec.n"))
                .eval(&e, None)
                .unwrap()
        );
        assert!(
            !Pred::Exists(path("$.resource.spec.z"))
                .eval(&e, None)
                .unwrap()
        );
        assert!(!Pred::Exists(path("$.execution.x")).eval(&e, None).unwrap());
        assert!(
            Pred::Equals(path("$.resource.spec.n"), json!(3.0))
                .eval(&e, None)
                .unwrap()
        );
        assert!(
            Pred::Equals(path("$.resource.spec.n"), json!("3"))
                .eval(&e, None)
                .unwrap()
        );
        assert!(
            !Pred::Equals(path("$.resource.spec.s"), json!("ABC"))
                .eval(&e, None)
                .unwrap()
        );
        assert!(
            Pred::In(path("$.resource.spec.s"), vec![json!("x"), json!("abc")])
                .eval(&e, None)
                .unwrap()
        );
        let re = Regex::new("^a.c$").unwrap();
        assert!(
            Pred::Matches(path("$.resource.spec.s"), re.clone())
                .eval(&e, None)
                .unwrap()
        );
        assert!(
            !Pred::Matches(path("$.resource.spec.n"), re)
                .eval(&e, None)
                .unwrap()
        );
    }

    #[test]
    fn elapsed_asks_to_wake_when_not_yet_due() {
        let e = env();
        let p = Pred::Elapsed {
            since: path("$.resource.spec.t"),
            at_least: 0,
        };
        assert!(!p.eval(&e, None).unwrap());
        let due = crate::time::parse_secs("2026-01-01T00:01:00Z").unwrap();
        assert_eq!(e.wake.get(), Some(due));
        let later = TestEnv { now: due, ..env() };
        assert!(p.eval(&later, None).unwrap());
    }

    #[test]
    fn combinators_short_circuit_and_propagate_errors() {
        let e = env();
        let t = || Pred::Expr(1);
        let f = || Pred::Expr(0);
        let boom = || Pred::Expr(99);
        assert!(Pred::All(vec![t(), t()]).eval(&e, None).unwrap());
        assert!(!Pred::All(vec![f(), boom()]).eval(&e, None).unwrap());
        assert!(Pred::Any(vec![t(), boom()]).eval(&e, None).unwrap());
        assert!(Pred::Any(vec![f(), boom()]).eval(&e, None).is_err());
        assert!(Pred::Not(Box::new(f())).eval(&e, None).unwrap());
        assert!(Pred::All(vec![]).eval(&e, None).unwrap());
        assert!(!Pred::Any(vec![]).eval(&e, None).unwrap());
    }

    #[test]
    fn relative_paths_use_the_item() {
        let e = env();
        let p = Pred::Equals(Path::relative("$.kind").unwrap(), json!("TaskRun"));
        assert!(p.eval(&e, Some(&json!({"kind": "TaskRun"}))).unwrap());
        assert!(!p.eval(&e, Some(&json!({"kind": "Run"}))).unwrap());
    }
}
