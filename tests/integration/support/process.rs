//! The processes and files a test runs besides its API calls: the controller under test
//! (`lifecycle run` as a process of its own), a control plane of the test's own, and a folder laid
//! out as the kubelet mounts a ConfigMap.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lifecycle_testsupport::controlplane::{self, Testenv, install_crds};

use super::{FIELD_MANAGER, TestEnv, apply_cluster_rbac};

/// A `lifecycle run` process. Dropping it kills the process (by its id); when the test is
/// failing, its log is printed.
pub struct ControllerProcess {
    /// Names this process in messages.
    pub label: String,
    child: Option<std::process::Child>,
    log: PathBuf,
    addr: Option<std::net::SocketAddr>,
}

impl ControllerProcess {
    /// Starts `lifecycle <args>` with the test kubeconfig; its output goes to `<dir>/<label>.log`.
    pub fn spawn(env: &TestEnv, dir: &Path, label: &str, args: &[String]) -> ControllerProcess {
        Self::spawn_with_env(env, dir, label, args, &[])
    }

    /// Like [`ControllerProcess::spawn`], with extra environment variables (`POD_NAME`, ...).
    pub fn spawn_with_env(
        env: &TestEnv,
        dir: &Path,
        label: &str,
        args: &[String],
        vars: &[(&str, &str)],
    ) -> ControllerProcess {
        let log = dir.join(format!("{label}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("controller log file");
        let err = out.try_clone().expect("controller log file");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_lifecycle"))
            .args(args)
            .env("KUBECONFIG", env.kubeconfig())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .envs(vars.iter().copied())
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starting lifecycle run");
        ControllerProcess {
            label: label.to_string(),
            child: Some(child),
            log,
            addr: None,
        }
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Everything the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the process serves /readyz (its address is read from its log) and
    /// reports its caches synced.
    pub async fn wait_ready(&mut self) {
        self.wait_serving().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            self.assert_running();
            if let Some((_, body)) = self.readyz().await
                && body.contains("caches synced: true")
            {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("controller {} did not sync its caches", self.label);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the process serves its endpoints (a standby does too); returns the address.
    pub async fn wait_serving(&mut self) -> std::net::SocketAddr {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.addr.is_none() {
            self.assert_running();
            self.addr = self.log().lines().find_map(serving_address);
            if self.addr.is_none() {
                if tokio::time::Instant::now() > deadline {
                    panic!("controller {} does not serve /metrics", self.label);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.addr.expect("address")
    }

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    #[track_caller]
    fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "controller {} exited ({status}):\n{}",
                self.label,
                self.log()
            );
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let addr = self.addr?;
        let response = reqwest::Client::new()
            .get(format!("http://{addr}{path}"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let code = response.status().as_u16();
        Some((code, response.text().await.ok()?))
    }

    /// Status code and body of /healthz.
    pub async fn healthz(&self) -> Option<(u16, String)> {
        self.get("/healthz").await
    }

    /// Status code and body of /readyz.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        self.get("/readyz").await
    }

    /// The /metrics text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .unwrap_or_else(|| panic!("controller {} serves no /metrics", self.label))
            .1
    }

    /// The value of one metric series (`name{labels}` exactly as exposed), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Waits until a metric series has `value` (a transition's metrics are recorded after its
    /// status write, so they may lag what the API shows by a moment).
    pub async fn wait_metric(&self, series: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.metric(series).await;
            if now == value {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "controller {}: {series} is {now}, not {value}:\n{}",
                    self.label,
                    self.metrics().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The revision of the rules this process runs, from /readyz.
    pub async fn revision(&self) -> String {
        let (_, body) = self.readyz().await.expect("/readyz");
        body.split("(revision ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap_or_else(|| panic!("no revision in /readyz: {body}"))
            .to_string()
    }

    /// Kills the process (SIGKILL, by its id) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the process to stop (SIGTERM, by its id) and waits for it; returns its exit code
    /// and log.
    pub async fn terminate(&mut self) -> (Option<i32>, String) {
        let pid = self.pid().expect("a running process").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {pid}");
        self.wait_exit(Duration::from_secs(30)).await
    }

    /// Waits for the process to exit on its own; returns its exit code and log.
    pub async fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("a running process");
            if let Some(status) = child.try_wait().expect("waiting for the controller") {
                self.child = None;
                return (status.code(), self.log());
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "controller {} still running after {timeout:?}:\n{}",
                    self.label,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() || std::env::var_os("LIFECYCLE_TEST_SHOW_LOGS").is_some() {
            eprintln!(
                "----- log of controller {} ({}) -----\n{}----- end of log of controller {} -----",
                self.label,
                self.log.display(),
                self.log(),
                self.label
            );
        }
    }
}

/// The address in the log line saying where /metrics is served (text or JSON logs).
fn serving_address(line: &str) -> Option<std::net::SocketAddr> {
    const SERVING: &str = "serving /healthz, /readyz, /metrics";
    let addr = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(v) if v["message"] == SERVING => v["address"].as_str()?.to_string(),
        Ok(_) => return None,
        Err(_) => line
            .split(SERVING)
            .nth(1)?
            .split("address=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .to_string(),
    };
    addr.parse().ok()
}

/// The value of one series in a Prometheus text exposition (0 when absent).
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .unwrap_or(0.0)
}

/// A folder laid out as the kubelet mounts a ConfigMap volume: the files live in a hidden,
/// timestamped folder, `..data` links to it, and each key is a symbolic link through `..data`.
/// An update writes a new hidden folder and swaps `..data` with one rename (AtomicWriter).
pub struct ConfigMapVolume {
    dir: PathBuf,
    generation: u32,
}

impl ConfigMapVolume {
    /// Writes the volume with these files (name, text).
    pub fn create(dir: &Path, files: &[(&str, String)]) -> ConfigMapVolume {
        std::fs::create_dir_all(dir).expect("volume folder");
        let mut volume = ConfigMapVolume {
            dir: dir.to_path_buf(),
            generation: 0,
        };
        let data = volume.write_generation(files);
        std::os::unix::fs::symlink(&data, dir.join("..data")).expect("..data link");
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("key link");
        }
        volume
    }

    fn write_generation(&mut self, files: &[(&str, String)]) -> String {
        self.generation += 1;
        let data = format!("..2026_01_01_00_00_0{}.000000001", self.generation);
        std::fs::create_dir(self.dir.join(&data)).expect("data folder");
        for (name, text) in files {
            std::fs::write(self.dir.join(&data).join(name), text).expect("volume file");
        }
        data
    }

    /// Replaces the volume's files, as the kubelet does when the ConfigMap changes.
    pub fn update(&mut self, files: &[(&str, String)]) {
        let old = std::fs::read_link(self.dir.join("..data")).expect("..data");
        let data = self.write_generation(files);
        std::os::unix::fs::symlink(&data, self.dir.join("..data_tmp")).expect("..data_tmp");
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).expect("swap");
        std::fs::remove_dir_all(self.dir.join(old)).expect("old data folder");
    }
}

/// A control plane of one test's own (`scripts/testenv up` in a state folder of its own), for
/// faults that must not hit the shared one, such as restarting the API server. Stopped (by
/// process id, through `scripts/testenv down`) when dropped; a watchdog also stops it when the
/// test process exits.
pub struct PrivateControlPlane {
    /// The control plane, CRDs installed.
    pub env: &'static TestEnv,
    testenv: Testenv,
}

impl PrivateControlPlane {
    /// Starts one in `target/tmp/<label>-<pid>` and installs the CRDs and the cluster-wide RBAC
    /// of deploy/.
    pub async fn start(label: &str) -> PrivateControlPlane {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{label}-{}", std::process::id()));
        let testenv = Testenv::new(&dir);
        let kubeconfig = testenv
            .up(Some(std::process::id()))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let env: &'static TestEnv = Box::leak(Box::new(TestEnv {
            kubeconfig,
            log_dir: Some(dir),
        }));
        let plane = PrivateControlPlane { env, testenv };
        install_crds(env.admin().await, FIELD_MANAGER)
            .await
            .expect("installing the CRDs");
        apply_cluster_rbac(env).await;
        plane
    }

    /// Runs `scripts/testenv <args>` on this control plane; panics when it fails.
    pub async fn testenv(&self, args: &[&str]) {
        self.testenv
            .run(args)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The process id of its kube-apiserver.
    pub fn apiserver_pid(&self) -> String {
        controlplane::pids(self.testenv.dir())
            .into_iter()
            .find(|(name, _)| name == "kube-apiserver")
            .map(|(_, pid)| pid.to_string())
            .expect("kube-apiserver.pid")
    }
}

impl Drop for PrivateControlPlane {
    fn drop(&mut self) {
        let _ = self.testenv.down();
    }
}
