//! What a template reads of its context, as chains of attribute names from the parsed template
//! (`execution.status.startTime`), each with how its value is used: whole, or only tested for
//! truth or definedness. The rules use it to know which fields of an observed object a template
//! can read, so that the caches keep only those.
//!
//! Sound by construction: any use that is not a plain attribute chain in a test position (a
//! filter's argument, a loop's iterable, a subscript computed at run time, a local variable
//! bound to a read, output as is) counts as reading the chain's end whole.

use minijinja::machinery::ast::{CallArg, Expr, Stmt, UnaryOpKind};
use minijinja::machinery::{WhitespaceConfig, parse};
use minijinja::syntax::SyntaxConfig;

/// One read: the variable's name, then each attribute or constant key after it (`None`: an
/// element at a constant index).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Chain {
    /// The variable, then the steps.
    pub steps: Vec<Option<String>>,
    /// Only its truth or definedness is used (`if x`, `x and y` in a test, `x is defined`).
    pub test_only: bool,
}

/// Every chain the template reads (`None` when it does not parse).
pub fn chains(source: &str) -> Option<Vec<Chain>> {
    let ast = parse(
        source,
        "<template>",
        SyntaxConfig,
        WhitespaceConfig::default(),
    )
    .ok()?;
    let mut out = Vec::new();
    stmt(&ast, &mut out);
    out.sort();
    out.dedup();
    Some(out)
}

/// The chain an expression is (a variable followed by attributes and constant subscripts).
fn chain_of(e: &Expr<'_>) -> Option<Vec<Option<String>>> {
    match e {
        Expr::Var(v) => Some(vec![Some(v.id.to_string())]),
        Expr::GetAttr(g) => {
            let mut c = chain_of(&g.expr)?;
            c.push(Some(g.name.to_string()));
            Some(c)
        }
        Expr::GetItem(g) => {
            let Expr::Const(k) = &g.subscript_expr else {
                return None;
            };
            let mut c = chain_of(&g.expr)?;
            match k.value.as_str() {
                Some(s) => c.push(Some(s.to_string())),
                None if k.value.is_number() => c.push(None),
                None => return None,
            }
            Some(c)
        }
        _ => None,
    }
}

fn stmts(body: &[Stmt<'_>], out: &mut Vec<Chain>) {
    for s in body {
        stmt(s, out);
    }
}

fn stmt(s: &Stmt<'_>, out: &mut Vec<Chain>) {
    match s {
        Stmt::Template(t) => stmts(&t.children, out),
        Stmt::EmitExpr(e) => expr(&e.expr, false, out),
        Stmt::EmitRaw(_) | Stmt::Continue(_) | Stmt::Break(_) => {}
        Stmt::ForLoop(f) => {
            expr(&f.iter, false, out);
            if let Some(x) = &f.filter_expr {
                expr(x, false, out);
            }
            stmts(&f.body, out);
            stmts(&f.else_body, out);
        }
        Stmt::IfCond(i) => {
            expr(&i.expr, true, out);
            stmts(&i.true_body, out);
            stmts(&i.false_body, out);
        }
        Stmt::WithBlock(w) => {
            for (_, v) in &w.assignments {
                expr(v, false, out);
            }
            stmts(&w.body, out);
        }
        Stmt::Set(x) => expr(&x.expr, false, out),
        Stmt::SetBlock(x) => {
            if let Some(f) = &x.filter {
                expr(f, false, out);
            }
            stmts(&x.body, out);
        }
        Stmt::AutoEscape(a) => {
            expr(&a.enabled, false, out);
            stmts(&a.body, out);
        }
        Stmt::FilterBlock(f) => {
            expr(&f.filter, false, out);
            stmts(&f.body, out);
        }
        Stmt::Block(b) => stmts(&b.body, out),
        Stmt::Import(i) => expr(&i.expr, false, out),
        Stmt::FromImport(i) => expr(&i.expr, false, out),
        Stmt::Extends(x) => expr(&x.name, false, out),
        Stmt::Include(x) => expr(&x.name, false, out),
        Stmt::Macro(m) => {
            for d in &m.defaults {
                expr(d, false, out);
            }
            stmts(&m.body, out);
        }
        Stmt::CallBlock(c) => {
            expr(&c.call.expr, false, out);
            args(&c.call.args, out);
            for d in &c.macro_decl.defaults {
                expr(d, false, out);
            }
            stmts(&c.macro_decl.body, out);
        }
        Stmt::Do(d) => {
            expr(&d.call.expr, false, out);
            args(&d.call.args, out);
        }
    }
}

fn args(a: &[CallArg<'_>], out: &mut Vec<Chain>) {
    for arg in a {
        match arg {
            CallArg::Pos(e)
            | CallArg::Kwarg(_, e)
            | CallArg::PosSplat(e)
            | CallArg::KwargSplat(e) => expr(e, false, out),
        }
    }
}

/// Records what `e` reads; `test_only`: only its truth is used.
fn expr(e: &Expr<'_>, test_only: bool, out: &mut Vec<Chain>) {
    if let Some(steps) = chain_of(e) {
        out.push(Chain { steps, test_only });
        return;
    }
    match e {
        Expr::Var(_) | Expr::Const(_) => {}
        Expr::GetAttr(g) => expr(&g.expr, false, out),
        Expr::GetItem(g) => {
            expr(&g.expr, false, out);
            expr(&g.subscript_expr, false, out);
        }
        Expr::Slice(s) => {
            expr(&s.expr, false, out);
            for x in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                expr(x, false, out);
            }
        }
        Expr::UnaryOp(u) => expr(&u.expr, matches!(u.op, UnaryOpKind::Not), out),
        Expr::BinOp(b) => {
            // `a and b` is a or b itself: only a test when the whole is one
            use minijinja::machinery::ast::BinOpKind::{ScAnd, ScOr};
            let test = test_only && matches!(b.op, ScAnd | ScOr);
            expr(&b.left, test, out);
            expr(&b.right, test, out);
        }
        Expr::Compare(c) => {
            expr(&c.expr, false, out);
            for op in &c.ops {
                expr(&op.expr, false, out);
            }
        }
        Expr::IfExpr(i) => {
            expr(&i.test_expr, true, out);
            expr(&i.true_expr, test_only, out);
            if let Some(f) = &i.false_expr {
                expr(f, test_only, out);
            }
        }
        Expr::Filter(f) => {
            if let Some(x) = &f.expr {
                expr(x, false, out);
            }
            args(&f.args, out);
        }
        Expr::Test(t) => {
            let presence = matches!(t.name, "defined" | "undefined" | "none");
            expr(&t.expr, presence, out);
            args(&t.args, out);
        }
        Expr::Call(c) => {
            expr(&c.expr, false, out);
            args(&c.args, out);
        }
        Expr::List(l) => {
            for x in &l.items {
                expr(x, false, out);
            }
        }
        Expr::Map(m) => {
            for x in m.keys.iter().chain(&m.values) {
                expr(x, false, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(src: &str) -> Vec<(String, bool)> {
        chains(src)
            .expect("parses")
            .into_iter()
            .map(|c| {
                let s: Vec<String> = c
                    .steps
                    .iter()
                    .map(|s| s.clone().unwrap_or_else(|| "[]".into()))
                    .collect();
                (s.join("."), c.test_only)
            })
            .collect()
    }

    #[test]
    fn attribute_chains_and_constant_keys_are_followed() {
        assert_eq!(
            read("{{ execution.metadata.labels['a/b'] }} {{ x.items[0].name }}"),
            vec![
                ("execution.metadata.labels.a/b".to_string(), false),
                ("x.items.[].name".to_string(), false),
            ]
        );
    }

    #[test]
    fn tests_read_only_truth_and_values_read_whole() {
        assert_eq!(
            read("{{ v.found.value.name if a and v.found else 0 }}"),
            vec![
                ("a".to_string(), true),
                ("v.found".to_string(), true),
                ("v.found.value.name".to_string(), false),
            ]
        );
        // `a and b` outside a test is one of them, whole
        assert_eq!(
            read("{{ a and b }}"),
            vec![("a".into(), false), ("b".into(), false)]
        );
        assert_eq!(
            read("{% if not x.y is defined %}{% endif %}"),
            vec![("x.y".into(), true)]
        );
    }

    #[test]
    fn unbounded_uses_read_the_chain_whole() {
        assert_eq!(
            read(
                "{{ execution | tojson }}{% for c in run.status.steps %}{{ c.name }}{% endfor %}{{ m[k].z }}"
            ),
            vec![
                ("c.name".to_string(), false),
                ("execution".to_string(), false),
                ("k".to_string(), false),
                ("m".to_string(), false),
                ("run.status.steps".to_string(), false),
            ]
        );
        // a typed expression, as the rules wrap it
        assert_eq!(
            read("{% set __result = (f(values.t.value, now)\n) %}"),
            vec![
                ("f".into(), false),
                ("now".into(), false),
                ("values.t.value".into(), false)
            ]
        );
        assert_eq!(chains("{{ unclosed"), None);
    }
}
