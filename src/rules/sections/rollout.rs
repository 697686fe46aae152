//! `rollout`: which rules decide a resource that was in flight when the rules changed.

use crate::rules::compiled::RolloutRules;
use crate::rules::compiler::Compiler;
use crate::rules::locate::DocPath;
use crate::rules::model::Rollout;
use crate::rules::suggest::did_you_mean;

impl Compiler<'_> {
    /// The policy of each phase: its own entry, else the global one (`pinned` by default).
    pub(crate) fn compile_rollout(
        &mut self,
        r: Option<&Rollout>,
        phase_names: &[String],
    ) -> RolloutRules {
        let Some(r) = r else {
            return RolloutRules {
                phases: vec![Default::default(); phase_names.len()],
            };
        };
        let at = DocPath::root().key("rollout").key("phases");
        for name in r.phases.keys() {
            if !phase_names.contains(name) {
                self.problem(
                    &at.key(name),
                    format!(
                        "unknown phase `{name}`{} (phases: {})",
                        did_you_mean(name, phase_names),
                        phase_names.join(", ")
                    ),
                );
            }
        }
        RolloutRules {
            phases: phase_names
                .iter()
                .map(|p| r.phases.get(p).copied().unwrap_or(r.policy))
                .collect(),
        }
    }
}
