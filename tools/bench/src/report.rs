//! The results: what one size, one memory test and the machine came to, and the report written
//! after every measurement (`bench.json`, and `bench.md` as docs/performance.md quotes it).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use lifecycle_testsupport::{repo_root, tekton};
use serde::Serialize;
use serde_json::Value;

use crate::ceiling::CeilingResult;
use crate::prometheus::{HistogramDelta, Stats};

#[derive(Serialize, Clone, Debug, Default)]
pub struct Correctness {
    pub resources: usize,
    pub terminal: usize,
    pub completed: usize,
    pub failed: usize,
    pub expected_failed: usize,
    pub runs_created: usize,
    pub resources_without_run: usize,
    pub resources_with_several_runs: usize,
    pub runs_created_twice: usize,
    pub runs_listed_at_terminal: Option<usize>,
    pub runs_left_after_release: Option<usize>,
    pub problems: Vec<String>,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct ReloadSample {
    /// Write of the changed template until /readyz shows the new revision, ms.
    pub readyz_revision_ms: Option<f64>,
    /// Write until the first new resource's run carrying the change is seen, ms (probes are
    /// created every 50 ms from the write on).
    pub effective_ms: Option<f64>,
    /// Write until the last probe run still rendered with the old template was seen, ms.
    pub last_old_ms: Option<f64>,
    pub probes: usize,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct SizeResult {
    pub controller: String,
    pub n: usize,
    pub create_s: f64,
    pub create_failures: usize,
    pub all_running_s: Option<f64>,
    pub all_terminal_s: Option<f64>,
    pub all_released_s: Option<f64>,
    pub run_creation_ms: Option<Stats>,
    pub running_mirror_ms: Option<Stats>,
    pub status_sync_ms: Option<Stats>,
    /// Controller CPU from the first create until all were terminal / released, seconds.
    pub cpu_to_terminal_s: f64,
    pub cpu_to_released_s: Option<f64>,
    pub cpu_ms_per_lifecycle: f64,
    /// CPU of the idle controller (5 s before the first create), ms per second.
    pub idle_cpu_ms_per_s: f64,
    pub peak_rss_mib: f64,
    /// This harness's own CPU over the same window, seconds.
    pub harness_cpu_s: f64,
    /// kube-apiserver and etcd CPU over the same window (context for the controller's figures).
    pub control_plane_cpu_s: BTreeMap<String, f64>,
    pub controller_api_requests_per_lifecycle: Option<f64>,
    pub controller_api_requests_by_kind: BTreeMap<String, f64>,
    pub apiserver_requests_per_lifecycle: Option<f64>,
    pub apiserver_requests_by_verb: BTreeMap<String, f64>,
    pub harness_requests: BTreeMap<String, f64>,
    pub reconciles_per_lifecycle: Option<f64>,
    pub reconciles_per_minute: Option<f64>,
    pub reconcile: Option<HistogramDelta>,
    pub decision: Option<HistogramDelta>,
    pub status_bytes_mean: f64,
    pub status_bytes_max: usize,
    /// Mean bytes of each part of the last status seen, by terminal phase (`status_size`).
    pub status_bytes_by_part: BTreeMap<String, BTreeMap<String, f64>>,
    pub reload: Vec<ReloadSample>,
    pub startup_ready_s: Option<f64>,
    pub startup_rss_mib: Option<f64>,
    pub startup_cpu_s: Option<f64>,
    /// API requests the controller made from start until 3 s after ready (own metric).
    pub startup_api_requests: Option<f64>,
    pub shutdown_s: Option<f64>,
    pub profile: Option<String>,
    pub correctness: Correctness,
    /// What the ceiling replays: a run as the controller created it, a terminal status.
    #[serde(skip)]
    pub sample_run: Option<Value>,
    #[serde(skip)]
    pub sample_status: Option<Value>,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct MemoryResult {
    pub controller: String,
    pub resources: usize,
    pub runs: usize,
    pub fill_s: f64,
    pub settled_rss_mib: f64,
    pub peak_rss_mib: f64,
    pub settle_cpu_ms_per_s: f64,
    pub settle_api_requests_per_s: Option<f64>,
    pub settle_api_requests_by_kind: BTreeMap<String, f64>,
    pub restart_ready_s: Option<f64>,
    pub restart_rss_mib: Option<f64>,
    pub restart_peak_rss_mib: Option<f64>,
    /// Mean JSON size of a cached WorkflowExecution and PipelineRun, and of their managedFields.
    pub resource_bytes_mean: f64,
    pub resource_managed_fields_bytes_mean: f64,
    pub run_bytes_mean: f64,
    pub run_managed_fields_bytes_mean: f64,
    /// What the caches hold of each kind the rules read, by kind.
    pub cached: BTreeMap<String, crate::cached_size::CachedSize>,
    pub problems: Vec<String>,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
    pub load_average_at_start: String,
    pub commit: String,
    pub started_at: String,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct Report {
    pub machine: Machine,
    pub settings: Value,
    pub sizes: Vec<SizeResult>,
    pub memory: Vec<MemoryResult>,
    pub ceilings: Vec<CeilingResult>,
}

pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(repo_root())
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
        started_at: tekton::now(),
    }
}

impl Report {
    /// How many correctness problems it records.
    pub fn problems(&self) -> usize {
        self.sizes
            .iter()
            .map(|s| s.correctness.problems.len())
            .sum::<usize>()
            + self.memory.iter().map(|m| m.problems.len()).sum::<usize>()
            + self.ceilings.iter().map(|c| c.failures).sum::<usize>()
    }
}

pub fn f1(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}
pub fn f2(v: Option<f64>) -> String {
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
        for (phase, parts) in &s.status_bytes_by_part {
            o.push_str(&format!(
                "  - status bytes by part, {phase}, mean: {}\n",
                parts
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    o.push_str(&side_by_side(r));
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
            for (kind, c) in &m.cached {
                o.push_str(&format!(
                    "- {}: a cached {kind} (mean of {}) is {:.0} B of JSON whole (without managedFields), {:.0} B kept to the top-level fields read, {:.0} B as projected\n",
                    m.controller,
                    c.objects,
                    c.whole_bytes_mean,
                    c.top_level_bytes_mean,
                    c.projected_bytes_mean
                ));
            }
        }
    }
    o
}

/// For each size: the controllers' figures next to each other and to the API server alone
/// making the same requests (the ceiling).
fn side_by_side(r: &Report) -> String {
    let mut o = String::new();
    let mut ns: Vec<usize> = r.sizes.iter().map(|s| s.n).collect();
    ns.dedup();
    for n in ns {
        let sizes: Vec<&SizeResult> = r.sizes.iter().filter(|s| s.n == n).collect();
        let ceiling = r.ceilings.iter().find(|c| c.n == n);
        o.push_str(&format!("\nN={n}, side by side:\n\n| figure |"));
        for s in &sizes {
            o.push_str(&format!(" {} |", s.controller));
        }
        if let Some(c) = ceiling {
            o.push_str(&format!(
                " API server alone (the requests of {}) |",
                c.controller
            ));
        }
        o.push_str("\n|---|");
        o.push_str(&"---:|".repeat(sizes.len() + usize::from(ceiling.is_some())));
        o.push('\n');
        fn cpu(m: &BTreeMap<String, f64>, who: &str) -> String {
            m.iter()
                .find(|(k, _)| k.contains(who))
                .map(|(_, v)| format!("{v:.1}"))
                .unwrap_or_else(|| "-".into())
        }
        fn p99(s: &Option<Stats>) -> String {
            f1(s.as_ref().map(|s| s.p99 / 1000.0))
        }
        type Row<'a> = (&'a str, Box<dyn Fn(&SizeResult) -> String>, Option<String>);
        let rows: Vec<Row> = vec![
            (
                "all terminal s (API server alone: all requests answered)",
                Box::new(|s| f1(s.all_terminal_s)),
                ceiling.map(|c| format!("{:.1}", c.all_done_s)),
            ),
            (
                "API requests / lifecycle (apiserver count)",
                Box::new(|s| f1(s.apiserver_requests_per_lifecycle)),
                ceiling.map(|c| {
                    format!(
                        "{:.1} + {:.1} of users and Tekton",
                        c.requests_per_lifecycle - c.harness_per_lifecycle,
                        c.harness_per_lifecycle
                    )
                }),
            ),
            (
                "kube-apiserver CPU s",
                Box::new(|s| cpu(&s.control_plane_cpu_s, "apiserver")),
                ceiling.map(|c| cpu(&c.control_plane_cpu_s, "apiserver")),
            ),
            (
                "etcd CPU s",
                Box::new(|s| cpu(&s.control_plane_cpu_s, "etcd")),
                ceiling.map(|c| cpu(&c.control_plane_cpu_s, "etcd")),
            ),
            (
                "controller CPU ms / lifecycle",
                Box::new(|s| format!("{:.2}", s.cpu_ms_per_lifecycle)),
                ceiling.map(|_| "-".into()),
            ),
            (
                "peak RSS MiB",
                Box::new(|s| format!("{:.1}", s.peak_rss_mib)),
                ceiling.map(|_| "-".into()),
            ),
            (
                "run creation p99 s",
                Box::new(|s| p99(&s.run_creation_ms)),
                ceiling.map(|_| "-".into()),
            ),
            (
                "status sync p99 s",
                Box::new(|s| p99(&s.status_sync_ms)),
                ceiling.map(|_| "-".into()),
            ),
            (
                "status bytes, mean",
                Box::new(|s| format!("{:.0}", s.status_bytes_mean)),
                ceiling.map(|_| "-".into()),
            ),
        ];
        for (name, of, c) in rows {
            o.push_str(&format!("| {name} |"));
            for s in &sizes {
                o.push_str(&format!(" {} |", of(s)));
            }
            if let Some(c) = c {
                o.push_str(&format!(" {c} |"));
            }
            o.push('\n');
        }
        if let Some(c) = ceiling {
            o.push_str(&format!(
                "\n- API server alone, N={n}: {:?} per lifecycle; not replayed {:?}; {} failed{}\n",
                c.requests_by_kind
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.2}"))
                    .collect::<Vec<_>>(),
                c.not_replayed
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.2}"))
                    .collect::<Vec<_>>(),
                c.failures,
                c.first_failure
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
            ));
        }
    }
    o
}

/// Writes bench.json and bench.md (after every measurement, so a long run leaves what it has).
pub fn write_report(out: &Path, report: &Report) -> Result<String> {
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
