//! `/healthz`, `/readyz` and `/metrics` over plain HTTP; [`crate::runtime::secure_metrics`]
//! serves `/metrics` over HTTPS to authorised callers instead.
//!
//! The address is bound first, on its own ([`bind`]), so that `lifecycle run` can refuse to start
//! when it cannot serve: a controller nobody can probe or scrape must not reconcile.

use crate::runtime::k8s::Readiness;
use crate::runtime::metrics::Metrics;
use crate::runtime::reload::RulesHandle;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What the endpoints report on.
#[derive(Clone)]
pub struct ServerState {
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Current rules and reload state.
    pub rules: RulesHandle,
    /// Cache and leadership state.
    pub readiness: Arc<Readiness>,
}

/// The address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve {endpoints} on {address}: {source}")]
pub struct BindError {
    /// What was to be served there.
    pub endpoints: Endpoints,
    /// The address asked for.
    pub address: SocketAddr,
    /// Why not (in use, not an address of this machine, not permitted).
    pub source: std::io::Error,
}

/// Binds the address of `endpoints` (port 0 picks a free one).
pub async fn bind(
    address: SocketAddr,
    endpoints: Endpoints,
) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| BindError {
            endpoints,
            address,
            source,
        })
}

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Endpoints {
    /// `/healthz`, `/readyz` and `/metrics`.
    All,
    /// `/healthz` and `/readyz` (`/metrics` is served elsewhere).
    Probes,
    /// `/metrics` (the probes are served elsewhere).
    Metrics,
}

impl std::fmt::Display for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Endpoints::All => "/healthz, /readyz and /metrics",
            Endpoints::Probes => "/healthz and /readyz",
            Endpoints::Metrics => "/metrics",
        })
    }
}

/// Serves all the endpoints on a bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ServerState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_plain(listener, state, Endpoints::All, shutdown).await
}

/// Serves `endpoints` over plain HTTP on a bound listener until `shutdown` completes.
pub async fn serve_plain(
    listener: tokio::net::TcpListener,
    state: ServerState,
    endpoints: Endpoints,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut app = Router::new();
    if endpoints != Endpoints::Metrics {
        app = app
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz));
    }
    if endpoints != Endpoints::Probes {
        app = app.route("/metrics", get(metrics));
    }
    let app = app.with_state(state);
    let address = listener.local_addr()?;
    match endpoints {
        Endpoints::All => tracing::info!(%address, "serving /healthz, /readyz, /metrics"),
        Endpoints::Probes => tracing::info!(%address, "serving /healthz, /readyz"),
        Endpoints::Metrics => tracing::info!(%address, "serving /metrics"),
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Ready when rules are loaded, this replica leads (or stands by ready to), and the caches
/// have their first list. The body says why not, and shows a rejected rules change.
pub(crate) async fn readyz(State(s): State<ServerState>) -> impl IntoResponse {
    let rules = s.rules.current();
    let reload = s.rules.state();
    let synced = s.readiness.synced.load(Ordering::SeqCst);
    let leading = s.readiness.leading.load(Ordering::SeqCst);
    let mut body = format!(
        "rules: {} (revision {})\ncaches synced: {synced}\nleader: {leading}\nreloads accepted: {}, rejected: {}\n",
        rules.file.display(),
        rules.revision,
        reload.accepted,
        reload.rejected
    );
    if let Some(err) = &reload.last_error {
        body.push_str("last rules change REJECTED (the rules above keep running):\n");
        body.push_str(err);
        body.push('\n');
    }
    // a standby is ready: it serves metrics and takes over when the leader goes
    let ready = synced || !leading;
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

pub(crate) async fn metrics(State(s): State<ServerState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        {
            s.metrics
                .count_resources(&s.rules.current(), &s.rules.census());
            s.metrics.encode()
        },
    )
}
