//! Playing Tekton under load, with the shared player (`lifecycle_testsupport::tekton`): every
//! execution object of the measured namespace that appears gets its TaskRun and a Running
//! status, then, after a hold, a Succeeded or (for the resources chosen to fail) Failed status;
//! each write is retried on transient errors, counted, and timestamped.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use lifecycle_testsupport::tekton;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::load::{BENCH_NS_LABEL, Shared, earliest, lock, write_retried};
use crate::prometheus::Requests;
use crate::sample::now_ms;
use crate::subject::Subject;

/// The task of every run the player plays (its TaskRun is `<run>-run`, its one step `run`).
const TASK: &str = "run";

/// The label the reload samples set on the execution objects (through their template); the
/// player reads it back to time when a changed run is first seen.
pub const RELOAD_LABEL: &str = "bench.lifecycle-engine/reload";

/// What the player is told: whose runs to play and how.
pub struct Play {
    /// Namespace of the resources whose runs it plays.
    pub namespace: String,
    /// Resources whose run fails.
    pub fails: HashSet<String>,
    /// Finish runs (false: leave them Running, for the memory test).
    pub finish: bool,
    /// How long a run stays Running.
    pub hold: Duration,
    /// Tekton writes in flight at once.
    pub concurrency: usize,
}

/// Plays Tekton for the execution objects of the resources of one namespace.
pub struct Player {
    /// The execution objects (PipelineRuns) in the execution namespace.
    pub runs: Api<DynamicObject>,
    taskruns: Api<DynamicObject>,
    /// Plural names of both, as the apiserver counts requests.
    runs_plural: String,
    taskruns_plural: String,
    owner_label: String,
    selector: String,
    play: Play,
    track: Shared,
    requests: Arc<Requests>,
    sem: Semaphore,
    played: Mutex<HashSet<String>>,
}

fn run_condition(obj: &Value) -> Option<String> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Succeeded"))?
        .get("status")?
        .as_str()
        .map(str::to_string)
}

impl Player {
    /// A player for `play`, recording into `track` and counting its requests in `requests`.
    pub fn new(
        client: &Client,
        subject: &Subject,
        play: Play,
        track: Shared,
        requests: Arc<Requests>,
    ) -> Arc<Player> {
        let ns = &subject.execution_namespace;
        let taskruns = tekton::taskruns();
        Arc::new(Player {
            runs: Api::namespaced_with(client.clone(), ns, &subject.execution),
            taskruns: Api::namespaced_with(client.clone(), ns, &taskruns),
            runs_plural: subject.execution.plural.clone(),
            taskruns_plural: taskruns.plural,
            owner_label: subject.owner_name_label.clone(),
            selector: subject.owned_in(&play.namespace),
            sem: Semaphore::new(play.concurrency.max(1)),
            play,
            track,
            requests,
            played: Mutex::default(),
        })
    }

    /// The label selector of the runs it plays.
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// Writes with [`write_retried`]; false when the object is gone or the write failed
    /// (recorded as a problem).
    async fn write<F, Fut>(&self, what: &str, key: (&str, &str, &str), f: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), kube::Error>>,
    {
        match write_retried(&self.requests, key, f).await {
            Ok(written) => written,
            Err(e) => {
                lock(&self.track).problems.push(format!("{what}: {e}"));
                false
            }
        }
    }

    async fn play(self: Arc<Self>, run: String, owner: String) {
        let fail = self.play.fails.contains(&owner);
        let started = tekton::now();
        let taskrun_name = tekton::taskrun_name(&run, TASK);
        let (runs, taskruns) = (&self.runs, &self.taskruns);
        {
            let Ok(_permit) = self.sem.acquire().await else {
                return;
            };
            let mut taskrun = tekton::taskrun(&run, TASK);
            taskrun
                .metadata
                .labels
                .get_or_insert_default()
                .insert(BENCH_NS_LABEL.to_string(), self.play.namespace.clone());
            let ok = self
                .write(
                    &format!("create TaskRun {taskrun_name}"),
                    ("POST", &self.taskruns_plural, ""),
                    || async {
                        taskruns
                            .create(&PostParams::default(), &taskrun)
                            .await
                            .map(|_| ())
                    },
                )
                .await;
            if !ok {
                return;
            }
            let running = tekton::pipelinerun_running(&run, &[TASK], &started);
            let ok = self
                .write(
                    &format!("run {run} Running"),
                    ("PATCH", &self.runs_plural, "status"),
                    || tekton::patch_status(runs, &run, &running),
                )
                .await;
            if !ok {
                return;
            }
            let t = now_ms();
            earliest(
                &mut lock(&self.track).pr.entry(run.clone()).or_default().running,
                t,
            );
        }
        if !self.play.finish {
            return;
        }
        tokio::time::sleep(self.play.hold).await;
        let Ok(_permit) = self.sem.acquire().await else {
            return;
        };
        let (run_status, task_status) =
            tekton::one_task_finished(&run, TASK, !fail, &started, &tekton::now());
        if !self
            .write(
                &format!("TaskRun {taskrun_name} finished"),
                ("PATCH", &self.taskruns_plural, "status"),
                || tekton::patch_status(taskruns, &taskrun_name, &task_status),
            )
            .await
        {
            return;
        }
        if self
            .write(
                &format!("run {run} finished"),
                ("PATCH", &self.runs_plural, "status"),
                || tekton::patch_status(runs, &run, &run_status),
            )
            .await
        {
            let t = now_ms();
            earliest(
                &mut lock(&self.track).pr.entry(run).or_default().finished,
                t,
            );
        }
    }

    /// Watches the runs it plays: records when each appears, runs, finishes and goes, and plays
    /// each new one.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let player = self.clone();
        tokio::spawn(async move {
            let config = watcher::Config::default().labels(&player.selector);
            let mut events = watcher(player.runs.clone(), config)
                .default_backoff()
                .boxed();
            while let Some(ev) = events.next().await {
                let t = now_ms();
                let (obj, deleted) = match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
                    Ok(watcher::Event::Delete(o)) => (o, true),
                    _ => continue,
                };
                let name = obj.metadata.name.clone().unwrap_or_default();
                let uid = obj.metadata.uid.clone().unwrap_or_default();
                let labels = obj.metadata.labels.clone().unwrap_or_default();
                let owner = labels.get(&player.owner_label).cloned().unwrap_or_default();
                let condition = run_condition(&serde_json::to_value(&obj).unwrap_or(Value::Null));
                let fresh = {
                    let mut tr = lock(&player.track);
                    if tr.sample_run.is_none() && !deleted && condition.is_none() {
                        tr.sample_run = serde_json::to_value(&obj).ok();
                    }
                    let p = tr.pr.entry(name.clone()).or_default();
                    p.owner = owner.clone();
                    if deleted {
                        earliest(&mut p.deleted, t);
                        false
                    } else {
                        if let Some(v) = labels.get(RELOAD_LABEL) {
                            p.reload_label = Some(v.clone());
                        }
                        match condition.as_deref() {
                            Some("Unknown") => earliest(&mut p.running, t),
                            Some("True" | "False") => earliest(&mut p.finished, t),
                            _ => {}
                        }
                        if !p.uids.contains(&uid) {
                            p.uids.push(uid.clone());
                            earliest(&mut p.added, t);
                        }
                        condition.is_none()
                            && player
                                .played
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(uid)
                    }
                };
                if fresh {
                    tokio::spawn(player.clone().play(name, owner));
                }
            }
        })
    }
}
