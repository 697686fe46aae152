//! deploy/ checked against the real control plane: the kustomizations apply (server-side dry
//! run), the CRD guards spec and status, and the ways to run more than one controller process
//! (leader election, shards) keep every lock acted on by exactly one process.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::support::{
    self, ConfigMapVolume, ControllerProcess, Scope, api_code, eventually, run_name, text,
    unique_name, wfe_body,
};
use crate::tekton;

/// Creates namespace `name` unless it exists.
async fn ensure_namespace(scope: &Scope, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match Api::<Namespace>::all(scope.admin.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(e) if api_code(&e) == Some(409) => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

/// `kubectl apply -k <dir> --dry-run=server` succeeds and lists every object deploy/ ships.
pub(crate) async fn assert_applies(dir: &str, extra: &[&str]) {
    let s = Scope::new("deploy").await;
    // a server-side dry run creates nothing, namespaces included: they must exist already
    ensure_namespace(&s, support::controller_namespace()).await;
    ensure_namespace(&s, &support::default_execution_namespace()).await;
    let path = support::repo_root().join(dir).display().to_string();
    let (ok, out, err) = s
        .env
        .kubectl_result(&["apply", "-k", &path, "--dry-run=server"])
        .await;
    assert!(
        ok,
        "kubectl apply -k {dir} --dry-run=server failed:\n{err}\n{out}"
    );
    let objects = [
        "customresourcedefinition.apiextensions.k8s.io/workflowexecutions.kubernaut.ai",
        "namespace/lifecycle-system",
        "namespace/kubernaut-workflows",
        "serviceaccount/lifecycle-controller",
        "clusterrole.rbac.authorization.k8s.io/lifecycle-controller",
        "clusterrolebinding.rbac.authorization.k8s.io/lifecycle-controller",
        "role.rbac.authorization.k8s.io/lifecycle-controller",
        "rolebinding.rbac.authorization.k8s.io/lifecycle-controller",
        "role.rbac.authorization.k8s.io/lifecycle-controller-leases",
        "rolebinding.rbac.authorization.k8s.io/lifecycle-controller-leases",
        "role.rbac.authorization.k8s.io/lifecycle-controller-revisions",
        "rolebinding.rbac.authorization.k8s.io/lifecycle-controller-revisions",
        "configmap/lifecycle-rules",
        "configmap/lifecycle-templates",
        "deployment.apps/lifecycle-controller",
        "service/lifecycle-controller-metrics",
        "poddisruptionbudget.policy/lifecycle-controller",
    ];
    for object in objects.iter().chain(extra) {
        assert!(
            out.lines()
                .any(|l| l.starts_with(object) && l.ends_with("(server dry run)")),
            "{dir}: {object} missing from:\n{out}"
        );
    }
}

#[tokio::test]
async fn the_kustomization_applies_with_a_server_side_dry_run() {
    assert_applies("deploy", &[]).await;
}

#[tokio::test]
async fn the_ha_overlay_applies_with_a_server_side_dry_run() {
    assert_applies("deploy/overlays/ha", &[]).await;
}

#[tokio::test]
async fn the_tekton_runner_overlay_applies_with_a_server_side_dry_run() {
    assert_applies(
        "deploy/overlays/tekton-runner",
        &["serviceaccount/kubernaut-workflow-runner"],
    )
    .await;
}

/// The objects `kubectl kustomize <dir>` renders.
pub(crate) async fn kustomize(s: &Scope, dir: &str) -> Vec<Value> {
    let path = support::repo_root().join(dir).display().to_string();
    let out = s.env.kubectl(&["kustomize", &path]).await;
    serde_yaml::Deserializer::from_str(&out)
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).expect("a rendered object"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The object of `kind` and `name` among rendered `objects`; panics saying what rendered them.
pub(crate) fn rendered<'a>(objects: &'a [Value], kind: &str, name: &str, what: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{what} renders no {kind} {name}"))
}

/// Whether a Deployment runs its controller with leader election.
pub(crate) fn leader_elects(deployment: &Value) -> bool {
    deployment
        .pointer("/spec/template/spec/containers/0/args")
        .and_then(Value::as_array)
        .is_some_and(|args| args.iter().any(|a| a == "--leader-elect"))
}

/// Asserts that rolling out a Deployment never runs two acting controllers. Without leader
/// election the old pod must be gone before the new one starts (Recreate, one replica); with it
/// only the Lease holder acts, so a rolling update is right, and maxUnavailable 0 keeps a ready
/// standby throughout (a leader hands over on SIGTERM, partition.rs shows it).
pub(crate) fn assert_rollout_never_overlaps(what: &str, deployment: &Value) {
    let strategy = &deployment["spec"]["strategy"];
    // the API server's default when no type is given
    let kind = strategy["type"].as_str().unwrap_or("RollingUpdate");
    if leader_elects(deployment) {
        assert_eq!(kind, "RollingUpdate", "{what}: {strategy}");
        assert_eq!(
            strategy["rollingUpdate"]["maxUnavailable"], 0,
            "{what}: {strategy}"
        );
    } else {
        assert_eq!(
            kind, "Recreate",
            "{what}: without leader election a rolling update runs two controllers: {strategy}"
        );
        assert_eq!(
            deployment["spec"]["replicas"].as_u64().unwrap_or(1),
            1,
            "{what}: more than one replica without leader election"
        );
    }
}

#[tokio::test]
async fn no_rollout_of_the_kustomizations_runs_two_acting_controllers() {
    let s = Scope::new("strategy").await;
    for (dir, elects) in [
        ("deploy", false),
        ("deploy/overlays/ha", true),
        ("deploy/overlays/tekton-runner", false),
        ("deploy/overlays/router", false),
    ] {
        let objects = kustomize(&s, dir).await;
        let deployments: Vec<&Value> = objects
            .iter()
            .filter(|o| o["kind"] == "Deployment")
            .collect();
        assert_eq!(deployments.len(), 1, "{dir}: {deployments:#?}");
        assert_eq!(leader_elects(deployments[0]), elects, "{dir}");
        assert_rollout_never_overlaps(dir, deployments[0]);
    }
}

#[tokio::test]
async fn the_deployment_as_shipped_runs_the_default_lifecycle() {
    // deploy/ rendered by kustomize: the Deployment's own arguments and environment, its
    // ConfigMaps laid out as the kubelet mounts them at the Deployment's mount paths
    let s = Scope::new("shipped").await;
    let objects = kustomize(&s, "deploy").await;
    let find = |kind: &str, name: &str| rendered(&objects, kind, name, "deploy/");
    let deployment = find("Deployment", "lifecycle-controller");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let root = s.dir.path().join("pod");
    let mut mounts: Vec<(String, String)> = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| (text(m, "/mountPath"), text(m, "/name")))
        .collect();
    mounts.sort();
    for (path, volume) in &mounts {
        let source = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume.as_str())
            .expect("the mounted volume");
        let config_map = find("ConfigMap", &text(source, "/configMap/name"));
        let files: Vec<(&str, String)> = config_map["data"]
            .as_object()
            .expect("ConfigMap data")
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        ConfigMapVolume::create(&root.join(path.trim_start_matches('/')), &files);
    }
    // The endpoints are read over plain HTTP on one loopback port here; the secure /metrics
    // the Deployment turns on is checked in metrics_auth.rs and helm.rs.
    let mut args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter(|a| {
            let a = a.as_str().unwrap_or_default();
            a != "--metrics-secure" && !a.starts_with("--health-address=")
        })
        .map(|a| {
            let a = a.as_str().unwrap_or_default();
            if let Some(path) = a.strip_prefix("--rules=") {
                format!(
                    "--rules={}",
                    root.join(path.trim_start_matches('/')).display()
                )
            } else if a.starts_with("--metrics-address=") {
                "--metrics-address=127.0.0.1:0".to_string()
            } else {
                a.to_string()
            }
        })
        .collect();
    // what a test adds: its identity, its namespaces
    args.extend(
        [
            "--context",
            support::CONTROLLER_CONTEXT,
            "--namespace",
            &s.ns,
            "--set",
            &format!("executionNamespace={}", s.exec_ns),
        ]
        .map(String::from),
    );
    let mut vars = Vec::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let value = match var
            .pointer("/valueFrom/fieldRef/fieldPath")
            .and_then(Value::as_str)
        {
            Some("metadata.name") => "lifecycle-controller-6d4cf56db6-x7k2p".to_string(),
            Some("metadata.namespace") => s.ns.clone(),
            Some(other) => panic!("a field the test does not provide: {other}"),
            None => text(var, "/value"),
        };
        vars.push((text(var, "/name"), value));
    }
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut ctl = ControllerProcess::spawn_with_env(s.env, s.dir.path(), "shipped", &args, &vars);
    ctl.wait_ready().await;
    assert_eq!(ctl.healthz().await.map(|(c, _)| c), Some(200));

    let name = unique_name("shipped");
    let target = "default/deployment/shipped";
    s.create_wfe(&name, target).await;
    let running = s.wait_phase(&name, "Running").await;
    let events = s.wait_event(&name, "PipelineRunCreated").await;
    assert_eq!(events[0].instance, "lifecycle-controller-6d4cf56db6-x7k2p");
    let run = run_name(target);
    tekton::set_status(
        &s.runs(),
        &run,
        tekton::pipelinerun_finished(
            &run,
            &[],
            "True",
            "Succeeded",
            "done",
            &text(&running, "/status/startTime"),
            &text(&running, "/status/startTime"),
        ),
    )
    .await;
    s.wait_phase(&name, "Completed").await;
    // --audit=stdout: the records are JSON lines among the (JSON) logs
    eventually(
        Duration::from_secs(30),
        "the audit records on stdout",
        || async {
            let records: Vec<Value> = ctl
                .log()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|r| r["resource_id"] == name.as_str())
                .collect();
            (records.len() == 2).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn the_crd_keeps_spec_immutable_and_phases_known_even_for_the_controller() {
    let s = Scope::new("crd").await;
    let _ctl = s.start("ctl", "1h").await;
    let name = unique_name("guarded");
    s.create_wfe(&name, "default/deployment/guarded").await;
    s.wait_phase(&name, "Running").await;
    let as_controller: Api<DynamicObject> = Api::namespaced_with(
        s.env.controller().await,
        &s.ns,
        &support::workflowexecutions(),
    );
    for (who, api) in [("admin", s.wfes()), ("controller", as_controller)] {
        let err = api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"targetResource": "default/deployment/other"}})),
            )
            .await
            .expect_err("a spec change must be rejected");
        assert_eq!(api_code(&err), Some(422), "{who}: {err}");
        assert!(
            err.to_string().contains("spec is immutable"),
            "{who}: {err}"
        );
        let err = api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Paused"}})),
            )
            .await
            .expect_err("an unknown phase must be rejected");
        assert_eq!(api_code(&err), Some(422), "{who}: {err}");
        assert!(err.to_string().contains("status.phase"), "{who}: {err}");
    }
    let v = s.get(&name).await.unwrap();
    assert_eq!(v["status"]["phase"], "Running");
    assert_eq!(v["spec"]["targetResource"], "default/deployment/guarded");
}

/// `lifecycle run` arguments for one replica with leader election in `lease_ns`.
fn replica_args(s: &Scope, identity: &str, lease_ns: &str) -> Vec<String> {
    let mut args = s.run_args(&support::repo_root().join("lifecycle.yaml"), "1h");
    args.extend(
        [
            "--leader-elect",
            "--lease-namespace",
            lease_ns,
            "--identity",
            identity,
            "--lease-duration",
            "3s",
        ]
        .map(String::from),
    );
    args
}

async fn lease_holder(s: &Scope, lease_ns: &str) -> Option<Lease> {
    Api::<Lease>::namespaced(s.admin.clone(), lease_ns)
        .get_opt("workflowexecution-controller")
        .await
        .expect("reading the Lease")
}

fn holder(lease: &Lease) -> String {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

/// The names of the runs a process says it created.
fn created_by(process: &ControllerProcess) -> Vec<String> {
    let mut names: Vec<String> = process
        .log()
        .lines()
        .filter(|l| l.contains("created PipelineRun"))
        .filter_map(|l| l.split("execution=").nth(1))
        .filter_map(|e| e.split_whitespace().next())
        .filter_map(|e| e.split('/').nth(1))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn with_leader_election_only_the_leader_acts_and_a_standby_takes_over() {
    let s = Scope::new("leader").await;
    let lease_ns = s.env.namespace("lease").await;
    support::grant_namespaced_rbac(s.env, support::controller_namespace(), &lease_ns).await;

    let mut a =
        ControllerProcess::spawn(s.env, s.dir.path(), "a", &replica_args(&s, "a", &lease_ns));
    a.wait_ready().await;
    assert_eq!(holder(&lease_holder(&s, &lease_ns).await.unwrap()), "a");
    let mut b =
        ControllerProcess::spawn(s.env, s.dir.path(), "b", &replica_args(&s, "b", &lease_ns));
    b.wait_serving().await;
    eventually(Duration::from_secs(30), "b to stand by", || async {
        b.log()
            .contains("another replica leads; standing by")
            .then_some(())
    })
    .await;
    let (code, body) = b.readyz().await.expect("/readyz of b");
    assert_eq!(code, 200, "a standby is ready: {body}");
    assert!(body.contains("leader: false"), "{body}");

    let first = unique_name("first");
    let first_target = "default/deployment/first";
    s.create_wfe(&first, first_target).await;
    let running = s.wait_phase(&first, "Running").await;
    let events = s.wait_event(&first, "PipelineRunCreated").await;
    assert_eq!(events[0].instance, "a", "{events:?}");
    assert_eq!(created_by(&a), vec![run_name(first_target)]);
    assert_eq!(created_by(&b), Vec::<String>::new());
    assert!(!b.log().contains("transition"), "{}", b.log());
    assert_eq!(
        b.metric("lifecycle_reconciles_total{result=\"ok\"}").await,
        0.0
    );

    // the leader dies without a word; the standby takes the Lease once it expires
    a.kill();
    let lease = eventually(Duration::from_secs(20), "b to take the Lease", || async {
        lease_holder(&s, &lease_ns)
            .await
            .filter(|l| holder(l) == "b")
    })
    .await;
    assert_eq!(
        lease.spec.as_ref().unwrap().lease_transitions,
        Some(1),
        "{lease:?}"
    );
    b.wait_ready().await;

    // b finishes what a started and handles what comes next
    tekton::set_status(
        &s.runs(),
        &run_name(first_target),
        tekton::pipelinerun_finished(
            &run_name(first_target),
            &[],
            "True",
            "Succeeded",
            "done",
            &text(&running, "/status/startTime"),
            &text(&running, "/status/startTime"),
        ),
    )
    .await;
    s.wait_phase(&first, "Completed").await;
    let events = s.wait_event(&first, "WorkflowCompleted").await;
    assert_eq!(events[1].instance, "b", "{events:?}");
    let second = unique_name("second");
    s.create_wfe(&second, "default/deployment/second").await;
    s.wait_phase(&second, "Running").await;
    assert_eq!(created_by(&b), vec![run_name("default/deployment/second")]);

    // a comes back: it stands by while b holds the Lease
    let mut a2 = ControllerProcess::spawn(
        s.env,
        s.dir.path(),
        "a-again",
        &replica_args(&s, "a", &lease_ns),
    );
    a2.wait_serving().await;
    eventually(Duration::from_secs(30), "a to stand by", || async {
        a2.log()
            .contains("another replica leads; standing by")
            .then_some(())
    })
    .await;
    let third = unique_name("third");
    s.create_wfe(&third, "default/deployment/third").await;
    s.wait_phase(&third, "Running").await;
    assert_eq!(created_by(&a2), Vec::<String>::new());
    assert_eq!(holder(&lease_holder(&s, &lease_ns).await.unwrap()), "b");
    assert_eq!(s.run_list().await.len(), 3);
}

#[tokio::test]
async fn shards_split_the_resources_by_lock_and_together_handle_all() {
    let s = Scope::new("shards").await;
    // targets until each shard has three, plus a second resource for one target of each shard
    // (which must lose the race on that same shard) and an invalid one (empty target)
    let mut by_shard: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for i in 0.. {
        let target = format!("default/deployment/app-{i}");
        let shard = lifecycle_engine::runtime::k8s::shard_of(&run_name(&target), 2);
        let list = by_shard.entry(shard).or_default();
        if list.len() < 3 {
            list.push(target);
        }
        if by_shard.values().filter(|l| l.len() == 3).count() == 2 {
            break;
        }
    }
    let mut shards = Vec::new();
    for index in 0..2 {
        let mut args = s.run_args(&support::repo_root().join("lifecycle.yaml"), "1h");
        let identity = format!("shard-{index}");
        args.extend(
            [
                "--shard-index",
                &index.to_string(),
                "--shard-count",
                "2",
                "--identity",
                &identity,
            ]
            .map(String::from),
        );
        let mut p = ControllerProcess::spawn(s.env, s.dir.path(), &identity, &args);
        p.wait_ready().await;
        shards.push(p);
    }

    let mut resources: Vec<(String, String, u32)> = Vec::new();
    for (shard, targets) in &by_shard {
        for target in targets {
            resources.push((unique_name("sharded"), target.clone(), *shard));
        }
    }
    let invalid = unique_name("invalid");
    let invalid_shard = lifecycle_engine::runtime::k8s::shard_of(&run_name(""), 2);
    for (name, target, _) in &resources {
        s.create_wfe(name, target).await;
    }
    s.create(&invalid, wfe_body("")).await;
    for (name, _, _) in &resources {
        s.wait_phase(name, "Running").await;
    }
    // a second resource for a busy target of each shard loses the race on that shard
    let mut dups = Vec::new();
    for (shard, targets) in &by_shard {
        let name = unique_name("dup");
        s.create_wfe(&name, &targets[0]).await;
        dups.push((name, targets[0].clone(), *shard));
    }
    for (name, _, _) in &dups {
        let v = s.wait_phase(name, "Failed").await;
        assert_eq!(
            v["status"]["failureDetails"]["reason"], "ExecutionRaceCondition",
            "{v}"
        );
    }
    for (name, target, shard) in resources.iter().chain(&dups) {
        let reason = if name.starts_with("dup") {
            "WorkflowFailed"
        } else {
            "PipelineRunCreated"
        };
        let events = s.wait_event(name, reason).await;
        assert_eq!(events.len(), 1, "{name}: {events:?}");
        assert_eq!(
            events[0].instance,
            format!("shard-{shard}"),
            "{name} ({target})"
        );
    }
    let v = s.wait_phase(&invalid, "Failed").await;
    assert_eq!(
        v["status"]["failureDetails"]["reason"],
        "ConfigurationError"
    );
    let events = s.wait_event(&invalid, "WorkflowFailed").await;
    assert_eq!(events[0].instance, format!("shard-{invalid_shard}"));

    for (index, p) in shards.iter().enumerate() {
        let mut expected: Vec<String> = by_shard[&(index as u32)]
            .iter()
            .map(|t| run_name(t))
            .collect();
        expected.sort();
        assert_eq!(created_by(p), expected, "shard {index}");
        p.wait_metric(
            "workflowexecution_reconciler_pipelinerun_creations_total",
            3.0,
        )
        .await;
    }
    assert_eq!(s.run_list().await.len(), 6);
}

#[tokio::test]
async fn a_leader_that_loses_its_lease_exits() {
    let s = Scope::new("usurped").await;
    let lease_ns = s.env.namespace("lease").await;
    support::grant_namespaced_rbac(s.env, support::controller_namespace(), &lease_ns).await;
    let mut a =
        ControllerProcess::spawn(s.env, s.dir.path(), "a", &replica_args(&s, "a", &lease_ns));
    a.wait_ready().await;
    // another replica takes the Lease (as after a partition that outlasted it)
    let leases: Api<Lease> = Api::namespaced(s.admin.clone(), &lease_ns);
    let mut lease = lease_holder(&s, &lease_ns).await.expect("the Lease");
    let spec = lease.spec.get_or_insert_default();
    spec.holder_identity = Some("intruder".into());
    spec.lease_duration_seconds = Some(3600);
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        jiff::Timestamp::now(),
    ));
    leases
        .replace(
            "workflowexecution-controller",
            &PostParams::default(),
            &lease,
        )
        .await
        .expect("taking the Lease");
    let (code, log) = a.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(code, Some(3), "{log}");
    assert!(
        log.contains("leadership lost to another replica; exiting"),
        "{log}"
    );
    // and a new process stands by
    let mut b = ControllerProcess::spawn(
        s.env,
        s.dir.path(),
        "a-again",
        &replica_args(&s, "a", &lease_ns),
    );
    b.wait_serving().await;
    eventually(Duration::from_secs(30), "a to stand by", || async {
        b.log()
            .contains("another replica leads; standing by")
            .then_some(())
    })
    .await;
    let (code, body) = b.readyz().await.expect("/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("leader: false"), "{body}");
}
