//! The pipeline: capture thread → bounded queue → inference thread → bounded queue → sink
//! thread. It owns threads, queues and buffers only; models live in the backend, pixels come
//! from the source.
//!
//! Buffers are allocated at start: a fixed pool of frames and of results circulates between
//! the threads through fixed-capacity queues. A live source that outpaces inference loses its
//! oldest queued frame (counted as a drop); an unpaced file source waits instead. A slow sink
//! loses sink work (counted), never frames. A bad frame, a failed inference or a failed sink
//! write is counted and logged, and the pipeline goes on.

use crate::alloc_count;
use crate::backend::Backend;
use crate::frame::Frame;
use crate::metrics::{Histogram, STAGES, Stage, StageHistograms, StageSummary};
use crate::postprocess::FrameResult;
use crate::queue::{BoundedQueue, Pop};
use crate::sink::Sink;
use crate::source::{FrameSource, SourceStatus};
use crate::supervisor::{ModelUpdates, UpdateEvent};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
        }
    }
}

#[derive(Default)]
struct Counters {
    captured: AtomicU64,
    dropped: AtomicU64,
    source_errors: AtomicU64,
    processed: AtomicU64,
    infer_errors: AtomicU64,
    sink_written: AtomicU64,
    sink_dropped: AtomicU64,
    sink_errors: AtomicU64,
    calib_reloads: AtomicU64,
    calib_errors: AtomicU64,
    model_swaps: AtomicU64,
    model_rollbacks: AtomicU64,
    model_refused: AtomicU64,
    capture_allocs: AtomicU64,
    capture_counted: AtomicU64,
    sink_allocs: AtomicU64,
    sink_counted: AtomicU64,
}

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

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub source: String,
    pub backend: String,
    pub elapsed_s: f64,
    pub frames_captured: u64,
    pub frames_processed: u64,
    pub frames_dropped: u64,
    pub source_errors: u64,
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
    pub fps: f64,
    pub stages: BTreeMap<&'static str, StageSummary>,
    pub allocations: AllocReport,
    /// Resident memory after warm-up and at the end, in KiB (Linux; 0 elsewhere).
    pub rss_kib_after_warmup: u64,
    pub rss_kib_end: u64,
    /// Why the run ended: "end of stream", "max frames", "duration", "source failed: ...".
    pub ended_by: String,
}

impl RunReport {
    /// The one-line summary logged every interval and at the end.
    pub fn line(&self) -> String {
        let s = |k: &str| self.stages.get(k).copied();
        let fmt = |k: &str| {
            s(k).map(|v| {
                format!(
                    "{k} p50 {:.2} p99 {:.2} max {:.2} ms",
                    v.p50_ms, v.p99_ms, v.max_ms
                )
            })
            .unwrap_or_default()
        };
        format!(
            "frames {} ({:.1} fps), drops {}, source errors {}, inference errors {}, sink dropped {} errors {} | {} | {} | {}",
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
    mut source: Box<dyn FrameSource>,
    mut backend: Box<dyn Backend>,
    mut sinks: Vec<Box<dyn Sink>>,
    opts: &PipelineOptions,
    mut updates: Option<Box<dyn ModelUpdates>>,
) -> anyhow::Result<RunReport> {
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let frames_q: Arc<BoundedQueue<Box<Frame>, FRAME_QUEUE>> = Arc::new(BoundedQueue::new());
    let free_frames: Arc<BoundedQueue<Box<Frame>, { FRAME_QUEUE + 2 }>> =
        Arc::new(BoundedQueue::new());
    let results_q: Arc<BoundedQueue<Box<FrameResult>, RESULT_QUEUE>> =
        Arc::new(BoundedQueue::new());
    let free_results: Arc<BoundedQueue<Box<FrameResult>, RESULT_QUEUE>> =
        Arc::new(BoundedQueue::new());
    let sink_hist = Arc::new(Mutex::new(Histogram::default()));

    let cap = source.max_frame_bytes().unwrap_or(1920 * 1080 * 3);
    for _ in 0..FRAME_QUEUE + 2 {
        let _ = free_frames.try_push(Box::new(Frame::with_capacity(cap)));
    }
    let template = backend.new_result();
    for _ in 0..RESULT_QUEUE {
        let _ = free_results.try_push(Box::new(template.clone()));
    }
    if let Some(p) = &opts.calibration {
        // The starting calibration must be valid; later changes may fail and are kept out.
        let msg = backend
            .set_calibration(p)
            .map_err(|e| anyhow::anyhow!("calibration {}: {e:#}", p.display()))?;
        log::info!("calibration: {msg}");
    }
    let source_name = source.describe();
    let backend_name = backend.describe();
    log::info!("source: {source_name}");
    log::info!("backend: {backend_name}");
    let live = source.is_live();
    let ended_by = Arc::new(Mutex::new(String::from("end of stream")));

    // ---------------------------------------------------------------- capture thread
    let capture = {
        let (c, stop, frames_q, free_frames, ended_by) = (
            counters.clone(),
            stop.clone(),
            frames_q.clone(),
            free_frames.clone(),
            ended_by.clone(),
        );
        std::thread::Builder::new()
            .name("bevrt-capture".into())
            .spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut frame = match free_frames.pop_timeout(Duration::from_millis(100)) {
                        Pop::Item(f) => f,
                        Pop::Timeout => continue,
                        Pop::Closed => break,
                    };
                    let a0 = alloc_count::thread_allocs();
                    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        source.next_frame(&mut frame)
                    }));
                    match r {
                        Ok(Ok(SourceStatus::Frame)) => {
                            frame.ready_at = Some(Instant::now());
                            c.captured.fetch_add(1, Ordering::Relaxed);
                            if live {
                                if let Some(old) = frames_q.push_drop_oldest(frame) {
                                    c.dropped.fetch_add(1, Ordering::Relaxed);
                                    let _ = free_frames.try_push(old);
                                }
                            } else if frames_q.push_blocking(frame).is_err() {
                                break;
                            }
                            n += 1;
                            if n > WARMUP_FRAMES {
                                c.capture_allocs.fetch_add(
                                    alloc_count::thread_allocs() - a0,
                                    Ordering::Relaxed,
                                );
                                c.capture_counted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(Ok(SourceStatus::End)) => break,
                        Ok(Err(e)) if e.is_recoverable() => {
                            c.source_errors.fetch_add(1, Ordering::Relaxed);
                            log::warn!("skipped: {e}");
                            let _ = free_frames.try_push(frame);
                        }
                        Ok(Err(e)) => {
                            c.source_errors.fetch_add(1, Ordering::Relaxed);
                            log::error!("source failed: {e}");
                            *ended_by.lock().unwrap_or_else(|p| p.into_inner()) =
                                format!("source failed: {e}");
                            break;
                        }
                        Err(_) => {
                            c.source_errors.fetch_add(1, Ordering::Relaxed);
                            log::error!("source panicked; skipping the frame");
                            let _ = free_frames.try_push(frame);
                        }
                    }
                }
                frames_q.close();
            })?
    };

    // ---------------------------------------------------------------- sink thread
    let sink_thread = {
        let (c, results_q, free_results, sink_hist) = (
            counters.clone(),
            results_q.clone(),
            free_results.clone(),
            sink_hist.clone(),
        );
        let delay = opts.sink_delay;
        let stall = opts.sink_stall;
        std::thread::Builder::new()
            .name("bevrt-sink".into())
            .spawn(move || {
                let mut n = 0u64;
                let mut next_stall = stall.map(|(every, _)| Instant::now() + every);
                loop {
                    let r = match results_q.pop_timeout(Duration::from_millis(200)) {
                        Pop::Item(r) => r,
                        Pop::Timeout => continue,
                        Pop::Closed => break,
                    };
                    let a0 = alloc_count::thread_allocs();
                    let t0 = Instant::now();
                    if !delay.is_zero() {
                        std::thread::sleep(delay);
                    }
                    if let (Some((every, length)), Some(at)) = (stall, next_stall)
                        && t0 >= at
                    {
                        std::thread::sleep(length);
                        next_stall = Some(at + every);
                    }
                    let mut ok = true;
                    for s in sinks.iter_mut() {
                        let res = std::panic::catch_unwind(AssertUnwindSafe(|| s.write(&r)));
                        let err = match res {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(e.to_string()),
                            Err(_) => Some("panicked".to_string()),
                        };
                        if let Some(e) = err {
                            ok = false;
                            c.sink_errors.fetch_add(1, Ordering::Relaxed);
                            log::warn!("sink {} failed on frame {}: {e}", s.name(), r.seq);
                        }
                    }
                    if ok {
                        c.sink_written.fetch_add(1, Ordering::Relaxed);
                    }
                    let dt = t0.elapsed().as_nanos() as u64;
                    sink_hist
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record(dt);
                    n += 1;
                    if n > WARMUP_FRAMES {
                        c.sink_allocs
                            .fetch_add(alloc_count::thread_allocs() - a0, Ordering::Relaxed);
                        c.sink_counted.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = free_results.try_push(r);
                }
                for s in sinks.iter_mut() {
                    if let Err(e) = s.finish() {
                        c.sink_errors.fetch_add(1, Ordering::Relaxed);
                        log::warn!("sink {} failed to finish: {e}", s.name());
                    }
                }
            })?
    };

    // ---------------------------------------------------------------- inference (this thread)
    let start = Instant::now();
    let mut hist = StageHistograms::default();
    let mut working = Box::new(template);
    let mut own_allocs = 0u64;
    let mut backend_allocs = 0u64;
    let mut counted = 0u64;
    let mut rss_after_warmup = 0u64;
    let mut last_report = Instant::now();
    let mut metrics = match &opts.metrics_out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p)
                .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", p.display()))?,
        )),
        None => None,
    };
    let mut calib_watch = opts.calibration.as_ref().map(|p| (p.clone(), mtime(p)));
    let mut last_calib_check = Instant::now();
    let mut processed = 0u64;

    let report = |hist: &StageHistograms,
                  c: &Counters,
                  elapsed: f64,
                  allocs: AllocReport,
                  rss_w: u64,
                  ended: String| {
        let mut stages = BTreeMap::new();
        let sink = sink_hist.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (s, name) in STAGES {
            let h = if s == Stage::Sink { &sink } else { hist.get(s) };
            stages.insert(name, h.summary());
        }
        let processed = c.processed.load(Ordering::Relaxed);
        RunReport {
            source: source_name.clone(),
            backend: backend_name.clone(),
            elapsed_s: elapsed,
            frames_captured: c.captured.load(Ordering::Relaxed),
            frames_processed: processed,
            frames_dropped: c.dropped.load(Ordering::Relaxed),
            source_errors: c.source_errors.load(Ordering::Relaxed),
            inference_errors: c.infer_errors.load(Ordering::Relaxed),
            sink_written: c.sink_written.load(Ordering::Relaxed),
            sink_dropped: c.sink_dropped.load(Ordering::Relaxed),
            sink_errors: c.sink_errors.load(Ordering::Relaxed),
            calibration_reloads: c.calib_reloads.load(Ordering::Relaxed),
            calibration_errors: c.calib_errors.load(Ordering::Relaxed),
            model_swaps: c.model_swaps.load(Ordering::Relaxed),
            model_rollbacks: c.model_rollbacks.load(Ordering::Relaxed),
            model_updates_refused: c.model_refused.load(Ordering::Relaxed),
            fps: if elapsed > 0.0 {
                processed as f64 / elapsed
            } else {
                0.0
            },
            stages,
            allocations: allocs,
            rss_kib_after_warmup: rss_w,
            rss_kib_end: rss_kib(),
            ended_by: ended,
        }
    };
    let alloc_report = |c: &Counters, own: u64, be: u64, n: u64, dev: Option<u64>| {
        let per = |a: u64, n: u64| if n == 0 { 0.0 } else { a as f64 / n as f64 };
        AllocReport {
            measured: alloc_count::is_active(),
            capture_per_frame: per(
                c.capture_allocs.load(Ordering::Relaxed),
                c.capture_counted.load(Ordering::Relaxed),
            ),
            inference_own_per_frame: per(own, n),
            backend_per_frame: per(be, n),
            sink_per_frame: per(
                c.sink_allocs.load(Ordering::Relaxed),
                c.sink_counted.load(Ordering::Relaxed),
            ),
            frames_counted: n,
            device_after_warmup: dev,
        }
    };
    let mut device_at_warmup: Option<u64> = None;

    let mut ended: Option<String> = None;
    loop {
        // Calibration changes are applied between frames, never during one.
        if let Some((path, seen)) = calib_watch.as_mut()
            && last_calib_check.elapsed() >= Duration::from_millis(250)
        {
            last_calib_check = Instant::now();
            let now = mtime(path);
            if now != *seen && now.is_some() {
                *seen = now;
                match backend.set_calibration(path) {
                    Ok(msg) => {
                        counters.calib_reloads.fetch_add(1, Ordering::Relaxed);
                        log::info!("calibration reloaded: {msg}");
                    }
                    Err(e) => {
                        counters.calib_errors.fetch_add(1, Ordering::Relaxed);
                        log::error!("calibration not applied, keeping the previous one: {e:#}");
                    }
                }
            }
        }
        // Model updates, like calibration, change the backend between frames only.
        if let Some(u) = updates.as_mut()
            && let Some(event) = u.between_frames(&mut backend)
        {
            let counter = match event {
                UpdateEvent::Swapped => Some(&counters.model_swaps),
                UpdateEvent::RolledBack => Some(&counters.model_rollbacks),
                UpdateEvent::Refused => Some(&counters.model_refused),
                UpdateEvent::Confirmed => None,
            };
            if let Some(c) = counter {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        if last_report.elapsed() >= opts.report_every {
            last_report = Instant::now();
            let r = report(
                &hist,
                &counters,
                start.elapsed().as_secs_f64(),
                alloc_report(
                    &counters,
                    own_allocs,
                    backend_allocs,
                    counted,
                    device_since(&*backend, device_at_warmup),
                ),
                rss_after_warmup,
                "running".into(),
            );
            log::info!("{}", r.line());
            write_metrics(&mut metrics, &r);
        }
        if let Some(d) = opts.duration
            && start.elapsed() >= d
        {
            ended = Some("duration".into());
            break;
        }
        let frame = match frames_q.pop_timeout(Duration::from_millis(50)) {
            Pop::Item(f) => f,
            Pop::Timeout => continue,
            Pop::Closed => break,
        };
        let a0 = alloc_count::thread_allocs();
        let t_pop = Instant::now();
        let queue_ns = frame
            .ready_at
            .map(|t| t_pop.duration_since(t).as_nanos() as u64)
            .unwrap_or(0);
        let (mut t_pre, mut t_inf, mut t_post) = (0u64, 0u64, 0u64);
        let mut backend_a = 0u64;
        let outcome: anyhow::Result<()> = (|| {
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
            let t0 = Instant::now();
            guard(|| backend.preprocess(&frame))?;
            let t1 = Instant::now();
            let b0 = alloc_count::thread_allocs();
            guard(|| backend.infer())?;
            backend_a = alloc_count::thread_allocs() - b0;
            let t2 = Instant::now();
            working.seq = frame.seq;
            working.timestamp_ns = frame.timestamp_ns;
            guard(|| backend.postprocess(&mut working))?;
            let t3 = Instant::now();
            t_pre = (t1 - t0).as_nanos() as u64;
            t_inf = (t2 - t1).as_nanos() as u64;
            t_post = (t3 - t2).as_nanos() as u64;
            Ok(())
        })();
        let ready_at = frame.ready_at;
        let _ = free_frames.try_push(frame);
        if let Some(u) = updates.as_mut() {
            u.frame_done(outcome.is_ok());
        }
        match outcome {
            Ok(()) => {
                hist.record(Stage::CaptureToReady, queue_ns);
                hist.record(Stage::Preprocess, t_pre);
                hist.record(Stage::Inference, t_inf);
                hist.record(Stage::Postprocess, t_post);
                if let Some(t) = ready_at {
                    hist.record(Stage::EndToEnd, t.elapsed().as_nanos() as u64);
                }
                working.stage_ns = [queue_ns, t_pre, t_inf, t_post];
                // Hand over to the sinks: swap in a free result, or drop the sink work.
                match free_results.try_pop() {
                    Some(next) => {
                        let done = std::mem::replace(&mut working, next);
                        if let Err(back) = results_q.try_push(done) {
                            counters.sink_dropped.fetch_add(1, Ordering::Relaxed);
                            let _ = free_results.try_push(back);
                        }
                    }
                    None => {
                        let n = counters.sink_dropped.fetch_add(1, Ordering::Relaxed);
                        if n.is_power_of_two() {
                            log::warn!("sinks are behind: dropped sink work for {} frames", n + 1);
                        }
                    }
                }
                processed += 1;
                counters.processed.fetch_add(1, Ordering::Relaxed);
                if processed == WARMUP_FRAMES {
                    rss_after_warmup = rss_kib();
                    device_at_warmup = backend.device_allocations();
                }
                if processed > WARMUP_FRAMES {
                    let total = alloc_count::thread_allocs() - a0;
                    own_allocs += total - backend_a;
                    backend_allocs += backend_a;
                    counted += 1;
                }
            }
            Err(e) => {
                let n = counters.infer_errors.fetch_add(1, Ordering::Relaxed);
                if n < 10 || n.is_power_of_two() {
                    log::error!("frame failed, continuing: {e:#}");
                }
            }
        }
        if let Some(m) = opts.max_frames
            && processed >= m
        {
            ended = Some("max frames".into());
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    frames_q.close();
    free_frames.close();
    let _ = capture.join();
    results_q.close();
    let _ = sink_thread.join();
    let ended = ended.unwrap_or_else(|| ended_by.lock().unwrap_or_else(|p| p.into_inner()).clone());
    let r = report(
        &hist,
        &counters,
        start.elapsed().as_secs_f64(),
        alloc_report(
            &counters,
            own_allocs,
            backend_allocs,
            counted,
            device_since(&*backend, device_at_warmup),
        ),
        rss_after_warmup,
        ended,
    );
    write_metrics(&mut metrics, &r);
    Ok(r)
}

fn guard<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => anyhow::bail!("backend panicked: {}", panic_message(p.as_ref())),
    }
}

/// The message a caught panic carried.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

fn write_metrics(m: &mut Option<std::io::BufWriter<std::fs::File>>, r: &RunReport) {
    if let Some(m) = m.as_mut() {
        let _ = serde_json::to_writer(&mut *m, r);
        let _ = writeln!(m);
        let _ = m.flush();
    }
}

fn mtime(p: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Device allocations since warm-up (all of them before warm-up ends).
fn device_since(backend: &dyn crate::backend::Backend, at_warmup: Option<u64>) -> Option<u64> {
    backend
        .device_allocations()
        .map(|now| now.saturating_sub(at_warmup.unwrap_or(now)))
}
