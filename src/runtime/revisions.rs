//! The revisions of the rules kept loaded while resources are pinned to them (`rollout`).
//!
//! Every rule set the controller has run since it started, and every stored one it restored at
//! start ([`crate::runtime::k8s::revision_store`]), is kept here by revision. A resource whose
//! phase the latest rules pin ([`crate::engine::rollout::pinned_revision`]) is decided by the
//! revision its status records, while that revision is loaded; a revision no resource in the
//! watch cache is pinned to is dropped (the latest never is). A pinned revision that is not
//! loaded (its stored copy was deleted, or it no longer compiles) leaves the resource to the
//! latest rules, and the shell reports that once per resource ([`Revisions::first_report`]).
//!
//! The store notifies a waiter after every change ([`Revisions::changed`]), so that the copies
//! kept in the cluster follow what is loaded here.

use crate::engine::rollout::pinned_revision;
use crate::rules::{Rules, Sources};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// One loaded revision: the compiled rules, and the sources they were compiled from (to store
/// them), when known.
#[derive(Clone)]
pub struct Loaded {
    /// The compiled rules.
    pub rules: Arc<Rules>,
    /// Their sources.
    pub sources: Option<Arc<Sources>>,
}

/// The rules that decide one resource.
pub struct Chosen {
    /// The rules.
    pub rules: Arc<Rules>,
    /// The revision the resource is pinned to when it is not loaded (so the latest decides it),
    /// with why it is not.
    pub unavailable: Option<(String, String)>,
}

#[derive(Default)]
struct State {
    loaded: HashMap<String, Loaded>,
    /// Revisions that could not be loaded, and why.
    unavailable: HashMap<String, String>,
    /// What the last prune found resources pinned to; `None` before the first one.
    used: Option<BTreeSet<String>>,
    /// Resources (uid) already told that their revision is unavailable, with that revision.
    reported: HashSet<(String, String)>,
    /// Why a revision that was never loaded is missing (where copies are kept).
    missing: String,
}

/// Loaded rule sets by revision.
pub struct Revisions {
    state: Mutex<State>,
    changed: tokio::sync::Notify,
}

impl Revisions {
    /// A store holding `rules` (compiled from `sources`, when given).
    pub fn new(rules: &Arc<Rules>, sources: Option<Arc<Sources>>) -> Revisions {
        let r = Revisions {
            state: Mutex::new(State {
                missing: "revisions are kept in this process's memory only, and it never loaded \
                          this one"
                    .into(),
                ..State::default()
            }),
            changed: tokio::sync::Notify::new(),
        };
        r.keep(rules, sources);
        r
    }

    /// Keeps `rules` loaded (a newly accepted change, or a revision restored at start).
    pub fn keep(&self, rules: &Arc<Rules>, sources: Option<Arc<Sources>>) {
        {
            let mut s = self.lock();
            s.unavailable.remove(&rules.revision);
            s.loaded.insert(
                rules.revision.clone(),
                Loaded {
                    rules: rules.clone(),
                    sources,
                },
            );
        }
        self.changed.notify_one();
    }

    /// Records that `revision` cannot be loaded, and why.
    pub fn unavailable(&self, revision: &str, why: String) {
        self.lock().unavailable.insert(revision.to_string(), why);
    }

    /// Says why a revision this process never loaded is missing (where copies are kept).
    pub fn set_missing_reason(&self, why: String) {
        self.lock().missing = why;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rules that decide `resource` (at least its `status`): the revision it is pinned to
    /// when that is loaded, else `latest`.
    pub fn for_resource(&self, latest: &Arc<Rules>, resource: &Value) -> Arc<Rules> {
        self.choose(latest, resource).rules
    }

    /// The rules that decide `resource`, and the revision it is pinned to when that is not
    /// loaded.
    pub fn choose(&self, latest: &Arc<Rules>, resource: &Value) -> Chosen {
        let Some(pinned) = pinned_revision(latest, resource) else {
            return Chosen {
                rules: latest.clone(),
                unavailable: None,
            };
        };
        let s = self.lock();
        match s.loaded.get(pinned) {
            Some(l) => Chosen {
                rules: l.rules.clone(),
                unavailable: None,
            },
            None => Chosen {
                rules: latest.clone(),
                unavailable: Some((
                    pinned.to_string(),
                    s.unavailable
                        .get(pinned)
                        .cloned()
                        .unwrap_or_else(|| s.missing.clone()),
                )),
            },
        }
    }

    /// Whether the resource `uid` is told for the first time that `revision` is unavailable
    /// (once per resource and revision in the life of the process).
    pub fn first_report(&self, uid: &str, revision: &str) -> bool {
        self.lock()
            .reported
            .insert((uid.to_string(), revision.to_string()))
    }

    /// Drops every revision but `latest` that no resource of `resources` is pinned to; returns
    /// the revisions dropped.
    pub fn prune(&self, latest: &Rules, resources: &[(String, Value)]) -> Vec<String> {
        let used: BTreeSet<String> = resources
            .iter()
            .filter_map(|(_, r)| pinned_revision(latest, r))
            .map(str::to_string)
            .collect();
        let dropped = {
            let mut s = self.lock();
            let dropped: Vec<String> = s
                .loaded
                .keys()
                .filter(|k| **k != latest.revision && !used.contains(k.as_str()))
                .cloned()
                .collect();
            for k in &dropped {
                s.loaded.remove(k);
            }
            s.unavailable.retain(|k, _| used.contains(k));
            s.used = Some(used);
            dropped
        };
        self.changed.notify_one();
        dropped
    }

    /// The revisions loaded, sorted.
    pub fn loaded(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().loaded.keys().cloned().collect();
        v.sort();
        v
    }

    /// What is loaded now, and the revisions resources were pinned to at the last prune (`None`
    /// before the first: nothing is known to be unused yet).
    pub fn snapshot(&self) -> (Vec<(String, Loaded)>, Option<BTreeSet<String>>) {
        let s = self.lock();
        let mut loaded: Vec<(String, Loaded)> = s
            .loaded
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        loaded.sort_by(|a, b| a.0.cmp(&b.0));
        (loaded, s.used.clone())
    }

    /// Waits for the next change (a revision kept, a prune).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(extra: &str) -> Arc<Rules> {
        let text = format!(
            "{}rollout:\n  policy: pinned\n{extra}",
            include_str!("../../tests/fixtures/rules/valid/renamed-phases.yaml")
                .replace("templates: _templates\n", "")
                .replace(
                    "  component: task-controller\n",
                    "  component: task-controller\n  status:\n    revision: revision\n"
                )
        );
        let sources = Sources::from_text("r.yaml", text).with_template(
            "job.yaml",
            include_str!("../../tests/fixtures/rules/valid/_templates/job.yaml"),
        );
        Arc::new(Rules::compile(&sources, &[]).unwrap())
    }

    fn at(revision: &str) -> (String, Value) {
        (
            "ns/x".into(),
            json!({"status": {"phase": "Executing", "revision": revision}}),
        )
    }

    #[test]
    fn a_pinned_revision_decides_while_loaded_and_an_unloaded_one_is_reported_once() {
        let (old, latest) = (rules(""), rules("# changed\n"));
        assert_ne!(old.revision, latest.revision);
        let revisions = Revisions::new(&old, None);
        revisions.keep(&latest, None);
        let (_, pinned) = at(&old.revision);
        assert_eq!(
            revisions.choose(&latest, &pinned).rules.revision,
            old.revision
        );
        // nothing pinned to the old revision any more: dropped, and what decides is the latest,
        // with the reason
        assert_eq!(
            revisions.prune(&latest, &[]),
            vec![old.revision.clone()],
            "dropped"
        );
        assert_eq!(revisions.snapshot().1, Some(BTreeSet::new()));
        let chosen = revisions.choose(&latest, &pinned);
        assert_eq!(chosen.rules.revision, latest.revision);
        let (revision, why) = chosen.unavailable.expect("reported unavailable");
        assert_eq!(revision, old.revision);
        assert!(why.contains("memory only"), "{why}");
        revisions.set_missing_reason("no stored copy".into());
        revisions.unavailable(&old.revision, "it no longer compiles".into());
        assert_eq!(
            revisions.choose(&latest, &pinned).unavailable.unwrap().1,
            "it no longer compiles"
        );
        assert!(revisions.first_report("uid-1", &old.revision));
        assert!(!revisions.first_report("uid-1", &old.revision));
        assert!(revisions.first_report("uid-2", &old.revision));
        // kept again (restored): it decides, and the reason is gone
        revisions.keep(&old, None);
        assert!(revisions.choose(&latest, &pinned).unavailable.is_none());
        // a prune keeps what a resource is pinned to, and the latest
        assert!(revisions.prune(&latest, &[at(&old.revision)]).is_empty());
        assert_eq!(revisions.loaded(), {
            let mut v = vec![old.revision.clone(), latest.revision.clone()];
            v.sort();
            v
        });
        assert_eq!(
            revisions.snapshot().1,
            Some(BTreeSet::from([old.revision.clone()]))
        );
    }
}
