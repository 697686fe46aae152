//! `metrics`: the declared metrics' names and kinds. Updates to them are checked where they
//! happen, in actions ([`super::actions`]); the engine keeps the declarations as they are.

use crate::rules::compiler::Compiler;
use crate::rules::locate::DocPath;
use crate::rules::model::{MetricKind, MetricSpec};
use indexmap::IndexMap;

impl Compiler<'_> {
    /// Checks each declared metric's name, and that only histograms have buckets.
    pub(crate) fn check_metrics(&mut self, metrics: &IndexMap<String, MetricSpec>) {
        for (mname, m) in metrics {
            let at = DocPath::root().key("metrics").key(mname);
            if !valid_metric_name(mname) {
                self.key_problem(
                    &at,
                    format!(
                        "`{mname}` is not a valid Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"
                    ),
                );
            }
            if m.buckets.is_some() && m.kind != MetricKind::Histogram {
                self.problem(&at.key("buckets"), "only histograms have buckets");
            }
        }
    }
}

/// Whether `n` is a Prometheus metric name.
fn valid_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}
