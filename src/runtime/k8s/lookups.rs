//! Lookups from the watch caches: the objects of a lookup come from the cache of its kind (the
//! registry starts one, every namespace, for each kind the rules look up: see
//! [`crate::rules::Rules::watched_kinds`]); a lookup of the governed kind reads the controller's
//! own cache of it. Finding the objects of a lookup is a scan of one cache: no API request.
//!
//! A change to a looked-up object does not requeue the resources that read it: lookups are read
//! whenever a resource is reconciled (its own changes, its execution object's, its requeue
//! times, a rules reload), which is what the rules can rely on; rules that must react to
//! another object's change poll (`poll` on the phase).

use super::compact::{Compact, CompactResource};
use super::{Caches, Error};
use crate::engine::LookupRequest;
use kube::runtime::reflector::Store;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// How long a reconcile waits for a lookup cache's first full list.
const SYNC_WAIT: Duration = Duration::from_secs(30);

/// Where lookups are served from.
pub struct LookupCaches {
    caches: Arc<Caches>,
    /// The governed kind (`apiVersion`, `kind`) and the controller's cache of it.
    governed: ((String, String), Store<CompactResource>),
}

/// The objects of one kind, from either kind of cache.
enum Objects {
    Governed(Vec<Arc<CompactResource>>),
    Other(Vec<Arc<Compact>>),
}

impl Objects {
    /// Each object's namespace, name and JSON text.
    fn each(&self) -> Vec<(Option<&str>, &str, &str)> {
        match self {
            Objects::Governed(all) => all
                .iter()
                .map(|o| (o.namespace(), o.name(), o.json()))
                .collect(),
            Objects::Other(all) => all
                .iter()
                .map(|o| (o.namespace(), o.name(), o.json()))
                .collect(),
        }
    }
}

impl LookupCaches {
    /// Lookups served from the registry, and from the governed kind's own cache.
    pub fn new(
        caches: Arc<Caches>,
        governed: ((String, String), Store<CompactResource>),
    ) -> LookupCaches {
        LookupCaches { caches, governed }
    }

    /// Every object of the request's kind, once its cache has its first full list.
    async fn objects(&self, request: &LookupRequest) -> Result<Objects, Error> {
        let governed = (request.api_version.clone(), request.kind.clone()) == self.governed.0;
        let deadline = tokio::time::Instant::now() + SYNC_WAIT;
        loop {
            if governed {
                // a store wakes only its latest waiter, and the controller waits on it too: poll
                if tokio::time::timeout(
                    Duration::from_millis(100),
                    self.governed.1.wait_until_ready(),
                )
                .await
                .is_ok()
                {
                    return Ok(Objects::Governed(self.governed.1.state()));
                }
            } else if let Some(all) = self.caches.list(&request.api_version, &request.kind) {
                return Ok(Objects::Other(all));
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Transient(format!(
                    "the cache of {} ({}) for lookup `{}` has no full list after {}s: can the controller list and watch them in every namespace? (`lifecycle check` says what the lookups need)",
                    request.kind,
                    request.api_version,
                    request.name,
                    SYNC_WAIT.as_secs()
                )));
            }
        }
    }

    /// The objects a lookup asks for.
    pub async fn find(&self, request: &LookupRequest) -> Result<Vec<Value>, Error> {
        let mut found = Vec::new();
        let objects = self.objects(request).await?;
        for (namespace, name, json) in objects.each() {
            if request
                .namespace
                .as_ref()
                .is_some_and(|ns| namespace.unwrap_or_default() != ns)
                || request.object_name.as_ref().is_some_and(|n| name != n)
            {
                continue;
            }
            let mut v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
            let labels = v.pointer("/metadata/labels");
            if !request.labels.iter().all(|(k, want)| {
                labels.and_then(|l| l.get(k)).and_then(Value::as_str) == Some(want.as_str())
            }) {
                continue;
            }
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
