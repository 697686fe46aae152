//! Audit delivery: JSON lines (stdout or a file) and an HTTP batch endpoint.
//!
//! Reconciles hand records to [`AuditSink::send`], which never waits: records go into a bounded
//! buffer and a background task delivers them. HTTP delivery retries with capped backoff until
//! the endpoint accepts the batch; records carry stable ids, so a receiver de-duplicates the
//! repeats that at-least-once delivery implies. When the buffer is full the record is dropped
//! and counted (`lifecycle_audit_dropped_total`), so that audit can never stall a lifecycle.

use crate::runtime::metrics::Metrics;
use serde_json::Value;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines appended to a file.
    File(std::path::PathBuf),
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
    /// Buffer size (records).
    pub buffer: usize,
    /// Largest batch sent at once.
    pub batch: usize,
    /// Longest wait between retries.
    pub max_backoff: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            targets: Vec::new(),
            buffer: 10_000,
            batch: 100,
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The handle reconciles use.
#[derive(Clone)]
pub struct AuditSink {
    /// One buffer per target, so a slow target never holds back the others.
    txs: Vec<mpsc::Sender<Value>>,
    metrics: Arc<Metrics>,
}

impl AuditSink {
    /// Starts delivery in the background, one task per target (no targets: records are
    /// discarded uncounted).
    pub fn start(config: Config, metrics: Arc<Metrics>) -> AuditSink {
        let mut txs = Vec::new();
        for target in &config.targets {
            let (tx, rx) = mpsc::channel(config.buffer.max(1));
            tokio::spawn(deliver(rx, target.clone(), config.clone(), metrics.clone()));
            txs.push(tx);
        }
        AuditSink { txs, metrics }
    }

    /// Queues a record for every target; never waits.
    pub fn send(&self, record: Value) {
        for tx in &self.txs {
            if tx.try_send(record.clone()).is_err() {
                self.metrics.audit_dropped.inc();
                tracing::warn!("audit buffer full: record dropped");
            }
        }
    }
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
fn lines(batch: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in batch {
        if serde_json::to_writer(&mut out, r).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

async fn deliver(
    mut rx: mpsc::Receiver<Value>,
    target: Target,
    config: Config,
    metrics: Arc<Metrics>,
) {
    let client = match &target {
        Target::Http(_) => reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .ok(),
        _ => None,
    };
    let mut file = match &target {
        Target::File(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(mut f) => {
                // a record cut short by an earlier crash stays a line of its own
                let ends_cleanly = last_byte(p).is_none_or(|b| b == b'\n');
                if !ends_cleanly {
                    let _ = f.write_all(b"\n");
                }
                Some(f)
            }
            Err(e) => {
                tracing::error!(path = %p.display(), error = %e, "cannot open the audit file");
                None
            }
        },
        _ => None,
    };
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < config.batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        match &target {
            // one write per batch: readers never see half a record, and a record cut short by
            // a crash cannot merge with the next process's first one
            Target::Stdout => {
                let _ = std::io::stdout().lock().write_all(&lines(&batch));
            }
            Target::File(_) => {
                if let Some(f) = file.as_mut()
                    && let Err(e) = f.write_all(&lines(&batch)).and_then(|()| f.flush())
                {
                    tracing::error!(error = %e, "cannot write the audit file");
                }
            }
            Target::Http(url) => {
                if let Some(c) = &client {
                    post_until_accepted(c, url, &batch, config.max_backoff).await;
                }
            }
        }
        metrics.audit_delivered.inc_by(batch.len() as u64);
        batch.clear();
    }
}

async fn post_until_accepted(client: &reqwest::Client, url: &str, batch: &[Value], max: Duration) {
    let endpoint = format!("{url}/api/v1/audit/events/batch");
    let mut wait = Duration::from_millis(100);
    loop {
        match client.post(&endpoint).json(&batch).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                // the receiver rejects the records themselves: retrying cannot help
                tracing::error!(status = %r.status(), "audit endpoint rejected a batch of {}", batch.len());
                return;
            }
            Ok(r) => tracing::warn!(status = %r.status(), "audit endpoint unavailable; retrying"),
            Err(e) => tracing::warn!(error = %e, "audit endpoint unreachable; retrying"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn records_reach_a_file_and_a_full_buffer_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Arc::new(Metrics::new());
        let sink = AuditSink::start(
            Config {
                targets: vec![Target::File(path.clone())],
                ..Config::default()
            },
            metrics.clone(),
        );
        sink.send(serde_json::json!({"event_id": "a"}));
        sink.send(serde_json::json!({"event_id": "b"}));
        for _ in 0..100 {
            if metrics.audit_delivered.get() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("\"event_id\":\"b\""));

        // a sink whose buffer holds one record and whose endpoint never answers
        let stuck = AuditSink::start(
            Config {
                targets: vec![Target::Http("http://127.0.0.1:9".into())],
                buffer: 1,
                ..Config::default()
            },
            metrics.clone(),
        );
        for i in 0..10 {
            stuck.send(serde_json::json!({"event_id": i}));
        }
        assert!(
            metrics.audit_dropped.get() >= 8,
            "{}",
            metrics.audit_dropped.get()
        );
    }
}
