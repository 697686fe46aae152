//! The router profile (deploy/overlays/router, examples/router-lifecycle.yaml) on the real API
//! server. Its install: it applies, its CRD is the base's with what the router rules write, its
//! ConfigMap carries the router rules, and the rules' lookups need no access the overlay does not
//! grant. Its behaviour, with the overlay's CRD installed and the controller running as the
//! unprivileged identity with the overlay's RBAC: a busy target is skipped, a run that failed
//! while executing blocks the next resource of its target, a failure before the run backs the
//! target off until nextAllowedExecution; the lookups are answered by the watch cache (no
//! request for WorkflowExecutions).

use kube::api::DeleteParams;
use serde_json::Value;

use crate::deploy::{assert_applies, kustomize, rendered};
use crate::support::{ControllerProcess, Scope, repo_root, run_name, text, unique_name, wfe_body};
use crate::tekton;

const OVERLAY: &str = "deploy/overlays/router";
const RULES: &str = "examples/router-lifecycle.yaml";

/// `lifecycle check RULES --format json --crd FILE` of the built binary, with `crd` written to a
/// file named `name`: its JSON.
fn check_against(crd: &Value, name: &str) -> Value {
    let dir = std::env::temp_dir().join(format!("router-crd-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("crd.yaml");
    std::fs::write(&file, serde_yaml::to_string(crd).expect("yaml")).expect("write CRD");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lifecycle"))
        .args(["check", RULES, "--format", "json", "--crd"])
        .arg(&file)
        .current_dir(repo_root())
        .output()
        .expect("running lifecycle check");
    let _ = std::fs::remove_dir_all(&dir);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test]
async fn the_router_overlay_applies_with_a_server_side_dry_run() {
    assert_applies(OVERLAY, &[]).await;
}

#[tokio::test]
async fn the_router_rules_fit_the_router_overlays_crd_configmap_and_rbac() {
    let s = Scope::new("router-overlay").await;
    let objects = kustomize(&s, OVERLAY).await;
    let crd = rendered(
        &objects,
        "CustomResourceDefinition",
        "workflowexecutions.kubernaut.ai",
        OVERLAY,
    );

    // the status the router rules write fits the overlay's CRD ...
    let report = check_against(crd, "overlay");
    assert_eq!(report["valid"], true, "{report:#}");
    // ... and not the base's, which the overlay leaves untouched
    let base: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/base/crds/workflowexecution.yaml"))
            .expect("the base CRD"),
    )
    .expect("YAML");
    let against_base = check_against(&base, "base");
    assert_eq!(against_base["valid"], false, "{against_base:#}");
    let problems = against_base["problems"].to_string();
    for field in [
        "skipDetails",
        "consecutiveFailures",
        "nextAllowedExecution",
        "Skipped",
    ] {
        assert!(problems.contains(field), "{field}: {problems}");
    }

    // the rules ConfigMap is the router rules, the templates are mounted where they name them
    let rules = rendered(&objects, "ConfigMap", "lifecycle-rules", OVERLAY);
    let text = std::fs::read_to_string(repo_root().join(RULES)).expect("the router rules");
    assert_eq!(
        rules["data"]["lifecycle.yaml"].as_str(),
        Some(text.as_str())
    );
    assert!(text.contains("\ntemplates: router-templates\n"));
    let deployment = rendered(&objects, "Deployment", "lifecycle-controller", OVERLAY);
    let mounts = &deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
    assert!(
        mounts.as_array().expect("mounts").iter().any(
            |m| m["name"] == "templates" && m["mountPath"] == "/etc/lifecycle/router-templates"
        ),
        "{mounts:#}"
    );

    // every access the lookups need is granted by a ClusterRole rule (the execution namespace's
    // kinds, which check states with their namespace, are the Role's of the base)
    let rbac: Vec<&Value> = report["rbac"]
        .as_array()
        .expect("rbac")
        .iter()
        .filter(|need| need.get("namespace").is_none())
        .collect();
    assert!(!rbac.is_empty(), "{report:#}");
    let plural = crd["spec"]["names"]["plural"].as_str().expect("plural");
    let group = crd["spec"]["group"].as_str().expect("group");
    let role = rendered(&objects, "ClusterRole", "lifecycle-controller", OVERLAY);
    for need in rbac {
        assert_eq!(need["kind"], "WorkflowExecution", "{need}");
        assert_eq!(need["allNamespaces"], true, "{need}");
        let granted = |verb: &Value| {
            role["rules"].as_array().expect("rules").iter().any(|r| {
                r["apiGroups"]
                    .as_array()
                    .is_some_and(|g| g.contains(&group.into()))
                    && r["resources"]
                        .as_array()
                        .is_some_and(|g| g.contains(&plural.into()))
                    && r["verbs"].as_array().is_some_and(|v| v.contains(verb))
            })
        };
        for verb in need["verbs"].as_array().expect("verbs") {
            assert!(granted(verb), "{verb} on {plural} not granted: {role:#}");
        }
    }
}

/// Installs the overlay's CRD (a superset of the base's: the default rules and every other test
/// keep working with it) and waits until it is established.
async fn install_router_crd(s: &Scope) {
    let objects = kustomize(s, OVERLAY).await;
    let crd = rendered(
        &objects,
        "CustomResourceDefinition",
        "workflowexecutions.kubernaut.ai",
        OVERLAY,
    );
    let file = s.dir.path().join("router-crd.json");
    std::fs::write(&file, crd.to_string()).expect("CRD file");
    let file = file.display().to_string();
    s.env
        .kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "router-overlay",
            "-f",
            &file,
        ])
        .await;
    s.env
        .kubectl(&[
            "wait",
            "--for",
            "condition=Established",
            "crd/workflowexecutions.kubernaut.ai",
        ])
        .await;
}

/// A controller on the router rules, as the unprivileged identity, with these settings.
async fn start_router(s: &Scope, cooldown: &str, settings: &[&str]) -> ControllerProcess {
    let mut args = s.run_args(&repo_root().join(RULES), cooldown);
    for setting in settings {
        args.extend(["--set".to_string(), setting.to_string()]);
    }
    let mut c = ControllerProcess::spawn(s.env, s.dir.path(), "router", &args);
    c.wait_ready().await;
    c
}

/// Requests the controller sent for WorkflowExecutions to read them (lookups answered by the
/// cache send none).
const WFE_GETS: &str = "lifecycle_api_requests_total{verb=\"get\",kind=\"WorkflowExecution\"}";

/// Creates a WorkflowExecution of `target` running `workflow`.
async fn create(s: &Scope, name: &str, target: &str, workflow: &str) {
    let mut body = wfe_body(target);
    body["spec"]["workflowRef"]["workflowId"] = workflow.into();
    s.create(name, body).await;
}

#[tokio::test]
async fn a_busy_target_is_skipped_from_the_cache() {
    let s = Scope::new("router-busy").await;
    install_router_crd(&s).await;
    let ctl = start_router(&s, "1h", &[]).await;
    let target = format!("{}/deployment/busy", s.ns);
    let first = unique_name("first");
    create(&s, &first, &target, "restart-deployment").await;
    s.wait_phase(&first, "Running").await;

    let second = unique_name("second");
    create(&s, &second, &target, "scale-deployment").await;
    let skipped = s.wait_phase(&second, "Skipped").await;
    let message =
        format!("Another workflow execution '{first}' is already running for resource '{target}'");
    assert_eq!(text(&skipped, "/status/skipDetails/reason"), "ResourceBusy");
    assert_eq!(text(&skipped, "/status/skipDetails/message"), message);
    assert_eq!(
        text(&skipped, "/status/skipDetails/conflictingWorkflow/name"),
        first
    );
    assert_eq!(skipped["status"]["consecutiveFailures"], 0, "{skipped:#}");
    let events = s.wait_event(&second, "Skipped").await;
    assert!(events.iter().any(|e| e.note == message), "{events:?}");
    // one PipelineRun: the first one's
    assert_eq!(s.run_list().await.len(), 1);
    assert_eq!(
        text(&s.get(&first).await.expect("first"), "/status/phase"),
        "Running"
    );
    ctl.wait_metric("workflowexecution_skip_total{reason=\"ResourceBusy\"}", 1.0)
        .await;
    assert_eq!(ctl.metric(WFE_GETS).await, 0.0, "{}", ctl.metrics().await);
}

#[tokio::test]
async fn a_run_that_failed_while_executing_blocks_the_next_resource_of_its_target() {
    let s = Scope::new("router-blocked").await;
    install_router_crd(&s).await;
    let ctl = start_router(&s, "1h", &[]).await;
    let target = format!("{}/deployment/blocked", s.ns);
    let first = unique_name("first");
    create(&s, &first, &target, "restart-deployment").await;
    s.wait_phase(&first, "Running").await;
    let run = run_name(&target);
    let started = tekton::now();
    s.start_run(&run, &["restart"], &started).await;
    tekton::set_status(
        &s.runs(),
        &run,
        tekton::pipelinerun_finished(
            &run,
            &["restart"],
            "False",
            "Failed",
            &tekton::tasks_message(0, 1, 0, 0),
            &started,
            &tekton::now(),
        ),
    )
    .await;
    let failed = s.wait_phase(&first, "Failed").await;
    assert_eq!(
        failed["status"]["failureDetails"]["wasExecutionFailure"], true,
        "{failed:#}"
    );

    let second = unique_name("second");
    create(&s, &second, &target, "other-workflow").await;
    let skipped = s.wait_phase(&second, "Skipped").await;
    assert_eq!(
        text(&skipped, "/status/skipDetails/reason"),
        "PreviousExecutionFailed"
    );
    assert_eq!(
        text(&skipped, "/status/skipDetails/message"),
        format!(
            "Previous execution '{first}' failed during workflow run on target '{target}'. \
             Manual intervention required. Non-idempotent actions may have occurred."
        )
    );
    assert_eq!(
        text(&skipped, "/status/skipDetails/recentRemediation/name"),
        first
    );
    ctl.wait_metric(
        "workflowexecution_backoff_skip_total{reason=\"PreviousExecutionFailed\"}",
        1.0,
    )
    .await;
    assert_eq!(ctl.metric(WFE_GETS).await, 0.0, "{}", ctl.metrics().await);
}

#[tokio::test]
async fn a_failure_before_the_run_backs_the_target_off_until_next_allowed_execution() {
    let s = Scope::new("router-backoff").await;
    install_router_crd(&s).await;
    let ctl = start_router(&s, "0s", &["baseCooldown=8s", "maxCooldown=1m"]).await;
    let target = format!("{}/deployment/backoff", s.ns);
    let first = unique_name("first");
    create(&s, &first, &target, "restart-deployment").await;
    s.wait_phase(&first, "Running").await;
    // the PipelineRun deleted by someone else: a failure before the workflow ran
    s.runs()
        .delete(&run_name(&target), &DeleteParams::default())
        .await
        .expect("run deleted");
    let failed = s.wait_phase(&first, "Failed").await;
    assert_eq!(
        failed["status"]["failureDetails"]["wasExecutionFailure"], false,
        "{failed:#}"
    );
    assert_eq!(failed["status"]["consecutiveFailures"], 1, "{failed:#}");
    let next = text(&failed, "/status/nextAllowedExecution");
    let completion = text(&failed, "/status/completionTime");
    let secs = |t: &str| {
        lifecycle_engine::time::parse_secs(t).unwrap_or_else(|| panic!("not a time: {t}")) as i64
    };
    assert_eq!(secs(&next) - secs(&completion), 8, "{failed:#}");

    // within the backoff: skipped
    let second = unique_name("second");
    create(&s, &second, &target, "restart-deployment").await;
    let skipped = s.wait_phase(&second, "Skipped").await;
    assert_eq!(
        text(&skipped, "/status/skipDetails/reason"),
        "RecentlyRemediated"
    );
    let message = text(&skipped, "/status/skipDetails/message");
    assert!(
        message.starts_with(&format!(
            "Backoff active for target '{target}'. Next allowed: {next} (remaining: "
        )),
        "{message}"
    );

    // once it has passed: allowed, with the counter carried
    let wait = secs(&next) - secs(&tekton::now()) + 1;
    if wait > 0 {
        tokio::time::sleep(std::time::Duration::from_secs(wait as u64)).await;
    }
    let third = unique_name("third");
    create(&s, &third, &target, "restart-deployment").await;
    let running = s.wait_phase(&third, "Running").await;
    assert_eq!(running["status"]["consecutiveFailures"], 1, "{running:#}");
    assert_eq!(ctl.metric(WFE_GETS).await, 0.0, "{}", ctl.metrics().await);
}
