//! Writes a simulated sequence in the replay recording format (version 1) that
//! `runtime/src/source/replay.rs` reads:
//!
//! ```text
//! DIR/recording.toml     format = 1, width, height, pixel_format = "rgb8", encoding = "png",
//!                        fps, calibration = "calibration.toml", ground_truth = "bev"
//! DIR/frames.csv         seq,timestamp_ns,file,gt   (frames/NNNNNN.png, gt/NNNNNN.png)
//! DIR/frames/NNNNNN.png  RGB8 camera frame
//! DIR/gt/NNNNNN.png      BEV class-index PNG (L8, grid rows x cols), 255 = unknown
//! DIR/calibration.toml   bevrt_calib::Calibration of the simulated camera
//! ```
//! Extras the replay reader ignores:
//! ```text
//! DIR/ground_truth.toml  the BEV grid and the class names / colours of the gt PNGs
//! DIR/poses.csv          seq,timestamp_ns,x,y,yaw,speed,s   ego pose per frame (world frame)
//! DIR/labels/NNNNNN.png  per-pixel class (L8; 254 = sky, 255 = outside the lens range)
//! DIR/depth/NNNNNN.png   depth along the optical axis, 16-bit PNG in centimetres
//!                        (0 = sky / no hit; clamped to 655.35 m)
//! DIR/gt_amodal/NNNNNN.png  amodal BEV: every cell's true class, seen or hidden (L8, as gt/)
//! ```
//! `labels/`, `depth/` and `gt_amodal/` are written only when asked (`extras`): they cost about
//! as much as the frame PNG itself.
//!
//! A stereo recording (`stereo_baseline`) also holds a second camera, the same lens mounted
//! `baseline` metres to the right of the first (vehicle −y), rendered at the same instants:
//! ```text
//! DIR/calibration_right.toml  bevrt_calib::Calibration of the right camera
//! DIR/right/NNNNNN.png        its RGB8 frame, the same name as frames/NNNNNN.png
//! ```
//! Readers that know nothing of it play the left camera as before.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::ImageEncoder;
use serde::Serialize;

use crate::config::SimConfig;
use crate::error::SimError;
use crate::simulator::Simulator;
use crate::world::{EgoPose, class};

#[derive(Serialize)]
struct RecordingToml<'a> {
    format: u32,
    width: u32,
    height: u32,
    pixel_format: &'a str,
    encoding: &'a str,
    fps: f64,
    calibration: &'a str,
    ground_truth: &'a str,
}

#[derive(Serialize)]
struct GtClass {
    id: u8,
    name: &'static str,
    color: [u8; 3],
}

#[derive(Serialize)]
struct GroundTruthToml<'a> {
    /// "bev": class index per cell; 255 = unknown / not visible.
    kind: &'a str,
    unknown: u8,
    seed: u64,
    grid: &'a bevrt_calib::BevGrid,
    classes: Vec<GtClass>,
}

/// What [`record`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordSummary {
    pub frames: u64,
    pub width: u32,
    pub height: u32,
    /// Total distance the ego drove, metres.
    pub distance_m: f64,
}

/// Encodes an 8-bit image as PNG.
pub fn encode_png(
    data: &[u8],
    width: u32,
    height: u32,
    color: image::ExtendedColorType,
) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    image::codecs::png::PngEncoder::new(&mut out).write_image(data, width, height, color)?;
    Ok(out)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), SimError> {
    std::fs::write(path, bytes).map_err(|e| SimError::io(path, e))
}

/// What [`record`] writes beside the frames, BEV ground truth, calibration and poses.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RecordOptions {
    /// Per-pixel labels, depth and the amodal BEV (`labels/`, `depth/`, `gt_amodal/`).
    pub extras: bool,
    /// A second camera this many metres to the right (`right/`, `calibration_right.toml`).
    pub stereo_baseline: Option<f64>,
}

/// The extrinsics of a camera `baseline` metres to the right (vehicle −y) of `left`, with the
/// same orientation: a rectified stereo pair when `left` looks along the vehicle's x axis.
pub fn right_of(left: &bevrt_calib::Extrinsics, baseline: f64) -> bevrt_calib::Extrinsics {
    bevrt_calib::Extrinsics {
        cam_to_vehicle: nalgebra::Isometry3::translation(0.0, -baseline, 0.0) * left.cam_to_vehicle,
    }
}

fn check_baseline(baseline: f64) -> Result<(), SimError> {
    if !(baseline.is_finite() && baseline > 0.0 && baseline <= 5.0) {
        return Err(SimError::config(
            "stereo baseline",
            "must be a number of metres in (0, 5]",
        ));
    }
    Ok(())
}

/// The right camera's simulator and frame buffer, and where its frames go.
fn stereo_partner(
    left: &Simulator,
    baseline: f64,
    out: &Path,
) -> Result<(Simulator, Vec<u8>), SimError> {
    let cfg = left.config();
    let mut right = cfg.clone();
    right.extrinsics = right_of(&cfg.extrinsics, baseline);
    // the left camera's world; the same seed: the same light and sensor noise stream
    let sim = Simulator::with_world(right.clone(), left.world().clone())?;
    right
        .calibration()
        .save(out.join("calibration_right.toml"))?;
    let bytes = sim.frame_bytes();
    Ok((sim, vec![0u8; bytes]))
}

/// Renders `frames` frames of `cfg` into the recording directory `out` (created; refused if
/// it already holds a `recording.toml`). `progress(done, total)` is called after each frame.
pub fn record(
    cfg: &SimConfig,
    frames: u64,
    out: &Path,
    opts: &RecordOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RecordSummary, SimError> {
    let extras = opts.extras;
    if let Some(b) = opts.stereo_baseline {
        check_baseline(b)?;
    }
    let header = out.join("recording.toml");
    if header.exists() {
        return Err(SimError::io(
            &header,
            "already exists: this directory holds a recording (choose another --out)",
        ));
    }
    let mut sim = Simulator::new(cfg.clone())?;
    let (w, h) = (cfg.width(), cfg.height());
    create_dirs(out, opts)?;
    cfg.calibration().save(out.join("calibration.toml"))?;
    let mut right = match opts.stereo_baseline {
        Some(b) => Some(stereo_partner(&sim, b, out)?),
        None => None,
    };
    write_ground_truth_toml(cfg, out)?;
    let mut csv = CsvFiles::create(out)?;
    let (gw, gh) = (cfg.grid.width() as u32, cfg.grid.height() as u32);
    let mut rgb = vec![0u8; sim.frame_bytes()];
    let mut depth16: Vec<u16> = Vec::new();
    let start = sim.ego_pose(0);
    let mut last = start;
    let mut distance = 0.0;
    for n in 0..frames {
        let pose = sim.render_frame(n, &mut rgb)?;
        distance += ((pose.x - last.x).powi(2) + (pose.y - last.y).powi(2)).sqrt();
        last = pose;
        let ts = sim.frame_timestamp_ns(n);
        let name = format!("frames/{n:06}.png");
        let p = out.join(&name);
        let bytes =
            encode_png(&rgb, w, h, image::ExtendedColorType::Rgb8).map_err(|e| png_err(&p, e))?;
        write(&p, &bytes)?;
        if let Some((sim_r, rgb_r)) = &mut right {
            sim_r.render_frame(n, rgb_r)?;
            let p = out.join(format!("right/{n:06}.png"));
            let bytes = encode_png(rgb_r, w, h, image::ExtendedColorType::Rgb8)
                .map_err(|e| png_err(&p, e))?;
            write(&p, &bytes)?;
        }
        if extras {
            write_labels_and_depth(&sim, n, out, &mut depth16)?;
        }
        let gname = format!("gt/{n:06}.png");
        let p = out.join(&gname);
        let bev = sim.bev_ground_truth();
        let bytes =
            encode_png(bev, gw, gh, image::ExtendedColorType::L8).map_err(|e| png_err(&p, e))?;
        write(&p, &bytes)?;
        if extras {
            let p = out.join(format!("gt_amodal/{n:06}.png"));
            let bytes = encode_png(sim.bev_amodal(), gw, gh, image::ExtendedColorType::L8)
                .map_err(|e| png_err(&p, e))?;
            write(&p, &bytes)?;
        }
        csv.row(n, ts, &name, &gname, &pose)?;
        progress(n + 1, frames);
    }
    csv.flush()?;
    // Header last: a recording without it is visibly incomplete.
    write_recording_toml(cfg, &header)?;
    Ok(RecordSummary {
        frames,
        width: w,
        height: h,
        distance_m: distance,
    })
}

fn png_err(p: &Path, e: image::ImageError) -> SimError {
    SimError::io(p, e)
}

/// The recording's folders: frames and ground truth, the extras', the right camera's.
fn create_dirs(out: &Path, opts: &RecordOptions) -> Result<(), SimError> {
    for sub in ["frames", "gt"]
        .into_iter()
        .chain(
            opts.extras
                .then_some(["labels", "depth", "gt_amodal"])
                .into_iter()
                .flatten(),
        )
        .chain(opts.stereo_baseline.map(|_| "right"))
    {
        let d = out.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| SimError::io(&d, e))?;
    }
    Ok(())
}

/// `ground_truth.toml`: the BEV grid, the seed and the classes.
fn write_ground_truth_toml(cfg: &SimConfig, out: &Path) -> Result<(), SimError> {
    let gt = GroundTruthToml {
        kind: "bev",
        unknown: class::UNKNOWN,
        seed: cfg.seed,
        grid: &cfg.grid,
        classes: (0..class::COUNT)
            .map(|i| GtClass {
                id: i as u8,
                name: class::NAMES[i],
                color: class::COLORS[i],
            })
            .collect(),
    };
    let gt_path = out.join("ground_truth.toml");
    write(
        &gt_path,
        toml::to_string_pretty(&gt)
            .map_err(|e| SimError::io(&gt_path, e))?
            .as_bytes(),
    )
}

/// `recording.toml`, the header a reader opens first.
fn write_recording_toml(cfg: &SimConfig, header: &Path) -> Result<(), SimError> {
    let info = RecordingToml {
        format: 1,
        width: cfg.width(),
        height: cfg.height(),
        pixel_format: "rgb8",
        encoding: "png",
        fps: cfg.fps,
        calibration: "calibration.toml",
        ground_truth: "bev",
    };
    write(
        header,
        toml::to_string_pretty(&info)
            .map_err(|e| SimError::io(header, e))?
            .as_bytes(),
    )
}

/// The extras of frame `n`: per-pixel labels and depth in centimetres (16-bit PNG, 0 = sky).
fn write_labels_and_depth(
    sim: &Simulator,
    n: u64,
    out: &Path,
    depth16: &mut Vec<u16>,
) -> Result<(), SimError> {
    let (w, h) = (sim.config().width(), sim.config().height());
    let p = out.join(format!("labels/{n:06}.png"));
    let bytes =
        encode_png(sim.labels(), w, h, image::ExtendedColorType::L8).map_err(|e| png_err(&p, e))?;
    write(&p, &bytes)?;
    depth16.clear();
    depth16.extend(sim.depth().iter().map(|&d| {
        if d.is_finite() {
            (d * 100.0).round().clamp(0.0, 65535.0) as u16
        } else {
            0
        }
    }));
    let p = out.join(format!("depth/{n:06}.png"));
    let img = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(w, h, &depth16[..])
        .ok_or_else(|| SimError::io(&p, "depth buffer size mismatch"))?;
    img.save_with_format(&p, image::ImageFormat::Png)
        .map_err(|e| png_err(&p, e))
}

/// `frames.csv` (the frame index) and `poses.csv` (the ego trajectory), one row per frame.
struct CsvFiles {
    index_path: PathBuf,
    index: std::io::BufWriter<std::fs::File>,
    poses_path: PathBuf,
    poses: std::io::BufWriter<std::fs::File>,
}

impl CsvFiles {
    /// Creates both files and writes their header lines.
    fn create(out: &Path) -> Result<CsvFiles, SimError> {
        let index_path = out.join("frames.csv");
        let mut index = std::io::BufWriter::new(
            std::fs::File::create(&index_path).map_err(|e| SimError::io(&index_path, e))?,
        );
        let poses_path = out.join("poses.csv");
        let mut poses = std::io::BufWriter::new(
            std::fs::File::create(&poses_path).map_err(|e| SimError::io(&poses_path, e))?,
        );
        writeln!(index, "seq,timestamp_ns,file,gt").map_err(|e| SimError::io(&index_path, e))?;
        writeln!(poses, "seq,timestamp_ns,x,y,yaw,speed,s")
            .map_err(|e| SimError::io(&poses_path, e))?;
        Ok(CsvFiles {
            index_path,
            index,
            poses_path,
            poses,
        })
    }

    fn row(
        &mut self,
        n: u64,
        ts: u64,
        name: &str,
        gname: &str,
        pose: &EgoPose,
    ) -> Result<(), SimError> {
        let (index_path, poses_path) = (&self.index_path, &self.poses_path);
        writeln!(self.index, "{n},{ts},{name},{gname}").map_err(|e| SimError::io(index_path, e))?;
        writeln!(
            self.poses,
            "{n},{ts},{:.4},{:.4},{:.6},{:.4},{:.3}",
            pose.x, pose.y, pose.yaw, pose.speed, pose.s
        )
        .map_err(|e| SimError::io(poses_path, e))
    }

    fn flush(&mut self) -> Result<(), SimError> {
        self.index
            .flush()
            .map_err(|e| SimError::io(&self.index_path, e))?;
        self.poses
            .flush()
            .map_err(|e| SimError::io(&self.poses_path, e))
    }
}
