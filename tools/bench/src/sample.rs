//! Measuring a process from outside: one clock for every event, CPU and memory of a process
//! tree from `/proc` (sampled every 100 ms for the peak), and a `perf` profile.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::options::Args;
use crate::options::abs;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the harness started (all event times use this clock).
pub fn now_ms() -> f64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_secs_f64() * 1000.0
}

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
pub fn own_cpu_s() -> f64 {
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
pub fn process_tree(pid: u32) -> Vec<u32> {
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
pub struct Usage {
    pub cpu_s: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn usage(pid: u32) -> Option<Usage> {
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
pub struct Sampler {
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
    pub fn start(pid: u32) -> Sampler {
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
    pub fn now(&self) -> Usage {
        let fresh = usage(self.pid);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = fresh {
            st.last = u;
            st.peak_rss_kib = st.peak_rss_kib.max(u.rss_kib).max(u.hwm_kib);
        }
        st.last
    }

    pub fn peak_rss_kib(&self) -> u64 {
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

pub fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

// ------------------------------------------------------------------------------------------
// perf

pub struct Perf {
    child: tokio::process::Child,
    pid: u32,
    data: PathBuf,
    report: PathBuf,
}

pub fn start_perf(pid: u32, args: &Args, name: &str, n: usize) -> Option<Perf> {
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

pub async fn finish_perf(mut p: Perf) -> Option<String> {
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
