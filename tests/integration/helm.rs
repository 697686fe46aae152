//! The Helm chart (charts/lifecycle-engine) checked with the helm that scripts/testenv builds:
//! it lints; it renders the objects `kubectl kustomize deploy/` renders for the same settings; and
//! it installs, upgrades (with changed rules, which the running controller picks up) and
//! uninstalls against the real API server. No kubelet runs here, so the controller runs as a local
//! process with the installed Deployment's arguments and environment, its ConfigMaps laid out as
//! the kubelet mounts them, and a token of the installed ServiceAccount.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DynamicObject};
use serde_json::{Value, json};

use crate::deploy;
use crate::metrics_auth::{
    PROBES_SERVING, SECURE_SERVING, get, service_account_token, wait_address, wait_scrape,
    wait_synced,
};
use crate::support::{
    self, ConfigMapVolume, ControllerProcess, Scope, eventually, run_name, text, unique_name,
};
use crate::tekton;

const CHART: &str = "charts/lifecycle-engine";

/// A binary of `scripts/testenv bin` (kubectl, helm).
fn testenv_binary(name: &str) -> PathBuf {
    let out = std::process::Command::new(support::repo_root().join("scripts/testenv"))
        .arg("bin")
        .output()
        .expect("scripts/testenv bin");
    let path = Path::new(String::from_utf8_lossy(&out.stdout).trim()).join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/testenv build",
        path.display()
    );
    path
}

/// Runs a testenv binary with `KUBECONFIG` set (when given) in the repository's root; returns
/// its standard output, panicking with its error output when it fails.
fn run(binary: &str, args: &[&str], kubeconfig: Option<&Path>) -> String {
    let (ok, out, err) = run_result(binary, args, kubeconfig);
    assert!(ok, "{binary} {}:\n{err}\n{out}", args.join(" "));
    out
}

/// Runs a testenv binary as [`run`] does; returns whether it succeeded, its standard output and
/// its error output.
fn run_result(binary: &str, args: &[&str], kubeconfig: Option<&Path>) -> (bool, String, String) {
    let mut command = std::process::Command::new(testenv_binary(binary));
    command.args(args).current_dir(support::repo_root());
    // helm keeps its state (repositories, cache) under HOME: a folder of the test's own
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    match kubeconfig {
        Some(path) => command.env("KUBECONFIG", path),
        None => command.env_remove("KUBECONFIG"),
    };
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {binary}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The objects of a multi-document YAML stream.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).expect("a rendered object"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template` of the chart as release `lifecycle` in `lifecycle-system`, CRDs included.
fn helm_template(set: &[&str]) -> Vec<Value> {
    helm_template_of(CHART, set)
}

/// `helm template` of `chart` (a folder or a packaged chart) as [`helm_template`] does.
fn helm_template_of(chart: &str, set: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "lifecycle",
        chart,
        "--namespace",
        "lifecycle-system",
        "--include-crds",
    ];
    for s in set {
        args.extend(["--set", s]);
    }
    documents(&run("helm", &args, None))
}

/// What both installs must agree on, per object: everything but labels, annotations and label
/// selectors (Helm adds its release labels); of a Namespace, its Pod Security labels.
fn normalised(object: &Value) -> (String, Value) {
    let mut v = object.clone();
    let kind = text(&v, "/kind");
    let key = format!(
        "{kind} {}/{}",
        v["metadata"]["namespace"].as_str().unwrap_or(""),
        text(&v, "/metadata/name")
    );
    let labels = v["metadata"]["labels"].take();
    if let Some(meta) = v["metadata"].as_object_mut() {
        meta.remove("labels");
        meta.remove("annotations");
    }
    if kind == "Namespace" {
        let pod_security: serde_json::Map<String, Value> = labels
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("pod-security.kubernetes.io/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v["metadata"]["labels"] = Value::Object(pod_security);
    }
    if let Some(spec) = v["spec"].as_object_mut() {
        spec.remove("selector");
        if let Some(template) = spec.get_mut("template").and_then(Value::as_object_mut) {
            template.remove("metadata");
        }
    }
    (key, v)
}

/// Asserts that the chart with `set` renders what `kubectl kustomize dir` renders, but the
/// release namespace (made by `helm install --create-namespace` or beforehand).
fn assert_same_objects(dir: &str, set: &[&str]) {
    let kustomized = documents(&run(
        "kubectl",
        &[
            "kustomize",
            &support::repo_root().join(dir).display().to_string(),
        ],
        None,
    ));
    let from_kustomize: BTreeMap<String, Value> = kustomized
        .iter()
        .map(normalised)
        .filter(|(key, _)| key != "Namespace /lifecycle-system")
        .collect();
    let from_helm: BTreeMap<String, Value> = helm_template(set).iter().map(normalised).collect();
    let only = |a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>| -> Vec<String> {
        a.keys().filter(|k| !b.contains_key(*k)).cloned().collect()
    };
    assert!(
        from_kustomize.len() > 10,
        "kustomize renders too little: {:?}",
        from_kustomize.keys()
    );
    assert_eq!(
        (
            only(&from_kustomize, &from_helm),
            only(&from_helm, &from_kustomize)
        ),
        (vec![], vec![]),
        "objects only kustomize ({dir}) renders, and only helm ({set:?}) renders"
    );
    for (key, expected) in &from_kustomize {
        let got = &from_helm[key];
        assert!(
            got == expected,
            "{key} differs between kustomize ({dir}) and helm ({set:?}):\nkustomize: {}\nhelm:      {}",
            serde_json::to_string_pretty(expected).unwrap(),
            serde_json::to_string_pretty(got).unwrap()
        );
    }
}

#[test]
fn the_chart_lints() {
    let out = run("helm", &["lint", "--strict", CHART], None);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    // and with every optional object on
    let out = run(
        "helm",
        &[
            "lint",
            "--strict",
            CHART,
            "--set",
            "shards=2,replicas=2,metrics.serviceMonitor.enabled=true,networkPolicy.enabled=true,metrics.certSecret=tls",
        ],
        None,
    );
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn the_chart_renders_what_kustomize_renders() {
    assert_same_objects("deploy", &[]);
    assert_same_objects("deploy/overlays/ha", &["replicas=2"]);
}

/// The chart's files/ and crds/ are links into deploy/ (the one copy of the shipped rules and the
/// CRD): helm follows them when it renders the folder and when it packages the chart.
#[test]
fn the_chart_renders_and_packages_the_shipped_rules_and_the_crd() {
    let root = support::repo_root();
    let read = |path: &str| std::fs::read_to_string(root.join(path)).expect(path);
    let packages =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("helm-package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&packages);
    let out = run(
        "helm",
        &[
            "package",
            CHART,
            "--destination",
            &packages.display().to_string(),
        ],
        None,
    );
    assert!(out.contains("Successfully packaged"), "{out}");
    let package = std::fs::read_dir(&packages)
        .expect("the package folder")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .expect("a packaged chart");
    let from_package = helm_template_of(&package.display().to_string(), &[]);
    assert_eq!(
        from_package,
        helm_template(&[]),
        "the package renders otherwise"
    );
    let find = |kind: &str, name: &str| deploy::rendered(&from_package, kind, name, "the package");
    assert_eq!(
        find("ConfigMap", "lifecycle-rules")["data"]["lifecycle.yaml"],
        read("deploy/base/rules/lifecycle.yaml").as_str()
    );
    let templates = find("ConfigMap", "lifecycle-templates");
    let names = std::fs::read_dir(root.join("deploy/base/rules/templates"))
        .expect("the templates")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(!names.is_empty());
    for name in &names {
        assert_eq!(
            templates["data"][name.as_str()],
            read(&format!("deploy/base/rules/templates/{name}")).as_str(),
            "{name}"
        );
    }
    assert_eq!(
        templates["data"].as_object().map(|d| d.len()),
        Some(names.len())
    );
    let crd: Value =
        serde_yaml::from_str(&read("deploy/base/crds/workflowexecution.yaml")).expect("the CRD");
    assert_eq!(
        find(
            "CustomResourceDefinition",
            "workflowexecutions.kubernaut.ai"
        ),
        &crd
    );
    let _ = std::fs::remove_dir_all(&packages);
}

#[test]
fn no_rollout_of_the_chart_runs_two_acting_controllers() {
    for (set, elects) in [
        (&[][..], false),
        (&["replicas=2"][..], true),
        (&["leaderElection.enabled=true"][..], true),
        (&["shards=2"][..], false),
        (&["shards=2", "replicas=2"][..], true),
    ] {
        let objects = helm_template(set);
        let deployments: Vec<&Value> = objects
            .iter()
            .filter(|o| o["kind"] == "Deployment")
            .collect();
        assert!(!deployments.is_empty(), "{set:?}");
        for d in deployments {
            let what = format!("{set:?} {}", text(d, "/metadata/name"));
            assert_eq!(deploy::leader_elects(d), elects, "{what}");
            deploy::assert_rollout_never_overlaps(&what, d);
        }
    }
    // a strategy given by hand: Recreate is always safe; a RollingUpdate without leader election
    // is refused with a message that says why
    let objects = helm_template(&["strategy.type=Recreate", "replicas=2"]);
    let d = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
    let (ok, _, err) = run_result(
        "helm",
        &[
            "template",
            "lifecycle",
            CHART,
            "--set",
            "strategy.type=RollingUpdate",
        ],
        None,
    );
    assert!(!ok, "a RollingUpdate without leader election rendered");
    assert!(
        err.contains(
            "a RollingUpdate without leader election runs the old and the new controller at once"
        ),
        "{err}"
    );
}

#[test]
fn the_chart_renders_shards_and_the_optional_objects() {
    let objects = helm_template(&[
        "shards=2",
        "replicas=2",
        "metrics.serviceMonitor.enabled=true",
        "networkPolicy.enabled=true",
        "metrics.readers[0].kind=ServiceAccount",
        "metrics.readers[0].name=prometheus",
        "metrics.readers[0].namespace=monitoring",
        "executionNamespace.name=elsewhere",
        "rules.set.cooldown=10m",
    ]);
    let find = |kind: &str, name: &str| deploy::rendered(&objects, kind, name, "the chart");
    for index in 0..2 {
        let d = find("Deployment", &format!("lifecycle-controller-shard-{index}"));
        let args: Vec<&str> = d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for expected in [
            format!("--shard-index={index}"),
            "--shard-count=2".into(),
            "--leader-elect".into(),
            "--set=executionNamespace=elsewhere".into(),
            "--set=cooldown=10m".into(),
        ] {
            assert!(args.contains(&expected.as_str()), "{expected}: {args:?}");
        }
        assert_eq!(
            d["spec"]["selector"]["matchLabels"]["lifecycle-engine.io/shard"],
            index.to_string()
        );
        assert_eq!(
            d["spec"]["template"]["metadata"]["labels"]["lifecycle-engine.io/shard"],
            index.to_string()
        );
    }
    assert_eq!(
        find("Role", "lifecycle-controller")["metadata"]["namespace"],
        "elsewhere"
    );
    assert_eq!(
        find("Namespace", "elsewhere")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let monitor = find("ServiceMonitor", "lifecycle-controller");
    assert_eq!(monitor["spec"]["endpoints"][0]["scheme"], "https");
    let policy = find("NetworkPolicy", "lifecycle-controller");
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], 8443);
    let binding = find("ClusterRoleBinding", "lifecycle-metrics-reader");
    assert_eq!(binding["subjects"][0]["name"], "prometheus");
    // plain metrics: no TokenReview RBAC, a plain port
    let plain = helm_template(&["metrics.secure=false"]);
    assert!(
        !plain
            .iter()
            .any(|o| o["metadata"]["name"] == "lifecycle-controller-metrics-auth"),
        "metrics auth RBAC without secure metrics"
    );
    let d = plain
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    let args = d["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(!args.contains("--metrics-secure"), "{args}");
}

/// A kubeconfig for the control plane of `env` that authenticates with `token` (a
/// ServiceAccount's), written to `path`.
fn kubeconfig_with_token(env: &support::TestEnv, token: &str, path: &Path) {
    let admin: Value =
        serde_yaml::from_str(&std::fs::read_to_string(env.kubeconfig()).expect("kubeconfig"))
            .expect("kubeconfig YAML");
    let cluster = admin["clusters"][0]["cluster"].clone();
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": cluster}],
        "users": [{"name": "installed", "user": {"token": token}}],
        "contexts": [{"name": "installed", "context": {"cluster": "testenv", "user": "installed"}}],
        "current-context": "installed",
    });
    std::fs::write(path, serde_yaml::to_string(&config).unwrap()).expect("writing a kubeconfig");
}

/// The files of the rules ConfigMaps a Deployment mounts, as the kubelet lays them out under
/// `root`; returns the volumes (to update them later) by ConfigMap name.
async fn mount_config_maps(
    s: &Scope,
    deployment: &Value,
    root: &Path,
) -> BTreeMap<String, ConfigMapVolume> {
    let pod = &deployment["spec"]["template"]["spec"];
    let mut volumes = BTreeMap::new();
    for mount in pod["containers"][0]["volumeMounts"].as_array().unwrap() {
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mounted volume");
        let name = text(volume, "/configMap/name");
        let files = config_map_files(s, &name).await;
        let files: Vec<(&str, String)> =
            files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let path = root.join(text(mount, "/mountPath").trim_start_matches('/'));
        volumes.insert(name, ConfigMapVolume::create(&path, &files));
    }
    volumes
}

async fn config_map_files(s: &Scope, name: &str) -> Vec<(String, String)> {
    let map = Api::<ConfigMap>::namespaced(s.admin.clone(), &s.ns)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("ConfigMap {name}: {e}"));
    map.data.unwrap_or_default().into_iter().collect()
}

#[tokio::test]
async fn the_chart_installs_upgrades_with_new_rules_and_uninstalls() {
    let s = Scope::new("helm").await;
    let kubeconfig = s.env.kubeconfig().to_path_buf();
    let release = unique_name("rel");
    let fullname = format!("{release}-controller");
    // a namespace of the chart's making for the executions, other names than any other test's
    let exec_ns = unique_name("helm-exec");
    let values = [
        format!("fullnameOverride={fullname}"),
        format!("executionNamespace.name={exec_ns}"),
        format!("run.namespace={}", s.ns),
        "run.logFormat=text".to_string(),
        "rules.set.pollInterval=1s".to_string(),
        "metrics.readers[0].kind=ServiceAccount".to_string(),
        "metrics.readers[0].name=scraper".to_string(),
        format!("metrics.readers[0].namespace={}", s.ns),
    ];
    let mut install = vec!["install", &release, CHART, "--namespace", &s.ns];
    for v in &values {
        install.extend(["--set", v.as_str()]);
    }
    let out = run("helm", &install, Some(&kubeconfig));
    assert!(out.contains("STATUS: deployed"), "{out}");

    let deployments = Api::<Deployment>::namespaced(s.admin.clone(), &s.ns);
    let deployment =
        serde_json::to_value(deployments.get(&fullname).await.expect("the Deployment")).unwrap();
    let ns = Api::<Namespace>::all(s.admin.clone())
        .get(&exec_ns)
        .await
        .expect("the execution namespace");
    assert_eq!(
        ns.metadata.labels.unwrap_or_default()["pod-security.kubernetes.io/enforce"],
        "restricted"
    );

    // the installed Deployment, run as a local process with the installed identity
    let root = s.dir.path().join("pod");
    let mut volumes = mount_config_maps(&s, &deployment, &root).await;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .map(|a| {
            if let Some(path) = a.strip_prefix("--rules=") {
                format!(
                    "--rules={}",
                    root.join(path.trim_start_matches('/')).display()
                )
            } else if let Some((flag, _)) = a.split_once('=')
                && matches!(flag, "--metrics-address" | "--health-address")
            {
                format!("{flag}=127.0.0.1:0")
            } else {
                a.to_string()
            }
        })
        .collect();
    assert!(args.contains(&"--metrics-secure".to_string()), "{args:?}");
    let token = service_account_token(&s.admin, &s.ns, &fullname).await;
    let own_kubeconfig = s.dir.path().join("installed.kubeconfig");
    kubeconfig_with_token(s.env, &token, &own_kubeconfig);
    let pod_name = format!("{fullname}-7d9f8b6c5d-q2x8z");
    let vars = [
        ("KUBECONFIG", own_kubeconfig.to_str().unwrap()),
        ("POD_NAME", pod_name.as_str()),
        ("POD_NAMESPACE", s.ns.as_str()),
    ];
    let mut ctl = ControllerProcess::spawn_with_env(s.env, s.dir.path(), "helm", &args, &vars);
    let metrics = wait_address(&mut ctl, SECURE_SERVING).await;
    let health = wait_address(&mut ctl, PROBES_SERVING).await;
    wait_synced(health).await;

    // the default lifecycle, through the chart's RBAC
    let name = unique_name("charted");
    let target = "default/deployment/charted";
    s.create_wfe(&name, target).await;
    let running = s.wait_phase(&name, "Running").await;
    let events = s.wait_event(&name, "PipelineRunCreated").await;
    assert_eq!(events[0].instance, pod_name);
    let runs: Api<DynamicObject> =
        Api::namespaced_with(s.admin.clone(), &exec_ns, &tekton::pipelineruns());
    let run_name = run_name(target);
    tekton::set_status(
        &runs,
        &run_name,
        tekton::pipelinerun_finished(
            &run_name,
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

    // the scraper the values name reads the metrics over HTTPS
    let scraper = service_account_token(&s.admin, &s.ns, "scraper").await;
    let body = wait_scrape(&format!("https://{metrics}/metrics"), &scraper).await;
    assert!(
        body.contains("workflowexecution_reconciler_pipelinerun_creations_total 1"),
        "{body}"
    );

    // upgrade with other rules: a cooldown of 1 s releases the lock the default 5 min still holds
    let (_, before) = get(&format!("http://{health}/readyz"), None)
        .await
        .expect("/readyz");
    assert!(runs.get_opt(&run_name).await.unwrap().is_some());
    let rules = std::fs::read_to_string(support::repo_root().join("lifecycle.yaml")).unwrap();
    let changed = rules.replacen("  cooldown: 5m ", "  cooldown: 1s ", 1);
    assert_ne!(changed, rules, "lifecycle.yaml sets `  cooldown: 5m `");
    let changed_file = s.dir.path().join("changed-lifecycle.yaml");
    std::fs::write(&changed_file, &changed).unwrap();
    let rules_file = format!("rules.lifecycle={}", changed_file.display());
    let upgrade = [
        "upgrade",
        &release,
        CHART,
        "--namespace",
        &s.ns,
        "--reuse-values",
        "--set-file",
        &rules_file,
    ];
    let out = run("helm", &upgrade, Some(&kubeconfig));
    assert!(out.contains("STATUS: deployed"), "{out}");
    let upgraded = serde_json::to_value(deployments.get(&fullname).await.unwrap()).unwrap();
    assert_eq!(
        upgraded["spec"]["template"], deployment["spec"]["template"],
        "a rules change must not restart the pods"
    );
    // the kubelet's part: the mounted files follow the ConfigMaps
    for (config_map, volume) in volumes.iter_mut() {
        let files = config_map_files(&s, config_map).await;
        let files: Vec<(&str, String)> =
            files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        volume.update(&files);
    }
    assert_eq!(
        config_map_files(&s, &format!("{release}-rules")).await,
        vec![("lifecycle.yaml".to_string(), changed.clone())]
    );
    eventually(Duration::from_secs(30), "the rules to reload", || async {
        ctl.log().contains("rules reloaded").then_some(())
    })
    .await;
    s.wait_event(&name, "LockReleased").await;
    eventually(Duration::from_secs(30), "the run to be deleted", || async {
        runs.get_opt(&run_name)
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
    let (_, after) = get(&format!("http://{health}/readyz"), None).await.unwrap();
    assert_ne!(after, before, "/readyz shows another rules revision");

    // uninstall: the release's objects go, the CRD and the execution namespace stay
    let out = run(
        "helm",
        &["uninstall", &release, "--namespace", &s.ns],
        Some(&kubeconfig),
    );
    assert!(out.contains("uninstalled"), "{out}");
    assert!(deployments.get_opt(&fullname).await.unwrap().is_none());
    assert!(
        Api::<ClusterRole>::all(s.admin.clone())
            .get_opt(&fullname)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<ConfigMap>::namespaced(s.admin.clone(), &s.ns)
            .get_opt(&format!("{release}-rules"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<Namespace>::all(s.admin.clone())
            .get_opt(&exec_ns)
            .await
            .unwrap()
            .is_some(),
        "the execution namespace is kept"
    );
    s.wfes()
        .get(&name)
        .await
        .expect("the CRD and its objects stay");
}
