//! Dependency analysis: which values and related lists each piece of the rules reads.
//!
//! Templates (their variables), predicates (their paths and templates) and value definitions are
//! traced to indices into [`Rules::values`] and [`Rules::related`], so that the engine computes
//! only what a step needs, a value's inputs before the value. A cycle among values is a problem;
//! it is broken so that evaluation can never loop.

use super::Rules;
use super::compiled::{ActionRules, Deps, TmplTree, ValueKind};
use super::compiler::Compiler;
use super::locate::DocPath;
use crate::expr::{Path as JPath, Pred, Root};
use crate::render::Tmpl;

impl Compiler<'_> {
    /// Records what every piece reads, and reports (and breaks) a cycle among values.
    pub(crate) fn compute_deps(&mut self, rules: &mut Rules) {
        let value_names = self.value_names.clone();
        let related_names = self.related_names.clone();
        let lookup_names = self.lookup_names.clone();
        let t = &rules.templates;
        let of_template = |id: usize, d: &mut Deps| {
            if id == usize::MAX {
                return;
            }
            for var in t.variables(id) {
                let mut parts = var.split('.');
                match (parts.next(), parts.next()) {
                    (Some("values"), Some(n)) => {
                        if let Some(i) = value_names.iter().position(|v| v == n) {
                            d.values.insert(i);
                        }
                    }
                    (Some("related"), Some(n)) => {
                        if let Some(i) = related_names.iter().position(|v| v == n) {
                            d.related.insert(i);
                        }
                    }
                    (Some("lookups"), Some(n)) => {
                        if let Some(i) = lookup_names.iter().position(|v| v == n) {
                            d.lookups.insert(i);
                        }
                    }
                    (Some("values"), None) => d.values.extend(0..value_names.len()),
                    (Some("related"), None) => d.related.extend(0..related_names.len()),
                    (Some("lookups"), None) => d.lookups.extend(0..lookup_names.len()),
                    _ => {}
                }
            }
        };
        let of_path = |p: &JPath, d: &mut Deps| match (p.root(), p.key()) {
            (Some(Root::Values), Some(n)) => {
                if let Some(i) = value_names.iter().position(|v| v == n) {
                    d.values.insert(i);
                }
            }
            (Some(Root::Related), Some(n)) => {
                if let Some(i) = related_names.iter().position(|v| v == n) {
                    d.related.insert(i);
                }
            }
            (Some(Root::Lookups), Some(n)) => {
                if let Some(i) = lookup_names.iter().position(|v| v == n) {
                    d.lookups.insert(i);
                }
            }
            (Some(Root::Values), None) => d.values.extend(0..value_names.len()),
            (Some(Root::Related), None) => d.related.extend(0..related_names.len()),
            (Some(Root::Lookups), None) => d.lookups.extend(0..lookup_names.len()),
            _ => {}
        };
        let of_tmpl = |x: &Tmpl, d: &mut Deps| {
            if let Tmpl::Text(id) | Tmpl::Expr(id) = x {
                of_template(*id, d)
            }
        };
        let of_pred = |p: &Pred, d: &mut Deps| {
            p.visit_paths(&mut |x| of_path(x, d));
            p.visit_templates(&mut |id| of_template(id, d));
        };
        fn of_tree(tree: &TmplTree, f: &dyn Fn(&Tmpl, &mut Deps), d: &mut Deps) {
            match tree {
                TmplTree::Leaf(x) => f(x, d),
                TmplTree::Remove => {}
                TmplTree::Map(m) => m.iter().for_each(|(_, t)| of_tree(t, f, d)),
                TmplTree::List(l) => l.iter().for_each(|t| of_tree(t, f, d)),
            }
        }
        let of_action = |a: &ActionRules| -> Deps {
            let mut d = Deps::default();
            for (_, v) in &a.vars {
                of_tmpl(v, &mut d);
            }
            for s in &a.status {
                of_tree(s, &of_tmpl, &mut d);
            }
            for s in &a.audit {
                of_tree(s, &of_tmpl, &mut d);
            }
            for (_, s) in &a.patch {
                of_tree(s, &of_tmpl, &mut d);
            }
            if let Some(r) = &rules.audit.record {
                of_tree(r, &of_tmpl, &mut d);
            }
            for c in &a.conditions {
                of_tmpl(&c.status, &mut d);
                of_tmpl(&c.reason, &mut d);
                of_tmpl(&c.message, &mut d);
                if let Some(w) = &c.when {
                    of_pred(w, &mut d);
                }
            }
            for e in &a.events {
                of_tmpl(&e.message, &mut d);
            }
            for m in &a.metrics {
                for (_, l) in &m.labels {
                    of_tmpl(l, &mut d);
                }
                if let Some(v) = &m.value {
                    of_tmpl(v, &mut d);
                }
            }
            d
        };
        // values
        let mut value_deps = Vec::new();
        for v in &rules.values {
            let mut d = Deps::default();
            match &v.kind {
                ValueKind::Path(p) => of_path(p, &mut d),
                ValueKind::List(p, f) | ValueKind::Count(p, f) | ValueKind::Find(p, f) => {
                    of_path(p, &mut d);
                    if let Some(f) = f {
                        of_pred(f, &mut d);
                    }
                }
                ValueKind::Expr(id) | ValueKind::Template(id) => of_template(*id, &mut d),
                ValueKind::Table(t) => t.inputs.iter().for_each(|(_, x)| of_tmpl(x, &mut d)),
            }
            value_deps.push(d);
        }
        for (v, d) in rules.values.iter_mut().zip(value_deps) {
            v.deps = d;
        }
        // related lists read their `from` path
        let mut ex = Deps::default();
        of_tmpl(&rules.execution.name, &mut ex);
        if let Some(ns) = &rules.execution.namespace {
            of_tmpl(ns, &mut ex);
        }
        of_template(rules.execution.template, &mut ex);
        rules.execution.deps = ex;
        let mut child_deps = Vec::new();
        for c in &rules.children {
            let mut d = Deps::default();
            of_tmpl(&c.object.name, &mut d);
            if let Some(ns) = &c.object.namespace {
                of_tmpl(ns, &mut d);
            }
            of_template(c.object.template, &mut d);
            child_deps.push(d);
        }
        for (c, d) in rules.children.iter_mut().zip(child_deps) {
            c.object.deps = d;
        }
        for v in &mut rules.validation {
            let mut d = Deps::default();
            of_pred(&v.require, &mut d);
            of_tmpl(&v.message, &mut d);
            v.deps = d;
        }
        for p in &mut rules.phases {
            for t in &mut p.transitions {
                let mut d = Deps::default();
                if let Some(w) = &t.when {
                    of_pred(w, &mut d);
                }
                if let Some(a) = &t.after {
                    of_tmpl(a, &mut d);
                }
                t.when_deps = d;
                t.action.deps = of_action(&t.action);
                if let Some(r) = &mut t.retry {
                    let mut d = Deps::default();
                    if let Some(w) = &r.when {
                        of_pred(w, &mut d);
                    }
                    for x in [Some(&r.max_attempts), r.initial.as_ref(), r.max.as_ref()]
                        .into_iter()
                        .flatten()
                    {
                        of_tmpl(x, &mut d);
                    }
                    r.deps = d;
                    r.action.deps = of_action(&r.action);
                }
            }
            if let Some(s) = &mut p.sync {
                let mut d = of_action(s);
                if let Some(poll) = &p.poll {
                    of_tmpl(poll, &mut d);
                }
                s.deps = d;
            }
        }
        if let Some(c) = &mut rules.cooldown {
            let mut d = Deps::default();
            of_tmpl(&c.period, &mut d);
            if let Some(w) = &c.when {
                of_pred(w, &mut d);
            }
            c.deps = d;
            c.release.deps = of_action(&c.release);
        }
        if let Some(a) = &mut rules.on_delete {
            a.deps = of_action(a);
        }
        // cycles among values
        let n = rules.values.len();
        let mut state = vec![0u8; n];
        fn visit(
            i: usize,
            rules: &Rules,
            state: &mut [u8],
            stack: &mut Vec<usize>,
        ) -> Option<Vec<usize>> {
            match state[i] {
                2 => return None,
                1 => {
                    let start = stack.iter().position(|&x| x == i).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(i);
                    return Some(cycle);
                }
                _ => {}
            }
            state[i] = 1;
            stack.push(i);
            for &d in &rules.values[i].deps.values {
                if let Some(c) = visit(d, rules, state, stack) {
                    return Some(c);
                }
            }
            stack.pop();
            state[i] = 2;
            None
        }
        for i in 0..n {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(i, rules, &mut state, &mut stack) {
                let names: Vec<_> = cycle
                    .iter()
                    .map(|&x| rules.values[x].name.clone())
                    .collect();
                self.problem(
                    &DocPath::root()
                        .key("values")
                        .key(&rules.values[cycle[0]].name),
                    format!(
                        "values depend on each other in a cycle: {}",
                        names.join(" → ")
                    ),
                );
                // break the cycle so evaluation can never loop
                for &x in &cycle {
                    rules.values[x].deps.values.clear();
                }
                break;
            }
        }
    }
}
