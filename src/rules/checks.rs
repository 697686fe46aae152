//! Static checks of the compiled rules as a whole.
//!
//! Every template may read only what its place provides (`vars` in effects, `item` in filters,
//! `outcome` in simulations, known values, settings and related lists), and the phase graph must
//! make sense: reachable phases, terminal phases that stay so, and a cooldown only where the
//! lock can be held. These run after every section compiled, on the [`Rules`] they built.

use super::Rules;
use super::compiler::{Compiler, Scope, list_or_none};
use super::locate::DocPath;
use super::model::ExecutionAction;
use super::suggest::did_you_mean;
use crate::expr::Root;
use crate::render::FUNCTIONS;

impl Compiler<'_> {
    /// Every template may read only the documented context, and call only known filters and
    /// tests. A problem in a template file is placed at its line in that file.
    pub(crate) fn check_variables(&mut self, rules: &Rules) {
        let uses = std::mem::take(&mut self.uses);
        for (id, scope, at, vars) in &uses {
            for missing in rules.templates.missing_includes(*id) {
                self.problem(
                    at,
                    format!("includes `{missing}`, which is not in the templates folder"),
                );
            }
            for (written, var) in rules.templates.variables_by_template(*id) {
                let unkept_attempt = var.split('.').next() == Some("attempt")
                    && rules.resource.status.attempt.is_none()
                    && *scope != Scope::Sim;
                let problem = if unkept_attempt {
                    Some("`attempt` is the attempt number, which the engine keeps only in a declared status field: add `attempt: attempt` (any field name) under `resource.status`".to_string())
                } else {
                    self.variable_problem(&var, *scope, vars.as_ref())
                };
                if let Some(mut msg) = problem {
                    if at.to_string().starts_with("children.") {
                        msg = msg.replace(
                            "the execution object's name and namespace",
                            "a child's name and namespace",
                        );
                    }
                    let top = var.split('.').next().unwrap_or("");
                    self.problem_in(rules, at, written, top, msg);
                }
            }
        }
        self.check_calls(rules, &uses);
        self.uses = uses;
    }

    /// Unknown filters and tests, in every template in use and every template file.
    fn check_calls(&mut self, rules: &Rules, uses: &[super::compiler::TemplateUse]) {
        let t = &rules.templates;
        let mut seen = std::collections::BTreeSet::new();
        for (id, _, at, _) in uses {
            for i in t.reached(*id) {
                if !seen.insert(i) {
                    continue;
                }
                for call in t.unknown_calls(i) {
                    let msg = format!("unknown {} `{}`", call.what, call.name);
                    if t.is_file(i) {
                        self.problem_at_line(rules, i, call.line, call.column, msg);
                    } else {
                        self.problem(at, msg);
                    }
                }
            }
        }
        for i in (0..rules.templates.len()).filter(|i| t.is_file(*i) && !seen.contains(i)) {
            for call in t.unknown_calls(i) {
                let msg = format!("unknown {} `{}`", call.what, call.name);
                self.problem_at_line(rules, i, call.line, call.column, msg);
            }
        }
    }

    /// A problem with a variable: at `at` for a string of the rules file, at the variable's
    /// first read for a template file (`written`).
    fn problem_in(&mut self, rules: &Rules, at: &DocPath, written: usize, var: &str, msg: String) {
        let t = &rules.templates;
        if !t.is_file(written) {
            self.problem(at, msg);
            return;
        }
        let (line, column) = t
            .source(written)
            .and_then(|s| crate::render::scan::first_read(&s, var))
            .unwrap_or((1, 1));
        self.problem_at_line(
            rules,
            written,
            line,
            column,
            format!("{msg} (used by {at})"),
        );
    }

    /// A problem at a line and column of template file `id`.
    fn problem_at_line(
        &mut self,
        rules: &Rules,
        id: usize,
        line: usize,
        column: usize,
        msg: String,
    ) {
        self.problems.push(super::Problem {
            file: self
                .templates_dir
                .join(rules.templates.name(id))
                .display()
                .to_string(),
            line,
            column,
            path: "(template)".into(),
            message: msg,
        });
    }

    /// What is wrong with a template reading `var` in `scope`, if anything.
    fn variable_problem(
        &self,
        var: &str,
        scope: Scope,
        vars: Option<&std::collections::BTreeSet<String>>,
    ) -> Option<String> {
        let mut parts = var.split('.');
        let top = parts.next().unwrap_or("");
        let second = parts.next();
        if FUNCTIONS.contains(&top) || top == "loop" {
            return None;
        }
        if top == "vars" {
            if scope != Scope::Action {
                return Some("`vars` is available in the effects of a transition or action (status, conditions, events, audit, metrics, vars), not in guards, values, validation or the execution object".into());
            } else if let (Some(name), Some(declared)) = (second, vars)
                && !declared.contains(name)
            {
                return Some(format!(
                    "`vars.{name}` is not declared: the transition that uses this must declare it in `vars` (a variable can read only those declared before it; declared here: {})",
                    list_or_none(&declared.iter().cloned().collect::<Vec<_>>())
                ));
            }
            return None;
        }
        if top == "transition" {
            return (scope != Scope::Action).then(|| "`transition` is available in the effects of a transition or action (status, conditions, events, audit, metrics, vars), not in guards, values, validation or the execution object".into());
        }
        if top == "outcome" {
            return (scope != Scope::Sim)
                .then(|| "`outcome` is only available inside `simulation`".into());
        }
        if top == "item" {
            return (scope != Scope::Item)
                .then(|| "`item` is only available inside `where` filters".into());
        }
        if scope == Scope::Sim
            && !["execution", "object", "resource", "settings", "now"].contains(&top)
        {
            return Some(format!(
                "`{top}` is not available in simulation changes: they can read execution, object, resource, settings, now and outcome"
            ));
        }
        let Some(root) = Root::from_name(top) else {
            let mut readable: Vec<&str> = match scope {
                Scope::Identity => vec!["resource", "settings", "attempt"],
                _ => Root::ALL.iter().map(|r| r.name()).collect(),
            };
            readable.extend(match scope {
                Scope::Action => &["vars", "transition"][..],
                Scope::Item => &["item"][..],
                Scope::Sim => &["outcome"][..],
                Scope::Plain | Scope::Identity => &[][..],
            });
            return Some(format!(
                "unknown variable `{top}`{}: templates can read {}",
                did_you_mean(top, &readable),
                readable.join(", ")
            ));
        };
        if scope == Scope::Identity
            && !matches!(
                root,
                Root::Resource | Root::Settings | Root::Object | Root::Attempt
            )
        {
            return Some(format!(
                "the execution object's name and namespace may read only `resource`, `settings` and `attempt`, not `{top}`: they are computed before anything else is read (the controller and the simulator find the object by them), so `{top}` is not known yet; compute it in the template from the resource instead"
            ));
        }
        let name = second?;
        let (known, what, section) = match root {
            Root::Values => (&self.value_names, "value", "values"),
            Root::Settings => (&self.setting_names, "setting", "settings"),
            Root::Related => (&self.related_names, "related object list", "related"),
            Root::Lookups => (&self.lookup_names, "lookup", "lookups"),
            Root::Children => (&self.child_names, "child", "children"),
            _ => return None,
        };
        if known.iter().any(|k| k == name) || self.broken.contains(&format!("{section}.{name}")) {
            return None;
        }
        Some(format!(
            "unknown {what} `{name}`{} (defined: {})",
            did_you_mean(name, known),
            list_or_none(known)
        ))
    }

    /// The phase graph: every phase reachable, terminal phases final, the others not, a
    /// terminal phase somewhere, and a cooldown only where the lock can be held.
    pub(crate) fn check_graph(&mut self, rules: &Rules) {
        let root = DocPath::root().key("phases");
        let n = rules.phases.len();
        // a phase that did not parse has its own problem; a graph built without it would only
        // add misleading ones
        if n == 0 || self.broken.iter().any(|b| b.starts_with("phases.")) {
            return;
        }
        // likewise a transition to an unknown phase (reported where it is): the phases it was
        // meant to lead to would otherwise all be reported unreachable too
        let dangling = rules
            .phases
            .iter()
            .any(|p| p.transitions.iter().any(|t| t.to >= n));
        // reachability from the initial phase
        let mut reach = vec![false; n];
        let mut todo = vec![rules.initial];
        while let Some(i) = todo.pop() {
            if reach[i] {
                continue;
            }
            reach[i] = true;
            for t in &rules.phases[i].transitions {
                if t.to < n {
                    todo.push(t.to);
                }
                // a retry leads to the phase its next attempt starts in
                if let Some(r) = &t.retry
                    && r.to < n
                {
                    todo.push(r.to);
                }
            }
        }
        for (i, p) in rules.phases.iter().enumerate() {
            if self.broken.contains(&format!("phases.{}", p.name)) {
                continue;
            }
            let at = root.key(&p.name);
            if !reach[i] && !dangling {
                self.key_problem(
                    &at,
                    format!(
                        "phase `{}` is unreachable from the initial phase `{}`",
                        p.name, rules.phases[rules.initial].name
                    ),
                );
            }
            if p.terminal && !p.transitions.is_empty() {
                self.problem(&at.key("transitions"), format!("terminal phase `{}` has transitions; a terminal phase never changes (remove them or `terminal: true`)", p.name));
            }
            if !p.terminal && p.transitions.is_empty() {
                self.key_problem(&at, format!("phase `{}` is not terminal and has no transitions: a resource entering it would stay forever", p.name));
            }
            if p.terminal && p.validate {
                self.problem(
                    &at.key("validate"),
                    "validation in a terminal phase can never change anything",
                );
            }
        }
        if !rules.phases.iter().any(|p| p.terminal) {
            self.problem(
                &root,
                "no terminal phase: mark at least one phase `terminal: true`",
            );
        }
        // the lock: phases a resource can be in while its execution object exists
        let mut holds = vec![false; n];
        let mut todo: Vec<usize> = rules
            .phases
            .iter()
            .flat_map(|p| p.transitions.iter())
            .filter(|t| t.action.execution == Some(ExecutionAction::Create) && t.to < n)
            .map(|t| t.to)
            .collect();
        while let Some(i) = todo.pop() {
            if holds[i] {
                continue;
            }
            holds[i] = true;
            for t in &rules.phases[i].transitions {
                if t.to < n && t.action.execution != Some(ExecutionAction::Delete) {
                    todo.push(t.to);
                }
            }
        }
        if let Some(c) = &rules.cooldown {
            let at = DocPath::root().key("cooldown");
            for (k, &i) in c.phases.iter().enumerate() {
                if !holds[i] && !dangling {
                    self.problem(&at.key("phases").index(k), format!("phase `{}` never holds the lock (no transition with `execution: create` leads to it), so a cooldown there releases nothing", rules.phases[i].name));
                }
                if !rules.phases[i].terminal {
                    self.problem(
                        &at.key("phases").index(k),
                        format!(
                            "cooldown applies after a terminal phase; `{}` is not terminal",
                            rules.phases[i].name
                        ),
                    );
                }
            }
            if c.release.execution == Some(ExecutionAction::Create) {
                self.problem(
                    &at.key("release").key("execution"),
                    "a release cannot create the execution object",
                );
            }
            if c.release
                .children
                .iter()
                .any(|&(_, x)| x == ExecutionAction::Create)
            {
                self.problem(
                    &at.key("release").key("children"),
                    "a release cannot create children",
                );
            }
        }
    }
}
