//! Hot-reload latency: the execution template of the controller's copy of the rules gets a new
//! label value (written atomically, by rename), and probe resources show from when their runs
//! carry it; the readiness endpoint shows from when the controller runs the new revision.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

use crate::controller::Controller;
use crate::load::{Creator, lock};
use crate::player::RELOAD_LABEL;
use crate::report::ReloadSample;
use crate::sample::now_ms;
use crate::session::Session;

impl Session<'_> {
    /// Sample `k`: labels the execution template `r<k>`, then creates a probe resource every
    /// 50 ms until a probe's run carries the change; the times are from the write.
    pub async fn reload_sample(
        &self,
        controller: &Controller,
        creator: &Creator,
        k: usize,
    ) -> Result<ReloadSample> {
        let http = &self.bench.http;
        let template = self
            .rules
            .parent()
            .unwrap_or(Path::new("."))
            .join(&self.subject().execution_template);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = controller.revision(http).await;
        let value = format!("r{k}");
        write_reload_label(&template, &value)?;
        let t_write = now_ms();
        let mut sample = ReloadSample::default();
        let mut probes: Vec<(String, f64)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen_new = false;
        let mut j = 0;
        while Instant::now() < deadline {
            if sample.readyz_revision_ms.is_none() && before.is_some() {
                let now = controller.revision(http).await;
                if now.is_some() && now != before {
                    sample.readyz_revision_ms = Some(now_ms() - t_write);
                }
            }
            if !seen_new {
                let name = format!("probe-{k}-{j:03}");
                j += 1;
                creator.create(&name).await.map_err(|e| anyhow!(e))?;
                probes.push((name, now_ms()));
            }
            {
                let tr = lock(&self.track);
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
}

/// Sets the reload label in the execution template (atomically, by rename).
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
