//! `values`: named values computed from what is observed (a path, a list, a count, a find, an
//! expression, a template or a classification table).
//!
//! Each value has exactly one form. A broken entry keeps its place (as a value that is never
//! computed) so that indices stay those of the file; the order values may be evaluated in is the
//! dependency analysis' concern ([`crate::rules::deps`]).

use crate::render::Tmpl;
use crate::rules::compiled::{Deps, MatcherRules, TableRules, ValueKind, ValueRules};
use crate::rules::compiler::{Compiler, Scope, list_or_none, one_line};
use crate::rules::locate::DocPath;
use crate::rules::model::{Matcher, ValueSpec};
use indexmap::IndexMap;
use regex::Regex;
use serde_json::Value;

impl Compiler<'_> {
    /// Every value, in the order of the file.
    pub(crate) fn compile_values(
        &mut self,
        entries: &IndexMap<String, ValueSpec>,
    ) -> Vec<ValueRules> {
        let root = DocPath::root();
        let mut values = Vec::new();
        for (vname, v) in entries {
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
        values
    }

    /// How one value is computed; `None` (with problems) when it does not compile.
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
            let path = self.source_path(&at.key("path"), p);
            self.reads.item = None;
            return path.map(ValueKind::Path);
        }
        if let Some(p) = &v.list {
            let path = self.source_path(&at.key("list"), p);
            let f = filter(self);
            self.reads.item = None;
            return path.map(|p| ValueKind::List(p, f));
        }
        if let Some(p) = &v.count {
            let path = self.source_path(&at.key("count"), p);
            let f = filter(self);
            self.reads.item = None;
            return path.map(|p| ValueKind::Count(p, f));
        }
        if let Some(p) = &v.find {
            let path = self.source_path(&at.key("find"), p);
            let f = filter(self);
            self.reads.item = None;
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

    /// The path a value selects from: what it reads depends on how the value is read (logged
    /// as only the selection's presence; reads of the value resolve to reads below it), and
    /// it is what `$` is in the value's `where`.
    fn source_path(&mut self, at: &DocPath, source: &str) -> Option<crate::expr::Path> {
        self.reads.mode = Some(crate::rules::reads::Use::Presence);
        let path = self.path(at, source, false);
        self.reads.mode = None;
        self.reads.item = path
            .as_ref()
            .and_then(|p| Some((p.root()?, p.read_steps().0)));
        path
    }

    /// One test of a table row.
    fn matcher(&mut self, at: &DocPath, m: &Matcher) -> Option<MatcherRules> {
        let mut forms = Vec::new();
        if let Some(v) = &m.contains {
            forms.push(MatcherRules::Contains(
                v.iter().map(|s| s.to_lowercase()).collect(),
            ));
        }
        if let Some(v) = &m.contains_all {
            forms.push(MatcherRules::ContainsAll(
                v.iter().map(|s| s.to_lowercase()).collect(),
            ));
        }
        if let Some(v) = &m.equals {
            forms.push(MatcherRules::Equals(v.clone()));
        }
        if let Some(v) = &m.one_of {
            forms.push(MatcherRules::In(v.clone()));
        }
        if let Some(r) = &m.regex {
            match Regex::new(r) {
                Ok(re) => forms.push(MatcherRules::Regex(re)),
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
}
