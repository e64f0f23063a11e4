//! The capture stage: its own thread fills pooled frames from the source and queues them for
//! inference. A live source never waits for inference (the oldest queued frame is dropped and
//! counted); a file source waits and loses nothing.

use super::pools::{Pools, WARMUP_FRAMES};
use crate::alloc_count;
use crate::frame::Frame;
use crate::live::{Counters, LiveMetrics};
use crate::queue::Pop;
use crate::source::{FrameSource, SourceStatus};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct CaptureStage {
    pub source: Box<dyn FrameSource>,
    pub pools: Arc<Pools>,
    pub live: Arc<LiveMetrics>,
    pub stop: Arc<AtomicBool>,
    /// Set when the source fails for good; the run's `ended_by`.
    pub ended_by: Arc<Mutex<String>>,
}

/// What one attempt to capture came to.
enum Captured {
    Queued,
    Skipped,
    /// The stream ended or failed, or the queue closed: the thread stops.
    Stop,
}

impl CaptureStage {
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("bevrt-capture".into())
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let is_live = self.source.is_live();
        let mut queued = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let frame = match self
                .pools
                .free_frames
                .pop_timeout(Duration::from_millis(100))
            {
                Pop::Item(f) => f,
                Pop::Timeout => continue,
                Pop::Closed => break,
            };
            let a0 = alloc_count::thread_allocs();
            match self.capture_one(frame, is_live) {
                Captured::Queued => {
                    queued += 1;
                    if queued > WARMUP_FRAMES {
                        let c = &self.live.counters;
                        c.capture_allocs
                            .fetch_add(alloc_count::thread_allocs() - a0, Ordering::Relaxed);
                        Counters::bump(&c.capture_counted);
                    }
                }
                Captured::Skipped => {}
                Captured::Stop => break,
            }
        }
        self.pools.frames.close();
    }

    fn capture_one(&mut self, mut frame: Box<Frame>, is_live: bool) -> Captured {
        let c = &self.live.counters;
        let pools = &self.pools;
        // what only some sources set, cleared for the others
        frame.camera_pose = None;
        frame.stamped_monotonic = false;
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| self.source.next_frame(&mut frame)));
        let link = self.source.link();
        c.camera_lost.store(link.lost, Ordering::Relaxed);
        c.camera_back.store(link.back, Ordering::Relaxed);
        match r {
            Ok(Ok(SourceStatus::Frame)) => {
                frame.ready_at = Some(Instant::now());
                Counters::bump(&c.captured);
                if is_live {
                    if let Some(old) = pools.frames.push_drop_oldest(frame) {
                        Counters::bump(&c.dropped);
                        let _ = pools.free_frames.try_push(old);
                    }
                } else if pools.frames.push_blocking(frame).is_err() {
                    return Captured::Stop;
                }
                Captured::Queued
            }
            Ok(Ok(SourceStatus::End)) => Captured::Stop,
            Ok(Err(e)) if e.is_recoverable() => {
                Counters::bump(&c.source_errors);
                log::warn!("skipped: {e}");
                let _ = pools.free_frames.try_push(frame);
                Captured::Skipped
            }
            Ok(Err(e)) => {
                Counters::bump(&c.source_errors);
                log::error!("source failed: {e}");
                *self.ended_by.lock().unwrap_or_else(|p| p.into_inner()) =
                    format!("source failed: {e}");
                Captured::Stop
            }
            Err(_) => {
                Counters::bump(&c.source_errors);
                log::error!("source panicked; skipping the frame");
                let _ = pools.free_frames.try_push(frame);
                Captured::Skipped
            }
        }
    }
}
