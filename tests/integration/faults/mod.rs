//! Fault tests: the controller under crashes (SIGKILL at pseudo-random moments), an API server
//! restart, concurrent writers of the same resources, a burst of resources for one target, rules
//! reload storms and hostile specs, against the real control plane. What each proves is in
//! docs/reliability.md.
//!
//! Sizes are small by default so that CI stays fast; a long run sets them by hand:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `LIFECYCLE_FAULT_SEED` | 20260101 | seed of the pseudo-random timing |
//! | `LIFECYCLE_FAULT_LIFECYCLES` | 12 | lifecycles of the crash test (the others run a third of it, at least 4) |
//! | `LIFECYCLE_FAULT_KILLS` | 4 | SIGKILLs of the crash test |
//! | `LIFECYCLE_FAULT_RESTARTS` | 1 | API server restarts |
//! | `LIFECYCLE_FAULT_BURST` | 10 | resources created at once for one target |
//! | `LIFECYCLE_FAULT_STORM_MS` | 3000 | length of the reload storm |
//!
//! Every test prints a `figures:` line with what it injected. Outcomes are asserted, never
//! timings: every wait polls until a deadline.
//!
//! By subject: crashes, API server restarts and concurrent writers (`restarts`), bursts for one
//! target (`bursts`), reload storms (`reloads`), hostile specs (`hostile`); shared helpers here.

mod bursts;
mod hostile;
mod reloads;
mod restarts;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

use crate::support::{
    self, ControllerProcess, PrivateControlPlane, Scope, api_code, run_name, text, unique_name,
    wfe_body,
};
use crate::tekton;

// ---------------------------------------------------------------------------------------------
// sizes, pseudo-random timing

fn size(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: enough for timing jitter, reproducible from `LIFECYCLE_FAULT_SEED`.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Rng {
        let seed = size("LIFECYCLE_FAULT_SEED", 20_260_101);
        Rng((seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `secs` with `what`.
async fn until<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn phase(v: &Value) -> &str {
    v.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn terminal(v: &Value) -> bool {
    matches!(phase(v), "Completed" | "Failed")
}

/// Reads a resource, tolerating transient API errors (the API server may be restarting).
async fn get_opt(s: &Scope, name: &str) -> Option<Value> {
    match s.wfes().get_opt(name).await {
        Ok(o) => o.map(|o| serde_json::to_value(o).expect("json")),
        Err(_) => None,
    }
}

async fn wait_for(
    s: &Scope,
    name: &str,
    secs: u64,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    until(secs, &format!("{}/{name}: {what}", s.ns), || async {
        get_opt(s, name).await.filter(|v| f(v))
    })
    .await
}

/// Runs `f` until it succeeds (the API server may be restarting); panics after `secs`.
async fn retry<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    until(secs, what, || {
        let fut = f();
        async move { fut.await.ok() }
    })
    .await
}

fn condition_status(v: &Value, type_: &str) -> String {
    support::condition(v, type_)
        .map(|c| c["status"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// watching PipelineRuns: live runs per target, runs ever created per target

#[derive(Default)]
struct RunLog {
    /// live runs: name → (uid, target label)
    live: HashMap<String, (String, String)>,
    /// during a relist of the watch
    relist: Option<HashMap<String, (String, String)>>,
    /// the most runs live at once for one target label
    max_live: BTreeMap<String, usize>,
    /// every run uid ever seen per target label, by the watch or by a player
    uids: BTreeMap<String, BTreeSet<String>>,
    created: u64,
    /// lists after the first: the watch could not resume (410 Gone after an API server restart)
    relists: u64,
    /// runs a player saw that the watch never did (they lived while it was re-listing)
    unseen_by_watch: u64,
}

/// A run's name, uid and target label.
fn run_identity(o: &DynamicObject) -> (String, String, String) {
    let target = o
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernaut.ai/target-resource"))
        .cloned()
        .unwrap_or_default();
    (
        o.metadata.name.clone().unwrap_or_default(),
        o.metadata.uid.clone().unwrap_or_default(),
        target,
    )
}

impl RunLog {
    /// Records a run's uid under its target label; true when it is new.
    fn record(&mut self, uid: &str, target: &str) -> bool {
        let new = self
            .uids
            .entry(target.to_string())
            .or_default()
            .insert(uid.to_string());
        if new {
            self.created += 1;
        }
        new
    }

    fn apply(&mut self, o: &DynamicObject) {
        let (name, uid, target) = run_identity(o);
        self.record(&uid, &target);
        self.live.insert(name, (uid, target));
        self.count();
    }

    fn count(&mut self) {
        let mut per: HashMap<&str, usize> = HashMap::new();
        for (_, t) in self.live.values() {
            *per.entry(t).or_default() += 1;
        }
        for (t, n) in per {
            let max = self.max_live.entry(t.to_string()).or_default();
            *max = (*max).max(n);
        }
    }
}

/// Watches the PipelineRuns of a scope for the whole test. A watch has a blind spot: when it
/// cannot resume after an API server restart (410 Gone), it lists again, and a run created and
/// deleted before that list is never seen. The players report each run they play
/// ([`RunWatch::played`]), so every run a lifecycle used is counted whatever the watch saw.
struct RunWatch {
    log: Arc<Mutex<RunLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunWatch {
    async fn start(runs: Api<DynamicObject>) -> RunWatch {
        let log: Arc<Mutex<RunLog>> = Default::default();
        let synced = Arc::new(tokio::sync::Notify::new());
        let (l, n) = (log.clone(), synced.clone());
        let task = tokio::spawn(async move {
            let mut stream = watcher(runs, watcher::Config::default()).boxed();
            let mut lists = 0u64;
            while let Some(event) = stream.next().await {
                let Ok(event) = event else { continue };
                let mut log = l.lock().unwrap();
                match event {
                    watcher::Event::Init => {
                        lists += 1;
                        log.relists = lists - 1;
                        log.relist = Some(HashMap::new());
                    }
                    watcher::Event::InitApply(o) => {
                        log.apply(&o);
                        let (name, uid, target) = run_identity(&o);
                        if let Some(relist) = log.relist.as_mut() {
                            relist.insert(name, (uid, target));
                        }
                    }
                    watcher::Event::InitDone => {
                        if let Some(relist) = log.relist.take() {
                            log.live = relist;
                        }
                        n.notify_one();
                    }
                    watcher::Event::Apply(o) => log.apply(&o),
                    watcher::Event::Delete(o) => {
                        log.live
                            .remove(o.metadata.name.as_deref().unwrap_or_default());
                    }
                }
            }
        });
        synced.notified().await;
        RunWatch { log, task }
    }

    fn created(&self) -> u64 {
        self.log.lock().unwrap().created
    }

    /// Counts the runs the players played (as [`play`] returns them), among the created ones.
    fn played<'a>(&self, runs: impl IntoIterator<Item = &'a DynamicObject>) {
        let mut log = self.log.lock().unwrap();
        for run in runs {
            let (_, uid, target) = run_identity(run);
            if log.record(&uid, &target) {
                log.unseen_by_watch += 1;
            }
        }
    }

    /// What the watch saw, for a test's `figures:` line.
    fn figures(&self) -> String {
        let log = self.log.lock().unwrap();
        format!(
            "{} runs created ({} of them seen by a player only, the watch re-listed {} times)",
            log.created, log.unseen_by_watch, log.relists
        )
    }

    /// Asserts that no target ever had more than one live run, and that each target in
    /// `runs_per_target` had exactly that many runs created.
    fn assert(&self, runs_per_target: &BTreeMap<String, usize>) {
        let log = self.log.lock().unwrap();
        for (target, max) in &log.max_live {
            assert!(
                *max <= 1,
                "target label {target} had {max} live runs at once"
            );
        }
        let seen: BTreeMap<String, usize> =
            log.uids.iter().map(|(t, u)| (t.clone(), u.len())).collect();
        assert_eq!(&seen, runs_per_target, "runs created per target label");
    }
}

impl Drop for RunWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The label value the rules give a target (spec §4), for targets of `[a-z0-9/-]` only.
fn target_label(target: &str) -> String {
    target.replace('/', "__")
}

// ---------------------------------------------------------------------------------------------
// playing Tekton for one lifecycle

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Succeeds,
    Fails,
}

/// Creates the resource after a delay, then plays Tekton for its run: started, then succeeded or
/// failed (with a failed TaskRun), at pseudo-random moments; waits until the resource is
/// terminal. Works through controller crashes and API server restarts (every call is retried).
/// Returns the run as the player first saw it (for [`RunWatch::played`]).
async fn play(
    s: &Scope,
    name: &str,
    target: &str,
    outcome: Outcome,
    mut rng: Rng,
    spread_ms: u64,
) -> DynamicObject {
    tokio::time::sleep(rng.ms(0, spread_ms)).await;
    let body = wfe_body(target);
    let object = DynamicObject::new(name, &support::workflowexecutions()).data(body);
    retry(60, &format!("creating {name}"), || async {
        match s.wfes().create(&PostParams::default(), &object).await {
            Err(e) if api_code(&e) == Some(409) => Ok(()),
            r => r.map(|_| ()),
        }
    })
    .await;
    let run = run_name(target);
    let played = until(120, &format!("PipelineRun of {name}"), || async {
        s.runs().get_opt(&run).await.ok().flatten()
    })
    .await;
    tokio::time::sleep(rng.ms(0, 400)).await;
    let started = tekton::now();
    retry(60, "creating a TaskRun", || async {
        let taskrun = tekton::taskrun(&run, "step");
        match s.taskruns().create(&PostParams::default(), &taskrun).await {
            Err(e) if api_code(&e) == Some(409) => Ok(()),
            r => r.map(|_| ()),
        }
    })
    .await;
    set_status(
        s,
        &s.runs(),
        &run,
        tekton::pipelinerun_running(&run, &["step"], &started),
    )
    .await;
    tokio::time::sleep(rng.ms(0, 600)).await;
    let done = tekton::now();
    match outcome {
        Outcome::Succeeds => {
            let ok = tekton::taskrun_status(
                &run,
                "step",
                "True",
                "Succeeded",
                "All Steps have completed executing",
                vec![tekton::step_terminated("main", 0, "Completed")],
                &done,
            );
            set_status(s, &s.taskruns(), &tekton::taskrun_name(&run, "step"), ok).await;
            let status = tekton::pipelinerun_finished(
                &run,
                &["step"],
                "True",
                "Succeeded",
                &tekton::tasks_message(1, 0, 0, 0),
                &started,
                &done,
            );
            set_status(s, &s.runs(), &run, status).await;
        }
        Outcome::Fails => {
            let failed = tekton::taskrun_status(
                &run,
                "step",
                "False",
                "Failed",
                "\"step-main\" exited with code 1",
                vec![tekton::step_terminated("main", 1, "Error")],
                &done,
            );
            set_status(
                s,
                &s.taskruns(),
                &tekton::taskrun_name(&run, "step"),
                failed,
            )
            .await;
            let status = tekton::pipelinerun_finished(
                &run,
                &["step"],
                "False",
                "Failed",
                &tekton::tasks_message(1, 1, 0, 0),
                &started,
                &done,
            );
            set_status(s, &s.runs(), &run, status).await;
        }
    }
    wait_for(s, name, 180, "a terminal phase", terminal).await;
    played
}

/// Replaces an object's status (as Tekton does), retrying conflicts and API server restarts.
async fn set_status(_s: &Scope, api: &Api<DynamicObject>, name: &str, status: Value) {
    until(60, &format!("status of {name} written"), || async {
        let mut object = api.get(name).await.ok()?;
        object.data["status"] = status.clone();
        api.replace_status(name, &PostParams::default(), &object)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

/// Asserts the end state of a played lifecycle, after the cooldown: the right terminal phase and
/// details, the lock released, and its audit records: each expected transition exactly once once
/// repeats of an id are dropped, none missing, none other.
async fn assert_finished(s: &Scope, name: &str, target: &str, outcome: Outcome) -> Value {
    let v = wait_for(s, name, 120, "the lock released after the cooldown", |v| {
        condition_status(v, "LockReleased") == "True"
    })
    .await;
    let run = run_name(target);
    match outcome {
        Outcome::Succeeds => {
            assert_eq!(phase(&v), "Completed", "{name}: {v:#}");
            assert_eq!(condition_status(&v, "Ready"), "True", "{name}: {v:#}");
        }
        Outcome::Fails => {
            assert_eq!(phase(&v), "Failed", "{name}: {v:#}");
            assert_eq!(
                v["status"]["failureDetails"]["reason"], "TaskFailed",
                "{name}: {v:#}"
            );
            assert_eq!(
                v["status"]["failureDetails"]["failedTaskName"],
                tekton::taskrun_name(&run, "step").as_str()
            );
            assert_eq!(v["status"]["failureDetails"]["wasExecutionFailure"], true);
        }
    }
    assert_eq!(text(&v, "/status/pipelineRunRef/name"), run, "{name}");
    assert!(!text(&v, "/status/startTime").is_empty(), "{name}: {v:#}");
    assert!(
        !text(&v, "/status/completionTime").is_empty(),
        "{name}: {v:#}"
    );
    let last = match outcome {
        Outcome::Succeeds => "workflow.completed",
        Outcome::Fails => "workflow.failed",
    };
    let records = until(30, &format!("audit records of {name}"), || async {
        let r = s.audit_records(name);
        r.iter().any(|r| r["event_type"] == last).then_some(r)
    })
    .await;
    let types: Vec<&str> = records
        .iter()
        .map(|r| r["event_type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        vec!["workflow.started", last],
        "{name}: audit records after de-duplication: {records:#?}"
    );
    v
}

/// Asserts that no controller log of the scope shows a panic.
fn assert_no_panic(s: &Scope) {
    for entry in std::fs::read_dir(s.dir.path())
        .expect("scope folder")
        .flatten()
    {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) == Some("log") {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                !log.contains("panicked"),
                "{} shows a panic:\n{log}",
                path.display()
            );
        }
    }
}

fn lifecycles(n: u64, prefix: &str, seed: u64) -> Vec<(String, String, Outcome, Rng)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let outcome = if rng.below(3) == 0 {
                Outcome::Fails
            } else {
                Outcome::Succeeds
            };
            (
                unique_name(prefix),
                format!("default/deployment/{prefix}-{i}"),
                outcome,
                Rng::new(seed * 1000 + i),
            )
        })
        .collect()
}

fn one_run_each(items: &[(String, String, Outcome, Rng)]) -> BTreeMap<String, usize> {
    items
        .iter()
        .map(|(_, t, _, _)| (target_label(t), 1))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. crash safety
