//! Security properties of decisions: whatever a resource's spec contains, the engine only creates
//! objects of the kind, name and namespace the rules declare, and templates cannot reach files
//! or the environment.

use super::{Effect, Observation, decide};
use crate::rules::{Rules, Sources};
use serde_json::{Value, json};
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn default_rules() -> Rules {
    Rules::load(&root().join("lifecycle.yaml"), &[]).expect("default rules load")
}

fn resource(spec: Value) -> Value {
    json!({
        "apiVersion": "kubernaut.ai/v1alpha1", "kind": "WorkflowExecution",
        "metadata": {"name": "w", "namespace": "team-a", "uid": "u", "generation": 1,
                     "finalizers": ["workflowexecution.kubernaut.ai/workflowexecution-cleanup"]},
        "spec": spec
    })
}

fn created(rules: &Rules, resource: Value) -> Result<Value, String> {
    let d = decide(
        rules,
        &Observation {
            resource,
            ..Observation::default()
        },
        1_767_225_600.0,
    );
    if let Some(e) = d.error {
        return Err(e.to_string());
    }
    d.effects
        .into_iter()
        .find_map(|e| match e {
            Effect::CreateExecution { object } => Some(object),
            _ => None,
        })
        .ok_or_else(|| "nothing created".to_string())
}

#[test]
fn hostile_specs_cannot_change_the_created_object() {
    let rules = default_rules();
    let injections = [
        "x\nkind: Secret\nmetadata:\n  namespace: kube-system",
        "\"}\nkind: Secret",
        "{{ 7 * 7 }} {% raw %}",
        "' ; rm -rf / ; '",
        "\u{202e}evil\u{0000}",
    ];
    for bad in injections {
        let obj = created(
            &rules,
            resource(json!({
                "workflowRef": {"workflowId": bad, "version": bad, "containerImage": bad},
                "targetResource": "default/deployment/nginx",
                "parameters": {"A": bad, bad: "v"}
            })),
        )
        .unwrap_or_else(|e| panic!("{bad:?}: {e}"));
        assert_eq!(obj["kind"], "PipelineRun", "{bad:?}");
        assert_eq!(obj["apiVersion"], "tekton.dev/v1");
        assert_eq!(obj["metadata"]["namespace"], "kubernaut-workflows");
        assert_eq!(
            obj["spec"]["pipelineRef"]["params"][0]["value"], bad,
            "values stay verbatim"
        );
        let params = obj["spec"]["params"].as_array().unwrap();
        assert!(params.iter().any(|p| p["name"] == "A" && p["value"] == bad));
        assert!(params.iter().any(|p| p["name"] == bad && p["value"] == "v"));
        assert_eq!(obj["metadata"].get("ownerReferences"), None);
    }
}

/// The default rules with the PipelineRun template replaced, compiled in memory.
fn rules_with_template(template: &str) -> Result<Rules, crate::rules::LoadError> {
    let sources = Sources::read(&root().join("lifecycle.yaml"))
        .expect("default rules read")
        .with_template("pipelinerun.yaml", template);
    Rules::compile(&sources, &[])
}

#[test]
fn a_template_cannot_create_an_undeclared_kind_or_place() {
    let spec = json!({"workflowRef": {"workflowId": "w", "version": "1", "containerImage": "i"},
                      "targetResource": "default/deployment/nginx"});
    let cases = [
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n",
            "apiVersion",
        ),
        (
            "apiVersion: tekton.dev/v1\nkind: TaskRun\n",
            "kind `TaskRun`",
        ),
        (
            "apiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata:\n  name: other\n",
            "metadata.name",
        ),
        (
            "apiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata:\n  namespace: kube-system\n",
            "metadata.namespace",
        ),
        (
            "apiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata:\n  ownerReferences: []\n",
            "ownerReferences",
        ),
        ("- a list\n", "mapping"),
        (
            "apiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata: {labels: {a: 'not valid!'}}\n",
            "label",
        ),
    ];
    for (template, what) in cases {
        let rules = rules_with_template(template).expect("loads");
        let err = created(&rules, resource(spec.clone())).expect_err(template);
        assert!(err.contains("ExecutionObjectInvalid"), "{template}: {err}");
        assert!(err.contains(what), "{template}: {err}");
    }
}

#[test]
fn templates_cannot_read_files_or_the_environment() {
    for (template, expected) in [
        ("{% include '/etc/passwd' %}", "/etc/passwd"),
        ("{% include '../lifecycle.yaml' %}", "../lifecycle.yaml"),
        ("{{ env.HOME }}", "unknown variable `env`"),
        ("{{ environ }}", "unknown variable `environ`"),
    ] {
        let err = rules_with_template(template)
            .expect_err(template)
            .to_string();
        assert!(err.contains(expected), "{template}: {err}");
    }
    // a dynamic include name still reaches only the loaded files
    let rules = rules_with_template(
        "{% include resource.spec.workflowRef.workflowId %}\napiVersion: tekton.dev/v1\nkind: PipelineRun\n",
    )
    .expect("loads");
    let spec = json!({"workflowRef": {"workflowId": "/etc/passwd", "version": "1", "containerImage": "i"},
                      "targetResource": "default/deployment/nginx"});
    let err = created(&rules, resource(spec)).expect_err("no file read");
    assert!(err.contains("TemplateError"), "{err}");
    assert!(!err.contains("root:"), "{err}");
}
