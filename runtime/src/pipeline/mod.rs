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
mod options;
mod pools;
pub mod report;
mod sinks;

use crate::backend::Backend;
pub use crate::live::LiveMetrics;
use crate::queue::Pop;
use crate::sink::Sink;
use crate::source::FrameSource;
use crate::supervisor::ModelUpdates;
pub use options::PipelineOptions;
use pools::Pools;
pub use pools::{FRAME_QUEUE, RESULT_QUEUE, WARMUP_FRAMES};
pub use report::{AllocReport, RunReport, rss_kib};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        if let Some(why) = crate::shutdown::requested() {
            return Some(why.into());
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
