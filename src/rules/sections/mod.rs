//! One compiler per section of the rules file, each a method of the shared
//! [`Compiler`](super::compiler::Compiler) that turns the raw section into its compiled form and
//! reports the section's own problems. Checks that need several sections at once live in
//! [`super::checks`] and [`super::deps`].

pub(crate) mod actions;
mod audit;
mod cooldown;
pub(crate) mod execution;
mod lookups;
mod metrics;
mod on_delete;
mod phases;
mod related;
mod resource;
mod retry;
mod rollout;
mod settings;
mod simulation;
mod templates;
mod validation;
mod values;
