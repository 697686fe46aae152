//! The revisions of the rules kept loaded while resources are pinned to them (`rollout`).
//!
//! Every rule set the controller has run since it started is kept here by revision. A resource
//! whose phase the latest rules pin ([`crate::engine::rollout::pinned_revision`]) is decided by
//! the revision its status records, while that revision is loaded; a revision no resource in the
//! watch cache is pinned to is dropped (the latest never is). Revisions live in memory only: a
//! restarted controller has the latest rules alone, and resources pinned to older ones continue
//! by the latest.

use crate::engine::rollout::pinned_revision;
use crate::rules::Rules;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// Loaded rule sets by revision.
#[derive(Default)]
pub struct Revisions {
    map: Mutex<HashMap<String, Arc<Rules>>>,
}

impl Revisions {
    /// A store holding `rules`.
    pub fn new(rules: &Arc<Rules>) -> Revisions {
        let r = Revisions::default();
        r.keep(rules);
        r
    }

    /// Keeps `rules` loaded (a newly accepted change).
    pub fn keep(&self, rules: &Arc<Rules>) {
        self.lock().insert(rules.revision.clone(), rules.clone());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Rules>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rules that decide `resource` (at least its `status`): the revision it is pinned to
    /// when that is loaded, else `latest`.
    pub fn for_resource(&self, latest: &Arc<Rules>, resource: &Value) -> Arc<Rules> {
        match pinned_revision(latest, resource) {
            Some(r) => self
                .lock()
                .get(r)
                .cloned()
                .unwrap_or_else(|| latest.clone()),
            None => latest.clone(),
        }
    }

    /// Drops every revision but `latest` that no resource of `resources` is pinned to; returns
    /// the revisions dropped.
    pub fn prune(&self, latest: &Rules, resources: &[(String, Value)]) -> Vec<String> {
        let used: BTreeSet<&str> = resources
            .iter()
            .filter_map(|(_, r)| pinned_revision(latest, r))
            .collect();
        let mut map = self.lock();
        let dropped: Vec<String> = map
            .keys()
            .filter(|k| **k != latest.revision && !used.contains(k.as_str()))
            .cloned()
            .collect();
        for k in &dropped {
            map.remove(k);
        }
        dropped
    }

    /// The revisions loaded, sorted.
    pub fn loaded(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }
}
