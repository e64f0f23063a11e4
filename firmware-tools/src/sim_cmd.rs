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
    /// Also record a second camera this many metres to the right of the first (`right/`,
    /// `calibration_right.toml`; the geometry pathway uses the pair), e.g. `--stereo 0.5`.
    #[arg(long, value_name = "BASELINE_M")]
    pub stereo: Option<f64>,
    /// Output: a directory (created; must not already hold a recording) for `dir`, a file for
    /// `mcap`.
    #[arg(long)]
    pub out: PathBuf,
    /// `dir`: bevrt's recording (PNG frames, BEV ground truth, calibration, poses; plays
    /// with `replay:DIR`). `mcap`: a ROS 2 bag with `/camera/image_raw` (Image, rgb8),
    /// `/camera/camera_info`, `/tf_static` (base_link → camera) and `/odom` (Odometry);
    /// plays with `mcap:FILE`.
    #[arg(long, value_enum, default_value = "dir")]
    pub format: RecordFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecordFormat {
    Dir,
    Mcap,
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
    if a.format == RecordFormat::Mcap {
        record_mcap(&cfg, a.frames, &a.out, &mut |done| pb.set_position(done))?;
        pb.finish_and_clear();
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "wrote {} frames {}x{} (seed {}) to {} in {:.1} s; play with --source mcap:{}",
            a.frames,
            a.width,
            a.height,
            a.seed,
            a.out.display(),
            secs,
            a.out.display()
        );
        return Ok(());
    }
    if a.stereo.is_some() && a.format == RecordFormat::Mcap {
        bail!("--stereo writes a directory recording (--format dir)");
    }
    let opts = bevrt_sim::RecordOptions {
        extras: a.extras,
        stereo_baseline: a.stereo,
    };
    let summary = bevrt_sim::record(&cfg, a.frames, &a.out, &opts, &mut |done, _| {
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

/// The drive as a ROS 2 bag (zstd chunks, as `ros2 bag record --storage mcap` can write):
/// camera, camera_info, tf_static and odometry, stamped with the simulator's clock.
pub fn record_mcap(
    cfg: &bevrt_sim::SimConfig,
    frames: u64,
    out: &std::path::Path,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    use bevrt_runtime::ros2::bag::{self, BagCompression, BagWriter};
    use bevrt_runtime::ros2::msgs;
    if out.is_dir() {
        bail!(
            "{}: is a directory; --format mcap writes one file",
            out.display()
        );
    }
    let mut sim = bevrt_sim::Simulator::new(cfg.clone())?;
    let mut w = BagWriter::create(out, BagCompression::Zstd)?;
    let image = w.ros2_channel("/camera/image_raw", &msgs::IMAGE)?;
    let odom = w.ros2_channel("/odom", &msgs::ODOMETRY)?;
    let (width, height) = (cfg.width(), cfg.height());
    let mut rgb = vec![0u8; sim.frame_bytes()];
    let calib = cfg.calibration();
    w.write_calibration(&calib, "/camera/camera_info", sim.frame_timestamp_ns(0))?;
    let info = w.ros2_channel("/camera/camera_info", &msgs::CAMERA_INFO)?;
    for n in 0..frames {
        let pose = sim.render_frame(n, &mut rgb)?;
        let ts = sim.frame_timestamp_ns(n);
        msgs::Image {
            header: msgs::Header {
                stamp_ns: ts,
                frame_id: bag::CAMERA_FRAME,
            },
            height,
            width,
            encoding: "rgb8",
            is_bigendian: 0,
            step: 3 * width,
            data: &rgb,
        }
        .encode(&mut w.buf);
        w.write(image, ts, None)?;
        if n > 0 {
            bag::camera_info(&calib.camera, ts).encode(&mut w.buf);
            w.write(info, ts, None)?;
        }
        let (s, c) = (pose.yaw / 2.0).sin_cos();
        msgs::Odometry {
            header: msgs::Header {
                stamp_ns: ts,
                frame_id: "odom",
            },
            child_frame_id: bag::VEHICLE_FRAME,
            position: [pose.x, pose.y, 0.0],
            orientation: [0.0, 0.0, s, c],
        }
        .encode(&mut w.buf);
        w.write(odom, ts, None)?;
        progress(n + 1);
    }
    w.finish()
}
