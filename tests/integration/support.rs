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
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};
use tokio::sync::OnceCell;

/// Environment variable naming the kubeconfig of an already running test control plane.
pub const KUBECONFIG_VAR: &str = "LIFECYCLE_TEST_KUBECONFIG";
/// Kubeconfig context of the cluster administrator (group system:masters).
pub const ADMIN_CONTEXT: &str = "admin";
/// Kubeconfig context of the unprivileged controller identity.
pub const CONTROLLER_CONTEXT: &str = "controller";
/// User name of the controller identity: the service account lifecycle-system/lifecycle-controller.
pub const CONTROLLER_USER: &str = "system:serviceaccount:lifecycle-system:lifecycle-controller";
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
        client_for(&self.kubeconfig, ADMIN_CONTEXT)
            .await
            .expect("admin client")
    }

    /// A client acting as the unprivileged controller identity ([`CONTROLLER_USER`]).
    pub async fn controller(&self) -> Client {
        client_for(&self.kubeconfig, CONTROLLER_CONTEXT)
            .await
            .expect("controller client")
    }

    /// Runs the kubectl built with the control plane against it (admin context unless `args`
    /// say otherwise) and returns its standard output; panics with its error output on failure.
    pub async fn kubectl(&self, args: &[&str]) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let bin = tokio::process::Command::new(root.join("scripts/testenv"))
            .arg("bin")
            .output()
            .await
            .expect("scripts/testenv bin");
        let kubectl = Path::new(String::from_utf8_lossy(&bin.stdout).trim()).join("kubectl");
        let out = tokio::process::Command::new(&kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .await
            .unwrap_or_else(|e| panic!("running {}: {e}", kubectl.display()));
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
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

/// The HTTP status code of an API error, if the error is one.
pub fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
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
    let Some(dir) = LOG_DIR.get() else {
        return "(control-plane log location unknown)\n".to_string();
    };
    let mut out = String::new();
    for name in ["kube-apiserver.log", "etcd.log"] {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                let tail = &all[all.len().saturating_sub(lines)..];
                out.push_str(&format!(
                    "----- last {} lines of {} -----\n",
                    tail.len(),
                    path.display()
                ));
                for line in tail {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            Err(e) => out.push_str(&format!("----- {}: {e} -----\n", path.display())),
        }
    }
    out
}

async fn init() -> anyhow::Result<TestEnv> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kubeconfig = match std::env::var_os(KUBECONFIG_VAR) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => start_private(root).await?,
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
    let client = client_for(&kubeconfig, ADMIN_CONTEXT).await?;
    install_crds(client, root).await?;
    Ok(TestEnv {
        kubeconfig,
        log_dir,
    })
}

/// Starts a control plane of this process's own, stopped by a watchdog when the process exits.
async fn start_private(root: &Path) -> anyhow::Result<PathBuf> {
    let script = root.join("scripts/testenv");
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    remove_stale_state(base);
    let dir = base.join(format!("testenv-{}", std::process::id()));
    eprintln!(
        "{KUBECONFIG_VAR} is not set: starting a private control plane in {} (scripts/test starts one for the whole run)",
        dir.display()
    );
    let build = tokio::process::Command::new(&script)
        .arg("build")
        .status()
        .await
        .map_err(|e| anyhow::anyhow!("running {} build: {e}", script.display()))?;
    anyhow::ensure!(
        build.success(),
        "`scripts/testenv build` failed: the integration tests need etcd and kube-apiserver, built \
         from Go modules (Go must be installed), or {KUBECONFIG_VAR} naming a running test control plane"
    );
    let up = tokio::process::Command::new(&script)
        .args(["up", "--owner-pid", &std::process::id().to_string()])
        .env("LIFECYCLE_TESTENV_DIR", &dir)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| anyhow::anyhow!("running {} up: {e}", script.display()))?;
    anyhow::ensure!(
        up.success(),
        "`scripts/testenv up` failed; see {}",
        dir.display()
    );
    Ok(dir.join("kubeconfig"))
}

/// Removes the state of private control planes whose test process is gone.
fn remove_stale_state(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("testenv-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let running = Path::new(&format!("/proc/{pid}")).exists();
        if !running && !entry.path().join("kube-apiserver.pid").exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
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

async fn client_for(kubeconfig: &Path, context: &str) -> anyhow::Result<Client> {
    let file = Kubeconfig::read_from(kubeconfig)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", kubeconfig.display()))?;
    let options = KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(file, &options)
        .await
        .map_err(|e| anyhow::anyhow!("context {context} of {}: {e}", kubeconfig.display()))?;
    Ok(Client::try_from(config)?)
}

/// Server-side applies every CRD under deploy/crds and tests/crds, then waits until each is
/// Established.
async fn install_crds(client: Client, root: &Path) -> anyhow::Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for dir in ["deploy/crds", "tests/crds"] {
        for crd in read_crds(&root.join(dir))? {
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .map_err(|e| anyhow::anyhow!("applying CRD {name}: {e}"))?;
            names.push(name);
        }
    }
    for name in names {
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .map_err(|_| anyhow::anyhow!("CRD {name} not Established after 30 s"))??;
    }
    Ok(())
}

/// Every CustomResourceDefinition document in the YAML files of `dir`, in file-name order.
pub fn read_crds(dir: &Path) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut crds = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if value.get("kind").and_then(|k| k.as_str()) == Some("CustomResourceDefinition") {
                crds.push(
                    serde_json::from_value(value)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
                );
            }
        }
    }
    Ok(crds)
}
