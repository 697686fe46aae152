//! The integration tests: one test binary, run against a real kube-apiserver and etcd. See
//! `support` for how the control plane is found or started, and docs/testing.md.

mod audit_delivery;
mod cli;
mod controller;
mod deploy;
mod explain;
mod faults;
mod helm;
mod lookups;
mod metrics_auth;
mod partition;
mod proxy;
mod rollout;
mod router;
mod schema;
mod smoke;
// Helpers not every test uses.
#[allow(dead_code)]
mod support;
#[allow(dead_code)]
mod tekton;
mod walkthrough;
