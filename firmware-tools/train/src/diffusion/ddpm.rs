//! DDPM on digits: ε-prediction training of [`Unet`] on a dataset's training split (no
//! labels), an EMA of the weights, a checkpoint after every epoch with exact resume, and DDIM
//! sampling from the EMA weights.
//!
//! A run directory (`bevrt-tool ddpm train --out DIR`) is the DDPM checkpoint every later
//! step names (`--ddpm DIR`): `state.json` (configuration, progress, loss per epoch) and
//! `state.safetensors` (weights `param.<name>`, EMA `param.ema.<name>`, Adam's moments).
//!
//! Exact resume: epoch `e`'s order, timesteps and noise come from `Rng(seed, e)` alone.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::schedule::{NoiseSchedule, STEPS};
use super::unet::{SIDE, Unet};
use crate::checkpoint::{self, Ema};
use crate::digits::{self, Dataset};
use crate::optim::Adam;
use crate::rng::{self, Rng};

/// Digit side (28) inside the UNet's 32: two pixels of background each side.
pub const DIGIT: usize = 28;
const PAD: usize = (SIDE - DIGIT) / 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DdpmConfig {
    pub epochs: usize,
    pub batch: usize,
    /// Adam's peak learning rate (linear warm-up, cosine decay to a tenth: [`lr_at`]).
    pub lr: f64,
    pub seed: u64,
    /// UNet base width (levels `[b, 2b, 2b]`).
    pub base: usize,
    pub ema_decay: f64,
    /// Use only N training images, evenly spaced over the split.
    pub train_limit: Option<usize>,
}

impl Default for DdpmConfig {
    fn default() -> DdpmConfig {
        DdpmConfig {
            epochs: 20,
            batch: 64,
            lr: 1e-3,
            seed: 1,
            base: 32,
            ema_decay: 0.999,
            train_limit: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DdpmState {
    pub config: DdpmConfig,
    pub data: String,
    pub train_images: usize,
    pub epochs_done: usize,
    pub step: u64,
    pub seconds: f64,
    /// Mean ε-MSE of each epoch.
    pub losses: Vec<f32>,
}

/// A digit as the UNet sees it: `[-1, 1]`, padded to 32x32 with background (−1).
pub fn pad_digit(src: &[u8], dst: &mut [f32]) {
    dst.fill(-1.0);
    for y in 0..DIGIT {
        for x in 0..DIGIT {
            dst[(y + PAD) * SIDE + x + PAD] = src[y * DIGIT + x] as f32 / 127.5 - 1.0;
        }
    }
}

/// The centre 28x28 of 32x32 images in `[-1, 1]`, as bytes.
pub fn crop_to_u8(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / (SIDE * SIDE) * DIGIT * DIGIT);
    for img in x.chunks(SIDE * SIDE) {
        for y in 0..DIGIT {
            for xx in 0..DIGIT {
                let v = img[(y + PAD) * SIDE + xx + PAD];
                out.push(((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

/// Padded images of `idx`, `(n, 1, 32, 32)` values row-major.
pub fn padded(ds: &Dataset, idx: &[usize]) -> Vec<f32> {
    let px = SIDE * SIDE;
    let mut x = vec![0f32; idx.len() * px];
    for (k, &i) in idx.iter().enumerate() {
        pad_digit(ds.image(i), &mut x[k * px..(k + 1) * px]);
    }
    x
}

pub fn check_digits(ds: &Dataset, data: &Path) -> Result<()> {
    if (ds.width, ds.height) != (DIGIT, DIGIT) {
        bail!(
            "{}: images are {}x{}; the diffusion models are built for {DIGIT}x{DIGIT} \
             (MNIST-style) images",
            data.display(),
            ds.width,
            ds.height
        );
    }
    Ok(())
}

/// `x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε` for a batch with one timestep per image.
pub fn noisy(x0: &[f32], eps: &[f32], t: &[usize], sched: &NoiseSchedule) -> Vec<f32> {
    let px = x0.len() / t.len();
    let mut out = vec![0f32; x0.len()];
    for (k, &tk) in t.iter().enumerate() {
        let (a, s) = (
            sched.alpha_bar[tk].sqrt() as f32,
            (1.0 - sched.alpha_bar[tk]).sqrt() as f32,
        );
        for i in k * px..(k + 1) * px {
            out[i] = a * x0[i] + s * eps[i];
        }
    }
    out
}

/// Linear warm-up over 200 steps (a fifth of a shorter run), then cosine decay from `peak`
/// to `peak/10`.
pub fn lr_at(peak: f64, step: u64, total: u64) -> f64 {
    let warmup = (total / 5).clamp(1, 200);
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let p = ((step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64).min(1.0);
    peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
}

/// What every epoch of a diffusion trainer shares.
pub struct EpochPlan {
    /// The progress bar's and the errors' name for the run.
    pub what: &'static str,
    pub batch: usize,
    /// Adam's peak rate ([`lr_at`]).
    pub peak_lr: f64,
    /// Optimiser steps of the whole run.
    pub total: u64,
}

/// One epoch: the training images `train_idx` in the order of `rng`, Adam's rate from
/// [`lr_at`], `step` on each batch (it returns the batch's loss), a divergence check and the
/// progress bar. Returns the epoch's mean loss.
pub fn run_epoch(
    plan: &EpochPlan,
    epoch: usize,
    train_idx: &[usize],
    opt: &mut Adam,
    rng: &mut Rng,
    pb: &indicatif::ProgressBar,
    mut step: impl FnMut(&mut Adam, &[usize], &mut Rng) -> Result<f32>,
) -> Result<f32> {
    let mut order = train_idx.to_vec();
    rng.shuffle(&mut order);
    let (mut sum, mut n) = (0f64, 0usize);
    for chunk in order.chunks(plan.batch) {
        opt.lr = lr_at(plan.peak_lr, opt.step, plan.total);
        let l = step(opt, chunk, rng)?;
        if !l.is_finite() {
            bail!(
                "{} training diverged at epoch {} (loss {l})",
                plan.what,
                epoch + 1
            );
        }
        sum += l as f64;
        n += 1;
        pb.inc(1);
        pb.set_message(format!("epoch {} loss {:.5}", epoch + 1, sum / n as f64));
    }
    Ok((sum / n.max(1) as f64) as f32)
}

/// The seeded stream of epoch `epoch` of a run with `seed`.
pub fn epoch_rng(seed: u64, epoch: usize) -> Rng {
    Rng(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

pub struct DdpmReport {
    pub dir: PathBuf,
    pub state: DdpmState,
    pub parameters: usize,
}

/// How one invocation of a training run behaves (nothing here changes the result).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunControl {
    /// Continue from the run's checkpoint.
    pub resume: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// Stop after this many epochs of this invocation, checkpoint kept, as if interrupted
    /// (time-sliced training on a shared machine; `resume` continues it).
    pub stop_after: Option<usize>,
}

impl RunControl {
    /// Whether this invocation has done its share after finishing epoch `epoch` (0-based)
    /// when it started at `first`.
    pub fn stops_after(&self, first: usize, epoch: usize) -> bool {
        self.stop_after.is_some_and(|k| epoch + 1 >= first + k)
    }
}

/// Train a DDPM on the training split of `data`, checkpointing into `out` after each epoch.
pub fn train(data: &Path, out: &Path, cfg: &DdpmConfig, ctl: RunControl) -> Result<DdpmReport> {
    if cfg.epochs == 0
        || cfg.batch == 0
        || !(cfg.lr > 0.0 && cfg.lr.is_finite())
        || !(0.0..1.0).contains(&cfg.ema_decay)
    {
        bail!("need epochs ≥ 1, batch ≥ 1, a positive learning rate and an EMA decay in [0, 1)");
    }
    let ds = digits::load(data)?;
    check_digits(&ds, data)?;
    let train_idx = crate::ssl::run::limit_evenly(&ds.split().0, cfg.train_limit);
    let unet = Unet::init(cfg.base, cfg.seed)?;
    let params = unet.named_vars();
    let ema = Ema::of(&params)?;
    let mut opt = Adam::new(params.clone(), cfg.lr)?;
    let mut st = DdpmState {
        config: cfg.clone(),
        data: data.display().to_string(),
        train_images: train_idx.len(),
        epochs_done: 0,
        step: 0,
        seconds: 0.0,
        losses: vec![],
    };
    if ctl.resume {
        let old: DdpmState = checkpoint::load_state(out)?;
        let mut want = old.config.clone();
        want.epochs = cfg.epochs;
        if &want != cfg || old.epochs_done > cfg.epochs {
            bail!(
                "{}: --resume needs the interrupted run's configuration (only the epochs may \
                 grow, to at least the {} done); it used {:?}",
                out.display(),
                old.epochs_done,
                old.config
            );
        }
        let map = checkpoint::load_tensors(out)?;
        checkpoint::restore(&map, &params, "", out)?;
        checkpoint::restore(&map, &ema.vars, "", out)?;
        opt.load_state(&map, old.step)?;
        st = DdpmState {
            config: cfg.clone(),
            ..old
        };
        eprintln!("{}: resuming after epoch {}", out.display(), st.epochs_done);
    } else if out.join("state.json").exists() {
        bail!(
            "{}: holds a DDPM checkpoint already; pass --resume to continue it, or choose another --out",
            out.display()
        );
    }
    let sched = NoiseSchedule::linear(STEPS);
    let plan = EpochPlan {
        what: "ddpm",
        batch: cfg.batch,
        peak_lr: cfg.lr,
        total: (train_idx.len().div_ceil(cfg.batch) * cfg.epochs) as u64,
    };
    let pb = crate::progress::progress_if(ctl.progress, plan.total, plan.what);
    pb.set_position(st.step);
    let (t0, before) = (std::time::Instant::now(), st.seconds);
    let first = st.epochs_done;
    for epoch in first..cfg.epochs {
        let mut rng = epoch_rng(cfg.seed, epoch);
        let loss = run_epoch(
            &plan,
            epoch,
            &train_idx,
            &mut opt,
            &mut rng,
            &pb,
            |opt, chunk, rng| {
                let l = step(&unet, opt, &sched, &ds, chunk, rng)?;
                ema.update(&params, cfg.ema_decay, opt.step)?;
                Ok(l)
            },
        )?;
        st.losses.push(loss);
        st.epochs_done = epoch + 1;
        st.step = opt.step;
        st.seconds = before + t0.elapsed().as_secs_f64();
        log::info!("ddpm epoch {}: loss {loss:.4}", epoch + 1);
        let mut all = params.clone();
        all.extend(ema.vars.iter().cloned());
        checkpoint::save(out, &st, &all, Some(&opt))?;
        if ctl.stops_after(first, epoch) {
            break;
        }
    }
    pb.finish_and_clear();
    Ok(DdpmReport {
        dir: out.to_path_buf(),
        parameters: unet.parameter_count(),
        state: st,
    })
}

fn step(
    unet: &Unet,
    opt: &mut Adam,
    sched: &NoiseSchedule,
    ds: &Dataset,
    chunk: &[usize],
    rng: &mut Rng,
) -> Result<f32> {
    let b = chunk.len();
    let x0 = padded(ds, chunk);
    let t: Vec<usize> = (0..b).map(|_| rng.below(sched.steps())).collect();
    let eps = rng::normal(x0.len(), rng);
    let xt = noisy(&x0, &eps, &t, sched);
    let shape = (b, 1, SIDE, SIDE);
    let pred = unet.forward(&Tensor::from_vec(xt, shape, &Device::Cpu)?, &t)?;
    let loss = (pred - Tensor::from_vec(eps, shape, &Device::Cpu)?)?
        .sqr()?
        .mean_all()?;
    let v = loss.to_scalar::<f32>()?;
    opt.backward_step(&loss)?;
    Ok(v)
}

/// A fixed draw of timesteps and noise for the images `idx` (evaluation: the same for every
/// model compared).
pub struct EvalBatch {
    pub x0: Vec<f32>,
    pub t: Vec<usize>,
    pub eps: Vec<f32>,
    pub xt: Vec<f32>,
}

impl EvalBatch {
    pub fn draw(ds: &Dataset, idx: &[usize], sched: &NoiseSchedule, seed: u64) -> EvalBatch {
        let mut rng = Rng(seed);
        let x0 = padded(ds, idx);
        let t: Vec<usize> = idx.iter().map(|_| rng.below(sched.steps())).collect();
        let eps = rng::normal(x0.len(), &mut rng);
        let xt = noisy(&x0, &eps, &t, sched);
        EvalBatch { x0, t, eps, xt }
    }
}

/// Mean ε-MSE of `unet` on the images `idx` at seeded timesteps and noise.
pub fn eval_loss(unet: &Unet, ds: &Dataset, idx: &[usize], seed: u64) -> Result<f32> {
    let b = EvalBatch::draw(ds, idx, &NoiseSchedule::linear(STEPS), seed);
    let pred = batched(&b.xt, &b.t, |x, t, _| unet.forward(x, t))?;
    Ok((pred
        .iter()
        .zip(&b.eps)
        .map(|(p, e)| ((p - e) as f64).powi(2))
        .sum::<f64>()
        / pred.len() as f64) as f32)
}

/// The EMA UNet of a DDPM run directory, and its record.
pub fn load(dir: &Path) -> Result<(Unet, DdpmState)> {
    let st: DdpmState = checkpoint::load_state(dir)?;
    if st.epochs_done == 0 {
        bail!("{}: the DDPM has not finished an epoch", dir.display());
    }
    let unet = Unet::init(st.config.base, st.config.seed)?;
    let map = checkpoint::load_tensors(dir)?;
    checkpoint::restore(&map, &unet.named_vars(), "ema.", dir)?;
    Ok((unet, st))
}

/// Batched network calls: `f` on chunks of at most 128 images of `x` (`n × 32·32`).
pub fn batched(
    x: &[f32],
    t: &[usize],
    mut f: impl FnMut(&Tensor, &[usize], std::ops::Range<usize>) -> Result<Tensor>,
) -> Result<Vec<f32>> {
    let px = SIDE * SIDE;
    let n = x.len() / px;
    let mut out = Vec::with_capacity(x.len());
    for s in (0..n).step_by(128) {
        let e = (s + 128).min(n);
        let xt = Tensor::from_vec(
            x[s * px..e * px].to_vec(),
            (e - s, 1, SIDE, SIDE),
            &Device::Cpu,
        )?;
        out.extend(f(&xt, &t[s..e], s..e)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// `n` samples by DDIM (η = 0, `steps` steps) from seeded noise; `(n, 32·32)` in [-1, 1].
pub fn sample(unet: &Unet, n: usize, steps: usize, seed: u64) -> Result<Vec<f32>> {
    let sched = NoiseSchedule::linear(STEPS);
    let mut x = rng::normal(n * SIDE * SIDE, &mut Rng(seed));
    let ts = sched.ddim_timesteps(steps);
    for (i, &t) in ts.iter().enumerate().rev() {
        let eps = batched(&x, &vec![t; n], |xt, tt, _| unet.forward(xt, tt))?;
        let s = i.checked_sub(1).map(|j| ts[j]);
        sched.ddim_move(&mut x, &eps, Some(t), s, true);
    }
    Ok(x.iter().map(|v| v.clamp(-1.0, 1.0)).collect())
}
