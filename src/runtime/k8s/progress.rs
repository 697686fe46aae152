//! How far a watch cache has got: the highest resourceVersion among the events it has applied,
//! and a way to wait until it passes a given one.
//!
//! The API server's resourceVersions are etcd revisions: one counter for every object of every
//! kind, growing with each write. Each watch delivers its kind's changes in revision order, so a
//! cache that has applied an event of revision `v` has applied every change of its kind up to
//! `v`. Separate watches are separate streams, though: when the change of one object (an
//! execution object at revision `r`) wakes a reconcile, the cache of another kind may not have
//! applied the changes made just before `r` yet. [`Progress::reached`] tells (and waits for)
//! whether it has: it has once it has applied an event of a revision at least `r`.
//!
//! resourceVersions are opaque to clients by contract; the API server's are decimal numbers,
//! and a version that is not one is never taken as reached (the caller reads the API server).
//!
//! The figure only ever understates: kube-runtime's watcher keeps the list's and the bookmarks'
//! versions to itself, so after a (re)list the cache counts as far as the newest object it
//! listed, and a quiet kind advances only with its next change.

use kube::Resource;
use kube::runtime::watcher;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch as signal;

/// The progress of one watch cache.
pub struct Progress {
    /// The highest revision the cache has applied (0: none yet).
    seen: signal::Sender<u64>,
    /// The highest revision among the objects of the list in progress.
    listing: Mutex<u64>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            seen: signal::channel(0).0,
            listing: Mutex::new(0),
        }
    }
}

/// An object's resourceVersion as a number, when it is one.
pub fn version_of<K: Resource>(o: &K) -> Option<u64> {
    o.meta().resource_version.as_deref().and_then(parse_version)
}

/// A resourceVersion as a number, when it is one.
pub fn parse_version(v: &str) -> Option<u64> {
    v.parse().ok()
}

impl Progress {
    /// Notes an event the cache has just applied.
    pub fn applied<K: Resource>(&self, event: &watcher::Event<K>) {
        let mut listing = self.listing.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                if let Some(v) = version_of(o) {
                    self.seen.send_if_modified(|seen| {
                        let newer = v > *seen;
                        if newer {
                            *seen = v;
                        }
                        newer
                    });
                }
            }
            watcher::Event::Init => *listing = 0,
            watcher::Event::InitApply(o) => {
                *listing = (*listing).max(version_of(o).unwrap_or(0));
            }
            // the cache now holds exactly the list: as fresh as its newest object (the list's
            // own version is not given out; the next event moves it on)
            watcher::Event::InitDone => {
                self.seen.send_replace(*listing);
            }
        }
    }

    /// The highest revision applied so far.
    pub fn seen(&self) -> u64 {
        *self.seen.borrow()
    }

    /// Whether the cache has applied the changes up to revision `version`, waiting for it at
    /// most `within`.
    pub async fn reached(&self, version: u64, within: Duration) -> bool {
        let mut rx = self.seen.subscribe();
        if *rx.borrow_and_update() >= version {
            return true;
        }
        matches!(
            tokio::time::timeout(within, rx.wait_for(|seen| *seen >= version)).await,
            Ok(Ok(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

    fn object(name: &str, version: &str) -> DynamicObject {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("tekton.dev", "v1", "TaskRun"));
        let mut o = DynamicObject::new(name, &ar);
        o.metadata.resource_version = Some(version.to_string());
        o
    }

    #[tokio::test]
    async fn a_cache_reaches_a_version_once_it_applied_an_event_at_least_that_new() {
        let p = Progress::default();
        assert!(!p.reached(5, Duration::ZERO).await, "nothing applied yet");
        p.applied(&watcher::Event::Apply(object("a", "5")));
        assert!(p.reached(5, Duration::ZERO).await);
        assert!(!p.reached(6, Duration::from_millis(10)).await);
        // an older event (another object) never moves it back
        p.applied(&watcher::Event::Apply(object("b", "3")));
        assert_eq!(p.seen(), 5);
        // a delete counts at its own revision; an opaque version is ignored
        p.applied(&watcher::Event::Delete(object("a", "9")));
        p.applied(&watcher::Event::Apply(object("c", "x")));
        assert_eq!(p.seen(), 9);
    }

    #[tokio::test]
    async fn a_wait_ends_when_the_event_arrives() {
        let p = std::sync::Arc::new(Progress::default());
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.reached(7, Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        p.applied(&watcher::Event::Apply(object("a", "6")));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "6 is not 7");
        p.applied(&watcher::Event::Apply(object("a", "8")));
        assert!(waiter.await.expect("the waiter"));
    }

    #[tokio::test]
    async fn after_a_list_the_cache_is_as_fresh_as_the_newest_object_listed() {
        let p = Progress::default();
        p.applied(&watcher::Event::Apply(object("a", "40")));
        p.applied::<DynamicObject>(&watcher::Event::Init);
        // the old contents still serve until the list is complete
        assert_eq!(p.seen(), 40);
        p.applied(&watcher::Event::InitApply(object("a", "12")));
        p.applied(&watcher::Event::InitApply(object("b", "31")));
        p.applied::<DynamicObject>(&watcher::Event::InitDone);
        assert_eq!(p.seen(), 31);
        assert!(!p.reached(40, Duration::ZERO).await);
    }
}
