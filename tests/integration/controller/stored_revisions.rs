//! Pinned revisions across restarts: the controller keeps each rules revision in a ConfigMap of
//! its namespace (`--revisions-namespace`, as the controller identity with the Role deploy/
//! grants there), and a new process restores the revisions resources are pinned to before it
//! decides any. A resource pinned to revision 1, the rules changed to revision 2, the controller
//! restarted: the resource finishes by revision 1, and revision 1's ConfigMap is deleted once no
//! resource uses it. With that ConfigMap deleted by hand before the restart, the resource
//! follows the latest rules, with a `RulesRevisionUnavailable` Event.

use super::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};

/// The revisions stored in `ns` (the `lifecycle-engine/revision` label of its ConfigMaps), by
/// ConfigMap name.
async fn stored(s: &Scope) -> Vec<(String, String)> {
    let list = Api::<ConfigMap>::namespaced(s.admin.clone(), &s.ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=lifecycle-engine"))
        .await
        .expect("listing ConfigMaps");
    let mut v: Vec<(String, String)> = list
        .items
        .into_iter()
        .map(|cm| {
            let revision = cm
                .metadata
                .labels
                .unwrap_or_default()
                .get("lifecycle-engine/revision")
                .cloned()
                .unwrap_or_default();
            (revision, cm.metadata.name.unwrap_or_default())
        })
        .collect();
    v.sort();
    v
}

async fn wait_stored(
    s: &Scope,
    what: &str,
    check: impl Fn(&[String]) -> bool,
) -> Vec<(String, String)> {
    support::eventually(std::time::Duration::from_secs(60), what, || async {
        let now = stored(s).await;
        let revisions: Vec<String> = now.iter().map(|(r, _)| r.clone()).collect();
        check(&revisions).then_some(now)
    })
    .await
}

/// A controller on `rules` that stores its revisions in the scope's namespace.
async fn start(s: &Scope, rules: &std::path::Path, label: &str) -> ControllerProcess {
    let mut args = s.run_args(rules, "1h");
    args.extend(["--revisions-namespace".to_string(), s.ns.clone()]);
    let mut ctl = ControllerProcess::spawn(s.env, s.dir.path(), label, &args);
    ctl.wait_ready().await;
    ctl
}

/// A scope whose namespace has the controller's Roles of deploy/ (the revisions' among them),
/// the default rules copied (the default rollout: pinned), a controller on them, and one
/// resource in Running under their revision. Then the rules change the success message and the
/// controller loads them; the first controller is stopped. Returns the scope, the rules, both
/// revisions, the resource, its run and its start.
async fn pinned_then_changed(
    prefix: &str,
) -> (
    Scope,
    std::path::PathBuf,
    String,
    String,
    String,
    String,
    String,
) {
    let s = Scope::new(prefix).await;
    support::grant_namespaced_rbac(s.env, support::controller_namespace(), &s.ns).await;
    let rules = copy_rules(&s, "rules");
    let first = revision_of(&rules);
    let mut ctl = start(&s, &rules, "first").await;
    let name = unique_name("pinned");
    let (run, started) = running(&s, &name, "default/deployment/pinned").await;
    assert_eq!(
        s.get(&name).await.unwrap()["status"]["rulesRevision"],
        first.as_str()
    );
    wait_stored(&s, "revision 1 stored", |r| r == [first.clone()]).await;

    edit(
        &rules,
        "            message: Workflow completed successfully\n",
        "            message: Workflow completed under the changed rules\n",
    );
    let second = revision_of(&rules);
    support::eventually(
        std::time::Duration::from_secs(30),
        "the changed rules to be loaded",
        || async { (ctl.revision().await == second).then_some(()) },
    )
    .await;
    wait_stored(&s, "both revisions stored", |r| {
        r.contains(&first) && r.contains(&second)
    })
    .await;
    let (code, log) = ctl.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    (s, rules, first, second, name, run, started)
}

#[tokio::test]
async fn a_pinned_resource_finishes_by_its_revision_after_a_restart_and_its_copy_goes_after() {
    let (s, rules, first, second, name, run, started) = pinned_then_changed("stored").await;
    // a new process: it restores revision 1 before deciding anything
    let mut ctl = start(&s, &rules, "second").await;
    assert_eq!(ctl.revision().await, second);
    let log = ctl.log();
    assert!(
        log.contains("rules revision restored") && log.contains(first.as_str()),
        "{log}"
    );
    succeed(&s, &run, &started).await;
    let done = s.wait_phase(&name, "Completed").await;
    assert_eq!(done["status"]["rulesRevision"], first.as_str());
    assert_condition(
        &done,
        "Ready",
        "True",
        "Succeeded",
        "Workflow completed successfully",
    );
    // no resource is pinned to revision 1 any more: its ConfigMap is deleted, the latest's kept
    let left = wait_stored(&s, "revision 1's ConfigMap deleted", |r| {
        r == [second.clone()]
    })
    .await;
    assert!(
        left[0].1.ends_with(&second),
        "named by the revision: {left:?}"
    );
    assert!(
        s.events(&name)
            .await
            .iter()
            .all(|e| e.reason != "RulesRevisionUnavailable"),
        "nothing was unavailable"
    );
    ctl.terminate().await;
}

#[tokio::test]
async fn a_resource_whose_stored_revision_is_gone_follows_the_latest_rules_with_an_event() {
    let (s, rules, first, second, name, run, started) = pinned_then_changed("unstored").await;
    // revision 1's ConfigMap deleted by hand while no controller runs
    let (_, cm) = stored(&s)
        .await
        .into_iter()
        .find(|(r, _)| *r == first)
        .expect("revision 1's ConfigMap");
    Api::<ConfigMap>::namespaced(s.admin.clone(), &s.ns)
        .delete(&cm, &DeleteParams::default())
        .await
        .expect("deleting revision 1's ConfigMap");
    let mut ctl = start(&s, &rules, "second").await;
    let events = s.wait_event(&name, "RulesRevisionUnavailable").await;
    let unavailable: Vec<&SeenEvent> = events
        .iter()
        .filter(|e| e.reason == "RulesRevisionUnavailable")
        .collect();
    assert_eq!(unavailable.len(), 1, "{events:?}");
    assert_eq!(unavailable[0].type_, "Warning");
    assert!(
        unavailable[0]
            .note
            .contains(&format!("pinned to rules revision {first}"))
            && unavailable[0].note.contains(&s.ns)
            && unavailable[0]
                .note
                .contains(&format!("decided by the latest rules, revision {second}")),
        "{:?}",
        unavailable[0]
    );
    succeed(&s, &run, &started).await;
    let done = s.wait_phase(&name, "Completed").await;
    assert_eq!(done["status"]["rulesRevision"], second.as_str());
    assert_condition(
        &done,
        "Ready",
        "True",
        "Succeeded",
        "Workflow completed under the changed rules",
    );
    ctl.terminate().await;
}
