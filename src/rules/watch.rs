//! What the rules read from the cluster, for the shell's watch caches: each kind of object the
//! rules can observe, where such objects can be, which labels they carry, and which of their
//! fields the rules read ([`super::reads`]). Known when the rules load, so a cache keeps only
//! that.

use super::Rules;
use super::reads::Keep;

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
    /// What the rules read of such objects (the metadata the runtime needs comes on top:
    /// [`Keep::with_runtime_fields`]).
    pub fields: Keep,
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
        self.fields.merge(&other.fields);
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
                fields: r.reads.clone(),
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
                fields: Keep::Whole,
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
                fields: Keep::Whole,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Sources;
    use serde_json::json;
    use std::path::PathBuf;

    fn default_rules() -> Rules {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lifecycle.yaml");
        Rules::compile(&Sources::read(&file).expect("sources"), &[]).expect("default rules")
    }

    fn rules_with(from: &str, to: &str) -> Rules {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lifecycle.yaml");
        let mut sources = Sources::read(&file).expect("sources");
        assert!(sources.text.contains(from), "{from}");
        sources.text = sources.text.replace(from, to);
        Rules::compile(&sources, &[]).expect("rules")
    }

    /// An object kept as `keep` (with the runtime's metadata) says.
    fn projected(keep: &Keep, mut v: serde_json::Value) -> serde_json::Value {
        keep.with_runtime_fields().project(&mut v);
        v
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
        let tasks = &kinds[1];
        assert_eq!(tasks.kind, "TaskRun");
        assert_eq!(tasks.namespace.as_deref(), Some("kubernaut-workflows"));
        assert!(tasks.covers("kubernaut-workflows") && !tasks.covers("default"));
    }

    #[test]
    fn the_default_rules_keep_of_a_run_and_its_task_runs_only_what_they_read() {
        let rules = default_rules();
        let kinds = rules.watched_kinds();
        let run = json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {"name": "r", "namespace": "n", "uid": "u", "resourceVersion": "1",
                "labels": {"a": "b"}, "annotations": {"x": "y"}, "creationTimestamp": "t"},
            "spec": {"pipelineSpec": {"tasks": []}},
            "status": {"startTime": "s", "completionTime": "c", "podName": "p",
                "conditions": [{"type": "Succeeded", "status": "True", "reason": "R", "message": "M"}],
                "childReferences": [{"apiVersion": "tekton.dev/v1", "kind": "TaskRun", "name": "t", "pipelineTaskName": "run"}],
                "pipelineSpec": {"tasks": [{"name": "run"}]}, "provenance": {"x": 1}}
        });
        let mut expected = run.clone();
        expected["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        expected["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("creationTimestamp");
        expected.as_object_mut().unwrap().remove("spec");
        for f in ["podName", "pipelineSpec", "provenance"] {
            expected["status"].as_object_mut().unwrap().remove(f);
        }
        assert_eq!(projected(&kinds[0].fields, run), expected);
        let task = json!({
            "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
            "metadata": {"name": "t", "namespace": "n", "labels": {"tekton.dev/pipelineRun": "r"}},
            "spec": {"taskRef": {"name": "run"}},
            "status": {"podName": "p", "taskSpec": {"steps": [{"image": "i", "script": "long"}]},
                "conditions": [{"type": "Succeeded", "status": "False", "reason": "Failed"}],
                "steps": [{"name": "run", "container": "step-run", "imageID": "sha",
                    "terminated": {"exitCode": 1, "reason": "Error", "startedAt": "a", "finishedAt": "b"}}]}
        });
        assert_eq!(
            projected(&kinds[1].fields, task),
            json!({
                "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
                "metadata": {"name": "t", "namespace": "n", "labels": {"tekton.dev/pipelineRun": "r"}},
                "status": {
                    "conditions": [{"type": "Succeeded", "status": "False", "reason": "Failed"}],
                    "steps": [{"name": "run", "terminated": {"exitCode": 1, "reason": "Error"}}]}
            })
        );
    }

    #[test]
    fn a_template_reading_the_whole_execution_object_keeps_it_whole() {
        let rules = rules_with(
            "message: Workflow is running",
            "message: \"{{ execution | tojson }}\"",
        );
        assert_eq!(rules.watched_kinds()[0].fields, Keep::Whole);
    }

    #[test]
    fn a_found_task_run_handed_to_a_filter_is_kept_whole() {
        let rules = rules_with(
            "failedTaskName: \"{{ values.failedTask.value.object.metadata.name",
            "failedTaskName: \"{{ (values.failedTask.value.object | tojson) ~ values.failedTask.value.object.metadata.name",
        );
        assert_eq!(rules.watched_kinds()[1].fields, Keep::Whole);
        // tested for truth only, the record read nothing of the object
        assert!(!default_rules().watched_kinds()[1].fields.is_whole());
    }

    #[test]
    fn a_path_reading_the_spec_keeps_that_part_of_the_spec() {
        let rules = rules_with(
            "path: \"$.execution.status.startTime\"",
            "path: \"$.execution.spec.timeouts.pipeline\"",
        );
        let run = json!({"spec": {"timeouts": {"pipeline": "1h", "tasks": "1m"}, "params": []}});
        assert_eq!(
            projected(&rules.watched_kinds()[0].fields, run),
            json!({"spec": {"timeouts": {"pipeline": "1h"}}})
        );
    }

    #[test]
    fn a_value_read_through_another_reads_below_its_source() {
        // `failedStep` selects from `failedTask`'s node: its `where` and its readers reach
        // the TaskRun's steps
        let rules = rules_with(
            "exitCode: \"{{ values.failedStep.value.terminated.exitCode",
            "exitCode: \"{{ values.failedStep.value.terminated.signal",
        );
        let task = json!({"status": {"steps": [{"terminated": {"exitCode": 1, "signal": 9, "message": "m"}}]}});
        let kept = projected(&rules.watched_kinds()[1].fields, task);
        assert_eq!(
            kept["status"]["steps"][0]["terminated"],
            json!({"exitCode": 1, "signal": 9})
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
        // the lock read as `children.job` (and `$.children.job…`) is the execution object:
        // its conditions are kept, its spec is not; the other child is kept whole
        let job = json!({"spec": {"template": {}}, "status": {"active": 1,
            "conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(
            projected(&kinds[0].fields, job),
            json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}})
        );
        assert!(kinds[1].fields.is_whole());
    }

    #[test]
    fn one_kind_read_two_ways_gets_one_watch_wide_enough_for_both() {
        let mut data = Keep::nothing();
        data.insert(&[Some("data".into())], true);
        let mut binary = Keep::nothing();
        binary.insert(&[Some("binaryData".into())], true);
        let mut a = WatchedKind {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            role: "a".into(),
            namespace: Some("x".into()),
            labels: Some("l".into()),
            fields: data,
        };
        let b = WatchedKind {
            role: "b".into(),
            namespace: Some("y".into()),
            fields: binary,
            ..a.clone()
        };
        a.widen(&b);
        assert_eq!(a.namespace, None);
        assert_eq!(a.labels.as_deref(), Some("l"));
        assert!(
            a.fields.keeps("data") && a.fields.keeps("binaryData") && !a.fields.keeps("immutable")
        );
        assert!(a.covers("anything"));
        a.widen(&WatchedKind {
            fields: Keep::Whole,
            ..b
        });
        assert!(a.fields.is_whole());
    }
}
