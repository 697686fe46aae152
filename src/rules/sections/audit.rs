//! `audit`: the base every audit record starts from, and the names of its id and time fields.

use crate::rules::compiled::AuditRules;
use crate::rules::compiler::{Compiler, Scope};
use crate::rules::locate::DocPath;
use crate::rules::model::AuditSpec;

impl Compiler<'_> {
    /// The audit record base (the defaults when the section is absent).
    pub(crate) fn compile_audit(&mut self, audit: Option<&AuditSpec>) -> AuditRules {
        match audit {
            Some(a) => AuditRules {
                id_field: a.id_field.clone(),
                time_field: a.time_field.clone(),
                record: (!a.record.is_null()).then(|| {
                    self.tree(
                        &DocPath::root().key("audit").key("record"),
                        &a.record,
                        Scope::Action,
                        None,
                    )
                }),
            },
            None => AuditRules {
                id_field: "event_id".into(),
                time_field: "event_timestamp".into(),
                record: None,
            },
        }
    }
}
