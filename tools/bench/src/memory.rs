//! The memory test: M resources (10 000 by default) whose runs stay Running, so that the
//! controller caches them all and keeps re-checking them; RSS and CPU once settled, the size of
//! what it caches, and a restart that lists everything.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use kube::api::{DynamicObject, ListParams};

use crate::Bench;
use crate::load::lock;
use crate::options::ControllerSpec;
use crate::plane::ControlPlane;
use crate::prometheus::{Sample, delta, metric_by};
use crate::report::MemoryResult;
use crate::sample::{Sampler, now_ms};

impl Bench {
    /// Measures `spec` holding `--memory-size` resources.
    pub async fn memory_test(
        &self,
        cp: &ControlPlane,
        spec: &ControllerSpec,
    ) -> Result<MemoryResult> {
        let m = self.args.memory_size;
        let s = self.session(cp, spec, "mem", "memory").await?;
        let mut result = MemoryResult {
            controller: spec.name.clone(),
            resources: m,
            ..Default::default()
        };
        let mut controller = s.spawn("fill")?;
        controller.ready(&self.http, self.deadline(m)).await?;
        let sampler = Sampler::start(controller.pid);
        let track = &s.track;
        let player = s.player(HashSet::new(), false, Duration::ZERO);
        let creator = s.creator();
        let w1 = creator.watch();
        let w2 = player.watch();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = now_ms();
        let names: Vec<String> = (0..m).map(|i| format!("mem-{i:06}")).collect();
        let failures = creator
            .create_all(
                &names,
                (self.args.create_concurrency, self.args.create_rate),
            )
            .await;
        result.problems.extend(failures.into_iter().take(20));
        // every resource Running and mirroring its running run
        let deadline = Instant::now() + self.deadline(m);
        loop {
            let (mirrored, runs) = {
                let tr = lock(track);
                (
                    tr.wfe.values().filter(|w| w.mirrored.is_some()).count(),
                    tr.pr.values().filter(|p| p.running.is_some()).count(),
                )
            };
            if mirrored >= m && runs >= m {
                result.runs = runs;
                break;
            }
            if Instant::now() > deadline {
                result.problems.push(format!(
                    "only {mirrored} resources mirrored a running run ({runs} runs running) before the deadline"
                ));
                result.runs = runs;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        result.fill_s = (now_ms() - t0) / 1000.0;
        let sizes = |items: Vec<DynamicObject>| {
            let n = items.len().max(1) as f64;
            let (mut all, mut managed) = (0usize, 0usize);
            for o in &items {
                all += serde_json::to_string(o).map(|s| s.len()).unwrap_or(0);
                managed += serde_json::to_string(&o.metadata.managed_fields)
                    .map(|s| s.len())
                    .unwrap_or(0);
            }
            (all as f64 / n, managed as f64 / n)
        };
        let lp = ListParams::default().limit(500);
        (
            result.resource_bytes_mean,
            result.resource_managed_fields_bytes_mean,
        ) = sizes(creator.api.list(&lp).await?.items);
        (result.run_bytes_mean, result.run_managed_fields_bytes_mean) =
            sizes(player.runs.list(&lp.labels(player.selector())).await?.items);
        let cached = match lifecycle_engine::rules::Rules::load(&s.rules, &[]) {
            Ok(rules) => {
                crate::cached_size::measure(
                    &cp.admin().await?,
                    &rules,
                    &self.subject.execution_namespace,
                )
                .await
            }
            Err(e) => Err(anyhow::anyhow!("{e}")),
        };
        match cached {
            Ok(c) => result.cached = c,
            Err(e) => result.problems.push(format!("cached sizes: {e:#}")),
        }
        w1.abort();
        w2.abort();
        // settle: the last part of the window measures the steady state
        let settle = self.args.memory_settle;
        tokio::time::sleep(settle / 2).await;
        let ma = controller.metrics(&self.http).await;
        let ua = sampler.now();
        let ta = now_ms();
        tokio::time::sleep(settle / 2).await;
        let mb = controller.metrics(&self.http).await;
        let ub = sampler.now();
        let secs = (now_ms() - ta) / 1000.0;
        result.settled_rss_mib = ub.rss_kib as f64 / 1024.0;
        result.peak_rss_mib = sampler.peak_rss_kib() as f64 / 1024.0;
        result.settle_cpu_ms_per_s = (ub.cpu_s - ua.cpu_s) * 1000.0 / secs;
        if !ma.is_empty() {
            let by_kind =
                |m: &[Sample]| metric_by(m, "lifecycle_api_requests_total", &["verb", "kind"]);
            let d = delta(&by_kind(&ma), &by_kind(&mb));
            result.settle_api_requests_per_s = Some(d.values().sum::<f64>() / secs);
            result.settle_api_requests_by_kind =
                d.into_iter().map(|(k, v)| (k, v / secs)).collect();
        }
        drop(sampler);
        controller.stop().await;

        // a fresh process that lists everything at start
        let mut again = s.spawn("restart")?;
        let sampler = Sampler::start(again.pid);
        match again.ready(&self.http, self.deadline(m)).await {
            Ok(ms) => {
                result.restart_ready_s = Some(ms / 1000.0);
                tokio::time::sleep(settle).await;
                result.restart_rss_mib = Some(sampler.now().rss_kib as f64 / 1024.0);
                result.restart_peak_rss_mib = Some(sampler.peak_rss_kib() as f64 / 1024.0);
            }
            Err(e) => result.problems.push(format!("restart: {e:#}")),
        }
        drop(sampler);
        again.stop().await;
        s.clean_up().await?;
        Ok(result)
    }
}
