//! A real control plane for the integration tests, set up once per test binary.
//!
//! Which control plane: the kubeconfig named by `LIFECYCLE_TEST_KUBECONFIG` (as written by
//! `scripts/testenv up`, with contexts `admin` and `controller`), or, when that variable is unset,
//! a private one that the first test starts through `scripts/testenv` (building the binaries first
//! if they are not cached, which needs Go) in `target/tmp/testenv-<pid>`; a watchdog stops it by
//! process id when this test process exits. `KUBECONFIG` is deliberately ignored, so a developer's
//! real cluster is never touched by accident. There is no fallback that skips the tests: without a
//! control plane they fail and say why.
//!
//! Every CRD in `deploy/crds/` and `tests/crds/` is installed with server-side apply and awaited
//! until Established. Tests share the control plane, so each takes its own namespace
//! ([`TestEnv::namespace`]) and unique object names ([`unique_name`]). No controller-manager runs:
//! nothing is garbage collected and namespaces never finish deleting, so tests do not clean up.
//!
//! What must not happen here: the kube `Client`s are not stored in the shared state, because each
//! `#[tokio::test]` has its own runtime and a client's connections die with the runtime that made
//! them; tests ask for fresh clients instead (cheap).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use lifecycle_testsupport::controlplane::{self, Testenv, install_crds};
use tokio::sync::OnceCell;

// Like the rest of this module: helpers not every test uses.
#[allow(unused_imports)]
pub use lifecycle_testsupport::controlplane::{
    ADMIN_CONTEXT, CONTROLLER_CONTEXT, CONTROLLER_USER, read_crds,
};
pub use lifecycle_testsupport::{api_code, repo_root};

// The processes a test runs: `lifecycle run`, a control plane of its own, a ConfigMap volume.
mod process;
pub use process::{ConfigMapVolume, ControllerProcess, PrivateControlPlane, metric_value};

/// Environment variable naming the kubeconfig of an already running test control plane.
pub const KUBECONFIG_VAR: &str = "LIFECYCLE_TEST_KUBECONFIG";
/// Field manager used by the tests' server-side applies.
pub const FIELD_MANAGER: &str = "lifecycle-integration-tests";

static ENV: OnceCell<Result<TestEnv, String>> = OnceCell::const_new();
static LOG_DIR: OnceLock<PathBuf> = OnceLock::new();
static LOGS_PRINTED: AtomicBool = AtomicBool::new(false);
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The shared control plane: where its kubeconfig and logs are.
#[derive(Debug)]
pub struct TestEnv {
    kubeconfig: PathBuf,
    log_dir: Option<PathBuf>,
}

/// The control plane, started or connected on first use, with all CRDs installed.
///
/// Panics (failing the test) with the reason when there is none to be had.
pub async fn env() -> &'static TestEnv {
    match ENV
        .get_or_init(|| async { init().await.map_err(|e| format!("{e:#}")) })
        .await
    {
        Ok(env) => env,
        Err(e) => panic!("no test control plane: {e}"),
    }
}

impl TestEnv {
    /// Path of the kubeconfig (contexts `admin` and `controller`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Directory holding `etcd.log` and `kube-apiserver.log`, when known.
    pub fn log_dir(&self) -> Option<&Path> {
        self.log_dir.as_deref()
    }

    /// A client acting as the cluster administrator.
    pub async fn admin(&self) -> Client {
        controlplane::client(&self.kubeconfig, ADMIN_CONTEXT)
            .await
            .expect("admin client")
    }

    /// A client acting as the unprivileged controller identity ([`CONTROLLER_USER`]).
    pub async fn controller(&self) -> Client {
        controlplane::client(&self.kubeconfig, CONTROLLER_CONTEXT)
            .await
            .expect("controller client")
    }

    /// Runs the kubectl built with the control plane against it (admin context unless `args`
    /// say otherwise) and returns its standard output; panics with its error output on failure.
    pub async fn kubectl(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.kubectl_result(args).await;
        assert!(ok, "kubectl {}: {stderr}", args.join(" "));
        stdout
    }

    /// Runs the built kubectl like [`TestEnv::kubectl`]; returns whether it succeeded, its
    /// standard output and its error output.
    pub async fn kubectl_result(&self, args: &[&str]) -> (bool, String, String) {
        let out = controlplane::kubectl(&self.kubeconfig, args)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Creates a fresh namespace for one test and returns its name.
    pub async fn namespace(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {"lifecycle-engine.test/process": std::process::id().to_string()},
            },
        }))
        .expect("namespace object");
        Api::<Namespace>::all(self.admin().await)
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        name
    }
}

/// A name no other test in any run against the same control plane uses: `<prefix>-<n>-<random>`,
/// a valid DNS label as long as the prefix is one of at most 40 characters.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(n);
    hasher.write_u32(std::process::id());
    format!("{prefix}-{n}-{:06x}", hasher.finish() & 0xff_ffff)
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last `lines` lines of each control-plane log, for a failure report.
pub fn log_tails(lines: usize) -> String {
    match LOG_DIR.get() {
        Some(dir) => controlplane::log_tails(dir, lines),
        None => "(control-plane log location unknown)\n".to_string(),
    }
}

async fn init() -> anyhow::Result<TestEnv> {
    let kubeconfig = match std::env::var_os(KUBECONFIG_VAR) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => start_private().await?,
    };
    anyhow::ensure!(
        kubeconfig.is_file(),
        "{KUBECONFIG_VAR} names {}, which is not a file",
        kubeconfig.display()
    );
    // scripts/testenv keeps the logs next to the kubeconfig.
    let dir = kubeconfig.parent().map(Path::to_path_buf);
    let log_dir = dir.filter(|d| d.join("kube-apiserver.log").is_file());
    if let Some(dir) = &log_dir {
        let _ = LOG_DIR.set(dir.clone());
        install_log_hook();
    }
    let client = controlplane::client(&kubeconfig, ADMIN_CONTEXT).await?;
    install_crds(client, FIELD_MANAGER).await?;
    Ok(TestEnv {
        kubeconfig,
        log_dir,
    })
}

/// Starts a control plane of this process's own, stopped by a watchdog when the process exits.
async fn start_private() -> anyhow::Result<PathBuf> {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    controlplane::remove_stale_state(base, "testenv-");
    let dir = base.join(format!("testenv-{}", std::process::id()));
    eprintln!(
        "{KUBECONFIG_VAR} is not set: starting a private control plane in {} (scripts/test starts one for the whole run)",
        dir.display()
    );
    Testenv::build().await.map_err(|e| {
        e.context(format!(
            "no control plane for the tests (or set {KUBECONFIG_VAR} to name a running one)"
        ))
    })?;
    Testenv::new(dir).up(Some(std::process::id())).await
}

/// On the first failing test, prints where the logs are and their tails (into that test's output).
fn install_log_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        if !LOGS_PRINTED.swap(true, Ordering::SeqCst) {
            eprintln!(
                "control-plane logs (printed once, for the first failure):\n{}",
                log_tails(40)
            );
        }
    }));
}

// ---------------------------------------------------------------------------------------------
// The controller under test: RBAC from deploy/, per-test scopes, `lifecycle run` as a process.
// ---------------------------------------------------------------------------------------------

/// Namespace of the controller's own ServiceAccount (`lifecycle-system`), where deploy/ puts the
/// leader-election Lease and its Role.
pub fn controller_namespace() -> &'static str {
    CONTROLLER_USER
        .split(':')
        .nth(2)
        .expect("the controller user names a namespace")
}

/// The default execution namespace of lifecycle.yaml (`settings.executionNamespace`), where
/// deploy/rbac.yaml grants the controller its PipelineRun and TaskRun verbs.
pub fn default_execution_namespace() -> String {
    let text = std::fs::read_to_string(repo_root().join("lifecycle.yaml")).expect("lifecycle.yaml");
    let rules: serde_json::Value = serde_yaml::from_str(&text).expect("lifecycle.yaml is YAML");
    rules["settings"]["executionNamespace"]
        .as_str()
        .expect("lifecycle.yaml sets settings.executionNamespace")
        .to_string()
}

/// The RBAC objects deploy/ installs (deploy/rbac.yaml, as `kubectl kustomize deploy/` renders
/// it, so that the tests grant exactly what an installation grants, wherever the file lives).
pub fn rbac_documents() -> Vec<serde_json::Value> {
    static DOCS: OnceLock<Vec<serde_json::Value>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let kubectl = controlplane::kubectl_path().unwrap_or_else(|e| panic!("{e:#}"));
        let out = std::process::Command::new(&kubectl)
            .arg("kustomize")
            .arg(repo_root().join("deploy"))
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", kubectl.display()));
        assert!(
            out.status.success(),
            "kubectl kustomize deploy/: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        serde_yaml::Deserializer::from_str(&text)
            .map(|doc| {
                <serde_json::Value as serde::Deserialize>::deserialize(doc)
                    .unwrap_or_else(|e| panic!("kubectl kustomize deploy/: {e}"))
            })
            .filter(|v| {
                v["apiVersion"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("rbac.authorization.k8s.io/"))
            })
            .collect()
    })
    .clone()
}

static CLUSTER_RBAC: OnceCell<()> = OnceCell::const_new();

/// Applies the ClusterRoles and ClusterRoleBindings of deploy/ (server-side, so again and
/// again is harmless), once per test process, and waits until the controller identity may watch
/// WorkflowExecutions.
pub async fn install_cluster_rbac(env: &TestEnv) {
    CLUSTER_RBAC.get_or_init(|| apply_cluster_rbac(env)).await;
}

/// Applies the ClusterRoles and ClusterRoleBindings of deploy/ to `env` (every time it is
/// called: for a control plane of a test's own) and waits until they take effect.
pub async fn apply_cluster_rbac(env: &TestEnv) {
    {
        {
            use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
            let admin = env.admin().await;
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let mut roles = 0;
            for doc in rbac_documents() {
                let name = doc["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                match doc["kind"].as_str() {
                    Some("ClusterRole") => {
                        roles += 1;
                        let role: ClusterRole = serde_json::from_value(doc).expect("ClusterRole");
                        Api::<ClusterRole>::all(admin.clone())
                            .patch(&name, &params, &Patch::Apply(&role))
                            .await
                            .unwrap_or_else(|e| panic!("applying ClusterRole {name}: {e}"));
                    }
                    Some("ClusterRoleBinding") => {
                        let binding: ClusterRoleBinding =
                            serde_json::from_value(doc).expect("ClusterRoleBinding");
                        Api::<ClusterRoleBinding>::all(admin.clone())
                            .patch(&name, &params, &Patch::Apply(&binding))
                            .await
                            .unwrap_or_else(|e| panic!("applying ClusterRoleBinding {name}: {e}"));
                    }
                    _ => {}
                }
            }
            assert!(roles > 0, "deploy/ has no ClusterRole");
            wait_until_allowed(env, "watch", "kubernaut.ai", "workflowexecutions", None).await;
        }
    }
}

/// Creates, in `target`, every Role and RoleBinding that deploy/rbac.yaml puts in namespace
/// `source` (same names, rules and subjects), and waits until they take effect. Panics when
/// deploy/rbac.yaml has none there.
pub async fn grant_namespaced_rbac(env: &TestEnv, source: &str, target: &str) {
    grant_namespaced_rbac_edited(env, source, target, |_| {}).await
}

/// Like [`grant_namespaced_rbac`], with each Role changed by `edit` first (to take a verb away).
pub async fn grant_namespaced_rbac_edited(
    env: &TestEnv,
    source: &str,
    target: &str,
    edit: impl Fn(&mut k8s_openapi::api::rbac::v1::Role),
) {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let admin = env.admin().await;
    let mut checks = Vec::new();
    for mut doc in rbac_documents() {
        if doc["metadata"]["namespace"].as_str() != Some(source) {
            continue;
        }
        doc["metadata"]["namespace"] = serde_json::Value::String(target.to_string());
        match doc["kind"].as_str() {
            Some("Role") => {
                let mut role: Role = serde_json::from_value(doc).expect("Role");
                edit(&mut role);
                for rule in role.rules.iter().flatten() {
                    let group = rule
                        .api_groups
                        .as_ref()
                        .and_then(|g| g.first())
                        .cloned()
                        .unwrap_or_default();
                    for resource in rule.resources.iter().flatten() {
                        for verb in &rule.verbs {
                            checks.push((verb.clone(), group.clone(), resource.clone()));
                        }
                    }
                }
                Api::<Role>::namespaced(admin.clone(), target)
                    .create(&PostParams::default(), &role)
                    .await
                    .unwrap_or_else(|e| panic!("creating a Role of deploy/rbac.yaml: {e}"));
            }
            Some("RoleBinding") => {
                let binding: RoleBinding = serde_json::from_value(doc).expect("RoleBinding");
                Api::<RoleBinding>::namespaced(admin.clone(), target)
                    .create(&PostParams::default(), &binding)
                    .await
                    .unwrap_or_else(|e| panic!("creating a RoleBinding of deploy/rbac.yaml: {e}"));
            }
            _ => {}
        }
    }
    assert!(
        !checks.is_empty(),
        "deploy/rbac.yaml grants nothing in namespace {source}"
    );
    for (verb, group, resource) in checks {
        wait_until_allowed(env, &verb, &group, &resource, Some(target)).await;
    }
}

/// Waits until the controller identity may `verb` the `resource` (RBAC takes effect through an
/// informer in the API server, shortly after the objects are written).
pub async fn wait_until_allowed(
    env: &TestEnv,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) {
    use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
    let api = Api::<SelfSubjectAccessReview>::all(env.controller().await);
    let review: SelfSubjectAccessReview = serde_json::from_value(serde_json::json!({
        "spec": {"resourceAttributes": {
            "verb": verb, "group": group, "resource": resource, "namespace": namespace,
        }},
    }))
    .expect("SelfSubjectAccessReview");
    let what =
        format!("{CONTROLLER_USER} to be allowed to {verb} {resource}.{group} in {namespace:?}");
    eventually(Duration::from_secs(20), &what, || async {
        let r = api.create(&PostParams::default(), &review).await.ok()?;
        r.status.filter(|s| s.allowed).map(|_| ())
    })
    .await;
}

/// The `kubernaut.ai/v1alpha1` WorkflowExecution resource.
pub fn workflowexecutions() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "kubernaut.ai",
        "v1alpha1",
        "WorkflowExecution",
    ))
}

/// Name of the PipelineRun (the lock) of a target: `wfe-` + 16 hex characters of its SHA-256.
pub fn run_name(target: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(target.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("wfe-{}", &hex[..16])
}

/// A valid WorkflowExecution body (spec only) for `target`, as the orchestrator would write it.
pub fn wfe_body(target: &str) -> serde_json::Value {
    serde_json::json!({
        "spec": {
            "remediationRequestRef": {
                "apiVersion": "kubernaut.ai/v1alpha1",
                "kind": "RemediationRequest",
                "name": "rr-1",
            },
            "workflowRef": {
                "workflowId": "restart-deployment",
                "version": "1.2.0",
                "containerImage": "quay.io/kubernaut/workflows/restart-deployment:v1.2.0",
            },
            "targetResource": target,
            "parameters": {"NAMESPACE": "default", "DEPLOYMENT": "nginx"},
        }
    })
}

/// A value of an object by JSON pointer, as text (empty when absent or not text).
pub fn text(v: &serde_json::Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The condition of `type_` in `status.conditions`, if any.
pub fn condition(v: &serde_json::Value, type_: &str) -> Option<serde_json::Value> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Asserts a condition's status, reason and message.
#[track_caller]
pub fn assert_condition(
    v: &serde_json::Value,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
) {
    let c = condition(v, type_).unwrap_or_else(|| {
        panic!(
            "no condition {type_} in {}",
            serde_json::to_string_pretty(&v["status"]).unwrap_or_default()
        )
    });
    assert_eq!(
        (
            c["status"].as_str(),
            c["reason"].as_str(),
            c["message"].as_str()
        ),
        (Some(status), Some(reason), Some(message)),
        "condition {type_}: {c}"
    );
}

/// An Event as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenEvent {
    /// `Normal` or `Warning`.
    pub type_: String,
    /// Reason.
    pub reason: String,
    /// Note (the message).
    pub note: String,
    /// How often it was recorded (1, or the series count).
    pub count: i32,
    /// Reporting controller.
    pub controller: String,
    /// Reporting instance.
    pub instance: String,
}

/// One test's world: a namespace for the resources, one for the PipelineRuns (with the Role and
/// RoleBinding of deploy/rbac.yaml), a temporary folder for logs and the audit file.
pub struct Scope {
    /// The shared control plane.
    pub env: &'static TestEnv,
    /// Namespace of the WorkflowExecutions.
    pub ns: String,
    /// Execution namespace (PipelineRuns, TaskRuns).
    pub exec_ns: String,
    /// Logs, copies of the rules, the audit file.
    pub dir: tempfile::TempDir,
    /// An administrator client (for this test's runtime).
    pub admin: Client,
    /// Audit files handed out so far (one per controller process).
    audit_files: AtomicU64,
}

impl Scope {
    /// Creates both namespaces and grants the controller identity exactly deploy/rbac.yaml.
    pub async fn new(prefix: &str) -> Scope {
        Scope::with_execution_role(prefix, |_| {}).await
    }

    /// Like [`Scope::new`], with the execution namespace's Role of deploy/rbac.yaml changed by
    /// `edit` first.
    pub async fn with_execution_role(
        prefix: &str,
        edit: impl Fn(&mut k8s_openapi::api::rbac::v1::Role),
    ) -> Scope {
        let env = env().await;
        install_cluster_rbac(env).await;
        Scope::build(env, prefix, edit).await
    }

    /// Like [`Scope::new`], on another control plane (one of the test's own, see
    /// [`PrivateControlPlane`]), whose cluster-wide RBAC the caller has applied.
    pub async fn in_env(env: &'static TestEnv, prefix: &str) -> Scope {
        Scope::build(env, prefix, |_| {}).await
    }

    async fn build(
        env: &'static TestEnv,
        prefix: &str,
        edit: impl Fn(&mut k8s_openapi::api::rbac::v1::Role),
    ) -> Scope {
        let ns = env.namespace(prefix).await;
        let exec_ns = env.namespace(&format!("{prefix}-x")).await;
        grant_namespaced_rbac_edited(env, &default_execution_namespace(), &exec_ns, edit).await;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temporary folder");
        Scope {
            env,
            ns,
            exec_ns,
            dir,
            admin: env.admin().await,
            audit_files: AtomicU64::new(0),
        }
    }

    /// `lifecycle run` arguments for this scope: the rules, this namespace, the controller
    /// identity, this execution namespace, the cooldown, a 1 s poll, text logs, and an audit
    /// file of the process's own (see [`Scope::audit_records`]).
    pub fn run_args(&self, rules: &Path, cooldown: &str) -> Vec<String> {
        let n = self.audit_files.fetch_add(1, Ordering::Relaxed);
        let audit = self.dir.path().join(format!("audit-{n:03}.jsonl"));
        [
            "run",
            "--rules",
            &rules.display().to_string(),
            "--namespace",
            &self.ns,
            "--context",
            CONTROLLER_CONTEXT,
            "--metrics-address",
            "127.0.0.1:0",
            "--set",
            &format!("executionNamespace={}", self.exec_ns),
            "--set",
            &format!("cooldown={cooldown}"),
            "--set",
            "pollInterval=1s",
            "--audit",
            &format!("file:{}", audit.display()),
            "--log-format",
            "text",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Starts a controller on the repository's lifecycle.yaml and waits until it is ready.
    pub async fn start(&self, label: &str, cooldown: &str) -> ControllerProcess {
        let args = self.run_args(&repo_root().join("lifecycle.yaml"), cooldown);
        let mut c = ControllerProcess::spawn(self.env, self.dir.path(), label, &args);
        c.wait_ready().await;
        c
    }

    /// WorkflowExecutions of this scope.
    pub fn wfes(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.admin.clone(), &self.ns, &workflowexecutions())
    }

    /// PipelineRuns of this scope.
    pub fn runs(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.admin.clone(),
            &self.exec_ns,
            &crate::tekton::pipelineruns(),
        )
    }

    /// TaskRuns of this scope.
    pub fn taskruns(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.admin.clone(),
            &self.exec_ns,
            &crate::tekton::taskruns(),
        )
    }

    /// Creates a WorkflowExecution from a body (spec, optional metadata).
    pub async fn create(&self, name: &str, body: serde_json::Value) -> serde_json::Value {
        let mut object = DynamicObject::new(name, &workflowexecutions()).data(body.clone());
        if let Some(labels) = body.pointer("/metadata/labels") {
            object.metadata.labels = Some(serde_json::from_value(labels.clone()).expect("labels"));
        }
        object.data.as_object_mut().map(|m| m.remove("metadata"));
        let created = self
            .wfes()
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("creating WorkflowExecution {name}: {e}"));
        serde_json::to_value(created).expect("json")
    }

    /// Creates a valid WorkflowExecution for `target`.
    pub async fn create_wfe(&self, name: &str, target: &str) -> serde_json::Value {
        self.create(name, wfe_body(target)).await
    }

    /// The WorkflowExecution, if it exists.
    pub async fn get(&self, name: &str) -> Option<serde_json::Value> {
        self.wfes()
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("reading WorkflowExecution {name}: {e}"))
            .map(|o| serde_json::to_value(o).expect("json"))
    }

    /// Waits (up to a minute) until the WorkflowExecution satisfies `check`; panics with its last
    /// state otherwise.
    pub async fn wait(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let current = self.get(name).await;
            if let Some(v) = &current
                && check(v)
            {
                return v.clone();
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for WorkflowExecution {}/{name}: {what}; last seen:\n{}",
                    self.ns,
                    current
                        .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
                        .unwrap_or_else(|| "(gone)".into())
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the WorkflowExecution is in `phase`.
    pub async fn wait_phase(&self, name: &str, phase: &str) -> serde_json::Value {
        self.wait(name, &format!("phase {phase}"), |v| {
            v.pointer("/status/phase")
                .and_then(serde_json::Value::as_str)
                == Some(phase)
        })
        .await
    }

    /// Waits until the WorkflowExecution is gone.
    pub async fn wait_gone(&self, name: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Some(v) = self.get(name).await {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "WorkflowExecution {}/{name} still exists:\n{}",
                    self.ns,
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The PipelineRuns in the execution namespace, by name.
    pub async fn run_list(&self) -> Vec<serde_json::Value> {
        let mut runs: Vec<serde_json::Value> = self
            .runs()
            .list(&kube::api::ListParams::default())
            .await
            .expect("listing PipelineRuns")
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).expect("json"))
            .collect();
        runs.sort_by_key(|r| text(r, "/metadata/name"));
        runs
    }

    /// The PipelineRun `name`, if it exists.
    pub async fn run(&self, name: &str) -> Option<serde_json::Value> {
        self.runs()
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("reading PipelineRun {name}: {e}"))
            .map(|o| serde_json::to_value(o).expect("json"))
    }

    /// Waits until the PipelineRun `name` exists.
    pub async fn wait_run(&self, name: &str) -> serde_json::Value {
        let what = format!("PipelineRun {}/{name}", self.exec_ns);
        eventually(Duration::from_secs(60), &what, || self.run(name)).await
    }

    /// Waits until the PipelineRun `name` is gone.
    pub async fn wait_run_gone(&self, name: &str) {
        let what = format!("PipelineRun {}/{name} to be deleted", self.exec_ns);
        eventually(Duration::from_secs(60), &what, || async {
            self.run(name).await.is_none().then_some(())
        })
        .await
    }

    /// The Events (events.k8s.io) recorded about the WorkflowExecution `name`, oldest first.
    pub async fn events(&self, name: &str) -> Vec<SeenEvent> {
        use k8s_openapi::api::events::v1::Event;
        let mut events: Vec<Event> = Api::<Event>::namespaced(self.admin.clone(), &self.ns)
            .list(&kube::api::ListParams::default())
            .await
            .expect("listing Events")
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.regarding.as_ref().and_then(|r| r.kind.as_deref())
                        == Some("WorkflowExecution")
            })
            .collect();
        events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        events
            .into_iter()
            .map(|e| SeenEvent {
                type_: e.type_.unwrap_or_default(),
                reason: e.reason.unwrap_or_default(),
                note: e.note.unwrap_or_default(),
                count: e.series.map(|s| s.count).unwrap_or(1),
                controller: e.reporting_controller.unwrap_or_default(),
                instance: e.reporting_instance.unwrap_or_default(),
            })
            .collect()
    }

    /// Waits until an Event with `reason` about `name` exists, and returns all of them.
    pub async fn wait_event(&self, name: &str, reason: &str) -> Vec<SeenEvent> {
        let what = format!("Event {reason} about {}/{name}", self.ns);
        eventually(Duration::from_secs(60), &what, || async {
            let events = self.events(name).await;
            events.iter().any(|e| e.reason == reason).then_some(events)
        })
        .await
    }

    /// The audit records about the WorkflowExecution `name` as a receiver keeps them: in the
    /// order written, repeats of an `event_id` dropped (delivery is at least once: a transition
    /// retried after a lost status write, or after a crash, is sent again with the same id).
    pub fn audit_records(&self, name: &str) -> Vec<serde_json::Value> {
        let mut seen = std::collections::HashSet::new();
        self.audit_records_sent(name)
            .into_iter()
            .filter(|r| seen.insert(r["event_id"].to_string()))
            .collect()
    }

    /// Every audit record sent about the WorkflowExecution `name`, repeats included, in the
    /// order written: those of each controller process of this test, in the order the processes
    /// started. Each process has a file of its own, so a process killed while writing a record
    /// leaves only an incomplete last line there, which is not a record (nor is a line still
    /// being written).
    pub fn audit_records_sent(&self, name: &str) -> Vec<serde_json::Value> {
        let n = self.audit_files.load(Ordering::Relaxed);
        let mut records = Vec::new();
        for i in 0..n {
            let path = self.dir.path().join(format!("audit-{i:03}.jsonl"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            for line in complete.lines() {
                let record: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!("{}: a line is not JSON ({e}): {line}", path.display())
                });
                if record["resource_id"] == name {
                    records.push(record);
                }
            }
        }
        records
    }

    /// Waits until the audit file holds a record of `event_type` about `name`; returns all of
    /// that resource's records.
    pub async fn wait_audit(&self, name: &str, event_type: &str) -> Vec<serde_json::Value> {
        let what = format!("audit record {event_type} about {name}");
        eventually(Duration::from_secs(30), &what, || async {
            let records = self.audit_records(name);
            records
                .iter()
                .any(|r| r["event_type"] == event_type)
                .then_some(records)
        })
        .await
    }

    /// Plays Tekton starting the run: creates the TaskRuns of `tasks` and writes a running status.
    pub async fn start_run(&self, run: &str, tasks: &[&str], started: &str) {
        crate::tekton::create_taskruns(self.admin.clone(), &self.exec_ns, run, tasks).await;
        crate::tekton::set_status(
            &self.runs(),
            run,
            crate::tekton::pipelinerun_running(run, tasks, started),
        )
        .await;
    }

    /// Plays Tekton finishing the TaskRun of `task` with this status.
    pub async fn finish_task(&self, run: &str, task: &str, status: serde_json::Value) {
        crate::tekton::set_status(
            &self.taskruns(),
            &crate::tekton::taskrun_name(run, task),
            status,
        )
        .await;
    }
}
