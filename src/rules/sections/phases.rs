//! `phases`: each phase with its poll interval, per-observation sync and transitions, and the one
//! initial phase.
//!
//! Also `renamedPhases`: the phases that replace removed ones. Transition targets become phase
//! indices here; whether the graph they form makes sense (reachable, terminal, the lock) is a
//! check of the whole ([`crate::rules::checks`]).

use crate::rules::compiled::{Deps, PhaseRules, TransitionRules};
use crate::rules::compiler::{Compiler, Scope};
use crate::rules::locate::DocPath;
use crate::rules::model::RulesFile;
use crate::rules::sections::actions::ActionParts;
use crate::rules::suggest::did_you_mean;
use std::collections::BTreeSet;

impl Compiler<'_> {
    /// The phases in the order of the file, and the index of the initial one.
    pub(crate) fn compile_phases(&mut self, raw: &RulesFile) -> (Vec<PhaseRules>, usize) {
        let root = DocPath::root();
        let phase_names: Vec<String> = raw.phases.keys().cloned().collect();
        let mut phases = Vec::new();
        let mut initial = Vec::new();
        for (pname, p) in &raw.phases {
            let at = root.key("phases").key(pname);
            if p.initial {
                initial.push(pname.clone());
            }
            let poll = p
                .poll
                .as_ref()
                .map(|s| self.duration_tmpl(&at.key("poll"), s, Scope::Plain));
            let sync = p.sync.as_ref().map(|s| {
                self.action(
                    &at.key("sync"),
                    ActionParts::of_action(s),
                    &raw.actions,
                    &raw.metrics,
                    false,
                )
            });
            let mut transitions = Vec::new();
            let mut seen = BTreeSet::new();
            for (i, t) in p.transitions.iter().enumerate() {
                let tat = at.key("transitions").index(i);
                if !seen.insert(t.name.clone()) {
                    self.problem(
                        &tat.key("name"),
                        format!("duplicate transition name `{}` in phase {pname}", t.name),
                    );
                }
                let to = match phase_names.iter().position(|n| n == &t.to) {
                    Some(i) => i,
                    None => {
                        if !self.broken.contains(&format!("phases.{}", t.to)) {
                            self.problem(
                                &tat.key("to"),
                                format!(
                                    "unknown phase `{}`{} (phases: {})",
                                    t.to,
                                    did_you_mean(&t.to, &phase_names),
                                    phase_names.join(", ")
                                ),
                            );
                        }
                        usize::MAX
                    }
                };
                let when = t
                    .when
                    .as_ref()
                    .and_then(|w| self.pred(&tat.key("when"), w, Scope::Plain));
                let action = self.action(
                    &tat,
                    ActionParts::of_transition(t),
                    &raw.actions,
                    &raw.metrics,
                    true,
                );
                let after = t.after.as_ref().map(|a| self.compile_after(&tat, a));
                let retry = t.retry.as_ref().map(|r| self.compile_retry(&tat, r, raw));
                transitions.push(TransitionRules {
                    name: t.name.clone(),
                    to,
                    when,
                    when_deps: Deps::default(),
                    after,
                    retry,
                    action,
                });
            }
            phases.push(PhaseRules {
                name: pname.clone(),
                terminal: p.terminal,
                validate: p.validate,
                poll,
                sync,
                transitions,
            });
        }
        if phase_names.is_empty() {
            self.problem(
                &root.key("phases"),
                "no phases: declare at least an initial and a terminal phase",
            );
        }
        let phases_broken = self.broken.iter().any(|b| b.starts_with("phases."));
        match initial.len() {
            0 if !phase_names.is_empty() && !phases_broken => self.problem(
                &root.key("phases"),
                "no initial phase: mark exactly one phase `initial: true`",
            ),
            0 => {}
            1 => {}
            _ => self.problem(
                &root.key("phases"),
                format!("more than one initial phase: {}", initial.join(", ")),
            ),
        }
        let initial = initial
            .first()
            .and_then(|n| phase_names.iter().position(|p| p == n))
            .unwrap_or(0);
        (phases, initial)
    }

    /// `renamedPhases`: each old name must be gone from `phases`, each new one must be there.
    pub(crate) fn compile_renamed_phases(&mut self, raw: &RulesFile) -> Vec<(String, usize)> {
        let at = DocPath::root().key("renamedPhases");
        let phase_names: Vec<String> = raw.phases.keys().cloned().collect();
        let mut out = Vec::new();
        for (old, new) in &raw.renamed_phases {
            if raw.phases.contains_key(old) {
                self.key_problem(
                    &at.key(old),
                    format!("`{old}` is still a phase; `renamedPhases` maps only phases the rules no longer have (remove this entry, or the phase)"),
                );
                continue;
            }
            match phase_names.iter().position(|n| n == new) {
                Some(i) => out.push((old.clone(), i)),
                None if self.broken.contains(&format!("phases.{new}")) => {}
                None => self.problem(
                    &at.key(old),
                    format!(
                        "`{old}` is renamed to unknown phase `{new}`{} (phases: {})",
                        did_you_mean(new, &phase_names),
                        phase_names.join(", ")
                    ),
                ),
            }
        }
        out
    }
}
