//! The controller under test, as a process of its own: started from its command (placeholders
//! filled in, `KUBECONFIG` set, output to a log file), asked for readiness, metrics and the
//! rules revision over HTTP, and stopped by process id with its descendants.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use lifecycle_testsupport::controlplane::CONTROLLER_CONTEXT;

use crate::options::{Args, ControllerSpec, DEFAULT_CMD, abs};
use crate::prometheus::{Sample, parse_metrics};
use crate::sample::{now_ms, process_tree, signal};

/// A running controller process (killed if dropped).
pub struct Controller {
    child: tokio::process::Child,
    pub pid: u32,
    metrics_url: String,
    ready_url: String,
    spawned: f64,
}

/// How to start one controller process.
pub struct Launch<'a> {
    pub spec: &'a ControllerSpec,
    pub args: &'a Args,
    pub kubeconfig: &'a Path,
    pub rules: &'a Path,
    pub cooldown: &'a str,
    pub log: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Controller {
    pub fn spawn(l: &Launch) -> Result<Controller> {
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
            .replace("{context}", CONTROLLER_CONTEXT)
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
    pub async fn ready(&mut self, http: &reqwest::Client, timeout: Duration) -> Result<f64> {
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

    pub async fn metrics(&self, http: &reqwest::Client) -> Vec<Sample> {
        match http.get(&self.metrics_url).send().await {
            Ok(r) => parse_metrics(&r.text().await.unwrap_or_default()),
            Err(_) => Vec::new(),
        }
    }

    pub async fn revision(&self, http: &reqwest::Client) -> Option<String> {
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
    pub async fn stop(mut self) -> f64 {
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
