//! Named children in `decide`: a step that creates several waits for each in turn, a child of
//! another resource skips it, patches and deletes reach only our children, and a related list
//! rooted at a child reads the references that child lists, in its namespace.

use super::{Effect, ObjectKey, Observation, decide, related_requests};
use crate::rules::{Rules, Sources};
use serde_json::{Map, Value, json};

const RULES: &str = r#"
version: 1
resource:
  apiVersion: example.com/v1
  kind: Task
  fieldManager: task-controller
  component: task-controller
  finalizer: example.com/cleanup
children:
  config:
    apiVersion: v1
    kind: ConfigMap
    namespace: "{{ resource.metadata.namespace }}"
    name: "{{ resource.metadata.name }}-config"
    template: config.yaml
    ownerLabels: { name: example.com/name, namespace: example.com/namespace }
  job:
    apiVersion: batch/v1
    kind: Job
    namespace: "{{ resource.metadata.namespace }}"
    name: "{{ resource.metadata.name }}-job"
    template: job.yaml
    lock: true
    ownerLabels: { name: example.com/name, namespace: example.com/namespace }
related:
  secrets:
    apiVersion: v1
    kind: Secret
    from: "$.children.config.data.secrets[*]"
    name: "$.name"
phases:
  Pending:
    initial: true
    transitions:
      - name: started
        to: Running
        children: { config: create, job: create }
  Running:
    transitions:
      - name: paused
        to: Paused
        when: { equals: { path: "$.resource.spec.paused", value: true } }
        patch:
          config: { data: { paused: "true" } }
  Paused:
    transitions:
      - name: done
        to: Done
        when: { exists: "$.related.secrets[0].object" }
        children: { config: delete }
  Done:
    terminal: true
"#;

fn rules() -> Rules {
    let sources = Sources::from_text("children.yaml", RULES)
        .with_template(
            "config.yaml",
            "data: { owner: {{ resource.metadata.name | tojson }} }\n",
        )
        .with_template(
            "job.yaml",
            "spec: { config: {{ children.config.metadata.name | tojson }} }\n",
        );
    Rules::compile(&sources, &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn task(phase: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "example.com/v1", "kind": "Task",
        "metadata": {"name": "t", "namespace": "ns", "uid": "u1",
                     "finalizers": ["example.com/cleanup"]},
        "spec": spec,
        "status": {"phase": phase},
    })
}

fn object(api_version: &str, kind: &str, name: &str, owner: &str, extra: Value) -> Value {
    let mut o = json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                     "labels": {"example.com/name": owner, "example.com/namespace": "ns"}},
    });
    crate::engine::status::apply_merge_patch(&mut o, &extra);
    o
}

fn config(owner: &str, extra: Value) -> Value {
    object("v1", "ConfigMap", "t-config", owner, extra)
}

fn observe(resource: Value, job: Option<Value>, config: Option<Value>) -> Observation {
    let mut children = Map::new();
    children.insert("config".into(), config.unwrap_or(Value::Null));
    Observation {
        resource,
        execution: job,
        children,
        ..Observation::default()
    }
}

fn kinds(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .map(|e| {
            serde_json::to_value(e).unwrap_or_default()["effect"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn a_step_creates_its_children_one_at_a_time_in_order_then_is_taken() {
    let rules = rules();
    // nothing yet: the ConfigMap first, the phase stays
    let d = decide(
        &rules,
        &observe(task("Pending", json!({})), None, None),
        0.0,
    );
    assert_eq!(d.error, None);
    assert_eq!(d.transition, None);
    assert_eq!(kinds(&d.effects), ["createChild"]);
    let Effect::CreateChild { child, object } = &d.effects[0] else {
        unreachable!()
    };
    assert_eq!(child, "config");
    assert_eq!(object["metadata"]["name"], "t-config");
    assert_eq!(object["metadata"]["labels"]["example.com/name"], "t");
    // the ConfigMap is ours: the Job next, rendered with the ConfigMap it reads
    let cm = config("t", json!({}));
    let d = decide(
        &rules,
        &observe(task("Pending", json!({})), None, Some(cm.clone())),
        0.0,
    );
    assert_eq!(kinds(&d.effects), ["createExecution"]);
    let Effect::CreateExecution { object } = &d.effects[0] else {
        unreachable!()
    };
    assert_eq!(object["spec"]["config"], "t-config");
    // both ours: the step is taken
    let job = object.clone();
    let d = decide(
        &rules,
        &observe(task("Pending", json!({})), Some(job), Some(cm)),
        0.0,
    );
    assert_eq!(d.transition.as_deref(), Some("started"));
    assert_eq!(d.phase, "Running");
}

#[test]
fn a_child_of_another_resource_skips_the_step_and_is_never_touched() {
    let rules = rules();
    let theirs = config("someone-else", json!({}));
    let d = decide(
        &rules,
        &observe(task("Pending", json!({})), None, Some(theirs.clone())),
        0.0,
    );
    assert_eq!(d.transition, None);
    assert!(d.effects.is_empty(), "{:?}", d.effects);
    // nor patched
    let d = decide(
        &rules,
        &observe(task("Running", json!({"paused": true})), None, Some(theirs)),
        0.0,
    );
    assert_eq!(d.transition.as_deref(), Some("paused"));
    assert!(!kinds(&d.effects).contains(&"patchChild".to_string()));
}

#[test]
fn a_patch_of_a_child_is_sent_only_when_it_would_change_it() {
    let rules = rules();
    let resource = task("Running", json!({"paused": true}));
    let d = decide(
        &rules,
        &observe(resource.clone(), None, Some(config("t", json!({})))),
        0.0,
    );
    let patch = d.effects.iter().find_map(|e| match e {
        Effect::PatchChild { child, key, patch } => Some((child, key, patch)),
        _ => None,
    });
    let (child, key, patch) = patch.expect("a patch of the ConfigMap");
    assert_eq!(child, "config");
    assert_eq!(key.name, "t-config");
    assert_eq!(patch, &json!({"data": {"paused": "true"}}));
    // already so: nothing to send
    let patched = config("t", json!({"data": {"paused": "true"}}));
    let d = decide(&rules, &observe(resource, None, Some(patched)), 0.0);
    assert!(!kinds(&d.effects).contains(&"patchChild".to_string()));
}

#[test]
fn a_related_list_rooted_at_a_child_reads_its_references_in_its_namespace() {
    let rules = rules();
    let cm = config(
        "t",
        json!({"data": {"secrets": [{"name": "a"}, {"name": "b"}]}}),
    );
    let mut children = Map::new();
    children.insert("config".into(), cm.clone());
    let request = related_requests(&rules, 0, None, &children);
    let keys: Vec<Option<ObjectKey>> = request.entries.into_iter().map(|(_, k)| k).collect();
    let names: Vec<(String, String)> = keys
        .into_iter()
        .flatten()
        .map(|k| (k.namespace, k.name))
        .collect();
    assert_eq!(
        names,
        [("ns".into(), "a".into()), ("ns".into(), "b".into())]
    );
    // no ConfigMap: no references
    let request = related_requests(&rules, 0, None, &Map::new());
    assert!(request.entries.is_empty());
    // the decision that reads the list asks for it, then deletes our ConfigMap once it has it
    let resource = task("Paused", json!({}));
    let d = decide(
        &rules,
        &observe(resource.clone(), None, Some(cm.clone())),
        0.0,
    );
    assert_eq!(d.needs.len(), 1, "{d:?}");
    let mut obs = observe(resource, None, Some(cm));
    obs.related.insert(
        "secrets".into(),
        json!([{"ref": {"name": "a"}, "object": {"metadata": {"name": "a"}}}]),
    );
    let d = decide(&rules, &obs, 0.0);
    assert_eq!(d.transition.as_deref(), Some("done"));
    assert_eq!(kinds(&d.effects)[0], "deleteChild");
}

#[test]
fn explain_shows_each_child_with_whether_it_exists_and_is_ours() {
    let rules = rules();
    let obs = observe(
        task("Running", json!({})),
        None,
        Some(config("someone-else", json!({}))),
    );
    let e = super::explain::explain(&rules, &obs, 0.0);
    assert_eq!(e.children.len(), 1);
    let (name, view) = &e.children[0];
    assert_eq!(name, "config");
    assert_eq!(view.key.as_ref().map(|k| k.name.as_str()), Some("t-config"));
    assert!(view.exists && !view.owned, "{view:?}");
    let obs = observe(task("Running", json!({})), None, None);
    let e = super::explain::explain(&rules, &obs, 0.0);
    assert!(!e.children[0].1.exists);
}
