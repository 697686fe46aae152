//! The Kubernetes clients: timeouts on every request, connections that reset when dropped, and
//! the leadership fence checked before any byte is written.
//!
//! kube's default client has no read timeout, so a request whose answer never comes (a
//! black-holed connection, a stuck API server) hangs its task for ever. Here:
//!
//! - connecting (TCP and TLS) times out after `connect_timeout`;
//! - every request except a watch times out after `api_timeout` (retries of 429/503/504
//!   included), counted in `lifecycle_api_request_timeouts_total`, and is then retried by its
//!   caller like any transient error;
//! - watches ask the API server to end them after `watch_timeout` (the long poll), and a
//!   connection that stays silent for 2 s longer is dead: its read fails, the watcher restarts
//!   from its last resourceVersion, and `lifecycle_watch_restarts_total` counts it;
//! - sockets close with a reset (`SO_LINGER` 0): a request abandoned after its timeout, or
//!   still unsent when the process exits, is discarded by the kernel instead of being
//!   retransmitted and landing later, after another replica has taken over;
//! - the acting client's connections refuse to write once the [`Fence`] is closed, so a leader
//!   past its renew deadline (or resumed after a pause) cannot send anything.

use super::Error;
use super::lease::Fence;
use crate::runtime::metrics::Metrics;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use kube::client::ConfigExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{BoxError, ServiceBuilder};

/// Timeouts of the API clients.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Connecting, TLS handshake included.
    pub connect: Duration,
    /// One request (watches excepted).
    pub request: Duration,
    /// The server-side length of one watch (its long poll).
    pub watch: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(20),
            watch: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    /// Silence after which a connection (a watch's included) is dead.
    pub fn read(&self) -> Duration {
        self.watch.max(self.request) + Duration::from_secs(2)
    }
}

/// The clients of one controller process.
#[derive(Clone)]
pub struct Clients {
    /// Everything the controller does (watches, reads, writes, Events): fenced.
    pub acting: kube::Client,
    /// Leader election, discovery and reports about the process itself: never fenced.
    pub control: kube::Client,
    /// Whether this process may act now.
    pub fence: Fence,
}

/// Connects to the cluster from the kubeconfig (`KUBECONFIG`, or in-cluster).
pub async fn connect(
    context: Option<&str>,
    timeouts: &Timeouts,
    fence: Fence,
    metrics: Arc<Metrics>,
) -> Result<Clients, Error> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match kube::Config::from_kubeconfig(&options).await {
        Ok(c) => c,
        Err(kubeconfig_err) => match kube::Config::incluster() {
            Ok(c) => c,
            Err(_) => return Err(Error::Connect(kubeconfig_err.to_string())),
        },
    };
    Ok(Clients {
        acting: build(&config, timeouts, fence.clone(), metrics.clone())?,
        control: build(&config, timeouts, Fence::open(), metrics)?,
        fence,
    })
}

fn build(
    config: &kube::Config,
    timeouts: &Timeouts,
    fence: Fence,
    metrics: Arc<Metrics>,
) -> Result<kube::Client, Error> {
    let https = config
        .rustls_https_connector_with_connector(Connector { fence })
        .map_err(|e| Error::Connect(e.to_string()))?;
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(Some(timeouts.connect));
    connector.set_read_timeout(Some(timeouts.read()));
    connector.set_write_timeout(Some(timeouts.request));
    // the read timeout counts from the request, not from when a pooled connection went idle
    connector.set_reset_reader_on_write(true);
    let http: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Builder::new(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let auth = config
        .auth_layer()
        .map_err(|e| Error::Connect(e.to_string()))?;
    let headers = config
        .extra_headers_layer()
        .map_err(|e| Error::Connect(e.to_string()))?;
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .layer_fn(|inner| Deadline {
            inner,
            timeout: timeouts.request,
            metrics: metrics.clone(),
        })
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(auth)
        .layer(headers)
        .map_err(BoxError::from)
        .service(http);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
}

/// Whether a request is a watch (a long poll bounded by its own `timeoutSeconds`).
fn is_watch(uri: &http::Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

/// Bounds every request but watches by a timeout.
#[derive(Clone)]
struct Deadline<S> {
    inner: S,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl<S, B> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let watch = is_watch(req.uri());
        let what = format!("{} {}", req.method(), req.uri().path());
        let response = self.inner.call(req);
        if watch {
            return Box::pin(async move { response.await.map_err(Into::into) });
        }
        let (timeout, metrics) = (self.timeout, self.metrics.clone());
        Box::pin(async move {
            match tokio::time::timeout(timeout, response).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => {
                    metrics.api_timeouts.inc();
                    tracing::warn!(request = %what, ?timeout, "API request timed out; abandoned");
                    Err(format!("{what}: no answer within {timeout:?} (timed out)").into())
                }
            }
        })
    }
}

/// Opens TCP connections that reset on close and obey the fence.
#[derive(Clone)]
struct Connector {
    fence: Fence,
}

impl tower::Service<http::Uri> for Connector {
    type Response = FencedStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<FencedStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let fence = self.fence.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other(format!("no host in {uri}")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("http") => 80,
                _ => 443,
            });
            let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            // close = reset: nothing left unsent is delivered after we gave it up
            socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
            Ok(FencedStream {
                io: TokioIo::new(stream),
                fence,
            })
        })
    }
}

/// A connection that refuses to write when the fence is closed.
struct FencedStream {
    io: TokioIo<tokio::net::TcpStream>,
    fence: Fence,
}

fn fenced() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "this replica may no longer act (leadership not renewed in time): write refused",
    )
}

impl hyper::rt::Read for FencedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for FencedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !self.fence.allows() {
            return Poll::Ready(Err(fenced()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if !self.fence.allows() {
            return Poll::Ready(Err(fenced()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connection for FencedStream {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// Whether an error (or one of its causes) is a timeout.
pub fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        if err.to_string().contains("timed out") {
            return true;
        }
        current = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_told_apart() {
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert!(is_watch(&uri(
            "/apis/x/v1/things?resourceVersion=5&watch=true&timeoutSeconds=60"
        )));
        assert!(!is_watch(&uri("/apis/x/v1/things?limit=500")));
        assert!(!is_watch(&uri("/apis/x/v1/namespaces/watch=true/things")));
    }

    #[test]
    fn timeouts_are_found_among_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "x");
        assert!(is_timeout(&io));
        let other = std::io::Error::other("connection refused");
        assert!(!is_timeout(&other));
        assert!(Timeouts::default().read() > Timeouts::default().watch);
    }

    #[tokio::test]
    async fn a_closed_fence_stops_writes_and_connections_reset_on_close() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fence = Fence::open();
        let mut connector = Connector {
            fence: fence.clone(),
        };
        let uri: http::Uri = format!("http://{addr}/").parse().unwrap();
        let mut stream = tower::Service::call(&mut connector, uri).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        async fn write(s: &mut FencedStream, bytes: &[u8]) -> std::io::Result<usize> {
            let mut s = Pin::new(s);
            std::future::poll_fn(move |cx| hyper::rt::Write::poll_write(s.as_mut(), cx, bytes))
                .await
        }
        assert_eq!(write(&mut stream, b"hello").await.unwrap(), 5);
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).await.unwrap();
        fence.close();
        let err = write(&mut stream, b"late").await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        drop(stream);
        // a reset, not an orderly end of stream
        let mut rest = Vec::new();
        let end = server.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
        assert_eq!(end.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
    }
}
