//! The load: the resources the harness creates (bounded concurrency, optionally paced) and what
//! the watches saw of them and of their runs, timestamped on one clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use lifecycle_testsupport::api_code;
use serde_json::{Value, json};

use crate::prometheus::Requests;
use crate::sample::now_ms;
use crate::subject::Subject;

/// Label on the TaskRuns the player creates, naming the resources' namespace (for clean-up).
pub const BENCH_NS_LABEL: &str = "bench.lifecycle-engine/namespace";

#[derive(Default, Clone)]
pub struct WfeTrack {
    /// Created: the earlier of the create call's return and the first watch event.
    pub created: Option<f64>,
    /// First seen in Running (or already past it).
    pub running: Option<f64>,
    /// First seen mirroring a running PipelineRun (`pipelineRunStatus.reason` Running).
    pub mirrored: Option<f64>,
    pub terminal: Option<f64>,
    pub phase: String,
    pub status: Value,
}

#[derive(Default, Clone)]
pub struct PrTrack {
    pub owner: String,
    pub uids: Vec<String>,
    pub added: Option<f64>,
    /// Running status written (earlier of the patch's return and the watch event).
    pub running: Option<f64>,
    /// Finished status written (earlier of the patch's return and the watch event).
    pub finished: Option<f64>,
    pub deleted: Option<f64>,
    pub reload_label: Option<String>,
}

#[derive(Default)]
pub struct Track {
    pub wfe: HashMap<String, WfeTrack>,
    pub pr: HashMap<String, PrTrack>,
    /// Problems seen by the Tekton player (failed writes).
    pub problems: Vec<String>,
    /// The first run the player saw, as the controller created it (the ceiling replays it).
    pub sample_run: Option<Value>,
}

pub type Shared = Arc<Mutex<Track>>;

pub fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Track> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn earliest(slot: &mut Option<f64>, t: f64) {
    *slot = Some(slot.map_or(t, |s| s.min(t)));
}

fn watch_resources(api: Api<DynamicObject>, track: Shared) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = events.next().await {
            let t = now_ms();
            let obj = match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                _ => continue,
            };
            let name = obj.metadata.name.clone().unwrap_or_default();
            let status = obj.data.get("status").cloned().unwrap_or(Value::Null);
            let phase = status
                .get("phase")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let mut tr = lock(&track);
            let w = tr.wfe.entry(name).or_default();
            earliest(&mut w.created, t);
            if matches!(phase.as_str(), "Running" | "Completed" | "Failed") && w.running.is_none() {
                w.running = Some(t);
            }
            if w.mirrored.is_none()
                && status
                    .pointer("/pipelineRunStatus/reason")
                    .and_then(Value::as_str)
                    == Some("Running")
            {
                w.mirrored = Some(t);
            }
            if matches!(phase.as_str(), "Completed" | "Failed") && w.terminal.is_none() {
                w.terminal = Some(t);
            }
            w.phase = phase;
            w.status = status;
        }
    })
}

/// Calls `f` (a write, counted in `requests` under `key`: verb, resource, subresource) until it
/// succeeds, retrying on errors other than 4xx for about 15 s. Ok(true) when written (or, for a
/// create, already there), Ok(false) when the object is gone, else the last error.
pub async fn write_retried<F, Fut>(
    requests: &Requests,
    key: (&str, &str, &str),
    mut f: F,
) -> Result<bool, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let mut wait = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        requests.count(key.0, key.1, key.2);
        let Err(e) = f().await else {
            return Ok(true);
        };
        match api_code(&e).unwrap_or(0) {
            409 if key.0 == "POST" => return Ok(true),
            404 => return Ok(false),
            code if attempt == 7 || (400..500).contains(&code) => return Err(e),
            _ => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
        }
    }
}

/// A resource of the governed kind, as the orchestrator of the default rules would write it,
/// for `target`.
pub fn resource(
    kind: &ApiResource,
    ns: &str,
    name: &str,
    target: &str,
) -> serde_json::Result<DynamicObject> {
    serde_json::from_value(json!({
        "apiVersion": kind.api_version,
        "kind": kind.kind,
        "metadata": {"name": name, "namespace": ns,
            "labels": {"kubernaut.ai/correlation-id": format!("rr-{name}")}},
        "spec": {
            "remediationRequestRef": {"apiVersion": "kubernaut.ai/v1alpha1",
                "kind": "RemediationRequest", "name": format!("rr-{name}"), "namespace": ns},
            "workflowRef": {"workflowId": "restart-deployment", "version": "1.2.0",
                "containerImage": "quay.io/kubernaut/workflows/restart-deployment:v1.2.0"},
            "targetResource": target,
            "parameters": {"NAMESPACE": ns, "DEPLOYMENT": name, "GRACE_PERIOD": "30s"},
            "confidence": 0.9,
            "rationale": "load test",
            "executionConfig": {"timeout": "30m"},
        },
    }))
}

/// Creates the resources of one namespace and records when each was created.
pub struct Creator {
    /// The resources of the namespace.
    pub api: Api<DynamicObject>,
    kind: ApiResource,
    ns: String,
    /// Part of every target, so that runs of earlier runs never lock these.
    tag: String,
    track: Shared,
    requests: Arc<Requests>,
}

impl Creator {
    /// A creator of resources of `subject` in `ns`.
    pub fn new(
        client: &Client,
        subject: &Subject,
        ns: &str,
        tag: &str,
        track: Shared,
        requests: Arc<Requests>,
    ) -> Creator {
        Creator {
            api: Api::namespaced_with(client.clone(), ns, &subject.resource),
            kind: subject.resource.clone(),
            ns: ns.to_string(),
            tag: tag.to_string(),
            track,
            requests,
        }
    }

    /// Creates `name` (retrying transient errors); the error says what failed.
    pub async fn create(&self, name: &str) -> Result<(), String> {
        let ns = &self.ns;
        let target = format!("{ns}/deployment/{name}-{}", self.tag);
        let obj = resource(&self.kind, ns, name, &target).map_err(|e| format!("{name}: {e}"))?;
        let key = ("POST", self.kind.plural.as_str(), "");
        let created = write_retried(&self.requests, key, || async {
            self.api
                .create(&PostParams::default(), &obj)
                .await
                .map(|_| ())
        })
        .await;
        match created {
            Ok(true) => {
                let t = now_ms();
                let mut track = lock(&self.track);
                earliest(
                    &mut track.wfe.entry(name.to_string()).or_default().created,
                    t,
                );
                Ok(())
            }
            Ok(false) => Err(format!("create {name}: not found")),
            Err(e) => Err(format!("create {name}: {e}")),
        }
    }

    /// Creates `names`, `concurrency` at once, paced at `rate` per second (0: unpaced);
    /// returns the failures.
    pub async fn create_all(
        &self,
        names: &[String],
        (concurrency, rate): (usize, f64),
    ) -> Vec<String> {
        let start = tokio::time::Instant::now();
        let results: Vec<Result<(), String>> = futures::stream::iter(names.iter().enumerate())
            .map(|(i, name)| async move {
                if rate > 0.0 {
                    tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate))
                        .await;
                }
                self.create(name).await
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        results.into_iter().filter_map(Result::err).collect()
    }

    /// Watches the resources: records when each is first seen, Running, mirroring a running
    /// run, and terminal, with its last phase and status.
    pub fn watch(&self) -> tokio::task::JoinHandle<()> {
        watch_resources(self.api.clone(), self.track.clone())
    }
}
