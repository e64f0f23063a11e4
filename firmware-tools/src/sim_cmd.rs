//! `bevrt-tool sim record`: render a synthetic driving sequence into a replay recording
//! (frames, BEV ground truth, calibration, ego poses; optionally per-pixel labels and depth).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum SimCmd {
    /// Render N frames of the synthetic world into a recording that `replay:DIR` plays.
    Record(SimRecordArgs),
}

#[derive(Args)]
pub struct SimRecordArgs {
    /// World seed: the same seed gives byte-identical frames.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of frames to render.
    #[arg(long)]
    pub frames: u64,
    /// Image width (the default 384x128 camera, intrinsics scaled).
    #[arg(long, default_value_t = 384)]
    pub width: u32,
    /// Image height.
    #[arg(long, default_value_t = 128)]
    pub height: u32,
    /// Frame rate: the world advances 1/fps seconds per frame; written to recording.toml.
    #[arg(long, default_value_t = 10.0)]
    pub fps: f64,
    /// BEV ground-truth cell size in metres (grid x 0..40, y -20..20; letsmap-lite uses 0.5).
    #[arg(long, default_value_t = 0.25)]
    pub cell: f32,
    /// Also write per-pixel labels (labels/, L8 PNG) and depth (depth/, 16-bit PNG in cm).
    #[arg(long)]
    pub extras: bool,
    /// Output directory (created; must not already hold a recording).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(c: &SimCmd) -> Result<()> {
    match c {
        SimCmd::Record(a) => record(a),
    }
}

/// `bevrt-tool sim record`.
pub fn record(a: &SimRecordArgs) -> Result<()> {
    if a.frames == 0 {
        bail!("--frames must be at least 1");
    }
    if !(a.fps.is_finite() && a.fps > 0.0) {
        bail!("--fps must be a positive number, got {}", a.fps);
    }
    let mut cfg = bevrt_sim::SimConfig::with_seed(a.seed)
        .with_size(a.width, a.height)
        .context("--width/--height")?;
    cfg.fps = a.fps;
    if !(a.cell.is_finite() && a.cell > 0.0) {
        bail!("--cell must be a positive number of metres, got {}", a.cell);
    }
    cfg.grid.cell = a.cell;
    cfg.grid.validate().context("--cell")?;
    let pb = indicatif::ProgressBar::new(a.frames);
    let t0 = std::time::Instant::now();
    let summary = bevrt_sim::record(&cfg, a.frames, &a.out, a.extras, &mut |done, _| {
        pb.set_position(done)
    })
    .with_context(|| format!("recording into {}", a.out.display()))?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "wrote {} frames {}x{} (seed {}, {:.0} m driven) to {} in {:.1} s ({:.1} frames/s); \
         play with --source replay:{}",
        summary.frames,
        summary.width,
        summary.height,
        a.seed,
        summary.distance_m,
        a.out.display(),
        secs,
        summary.frames as f64 / secs.max(1e-9),
        a.out.display()
    );
    Ok(())
}
