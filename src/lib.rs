//! lifecycle-engine: a Kubernetes controller whose behaviour lives in a rules file.
//!
//! The crate is a pure core and a thin shell:
//!
//! - the pure core: [`rules`] loads and checks `lifecycle.yaml`, [`expr`] and [`render`] evaluate
//!   its paths and templates, [`engine`] turns rules plus an observation into a decision, and
//!   [`time`] formats and parses timestamps and durations. None of them touches the network, the
//!   file system, the environment or the clock (a test in `repo_tests` keeps it so);
//! - [`runtime`]: the controller that carries decisions out against the Kubernetes API server;
//! - [`offline`]: the simulated world and rule-file scenarios (`simulate`, `render`, `test`);
//! - [`cli`]: the command line, one entry per command.
//!
//! Dependencies point inwards: `cli -> runtime, offline -> engine -> render, expr -> rules`.
//! See docs/architecture.md.

pub mod cli;
pub mod engine;
pub mod expr;
pub mod offline;
pub mod render;
#[cfg(test)]
mod repo_tests;
pub mod rules;
pub mod runtime;
pub mod time;
