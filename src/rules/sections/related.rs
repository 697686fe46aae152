//! `related`: lists of other objects the rules read, found through references in the resource
//! or the execution object.
//!
//! Their `where` filter runs in the shell, before any template, so it may use only the plain
//! predicate forms.

use crate::expr::Root;
use crate::rules::compiled::{ChildRef, RelatedRules};
use crate::rules::compiler::{Compiler, Scope};
use crate::rules::locate::DocPath;
use crate::rules::model::RelatedSpec;
use indexmap::IndexMap;

impl Compiler<'_> {
    /// The related lists that compiled; broken entries are left out.
    pub(crate) fn compile_related(
        &mut self,
        entries: &IndexMap<String, RelatedSpec>,
    ) -> Vec<RelatedRules> {
        let root = DocPath::root();
        let mut related = Vec::new();
        for (rname, r) in entries {
            let at = root.key("related").key(rname);
            if self.broken.contains(&format!("related.{rname}")) {
                continue;
            }
            self.check_api_version(&at.key("apiVersion"), &r.api_version);
            self.check_kind(&at.key("kind"), &r.kind);
            let from = self.path(&at.key("from"), &r.from, false);
            let mut from_child = ChildRef::Lock;
            match from.as_ref().map(|p| (p.root(), p.key())) {
                Some((Some(Root::Execution), _)) | None => {}
                Some((Some(Root::Children), Some(child))) => {
                    // an unknown child is reported where the path is checked
                    if self.child_names.iter().any(|n| n == child) {
                        from_child = self
                            .child_ref(&at.key("from"), child, false)
                            .unwrap_or(ChildRef::Lock);
                    }
                }
                Some(_) => {
                    self.problem(&at.key("from"), format!("`{}` does not start at `$.execution` or `$.children.NAME`: a related list is read from the references a child lists (its namespace is the default), so `from` must be rooted at one", r.from));
                }
            }
            let name_path = self.path(&at.key("name"), &r.name, true);
            let namespace_path = r
                .namespace
                .as_ref()
                .and_then(|n| self.path(&at.key("namespace"), n, true));
            let filter = r
                .filter
                .as_ref()
                .and_then(|f| self.pred(&at.key("where"), f, Scope::Item));
            if let Some(f) = &filter {
                // the shell chooses what to read before any template runs
                let mut templated = false;
                f.visit_templates(&mut |_| templated = true);
                if templated {
                    self.problem(&at.key("where"), "a related list's `where` may only use exists, equals, in and matches (with all, any, not): it is evaluated before templates can run");
                }
            }
            if let (Some(from), Some(name_path)) = (from, name_path) {
                related.push(RelatedRules {
                    name: rname.clone(),
                    api_version: r.api_version.clone(),
                    kind: r.kind.clone(),
                    from_child,
                    from,
                    name_path,
                    namespace_path,
                    filter,
                    reads: crate::rules::Keep::Whole,
                });
            }
        }
        related
    }
}
