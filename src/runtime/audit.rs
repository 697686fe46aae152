//! Audit delivery: JSON lines (stdout or a file) and an HTTP batch endpoint, at least once.
//!
//! The guarantee comes from back-pressure, not from a buffer: a reconcile hands a transition's
//! record to [`AuditSink::deliver`] and waits until every target has durably accepted it (the
//! file written and synced, stdout written, the endpoint answered 2xx) *before* the status write
//! that makes the transition. If the record is not accepted within `wait`, the reconcile fails
//! and is retried later; the transition is not written, so it is taken again and its record sent
//! again with the same id. Nothing is kept in memory that is not also recoverable from the
//! cluster: a SIGKILL at any moment, an endpoint down for hours or a backlog of any size loses
//! nothing, because the backlog is the transitions not yet written, kept by the API server.
//! Records carry stable ids (`event_id`), so a receiver de-duplicates the repeats that
//! at-least-once delivery implies. See docs/reliability.md for the precise guarantee.
//!
//! Each target has one task that sends what waiting reconciles handed it, many records per
//! batch (group commit). HTTP delivery retries with jittered exponential backoff, honours
//! `Retry-After`, and treats an answer that refuses the records themselves (400, 413, 422, ...)
//! as a rejection: the batch is split until the refused record is alone, which is counted
//! (`lifecycle_audit_rejected_total`) and logged with the endpoint's answer; its transition
//! proceeds, since sending it again cannot change the answer.

use crate::runtime::metrics::Metrics;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines appended to a file.
    File(PathBuf),
    /// `POST {url}/api/v1/audit/events/batch` with a JSON array.
    Http(String),
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        if s == "-" || s == "stdout" {
            Ok(Target::Stdout)
        } else if s.starts_with("http://") || s.starts_with("https://") {
            Ok(Target::Http(s.trim_end_matches('/').to_string()))
        } else if let Some(path) = s.strip_prefix("file:") {
            Ok(Target::File(path.into()))
        } else {
            Err(format!(
                "`{s}` is not an audit target: use `stdout`, `file:PATH` or an http(s) URL"
            ))
        }
    }
}

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Targets.
    pub targets: Vec<Target>,
    /// Largest batch sent at once.
    pub batch: usize,
    /// How long a transition waits for its record to be accepted before its reconcile fails
    /// (and is retried).
    pub wait: Duration,
    /// Timeout of one HTTP request (connecting included).
    pub request_timeout: Duration,
    /// Timeout of connecting to the endpoint.
    pub connect_timeout: Duration,
    /// Longest wait between retries (a `Retry-After` may ask for longer, up to 10 minutes).
    pub max_backoff: Duration,
    /// PEM bundle of the certificate authorities trusted for `https://` endpoints, besides the
    /// built-in roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            targets: Vec::new(),
            batch: 100,
            wait: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            max_backoff: Duration::from_secs(10),
            ca_file: None,
        }
    }
}

/// Why a record was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Not every target accepted the record in time; the transition must be taken again.
    #[error(
        "audit record not accepted within {0:?} (endpoint down or slow); the transition is retried"
    )]
    NotAccepted(Duration),
    /// Delivery has stopped (the process is shutting down).
    #[error("audit delivery has stopped")]
    Stopped,
    /// The settings cannot work.
    #[error("audit: {0}")]
    Config(String),
}

/// What a target answered for one record.
#[derive(Debug)]
enum Outcome {
    Accepted,
    Rejected,
}

struct Pending {
    record: Arc<Value>,
    ack: oneshot::Sender<Outcome>,
}

/// The handle reconciles use; clones share the delivery tasks.
#[derive(Clone)]
pub struct AuditSink {
    queues: Arc<Mutex<Vec<mpsc::UnboundedSender<Pending>>>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    wait: Duration,
    metrics: Arc<Metrics>,
    recovered: watch::Receiver<u64>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl AuditSink {
    /// Starts delivery, one task per target (no targets: records are accepted at once).
    pub fn start(config: Config, metrics: Arc<Metrics>) -> Result<AuditSink, AuditError> {
        let http = if config.targets.iter().any(|t| matches!(t, Target::Http(_))) {
            Some(http_client(&config)?)
        } else {
            None
        };
        let (recovered_tx, recovered) = watch::channel(0u64);
        let recovered_tx = Arc::new(recovered_tx);
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        for target in &config.targets {
            let writer = match target {
                Target::Stdout => Writer::Stdout,
                Target::File(p) => Writer::File(Arc::new(Mutex::new(open_file(p)?))),
                Target::Http(url) => Writer::Http {
                    client: http.clone().ok_or(AuditError::Stopped)?,
                    endpoint: format!("{url}/api/v1/audit/events/batch"),
                },
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let task = Delivery {
                writer,
                config: config.clone(),
                metrics: metrics.clone(),
                recovered: recovered_tx.clone(),
                failures: 0,
                not_before: Instant::now(),
            };
            tasks.push(tokio::spawn(task.run(rx)));
            queues.push(tx);
        }
        Ok(AuditSink {
            queues: Arc::new(Mutex::new(queues)),
            tasks: Arc::new(Mutex::new(tasks)),
            wait: config.wait,
            metrics,
            recovered,
            closed: Arc::new(false.into()),
        })
    }

    /// Delivers a record to every target and waits until each has accepted (or refused) it.
    /// An error means the record may not have arrived: the caller must not record the
    /// transition, and tries again later with the same record id.
    pub async fn deliver(&self, record: Value) -> Result<(), AuditError> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AuditError::Stopped);
        }
        let record = Arc::new(record);
        let mut acks = Vec::new();
        {
            let queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            for q in queues.iter() {
                let (ack, rx) = oneshot::channel();
                if q.send(Pending {
                    record: record.clone(),
                    ack,
                })
                .is_err()
                {
                    return Err(AuditError::Stopped);
                }
                acks.push(rx);
            }
        }
        let all = futures::future::join_all(acks);
        match tokio::time::timeout(self.wait, all).await {
            Ok(outcomes) => {
                if outcomes.iter().any(Result::is_err) {
                    return Err(AuditError::Stopped);
                }
                Ok(())
            }
            Err(_) => {
                self.metrics.audit_not_accepted.inc();
                Err(AuditError::NotAccepted(self.wait))
            }
        }
    }

    /// Changes each time a target that was failing accepts records again: transitions held
    /// back meanwhile are worth retrying at once.
    pub fn recovered(&self) -> watch::Receiver<u64> {
        self.recovered.clone()
    }

    /// Stops taking records and waits (up to `deadline`) until what was handed over is
    /// delivered. Records whose reconcile stopped waiting are not sent: their transitions were
    /// not written and are taken again by the next process.
    pub async fn close(&self, deadline: Duration) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(
                ?deadline,
                "audit delivery still busy at shutdown; its transitions are taken again"
            );
        }
    }
}

fn http_client(config: &Config) -> Result<reqwest::Client, AuditError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout);
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            AuditError::Config(format!("cannot read the CA file {}: {e}", path.display()))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            AuditError::Config(format!("{}: not a PEM bundle: {e}", path.display()))
        })?;
        if certs.is_empty() {
            return Err(AuditError::Config(format!(
                "{}: no certificate in the bundle",
                path.display()
            )));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| AuditError::Config(format!("HTTP client: {e}")))
}

/// Opens the audit file for appending; a record cut short by an earlier crash stays a line of
/// its own.
fn open_file(path: &std::path::Path) -> Result<std::fs::File, AuditError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            AuditError::Config(format!(
                "cannot open the audit file {}: {e}",
                path.display()
            ))
        })?;
    if last_byte(path).is_some_and(|b| b != b'\n') {
        f.write_all(b"\n").map_err(|e| {
            AuditError::Config(format!(
                "cannot write the audit file {}: {e}",
                path.display()
            ))
        })?;
    }
    Ok(f)
}

/// The last byte of a file, if it has one.
fn last_byte(path: &std::path::Path) -> Option<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::End(-1)).ok()?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b).ok()?;
    Some(b[0])
}

/// JSON lines of a batch, each record whole on its own line.
fn lines(batch: &[Pending]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in batch {
        if serde_json::to_writer(&mut out, p.record.as_ref()).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// How one attempt to hand a batch over ended.
enum Attempt {
    Accepted,
    /// Try again later: the target is unavailable (`after`: what it asked for).
    Retry {
        why: String,
        after: Option<Duration>,
    },
    /// The target refuses these records; sending them again cannot help.
    Rejected {
        status: u16,
        answer: String,
    },
}

enum Writer {
    Stdout,
    File(Arc<Mutex<std::fs::File>>),
    Http {
        client: reqwest::Client,
        endpoint: String,
    },
}

impl Writer {
    async fn write(&self, batch: &[Pending]) -> Attempt {
        match self {
            // one write per batch: readers never see half a record, and a record cut short by
            // a crash cannot merge with the next process's first one
            Writer::Stdout => {
                let mut out = std::io::stdout().lock();
                match out.write_all(&lines(batch)).and_then(|()| out.flush()) {
                    Ok(()) => Attempt::Accepted,
                    Err(e) => Attempt::Retry {
                        why: format!("cannot write standard output: {e}"),
                        after: None,
                    },
                }
            }
            Writer::File(file) => {
                let file = file.clone();
                let bytes = lines(batch);
                let written = tokio::task::spawn_blocking(move || {
                    let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
                    f.write_all(&bytes).and_then(|()| f.sync_data())
                })
                .await;
                match written {
                    Ok(Ok(())) => Attempt::Accepted,
                    Ok(Err(e)) => Attempt::Retry {
                        why: format!("cannot write the audit file: {e}"),
                        after: None,
                    },
                    Err(e) => Attempt::Retry {
                        why: format!("audit file writer: {e}"),
                        after: None,
                    },
                }
            }
            Writer::Http { client, endpoint } => {
                let body: Vec<&Value> = batch.iter().map(|p| p.record.as_ref()).collect();
                match client.post(endpoint).json(&body).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let after = retry_after(r.headers());
                        if r.status().is_success() {
                            return Attempt::Accepted;
                        }
                        let answer = answer_of(r).await;
                        match status {
                            // the endpoint is busy, or misconfigured: nothing is wrong with the
                            // records, so they wait
                            408 | 429 | 401 | 403 | 404 | 405 | 407 => Attempt::Retry {
                                why: format!("endpoint answered {status}: {answer}"),
                                after,
                            },
                            400..=499 => Attempt::Rejected { status, answer },
                            _ => Attempt::Retry {
                                why: format!("endpoint answered {status}: {answer}"),
                                after,
                            },
                        }
                    }
                    Err(e) => Attempt::Retry {
                        why: format!("endpoint unreachable: {}", error_chain(&e)),
                        after: None,
                    },
                }
            }
        }
    }
}

/// The first 512 bytes of a response body, for the log.
async fn answer_of(r: reqwest::Response) -> String {
    let text = r.text().await.unwrap_or_default();
    let mut end = text.len().min(512);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim().to_string()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `Retry-After` in seconds or as an HTTP date, capped at 10 minutes.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let wait = match value.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = jiff::fmt::rfc2822::parse(value.trim()).ok()?.timestamp();
            let secs = at.as_second() - jiff::Timestamp::now().as_second();
            Duration::from_secs(u64::try_from(secs).unwrap_or(0))
        }
    };
    Some(wait.min(Duration::from_secs(600)))
}

/// A pseudo-random number in `0..n` (jitter only: no dependency, a fresh hasher seed per call).
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish() % n.max(1)
}

/// Exponential backoff from 100 ms, capped, with "equal jitter" (half fixed, half random), so
/// that many replicas or targets do not retry in step.
fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1u32 << failures.min(16))
        .min(max);
    let half = base / 2;
    half + Duration::from_millis(random_below(half.as_millis() as u64 + 1))
}

struct Delivery {
    writer: Writer,
    config: Config,
    metrics: Arc<Metrics>,
    recovered: Arc<watch::Sender<u64>>,
    failures: u32,
    not_before: Instant,
}

impl Delivery {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Pending>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < self.config.batch.max(1) {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            self.send(batch).await;
        }
    }

    /// Sends a batch until it is accepted, refused, or nobody waits for it any more.
    async fn send(&mut self, batch: Vec<Pending>) {
        // a refused batch is split until the refused record is alone
        let mut work = vec![batch];
        while let Some(mut batch) = work.pop() {
            loop {
                // a reconcile that stopped waiting takes its transition again later, with a new
                // hand-over; sending the record now would only duplicate it
                batch.retain(|p| !p.ack.is_closed());
                if batch.is_empty() {
                    break;
                }
                tokio::time::sleep_until(self.not_before).await;
                batch.retain(|p| !p.ack.is_closed());
                if batch.is_empty() {
                    break;
                }
                match self.writer.write(&batch).await {
                    Attempt::Accepted => {
                        if self.failures > 0 {
                            tracing::info!("audit target accepts records again");
                            self.recovered.send_modify(|n| *n += 1);
                        }
                        self.failures = 0;
                        self.metrics.audit_delivered.inc_by(batch.len() as u64);
                        for p in batch.drain(..) {
                            let _ = p.ack.send(Outcome::Accepted);
                        }
                        break;
                    }
                    Attempt::Retry { why, after } => {
                        self.failures = self.failures.saturating_add(1);
                        self.metrics.audit_retries.inc();
                        let wait = backoff(self.failures, self.config.max_backoff)
                            .max(after.unwrap_or_default());
                        self.not_before = Instant::now() + wait;
                        tracing::warn!(records = batch.len(), attempt = self.failures, retry_in = ?wait, "audit delivery failed: {why}");
                    }
                    Attempt::Rejected { status, answer } if batch.len() > 1 => {
                        tracing::warn!(records = batch.len(), status, answer = %answer, "audit endpoint refused a batch; sending its halves apart to find the refused records");
                        let tail = batch.split_off(batch.len() / 2);
                        work.push(tail);
                        work.push(batch);
                        break;
                    }
                    Attempt::Rejected { status, answer } => {
                        self.metrics.audit_rejected.inc_by(batch.len() as u64);
                        let id = batch[0].record.get("event_id").cloned();
                        tracing::error!(status, answer = %answer, event_id = ?id, "audit endpoint rejected a record; it is not sent again");
                        for p in batch.drain(..) {
                            let _ = p.ack.send(Outcome::Rejected);
                        }
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn targets_parse() {
        assert_eq!("stdout".parse::<Target>(), Ok(Target::Stdout));
        assert_eq!(
            "http://audit:8080/".parse::<Target>(),
            Ok(Target::Http("http://audit:8080".into()))
        );
        assert_eq!(
            "file:/tmp/a.jsonl".parse::<Target>(),
            Ok(Target::File("/tmp/a.jsonl".into()))
        );
        assert!("ftp://x".parse::<Target>().is_err());
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let max = Duration::from_secs(10);
        for failures in 0..40 {
            let b = backoff(failures, max);
            let base = Duration::from_millis(100)
                .saturating_mul(1u32 << failures.min(16))
                .min(max);
            assert!(b >= base / 2 && b <= base, "{failures}: {b:?}");
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| backoff(6, max)).collect();
        assert!(samples.len() > 1, "no jitter: {samples:?}");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&later)
            .unwrap();
        h.insert(reqwest::header::RETRY_AFTER, date.parse().unwrap());
        let got = retry_after(&h).unwrap();
        assert!(
            got >= Duration::from_secs(118) && got <= Duration::from_secs(120),
            "{got:?}"
        );
        h.insert(reqwest::header::RETRY_AFTER, "99999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(600)));
    }

    #[tokio::test]
    async fn a_record_is_in_the_file_when_delivery_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"cut\":").unwrap();
        let metrics = Arc::new(Metrics::new());
        let sink = AuditSink::start(
            Config {
                targets: vec![Target::File(path.clone())],
                ..Config::default()
            },
            metrics.clone(),
        )
        .unwrap();
        sink.deliver(serde_json::json!({"event_id": "a"}))
            .await
            .unwrap();
        sink.deliver(serde_json::json!({"event_id": "b"}))
            .await
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"cut\":\n{\"event_id\":\"a\"}\n{\"event_id\":\"b\"}\n"
        );
        assert_eq!(metrics.audit_delivered.get(), 2);
        sink.close(Duration::from_secs(1)).await;
        assert!(matches!(
            sink.deliver(serde_json::json!({})).await,
            Err(AuditError::Stopped)
        ));
    }

    /// A receiver on loopback that answers from a script, then accepts; records what it
    /// accepted.
    async fn receiver(
        script: Vec<(u16, Option<&'static str>)>,
        refuse: Option<&'static str>,
    ) -> (String, Arc<Mutex<Vec<Value>>>, Arc<AtomicUsize>) {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), calls.clone());
        let script = Arc::new(script);
        let app = axum::Router::new().route(
            "/api/v1/audit/events/batch",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (a, c, script) = (a.clone(), c.clone(), script.clone());
                async move {
                    let n = c.fetch_add(1, Ordering::SeqCst);
                    if let Some((code, after)) = script.get(n) {
                        let mut r = axum::response::Response::new(axum::body::Body::from("busy"));
                        *r.status_mut() = StatusCode::from_u16(*code).unwrap();
                        if let Some(after) = after {
                            r.headers_mut()
                                .insert("retry-after", after.parse().unwrap());
                        }
                        return r;
                    }
                    let records: Vec<Value> = serde_json::from_slice(&body).unwrap();
                    if let Some(bad) = refuse
                        && records.iter().any(|r| r["event_id"] == bad)
                    {
                        let mut r = axum::response::Response::new(axum::body::Body::from(format!(
                            "event {bad} is invalid"
                        )));
                        *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
                        return r;
                    }
                    a.lock().unwrap().extend(records);
                    axum::response::Response::new(axum::body::Body::empty())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, accepted, calls)
    }

    #[tokio::test]
    async fn a_busy_endpoint_gets_every_record_and_retry_after_is_honoured() {
        let (url, accepted, calls) =
            receiver(vec![(500, None), (429, Some("1")), (503, None)], None).await;
        let metrics = Arc::new(Metrics::new());
        let sink = AuditSink::start(
            Config {
                targets: vec![Target::Http(url)],
                wait: Duration::from_secs(20),
                ..Config::default()
            },
            metrics.clone(),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let sends = (0..3000).map(|i| {
            let sink = sink.clone();
            async move { sink.deliver(serde_json::json!({ "event_id": i })).await }
        });
        for r in futures::future::join_all(sends).await {
            r.unwrap();
        }
        // the 429 asked for a second
        assert!(started.elapsed() >= Duration::from_secs(1));
        let got = accepted.lock().unwrap().clone();
        let ids: std::collections::HashSet<_> = got.iter().map(|r| r["event_id"].clone()).collect();
        assert_eq!(ids.len(), 3000);
        assert_eq!(metrics.audit_delivered.get(), got.len() as u64);
        assert_eq!(metrics.audit_retries.get(), 3);
        assert!(
            calls.load(Ordering::SeqCst) >= 3 + 30,
            "batches of at most 100"
        );
    }

    #[tokio::test]
    async fn a_refused_record_is_counted_apart_and_the_others_arrive() {
        let (url, accepted, _) = receiver(vec![], Some("bad")).await;
        let metrics = Arc::new(Metrics::new());
        let sink = AuditSink::start(
            Config {
                targets: vec![Target::Http(url)],
                ..Config::default()
            },
            metrics.clone(),
        )
        .unwrap();
        let mut ids: Vec<Value> = (0..9).map(|i| serde_json::json!(i)).collect();
        ids.insert(4, serde_json::json!("bad"));
        let sends = ids.iter().map(|id| {
            let sink = sink.clone();
            let id = id.clone();
            async move { sink.deliver(serde_json::json!({ "event_id": id })).await }
        });
        for r in futures::future::join_all(sends).await {
            r.unwrap();
        }
        let got = accepted.lock().unwrap().clone();
        assert_eq!(got.len(), 9, "{got:?}");
        assert!(got.iter().all(|r| r["event_id"] != "bad"));
        assert_eq!(metrics.audit_rejected.get(), 1);
        assert_eq!(metrics.audit_delivered.get(), 9);
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_holds_the_transition_back() {
        // a port nobody listens on
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let metrics = Arc::new(Metrics::new());
        let sink = AuditSink::start(
            Config {
                targets: vec![Target::Http(format!("http://127.0.0.1:{port}"))],
                wait: Duration::from_millis(300),
                ..Config::default()
            },
            metrics.clone(),
        )
        .unwrap();
        let r = sink.deliver(serde_json::json!({"event_id": "x"})).await;
        assert!(matches!(r, Err(AuditError::NotAccepted(_))), "{r:?}");
        assert_eq!(metrics.audit_not_accepted.get(), 1);
        assert!(metrics.audit_retries.get() >= 1);
        assert_eq!(metrics.audit_delivered.get(), 0);
    }

    #[test]
    fn a_ca_file_that_is_not_a_bundle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let err = http_client(&Config {
            ca_file: Some(path.clone()),
            ..Config::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
        let missing = http_client(&Config {
            ca_file: Some(dir.path().join("missing.pem")),
            ..Config::default()
        })
        .unwrap_err();
        assert!(
            missing.to_string().contains("cannot read the CA file"),
            "{missing}"
        );
    }
}
