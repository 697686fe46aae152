//! One measurement's world: its namespace, its copy of the rules (which the hot-reload samples
//! edit), what the watches see, and how to start the controller, create resources and play
//! their runs in it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use kube::Client;

use crate::Bench;
use crate::controller::{Controller, Launch};
use crate::load::{Creator, Shared};
use crate::options::ControllerSpec;
use crate::plane::{ControlPlane, cleanup, ensure_namespace};
use crate::player::{Play, Player};
use crate::prometheus::Requests;
use crate::subject::Subject;

/// A measurement of one controller on one control plane, in a namespace of its own.
pub struct Session<'a> {
    pub bench: &'a Bench,
    pub cp: &'a ControlPlane,
    pub spec: &'a ControllerSpec,
    /// An administrator client.
    pub client: Client,
    /// The resources' namespace.
    pub ns: String,
    /// The copy of the rules the controller runs.
    pub rules: PathBuf,
    /// What the watches and writes saw.
    pub track: Shared,
    /// The requests this harness made.
    pub requests: Arc<Requests>,
    /// Names the controller's log files (`<controller>-<label>-<phase>.log`).
    label: String,
}

impl Bench {
    /// A session in namespace `bench-<run>-<controller>-<what>`, logs labelled `label`.
    pub async fn session<'a>(
        &'a self,
        cp: &'a ControlPlane,
        spec: &'a ControllerSpec,
        what: &str,
        label: &str,
    ) -> Result<Session<'a>> {
        let client = cp.admin().await?;
        let ns = self.namespace(&spec.name, what);
        ensure_namespace(&client, &ns).await?;
        ensure_namespace(&client, &self.subject.execution_namespace).await?;
        let work = self.args.out.join("work").join(&ns).join("rules");
        let rules = copy_rules(&self.args.rules, &self.subject, &work)?;
        Ok(Session {
            bench: self,
            cp,
            spec,
            client,
            ns,
            rules,
            track: Shared::default(),
            requests: Arc::default(),
            label: label.to_string(),
        })
    }
}

impl Session<'_> {
    /// What the rules say.
    pub fn subject(&self) -> &Subject {
        &self.bench.subject
    }

    /// Starts the controller; `phase` names its log.
    pub fn spawn(&self, phase: &str) -> Result<Controller> {
        let log = format!("{}-{}-{phase}.log", self.spec.name, self.label);
        Controller::spawn(&Launch {
            spec: self.spec,
            args: &self.bench.args,
            kubeconfig: &self.cp.kubeconfig,
            rules: &self.rules,
            cooldown: &self.bench.cooldown,
            log: self.bench.args.out.join("logs").join(log),
        })
    }

    /// Creates this session's resources, with targets tagged by the run.
    pub fn creator(&self) -> Creator {
        Creator::new(
            &self.client,
            self.subject(),
            &self.ns,
            &self.bench.run_id,
            self.track.clone(),
            self.requests.clone(),
        )
    }

    /// Plays the runs of this session's resources: those in `fails` fail; with `finish` false
    /// they stay Running.
    pub fn player(&self, fails: HashSet<String>, finish: bool, hold: Duration) -> Arc<Player> {
        let play = Play {
            namespace: self.ns.clone(),
            fails,
            finish,
            hold,
            concurrency: self.bench.args.tekton_concurrency,
        };
        Player::new(
            &self.client,
            self.subject(),
            play,
            self.track.clone(),
            self.requests.clone(),
        )
    }

    /// Removes what the session left, on a control plane this harness did not start (one it
    /// started is stopped instead).
    pub async fn clean_up(&self) -> Result<()> {
        if self.cp.is_managed() {
            return Ok(());
        }
        cleanup(&self.client, self.subject(), &self.ns).await
    }
}

/// Copies the rules file and its templates folder into `dir`; returns the copied rules file.
fn copy_rules(rules: &Path, subject: &Subject, dir: &Path) -> Result<PathBuf> {
    let templates = dir.join(&subject.templates);
    std::fs::create_dir_all(&templates)?;
    let target = dir.join(rules.file_name().unwrap_or("lifecycle.yaml".as_ref()));
    std::fs::copy(rules, &target).with_context(|| format!("copying {}", rules.display()))?;
    let source = rules
        .parent()
        .unwrap_or(Path::new("."))
        .join(&subject.templates);
    if let Ok(entries) = std::fs::read_dir(&source) {
        for e in entries.flatten() {
            if e.path().is_file() {
                std::fs::copy(e.path(), templates.join(e.file_name()))?;
            }
        }
    }
    Ok(target)
}
