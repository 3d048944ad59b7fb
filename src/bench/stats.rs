//! Latency histograms (µs, HdrHistogram) and per-second series, in a form that load children
//! send to the parent as JSON and the parent merges.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded, µs (values above are clamped): 10 minutes.
const MAX_US: u64 = 600_000_000;

/// A latency histogram in µs with 3 significant digits.
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_US, 3).expect("static bounds are valid"))
    }
}

impl Hist {
    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, MAX_US));
    }
    pub fn merge(&mut self, other: &Hist) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }
    pub fn count(&self) -> u64 {
        self.0.len()
    }
    /// The value at quantile `q` (0..=1), µs.
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }
    pub fn max_us(&self) -> u64 {
        self.0.max()
    }
    pub fn mean_us(&self) -> f64 {
        self.0.mean()
    }
    /// Points of the cumulative distribution: (µs, fraction at or below).
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        let n = self.count().max(1) as f64;
        let mut acc = 0u64;
        self.0
            .iter_recorded()
            .map(|v| {
                acc += v.count_at_value();
                (self.0.highest_equivalent(v.value_iterated_to()) as f64, acc as f64 / n)
            })
            .collect()
    }
    /// Sparse (value, count) pairs, for JSON.
    pub fn to_wire(&self) -> Vec<(u64, u64)> {
        self.0.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
    }
    pub fn from_wire(pairs: &[(u64, u64)]) -> Self {
        let mut h = Self::default();
        for &(v, c) in pairs {
            let _ = h.0.record_n(v.clamp(1, MAX_US), c);
        }
        h
    }
    /// p50, p90, p99, p99.9 and max in ms, for reports.
    pub fn summary(&self) -> Summary {
        let ms = |v: u64| v as f64 / 1000.0;
        Summary {
            count: self.count(),
            mean_ms: self.mean_us() / 1000.0,
            p50_ms: ms(self.quantile_us(0.5)),
            p90_ms: ms(self.quantile_us(0.9)),
            p99_ms: ms(self.quantile_us(0.99)),
            p999_ms: ms(self.quantile_us(0.999)),
            max_ms: ms(self.max_us()),
        }
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_wire().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from_wire(&Vec::<(u64, u64)>::deserialize(d)?))
    }
}

/// Quantiles of one latency, in ms.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Named latency histograms (e.g. `ack`, `turn_started`, `first_delta`, `gap`).
pub type Hists = BTreeMap<String, Hist>;

/// Adds every histogram of `from` into `into`.
pub fn merge_hists(into: &mut Hists, from: &Hists) {
    for (k, h) in from {
        into.entry(k.clone()).or_default().merge(h);
    }
}

/// One second of a run: completed turns, delivered frames, and the main latency's histogram.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Second {
    pub turns: u64,
    pub frames: u64,
    pub latency: Hist,
}

/// Seconds since the run's common start (a Unix time every process shares), capped so a
/// long soak stays bounded in memory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Series(pub BTreeMap<u64, Second>);

/// Longest series kept, in seconds (a soak of an hour fits).
const MAX_SECONDS: u64 = 4 * 3600;

impl Series {
    pub fn at(&mut self, second: u64) -> &mut Second {
        self.0.entry(second.min(MAX_SECONDS)).or_default()
    }
    pub fn merge(&mut self, other: &Series) {
        for (s, v) in &other.0 {
            let e = self.at(*s);
            e.turns += v.turns;
            e.frames += v.frames;
            e.latency.merge(&v.latency);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_survives_the_wire_and_merges() {
        let mut h = Hist::default();
        for v in 1..=1000 {
            h.record(v);
        }
        let back: Hist = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back.count(), 1000);
        let mut m = back.clone();
        m.merge(&back);
        assert_eq!(m.count(), 2000);
        assert!((m.quantile_us(0.5) as i64 - 500).abs() <= 1);
        assert_eq!(m.cdf().last().unwrap().1, 1.0);
    }
}
