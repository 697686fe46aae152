//! `templates`: the files of the templates folder, compiled for `include` and as bodies (the
//! execution object's `template` must be one of them).
//!
//! The files come from the [`Sources`]; what could not be read there is reported here, in its
//! place among the other problems.

use crate::rules::Problem;
use crate::rules::compiler::Compiler;
use crate::rules::locate::DocPath;
use crate::rules::model::RulesFile;
use crate::rules::sources::Sources;

impl Compiler<'_> {
    /// Compiles every template file of the sources.
    pub(crate) fn compile_templates(&mut self, sources: &Sources, raw: &RulesFile) {
        let dir = &sources.templates_dir;
        let at = DocPath::root().key("execution").key("template");
        if let Some(e) = &sources.templates_dir_error {
            self.problem(
                &at,
                format!("cannot read the templates folder {}: {e}", dir.display()),
            );
            return;
        }
        for (name, why) in &sources.unreadable {
            self.problems.push(Problem {
                file: dir.join(name).display().to_string(),
                line: 1,
                column: 1,
                path: "(template)".into(),
                message: why.clone(),
            });
        }
        let files = &sources.templates;
        let bodies = raw
            .execution
            .iter()
            .map(|ex| (at.clone(), &ex.template))
            .chain(raw.children.iter().map(|(n, c)| {
                (
                    DocPath::root().key("children").key(n).key("template"),
                    &c.template,
                )
            }));
        for (at, template) in bodies {
            if files.contains_key(template)
                || template.is_empty() && self.broken.iter().any(|b| b.starts_with("children."))
            {
                continue;
            }
            self.problem(
                &at,
                format!(
                    "template `{}` is not in {} (found: {})",
                    template,
                    dir.display(),
                    if files.is_empty() {
                        "none".to_string()
                    } else {
                        files.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            );
        }
        for (name, text) in files {
            if let Err(e) = self.templates.add_file(name, text.clone()) {
                self.problems.push(Problem {
                    file: dir.join(name).display().to_string(),
                    line: e.line.unwrap_or(1),
                    column: 1,
                    path: "(template)".into(),
                    message: format!("template syntax error: {}", e.message),
                });
            }
        }
    }
}
