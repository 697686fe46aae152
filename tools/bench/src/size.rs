//! One run of one size: N resources created, their runs played to the end, every lock
//! released; latencies, CPU, memory and API requests measured on the way, correctness checked;
//! then hot-reload samples and a restart with the N resources in place.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kube::api::ListParams;
use serde_json::json;

use crate::Bench;
use crate::load::{PrTrack, Shared, lock};
use crate::options::ControllerSpec;
use crate::plane::ControlPlane;
use crate::prometheus::{
    Sample, apiserver_requests, delta, histogram, histogram_delta, metric_by, metric_sum, stats,
};
use crate::report::{Correctness, SizeResult};
use crate::sample::{Sampler, finish_perf, now_ms, own_cpu_s, start_perf, usage};

impl Bench {
    /// Measures `spec` with `n` resources.
    pub async fn run_size(
        &self,
        cp: &ControlPlane,
        spec: &ControllerSpec,
        n: usize,
    ) -> Result<SizeResult> {
        let s = self
            .session(cp, spec, &format!("n{n}"), &format!("n{n}"))
            .await?;
        let (client, track, requests) = (&s.client, &s.track, &s.requests);
        let mut result = SizeResult {
            controller: spec.name.clone(),
            n,
            ..Default::default()
        };
        let mut controller = s.spawn("run")?;
        controller.ready(&self.http, self.deadline(n)).await?;
        let sampler = Sampler::start(controller.pid);
        let cp_pids = cp.pids();
        let counted = self.subject.counted_resources();
        let counted: Vec<&str> = counted.iter().map(String::as_str).collect();

        let names: Vec<String> = (0..n).map(|i| format!("wfe-{i:06}")).collect();
        let share = (self.args.fail_share * 100.0).round() as usize;
        let fails: HashSet<String> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 100 < share)
            .map(|(_, n)| n.clone())
            .collect();
        let player = s.player(fails.clone(), true, self.args.run_hold);
        let creator = s.creator();
        let w1 = creator.watch();
        let w2 = player.watch();
        tokio::time::sleep(Duration::from_millis(500)).await; // watches established

        // what the controller spends doing nothing, to tell apart from the lifecycle's cost
        let idle0 = sampler.now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let idle1 = sampler.now();
        result.idle_cpu_ms_per_s = (idle1.cpu_s - idle0.cpu_s) * 1000.0 / 5.0;
        let perf = match self.args.perf_size {
            Some(s) if s == n => start_perf(controller.pid, &self.args, &spec.name, n),
            _ => None,
        };
        let m0 = controller.metrics(&self.http).await;
        let a0 = apiserver_requests(client, &counted)
            .await
            .unwrap_or_default();
        let h0 = requests.snapshot();
        let u0 = sampler.now();
        let cp0: Vec<f64> = cp_pids
            .iter()
            .map(|(_, p)| usage(*p).map(|u| u.cpu_s).unwrap_or(0.0))
            .collect();
        let harness0 = own_cpu_s();
        let t0 = now_ms();

        let creating = creator.create_all(
            &names,
            (self.args.create_concurrency, self.args.create_rate),
        );

        // wait for all terminal
        let deadline = Instant::now() + self.deadline(n);
        let name_set: HashSet<&String> = names.iter().collect();
        match tokio::time::timeout(self.deadline(n), creating).await {
            Ok(failures) => {
                result.create_s = (now_ms() - t0) / 1000.0;
                result.create_failures = failures.len();
                result
                    .correctness
                    .problems
                    .extend(failures.into_iter().take(20));
            }
            Err(_) => bail!("creating {n} resources timed out"),
        }
        let (mut all_running, mut all_terminal) = (None, None);
        loop {
            {
                let tr = lock(track);
                let mine = tr.wfe.iter().filter(|(k, _)| name_set.contains(k));
                let (mut running, mut terminal) = (0, 0);
                let (mut last_running, mut last_terminal) = (0f64, 0f64);
                for (_, w) in mine {
                    if let Some(t) = w.running {
                        running += 1;
                        last_running = last_running.max(t);
                    }
                    if let Some(t) = w.terminal {
                        terminal += 1;
                        last_terminal = last_terminal.max(t);
                    }
                }
                if all_running.is_none() && running == n {
                    all_running = Some(last_running);
                }
                if terminal == n {
                    all_terminal = Some(last_terminal);
                    break;
                }
            }
            if Instant::now() > deadline {
                result.correctness.problems.push(format!(
                    "not all resources terminal within {:?}",
                    self.deadline(n)
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let m1 = controller.metrics(&self.http).await;
        let a1 = apiserver_requests(client, &counted)
            .await
            .unwrap_or_default();
        let h1 = requests.snapshot();
        let u1 = sampler.now();
        let t_terminal_snap = now_ms();
        result.all_running_s = all_running.map(|t| (t - t0) / 1000.0);
        result.all_terminal_s = all_terminal.map(|t| (t - t0) / 1000.0);
        result.cpu_to_terminal_s = u1.cpu_s - u0.cpu_s;
        // runs that exist now plus those the cooldown already deleted: one per resource
        let released = |track: &Shared| {
            lock(track)
                .pr
                .values()
                .filter(|p| name_set.contains(&p.owner) && p.deleted.is_some())
                .count()
        };
        let before = released(track);
        let listed = player
            .runs
            .list_metadata(&ListParams::default().labels(player.selector()))
            .await?
            .items
            .len();
        if released(track) == before {
            result.correctness.runs_listed_at_terminal = Some(listed + before);
        }

        // wait for every lock to be released (runs deleted after the cooldown)
        let mut end = (m1.clone(), a1.clone(), h1.clone(), u1, t_terminal_snap);
        if self.cooldown != "none" && all_terminal.is_some() {
            loop {
                let released = {
                    let tr = lock(track);
                    let mut last = 0f64;
                    let mut count = 0;
                    for p in tr.pr.values() {
                        if name_set.contains(&p.owner)
                            && let Some(d) = p.deleted
                        {
                            count += 1;
                            last = last.max(d);
                        }
                    }
                    (count >= n).then_some(last)
                };
                if let Some(t) = released {
                    result.all_released_s = Some((t - t0) / 1000.0);
                    break;
                }
                if Instant::now() > deadline {
                    result
                        .correctness
                        .problems
                        .push("not every lock released before the deadline".into());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // nothing may be recreated after the release
            tokio::time::sleep(Duration::from_secs(2)).await;
            let left = player
                .runs
                .list_metadata(&ListParams::default().labels(player.selector()))
                .await?
                .items
                .len();
            result.correctness.runs_left_after_release = Some(left);
            let m2 = controller.metrics(&self.http).await;
            let a2 = apiserver_requests(client, &counted)
                .await
                .unwrap_or_default();
            let u2 = sampler.now();
            result.cpu_to_released_s = Some(u2.cpu_s - u0.cpu_s);
            end = (m2, a2, requests.snapshot(), u2, now_ms());
        }
        let (m_end, a_end, h_end, u_end, t_end) = end;
        if let Some(p) = perf {
            result.profile = finish_perf(p).await;
        }
        result.peak_rss_mib = sampler.peak_rss_kib() as f64 / 1024.0;
        result.cpu_ms_per_lifecycle = (u_end.cpu_s - u0.cpu_s) * 1000.0 / n as f64;
        result.harness_cpu_s = own_cpu_s() - harness0;
        for (i, (name, pid)) in cp_pids.iter().enumerate() {
            if let Some(u) = usage(*pid) {
                result
                    .control_plane_cpu_s
                    .insert(name.clone(), u.cpu_s - cp0[i]);
            }
        }
        // API requests
        let by_kind =
            |m: &[Sample]| metric_by(m, "lifecycle_api_requests_total", &["verb", "kind"]);
        if m0.iter().any(|(name, _, _)| name.starts_with("lifecycle_")) {
            let d = delta(&by_kind(&m0), &by_kind(&m_end));
            result.controller_api_requests_per_lifecycle = Some(d.values().sum::<f64>() / n as f64);
            result.controller_api_requests_by_kind =
                d.into_iter().map(|(k, v)| (k, v / n as f64)).collect();
            let rec = |m: &[Sample]| metric_sum(m, "lifecycle_reconciles_total");
            let reconciles = rec(&m_end) - rec(&m0);
            result.reconciles_per_lifecycle = Some(reconciles / n as f64);
            result.reconciles_per_minute = Some(reconciles / ((t_end - t0) / 60_000.0));
            result.reconcile = Some(histogram_delta(
                &histogram(&m0, "lifecycle_reconcile_duration_seconds"),
                &histogram(&m_end, "lifecycle_reconcile_duration_seconds"),
            ));
            result.decision = Some(histogram_delta(
                &histogram(&m0, "lifecycle_decision_duration_seconds"),
                &histogram(&m_end, "lifecycle_decision_duration_seconds"),
            ));
        }
        if !a0.is_empty() || !a_end.is_empty() {
            let total = delta(&a0, &a_end);
            let ours = delta(&h0, &h_end);
            let controller_only: BTreeMap<String, f64> = total
                .iter()
                .map(|(k, v)| (k.clone(), v - ours.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v != 0.0)
                .collect();
            result.apiserver_requests_per_lifecycle =
                Some(controller_only.values().sum::<f64>() / n as f64);
            result.apiserver_requests_by_verb = controller_only
                .into_iter()
                .map(|(k, v)| (k, v / n as f64))
                .collect();
            result.harness_requests = ours;
        }
        let _ = (a1, h1);

        // latencies and correctness
        {
            let tr = lock(track);
            let mut creation = Vec::new();
            let mut mirror = Vec::new();
            let mut sync = Vec::new();
            let mut runs_of: HashMap<&str, Vec<&PrTrack>> = HashMap::new();
            for p in tr.pr.values() {
                runs_of.entry(p.owner.as_str()).or_default().push(p);
            }
            result.sample_status = names
                .iter()
                .filter_map(|n| tr.wfe.get(n))
                .find(|w| w.phase == "Completed")
                .map(|w| w.status.clone());
            result.sample_run = tr.sample_run.clone();
            let c = &mut result.correctness;
            c.resources = n;
            c.expected_failed = fails.len();
            let mut bytes = Vec::new();
            for name in &names {
                let Some(w) = tr.wfe.get(name) else {
                    c.problems.push(format!("{name}: never seen"));
                    continue;
                };
                if w.terminal.is_some() {
                    c.terminal += 1;
                }
                match w.phase.as_str() {
                    "Completed" => c.completed += 1,
                    "Failed" => c.failed += 1,
                    _ => {}
                }
                bytes.push(
                    serde_json::to_string(&w.status)
                        .map(|s| s.len())
                        .unwrap_or(0),
                );
                let runs = runs_of.get(name.as_str()).cloned().unwrap_or_default();
                match runs.len() {
                    0 => {
                        c.resources_without_run += 1;
                        continue;
                    }
                    1 => {}
                    _ => c.resources_with_several_runs += 1,
                }
                c.runs_created += runs.iter().map(|p| p.uids.len()).sum::<usize>();
                c.runs_created_twice += runs.iter().filter(|p| p.uids.len() > 1).count();
                let p = runs[0];
                let expect = if fails.contains(name) {
                    "Failed"
                } else {
                    "Completed"
                };
                if w.terminal.is_some() && w.phase != expect && c.problems.len() < 50 {
                    c.problems
                        .push(format!("{name}: phase {} (expected {expect})", w.phase));
                }
                if expect == "Failed" && w.phase == "Failed" {
                    let reason = w.status.pointer("/failureDetails/reason");
                    let task = w.status.pointer("/failureDetails/failedTaskName");
                    let want_task = format!(
                        "{}-run",
                        tr.pr
                            .iter()
                            .find(|(_, v)| v.owner == *name)
                            .map(|(k, _)| k.as_str())
                            .unwrap_or("")
                    );
                    if (reason != Some(&json!("TaskFailed")) || task != Some(&json!(want_task)))
                        && c.problems.len() < 50
                    {
                        c.problems.push(format!(
                            "{name}: failureDetails reason {reason:?}, failedTaskName {task:?} (expected TaskFailed, {want_task})"
                        ));
                    }
                }
                if let (Some(a), Some(b)) = (w.created, p.added) {
                    creation.push(b - a);
                }
                if let (Some(a), Some(b)) = (p.running, w.mirrored) {
                    mirror.push(b - a);
                }
                if let (Some(a), Some(b)) = (p.finished, w.terminal) {
                    sync.push(b - a);
                }
            }
            c.problems.extend(tr.problems.iter().take(20).cloned());
            result.run_creation_ms = stats(creation);
            result.running_mirror_ms = stats(mirror);
            result.status_sync_ms = stats(sync);
            result.status_bytes_max = bytes.iter().copied().max().unwrap_or(0);
            result.status_bytes_by_part = crate::status_size::by_phase(
                names
                    .iter()
                    .filter_map(|name| tr.wfe.get(name))
                    .filter(|w| w.terminal.is_some())
                    .map(|w| &w.status),
            );
            result.status_bytes_mean = if bytes.is_empty() {
                0.0
            } else {
                bytes.iter().sum::<usize>() as f64 / bytes.len() as f64
            };
        }
        check(&mut result.correctness, self.cooldown != "none");

        // hot reload, with the N resources in place
        if self.args.reload_samples > 0 && !self.args.smoke {
            for k in 1..=self.args.reload_samples {
                match s.reload_sample(&controller, &creator, k).await {
                    Ok(sample) => result.reload.push(sample),
                    Err(e) => result
                        .correctness
                        .problems
                        .push(format!("reload sample {k}: {e:#}")),
                }
            }
        }
        drop(sampler);
        result.shutdown_s = Some(controller.stop().await / 1000.0);
        w1.abort();
        w2.abort();

        // start-up with N existing resources
        if !self.args.smoke {
            let mut again = s.spawn("startup")?;
            let sampler = Sampler::start(again.pid);
            match again.ready(&self.http, self.deadline(n)).await {
                Ok(ms) => {
                    result.startup_ready_s = Some(ms / 1000.0);
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    let u = sampler.now();
                    result.startup_rss_mib = Some(u.rss_kib as f64 / 1024.0);
                    result.startup_cpu_s = Some(u.cpu_s);
                    let m = again.metrics(&self.http).await;
                    if !m.is_empty() {
                        result.startup_api_requests =
                            Some(metric_sum(&m, "lifecycle_api_requests_total"));
                    }
                }
                Err(e) => result
                    .correctness
                    .problems
                    .push(format!("restart with {n} resources: {e:#}")),
            }
            drop(sampler);
            again.stop().await;
        }
        s.clean_up().await?;
        Ok(result)
    }
}

/// Turns the counts of a run into its problems (those found on the way come after).
fn check(c: &mut Correctness, released: bool) {
    let mut p = Vec::new();
    if c.terminal != c.resources {
        p.push(format!(
            "{} of {} resources terminal",
            c.terminal, c.resources
        ));
    }
    if c.failed != c.expected_failed {
        p.push(format!(
            "{} resources Failed, {} expected",
            c.failed, c.expected_failed
        ));
    }
    if c.resources_without_run > 0 {
        p.push(format!(
            "{} resources without a run",
            c.resources_without_run
        ));
    }
    if c.resources_with_several_runs > 0 {
        p.push(format!(
            "{} resources with more than one run",
            c.resources_with_several_runs
        ));
    }
    if c.runs_created_twice > 0 {
        p.push(format!("{} runs created twice", c.runs_created_twice));
    }
    if c.runs_created != c.resources {
        p.push(format!(
            "{} runs created for {} resources",
            c.runs_created, c.resources
        ));
    }
    if let Some(l) = c.runs_listed_at_terminal
        && l != c.resources
    {
        p.push(format!(
            "{l} runs listed (or already released) once all were terminal, expected {}",
            c.resources
        ));
    }
    if released && c.runs_left_after_release != Some(0) {
        p.push(format!(
            "{:?} runs left after the cooldown released every lock",
            c.runs_left_after_release
        ));
    }
    p.append(&mut c.problems);
    c.problems = p;
}
