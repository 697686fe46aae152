//! Prometheus metrics: the engine's own, and those the rules declare.
//!
//! Rule metrics are registered by name the first time a rule set declaring them is loaded; a
//! reload that keeps a name keeps its series. A metric update naming an undeclared metric (which
//! the loader prevents) is ignored rather than panicking.

use crate::engine::MetricRecord;
use crate::rules::Rules;
use crate::rules::model::MetricKind;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;
/// Makes histograms with a rule's buckets.
#[derive(Clone)]
struct HistogramMaker(std::sync::Arc<Vec<f64>>);

impl MetricConstructor<Histogram> for HistogramMaker {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

enum RuleMetric {
    Counter(Family<Labels, Counter<f64, AtomicU64>>),
    Gauge(Family<Labels, Gauge<f64, AtomicU64>>),
    Histogram(Family<Labels, Histogram, HistogramMaker>),
}

/// All metrics of one controller process.
pub struct Metrics {
    registry: Mutex<Registry>,
    rule_metrics: Mutex<HashMap<String, RuleMetric>>,
    /// Reconciles by result (`ok`, `error`).
    pub reconciles: Family<Labels, Counter>,
    /// Errors by category.
    pub errors: Family<Labels, Counter>,
    /// Time to compute one decision, seconds.
    pub decision_seconds: Histogram,
    /// Time of one whole reconcile, seconds.
    pub reconcile_seconds: Histogram,
    /// Rules reloads by result (`ok`, `error`).
    pub reloads: Family<Labels, Counter>,
    /// Kubernetes API requests made, by verb and kind.
    pub api_requests: Family<Labels, Counter>,
    /// Audit records accepted by a target (each target counts).
    pub audit_delivered: Counter,
    /// Audit records a target refused (4xx other than 401, 403, 404, 405, 407, 408, 429).
    pub audit_rejected: Counter,
    /// Failed attempts to hand a batch of audit records over (each is retried).
    pub audit_retries: Counter,
    /// Transitions held back because their audit record was not accepted in time.
    pub audit_not_accepted: Counter,
    /// Kubernetes API requests abandoned because they did not answer in time.
    pub api_timeouts: Counter,
    /// Watches restarted, by watch and reason (`stalled`, `error`).
    pub watch_restarts: Family<Labels, Counter>,
    /// Failed attempts to renew the leader Lease.
    pub lease_renew_failures: Counter,
    /// Reads of related objects by kind and where they were served from: `cache` (its cache had
    /// caught up with the execution object listing them), `cache_after_wait` (it caught up
    /// while the read waited), `read_before` (an earlier read from the API server, which the
    /// cache does not show yet), `api` (read from the API server).
    pub related_reads: Family<Labels, Counter>,
    /// Time a read of related objects waited for their cache to catch up, seconds.
    pub related_wait_seconds: Histogram,
    /// Reads of related objects waiting for their cache to catch up right now.
    pub related_waiting: Gauge,
    /// Governed resources in the watch cache by phase and rules revision, counted at each scrape.
    pub resources: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the engine's metrics.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let reconciles = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let reloads = Family::<Labels, Counter>::default();
        let api_requests = Family::<Labels, Counter>::default();
        let decision_seconds = Histogram::new([
            0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005,
        ]);
        let reconcile_seconds = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
        ]);
        let audit_delivered = Counter::default();
        let audit_rejected = Counter::default();
        let audit_retries = Counter::default();
        let audit_not_accepted = Counter::default();
        let api_timeouts = Counter::default();
        let watch_restarts = Family::<Labels, Counter>::default();
        let lease_renew_failures = Counter::default();
        let related_reads = Family::<Labels, Counter>::default();
        let related_wait_seconds = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
        ]);
        registry.register(
            "lifecycle_reconciles",
            "Reconciles by result",
            reconciles.clone(),
        );
        registry.register("lifecycle_errors", "Errors by category", errors.clone());
        registry.register(
            "lifecycle_decision_duration_seconds",
            "Time to compute one decision",
            decision_seconds.clone(),
        );
        registry.register(
            "lifecycle_reconcile_duration_seconds",
            "Time of one reconcile, API calls included",
            reconcile_seconds.clone(),
        );
        registry.register(
            "lifecycle_rules_reload",
            "Rules reloads by result",
            reloads.clone(),
        );
        registry.register(
            "lifecycle_api_requests",
            "Kubernetes API requests by verb and kind",
            api_requests.clone(),
        );
        registry.register(
            "lifecycle_audit_delivered",
            "Audit records accepted by a target",
            audit_delivered.clone(),
        );
        registry.register(
            "lifecycle_audit_rejected",
            "Audit records a target refused",
            audit_rejected.clone(),
        );
        registry.register(
            "lifecycle_audit_retries",
            "Failed attempts to deliver a batch of audit records (retried)",
            audit_retries.clone(),
        );
        registry.register(
            "lifecycle_audit_not_accepted",
            "Transitions held back because their audit record was not accepted in time",
            audit_not_accepted.clone(),
        );
        registry.register(
            "lifecycle_api_request_timeouts",
            "Kubernetes API requests abandoned after their timeout",
            api_timeouts.clone(),
        );
        registry.register(
            "lifecycle_watch_restarts",
            "Watches restarted, by watch and reason",
            watch_restarts.clone(),
        );
        registry.register(
            "lifecycle_lease_renew_failures",
            "Failed attempts to renew the leader Lease",
            lease_renew_failures.clone(),
        );
        registry.register(
            "lifecycle_related_reads",
            "Reads of related objects by kind and source (cache, cache_after_wait, read_before, api)",
            related_reads.clone(),
        );
        let related_waiting = Gauge::default();
        registry.register(
            "lifecycle_related_waiting",
            "Reads of related objects waiting for their cache to catch up",
            related_waiting.clone(),
        );
        registry.register(
            "lifecycle_related_wait_seconds",
            "Time a read of related objects waited for their cache to catch up",
            related_wait_seconds.clone(),
        );
        let resources = Family::<Labels, Gauge>::default();
        registry.register(
            "lifecycle_resources",
            "Governed resources in the watch cache, by phase and the rules revision that last acted on them",
            resources.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            rule_metrics: Mutex::new(HashMap::new()),
            reconciles,
            errors,
            decision_seconds,
            reconcile_seconds,
            reloads,
            api_requests,
            audit_delivered,
            audit_rejected,
            audit_retries,
            audit_not_accepted,
            api_timeouts,
            watch_restarts,
            lease_renew_failures,
            related_reads,
            related_wait_seconds,
            related_waiting,
            resources,
        }
    }

    /// Counts `resources` (each at least its `status`) by the phase and revision fields of
    /// `rules`, replacing the previous count; an empty label is a field not written yet.
    pub fn count_resources(&self, rules: &Rules, resources: &[(String, serde_json::Value)]) {
        let field = |r: &serde_json::Value, name: Option<&String>| -> String {
            name.and_then(|n| r.get("status")?.get(n)?.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let mut counts: HashMap<Labels, i64> = HashMap::new();
        for (_, r) in resources {
            let labels = vec![
                (
                    "phase".to_string(),
                    field(r, Some(&rules.resource.status.phase)),
                ),
                (
                    "revision".to_string(),
                    field(r, rules.resource.status.revision.as_ref()),
                ),
            ];
            *counts.entry(labels).or_default() += 1;
        }
        self.resources.clear();
        for (labels, n) in counts {
            self.resources.get_or_create(&labels).set(n);
        }
    }

    /// Registers the metrics a rule set declares (names already registered are kept).
    pub fn declare(&self, rules: &Rules) {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut known = self.rule_metrics.lock().unwrap_or_else(|e| e.into_inner());
        for (name, spec) in &rules.metrics {
            if known.contains_key(name) {
                continue;
            }
            // prometheus-client appends `_total` to counters itself
            let base = name.strip_suffix("_total").unwrap_or(name);
            let metric = match spec.kind {
                MetricKind::Counter => {
                    let f = Family::<Labels, Counter<f64, AtomicU64>>::default();
                    registry.register(base, spec.help.clone(), f.clone());
                    RuleMetric::Counter(f)
                }
                MetricKind::Gauge => {
                    let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
                    registry.register(name, spec.help.clone(), f.clone());
                    RuleMetric::Gauge(f)
                }
                MetricKind::Histogram => {
                    let buckets = spec.buckets.clone().unwrap_or_else(|| {
                        vec![
                            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                        ]
                    });
                    let f =
                        Family::new_with_constructor(HistogramMaker(std::sync::Arc::new(buckets)));
                    registry.register(name, spec.help.clone(), f.clone());
                    RuleMetric::Histogram(f)
                }
            };
            known.insert(name.clone(), metric);
        }
    }

    /// Applies a metric update from a decision.
    pub fn record(&self, m: &MetricRecord) {
        let known = self.rule_metrics.lock().unwrap_or_else(|e| e.into_inner());
        match known.get(&m.name) {
            Some(RuleMetric::Counter(f)) => {
                f.get_or_create(&m.labels).inc_by(m.value.max(0.0));
            }
            Some(RuleMetric::Gauge(f)) => {
                f.get_or_create(&m.labels).set(m.value);
            }
            Some(RuleMetric::Histogram(f)) => f.get_or_create(&m.labels).observe(m.value),
            None => {}
        }
    }

    /// Counts one error of a category.
    pub fn error(&self, category: &str) {
        self.errors
            .get_or_create(&vec![("category".to_string(), category.to_string())])
            .inc();
    }

    /// Counts one API request.
    pub fn api(&self, verb: &str, kind: &str) {
        self.api_requests
            .get_or_create(&vec![
                ("verb".to_string(), verb.to_string()),
                ("kind".to_string(), kind.to_string()),
            ])
            .inc();
    }

    /// Counts one read of a related object, by where it was served from.
    pub fn related_read(&self, kind: &str, source: &str) {
        self.related_reads
            .get_or_create(&vec![
                ("kind".to_string(), kind.to_string()),
                ("result".to_string(), source.to_string()),
            ])
            .inc();
    }

    /// Counts one rules reload.
    pub fn reload(&self, result: &str) {
        self.reloads
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_metrics_are_exposed_with_their_names() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let rules = Rules::load(&root.join("lifecycle.yaml"), &[]).unwrap();
        let m = Metrics::new();
        m.declare(&rules);
        m.declare(&rules); // again: no double registration
        m.record(&MetricRecord {
            name: "workflowexecution_reconciler_total".into(),
            labels: vec![("outcome".into(), "Completed".into())],
            value: 1.0,
        });
        m.record(&MetricRecord {
            name: "workflowexecution_reconciler_duration_seconds".into(),
            labels: vec![("outcome".into(), "Completed".into())],
            value: 42.0,
        });
        m.reload("error");
        let text = m.encode();
        assert!(
            text.contains("workflowexecution_reconciler_total{outcome=\"Completed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "workflowexecution_reconciler_duration_seconds_bucket{le=\"80.0\",outcome=\"Completed\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("lifecycle_rules_reload_total{result=\"error\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn resources_are_counted_by_phase_and_revision_at_each_count() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let rules = Rules::load(&root.join("lifecycle.yaml"), &[]).unwrap();
        let m = Metrics::new();
        let r = |phase: &str, revision: &str| {
            (
                "ns/x".to_string(),
                serde_json::json!({"status": {"phase": phase, "rulesRevision": revision}}),
            )
        };
        m.count_resources(
            &rules,
            &[
                r("Running", "aaa"),
                r("Running", "aaa"),
                r("Running", "bbb"),
                ("ns/new".into(), serde_json::json!({})),
            ],
        );
        let text = m.encode();
        for line in [
            "lifecycle_resources{phase=\"Running\",revision=\"aaa\"} 2",
            "lifecycle_resources{phase=\"Running\",revision=\"bbb\"} 1",
            "lifecycle_resources{phase=\"\",revision=\"\"} 1",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        // a recount replaces the previous one
        m.count_resources(&rules, &[r("Completed", "bbb")]);
        let text = m.encode();
        assert!(
            text.contains("lifecycle_resources{phase=\"Completed\",revision=\"bbb\"} 1"),
            "{text}"
        );
        assert!(!text.contains("phase=\"Running\""), "{text}");
    }
}
