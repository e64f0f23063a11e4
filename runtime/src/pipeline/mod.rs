//! The pipeline: capture stage → bounded queue → inference stage → bounded queue → sink
//! stage, each with its own small type ([`capture`], [`inference`], [`sinks`]); this file only
//! builds the pools and wires the stages. It owns threads, queues and buffers only; models
//! live in the backend, pixels come from the source.
//!
//! Buffers are allocated at start: a fixed pool of frames and of results circulates between
//! the threads through fixed-capacity queues. A live source that outpaces inference loses its
//! oldest queued frame (counted as a drop); an unpaced file source waits instead. A slow sink
//! loses sink work (counted), never frames. A bad frame, a failed inference or a failed sink
//! write is counted and logged, and the pipeline goes on. A new source is a
//! [`crate::source::FrameSource`], a new sink a [`crate::sink::Sink`]: neither touches this
//! loop.

mod capture;
mod inference;
pub mod report;
mod sinks;

use crate::backend::Backend;
use crate::frame::Frame;
use crate::postprocess::FrameResult;
use crate::queue::{BoundedQueue, Pop};
use crate::sink::Sink;
use crate::source::FrameSource;
use crate::supervisor::ModelUpdates;
pub use report::{AllocReport, LiveMetrics, RunReport, rss_kib};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Frames that may wait between capture and inference.
pub const FRAME_QUEUE: usize = 4;
/// Results that may wait for the sinks.
pub const RESULT_QUEUE: usize = 8;
/// Frames excluded from allocation counting while buffers settle.
pub const WARMUP_FRAMES: u64 = 10;

#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Stop after this many processed frames.
    pub max_frames: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Log a progress line (and a metrics JSONL line) this often.
    pub report_every: Duration,
    /// Calibration file to watch; a change is applied between frames.
    pub calibration: Option<PathBuf>,
    /// Fault injection for HIL tests: sleep this long in every sink write.
    pub sink_delay: Duration,
    /// Fault injection for soak tests: every `.0`, one sink write stalls for `.1`.
    pub sink_stall: Option<(Duration, Duration)>,
    /// Where periodic metrics lines go (besides the log).
    pub metrics_out: Option<PathBuf>,
    /// Copy each camera frame into its result, for sinks that show it (MCAP, live view).
    pub keep_camera_image: bool,
    /// Shared with observers outside the run (the metrics endpoint); a fresh one if `None`.
    pub live: Option<Arc<LiveMetrics>>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            max_frames: None,
            duration: None,
            report_every: Duration::from_secs(5),
            calibration: None,
            sink_delay: Duration::ZERO,
            sink_stall: None,
            metrics_out: None,
            keep_camera_image: false,
            live: None,
        }
    }
}

/// The fixed pools and queues the stages pass frames and results through.
pub struct Pools {
    /// Captured frames waiting for inference.
    pub frames: BoundedQueue<Box<Frame>, FRAME_QUEUE>,
    pub free_frames: BoundedQueue<Box<Frame>, { FRAME_QUEUE + 2 }>,
    /// Results waiting for the sinks.
    pub results: BoundedQueue<Box<FrameResult>, RESULT_QUEUE>,
    pub free_results: BoundedQueue<Box<FrameResult>, RESULT_QUEUE>,
}

impl Pools {
    /// Every frame and result the run will use, allocated now.
    fn allocate(frame_bytes: usize, template: &FrameResult) -> Pools {
        let p = Pools {
            frames: BoundedQueue::new(),
            free_frames: BoundedQueue::new(),
            results: BoundedQueue::new(),
            free_results: BoundedQueue::new(),
        };
        for _ in 0..FRAME_QUEUE + 2 {
            let _ = p
                .free_frames
                .try_push(Box::new(Frame::with_capacity(frame_bytes)));
        }
        for _ in 0..RESULT_QUEUE {
            // A clone drops spare capacity: reserve the camera copy's buffer again.
            let mut r = Box::new(template.clone());
            r.camera.reserve(template.camera.data.capacity());
            let _ = p.free_results.try_push(r);
        }
        p
    }

    /// Stop the capture stage (no frame is taken or queued any more).
    fn close_frames(&self) {
        self.frames.close();
        self.free_frames.close();
    }
}

/// Run `source` through `backend` into `sinks` until the stream ends or a limit is hit.
pub fn run(
    source: Box<dyn FrameSource>,
    backend: Box<dyn Backend>,
    sinks: Vec<Box<dyn Sink>>,
    opts: &PipelineOptions,
) -> anyhow::Result<RunReport> {
    run_supervised(source, backend, sinks, opts, None)
}

/// [`run`], with `updates` allowed to replace the backend between frames (a bundle store's
/// new or rolled-back bundle) and told how each frame went.
pub fn run_supervised(
    source: Box<dyn FrameSource>,
    mut backend: Box<dyn Backend>,
    sinks: Vec<Box<dyn Sink>>,
    opts: &PipelineOptions,
    updates: Option<Box<dyn ModelUpdates>>,
) -> anyhow::Result<RunReport> {
    let live = opts.live.clone().unwrap_or_default();
    let frame_bytes = source.max_frame_bytes().unwrap_or(1920 * 1080 * 3);
    let mut template = backend.new_result();
    if opts.keep_camera_image {
        template.camera.reserve(frame_bytes);
    }
    let pools = Arc::new(Pools::allocate(frame_bytes, &template));
    if let Some(p) = &opts.calibration {
        // The starting calibration must be valid; later changes may fail and are kept out.
        let msg = backend
            .set_calibration(p)
            .map_err(|e| anyhow::anyhow!("calibration {}: {e:#}", p.display()))?;
        log::info!("calibration: {msg}");
    }
    let ctx = report::ReportContext {
        source: source.describe(),
        backend: backend.describe(),
        live: live.clone(),
    };
    log::info!("source: {}", ctx.source);
    log::info!("backend: {}", ctx.backend);
    let stop = Arc::new(AtomicBool::new(false));
    let ended_by = Arc::new(Mutex::new(String::from("end of stream")));
    let capture = capture::CaptureStage {
        source,
        pools: pools.clone(),
        live: live.clone(),
        stop: stop.clone(),
        ended_by: ended_by.clone(),
    }
    .spawn()?;
    let sink_thread = sinks::SinkStage {
        sinks,
        pools: pools.clone(),
        live: live.clone(),
        faults: sinks::SinkFaults {
            delay: opts.sink_delay,
            stall: opts.sink_stall,
        },
    }
    .spawn()?;
    let mut stage =
        inference::InferenceStage::new(backend, updates, pools.clone(), live, template, opts);
    let mut metrics = report::MetricsFile::create(opts.metrics_out.as_deref())?;
    let ended = run_inference_loop(&mut stage, opts, &ctx, &mut metrics);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    pools.close_frames();
    let _ = capture.join();
    pools.results.close();
    let _ = sink_thread.join();
    let ended = ended.unwrap_or_else(|| ended_by.lock().unwrap_or_else(|p| p.into_inner()).clone());
    let r = ctx.report(
        stage_elapsed(&stage),
        AllocReport::new(&stage.live.counters, stage.alloc_tallies()),
        stage.rss_after_warmup,
        ended,
    );
    metrics.write(&r);
    Ok(r)
}

/// Frames through the inference stage until a limit is hit (`Some(why)`) or the capture
/// stage closes the queue (`None`: the capture stage says why).
fn run_inference_loop(
    stage: &mut inference::InferenceStage,
    opts: &PipelineOptions,
    ctx: &report::ReportContext,
    metrics: &mut report::MetricsFile,
) -> Option<String> {
    let mut last_report = Instant::now();
    loop {
        stage.between_frames();
        if last_report.elapsed() >= opts.report_every {
            last_report = Instant::now();
            let r = ctx.report(
                stage_elapsed(stage),
                AllocReport::new(&stage.live.counters, stage.alloc_tallies()),
                stage.rss_after_warmup,
                "running".into(),
            );
            log::info!("{}", r.line());
            metrics.write(&r);
        }
        if let Some(d) = opts.duration
            && stage.started.elapsed() >= d
        {
            return Some("duration".into());
        }
        match stage.pools.frames.pop_timeout(Duration::from_millis(50)) {
            Pop::Item(f) => stage.process(f),
            Pop::Timeout => continue,
            Pop::Closed => return None,
        }
        if let Some(m) = opts.max_frames
            && stage.processed >= m
        {
            return Some("max frames".into());
        }
    }
}

fn stage_elapsed(stage: &inference::InferenceStage) -> f64 {
    stage.started.elapsed().as_secs_f64()
}

/// The message a caught panic carried.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
