//! `lookups`: declared reads of other objects (by namespace, name and labels), with a filter, an
//! order and a selection, readable as `lookups.NAME` / `$.lookups.NAME`.
//!
//! What a lookup asks the world for (namespace, name, labels) is rendered before anything that
//! reads it, and its `where` runs on every object found, so both may read only the resource,
//! the settings and the time (and the object as `item` / `$`): never values, other lookups or
//! anything a decision computes, which keeps lookups free of cycles.

use crate::expr::Root;
use crate::render::FUNCTIONS;
use crate::render::Tmpl;
use crate::rules::compiled::{LookupNamespace, LookupRules};
use crate::rules::compiler::{Compiler, Scope};
use crate::rules::locate::DocPath;
use crate::rules::model::LookupSpec;
use crate::rules::sections::execution::check_label_key;
use indexmap::IndexMap;

/// What the templates of a lookup may read.
const READABLE: [&str; 3] = ["resource", "settings", "now"];

impl Compiler<'_> {
    /// The lookups that compiled; broken entries are left out.
    pub(crate) fn compile_lookups(
        &mut self,
        entries: &IndexMap<String, LookupSpec>,
        resource_kind: (&str, &str),
    ) -> Vec<LookupRules> {
        let root = DocPath::root();
        let mut lookups = Vec::new();
        for (lname, l) in entries {
            let at = root.key("lookups").key(lname);
            if self.broken.contains(&format!("lookups.{lname}")) {
                continue;
            }
            self.check_api_version(&at.key("apiVersion"), &l.api_version);
            self.check_kind(&at.key("kind"), &l.kind);
            let first_use = self.uses.len();
            let namespace = match (&l.namespace, l.all_namespaces) {
                (Some(_), true) => {
                    self.problem(
                        &at.key("allNamespaces"),
                        "give `namespace` or `allNamespaces: true`, not both",
                    );
                    LookupNamespace::All
                }
                (Some(ns), false) => LookupNamespace::Template(self.tmpl(
                    &at.key("namespace"),
                    ns,
                    Scope::Plain,
                    None,
                )),
                (None, true) => LookupNamespace::All,
                (None, false) => LookupNamespace::Resource,
            };
            let object_name = l
                .name
                .as_ref()
                .map(|n| self.tmpl(&at.key("name"), n, Scope::Plain, None));
            let mut match_labels: Vec<(String, Tmpl)> = Vec::new();
            for (k, v) in &l.match_labels {
                let kat = at.key("matchLabels").key(k);
                if let Err(e) = check_label_key(k) {
                    self.key_problem(&kat, e);
                }
                match_labels.push((k.clone(), self.tmpl(&kat, v, Scope::Plain, None)));
            }
            if l.exclude_self && (l.api_version.as_str(), l.kind.as_str()) != resource_kind {
                self.problem(
                    &at.key("excludeSelf"),
                    format!(
                        "`excludeSelf` leaves out the governed resource, but this lookup reads {} ({}), not the governed {} ({})",
                        l.kind, l.api_version, resource_kind.1, resource_kind.0
                    ),
                );
            }
            let filter = l
                .filter
                .as_ref()
                .and_then(|f| self.pred(&at.key("where"), f, Scope::Item));
            let sort_by = l
                .sort_by
                .as_ref()
                .and_then(|p| self.path(&at.key("sortBy"), p, true));
            self.check_lookup_reads(first_use);
            lookups.push(LookupRules {
                name: lname.clone(),
                api_version: l.api_version.clone(),
                kind: l.kind.clone(),
                namespace,
                object_name,
                match_labels,
                exclude_self: l.exclude_self,
                filter,
                sort_by,
                select: l.select,
            });
        }
        lookups
    }

    /// The templates of a lookup (its uses from `first_use` on) read only what is there before
    /// any decision: the resource, the settings and the time (and `item` in `where`).
    fn check_lookup_reads(&mut self, first_use: usize) {
        let uses: Vec<_> = self.uses[first_use..].to_vec();
        for (id, _, at, _) in uses {
            for var in self.templates.variables(id) {
                let top = var.split('.').next().unwrap_or("");
                if READABLE.contains(&top)
                    || top == "item"
                    || top == "loop"
                    || FUNCTIONS.contains(&top)
                {
                    continue;
                }
                // unknown names and `vars` / `transition` / `outcome` are reported by the
                // variable check of the whole
                if Root::from_name(top).is_some() {
                    self.problem(
                        &at,
                        format!(
                            "a lookup can read only {} (and the object as `item` in `where`), not `{top}`: lookups are found before anything a decision computes",
                            READABLE.join(", ")
                        ),
                    );
                }
            }
        }
    }
}
