//! A child kind that only a reloaded rules file names: the controller starts its watch cache
//! on the reload, and a change to such a child wakes its resource as a change to a child of
//! the first rules does (without a restart, and without any periodic re-check: these rules
//! declare none, so the resource moves only when something wakes it).

use super::children::{configured_jobs, finish_job, grant, wait_phase};
use super::*;
use kube::Api;
use kube::api::DynamicObject;
use std::path::Path;
use std::time::Duration;

/// The first rules: the ConfigMap only (the lock); the resource then waits in `Starting`,
/// which these rules never leave for a resource of the test.
fn first_rules(example: &str) -> String {
    let resource = &example[example.find("resource:\n").expect("a resource block")
        ..example.find("children:\n").expect("a children block")];
    format!(
        r#"version: 1
description: ConfiguredJob, first rules - the ConfigMap only.
templates: templates
{resource}children:
  config:
    apiVersion: v1
    kind: ConfigMap
    namespace: "{{{{ resource.metadata.namespace }}}}"
    name: "{{{{ resource.metadata.name }}}}-config"
    template: configmap.yaml
    lock: true
    ownerLabels:
      name: configuredjob.example.com/name
      namespace: configuredjob.example.com/namespace
phases:
  Pending:
    initial: true
    transitions:
      - name: configured
        to: Starting
        children: {{ config: create }}
  Starting:
    description: Waits for rules that start the Job.
    transitions:
      - name: never
        to: Succeeded
        when: {{ equals: {{ path: "$.resource.spec.image", value: "never" }} }}
  Succeeded:
    terminal: true
onDelete:
  children: {{ config: delete }}
"#
    )
}

/// Writes `text` as `path` the way an editor or a ConfigMap update does: a new file renamed
/// over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.new");
    std::fs::write(&tmp, text).expect("writing the new rules");
    std::fs::rename(&tmp, path).expect("renaming the new rules into place");
}

#[tokio::test]
async fn a_child_kind_added_by_a_reload_wakes_its_resource() {
    let s = Scope::new("kidreload").await;
    let name = unique_name("late");
    grant(&s, &format!("lifecycle-{name}")).await;
    let root = support::repo_root().join("examples");
    let example =
        std::fs::read_to_string(root.join("configured-job-lifecycle.yaml")).expect("the example");
    let dir = s.dir.path().join("rules");
    std::fs::create_dir_all(dir.join("templates")).expect("rules folder");
    for f in std::fs::read_dir(root.join("configured-job-templates")).expect("templates") {
        let f = f.expect("template");
        std::fs::copy(f.path(), dir.join("templates").join(f.file_name())).expect("template");
    }
    let rules = dir.join("lifecycle.yaml");
    std::fs::write(&rules, first_rules(&example)).expect("writing the first rules");
    let args: Vec<String> = [
        "run",
        "--rules",
        &rules.display().to_string(),
        "--context",
        support::CONTROLLER_CONTEXT,
        "--metrics-address",
        "127.0.0.1:0",
        "--log-format",
        "text",
        "--namespace",
        &s.ns,
    ]
    .map(String::from)
    .to_vec();
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &args);
    ctl.wait_ready().await;
    let api = Api::<DynamicObject>::namespaced_with(s.admin.clone(), &s.ns, &configured_jobs());
    let object = DynamicObject::new(&name, &configured_jobs())
        .within(&s.ns)
        .data(json!({"spec": {
            "image": "busybox:1.36",
            "command": ["sh", "-c", "cat /config/greeting"],
            "config": {"greeting": "hello"},
        }}));
    api.create(&PostParams::default(), &object)
        .await
        .expect("creating the ConfiguredJob");
    wait_phase(&api, &name, "Starting").await;

    // the second rules: the example itself (the Job, a kind the first rules never read), for
    // resources already in flight too
    let second = format!(
        "{}\nrollout:\n  policy: latest\n",
        example.replace(
            "templates: configured-job-templates",
            "templates: templates"
        )
    );
    replace(&rules, &second);
    let revision = lifecycle_engine::rules::Rules::load(&rules, &[])
        .expect("valid second rules")
        .revision;
    support::eventually(
        Duration::from_secs(30),
        "the second rules to be loaded",
        || async { (ctl.revision().await == revision).then_some(()) },
    )
    .await;
    // the reload re-decides every resource once: the Job is created
    wait_phase(&api, &name, "Running").await;

    // only a change to the Job can move it on now
    finish_job(&s, &format!("{name}-job"), "Complete", "Completed", "done").await;
    let v = wait_phase(&api, &name, "Succeeded").await;
    assert_eq!(
        v.pointer("/status/job").and_then(Value::as_str),
        Some(format!("{name}-job").as_str()),
        "{v}"
    );
    assert!(!ctl.log().contains("panicked"), "{}", ctl.log());
}
