//! The API server's ceiling: the writes a measured run made, per lifecycle, made again by this
//! harness alone (no controller, no watch), with the same concurrency as the creates. How long
//! the control plane takes to take them is the least time any controller making those requests
//! could take; the report puts the controller's time to all terminal next to it.
//!
//! What is replayed comes from the measured run's counts: the controller's requests per
//! lifecycle (`apiserver_request_total`, this harness's own taken off) and this harness's own
//! (the creates, the Tekton player's writes). Fractions are spread exactly over the lifecycles
//! (lifecycle `i` makes `floor((i+1)·f) − floor(i·f)` requests of a kind made `f` times per
//! lifecycle). The bodies are the run's own: the resource as the harness creates it, the first
//! run the player saw, a terminal status of the run as status patches, Tekton's status shapes.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Result, anyhow};
use futures::StreamExt;
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use lifecycle_testsupport::tekton;
use serde::Serialize;
use serde_json::{Value, json};

use crate::Bench;
use crate::load::{BENCH_NS_LABEL, resource};
use crate::options::ControllerSpec;
use crate::plane::{ControlPlane, cleanup, ensure_namespace};
use crate::report::SizeResult;
use crate::sample::usage;

/// What the replay of one measured size came to.
#[derive(Serialize, Clone, Debug, Default)]
pub struct CeilingResult {
    /// The controller whose run was replayed, and its size.
    pub controller: String,
    pub n: usize,
    /// Requests made, per lifecycle, by `VERB/resource/subresource`.
    pub requests_by_kind: BTreeMap<String, f64>,
    pub requests_per_lifecycle: f64,
    /// Of those, the requests of users and Tekton (this harness's own in the measured run).
    pub harness_per_lifecycle: f64,
    /// Requests of the measured run that this replay cannot make (kinds it has no body for).
    pub not_replayed: BTreeMap<String, f64>,
    /// First request until the last one's answer, seconds.
    pub all_done_s: f64,
    /// kube-apiserver and etcd CPU over the replay.
    pub control_plane_cpu_s: BTreeMap<String, f64>,
    /// Requests that failed (after the retries of transient errors).
    pub failures: usize,
    pub first_failure: Option<String>,
}

/// The bodies a replay sends, taken from the measured run.
pub struct Samples {
    /// A child object as the controller created it (metadata and status are reset).
    pub child: Option<Value>,
    /// A terminal status of a governed resource.
    pub status: Option<Value>,
}

/// One request of a lifecycle's replay.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Step {
    CreateResource,
    CreateChild,
    CreateTaskRun,
    Get(Target),
    PatchMeta(Target),
    PatchStatus(Target),
    CreateEvent,
    DeleteChild,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Target {
    Resource,
    Child,
    TaskRun,
}

impl Bench {
    /// Replays the requests of `measured` on `cp` (a fresh control plane, or one cleaned up).
    pub async fn ceiling(
        &self,
        cp: &ControlPlane,
        spec: &ControllerSpec,
        measured: &SizeResult,
        samples: &Samples,
    ) -> Result<CeilingResult> {
        let n = measured.n;
        let client = cp.admin().await?;
        let ns = self.namespace(&spec.name, &format!("c{n}"));
        ensure_namespace(&client, &ns).await?;
        ensure_namespace(&client, &self.subject.execution_namespace).await?;
        let per_lifecycle = per_lifecycle_counts(measured);
        let mut result = CeilingResult {
            controller: spec.name.clone(),
            n,
            ..Default::default()
        };
        let mut kinds: Vec<(Step, f64)> = Vec::new();
        for (key, f) in &per_lifecycle {
            match self.step(key) {
                Some(step) => kinds.push((step, *f)),
                None => {
                    result.not_replayed.insert(key.clone(), *f);
                }
            }
        }
        kinds.sort_by_key(|k| k.0);
        let world = World::new(self, &client, &ns, samples);
        let cp_pids = cp.pids();
        let cp0: Vec<f64> = cp_pids
            .iter()
            .map(|(_, p)| usage(*p).map(|u| u.cpu_s).unwrap_or(0.0))
            .collect();
        let started = Instant::now();
        let outcomes: Vec<Vec<(Step, Result<(), String>)>> = futures::stream::iter(0..n)
            .map(|i| {
                let steps = steps_of(&kinds, i);
                let world = &world;
                async move { world.lifecycle(i, &steps).await }
            })
            .buffer_unordered(self.args.create_concurrency.max(1))
            .collect()
            .await;
        result.all_done_s = started.elapsed().as_secs_f64();
        for (i, (name, pid)) in cp_pids.iter().enumerate() {
            if let Some(u) = usage(*pid) {
                result
                    .control_plane_cpu_s
                    .insert(name.clone(), u.cpu_s - cp0[i]);
            }
        }
        for (step, outcome) in outcomes.into_iter().flatten() {
            *result.requests_by_kind.entry(self.key(step)).or_insert(0.0) += 1.0 / n.max(1) as f64;
            if let Err(e) = outcome {
                result.failures += 1;
                result.first_failure.get_or_insert(e);
            }
        }
        result.requests_per_lifecycle = result.requests_by_kind.values().sum();
        result.harness_per_lifecycle =
            measured.harness_requests.values().sum::<f64>() / n.max(1) as f64;
        if !cp.is_managed() {
            cleanup(&client, &self.subject, &ns).await?;
        }
        Ok(result)
    }

    /// The step a `VERB/resource/subresource` key of the counts stands for.
    fn step(&self, key: &str) -> Option<Step> {
        let mut parts = key.splitn(3, '/');
        let (verb, plural, sub) = (parts.next()?, parts.next()?, parts.next().unwrap_or(""));
        let target = if plural == self.subject.resource.plural {
            Target::Resource
        } else if plural == self.subject.execution.plural {
            Target::Child
        } else if plural == tekton::taskruns().plural {
            Target::TaskRun
        } else if plural == "events" && verb == "POST" {
            return Some(Step::CreateEvent);
        } else {
            return None;
        };
        Some(match (verb, target, sub) {
            ("POST", Target::Resource, "") => Step::CreateResource,
            ("POST", Target::Child, "") => Step::CreateChild,
            ("POST", Target::TaskRun, "") => Step::CreateTaskRun,
            ("GET", t, "") => Step::Get(t),
            ("PATCH", t, "") => Step::PatchMeta(t),
            ("PATCH", t, "status") => Step::PatchStatus(t),
            ("DELETE", Target::Child, "") => Step::DeleteChild,
            _ => return None,
        })
    }

    /// The `VERB/resource/subresource` key of a step, as the counts name it.
    fn key(&self, step: Step) -> String {
        let plural = |t: Target| match t {
            Target::Resource => self.subject.resource.plural.clone(),
            Target::Child => self.subject.execution.plural.clone(),
            Target::TaskRun => tekton::taskruns().plural,
        };
        match step {
            Step::CreateResource => format!("POST/{}/", plural(Target::Resource)),
            Step::CreateChild => format!("POST/{}/", plural(Target::Child)),
            Step::CreateTaskRun => format!("POST/{}/", plural(Target::TaskRun)),
            Step::Get(t) => format!("GET/{}/", plural(t)),
            Step::PatchMeta(t) => format!("PATCH/{}/", plural(t)),
            Step::PatchStatus(t) => format!("PATCH/{}/status", plural(t)),
            Step::CreateEvent => "POST/events/".to_string(),
            Step::DeleteChild => format!("DELETE/{}/", plural(Target::Child)),
        }
    }
}

/// The measured run's requests per lifecycle: the controller's and this harness's own.
fn per_lifecycle_counts(measured: &SizeResult) -> BTreeMap<String, f64> {
    let mut all = measured.apiserver_requests_by_verb.clone();
    for (k, v) in &measured.harness_requests {
        *all.entry(k.clone()).or_insert(0.0) += v / measured.n.max(1) as f64;
    }
    all.retain(|_, v| *v > 0.0);
    all
}

/// The steps of lifecycle `i`: each kind made `f` times per lifecycle, spread exactly.
fn steps_of(kinds: &[(Step, f64)], i: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    for (step, f) in kinds {
        let count = ((i + 1) as f64 * f).floor() - (i as f64 * f).floor();
        steps.extend(std::iter::repeat_n(*step, count.max(0.0) as usize));
    }
    steps
}

/// The objects of a replay and how each request is made.
struct World<'a> {
    bench: &'a Bench,
    ns: String,
    resources: Api<DynamicObject>,
    children: Api<DynamicObject>,
    taskruns: Api<DynamicObject>,
    events: Api<DynamicObject>,
    samples: &'a Samples,
}

impl<'a> World<'a> {
    fn new(bench: &'a Bench, client: &Client, ns: &str, samples: &'a Samples) -> World<'a> {
        let exec_ns = &bench.subject.execution_namespace;
        let events = ApiResource::erase::<k8s_openapi::api::core::v1::Event>(&());
        World {
            bench,
            ns: ns.to_string(),
            resources: Api::namespaced_with(client.clone(), ns, &bench.subject.resource),
            children: Api::namespaced_with(client.clone(), exec_ns, &bench.subject.execution),
            taskruns: Api::namespaced_with(client.clone(), exec_ns, &tekton::taskruns()),
            events: Api::namespaced_with(client.clone(), ns, &events),
            samples,
        }
    }

    /// Makes the steps of lifecycle `i` one after another; each one's outcome.
    async fn lifecycle(&self, i: usize, steps: &[Step]) -> Vec<(Step, Result<(), String>)> {
        let name = format!("ceiling-{i:06}");
        let mut out = Vec::with_capacity(steps.len());
        for (k, step) in steps.iter().enumerate() {
            let r = self.make(*step, &name, k).await;
            out.push((*step, r.map_err(|e| format!("{step:?} {name}: {e}"))));
        }
        out
    }

    async fn make(&self, step: Step, name: &str, k: usize) -> Result<()> {
        let pp = PostParams::default();
        let patch = PatchParams::default();
        let mark =
            json!({"metadata": {"annotations": {"bench.lifecycle-engine/ceiling": k.to_string()}}});
        match step {
            Step::CreateResource => {
                let target = format!("{}/deployment/{name}", self.ns);
                let obj = resource(&self.bench.subject.resource, &self.ns, name, &target)?;
                self.resources.create(&pp, &obj).await?;
            }
            Step::CreateChild => {
                self.children.create(&pp, &self.child(name)?).await?;
            }
            Step::CreateTaskRun => {
                let mut tr = tekton::taskrun(name, "step");
                tr.metadata.namespace = None;
                tr.metadata
                    .labels
                    .get_or_insert_default()
                    .insert(BENCH_NS_LABEL.to_string(), self.ns.clone());
                self.taskruns.create(&pp, &tr).await?;
            }
            Step::Get(t) => {
                let (api, name) = self.target(t, name);
                api.get(&name).await?;
            }
            Step::PatchMeta(t) => {
                let (api, name) = self.target(t, name);
                api.patch(&name, &patch, &Patch::Merge(&mark)).await?;
            }
            Step::PatchStatus(t) => {
                let (api, name) = self.target(t, name);
                let status = match t {
                    Target::Resource => self.samples.status.clone().unwrap_or(json!({})),
                    Target::Child => {
                        let at = tekton::now();
                        tekton::one_task_finished(&name, "step", true, &at, &at).0
                    }
                    Target::TaskRun => {
                        let at = tekton::now();
                        tekton::one_task_finished(&name, "step", true, &at, &at).1
                    }
                };
                api.patch_status(&name, &patch, &Patch::Merge(&json!({"status": status})))
                    .await?;
            }
            Step::CreateEvent => {
                let event = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Event",
                    "metadata": {"generateName": format!("{name}.")},
                    "involvedObject": {"apiVersion": self.bench.subject.resource.api_version,
                        "kind": self.bench.subject.resource.kind, "name": name,
                        "namespace": self.ns},
                    "reason": "Replayed", "message": format!("replayed event {k} of {name}"),
                    "type": "Normal", "source": {"component": "lifecycle-bench"},
                }))?;
                self.events.create(&pp, &event).await?;
            }
            Step::DeleteChild => {
                self.children.delete(name, &DeleteParams::default()).await?;
            }
        }
        Ok(())
    }

    /// The API and object name of a target of lifecycle `name`.
    fn target(&self, t: Target, name: &str) -> (&Api<DynamicObject>, String) {
        match t {
            Target::Resource => (&self.resources, name.to_string()),
            Target::Child => (&self.children, name.to_string()),
            Target::TaskRun => (&self.taskruns, tekton::taskrun_name(name, "step")),
        }
    }

    /// The child of lifecycle `name`: the sampled one renamed (or a bare one), labelled as the
    /// rules label their children.
    fn child(&self, name: &str) -> Result<DynamicObject> {
        let subject = &self.bench.subject;
        let mut v = self.samples.child.clone().unwrap_or_else(|| {
            json!({"apiVersion": subject.execution.api_version,
                "kind": subject.execution.kind, "metadata": {}, "spec": {}})
        });
        let obj = v
            .as_object_mut()
            .ok_or_else(|| anyhow!("the sampled child is not an object"))?;
        obj.remove("status");
        let mut labels = obj
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .cloned()
            .unwrap_or(json!({}));
        labels[&subject.owner_name_label] = json!(name);
        labels[&subject.owner_namespace_label] = json!(self.ns);
        obj.insert(
            "metadata".into(),
            json!({"name": name, "namespace": subject.execution_namespace, "labels": labels}),
        );
        Ok(serde_json::from_value(v)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_are_spread_exactly_over_the_lifecycles() {
        let kinds = [(Step::CreateEvent, 2.5), (Step::DeleteChild, 0.1)];
        let all: Vec<Step> = (0..10).flat_map(|i| steps_of(&kinds, i)).collect();
        assert_eq!(all.iter().filter(|s| **s == Step::CreateEvent).count(), 25);
        assert_eq!(all.iter().filter(|s| **s == Step::DeleteChild).count(), 1);
        // each lifecycle makes its steps in the order of the kinds
        assert_eq!(
            steps_of(&kinds, 9),
            vec![
                Step::CreateEvent,
                Step::CreateEvent,
                Step::CreateEvent,
                Step::DeleteChild
            ]
        );
    }
}
