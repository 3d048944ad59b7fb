//! Scraping `/metrics` of the spawned processes and reading Prometheus histograms from it, so
//! server-side stage timings (ack, queue wait, model TTFT, end-to-end TTFT) sit beside what the
//! clients measured. Buckets are coarse (see `metrics::install`); quantiles interpolate linearly
//! inside a bucket and are only as exact as the bucket edges, while the mean (sum / count) is
//! exact.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Time allowed for one scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest page read.
const MAX_PAGE: u64 = 8 * 1024 * 1024;

/// GETs `http://addr/metrics` (HTTP/1.0, read to the end).
pub async fn fetch(addr: SocketAddr) -> anyhow::Result<String> {
    let (status, body) = get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "{addr}/metrics answered {status}");
    Ok(body)
}

/// GETs `http://addr<path>` with HTTP/1.0 and returns the status and body.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(SCRAPE_TIMEOUT, async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut raw = Vec::new();
        s.take(MAX_PAGE).read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok::<_, std::io::Error>((status, body))
    })
    .await
    .with_context(|| format!("GET {addr}{path} timed out"))?
    .with_context(|| format!("GET {addr}{path} failed"))
}

/// One histogram summed over its label sets: cumulative counts by upper bound, sum, count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromHist {
    pub buckets: BTreeMap<u64, f64>,
    pub sum: f64,
    pub count: f64,
}

/// Bucket bounds are kept as integer nanoseconds (seconds × 1e9) so they can be map keys.
fn le_key(le: &str) -> Option<u64> {
    if le == "+Inf" {
        return Some(u64::MAX);
    }
    le.parse::<f64>().ok().map(|v| (v * 1e9).round() as u64)
}

/// Reads histogram `name` from an exposition page (all label sets added up).
pub fn histogram(page: &str, name: &str) -> PromHist {
    let mut h = PromHist::default();
    for line in page.lines().filter(|l| l.starts_with(name)) {
        let Some((head, value)) = line.rsplit_once(' ') else { continue };
        let Ok(v) = value.parse::<f64>() else { continue };
        let (metric, labels) = head.split_once('{').unwrap_or((head, ""));
        match metric.strip_prefix(name) {
            Some("_bucket") => {
                let le = labels.split("le=\"").nth(1).and_then(|r| r.split('"').next()).and_then(le_key);
                if let Some(le) = le {
                    *h.buckets.entry(le).or_default() += v;
                }
            }
            Some("_sum") => h.sum += v,
            Some("_count") => h.count += v,
            _ => {}
        }
    }
    h
}

/// A counter or gauge (all label sets added up).
pub fn value(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

impl PromHist {
    /// What was observed between `before` and `self`.
    pub fn since(&self, before: &PromHist) -> PromHist {
        let buckets =
            self.buckets.iter().map(|(k, v)| (*k, v - before.buckets.get(k).copied().unwrap_or(0.0))).collect();
        PromHist { buckets, sum: self.sum - before.sum, count: self.count - before.count }
    }

    /// The quantile `q` in seconds, interpolated inside its bucket (Prometheus'
    /// `histogram_quantile` rule); `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q * self.count;
        let mut prev_le = 0.0;
        let mut prev_count = 0.0;
        for (&le, &c) in &self.buckets {
            let le_s = if le == u64::MAX { f64::INFINITY } else { le as f64 / 1e9 };
            if c >= rank {
                if le_s.is_infinite() {
                    return Some(prev_le);
                }
                let in_bucket = (c - prev_count).max(f64::MIN_POSITIVE);
                return Some(prev_le + (le_s - prev_le) * ((rank - prev_count) / in_bucket));
            }
            prev_le = le_s;
            prev_count = c;
        }
        Some(prev_le)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    pub fn stage(&self) -> Stage {
        let ms = |v: Option<f64>| v.map(|s| s * 1000.0);
        Stage {
            count: self.count as u64,
            mean_ms: ms(self.mean()),
            p50_ms: ms(self.quantile(0.5)),
            p99_ms: ms(self.quantile(0.99)),
        }
    }
}

/// A server-side stage for reports, in ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stage {
    pub count: u64,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# TYPE x_seconds histogram
x_seconds_bucket{le=\"0.001\"} 50
x_seconds_bucket{le=\"0.002\"} 100
x_seconds_bucket{le=\"+Inf\"} 100
x_seconds_sum 0.1
x_seconds_count 100
y_total{code=\"a\"} 2
y_total{code=\"b\"} 3
";

    #[test]
    fn histograms_and_counters_are_read_and_interpolated() {
        let h = histogram(PAGE, "x_seconds");
        assert_eq!(h.count, 100.0);
        assert!((h.quantile(0.5).unwrap() - 0.001).abs() < 1e-9);
        assert!((h.quantile(0.75).unwrap() - 0.0015).abs() < 1e-9);
        assert!((h.mean().unwrap() - 0.001).abs() < 1e-9);
        assert_eq!(value(PAGE, "y_total"), 5.0);
        assert_eq!(h.since(&h).count, 0.0);
    }
}
