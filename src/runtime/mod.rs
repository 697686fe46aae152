//! The Kubernetes runtime: everything that talks to the API server, the file system or the clock
//! while the controller runs. It gathers observations from watch caches, calls the pure
//! [`crate::engine`] and carries out its decisions.
//!
//! - [`controller`]: start-up of `lifecycle run` (settings, tracing, the tasks below);
//! - [`k8s`]: watches, caches, the reconcile of one resource, leader election;
//! - [`inspect`]: read-only observations of live resources for `explain` and `diff`;
//! - [`reload`]: live reload of the rules file and its templates; [`revisions`]: the older
//!   revisions kept loaded while resources are pinned to them ([`stored_rules`]: their sources
//!   as a ConfigMap's data, kept in the cluster by [`k8s::revision_store`]);
//! - [`audit`]: delivery of audit records to their sinks;
//! - [`metrics`] and [`server`]: Prometheus metrics and the health/metrics HTTP endpoint;
//! - [`secure_metrics`]: `/metrics` over HTTPS for callers the API server authorises.

pub mod audit;
pub mod controller;
pub mod inspect;
pub mod k8s;
pub mod metrics;
pub mod reload;
pub mod revisions;
pub mod secure_metrics;
pub mod server;
pub mod stored_rules;
