//! `lifecycle-bench`: end-to-end load on a real control plane (kube-apiserver + etcd on
//! loopback, `scripts/testenv`), with the controller under test as a separate process.
//!
//! For each controller command and each size N it creates N resources of the kind the rules
//! govern as fast as the API allows (bounded concurrency), plays Tekton (every PipelineRun it sees
//! gets a TaskRun and a Running status, then, after a hold, Succeeded or, for a configurable
//! share, Failed with a failed TaskRun), waits until every resource is terminal and, with a
//! cooldown, until every lock is released, and measures from watch events timestamped here:
//! run-creation and status-sync latencies, time to all Running and all terminal, controller CPU
//! and peak RSS (`/proc`), API requests (the controller's own `/metrics` and the apiserver's
//! `apiserver_request_total` less this harness's own requests), hot-reload latency and start-up
//! time with N existing resources. A separate memory test caches 10 000 resources and runs.
//! The API server's ceiling ([`ceiling`]) replays the first controller's requests with no
//! controller, and the report sets the controllers and the ceiling side by side.
//! It also checks correctness (all terminal with the expected outcome, exactly one run per
//! resource, none created twice); `--smoke` checks only that and never fails on a timing.
//!
//! The kinds, the execution namespace and the owner labels come from the rules file it is given
//! ([`subject`]). Everything it starts it stops by process id: the controller (also killed when
//! this process drops it), `perf`, and the control plane when it started one (whose watchdog also
//! stops it when this process dies). Traffic goes to 127.0.0.1 only. Results: `<out>/bench.json`
//! and `<out>/bench.md`; docs/performance.md explains them.
//!
//! The files: [`options`] (command line), [`subject`] (what the rules say), [`plane`] (the
//! control plane), [`controller`] (the process under test), [`load`] (resources and what the
//! watches saw), [`player`] (playing Tekton), [`sample`] and [`prometheus`] (measurements),
//! [`session`] (one measurement's world), [`size`], [`reload`], [`memory`] and [`ceiling`] (the
//! runs),
//! [`report`] (results).

mod cached_size;
mod ceiling;
mod controller;
mod load;
mod memory;
mod options;
mod plane;
mod player;
mod prometheus;
mod reload;
mod report;
mod sample;
mod session;
mod size;
mod status_size;
mod subject;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use clap::Parser;
use serde_json::json;

use crate::options::{Args, ControllerSpec};
use crate::plane::ControlPlane;
use crate::report::{Report, f1, machine, write_report};
use crate::sample::now_ms;
use crate::subject::Subject;

/// What every run shares: the options, an HTTP client for the controller's endpoints, this
/// run's id (in namespace and target names), the cooldown and what the rules say.
pub struct Bench {
    pub args: Args,
    pub http: reqwest::Client,
    pub run_id: String,
    pub cooldown: String,
    pub subject: Subject,
}

impl Bench {
    /// Deadline of a run of `n` resources.
    pub fn deadline(&self, n: usize) -> Duration {
        self.args.deadline + self.args.deadline_per_resource * n as u32
    }

    /// The namespace of one measurement: `bench-<run>-<controller>-<what>`.
    pub fn namespace(&self, controller: &str, what: &str) -> String {
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
}

async fn run(args: Args) -> Result<Report> {
    let specs = options::controllers(&args)?;
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
    let subject = Subject::from_rules(&args.rules)?;
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
        subject,
    };
    let mut machine = machine();
    if let Some(c) = &args.controller_commit {
        machine.commit = c.clone();
    }
    let mut report = Report {
        machine,
        settings: settings(&args, &cooldown, &specs),
        ..Default::default()
    };
    // one control plane per measurement when this harness manages it; else reuse and clean up
    let plane = || async {
        let cp = match &args.kubeconfig {
            Some(k) => ControlPlane::existing(k.clone()),
            None => ControlPlane::up(&args.state_dir).await?,
        };
        cp.install().await?;
        Ok::<_, anyhow::Error>(cp)
    };
    for spec in &specs {
        for &n in args.sizes.iter().filter(|n| **n > 0) {
            eprintln!("bench: {} with N={n}", spec.name);
            let mut cp = plane().await?;
            let r = bench.run_size(&cp, spec, n).await;
            cp.down();
            let r = r.with_context(|| format!("{} N={n}", spec.name))?;
            eprintln!(
                "bench: {} N={n}: all terminal in {} s, {} problems",
                spec.name,
                f1(r.all_terminal_s),
                r.correctness.problems.len()
            );
            if args.ceiling && std::ptr::eq(spec, &specs[0]) {
                eprintln!("bench: the API server alone, replaying {} N={n}", spec.name);
                let samples = ceiling::Samples {
                    child: r.sample_run.clone(),
                    status: r.sample_status.clone(),
                };
                let mut cp = plane().await?;
                let c = bench.ceiling(&cp, spec, &r, &samples).await;
                cp.down();
                let c = c.with_context(|| format!("ceiling of {} N={n}", spec.name))?;
                eprintln!(
                    "bench: the API server alone took {:.1} s for the {:.1} requests per lifecycle of N={n}",
                    c.all_done_s, c.requests_per_lifecycle
                );
                report.ceilings.push(c);
            }
            report.sizes.push(r);
            write_report(&args.out, &report)?;
        }
        if args.memory_size > 0 && !args.smoke {
            eprintln!("bench: {} memory test with {}", spec.name, args.memory_size);
            let mut cp = plane().await?;
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

/// The settings a report records.
fn settings(args: &Args, cooldown: &str, specs: &[ControllerSpec]) -> serde_json::Value {
    json!({
        "sizes": args.sizes, "fail_share": args.fail_share,
        "run_hold_s": args.run_hold.as_secs_f64(), "create_concurrency": args.create_concurrency,
        "tekton_concurrency": args.tekton_concurrency, "cooldown": cooldown, "create_rate": args.create_rate,
        "memory_size": args.memory_size, "memory_settle_s": args.memory_settle.as_secs_f64(),
        "controllers": specs.iter().map(|s| json!({"name": s.name, "command": s.command})).collect::<Vec<_>>(),
        "smoke": args.smoke, "ceiling": args.ceiling,
    })
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
    let problems = report.problems();
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
