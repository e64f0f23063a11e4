//! BAM and Invariance Propagation on driving frames: the letsmap-lite encoder pretrained on
//! unlabelled simulator drives, written as a checkpoint `bevrt-tool finetune --encoder` takes
//! (the same `param.<layer>` names as the temporal-MAE `pretrain`), so the two-pathways work
//! can use whichever semantic pretraining wins.
//!
//! Views of a frame (`DriveAugment`): a random resized crop that keeps the aspect (area
//! 0.5-1), colour jitter (brightness, contrast, saturation ×[0.6, 1.4]), and a [1 2 1]/4 blur
//! with probability 0.5, on the RGB8 frame, then the runtime's preprocess. The encoder's
//! feature map (32x16x48) is averaged over positions into one 32-d vector per view, and the
//! projector and losses are the digit methods' ([`super::bam`], [`super::invprop`]).

use bevrt_runtime::choice::Choice;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bevrt_models::{ConvLayer, LetsMapLite};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::bam::BamConfig;
use super::collapse::{self, Spread};
use super::encoder::Projector;
use super::invprop::{Bank, InvPropConfig};
use super::run::{Method, projection_loss};
use crate::cpu_ops::conv2d;
use crate::letsmap::data::{self, Batcher, Dataset};
use crate::letsmap::nn::Params;
use crate::optim::{self, Adam};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriveAugment {
    pub area: (f32, f32),
    pub jitter: f32,
    pub blur_p: f32,
}

impl Default for DriveAugment {
    fn default() -> Self {
        DriveAugment {
            area: (0.5, 1.0),
            jitter: 0.4,
            blur_p: 0.5,
        }
    }
}

impl DriveAugment {
    /// One view of the RGB8 frame `src` (w x h) into `out` (same size).
    pub fn view(&self, src: &[u8], w: usize, h: usize, rng: &mut Rng, out: &mut [u8]) {
        let s = (self.area.0 + (self.area.1 - self.area.0) * rng.uniform()).sqrt();
        let (cw, ch) = (w as f32 * s, h as f32 * s);
        let x0 = (w as f32 - cw) * rng.uniform();
        let y0 = (h as f32 - ch) * rng.uniform();
        let mut f = |a: f32| 1.0 + (rng.uniform() * 2.0 - 1.0) * a;
        let (bright, contrast, sat) = (f(self.jitter), f(self.jitter), f(self.jitter));
        let blur = rng.uniform() < self.blur_p;
        let px = |x: usize, y: usize, c: usize| src[(y * w + x) * 3 + c] as f32;
        let mut buf = vec![0f32; w * h * 3];
        for y in 0..h {
            let sy = (y0 + (y as f32 + 0.5) * ch / h as f32 - 0.5).clamp(0.0, h as f32 - 1.0);
            let (yi, fy) = (sy.floor() as usize, sy.fract());
            let y1 = (yi + 1).min(h - 1);
            for x in 0..w {
                let sx = (x0 + (x as f32 + 0.5) * cw / w as f32 - 0.5).clamp(0.0, w as f32 - 1.0);
                let (xi, fx) = (sx.floor() as usize, sx.fract());
                let x1 = (xi + 1).min(w - 1);
                let mut rgb = [0f32; 3];
                for (c, v) in rgb.iter_mut().enumerate() {
                    let top = px(xi, yi, c) * (1.0 - fx) + px(x1, yi, c) * fx;
                    let bot = px(xi, y1, c) * (1.0 - fx) + px(x1, y1, c) * fx;
                    *v = (top * (1.0 - fy) + bot * fy) * bright;
                }
                let grey = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
                for c in 0..3 {
                    let v = grey + (rgb[c] - grey) * sat;
                    buf[(y * w + x) * 3 + c] = 128.0 + (v - 128.0) * contrast;
                }
            }
        }
        if blur {
            blur_121(&mut buf, w, h);
        }
        for (o, v) in out.iter_mut().zip(&buf) {
            *o = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Separable [1 2 1]/4 blur of an RGB f32 image, edges clamped.
fn blur_121(img: &mut [f32], w: usize, h: usize) {
    let mut tmp = img.to_vec();
    for y in 0..h {
        for x in 0..w {
            let (l, r) = (x.saturating_sub(1), (x + 1).min(w - 1));
            for c in 0..3 {
                tmp[(y * w + x) * 3 + c] = 0.25 * img[(y * w + l) * 3 + c]
                    + 0.5 * img[(y * w + x) * 3 + c]
                    + 0.25 * img[(y * w + r) * 3 + c];
            }
        }
    }
    for y in 0..h {
        let (u, d) = (y.saturating_sub(1), (y + 1).min(h - 1));
        for x in 0..w {
            for c in 0..3 {
                img[(y * w + x) * 3 + c] = 0.25 * tmp[(u * w + x) * 3 + c]
                    + 0.5 * tmp[(y * w + x) * 3 + c]
                    + 0.25 * tmp[(d * w + x) * 3 + c];
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriveConfig {
    /// `Bam` or `Invprop`.
    pub method: Method,
    pub epochs: usize,
    /// Frames per step (each in two views).
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    /// Use at most this many frames.
    pub frames: Option<usize>,
    pub augment: DriveAugment,
    pub bam: BamConfig,
    pub invprop: InvPropConfig,
}

impl DriveConfig {
    pub fn new(method: Method) -> DriveConfig {
        DriveConfig {
            method,
            epochs: 3,
            batch: 32,
            lr: 1e-3,
            seed: 0,
            frames: None,
            augment: DriveAugment::default(),
            bam: BamConfig::default(),
            invprop: InvPropConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriveEpoch {
    pub epoch: usize,
    pub loss: f32,
    pub spread: Spread,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriveReport {
    pub config: DriveConfig,
    pub frames: usize,
    pub seconds: f64,
    pub epochs: Vec<DriveEpoch>,
    pub checkpoint: PathBuf,
}

/// Encoder forward through [`crate::cpu_ops`] (GEMM both ways; candle's own conv backward
/// is a slow direct loop on the CPU).
fn encode(params: &Params, x: &Tensor, layers: &[ConvLayer]) -> Result<Tensor> {
    let mut y = x.clone();
    for l in layers {
        let w = params.vars[&format!("{}.weight", l.name)].as_tensor();
        let b = params.vars[&format!("{}.bias", l.name)].as_tensor();
        y = conv2d(&y, w, b, l.pad(), l.stride)?;
        if l.relu {
            y = y.relu()?;
        }
    }
    Ok(y)
}

/// Position-averaged encoder features, `(n, channels)`.
fn pooled(params: &Params, x: &Tensor, arch: &LetsMapLite) -> Result<Tensor> {
    let f = encode(params, x, &arch.encoder)?;
    Ok(f.mean(3)?.mean(2)?)
}

/// Pretrain the letsmap-lite encoder with BAM or InvProp on the recordings under `data`;
/// writes `out/pretrain.safetensors` (finetune's `--encoder`) and `out/pretrain.json`.
pub fn pretrain_letsmap(
    data: &Path,
    out: &Path,
    cfg: &DriveConfig,
    progress: bool,
) -> Result<DriveReport> {
    if !matches!(cfg.method, Method::Bam | Method::Invprop) {
        bail!(
            "driving frames: {} is not available (bam or invprop; the temporal MAE is `bevrt-tool pretrain`)",
            cfg.method.name()
        );
    }
    if cfg.epochs == 0 || cfg.batch < 2 {
        bail!("need at least one epoch and a batch of 2 or more frames");
    }
    let arch = LetsMapLite::default();
    let ds = data::load(data, cfg.frames, &|_, _| {})?;
    ds.check_for(&arch, false)?;
    let n = ds.len();
    if n < cfg.batch {
        bail!(
            "{}: {n} frames, fewer than one batch of {}",
            data.display(),
            cfg.batch
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let params = Params::init(&arch, cfg.seed)?;
    let channels = arch.encoder.last().map_or(0, |l| l.cout);
    let proj = Projector::init_from(cfg.seed, channels)?;
    let mut vars = params.of_layers(&arch.encoder)?;
    vars.extend(proj.vars());
    let mut opt = Adam::new(vars, cfg.lr)?;
    let mut bank =
        (cfg.method == Method::Invprop).then(|| Bank::new(n, super::encoder::PROJ_DIM, cfg.seed));
    let mut batcher = Batcher::new(&arch, &ds);
    let steps_per_epoch = n / cfg.batch;
    let total = (steps_per_epoch * cfg.epochs) as u64;
    let pb =
        crate::progress::progress_if(progress, total, &format!("{} (drive)", cfg.method.name()));
    let run = DriveRun {
        cfg,
        arch: &arch,
        ds: &ds,
        params: &params,
        proj: &proj,
        total,
    };
    let t0 = std::time::Instant::now();
    let mut epochs = vec![];
    for epoch in 0..cfg.epochs {
        let (sum, count) = run.epoch(epoch, &mut opt, bank.as_mut(), &mut batcher, &pb)?;
        let spread = run.feature_spread(&mut batcher, channels)?;
        log::info!(
            "{} (drive) epoch {}: loss {:.4}, effective rank {:.1} of {channels}",
            cfg.method.name(),
            epoch + 1,
            sum / count.max(1) as f64,
            spread.effective_rank
        );
        epochs.push(DriveEpoch {
            epoch: epoch + 1,
            loss: (sum / count.max(1) as f64) as f32,
            spread,
        });
        let enc_vars: Vec<(String, Var)> = params.of_layers(&arch.encoder)?;
        optim::save_checkpoint(
            &out.join("pretrain.safetensors"),
            enc_vars.iter().map(|(k, v)| (k, v)),
            None,
        )?;
        if spread.effective_rank < 2.0 {
            bail!(
                "{} on driving frames collapsed at epoch {}: effective rank {:.2} of {channels}",
                cfg.method.name(),
                epoch + 1,
                spread.effective_rank
            );
        }
    }
    pb.finish_and_clear();
    let report = DriveReport {
        config: cfg.clone(),
        frames: n,
        seconds: t0.elapsed().as_secs_f64(),
        epochs,
        checkpoint: out.join("pretrain.safetensors"),
    };
    std::fs::write(
        out.join("pretrain.json"),
        serde_json::to_string_pretty(&report)?,
    )
    .with_context(|| format!("{}: cannot write", out.display()))?;
    Ok(report)
}

/// What every step of BAM / InvProp on driving frames reads.
struct DriveRun<'r> {
    cfg: &'r DriveConfig,
    arch: &'r LetsMapLite,
    ds: &'r Dataset,
    params: &'r Params,
    proj: &'r Projector,
    /// Steps in the whole run (the cosine learning-rate schedule's length).
    total: u64,
}

impl DriveRun<'_> {
    /// One epoch over the frames in a seeded order, two augmented views of each; the sum of
    /// the step losses and the number of steps.
    fn epoch(
        &self,
        epoch: usize,
        opt: &mut Adam,
        mut bank: Option<&mut Bank>,
        batcher: &mut Batcher,
        pb: &indicatif::ProgressBar,
    ) -> Result<(f64, usize)> {
        let (cfg, ds) = (self.cfg, self.ds);
        let (w, h) = (ds.width as usize, ds.height as usize);
        let n = ds.len();
        let mut view = vec![0u8; w * h * 3];
        let mut rng = Rng(cfg.seed ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        if let Some(b) = bank.as_deref_mut()
            && epoch as f32 >= cfg.invprop.warmup * cfg.epochs as f32
        {
            b.rebuild_graph(cfg.invprop.k)?;
        }
        let (mut sum, mut count) = (0f64, 0usize);
        for chunk in order.chunks_exact(cfg.batch) {
            let mut views: Vec<Vec<u8>> = Vec::with_capacity(2 * chunk.len());
            for _ in 0..2 {
                for &i in chunk {
                    cfg.augment.view(&ds.frames[i], w, h, &mut rng, &mut view);
                    views.push(view.clone());
                }
            }
            let x = batcher.raw_images(&views, ds.width, ds.height)?;
            let z = self.proj.forward(&pooled(self.params, &x, self.arch)?)?;
            let (loss, value) = projection_loss(
                cfg.method,
                &z,
                2,
                chunk,
                &cfg.bam,
                &cfg.invprop,
                bank.as_deref(),
            )?;
            opt.lr = cfg.lr
                * 0.5
                * (1.0 + (std::f64::consts::PI * opt.step as f64 / self.total as f64).cos());
            opt.backward_step(&loss)?;
            if !value.is_finite() {
                bail!("training diverged at epoch {} (loss {value})", epoch + 1);
            }
            if let Some(b) = bank.as_deref_mut() {
                b.update(chunk, &z, 2, cfg.invprop.momentum)?;
            }
            sum += value as f64;
            count += 1;
            pb.inc(1);
            pb.set_message(format!(
                "epoch {} loss {:.4}",
                epoch + 1,
                sum / count as f64
            ));
        }
        Ok((sum, count))
    }

    /// Spread of the pooled features over (up to) 256 unaugmented frames.
    fn feature_spread(&self, batcher: &mut Batcher, channels: usize) -> Result<Spread> {
        let n = self.ds.len();
        let probe: Vec<usize> = (0..n).step_by((n / 256).max(1)).collect();
        let mut feats = vec![];
        for c in probe.chunks(32) {
            let x = batcher.images(self.ds, c)?;
            feats.extend(
                pooled(self.params, &x, self.arch)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
        }
        collapse::spread(&feats, channels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_views_keep_size_and_differ() {
        let (w, h) = (24, 8);
        let src: Vec<u8> = (0..w * h * 3).map(|i| (i * 13 % 256) as u8).collect();
        let aug = DriveAugment::default();
        let mut a = vec![0u8; src.len()];
        let mut b = vec![0u8; src.len()];
        let mut r = Rng(4);
        aug.view(&src, w, h, &mut r, &mut a);
        aug.view(&src, w, h, &mut r, &mut b);
        assert_ne!(a, b);
        // No jitter, no blur, full crop: the frame itself.
        let id = DriveAugment {
            area: (1.0, 1.0),
            jitter: 0.0,
            blur_p: 0.0,
        };
        id.view(&src, w, h, &mut r, &mut a);
        assert_eq!(a, src);
    }
}
