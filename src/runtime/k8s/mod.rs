//! The Kubernetes shell: the only module that talks to the API server.
//!
//! It watches the governed resources and the execution objects (as dynamic objects of the
//! kinds the rules name), maps execution objects back to their resource through the owner
//! labels, observes, calls [`engine::decide`], and carries out the decision's effects in order.
//! A reconcile keeps one rule set from start to end. After an effect changes the world it
//! decides again at once with what the API server returned, so a resource moves through
//! several steps in one reconcile instead of waiting for its own watch events.

mod caches;
mod client;
pub mod compact;
mod crd;
pub mod events;
mod lease;
mod lookups;
mod progress;
pub mod projection;
mod reconcile;
mod related;
pub mod revision_store;
mod status_guard;

pub use caches::{Cached, Caches};
pub use crd::governed_schema;

pub use client::{Clients, Timeouts, connect, is_timeout};
pub use lease::{Fence, LeaseConfig};

use crate::rules::Rules;
use crate::runtime::audit::AuditSink;
use crate::runtime::metrics::Metrics;
use crate::runtime::reload::{self, RulesHandle};
use compact::{CompactResource, SharedKind};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, discovery};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Errors of the shell.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kind the rules need is not served by the cluster.
    #[error("{0}")]
    KindNotServed(String),
    /// The API server failed in a way worth retrying.
    #[error("transient API error: {0}")]
    Transient(String),
    /// The API server refused something permanently.
    #[error("API error: {0}")]
    Api(String),
    /// Connecting to the cluster failed.
    #[error("cannot connect to the cluster: {0}")]
    Connect(String),
    /// The rules did not settle for a resource (an effect kept repeating).
    #[error("{0}")]
    Unsettled(String),
    /// The settings cannot work.
    #[error("{0}")]
    Settings(String),
    /// The rules write status the governed kind's CRD would not keep.
    #[error("{0}")]
    RulesDoNotFitCrd(String),
}

impl Error {
    /// Stable category for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::KindNotServed(_) => "KindNotServed",
            Error::Transient(_) => "Transient",
            Error::Api(_) => "ApiError",
            Error::Connect(_) => "Connect",
            Error::Unsettled(_) => crate::engine::drive::Unsettled::CATEGORY,
            Error::Settings(_) => "Settings",
            Error::RulesDoNotFitCrd(_) => "RulesInvalid",
        }
    }
}

/// Settings of the controller shell.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Only watch resources in this namespace (all when `None`).
    pub namespace: Option<String>,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// This replica's shard and the number of shards (resources are split by a hash of the
    /// execution object's name, which is the lock, so one lock is always on one shard).
    pub shard: Option<(u32, u32)>,
    /// Identity reported on Events (pod name).
    pub instance: Option<String>,
    /// Leader election.
    pub lease: Option<LeaseConfig>,
    /// Server-side length of one watch (its long poll).
    pub watch_timeout: Duration,
    /// How long a read of related objects waits for their cache to catch up with the execution
    /// object that lists them, before it reads them from the API server.
    pub cache_wait: Duration,
    /// How long shutdown waits for audit records already handed over.
    pub audit_drain: Duration,
    /// Where the rules revisions are stored, so that pinned resources keep theirs across
    /// restarts (in memory only when `None`).
    pub revisions: Option<revision_store::Config>,
}

/// Shared state of every reconcile.
pub struct Ctx {
    pub(crate) client: Client,
    pub(crate) rules: RulesHandle,
    pub(crate) resource_ar: ApiResource,
    pub(crate) kinds: std::sync::Mutex<HashMap<(String, String), ApiResource>>,
    pub(crate) caches: Arc<Caches>,
    /// The resources as this controller last wrote them, by uid, until the cache has caught up.
    pub(crate) written: std::sync::Mutex<HashMap<String, serde_json::Value>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) audit: AuditSink,
    pub(crate) recorder: events::Recorder,
    pub(crate) shard: Option<(u32, u32)>,
    pub(crate) failures: std::sync::Mutex<HashMap<String, u32>>,
    pub(crate) status_guard: status_guard::StatusGuard,
    pub(crate) lookups: lookups::LookupCaches,
    /// See [`Settings::cache_wait`].
    pub(crate) cache_wait: Duration,
    /// Related objects read from the API server, until their caches show them.
    pub(crate) fresh_reads: related::FreshReads,
}

/// Readiness of the shell, for `/readyz`.
#[derive(Default)]
pub struct Readiness {
    /// Caches have their first full list.
    pub synced: AtomicBool,
    /// This replica leads (or no election).
    pub leading: AtomicBool,
}

/// Finds the API resource of a kind, with a message that says what to install when missing.
pub async fn resolve(
    client: &Client,
    api_version: &str,
    kind: &str,
    role: &str,
) -> Result<ApiResource, Error> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.to_string()),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, kind);
    match discovery::pinned_kind(client, &gvk).await {
        Ok((ar, _caps)) => Ok(ar),
        Err(e) => Err(Error::KindNotServed(format!(
            "the rules' {role} is {kind} ({api_version}), which this cluster does not serve ({e}); install its CustomResourceDefinition (for the default rules: kubectl apply -f deploy/crds/) and start again"
        ))),
    }
}

/// Runs the controller until shutdown. Returns when the shutdown future completes.
pub async fn run(
    clients: Clients,
    rules: RulesHandle,
    settings: Settings,
    metrics: Arc<Metrics>,
    audit: AuditSink,
    readiness: Arc<Readiness>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let current = rules.current();
    // discovery happens before this replica may act: the control client is never fenced
    let control = clients.control.clone();
    let resource_ar = resolve(
        &control,
        &current.resource.api_version,
        &current.resource.kind,
        "resource",
    )
    .await?;
    let watched = current.watched_kinds();
    let mut kinds = HashMap::new();
    for w in &watched {
        let ar = resolve(&control, &w.api_version, &w.kind, &w.role).await?;
        kinds.insert((w.api_version.clone(), w.kind.clone()), ar);
    }

    // a standby told to stop stops at once (it holds nothing)
    let shutdown = futures::FutureExt::shared(shutdown);
    let mut release = None;
    if let Some(lease) = &settings.lease {
        let mut elector = lease::Elector::new(control.clone(), lease.clone());
        tokio::select! {
            () = elector.acquire(&clients.fence) => {}
            () = shutdown.clone() => {
                audit.close(settings.audit_drain).await;
                return Ok(());
            }
        }
        elector.keep(clients.fence.clone(), metrics.clone());
        release = Some(lease::Elector::new(control.clone(), lease.clone()));
    }
    readiness.leading.store(true, Ordering::SeqCst);
    let client = clients.acting.clone();
    // the stored revisions are loaded before any resource is decided
    if let Some(config) = settings.revisions.clone() {
        let store = Arc::new(revision_store::RevisionStore::new(
            client.clone(),
            config,
            &current.resource.component,
            settings.namespace.as_deref(),
            settings.shard,
        ));
        let revisions = rules.revisions();
        if let Some(stored) = store.restore(&revisions, &current).await {
            tokio::spawn(store.follow(revisions, stored));
        }
    }
    let watch_timeout = u32::try_from(settings.watch_timeout.as_secs().max(1)).unwrap_or(290);

    let resources: Api<DynamicObject> = match &settings.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource_ar),
        None => Api::all_with(client.clone(), &resource_ar),
    };
    // the caches of every kind the rules read; changes to the execution objects and the other
    // children wake their resource, the others only serve reads
    let caches = Arc::new(Caches::new(client.clone(), watch_timeout, metrics.clone()));
    // a kind read only by caches that rules loaded later name as a child's: its changes wake
    // the resource they belong to by the latest rules' owner labels
    let governed: SharedKind = Arc::new(resource_ar.clone());
    let (wake_tx, wake_rx) = futures::channel::mpsc::unbounded::<ObjectRef<CompactResource>>();
    let (wake_rules, wake_ar) = (rules.clone(), governed.clone());
    caches.on_change(Arc::new(move |kind, obj| {
        let current = wake_rules.current();
        let owners: Vec<_> = std::iter::once(&current.execution)
            .chain(current.children.iter().map(|c| &c.object))
            .filter(|ex| ex.api_version == kind.0 && ex.kind == kind.1)
            .map(|ex| ex.owner_labels.clone())
            .collect();
        if let Some(owner) = map_to_owner(owners, wake_ar.clone())(obj.clone()) {
            let _ = wake_tx.unbounded_send(owner);
        }
    }));
    // the owner labels of each kind of child (the execution object's first): a change to one
    // of ours wakes its resource
    let mut owners: HashMap<(String, String), Vec<crate::rules::model::OwnerLabels>> =
        HashMap::new();
    for ex in std::iter::once(&current.execution).chain(current.children.iter().map(|c| &c.object))
    {
        owners
            .entry((ex.api_version.clone(), ex.kind.clone()))
            .or_default()
            .push(ex.owner_labels.clone());
    }
    let mut exec_stream = None;
    let mut child_streams = Vec::new();
    for w in watched {
        let key = (w.api_version.clone(), w.kind.clone());
        let ar = kinds[&key].clone();
        if exec_stream.is_none() {
            exec_stream = Some(caches.start(ar, w, "execution"));
        } else if let Some(labels) = owners.get(&key) {
            let mapper = map_to_owner(labels.clone(), governed.clone());
            child_streams.push((caches.start(ar.clone(), w, "child"), mapper, ar));
        } else {
            caches.start_driven(ar, w);
        }
    }
    let exec_stream =
        exec_stream.ok_or_else(|| Error::Settings("the rules name no execution object".into()))?;
    let execution_ar = kinds[&(
        current.execution.api_version.clone(),
        current.execution.kind.clone(),
    )]
        .clone();
    let map_back = map_to_owner(
        owners
            .get(&(
                current.execution.api_version.clone(),
                current.execution.kind.clone(),
            ))
            .cloned()
            .unwrap_or_default(),
        governed.clone(),
    );

    let recorder = events::Recorder::new(
        client.clone(),
        current.resource.component.clone(),
        settings.instance.clone(),
    );
    // the resources, without managedFields, kept compactly (`compact.rs`)
    let mut resource_writer = reflector::store::Writer::<CompactResource>::new(governed.clone());
    let resource_store = resource_writer.as_reader();
    let lookups = lookups::LookupCaches::new(
        caches.clone(),
        (
            (
                current.resource.api_version.clone(),
                current.resource.kind.clone(),
            ),
            resource_store.clone(),
        ),
    );
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        rules: rules.clone(),
        resource_ar: resource_ar.clone(),
        kinds: std::sync::Mutex::new(kinds),
        caches: caches.clone(),
        written: std::sync::Mutex::new(HashMap::new()),
        metrics: metrics.clone(),
        audit: audit.clone(),
        recorder,
        shard: settings.shard,
        failures: std::sync::Mutex::new(HashMap::new()),
        status_guard: status_guard::StatusGuard::default(),
        lookups,
        cache_wait: settings.cache_wait,
        fresh_reads: Default::default(),
    });

    // every swap of the rules reconciles every resource once
    let mut swaps = rules.subscribe();
    let (reconcile_all_tx, reconcile_all_rx) = futures::channel::mpsc::unbounded::<()>();
    let audit_tx = reconcile_all_tx.clone();
    let follow = ctx.clone();
    tokio::spawn(async move {
        while swaps.changed().await.is_ok() {
            let rules = swaps.borrow_and_update().clone();
            follow_caches(&follow, &rules).await;
            if reconcile_all_tx.unbounded_send(()).is_err() {
                return;
            }
        }
    });
    // transitions held back while an audit target was failing go on at once when it recovers
    let mut recovered = audit.recovered();
    tokio::spawn(async move {
        while recovered.changed().await.is_ok() {
            if audit_tx.unbounded_send(()).is_err() {
                return;
            }
        }
    });

    // each event is stored before it is passed on
    let resource_stream = watcher(resources, watcher::Config::default().timeout(watch_timeout))
        .inspect(count_restarts(metrics.clone(), "resource"))
        .modify(|o| o.metadata.managed_fields = None)
        .default_backoff()
        .map_ok(|event| compact::convert(&event, CompactResource::new))
        .inspect(move |e| {
            if let Ok(event) = e {
                resource_writer.apply_watcher_event(event);
            }
        })
        .applied_objects();
    // a reload must not strand a resource of this cache in a phase the new rules lack, and a
    // revision a resource of it is pinned to stays loaded: known once the cache is synced
    let census_store = resource_store.clone();
    let census: reload::Census = Arc::new(move || {
        census_store
            .state()
            .iter()
            .map(|o| {
                let status = o.value().get_mut("status").map(serde_json::Value::take);
                (
                    format!("{}/{}", o.namespace().unwrap_or_default(), o.name()),
                    serde_json::json!({ "status": status }),
                )
            })
            .collect()
    });
    let mut controller =
        Controller::for_stream_with(resource_stream, resource_store, governed.clone())
            .with_config(ControllerConfig::default().concurrency(settings.concurrency))
            .watches_stream_with(exec_stream, map_back, execution_ar.clone());
    for (stream, mapper, ar) in child_streams {
        controller = controller.watches_stream_with(stream, mapper, ar);
    }
    let controller = controller
        .reconcile_all_on(reconcile_all_rx)
        .reconcile_on(wake_rx)
        .graceful_shutdown_on(shutdown);
    let store = controller.store();
    let ready = readiness.clone();
    let synced_rules = rules.clone();
    let exec_caches = caches.clone();
    let exec_kind = (
        current.execution.api_version.clone(),
        current.execution.kind.clone(),
    );
    tokio::spawn(async move {
        // a store wakes only its latest waiter, and the controller waits on it too: poll
        while tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready())
            .await
            .is_err()
        {}
        while !exec_caches.synced(&exec_kind.0, &exec_kind.1) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        synced_rules.set_census(census);
        synced_rules.prune();
        ready.synced.store(true, Ordering::SeqCst);
        tracing::info!("caches synced");
    });
    controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    // the reconciles are done; what they handed to audit is delivered, then nothing more is
    // written by this process before the Lease is given up
    audit.close(settings.audit_drain).await;
    clients.fence.close();
    if let Some(mut elector) = release {
        elector.release().await;
    }
    Ok(())
}

/// Maps an object to the resource whose owner labels it carries (any of `owners`: the kinds
/// of the rules' children and their labels).
fn map_to_owner(
    owners: Vec<crate::rules::model::OwnerLabels>,
    resource: SharedKind,
) -> impl Fn(DynamicObject) -> Option<ObjectRef<CompactResource>> + Send + Sync + Clone + 'static {
    move |obj: DynamicObject| {
        let labels = obj.metadata.labels.clone().unwrap_or_default();
        owners.iter().find_map(|owner| {
            match (labels.get(&owner.name), labels.get(&owner.namespace)) {
                // a cluster-scoped resource's namespace label is empty
                (Some(name), Some(ns)) if ns.is_empty() => {
                    Some(ObjectRef::new_with(name, resource.clone()))
                }
                (Some(name), Some(ns)) => {
                    Some(ObjectRef::new_with(name, resource.clone()).within(ns))
                }
                _ => None,
            }
        })
    }
}

/// Counts each failure of a watch (after which the watcher restarts it, from its last
/// resourceVersion or with a new list): `stalled` when the connection went silent.
pub(crate) fn count_restarts<K>(
    metrics: Arc<Metrics>,
    watch: &'static str,
) -> impl Fn(&Result<watcher::Event<K>, watcher::Error>) {
    move |event| {
        if let Err(e) = event {
            let reason = if is_timeout(e) { "stalled" } else { "error" };
            metrics
                .watch_restarts
                .get_or_create(&vec![
                    ("watch".to_string(), watch.to_string()),
                    ("reason".to_string(), reason.to_string()),
                ])
                .inc();
            tracing::warn!(watch, reason, error = %e, "watch failed; restarting it");
        }
    }
}

/// Points the caches at what new rules read: kinds not seen before are resolved and started.
async fn follow_caches(ctx: &Ctx, rules: &Rules) {
    let wanted = rules.watched_kinds();
    let mut resolved = HashMap::new();
    for w in &wanted {
        let key = (w.api_version.clone(), w.kind.clone());
        let known = ctx
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let ar = match known {
            Some(ar) => ar,
            None => match resolve(&ctx.client, &w.api_version, &w.kind, &w.role).await {
                Ok(ar) => {
                    ctx.kinds
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.clone(), ar.clone());
                    ar
                }
                Err(e) => {
                    // reads of it go to the API server, which reports the same
                    tracing::warn!(error = %e, "cannot watch a kind the new rules read");
                    continue;
                }
            },
        };
        resolved.insert(key, ar);
    }
    ctx.caches.follow(wanted, &resolved);
}

/// The API of `ar` in `namespace`; across the cluster when the namespace is empty (a
/// cluster-scoped object).
pub(crate) fn api_in(client: &Client, namespace: &str, ar: &ApiResource) -> Api<DynamicObject> {
    if namespace.is_empty() {
        Api::all_with(client.clone(), ar)
    } else {
        Api::namespaced_with(client.clone(), namespace, ar)
    }
}

/// Shard of a lock key (FNV-1a, stable across processes and versions).
pub fn shard_of(key: &str, count: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(count.max(1))) as u32
}

/// Default wait after a failed reconcile, doubling per consecutive failure.
pub(crate) fn backoff(failures: u32) -> Duration {
    let secs = 2u64.saturating_pow(failures.min(8)).min(300);
    Duration::from_secs(secs.max(1))
}

/// Records each rejected rules change as a Warning Event on this controller's Pod (when
/// `POD_NAME` and `POD_NAMESPACE` say which), besides the log and `/readyz`.
pub fn report_reload_errors(
    client: Client,
    mut reports: tokio::sync::mpsc::Receiver<String>,
    component: String,
    identity: String,
) {
    let pod = std::env::var("POD_NAME")
        .ok()
        .zip(std::env::var("POD_NAMESPACE").ok());
    tokio::spawn(async move {
        let recorder = events::Recorder::new(client, component, Some(identity));
        while let Some(report) = reports.recv().await {
            let Some((name, namespace)) = &pod else {
                continue;
            };
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            };
            let mut note = report.clone();
            if note.len() > 1000 {
                let mut end = 1000;
                while !note.is_char_boundary(end) {
                    end -= 1;
                }
                note.truncate(end);
            }
            let event = events::Event {
                type_: events::EventType::Warning,
                reason: "RulesRejected",
                note: &note,
                action: "Reload",
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "cannot record the RulesRejected Event");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("wfe-abc", 1), 0);
        let a = shard_of("wfe-0123456789abcdef", 4);
        assert_eq!(a, shard_of("wfe-0123456789abcdef", 4));
        let mut seen = [0u32; 4];
        for i in 0..400 {
            seen[shard_of(&format!("wfe-{i:016x}"), 4) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(100), Duration::from_secs(256));
    }
}
