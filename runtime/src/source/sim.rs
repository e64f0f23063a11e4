//! `sim:?seed=S&fps=N[&width=W&height=H]`: the synthetic driving world of `bevrt-sim` as a
//! frame source. Frames are rendered straight into the pooled frame (RGB8; no per-frame
//! allocation). Defaults: seed 0, width x height 384x128, unpaced. With `fps=N` the source is
//! paced and live (drop-oldest); without it frames come as fast as they render (lossless) and
//! the world still advances 1/10 s per frame. The stream never ends; the ego loops over its
//! route. Timestamps are simulation time (frame n at n / fps).
//!
//! Fault injection (HIL): `unplug_at=N&unplug_for=S` makes the camera disappear before frame
//! N for S seconds of wall time, as a pulled cable does: `next_frame` returns transient
//! errors (one per 200 ms reconnect attempt, like the V4L2 source's back-off) until the camera
//! is back; the world went on meanwhile, so the sequence numbers jump by the frames missed.
//! `unplug_every=T&unplug_for=S` repeats that every T seconds of wall time (soak tests).

use super::{FrameSource, LinkCounts, Pacer, SourceError, SourceSpec, SourceStatus};
use crate::frame::{Frame, PixelFormat};
use std::path::PathBuf;

pub struct SimSource {
    sim: bevrt_sim::Simulator,
    pacer: Pacer,
    next: u64,
    width: u32,
    height: u32,
    seed: u64,
    /// (frame, seconds) of a simulated unplug, and when the camera comes back once started.
    unplug: Option<(u64, f64)>,
    back_at: Option<std::time::Instant>,
    /// Periodic unplugs: (period, seconds away) and when the next one starts.
    periodic: Option<(std::time::Duration, f64)>,
    next_unplug: Option<std::time::Instant>,
    link: LinkCounts,
}

/// Interval between reconnect attempts during a simulated unplug.
const RECONNECT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

impl SimSource {
    pub fn open(spec: &SourceSpec) -> Result<Self, SourceError> {
        spec.only_options(&[
            "seed",
            "fps",
            "width",
            "height",
            "unplug_at",
            "unplug_for",
            "unplug_every",
        ])?;
        if !spec.body.is_empty() {
            return Err(spec.error(format!(
                "unexpected '{}' after 'sim:' (use sim:?seed=S&fps=N[&width=W&height=H])",
                spec.body
            )));
        }
        let seed: u64 = spec.opt("seed")?.unwrap_or(0);
        let fps: f64 = spec.opt("fps")?.unwrap_or(0.0);
        if !(fps.is_finite() && fps >= 0.0) {
            return Err(spec.error("option 'fps' must be >= 0"));
        }
        let base = bevrt_sim::SimConfig::with_seed(seed);
        let width: u32 = spec.opt("width")?.unwrap_or(base.width());
        let height: u32 = spec.opt("height")?.unwrap_or(base.height());
        let mut cfg = base
            .with_size(width, height)
            .map_err(|e| spec.error(e.to_string()))?;
        if fps > 0.0 {
            cfg.fps = fps;
        }
        let unplug_at: Option<u64> = spec.opt("unplug_at")?;
        let unplug_for: Option<f64> = spec.opt("unplug_for")?;
        let unplug_every: Option<f64> = spec.opt("unplug_every")?;
        let away_ok = unplug_for.is_some_and(|s| s.is_finite() && s > 0.0);
        let (unplug, periodic) = match (unplug_at, unplug_every) {
            (None, None) if unplug_for.is_none() => (None, None),
            (Some(n), None) if away_ok => (Some((n, unplug_for.unwrap_or(0.0))), None),
            (None, Some(t)) if away_ok && t.is_finite() && t > unplug_for.unwrap_or(0.0) => (
                None,
                Some((
                    std::time::Duration::from_secs_f64(t),
                    unplug_for.unwrap_or(0.0),
                )),
            ),
            _ => {
                return Err(spec.error(
                    "option 'unplug_for' (seconds > 0) goes with one of 'unplug_at' (frame) or 'unplug_every' (seconds, longer than unplug_for)",
                ));
            }
        };
        let sim = bevrt_sim::Simulator::new(cfg).map_err(|e| spec.error(e.to_string()))?;
        Ok(SimSource {
            sim,
            pacer: Pacer::new(fps),
            next: 0,
            width,
            height,
            seed,
            unplug,
            back_at: None,
            next_unplug: periodic.map(|(t, _)| std::time::Instant::now() + t),
            link: LinkCounts::default(),
            periodic,
        })
    }

    /// The simulator (ground truth of the last frame: labels, depth, BEV, ego pose).
    pub fn simulator(&mut self) -> &mut bevrt_sim::Simulator {
        &mut self.sim
    }
}

impl FrameSource for SimSource {
    fn describe(&self) -> String {
        format!(
            "sim: seed {} ({}x{} rgb8, {} fps world time)",
            self.seed,
            self.width,
            self.height,
            self.sim.config().fps
        )
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<SourceStatus, SourceError> {
        if let (Some((period, secs)), Some(at)) = (self.periodic, self.next_unplug)
            && self.unplug.is_none()
            && std::time::Instant::now() >= at
        {
            self.unplug = Some((self.next, secs));
            self.next_unplug = Some(at + period);
        }
        if let Some((at, secs)) = self.unplug
            && self.next == at
        {
            let now = std::time::Instant::now();
            if self.back_at.is_none() {
                self.link.lost += 1;
            }
            let back = *self
                .back_at
                .get_or_insert(now + std::time::Duration::from_secs_f64(secs));
            if now < back {
                std::thread::sleep(RECONNECT_EVERY.min(back - now));
                return Err(SourceError::Transient {
                    path: PathBuf::from("sim:camera"),
                    message: "camera disconnected (simulated unplug); reconnecting".into(),
                });
            }
            // Back: the world went on while the camera was away.
            self.unplug = None;
            self.back_at = None;
            self.link.back += 1;
            let fps = self.sim.config().fps;
            self.next += (secs * fps).round() as u64;
            log::warn!("sim: camera reconnected after {secs:.1} s");
        }
        self.pacer.wait();
        let n = self.next;
        self.next += 1;
        frame.reset(PixelFormat::Rgb8, self.width, self.height);
        self.sim
            .render_frame(n, &mut frame.data)
            .map_err(|e| SourceError::BadFrame {
                path: PathBuf::from(format!("sim:frame {n}")),
                message: e.to_string(),
            })?;
        frame.seq = n;
        frame.timestamp_ns = self.sim.frame_timestamp_ns(n);
        Ok(SourceStatus::Frame)
    }

    fn is_live(&self) -> bool {
        self.pacer.is_paced()
    }

    fn max_frame_bytes(&self) -> Option<usize> {
        Some(PixelFormat::Rgb8.frame_bytes(self.width, self.height))
    }

    fn link(&self) -> LinkCounts {
        self.link
    }
}
