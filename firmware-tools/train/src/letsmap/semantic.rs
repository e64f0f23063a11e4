//! `bevrt-tool pretrain`: the semantic pathway, a temporal masked autoencoder of letsmap-lite's
//! encoder trained without labels.
//!
//! Per step, for each frame t of a batch:
//! - a context frame t−k of the same recording (k drawn in 1..=`--max-gap`), seen whole;
//! - frame t with `round(ratio·768)` of its 768 stride-8 patches masked, encoded by SparK's
//!   masked convolution ([`Params::chain_visible`]): masked patches stay zero through every
//!   layer, so nothing of them leaks back through the convolutions' overlap;
//! - masked positions of frame t's features are filled with a learned mask token, concatenated
//!   with the context frame's features, and a small decoder predicts every patch's 8x8x3
//!   pixels; the loss is the mean squared error against **per-patch normalised** pixels, on the
//!   masked patches only ([`nn::normalised_patches`], [`nn::masked_mse`]).
//!
//! Which patches are masked (`--masking`):
//! - `random`: MAE's uniform choice;
//! - `edges` / `motion`: StructMAE's structure-guided, easy-to-hard masking
//!   ([`crate::masking::structure_guided_mask`]): at training progress e/E a fraction
//!   `r_s = ratio·sqrt(e/E)` of the patches is chosen by score (perturbed by `α·U(0,1)`), the
//!   rest of the budget uniformly. A patch's score is its **gradient energy** (sum of squared
//!   Sobel responses of frame t's luminance: edges, object outlines) for `edges`, or its
//!   **frame-difference energy** against the context frame (where the view changes: near
//!   objects, anything moving) for `motion`.
//!
//! The loss of a training step depends on its masks, and structure-guided masks get harder
//! over training; to compare runs, `pretrain.json` also records a **probe loss**: the same
//! loss on fixed frames with fixed uniform masks, before training and after every epoch.

use bevrt_runtime::choice::Choice;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bevrt_models::{ConvLayer, LetsMapLite};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::data::{Batcher, Dataset};
use super::nn::{self, Params};
use crate::masking::{structure_guided_mask, structured_count};
use crate::optim::{self, Adam};
use crate::progress::progress;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Masking {
    /// Uniform (MAE).
    #[default]
    Random,
    /// StructMAE, patches scored by gradient energy of frame t.
    Edges,
    /// StructMAE, patches scored by their difference to the context frame.
    Motion,
}

impl Choice for Masking {
    const ALL: &'static [Self] = &[Self::Random, Self::Edges, Self::Motion];
    fn name(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::Edges => "edges",
            Self::Motion => "motion",
        }
    }
    fn help(self) -> &'static str {
        match self {
            Self::Random => "Uniform (MAE)",
            Self::Edges => "StructMAE, patches scored by gradient energy of frame t",
            Self::Motion => "StructMAE, patches scored by their difference to the context frame",
        }
    }
}
bevrt_runtime::named_choice!(Masking);

fn default_alpha() -> f32 {
    0.5
}

/// `pretrain`'s settings; recorded in `pretrain.json` (field names are what `--resume`
/// compares).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PretrainConfig {
    /// Unlabelled recordings: a recording directory or a directory of them.
    pub data: PathBuf,
    /// Output directory for checkpoints (`pretrain.safetensors`, `pretrain.json`).
    pub out: PathBuf,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    /// Fraction of the stride-8 patches of frame t that are masked (SparK: 0.6).
    pub mask_ratio: f32,
    /// Which patches are masked: uniformly, or StructMAE's easy-to-hard schedule onto the
    /// patches with the most gradient energy (`edges`) or frame difference (`motion`).
    #[serde(default)]
    pub masking: Masking,
    /// StructMAE's perturbation of the (max-scaled) scores before ranking.
    #[serde(default = "default_alpha")]
    pub alpha: f32,
    /// Largest frame gap k between frame t and its context frame t-k (k drawn in 1..=max).
    pub max_gap: usize,
    pub seed: u64,
    /// Use at most this many frames.
    pub frames: Option<usize>,
    /// Continue from the checkpoint in --out (same arguments), from the end of its last epoch.
    /// With structure-guided masking the schedule is stretched to the new --epochs from the
    /// resumed epoch on (epochs already done keep the masks they had).
    #[serde(skip)]
    pub resume: bool,
}

/// What `pretrain.json` records beside the checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct PretrainState {
    args: PretrainConfig,
    epochs_done: usize,
    step: u64,
    /// Mean training loss per epoch (its masks harden over training with structured masking).
    epoch_loss: Vec<f32>,
    /// The loss on fixed frames with fixed uniform masks: before training, then per epoch.
    #[serde(default)]
    probe_loss: Vec<f32>,
    #[serde(default)]
    train_seconds: f64,
}

/// Sum of squared Sobel responses of the luminance (channel mean) in each stride-`s` patch of
/// one (3, h, w) image; edges clamp.
pub fn gradient_energy(img: &[f32], h: usize, w: usize, s: usize) -> Vec<f32> {
    let lum: Vec<f32> = (0..h * w)
        .map(|k| (img[k] + img[h * w + k] + img[2 * h * w + k]) / 3.0)
        .collect();
    let at = |y: isize, x: isize| {
        lum[y.clamp(0, h as isize - 1) as usize * w + x.clamp(0, w as isize - 1) as usize]
    };
    let (hf, wf) = (h / s, w / s);
    let mut out = vec![0f32; hf * wf];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let gx = at(y - 1, x + 1) + 2.0 * at(y, x + 1) + at(y + 1, x + 1)
                - at(y - 1, x - 1)
                - 2.0 * at(y, x - 1)
                - at(y + 1, x - 1);
            let gy = at(y + 1, x - 1) + 2.0 * at(y + 1, x) + at(y + 1, x + 1)
                - at(y - 1, x - 1)
                - 2.0 * at(y - 1, x)
                - at(y - 1, x + 1);
            out[(y as usize / s) * wf + x as usize / s] += gx * gx + gy * gy;
        }
    }
    out
}

/// Sum of squared differences between two (3, h, w) images in each stride-`s` patch.
pub fn difference_energy(a: &[f32], b: &[f32], h: usize, w: usize, s: usize) -> Vec<f32> {
    let (hf, wf) = (h / s, w / s);
    let mut out = vec![0f32; hf * wf];
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let k = (c * h + y) * w + x;
                let d = a[k] - b[k];
                out[(y / s) * wf + x / s] += d * d;
            }
        }
    }
    out
}

/// Masks (B,1,Hf,Wf), 1 = masked, for a batch of frames t (`xt`) and context frames (`xk`).
fn draw_masks(
    a: &PretrainConfig,
    arch: &LetsMapLite,
    xt: &Tensor,
    xk: &Tensor,
    progress: f32,
    rng: &mut Rng,
) -> Result<Tensor> {
    let (b, _, h, w) = xt.dims4()?;
    let s = arch.stride();
    let (hf, wf) = arch.feat_hw();
    let n = hf * wf;
    let n_struct = match a.masking {
        Masking::Random => 0,
        _ => structured_count(a.mask_ratio, progress, n),
    };
    let per = 3 * h * w;
    let (t, k) = if n_struct > 0 {
        (
            xt.flatten_all()?.to_vec1::<f32>()?,
            xk.flatten_all()?.to_vec1::<f32>()?,
        )
    } else {
        (vec![], vec![])
    };
    let mut all = Vec::with_capacity(b * n);
    for i in 0..b {
        let scores = match (a.masking, n_struct) {
            (Masking::Random, _) | (_, 0) => vec![0.0; n],
            (Masking::Edges, _) => gradient_energy(&t[i * per..(i + 1) * per], h, w, s),
            (Masking::Motion, _) => difference_energy(
                &t[i * per..(i + 1) * per],
                &k[i * per..(i + 1) * per],
                h,
                w,
                s,
            ),
        };
        let m = structure_guided_mask(&scores, a.mask_ratio, n_struct, a.alpha, rng);
        all.extend(m.iter().map(|&m| m as u8 as f32));
    }
    Ok(Tensor::from_vec(all, (b, 1, hf, wf), &Device::Cpu)?)
}

/// The masked-patch loss of reconstructing frames `xt` from their visible patches and the
/// context frames `xk`.
fn reconstruction_loss(
    params: &Params,
    arch: &LetsMapLite,
    token: &Tensor,
    xt: &Tensor,
    xk: &Tensor,
    masked: &Tensor,
) -> Result<Tensor> {
    let keep = (1.0 - masked)?;
    // zero on masked patches already: the token fills them
    let ft = (params.chain_visible(xt, &arch.encoder, &keep)? + token.broadcast_mul(masked)?)?;
    let fk = params.chain(xk, &arch.encoder)?;
    let pred = params.chain(&Tensor::cat(&[&ft, &fk], 1)?, &arch.mae_decoder)?;
    let target = nn::normalised_patches(xt, arch.stride())?;
    nn::masked_mse(&pred, &target, masked)
}

/// Fixed frames (up to 16, evenly spaced) with their predecessor as context and fixed uniform
/// masks: the probe loss's inputs.
struct Probe {
    t: Vec<usize>,
    k: Vec<usize>,
    masked: Tensor,
}

impl Probe {
    fn new(a: &PretrainConfig, arch: &LetsMapLite, usable: &[usize]) -> Result<Probe> {
        let n = usable.len().min(16);
        let t: Vec<usize> = (0..n).map(|j| usable[j * usable.len() / n]).collect();
        let k: Vec<usize> = t.iter().map(|&i| i - 1).collect();
        let mut rng = Rng(a.seed ^ 0x9E0B_E10F);
        let (hf, wf) = arch.feat_hw();
        let zeros = vec![0.0; hf * wf];
        let masked: Vec<f32> = (0..n)
            .flat_map(|_| structure_guided_mask(&zeros, a.mask_ratio, 0, a.alpha, &mut rng))
            .map(|m| m as u8 as f32)
            .collect();
        let masked = Tensor::from_vec(masked, (n, 1, hf, wf), &Device::Cpu)?;
        Ok(Probe { t, k, masked })
    }

    fn loss(
        &self,
        params: &Params,
        arch: &LetsMapLite,
        token: &Tensor,
        ds: &Dataset,
        batcher: &mut Batcher,
    ) -> Result<f32> {
        let mut sum = 0.0;
        for j in (0..self.t.len()).step_by(4) {
            let e = (j + 4).min(self.t.len());
            let xt = batcher.images(ds, &self.t[j..e])?;
            let xk = batcher.images(ds, &self.k[j..e])?;
            let m = self.masked.narrow(0, j, e - j)?;
            let l = reconstruction_loss(params, arch, token, &xt, &xk, &m)?;
            sum += optim::scalar(&l)? * (e - j) as f32;
        }
        Ok(sum / self.t.len() as f32)
    }
}

fn check_args(a: &PretrainConfig) -> Result<()> {
    if a.batch == 0 || a.epochs == 0 || a.max_gap == 0 {
        bail!("--batch, --epochs and --max-gap must be at least 1");
    }
    if !(a.mask_ratio > 0.0 && a.mask_ratio < 1.0) {
        bail!("--mask-ratio must be in (0, 1), got {}", a.mask_ratio);
    }
    if !(a.alpha.is_finite() && a.alpha >= 0.0) {
        bail!("--alpha must be >= 0, got {}", a.alpha);
    }
    Ok(())
}

pub fn pretrain(a: &PretrainConfig) -> Result<()> {
    check_args(a)?;
    let arch = LetsMapLite::default();
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("{}: cannot create", a.out.display()))?;
    let ckpt = a.out.join("pretrain.safetensors");
    let state_path = a.out.join("pretrain.json");
    let ds = super::data::load_with_bar(&a.data, a.frames)?;
    ds.check_for(&arch, false)?;
    let mut params = Params::init(&arch, a.seed)?;
    let token = add_mask_token(a, &arch, &mut params)?;
    let trained: Vec<_> = arch
        .encoder
        .iter()
        .chain(&arch.mae_decoder)
        .cloned()
        .collect();
    let trained_vars = params.of_layers(&trained)?;
    let mut opt = Adam::new(trained_vars.clone(), a.lr)?;
    let mut st = pretrain_state(a, &params, &mut opt, &trained, &ckpt, &state_path)?;
    // Frames with a predecessor in the same recording.
    let usable: Vec<usize> = (0..ds.len())
        .filter(|&i| i > ds.first_of_recording[i])
        .collect();
    if usable.is_empty() {
        bail!("{}: need sequences of at least 2 frames", a.data.display());
    }
    let mut batcher = Batcher::new(&arch, &ds);
    let probe = Probe::new(a, &arch, &usable)?;
    if st.probe_loss.is_empty() {
        st.probe_loss
            .push(probe.loss(&params, &arch, token.as_tensor(), &ds, &mut batcher)?);
    }
    let per_epoch = usable.len().div_ceil(a.batch);
    let pb = progress(
        (per_epoch * (a.epochs - st.epochs_done.min(a.epochs))) as u64,
        "pretrain",
    );
    let t0 = std::time::Instant::now();
    let seconds_before = st.train_seconds;
    let run = MaeRun {
        a,
        arch: &arch,
        ds: &ds,
        params: &params,
        token: token.as_tensor(),
        usable: &usable,
    };
    for epoch in st.epochs_done..a.epochs {
        let (sum, n) = run.epoch(epoch, &mut opt, &mut batcher, &pb)?;
        st.epochs_done = epoch + 1;
        st.step = opt.step;
        st.epoch_loss.push((sum / n.max(1) as f64) as f32);
        st.probe_loss
            .push(probe.loss(&params, &arch, token.as_tensor(), &ds, &mut batcher)?);
        st.train_seconds = seconds_before + t0.elapsed().as_secs_f64();
        // only what this pathway trains: a later fine-tuning must not mistake the untrained
        // lift conv for a pretrained one
        optim::save_checkpoint(&ckpt, trained_vars.iter().map(|(n, v)| (n, v)), Some(&opt))?;
        std::fs::write(&state_path, serde_json::to_string_pretty(&st)?)
            .with_context(|| format!("{}: cannot write", state_path.display()))?;
    }
    pb.finish_and_clear();
    println!(
        "pretrained {} epochs on {} frames in {:.0} s ({:?} masking); masked-patch MSE per epoch {:?}; \
         probe loss (fixed frames and masks) {:?}; checkpoint {}",
        a.epochs,
        usable.len(),
        t0.elapsed().as_secs_f64(),
        a.masking,
        st.epoch_loss,
        st.probe_loss,
        ckpt.display()
    );
    Ok(())
}

/// SparK's mask token: small random values, learned with the decoder; added to `params`.
fn add_mask_token(a: &PretrainConfig, arch: &LetsMapLite, params: &mut Params) -> Result<Var> {
    let c = arch.encoder.last().expect("encoder layers").cout;
    let mut token_rng = Rng(a.seed ^ 0x70CE_4E11);
    let token = Tensor::from_vec(
        crate::rng::normal(c, &mut token_rng),
        (1, c, 1, 1),
        &Device::Cpu,
    )?;
    let token = Var::from_tensor(&(token * 0.02)?.to_dtype(DType::F32)?)?;
    let token_name = format!("{}.mask_token", arch.mae_decoder[0].name);
    params.vars.insert(token_name, token.clone());
    Ok(token)
}

/// A fresh progress record, or with `--resume` the interrupted run's (same arguments; only
/// `--epochs` may grow), its weights and Adam state loaded into `params` and `opt`.
fn pretrain_state(
    a: &PretrainConfig,
    params: &Params,
    opt: &mut Adam,
    trained: &[ConvLayer],
    ckpt: &Path,
    state_path: &Path,
) -> Result<PretrainState> {
    let st = PretrainState {
        args: a.clone(),
        epochs_done: 0,
        step: 0,
        epoch_loss: vec![],
        probe_loss: vec![],
        train_seconds: 0.0,
    };
    if !a.resume {
        return Ok(st);
    }
    let prev: PretrainState = crate::checkpoint::resume_state(state_path, |p: &PretrainState| {
        let mut want = p.args.clone();
        want.epochs = a.epochs;
        // the run directory may have been moved or copied: its state is what it holds
        want.out = a.out.clone();
        let mut have = a.clone();
        have.resume = false;
        want == have
    })?;
    let map = optim::load_checkpoint(ckpt)?;
    params.load_from(&map, "param.", Some(trained))?;
    opt.load_state(&map, prev.step)?;
    let st = PretrainState {
        args: a.clone(),
        ..prev
    };
    println!("resuming after epoch {} (step {})", st.epochs_done, st.step);
    Ok(st)
}

/// What every step of the temporal MAE reads.
struct MaeRun<'r> {
    a: &'r PretrainConfig,
    arch: &'r LetsMapLite,
    ds: &'r Dataset,
    params: &'r Params,
    token: &'r Tensor,
    /// Frames with a predecessor in the same recording.
    usable: &'r [usize],
}

impl MaeRun<'_> {
    /// One epoch; the sum of the step losses and the number of steps.
    fn epoch(
        &self,
        epoch: usize,
        opt: &mut Adam,
        batcher: &mut Batcher,
        pb: &indicatif::ProgressBar,
    ) -> Result<(f64, usize)> {
        let (a, ds) = (self.a, self.ds);
        let per_epoch = self.usable.len().div_ceil(a.batch);
        // Order and masks depend only on (seed, epoch): a resumed run replays them exactly.
        let mut rng = Rng(a.seed ^ (epoch as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        let mut order = self.usable.to_vec();
        rng.shuffle(&mut order);
        let (mut sum, mut n) = (0.0, 0);
        for (j, chunk) in order.chunks(a.batch).enumerate() {
            let ctx: Vec<usize> = chunk
                .iter()
                .map(|&i| {
                    let avail = i - ds.first_of_recording[i];
                    i - (1 + rng.below(a.max_gap.min(avail)))
                })
                .collect();
            let xt = batcher.images(ds, chunk)?;
            let xk = batcher.images(ds, &ctx)?;
            let progress = (epoch as f32 + j as f32 / per_epoch as f32) / a.epochs as f32;
            let masked = draw_masks(a, self.arch, &xt, &xk, progress, &mut rng)?;
            let loss = reconstruction_loss(self.params, self.arch, self.token, &xt, &xk, &masked)?;
            opt.backward_step(&loss)?;
            let l = optim::scalar(&loss)?;
            if !l.is_finite() {
                bail!(
                    "pretraining diverged at step {} (loss {l}); lower --lr",
                    opt.step
                );
            }
            sum += l as f64;
            n += 1;
            pb.inc(1);
            pb.set_message(format!("epoch {} loss {:.4}", epoch + 1, sum / n as f64));
        }
        Ok((sum, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_scores_find_the_edge_and_the_change() {
        // (3, 16, 32): left half dark, right half bright; stride 8 gives 2x4 patches, the edge
        // runs through patches 1|2 of each row.
        let (h, w, s) = (16, 32, 8);
        let img: Vec<f32> = (0..3 * h * w)
            .map(|k| if k % w >= 16 { 1.0 } else { -1.0 })
            .collect();
        let g = gradient_energy(&img, h, w, s);
        assert_eq!(g.len(), 8);
        for row in 0..2 {
            assert_eq!(g[row * 4], 0.0);
            assert!(g[row * 4 + 1] > 0.0 && g[row * 4 + 2] > 0.0);
            assert_eq!(g[row * 4 + 3], 0.0);
        }
        let mut moved = img.clone();
        moved[5 * w + 30] += 1.0; // one pixel of patch (0, 3) changes in channel 0
        let d = difference_energy(&img, &moved, h, w, s);
        assert_eq!(d[3], 1.0);
        assert_eq!(d.iter().sum::<f32>(), 1.0);
    }

    #[test]
    fn masked_convolution_does_not_leak_masked_patches() {
        // Changing a masked patch's pixels must not change any encoder output.
        let arch = LetsMapLite::default();
        let params = Params::init(&arch, 1).unwrap();
        let (hf, wf) = arch.feat_hw();
        let mut rng = Rng(5);
        let x: Vec<f32> = (0..3 * arch.input_h * arch.input_w)
            .map(|_| rng.uniform())
            .collect();
        let x = Tensor::from_vec(x, (1, 3, arch.input_h, arch.input_w), &Device::Cpu).unwrap();
        let mut keep = vec![1f32; hf * wf];
        keep[5 * wf + 7] = 0.0;
        let keep = Tensor::from_vec(keep, (1, 1, hf, wf), &Device::Cpu).unwrap();
        // perturb the masked patch (rows 40..48, columns 56..64)
        let mut bump = vec![0f32; 3 * arch.input_h * arch.input_w];
        for c in 0..3 {
            for y in 40..48 {
                for xx in 56..64 {
                    bump[(c * arch.input_h + y) * arch.input_w + xx] = 5.0;
                }
            }
        }
        let bump = Tensor::from_vec(bump, x.dims(), &Device::Cpu).unwrap();
        let a = params.chain_visible(&x, &arch.encoder, &keep).unwrap();
        let b = params
            .chain_visible(&(&x + &bump).unwrap(), &arch.encoder, &keep)
            .unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        // while the dense encoder does see it
        let a = params.chain(&x, &arch.encoder).unwrap();
        let b = params.chain(&(&x + &bump).unwrap(), &arch.encoder).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() > 0.0);
    }

    #[test]
    fn normalised_targets_have_zero_mean_unit_variance_per_patch() {
        let mut rng = Rng(2);
        let x: Vec<f32> = (0..3 * 16 * 16)
            .map(|_| rng.uniform() * 3.0 + 1.0)
            .collect();
        let x = Tensor::from_vec(x, (1, 3, 16, 16), &Device::Cpu).unwrap();
        let p = nn::normalised_patches(&x, 8).unwrap(); // (1, 192, 2, 2)
        let mean = p.mean_keepdim(1).unwrap().flatten_all().unwrap();
        let var = p
            .sqr()
            .unwrap()
            .mean_keepdim(1)
            .unwrap()
            .flatten_all()
            .unwrap();
        for (m, v) in mean
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .zip(var.to_vec1::<f32>().unwrap())
        {
            assert!(m.abs() < 1e-5 && (v - 1.0).abs() < 1e-3, "mean {m} var {v}");
        }
    }
}
