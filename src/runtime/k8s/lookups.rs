//! Watch caches for lookups: one reflector per kind the rules look up (every namespace), started
//! when the controller starts (and for a kind a reloaded rule set names first, when it is first
//! looked up). A lookup of the governed kind reads the controller's own cache of it. Finding
//! the objects of a lookup is a scan of one cache: no API request.
//!
//! A change to a looked-up object does not requeue the resources that read it: lookups are read
//! whenever a resource is reconciled (its own changes, its execution object's, its requeue
//! times, a rules reload), which is what the rules can rely on; rules that must react to
//! another object's change poll (`poll` on the phase).

use super::{Error, count_restarts, resolve};
use crate::engine::LookupRequest;
use crate::runtime::metrics::Metrics;
use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a reconcile waits for a new lookup cache's first full list.
const SYNC_WAIT: Duration = Duration::from_secs(30);

/// The lookup caches of one controller.
pub struct LookupCaches {
    client: Client,
    metrics: Arc<Metrics>,
    watch_timeout: u32,
    /// The governed kind (`apiVersion`, `kind`) and the controller's cache of it.
    governed: ((String, String), Store<DynamicObject>),
    caches: tokio::sync::Mutex<HashMap<(String, String), Store<DynamicObject>>>,
}

impl LookupCaches {
    /// Caches served from the controller's cache of the governed kind, and started on demand
    /// for other kinds.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        watch_timeout: u32,
        governed: ((String, String), Store<DynamicObject>),
    ) -> LookupCaches {
        LookupCaches {
            client,
            metrics,
            watch_timeout,
            governed,
            caches: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Starts the cache of a kind (if it has none yet) without waiting for it to fill.
    pub async fn start(&self, api_version: &str, kind: &str) -> Result<(), Error> {
        self.store(api_version, kind).await.map(|_| ())
    }

    /// The cache of a kind, started if needed.
    async fn store(&self, api_version: &str, kind: &str) -> Result<Store<DynamicObject>, Error> {
        let key = (api_version.to_string(), kind.to_string());
        if key == self.governed.0 {
            return Ok(self.governed.1.clone());
        }
        let mut caches = self.caches.lock().await;
        if let Some(store) = caches.get(&key) {
            return Ok(store.clone());
        }
        let ar = resolve(&self.client, api_version, kind, "lookup kind").await?;
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let writer = reflector::store::Writer::new(ar);
        let store = writer.as_reader();
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().timeout(self.watch_timeout))
                .inspect(count_restarts(self.metrics.clone(), "lookup"))
                .modify(|o| o.metadata.managed_fields = None)
                .default_backoff(),
        );
        tokio::spawn(stream.for_each(|_| futures::future::ready(())));
        tracing::info!(api_version, kind, "lookup cache started");
        caches.insert(key, store.clone());
        Ok(store)
    }

    /// The objects a lookup asks for, from the cache of its kind (waiting for the cache's first
    /// full list when it is new).
    pub async fn find(&self, request: &LookupRequest) -> Result<Vec<Value>, Error> {
        let store = self.store(&request.api_version, &request.kind).await?;
        wait_ready(&store, request).await?;
        let mut found = Vec::new();
        for obj in store.state() {
            let meta = &obj.metadata;
            if request
                .namespace
                .as_ref()
                .is_some_and(|ns| meta.namespace.as_deref().unwrap_or_default() != ns)
            {
                continue;
            }
            if request
                .object_name
                .as_ref()
                .is_some_and(|n| meta.name.as_deref() != Some(n.as_str()))
            {
                continue;
            }
            let labels = meta.labels.as_ref();
            if !request
                .labels
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            {
                continue;
            }
            let mut v = serde_json::to_value(&*obj).unwrap_or(Value::Null);
            if let Some(m) = v.as_object_mut() {
                // list items of built-in kinds come without their type
                m.entry("apiVersion")
                    .or_insert_with(|| Value::String(request.api_version.clone()));
                m.entry("kind")
                    .or_insert_with(|| Value::String(request.kind.clone()));
            }
            found.push(v);
        }
        Ok(found)
    }
}

/// Waits for a cache's first full list (a store wakes only its latest waiter: poll).
async fn wait_ready(store: &Store<DynamicObject>, request: &LookupRequest) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + SYNC_WAIT;
    while tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready())
        .await
        .is_err()
    {
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Transient(format!(
                "the cache of {} ({}) for lookup `{}` has not filled after {}s: can the controller list and watch them in every namespace? (see `lifecycle check`'s RBAC)",
                request.kind,
                request.api_version,
                request.name,
                SYNC_WAIT.as_secs()
            )));
        }
    }
    Ok(())
}
