//! lifecycle-engine: a Kubernetes controller whose behaviour lives in a rules file.
//!
//! The crate is a pure core and a thin shell. [`rules`] loads and checks `lifecycle.yaml`,
//! [`expr`] and [`render`] evaluate its paths and templates, and [`engine::decide`] turns rules
//! plus an observation into a decision. Only the Kubernetes shell talks to the API server.

pub mod audit;
pub mod cli;
pub mod controller;
pub mod engine;
pub mod expr;
pub mod k8s;
pub mod metrics;
pub mod reload;
pub mod render;
#[cfg(test)]
mod repo_tests;
pub mod rules;
pub mod scenario;
pub mod server;
pub mod simulate;
pub mod time;
