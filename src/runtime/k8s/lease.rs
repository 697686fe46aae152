//! Leader election with a `coordination.k8s.io/v1` Lease, and the fence that stops a leader
//! from acting once its leadership is in doubt.
//!
//! The rules, as in client-go, made strict enough that two replicas never act at once:
//!
//! - **Expiry is judged on the candidate's own monotonic clock**: a candidate takes a Lease held
//!   by another only once it has seen the Lease unchanged (same resourceVersion) for the
//!   Lease's whole duration since it last saw it change. `renewTime` (another machine's wall
//!   clock) is never compared with ours, so clock skew between nodes cannot shorten a lease.
//! - **A leader stops acting at its renew deadline**, measured from the moment it *sent* its
//!   last successful renewal, and the deadline is shorter than the lease. Whoever takes over
//!   saw that renewal land after it was sent, and waits a whole lease after that: the old
//!   leader has stopped for at least `duration - renew_deadline` by then.
//! - **Stopping is enforced below the reconciles**: the [`Fence`] is checked by every
//!   connection of the acting client before it writes a byte (see `client.rs`), and a watchdog
//!   thread (not a task: a starved or paused runtime cannot delay it) exits the process when the
//!   deadline passes. A process paused (SIGSTOP) past its deadline therefore sends nothing after
//!   it resumes, and exits. Connections close with a reset, so a request still queued in the
//!   network is discarded rather than delivered late.
//! - **Every Lease request has a timeout** (half the renew deadline, at most 5 s): a hung
//!   connection cannot keep a leader from noticing that it no longer renews.
//!
//! Exiting (rather than standing by in the same process) is the conventional safe behaviour:
//! the Deployment restarts the process as a standby.

use super::Error;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    /// How long the leader keeps acting without a successful renewal (below `duration`).
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby retries.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The default renew deadline and retry period for a lease duration (client-go's 15 s /
    /// 10 s / 2 s, in proportion).
    pub fn defaults(duration: Duration) -> (Duration, Duration) {
        (duration * 2 / 3, duration / 7)
    }

    /// Checks that the timings can keep their promise.
    pub fn validate(&self) -> Result<(), String> {
        if self.duration < Duration::from_secs(1) {
            return Err(format!(
                "--lease-duration must be at least 1s (got {:?})",
                self.duration
            ));
        }
        if self.renew_deadline >= self.duration {
            return Err(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?}): the leader must stop acting before a standby may take over",
                self.renew_deadline, self.duration
            ));
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(format!(
                "the retry period ({:?}) must be above zero and shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        Ok(())
    }

    /// Timeout of one Lease request.
    pub fn request_timeout(&self) -> Duration {
        (self.renew_deadline / 2).min(Duration::from_secs(5))
    }
}

/// Until when this process may act, on its monotonic clock. Shared by the acting client's
/// connections (which refuse to write past it), the audit sink and the watchdog.
#[derive(Clone, Debug)]
pub struct Fence(Arc<FenceState>);

#[derive(Debug)]
struct FenceState {
    epoch: Instant,
    /// Nanoseconds since `epoch`; `u64::MAX`: no election, always open.
    until: AtomicU64,
    /// Closed for good (shutdown, or leadership lost).
    closed: std::sync::atomic::AtomicBool,
}

impl Fence {
    /// A fence that never closes (no leader election).
    pub fn open() -> Fence {
        Fence(Arc::new(FenceState {
            epoch: Instant::now(),
            until: AtomicU64::new(u64::MAX),
            closed: false.into(),
        }))
    }

    /// A fence closed until the Lease is acquired.
    pub fn closed() -> Fence {
        Fence(Arc::new(FenceState {
            epoch: Instant::now(),
            until: AtomicU64::new(0),
            closed: false.into(),
        }))
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.0.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Whether this process may act now.
    pub fn allows(&self) -> bool {
        !self.is_closed() && self.nanos(Instant::now()) < self.0.until.load(Ordering::SeqCst)
    }

    fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::SeqCst)
    }

    /// Time left before the fence closes (`None`: it never closes).
    pub fn remaining(&self) -> Option<Duration> {
        let until = self.0.until.load(Ordering::SeqCst);
        if until == u64::MAX && !self.is_closed() {
            return None;
        }
        if self.is_closed() {
            return Some(Duration::ZERO);
        }
        Some(Duration::from_nanos(
            until.saturating_sub(self.nanos(Instant::now())),
        ))
    }

    /// Lets this process act until `t` (never shortens; a closed fence stays closed).
    fn extend_to(&self, t: Instant) {
        let n = self.nanos(t);
        self.0.until.fetch_max(n, Ordering::SeqCst);
    }

    /// Stops this process from acting, for good.
    pub fn close(&self) {
        self.0.closed.store(true, Ordering::SeqCst);
    }
}

/// The Lease as this replica last saw it, and when it saw it change (monotonic).
struct Observed {
    version: String,
    holder: Option<String>,
    duration: Duration,
    changed_at: Instant,
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observed: Option<Observed>,
}

/// What one attempt found.
enum Attempt {
    /// This replica holds the Lease; it sent the successful write at this instant.
    Held(Instant),
    /// Another replica holds it.
    Other(Option<String>),
}

impl Elector {
    /// An elector over the Lease named by `cfg`, with a client of its own (never fenced).
    pub fn new(client: Client, cfg: LeaseConfig) -> Elector {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    fn lease_name(&self) -> String {
        format!("{}/{}", self.cfg.namespace, self.cfg.name)
    }

    async fn timed<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, kube::Error> {
        match tokio::time::timeout(self.cfg.request_timeout(), f).await {
            Ok(r) => r,
            Err(_) => Err(kube::Error::Service(
                format!(
                    "{what} Lease timed out after {:?}",
                    self.cfg.request_timeout()
                )
                .into(),
            )),
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().is_some_and(|o| o.version == version) {
            return;
        }
        let spec = lease.spec.clone().unwrap_or_default();
        self.observed = Some(Observed {
            version,
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            duration: Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15),
            ),
            changed_at: Instant::now(),
        });
    }

    /// Whether the Lease as last seen may be taken: free, or unchanged for its whole duration.
    fn free(&self) -> bool {
        match &self.observed {
            None => true,
            Some(o) => match &o.holder {
                None => true,
                Some(h) if *h == self.cfg.identity => true,
                Some(_) => o.changed_at.elapsed() >= o.duration,
            },
        }
    }

    /// Tries once to take or renew the Lease. A leader passes its fence: once it has lapsed,
    /// the leader does not renew (it has stopped acting; it may only start over as a
    /// candidate), so a leader resumed after a pause sends nothing before it exits.
    async fn try_acquire_or_renew(&mut self, leading: Option<&Fence>) -> Result<Attempt, Error> {
        let lapsed = || Error::Transient("the renew deadline has passed".into());
        if leading.is_some_and(|f| !f.allows()) {
            return Err(lapsed());
        }
        let duration = i32::try_from(self.cfg.duration.as_secs().max(1)).unwrap_or(15);
        let now = MicroTime(jiff::Timestamp::now());
        let current = self
            .timed("get", self.api.get_opt(&self.cfg.name))
            .await
            .map_err(|e| Error::Transient(format!("get Lease: {e}")))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            let sent = Instant::now();
            return match self
                .timed("create", self.api.create(&PostParams::default(), &lease))
                .await
            {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Held(sent))
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Other(None)),
                Err(e) => Err(Error::Transient(format!("create Lease: {e}"))),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.cfg.identity.as_str());
        if !self.free() {
            return Ok(Attempt::Other(spec.holder_identity));
        }
        let mut next = spec.clone();
        next.holder_identity = Some(self.cfg.identity.clone());
        next.lease_duration_seconds = Some(duration);
        next.renew_time = Some(now.clone());
        if !mine {
            next.acquire_time = Some(now);
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(next);
        if leading.is_some_and(|f| !f.allows()) {
            return Err(lapsed());
        }
        let sent = Instant::now();
        // replace carries the resourceVersion: two candidates cannot both win
        match self
            .timed(
                "update",
                self.api
                    .replace(&self.cfg.name, &PostParams::default(), &lease),
            )
            .await
        {
            Ok(updated) => {
                self.observe(&updated);
                Ok(Attempt::Held(sent))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Other(spec.holder_identity)),
            Err(e) => Err(Error::Transient(format!("update Lease: {e}"))),
        }
    }

    /// Waits until this replica holds the Lease; opens the fence until the renew deadline.
    pub async fn acquire(&mut self, fence: &Fence) {
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew(None).await {
                Ok(Attempt::Held(sent)) => {
                    fence.extend_to(sent + self.cfg.renew_deadline);
                    tracing::info!(lease = %self.lease_name(), identity = %self.cfg.identity, "became the leader");
                    return;
                }
                Ok(Attempt::Other(holder)) => {
                    if !logged {
                        tracing::info!(lease = %self.lease_name(), holder = ?holder, "another replica leads; standing by");
                        logged = true;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Renews the Lease in the background, extending the fence with each renewal; exits the
    /// process when another replica holds the Lease or the renew deadline passes.
    pub fn keep(mut self, fence: Fence, metrics: Arc<crate::runtime::metrics::Metrics>) {
        watchdog(fence.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(self.cfg.retry_period).await;
                if !fence.allows() {
                    // closed at shutdown, or expired (the watchdog exits the process)
                    return;
                }
                match self.try_acquire_or_renew(Some(&fence)).await {
                    Ok(Attempt::Held(sent)) => fence.extend_to(sent + self.cfg.renew_deadline),
                    Ok(Attempt::Other(holder)) => {
                        fence.close();
                        tracing::error!(holder = ?holder, "leadership lost to another replica; exiting");
                        std::process::exit(3);
                    }
                    Err(e) => {
                        metrics.lease_renew_failures.inc();
                        tracing::warn!(error = %e, left = ?fence.remaining(), "cannot renew the Lease");
                    }
                }
            }
        });
    }

    /// Gives the Lease up at shutdown so a standby takes over at once instead of after it
    /// expires. The caller has closed the fence first: nothing is written after this.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.timed("get", self.api.get_opt(&self.cfg.name)).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        match self
            .timed(
                "release",
                self.api
                    .replace(&self.cfg.name, &PostParams::default(), &lease),
            )
            .await
        {
            Ok(_) => tracing::info!("Lease released"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the Lease; a standby takes over when it expires")
            }
        }
    }
}

/// Exits the process when the fence's deadline passes. A thread of its own: it runs even when
/// the async runtime is starved, and it is the first to notice after a pause (SIGSTOP).
fn watchdog(fence: Fence) {
    let spawned = std::thread::Builder::new()
        .name("lease-watchdog".into())
        .spawn(move || {
            loop {
                match fence.remaining() {
                    None => return,
                    Some(left) if left.is_zero() => {
                        if fence.is_closed() {
                            // closed on purpose (shutdown or lost): the closer decides
                            return;
                        }
                        tracing::error!(
                            "the renew deadline passed without a successful renewal; stopping (exit 3) before another replica may take the Lease"
                        );
                        std::process::exit(3);
                    }
                    Some(left) => std::thread::sleep(left.min(Duration::from_millis(50))),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the lease watchdog; exiting");
        std::process::exit(3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_opens_until_a_deadline_and_closes_for_good() {
        let open = Fence::open();
        assert!(open.allows());
        assert_eq!(open.remaining(), None);
        let f = Fence::closed();
        assert!(!f.allows());
        f.extend_to(Instant::now() + Duration::from_millis(200));
        assert!(f.allows());
        assert!(f.remaining().unwrap() > Duration::from_millis(100));
        // an older deadline never shortens it
        f.extend_to(Instant::now());
        assert!(f.allows());
        std::thread::sleep(Duration::from_millis(250));
        assert!(!f.allows());
        f.extend_to(Instant::now() + Duration::from_secs(5));
        f.close();
        assert!(!f.allows());
        assert_eq!(f.remaining(), Some(Duration::ZERO));
    }

    #[test]
    fn timings_must_leave_a_margin() {
        let cfg = |d: u64, r: u64, p: u64| LeaseConfig {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "a".into(),
            duration: Duration::from_millis(d),
            renew_deadline: Duration::from_millis(r),
            retry_period: Duration::from_millis(p),
        };
        let (r, p) = LeaseConfig::defaults(Duration::from_secs(15));
        assert_eq!(
            (r, p),
            (Duration::from_secs(10), Duration::from_nanos(2_142_857_142))
        );
        assert!(cfg(15_000, 10_000, 2_000).validate().is_ok());
        assert!(cfg(15_000, 15_000, 2_000).validate().is_err());
        assert!(cfg(15_000, 10_000, 10_000).validate().is_err());
        assert!(cfg(15_000, 10_000, 0).validate().is_err());
        assert!(cfg(500, 300, 100).validate().is_err());
        assert_eq!(
            cfg(15_000, 10_000, 2_000).request_timeout(),
            Duration::from_secs(5)
        );
        assert_eq!(
            cfg(3_000, 2_000, 400).request_timeout(),
            Duration::from_secs(1)
        );
    }
}
