//! A TCP proxy on loopback between one controller and the API server, with a switch that
//! black-holes it (stops forwarding, closes nothing) and heals it, and a record of when bytes
//! were forwarded to the API server.
//!
//! It models a network partition that drops packets, as TCP sees it: while black-holed the
//! proxy keeps reading what each side sends (as that side's kernel keeps it for retransmission)
//! but forwards nothing. On heal, what was held is delivered, as retransmissions would be,
//! unless the sender reset its connection meanwhile: data never acknowledged is discarded with
//! a reset, so it is dropped here too and the reset is passed on. An orderly close is passed on
//! after the held data, as a FIN is retransmitted after it. A client that gave a request up
//! without resetting its connection therefore sees it delivered after the heal: exactly the late
//! write a partitioned leader must not cause.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// When bytes were forwarded to the API server, and how many.
type Forwarded = Arc<Mutex<Vec<(SystemTime, usize)>>>;

/// One proxy; dropping it stops accepting (open connections live on until their ends close).
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    upstream: Forwarded,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// How one side of a connection ended.
#[derive(Clone, Copy, PartialEq, Debug)]
enum End {
    Closed,
    Reset,
}

impl Proxy {
    /// Starts forwarding connections to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (open, open_rx) = watch::channel(true);
        let upstream_log = Arc::new(Mutex::new(Vec::new()));
        let log = upstream_log.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let open_rx = open_rx.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    // connected at once, but nothing (the TLS handshake included) passes while
                    // black-holed
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        abort(client);
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let Ok(client_fd) = socket2::SockRef::from(&client).try_clone() else {
                        abort(client);
                        return;
                    };
                    let verdict = Arc::new(Verdict {
                        client: client_fd,
                        reset: Mutex::new(false),
                    });
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let (kill_tx, kill_rx) = watch::channel(false);
                    let up = pump(
                        cr,
                        sw,
                        open_rx.clone(),
                        Some(log),
                        verdict.clone(),
                        kill_tx.clone(),
                        kill_rx.clone(),
                    );
                    let down = pump(sr, cw, open_rx, None, verdict, kill_tx, kill_rx);
                    tokio::join!(up, down);
                });
            }
        });
        Proxy {
            addr,
            open,
            upstream: upstream_log,
            accept,
        }
    }

    /// Stops forwarding (both ways, new connections too); nothing is closed.
    pub fn blackhole(&self) {
        self.open.send_replace(false);
    }

    /// Forwards again, held data first.
    pub fn heal(&self) {
        self.open.send_replace(true);
    }

    /// Bytes forwarded to the API server at or after `t`.
    pub fn upstream_bytes_since(&self, t: SystemTime) -> usize {
        self.upstream
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= t)
            .map(|(_, n)| n)
            .sum()
    }

    /// When bytes were last forwarded to the API server.
    pub fn last_upstream_write(&self) -> Option<SystemTime> {
        self.upstream.lock().unwrap().last().map(|(t, _)| *t)
    }
}

/// Closes a connection with a reset.
fn abort(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Whether the client reset its connection, decided once for both directions: the socket's
/// pending error is consumed by whichever reads it first (a write to the socket included).
struct Verdict {
    client: socket2::Socket,
    reset: Mutex<bool>,
}

impl Verdict {
    fn client_reset(&self) -> bool {
        let mut reset = self.reset.lock().unwrap();
        if !*reset {
            *reset = matches!(self.client.take_error(), Ok(Some(_)));
        }
        *reset
    }
}

/// Copies one direction, holding data while black-holed.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut open: watch::Receiver<bool>,
    log: Option<Forwarded>,
    verdict: Arc<Verdict>,
    kill_tx: watch::Sender<bool>,
    mut kill: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut held: Vec<u8> = Vec::new();
    let mut end: Option<End> = None;
    loop {
        let is_open = *open.borrow_and_update();
        if is_open {
            // an orderly close followed by a reset (a socket shut down, then closed with
            // SO_LINGER 0) reads as a plain end of stream; the socket's pending error tells
            if (!held.is_empty() || end.is_some()) && verdict.client_reset() {
                held.clear();
                if log.is_some() {
                    end = Some(End::Reset);
                } else {
                    let _ = kill_tx.send(true);
                    let _ = socket2::SockRef::from(to.as_ref()).set_linger(Some(Duration::ZERO));
                    return;
                }
            }
            if !held.is_empty() {
                if to.write_all(&held).await.is_err() {
                    let _ = kill_tx.send(true);
                    return;
                }
                if let Some(log) = &log {
                    log.lock().unwrap().push((SystemTime::now(), held.len()));
                }
                held.clear();
            }
            match end {
                Some(End::Closed) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Some(End::Reset) => {
                    let _ = kill_tx.send(true);
                    let _ = socket2::SockRef::from(to.as_ref()).set_linger(Some(Duration::ZERO));
                    return;
                }
                None => {}
            }
        }
        if *kill.borrow() {
            let _ = socket2::SockRef::from(to.as_ref()).set_linger(Some(Duration::ZERO));
            return;
        }
        tokio::select! {
            r = from.read(&mut buf), if end.is_none() => match r {
                Ok(0) => end = Some(End::Closed),
                Ok(n) => {
                    if *open.borrow() {
                        if to.write_all(&buf[..n]).await.is_err() {
                            let _ = kill_tx.send(true);
                            return;
                        }
                        if let Some(log) = &log {
                            log.lock().unwrap().push((SystemTime::now(), n));
                        }
                    } else {
                        held.extend_from_slice(&buf[..n]);
                    }
                }
                Err(_) => {
                    // the sender reset: what it sent during the partition was never
                    // acknowledged, so it is gone
                    held.clear();
                    end = Some(End::Reset);
                }
            },
            _ = open.changed() => {}
            _ = kill.changed() => {}
        }
    }
}

/// The API server's address in a kubeconfig, and a copy of the kubeconfig pointing at `proxy`.
pub fn kubeconfig_through(kubeconfig: &std::path::Path, proxy: SocketAddr, out: &std::path::Path) {
    let text = std::fs::read_to_string(kubeconfig).expect("reading the kubeconfig");
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
    for cluster in doc["clusters"].as_sequence_mut().expect("clusters") {
        let server = cluster["cluster"]["server"]
            .as_str()
            .expect("a server")
            .to_string();
        let url: http::Uri = server.parse().expect("server URL");
        let rewritten = format!("{}://{}", url.scheme_str().unwrap_or("https"), proxy);
        cluster["cluster"]["server"] = serde_yaml::Value::String(rewritten);
    }
    std::fs::write(out, serde_yaml::to_string(&doc).expect("kubeconfig")).expect("writing");
}

/// The API server's address in a kubeconfig (the first cluster's).
pub fn api_server(kubeconfig: &std::path::Path) -> SocketAddr {
    let text = std::fs::read_to_string(kubeconfig).expect("reading the kubeconfig");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
    let server = doc["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("a server");
    let url: http::Uri = server.parse().expect("server URL");
    let host = url.host().expect("host");
    let port = url.port_u16().unwrap_or(443);
    format!("{host}:{port}").parse().expect("an IP address")
}

#[tokio::test]
async fn the_proxy_holds_data_while_black_holed_and_drops_what_a_reset_abandoned() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = echo.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let r = received.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = echo.accept().await.unwrap();
            let r = r.clone();
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = s.read_to_end(&mut all).await;
                r.lock().unwrap().push(all);
            });
        }
    });
    let proxy = Proxy::start(upstream).await;
    // held, then delivered at the heal with the orderly close after it
    let mut a = TcpStream::connect(proxy.addr).await.unwrap();
    a.write_all(b"before ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.blackhole();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = SystemTime::now();
    a.write_all(b"during").await.unwrap();
    a.shutdown().await.unwrap();
    // abandoned with a reset while black-holed: never delivered
    let mut b = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.write_all(b"stale").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    abort(b);
    // shut down, then reset: never delivered either
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(b"stale too").await.unwrap();
    c.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    abort(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(proxy.upstream_bytes_since(cut), 0);
    proxy.heal();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = received.lock().unwrap().clone();
    assert!(got.contains(&b"before during".to_vec()), "{got:?}");
    assert!(
        !got.iter().any(|g| g.windows(5).any(|w| w == b"stale")),
        "{got:?}"
    );
    assert_eq!(proxy.upstream_bytes_since(cut), b"during".len());
}
