//! `bevrt-tool pretrain-geometry`: the geometry pathway, learned from video without labels,
//! and `bevrt-tool depth-eval`, which scores the depth it learned.
//!
//! The encoder and its lift conv predict, per feature pixel, a distribution over the grid's
//! depth bins (the same distribution the depth-weighted lift uses at run time). The training
//! signal is view synthesis with the recorded ego-motion: [`super::photometric`] re-synthesises
//! each frame from its neighbours at every bin's depth and scores each with Monodepth2's
//! error (min over sources, auto-masked). The distribution is trained towards
//! `softmax(-error / τ)` (cross-entropy): the bins whose re-synthesis matches get the mass, a
//! pixel whose bins all match equally (texture-less road, sky) is left uniform, which the lift
//! treats as "no depth information" (the plain view transform). Monodepth2's edge-aware
//! smoothness (1e-3) on the mean-normalised expected disparity is added.
//!
//! The simulator's depth maps are read only by [`depth_metrics`] (AbsRel, δ < 1.25), for the
//! report; never by training.

use bevrt_runtime::choice::Choice;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bevrt_calib::DepthBins;
use bevrt_models::{ConvLayer, LetsMapLite};
use candle_core::{Device, Tensor};
use nalgebra::Isometry3;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::data::{Batcher, Dataset, RightCamera};
use super::nn::Params;
use super::photometric::{CostVolume, Planes, RayCamera, Source, cost_volume};
use super::synthesis::{Sample, ViewSynthesis};
use crate::optim::{self, Adam};
use crate::progress::progress;
use crate::rng::Rng;

/// `pretrain-geometry`'s settings; recorded in `geometry.json` (field names are what `--resume`
/// compares).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GeometryConfig {
    /// Unlabelled recordings with ego-motion (poses.csv): a recording or a directory of them.
    pub data: PathBuf,
    /// Output directory for the checkpoint (`geometry.safetensors`, `geometry.json`).
    pub out: PathBuf,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    /// `warp`: Monodepth2's view synthesis through the expected depth, by gradient descent
    /// through the warp ([`super::synthesis`]). `sweep`: the distribution trained towards
    /// softmax(-error/τ) of a plane-sweep cost volume ([`super::photometric::cost_volume`]).
    pub objective: Objective,
    /// Source frames are t-gap and t+gap (frames of the same recording).
    pub gap: usize,
    /// Temperature of the target distribution softmax(-error / τ) (photometric error units;
    /// 0.01 is about the error sensor noise alone gives).
    pub temperature: f32,
    /// Pixels whose errors over the bins differ by less than this carry no depth signal
    /// (texture-less road, walls, sky: every depth re-synthesises them equally) and are left
    /// out, so the depth there stays with the prior instead of following noise.
    pub min_contrast: f32,
    /// Weight of the edge-aware smoothness (Monodepth2: 1e-3).
    pub smoothness: f64,
    /// Ignore the right camera of stereo recordings (by default each frame t is also
    /// re-synthesised from the right camera's frame t: the spatial pair, a known 0.5 m
    /// baseline that fixes the scale even where the ego stands still).
    #[serde(default)]
    pub mono: bool,
    /// Start the encoder from this checkpoint (e.g. the semantic pathway's pretrain.safetensors).
    pub encoder: Option<PathBuf>,
    /// Train only the last N layers of the deployed encoder (the depth head counting as the
    /// last; default all). With --encoder from the semantic pathway this keeps the two
    /// pathways disjoint: the trunk keeps what masked reconstruction taught and the geometry
    /// pathway trains the depth head and the layers nearest it.
    #[serde(default)]
    pub train_last: Option<usize>,
    pub seed: u64,
    /// Start the depth head from a uniform distribution instead of the flat-ground prior the
    /// calibration gives ([`ground_prior_logits`]).
    pub no_ground_prior: bool,
    /// Use at most this many frames.
    pub frames: Option<usize>,
    /// Report depth metrics on these recordings (made with `sim record --extras`) before
    /// training and after every epoch. Only reported: nothing is chosen by them.
    pub eval_depth: Option<PathBuf>,
    /// Continue from the checkpoint in --out (same arguments; only --epochs may grow).
    #[serde(skip)]
    pub resume: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    Warp,
    Sweep,
}

impl Choice for Objective {
    const ALL: &'static [Self] = &[Self::Warp, Self::Sweep];
    fn name(self) -> &'static str {
        match self {
            Self::Warp => "warp",
            Self::Sweep => "sweep",
        }
    }
}
bevrt_runtime::named_choice!(Objective);

/// What `geometry.json` records beside the checkpoint.
#[derive(Debug, Serialize, Deserialize)]
pub struct GeometryState {
    pub args: GeometryConfig,
    pub epochs_done: usize,
    pub step: u64,
    /// Mean training loss (cross-entropy + smoothness) per epoch.
    pub epoch_loss: Vec<f32>,
    /// Photometric error per epoch: of the re-synthesis through the expected depth (warp), or
    /// expected under the predicted distribution (sweep); falls as the depth is learned.
    pub epoch_photometric_error: Vec<f32>,
    /// Depth metrics before training and after each epoch (with --eval-depth).
    pub depth: Vec<DepthMetrics>,
    pub cost_volume_seconds: f64,
    pub train_seconds: f64,
}

/// Depth against the simulator's depth maps (pixels with true depth inside the bins' range).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DepthMetrics {
    pub abs_rel: f64,
    pub sq_rel: f64,
    pub rmse: f64,
    /// Fraction with max(d/g, g/d) < 1.25.
    pub delta1: f64,
    pub pixels: u64,
    pub frames: usize,
}

/// The ego-motion of every frame, or why the geometry pathway cannot run on this data.
fn poses_of(ds: &Dataset) -> Result<&[bevrt_runtime::source::poses::EgoPose]> {
    ds.poses.as_deref().context(
        "the geometry pathway needs the ego-motion of every frame: each recording needs a \
         poses.csv (docs/src/reference/recording-format.md)",
    )
}

/// Index of each frame's sources (t-gap, t+gap) inside its recording.
fn sources_of(ds: &Dataset, i: usize, gap: usize) -> Vec<usize> {
    let first = ds.first_of_recording[i];
    let mut v = vec![];
    if i >= first + gap {
        v.push(i - gap);
    }
    let j = i + gap;
    if j < ds.len() && ds.first_of_recording[j] == first {
        v.push(j);
    }
    v
}

/// A source image and the transform from the target camera frame to its camera frame.
type PosedImage = (Isometry3<f64>, Planes);

/// The view-synthesis sources of frame `i`: frames t±gap of its recording through the
/// ego-motion and, with `stereo` (right camera to use), the right camera's frame t through the
/// fixed left-to-right transform. Images at half resolution.
fn synthesis_sources(
    ds: &Dataset,
    i: usize,
    gap: usize,
    cam: &RayCamera,
    stereo: Option<&RightCamera>,
) -> Result<Vec<PosedImage>> {
    let poses = poses_of(ds)?;
    let (w, h) = (ds.width as usize, ds.height as usize);
    let mut v: Vec<PosedImage> = sources_of(ds, i, gap)
        .into_iter()
        .map(|j| {
            (
                cam.target_to_source(&poses[i], &poses[j]),
                Planes::half_of_rgb8(&ds.frames[j], w, h),
            )
        })
        .collect();
    if let Some(r) = stereo {
        v.push((
            r.extrinsics.vehicle_to_cam() * cam.extrinsics.cam_to_vehicle,
            Planes::half_of_rgb8(&r.frames[i], w, h),
        ));
    }
    Ok(v)
}

/// Cost volumes of the frames `idx` (in parallel; see [`super::photometric`]).
fn cost_volumes(
    ds: &Dataset,
    arch: &LetsMapLite,
    bins: &DepthBins,
    idx: &[usize],
    gap: usize,
    min_contrast: f32,
    stereo: Option<&RightCamera>,
) -> Result<Vec<CostVolume>> {
    let (w, h) = (ds.width as usize, ds.height as usize);
    let (fh, fw) = arch.feat_hw();
    let (hw, hh) = (w / 2, h / 2);
    if hw % fw != 0 || hh % fh != 0 {
        bail!("half-resolution frames {hw}x{hh} are not whole blocks of the {fw}x{fh} features");
    }
    let cam = RayCamera::new(&ds.calibration.camera, &ds.calibration.extrinsics, hw, hh);
    let pb = progress(idx.len() as u64, "cost volumes");
    let out = idx
        .par_iter()
        .map(|&i| {
            let target = Planes::half_of_rgb8(&ds.frames[i], w, h);
            let images = synthesis_sources(ds, i, gap, &cam, stereo)?;
            let sources: Vec<Source> = images
                .iter()
                .map(|(iso, img)| Source {
                    image: img,
                    target_to_source: *iso,
                })
                .collect();
            let cv = cost_volume(&cam, &target, &sources, bins, fw, fh, min_contrast);
            pb.inc(1);
            cv
        })
        .collect::<Result<Vec<_>>>();
    pb.finish_and_clear();
    out
}

/// Targets softmax(-cost / τ) (B, D, fh, fw) and weights (B, 1, fh, fw) of a batch.
fn targets(
    cvs: &[&CostVolume],
    d: usize,
    fh: usize,
    fw: usize,
    tau: f32,
) -> Result<(Tensor, Tensor)> {
    let plane = fh * fw;
    let mut q = Vec::with_capacity(cvs.len() * d * plane);
    let mut wt = Vec::with_capacity(cvs.len() * plane);
    let mut col = vec![0f32; d];
    for cv in cvs {
        let start = q.len();
        q.resize(start + d * plane, 0.0);
        for p in 0..plane {
            for (k, c) in col.iter_mut().enumerate() {
                *c = -cv.cost[k * plane + p] / tau;
            }
            let m = col.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = col.iter().map(|v| (v - m).exp()).sum();
            for (k, c) in col.iter().enumerate() {
                q[start + k * plane + p] = (c - m).exp() / s;
            }
        }
        wt.extend_from_slice(&cv.weight);
    }
    let b = cvs.len();
    Ok((
        Tensor::from_vec(q, (b, d, fh, fw), &Device::Cpu)?,
        Tensor::from_vec(wt, (b, 1, fh, fw), &Device::Cpu)?,
    ))
}

/// The expected depth (B, 1, fh, fw) and disparity of an encoder output's depth logits.
pub fn expected_depth(out: &Tensor, bins: &DepthBins) -> Result<(Tensor, Tensor)> {
    let p = super::nn::depth_probabilities(out, bins.bins)?;
    let centres = Tensor::from_vec(bins.centres(), (1, bins.bins, 1, 1), &Device::Cpu)?;
    let inv: Vec<f32> = bins.centres().iter().map(|c| 1.0 / c).collect();
    let inv = Tensor::from_vec(inv, (1, bins.bins, 1, 1), &Device::Cpu)?;
    let depth = p.broadcast_mul(&centres)?.sum_keepdim(1)?;
    let disp = p.broadcast_mul(&inv)?.sum_keepdim(1)?;
    Ok((depth, disp))
}

/// Depth logits (D, fh, fw) of a flat-ground prior from the calibration alone: a feature
/// pixel whose ray meets the ground at camera depth `z_g` gets logits `-(ln c_k - ln z_g)² /
/// (2 · 0.2²)` (clamped at -8), peaked at the ground's bin; pixels above the horizon (or whose
/// ground is past twice the last bin) get 0, a uniform distribution. The geometry pathway
/// starts its per-position depth bias here, then view synthesis moves it.
pub fn ground_prior_logits(
    arch: &LetsMapLite,
    camera: &bevrt_calib::CameraModel,
    extrinsics: &bevrt_calib::Extrinsics,
    bins: &DepthBins,
) -> Vec<f32> {
    let (fh, fw) = arch.feat_hw();
    let s = arch.stride() as f64;
    let cam = camera.scaled(arch.input_w as u32, arch.input_h as u32);
    let plane = fh * fw;
    let ln_c: Vec<f64> = bins.centres().iter().map(|c| (*c as f64).ln()).collect();
    let mut out = vec![0f32; bins.bins * plane];
    for fy in 0..fh {
        for fx in 0..fw {
            let px =
                nalgebra::Point2::new((fx as f64 + 0.5) * s - 0.5, (fy as f64 + 0.5) * s - 0.5);
            let Some(ray) = cam.unproject(px) else {
                continue;
            };
            let Some(g) = extrinsics.ray_to_ground(&ray) else {
                continue;
            };
            let z = (extrinsics.vehicle_to_cam() * g).z;
            if !(z > 0.0 && z <= 2.0 * bins.max as f64) {
                continue;
            }
            for (k, lc) in ln_c.iter().enumerate() {
                let t = (lc - z.ln()) / 0.2;
                out[k * plane + fy * fw + fx] = (-0.5 * t * t).max(-8.0) as f32;
            }
        }
    }
    out
}

/// Sets the depth part (last D channels) of the lift's position bias to `logits` (D, fh, fw).
fn set_depth_position(params: &Params, arch: &LetsMapLite, logits: &[f32]) -> Result<()> {
    let l = arch.lift.last().context("no lift conv")?;
    let var = params
        .vars
        .get(&format!("{}.position", l.name))
        .context("lift position bias missing")?;
    let mut v = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    let d = logits.len();
    let n = v.len();
    v[n - d..].copy_from_slice(logits);
    var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu)?)?;
    Ok(())
}

pub fn pretrain_geometry(a: &GeometryConfig) -> Result<()> {
    let arch = LetsMapLite::default();
    let bins = arch
        .grid
        .depth
        .clone()
        .context("the architecture's grid has no depth bins")?;
    let encoder = arch.deployed_encoder();
    let n_trained = check_geometry_config(a, encoder.len())?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("{}: cannot create", a.out.display()))?;
    let ckpt = a.out.join("geometry.safetensors");
    let state_path = a.out.join("geometry.json");
    let ds = super::data::load_with_bar(&a.data, a.frames)?;
    ds.check_for(&arch, false)?;
    let eval = match &a.eval_depth {
        Some(p) => Some(DepthTruth::load(p)?),
        None => None,
    };
    let params = init_geometry_params(a, &arch, &ds, &bins)?;
    let mut opt = Adam::new(
        params.of_layers(&encoder[encoder.len() - n_trained..])?,
        a.lr,
    )?;
    let mut st = geometry_state(a, &params, &mut opt, &encoder, &ckpt, &state_path)?;
    let usable = usable_frames(a, &ds)?;
    let t0 = std::time::Instant::now();
    let (w, h) = (ds.width as usize, ds.height as usize);
    let (fh, fw) = arch.feat_hw();
    poses_of(&ds)?;
    let stereo = stereo_camera(a, &ds);
    let cvs = sweep_cost_volumes(a, &ds, &arch, &bins, &usable, stereo, t0)?;
    let cv_secs = t0.elapsed().as_secs_f64();
    st.cost_volume_seconds += cv_secs;
    let synthesis = view_synthesis(a, &ds, (w, h), (fh, fw))?;
    let mut batcher = Batcher::new(&arch, &ds);
    if let (Some(ev), true) = (&eval, st.depth.is_empty()) {
        let m = depth_metrics(&params, &arch, ev)?;
        println!("depth before training: {}", describe(&m));
        st.depth.push(m);
    }
    let run = GeometryRun {
        a,
        arch: &arch,
        bins: &bins,
        ds: &ds,
        encoder: &encoder,
        n_trained,
        usable: &usable,
        cvs: &cvs,
        synthesis: &synthesis,
        stereo,
    };
    let per_epoch = usable.len().div_ceil(a.batch);
    let pb = progress(
        (per_epoch * a.epochs.saturating_sub(st.epochs_done)) as u64,
        "geometry",
    );
    let t_train = std::time::Instant::now();
    let secs_before = st.train_seconds;
    for epoch in st.epochs_done..a.epochs {
        let (sum, sum_err, n) = run.epoch(epoch, &params, &mut opt, &mut batcher, &pb)?;
        st.epochs_done = epoch + 1;
        st.step = opt.step;
        st.epoch_loss.push((sum / n.max(1) as f64) as f32);
        st.epoch_photometric_error
            .push((sum_err / n.max(1) as f64) as f32);
        if let Some(ev) = &eval {
            let m = depth_metrics(&params, &arch, ev)?;
            pb.println(format!("depth after epoch {}: {}", epoch + 1, describe(&m)));
            st.depth.push(m);
        }
        st.train_seconds = secs_before + t_train.elapsed().as_secs_f64();
        let trained = params.of_layers(&encoder)?;
        optim::save_checkpoint(&ckpt, trained.iter().map(|(k, v)| (k, v)), Some(&opt))?;
        std::fs::write(&state_path, serde_json::to_string_pretty(&st)?)
            .with_context(|| format!("{}: cannot write", state_path.display()))?;
    }
    pb.finish_and_clear();
    println!(
        "geometry pathway: {} epochs on {} frames in {:.0} s (+{cv_secs:.0} s cost volumes); \
         loss per epoch {:?}; photometric error per epoch {:?}; checkpoint {}",
        a.epochs,
        usable.len(),
        st.train_seconds,
        st.epoch_loss,
        st.epoch_photometric_error,
        ckpt.display()
    );
    Ok(())
}

/// The warp objective's view synthesis at half the frames' resolution (`w` x `h`), onto the
/// `fh` x `fw` feature grid.
fn view_synthesis(
    a: &GeometryConfig,
    ds: &Dataset,
    (w, h): (usize, usize),
    (fh, fw): (usize, usize),
) -> Result<ViewSynthesis> {
    ViewSynthesis::new(
        RayCamera::new(
            &ds.calibration.camera,
            &ds.calibration.extrinsics,
            w / 2,
            h / 2,
        ),
        fh,
        fw,
        a.smoothness,
    )
}

/// Refuses settings no run can use (before any data loads); the number of the deployed
/// encoder's last layers to train (`--train-last`, default all of its `layers`).
fn check_geometry_config(a: &GeometryConfig, layers: usize) -> Result<usize> {
    if a.batch == 0 || a.epochs == 0 || a.gap == 0 {
        bail!("--batch, --epochs and --gap must be at least 1");
    }
    if !(a.temperature > 0.0 && a.temperature.is_finite()) {
        bail!("--temperature must be positive, got {}", a.temperature);
    }
    Ok(match a.train_last {
        Some(n) if n == 0 || n > layers => bail!(
            "--train-last must be between 1 and {} (the deployed encoder's layers), got {n}",
            layers
        ),
        Some(n) => n,
        None => layers,
    })
}

/// Fresh parameters, the encoder from `--encoder` if given, the depth head's position set to
/// the flat-ground prior unless `--no-ground-prior`.
fn init_geometry_params(
    a: &GeometryConfig,
    arch: &LetsMapLite,
    ds: &Dataset,
    bins: &DepthBins,
) -> Result<Params> {
    let params = Params::init(arch, a.seed)?;
    if let Some(p) = &a.encoder {
        let map = optim::load_checkpoint(p)?;
        params
            .load_from(&map, "param.", Some(&arch.encoder))
            .with_context(|| format!("{}: encoder weights", p.display()))?;
    }
    if !a.no_ground_prior {
        let cal = &ds.calibration;
        set_depth_position(
            &params,
            arch,
            &ground_prior_logits(arch, &cal.camera, &cal.extrinsics, bins),
        )?;
    }
    Ok(params)
}

/// A fresh progress record, or with `--resume` the interrupted run's (same arguments; only
/// `--epochs` may grow), its weights and Adam state loaded into `params` and `opt`.
fn geometry_state(
    a: &GeometryConfig,
    params: &Params,
    opt: &mut Adam,
    encoder: &[ConvLayer],
    ckpt: &Path,
    state_path: &Path,
) -> Result<GeometryState> {
    let st = GeometryState {
        args: a.clone(),
        epochs_done: 0,
        step: 0,
        epoch_loss: vec![],
        epoch_photometric_error: vec![],
        depth: vec![],
        cost_volume_seconds: 0.0,
        train_seconds: 0.0,
    };
    if !a.resume {
        return Ok(st);
    }
    let prev: GeometryState = crate::checkpoint::resume_state(state_path, |p: &GeometryState| {
        let mut want = p.args.clone();
        want.epochs = a.epochs;
        // the run directory may have been moved or copied: its state is what it holds
        want.out = a.out.clone();
        let mut have = a.clone();
        have.resume = false;
        want == have
    })?;
    let map = optim::load_checkpoint(ckpt)?;
    params.load_from(&map, "param.", Some(encoder))?;
    opt.load_state(&map, prev.step)?;
    println!(
        "resuming after epoch {} (step {})",
        prev.epochs_done, prev.step
    );
    Ok(GeometryState {
        args: a.clone(),
        ..prev
    })
}

/// The frames with at least one source `--gap` frames away in their recording.
fn usable_frames(a: &GeometryConfig, ds: &Dataset) -> Result<Vec<usize>> {
    let usable: Vec<usize> = (0..ds.len())
        .filter(|&i| !sources_of(ds, i, a.gap).is_empty())
        .collect();
    if usable.is_empty() {
        bail!(
            "{}: no frame has a neighbour {} frames away in its recording",
            a.data.display(),
            a.gap
        );
    }
    Ok(usable)
}

/// The right camera to use as a source too (stereo recordings, unless `--mono`).
fn stereo_camera<'d>(a: &GeometryConfig, ds: &'d Dataset) -> Option<&'d RightCamera> {
    let stereo = if a.mono { None } else { ds.right.as_ref() };
    if let Some(r) = stereo {
        let b = (r.extrinsics.cam_to_vehicle.translation.vector
            - ds.calibration.extrinsics.cam_to_vehicle.translation.vector)
            .norm();
        println!("stereo recordings: the right camera ({b:.2} m over) is a source too");
    }
    stereo
}

/// With `--objective sweep`, every usable frame's cost volume (computed once: nothing in it
/// is trained); none for `warp`.
fn sweep_cost_volumes(
    a: &GeometryConfig,
    ds: &Dataset,
    arch: &LetsMapLite,
    bins: &DepthBins,
    usable: &[usize],
    stereo: Option<&RightCamera>,
    t0: std::time::Instant,
) -> Result<Vec<CostVolume>> {
    Ok(match a.objective {
        Objective::Sweep => {
            let cvs = cost_volumes(ds, arch, bins, usable, a.gap, a.min_contrast, stereo)?;
            let kept: f64 = cvs
                .iter()
                .map(|c| c.weight.iter().sum::<f32>() as f64)
                .sum::<f64>()
                / (cvs.len() * cvs[0].weight.len()) as f64;
            println!(
                "cost volumes of {} frames in {:.0} s ({:.0} % of pixels kept by the auto-mask)",
                usable.len(),
                t0.elapsed().as_secs_f64(),
                kept * 100.0
            );
            cvs
        }
        Objective::Warp => vec![],
    })
}

/// What every training step of `pretrain-geometry` reads.
struct GeometryRun<'r> {
    a: &'r GeometryConfig,
    arch: &'r LetsMapLite,
    bins: &'r DepthBins,
    ds: &'r Dataset,
    encoder: &'r [ConvLayer],
    n_trained: usize,
    usable: &'r [usize],
    /// One per usable frame with `--objective sweep`, else none.
    cvs: &'r [CostVolume],
    synthesis: &'r ViewSynthesis,
    stereo: Option<&'r RightCamera>,
}

impl GeometryRun<'_> {
    /// One epoch over the usable frames in a seeded order: the sums of the loss and of the
    /// photometric error, and the number of steps.
    fn epoch(
        &self,
        epoch: usize,
        params: &Params,
        opt: &mut Adam,
        batcher: &mut Batcher,
        pb: &indicatif::ProgressBar,
    ) -> Result<(f64, f64, usize)> {
        let a = self.a;
        let mut rng = Rng(a.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order: Vec<usize> = (0..self.usable.len()).collect();
        rng.shuffle(&mut order);
        let (mut sum, mut sum_err, mut n) = (0.0f64, 0.0f64, 0usize);
        for chunk in order.chunks(a.batch) {
            let (loss, expected_err) = self.batch_loss(params, batcher, chunk)?;
            opt.backward_step(&loss)?;
            let l = optim::scalar(&loss)?;
            if !l.is_finite() {
                bail!(
                    "geometry pretraining diverged at step {} (loss {l}); lower --lr",
                    opt.step
                );
            }
            sum += l as f64;
            sum_err += expected_err as f64;
            n += 1;
            pb.inc(1);
            pb.set_message(format!(
                "epoch {} loss {:.4} photometric error {:.4}",
                epoch + 1,
                sum / n as f64,
                sum_err / n as f64
            ));
        }
        Ok((sum, sum_err, n))
    }

    /// The loss of the usable frames at positions `chunk` and its photometric error: against
    /// their cost volumes (sweep) or by re-synthesis through the expected depth (warp).
    fn batch_loss(
        &self,
        params: &Params,
        batcher: &mut Batcher,
        chunk: &[usize],
    ) -> Result<(Tensor, f32)> {
        let (a, ds) = (self.a, self.ds);
        let frames: Vec<usize> = chunk.iter().map(|&j| self.usable[j]).collect();
        let x = batcher.images(ds, &frames)?;
        let out = params.chain_training_last(&x, self.encoder, self.n_trained)?;
        let (fh, fw) = self.arch.feat_hw();
        Ok(match a.objective {
            Objective::Sweep => {
                let batch_cv: Vec<&CostVolume> = chunk.iter().map(|&j| &self.cvs[j]).collect();
                geometry_loss(&out, &x, &batch_cv, self.bins, (fh, fw, self.bins.bins), a)?
            }
            Objective::Warp => {
                let (w, h) = (ds.width as usize, ds.height as usize);
                let images: Vec<(Planes, Vec<PosedImage>)> = frames
                    .iter()
                    .map(|&i| {
                        let src =
                            synthesis_sources(ds, i, a.gap, self.synthesis.camera(), self.stereo)?;
                        Ok((Planes::half_of_rgb8(&ds.frames[i], w, h), src))
                    })
                    .collect::<Result<_>>()?;
                let samples: Vec<Sample> = images
                    .iter()
                    .map(|(t, srcs)| Sample {
                        target: t,
                        sources: srcs
                            .iter()
                            .map(|(iso, img)| Source {
                                image: img,
                                target_to_source: *iso,
                            })
                            .collect(),
                    })
                    .collect();
                let (depth, disp) = expected_depth(&out, self.bins)?;
                let l = self.synthesis.loss(&depth, &disp, &samples)?;
                (l.loss, l.photometric)
            }
        })
    }
}

/// Cross-entropy to the photometric targets (weighted by the kept fraction) plus smoothness;
/// also the photometric error expected under the prediction (for the log).
fn geometry_loss(
    out: &Tensor,
    x: &Tensor,
    cvs: &[&CostVolume],
    bins: &DepthBins,
    (fh, fw, d): (usize, usize, usize),
    a: &GeometryConfig,
) -> Result<(Tensor, f32)> {
    let (q, wt) = targets(cvs, d, fh, fw, a.temperature)?;
    let ct = out.dim(1)?;
    let logp = candle_nn::ops::log_softmax(&out.narrow(1, ct - d, d)?, 1)?;
    let ce = (q * &logp)?.sum_keepdim(1)?.neg()?;
    let den = wt.sum_all()?.to_scalar::<f32>()?.max(1e-6) as f64;
    let ce = ((ce * &wt)?.sum_all()? / den)?;
    let (_, disp) = expected_depth(out, bins)?;
    // the frame at feature resolution, grey, back in [0, 1] (the input is (x - 0.5) / 0.25)
    let gray = ((x.mean_keepdim(1)? * 0.25)? + 0.5)?.avg_pool2d(x.dim(2)? / fh)?;
    let smooth = super::synthesis::edge_aware_smoothness(&disp, &gray)?;
    let loss = (ce + (smooth * a.smoothness)?)?;
    // expected error: sum_k p_k cost_k over kept feature pixels
    let cost: Vec<f32> = cvs.iter().flat_map(|c| c.cost.iter().copied()).collect();
    let cost = Tensor::from_vec(cost, (cvs.len(), d, fh, fw), &Device::Cpu)?;
    let e = (logp.exp()?.detach() * cost)?.sum_keepdim(1)?;
    let e = ((e * &wt)?.sum_all()?.to_scalar::<f32>()? as f64 / den) as f32;
    Ok((loss, e))
}

/// Held-out frames with their true depth (metres; 0 where none).
pub struct DepthTruth {
    pub(super) ds: Dataset,
    /// Metres per frame pixel, 0 where there is no depth (sky).
    pub(super) depth: Vec<Vec<f32>>,
}

impl DepthTruth {
    /// Every frame of the recordings under `dir` that has a `depth/` map.
    pub fn load(dir: &Path) -> Result<DepthTruth> {
        let ds = super::data::load_with_bar(dir, None)?;
        let depth = (0..ds.len())
            .map(|i| super::data::read_depth_map(&ds, i))
            .collect::<Result<_>>()?;
        Ok(DepthTruth { ds, depth })
    }
}

/// The expected depth upsampled to frame pixels (bilinear, feature centres at
/// `(pixel + 0.5) / stride - 0.5`, as the sampling table) against the true depth.
pub fn depth_metrics(params: &Params, arch: &LetsMapLite, t: &DepthTruth) -> Result<DepthMetrics> {
    let bins = arch.grid.depth.as_ref().context("no depth bins")?;
    let encoder = arch.deployed_encoder();
    let mut batcher = Batcher::new(arch, &t.ds);
    let (fh, fw) = arch.feat_hw();
    let mut acc = DepthAccumulator::default();
    let idx: Vec<usize> = (0..t.ds.len()).collect();
    for chunk in idx.chunks(8) {
        let x = batcher.images(&t.ds, chunk)?;
        let out = params.chain(&x, &encoder)?.detach();
        let (depth, _) = expected_depth(&out, bins)?;
        let depth = depth.flatten_all()?.to_vec1::<f32>()?;
        for (b, &i) in chunk.iter().enumerate() {
            let dm = &depth[b * fh * fw..(b + 1) * fh * fw];
            acc.add_frame(&t.depth[i], t.ds.width as usize, bins, fw, fh, |fx, fy| {
                Some(bilinear(dm, fw, fh, fx, fy))
            });
        }
    }
    acc.finish(bins, t.ds.len())
}

/// How good the training signal itself is: the depth of each feature pixel's lowest-error bin
/// in the cost volume (winner takes all; feature pixels the auto-mask dropped are skipped),
/// scored like [`depth_metrics`]. Needs the recordings' poses.
pub fn cost_volume_metrics(
    arch: &LetsMapLite,
    t: &DepthTruth,
    gap: usize,
    min_contrast: f32,
) -> Result<DepthMetrics> {
    let bins = arch.grid.depth.as_ref().context("no depth bins")?;
    let (fh, fw) = arch.feat_hw();
    let idx: Vec<usize> = (0..t.ds.len())
        .filter(|&i| !sources_of(&t.ds, i, gap).is_empty())
        .collect();
    let cvs = cost_volumes(
        &t.ds,
        arch,
        bins,
        &idx,
        gap,
        min_contrast,
        t.ds.right.as_ref(),
    )?;
    let plane = fh * fw;
    let mut acc = DepthAccumulator::default();
    for (cv, &i) in cvs.iter().zip(&idx) {
        let wta: Vec<f32> = (0..plane)
            .map(|p| {
                let k = (0..bins.bins)
                    .min_by(|&a, &b| cv.cost[a * plane + p].total_cmp(&cv.cost[b * plane + p]))
                    .unwrap_or(0);
                bins.centre(k)
            })
            .collect();
        acc.add_frame(&t.depth[i], t.ds.width as usize, bins, fw, fh, |fx, fy| {
            let p = (fy.round() as usize).min(fh - 1) * fw + (fx.round() as usize).min(fw - 1);
            (cv.weight[p] > 0.0).then_some(wta[p] as f64)
        });
    }
    acc.finish(bins, idx.len())
}

fn bilinear(m: &[f32], w: usize, h: usize, fx: f64, fy: f64) -> f64 {
    let (x0, ax) = (fx.floor() as usize, fx - fx.floor());
    let (y0, ay) = (fy.floor() as usize, fy - fy.floor());
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let at = |yy: usize, xx: usize| m[yy * w + xx] as f64;
    (at(y0, x0) * (1.0 - ax) + at(y0, x1) * ax) * (1.0 - ay)
        + (at(y1, x0) * (1.0 - ax) + at(y1, x1) * ax) * ay
}

/// Sums of the depth metrics over pixels whose true depth lies inside the bins' range.
#[derive(Default)]
struct DepthAccumulator {
    abs_rel: f64,
    sq_rel: f64,
    se: f64,
    d1: u64,
    n: u64,
}

impl DepthAccumulator {
    /// One frame: `truth` (metres, frame pixels), `at(fx, fy)` the predicted depth at feature
    /// coordinates (None: no prediction there).
    fn add_frame(
        &mut self,
        truth: &[f32],
        w: usize,
        bins: &DepthBins,
        fw: usize,
        fh: usize,
        at: impl Fn(f64, f64) -> Option<f64>,
    ) {
        let h = truth.len() / w;
        let (sx, sy) = (w as f64 / fw as f64, h as f64 / fh as f64);
        for y in 0..h {
            let fy = ((y as f64 + 0.5) / sy - 0.5).clamp(0.0, fh as f64 - 1.0);
            for x in 0..w {
                let g = truth[y * w + x] as f64;
                if !(g >= bins.min as f64 && g <= bins.max as f64) {
                    continue;
                }
                let fx = ((x as f64 + 0.5) / sx - 0.5).clamp(0.0, fw as f64 - 1.0);
                let Some(d) = at(fx, fy) else { continue };
                self.abs_rel += (d - g).abs() / g;
                self.sq_rel += (d - g) * (d - g) / g;
                self.se += (d - g) * (d - g);
                if (d / g).max(g / d) < 1.25 {
                    self.d1 += 1;
                }
                self.n += 1;
            }
        }
    }

    fn finish(self, bins: &DepthBins, frames: usize) -> Result<DepthMetrics> {
        if self.n == 0 {
            bail!(
                "no pixel with true depth inside {}..{} m",
                bins.min,
                bins.max
            );
        }
        let n = self.n as f64;
        Ok(DepthMetrics {
            abs_rel: self.abs_rel / n,
            sq_rel: self.sq_rel / n,
            rmse: (self.se / n).sqrt(),
            delta1: self.d1 as f64 / n,
            pixels: self.n,
            frames,
        })
    }
}

pub fn describe(m: &DepthMetrics) -> String {
    format!(
        "AbsRel {:.3}, SqRel {:.3}, RMSE {:.2} m, δ<1.25 {:.1} % ({} pixels of {} frames)",
        m.abs_rel,
        m.sq_rel,
        m.rmse,
        m.delta1 * 100.0,
        m.pixels,
        m.frames
    )
}

/// `depth-eval`'s settings.
#[derive(Debug, Clone)]
pub struct DepthEvalConfig {
    /// A checkpoint with the encoder and lift conv (geometry.safetensors, or a fine-tuning's).
    pub encoder: Option<PathBuf>,
    /// A letsmap-lite bundle with depth bins (its encoder.onnx weights).
    pub bundle: Option<PathBuf>,
    /// Recordings with depth maps (`sim record --extras`).
    pub data: PathBuf,
    /// Print the metrics as JSON.
    pub json: bool,
    /// Instead of a network, score the training signal: the lowest-error bin of each frame's
    /// photometric cost volume against sources GAP frames away (needs poses.csv).
    pub cost_volume_gap: Option<usize>,
    /// With --cost-volume-gap: the pretraining's --min-contrast.
    pub min_contrast: f32,
}

pub fn depth_eval_cmd(a: &DepthEvalConfig) -> Result<()> {
    let arch = LetsMapLite::default();
    let params = Params::init(&arch, 0)?;
    if let Some(p) = &a.encoder {
        let map = optim::load_checkpoint(p)?;
        let layers = arch.deployed_encoder();
        params
            .load_from(&map, "param.", Some(&layers))
            .with_context(|| format!("{}: encoder and lift weights", p.display()))?;
    } else if let Some(b) = &a.bundle {
        let bundle = bevrt_models::Bundle::load(b)?;
        if bundle.manifest.grid.as_ref().and_then(|g| g.depth.as_ref()) != arch.grid.depth.as_ref()
        {
            bail!(
                "{}: the bundle's grid has other depth bins than letsmap-lite's ({:?})",
                b.display(),
                arch.grid.depth
            );
        }
        super::nn::load_bundle_weights(&bundle, &params)?;
    }
    let truth = DepthTruth::load(&a.data)?;
    let m = match a.cost_volume_gap {
        Some(gap) => cost_volume_metrics(&arch, &truth, gap.max(1), a.min_contrast)?,
        None if a.encoder.is_none() && a.bundle.is_none() => {
            bail!("give --encoder, --bundle or --cost-volume-gap")
        }
        None => depth_metrics(&params, &arch, &truth)?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        println!("{}", describe(&m));
    }
    Ok(())
}
