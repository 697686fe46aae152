//! The watch caches: one reflector store per kind of object the rules read besides the governed
//! resource, keyed by (apiVersion, kind), started for what [`crate::rules::Rules::watched_kinds`] lists.
//!
//! Each cache watches only where such objects can be (the rules' one namespace for the kind,
//! else all) and only objects with the labels the rules require (the execution objects' owner
//! labels), and keeps of each object only the fields the rules read, below the top level too
//! (`apiVersion`, `kind` and the metadata the runtime reads always, never `managedFields`:
//! `projection.rs`), as compact JSON text decoded when read (`compact.rs`). Reads go to the caches: an object
//! absent from a synced cache whose watch is up is absent, with no request. A read the caches cannot answer (the
//! kind is not watched, the cache has not synced yet or lists again after a watch error, the
//! namespace is outside its scope) is
//! [`Cached::Unknown`]; the caller reads the API server then.
//!
//! An object this controller just created may not be in its cache yet: the create's answer is
//! remembered until the cache has the object (or [`CREATED_TTL`] passes), so a reconcile that
//! follows at once never takes it for absent. Likewise a patch's answer stands for the object
//! until the cache shows that version or a later one, so a decision right after a patch never
//! sees the object as it was before it and sends the same patch again.
//!
//! A rules change that reads more fields, or watches elsewhere, restarts the kind's watch (a new
//! list; the cache keeps its contents until the new list is complete). A kind the new rules no
//! longer read stops, unless its changes wake the controller (the execution kind).

use super::compact::{self, Compact};
use super::count_restarts;
use super::progress::Progress;
use super::projection::project;
use crate::engine::ObjectKey;
use crate::rules::WatchedKind;
use crate::runtime::metrics::Metrics;
use futures::{Stream, StreamExt};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch as signal;

/// How long the answer of a create stands in for an object its cache has not shown yet.
pub const CREATED_TTL: Duration = Duration::from_secs(30);

/// What a cache knows of one object.
#[derive(Debug, Clone)]
pub enum Cached {
    /// There, as last seen (or as its create returned it).
    Found(Value),
    /// Not there: the cache is synced and covers where it would be.
    Absent,
    /// The caches cannot say (kind not watched, not synced yet, outside the watched scope).
    Unknown,
}

/// One kind's cache.
struct KindCache {
    store: Store<Compact>,
    synced: Arc<AtomicBool>,
    /// Its watch is up and its last list is complete: only then is an object it lacks absent
    /// (after a watch error, and while it lists again, something created meanwhile may be
    /// missing from it).
    live: Arc<AtomicBool>,
    /// How far its events have got (see [`Progress`]).
    progress: Arc<Progress>,
    /// Where it watches and what it keeps; read when a watch (re)starts.
    scope: Arc<Mutex<WatchedKind>>,
    /// Bumped to restart the watch with the current scope.
    restart: signal::Sender<u64>,
    /// The task that drives a cache nobody else polls.
    driver: Option<tokio::task::AbortHandle>,
}

/// The registry of watch caches, shared by every reconcile.
pub struct Caches {
    client: Client,
    watch_timeout: u32,
    metrics: Arc<Metrics>,
    kinds: Mutex<HashMap<(String, String), KindCache>>,
    created: Mutex<HashMap<ObjectKey, (Instant, Arc<DynamicObject>)>>,
    /// Patch answers, until the cache shows that version of the object (or a later one).
    patched: Mutex<HashMap<ObjectKey, (Instant, Arc<DynamicObject>)>>,
    /// Told of every change a read-only cache sees (see [`Caches::on_change`]).
    on_change: Mutex<Option<OnChange>>,
}

/// Told of each object a read-only cache sees change, with the cache's kind.
pub type OnChange = Arc<dyn Fn(&(String, String), &DynamicObject) + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Caches {
    /// An empty registry.
    pub fn new(client: Client, watch_timeout: u32, metrics: Arc<Metrics>) -> Caches {
        Caches {
            client,
            watch_timeout,
            metrics,
            kinds: Mutex::new(HashMap::new()),
            created: Mutex::new(HashMap::new()),
            patched: Mutex::new(HashMap::new()),
            on_change: Mutex::new(None),
        }
    }

    /// Tells `f` of every change the read-only caches started from now on see: a kind that
    /// only new rules name as a child's is one of them, and its changes must wake the
    /// resources they belong to as those of the kinds watched from the start do.
    pub fn on_change(&self, f: OnChange) {
        *lock(&self.on_change) = Some(f);
    }

    /// Starts the cache of one kind and returns the stream of objects it sees change, which
    /// must be polled for the cache to fill (the caller hands it to the controller, or calls
    /// [`Caches::drive`]). `label` names the watch in `lifecycle_watch_restarts_total`.
    pub fn start(
        &self,
        ar: ApiResource,
        spec: WatchedKind,
        label: &'static str,
    ) -> impl Stream<Item = Result<DynamicObject, watcher::Error>> + Send + 'static {
        let key = (spec.api_version.clone(), spec.kind.clone());
        let scope = Arc::new(Mutex::new(spec));
        let (restart, restarts) = signal::channel(0u64);
        let mut writer = reflector::store::Writer::<Compact>::new(());
        let store = writer.as_reader();
        let synced = Arc::new(AtomicBool::new(false));
        let (client, timeout, watch_ar, watch_scope) = (
            self.client.clone(),
            self.watch_timeout,
            ar.clone(),
            scope.clone(),
        );
        let metrics = self.metrics.clone();
        // one watch per generation; a restart ends the current one and starts the next with
        // the scope then in force
        let generations = futures::stream::unfold((restarts, true), move |(mut rx, first)| {
            let (client, ar, scope, metrics) = (
                client.clone(),
                watch_ar.clone(),
                watch_scope.clone(),
                metrics.clone(),
            );
            async move {
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                let spec = lock(&scope).clone();
                let api: Api<DynamicObject> = match &spec.namespace {
                    Some(ns) => Api::namespaced_with(client, ns, &ar),
                    None => Api::all_with(client, &ar),
                };
                let mut config = watcher::Config::default().timeout(timeout);
                if let Some(labels) = &spec.labels {
                    config = config.labels(labels);
                }
                let mut stop = rx.clone();
                stop.mark_unchanged();
                let keep = spec.fields.with_runtime_fields();
                let watch = watcher(api, config)
                    .inspect(count_restarts(metrics, label))
                    .default_backoff()
                    .modify(move |o| project(o, &keep))
                    .take_until(async move {
                        let _ = stop.changed().await;
                    });
                Some((watch, (rx, false)))
            }
        })
        .flatten();
        let flag = synced.clone();
        let live = Arc::new(AtomicBool::new(false));
        let up = live.clone();
        let progress = Arc::new(Progress::default());
        let applied = progress.clone();
        // each event is stored, compactly, before it is passed on
        let stream = generations
            .inspect(move |e| {
                if let Ok(event) = e {
                    writer.apply_watcher_event(&compact::convert(event, Compact::new));
                    applied.applied(event);
                }
                match e {
                    Ok(watcher::Event::InitDone) => {
                        flag.store(true, Ordering::SeqCst);
                        up.store(true, Ordering::SeqCst);
                    }
                    Ok(watcher::Event::Init) | Err(_) => up.store(false, Ordering::SeqCst),
                    Ok(_) => {}
                }
            })
            .touched_objects();
        lock(&self.kinds).insert(
            key,
            KindCache {
                store,
                synced,
                live,
                progress,
                scope,
                restart,
                driver: None,
            },
        );
        stream
    }

    /// Starts the cache of one kind that nothing else polls; its changes go to the
    /// [`Caches::on_change`] hook.
    pub fn start_driven(&self, ar: ApiResource, spec: WatchedKind) {
        let key = (spec.api_version.clone(), spec.kind.clone());
        let stream = self.start(ar, spec, "related");
        let hook = lock(&self.on_change).clone();
        let kind = key.clone();
        let task = tokio::spawn(stream.for_each(move |o| {
            if let (Ok(o), Some(hook)) = (&o, &hook) {
                hook(&kind, o);
            }
            async {}
        }));
        if let Some(kc) = lock(&self.kinds).get_mut(&key) {
            kc.driver = Some(task.abort_handle());
        }
    }

    /// Follows a rules change: kinds read for the first time start (`resolved` gives their API
    /// resources), kinds read differently restart, kinds no longer read stop (those nothing
    /// else polls).
    pub fn follow(
        &self,
        wanted: Vec<WatchedKind>,
        resolved: &HashMap<(String, String), ApiResource>,
    ) {
        let mut kinds = lock(&self.kinds);
        let keys: Vec<(String, String)> = wanted
            .iter()
            .map(|w| (w.api_version.clone(), w.kind.clone()))
            .collect();
        kinds.retain(|k, kc| {
            let keep = keys.contains(k) || kc.driver.is_none();
            if !keep && let Some(d) = &kc.driver {
                d.abort();
            }
            keep
        });
        let mut new = Vec::new();
        for w in wanted {
            let key = (w.api_version.clone(), w.kind.clone());
            match kinds.get(&key) {
                Some(kc) => {
                    let mut scope = lock(&kc.scope);
                    if *scope != w {
                        let restart = scope.namespace != w.namespace
                            || scope.labels != w.labels
                            || scope.fields != w.fields;
                        *scope = w;
                        if restart {
                            kc.restart.send_modify(|n| *n += 1);
                        }
                    }
                }
                None => {
                    if let Some(ar) = resolved.get(&key) {
                        new.push((ar.clone(), w));
                    }
                }
            }
        }
        drop(kinds);
        for (ar, w) in new {
            self.start_driven(ar, w);
        }
    }

    /// Whether the cache of a kind has its first full list.
    pub fn synced(&self, api_version: &str, kind: &str) -> bool {
        lock(&self.kinds)
            .get(&(api_version.to_string(), kind.to_string()))
            .is_some_and(|kc| kc.synced.load(Ordering::SeqCst))
    }

    /// The revision up to which a synced cache of a kind has applied every change of its kind
    /// (none: the kind is not watched, or its cache has not synced).
    pub fn applied(&self, api_version: &str, kind: &str) -> Option<u64> {
        lock(&self.kinds)
            .get(&(api_version.to_string(), kind.to_string()))
            .filter(|kc| kc.synced.load(Ordering::SeqCst))
            .map(|kc| kc.progress.seen())
    }

    /// Whether the cache of a kind has applied every change of its kind up to the revision
    /// `version` (a resourceVersion), waiting for it at most `within`; false for a kind not
    /// watched.
    pub async fn caught_up(
        &self,
        api_version: &str,
        kind: &str,
        version: u64,
        within: Duration,
    ) -> bool {
        let progress = lock(&self.kinds)
            .get(&(api_version.to_string(), kind.to_string()))
            .map(|kc| kc.progress.clone());
        match progress {
            Some(p) => p.reached(version, within).await,
            None => false,
        }
    }

    /// What the caches know of one object.
    pub fn get(&self, key: &ObjectKey) -> Cached {
        // Some(found or not); None: the caches cannot say
        let seen: Option<Option<Arc<Compact>>> = {
            let kinds = lock(&self.kinds);
            match kinds.get(&(key.api_version.clone(), key.kind.clone())) {
                Some(kc)
                    if kc.synced.load(Ordering::SeqCst)
                        && lock(&kc.scope).covers(&key.namespace) =>
                {
                    let mut r = ObjectRef::new_with(&key.name, ());
                    // a cluster-scoped object has no namespace
                    if !key.namespace.is_empty() {
                        r = r.within(&key.namespace);
                    }
                    match kc.store.get(&r) {
                        Some(o) => Some(Some(o)),
                        None if kc.live.load(Ordering::SeqCst) => Some(None),
                        None => None,
                    }
                }
                _ => None,
            }
        };
        let mut created = lock(&self.created);
        match seen {
            Some(Some(o)) => {
                created.remove(key);
                drop(created);
                // a patch this controller made and the watch has not delivered yet
                let mut patched = lock(&self.patched);
                match patched.get(key) {
                    Some((at, p)) if at.elapsed() < CREATED_TTL && !caught_up(&o.version(), p) => {
                        Cached::Found(to_value(p))
                    }
                    Some(_) => {
                        patched.remove(key);
                        drop(patched);
                        Cached::Found(o.value())
                    }
                    None => {
                        drop(patched);
                        Cached::Found(o.value())
                    }
                }
            }
            other => match created.get(key) {
                Some((at, o)) if at.elapsed() < CREATED_TTL => Cached::Found(to_value(o)),
                Some(_) => {
                    created.remove(key);
                    answer(other)
                }
                None => answer(other),
            },
        }
    }

    /// Every object of a kind in its cache (`None` when the kind is not watched or its cache
    /// has not synced).
    pub fn list(&self, api_version: &str, kind: &str) -> Option<Vec<Arc<Compact>>> {
        lock(&self.kinds)
            .get(&(api_version.to_string(), kind.to_string()))
            .filter(|kc| kc.synced.load(Ordering::SeqCst))
            .map(|kc| kc.store.state())
    }

    /// Remembers an object this controller created (the create's answer) until its cache
    /// shows it.
    pub fn created(&self, key: &ObjectKey, object: DynamicObject) {
        let mut created = lock(&self.created);
        created.retain(|_, (at, _)| at.elapsed() < CREATED_TTL);
        created.insert(key.clone(), (Instant::now(), Arc::new(object)));
    }

    /// Remembers an object this controller patched (the patch's answer) until its cache shows
    /// that version or a later one, so that a decision right after a patch never decides on the
    /// object as it was before it (and sends the same patch again).
    pub fn patched(&self, key: &ObjectKey, object: DynamicObject) {
        let mut patched = lock(&self.patched);
        patched.retain(|_, (at, _)| at.elapsed() < CREATED_TTL);
        patched.insert(key.clone(), (Instant::now(), Arc::new(object)));
    }

    /// Forgets a created or patched object (deleted since).
    pub fn deleted(&self, key: &ObjectKey) {
        lock(&self.created).remove(key);
        lock(&self.patched).remove(key);
    }
}

/// What a cache that lacks an object says of it.
fn answer(seen: Option<Option<Arc<Compact>>>) -> Cached {
    match seen {
        Some(_) => Cached::Absent,
        None => Cached::Unknown,
    }
}

/// An answer of the API server as the caches' readers see it (without `managedFields`).
fn to_value(o: &DynamicObject) -> Value {
    super::reconcile::to_value(o)
}

/// Whether the cache's copy of an object (as `cached` gives its uid and resourceVersion) is
/// `remembered` or a later version of it: another object of the same name (another uid), or a
/// resourceVersion at least the remembered one's (they are etcd revisions; one that is not a
/// number counts as caught up).
fn caught_up(cached: &compact::Version, remembered: &DynamicObject) -> bool {
    if cached.uid != remembered.metadata.uid {
        return true;
    }
    let number = |v: Option<&str>| v.and_then(|v| v.parse::<u64>().ok());
    match (
        number(cached.resource_version.as_deref()),
        number(remembered.metadata.resource_version.as_deref()),
    ) {
        (Some(c), Some(r)) => c >= r,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(uid: &str, rv: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cm", "namespace": "ns", "uid": uid, "resourceVersion": rv},
        }))
        .expect("object")
    }

    /// What a cache's copy says of its version.
    fn cached(uid: &str, rv: &str) -> compact::Version {
        Compact::new(&version(uid, rv)).version()
    }

    #[test]
    fn a_patch_answer_stands_until_the_cache_has_its_version() {
        let answer = version("u1", "120");
        // the cache still holds the object from before the patch: the answer stands
        assert!(!caught_up(&cached("u1", "119"), &answer));
        // the watch delivered the patch, or a later change: the cache is right
        assert!(caught_up(&cached("u1", "120"), &answer));
        assert!(caught_up(&cached("u1", "121"), &answer));
        // another object of the same name replaced it: the cache is right
        assert!(caught_up(&cached("u2", "5"), &answer));
        // versions that are not numbers cannot be ordered: trust the cache
        assert!(caught_up(&cached("u1", "x"), &answer));
    }
}
