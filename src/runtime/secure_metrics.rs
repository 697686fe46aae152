//! Secure metrics (`lifecycle run --metrics-secure`): `/metrics` over HTTPS, and only for callers
//! the API server vouches for. Each scraper's bearer token is authenticated with a TokenReview, and
//! the user it names is authorised with a SubjectAccessReview for `get` on the non-resource URL
//! `/metrics` (the scheme kubebuilder's controllers use). Decisions are cached per token for a
//! short while, so a scrape every few seconds costs the API server nothing.
//!
//! Answers: no token 401, a token the API server does not accept 401, a user without the
//! permission 403, the API server unreachable 500.

use crate::runtime::server::{self, ServerState};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

/// How long an allowed decision is reused for the same token.
const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a refusal is reused for the same token.
const DENIED_TTL: Duration = Duration::from_secs(10);
/// Tokens remembered at most (expired ones go first, then all).
const CACHE_LIMIT: usize = 4096;
/// A TLS handshake that takes longer is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS configuration of the metrics endpoint: the PEM certificate (chain) and private key
/// when both are given, else a self-signed certificate made now for `localhost` and this host.
pub fn tls_config(cert_and_key: Option<(&Path, &Path)>) -> Result<Arc<ServerConfig>, String> {
    let (chain, key) = match cert_and_key {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("reading the certificate {}: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!("no certificate in {}", cert.display()));
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("reading the private key {}: {e}", key.display()))?;
            (chain, key)
        }
        None => {
            let mut names = vec!["localhost".to_string()];
            if let Ok(host) = std::env::var("HOSTNAME")
                && !host.is_empty()
            {
                names.push(host);
            }
            let made = rcgen::generate_simple_self_signed(names)
                .map_err(|e| format!("making a self-signed certificate: {e}"))?;
            let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
                .map_err(|e| format!("the generated key: {e}"))?;
            (vec![made.cert.der().clone()], key)
        }
    };
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What the API server said about one token.
#[derive(Clone, Debug, PartialEq)]
enum Decision {
    Allowed,
    /// The TokenReview did not authenticate the token.
    Unauthenticated,
    /// The user (named) may not `get` the path.
    Forbidden(String),
}

/// Decisions by a hash of (verb, path, token), with when they expire.
type DecisionCache = HashMap<[u8; 32], (Decision, Instant)>;

/// Asks the API server who a caller is and whether it may read a path; caches the answers.
#[derive(Clone)]
pub struct Authorizer {
    client: kube::Client,
    cache: Arc<Mutex<DecisionCache>>,
}

impl Authorizer {
    /// An authorizer asking through `client` (which needs `create` on tokenreviews and
    /// subjectaccessreviews).
    pub fn new(client: kube::Client) -> Authorizer {
        Authorizer {
            client,
            cache: Arc::default(),
        }
    }

    async fn decide(&self, token: &str, verb: &str, path: &str) -> Result<Decision, kube::Error> {
        let key: [u8; 32] = Sha256::new()
            .chain_update(verb)
            .chain_update(b" ")
            .chain_update(path)
            .chain_update(b"\n")
            .chain_update(token)
            .finalize()
            .into();
        if let Some((decision, expires)) = self.lock().get(&key)
            && *expires > Instant::now()
        {
            return Ok(decision.clone());
        }
        let decision = self.ask(token, verb, path).await?;
        let ttl = if decision == Decision::Allowed {
            ALLOWED_TTL
        } else {
            DENIED_TTL
        };
        let mut cache = self.lock();
        if cache.len() >= CACHE_LIMIT {
            let now = Instant::now();
            cache.retain(|_, (_, expires)| *expires > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(key, (decision.clone(), Instant::now() + ttl));
        Ok(decision)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DecisionCache> {
        // a panic elsewhere cannot leave the map inconsistent: use it as it is
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn ask(&self, token: &str, verb: &str, path: &str) -> Result<Decision, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let Some(status) = reviewed.status.filter(|s| s.authenticated == Some(true)) else {
            return Ok(Decision::Unauthenticated);
        };
        let user = status.user.unwrap_or_default();
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some(verb.to_string()),
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let reviewed = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        Ok(if reviewed.status.is_some_and(|s| s.allowed) {
            Decision::Allowed
        } else {
            Decision::Forbidden(user.username.unwrap_or_default())
        })
    }
}

/// The bearer token of a request, if it has one.
fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Lets a request through only when the API server authenticates and authorises its caller.
async fn authorize(State(auth): State<Authorizer>, request: Request, next: Next) -> Response {
    let Some(token) = bearer(&request) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required\n",
        )
            .into_response();
    };
    let verb = request.method().as_str().to_ascii_lowercase();
    let path = request.uri().path().to_string();
    match auth.decide(token, &verb, &path).await {
        Ok(Decision::Allowed) => next.run(request).await,
        Ok(Decision::Unauthenticated) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "the API server does not accept this token (TokenReview)\n",
        )
            .into_response(),
        Ok(Decision::Forbidden(user)) => (
            StatusCode::FORBIDDEN,
            format!("{user} may not {verb} {path} (SubjectAccessReview)\n"),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check a metrics caller with the API server");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot check the caller with the API server\n",
            )
                .into_response()
        }
    }
}

/// Serves `/metrics` over HTTPS to authorised callers, and `/healthz` and `/readyz` (open, as
/// the kubelet's probes need) when `with_probes`, until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: ServerState,
    tls: Arc<ServerConfig>,
    auth: Authorizer,
    with_probes: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = Router::new()
        .route("/metrics", get(server::metrics))
        .route_layer(axum::middleware::from_fn_with_state(auth, authorize));
    let mut app = metrics;
    if with_probes {
        app = app
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(server::readyz));
    }
    let app = app.with_state(state);
    let address = listener.local_addr()?;
    let listener = TlsListener::new(listener, TlsAcceptor::from(tls));
    if with_probes {
        tracing::info!(%address, "serving /metrics over HTTPS to authorised callers, and /healthz, /readyz");
    } else {
        tracing::info!(%address, "serving /metrics over HTTPS to authorised callers");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Accepted connections after their TLS handshake; handshakes run concurrently, each bounded
/// by [`HANDSHAKE_TIMEOUT`], so a slow client holds up nobody else.
struct TlsListener {
    connections: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    address: SocketAddr,
}

impl TlsListener {
    fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> TlsListener {
        let address = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, connections) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = tcp.accept() => accepted,
                    _ = tx.closed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // too many open files and the like: wait for it to pass
                        tracing::debug!(error = %e, "accepting a metrics connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener {
            connections,
            address,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // the accepting task only ends when this listener is gone
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&str>) -> Request {
        let mut builder = Request::builder().uri("/metrics");
        if let Some(value) = authorization {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn the_bearer_token_is_read_from_the_authorization_header() {
        assert_eq!(bearer(&request(Some("Bearer abc.def"))), Some("abc.def"));
        assert_eq!(bearer(&request(Some("bearer  abc "))), Some("abc"));
        assert_eq!(bearer(&request(Some("Basic dXNlcjpwYXNz"))), None);
        assert_eq!(bearer(&request(Some("Bearer "))), None);
        assert_eq!(bearer(&request(None)), None);
    }

    #[test]
    fn a_self_signed_identity_is_made_without_files() {
        let config = tls_config(None).expect("a self-signed TLS identity");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn unreadable_or_mismatched_files_are_reported_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        let err = tls_config(Some((&cert, &key))).unwrap_err();
        assert!(err.contains("tls.crt"), "{err}");
        // a certificate with someone else's key
        let a = rcgen::generate_simple_self_signed(vec!["a".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b".to_string()]).unwrap();
        std::fs::write(&cert, a.cert.pem()).unwrap();
        std::fs::write(&key, b.signing_key.serialize_pem()).unwrap();
        let err = tls_config(Some((&cert, &key))).unwrap_err();
        assert!(err.contains("do not make a TLS identity"), "{err}");
        // and a matching pair works
        std::fs::write(&key, a.signing_key.serialize_pem()).unwrap();
        tls_config(Some((&cert, &key))).expect("a matching certificate and key");
        std::fs::write(&cert, "not PEM").unwrap();
        let err = tls_config(Some((&cert, &key))).unwrap_err();
        assert!(err.contains("no certificate in"), "{err}");
    }
}
