//! Changing the rules of a running controller: a change that removes a phase resources are in
//! is refused (the old rules keep running and finish them), and the same change with the
//! removed phase mapped by `renamedPhases` is accepted, the resources continuing in the new
//! phase. The controller runs as its own process on a copy of the default rules.
//!
//! The WorkflowExecution CRD allows only the default phase names, as a real CRD would: renaming
//! a phase means extending the CRD first. So that no other test sees a changed CRD, these tests
//! govern a copy of it in a group of their own (with `Executing` allowed), as the admin identity.

use crate::support::{self, ControllerProcess, Scope, run_name, text, unique_name, wfe_body};
use crate::tekton;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::runtime::wait::{await_condition, conditions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The group of this file's copy of the WorkflowExecution CRD.
const GROUP: &str = "rollout.lifecycle.test";

fn kind() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        GROUP,
        "v1alpha1",
        "WorkflowExecution",
    ))
}

/// Replaces `from` (which must occur) by `to`.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "`{from}` not found");
    text.replacen(from, to, 1)
}

/// Installs (or updates) the copy of the WorkflowExecution CRD in [`GROUP`], phase `Executing`
/// allowed, and waits until it is served.
async fn install_crd(s: &Scope) {
    let text =
        std::fs::read_to_string(support::repo_root().join("deploy/crds/workflowexecution.yaml"))
            .expect("the CRD");
    let text = replaced(
        &text,
        "name: workflowexecutions.kubernaut.ai",
        &format!("name: workflowexecutions.{GROUP}"),
    );
    let text = replaced(
        &text,
        "  group: kubernaut.ai\n",
        &format!("  group: {GROUP}\n"),
    );
    let text = replaced(&text, "    shortNames: [wfe]\n", "");
    let text = replaced(&text, "    categories: [kubernaut]\n", "");
    let text = replaced(
        &text,
        "enum: [Pending, Running, Completed, Failed]",
        "enum: [Pending, Running, Executing, Completed, Failed]",
    );
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("a CRD");
    let name = format!("workflowexecutions.{GROUP}");
    let api = Api::<CustomResourceDefinition>::all(s.admin.clone());
    api.patch(
        &name,
        &PatchParams::apply("lifecycle-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("applying the CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(api, &name, conditions::is_crd_established()),
    )
    .await
    .expect("the CRD established in time")
    .expect("watching the CRD");
    // discovery may lag behind Established: wait until a list works
    let resources: Api<DynamicObject> = Api::namespaced_with(s.admin.clone(), &s.ns, &kind());
    support::eventually(Duration::from_secs(30), "the CRD to be served", || async {
        resources.list(&Default::default()).await.ok().map(|_| ())
    })
    .await;
}

fn resources(s: &Scope) -> Api<DynamicObject> {
    Api::namespaced_with(s.admin.clone(), &s.ns, &kind())
}

async fn create(s: &Scope, name: &str, target: &str) {
    let object = DynamicObject::new(name, &kind()).data(wfe_body(target));
    resources(s)
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
}

/// Waits (up to a minute) until the resource is in `phase`; returns it.
async fn wait_phase(s: &Scope, name: &str, phase: &str) -> Value {
    let api = resources(s);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let current = api
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("reading {name}: {e}"))
            .map(|o| serde_json::to_value(o).expect("json"));
        if let Some(v) = &current
            && v.pointer("/status/phase").and_then(Value::as_str) == Some(phase)
        {
            return v.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {}/{name} to be in phase {phase}; last seen: {current:#?}",
            s.ns
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Copies lifecycle.yaml and templates/ into `<scope dir>/<folder>`; returns the rules file.
fn copy_rules(s: &Scope, folder: &str) -> PathBuf {
    let root = support::repo_root();
    let dir = s.dir.path().join(folder);
    std::fs::create_dir_all(dir.join("templates")).expect("rules folder");
    std::fs::copy(root.join("lifecycle.yaml"), dir.join("lifecycle.yaml")).expect("copy rules");
    for f in std::fs::read_dir(root.join("templates")).expect("templates") {
        let f = f.expect("template");
        std::fs::copy(f.path(), dir.join("templates").join(f.file_name())).expect("copy template");
    }
    let file = dir.join("lifecycle.yaml");
    let text = std::fs::read_to_string(&file).expect("rules");
    std::fs::write(
        &file,
        replaced(
            &text,
            "  apiVersion: kubernaut.ai/v1alpha1\n  kind: WorkflowExecution\n",
            &format!("  apiVersion: {GROUP}/v1alpha1\n  kind: WorkflowExecution\n"),
        ),
    )
    .expect("rules");
    file
}

/// The default rules with phase `Running` renamed `Executing`, and `extra` appended.
fn running_renamed(original: &str, extra: &str) -> String {
    assert!(original.contains("\n  Running:\n") && original.contains("        to: Running\n"));
    let text = original
        .replace("\n  Running:\n", "\n  Executing:\n")
        .replace("        to: Running\n", "        to: Executing\n");
    format!("{text}{extra}")
}

fn revision_of(rules: &Path) -> String {
    lifecycle_engine::rules::Rules::load(rules, &[])
        .expect("valid rules")
        .revision
}

/// Plays Tekton finishing `run` successfully.
async fn succeed(s: &Scope, run: &str, started: &str) {
    let at = tekton::now();
    tekton::set_status(
        &s.runs(),
        run,
        tekton::pipelinerun_finished(
            run,
            &[],
            "True",
            "Succeeded",
            &tekton::tasks_message(0, 0, 0, 0),
            started,
            &at,
        ),
    )
    .await;
}

#[tokio::test]
async fn a_reload_that_removes_a_phase_in_use_is_refused_unless_the_phase_is_mapped() {
    let s = Scope::new("rollout").await;
    install_crd(&s).await;
    let rules = copy_rules(&s, "rules");
    let original = std::fs::read_to_string(&rules).expect("rules");
    // as the admin identity: the controller's RBAC covers only the real CRD's group
    let mut args = s.run_args(&rules, "1h");
    let context = args
        .iter()
        .position(|a| a == "--context")
        .expect("--context")
        + 1;
    args[context] = "admin".into();
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &args);
    ctl.wait_ready().await;
    let first = ctl.revision().await;

    // two workflows in phase Running under the first rules
    let (a, b) = (unique_name("first"), unique_name("second"));
    let (target_a, target_b) = ("default/deployment/first", "default/deployment/second");
    create(&s, &a, target_a).await;
    create(&s, &b, target_b).await;
    let va = wait_phase(&s, &a, "Running").await;
    let vb = wait_phase(&s, &b, "Running").await;
    assert_eq!(va["status"]["rulesRevision"], first.as_str());

    // a change that renames Running without saying so: refused, listing both
    std::fs::write(&rules, running_renamed(&original, "")).expect("writing rules");
    let refused = revision_of(&rules);
    let (code, body) = support::eventually(
        Duration::from_secs(30),
        "/readyz to show the refused change",
        || async {
            ctl.readyz()
                .await
                .filter(|(_, body)| body.contains("REJECTED"))
        },
    )
    .await;
    assert_eq!(code, 200, "{body}");
    for name in [&a, &b] {
        assert!(
            body.contains(&format!("  {}/{name} (phase Running)", s.ns)),
            "{body}"
        );
    }
    assert!(
        body.contains(&format!("(revision {first})"))
            && body.contains(&format!(
                "the change (revision {refused}) removes phase `Running` that 2 resources are in"
            ))
            && body.contains("renamedPhases"),
        "{body}"
    );
    assert_eq!(
        ctl.metric("lifecycle_rules_reload_total{result=\"error\"}")
            .await,
        1.0
    );
    let log = ctl.log();
    assert!(
        log.contains("rules change rejected") && log.contains("(phase Running)"),
        "{log}"
    );

    // the first rules keep running: the first workflow finishes under them
    let run_a = run_name(target_a);
    succeed(&s, &run_a, &text(&va, "/status/startTime")).await;
    let done = wait_phase(&s, &a, "Completed").await;
    assert_eq!(done["status"]["rulesRevision"], first.as_str());
    assert_eq!(ctl.revision().await, first);

    // the same change with the phase mapped: accepted, and the second workflow moves on to
    // Executing and finishes under the new rules
    std::fs::write(
        &rules,
        running_renamed(&original, "\nrenamedPhases:\n  Running: Executing\n"),
    )
    .expect("writing rules");
    let mapped = revision_of(&rules);
    support::eventually(
        Duration::from_secs(30),
        "the mapped change to be loaded",
        || async { (ctl.revision().await == mapped).then_some(()) },
    )
    .await;
    let moved = wait_phase(&s, &b, "Executing").await;
    assert_eq!(moved["status"]["rulesRevision"], mapped.as_str());
    assert_eq!(
        text(&moved, "/status/startTime"),
        text(&vb, "/status/startTime")
    );
    let run_b = run_name(target_b);
    succeed(&s, &run_b, &text(&vb, "/status/startTime")).await;
    let done = wait_phase(&s, &b, "Completed").await;
    assert_eq!(done["status"]["rulesRevision"], mapped.as_str());
    assert_eq!(
        ctl.metric("lifecycle_rules_reload_total{result=\"ok\"}")
            .await,
        1.0
    );
    assert!(
        !ctl.readyz().await.expect("/readyz").1.contains("REJECTED"),
        "the accepted change clears the report"
    );
    // the resources by phase and the revision that last acted on them
    let m = ctl.metrics().await;
    for revision in [&first, &mapped] {
        let series = format!("lifecycle_resources{{phase=\"Completed\",revision=\"{revision}\"}}");
        assert_eq!(support::metric_value(&m, &series), 1.0, "{series}\n{m}");
    }
}
