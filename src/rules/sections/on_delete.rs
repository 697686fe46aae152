//! `onDelete`: what happens when the governed resource is deleted (it may delete the execution
//! object and record, but not create anything or write status).

use crate::rules::compiled::ActionRules;
use crate::rules::compiler::Compiler;
use crate::rules::locate::DocPath;
use crate::rules::model::{Action, ExecutionAction, RulesFile};
use crate::rules::sections::actions::ActionParts;

impl Compiler<'_> {
    /// The deletion effects.
    pub(crate) fn compile_on_delete(&mut self, a: &Action, raw: &RulesFile) -> ActionRules {
        let at = DocPath::root().key("onDelete");
        let r = self.action(
            &at,
            ActionParts::of_action(a),
            &raw.actions,
            &raw.metrics,
            true,
        );
        if r.execution == Some(ExecutionAction::Create) {
            self.problem(
                &at.key("execution"),
                "`onDelete` cannot create the execution object; use `delete`",
            );
        }
        if r.children
            .iter()
            .any(|&(_, x)| x == ExecutionAction::Create)
        {
            self.problem(
                &at.key("children"),
                "`onDelete` cannot create children; use `delete`",
            );
        }
        if !r.status.is_empty() || !r.conditions.is_empty() {
            self.problem(
                &at,
                "`onDelete` cannot write status: the resource is going away",
            );
        }
        r
    }
}
