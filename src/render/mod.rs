//! Templates: the minijinja environment, its filters, and templated values.
//!
//! Every template and expression in the rules is compiled once, when the rules load, into one
//! [`Templates`] set and referred to by id afterwards. Rendering is strict: an undefined value
//! that is printed or iterated is an error (truthiness checks are allowed, so `{% if x %}` works
//! on optional fields), output is capped in size, and templates run with a fuel budget. The
//! environment has no loader: templates can include only the files loaded with the rules, and
//! nothing can read files or the environment.
//!
//! A template whose whole text is a single `{{ expression }}` keeps the expression's type
//! (numbers stay numbers, `none` stays null); any other template renders to a string.

mod batch;
pub mod chains;
mod direct;
mod filters;
mod lazy;
pub mod scan;

pub use batch::Prefetched;
pub use lazy::{Loan, lazy, lazy_copy, lend};
/// A template value (the context templates are rendered with).
pub use minijinja::Value as JValue;
use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;

/// Largest output one template may produce.
pub const MAX_OUTPUT_BYTES: usize = 512 * 1024;
/// Instruction budget of one template evaluation.
pub const FUEL: u64 = 2_000_000;

/// Names of the functions the environment provides (not variables of the context).
pub const FUNCTIONS: &[&str] = &[
    "timestamp",
    "duration",
    "elapsed",
    "condition",
    "range",
    "dict",
    "namespace",
    "debug",
];

/// A compiled template-or-literal, by id into [`Templates`].
#[derive(Debug, Clone, PartialEq)]
pub enum Tmpl {
    /// A literal value, no template involved.
    Literal(Value),
    /// A text template, renders to a string.
    Text(usize),
    /// A single expression, keeps its type.
    Expr(usize),
}

/// A template failed to compile or to render.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RenderError {
    /// What went wrong, with the template's name and line when known.
    pub message: String,
    /// Line inside the template (1-based), when known.
    pub line: Option<usize>,
}

impl RenderError {
    fn from_jinja(e: &minijinja::Error) -> RenderError {
        let mut message = e
            .detail()
            .map_or_else(|| e.kind().to_string(), |d| format!("{}: {d}", e.kind()));
        if let Some(name) = e.name()
            && !name.starts_with('@')
        {
            message = format!(
                "{message} (in {name}{})",
                e.line().map_or(String::new(), |l| format!(" line {l}"))
            );
        }
        RenderError {
            message,
            line: e.line(),
        }
    }
}

/// Every template of one rule set.
pub struct Templates {
    env: Environment<'static>,
    names: Vec<String>,
    keys: Vec<String>,
    typed: Vec<bool>,
    /// Names of the files each template includes.
    includes: Vec<Vec<String>>,
    /// How each template is evaluated without minijinja, when it can be.
    direct: Vec<Option<direct::Direct>>,
    /// Templates compiled together, each evaluated in one evaluation state.
    batches: Vec<batch::Batch>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Templates({} compiled)", self.names.len())
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// An empty set with the rules' filters and functions.
    pub fn new() -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_keep_trailing_newline(true);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        filters::register(&mut env);
        Templates {
            env,
            names: Vec::new(),
            keys: Vec::new(),
            typed: Vec::new(),
            includes: Vec::new(),
            direct: Vec::new(),
            batches: Vec::new(),
        }
    }

    /// Adds a template file (e.g. from `templates/`) under its file name, so that other
    /// templates can include it and the rules can refer to it.
    pub fn add_file(&mut self, name: &str, source: String) -> Result<usize, RenderError> {
        let includes = included_files(&source);
        self.env
            .add_template_owned(name.to_string(), source)
            .map_err(|e| RenderError::from_jinja(&e))?;
        self.names.push(name.to_string());
        self.keys.push(name.to_string());
        self.typed.push(false);
        self.includes.push(includes);
        self.direct.push(None);
        Ok(self.names.len() - 1)
    }

    /// How many templates the set holds (ids are `0..len()`).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the set holds no template.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Id of a template file added with [`Templates::add_file`].
    pub fn file_id(&self, name: &str) -> Option<usize> {
        self.keys.iter().position(|k| k == name)
    }

    /// Compiles a text-or-expression template. `name` is where it comes from, for messages.
    pub fn compile(&mut self, name: &str, source: &str) -> Result<Tmpl, RenderError> {
        if !source.contains("{{") && !source.contains("{%") && !source.contains("{#") {
            return Ok(Tmpl::Literal(Value::String(source.to_string())));
        }
        if let Some(expr) = single_expression(source) {
            return self.compile_expr(name, expr).map(Tmpl::Expr);
        }
        self.add(name, source.to_string(), false).map(Tmpl::Text)
    }

    /// Compiles an expression (without braces), keeping its result's type.
    pub fn compile_expr(&mut self, name: &str, expr: &str) -> Result<usize, RenderError> {
        // `{% set %}` then reading the variable back gives the typed result of the expression.
        let source = format!("{{% set __result = ({expr}\n) %}}");
        let id = self.add(name, source, true)?;
        self.direct[id] = direct::path(expr).map(direct::Direct::Path);
        Ok(id)
    }

    /// Compiles a literal-or-template JSON value: strings are templates, others literals.
    pub fn compile_value(&mut self, name: &str, value: &Value) -> Result<Tmpl, RenderError> {
        match value {
            Value::String(s) => self.compile(name, s),
            other => Ok(Tmpl::Literal(other.clone())),
        }
    }

    fn add(&mut self, name: &str, source: String, typed: bool) -> Result<usize, RenderError> {
        let id = self.names.len();
        let key = format!("@{id}");
        let includes = included_files(&source);
        let direct = (!typed)
            .then(|| direct::text(&source))
            .flatten()
            .map(direct::Direct::Text);
        self.env
            .add_template_owned(key, source)
            .map_err(|e| located(name, &e))?;
        self.names.push(name.to_string());
        self.keys.push(format!("@{id}"));
        self.typed.push(typed);
        self.includes.push(includes);
        self.direct.push(direct);
        Ok(id)
    }

    /// Compiles templates `ids` into one combined template (see `batch.rs`), leaving out those
    /// evaluated without minijinja and those that cannot share an evaluation; none when fewer
    /// than two are left.
    pub fn add_batch(&mut self, ids: &[usize]) -> Option<usize> {
        let mut members = Vec::new();
        let mut source = String::new();
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for id in sorted {
            if self.is_file(id) || self.direct.get(id).is_none_or(Option::is_some) {
                continue;
            }
            let Some(text) = self.source(id).filter(|s| batch::shareable(s)) else {
                continue;
            };
            source.push_str(&batch::member_source(id, self.typed[id], &text));
            members.push(id);
        }
        if members.len() < 2 {
            return None;
        }
        let key = format!("@batch{}", self.batches.len());
        self.env.add_template_owned(key.clone(), source).ok()?;
        self.batches.push(batch::Batch { key, members });
        Some(self.batches.len() - 1)
    }

    /// Evaluates the templates of batch `b` together, in one evaluation state. Nothing is
    /// prefetched when there is no batch or one of its templates fails: each is then evaluated
    /// on its own when asked for, with its own result or error.
    pub fn prefetch(&self, b: Option<usize>, ctx: &JValue) -> Prefetched {
        let Some(batch) = b.and_then(|b| self.batches.get(b)) else {
            return Prefetched::none();
        };
        let Ok(t) = self.env.get_template(&batch.key) else {
            return Prefetched::none();
        };
        let Ok(captured) = t.render_captured(ctx) else {
            return Prefetched::none();
        };
        let state = captured.state();
        batch::results(
            &batch.members,
            &self.typed,
            |name| state.lookup(name),
            MAX_OUTPUT_BYTES,
        )
        .unwrap_or_default()
    }

    /// Where template `id` came from.
    pub fn name(&self, id: usize) -> &str {
        &self.names[id]
    }

    /// The source of template `id` as the rules wrote it (an expression without its braces).
    pub fn as_written(&self, id: usize) -> Option<String> {
        let source = self.source(id)?;
        if self.typed.get(id).copied().unwrap_or(false) {
            return source
                .strip_prefix("{% set __result = (")
                .and_then(|s| s.strip_suffix("\n) %}"))
                .map(str::to_string);
        }
        Some(source)
    }

    /// Variables template `id` reads from its context, as dotted paths (`values.reason`),
    /// including those of the files it includes.
    pub fn variables(&self, id: usize) -> BTreeSet<String> {
        self.variables_by_template(id)
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// Variables each template reads, with the id of the template (`id` itself or a file it
    /// includes) whose text reads it, so that a problem can be placed where it is written.
    pub fn variables_by_template(&self, id: usize) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for i in self.reached(id) {
            if let Some(t) = self.template(i) {
                let sorted: BTreeSet<String> = t.undeclared_variables(true).into_iter().collect();
                out.extend(
                    sorted
                        .into_iter()
                        .filter(|v| v != "__result")
                        .map(|v| (i, v)),
                );
            }
        }
        out
    }

    /// `id` and every file it includes, directly or not, each once.
    pub fn reached(&self, id: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut todo = vec![id];
        while let Some(i) = todo.pop() {
            if out.contains(&i) {
                continue;
            }
            out.push(i);
            for name in self.includes.get(i).into_iter().flatten() {
                if let Some(j) = self.file_id(name) {
                    todo.push(j);
                }
            }
        }
        out
    }

    /// Whether template `id` is a file of the templates folder (not a string of the rules).
    pub fn is_file(&self, id: usize) -> bool {
        self.keys.get(id).is_some_and(|k| !k.starts_with('@'))
    }

    /// The text of template `id` as written (an expression is wrapped in `{% set %}`).
    pub fn source(&self, id: usize) -> Option<String> {
        self.env
            .get_template(self.keys.get(id)?)
            .ok()
            .map(|t| t.source().to_string())
    }

    /// The filters and tests template `id`'s own text calls that the environment lacks (the
    /// files it includes are checked as themselves).
    pub fn unknown_calls(&self, id: usize) -> Vec<scan::Named> {
        let Some(source) = self.source(id) else {
            return Vec::new();
        };
        scan::calls(&source)
            .into_iter()
            .filter(|n| !self.knows(n.what, &n.name))
            .collect()
    }

    /// Whether the environment has this filter or test (a name is known unless calling it
    /// says it is unknown; a missing argument still shows the name exists).
    fn knows(&self, what: &str, name: &str) -> bool {
        let (probe, unknown) = if what == "test" {
            (
                format!("{{{{ none is {name} }}}}"),
                minijinja::ErrorKind::UnknownTest,
            )
        } else {
            (
                format!("{{{{ none | {name} }}}}"),
                minijinja::ErrorKind::UnknownFilter,
            )
        };
        !matches!(self.env.render_str(&probe, ()), Err(e) if e.kind() == unknown)
    }

    /// Names of files template `id` includes that are not loaded.
    pub fn missing_includes(&self, id: usize) -> Vec<String> {
        self.includes
            .get(id)
            .into_iter()
            .flatten()
            .filter(|n| self.file_id(n).is_none())
            .cloned()
            .collect()
    }

    fn template(&self, id: usize) -> Option<minijinja::Template<'_, '_>> {
        self.env.get_template(self.keys.get(id)?).ok()
    }

    /// Renders template `id` to text.
    pub fn render_text(&self, id: usize, ctx: &JValue) -> Result<String, RenderError> {
        if let Some(direct::Direct::Text(segments)) = self.direct.get(id).and_then(Option::as_ref)
            && let Some(text) = direct::render(ctx, segments)
            && text.len() <= MAX_OUTPUT_BYTES
        {
            return Ok(text);
        }
        let t = self.template(id).ok_or_else(|| RenderError {
            message: format!("template {} is not loaded", self.names[id]),
            line: None,
        })?;
        let mut out = Limited {
            buf: Vec::new(),
            limit: MAX_OUTPUT_BYTES,
        };
        t.render_captured_to(ctx, &mut out).map_err(|e| {
            if out.buf.len() >= MAX_OUTPUT_BYTES {
                RenderError {
                    message: format!(
                        "output of {} exceeds the limit of {} bytes",
                        self.names[id], MAX_OUTPUT_BYTES
                    ),
                    line: None,
                }
            } else {
                with_name(&self.names[id], &e)
            }
        })?;
        String::from_utf8(out.buf).map_err(|_| RenderError {
            message: format!("output of {} is not UTF-8", self.names[id]),
            line: None,
        })
    }

    /// Evaluates template `id` to a value: typed for expressions, a string for text.
    pub fn eval(&self, id: usize, ctx: &JValue) -> Result<Value, RenderError> {
        if !self.typed[id] {
            return self.render_text(id, ctx).map(Value::String);
        }
        let v = self.eval_jinja(id, ctx)?;
        if v.is_undefined() {
            // never a silent null: say which expression read something that is not there
            return Err(RenderError {
                message: format!(
                    "undefined value: the expression in {} reads a field that is not there (write `x if x is defined else none`, or `x | default(…)`, when it may be absent)",
                    self.names[id]
                ),
                line: None,
            });
        }
        Ok(to_json(&v))
    }

    /// Evaluates expression template `id` to a template value (for truthiness tests).
    pub fn eval_jinja(&self, id: usize, ctx: &JValue) -> Result<JValue, RenderError> {
        if let Some(direct::Direct::Path(path)) = self.direct.get(id).and_then(Option::as_ref)
            && let Some(v) = direct::lookup(ctx, path)
        {
            return Ok(v);
        }
        let t = self.template(id).ok_or_else(|| RenderError {
            message: format!("template {} is not loaded", self.names[id]),
            line: None,
        })?;
        let captured = t
            .render_captured(ctx)
            .map_err(|e| with_name(&self.names[id], &e))?;
        Ok(captured
            .state()
            .lookup("__result")
            .unwrap_or(JValue::UNDEFINED))
    }

    /// Evaluates a [`Tmpl`].
    pub fn value(&self, t: &Tmpl, ctx: &JValue) -> Result<Value, RenderError> {
        match t {
            Tmpl::Literal(v) => Ok(v.clone()),
            Tmpl::Text(id) | Tmpl::Expr(id) => self.eval(*id, ctx),
        }
    }

    /// Evaluates a [`Tmpl`], taking its value from `pre` when it was prefetched.
    pub fn value_in(&self, t: &Tmpl, ctx: &JValue, pre: &Prefetched) -> Result<Value, RenderError> {
        if let Tmpl::Text(id) | Tmpl::Expr(id) = t
            && let Some(v) = pre.get(*id)
        {
            return Ok(v.clone());
        }
        self.value(t, ctx)
    }

    /// Evaluates a [`Tmpl`] to text (`null` becomes an empty string; other non-strings their JSON).
    pub fn text(&self, t: &Tmpl, ctx: &JValue) -> Result<String, RenderError> {
        self.text_in(t, ctx, &Prefetched::none())
    }

    /// [`Templates::text`], taking the value from `pre` when it was prefetched.
    pub fn text_in(&self, t: &Tmpl, ctx: &JValue, pre: &Prefetched) -> Result<String, RenderError> {
        Ok(match self.value_in(t, ctx, pre)? {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        })
    }
}

/// Converts a template value to JSON; undefined becomes null.
pub fn to_json(v: &JValue) -> Value {
    if v.is_undefined() {
        return Value::Null;
    }
    if let Some(json) = lazy::json_of(v) {
        return json;
    }
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn with_name(name: &str, e: &minijinja::Error) -> RenderError {
    let mut r = RenderError::from_jinja(e);
    if !r.message.contains(name) {
        r.message = format!("{} (in {name})", r.message);
    }
    r
}

fn located(name: &str, e: &minijinja::Error) -> RenderError {
    let mut r = RenderError::from_jinja(e);
    r.message = format!("{} (in {name})", r.message);
    r
}

/// Files named by `{% include '…' %}` in a template's source.
fn included_files(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find("include") {
        rest = &rest[i + "include".len()..];
        let trimmed = rest.trim_start();
        if let Some(q) = trimmed.chars().next().filter(|c| *c == '"' || *c == '\'')
            && let Some(end) = trimmed[1..].find(q)
        {
            out.push(trimmed[1..1 + end].to_string());
        }
    }
    out
}

/// The expression inside `{{ … }}` when that is the template's whole text.
fn single_expression(source: &str) -> Option<&str> {
    let inner = source.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner.trim())
}

struct Limited {
    buf: Vec<u8>,
    limit: usize,
}

impl Write for Limited {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.buf.resize(self.limit, 0);
            return Err(std::io::Error::other("output limit exceeded"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;
    use serde_json::json;

    fn ctx() -> JValue {
        context! {
            resource => JValue::from_serialize(json!({"spec": {"n": 3, "target": "default/deployment/nginx", "params": {"B": "2", "A": "x=1\ny"}}})),
            values => JValue::from_serialize(json!({"missing": null})),
        }
    }

    #[test]
    fn single_expressions_keep_their_type() {
        let mut t = Templates::new();
        let n = t.compile("n", "{{ resource.spec.n + 1 }}").unwrap();
        assert!(matches!(n, Tmpl::Expr(_)));
        assert_eq!(t.value(&n, &ctx()).unwrap(), json!(4));
        let none = t.compile("none", "{{ values.missing }}").unwrap();
        assert_eq!(t.value(&none, &ctx()).unwrap(), Value::Null);
        let text = t.compile("text", "n={{ resource.spec.n }}").unwrap();
        assert_eq!(t.value(&text, &ctx()).unwrap(), json!("n=3"));
        let lit = t.compile("lit", "plain").unwrap();
        assert_eq!(lit, Tmpl::Literal(json!("plain")));
    }

    #[test]
    fn undefined_values_fail_when_printed_but_not_when_tested() {
        let mut t = Templates::new();
        let bad = t.compile("bad", "x {{ resource.spec.nope }}").unwrap();
        let err = t.value(&bad, &ctx()).unwrap_err();
        assert!(err.message.contains("undefined"), "{}", err.message);
        assert!(err.message.contains("bad"), "{}", err.message);
        let ok = t
            .compile(
                "ok",
                "{% if resource.spec.nope %}yes{% else %}no{% endif %}",
            )
            .unwrap();
        assert_eq!(t.value(&ok, &ctx()).unwrap(), json!("no"));
    }

    #[test]
    fn syntax_errors_name_the_template_and_line() {
        let mut t = Templates::new();
        let err = t
            .compile("phases.X.status.y", "a\n{{ oops( }}")
            .unwrap_err();
        assert!(err.message.contains("phases.X.status.y"), "{}", err.message);
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn variables_are_listed() {
        let mut t = Templates::new();
        let Tmpl::Text(id) = t
            .compile("v", "{{ values.reason }} {{ resource.spec.n }}")
            .unwrap()
        else {
            panic!("text expected")
        };
        let vars = t.variables(id);
        assert!(vars.contains("values.reason"), "{vars:?}");
        assert!(vars.iter().any(|v| v.starts_with("resource")), "{vars:?}");
    }

    #[test]
    fn output_is_capped() {
        let mut t = Templates::new();
        let big = t
            .compile("big", "{% for i in range(1000) %}{% for j in range(100) %}0123456789{% endfor %}{% endfor %}")
            .unwrap();
        let err = t.value(&big, &ctx()).unwrap_err();
        assert!(
            err.message.contains("limit") || err.message.contains("fuel"),
            "{}",
            err.message
        );
    }

    #[test]
    fn infinite_work_runs_out_of_fuel() {
        let mut t = Templates::new();
        let busy = t
            .compile(
                "busy",
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            )
            .unwrap();
        assert!(t.value(&busy, &ctx()).is_err());
    }

    #[test]
    fn trailing_newlines_are_kept() {
        let mut t = Templates::new();
        let s = t.compile("s", "a {{ resource.spec.n }}\n").unwrap();
        assert_eq!(t.value(&s, &ctx()).unwrap(), json!("a 3\n"));
    }
}
