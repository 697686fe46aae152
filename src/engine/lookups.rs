//! Lookups: what a decision asks the world for (a [`LookupRequest`]: kind, namespace, name,
//! labels), and what the rules see of the objects found (left out: the resource itself when
//! asked; kept: those the `where` filter accepts; in the order of `sortBy`; all, or the first or
//! last).
//!
//! The world only finds candidates (the controller from its watch caches, the simulated world
//! from its objects); everything else happens here, once, for every world.

use super::scope::{Scope, Stop, pred_error, template_error};
use super::{Category, DecideError, LookupRequest};
use crate::rules::model::LookupSelect;
use crate::rules::{LookupNamespace, Rules};
use serde_json::Value;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// What lookup `index` asks the world for, rendered in `scope`.
pub(super) fn request(scope: &Scope<'_>, index: usize) -> Result<LookupRequest, DecideError> {
    let rules: &Rules = scope.rules;
    let l = &rules.lookups[index];
    let ctx = scope.ctx(None, None);
    let t = &rules.templates;
    let fail = |e: crate::render::RenderError| DecideError {
        category: Category::TemplateError,
        message: format!("lookup `{}`: {}", l.name, template_error(e).message),
    };
    let namespace = match &l.namespace {
        LookupNamespace::All => None,
        LookupNamespace::Resource => Some(
            scope
                .obs
                .resource
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        ),
        LookupNamespace::Template(n) => Some(t.text(n, &ctx).map_err(fail)?),
    };
    let name = match &l.object_name {
        Some(n) => Some(t.text(n, &ctx).map_err(fail)?),
        None => None,
    };
    let mut labels = BTreeMap::new();
    for (k, v) in &l.match_labels {
        labels.insert(k.clone(), t.text(v, &ctx).map_err(fail)?);
    }
    Ok(LookupRequest {
        name: l.name.clone(),
        api_version: l.api_version.clone(),
        kind: l.kind.clone(),
        namespace,
        object_name: name,
        labels,
    })
}

/// What every lookup of the rules asks the world for, for `resource` (tools that read
/// everything up front, such as `explain`); a lookup whose request cannot be rendered is left
/// out (the decision then reports it).
pub fn requests_all(rules: &Rules, resource: &Value, now: f64) -> Vec<LookupRequest> {
    let obs = super::Observation {
        resource: resource.clone(),
        ..super::Observation::default()
    };
    crate::render::lend(|loan| {
        let scope = Scope::new(rules, &obs, now, loan);
        (0..rules.lookups.len())
            .filter_map(|i| request(&scope, i).ok())
            .collect()
    })
}

/// Whether `obj` is one the request asks for. Worlds may use it to find candidates; the engine
/// applies it again, so a world that returns too much changes nothing.
pub fn matches(request: &LookupRequest, obj: &Value) -> bool {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str);
    let api_version = s("/apiVersion").unwrap_or_default();
    let kind = s("/kind").unwrap_or_default();
    if api_version != request.api_version || kind != request.kind {
        return false;
    }
    if let Some(ns) = &request.namespace
        && s("/metadata/namespace").unwrap_or_default() != ns
    {
        return false;
    }
    if let Some(name) = &request.object_name
        && s("/metadata/name") != Some(name.as_str())
    {
        return false;
    }
    request.labels.iter().all(|(k, v)| {
        obj.pointer("/metadata/labels")
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            == Some(v.as_str())
    })
}

/// What the rules see of lookup `index`, given the objects the world found for it.
pub(super) fn select(scope: &Scope<'_>, index: usize, found: &[Value]) -> Result<Value, Stop> {
    let l = &scope.rules.lookups[index];
    let request = request(scope, index)?;
    let own_uid = scope
        .obs
        .resource
        .pointer("/metadata/uid")
        .and_then(Value::as_str);
    let mut kept: Vec<&Value> = Vec::new();
    for obj in found {
        if !matches(&request, obj) {
            continue;
        }
        if l.exclude_self
            && own_uid.is_some()
            && obj.pointer("/metadata/uid").and_then(Value::as_str) == own_uid
        {
            continue;
        }
        let keep = match &l.filter {
            Some(f) => f.eval(scope, Some(obj)).map_err(|e| {
                Stop::Fail(DecideError {
                    category: Category::TemplateError,
                    message: format!("lookup `{}`: {}", l.name, pred_error(e).message),
                })
            })?,
            None => true,
        };
        if keep {
            kept.push(obj);
        }
    }
    // namespace/name first, so that equal sort keys keep one order in every world
    kept.sort_by(|a, b| identity(a).cmp(&identity(b)));
    if let Some(p) = &l.sort_by {
        kept.sort_by(|a, b| compare(p.first(a), p.first(b)));
    }
    Ok(match l.select {
        LookupSelect::All => Value::Array(kept.into_iter().cloned().collect()),
        LookupSelect::First => kept.first().map_or(Value::Null, |v| (*v).clone()),
        LookupSelect::Last => kept.last().map_or(Value::Null, |v| (*v).clone()),
    })
}

fn identity(obj: &Value) -> (&str, &str) {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
    (s("/metadata/namespace"), s("/metadata/name"))
}

/// The order of sort keys: nothing (or null) first, then booleans, numbers, times and texts
/// (two RFC 3339 times compare as times, other texts as text), then lists and maps as JSON.
fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let rank = |v: Option<&Value>| match v {
        None | Some(Value::Null) => 0,
        Some(Value::Bool(_)) => 1,
        Some(Value::Number(_)) => 2,
        Some(Value::String(_)) => 3,
        Some(_) => 4,
    };
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => {
            match (crate::time::parse_secs(x), crate::time::parse_secs(y)) {
                (Some(tx), Some(ty)) => tx.partial_cmp(&ty).unwrap_or(Ordering::Equal),
                _ => x.cmp(y),
            }
        }
        (Some(x), Some(y)) if rank(a) == 4 && rank(b) == 4 => x.to_string().cmp(&y.to_string()),
        _ => rank(a).cmp(&rank(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Effect, Observation, decide};
    use crate::rules::Sources;
    use serde_json::json;

    /// Rules whose one transition records what lookup `others` (of the governed kind, `select`
    /// and `excludeSelf` as given) found.
    fn rules(select: &str, exclude_self: bool) -> Rules {
        let text = format!(
            r#"
version: 1
resource: {{ apiVersion: example.com/v1, kind: Task, fieldManager: t, component: t }}
execution:
  apiVersion: v1
  kind: ConfigMap
  namespace: "{{{{ resource.metadata.namespace }}}}"
  name: "t-{{{{ resource.metadata.name }}}}"
  template: cm.yaml
  ownerLabels: {{ name: example.com/name, namespace: example.com/namespace }}
lookups:
  others:
    apiVersion: example.com/v1
    kind: Task
    allNamespaces: true
    excludeSelf: {exclude_self}
    where: {{ expr: "item.spec.team == resource.spec.team" }}
    sortBy: "$.spec.rank"
    select: {select}
phases:
  Pending:
    initial: true
    transitions:
      - name: seen
        to: Done
        status:
          seen: "{{{{ lookups.others }}}}"
  Done:
    terminal: true
"#
        );
        let sources = Sources::from_text("lookups.yaml", text).with_template("cm.yaml", "{}");
        Rules::compile(&sources, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn task(name: &str, ns: &str, team: &str, rank: i64) -> Value {
        json!({"apiVersion": "example.com/v1", "kind": "Task",
               "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
               "spec": {"team": team, "rank": rank}})
    }

    /// What the decision records, given the objects the world found.
    fn seen(rules: &Rules, found: Vec<Value>) -> Value {
        let me = task("me", "a", "blue", 5);
        let mut obs = Observation {
            resource: me.clone(),
            ..Observation::default()
        };
        let first = decide(rules, &obs, 0.0);
        assert!(first.effects.is_empty(), "{first:?}");
        assert_eq!(first.lookups.len(), 1, "{first:?}");
        assert_eq!(first.lookups[0].namespace, None);
        obs.lookups
            .insert("others".into(), Value::Array([vec![me], found].concat()));
        let d = decide(rules, &obs, 0.0);
        assert_eq!(d.error, None);
        d.effects
            .iter()
            .find_map(|e| match e {
                // a null result is left out of the status (a template giving `none`)
                Effect::PatchStatus { patch } => {
                    Some(patch.get("seen").cloned().unwrap_or(Value::Null))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{d:?}"))
    }

    fn names(v: &Value) -> Vec<&str> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.pointer("/metadata/name").and_then(Value::as_str))
            .collect()
    }

    #[test]
    fn a_decision_filters_sorts_selects_and_leaves_itself_out_when_asked() {
        let found = vec![
            task("c", "b", "blue", 9),
            task("a", "b", "blue", 1),
            task("red", "a", "red", 3),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
        ];
        let all = seen(&rules("all", true), found.clone());
        assert_eq!(names(&all), ["a", "c"]);
        let with_self = seen(&rules("all", false), found.clone());
        assert_eq!(names(&with_self), ["a", "me", "c"]);
        let last = seen(&rules("last", true), found.clone());
        assert_eq!(last.pointer("/metadata/name"), Some(&json!("c")));
        let first = seen(&rules("first", false), found);
        assert_eq!(first.pointer("/metadata/name"), Some(&json!("a")));
        assert_eq!(seen(&rules("first", true), Vec::new()), Value::Null);
    }

    #[test]
    fn sort_keys_order_missing_first_and_times_as_times() {
        let t1 = json!("2026-01-01T00:00:00Z");
        let t2 = json!("2026-01-01T00:00:00.5Z");
        let t3 = json!("2026-01-01T00:00:01Z");
        assert_eq!(compare(Some(&t1), Some(&t2)), Ordering::Less);
        assert_eq!(compare(Some(&t3), Some(&t2)), Ordering::Greater);
        assert_eq!(compare(None, Some(&t1)), Ordering::Less);
        assert_eq!(compare(Some(&Value::Null), None), Ordering::Equal);
        assert_eq!(
            compare(Some(&json!(10)), Some(&json!(9.5))),
            Ordering::Greater
        );
        assert_eq!(
            compare(Some(&json!("b")), Some(&json!("a"))),
            Ordering::Greater
        );
        assert_eq!(compare(Some(&json!(1)), Some(&json!("a"))), Ordering::Less);
    }

    #[test]
    fn a_request_matches_by_kind_namespace_name_and_every_label() {
        let r = LookupRequest {
            name: "x".into(),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("a".into()),
            object_name: None,
            labels: BTreeMap::from([("team".to_string(), "blue".to_string())]),
        };
        let obj = |ns: &str, team: &str| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "c", "namespace": ns, "labels": {"team": team}}})
        };
        assert!(matches(&r, &obj("a", "blue")));
        assert!(!matches(&r, &obj("b", "blue")));
        assert!(!matches(&r, &obj("a", "red")));
        let all = LookupRequest {
            namespace: None,
            object_name: Some("c".into()),
            labels: BTreeMap::new(),
            ..r.clone()
        };
        assert!(matches(&all, &obj("b", "red")));
        let other = LookupRequest {
            object_name: Some("d".into()),
            ..all
        };
        assert!(!matches(&other, &obj("b", "red")));
    }
}
