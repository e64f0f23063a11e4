//! What a run counts while it goes on, shared by every stage and by the observers that read
//! it live (the sinks' metrics channel, `/metrics`, the live view): counters and the
//! per-stage latency histograms. The pipeline owns one; the report is made from it.

use crate::metrics::{Histogram, Stage, StageHistograms};
use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by the stages (and read by the metrics endpoint while the run goes on).
#[derive(Default)]
pub struct Counters {
    pub captured: AtomicU64,
    pub dropped: AtomicU64,
    pub source_errors: AtomicU64,
    /// A live source's losses and returns (mirrored from [`crate::source::FrameSource::link`]).
    pub camera_lost: AtomicU64,
    pub camera_back: AtomicU64,
    pub processed: AtomicU64,
    pub infer_errors: AtomicU64,
    pub sink_written: AtomicU64,
    pub sink_dropped: AtomicU64,
    pub sink_errors: AtomicU64,
    pub calib_reloads: AtomicU64,
    pub calib_errors: AtomicU64,
    pub model_swaps: AtomicU64,
    pub model_rollbacks: AtomicU64,
    pub model_refused: AtomicU64,
    /// Messages a live viewer (or another best-effort observer) could not take in time.
    pub viewer_dropped: AtomicU64,
    pub capture_allocs: AtomicU64,
    pub capture_counted: AtomicU64,
    pub sink_allocs: AtomicU64,
    pub sink_counted: AtomicU64,
}

impl Counters {
    pub fn bump(c: &AtomicU64) -> u64 {
        c.fetch_add(1, Ordering::Relaxed)
    }

    /// The counters a viewer of the run shows (the MCAP sink's `/bevrt/metrics`), read now.
    pub fn snapshot(&self) -> CounterSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            frames_captured: load(&self.captured),
            frames_processed: load(&self.processed),
            frames_dropped: load(&self.dropped),
            source_errors: load(&self.source_errors),
            inference_errors: load(&self.infer_errors),
            sink_dropped: load(&self.sink_dropped),
            sink_errors: load(&self.sink_errors),
            viewer_dropped: load(&self.viewer_dropped),
        }
    }
}

/// See [`Counters::snapshot`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CounterSnapshot {
    pub frames_captured: u64,
    pub frames_processed: u64,
    pub frames_dropped: u64,
    pub source_errors: u64,
    pub inference_errors: u64,
    pub sink_dropped: u64,
    pub sink_errors: u64,
    pub viewer_dropped: u64,
}

/// Everything a report is made of that lives across threads: counters and the per-stage
/// latency histograms (the inference thread records into `stages`, the sink thread into
/// `sink`; one uncontended lock per frame each).
#[derive(Default)]
pub struct LiveMetrics {
    pub counters: Counters,
    pub stages: Mutex<StageHistograms>,
    pub sink: Mutex<Histogram>,
    /// The running bundle's label and its manifest `expires` (Unix seconds), when it has one:
    /// `/metrics` says whether it has passed.
    pub model_expiry: Mutex<Option<(String, i64)>>,
}

impl std::fmt::Debug for LiveMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveMetrics")
    }
}

impl LiveMetrics {
    /// Record `bundle`'s expiry for `/metrics`; says loudly when it has already passed (the run
    /// goes on: a car must not lose its only model to a date).
    pub fn set_model_expiry(&self, bundle: &bevrt_models::Bundle) {
        let label = bundle.label();
        let exp = bundle.manifest.expires_unix();
        if let Some(t) = exp
            && bevrt_models::time::now_unix() > t
        {
            log::error!(
                "{label}: EXPIRED at {} — running it anyway; deploy a current bundle",
                bevrt_models::trust::show_time(t)
            );
        }
        *self.model_expiry.lock().unwrap_or_else(|p| p.into_inner()) = exp.map(|t| (label, t));
    }

    /// A copy of every stage's histogram, the sink's included.
    pub fn histograms(&self) -> StageHistograms {
        let mut h = self
            .stages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        h.h[Stage::Sink as usize] = self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
        h
    }
}
