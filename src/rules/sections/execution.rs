//! `execution` and `children`: the objects the rules run, each with its identity (name and
//! namespace templates), the template file of its body, and the labels that tie it to its
//! owner. `execution` is the shorthand for one child named `execution` that is the lock; with
//! `children`, the child marked `lock: true` is.

use crate::render::Tmpl;
use crate::rules::compiled::{ChildRef, ChildRules, Deps, ExecutionRules};
use crate::rules::compiler::{Compiler, Scope, list_or_none};
use crate::rules::locate::DocPath;
use crate::rules::model::{ExecutionSpec, RulesFile};
use crate::rules::suggest::did_you_mean;
use serde_json::Value;

impl Compiler<'_> {
    /// The lock (the execution object) and the other children. Records the names that
    /// `children.NAME`, `patch` and `children` actions may use.
    pub(crate) fn compile_children(
        &mut self,
        raw: &RulesFile,
    ) -> (ExecutionRules, Vec<ChildRules>) {
        let cat = DocPath::root().key("children");
        let mut lock = None;
        if let Some(ex) = &raw.execution {
            self.lock_name = "execution".into();
            lock = Some(self.compile_object(&DocPath::root().key("execution"), ex));
            for (name, c) in &raw.children {
                if name == "execution" {
                    self.key_problem(&cat.key(name), "`execution` is the name of the `execution` shorthand's child: name this child otherwise");
                }
                if c.lock {
                    self.problem(&cat.key(name).key("lock"), "`execution` is the lock: a child cannot be one too (remove `lock`, or move `execution` under `children` as a child with `lock: true`)");
                }
            }
        } else {
            let locks: Vec<&String> = raw
                .children
                .iter()
                .filter(|(_, c)| c.lock)
                .map(|(n, _)| n)
                .collect();
            let broken = raw
                .children
                .keys()
                .any(|n| self.broken.contains(&format!("children.{n}")));
            match locks.as_slice() {
                [] if !broken && !raw.children.is_empty() => self.problem(
                    &cat,
                    format!(
                        "no child is the lock: mark the one whose name must be unique per target `lock: true` (children: {})",
                        raw.children.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ),
                [first, rest @ ..] => {
                    for other in rest {
                        self.problem(
                            &cat.key(other).key("lock"),
                            format!("only one child is the lock, and `{first}` already is"),
                        );
                    }
                }
                _ => {}
            }
            if let Some(name) = locks.first() {
                self.lock_name = (*name).clone();
            }
        }
        self.child_names = std::iter::once(self.lock_name.clone())
            .filter(|n| !n.is_empty())
            .chain(
                raw.children
                    .keys()
                    .filter(|n| **n != self.lock_name)
                    .cloned(),
            )
            .collect();
        let mut children = Vec::new();
        for (name, c) in &raw.children {
            if self.broken.contains(&format!("children.{name}")) {
                continue;
            }
            let object = self.compile_object(&cat.key(name), &c.as_execution());
            if *name == self.lock_name {
                lock = Some(object);
            } else {
                children.push(ChildRules {
                    name: name.clone(),
                    object,
                });
            }
        }
        let lock = lock.unwrap_or_else(|| ExecutionRules {
            api_version: String::new(),
            kind: String::new(),
            namespace: None,
            name: Tmpl::Literal(Value::Null),
            template: usize::MAX,
            template_name: String::new(),
            owner_labels: Default::default(),
            deps: Deps::default(),
            reads: crate::rules::Keep::Whole,
        });
        (lock, children)
    }

    /// The object a child name refers to (`execution` is always the lock); an unknown name is
    /// a problem at `at` (its key when `key` is set), with the closest known name.
    pub(crate) fn child_ref(&mut self, at: &DocPath, name: &str, key: bool) -> Option<ChildRef> {
        if name == self.lock_name || name == "execution" {
            return Some(ChildRef::Lock);
        }
        let others: Vec<String> = self
            .child_names
            .iter()
            .filter(|n| **n != self.lock_name)
            .cloned()
            .collect();
        if let Some(i) = others.iter().position(|n| n == name) {
            return Some(ChildRef::Child(i));
        }
        if !self.broken.contains(&format!("children.{name}")) {
            let msg = format!(
                "unknown child `{name}`{} (children: {})",
                did_you_mean(name, &self.child_names),
                list_or_none(&self.child_names)
            );
            if key {
                self.key_problem(at, msg);
            } else {
                self.problem(at, msg);
            }
        }
        None
    }

    /// One object: its identity templates, its body (one of the template files compiled
    /// before), and its owner labels.
    fn compile_object(&mut self, xat: &DocPath, ex: &ExecutionSpec) -> ExecutionRules {
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
            template_name: ex.template.clone(),
            owner_labels: ex.owner_labels.clone(),
            deps: Deps::default(),
            reads: crate::rules::Keep::Whole,
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
