//! `lifecycle diff OLD NEW`: what changed between two rule sets (settings, phases, transitions,
//! templates, every other section), and its impact: scenarios whose result differs, and live
//! resources whose next decision differs. Text or JSON.

use super::Format;
use crate::engine::decide;
use crate::offline::diff::{self, Change, DecisionSummary, ScenarioImpact};
use crate::offline::out;
use crate::rules::{Rules, Sources};
use serde::Serialize;
use serde_json::json;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What `diff` compares besides the rules.
pub struct Impact {
    /// Scenario files or folders, run against both.
    pub scenarios: Vec<PathBuf>,
    /// Compare the next decision of the live resources.
    pub live: bool,
    /// Kubeconfig file.
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context.
    pub context: Option<String>,
    /// Only this namespace (default: all).
    pub namespace: Option<String>,
    /// Decide at this time (default: now).
    pub now: Option<String>,
}

/// A live resource whose next decision differs.
#[derive(Debug, Serialize)]
pub struct LiveImpact {
    /// `namespace/name`.
    pub resource: String,
    /// Its phase, as its status says.
    pub phase: String,
    /// The decision under the old rules.
    pub old: DecisionSummary,
    /// The decision under the new rules.
    pub new: DecisionSummary,
    /// Whether the new rules' `rollout` keeps it on the old revision until it finishes.
    pub pinned: bool,
}

/// Runs `lifecycle diff`.
pub fn main(
    old_file: &Path,
    new_file: &Path,
    set: &[(String, String)],
    impact: Impact,
    format: Format,
) -> ExitCode {
    let load = |f: &Path| -> Result<(Rules, Sources), ExitCode> {
        let rules = super::load(f, set)?;
        let sources = Sources::read(f).map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(2)
        })?;
        Ok((rules, sources))
    };
    let ((old, old_src), (new, new_src)) = match (load(old_file), load(new_file)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    let changes = diff::changes(&old, &old_src, &new, &new_src);
    let mut scenario_count = 0;
    let mut scenarios = Vec::new();
    if !impact.scenarios.is_empty() {
        let files = match crate::offline::scenario::collect(&impact.scenarios) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        scenario_count = files.len();
        scenarios = diff::scenarios(&files, &old, old_file, &new, new_file);
    }
    let mut live = None;
    if impact.live || impact.kubeconfig.is_some() || impact.context.is_some() {
        match live_impact(&old, &new, &impact) {
            Ok(l) => live = Some(l),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    }
    match format {
        Format::Text => out(&text(
            &old,
            &new,
            &changes,
            (scenario_count, &scenarios),
            live.as_ref(),
        )),
        Format::Json => out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&json!({
                "old": {"file": old.file.display().to_string(), "revision": old.revision},
                "new": {"file": new.file.display().to_string(), "revision": new.revision},
                "changes": changes,
                "scenarios": (!impact.scenarios.is_empty()).then(|| json!({"run": scenario_count, "differ": scenarios})),
                "live": live.as_ref().map(|(n, l)| json!({"resources": n, "differ": l})),
            }))
            .unwrap_or_default()
        )),
    }
    if changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn live_impact(
    old: &Rules,
    new: &Rules,
    impact: &Impact,
) -> Result<(usize, Vec<LiveImpact>), String> {
    if (
        old.resource.api_version.as_str(),
        old.resource.kind.as_str(),
    ) != (
        new.resource.api_version.as_str(),
        new.resource.kind.as_str(),
    ) {
        return Err(format!(
            "the rules govern different kinds ({} {} and {} {}): no live resource is decided by both",
            old.resource.api_version,
            old.resource.kind,
            new.resource.api_version,
            new.resource.kind
        ));
    }
    let now = super::explain::now(impact.now.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut cluster = crate::runtime::inspect::Cluster::connect(
            impact.kubeconfig.as_deref(),
            impact.context.as_deref(),
        )
        .await?;
        let resources = cluster.resources(old, impact.namespace.as_deref()).await?;
        let mut out = Vec::new();
        for r in &resources {
            let a = cluster.observe(old, r.clone(), now).await?;
            let b = cluster.observe(new, r.clone(), now).await?;
            let (da, db) = (decide(old, &a, now), decide(new, &b, now));
            if let Some((x, y)) = diff::compare(old, &da, new, &db) {
                let meta = |k: &str| {
                    r.pointer(&format!("/metadata/{k}"))
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                out.push(LiveImpact {
                    resource: format!("{}/{}", meta("namespace"), meta("name")),
                    phase: r
                        .get("status")
                        .and_then(|s| s.get(&old.resource.status.phase))
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    old: x,
                    new: y,
                    pinned: crate::engine::rollout::pinned_revision(new, r)
                        == Some(old.revision.as_str()),
                });
            }
        }
        Ok((resources.len(), out))
    })
}

fn text(
    old: &Rules,
    new: &Rules,
    changes: &[Change],
    (run, scenarios): (usize, &[ScenarioImpact]),
    live: Option<&(usize, Vec<LiveImpact>)>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Rules: {} (revision {}) -> {} (revision {})",
        old.file.display(),
        old.revision,
        new.file.display(),
        new.revision
    );
    if changes.is_empty() {
        let _ = writeln!(s, "\nNo changes.");
    } else {
        let _ = writeln!(s, "\nChanges ({}):", changes.len());
        let width = changes.iter().map(|c| c.what.len()).max().unwrap_or(0);
        for c in changes {
            let _ = writeln!(s, "  {:width$}  {:8} {}", c.what, c.change, c.detail);
        }
    }
    if run > 0 {
        let _ = writeln!(
            s,
            "\nScenarios: {run} run against both, {} differ{}",
            scenarios.len(),
            if scenarios.is_empty() { "" } else { ":" }
        );
        for sc in scenarios {
            let _ = writeln!(s, "  {} ({})", sc.name, sc.file.display());
            let _ = writeln!(s, "    {}", sc.difference);
            for f in sc.new.iter().filter(|f| !sc.old.contains(f)) {
                let _ = writeln!(s, "    new rules: {f}");
            }
        }
    }
    if let Some((n, list)) = live {
        let _ = writeln!(
            s,
            "\nLive resources: {n}, {} whose next decision differs{}",
            list.len(),
            if list.is_empty() { "" } else { ":" }
        );
        for l in list {
            let _ = writeln!(s, "  {} (phase {})", l.resource, l.phase);
            let _ = writeln!(s, "    old: {}", summary(&l.old));
            let _ = writeln!(s, "    new: {}", summary(&l.new));
            if l.pinned {
                let _ = writeln!(
                    s,
                    "    (pinned by the new rules' rollout: decided by the old revision until it finishes)"
                );
            }
        }
    }
    s
}

fn summary(d: &DecisionSummary) -> String {
    let mut s = match &d.transition {
        Some(t) => format!("transition {t} to {}", d.phase),
        None => format!("stays in {}", d.phase),
    };
    if let Some(e) = &d.error {
        s.push_str(&format!("; rules error {e}"));
    }
    if d.effects.is_empty() {
        s.push_str("; no effects");
    } else {
        s.push_str(&format!("; {}", d.effects.join(", ")));
    }
    match d.requeue_after {
        Some(r) => s.push_str(&format!("; next look in {}", crate::time::go_duration(r))),
        None => s.push_str("; next look on a change"),
    }
    s
}
