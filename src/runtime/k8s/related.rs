//! Reads of related objects (`related:` in the rules): from their watch cache, once that cache
//! shows the cluster as it was when the execution object that lists them was read.
//!
//! The change that wakes a reconcile is often one of the execution object (a run that failed),
//! made just after a change of the objects it lists (the task that failed). The related kind's
//! watch is a separate stream, so its cache may not have applied that change yet; a decision
//! made on it would read the task as still running and lose the failure for good. So a related
//! object is read from its cache only when the cache has applied every change of its kind up to
//! the execution object's revision (resourceVersions are etcd revisions, global and growing; see
//! [`super::progress`]). When it has not, the read waits for it (at most `--cache-wait`, woken
//! by each event the cache applies), and reads the API server only when it is still behind.
//!
//! An object read from the API server at or after a revision is remembered with it, and answers
//! later reads up to that revision (with the cache's copy once the cache has the version read)
//! until the cache has applied every change up to that revision: a
//! resource whose execution object does not change (one at rest, polled) costs at most one
//! request per revision of its execution object, not one per poll. Every read is counted in
//! `lifecycle_related_reads_total{kind,result}`: `cache`, `cache_after_wait`, `read_before`
//! (an earlier read from the API server), `api`.

use super::reconcile::{get_object, observe, to_value};
use super::{Ctx, Error};
use crate::engine::ObjectKey;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Related kinds whose cache was still behind a revision after the wait, in one reconcile: read
/// from the API server for the rest of it, with no second wait.
#[derive(Default)]
pub(super) struct Behind(Vec<(String, String, u64)>);

impl Behind {
    fn includes(&self, key: &ObjectKey, version: u64) -> bool {
        self.0
            .iter()
            .any(|(a, k, v)| *a == key.api_version && *k == key.kind && *v >= version)
    }
}

/// An object as the API server gave it, current at or after revision `as_of`.
struct Read {
    as_of: u64,
    object: Option<Value>,
    /// The revision its cache must have applied to show this read or newer: the object's
    /// resourceVersion, or `as_of` when it was absent.
    shown_at: u64,
}

/// How an earlier read answers.
#[derive(Debug, PartialEq)]
enum Earlier {
    /// With the object as read (none: absent).
    Copy(Option<Value>),
    /// From the cache, which has applied the version read or a newer one.
    Cache,
}

/// Related objects read from the API server, until their caches can answer alone.
#[derive(Default)]
pub(crate) struct FreshReads(Mutex<HashMap<ObjectKey, Read>>);

impl FreshReads {
    /// The earlier read of `key` that answers a read as of `version`, while its cache (which has
    /// applied changes up to `applied`) cannot answer it alone.
    fn get(&self, key: &ObjectKey, version: u64, applied: u64) -> Option<Earlier> {
        let mut reads = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let read = reads.get(key)?;
        if applied >= read.as_of {
            // the cache answers every read up to `as_of` by itself now
            reads.remove(key);
            return None;
        }
        if read.as_of < version {
            return None;
        }
        Some(if applied >= read.shown_at {
            // the cache has the version read, or a newer one
            Earlier::Cache
        } else {
            Earlier::Copy(read.object.clone())
        })
    }

    /// Remembers a read from the API server made at or after revision `as_of`, and forgets the
    /// reads the caches show by now (`applied` gives a kind's progress).
    fn remember(
        &self,
        key: &ObjectKey,
        object: Option<Value>,
        as_of: u64,
        applied: impl Fn(&ObjectKey) -> Option<u64>,
    ) {
        let shown_at = object
            .as_ref()
            .and_then(|o| o.pointer("/metadata/resourceVersion"))
            .and_then(Value::as_str)
            .and_then(super::progress::parse_version)
            .unwrap_or(as_of);
        let mut reads = self.0.lock().unwrap_or_else(|e| e.into_inner());
        reads.retain(|k, r| applied(k).is_none_or(|a| a < r.as_of));
        reads.insert(
            key.clone(),
            Read {
                as_of,
                object,
                shown_at,
            },
        );
    }

    /// How many reads are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().map(|r| r.len()).unwrap_or_default()
    }
}

/// Reads a related object listed by objects observed at revisions up to `as_of` (the newest
/// execution object or child of the reconcile; none: a version that is not a number, so no
/// cache can be shown fresh enough).
pub(super) async fn read(
    ctx: &Ctx,
    key: &ObjectKey,
    as_of: Option<u64>,
    behind: &mut Behind,
) -> Result<Option<Value>, Error> {
    let applied = ctx.caches.applied(&key.api_version, &key.kind);
    let (version, applied) = match (as_of, applied) {
        (Some(v), Some(a)) => (v, a),
        // not cached (not watched, not synced), or no revision to compare
        _ => return from_api(ctx, key, as_of).await,
    };
    match ctx.fresh_reads.get(key, version, applied) {
        Some(Earlier::Copy(object)) => {
            ctx.metrics.related_read(&key.kind, "read_before");
            return Ok(object);
        }
        Some(Earlier::Cache) => {
            ctx.metrics.related_read(&key.kind, "read_before");
            return observe(ctx, key).await;
        }
        None => {}
    }
    if applied >= version {
        ctx.metrics.related_read(&key.kind, "cache");
        return observe(ctx, key).await;
    }
    if !behind.includes(key, version) {
        let t0 = Instant::now();
        let waiting = Waiting::new(&ctx.metrics.related_waiting);
        let caught_up = ctx
            .caches
            .caught_up(&key.api_version, &key.kind, version, ctx.cache_wait)
            .await;
        drop(waiting);
        ctx.metrics
            .related_wait_seconds
            .observe(t0.elapsed().as_secs_f64());
        if caught_up {
            ctx.metrics.related_read(&key.kind, "cache_after_wait");
            return observe(ctx, key).await;
        }
        tracing::debug!(kind = %key.kind, revision = version, waited = ?ctx.cache_wait, "the cache of a related kind is behind the execution object; reading the API server");
        behind
            .0
            .push((key.api_version.clone(), key.kind.clone(), version));
    }
    from_api(ctx, key, Some(version)).await
}

/// Counts a wait in a gauge while it lasts (a reconcile dropped mid-wait included).
struct Waiting<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn from_api(ctx: &Ctx, key: &ObjectKey, as_of: Option<u64>) -> Result<Option<Value>, Error> {
    ctx.metrics.related_read(&key.kind, "api");
    let object = get_object(ctx, key).await?.as_ref().map(to_value);
    if let Some(as_of) = as_of {
        ctx.fresh_reads.remember(key, object.clone(), as_of, |k| {
            ctx.caches.applied(&k.api_version, &k.kind)
        });
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            api_version: "tekton.dev/v1".into(),
            kind: "TaskRun".into(),
            namespace: "x".into(),
            name: name.into(),
        }
    }

    fn taskrun(version: &str) -> Value {
        json!({"metadata": {"name": "a", "resourceVersion": version}, "status": {"done": true}})
    }

    #[test]
    fn a_read_answers_up_to_its_revision_until_the_cache_can_alone() {
        let reads = FreshReads::default();
        reads.remember(&key("a"), Some(taskrun("90")), 100, |_| Some(80));
        // asked as of 100 or before, the cache at 85 lacks the version read (90)
        let copy = Some(Earlier::Copy(Some(taskrun("90"))));
        assert_eq!(reads.get(&key("a"), 100, 85), copy, "the read stands in");
        assert_eq!(reads.get(&key("a"), 95, 85), copy);
        // a later revision needs a later read
        assert_eq!(reads.get(&key("a"), 101, 85), None);
        // the cache has version 90 but not every change up to 100: its copy, on the read's word
        assert_eq!(reads.get(&key("a"), 100, 90), Some(Earlier::Cache));
        assert_eq!(reads.get(&key("a"), 100, 99), Some(Earlier::Cache));
        assert_eq!(reads.len(), 1);
        // at 100 the cache answers alone, and the read is forgotten
        assert_eq!(reads.get(&key("a"), 100, 100), None);
        assert_eq!(reads.len(), 0);
        assert_eq!(reads.get(&key("b"), 1, 0), None, "never read");
    }

    #[test]
    fn an_absent_object_is_remembered_until_the_cache_passes_the_revision() {
        let reads = FreshReads::default();
        reads.remember(&key("gone"), None, 100, |_| Some(50));
        assert_eq!(reads.get(&key("gone"), 100, 99), Some(Earlier::Copy(None)));
        assert_eq!(reads.get(&key("gone"), 100, 100), None);
        assert_eq!(reads.len(), 0);
    }

    #[test]
    fn remembering_forgets_the_reads_the_caches_answer_by_now() {
        let reads = FreshReads::default();
        reads.remember(&key("a"), Some(taskrun("90")), 100, |_| Some(80));
        reads.remember(&key("b"), Some(taskrun("120")), 130, |_| Some(100));
        // the cache of the kind is at 100 by the second read: a's read is no longer needed
        assert_eq!(reads.len(), 1);
        assert_eq!(
            reads.get(&key("b"), 130, 100),
            Some(Earlier::Copy(Some(taskrun("120"))))
        );
        // a kind no longer cached forgets nothing it cannot check
        reads.remember(&key("c"), None, 140, |_| None);
        assert_eq!(reads.len(), 2);
    }

    #[test]
    fn a_kind_found_behind_is_behind_for_its_revision_and_earlier_ones() {
        let mut behind = Behind::default();
        behind
            .0
            .push(("tekton.dev/v1".into(), "TaskRun".into(), 100));
        assert!(behind.includes(&key("a"), 100));
        assert!(behind.includes(&key("b"), 99));
        assert!(!behind.includes(&key("a"), 101));
        let mut other = key("a");
        other.kind = "Pod".into();
        assert!(!behind.includes(&other, 100));
    }
}
