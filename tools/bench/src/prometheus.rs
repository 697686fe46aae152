//! Reading measurements: Prometheus text (the controller's `/metrics`, the apiserver's
//! `apiserver_request_total`), histogram growth between two scrapes, latency percentiles, and
//! the requests this harness makes itself (to tell the controller's apart).

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::Result;
use kube::Client;
use serde::Serialize;

/// Latency distribution in milliseconds (nearest-rank percentiles).
#[derive(Serialize, Clone, Debug)]
pub struct Stats {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

pub fn stats(mut v: Vec<f64>) -> Option<Stats> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some(Stats {
        count: v.len(),
        p50: rank(0.50),
        p95: rank(0.95),
        p99: rank(0.99),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    })
}

pub type Sample = (String, BTreeMap<String, String>, f64);

pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                (
                    &line[..open],
                    parse_labels(&line[open + 1..close]),
                    &line[close + 1..],
                )
            }
            None => match line.split_once(' ') {
                Some((n, r)) => (n, BTreeMap::new(), r),
                None => continue,
            },
        };
        if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
            out.push((name.to_string(), labels, v));
        }
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            chars.next();
            if c == '=' {
                break;
            }
            if c != ',' && c != ' ' {
                key.push(c);
            }
        }
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key, value);
    }
    out
}

pub fn metric_sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, _, v)| v)
        .sum()
}

/// Sums of a metric grouped by some labels, joined with `/`.
pub fn metric_by(samples: &[Sample], name: &str, keys: &[&str]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (n, labels, v) in samples {
        if n == name {
            let k = keys
                .iter()
                .map(|k| labels.get(*k).cloned().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("/");
            *out.entry(k).or_insert(0.0) += v;
        }
    }
    out
}

pub fn delta(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

/// A histogram's count, sum and cumulative buckets.
#[derive(Default, Clone)]
pub struct Histogram {
    count: f64,
    sum: f64,
    buckets: Vec<(f64, f64)>,
}

pub fn histogram(samples: &[Sample], name: &str) -> Histogram {
    let mut h = Histogram {
        count: metric_sum(samples, &format!("{name}_count")),
        sum: metric_sum(samples, &format!("{name}_sum")),
        buckets: Vec::new(),
    };
    for (n, labels, v) in samples {
        if n == &format!("{name}_bucket")
            && let Some(le) = labels.get("le")
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            h.buckets.push((le, *v));
        }
    }
    h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    h
}

/// Summary of a histogram's growth between two scrapes.
#[derive(Serialize, Clone, Debug, Default)]
pub struct HistogramDelta {
    pub count: f64,
    pub mean_ms: f64,
    /// Upper bound of the bucket holding the 99th percentile, in ms.
    pub p99_bucket_ms: Option<f64>,
}

pub fn histogram_delta(a: &Histogram, b: &Histogram) -> HistogramDelta {
    let count = b.count - a.count;
    let sum = b.sum - a.sum;
    let mut p99 = None;
    if count > 0.0 {
        for (le, v) in &b.buckets {
            let before = a
                .buckets
                .iter()
                .find(|(l, _)| l == le)
                .map(|x| x.1)
                .unwrap_or(0.0);
            if v - before >= 0.99 * count {
                p99 = Some(*le * 1000.0);
                break;
            }
        }
    }
    HistogramDelta {
        count,
        mean_ms: if count > 0.0 {
            sum / count * 1000.0
        } else {
            0.0
        },
        p99_bucket_ms: p99.filter(|v: &f64| v.is_finite()),
    }
}

// ------------------------------------------------------------------------------------------
// requests this harness makes, keyed as the apiserver's apiserver_request_total counts them

#[derive(Default)]
pub struct Requests(Mutex<BTreeMap<String, f64>>);

impl Requests {
    pub fn count(&self, verb: &str, resource: &str, subresource: &str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{verb}/{resource}/{subresource}"))
            .or_insert(0.0) += 1.0;
    }
    pub fn snapshot(&self) -> BTreeMap<String, f64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The apiserver's request counts (`verb/resource/subresource`, watches and lists left out) for
/// `resources` (plural names): those the controller works with, whose requests are attributed to
/// it once this harness's own are taken off.
pub async fn apiserver_requests(
    client: &Client,
    resources: &[&str],
) -> Result<BTreeMap<String, f64>> {
    let req = kube::core::Request::new("").get("metrics", &Default::default())?;
    let text = client.request_text(req).await?;
    let samples: Vec<Sample> = parse_metrics(&text)
        .into_iter()
        .filter(|(n, l, _)| {
            n == "apiserver_request_total"
                && resources.contains(&l.get("resource").map(String::as_str).unwrap_or(""))
                && !matches!(l.get("verb").map(String::as_str), Some("WATCH" | "LIST"))
        })
        .collect();
    Ok(metric_by(
        &samples,
        "apiserver_request_total",
        &["verb", "resource", "subresource"],
    ))
}
