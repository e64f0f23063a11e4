//! The inference stage, on the thread that called [`super::run`]: between frames it applies
//! calibration changes and model updates; per frame it runs preprocess → network →
//! postprocess, records latencies and allocations, and hands the result to the sink stage by
//! swapping pooled results (a slow sink loses sink work, counted, never frames).

use super::pools::{Pools, WARMUP_FRAMES};
use crate::alloc_count;
use crate::backend::Backend;
use crate::frame::Frame;
use crate::live::{Counters, LiveMetrics};
use crate::metrics::Stage;
use crate::pipeline::report::InferenceAllocs;
use crate::postprocess::FrameResult;
use crate::supervisor::{ModelUpdates, UpdateEvent};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct InferenceStage {
    pub backend: Box<dyn Backend>,
    pub updates: Option<Box<dyn ModelUpdates>>,
    pub pools: Arc<Pools>,
    pub live: Arc<LiveMetrics>,
    /// The result being filled; swapped with a free one at hand-over.
    working: Box<FrameResult>,
    /// Copy the camera frame into each result (for sinks that show it).
    keep_camera_image: bool,
    calibration: Option<CalibrationWatch>,
    /// The camera pose the stream last asked for (a bag's `/tf`), applied or refused.
    stream_pose: Option<bevrt_calib::Extrinsics>,
    /// When frames started flowing (after load), for rates and `--duration`.
    pub started: Instant,
    pub processed: u64,
    pub allocs: InferenceAllocs,
    pub rss_after_warmup: u64,
    device_at_warmup: Option<u64>,
}

/// The calibration file and the modification time last applied; polled every 250 ms.
struct CalibrationWatch {
    path: PathBuf,
    seen: Option<std::time::SystemTime>,
    last_check: Instant,
}

/// Latencies of one frame, in nanoseconds.
#[derive(Default, Clone, Copy)]
struct FrameTimes {
    queue: u64,
    preprocess: u64,
    inference: u64,
    postprocess: u64,
    /// Allocations inside the backend's network call.
    backend_allocs: u64,
}

impl InferenceStage {
    pub fn new(
        backend: Box<dyn Backend>,
        updates: Option<Box<dyn ModelUpdates>>,
        pools: Arc<Pools>,
        live: Arc<LiveMetrics>,
        working: FrameResult,
        opts: &super::options::PipelineOptions,
    ) -> InferenceStage {
        InferenceStage {
            backend,
            updates,
            pools,
            live,
            working: Box::new(working),
            keep_camera_image: opts.keep_camera_image,
            calibration: opts.calibration.as_ref().map(|p| CalibrationWatch {
                seen: mtime(p),
                path: p.clone(),
                last_check: Instant::now(),
            }),
            stream_pose: None,
            started: Instant::now(),
            processed: 0,
            allocs: InferenceAllocs::default(),
            rss_after_warmup: 0,
            device_at_warmup: None,
        }
    }

    /// Calibration changes and model updates: applied between frames, never during one.
    pub fn between_frames(&mut self) {
        self.apply_calibration_change();
        self.apply_model_update();
    }

    fn apply_calibration_change(&mut self) {
        let Some(w) = self.calibration.as_mut() else {
            return;
        };
        if w.last_check.elapsed() < Duration::from_millis(250) {
            return;
        }
        w.last_check = Instant::now();
        let now = mtime(&w.path);
        if now == w.seen || now.is_none() {
            return;
        }
        w.seen = now;
        let c = &self.live.counters;
        match self.backend.set_calibration(&w.path) {
            Ok(msg) => {
                Counters::bump(&c.calib_reloads);
                log::info!("calibration reloaded: {msg}");
            }
            Err(e) => {
                Counters::bump(&c.calib_errors);
                log::error!("calibration not applied, keeping the previous one: {e:#}");
            }
        }
    }

    fn apply_model_update(&mut self) {
        let Some(u) = self.updates.as_mut() else {
            return;
        };
        let Some(event) = u.between_frames(&mut self.backend) else {
            return;
        };
        let c = &self.live.counters;
        match event {
            UpdateEvent::Swapped => {
                // the new backend starts from its own calibration: apply the stream's again
                self.stream_pose = None;
                Counters::bump(&c.model_swaps)
            }
            UpdateEvent::RolledBack => Counters::bump(&c.model_rollbacks),
            UpdateEvent::Refused => Counters::bump(&c.model_refused),
            UpdateEvent::Confirmed => 0,
        };
    }

    /// A frame whose camera pose differs from the one in use (the stream's `/tf` moved the
    /// camera): rebuild the geometry before the frame runs, counted like a calibration file
    /// change. A pose the geometry refuses is counted as an error and not retried.
    fn apply_stream_pose(&mut self, frame: &Frame) {
        let Some(pose) = frame.camera_pose else {
            return;
        };
        if self.stream_pose == Some(pose) {
            return;
        }
        self.stream_pose = Some(pose);
        let Some(mut c) = self.backend.calibration().cloned() else {
            return; // no camera geometry to move
        };
        if c.extrinsics.same_pose(&pose) {
            return;
        }
        c.extrinsics = pose;
        let counters = &self.live.counters;
        let origin = format!("camera pose from the stream at frame {}", frame.seq);
        match self.backend.apply_calibration(&c, &origin) {
            Ok(msg) => {
                Counters::bump(&counters.calib_reloads);
                log::info!("calibration changed: {msg}");
            }
            Err(e) => {
                Counters::bump(&counters.calib_errors);
                log::error!("camera pose not applied, keeping the previous one: {e:#}");
            }
        }
    }

    /// Run one frame and hand its result over; a failure is counted and logged.
    pub fn process(&mut self, frame: Box<Frame>) {
        self.apply_stream_pose(&frame);
        let a0 = alloc_count::thread_allocs();
        let mut t = FrameTimes {
            queue: frame
                .ready_at
                .map(|r| r.elapsed().as_nanos() as u64)
                .unwrap_or(0),
            ..FrameTimes::default()
        };
        let outcome = self.run_network(&frame, &mut t);
        if outcome.is_ok() && self.keep_camera_image {
            self.working.camera.copy_from(&frame);
        }
        let ready_at = frame.ready_at;
        let stamp = frame.stamped_monotonic.then_some(frame.timestamp_ns);
        let _ = self.pools.free_frames.try_push(frame);
        if let Some(u) = self.updates.as_mut() {
            u.frame_done(outcome.is_ok());
        }
        match outcome {
            Ok(()) => {
                self.record(&t, ready_at, stamp);
                self.hand_over();
                self.count_processed(alloc_count::thread_allocs() - a0, t.backend_allocs);
            }
            Err(e) => {
                let n = Counters::bump(&self.live.counters.infer_errors);
                if n < 10 || n.is_power_of_two() {
                    log::error!("frame failed, continuing: {e:#}");
                }
            }
        }
    }

    fn run_network(&mut self, frame: &Frame, t: &mut FrameTimes) -> anyhow::Result<()> {
        if !frame.is_consistent() {
            anyhow::bail!(
                "frame {}: {} bytes do not make a {}x{} {} frame",
                frame.seq,
                frame.data.len(),
                frame.width,
                frame.height,
                frame.format
            );
        }
        let backend = &mut self.backend;
        let t0 = Instant::now();
        guard(|| backend.preprocess(frame))?;
        let t1 = Instant::now();
        let b0 = alloc_count::thread_allocs();
        guard(|| backend.infer())?;
        t.backend_allocs = alloc_count::thread_allocs() - b0;
        let t2 = Instant::now();
        self.working.seq = frame.seq;
        self.working.timestamp_ns = frame.timestamp_ns;
        let working = &mut self.working;
        guard(|| backend.postprocess(working))?;
        let t3 = Instant::now();
        t.preprocess = (t1 - t0).as_nanos() as u64;
        t.inference = (t2 - t1).as_nanos() as u64;
        t.postprocess = (t3 - t2).as_nanos() as u64;
        Ok(())
    }

    fn record(&mut self, t: &FrameTimes, ready_at: Option<Instant>, stamp: Option<u64>) {
        let mut h = self.live.stages.lock().unwrap_or_else(|p| p.into_inner());
        h.record(Stage::CaptureToReady, t.queue);
        h.record(Stage::Preprocess, t.preprocess);
        h.record(Stage::Inference, t.inference);
        h.record(Stage::Postprocess, t.postprocess);
        if let Some(r) = ready_at {
            h.record(Stage::EndToEnd, r.elapsed().as_nanos() as u64);
        }
        if let Some(ts) = stamp {
            h.record(
                Stage::StreamToMap,
                crate::metrics::monotonic_clock_ns().saturating_sub(ts),
            );
        }
        self.working.stage_ns = [t.queue, t.preprocess, t.inference, t.postprocess];
    }

    /// Swap the finished result for a free one and queue it for the sinks, or drop the sink
    /// work when none is free or the queue is full.
    fn hand_over(&mut self) {
        let c = &self.live.counters;
        match self.pools.free_results.try_pop() {
            Some(next) => {
                let done = std::mem::replace(&mut self.working, next);
                if let Err(back) = self.pools.results.try_push(done) {
                    Counters::bump(&c.sink_dropped);
                    let _ = self.pools.free_results.try_push(back);
                }
            }
            None => {
                let n = Counters::bump(&c.sink_dropped);
                if n.is_power_of_two() {
                    log::warn!("sinks are behind: dropped sink work for {} frames", n + 1);
                }
            }
        }
    }

    fn count_processed(&mut self, allocs: u64, backend_allocs: u64) {
        self.processed += 1;
        Counters::bump(&self.live.counters.processed);
        if self.processed == WARMUP_FRAMES {
            self.rss_after_warmup = super::report::rss_kib();
            self.device_at_warmup = self.backend.device_allocations();
        }
        if self.processed > WARMUP_FRAMES {
            self.allocs.own += allocs - backend_allocs;
            self.allocs.backend += backend_allocs;
            self.allocs.frames += 1;
        }
    }

    /// The allocation tallies, with device allocations since warm-up (all of them before).
    pub fn alloc_tallies(&self) -> InferenceAllocs {
        let device = self
            .backend
            .device_allocations()
            .map(|now| now.saturating_sub(self.device_at_warmup.unwrap_or(now)));
        InferenceAllocs {
            device,
            ..self.allocs
        }
    }
}

fn guard<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => anyhow::bail!(
            "backend panicked: {}",
            crate::panics::panic_message(p.as_ref())
        ),
    }
}

fn mtime(p: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}
