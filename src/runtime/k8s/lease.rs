//! Leader election with a `coordination.k8s.io/v1` Lease.
//!
//! A replica acquires the Lease when it is free or expired, renews it periodically, and exits
//! the process when it cannot renew in time: a standby then takes over. Exiting (rather than
//! trying to stop reconciles mid-flight) is the conventional, simplest safe behaviour; the
//! Deployment restarts the process as a standby.

use super::Error;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use std::time::Duration;

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity.
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub duration: Duration,
    /// How often the leader renews.
    pub renew: Duration,
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn expired(spec: &LeaseSpec) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    renewed.0.as_second() + secs < now().as_second()
}

/// Tries once to take or renew the Lease; `Ok(true)` when this replica holds it.
async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, Error> {
    let t = MicroTime(now());
    let duration = i32::try_from(cfg.duration.as_secs()).unwrap_or(15);
    match api.get_opt(&cfg.name).await {
        Ok(None) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(t.clone()),
                    renew_time: Some(t),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(Error::Transient(format!("create Lease: {e}"))),
            }
        }
        Ok(Some(mut lease)) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let mine = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
            if !mine && !expired(&spec) {
                return Ok(false);
            }
            let mut next = spec.clone();
            next.holder_identity = Some(cfg.identity.clone());
            next.lease_duration_seconds = Some(duration);
            next.renew_time = Some(t.clone());
            if !mine {
                next.acquire_time = Some(t);
                next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            lease.spec = Some(next);
            // replace carries the resourceVersion: two candidates cannot both win
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(Error::Transient(format!("update Lease: {e}"))),
            }
        }
        Err(e) => Err(Error::Transient(format!("get Lease: {e}"))),
    }
}

/// Waits until this replica holds the Lease.
pub async fn acquire(client: &Client, cfg: &LeaseConfig) -> Result<(), Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut logged = false;
    loop {
        match try_acquire(&api, cfg).await {
            Ok(true) => {
                tracing::info!(lease = %format!("{}/{}", cfg.namespace, cfg.name), identity = %cfg.identity, "became the leader");
                return Ok(());
            }
            Ok(false) => {
                if !logged {
                    tracing::info!(lease = %format!("{}/{}", cfg.namespace, cfg.name), "another replica leads; standing by");
                    logged = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "leader election"),
        }
        tokio::time::sleep(cfg.renew).await;
    }
}

/// Renews the Lease in the background; exits the process when leadership is lost.
pub fn keep(client: Client, cfg: LeaseConfig) {
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
        let mut last_ok = std::time::Instant::now();
        loop {
            tokio::time::sleep(cfg.renew).await;
            match try_acquire(&api, &cfg).await {
                Ok(true) => last_ok = std::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("leadership lost to another replica; exiting");
                    std::process::exit(3);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the Lease");
                    if last_ok.elapsed() >= cfg.duration {
                        tracing::error!("the Lease expired without renewal; exiting");
                        std::process::exit(3);
                    }
                }
            }
        }
    });
}

/// Gives the Lease up at shutdown so a standby takes over at once instead of after it expires.
pub async fn release(client: &Client, cfg: &LeaseConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    spec.acquire_time = None;
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!("Lease released"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot release the Lease; a standby takes over when it expires")
        }
    }
}
