//! The control plane the harness measures on: one it starts (and stops) in a state folder of its
//! own, through the shared `lifecycle_testsupport::controlplane`, or one it is given; what it
//! installs there, and the clean-up between runs on a reused one.

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use lifecycle_testsupport::controlplane::{self, ADMIN_CONTEXT, Testenv};
use lifecycle_testsupport::tekton::taskruns;
use lifecycle_testsupport::{api_code, repo_root};
use serde_json::json;

use crate::load::BENCH_NS_LABEL;
use crate::subject::Subject;

/// Field manager of what the harness installs.
const FIELD_MANAGER: &str = "lifecycle-bench";

/// A control plane and whether this harness started it.
pub struct ControlPlane {
    pub kubeconfig: PathBuf,
    /// Set when this harness started it (and must stop it).
    managed: Option<Testenv>,
}

impl ControlPlane {
    /// One that runs already (objects are cleaned up between runs).
    pub fn existing(kubeconfig: PathBuf) -> ControlPlane {
        ControlPlane {
            kubeconfig,
            managed: None,
        }
    }

    /// A fresh one in `state` (whatever an earlier run left there is stopped first), stopped
    /// when this harness exits, even if it is killed.
    pub async fn up(state: &Path) -> Result<ControlPlane> {
        Testenv::build().await?;
        let testenv = Testenv::new(state);
        let _ = testenv.down();
        let kubeconfig = testenv.up(Some(std::process::id())).await?;
        Ok(ControlPlane {
            kubeconfig,
            managed: Some(testenv),
        })
    }

    /// Whether this harness started it (then nothing needs cleaning up: it goes away).
    pub fn is_managed(&self) -> bool {
        self.managed.is_some()
    }

    /// Stops it if this harness started it.
    pub fn down(&mut self) {
        if let Some(testenv) = self.managed.take()
            && let Err(e) = testenv.down()
        {
            eprintln!("bench: {e:#}");
        }
    }

    /// Process ids of kube-apiserver and etcd, when their pid files are beside the kubeconfig.
    pub fn pids(&self) -> Vec<(String, u32)> {
        controlplane::pids(self.kubeconfig.parent().unwrap_or(Path::new(".")))
    }

    /// A client acting as the administrator.
    pub async fn admin(&self) -> Result<Client> {
        controlplane::client(&self.kubeconfig, ADMIN_CONTEXT).await
    }

    /// The CRDs, the namespaces and the controller's RBAC of deploy/.
    pub async fn install(&self) -> Result<()> {
        controlplane::install_crds(self.admin().await?, FIELD_MANAGER).await?;
        for file in ["deploy/base/namespace.yaml", "deploy/base/rbac.yaml"] {
            let path = repo_root().join(file).to_string_lossy().into_owned();
            let args = [
                "apply",
                "--server-side",
                "--field-manager",
                FIELD_MANAGER,
                "-f",
                &path,
            ];
            let out = controlplane::kubectl(&self.kubeconfig, &args).await?;
            ensure!(
                out.status.success(),
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.down();
    }
}

pub async fn ensure_namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(e) if api_code(&e) == Some(409) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes everything a run left in a reused control plane (the controller must be stopped):
/// runs, TaskRuns, the resources (finalizers first) and their Events.
pub async fn cleanup(client: &Client, subject: &Subject, ns: &str) -> Result<()> {
    let dp = DeleteParams::default();
    let exec_ns = &subject.execution_namespace;
    let runs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), exec_ns, &subject.execution);
    runs.delete_collection(&dp, &ListParams::default().labels(&subject.owned_in(ns)))
        .await?;
    let trs: Api<DynamicObject> = Api::namespaced_with(client.clone(), exec_ns, &taskruns());
    trs.delete_collection(
        &dp,
        &ListParams::default().labels(&format!("{BENCH_NS_LABEL}={ns}")),
    )
    .await?;
    let wfes: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &subject.resource);
    let names: Vec<String> = wfes
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect();
    let patch = json!({"metadata": {"finalizers": null}});
    futures::stream::iter(names)
        .map(|n| {
            let wfes = wfes.clone();
            let patch = patch.clone();
            async move {
                let _ = wfes
                    .patch(&n, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    wfes.delete_collection(&dp, &ListParams::default()).await?;
    let events: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<Event>(&()));
    events
        .delete_collection(&dp, &ListParams::default())
        .await?;
    Ok(())
}
