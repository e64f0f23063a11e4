//! `sim:?seed=S&fps=N[&width=W&height=H]`: the synthetic driving world of `bevrt-sim` as a
//! frame source. Frames are rendered straight into the pooled frame (RGB8; no per-frame
//! allocation). Defaults: seed 0, width x height 384x128, unpaced. With `fps=N` the source is
//! paced and live (drop-oldest); without it frames come as fast as they render (lossless) and
//! the world still advances 1/10 s per frame. The stream never ends; the ego loops over its
//! route. Timestamps are simulation time (frame n at n / fps).

use super::{FrameSource, Pacer, SourceError, SourceSpec, SourceStatus};
use crate::frame::{Frame, PixelFormat};
use std::path::PathBuf;

pub struct SimSource {
    sim: bevrt_sim::Simulator,
    pacer: Pacer,
    next: u64,
    width: u32,
    height: u32,
    seed: u64,
}

impl SimSource {
    pub fn open(spec: &SourceSpec) -> Result<Self, SourceError> {
        spec.only_options(&["seed", "fps", "width", "height"])?;
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
        let sim = bevrt_sim::Simulator::new(cfg).map_err(|e| spec.error(e.to_string()))?;
        Ok(SimSource {
            sim,
            pacer: Pacer::new(fps),
            next: 0,
            width,
            height,
            seed,
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
}
