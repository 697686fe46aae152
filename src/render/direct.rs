//! Templates evaluated without setting up a minijinja evaluation state: a single expression that
//! is a plain path (`{{ vars.reason }}`, `{{ now }}`), and text made only of literal text and
//! such paths (`Created {{ execution.metadata.namespace }}/{{ execution.metadata.name }}`).
//!
//! A direct evaluation reads the same context values minijinja would, attribute by attribute,
//! and prints a value the way minijinja prints it (its `Display`, the default formatter of a
//! template that is not auto-escaped). It only ever answers when every step finds a defined
//! value; anything else (a missing field, `none` on the way, an undefined value printed) returns
//! `None`, and the caller evaluates the template with minijinja, which gives the same result
//! or the same error as always.

use super::JValue;

/// A template that can be evaluated directly.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Direct {
    /// A single expression that is a path of attributes.
    Path(Vec<String>),
    /// Literal text and paths, printed in turn.
    Text(Vec<Segment>),
}

/// A piece of a direct text template.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Segment {
    /// Text as written.
    Literal(String),
    /// A path whose value is printed.
    Path(Vec<String>),
}

/// Words that are not variable names in an expression.
const KEYWORDS: &[&str] = &[
    "true", "false", "none", "True", "False", "None", "not", "and", "or", "in", "is", "if", "else",
    "loop", "self", "super", "caller", "varargs", "kwargs",
];

/// The path an expression is, when it is nothing but `name(.name)*`.
pub(super) fn path(expr: &str) -> Option<Vec<String>> {
    let expr = expr.trim();
    let mut out = Vec::new();
    for part in expr.split('.') {
        let mut chars = part.chars();
        let first = chars.next()?;
        if !(first.is_ascii_alphabetic() || first == '_')
            || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return None;
        }
        out.push(part.to_string());
    }
    if KEYWORDS.contains(&out[0].as_str()) {
        return None;
    }
    Some(out)
}

/// The segments of a text template made only of literal text and `{{ path }}`s.
pub(super) fn text(source: &str) -> Option<Vec<Segment>> {
    if source.contains("{%") || source.contains("{#") {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            out.push(Segment::Literal(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let end = after.find("}}")?;
        let inner = &after[..end];
        // whitespace control and anything else minijinja treats specially is left to it
        if inner.starts_with(['-', '+']) || inner.ends_with(['-', '+']) {
            return None;
        }
        out.push(Segment::Path(path(inner)?));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Segment::Literal(rest.to_string()));
    }
    Some(out)
}

/// The value at `path` in `ctx`, when every step finds a defined value.
pub(super) fn lookup(ctx: &JValue, path: &[String]) -> Option<JValue> {
    let mut v = ctx.clone();
    for key in path {
        v = v.get_attr(key).ok()?;
        if v.is_undefined() {
            return None;
        }
    }
    Some(v)
}

/// The text of `segments` in `ctx`, when every path finds a defined value.
pub(super) fn render(ctx: &JValue, segments: &[Segment]) -> Option<String> {
    use std::fmt::Write;
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Literal(t) => out.push_str(t),
            Segment::Path(p) => {
                let v = lookup(ctx, p)?;
                match v.as_str() {
                    Some(s) => out.push_str(s),
                    None => write!(out, "{v}").ok()?,
                }
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_and_text_qualify() {
        assert_eq!(
            path(" vars.reason "),
            Some(vec!["vars".into(), "reason".into()])
        );
        assert_eq!(path("now"), Some(vec!["now".into()]));
        for not in [
            "none",
            "a.b | default('')",
            "a['b']",
            "a.0",
            "a..b",
            "a + 1",
            "f(x)",
            "",
            "loop.index",
        ] {
            assert_eq!(path(not), None, "{not}");
        }
        assert_eq!(
            text("a {{ x.y }} b {{z}}"),
            Some(vec![
                Segment::Literal("a ".into()),
                Segment::Path(vec!["x".into(), "y".into()]),
                Segment::Literal(" b ".into()),
                Segment::Path(vec!["z".into()]),
            ])
        );
        for not in [
            "{% if x %}y{% endif %}",
            "{{- x }}",
            "{{ x | upper }}",
            "{# c #}",
            "{{ x",
        ] {
            assert_eq!(text(not), None, "{not}");
        }
    }

    /// Each template evaluated directly gives what minijinja gives for the same template
    /// written so that it is not (a path in parentheses), errors included.
    #[test]
    fn direct_evaluation_gives_what_minijinja_gives() {
        use super::super::Templates;
        use minijinja::context;
        use serde_json::json;
        let ctx = context! {
            resource => JValue::from_serialize(json!({
                "metadata": {"name": "a", "labels": {"x": "y"}, "generation": 3},
                "spec": {"f": 1.5, "neg": -2, "yes": true, "none": null, "list": [1, "b"]},
            })),
            vars => JValue::UNDEFINED,
            now => JValue::from("2026-01-01T00:00:00Z"),
        };
        let paths = [
            "now",
            "resource.metadata.name",
            "resource.metadata.labels",
            "resource.metadata.generation",
            "resource.spec.f",
            "resource.spec.neg",
            "resource.spec.yes",
            "resource.spec.none",
            "resource.spec.list",
            "resource.spec.missing",
            "resource.spec.none.deeper",
            "resource.spec.missing.deeper",
            "resource.spec.list.first",
            "vars.reason",
            "nothing",
            "range",
        ];
        let mut direct = 0;
        for p in paths {
            for (shape, plain) in [
                ("{{ P }}", "{{ (P) }}"),
                ("at {{ P }}: {{ now }}\n", "at {{ (P) }}: {{ now }}\n"),
            ] {
                let mut t = Templates::new();
                let a = t.compile("same", &shape.replace('P', p)).unwrap();
                let b = t.compile("same", &plain.replace('P', p)).unwrap();
                let (crate::render::Tmpl::Text(ia) | crate::render::Tmpl::Expr(ia)) = a else {
                    panic!("{a:?}")
                };
                assert!(t.direct[ia].is_some(), "{p} in {shape}");
                let got = t.value(&a, &ctx);
                direct += usize::from(got.is_ok());
                assert_eq!(got, t.value(&b, &ctx), "{p} in {shape}");
            }
        }
        assert!(direct >= 16, "{direct} evaluated");
    }
}
