//! Predicates (`when`, `require`, `where`): the raw one-of-several-forms struct → [`Pred`].
//!
//! A predicate has exactly one form; paths are parsed and checked against the names the rules
//! define, regexes compiled, `elapsed` durations and `expr` compiled as templates. Relative paths
//! (read from `item`) are allowed only inside `where` filters.

use super::compiler::{Compiler, Scope, one_line};
use super::locate::DocPath;
use super::model::Predicate;
use crate::expr::Pred;
use regex::Regex;

impl Compiler<'_> {
    /// Compiles a predicate used in `scope`; `None` (with problems) when any part is invalid.
    pub(crate) fn pred(&mut self, at: &DocPath, p: &Predicate, scope: Scope) -> Option<Pred> {
        let relative = scope == Scope::Item;
        let mut set = Vec::new();
        if p.exists.is_some() {
            set.push("exists");
        }
        if p.equals.is_some() {
            set.push("equals");
        }
        if p.one_of.is_some() {
            set.push("in");
        }
        if p.matches.is_some() {
            set.push("matches");
        }
        if p.elapsed.is_some() {
            set.push("elapsed");
        }
        if p.expr.is_some() {
            set.push("expr");
        }
        if p.all.is_some() {
            set.push("all");
        }
        if p.any.is_some() {
            set.push("any");
        }
        if p.not.is_some() {
            set.push("not");
        }
        if set.len() != 1 {
            self.problem(
                at,
                if set.is_empty() {
                    "empty predicate: set one of exists, equals, in, matches, elapsed, expr, all, any, not".to_string()
                } else {
                    format!("a predicate has exactly one form, found {}: split it with `all` or `any`", set.join(" and "))
                },
            );
            return None;
        }
        if let Some(s) = &p.exists {
            // whether the object exists reads none of its fields
            self.reads.mode = Some(super::reads::Use::Presence);
            let path = self.path(&at.key("exists"), s, relative);
            self.reads.mode = None;
            return path.map(Pred::Exists);
        }
        if let Some(pv) = &p.equals {
            return self
                .path(&at.key("equals").key("path"), &pv.path, relative)
                .map(|x| Pred::Equals(x, pv.value.clone()));
        }
        if let Some(pv) = &p.one_of {
            return self
                .path(&at.key("in").key("path"), &pv.path, relative)
                .map(|x| Pred::In(x, pv.values.clone()));
        }
        if let Some(pr) = &p.matches {
            let path = self.path(&at.key("matches").key("path"), &pr.path, relative);
            let re = match Regex::new(&pr.regex) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.problem(
                        &at.key("matches").key("regex"),
                        format!("invalid regex: {}", one_line(&e.to_string())),
                    );
                    None
                }
            };
            return Some(Pred::Matches(path?, re?));
        }
        if let Some(el) = &p.elapsed {
            let since = self.path(&at.key("elapsed").key("since"), &el.since, relative);
            let t = self.duration_tmpl(&at.key("elapsed").key("atLeast"), &el.at_least, scope);
            let id = self.tmpl_id_for_duration(&at.key("elapsed").key("atLeast"), t, scope);
            return Some(Pred::Elapsed {
                since: since?,
                at_least: id,
            });
        }
        if let Some(e) = &p.expr {
            let id = self.expr(&at.key("expr"), e, scope);
            return (id != usize::MAX).then_some(Pred::Expr(id));
        }
        let list = |c: &mut Self, items: &[Predicate], key: &str| -> Option<Vec<Pred>> {
            let mut out = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match c.pred(&at.key(key).index(i), item, scope) {
                    Some(p) => out.push(p),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        };
        if let Some(items) = &p.all {
            return list(self, items, "all").map(Pred::All);
        }
        if let Some(items) = &p.any {
            return list(self, items, "any").map(Pred::Any);
        }
        if let Some(inner) = &p.not {
            return self
                .pred(&at.key("not"), inner, scope)
                .map(|p| Pred::Not(Box::new(p)));
        }
        None
    }
}
