//! `validation`: the named requirements a resource must meet before anything runs.

use crate::rules::compiled::{Deps, ValidationRules};
use crate::rules::compiler::{Compiler, Scope};
use crate::rules::locate::DocPath;
use crate::rules::model::ValidationRule;
use std::collections::BTreeSet;

impl Compiler<'_> {
    /// The validation rules in order; names must be unique.
    pub(crate) fn compile_validation(&mut self, rules: &[ValidationRule]) -> Vec<ValidationRules> {
        let root = DocPath::root();
        let mut validation = Vec::new();
        let mut seen_rules = BTreeSet::new();
        for (i, v) in rules.iter().enumerate() {
            let at = root.key("validation").index(i);
            if !seen_rules.insert(v.name.clone()) {
                self.problem(
                    &at.key("name"),
                    format!("duplicate validation rule name `{}`", v.name),
                );
            }
            let require = self.pred(&at.key("require"), &v.require, Scope::Plain);
            let message = self.tmpl(&at.key("message"), &v.message, Scope::Plain, None);
            if let Some(require) = require {
                validation.push(ValidationRules {
                    name: v.name.clone(),
                    require,
                    message,
                    deps: Deps::default(),
                });
            }
        }
        validation
    }
}
