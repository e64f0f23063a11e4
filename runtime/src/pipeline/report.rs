//! What a run counts and reports: the counters every stage bumps, the allocation tallies, and
//! the [`RunReport`] built from them (logged every interval, written as JSONL, returned at the
//! end, served on `/metrics`).

use crate::alloc_count;
use crate::live::{Counters, LiveMetrics};
use crate::metrics::{STAGES, StageSummary};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Allocation counts per frame after warm-up, by where they happened.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AllocReport {
    /// False when no counting allocator is installed (numbers are then meaningless).
    pub measured: bool,
    /// Capture thread: source read and decode, queueing.
    pub capture_per_frame: f64,
    /// Inference thread outside the backend's network call: dequeue, preprocess,
    /// postprocess, hand-over to sinks.
    pub inference_own_per_frame: f64,
    /// The backend's network call (tract for the CPU backend), measured separately.
    pub backend_per_frame: f64,
    /// Sink thread: writing results.
    pub sink_per_frame: f64,
    /// Frames the inference numbers are averaged over (those after warm-up).
    pub frames_counted: u64,
    /// Device (GPU) allocations the backend made after warm-up, in total (`None`: the
    /// backend allocates no device memory).
    pub device_after_warmup: Option<u64>,
}

/// The inference thread's own allocation tallies (the other threads keep theirs in
/// [`Counters`]).
#[derive(Default, Clone, Copy)]
pub struct InferenceAllocs {
    pub own: u64,
    pub backend: u64,
    pub frames: u64,
    pub device: Option<u64>,
}

impl AllocReport {
    pub fn new(c: &Counters, i: InferenceAllocs) -> AllocReport {
        let per = |a: u64, n: u64| if n == 0 { 0.0 } else { a as f64 / n as f64 };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AllocReport {
            measured: alloc_count::is_active(),
            capture_per_frame: per(load(&c.capture_allocs), load(&c.capture_counted)),
            inference_own_per_frame: per(i.own, i.frames),
            backend_per_frame: per(i.backend, i.frames),
            sink_per_frame: per(load(&c.sink_allocs), load(&c.sink_counted)),
            frames_counted: i.frames,
            device_after_warmup: i.device,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub source: String,
    pub backend: String,
    pub elapsed_s: f64,
    pub frames_captured: u64,
    pub frames_processed: u64,
    pub frames_dropped: u64,
    pub source_errors: u64,
    /// Times a live source (camera, RTSP stream) was lost, and came back.
    pub camera_lost: u64,
    pub camera_back: u64,
    pub inference_errors: u64,
    pub sink_written: u64,
    pub sink_dropped: u64,
    pub sink_errors: u64,
    pub calibration_reloads: u64,
    pub calibration_errors: u64,
    /// Model updates from a bundle store: swapped in, rolled back after a failed trial,
    /// refused before they ran (verification, load or self-test failed).
    pub model_swaps: u64,
    pub model_rollbacks: u64,
    pub model_updates_refused: u64,
    /// Live-viewer messages dropped because the viewer was behind (frames never are).
    pub viewer_dropped: u64,
    pub fps: f64,
    pub stages: BTreeMap<&'static str, StageSummary>,
    pub allocations: AllocReport,
    /// Resident memory after warm-up and at the end, in KiB (Linux; 0 elsewhere).
    pub rss_kib_after_warmup: u64,
    pub rss_kib_end: u64,
    /// Why the run ended: "end of stream", "max frames", "duration", "signal SIGTERM" /
    /// "signal SIGINT", "source failed: ...".
    pub ended_by: String,
}

/// What stays the same in every report of a run.
pub struct ReportContext {
    pub source: String,
    pub backend: String,
    pub live: Arc<LiveMetrics>,
}

impl ReportContext {
    pub fn report(
        &self,
        elapsed_s: f64,
        allocations: AllocReport,
        rss_kib_after_warmup: u64,
        ended_by: String,
    ) -> RunReport {
        let hist = self.live.histograms();
        let stages = STAGES
            .iter()
            .map(|&(s, name)| (name, hist.get(s).summary()))
            .collect();
        let c = &self.live.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let processed = load(&c.processed);
        RunReport {
            source: self.source.clone(),
            backend: self.backend.clone(),
            elapsed_s,
            frames_captured: load(&c.captured),
            frames_processed: processed,
            frames_dropped: load(&c.dropped),
            source_errors: load(&c.source_errors),
            camera_lost: load(&c.camera_lost),
            camera_back: load(&c.camera_back),
            inference_errors: load(&c.infer_errors),
            sink_written: load(&c.sink_written),
            sink_dropped: load(&c.sink_dropped),
            sink_errors: load(&c.sink_errors),
            calibration_reloads: load(&c.calib_reloads),
            calibration_errors: load(&c.calib_errors),
            model_swaps: load(&c.model_swaps),
            model_rollbacks: load(&c.model_rollbacks),
            model_updates_refused: load(&c.model_refused),
            viewer_dropped: load(&c.viewer_dropped),
            fps: if elapsed_s > 0.0 {
                processed as f64 / elapsed_s
            } else {
                0.0
            },
            stages,
            allocations,
            rss_kib_after_warmup,
            rss_kib_end: rss_kib(),
            ended_by,
        }
    }
}

impl RunReport {
    /// The one-line summary logged every interval and at the end.
    pub fn line(&self) -> String {
        let fmt = |k: &str| {
            self.stages
                .get(k)
                .map(|v| {
                    format!(
                        "{k} p50 {:.2} p99 {:.2} max {:.2} ms",
                        v.p50_ms, v.p99_ms, v.max_ms
                    )
                })
                .unwrap_or_default()
        };
        let camera = if self.camera_lost + self.camera_back > 0 {
            format!(
                " (camera lost {} back {})",
                self.camera_lost, self.camera_back
            )
        } else {
            String::new()
        };
        format!(
            "frames {} ({:.1} fps), drops {}, source errors {}{camera}, inference errors {}, sink dropped {} errors {} | {} | {} | {}",
            self.frames_processed,
            self.fps,
            self.frames_dropped,
            self.source_errors,
            self.inference_errors,
            self.sink_dropped,
            self.sink_errors,
            fmt("preprocess"),
            fmt("inference"),
            fmt("end_to_end"),
        )
    }
}

/// Periodic metrics lines (JSONL), when the user asked for a file.
pub struct MetricsFile(Option<std::io::BufWriter<std::fs::File>>);

impl MetricsFile {
    pub fn create(path: Option<&std::path::Path>) -> anyhow::Result<MetricsFile> {
        Ok(MetricsFile(match path {
            Some(p) => Some(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", p.display()))?,
            )),
            None => None,
        }))
    }

    pub fn write(&mut self, r: &RunReport) {
        if let Some(m) = self.0.as_mut() {
            let _ = serde_json::to_writer(&mut *m, r);
            let _ = writeln!(m);
            let _ = m.flush();
        }
    }
}

pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|pages| pages * 4)
        .unwrap_or(0)
}
