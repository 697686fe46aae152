//! JSONPath (RFC 9535, through `jsonpath-rust`) and the small predicate language built on it.
//!
//! Paths are parsed once, when the rules load. A path in the rules names the document it reads
//! by its first segment (`$.resource…`, `$.execution…`, `$.values…`); the rest is evaluated
//! against that document directly, so nothing is copied into a combined document per decision.
//! Inside `where` filters `$` is the item being tested instead.
//!
//! This module knows nothing about templates or the clock: predicates that need them
//! (`expr`, `elapsed`) ask their [`Env`].

mod path;
mod predicate;

pub use path::{Path, PathError, Root};
pub use predicate::{Env, Pred, PredError, loose_eq};
