//! Hot reload of the rules file and its templates.
//!
//! Watches the rules file's folder and the templates folder (recursively, so a mounted
//! ConfigMap's atomic `..data` symlink swap is seen), waits for changes to settle, loads with
//! the same [`Rules::load`] as `lifecycle check`, and swaps the new rules in atomically: a
//! reconcile holds one `Arc<Rules>` from start to end, so none ever sees a half-loaded set.
//! A broken change is rejected and the last good rules keep running. A slow periodic check
//! backs up file notifications on file systems that do not deliver them.

use crate::rules::Rules;
use crate::runtime::metrics::Metrics;
use notify::{RecursiveMode, Watcher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The current rules, shared by every reconcile.
#[derive(Clone)]
pub struct RulesHandle {
    rx: watch::Receiver<Arc<Rules>>,
    state: Arc<Mutex<ReloadState>>,
}

/// What the last reload did, for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct ReloadState {
    /// The report of the last rejected change, while the rejected files are in place.
    pub last_error: Option<String>,
    /// Reloads accepted.
    pub accepted: u64,
    /// Reloads rejected.
    pub rejected: u64,
}

impl RulesHandle {
    /// A handle that never changes (for tests and one-shot tools).
    pub fn fixed(rules: Arc<Rules>) -> RulesHandle {
        let (tx, rx) = watch::channel(rules);
        // keep the channel open for the life of the process
        std::mem::forget(tx);
        RulesHandle {
            rx,
            state: Arc::default(),
        }
    }

    /// The current rules.
    pub fn current(&self) -> Arc<Rules> {
        self.rx.borrow().clone()
    }

    /// A receiver that sees every swap.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Rules>> {
        self.rx.clone()
    }

    /// The last reload's outcome.
    pub fn state(&self) -> ReloadState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Settings of the reloader.
#[derive(Debug, Clone)]
pub struct Config {
    /// The rules file.
    pub file: PathBuf,
    /// Setting overrides.
    pub overrides: Vec<(String, String)>,
    /// Quiet time before a change is loaded.
    pub debounce: Duration,
    /// Interval of the backup check.
    pub poll: Duration,
}

/// Starts watching; returns the handle and a channel of rejected-change reports.
pub fn start(
    initial: Arc<Rules>,
    config: Config,
    metrics: Arc<Metrics>,
) -> (RulesHandle, mpsc::Receiver<String>) {
    let (tx, rx) = watch::channel(initial.clone());
    let state: Arc<Mutex<ReloadState>> = Arc::default();
    let (err_tx, err_rx) = mpsc::channel(16);
    let handle = RulesHandle {
        rx,
        state: state.clone(),
    };
    let (fs_tx, fs_rx) = mpsc::unbounded_channel::<()>();
    let mut dirs = vec![
        initial
            .file
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.to_path_buf()
                }
            })
            .unwrap_or_else(|| PathBuf::from(".")),
    ];
    dirs.push(initial.templates_dir());
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // reading the files (our own loads included) is no change
        if let Ok(ev) = res
            && !matches!(ev.kind, notify::EventKind::Access(_))
        {
            let _ = fs_tx.send(());
        }
    });
    let watcher = match watcher {
        Ok(mut w) => {
            for d in &dirs {
                if let Err(e) = w.watch(d, RecursiveMode::Recursive) {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot watch for rules changes; relying on the periodic check");
                }
            }
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "file notifications unavailable; relying on the periodic check");
            None
        }
    };
    tokio::spawn(run(
        watcher,
        fs_rx,
        tx,
        state,
        err_tx,
        config,
        metrics,
        initial.revision.clone(),
    ));
    (handle, err_rx)
}

#[allow(clippy::too_many_arguments)]
async fn run(
    _watcher: Option<notify::RecommendedWatcher>,
    mut fs_rx: mpsc::UnboundedReceiver<()>,
    tx: watch::Sender<Arc<Rules>>,
    state: Arc<Mutex<ReloadState>>,
    err_tx: mpsc::Sender<String>,
    config: Config,
    metrics: Arc<Metrics>,
    mut revision: String,
) {
    let mut last_rejected: Option<String> = None;
    let mut ticker = tokio::time::interval(config.poll);
    ticker.tick().await;
    loop {
        tokio::select! {
            got = fs_rx.recv() => {
                if got.is_none() { return; }
                // let a burst of writes settle
                loop {
                    match tokio::time::timeout(config.debounce, fs_rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
            }
            _ = ticker.tick() => {}
        }
        let file = config.file.clone();
        let overrides = config.overrides.clone();
        let loaded = tokio::task::spawn_blocking(move || Rules::load(&file, &overrides)).await;
        let loaded = match loaded {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "rules loading task failed");
                continue;
            }
        };
        match loaded {
            Ok(rules) => {
                if rules.revision == revision {
                    if last_rejected.take().is_some() {
                        // the broken change was reverted
                        state.lock().unwrap_or_else(|e| e.into_inner()).last_error = None;
                    }
                    continue;
                }
                revision = rules.revision.clone();
                metrics.declare(&rules);
                metrics.reload("ok");
                tracing::info!(revision = %revision, "rules reloaded");
                {
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    s.accepted += 1;
                    s.last_error = None;
                }
                last_rejected = None;
                let _ = tx.send(Arc::new(rules));
            }
            Err(e) => {
                let report = e.to_string();
                if last_rejected.as_deref() == Some(report.as_str()) {
                    continue;
                }
                metrics.reload("error");
                tracing::error!(revision = %revision, report = %report, "rules change rejected; the last good rules keep running");
                {
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    s.rejected += 1;
                    s.last_error = Some(report.clone());
                }
                last_rejected = Some(report.clone());
                let _ = err_tx.try_send(report);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_default_rules(dir: &std::path::Path) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(root.join("lifecycle.yaml"), dir.join("lifecycle.yaml")).unwrap();
        std::fs::create_dir_all(dir.join("templates")).unwrap();
        for f in std::fs::read_dir(root.join("templates")).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dir.join("templates").join(f.file_name())).unwrap();
        }
    }

    async fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..300 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn valid_changes_swap_and_broken_ones_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        copy_default_rules(dir.path());
        let file = dir.path().join("lifecycle.yaml");
        let rules = Arc::new(Rules::load(&file, &[]).unwrap());
        let first = rules.revision.clone();
        let metrics = Arc::new(Metrics::new());
        let (handle, mut errors) = start(
            rules,
            Config {
                file: file.clone(),
                overrides: vec![],
                debounce: Duration::from_millis(50),
                poll: Duration::from_millis(200),
            },
            metrics.clone(),
        );
        // a valid change: a new cooldown default
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, text.replace("cooldown: 5m ", "cooldown: 7m ")).unwrap();
        assert!(
            wait_for(|| handle.current().revision != first).await,
            "valid change not picked up"
        );
        assert_eq!(handle.current().settings["cooldown"], "7m");
        let good = handle.current().revision.clone();

        // a broken change: rejected, the last good rules stay
        std::fs::write(&file, "version: 1\nphases: [").unwrap();
        let report = tokio::time::timeout(Duration::from_secs(5), errors.recv())
            .await
            .expect("a report")
            .unwrap();
        assert!(report.contains("lifecycle.yaml:"), "{report}");
        assert_eq!(handle.current().revision, good);
        assert!(handle.state().last_error.is_some());
        assert!(
            metrics
                .encode()
                .contains("lifecycle_rules_reload_total{result=\"error\"} 1")
        );
    }
}
