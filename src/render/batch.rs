//! Several templates evaluated in one minijinja evaluation state.
//!
//! A step of the rules evaluates many templates in the same context (a failure transition: its
//! status fields, conditions, Event, audit record and metrics). Setting up an evaluation state
//! for each costs more than most of them do, so the templates of a step are also compiled, when
//! the rules load, into one template that assigns each result to a variable of its own: one
//! evaluation gives them all ([`super::Templates::prefetch`]).
//!
//! The combined evaluation only ever answers when every template in it succeeds, each within
//! the output limit. When one fails (or the shared fuel runs out), nothing is prefetched and each
//! template is evaluated on its own, in the order and under the conditions the step evaluates
//! it, which gives the results and errors of a template evaluated alone.

use super::JValue;
use serde_json::Value;

/// Prefix of the variables a combined template assigns (no rules template reads such a name).
const PREFIX: &str = "__lifecycle_batch_";

/// One combined template.
#[derive(Debug, Clone)]
pub(super) struct Batch {
    /// Its key in the environment.
    pub key: String,
    /// The templates it evaluates, by id, sorted.
    pub members: Vec<usize>,
}

/// Values of templates evaluated together, by template id.
#[derive(Debug, Clone, Default)]
pub struct Prefetched(Vec<(usize, Value)>);

impl Prefetched {
    /// Nothing prefetched.
    pub fn none() -> Prefetched {
        Prefetched(Vec::new())
    }

    pub(super) fn get(&self, id: usize) -> Option<&Value> {
        self.0
            .binary_search_by_key(&id, |(i, _)| *i)
            .ok()
            .map(|i| &self.0[i].1)
    }
}

/// The variable template `id` assigns in a combined template.
fn var(id: usize) -> String {
    format!("{PREFIX}{id}")
}

/// The part of a combined template that evaluates template `id`: an expression is assigned as
/// is; text is captured, inside its own scope so that what it sets stays its own.
pub(super) fn member_source(id: usize, typed: bool, source: &str) -> String {
    if typed {
        // the source is the `{% set __result = (…) %}` of the expression: assign it elsewhere
        source.replacen("__result", &var(id), 1)
    } else {
        format!(
            "{{% set {} %}}{{% with %}}{source}{{% endwith %}}{{% endset %}}",
            var(id)
        )
    }
}

/// Whether a template may share an evaluation with others: it neither defines blocks or macros,
/// nor reads the state of the evaluation (`debug`, `self`, …) or a name of the combined template.
pub(super) fn shareable(source: &str) -> bool {
    const APART: &[&str] = &[
        "extends", "block", "macro", "import", "from", "call", "debug", "self", "super", "caller",
        "varargs", "kwargs",
    ];
    !source.contains(PREFIX) && code_words(source).all(|w| !APART.contains(&w))
}

/// The identifiers inside the `{{ }}` and `{% %}` of a template.
fn code_words(source: &str) -> impl Iterator<Item = &str> {
    let mut code = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find(['{']) {
        let after = &rest[start + 1..];
        let close = match after.chars().next() {
            Some('{') => "}}",
            Some('%') => "%}",
            _ => {
                rest = after;
                continue;
            }
        };
        let end = after.find(close).unwrap_or(after.len());
        code.push(&after[1..end]);
        rest = &after[end.min(after.len())..];
    }
    code.into_iter().flat_map(|c| {
        c.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
            .filter(|w| !w.is_empty())
    })
}

/// Reads the results of a combined evaluation: all of them, or none when one is not a value
/// its template alone would give.
pub(super) fn results(
    members: &[usize],
    typed: &[bool],
    lookup: impl Fn(&str) -> Option<JValue>,
    max_text: usize,
) -> Option<Prefetched> {
    let mut out = Vec::with_capacity(members.len());
    for &id in members {
        let v = lookup(&var(id))?;
        if v.is_undefined() {
            return None;
        }
        let json = if typed[id] {
            super::to_json(&v)
        } else {
            let text = v.as_str()?;
            if text.len() > max_text {
                return None;
            }
            Value::String(text.to_string())
        };
        out.push((id, json));
    }
    Some(Prefetched(out))
}

#[cfg(test)]
mod tests {
    use super::super::{Templates, Tmpl};
    use super::*;
    use minijinja::context;
    use serde_json::json;

    fn ctx(reason: &str) -> JValue {
        context! {
            vars => JValue::from_serialize(json!({"reason": reason, "n": 2, "list": [3, 1]})),
            values => JValue::from_serialize(json!({"start": "2026-01-01T00:00:00Z"})),
        }
    }

    fn id(t: &Tmpl) -> usize {
        match t {
            Tmpl::Text(i) | Tmpl::Expr(i) => *i,
            Tmpl::Literal(_) => panic!("a template expected"),
        }
    }

    #[test]
    fn a_batch_gives_what_each_template_gives_alone() {
        let mut t = Templates::new();
        let sources = [
            "{{ vars.n + 1 }}",
            "{{ vars.list | sort }}",
            "{% set x = vars.reason | upper %}{{ x }}!\n",
            "{{ x is defined }}",
            "{{ vars.reason }}",
            "{{ {'a': vars.n, 'b': none} }}",
            "{% if vars.reason == 'OOM' %}out of memory{% else %}{{ vars.reason }}{% endif %}",
        ];
        let tmpls: Vec<Tmpl> = sources
            .iter()
            .enumerate()
            .map(|(i, s)| t.compile(&format!("t{i}"), s).unwrap())
            .collect();
        let ids: Vec<usize> = tmpls.iter().map(id).collect();
        let b = t.add_batch(&ids);
        assert!(b.is_some());
        for reason in ["OOM", "Failed"] {
            let c = ctx(reason);
            let pre = t.prefetch(b, &c);
            let mut prefetched = 0;
            for tmpl in &tmpls {
                if pre.get(id(tmpl)).is_some() {
                    prefetched += 1;
                }
                let alone = t.value(tmpl, &c).unwrap();
                assert_eq!(t.value_in(tmpl, &c, &pre).unwrap(), alone, "{tmpl:?}");
            }
            // the plain path is evaluated directly, everything else together
            assert_eq!(prefetched, sources.len() - 1);
            // what a text sets stays its own: the next template does not see `x`
            assert_eq!(pre.get(id(&tmpls[3])), Some(&json!(false)));
        }
    }

    #[test]
    fn nothing_is_prefetched_when_one_template_fails() {
        let mut t = Templates::new();
        let ok = t.compile("ok", "{{ vars.n * 2 }}").unwrap();
        let bad = t.compile("bad", "{{ vars.missing.deeper }}").unwrap();
        let undefined = t.compile("undefined", "{{ vars.n if false }}").unwrap();
        let b = t.add_batch(&[id(&ok), id(&bad)]);
        let pre = t.prefetch(b, &ctx("x"));
        assert!(pre.get(id(&ok)).is_none());
        let alone = t.value(&bad, &ctx("x")).unwrap_err();
        assert_eq!(
            t.value_in(&bad, &ctx("x"), &pre).unwrap_err(),
            alone,
            "the error is the template's own"
        );
        // an undefined result is an error of its own template, not a null
        let b = t.add_batch(&[id(&ok), id(&undefined)]);
        assert!(t.prefetch(b, &ctx("x")).get(id(&ok)).is_none());
    }

    #[test]
    fn templates_that_read_the_evaluation_state_stay_apart() {
        let mut t = Templates::new();
        let a = t.compile("a", "{{ vars.n + 1 }}").unwrap();
        let d = t.compile("d", "{{ debug() }}").unwrap();
        let m = t
            .compile("m", "{% macro f() %}x{% endmacro %}{{ f() }}")
            .unwrap();
        assert_eq!(t.add_batch(&[id(&a), id(&d), id(&m)]), None);
        assert!(shareable("Lock released from {{ vars.reason }}"));
        assert!(!shareable("{{ self.x }}"));
    }
}
