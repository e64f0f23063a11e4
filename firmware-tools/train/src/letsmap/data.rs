//! Training and evaluation data: simulator recordings (the replay format with BEV ground
//! truth) read into memory, and batches made through the runtime's own preprocess.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bevrt_calib::{BevGrid, Calibration};
use bevrt_models::{InputSpec, LetsMapLite};
use bevrt_runtime::preprocess::PreprocessPlan;
use bevrt_runtime::source::poses::{self, EgoPose};
use bevrt_runtime::source::replay::Recording;
use bevrt_runtime::{Frame, PixelFormat};
use candle_core::{Device, Tensor};

use crate::progress::progress;

/// The input spec letsmap-lite bundles use: RGB, NCHW f32, (x/255 - 0.5) / 0.25.
pub fn input_spec(arch: &LetsMapLite) -> InputSpec {
    InputSpec {
        name: Some("image".into()),
        width: arch.input_w as u32,
        height: arch.input_h as u32,
        channels: bevrt_models::ChannelOrder::Rgb,
        layout: bevrt_models::Layout::Nchw,
        dtype: bevrt_models::InputDtype::F32,
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    }
}

/// Frames of one or more recordings in memory (RGB8), with BEV ground truth where present.
pub struct Dataset {
    pub width: u32,
    pub height: u32,
    pub frames: Vec<Vec<u8>>,
    /// Each frame's image file (the recording's `depth/` holds a depth map of the same name
    /// when the recording was made with `sim record --extras`).
    pub frame_files: Vec<PathBuf>,
    /// Class index per BEV cell (255 = unknown), one per frame when the recording has it.
    pub gt: Vec<Option<Vec<u8>>>,
    /// Index of the first frame of the recording each frame belongs to (temporal pairs never
    /// cross recordings).
    pub first_of_recording: Vec<usize>,
    pub calibration: Calibration,
    pub calibration_path: PathBuf,
    /// The ground-truth grid (`ground_truth.toml`), if the recordings have one.
    pub grid: Option<BevGrid>,
    /// Simulator seeds of the recordings (from `ground_truth.toml`), for provenance.
    pub seeds: Vec<u64>,
    /// The ego pose of every frame (`poses.csv`), when every recording has one; `None`
    /// otherwise. A `poses.csv` that is there but wrong is an error.
    pub poses: Option<Vec<EgoPose>>,
    /// The second camera of stereo recordings (`sim record --stereo`), when every recording
    /// has one; `None` otherwise.
    pub right: Option<RightCamera>,
}

/// A stereo recording's right camera: `calibration_right.toml` (the same lens as the left
/// one) and `right/`, one frame per left frame.
pub struct RightCamera {
    pub extrinsics: bevrt_calib::Extrinsics,
    pub frames: Vec<Vec<u8>>,
}

/// A recording's right camera, if it has one: its extrinsics, checked against the left camera.
fn right_calibration(dir: &Path, left: &Calibration) -> Result<Option<bevrt_calib::Extrinsics>> {
    let path = dir.join("calibration_right.toml");
    if !path.is_file() {
        return Ok(None);
    }
    let right = Calibration::load(&path)?;
    if right.camera != left.camera {
        bail!(
            "{}: the right camera's intrinsics differ from calibration.toml's (training needs one lens)",
            path.display()
        );
    }
    Ok(Some(right.extrinsics))
}

/// Decodes one RGB8 frame of `w` x `h`.
fn read_frame(path: &Path, w: u32, h: u32) -> Result<Vec<u8>> {
    let img = image::open(path)
        .with_context(|| format!("{}: cannot decode frame", path.display()))?
        .to_rgb8();
    if img.dimensions() != (w, h) {
        bail!(
            "{}: {}x{}, the recording says {}x{}",
            path.display(),
            img.width(),
            img.height(),
            w,
            h
        );
    }
    Ok(img.into_raw())
}

#[derive(serde::Deserialize)]
struct GtToml {
    grid: BevGrid,
    #[serde(default)]
    seed: Option<u64>,
}

/// Reads the recordings under `dir`: `dir` itself or each subdirectory with a recording.toml.
pub fn load(dir: &Path, limit: Option<usize>, progress: &dyn Fn(usize, usize)) -> Result<Dataset> {
    let dirs = recording_dirs(dir)?;
    let mut ds: Option<Dataset> = None;
    let recs: Vec<Recording> = dirs
        .iter()
        .map(|d| Recording::open(d).map_err(anyhow::Error::from))
        .collect::<Result<_>>()?;
    let total: usize = recs
        .iter()
        .map(|r| r.frames.len())
        .sum::<usize>()
        .min(limit.unwrap_or(usize::MAX));
    let mut done = 0;
    for rec in &recs {
        if rec.pixel_format != PixelFormat::Rgb8 {
            bail!(
                "{}: pixel_format {} (training reads rgb8 recordings)",
                rec.dir.display(),
                rec.info.pixel_format
            );
        }
        let cal_path = rec
            .calibration_path()
            .with_context(|| format!("{}: recording has no calibration", rec.dir.display()))?;
        let cal = Calibration::load(&cal_path)?;
        let gt_toml = rec.dir.join("ground_truth.toml");
        let (grid, seed) = read_ground_truth_toml(&gt_toml)?;
        let rec_right = right_calibration(&rec.dir, &cal)?;
        let d = ds.get_or_insert_with(|| Dataset {
            width: rec.info.width,
            height: rec.info.height,
            frames: vec![],
            frame_files: vec![],
            gt: vec![],
            first_of_recording: vec![],
            calibration: cal.clone(),
            calibration_path: cal_path.clone(),
            grid: grid.clone(),
            seeds: vec![],
            poses: Some(vec![]),
            // stereo while every recording so far has the same right camera
            right: rec_right.map(|extrinsics| RightCamera {
                extrinsics,
                frames: vec![],
            }),
        });
        d.seeds.extend(seed);
        if (rec.info.width, rec.info.height) != (d.width, d.height) {
            bail!(
                "{}: frames are {}x{}, earlier recordings {}x{}",
                rec.dir.display(),
                rec.info.width,
                rec.info.height,
                d.width,
                d.height
            );
        }
        if grid != d.grid {
            bail!(
                "{}: BEV grid differs from the earlier recordings'",
                gt_toml.display()
            );
        }
        let rec_poses = recording_poses(rec)?;
        if let Some(r) = &d.right
            && rec_right != Some(r.extrinsics)
        {
            log::info!(
                "{}: no right camera like the earlier recordings'; the data is used as monocular",
                rec.dir.display()
            );
            d.right = None;
        }
        append_frames(d, rec, rec_poses.as_deref(), total, &mut done, progress)?;
    }
    ds.context("no frames")
}

/// The recording directories of `dir`: itself if it is one, else its subdirectories that
/// are (sorted); an error if there are none.
pub(super) fn recording_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = vec![];
    if dir.join("recording.toml").is_file() {
        dirs.push(dir.to_path_buf());
    } else {
        let rd = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot read data directory", dir.display()))?;
        for e in rd.flatten() {
            if e.path().join("recording.toml").is_file() {
                dirs.push(e.path());
            }
        }
        dirs.sort();
    }
    if dirs.is_empty() {
        bail!(
            "{}: no recording (recording.toml) here or in its subdirectories; make one with \
             `bevrt-tool sim record`",
            dir.display()
        );
    }
    Ok(dirs)
}

/// A recording's BEV grid and simulator seed from its `ground_truth.toml` (none without one).
fn read_ground_truth_toml(gt_toml: &Path) -> Result<(Option<BevGrid>, Option<u64>)> {
    Ok(if gt_toml.is_file() {
        let text = std::fs::read_to_string(gt_toml)
            .with_context(|| format!("{}: unreadable", gt_toml.display()))?;
        let g: GtToml = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", gt_toml.display(), e.message()))?;
        (Some(g.grid), g.seed)
    } else {
        (None, None)
    })
}

/// A recording's ego-motion from its `poses.csv`, if it has one.
fn recording_poses(rec: &Recording) -> Result<Option<Vec<EgoPose>>> {
    Ok(if rec.dir.join("poses.csv").is_file() {
        Some(poses::load(rec)?)
    } else {
        log::info!(
            "{}: no poses.csv; ego-motion is unavailable for this data",
            rec.dir.display()
        );
        None
    })
}

/// Appends the frames of `rec` (and their right-camera frames, ground truth and poses) to
/// `d` until `total` frames are loaded in all, counting them in `done`.
fn append_frames(
    d: &mut Dataset,
    rec: &Recording,
    rec_poses: Option<&[EgoPose]>,
    total: usize,
    done: &mut usize,
    progress: &dyn Fn(usize, usize),
) -> Result<()> {
    let first = d.frames.len();
    for (k, e) in rec.frames.iter().enumerate() {
        if *done >= total {
            break;
        }
        d.frames.push(read_frame(&e.file, d.width, d.height)?);
        if let Some(r) = &mut d.right {
            let name = e.file.file_name().context("frame without a file name")?;
            r.frames.push(read_frame(
                &rec.dir.join("right").join(name),
                d.width,
                d.height,
            )?);
        }
        d.frame_files.push(e.file.clone());
        let gt = match &e.gt {
            Some(p) => Some(read_ground_truth(p, d.grid.as_ref())?),
            None => None,
        };
        d.gt.push(gt);
        d.poses = match (d.poses.take(), rec_poses) {
            (Some(mut all), Some(p)) => {
                all.push(p[k]);
                Some(all)
            }
            _ => None,
        };
        d.first_of_recording.push(first);
        *done += 1;
        progress(*done, total);
    }
    Ok(())
}

/// A frame's BEV ground truth (class per cell), checked against the grid's size.
fn read_ground_truth(p: &Path, grid: Option<&BevGrid>) -> Result<Vec<u8>> {
    let g = image::open(p)
        .with_context(|| format!("{}: cannot decode ground truth", p.display()))?
        .to_luma8();
    let want = grid.map(|g| (g.width() as u32, g.height() as u32));
    if want.is_some_and(|w| w != g.dimensions()) {
        bail!(
            "{}: size differs from ground_truth.toml's grid",
            p.display()
        );
    }
    Ok(g.into_raw())
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Checks that the data fits the architecture (input size, and for labels the grid).
    pub fn check_for(&self, arch: &LetsMapLite, need_labels: bool) -> Result<()> {
        if (self.width as usize, self.height as usize) != (arch.input_w, arch.input_h) {
            bail!(
                "frames are {}x{}, letsmap-lite takes {}x{} (record with --width {} --height {})",
                self.width,
                self.height,
                arch.input_w,
                arch.input_h,
                arch.input_w,
                arch.input_h
            );
        }
        if need_labels {
            let Some(g) = &self.grid else {
                bail!("the recordings have no BEV ground truth (ground_truth.toml)");
            };
            if (g.x_min, g.x_max, g.y_min, g.y_max, g.cell)
                != (
                    arch.grid.x_min,
                    arch.grid.x_max,
                    arch.grid.y_min,
                    arch.grid.y_max,
                    arch.grid.cell,
                )
            {
                bail!(
                    "ground truth grid x {}..{} y {}..{} cell {} differs from the model's x {}..{} \
                     y {}..{} cell {} (record with --cell {})",
                    g.x_min,
                    g.x_max,
                    g.y_min,
                    g.y_max,
                    g.cell,
                    arch.grid.x_min,
                    arch.grid.x_max,
                    arch.grid.y_min,
                    arch.grid.y_max,
                    arch.grid.cell,
                    arch.grid.cell
                );
            }
            if self.gt.iter().all(|g| g.is_none()) {
                bail!("no frame has a ground-truth map");
            }
        }
        Ok(())
    }

    /// Frames with labels.
    pub fn labelled(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.gt[i].is_some()).collect()
    }
}

/// [`load`] with a progress bar on the terminal.
pub fn load_with_bar(dir: &Path, limit: Option<usize>) -> Result<Dataset> {
    let pb = progress(0, "loading");
    let ds = load(dir, limit, &|d, t| {
        pb.set_length(t as u64);
        pb.set_position(d as u64);
    })?;
    pb.finish_and_clear();
    Ok(ds)
}

/// The simulator's depth map of frame `i` (metres per pixel, 0 where none), from the
/// recording's `depth/` folder.
pub fn read_depth_map(ds: &Dataset, i: usize) -> Result<Vec<f32>> {
    let f = &ds.frame_files[i];
    let name = f.file_name().context("frame file name")?;
    let p = f
        .parent()
        .and_then(Path::parent)
        .context("frame file path")?
        .join("depth")
        .join(name);
    let img = image::open(&p)
        .with_context(|| {
            format!(
                "{}: cannot read the depth map (record with `sim record --extras`)",
                p.display()
            )
        })?
        .to_luma16();
    if img.dimensions() != (ds.width, ds.height) {
        bail!("{}: size differs from the frame's", p.display());
    }
    Ok(img.into_raw().iter().map(|&c| c as f32 / 100.0).collect())
}

/// Turns RGB8 frames into normalised NCHW tensors with the runtime's preprocess (so training
/// sees exactly what `bevrt run` feeds the encoder).
pub struct Batcher {
    plan: PreprocessPlan,
    frame: Frame,
    buf: Vec<f32>,
    shape: [usize; 3],
}

impl Batcher {
    pub fn new(arch: &LetsMapLite, ds: &Dataset) -> Batcher {
        let spec = input_spec(arch);
        Batcher {
            plan: PreprocessPlan::new(&spec, ds.width, ds.height),
            frame: Frame::with_capacity((ds.width * ds.height * 3) as usize),
            buf: vec![0.0; spec.numel()],
            shape: [3, arch.input_h, arch.input_w],
        }
    }

    /// RGB8 frames of `w` x `h` (augmented views, say) through the same preprocess.
    pub fn raw_images(&mut self, frames: &[Vec<u8>], w: u32, h: u32) -> Result<Tensor> {
        let mut all = Vec::with_capacity(frames.len() * self.buf.len());
        for f in frames {
            self.frame.reset(PixelFormat::Rgb8, w, h);
            self.frame.data.copy_from_slice(f);
            self.plan.run(&self.frame, &mut self.buf);
            all.extend_from_slice(&self.buf);
        }
        let [c, hh, ww] = self.shape;
        Ok(Tensor::from_vec(
            all,
            (frames.len(), c, hh, ww),
            &Device::Cpu,
        )?)
    }

    pub fn images(&mut self, ds: &Dataset, idx: &[usize]) -> Result<Tensor> {
        let mut all = Vec::with_capacity(idx.len() * self.buf.len());
        for &i in idx {
            self.frame.reset(PixelFormat::Rgb8, ds.width, ds.height);
            self.frame.data.copy_from_slice(&ds.frames[i]);
            self.plan.run(&self.frame, &mut self.buf);
            all.extend_from_slice(&self.buf);
        }
        let [c, h, w] = self.shape;
        Ok(Tensor::from_vec(all, (idx.len(), c, h, w), &Device::Cpu)?)
    }
}
