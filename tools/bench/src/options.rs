//! The command line: sizes, the control plane, the controllers to measure, the load's shape.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, ensure};
use clap::Parser;
use lifecycle_engine::time::parse_std_duration;

/// The default controller command (placeholders as `--controller-cmd` describes them).
pub const DEFAULT_CMD: &str = "exec {bin} run --rules {rules} --context {context} --metrics-address {metrics_address} --set cooldown={cooldown} --log-format json";

/// End-to-end load on the local control plane; writes <out>/bench.json and <out>/bench.md.
#[derive(Parser, Debug, Clone)]
#[command(name = "lifecycle-bench", version, args_override_self = true)]
pub struct Args {
    /// Numbers of resources (of the kind the rules govern), one full run each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    pub sizes: Vec<usize>,
    /// CI size: N=20, correctness only (exit 1 on a problem, never on a timing); no memory,
    /// reload or start-up measurements.
    #[arg(long)]
    pub smoke: bool,
    /// Use this running control plane (contexts `admin` and `controller`) instead of starting
    /// one; objects are cleaned up between runs.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// State directory of the control plane this harness starts (a fresh one per run).
    #[arg(long, default_value = "target/bench/testenv")]
    pub state_dir: PathBuf,
    /// The controller binary for `{bin}` in the default command.
    #[arg(long, default_value = "target/release/lifecycle")]
    pub controller_bin: PathBuf,
    /// Controller to measure instead of the default, as `NAME=SHELL COMMAND` (repeatable: each is
    /// measured in turn on the same control plane). Placeholders: {bin} {rules} {kubeconfig}
    /// {context} {metrics_address} {health_address} {cooldown}, and {default} for the default
    /// command. KUBECONFIG is set in its environment. Prefix the program with `exec` so that
    /// the measured process is the controller itself.
    #[arg(long = "controller-cmd")]
    pub controller_cmd: Vec<String>,
    /// Rules file; it and its `templates/` folder are copied per run (hot reload edits the copy).
    #[arg(long, default_value = "lifecycle.yaml")]
    pub rules: PathBuf,
    /// Share of PipelineRuns that fail (with a failed TaskRun).
    #[arg(long, default_value_t = 0.1)]
    pub fail_share: f64,
    /// How long each PipelineRun stays Running before it finishes.
    #[arg(long, default_value = "1s", value_parser = parse_std_duration)]
    pub run_hold: Duration,
    /// WorkflowExecution creates in flight at once.
    #[arg(long, default_value_t = 32)]
    pub create_concurrency: usize,
    /// Pace the creates at this many per second (0: as fast as the API allows).
    #[arg(long, default_value_t = 0.0)]
    pub create_rate: f64,
    /// Tekton writes (TaskRun create, status patches) in flight at once.
    #[arg(long, default_value_t = 32)]
    pub tekton_concurrency: usize,
    /// Cooldown the controller is given ({cooldown}); `none` does not wait for lock release.
    /// Default 10s (2s with --smoke).
    #[arg(long)]
    pub cooldown: Option<String>,
    /// Resources (and runs) of the memory test; 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    pub memory_size: usize,
    /// Quiet time before the memory test reads RSS (the default rules re-check Running
    /// resources every 10 s).
    #[arg(long, default_value = "30s", value_parser = parse_std_duration)]
    pub memory_settle: Duration,
    /// After each size of the first controller, replay its requests with no controller on a
    /// fresh control plane (the API server's ceiling); `--ceiling false` skips it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ceiling: bool,
    /// Hot-reload samples per size; 0 skips them.
    #[arg(long, default_value_t = 3)]
    pub reload_samples: usize,
    /// Record a `perf` profile of the controller during the run of this size.
    #[arg(long)]
    pub perf_size: Option<usize>,
    /// Options of `perf record` (e.g. "-F 99 --call-graph dwarf,16384" for call chains through
    /// Rust code, which has no frame pointers).
    #[arg(long, default_value = "-F 499 -g", allow_hyphen_values = true)]
    pub perf_args: String,
    /// What the report names as the measured build (default: this work tree's commit).
    #[arg(long)]
    pub controller_commit: Option<String>,
    /// Deadline per size: this much plus --deadline-per-resource times N.
    #[arg(long, default_value = "180s", value_parser = parse_std_duration)]
    pub deadline: Duration,
    /// Extra deadline per resource.
    #[arg(long, default_value = "200ms", value_parser = parse_std_duration)]
    pub deadline_per_resource: Duration,
    /// Output directory (bench.json, bench.md, controller logs, profiles).
    #[arg(long, default_value = "target/bench/out")]
    pub out: PathBuf,
}

/// A controller to measure: its name in the report and its shell command.
#[derive(Clone, Debug)]
pub struct ControllerSpec {
    pub name: String,
    pub command: String,
}

/// The controllers `--controller-cmd` names, or the default one.
pub fn controllers(args: &Args) -> Result<Vec<ControllerSpec>> {
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

/// A path of the command line made absolute (relative ones are relative to the working folder).
pub fn abs(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}
