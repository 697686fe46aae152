//! `lifecycle-bench`: end-to-end load on a real control plane (kube-apiserver + etcd on
//! loopback, `scripts/testenv`), with the controller under test as a separate process.
//!
//! For each controller command and each size N it creates N WorkflowExecutions as fast as the
//! API allows (bounded concurrency), plays Tekton (every PipelineRun it sees gets a TaskRun and a
//! Running status, then, after a hold, Succeeded or, for a configurable share, Failed with a
//! failed TaskRun), waits until every resource is terminal and, with a cooldown, until every
//! lock is released, and measures from watch events timestamped here: run-creation and
//! status-sync latencies, time to all Running and all terminal, controller CPU and peak RSS
//! (`/proc`), API requests (the controller's own `/metrics` and the apiserver's
//! `apiserver_request_total` less this harness's own requests), hot-reload latency and start-up
//! time with N existing resources. A separate memory test caches 10 000 resources and runs.
//! It also checks correctness (all terminal with the expected outcome, exactly one run per
//! resource, none created twice); `--smoke` checks only that and never fails on a timing.
//!
//! Everything it starts it stops by process id: the controller (also killed when this process
//! drops it), `perf`, and the control plane when it started one (whose watchdog also stops it
//! when this process dies). Traffic goes to 127.0.0.1 only. Results: `<out>/bench.json` and
//! `<out>/bench.md`; docs/performance.md explains them.

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Parser;
use futures::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const EXEC_NS: &str = "kubernaut-workflows";
const OWNER_LABEL: &str = "kubernaut.ai/workflow-execution";
const SOURCE_NS_LABEL: &str = "kubernaut.ai/source-namespace";
const RELOAD_LABEL: &str = "bench.lifecycle-engine/reload";
const BENCH_NS_LABEL: &str = "bench.lifecycle-engine/namespace";
const DEFAULT_CMD: &str = "exec {bin} run --rules {rules} --context {context} --metrics-address {metrics_address} --set cooldown={cooldown} --log-format json";

/// End-to-end load on the local control plane; writes <out>/bench.json and <out>/bench.md.
#[derive(Parser, Debug, Clone)]
#[command(name = "lifecycle-bench", version, args_override_self = true)]
struct Args {
    /// Numbers of WorkflowExecutions, one full run each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    sizes: Vec<usize>,
    /// CI size: N=20, correctness only (exit 1 on a problem, never on a timing); no memory,
    /// reload or start-up measurements.
    #[arg(long)]
    smoke: bool,
    /// Use this running control plane (contexts `admin` and `controller`) instead of starting
    /// one; objects are cleaned up between runs.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// State directory of the control plane this harness starts (a fresh one per run).
    #[arg(long, default_value = "target/bench/testenv")]
    state_dir: PathBuf,
    /// The controller binary for `{bin}` in the default command.
    #[arg(long, default_value = "target/release/lifecycle")]
    controller_bin: PathBuf,
    /// Controller to measure instead of the default, as `NAME=SHELL COMMAND` (repeatable: each is
    /// measured in turn on the same control plane). Placeholders: {bin} {rules} {kubeconfig}
    /// {context} {metrics_address} {health_address} {cooldown}, and {default} for the default
    /// command. KUBECONFIG is set in its environment. Prefix the program with `exec` so that
    /// the measured process is the controller itself.
    #[arg(long = "controller-cmd")]
    controller_cmd: Vec<String>,
    /// Rules file; it and its `templates/` folder are copied per run (hot reload edits the copy).
    #[arg(long, default_value = "lifecycle.yaml")]
    rules: PathBuf,
    /// Share of PipelineRuns that fail (with a failed TaskRun).
    #[arg(long, default_value_t = 0.1)]
    fail_share: f64,
    /// How long each PipelineRun stays Running before it finishes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    run_hold: Duration,
    /// WorkflowExecution creates in flight at once.
    #[arg(long, default_value_t = 32)]
    create_concurrency: usize,
    /// Pace the creates at this many per second (0: as fast as the API allows).
    #[arg(long, default_value_t = 0.0)]
    create_rate: f64,
    /// Tekton writes (TaskRun create, status patches) in flight at once.
    #[arg(long, default_value_t = 32)]
    tekton_concurrency: usize,
    /// Cooldown the controller is given ({cooldown}); `none` does not wait for lock release.
    /// Default 10s (2s with --smoke).
    #[arg(long)]
    cooldown: Option<String>,
    /// Resources (and runs) of the memory test; 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    memory_size: usize,
    /// Quiet time before the memory test reads RSS (the default rules re-check Running
    /// resources every 10 s).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    memory_settle: Duration,
    /// Hot-reload samples per size; 0 skips them.
    #[arg(long, default_value_t = 3)]
    reload_samples: usize,
    /// Record a `perf` profile of the controller during the run of this size.
    #[arg(long)]
    perf_size: Option<usize>,
    /// Options of `perf record` (e.g. "-F 99 --call-graph dwarf,16384" for call chains through
    /// Rust code, which has no frame pointers).
    #[arg(long, default_value = "-F 499 -g", allow_hyphen_values = true)]
    perf_args: String,
    /// What the report names as the measured build (default: this work tree's commit).
    #[arg(long)]
    controller_commit: Option<String>,
    /// Deadline per size: this much plus --deadline-per-resource times N.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    deadline: Duration,
    /// Extra deadline per resource.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    deadline_per_resource: Duration,
    /// Output directory (bench.json, bench.md, controller logs, profiles).
    #[arg(long, default_value = "target/bench/out")]
    out: PathBuf,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    lifecycle_engine::time::parse_duration(s).map(Duration::from_secs_f64)
}

// ------------------------------------------------------------------------------------------
// clock and small helpers

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the harness started (all event times use this clock).
fn now_ms() -> f64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_secs_f64() * 1000.0
}

fn rfc3339_now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

fn api_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        _ => 0,
    }
}

fn ar(group: &str, version: &str, kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

fn wfe_ar() -> ApiResource {
    ar("kubernaut.ai", "v1alpha1", "WorkflowExecution")
}
fn pr_ar() -> ApiResource {
    ar("tekton.dev", "v1", "PipelineRun")
}
fn tr_ar() -> ApiResource {
    ar("tekton.dev", "v1", "TaskRun")
}

/// Latency distribution in milliseconds (nearest-rank percentiles).
#[derive(Serialize, Clone, Debug)]
struct Stats {
    count: usize,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

fn stats(mut v: Vec<f64>) -> Option<Stats> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some(Stats {
        count: v.len(),
        p50: rank(0.50),
        p95: rank(0.95),
        p99: rank(0.99),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    })
}

// ------------------------------------------------------------------------------------------
// /proc sampling

fn clk_tck() -> f64 {
    static T: OnceLock<f64> = OnceLock::new();
    *T.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// (ppid, utime + stime + cutime + cstime in ticks) of a process.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
    Some((num(1)? as u32, num(11)? + num(12)? + num(13)? + num(14)?))
}

/// This process's own CPU seconds (user + system, children not included).
fn own_cpu_s() -> f64 {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = text.rfind(')').map(|i| &text[i + 1..]).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|s| s.parse().unwrap_or(0))
        .collect();
    (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) as f64 / clk_tck()
}

/// (VmRSS, VmHWM) in KiB.
fn proc_mem(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The process and its live descendants.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some((ppid, _)) = proc_stat(p)
            {
                parents.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(children) = parents.get(&out[i]) {
            out.extend(children.iter().copied());
        }
        i += 1;
    }
    out
}

/// CPU seconds, RSS and the main process's RSS high-water mark, over a process tree.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Usage {
    cpu_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

fn usage(pid: u32) -> Option<Usage> {
    let (_, ticks) = proc_stat(pid)?;
    let (rss, hwm) = proc_mem(pid)?;
    let mut u = Usage {
        cpu_s: ticks as f64 / clk_tck(),
        rss_kib: rss,
        hwm_kib: hwm,
    };
    for child in process_tree(pid).into_iter().skip(1) {
        if let (Some((_, t)), Some((r, _))) = (proc_stat(child), proc_mem(child)) {
            u.cpu_s += t as f64 / clk_tck();
            u.rss_kib += r;
        }
    }
    Some(u)
}

/// Samples a process tree every 100 ms: the last reading and the peak RSS.
struct Sampler {
    pid: u32,
    state: Arc<Mutex<SamplerState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default, Clone, Copy)]
struct SamplerState {
    last: Usage,
    peak_rss_kib: u64,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let state = Arc::new(Mutex::new(SamplerState::default()));
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(u) = usage(pid) {
                    let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
                    st.last = u;
                    st.peak_rss_kib = st.peak_rss_kib.max(u.rss_kib).max(u.hwm_kib);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Sampler { pid, state, task }
    }

    /// A fresh reading (falls back to the last sample when the process is gone).
    fn now(&self) -> Usage {
        let fresh = usage(self.pid);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = fresh {
            st.last = u;
            st.peak_rss_kib = st.peak_rss_kib.max(u.rss_kib).max(u.hwm_kib);
        }
        st.last
    }

    fn peak_rss_kib(&self) -> u64 {
        self.now();
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .peak_rss_kib
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ------------------------------------------------------------------------------------------
// Prometheus text

type Sample = (String, BTreeMap<String, String>, f64);

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                (
                    &line[..open],
                    parse_labels(&line[open + 1..close]),
                    &line[close + 1..],
                )
            }
            None => match line.split_once(' ') {
                Some((n, r)) => (n, BTreeMap::new(), r),
                None => continue,
            },
        };
        if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
            out.push((name.to_string(), labels, v));
        }
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            chars.next();
            if c == '=' {
                break;
            }
            if c != ',' && c != ' ' {
                key.push(c);
            }
        }
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key, value);
    }
    out
}

fn metric_sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, _, v)| v)
        .sum()
}

/// Sums of a metric grouped by some labels, joined with `/`.
fn metric_by(samples: &[Sample], name: &str, keys: &[&str]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (n, labels, v) in samples {
        if n == name {
            let k = keys
                .iter()
                .map(|k| labels.get(*k).cloned().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("/");
            *out.entry(k).or_insert(0.0) += v;
        }
    }
    out
}

fn delta(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

/// A histogram's count, sum and cumulative buckets.
#[derive(Default, Clone)]
struct Histogram {
    count: f64,
    sum: f64,
    buckets: Vec<(f64, f64)>,
}

fn histogram(samples: &[Sample], name: &str) -> Histogram {
    let mut h = Histogram {
        count: metric_sum(samples, &format!("{name}_count")),
        sum: metric_sum(samples, &format!("{name}_sum")),
        buckets: Vec::new(),
    };
    for (n, labels, v) in samples {
        if n == &format!("{name}_bucket")
            && let Some(le) = labels.get("le")
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            h.buckets.push((le, *v));
        }
    }
    h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    h
}

/// Summary of a histogram's growth between two scrapes.
#[derive(Serialize, Clone, Debug, Default)]
struct HistogramDelta {
    count: f64,
    mean_ms: f64,
    /// Upper bound of the bucket holding the 99th percentile, in ms.
    p99_bucket_ms: Option<f64>,
}

fn histogram_delta(a: &Histogram, b: &Histogram) -> HistogramDelta {
    let count = b.count - a.count;
    let sum = b.sum - a.sum;
    let mut p99 = None;
    if count > 0.0 {
        for (le, v) in &b.buckets {
            let before = a
                .buckets
                .iter()
                .find(|(l, _)| l == le)
                .map(|x| x.1)
                .unwrap_or(0.0);
            if v - before >= 0.99 * count {
                p99 = Some(*le * 1000.0);
                break;
            }
        }
    }
    HistogramDelta {
        count,
        mean_ms: if count > 0.0 {
            sum / count * 1000.0
        } else {
            0.0
        },
        p99_bucket_ms: p99.filter(|v: &f64| v.is_finite()),
    }
}

// ------------------------------------------------------------------------------------------
// requests this harness makes, keyed as the apiserver's apiserver_request_total counts them

#[derive(Default)]
struct Requests(Mutex<BTreeMap<String, f64>>);

impl Requests {
    fn count(&self, verb: &str, resource: &str, subresource: &str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{verb}/{resource}/{subresource}"))
            .or_insert(0.0) += 1.0;
    }
    fn snapshot(&self) -> BTreeMap<String, f64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Resources whose requests are attributed to the controller (apiserver total less ours).
const COUNTED_RESOURCES: [&str; 4] = ["workflowexecutions", "pipelineruns", "taskruns", "events"];

async fn apiserver_requests(client: &Client) -> Result<BTreeMap<String, f64>> {
    let req = kube::core::Request::new("").get("metrics", &Default::default())?;
    let text = client.request_text(req).await?;
    let samples: Vec<Sample> = parse_metrics(&text)
        .into_iter()
        .filter(|(n, l, _)| {
            n == "apiserver_request_total"
                && COUNTED_RESOURCES.contains(&l.get("resource").map(String::as_str).unwrap_or(""))
                && !matches!(l.get("verb").map(String::as_str), Some("WATCH" | "LIST"))
        })
        .collect();
    Ok(metric_by(
        &samples,
        "apiserver_request_total",
        &["verb", "resource", "subresource"],
    ))
}

// ------------------------------------------------------------------------------------------
// the control plane

struct ControlPlane {
    kubeconfig: PathBuf,
    /// Set when this harness started it (and must stop it).
    managed: Option<PathBuf>,
}

impl ControlPlane {
    fn testenv(state: &Path, args: &[&str]) -> Result<std::process::Output> {
        let out = std::process::Command::new(Path::new(ROOT).join("scripts/testenv"))
            .args(args)
            .env("LIFECYCLE_TESTENV_DIR", state)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running scripts/testenv {}", args.join(" ")))?;
        ensure!(
            out.status.success(),
            "scripts/testenv {} failed",
            args.join(" ")
        );
        Ok(out)
    }

    fn up(state: &Path) -> Result<ControlPlane> {
        Self::testenv(state, &["build"])?;
        let pid = std::process::id().to_string();
        // a fresh one: stop whatever an earlier run left there
        let _ = Self::testenv(state, &["down"]);
        Self::testenv(state, &["up", "--owner-pid", &pid])?;
        Ok(ControlPlane {
            kubeconfig: state.join("kubeconfig"),
            managed: Some(state.to_path_buf()),
        })
    }

    fn down(&mut self) {
        if let Some(state) = self.managed.take()
            && let Err(e) = Self::testenv(&state, &["down"])
        {
            eprintln!("bench: {e:#}");
        }
    }

    /// Process ids of kube-apiserver and etcd, when their pid files are beside the kubeconfig.
    fn pids(&self) -> Vec<(String, u32)> {
        let dir = self.kubeconfig.parent().unwrap_or(Path::new("."));
        ["kube-apiserver", "etcd"]
            .iter()
            .filter_map(|n| {
                std::fs::read_to_string(dir.join(format!("{n}.pid")))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .map(|p| (n.to_string(), p))
            })
            .collect()
    }

    async fn client(&self, context: &str) -> Result<Client> {
        let file = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let options = KubeConfigOptions {
            context: Some(context.to_string()),
            ..Default::default()
        };
        let config = Config::from_custom_kubeconfig(file, &options).await?;
        Ok(Client::try_from(config)?)
    }

    /// CRDs, namespaces and the controller's RBAC, applied with the matching kubectl.
    fn install(&self) -> Result<()> {
        let bin = std::process::Command::new(Path::new(ROOT).join("scripts/testenv"))
            .arg("bin")
            .output()?;
        let kubectl = PathBuf::from(String::from_utf8_lossy(&bin.stdout).trim()).join("kubectl");
        let root = Path::new(ROOT);
        let run = |args: &[&str]| -> Result<()> {
            let out = std::process::Command::new(&kubectl)
                .args(args)
                .env("KUBECONFIG", &self.kubeconfig)
                .output()
                .with_context(|| format!("running {}", kubectl.display()))?;
            ensure!(
                out.status.success(),
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        // resolved: kubectl reads a symlink to a folder (deploy/crds) as a file
        let p = |rel: &str| {
            let path = root.join(rel);
            std::fs::canonicalize(&path)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned()
        };
        run(&[
            "apply",
            "--server-side",
            "--field-manager=lifecycle-bench",
            "-f",
            &p("deploy/crds"),
            "-f",
            &p("tests/crds"),
            "-f",
            &p("deploy/base/namespace.yaml"),
        ])?;
        run(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/workflowexecutions.kubernaut.ai",
            "crd/pipelineruns.tekton.dev",
            "crd/taskruns.tekton.dev",
        ])?;
        run(&[
            "apply",
            "--server-side",
            "--field-manager=lifecycle-bench",
            "-f",
            &p("deploy/base/rbac.yaml"),
        ])
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.down();
    }
}

// ------------------------------------------------------------------------------------------
// the controller process

#[derive(Clone, Debug)]
struct ControllerSpec {
    name: String,
    command: String,
}

struct Controller {
    child: tokio::process::Child,
    pid: u32,
    metrics_url: String,
    ready_url: String,
    spawned: f64,
}

struct Launch<'a> {
    spec: &'a ControllerSpec,
    args: &'a Args,
    kubeconfig: &'a Path,
    rules: &'a Path,
    cooldown: &'a str,
    log: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn abs(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

impl Controller {
    fn spawn(l: &Launch) -> Result<Controller> {
        let metrics = format!("127.0.0.1:{}", free_port()?);
        // readiness is asked of {health_address} when the command names one, else of the
        // metrics address (where `lifecycle run` serves /readyz too)
        let health = if !l.spec.command.contains("{health_address}") {
            metrics.clone()
        } else {
            format!("127.0.0.1:{}", free_port()?)
        };
        let command = l
            .spec
            .command
            .replace("{default}", DEFAULT_CMD)
            .replace("{bin}", &abs(&l.args.controller_bin).to_string_lossy())
            .replace("{rules}", &abs(l.rules).to_string_lossy())
            .replace("{kubeconfig}", &abs(l.kubeconfig).to_string_lossy())
            .replace("{context}", "controller")
            .replace("{metrics_address}", &metrics)
            .replace("{health_address}", &health)
            .replace("{cooldown}", l.cooldown);
        let log = std::fs::File::create(&l.log)
            .with_context(|| format!("creating {}", l.log.display()))?;
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .env("KUBECONFIG", abs(l.kubeconfig))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {command}"))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("controller exited at once"))?;
        Ok(Controller {
            child,
            pid,
            metrics_url: format!("http://{metrics}/metrics"),
            ready_url: format!("http://{health}/readyz"),
            spawned: now_ms(),
        })
    }

    /// Waits for /readyz 200; returns the time from spawn, ms.
    async fn ready(&mut self, http: &reqwest::Client, timeout: Duration) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("the controller exited while starting ({status})");
            }
            if let Ok(r) = http.get(&self.ready_url).send().await
                && r.status().is_success()
            {
                return Ok(now_ms() - self.spawned);
            }
            ensure!(
                Instant::now() < deadline,
                "the controller was not ready within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn metrics(&self, http: &reqwest::Client) -> Vec<Sample> {
        match http.get(&self.metrics_url).send().await {
            Ok(r) => parse_metrics(&r.text().await.unwrap_or_default()),
            Err(_) => Vec::new(),
        }
    }

    async fn revision(&self, http: &reqwest::Client) -> Option<String> {
        let body = http
            .get(&self.ready_url)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let at = body.find("(revision ")? + "(revision ".len();
        let end = body[at..].find(')')?;
        Some(body[at..at + end].to_string())
    }

    /// SIGTERM to the process and its descendants (a wrapper that does not `exec` must not
    /// leave the controller behind), then SIGKILL after 15 s; returns the time to exit, ms.
    async fn stop(mut self) -> f64 {
        let t0 = now_ms();
        let tree = process_tree(self.pid);
        for pid in tree.iter().rev() {
            signal(*pid, "TERM");
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "bench: the controller ({}) ignored SIGTERM for 15 s; killing it",
                self.pid
            );
            let _ = self.child.kill().await;
        }
        let waited = now_ms() - t0;
        // a descendant still running 5 s later gets SIGKILL
        let deadline = Instant::now() + Duration::from_secs(5);
        for pid in tree.into_iter().skip(1) {
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                signal(pid, "KILL");
            }
        }
        waited
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

// ------------------------------------------------------------------------------------------
// what the watches saw

#[derive(Default, Clone)]
struct WfeTrack {
    /// Created: the earlier of the create call's return and the first watch event.
    created: Option<f64>,
    /// First seen in Running (or already past it).
    running: Option<f64>,
    /// First seen mirroring a running PipelineRun (`pipelineRunStatus.reason` Running).
    mirrored: Option<f64>,
    terminal: Option<f64>,
    phase: String,
    status: Value,
}

#[derive(Default, Clone)]
struct PrTrack {
    owner: String,
    uids: Vec<String>,
    added: Option<f64>,
    /// Running status written (earlier of the patch's return and the watch event).
    running: Option<f64>,
    /// Finished status written (earlier of the patch's return and the watch event).
    finished: Option<f64>,
    deleted: Option<f64>,
    reload_label: Option<String>,
}

#[derive(Default)]
struct Track {
    wfe: HashMap<String, WfeTrack>,
    pr: HashMap<String, PrTrack>,
    /// Problems seen by the Tekton player (failed writes).
    problems: Vec<String>,
}

type Shared = Arc<Mutex<Track>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Track> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

fn earliest(slot: &mut Option<f64>, t: f64) {
    *slot = Some(slot.map_or(t, |s| s.min(t)));
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

fn watch_wfes(api: Api<DynamicObject>, track: Shared) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = events.next().await {
            let t = now_ms();
            let obj = match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                _ => continue,
            };
            let name = obj.metadata.name.clone().unwrap_or_default();
            let status = obj.data.get("status").cloned().unwrap_or(Value::Null);
            let phase = status
                .get("phase")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let mut tr = lock(&track);
            let w = tr.wfe.entry(name).or_default();
            earliest(&mut w.created, t);
            if matches!(phase.as_str(), "Running" | "Completed" | "Failed") && w.running.is_none() {
                w.running = Some(t);
            }
            if w.mirrored.is_none()
                && status
                    .pointer("/pipelineRunStatus/reason")
                    .and_then(Value::as_str)
                    == Some("Running")
            {
                w.mirrored = Some(t);
            }
            if matches!(phase.as_str(), "Completed" | "Failed") && w.terminal.is_none() {
                w.terminal = Some(t);
            }
            w.phase = phase;
            w.status = status;
        }
    })
}

/// Plays Tekton for the PipelineRuns of one source namespace.
struct Player {
    prs: Api<DynamicObject>,
    trs: Api<DynamicObject>,
    track: Shared,
    requests: Arc<Requests>,
    sem: Semaphore,
    /// Resources whose run fails.
    fails: Mutex<HashSet<String>>,
    /// Finish runs (false: leave them Running, for the memory test).
    finish: bool,
    hold: Duration,
    namespace: String,
    played: Mutex<HashSet<String>>,
}

fn running_status(pr: &str, started: &str) -> Value {
    json!({
        "startTime": started,
        "conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running",
            "message": "Tasks Completed: 0 (Failed: 0, Cancelled 0), Incomplete: 1, Skipped: 0",
            "lastTransitionTime": started}],
        "childReferences": [{"apiVersion": "tekton.dev/v1", "kind": "TaskRun",
            "name": format!("{pr}-run"), "pipelineTaskName": "run"}],
    })
}

fn finished_status(pr: &str, started: &str, done: &str, fail: bool) -> (Value, Value) {
    let (status, reason, message, exit, step_reason, tr_message) = if fail {
        (
            "False",
            "Failed",
            "Tasks Completed: 1 (Failed: 1, Cancelled 0), Skipped: 0",
            1,
            "Error",
            "\"step-run\" exited with code 1",
        )
    } else {
        (
            "True",
            "Succeeded",
            "Tasks Completed: 1 (Failed: 0, Cancelled 0), Skipped: 0",
            0,
            "Completed",
            "All Steps have completed executing",
        )
    };
    let run = json!({
        "startTime": started,
        "completionTime": done,
        "conditions": [{"type": "Succeeded", "status": status, "reason": reason,
            "message": message, "lastTransitionTime": done}],
        "childReferences": [{"apiVersion": "tekton.dev/v1", "kind": "TaskRun",
            "name": format!("{pr}-run"), "pipelineTaskName": "run"}],
    });
    let task = json!({
        "podName": format!("{pr}-run-pod"),
        "startTime": started,
        "completionTime": done,
        "conditions": [{"type": "Succeeded", "status": status, "reason": reason,
            "message": tr_message, "lastTransitionTime": done}],
        "steps": [{"name": "run", "container": "step-run",
            "terminated": {"exitCode": exit, "reason": step_reason}}],
    });
    (run, task)
}

impl Player {
    /// Retries a write on transient errors; Ok(false) when the object is gone.
    async fn write<F, Fut>(&self, what: &str, key: (&str, &str, &str), mut f: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), kube::Error>>,
    {
        let mut wait = Duration::from_millis(100);
        for attempt in 0..8 {
            self.requests.count(key.0, key.1, key.2);
            match f().await {
                Ok(()) => return true,
                Err(e) if api_code(&e) == 409 && key.0 == "POST" => return true,
                Err(e) if api_code(&e) == 404 => return false,
                Err(e) if attempt == 7 || (400..500).contains(&api_code(&e)) => {
                    lock(&self.track).problems.push(format!("{what}: {e}"));
                    return false;
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
        false
    }

    async fn play(self: Arc<Self>, pr: String, owner: String) {
        let fail = self
            .fails
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&owner);
        let started = rfc3339_now();
        let tr_name = format!("{pr}-run");
        {
            let Ok(_permit) = self.sem.acquire().await else {
                return;
            };
            let mut tr = DynamicObject::new(&tr_name, &tr_ar()).data(json!({
                "spec": {"serviceAccountName": "default", "taskRef": {"name": "run"}},
            }));
            tr.metadata.labels = Some(
                [
                    ("tekton.dev/pipelineRun".to_string(), pr.clone()),
                    ("tekton.dev/pipelineTask".to_string(), "run".to_string()),
                    (BENCH_NS_LABEL.to_string(), self.namespace.clone()),
                ]
                .into(),
            );
            let trs = &self.trs;
            let ok = self
                .write(
                    &format!("create TaskRun {tr_name}"),
                    ("POST", "taskruns", ""),
                    || async { trs.create(&PostParams::default(), &tr).await.map(|_| ()) },
                )
                .await;
            if !ok {
                return;
            }
            let body = json!({"status": running_status(&pr, &started)});
            let prs = &self.prs;
            let ok = self
                .write(
                    &format!("PipelineRun {pr} Running"),
                    ("PATCH", "pipelineruns", "status"),
                    || async {
                        prs.patch_status(&pr, &PatchParams::default(), &Patch::Merge(&body))
                            .await
                            .map(|_| ())
                    },
                )
                .await;
            if !ok {
                return;
            }
            let t = now_ms();
            earliest(
                &mut lock(&self.track).pr.entry(pr.clone()).or_default().running,
                t,
            );
        }
        if !self.finish {
            return;
        }
        tokio::time::sleep(self.hold).await;
        let Ok(_permit) = self.sem.acquire().await else {
            return;
        };
        let (run, task) = finished_status(&pr, &started, &rfc3339_now(), fail);
        let task_body = json!({"status": task});
        let trs = &self.trs;
        if !self
            .write(
                &format!("TaskRun {tr_name} finished"),
                ("PATCH", "taskruns", "status"),
                || async {
                    trs.patch_status(&tr_name, &PatchParams::default(), &Patch::Merge(&task_body))
                        .await
                        .map(|_| ())
                },
            )
            .await
        {
            return;
        }
        let run_body = json!({"status": run});
        let prs = &self.prs;
        if self
            .write(
                &format!("PipelineRun {pr} finished"),
                ("PATCH", "pipelineruns", "status"),
                || async {
                    prs.patch_status(&pr, &PatchParams::default(), &Patch::Merge(&run_body))
                        .await
                        .map(|_| ())
                },
            )
            .await
        {
            let t = now_ms();
            earliest(&mut lock(&self.track).pr.entry(pr).or_default().finished, t);
        }
    }
}

fn watch_prs(api: Api<DynamicObject>, player: Arc<Player>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let selector = format!("{SOURCE_NS_LABEL}={}", player.namespace);
        let mut events = watcher(api, watcher::Config::default().labels(&selector))
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
            let owner = labels.get(OWNER_LABEL).cloned().unwrap_or_default();
            let condition = run_condition(&serde_json::to_value(&obj).unwrap_or(Value::Null));
            let fresh = {
                let mut tr = lock(&player.track);
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

// ------------------------------------------------------------------------------------------
// resources

fn workflow_execution(ns: &str, name: &str, target: &str) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "kubernaut.ai/v1alpha1",
        "kind": "WorkflowExecution",
        "metadata": {"name": name, "namespace": ns,
            "labels": {"kubernaut.ai/correlation-id": format!("rr-{name}")}},
        "spec": {
            "remediationRequestRef": {"apiVersion": "kubernaut.ai/v1alpha1",
                "kind": "RemediationRequest", "name": format!("rr-{name}"), "namespace": ns},
            "workflowRef": {"workflowId": "restart-deployment", "version": "1.2.0",
                "containerImage": "quay.io/kubernaut/workflows/restart-deployment:v1.2.0"},
            "targetResource": target,
            "parameters": {"NAMESPACE": ns, "DEPLOYMENT": name, "GRACE_PERIOD": "30s"},
            "confidence": 0.9,
            "rationale": "load test",
            "executionConfig": {"timeout": "30m"},
        },
    }))?)
}

/// Creates `names` with bounded concurrency; returns the failures.
async fn create_all(
    api: &Api<DynamicObject>,
    ns: &str,
    names: &[String],
    tag: &str,
    (concurrency, rate): (usize, f64),
    track: &Shared,
    requests: &Requests,
) -> Vec<String> {
    let start = tokio::time::Instant::now();
    let results: Vec<Option<String>> = futures::stream::iter(names.iter().cloned().enumerate())
        .map(|(i, name)| async move {
            if rate > 0.0 {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
            }
            let obj = match workflow_execution(ns, &name, &format!("{ns}/deployment/{name}-{tag}"))
            {
                Ok(o) => o,
                Err(e) => return Some(format!("{name}: {e}")),
            };
            let mut wait = Duration::from_millis(100);
            for attempt in 0..8 {
                requests.count("POST", "workflowexecutions", "");
                match api.create(&PostParams::default(), &obj).await {
                    Ok(_) => {
                        let t = now_ms();
                        earliest(&mut lock(track).wfe.entry(name).or_default().created, t);
                        return None;
                    }
                    Err(e) if api_code(&e) == 409 => return None,
                    Err(e) if attempt == 7 || (400..500).contains(&api_code(&e)) => {
                        return Some(format!("create {name}: {e}"));
                    }
                    Err(_) => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                }
            }
            Some(format!("create {name}: gave up"))
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().flatten().collect()
}

async fn ensure_namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(e) if api_code(&e) == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes everything a run left in a reused control plane (the controller must be stopped):
/// runs, TaskRuns, the resources (finalizers first) and their Events.
async fn cleanup(client: &Client, ns: &str) -> Result<()> {
    let dp = DeleteParams::default();
    let prs: Api<DynamicObject> = Api::namespaced_with(client.clone(), EXEC_NS, &pr_ar());
    prs.delete_collection(
        &dp,
        &ListParams::default().labels(&format!("{SOURCE_NS_LABEL}={ns}")),
    )
    .await?;
    let trs: Api<DynamicObject> = Api::namespaced_with(client.clone(), EXEC_NS, &tr_ar());
    trs.delete_collection(
        &dp,
        &ListParams::default().labels(&format!("{BENCH_NS_LABEL}={ns}")),
    )
    .await?;
    let wfes: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &wfe_ar());
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
        Api::namespaced_with(client.clone(), ns, &ar("events.k8s.io", "v1", "Event"));
    events
        .delete_collection(&dp, &ListParams::default())
        .await?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// results

#[derive(Serialize, Clone, Debug, Default)]
struct Correctness {
    resources: usize,
    terminal: usize,
    completed: usize,
    failed: usize,
    expected_failed: usize,
    runs_created: usize,
    resources_without_run: usize,
    resources_with_several_runs: usize,
    runs_created_twice: usize,
    runs_listed_at_terminal: Option<usize>,
    runs_left_after_release: Option<usize>,
    problems: Vec<String>,
}

#[derive(Serialize, Clone, Debug, Default)]
struct ReloadSample {
    /// Write of the changed template until /readyz shows the new revision, ms.
    readyz_revision_ms: Option<f64>,
    /// Write until the first new resource's run carrying the change is seen, ms (probes are
    /// created every 50 ms from the write on).
    effective_ms: Option<f64>,
    /// Write until the last probe run still rendered with the old template was seen, ms.
    last_old_ms: Option<f64>,
    probes: usize,
}

#[derive(Serialize, Clone, Debug, Default)]
struct SizeResult {
    controller: String,
    n: usize,
    create_s: f64,
    create_failures: usize,
    all_running_s: Option<f64>,
    all_terminal_s: Option<f64>,
    all_released_s: Option<f64>,
    run_creation_ms: Option<Stats>,
    running_mirror_ms: Option<Stats>,
    status_sync_ms: Option<Stats>,
    /// Controller CPU from the first create until all were terminal / released, seconds.
    cpu_to_terminal_s: f64,
    cpu_to_released_s: Option<f64>,
    cpu_ms_per_lifecycle: f64,
    /// CPU of the idle controller (5 s before the first create), ms per second.
    idle_cpu_ms_per_s: f64,
    peak_rss_mib: f64,
    /// This harness's own CPU over the same window, seconds.
    harness_cpu_s: f64,
    /// kube-apiserver and etcd CPU over the same window (context for the controller's figures).
    control_plane_cpu_s: BTreeMap<String, f64>,
    controller_api_requests_per_lifecycle: Option<f64>,
    controller_api_requests_by_kind: BTreeMap<String, f64>,
    apiserver_requests_per_lifecycle: Option<f64>,
    apiserver_requests_by_verb: BTreeMap<String, f64>,
    harness_requests: BTreeMap<String, f64>,
    reconciles_per_lifecycle: Option<f64>,
    reconciles_per_minute: Option<f64>,
    reconcile: Option<HistogramDelta>,
    decision: Option<HistogramDelta>,
    status_bytes_mean: f64,
    status_bytes_max: usize,
    reload: Vec<ReloadSample>,
    startup_ready_s: Option<f64>,
    startup_rss_mib: Option<f64>,
    startup_cpu_s: Option<f64>,
    /// API requests the controller made from start until 3 s after ready (own metric).
    startup_api_requests: Option<f64>,
    shutdown_s: Option<f64>,
    profile: Option<String>,
    correctness: Correctness,
}

#[derive(Serialize, Clone, Debug, Default)]
struct MemoryResult {
    controller: String,
    resources: usize,
    runs: usize,
    fill_s: f64,
    settled_rss_mib: f64,
    peak_rss_mib: f64,
    settle_cpu_ms_per_s: f64,
    settle_api_requests_per_s: Option<f64>,
    settle_api_requests_by_kind: BTreeMap<String, f64>,
    restart_ready_s: Option<f64>,
    restart_rss_mib: Option<f64>,
    restart_peak_rss_mib: Option<f64>,
    /// Mean JSON size of a cached WorkflowExecution and PipelineRun, and of their managedFields.
    resource_bytes_mean: f64,
    resource_managed_fields_bytes_mean: f64,
    run_bytes_mean: f64,
    run_managed_fields_bytes_mean: f64,
    problems: Vec<String>,
}

#[derive(Serialize, Clone, Debug, Default)]
struct Machine {
    cores: usize,
    memory_gib: f64,
    cpu_model: String,
    kernel: String,
    load_average_at_start: String,
    commit: String,
    started_at: String,
}

#[derive(Serialize, Clone, Debug, Default)]
struct Report {
    machine: Machine,
    settings: Value,
    sizes: Vec<SizeResult>,
    memory: Vec<MemoryResult>,
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(ROOT)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let mut commit = git(&["rev-parse", "--short", "HEAD"]);
    // the controller is built from the work tree: say when it differs from the commit
    if !git(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
    ])
    .is_empty()
    {
        commit.push_str(" (with uncommitted changes)");
    }
    Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        memory_gib: meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0)
            .unwrap_or(0.0),
        cpu_model: cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default(),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        load_average_at_start: read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        commit,
        started_at: rfc3339_now(),
    }
}

// ------------------------------------------------------------------------------------------
// one run of one size

struct Bench {
    args: Args,
    http: reqwest::Client,
    run_id: String,
    cooldown: String,
}

/// Copies the rules file and its templates folder into `dir`; returns the copied rules file.
fn copy_rules(rules: &Path, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("templates"))?;
    let target = dir.join(rules.file_name().unwrap_or("lifecycle.yaml".as_ref()));
    std::fs::copy(rules, &target).with_context(|| format!("copying {}", rules.display()))?;
    let templates = rules.parent().unwrap_or(Path::new(".")).join("templates");
    if let Ok(entries) = std::fs::read_dir(&templates) {
        for e in entries.flatten() {
            if e.path().is_file() {
                std::fs::copy(e.path(), dir.join("templates").join(e.file_name()))?;
            }
        }
    }
    Ok(target)
}

/// Sets the reload label in the PipelineRun template (atomically, by rename).
fn write_reload_label(template: &Path, value: &str) -> Result<()> {
    let text = std::fs::read_to_string(template)?;
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.contains(RELOAD_LABEL))
        .map(str::to_string)
        .collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == "labels:")
        .ok_or_else(|| anyhow!("{}: no `labels:` line", template.display()))?;
    let indent = lines[at].len() - lines[at].trim_start().len() + 2;
    lines.insert(
        at + 1,
        format!("{}{RELOAD_LABEL}: \"{value}\"", " ".repeat(indent)),
    );
    let tmp = template.with_extension("bench-tmp");
    std::fs::write(&tmp, lines.join("\n") + "\n")?;
    std::fs::rename(&tmp, template)?;
    Ok(())
}

impl Bench {
    fn deadline(&self, n: usize) -> Duration {
        self.args.deadline + self.args.deadline_per_resource * n as u32
    }

    fn namespace(&self, controller: &str, what: &str) -> String {
        let c: String = controller
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(20)
            .collect();
        format!("bench-{}-{c}-{what}", self.run_id)
    }

    async fn run_size(
        &self,
        cp: &ControlPlane,
        spec: &ControllerSpec,
        n: usize,
    ) -> Result<SizeResult> {
        let client = cp.client("admin").await?;
        let ns = self.namespace(&spec.name, &format!("n{n}"));
        ensure_namespace(&client, &ns).await?;
        let work = self.args.out.join("work").join(&ns);
        let rules = copy_rules(&self.args.rules, &work.join("rules"))?;
        let launch = |phase: &str| Launch {
            spec,
            args: &self.args,
            kubeconfig: &cp.kubeconfig,
            rules: &rules,
            cooldown: &self.cooldown,
            log: self
                .args
                .out
                .join("logs")
                .join(format!("{}-n{n}-{phase}.log", spec.name)),
        };
        let mut result = SizeResult {
            controller: spec.name.clone(),
            n,
            ..Default::default()
        };
        let mut controller = Controller::spawn(&launch("run"))?;
        controller.ready(&self.http, self.deadline(n)).await?;
        let sampler = Sampler::start(controller.pid);
        let cp_pids = cp.pids();

        let track: Shared = Arc::default();
        let requests = Arc::new(Requests::default());
        let names: Vec<String> = (0..n).map(|i| format!("wfe-{i:06}")).collect();
        let share = (self.args.fail_share * 100.0).round() as usize;
        let fails: HashSet<String> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 100 < share)
            .map(|(_, n)| n.clone())
            .collect();
        let player = Arc::new(Player {
            prs: Api::namespaced_with(client.clone(), EXEC_NS, &pr_ar()),
            trs: Api::namespaced_with(client.clone(), EXEC_NS, &tr_ar()),
            track: track.clone(),
            requests: requests.clone(),
            sem: Semaphore::new(self.args.tekton_concurrency.max(1)),
            fails: Mutex::new(fails.clone()),
            finish: true,
            hold: self.args.run_hold,
            namespace: ns.clone(),
            played: Mutex::default(),
        });
        let wfes: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &wfe_ar());
        let w1 = watch_wfes(wfes.clone(), track.clone());
        let w2 = watch_prs(
            Api::namespaced_with(client.clone(), EXEC_NS, &pr_ar()),
            player.clone(),
        );
        tokio::time::sleep(Duration::from_millis(500)).await; // watches established

        // what the controller spends doing nothing, to tell apart from the lifecycle's cost
        let idle0 = sampler.now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let idle1 = sampler.now();
        result.idle_cpu_ms_per_s = (idle1.cpu_s - idle0.cpu_s) * 1000.0 / 5.0;
        let perf = match self.args.perf_size {
            Some(s) if s == n => start_perf(controller.pid, &self.args, &spec.name, n),
            _ => None,
        };
        let m0 = controller.metrics(&self.http).await;
        let a0 = apiserver_requests(&client).await.unwrap_or_default();
        let h0 = requests.snapshot();
        let u0 = sampler.now();
        let cp0: Vec<f64> = cp_pids
            .iter()
            .map(|(_, p)| usage(*p).map(|u| u.cpu_s).unwrap_or(0.0))
            .collect();
        let harness0 = own_cpu_s();
        let t0 = now_ms();

        let creator = {
            let wfes = wfes.clone();
            let ns = ns.clone();
            let names = names.clone();
            let track = track.clone();
            let requests = requests.clone();
            let tag = self.run_id.clone();
            let c = (self.args.create_concurrency, self.args.create_rate);
            tokio::spawn(async move {
                let failures = create_all(&wfes, &ns, &names, &tag, c, &track, &requests).await;
                (now_ms(), failures)
            })
        };

        // wait for all terminal
        let deadline = Instant::now() + self.deadline(n);
        let name_set: HashSet<&String> = names.iter().collect();
        match tokio::time::timeout(self.deadline(n), creator).await {
            Ok(joined) => {
                let (t, failures) = joined?;
                result.create_s = (t - t0) / 1000.0;
                result.create_failures = failures.len();
                result
                    .correctness
                    .problems
                    .extend(failures.into_iter().take(20));
            }
            Err(_) => bail!("creating {n} resources timed out"),
        }
        let (mut all_running, mut all_terminal) = (None, None);
        loop {
            {
                let tr = lock(&track);
                let mine = tr.wfe.iter().filter(|(k, _)| name_set.contains(k));
                let (mut running, mut terminal) = (0, 0);
                let (mut last_running, mut last_terminal) = (0f64, 0f64);
                for (_, w) in mine {
                    if let Some(t) = w.running {
                        running += 1;
                        last_running = last_running.max(t);
                    }
                    if let Some(t) = w.terminal {
                        terminal += 1;
                        last_terminal = last_terminal.max(t);
                    }
                }
                if all_running.is_none() && running == n {
                    all_running = Some(last_running);
                }
                if terminal == n {
                    all_terminal = Some(last_terminal);
                    break;
                }
            }
            if Instant::now() > deadline {
                result.correctness.problems.push(format!(
                    "not all resources terminal within {:?}",
                    self.deadline(n)
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let m1 = controller.metrics(&self.http).await;
        let a1 = apiserver_requests(&client).await.unwrap_or_default();
        let h1 = requests.snapshot();
        let u1 = sampler.now();
        let t_terminal_snap = now_ms();
        result.all_running_s = all_running.map(|t| (t - t0) / 1000.0);
        result.all_terminal_s = all_terminal.map(|t| (t - t0) / 1000.0);
        result.cpu_to_terminal_s = u1.cpu_s - u0.cpu_s;
        // runs that exist now plus those the cooldown already deleted: one per resource
        let released = |track: &Shared| {
            lock(track)
                .pr
                .values()
                .filter(|p| name_set.contains(&p.owner) && p.deleted.is_some())
                .count()
        };
        let before = released(&track);
        let listed = player
            .prs
            .list_metadata(&ListParams::default().labels(&format!("{SOURCE_NS_LABEL}={ns}")))
            .await?
            .items
            .len();
        if released(&track) == before {
            result.correctness.runs_listed_at_terminal = Some(listed + before);
        }

        // wait for every lock to be released (runs deleted after the cooldown)
        let mut end = (m1.clone(), a1.clone(), h1.clone(), u1, t_terminal_snap);
        if self.cooldown != "none" && all_terminal.is_some() {
            loop {
                let released = {
                    let tr = lock(&track);
                    let mut last = 0f64;
                    let mut count = 0;
                    for p in tr.pr.values() {
                        if name_set.contains(&p.owner)
                            && let Some(d) = p.deleted
                        {
                            count += 1;
                            last = last.max(d);
                        }
                    }
                    (count >= n).then_some(last)
                };
                if let Some(t) = released {
                    result.all_released_s = Some((t - t0) / 1000.0);
                    break;
                }
                if Instant::now() > deadline {
                    result
                        .correctness
                        .problems
                        .push("not every lock released before the deadline".into());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // nothing may be recreated after the release
            tokio::time::sleep(Duration::from_secs(2)).await;
            let left = player
                .prs
                .list_metadata(&ListParams::default().labels(&format!("{SOURCE_NS_LABEL}={ns}")))
                .await?
                .items
                .len();
            result.correctness.runs_left_after_release = Some(left);
            let m2 = controller.metrics(&self.http).await;
            let a2 = apiserver_requests(&client).await.unwrap_or_default();
            let u2 = sampler.now();
            result.cpu_to_released_s = Some(u2.cpu_s - u0.cpu_s);
            end = (m2, a2, requests.snapshot(), u2, now_ms());
        }
        let (m_end, a_end, h_end, u_end, t_end) = end;
        if let Some(p) = perf {
            result.profile = finish_perf(p).await;
        }
        result.peak_rss_mib = sampler.peak_rss_kib() as f64 / 1024.0;
        result.cpu_ms_per_lifecycle = (u_end.cpu_s - u0.cpu_s) * 1000.0 / n as f64;
        result.harness_cpu_s = own_cpu_s() - harness0;
        for (i, (name, pid)) in cp_pids.iter().enumerate() {
            if let Some(u) = usage(*pid) {
                result
                    .control_plane_cpu_s
                    .insert(name.clone(), u.cpu_s - cp0[i]);
            }
        }
        // API requests
        let by_kind =
            |m: &[Sample]| metric_by(m, "lifecycle_api_requests_total", &["verb", "kind"]);
        if m0.iter().any(|(name, _, _)| name.starts_with("lifecycle_")) {
            let d = delta(&by_kind(&m0), &by_kind(&m_end));
            result.controller_api_requests_per_lifecycle = Some(d.values().sum::<f64>() / n as f64);
            result.controller_api_requests_by_kind =
                d.into_iter().map(|(k, v)| (k, v / n as f64)).collect();
            let rec = |m: &[Sample]| metric_sum(m, "lifecycle_reconciles_total");
            let reconciles = rec(&m_end) - rec(&m0);
            result.reconciles_per_lifecycle = Some(reconciles / n as f64);
            result.reconciles_per_minute = Some(reconciles / ((t_end - t0) / 60_000.0));
            result.reconcile = Some(histogram_delta(
                &histogram(&m0, "lifecycle_reconcile_duration_seconds"),
                &histogram(&m_end, "lifecycle_reconcile_duration_seconds"),
            ));
            result.decision = Some(histogram_delta(
                &histogram(&m0, "lifecycle_decision_duration_seconds"),
                &histogram(&m_end, "lifecycle_decision_duration_seconds"),
            ));
        }
        if !a0.is_empty() || !a_end.is_empty() {
            let total = delta(&a0, &a_end);
            let ours = delta(&h0, &h_end);
            let controller_only: BTreeMap<String, f64> = total
                .iter()
                .map(|(k, v)| (k.clone(), v - ours.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v != 0.0)
                .collect();
            result.apiserver_requests_per_lifecycle =
                Some(controller_only.values().sum::<f64>() / n as f64);
            result.apiserver_requests_by_verb = controller_only
                .into_iter()
                .map(|(k, v)| (k, v / n as f64))
                .collect();
            result.harness_requests = ours;
        }
        let _ = (a1, h1);

        // latencies and correctness
        {
            let tr = lock(&track);
            let mut creation = Vec::new();
            let mut mirror = Vec::new();
            let mut sync = Vec::new();
            let mut runs_of: HashMap<&str, Vec<&PrTrack>> = HashMap::new();
            for p in tr.pr.values() {
                runs_of.entry(p.owner.as_str()).or_default().push(p);
            }
            let c = &mut result.correctness;
            c.resources = n;
            c.expected_failed = fails.len();
            let mut bytes = Vec::new();
            for name in &names {
                let Some(w) = tr.wfe.get(name) else {
                    c.problems.push(format!("{name}: never seen"));
                    continue;
                };
                if w.terminal.is_some() {
                    c.terminal += 1;
                }
                match w.phase.as_str() {
                    "Completed" => c.completed += 1,
                    "Failed" => c.failed += 1,
                    _ => {}
                }
                bytes.push(
                    serde_json::to_string(&w.status)
                        .map(|s| s.len())
                        .unwrap_or(0),
                );
                let runs = runs_of.get(name.as_str()).cloned().unwrap_or_default();
                match runs.len() {
                    0 => {
                        c.resources_without_run += 1;
                        continue;
                    }
                    1 => {}
                    _ => c.resources_with_several_runs += 1,
                }
                c.runs_created += runs.iter().map(|p| p.uids.len()).sum::<usize>();
                c.runs_created_twice += runs.iter().filter(|p| p.uids.len() > 1).count();
                let p = runs[0];
                let expect = if fails.contains(name) {
                    "Failed"
                } else {
                    "Completed"
                };
                if w.terminal.is_some() && w.phase != expect && c.problems.len() < 50 {
                    c.problems
                        .push(format!("{name}: phase {} (expected {expect})", w.phase));
                }
                if expect == "Failed" && w.phase == "Failed" {
                    let reason = w.status.pointer("/failureDetails/reason");
                    let task = w.status.pointer("/failureDetails/failedTaskName");
                    let want_task = format!(
                        "{}-run",
                        tr.pr
                            .iter()
                            .find(|(_, v)| v.owner == *name)
                            .map(|(k, _)| k.as_str())
                            .unwrap_or("")
                    );
                    if (reason != Some(&json!("TaskFailed")) || task != Some(&json!(want_task)))
                        && c.problems.len() < 50
                    {
                        c.problems.push(format!(
                            "{name}: failureDetails reason {reason:?}, failedTaskName {task:?} (expected TaskFailed, {want_task})"
                        ));
                    }
                }
                if let (Some(a), Some(b)) = (w.created, p.added) {
                    creation.push(b - a);
                }
                if let (Some(a), Some(b)) = (p.running, w.mirrored) {
                    mirror.push(b - a);
                }
                if let (Some(a), Some(b)) = (p.finished, w.terminal) {
                    sync.push(b - a);
                }
            }
            c.problems.extend(tr.problems.iter().take(20).cloned());
            result.run_creation_ms = stats(creation);
            result.running_mirror_ms = stats(mirror);
            result.status_sync_ms = stats(sync);
            result.status_bytes_max = bytes.iter().copied().max().unwrap_or(0);
            result.status_bytes_mean = if bytes.is_empty() {
                0.0
            } else {
                bytes.iter().sum::<usize>() as f64 / bytes.len() as f64
            };
        }
        check(&mut result.correctness, self.cooldown != "none");

        // hot reload, with the N resources in place
        if self.args.reload_samples > 0 && !self.args.smoke {
            let template = rules
                .parent()
                .unwrap_or(Path::new("."))
                .join("templates/pipelinerun.yaml");
            for k in 1..=self.args.reload_samples {
                match self
                    .reload_sample(&controller, &wfes, &ns, &template, k, &track, &requests)
                    .await
                {
                    Ok(s) => result.reload.push(s),
                    Err(e) => result
                        .correctness
                        .problems
                        .push(format!("reload sample {k}: {e:#}")),
                }
            }
        }
        drop(sampler);
        result.shutdown_s = Some(controller.stop().await / 1000.0);
        w1.abort();
        w2.abort();

        // start-up with N existing resources
        if !self.args.smoke {
            let mut again = Controller::spawn(&launch("startup"))?;
            let sampler = Sampler::start(again.pid);
            match again.ready(&self.http, self.deadline(n)).await {
                Ok(ms) => {
                    result.startup_ready_s = Some(ms / 1000.0);
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    let u = sampler.now();
                    result.startup_rss_mib = Some(u.rss_kib as f64 / 1024.0);
                    result.startup_cpu_s = Some(u.cpu_s);
                    let m = again.metrics(&self.http).await;
                    if !m.is_empty() {
                        result.startup_api_requests =
                            Some(metric_sum(&m, "lifecycle_api_requests_total"));
                    }
                }
                Err(e) => result
                    .correctness
                    .problems
                    .push(format!("restart with {n} resources: {e:#}")),
            }
            drop(sampler);
            again.stop().await;
        }
        if cp.managed.is_none() {
            cleanup(&client, &ns).await?;
        }
        Ok(result)
    }

    #[allow(clippy::too_many_arguments)]
    async fn reload_sample(
        &self,
        controller: &Controller,
        wfes: &Api<DynamicObject>,
        ns: &str,
        template: &Path,
        k: usize,
        track: &Shared,
        requests: &Requests,
    ) -> Result<ReloadSample> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = controller.revision(&self.http).await;
        let value = format!("r{k}");
        write_reload_label(template, &value)?;
        let t_write = now_ms();
        let mut sample = ReloadSample::default();
        let mut probes: Vec<(String, f64)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen_new = false;
        let mut j = 0;
        while Instant::now() < deadline {
            if sample.readyz_revision_ms.is_none() && before.is_some() {
                let now = controller.revision(&self.http).await;
                if now.is_some() && now != before {
                    sample.readyz_revision_ms = Some(now_ms() - t_write);
                }
            }
            if !seen_new {
                let name = format!("probe-{k}-{j:03}");
                j += 1;
                let obj = workflow_execution(
                    ns,
                    &name,
                    &format!("{ns}/deployment/{name}-{}", self.run_id),
                )?;
                requests.count("POST", "workflowexecutions", "");
                wfes.create(&PostParams::default(), &obj).await?;
                probes.push((name, now_ms()));
            }
            {
                let tr = lock(track);
                let label_of = |probe: &str| {
                    tr.pr
                        .values()
                        .find(|p| p.owner == probe)
                        .map(|p| p.reload_label.clone())
                };
                seen_new = probes
                    .iter()
                    .any(|(p, _)| label_of(p).flatten().as_deref() == Some(value.as_str()));
                let all_seen = probes.iter().all(|(p, _)| label_of(p).is_some());
                if seen_new && all_seen && (sample.readyz_revision_ms.is_some() || before.is_none())
                {
                    let mut changed = false;
                    for (p, _) in &probes {
                        let Some(run) = tr.pr.values().find(|x| x.owner == *p) else {
                            continue;
                        };
                        let seen = run.added.map(|t| t - t_write);
                        if run.reload_label.as_deref() == Some(value.as_str()) {
                            changed = true;
                            sample.effective_ms = match (sample.effective_ms, seen) {
                                (Some(a), Some(b)) => Some(a.min(b)),
                                (a, b) => a.or(b),
                            };
                        } else {
                            if changed {
                                bail!(
                                    "probe {p} got the old template after an earlier probe got the new one"
                                );
                            }
                            sample.last_old_ms = match (sample.last_old_ms, seen) {
                                (Some(a), Some(b)) => Some(a.max(b)),
                                (a, b) => a.or(b),
                            };
                        }
                    }
                    sample.probes = probes.len();
                    return Ok(sample);
                }
            }
            tokio::time::sleep(Duration::from_millis(if seen_new { 20 } else { 50 })).await;
        }
        bail!("no probe run showed the change within 10 s")
    }

    async fn memory_test(&self, cp: &ControlPlane, spec: &ControllerSpec) -> Result<MemoryResult> {
        let m = self.args.memory_size;
        let client = cp.client("admin").await?;
        let ns = self.namespace(&spec.name, "mem");
        ensure_namespace(&client, &ns).await?;
        let rules = copy_rules(
            &self.args.rules,
            &self.args.out.join("work").join(&ns).join("rules"),
        )?;
        let launch = |phase: &str| Launch {
            spec,
            args: &self.args,
            kubeconfig: &cp.kubeconfig,
            rules: &rules,
            cooldown: &self.cooldown,
            log: self
                .args
                .out
                .join("logs")
                .join(format!("{}-memory-{phase}.log", spec.name)),
        };
        let mut result = MemoryResult {
            controller: spec.name.clone(),
            resources: m,
            ..Default::default()
        };
        let mut controller = Controller::spawn(&launch("fill"))?;
        controller.ready(&self.http, self.deadline(m)).await?;
        let sampler = Sampler::start(controller.pid);
        let track: Shared = Arc::default();
        let requests = Arc::new(Requests::default());
        let player = Arc::new(Player {
            prs: Api::namespaced_with(client.clone(), EXEC_NS, &pr_ar()),
            trs: Api::namespaced_with(client.clone(), EXEC_NS, &tr_ar()),
            track: track.clone(),
            requests: requests.clone(),
            sem: Semaphore::new(self.args.tekton_concurrency.max(1)),
            fails: Mutex::default(),
            finish: false,
            hold: Duration::ZERO,
            namespace: ns.clone(),
            played: Mutex::default(),
        });
        let wfes: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &wfe_ar());
        let w1 = watch_wfes(wfes.clone(), track.clone());
        let w2 = watch_prs(
            Api::namespaced_with(client.clone(), EXEC_NS, &pr_ar()),
            player.clone(),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = now_ms();
        let names: Vec<String> = (0..m).map(|i| format!("mem-{i:06}")).collect();
        let failures = create_all(
            &wfes,
            &ns,
            &names,
            &self.run_id,
            (self.args.create_concurrency, self.args.create_rate),
            &track,
            &requests,
        )
        .await;
        result.problems.extend(failures.into_iter().take(20));
        // every resource Running and mirroring its running run
        let deadline = Instant::now() + self.deadline(m);
        loop {
            let (mirrored, runs) = {
                let tr = lock(&track);
                (
                    tr.wfe.values().filter(|w| w.mirrored.is_some()).count(),
                    tr.pr.values().filter(|p| p.running.is_some()).count(),
                )
            };
            if mirrored >= m && runs >= m {
                result.runs = runs;
                break;
            }
            if Instant::now() > deadline {
                result.problems.push(format!(
                    "only {mirrored} resources mirrored a running run ({runs} runs running) before the deadline"
                ));
                result.runs = runs;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        result.fill_s = (now_ms() - t0) / 1000.0;
        let sizes = |items: Vec<DynamicObject>| {
            let n = items.len().max(1) as f64;
            let (mut all, mut managed) = (0usize, 0usize);
            for o in &items {
                all += serde_json::to_string(o).map(|s| s.len()).unwrap_or(0);
                managed += serde_json::to_string(&o.metadata.managed_fields)
                    .map(|s| s.len())
                    .unwrap_or(0);
            }
            (all as f64 / n, managed as f64 / n)
        };
        let lp = ListParams::default().limit(500);
        (
            result.resource_bytes_mean,
            result.resource_managed_fields_bytes_mean,
        ) = sizes(wfes.list(&lp).await?.items);
        (result.run_bytes_mean, result.run_managed_fields_bytes_mean) = sizes(
            player
                .prs
                .list(&lp.labels(&format!("{SOURCE_NS_LABEL}={ns}")))
                .await?
                .items,
        );
        w1.abort();
        w2.abort();
        // settle: the last part of the window measures the steady state
        let settle = self.args.memory_settle;
        tokio::time::sleep(settle / 2).await;
        let ma = controller.metrics(&self.http).await;
        let ua = sampler.now();
        let ta = now_ms();
        tokio::time::sleep(settle / 2).await;
        let mb = controller.metrics(&self.http).await;
        let ub = sampler.now();
        let secs = (now_ms() - ta) / 1000.0;
        result.settled_rss_mib = ub.rss_kib as f64 / 1024.0;
        result.peak_rss_mib = sampler.peak_rss_kib() as f64 / 1024.0;
        result.settle_cpu_ms_per_s = (ub.cpu_s - ua.cpu_s) * 1000.0 / secs;
        if !ma.is_empty() {
            let by_kind =
                |m: &[Sample]| metric_by(m, "lifecycle_api_requests_total", &["verb", "kind"]);
            let d = delta(&by_kind(&ma), &by_kind(&mb));
            result.settle_api_requests_per_s = Some(d.values().sum::<f64>() / secs);
            result.settle_api_requests_by_kind =
                d.into_iter().map(|(k, v)| (k, v / secs)).collect();
        }
        drop(sampler);
        controller.stop().await;

        // a fresh process that lists everything at start
        let mut again = Controller::spawn(&launch("restart"))?;
        let sampler = Sampler::start(again.pid);
        match again.ready(&self.http, self.deadline(m)).await {
            Ok(ms) => {
                result.restart_ready_s = Some(ms / 1000.0);
                tokio::time::sleep(settle).await;
                result.restart_rss_mib = Some(sampler.now().rss_kib as f64 / 1024.0);
                result.restart_peak_rss_mib = Some(sampler.peak_rss_kib() as f64 / 1024.0);
            }
            Err(e) => result.problems.push(format!("restart: {e:#}")),
        }
        drop(sampler);
        again.stop().await;
        if cp.managed.is_none() {
            cleanup(&client, &ns).await?;
        }
        Ok(result)
    }
}

fn check(c: &mut Correctness, released: bool) {
    let mut p = Vec::new();
    if c.terminal != c.resources {
        p.push(format!(
            "{} of {} resources terminal",
            c.terminal, c.resources
        ));
    }
    if c.failed != c.expected_failed {
        p.push(format!(
            "{} resources Failed, {} expected",
            c.failed, c.expected_failed
        ));
    }
    if c.resources_without_run > 0 {
        p.push(format!(
            "{} resources without a run",
            c.resources_without_run
        ));
    }
    if c.resources_with_several_runs > 0 {
        p.push(format!(
            "{} resources with more than one run",
            c.resources_with_several_runs
        ));
    }
    if c.runs_created_twice > 0 {
        p.push(format!("{} runs created twice", c.runs_created_twice));
    }
    if c.runs_created != c.resources {
        p.push(format!(
            "{} runs created for {} resources",
            c.runs_created, c.resources
        ));
    }
    if let Some(l) = c.runs_listed_at_terminal
        && l != c.resources
    {
        p.push(format!(
            "{l} runs listed (or already released) once all were terminal, expected {}",
            c.resources
        ));
    }
    if released && c.runs_left_after_release != Some(0) {
        p.push(format!(
            "{:?} runs left after the cooldown released every lock",
            c.runs_left_after_release
        ));
    }
    p.append(&mut c.problems);
    c.problems = p;
}

// ------------------------------------------------------------------------------------------
// perf

struct Perf {
    child: tokio::process::Child,
    pid: u32,
    data: PathBuf,
    report: PathBuf,
}

fn start_perf(pid: u32, args: &Args, name: &str, n: usize) -> Option<Perf> {
    let data = abs(&args.out.join(format!("perf-{name}-n{n}.data")));
    let report = abs(&args.out.join(format!("perf-{name}-n{n}.txt")));
    let child = tokio::process::Command::new("perf")
        .arg("record")
        .args(args.perf_args.split_whitespace())
        .args(["-p", &pid.to_string(), "-o"])
        .arg(&data)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let ppid = child.id()?;
    Some(Perf {
        child,
        pid: ppid,
        data,
        report,
    })
}

async fn finish_perf(mut p: Perf) -> Option<String> {
    signal(p.pid, "INT");
    if tokio::time::timeout(Duration::from_secs(30), p.child.wait())
        .await
        .is_err()
    {
        let _ = p.child.kill().await;
        return None;
    }
    let mut text = String::new();
    for (sort, children) in [
        ("dso", "--no-children"),
        ("symbol", "--no-children"),
        ("symbol", "--children"),
    ] {
        let out = tokio::process::Command::new("perf")
            .args([
                "report",
                "--stdio",
                children,
                "-g",
                "none",
                "--percent-limit",
                "1",
            ])
            .args(["--sort", sort, "-i"])
            .arg(&p.data)
            .output()
            .await
            .ok()?;
        text.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    std::fs::write(&p.report, &text).ok()?;
    Some(p.report.display().to_string())
}

// ------------------------------------------------------------------------------------------
// report

fn f1(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}
fn f2(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}
fn lat(s: &Option<Stats>) -> String {
    s.as_ref()
        .map(|s| format!("{:.0} / {:.0} / {:.0} / {:.0}", s.p50, s.p95, s.p99, s.max))
        .unwrap_or_else(|| "-".into())
}

fn markdown(r: &Report) -> String {
    let m = &r.machine;
    let mut o = String::new();
    o.push_str(&format!(
        "Machine: {} cores, {} GiB, {}; kernel {}; load average at start {}; commit {}; {}.\n\n",
        m.cores,
        m.memory_gib,
        m.cpu_model,
        m.kernel,
        m.load_average_at_start,
        m.commit,
        m.started_at
    ));
    o.push_str("| controller | N | all Running s | all terminal s | locks released s | run creation ms p50 / p95 / p99 / max | Running mirrored ms p50 / p95 / p99 / max | status sync ms p50 / p95 / p99 / max | CPU ms / lifecycle | peak RSS MiB | API requests / lifecycle (own metric) | API requests / lifecycle (apiserver) | reconciles / lifecycle | start-up to ready s | hot reload ms | correct |\n");
    o.push_str("|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|---|\n");
    for s in &r.sizes {
        let reload = if s.reload.is_empty() {
            "-".to_string()
        } else {
            s.reload
                .iter()
                .map(|x| {
                    x.effective_ms
                        .map(|v| format!("{v:.0}"))
                        .unwrap_or_else(|| "-".into())
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        o.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.1} | {} | {} | {} | {} | {} | {} |\n",
            s.controller,
            s.n,
            f1(s.all_running_s),
            f1(s.all_terminal_s),
            f1(s.all_released_s),
            lat(&s.run_creation_ms),
            lat(&s.running_mirror_ms),
            lat(&s.status_sync_ms),
            s.cpu_ms_per_lifecycle,
            s.peak_rss_mib,
            f1(s.controller_api_requests_per_lifecycle),
            f1(s.apiserver_requests_per_lifecycle),
            f1(s.reconciles_per_lifecycle),
            f2(s.startup_ready_s),
            reload,
            if s.correctness.problems.is_empty() {
                "yes".to_string()
            } else {
                format!("NO ({})", s.correctness.problems.len())
            },
        ));
    }
    o.push('\n');
    for s in &r.sizes {
        o.push_str(&format!(
            "- {} N={}: idle CPU {:.1} ms/s; creates took {:.1} s; CPU to all terminal {:.2} s, to all released {} s; harness CPU {:.1} s; control plane CPU {:?}; reconcile {}; decision {}; reconciles/min {}; status {:.0} B mean, {} B max; start-up RSS {} MiB, API requests {}; shutdown {} s; API requests per lifecycle by kind (own metric) {:?}; (apiserver) {:?}{}\n",
            s.controller,
            s.n,
            s.idle_cpu_ms_per_s,
            s.create_s,
            s.cpu_to_terminal_s,
            f2(s.cpu_to_released_s),
            s.harness_cpu_s,
            s.control_plane_cpu_s
                .iter()
                .map(|(k, v)| format!("{k} {v:.1} s"))
                .collect::<Vec<_>>(),
            s.reconcile
                .as_ref()
                .map(|h| format!(
                    "{:.0} × mean {:.2} ms (p99 ≤ {} ms)",
                    h.count,
                    h.mean_ms,
                    f1(h.p99_bucket_ms)
                ))
                .unwrap_or_else(|| "-".into()),
            s.decision
                .as_ref()
                .map(|h| format!("{:.0} × mean {:.3} ms", h.count, h.mean_ms))
                .unwrap_or_else(|| "-".into()),
            f1(s.reconciles_per_minute),
            s.status_bytes_mean,
            s.status_bytes_max,
            f1(s.startup_rss_mib),
            f1(s.startup_api_requests),
            f2(s.shutdown_s),
            s.controller_api_requests_by_kind
                .iter()
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect::<Vec<_>>(),
            s.apiserver_requests_by_verb
                .iter()
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect::<Vec<_>>(),
            if s.correctness.problems.is_empty() {
                String::new()
            } else {
                format!("; PROBLEMS: {:?}", s.correctness.problems)
            }
        ));
    }
    if !r.memory.is_empty() {
        o.push_str("\n| controller | resources | runs | fill s | settled RSS MiB | peak RSS MiB | steady CPU ms/s | steady API requests/s | restart to ready s | RSS after restart MiB | problems |\n");
        o.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for m in &r.memory {
            o.push_str(&format!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |\n",
                m.controller,
                m.resources,
                m.runs,
                m.fill_s,
                m.settled_rss_mib,
                m.peak_rss_mib,
                m.settle_cpu_ms_per_s,
                f1(m.settle_api_requests_per_s),
                f2(m.restart_ready_s),
                f1(m.restart_rss_mib),
                if m.problems.is_empty() {
                    "none".to_string()
                } else {
                    m.problems.join("; ")
                },
            ));
        }
        for m in &r.memory {
            o.push_str(&format!(
                "\n- {}: a WorkflowExecution is {:.0} B of JSON, {:.0} B of it managedFields; a PipelineRun {:.0} B, {:.0} B managedFields; steady-state API requests/s by kind: {:?}\n",
                m.controller,
                m.resource_bytes_mean,
                m.resource_managed_fields_bytes_mean,
                m.run_bytes_mean,
                m.run_managed_fields_bytes_mean,
                m.settle_api_requests_by_kind
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.1}"))
                    .collect::<Vec<_>>()
            ));
        }
    }
    o
}

// ------------------------------------------------------------------------------------------

fn controllers(args: &Args) -> Result<Vec<ControllerSpec>> {
    if args.controller_cmd.is_empty() {
        return Ok(vec![ControllerSpec {
            name: "lifecycle-engine".into(),
            command: DEFAULT_CMD.into(),
        }]);
    }
    args.controller_cmd
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (name, command) = match c.split_once('=') {
                Some((n, cmd))
                    if !n.is_empty()
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
                {
                    (n.to_string(), cmd.to_string())
                }
                _ => (format!("controller-{}", i + 1), c.clone()),
            };
            ensure!(
                !command.trim().is_empty(),
                "--controller-cmd {c}: empty command"
            );
            Ok(ControllerSpec { name, command })
        })
        .collect()
}

async fn run(args: Args) -> Result<Report> {
    let specs = controllers(&args)?;
    if specs
        .iter()
        .any(|s| s.command.contains("{bin}") || s.command.contains("{default}"))
    {
        ensure!(
            args.controller_bin.is_file(),
            "{} is missing: run `cargo build --release` first",
            args.controller_bin.display()
        );
    }
    std::fs::create_dir_all(args.out.join("logs"))?;
    let cooldown = args
        .cooldown
        .clone()
        .unwrap_or_else(|| if args.smoke { "2s" } else { "10s" }.into());
    let run_id = format!(
        "{:x}",
        (std::process::id() as u64 * 7919 + now_ms() as u64) % 0xfffff
    );
    let bench = Bench {
        args: args.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()?,
        run_id,
        cooldown: cooldown.clone(),
    };
    let mut machine = machine();
    if let Some(c) = &args.controller_commit {
        machine.commit = c.clone();
    }
    let mut report = Report {
        machine,
        settings: json!({
            "sizes": args.sizes, "fail_share": args.fail_share,
            "run_hold_s": args.run_hold.as_secs_f64(), "create_concurrency": args.create_concurrency,
            "tekton_concurrency": args.tekton_concurrency, "cooldown": cooldown, "create_rate": args.create_rate,
            "memory_size": args.memory_size, "memory_settle_s": args.memory_settle.as_secs_f64(),
            "controllers": specs.iter().map(|s| json!({"name": s.name, "command": s.command})).collect::<Vec<_>>(),
            "smoke": args.smoke,
        }),
        ..Default::default()
    };
    // one control plane per measurement when this harness manages it; else reuse and clean up
    let plane = || -> Result<ControlPlane> {
        let cp = match &args.kubeconfig {
            Some(k) => ControlPlane {
                kubeconfig: k.clone(),
                managed: None,
            },
            None => ControlPlane::up(&args.state_dir)?,
        };
        cp.install()?;
        Ok(cp)
    };
    for spec in &specs {
        for &n in args.sizes.iter().filter(|n| **n > 0) {
            eprintln!("bench: {} with N={n}", spec.name);
            let mut cp = plane()?;
            let r = bench.run_size(&cp, spec, n).await;
            cp.down();
            let r = r.with_context(|| format!("{} N={n}", spec.name))?;
            eprintln!(
                "bench: {} N={n}: all terminal in {} s, {} problems",
                spec.name,
                f1(r.all_terminal_s),
                r.correctness.problems.len()
            );
            report.sizes.push(r);
            write_report(&args.out, &report)?;
        }
        if args.memory_size > 0 && !args.smoke {
            eprintln!("bench: {} memory test with {}", spec.name, args.memory_size);
            let mut cp = plane()?;
            let r = bench.memory_test(&cp, spec).await;
            cp.down();
            report
                .memory
                .push(r.with_context(|| format!("{} memory test", spec.name))?);
            write_report(&args.out, &report)?;
        }
    }
    Ok(report)
}

/// Writes bench.json and bench.md (after every measurement, so a long run leaves what it has).
fn write_report(out: &Path, report: &Report) -> Result<String> {
    let md = markdown(report);
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(report)?,
    )
    .with_context(|| format!("writing {}", out.display()))?;
    std::fs::write(out.join("bench.md"), &md)?;
    Ok(md)
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    let _ = now_ms();
    if args.smoke {
        args.sizes = vec![20];
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = args.out.clone();
    let smoke = args.smoke;
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    // whatever was still running (controller, perf) was killed when its handle dropped
    runtime.shutdown_timeout(Duration::from_secs(5));
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let md = match write_report(&out, &report) {
        Ok(md) => md,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("{md}");
    eprintln!("bench: results in {}", out.display());
    let problems: usize = report
        .sizes
        .iter()
        .map(|s| s.correctness.problems.len())
        .sum::<usize>()
        + report
            .memory
            .iter()
            .map(|m| m.problems.len())
            .sum::<usize>();
    if problems > 0 {
        eprintln!(
            "bench: {problems} correctness problem(s){}",
            if smoke { " (smoke failed)" } else { "" }
        );
        return ExitCode::FAILURE;
    }
    if smoke {
        println!("bench: smoke run correct");
    }
    ExitCode::SUCCESS
}
