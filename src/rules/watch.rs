//! What the rules read from the cluster, for the shell's watch caches: each kind of object the
//! rules can observe, where such objects can be, which labels they carry, and which of their
//! top-level fields the rules read. Known when the rules load, so a cache keeps only that.

use super::Rules;
use super::compiler::Compiler;
use crate::expr::{Path as JPath, Root};
use std::collections::BTreeSet;

/// Top-level fields of an object the rules read (`None`: the whole object, or unknown).
/// `apiVersion`, `kind` and `metadata` are always kept: the engine reads names, labels, uid,
/// resourceVersion and deletionTimestamp itself.
pub type FieldReads = Option<BTreeSet<String>>;

/// Records a read of a top-level field (`None`: the whole object).
pub(crate) fn note_read(reads: &mut FieldReads, field: Option<&str>) {
    match (reads.as_mut(), field) {
        (Some(set), Some(f)) => {
            set.insert(f.to_string());
        }
        (Some(_), None) => *reads = None,
        (None, _) => {}
    }
}

/// A kind of object the rules read, and the part of the cluster the shell watches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedKind {
    /// `group/version`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// What the rules read it as (for messages): `execution object`, `related list `x``.
    pub role: String,
    /// The one namespace such objects can be in (`None`: any namespace).
    pub namespace: Option<String>,
    /// A label selector every object the rules read carries (`None`: no restriction).
    pub labels: Option<String>,
    /// Top-level fields the rules read (`None`: all).
    pub fields: FieldReads,
}

impl WatchedKind {
    /// The same kind needed twice: one watch wide enough for both.
    fn widen(&mut self, other: &WatchedKind) {
        if self.namespace != other.namespace {
            self.namespace = None;
        }
        if self.labels != other.labels {
            self.labels = None;
        }
        match (&mut self.fields, &other.fields) {
            (Some(a), Some(b)) => a.extend(b.iter().cloned()),
            _ => self.fields = None,
        }
        self.role = format!("{}, {}", self.role, other.role);
    }

    /// Whether an object of this kind in `namespace` would be in a cache of this scope.
    pub fn covers(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
    }
}

impl Rules {
    /// The execution namespace when the rules compute it from the settings alone (none for a
    /// cluster-scoped execution object).
    pub fn fixed_execution_namespace(&self) -> Option<String> {
        let ctx = minijinja::context! {
            settings => minijinja::Value::from_serialize(&self.settings),
        };
        self.templates
            .text(self.execution.namespace.as_ref()?, &ctx)
            .ok()
            .filter(|s| !s.is_empty())
    }

    /// Every kind of object the rules read besides the governed resource, one entry per kind
    /// (the same kind read twice gets one scope wide enough for both). The shell keeps one
    /// watch cache per entry; everything the rules observe is read from them.
    pub fn watched_kinds(&self) -> Vec<WatchedKind> {
        let exec_ns = self.fixed_execution_namespace();
        let owner = &self.execution.owner_labels;
        let mut out: Vec<WatchedKind> = vec![WatchedKind {
            api_version: self.execution.api_version.clone(),
            kind: self.execution.kind.clone(),
            role: "execution object".into(),
            namespace: exec_ns.clone(),
            // only ours: they carry the owner labels
            labels: Some(format!("{},{}", owner.name, owner.namespace)),
            fields: self.execution.reads.clone(),
        }];
        for r in &self.related {
            let wanted = WatchedKind {
                api_version: r.api_version.clone(),
                kind: r.kind.clone(),
                role: format!("related list `{}`", r.name),
                // entries without a namespace name objects in the execution object's namespace
                namespace: if r.namespace_path.is_none() {
                    exec_ns.clone()
                } else {
                    None
                },
                labels: None,
                fields: None,
            };
            match out
                .iter_mut()
                .find(|w| w.api_version == wanted.api_version && w.kind == wanted.kind)
            {
                Some(w) => w.widen(&wanted),
                None => out.push(wanted),
            }
        }
        // the other children: ours only (they carry their owner labels), read whole
        for c in &self.children {
            let ex = &c.object;
            let owner = &ex.owner_labels;
            let ctx = minijinja::context! {
                settings => minijinja::Value::from_serialize(&self.settings),
            };
            let namespace = ex
                .namespace
                .as_ref()
                .and_then(|ns| self.templates.text(ns, &ctx).ok())
                .filter(|s| !s.is_empty());
            let wanted = WatchedKind {
                api_version: ex.api_version.clone(),
                kind: ex.kind.clone(),
                role: format!("child `{}`", c.name),
                namespace,
                labels: Some(format!("{},{}", owner.name, owner.namespace)),
                fields: None,
            };
            match out
                .iter_mut()
                .find(|w| w.api_version == wanted.api_version && w.kind == wanted.kind)
            {
                Some(w) => w.widen(&wanted),
                None => out.push(wanted),
            }
        }
        // lookups find objects anywhere, by any labels, and read them whole; the governed kind
        // is served from the controller's own cache of it
        for l in &self.lookups {
            if (l.api_version.as_str(), l.kind.as_str())
                == (
                    self.resource.api_version.as_str(),
                    self.resource.kind.as_str(),
                )
            {
                continue;
            }
            let wanted = WatchedKind {
                api_version: l.api_version.clone(),
                kind: l.kind.clone(),
                role: format!("lookup `{}`", l.name),
                namespace: None,
                labels: None,
                fields: None,
            };
            match out
                .iter_mut()
                .find(|w| w.api_version == wanted.api_version && w.kind == wanted.kind)
            {
                Some(w) => w.widen(&wanted),
                None => out.push(wanted),
            }
        }
        out
    }
}

impl Compiler<'_> {
    /// Records what a rooted path reads of the execution object.
    pub(crate) fn note_path_reads(&mut self, p: &JPath) {
        if p.root() == Some(Root::Execution) && !(self.existence_only && p.key().is_none()) {
            note_read(&mut self.execution_reads, p.key());
        }
        // the lock read as a child (or all children): kept whole
        if p.root() == Some(Root::Children) && p.key().is_none_or(|k| k == self.lock_name) {
            note_read(&mut self.execution_reads, None);
        }
    }

    /// What the templates in use read of the execution object (following includes); called
    /// once every template is compiled.
    pub(crate) fn execution_reads(&mut self, rules: &Rules) -> FieldReads {
        let mut reads = self.execution_reads.clone();
        for (id, ..) in &self.uses {
            for var in rules.templates.variables(*id) {
                let mut parts = var.split('.');
                match parts.next() {
                    Some("execution") => note_read(&mut reads, parts.next()),
                    Some("children") if parts.next().is_none_or(|c| c == rules.lock.as_str()) => {
                        note_read(&mut reads, None)
                    }
                    _ => {}
                }
            }
        }
        reads
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Sources;
    use std::path::PathBuf;

    fn default_rules() -> Rules {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lifecycle.yaml");
        Rules::compile(&Sources::read(&file).expect("sources"), &[]).expect("default rules")
    }

    #[test]
    fn the_default_rules_watch_their_runs_and_task_runs_in_the_execution_namespace() {
        let rules = default_rules();
        let kinds = rules.watched_kinds();
        assert_eq!(kinds.len(), 2, "{kinds:?}");
        let runs = &kinds[0];
        assert_eq!(
            (runs.api_version.as_str(), runs.kind.as_str()),
            ("tekton.dev/v1", "PipelineRun")
        );
        assert_eq!(runs.namespace.as_deref(), Some("kubernaut-workflows"));
        assert_eq!(
            runs.labels.as_deref(),
            Some("kubernaut.ai/workflow-execution,kubernaut.ai/source-namespace")
        );
        // the rules read the run's status and metadata, never its spec
        let fields = runs.fields.clone().expect("a projection");
        assert!(fields.contains("status"), "{fields:?}");
        assert!(!fields.contains("spec"), "{fields:?}");
        let tasks = &kinds[1];
        assert_eq!(tasks.kind, "TaskRun");
        assert_eq!(tasks.namespace.as_deref(), Some("kubernaut-workflows"));
        assert!(tasks.covers("kubernaut-workflows") && !tasks.covers("default"));
    }

    #[test]
    fn a_template_reading_the_whole_execution_object_keeps_it_whole() {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lifecycle.yaml");
        let mut sources = Sources::read(&file).expect("sources");
        sources.text = sources.text.replace(
            "message: Workflow is running",
            "message: \"{{ execution | tojson }}\"",
        );
        let rules = Rules::compile(&sources, &[]).expect("rules");
        assert_eq!(rules.watched_kinds()[0].fields, None);
    }

    #[test]
    fn a_path_reading_the_spec_keeps_the_spec() {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lifecycle.yaml");
        let mut sources = Sources::read(&file).expect("sources");
        sources.text = sources.text.replace(
            "path: \"$.execution.status.startTime\"",
            "path: \"$.execution.spec.timeouts.pipeline\"",
        );
        let rules = Rules::compile(&sources, &[]).expect("rules");
        let fields = rules.watched_kinds()[0]
            .fields
            .clone()
            .expect("a projection");
        assert!(
            fields.contains("spec") && fields.contains("status"),
            "{fields:?}"
        );
    }

    #[test]
    fn every_child_kind_is_watched_with_its_owner_labels() {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("examples/configured-job-lifecycle.yaml");
        let rules = Rules::compile(&Sources::read(&file).expect("sources"), &[]).expect("rules");
        let kinds = rules.watched_kinds();
        let names: Vec<&str> = kinds.iter().map(|k| k.kind.as_str()).collect();
        // the lock first (its changes wake the resource), then the other child
        assert_eq!(names, ["Job", "ConfigMap"], "{kinds:?}");
        let labels = "configuredjob.example.com/name,configuredjob.example.com/namespace";
        assert!(
            kinds.iter().all(|k| k.labels.as_deref() == Some(labels)),
            "{kinds:?}"
        );
        // their namespace is the resource's: every namespace
        assert!(kinds.iter().all(|k| k.namespace.is_none()), "{kinds:?}");
        // the lock read as `children.job` (and `$.children.job…`) is kept whole
        assert_eq!(kinds[0].fields, None);
    }

    #[test]
    fn one_kind_read_two_ways_gets_one_watch_wide_enough_for_both() {
        let mut a = WatchedKind {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            role: "a".into(),
            namespace: Some("x".into()),
            labels: Some("l".into()),
            fields: Some(["data".to_string()].into()),
        };
        let b = WatchedKind {
            role: "b".into(),
            namespace: Some("y".into()),
            fields: Some(["binaryData".to_string()].into()),
            ..a.clone()
        };
        a.widen(&b);
        assert_eq!(a.namespace, None);
        assert_eq!(a.labels.as_deref(), Some("l"));
        assert_eq!(a.fields.as_ref().map(BTreeSet::len), Some(2));
        assert!(a.covers("anything"));
    }
}
