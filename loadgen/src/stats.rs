//! Latency histogram, error tallies and the small helpers for the JSON
//! reports.

use std::{collections::BTreeMap, io, time::Duration};

use serde::Serialize;

use crate::sys;

/// Values below this are counted exactly (one bucket per nanosecond).
const LINEAR: u64 = 64;
/// Sub-buckets per power of two above that: 1/32 = ~3 % relative error.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Exponent of LINEAR (2^6).
const FIRST_EXP: u32 = 6;
const BUCKETS: usize = LINEAR as usize + (64 - FIRST_EXP as usize) * SUB;

/// A log-linear latency histogram (like HDR histograms with 5 significant
/// bits): fixed size, no allocation per sample, mergeable across threads.
/// Values are nanoseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    sum_ns: u128,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= FIRST_EXP
    let sub = ((v >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    LINEAR as usize + (exp - FIRST_EXP) as usize * SUB + sub
}

/// Smallest and largest value that land in bucket `b`.
fn bucket_range(b: usize) -> (u64, u64) {
    if b < LINEAR as usize {
        return (b as u64, b as u64);
    }
    let exp = FIRST_EXP + ((b - LINEAR as usize) / SUB) as u32;
    let sub = ((b - LINEAR as usize) % SUB) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    let lo = (1u64 << exp) + sub * width;
    (lo, lo.saturating_add(width - 1))
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(ns)] += 1;
        self.total += 1;
        self.sum_ns += u128::from(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The value at quantile `q` (0..=1) in nanoseconds: the middle of the
    /// bucket holding it, clamped to the exact maximum.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bucket_range(b);
                return (lo + (hi - lo) / 2).min(self.max_ns);
            }
        }
        self.max_ns
    }

    pub fn summary(&self) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            samples: self.total,
            mean_us: if self.total == 0 {
                0.0
            } else {
                round3(self.sum_ns as f64 / self.total as f64 / 1000.0)
            },
            p50_us: round3(us(self.quantile_ns(0.50))),
            p90_us: round3(us(self.quantile_ns(0.90))),
            p99_us: round3(us(self.quantile_ns(0.99))),
            p999_us: round3(us(self.quantile_ns(0.999))),
            max_us: round3(us(self.max_ns)),
        }
    }
}

/// Latency percentiles in microseconds (~3 % resolution).
#[derive(Serialize, Clone, Debug, Default)]
pub struct LatencySummary {
    pub samples: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Failures by cause ("ECONNREFUSED", "timeout", ...), for the JSON.
#[derive(Serialize, Clone, Debug, Default)]
#[serde(transparent)]
pub struct ErrorCounts(BTreeMap<String, u64>);

impl ErrorCounts {
    pub fn add_io(&mut self, err: &io::Error) {
        self.add_name(sys::error_name(err));
    }

    pub fn add(&mut self, name: &str) {
        // Looking up by &str first avoids allocating a key on every repeat.
        if let Some(n) = self.0.get_mut(name) {
            *n += 1;
        } else {
            self.0.insert(name.to_string(), 1);
        }
    }

    fn add_name(&mut self, name: String) {
        *self.0.entry(name).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        for (k, v) in &other.0 {
            *self.0.entry(k.clone()).or_insert(0) += v;
        }
    }
}

/// Rounds for readable JSON (3 decimals).
pub fn round3(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

/// `count / secs`, 0 for an empty window.
pub fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        round3(count as f64 / secs)
    } else {
        0.0
    }
}

/// Bytes over seconds as Gbit/s.
pub fn gbit_per_sec(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        round3(bytes as f64 * 8.0 / secs / 1e9)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_their_values() {
        for v in [0u64, 1, 63, 64, 65, 100, 1000, 12_345, 1 << 40, u64::MAX] {
            let (lo, hi) = bucket_range(bucket_of(v));
            assert!(lo <= v && v <= hi, "{v} not in [{lo}, {hi}]");
        }
        assert!(bucket_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_are_within_three_percent() {
        let mut h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.samples, 1000);
        assert!((s.p50_us - 500.0).abs() / 500.0 < 0.03, "{s:?}");
        assert!((s.p99_us - 990.0).abs() / 990.0 < 0.03, "{s:?}");
        assert_eq!(s.max_us, 1000.0);
        assert!((s.mean_us - 500.5).abs() < 0.01);
    }

    #[test]
    fn merge_adds_up() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(20));
        a.merge(&b);
        assert_eq!(a.summary().samples, 2);
        assert!(a.summary().max_us >= 20.0);
        assert_eq!(Histogram::default().summary().p99_us, 0.0);
    }

    #[test]
    fn error_counts_merge() {
        let mut a = ErrorCounts::default();
        a.add("timeout");
        a.add_io(&io::Error::from_raw_os_error(libc::ECONNREFUSED));
        let mut b = ErrorCounts::default();
        b.add("timeout");
        a.merge(&b);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["timeout"], 2);
        assert_eq!(json["ECONNREFUSED"], 1);
    }
}
