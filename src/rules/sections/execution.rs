//! `execution`: the object the rules run, its identity (name and namespace templates), the
//! template file of its body, and the labels that tie it to its owner.

use crate::rules::compiled::{Deps, ExecutionRules};
use crate::rules::compiler::{Compiler, Scope};
use crate::rules::locate::DocPath;
use crate::rules::model::ExecutionSpec;

impl Compiler<'_> {
    /// The execution object; its body must be one of the template files compiled before.
    pub(crate) fn compile_execution(&mut self, ex: &ExecutionSpec) -> ExecutionRules {
        let xat = DocPath::root().key("execution");
        self.check_api_version(&xat.key("apiVersion"), &ex.api_version);
        self.check_kind(&xat.key("kind"), &ex.kind);
        let namespace = ex
            .namespace
            .as_ref()
            .map(|ns| self.tmpl(&xat.key("namespace"), ns, Scope::Identity, None));
        let name = self.tmpl(&xat.key("name"), &ex.name, Scope::Identity, None);
        let template = self.templates.file_id(&ex.template).unwrap_or(usize::MAX);
        if template != usize::MAX {
            self.uses
                .push((template, Scope::Plain, xat.key("template"), None));
        }
        for (k, label) in [
            ("name", &ex.owner_labels.name),
            ("namespace", &ex.owner_labels.namespace),
        ] {
            if let Err(e) = check_label_key(label) {
                self.problem(&xat.key("ownerLabels").key(k), e);
            }
        }
        if ex.owner_labels.name == ex.owner_labels.namespace {
            self.problem(
                &xat.key("ownerLabels"),
                "the name and namespace labels must differ",
            );
        }
        ExecutionRules {
            api_version: ex.api_version.clone(),
            kind: ex.kind.clone(),
            namespace,
            name,
            template,
            owner_labels: ex.owner_labels.clone(),
            deps: Deps::default(),
            reads: None,
        }
    }
}

/// Checks a label key (`prefix/name`).
pub(crate) fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(format!(
            "`{key}` is not a valid label key (an optional DNS prefix, `/`, and a name of up to 63 characters [A-Za-z0-9-_.])"
        ))
    }
}
