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
    /// Every template may read only the documented context.
    pub(crate) fn check_variables(&mut self, rules: &Rules) {
        let uses = std::mem::take(&mut self.uses);
        for (id, scope, at, vars) in &uses {
            for missing in rules.templates.missing_includes(*id) {
                self.problem(
                    at,
                    format!("includes `{missing}`, which is not in the templates folder"),
                );
            }
            for var in rules.templates.variables(*id) {
                let mut parts = var.split('.');
                let top = parts.next().unwrap_or("");
                let second = parts.next();
                if FUNCTIONS.contains(&top) || top == "loop" {
                    continue;
                }
                if top == "vars" {
                    if *scope != Scope::Action {
                        self.problem(
                            at,
                            "`vars` is available in the effects of a transition or action (status, conditions, events, audit, metrics, vars), not in guards, values, validation or the execution object",
                        );
                    } else if let (Some(name), Some(declared)) = (second, vars)
                        && !declared.contains(name)
                    {
                        self.problem(at, format!("`vars.{name}` is not declared: the transition that uses this must declare it in `vars` (a variable can read only those declared before it; declared here: {})", list_or_none(&declared.iter().cloned().collect::<Vec<_>>())));
                    }
                    continue;
                }
                if top == "transition" {
                    if *scope != Scope::Action {
                        self.problem(
                            at,
                            "`transition` is available in the effects of a transition or action (status, conditions, events, audit, metrics, vars), not in guards, values, validation or the execution object",
                        );
                    }
                    continue;
                }
                if top == "outcome" {
                    if *scope != Scope::Sim {
                        self.problem(at, "`outcome` is only available inside `simulation`");
                    }
                    continue;
                }
                if top == "item" {
                    if *scope != Scope::Item {
                        self.problem(at, "`item` is only available inside `where` filters");
                    }
                    continue;
                }
                if *scope == Scope::Sim
                    && !["execution", "object", "resource", "settings", "now"].contains(&top)
                {
                    self.problem(at, format!("`{top}` is not available in simulation changes: they can read execution, object, resource, settings, now and outcome"));
                    continue;
                }
                let Some(root) = Root::from_name(top) else {
                    let mut readable: Vec<&str> = Root::ALL.iter().map(|r| r.name()).collect();
                    readable.extend(match scope {
                        Scope::Action => &["vars", "transition"][..],
                        Scope::Item => &["item"][..],
                        Scope::Sim => &["outcome"][..],
                        Scope::Plain => &[][..],
                    });
                    self.problem(
                        at,
                        format!(
                            "unknown variable `{top}`{}: templates can read {}",
                            did_you_mean(top, &readable),
                            readable.join(", ")
                        ),
                    );
                    continue;
                };
                if let Some(name) = second {
                    let (known, what) = match root {
                        Root::Values => (&self.value_names, "value"),
                        Root::Settings => (&self.setting_names, "setting"),
                        Root::Related => (&self.related_names, "related object list"),
                        _ => continue,
                    };
                    if !known.iter().any(|k| k == name)
                        && !self.broken.contains(&format!(
                            "{}.{name}",
                            if root == Root::Values {
                                "values"
                            } else if root == Root::Related {
                                "related"
                            } else {
                                "settings"
                            }
                        ))
                    {
                        let msg = format!(
                            "unknown {what} `{name}`{} (defined: {})",
                            did_you_mean(name, known),
                            list_or_none(known)
                        );
                        self.problem(at, msg);
                    }
                }
            }
        }
        self.uses = uses;
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
        }
    }
}
