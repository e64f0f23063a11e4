//! Fixed-size latency histograms and the run's counters.
//!
//! [`Histogram`] is log-linear (16 sub-buckets per power of two: values within 6.25 %), a
//! fixed array, so recording never allocates and memory does not grow with run length.

use serde::{Deserialize, Serialize};

const SUB: usize = 16;
const BUCKETS: usize = SUB * 60;

#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            max: 0,
            sum: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros() as usize; // >= 4
    let sub = ((v >> (e - 4)) & 15) as usize;
    ((e - 3) * SUB + sub).min(BUCKETS - 1)
}

/// Lower bound of a bucket.
fn bucket_floor(b: usize) -> u64 {
    if b < SUB {
        return b as u64;
    }
    let e = b / SUB + 3;
    let sub = (b % SUB) as u64;
    (16 + sub) << (e - 4)
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[bucket_of(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
        self.sum += v as u128;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// Value at quantile `q` in [0, 1]: the middle of its bucket, never above the maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let lo = bucket_floor(b);
                let hi = bucket_floor(b + 1);
                return ((lo + hi) / 2).min(self.max).max(lo.min(self.max));
            }
        }
        self.max
    }

    /// Values recorded at or below `v` (bucket precision: a bucket counts when it lies wholly
    /// at or below `v`), for Prometheus's cumulative buckets.
    pub fn count_at_most(&self, v: u64) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .take_while(|&(b, _)| bucket_floor(b + 1) <= v.saturating_add(1))
            .map(|(_, &c)| c)
            .sum()
    }

    /// Sum of every recorded value.
    pub fn sum(&self) -> u128 {
        self.sum
    }

    /// The non-empty buckets and totals, to write a histogram out and merge it elsewhere.
    pub fn to_counts(&self) -> HistogramCounts {
        HistogramCounts {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(b, &c)| (b as u32, c))
                .collect(),
            total: self.total,
            max: self.max,
            sum: self.sum.min(u64::MAX as u128) as u64,
        }
    }

    /// A histogram back from [`Histogram::to_counts`]; refused when the counts are not one.
    pub fn from_counts(c: &HistogramCounts) -> Result<Histogram, String> {
        let mut h = Histogram::default();
        for &(b, n) in &c.buckets {
            let slot = h
                .counts
                .get_mut(b as usize)
                .ok_or_else(|| format!("histogram bucket {b} out of range"))?;
            *slot += n;
        }
        if h.counts.iter().sum::<u64>() != c.total {
            return Err("histogram buckets do not add up to its total".into());
        }
        h.total = c.total;
        h.max = c.max;
        h.sum = c.sum as u128;
        Ok(h)
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.total += o.total;
        self.max = self.max.max(o.max);
        self.sum += o.sum;
    }

    pub fn summary(&self) -> StageSummary {
        StageSummary {
            count: self.total,
            mean_ms: self.mean() / 1e6,
            p50_ms: self.quantile(0.5) as f64 / 1e6,
            p99_ms: self.quantile(0.99) as f64 / 1e6,
            max_ms: self.max as f64 / 1e6,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct StageSummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Pipeline stages with their own histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// From the source handing the frame over to inference taking it (queue wait).
    CaptureToReady = 0,
    Preprocess = 1,
    Inference = 2,
    Postprocess = 3,
    Sink = 4,
    /// Source hand-over to postprocess done.
    EndToEnd = 5,
    /// The frame's own capture timestamp to postprocess done: only for sources stamping on
    /// CLOCK_MONOTONIC (live GStreamer pipelines: the buffer's clock time), so it includes
    /// network, jitter buffer and decode.
    StreamToMap = 6,
}

pub const STAGES: [(Stage, &str); 7] = [
    (Stage::CaptureToReady, "capture_to_ready"),
    (Stage::Preprocess, "preprocess"),
    (Stage::Inference, "inference"),
    (Stage::Postprocess, "postprocess"),
    (Stage::Sink, "sink"),
    (Stage::EndToEnd, "end_to_end"),
    (Stage::StreamToMap, "stream_to_map"),
];

/// A [`Histogram`] as data: (bucket, count) of the non-empty buckets (fixed log-linear bins),
/// the count, the largest value and the sum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramCounts {
    pub buckets: Vec<(u32, u64)>,
    pub total: u64,
    pub max: u64,
    pub sum: u64,
}

#[derive(Clone, Default)]
pub struct StageHistograms {
    pub h: [Histogram; 7],
}

impl StageHistograms {
    pub fn record(&mut self, s: Stage, ns: u64) {
        self.h[s as usize].record(ns);
    }
    pub fn get(&self, s: Stage) -> &Histogram {
        &self.h[s as usize]
    }
}

/// Now on CLOCK_MONOTONIC in nanoseconds: the clock GStreamer's system clock and V4L2
/// timestamps use.
pub fn monotonic_clock_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_bucket_precision() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.07, "{p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.07, "{p99}");
        assert_eq!(h.max(), 10_000_000);
        assert!(h.quantile(1.0) <= h.max());
    }

    #[test]
    fn buckets_are_monotonic() {
        let mut last = 0;
        for v in (0..1_000_000u64).step_by(997) {
            let b = bucket_of(v);
            assert!(b >= last);
            assert!(bucket_floor(b) <= v && v < bucket_floor(b + 1).max(v + 1));
            last = b;
        }
    }
}
