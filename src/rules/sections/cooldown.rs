//! `cooldown`: how long a finished resource keeps its lock, and what releasing it does.
//!
//! Whether the cooldown's phases can hold the lock at all is a check of the whole phase graph
//! ([`crate::rules::checks`]).

use crate::rules::compiled::{CooldownRules, Deps};
use crate::rules::compiler::{Compiler, Scope};
use crate::rules::locate::DocPath;
use crate::rules::model::{Cooldown, RulesFile};
use crate::rules::sections::actions::ActionParts;
use crate::rules::suggest::did_you_mean;

impl Compiler<'_> {
    /// The cooldown policy; its phases become indices into `phase_names`.
    pub(crate) fn compile_cooldown(
        &mut self,
        c: &Cooldown,
        phase_names: &[String],
        raw: &RulesFile,
    ) -> CooldownRules {
        let at = DocPath::root().key("cooldown");
        let mut idx = Vec::new();
        for (i, p) in c.phases.iter().enumerate() {
            match phase_names.iter().position(|n| n == p) {
                Some(x) => idx.push(x),
                None => self.problem(
                    &at.key("phases").index(i),
                    format!(
                        "unknown phase `{p}`{} (phases: {})",
                        did_you_mean(p, phase_names),
                        phase_names.join(", ")
                    ),
                ),
            }
        }
        let period = self.duration_tmpl(&at.key("period"), &c.period, Scope::Plain);
        let when = c
            .when
            .as_ref()
            .and_then(|w| self.pred(&at.key("when"), w, Scope::Plain));
        let release = self.action(
            &at.key("release"),
            ActionParts::of_action(&c.release),
            &raw.actions,
            &raw.metrics,
            true,
        );
        CooldownRules {
            phases: idx,
            period,
            since: c.since.clone(),
            marker: c.marker.clone(),
            when,
            deps: Deps::default(),
            release,
        }
    }
}
