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
    /// every run uid ever seen per target label
    uids: BTreeMap<String, BTreeSet<String>>,
    created: u64,
}

impl RunLog {
    fn apply(&mut self, o: &DynamicObject) {
        let name = o.metadata.name.clone().unwrap_or_default();
        let uid = o.metadata.uid.clone().unwrap_or_default();
        let target = o
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernaut.ai/target-resource"))
            .cloned()
            .unwrap_or_default();
        if self
            .uids
            .entry(target.clone())
            .or_default()
            .insert(uid.clone())
        {
            self.created += 1;
        }
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

/// Watches the PipelineRuns of a scope for the whole test.
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
            while let Some(event) = stream.next().await {
                let Ok(event) = event else { continue };
                let mut log = l.lock().unwrap();
                match event {
                    watcher::Event::Init => log.relist = Some(HashMap::new()),
                    watcher::Event::InitApply(o) => {
                        log.apply(&o);
                        let entry = log
                            .live
                            .get(o.metadata.name.as_deref().unwrap_or_default())
                            .cloned();
                        if let (Some(relist), Some(e)) = (log.relist.as_mut(), entry) {
                            relist.insert(o.metadata.name.clone().unwrap_or_default(), e);
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
async fn play(s: &Scope, name: &str, target: &str, outcome: Outcome, mut rng: Rng, spread_ms: u64) {
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
    until(120, &format!("PipelineRun of {name}"), || async {
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

#[tokio::test]
async fn lifecycles_survive_a_controller_killed_at_random_moments() {
    let m = size("LIFECYCLE_FAULT_LIFECYCLES", 12);
    let kills = size("LIFECYCLE_FAULT_KILLS", 4);
    let s = Scope::new("fault-crash").await;
    let watch = RunWatch::start(s.runs()).await;
    let items = lifecycles(m, "crash", 1);
    let cooldown = "2s";
    let ctl = s.start("ctl-000", cooldown).await;
    let controller = Arc::new(tokio::sync::Mutex::new(ctl));
    let spread = m * 400;

    let killer = async {
        let mut rng = Rng::new(2);
        let mut after_create = 0;
        for k in 0..kills {
            if k % 2 == 1 {
                // right after a run is created, before its resource's status is written
                let before = watch.created();
                let seen = tokio::time::timeout(Duration::from_secs(10), async {
                    while watch.created() == before {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
                .await;
                after_create += u64::from(seen.is_ok());
            } else {
                tokio::time::sleep(rng.ms(200, 1500)).await;
            }
            let mut ctl = controller.lock().await;
            assert!(ctl.is_running(), "controller {} died on its own", ctl.label);
            ctl.kill();
            *ctl = s.start(&format!("ctl-{:03}", k + 1), cooldown).await;
        }
        after_create
    };
    let players = futures::future::join_all(
        items
            .iter()
            .map(|(n, t, o, r)| play(&s, n, t, *o, r.clone(), spread)),
    );
    let (after_create, _) = tokio::join!(killer, players);

    for (n, t, o, _) in &items {
        assert_finished(&s, n, t, *o).await;
    }
    until(
        60,
        "every PipelineRun deleted after its cooldown",
        || async { s.run_list().await.is_empty().then_some(()) },
    )
    .await;
    watch.assert(&one_run_each(&items));
    assert!(controller.lock().await.is_running());
    assert_no_panic(&s);
    let failed = items.iter().filter(|i| i.2 == Outcome::Fails).count();
    eprintln!(
        "figures: crash: {m} lifecycles ({failed} failing), {kills} SIGKILLs ({after_create} right after a run was created), {} controller processes, {} audit transitions checked",
        kills + 1,
        2 * m
    );
}

// ---------------------------------------------------------------------------------------------
// 2. API server restart

#[tokio::test]
async fn lifecycles_survive_an_api_server_restart_without_a_controller_restart() {
    let m = (size("LIFECYCLE_FAULT_LIFECYCLES", 12) / 3).max(4);
    let restarts = size("LIFECYCLE_FAULT_RESTARTS", 1);
    let plane = PrivateControlPlane::start("faults-apiserver").await;
    let s = Scope::in_env(plane.env, "fault-api").await;
    let watch = RunWatch::start(s.runs()).await;
    let mut ctl = ControllerProcess::spawn(
        s.env,
        s.dir.path(),
        "ctl",
        &s.run_args(&support::repo_root().join("lifecycle.yaml"), "2s"),
    );
    ctl.wait_ready().await;
    let pid = ctl.pid();

    let mut all = Vec::new();
    for round in 0..restarts {
        // a batch in flight: some resources created before the restart, some during, some after
        let items = lifecycles(m, &format!("api{round}"), 10 + round);
        let players = futures::future::join_all(
            items
                .iter()
                .map(|(n, t, o, r)| play(&s, n, t, *o, r.clone(), m * 300)),
        );
        let restart = async {
            tokio::time::sleep(Duration::from_millis(m * 120)).await;
            let old = plane.apiserver_pid();
            plane.testenv(&["restart-apiserver"]).await;
            assert_ne!(plane.apiserver_pid(), old, "the API server was restarted");
        };
        tokio::join!(players, restart);
        all.extend(items);
    }
    for (n, t, o, _) in &all {
        assert_finished(&s, n, t, *o).await;
    }
    until(
        60,
        "every PipelineRun deleted after its cooldown",
        || async {
            s.runs()
                .list(&Default::default())
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        },
    )
    .await;
    // and a resource created well after the restart runs too
    let late = unique_name("late");
    play(
        &s,
        &late,
        "default/deployment/late",
        Outcome::Succeeds,
        Rng::new(99),
        0,
    )
    .await;
    assert_finished(&s, &late, "default/deployment/late", Outcome::Succeeds).await;
    let mut expected = one_run_each(&all);
    expected.insert(target_label("default/deployment/late"), 1);
    watch.assert(&expected);
    assert!(ctl.is_running(), "the controller exited:\n{}", ctl.log());
    assert_eq!(ctl.pid(), pid, "the same controller process throughout");
    assert_no_panic(&s);
    eprintln!(
        "figures: apiserver: {} lifecycles, {restarts} API server restarts, 1 controller process",
        all.len() + 1
    );
    drop(ctl);
    drop(plane);
}

// ---------------------------------------------------------------------------------------------
// 3. conflicting writers

#[tokio::test]
async fn lifecycles_finish_while_another_client_keeps_rewriting_their_metadata() {
    let m = (size("LIFECYCLE_FAULT_LIFECYCLES", 12) / 3).max(4);
    let s = Scope::new("fault-writers").await;
    let watch = RunWatch::start(s.runs()).await;
    let ctl = s.start("ctl", "2s").await;
    let items = lifecycles(m, "writers", 20);
    let stop = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    let conflicts = AtomicU64::new(0);
    let writer = async {
        let mut rng = Rng::new(21);
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let (name, _, _, _) = &items[rng.below(items.len() as u64) as usize];
            if i.is_multiple_of(2) {
                // a merge patch of labels and annotations (no resourceVersion: always applies)
                let patch = json!({"metadata": {
                    "labels": {"example.com/writer": format!("w{i}")},
                    "annotations": {"example.com/touched": format!("{i}"), format!("example.com/n{}", i % 7): "x"},
                }});
                if s.wfes()
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            } else if let Ok(Some(mut o)) = s.wfes().get_opt(name).await {
                // a read-modify-write of the whole object: a conflict when anyone wrote meanwhile
                o.metadata
                    .labels
                    .get_or_insert_default()
                    .insert("example.com/writer".into(), format!("w{i}"));
                o.metadata
                    .annotations
                    .get_or_insert_default()
                    .insert("example.com/touched".into(), format!("{i}"));
                match s.wfes().replace(name, &PostParams::default(), &o).await {
                    Ok(_) => {
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if api_code(&e) == Some(409) => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(rng.ms(0, 15)).await;
        }
    };
    let work = async {
        futures::future::join_all(
            items
                .iter()
                .map(|(n, t, o, r)| play(&s, n, t, *o, r.clone(), m * 200)),
        )
        .await;
        for (n, t, o, _) in &items {
            assert_finished(&s, n, t, *o).await;
        }
        stop.store(true, Ordering::SeqCst);
    };
    tokio::join!(writer, work);
    for (n, t, o, _) in &items {
        // status intact after the last metadata writes
        let v = assert_finished(&s, n, t, *o).await;
        assert!(
            text(&v, "/metadata/labels/example.com~1writer").starts_with('w'),
            "{v:#}"
        );
        assert!(support::condition(&v, "AuditRecorded").is_some(), "{v:#}");
        assert_eq!(
            v["metadata"]["finalizers"][0],
            "workflowexecution.kubernaut.ai/workflowexecution-cleanup"
        );
    }
    watch.assert(&one_run_each(&items));
    assert_no_panic(&s);
    drop(ctl);
    eprintln!(
        "figures: writers: {m} lifecycles, {} metadata writes, {} writer conflicts",
        writes.load(Ordering::Relaxed),
        conflicts.load(Ordering::Relaxed)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. a burst for one target

#[tokio::test]
async fn a_burst_for_one_target_runs_exactly_one_and_leaves_nothing_locked() {
    let burst = size("LIFECYCLE_FAULT_BURST", 10);
    let s = Scope::new("fault-burst").await;
    let watch = RunWatch::start(s.runs()).await;
    let ctl = s.start("ctl", "3s").await;
    let target = "default/deployment/burst";
    let run = run_name(target);
    let names: Vec<String> = (0..burst).map(|_| unique_name("burst")).collect();
    futures::future::join_all(names.iter().map(|n| s.create_wfe(n, target))).await;
    let mut finished = Vec::new();
    for n in &names {
        finished.push(
            wait_for(&s, n, 60, "Running or Failed", |v| {
                matches!(phase(v), "Running" | "Failed")
            })
            .await,
        );
    }
    let r = s.wait_run(&run).await;
    let owner = text(&r, "/metadata/labels/kubernaut.ai~1workflow-execution");
    let winners: Vec<&Value> = finished.iter().filter(|v| phase(v) == "Running").collect();
    assert_eq!(winners.len(), 1, "exactly one runs: {finished:#?}");
    assert_eq!(text(winners[0], "/metadata/name"), owner);
    for v in finished.iter().filter(|v| phase(v) == "Failed") {
        assert_eq!(
            v["status"]["failureDetails"]["reason"], "ExecutionRaceCondition",
            "{v:#}"
        );
        assert_eq!(
            v["status"]["failureDetails"]["message"],
            format!("Race condition: PipelineRun '{run}' already exists for target resource (created by {owner}). This indicates RO routing may have failed.").as_str()
        );
        assert_eq!(v["status"]["failureDetails"]["wasExecutionFailure"], false);
    }
    // the winner finishes; after its cooldown the run is gone and the target free again
    let started = text(winners[0], "/status/startTime");
    tekton::set_status(
        &s.runs(),
        &run,
        tekton::pipelinerun_finished(
            &run,
            &[],
            "True",
            "Succeeded",
            &tekton::tasks_message(0, 0, 0, 0),
            &started,
            &tekton::now(),
        ),
    )
    .await;
    wait_for(&s, &owner, 60, "LockReleased", |v| {
        condition_status(v, "LockReleased") == "True"
    })
    .await;
    s.wait_run_gone(&run).await;
    let next = unique_name("after");
    s.create_wfe(&next, target).await;
    let v = s.wait_phase(&next, "Running").await;
    assert_eq!(text(&v, "/status/pipelineRunRef/name"), run);
    let r2 = s.wait_run(&run).await;
    assert_eq!(
        text(&r2, "/metadata/labels/kubernaut.ai~1workflow-execution"),
        next
    );
    assert_ne!(text(&r2, "/metadata/uid"), text(&r, "/metadata/uid"));
    watch.assert(&BTreeMap::from([(target_label(target), 2)]));
    // the losers' audit: one failure each
    for n in names.iter().filter(|n| **n != owner) {
        let records = until(30, "the losers' audit", || async {
            let r = s.audit_records(n);
            (!r.is_empty()).then_some(r)
        })
        .await;
        let types: Vec<&str> = records
            .iter()
            .map(|r| r["event_type"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(types, vec!["workflow.failed"], "{n}");
    }
    assert_no_panic(&s);
    drop(ctl);
    eprintln!(
        "figures: burst: {burst} resources for one target, 1 run, {} races",
        burst - 1
    );
}

// ---------------------------------------------------------------------------------------------
// 5. reload storms

/// Copies lifecycle.yaml and templates/ into `<scope dir>/<folder>`; returns the rules file.
fn copy_rules(s: &Scope, folder: &str) -> PathBuf {
    let root = support::repo_root();
    let dir = s.dir.path().join(folder);
    std::fs::create_dir_all(dir.join("templates")).expect("rules folder");
    std::fs::copy(root.join("lifecycle.yaml"), dir.join("lifecycle.yaml")).expect("copy rules");
    for f in std::fs::read_dir(root.join("templates")).expect("templates") {
        let f = f.expect("template");
        std::fs::copy(f.path(), dir.join("templates").join(f.file_name())).expect("copy template");
    }
    dir.join("lifecycle.yaml")
}

/// Writes a file whole in one rename, as a ConfigMap volume update or an editor's save does.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("writing a variant");
    std::fs::rename(&tmp, path).expect("renaming a variant into place");
}

#[tokio::test]
async fn a_reload_storm_never_lets_a_reconcile_use_an_invalid_rule_set() {
    let m = (size("LIFECYCLE_FAULT_LIFECYCLES", 12) / 3).max(4);
    let storm = size("LIFECYCLE_FAULT_STORM_MS", 3000);
    let s = Scope::new("fault-storm").await;
    let rules = copy_rules(&s, "rules");
    let original = std::fs::read_to_string(&rules).expect("rules");
    let account = "runnerServiceAccount: kubernaut-workflow-runner";
    assert!(original.contains(account));
    // valid variants: another runner account (visible in each run); invalid: an unknown phase,
    // a YAML syntax error, an empty file
    let valid: Vec<(String, String)> = ["kubernaut-workflow-runner", "runner-b", "runner-c"]
        .iter()
        .map(|a| {
            (
                a.to_string(),
                original.replacen(account, &format!("runnerServiceAccount: {a}"), 1),
            )
        })
        .collect();
    let invalid = [
        original.replacen("        to: Running\n", "        to: Runnning\n", 1),
        original.replacen("settings:", "settings: [", 1),
        String::new(),
    ];
    let probe = s.dir.path().join("rules").join("probe.yaml");
    let mut revisions = BTreeMap::new();
    for (a, text) in &valid {
        write_atomically(&probe, text);
        let r = lifecycle_engine::rules::Rules::load(&probe, &[]).expect("a valid variant");
        revisions.insert(r.revision, a.clone());
    }
    for text in &invalid {
        write_atomically(&probe, text);
        assert!(
            lifecycle_engine::rules::Rules::load(&probe, &[]).is_err(),
            "an invalid variant loads"
        );
    }
    std::fs::remove_file(&probe).expect("probe");
    assert_eq!(revisions.len(), valid.len());

    // every revision ever recorded on a resource, as the watch shows them
    let seen: Arc<Mutex<BTreeSet<String>>> = Default::default();
    let seen_task = {
        let seen = seen.clone();
        let api = s.wfes();
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = stream.next().await {
                if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event {
                    let v = serde_json::to_value(o).expect("json");
                    let r = text(&v, "/status/rulesRevision");
                    if !r.is_empty() {
                        seen.lock().unwrap().insert(r);
                    }
                }
            }
        })
    };
    let ctl = ControllerProcess::spawn(s.env, s.dir.path(), "ctl", &s.run_args(&rules, "2s"));
    let mut ctl = ctl;
    ctl.wait_ready().await;
    let items = lifecycles(m, "storm", 30);
    let (mut good, mut bad, mut settled_bad) = (0u64, 0u64, 0u64);
    let storm_writer = async {
        let mut rng = Rng::new(31);
        let end = tokio::time::Instant::now() + Duration::from_millis(storm);
        let (mut i, mut burst, mut current) = (0u64, 0u64, 0usize);
        while tokio::time::Instant::now() < end {
            i += 1;
            if i.is_multiple_of(2) {
                write_atomically(&rules, &invalid[rng.below(invalid.len() as u64) as usize]);
                bad += 1;
            } else {
                write_atomically(&rules, &valid[rng.below(valid.len() as u64) as usize].1);
                good += 1;
            }
            tokio::time::sleep(rng.ms(50, 100)).await;
            if i.is_multiple_of(6) {
                // let the reloader's debounce (300 ms) settle on a variant now and then, so that
                // reloads, accepted and rejected, happen while lifecycles run
                burst += 1;
                if burst.is_multiple_of(2) {
                    write_atomically(&rules, &invalid[0]);
                    bad += 1;
                    settled_bad += 1;
                } else {
                    current = (current + 1) % valid.len();
                    write_atomically(&rules, &valid[current].1);
                    good += 1;
                }
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
        }
        // the storm ends on a valid variant
        current = (current + 1) % valid.len();
        write_atomically(&rules, &valid[current].1);
        good += 1;
    };
    let players = futures::future::join_all(
        items
            .iter()
            .map(|(n, t, o, r)| play(&s, n, t, *o, r.clone(), storm)),
    );
    tokio::join!(storm_writer, players);
    for (n, t, o, _) in &items {
        assert_finished(&s, n, t, *o).await;
    }
    let last = lifecycle_engine::rules::Rules::load(&rules, &[])
        .expect("valid")
        .revision;
    until(30, "the last variant loaded", || async {
        (ctl.revision().await == last).then_some(())
    })
    .await;
    seen_task.abort();
    let seen = seen.lock().unwrap().clone();
    for r in &seen {
        assert!(
            revisions.contains_key(r),
            "a resource recorded revision {r}, none of the valid variants {revisions:?}"
        );
    }
    assert!(!seen.is_empty());
    assert!(ctl.is_running());
    let m_text = ctl.metrics().await;
    let ok = support::metric_value(&m_text, "lifecycle_rules_reload_total{result=\"ok\"}");
    let err = support::metric_value(&m_text, "lifecycle_rules_reload_total{result=\"error\"}");
    if settled_bad > 0 {
        assert!(err >= 1.0, "no rejected reload: {m_text}");
    }
    assert!(ok >= 1.0, "no accepted reload: {m_text}");
    assert_no_panic(&s);
    eprintln!(
        "figures: storm: {m} lifecycles, {} rewrites ({good} valid, {bad} invalid) in {storm} ms, controller reloads ok={ok} error={err}, revisions recorded {}",
        good + bad,
        seen.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 6. hostile resources

#[derive(Debug)]
enum Expect {
    /// The API server refuses the create (422).
    Rejected,
    /// Failed validation with this exact message, no run.
    Fails(String),
    /// Runs (the run carries the target verbatim), completes, and its lock is released.
    Runs,
}

fn parts_message(n: usize) -> String {
    format!(
        "targetResource must be in format {{namespace}}/{{kind}}/{{name}} (namespaced) or {{kind}}/{{name}} (cluster-scoped), got {n} parts"
    )
}

fn empty_part(i: usize) -> String {
    format!("targetResource has empty part at position {i}")
}

/// Every hostile shape: (what, spec, expectation).
fn hostile_cases() -> Vec<(&'static str, Value, Expect)> {
    let big = "x".repeat(100_000);
    let with = |i: usize, f: &dyn Fn(&mut Value)| {
        let mut v = wfe_body(&format!("default/deployment/hostile-{i}"));
        f(&mut v);
        v
    };
    let target = |t: String| wfe_body(&t);
    let mut many = serde_json::Map::new();
    for i in 0..2000 {
        many.insert(format!("PARAM_{i:04}"), Value::String(format!("value-{i}")));
    }
    let odd = json!({
        "": "empty name",
        "a b": "space",
        "ключ": "cyrillic",
        "🙂": "emoji",
        "x=y": "a=b=c",
        "$(params.evil)": "$(context.pipelineRun.name)",
        "{{ 7*7 }}": "{% for x in range(9) %}{{ x }}{% endfor %}",
        "a\nb": "new\nline",
        "\u{202E}rtl": "\u{202E}gnp.exe",
        "TARGET_RESOURCE": "spoofed/deployment/elsewhere",
    });
    vec![
        (
            "empty containerImage",
            with(0, &|v| {
                v["spec"]["workflowRef"]["containerImage"] = json!("")
            }),
            Expect::Fails("workflowRef.containerImage is required".into()),
        ),
        (
            "empty targetResource",
            target(String::new()),
            Expect::Fails("targetResource is required".into()),
        ),
        (
            "blank targetResource",
            target("   ".into()),
            Expect::Fails(parts_message(1)),
        ),
        ("a//b", target("a//b".into()), Expect::Fails(empty_part(1))),
        ("/a/b", target("/a/b".into()), Expect::Fails(empty_part(0))),
        ("a/b/", target("a/b/".into()), Expect::Fails(empty_part(2))),
        ("//", target("//".into()), Expect::Fails(empty_part(0))),
        (
            "a/b/c/d",
            target("a/b/c/d".into()),
            Expect::Fails(parts_message(4)),
        ),
        (
            "100 KB one-part target",
            target(big.clone()),
            Expect::Fails(parts_message(1)),
        ),
        (
            "100 KB target with an empty part",
            target(format!("ns//{big}")),
            Expect::Fails(empty_part(1)),
        ),
        (
            "20 KB valid target",
            target(format!("default/deployment/{}", "y".repeat(20_000))),
            Expect::Runs,
        ),
        (
            "100 KB containerImage",
            with(11, &|v| {
                v["spec"]["workflowRef"]["containerImage"] = json!(format!("quay.io/{big}"))
            }),
            Expect::Runs,
        ),
        (
            "100 KB parameter value",
            with(12, &|v| v["spec"]["parameters"]["BIG"] = json!(big.clone())),
            Expect::Runs,
        ),
        (
            "unicode, RTL and emoji target",
            target("default/deployment/ñandú-\u{202E}lave-🚀-日本".into()),
            Expect::Runs,
        ),
        (
            "control characters in the target",
            target("default/deploy\tment/a\u{7}b\u{1b}[31mred\r".into()),
            Expect::Runs,
        ),
        (
            "2000 parameters",
            with(15, &|v| {
                v["spec"]["parameters"] = Value::Object(many.clone())
            }),
            Expect::Runs,
        ),
        (
            "odd parameter names and values",
            with(16, &|v| v["spec"]["parameters"] = odd.clone()),
            Expect::Runs,
        ),
        (
            "empty workflowId and version",
            with(17, &|v| {
                v["spec"]["workflowRef"]["workflowId"] = json!("");
                v["spec"]["workflowRef"]["version"] = json!("");
            }),
            Expect::Runs,
        ),
        (
            "template syntax in the target",
            target("default/{{ 7*7 }}/{% if true %}x{% endif %}".into()),
            Expect::Runs,
        ),
        (
            "missing targetResource",
            with(19, &|v| {
                v["spec"].as_object_mut().unwrap().remove("targetResource");
            }),
            Expect::Rejected,
        ),
        (
            "a number as a parameter value",
            with(20, &|v| v["spec"]["parameters"]["N"] = json!(7)),
            Expect::Rejected,
        ),
        (
            "a malformed timeout",
            with(21, &|v| {
                v["spec"]["executionConfig"] = json!({"timeout": "forever"})
            }),
            Expect::Rejected,
        ),
        ("spec as a string", json!({"spec": "x"}), Expect::Rejected),
    ]
}

async fn hostile_case(s: &Scope, what: &str, body: &Value, expect: &Expect) -> &'static str {
    let name = unique_name("hostile");
    let object = DynamicObject::new(&name, &support::workflowexecutions()).data(body.clone());
    let created = s.wfes().create(&PostParams::default(), &object).await;
    if let Expect::Rejected = expect {
        let e = created.expect_err(&format!("{what}: admitted by the API server"));
        assert_eq!(api_code(&e), Some(422), "{what}: {e}");
        return "rejected";
    }
    created.unwrap_or_else(|e| panic!("{what}: refused by the API server: {e}"));
    let target = body["spec"]["targetResource"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let v = wait_for(s, &name, 60, &format!("{what}: Running or Failed"), |v| {
        matches!(phase(v), "Running" | "Failed")
    })
    .await;
    match expect {
        Expect::Fails(message) => {
            assert_eq!(phase(&v), "Failed", "{what}: {v:#}");
            assert_eq!(
                v["status"]["failureDetails"]["reason"], "ConfigurationError",
                "{what}"
            );
            assert_eq!(
                v["status"]["failureDetails"]["message"],
                message.as_str(),
                "{what}"
            );
            assert_eq!(
                v["status"]["failureDetails"]["wasExecutionFailure"], false,
                "{what}"
            );
            if !target.is_empty() {
                assert!(
                    s.run(&run_name(&target)).await.is_none(),
                    "{what}: a run was created"
                );
            }
            "failed"
        }
        Expect::Runs => {
            assert_eq!(phase(&v), "Running", "{what}: {:#}", v["status"]);
            let run = run_name(&target);
            let r = s.wait_run(&run).await;
            assert_eq!(
                text(&r, "/metadata/annotations/kubernaut.ai~1target-resource"),
                target,
                "{what}"
            );
            assert_eq!(
                text(&r, "/metadata/labels/kubernaut.ai~1workflow-execution"),
                name,
                "{what}"
            );
            // every parameter verbatim, sorted, then the real target last
            let params = r["spec"]["params"].as_array().cloned().unwrap_or_default();
            let mut expected: Vec<(String, String)> = body["spec"]["parameters"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| *k != "TARGET_RESOURCE")
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            expected.sort();
            expected.push(("TARGET_RESOURCE".into(), target.clone()));
            let got: Vec<(String, String)> = params
                .iter()
                .map(|p| (text(p, "/name"), text(p, "/value")))
                .collect();
            assert!(
                got == expected,
                "{what}: params differ ({} vs {} entries)",
                got.len(),
                expected.len()
            );
            let started = text(&v, "/status/startTime");
            tekton::set_status(
                &s.runs(),
                &run,
                tekton::pipelinerun_finished(
                    &run,
                    &[],
                    "True",
                    "Succeeded",
                    &tekton::tasks_message(0, 0, 0, 0),
                    &started,
                    &tekton::now(),
                ),
            )
            .await;
            let v = wait_for(
                s,
                &name,
                60,
                &format!("{what}: Completed, lock released"),
                |v| phase(v) == "Completed" && condition_status(v, "LockReleased") == "True",
            )
            .await;
            assert_eq!(condition_status(&v, "Ready"), "True", "{what}");
            s.wait_run_gone(&run).await;
            "completed"
        }
        Expect::Rejected => unreachable!(),
    }
}

#[tokio::test]
async fn hostile_specs_are_rejected_or_finish_precisely_and_never_crash_the_controller() {
    let s = Scope::new("fault-hostile").await;
    let mut ctl = s.start("ctl", "1s").await;
    let cases = hostile_cases();
    let outcomes = futures::future::join_all(
        cases
            .iter()
            .map(|(what, body, expect)| hostile_case(&s, what, body, expect)),
    )
    .await;
    assert!(ctl.is_running(), "the controller exited:\n{}", ctl.log());
    let (code, _) = ctl.healthz().await.expect("/healthz");
    assert_eq!(code, 200);
    assert_no_panic(&s);
    let count = |o: &str| outcomes.iter().filter(|x| **x == o).count();
    eprintln!(
        "figures: hostile: {} inputs: {} rejected by the API server, {} failed validation precisely, {} ran and completed",
        cases.len(),
        count("rejected"),
        count("failed"),
        count("completed")
    );
}

/// A target the CRD admits but longer than a condition message may be (32768 bytes): the run is
/// created and completes, so its lock must be released too. Pins a defect of the default rules:
/// the LockReleased condition's message embeds the whole target, the status write of the release
/// is refused with 422 (`status.conditions[5].message: Too long`) and retried for ever, so the
/// resource never records the release.
#[tokio::test]
async fn a_100_kb_target_completes_and_releases_its_lock() {
    let s = Scope::new("fault-bigtarget").await;
    let ctl = s.start("ctl", "1s").await;
    let target = format!("default/deployment/{}", "x".repeat(100_000));
    let outcome = hostile_case(&s, "100 KB valid target", &wfe_body(&target), &Expect::Runs).await;
    assert_eq!(outcome, "completed");
    drop(ctl);
}
