//! The local control plane: a real kube-apiserver and etcd on loopback, run by `scripts/testenv`
//! in a state folder of their own (kubeconfig, logs and pid files side by side), never a mock
//! and never a developer's cluster.
//!
//! [`Testenv`] starts and stops one (by process id, through the script; `up` with an owner
//! process also leaves a watchdog that stops it when that process exits). [`client`] connects
//! as one of the kubeconfig's identities, [`kubectl`] runs the kubectl built alongside, and
//! [`install_crds`] installs every CRD the tests and the harness need.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

use crate::repo_root;

/// Kubeconfig context of the cluster administrator (group system:masters).
pub const ADMIN_CONTEXT: &str = "admin";
/// Kubeconfig context of the unprivileged controller identity.
pub const CONTROLLER_CONTEXT: &str = "controller";
/// User name of the controller identity: the service account lifecycle-system/lifecycle-controller.
pub const CONTROLLER_USER: &str = "system:serviceaccount:lifecycle-system:lifecycle-controller";
/// The folders whose YAML files hold the CRDs to install, relative to the repository.
pub const CRD_FOLDERS: [&str; 2] = ["deploy/crds", "tests/crds"];

/// The programs of a control plane whose process ids `scripts/testenv` writes (`<name>.pid`).
const PROGRAMS: [&str; 2] = ["kube-apiserver", "etcd"];

/// A control plane in a state folder of `scripts/testenv` (`LIFECYCLE_TESTENV_DIR`).
#[derive(Debug, Clone)]
pub struct Testenv {
    dir: PathBuf,
}

impl Testenv {
    /// The control plane whose state is (or will be) in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Testenv {
        Testenv { dir: dir.into() }
    }

    /// Builds etcd, kube-apiserver and kubectl into the cache unless they are there already
    /// (needs Go the first time).
    pub async fn build() -> Result<()> {
        let script = repo_root().join("scripts/testenv");
        let status = tokio::process::Command::new(&script)
            .arg("build")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .await
            .with_context(|| format!("running {} build", script.display()))?;
        ensure!(
            status.success(),
            "`scripts/testenv build` failed: a control plane needs etcd and kube-apiserver, built \
             from Go modules (Go must be installed)"
        );
        Ok(())
    }

    /// The state folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its kubeconfig (contexts [`ADMIN_CONTEXT`] and [`CONTROLLER_CONTEXT`]).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Starts it (or finds it already up) and waits until it is ready; with `owner`, a watchdog
    /// stops it once that process has exited. Returns the kubeconfig.
    pub async fn up(&self, owner: Option<u32>) -> Result<PathBuf> {
        let mut args = vec!["up".to_string()];
        if let Some(pid) = owner {
            args.extend(["--owner-pid".to_string(), pid.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args).await?;
        Ok(self.kubeconfig())
    }

    /// Runs `scripts/testenv <args>` on this state folder (its error output passes through).
    pub async fn run(&self, args: &[&str]) -> Result<()> {
        let status = tokio::process::Command::new(repo_root().join("scripts/testenv"))
            .args(args)
            .env("LIFECYCLE_TESTENV_DIR", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .await
            .with_context(|| format!("running scripts/testenv {}", args.join(" ")))?;
        ensure!(
            status.success(),
            "`scripts/testenv {}` failed; see {}",
            args.join(" "),
            self.dir.display()
        );
        Ok(())
    }

    /// Stops it, by process id (blocking: also usable where nothing can be awaited, in `drop`).
    /// Stopping one that is not running succeeds.
    pub fn down(&self) -> Result<()> {
        let status = std::process::Command::new(repo_root().join("scripts/testenv"))
            .arg("down")
            .env("LIFECYCLE_TESTENV_DIR", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running scripts/testenv down")?;
        ensure!(
            status.success(),
            "`scripts/testenv down` failed in {}",
            self.dir.display()
        );
        Ok(())
    }
}

/// Process ids of kube-apiserver and etcd, from the pid files in the state folder `dir` (those
/// whose file is missing or unreadable are left out).
pub fn pids(dir: &Path) -> Vec<(String, u32)> {
    PROGRAMS
        .iter()
        .filter_map(|name| {
            std::fs::read_to_string(dir.join(format!("{name}.pid")))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .map(|pid| (name.to_string(), pid))
        })
        .collect()
}

/// The last `lines` lines of the kube-apiserver and etcd logs in the state folder `dir`, for a
/// failure report.
pub fn log_tails(dir: &Path, lines: usize) -> String {
    let mut out = String::new();
    for name in PROGRAMS {
        let path = dir.join(format!("{name}.log"));
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

/// Removes the state folders `<prefix><pid>` in `base` whose process is gone and whose control
/// plane is stopped (no kube-apiserver pid file left).
pub fn remove_stale_state(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
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

/// A client acting as the identity of `context` in `kubeconfig`.
pub async fn client(kubeconfig: &Path, context: &str) -> Result<Client> {
    let file = Kubeconfig::read_from(kubeconfig)
        .map_err(|e| anyhow!("reading {}: {e}", kubeconfig.display()))?;
    let options = KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(file, &options)
        .await
        .map_err(|e| anyhow!("context {context} of {}: {e}", kubeconfig.display()))?;
    Ok(Client::try_from(config)?)
}

/// The kubectl built with the control plane (it matches the server's version).
pub fn kubectl_path() -> Result<PathBuf> {
    let out = std::process::Command::new(repo_root().join("scripts/testenv"))
        .arg("bin")
        .output()
        .context("running scripts/testenv bin")?;
    ensure!(out.status.success(), "`scripts/testenv bin` failed");
    Ok(Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("kubectl"))
}

/// Runs that kubectl with `args` against `kubeconfig`; returns its output whether or not it
/// succeeded (an error only when it cannot be run).
pub async fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<Output> {
    let kubectl = kubectl_path()?;
    tokio::process::Command::new(&kubectl)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", kubectl.display()))
}

/// Server-side applies every CRD of [`CRD_FOLDERS`] as `field_manager`, then waits until each
/// is Established.
pub async fn install_crds(client: Client, field_manager: &str) -> Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client);
    let params = PatchParams::apply(field_manager).force();
    let mut names = Vec::new();
    for dir in CRD_FOLDERS {
        for crd in read_crds(&repo_root().join(dir))? {
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .map_err(|e| anyhow!("applying CRD {name}: {e}"))?;
            names.push(name);
        }
    }
    for name in names {
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .map_err(|_| anyhow!("CRD {name} not Established after 30 s"))??;
    }
    Ok(())
}

/// Every CustomResourceDefinition document in the YAML files of `dir`, in file-name order.
pub fn read_crds(dir: &Path) -> Result<Vec<CustomResourceDefinition>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow!("reading {}: {e}", dir.display()))?
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
                .map_err(|e| anyhow!("{}: {e}", file.display()))?;
            if value.get("kind").and_then(|k| k.as_str()) == Some("CustomResourceDefinition") {
                crds.push(
                    serde_json::from_value(value)
                        .map_err(|e| anyhow!("{}: {e}", file.display()))?,
                );
            }
        }
    }
    Ok(crds)
}
