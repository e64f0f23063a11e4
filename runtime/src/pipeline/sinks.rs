//! The sink stage: its own thread hands every result to each sink, then returns the result to
//! the pool. A failing or panicking sink is counted and logged; the others still get the
//! result. Fault injection (a slow or stalling sink) lives here, for HIL and soak tests.

use super::pools::{Pools, WARMUP_FRAMES};
use crate::alloc_count;
use crate::live::{Counters, LiveMetrics};
use crate::postprocess::FrameResult;
use crate::queue::Pop;
use crate::sink::Sink;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Injected sink slowness: a delay in every write, and a stall of `.1` every `.0`.
#[derive(Clone, Copy, Default)]
pub struct SinkFaults {
    pub delay: Duration,
    pub stall: Option<(Duration, Duration)>,
}

pub struct SinkStage {
    pub sinks: Vec<Box<dyn Sink>>,
    pub pools: Arc<Pools>,
    pub live: Arc<LiveMetrics>,
    pub faults: SinkFaults,
}

impl SinkStage {
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("bevrt-sink".into())
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let mut written = 0u64;
        let mut next_stall = self.faults.stall.map(|(every, _)| Instant::now() + every);
        loop {
            let r = match self.pools.results.pop_timeout(Duration::from_millis(200)) {
                Pop::Item(r) => r,
                Pop::Timeout => continue,
                Pop::Closed => break,
            };
            let a0 = alloc_count::thread_allocs();
            let t0 = Instant::now();
            self.inject_faults(t0, &mut next_stall);
            if self.write_all(&r) {
                Counters::bump(&self.live.counters.sink_written);
            }
            let dt = t0.elapsed().as_nanos() as u64;
            self.live
                .sink
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(dt);
            written += 1;
            if written > WARMUP_FRAMES {
                let c = &self.live.counters;
                c.sink_allocs
                    .fetch_add(alloc_count::thread_allocs() - a0, Ordering::Relaxed);
                Counters::bump(&c.sink_counted);
            }
            let _ = self.pools.free_results.try_push(r);
        }
        self.finish_all();
    }

    fn inject_faults(&self, now: Instant, next_stall: &mut Option<Instant>) {
        if !self.faults.delay.is_zero() {
            std::thread::sleep(self.faults.delay);
        }
        if let (Some((every, length)), Some(at)) = (self.faults.stall, *next_stall)
            && now >= at
        {
            std::thread::sleep(length);
            *next_stall = Some(at + every);
        }
    }

    /// Write `r` to every sink; false when any of them failed.
    fn write_all(&mut self, r: &FrameResult) -> bool {
        let mut ok = true;
        for s in self.sinks.iter_mut() {
            let res = std::panic::catch_unwind(AssertUnwindSafe(|| s.write(r)));
            let err = match res {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("panicked".to_string()),
            };
            if let Some(e) = err {
                ok = false;
                Counters::bump(&self.live.counters.sink_errors);
                log::warn!("sink {} failed on frame {}: {e}", s.name(), r.seq);
            }
        }
        ok
    }

    fn finish_all(&mut self) {
        for s in self.sinks.iter_mut() {
            if let Err(e) = s.finish() {
                Counters::bump(&self.live.counters.sink_errors);
                log::warn!("sink {} failed to finish: {e}", s.name());
            }
        }
    }
}
