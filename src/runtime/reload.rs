//! Hot reload of the rules file and its templates.
//!
//! Watches the rules file's folder and the templates folder (recursively, so a mounted
//! ConfigMap's atomic `..data` symlink swap is seen), waits for changes to settle, loads with
//! the same [`Rules::load`] as `lifecycle check`, and swaps the new rules in atomically: a
//! reconcile holds one `Arc<Rules>` from start to end, so none ever sees a half-loaded set.
//! A broken change is rejected and the last good rules keep running. A slow periodic check
//! backs up file notifications on file systems that do not deliver them.
//!
//! A valid change is refused too when it would strand resources: when a resource in the
//! controller's watch cache (its [`Census`]) is in a phase the running rules know and the new
//! rules neither have nor map with `renamedPhases`. The periodic check tries a refused change
//! again, so it applies once no resource is left in the removed phase.

use crate::rules::{LoadError, Rules, Sources};
use crate::runtime::metrics::Metrics;
use crate::runtime::revisions::Revisions;
use notify::{RecursiveMode, Watcher};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The current rules, shared by every reconcile.
#[derive(Clone)]
pub struct RulesHandle {
    rx: watch::Receiver<Arc<Rules>>,
    state: Arc<Mutex<ReloadState>>,
    census: Arc<Mutex<Option<Census>>>,
    revisions: Arc<Revisions>,
}

/// Lists the governed resources the controller holds in its watch cache: `namespace/name` and
/// the resource (at least its `status`).
pub type Census = Arc<dyn Fn() -> Vec<(String, Value)> + Send + Sync>;

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
        let revisions = Arc::new(Revisions::new(&rules, None));
        let (tx, rx) = watch::channel(rules);
        // keep the channel open for the life of the process
        std::mem::forget(tx);
        RulesHandle {
            rx,
            state: Arc::default(),
            census: Arc::default(),
            revisions,
        }
    }

    /// The rules that decide `resource` (at least its `status`): the latest, or the revision
    /// the latest rules' `rollout` pins it to, while that is loaded.
    pub fn for_resource(&self, resource: &Value) -> Arc<Rules> {
        self.revisions.for_resource(&self.current(), resource)
    }

    /// Like [`RulesHandle::for_resource`], with the revision the resource is pinned to when
    /// that is not loaded (so the latest rules decide it).
    pub fn choose(&self, resource: &Value) -> crate::runtime::revisions::Chosen {
        self.revisions.choose(&self.current(), resource)
    }

    /// The revisions kept loaded.
    pub fn revisions(&self) -> Arc<Revisions> {
        self.revisions.clone()
    }

    /// Drops the revisions no resource in the watch cache is pinned to (at once; reloads and a
    /// periodic check do it too).
    pub fn prune(&self) {
        prune(&self.revisions, &self.current(), &self.census);
    }

    /// The revisions loaded (the latest, and those resources are pinned to).
    pub fn loaded_revisions(&self) -> Vec<String> {
        self.revisions.loaded()
    }

    /// The governed resources in the watch cache (none before the controller has one).
    pub fn census(&self) -> Vec<(String, Value)> {
        let census = self
            .census
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        census.map(|c| c()).unwrap_or_default()
    }

    /// Where reloads find the resources a change must not strand (the watch cache, once the
    /// controller has one).
    pub fn set_census(&self, census: Census) {
        *self.census.lock().unwrap_or_else(|e| e.into_inner()) = Some(census);
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
    /// The governed kind's CRD, read at start: every reload is checked against its schema.
    pub crd: Option<crate::rules::KindSchema>,
}

/// Starts watching; returns the handle and a channel of rejected-change reports. `sources` are
/// the initial rules' sources (kept with them, to be stored).
pub fn start(
    initial: Arc<Rules>,
    sources: Option<Arc<Sources>>,
    config: Config,
    metrics: Arc<Metrics>,
) -> (RulesHandle, mpsc::Receiver<String>) {
    let (tx, rx) = watch::channel(initial.clone());
    let state: Arc<Mutex<ReloadState>> = Arc::default();
    let (err_tx, err_rx) = mpsc::channel(16);
    let census: Arc<Mutex<Option<Census>>> = Arc::default();
    let revisions = Arc::new(Revisions::new(&initial, sources.clone()));
    let handle = RulesHandle {
        rx,
        state: state.clone(),
        census: census.clone(),
        revisions: revisions.clone(),
    };
    let (fs_tx, fs_rx) = mpsc::unbounded_channel::<()>();
    let dirs = watched_dirs(&initial);
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
        (census, revisions),
        (initial.revision.clone(), sources),
    ));
    (handle, err_rx)
}

/// The folders to watch: the rules file's and the templates folder, and, when either is reached
/// through a symbolic link that leads out of them (the repository's top-level `lifecycle.yaml`
/// and `templates/` link to `deploy/base/rules/`), the folders the links lead to. A ConfigMap
/// mount's links lead into its own hidden folders, which the recursive watch covers already.
fn watched_dirs(rules: &Rules) -> Vec<PathBuf> {
    let file_dir = match rules.file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut dirs = vec![file_dir, rules.templates_dir()];
    let resolved = [
        std::fs::canonicalize(&rules.file)
            .ok()
            .and_then(|f| f.parent().map(PathBuf::from)),
        std::fs::canonicalize(rules.templates_dir()).ok(),
    ];
    for target in resolved.into_iter().flatten() {
        let covered = dirs
            .iter()
            .any(|d| std::fs::canonicalize(d).is_ok_and(|d| target.starts_with(d)));
        if !covered {
            dirs.push(target);
        }
    }
    dirs
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
    (census, revisions): (Arc<Mutex<Option<Census>>>, Arc<Revisions>),
    (mut revision, mut in_force): (String, Option<Arc<Sources>>),
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
        prune(&revisions, &tx.borrow(), &census);
        let file = config.file.clone();
        let overrides = config.overrides.clone();
        let crd = config.crd.clone();
        let known = in_force.clone();
        let loaded =
            tokio::task::spawn_blocking(move || -> Result<Option<(Rules, Sources)>, LoadError> {
                let sources = Sources::read(&file)?;
                if known.is_some_and(|k| *k == sources) {
                    // the texts of the rules in force: nothing to compile (the periodic check
                    // of an unchanged file costs a read, not a compilation)
                    return Ok(None);
                }
                let rules = Rules::compile(&sources, &overrides)?;
                if let Some(crd) = &crd {
                    rules.check_schema(crd)?;
                }
                Ok(Some((rules, sources)))
            })
            .await;
        let loaded = match loaded {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "rules loading task failed");
                continue;
            }
        };
        // the rules in force, read again
        let loaded = loaded.map(|l| l.filter(|(rules, _)| rules.revision != revision));
        let checked = match loaded {
            Ok(None) => {
                if last_rejected.take().is_some() {
                    // the broken change was reverted
                    state.lock().unwrap_or_else(|e| e.into_inner()).last_error = None;
                }
                continue;
            }
            Ok(Some((rules, sources))) => {
                let census = census.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let resources = census.map(|c| c()).unwrap_or_default();
                match stranding_report(&tx.borrow(), &rules, &resources) {
                    Some(report) => Err(report),
                    None => Ok((rules, sources)),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        match checked {
            Ok((rules, sources)) => {
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
                let rules = Arc::new(rules);
                let sources = Arc::new(sources);
                in_force = Some(sources.clone());
                revisions.keep(&rules, Some(sources));
                let _ = tx.send(rules.clone());
                prune(&revisions, &rules, &census);
            }
            Err(report) => {
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

/// Drops the revisions no resource in the watch cache is pinned to any more.
fn prune(revisions: &Revisions, latest: &Rules, census: &Mutex<Option<Census>>) {
    let census = census.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let Some(census) = census else {
        return;
    };
    for dropped in revisions.prune(latest, &census()) {
        tracing::info!(revision = %dropped, "rules revision unloaded: no resource is pinned to it");
    }
}

/// Resources listed at most in a stranding report.
const REPORT_AT_MOST: usize = 20;

/// The resources `new` would strand, as `(namespace/name, phase)`: in a phase `old` knows (by
/// name or through its `renamedPhases`) that `new` neither has nor maps.
pub fn stranded(old: &Rules, new: &Rules, resources: &[(String, Value)]) -> Vec<(String, String)> {
    resources
        .iter()
        .filter(|(_, r)| crate::engine::phase_of(old, r).is_ok())
        .filter_map(|(name, r)| {
            crate::engine::phase_of(new, r)
                .err()
                .map(|phase| (name.clone(), phase))
        })
        .collect()
}

/// Why a change is refused when it would strand resources; `None` when it strands none.
fn stranding_report(old: &Rules, new: &Rules, resources: &[(String, Value)]) -> Option<String> {
    let mut stranded = stranded(old, new, resources);
    if stranded.is_empty() {
        return None;
    }
    stranded.sort();
    let mut phases: Vec<&str> = stranded.iter().map(|(_, p)| p.as_str()).collect();
    phases.dedup();
    let mut report = format!(
        "{}: the change (revision {}) removes phase{} {} that {} resource{} {} in; refused, so that none is stranded:",
        new.file.display(),
        new.revision,
        if phases.len() == 1 { "" } else { "s" },
        phases
            .iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(", "),
        stranded.len(),
        if stranded.len() == 1 { "" } else { "s" },
        if stranded.len() == 1 { "is" } else { "are" },
    );
    for (name, phase) in stranded.iter().take(REPORT_AT_MOST) {
        report.push_str(&format!("\n  {name} (phase {phase})"));
    }
    if stranded.len() > REPORT_AT_MOST {
        report.push_str(&format!("\n  and {} more", stranded.len() - REPORT_AT_MOST));
    }
    report.push_str(&format!(
        "\nmap each removed phase to the phase that replaces it (`renamedPhases: {{{}: <new phase>}}`), or apply the change once no resource is in it",
        phases[0]
    ));
    Some(report)
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
            None,
            Config {
                file: file.clone(),
                overrides: vec![],
                debounce: Duration::from_millis(50),
                poll: Duration::from_millis(200),
                crd: None,
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

    #[tokio::test]
    async fn a_change_behind_a_symbolic_link_is_reloaded() {
        // as in the repository: lifecycle.yaml and templates/ link to another folder
        let dir = tempfile::tempdir().unwrap();
        let (top, shipped) = (dir.path().join("top"), dir.path().join("shipped"));
        std::fs::create_dir_all(&top).unwrap();
        std::fs::create_dir_all(&shipped).unwrap();
        copy_default_rules(&shipped);
        for name in ["lifecycle.yaml", "templates"] {
            std::os::unix::fs::symlink(shipped.join(name), top.join(name)).unwrap();
        }
        let file = top.join("lifecycle.yaml");
        let rules = Arc::new(Rules::load(&file, &[]).unwrap());
        let first = rules.revision.clone();
        let (handle, _errors) = start(
            rules,
            None,
            Config {
                file,
                overrides: vec![],
                debounce: Duration::from_millis(50),
                // no backup check within the test: only a file notification can reload
                poll: Duration::from_secs(3600),
                crd: None,
            },
            Arc::new(Metrics::new()),
        );
        let shipped_file = shipped.join("lifecycle.yaml");
        let text = std::fs::read_to_string(&shipped_file).unwrap();
        std::fs::write(
            &shipped_file,
            text.replace("cooldown: 5m ", "cooldown: 7m "),
        )
        .unwrap();
        assert!(
            wait_for(|| handle.current().revision != first).await,
            "a change of the linked rules file not picked up"
        );
        assert_eq!(handle.current().settings["cooldown"], "7m");
        let second = handle.current().revision.clone();
        let template = shipped.join("templates/failure-summary.txt");
        let text = std::fs::read_to_string(&template).unwrap();
        std::fs::write(&template, format!("{text} ")).unwrap();
        assert!(
            wait_for(|| handle.current().revision != second).await,
            "a change of a linked template not picked up"
        );
    }

    /// The default rules with phase `Running` renamed `Executing`, and `extra` appended.
    fn renamed_running(extra: &str) -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("lifecycle.yaml")).unwrap();
        assert!(text.contains("  Running:\n") && text.contains("to: Running\n"));
        format!(
            "{}{extra}",
            text.replace("  Running:\n", "  Executing:\n")
                .replace("to: Running\n", "to: Executing\n")
        )
    }

    fn in_phase(name: &str, phase: Option<&str>) -> (String, Value) {
        let status = phase.map_or(serde_json::json!({}), |p| serde_json::json!({ "phase": p }));
        (
            format!("ns/{name}"),
            serde_json::json!({ "status": status }),
        )
    }

    #[test]
    fn only_resources_in_a_removed_unmapped_phase_are_stranded() {
        let dir = tempfile::tempdir().unwrap();
        copy_default_rules(dir.path());
        let file = dir.path().join("lifecycle.yaml");
        let old = Rules::load(&file, &[]).unwrap();
        let resources = vec![
            in_phase("running", Some("Running")),
            in_phase("done", Some("Completed")),
            in_phase("new", None),
            // unknown to the running rules already: not this change's doing
            in_phase("odd", Some("Bogus")),
        ];
        std::fs::write(&file, renamed_running("")).unwrap();
        let new = Rules::load(&file, &[]).unwrap();
        assert_eq!(
            stranded(&old, &new, &resources),
            vec![("ns/running".to_string(), "Running".to_string())]
        );
        let report = stranding_report(&old, &new, &resources).unwrap();
        assert!(
            report.contains("removes phase `Running` that 1 resource is in")
                && report.contains("\n  ns/running (phase Running)\n")
                && report.contains("`renamedPhases: {Running: <new phase>}`"),
            "{report}"
        );
        // mapped: nothing is stranded, and the engine reads the old name as the new one
        std::fs::write(
            &file,
            renamed_running("renamedPhases:\n  Running: Executing\n"),
        )
        .unwrap();
        let mapped = Rules::load(&file, &[]).unwrap();
        assert!(stranded(&old, &mapped, &resources).is_empty());
        assert_eq!(stranding_report(&old, &mapped, &resources), None);
        let executing = mapped.phase_index("Executing").unwrap();
        assert_eq!(
            crate::engine::phase_of(&mapped, &resources[0].1),
            Ok(executing)
        );
        // and a later change that drops the mapping strands it again
        assert_eq!(stranded(&mapped, &new, &resources).len(), 1);
    }

    #[tokio::test]
    async fn a_change_that_strands_a_resource_is_refused_until_the_phase_is_mapped() {
        let dir = tempfile::tempdir().unwrap();
        copy_default_rules(dir.path());
        let file = dir.path().join("lifecycle.yaml");
        let rules = Arc::new(Rules::load(&file, &[]).unwrap());
        let first = rules.revision.clone();
        let metrics = Arc::new(Metrics::new());
        let (handle, mut errors) = start(
            rules,
            None,
            Config {
                file: file.clone(),
                overrides: vec![],
                debounce: Duration::from_millis(50),
                poll: Duration::from_millis(200),
                crd: None,
            },
            metrics.clone(),
        );
        handle.set_census(Arc::new(|| vec![in_phase("wf-1", Some("Running"))]));
        std::fs::write(&file, renamed_running("")).unwrap();
        let report = tokio::time::timeout(Duration::from_secs(5), errors.recv())
            .await
            .expect("a report")
            .unwrap();
        assert!(report.contains("ns/wf-1 (phase Running)"), "{report}");
        assert_eq!(handle.current().revision, first);
        assert_eq!(handle.state().last_error.as_deref(), Some(report.as_str()));
        assert!(
            metrics
                .encode()
                .contains("lifecycle_rules_reload_total{result=\"error\"} 1")
        );
        std::fs::write(
            &file,
            renamed_running("renamedPhases:\n  Running: Executing\n"),
        )
        .unwrap();
        assert!(
            wait_for(|| handle.current().revision != first).await,
            "the mapped change was not accepted"
        );
        assert!(handle.current().phase_index("Executing").is_some());
        assert_eq!(handle.state().last_error, None);
    }
}
