//! PDAE (Zhang, Zhao & Lin, NeurIPS 2022): representation learning from a *frozen*,
//! pre-trained DDPM. The encoder E maps a clean digit to `z`; the gradient estimator G (an
//! AdaGN copy of the DDPM's middle and up path, [`UpPath::estimator_copy`]) predicts from the
//! frozen down path's features of `x_t` and from `z` the shift of the posterior mean that the
//! DDPM misses because the forward process destroyed information. Only E and G train:
//!
//! `L = λ_t·‖ε − (ε_θ(x_t, t) + c_t·G(x_t, z, t))‖²`, `c_t = −√α_t(1−ᾱ_{t−1})/√(1−ᾱ_t)`,
//! `λ_t = SNR_t^0.1/(1+SNR_t)` ([`NoiseSchedule`]).
//!
//! E is [`Encoder`] with a `zdim`-wide last layer (batch-normalised in training, folded at
//! export), so the `features` bundle is E alone and runs wherever the other encoders run.
//! The run's checkpoint (`B.ckpt/`) keeps E, G and the DDPM's directory for
//! `ddpm reconstruct`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::ddpm::{self, DIGIT, RunControl};
pub use super::pdae_model::Pdae;
use super::schedule::{NoiseSchedule, STEPS};
use super::unet::{SIDE, Unet};
use crate::checkpoint;
use crate::digits::{self, Dataset};
use crate::optim::Adam;
use crate::rng::{self, Rng};
use crate::ssl::augment;
use crate::ssl::collapse::{self, Spread};
use crate::ssl::encoder::{Encoder, Representation};
use crate::ssl::run::{
    EncoderBundle, embed_plain, limit_evenly, run_provenance, write_encoder_bundle,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PdaeConfig {
    pub epochs: usize,
    pub batch: usize,
    /// Adam's peak learning rate (warm-up, cosine decay to a tenth: [`ddpm::lr_at`]).
    pub lr: f64,
    pub seed: u64,
    /// Width of the code z.
    pub zdim: usize,
    pub train_limit: Option<usize>,
    /// A run whose z has a lower effective rank is an error (collapse).
    pub min_effective_rank: f32,
}

impl Default for PdaeConfig {
    fn default() -> PdaeConfig {
        PdaeConfig {
            epochs: 20,
            batch: 64,
            lr: 1e-3,
            seed: 1,
            zdim: 64,
            train_limit: None,
            min_effective_rank: 4.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PdaeEpoch {
    pub epoch: usize,
    pub loss: f32,
    pub spread: Spread,
    /// The weighted loss on a fixed sample of training images at fixed timesteps and noise
    /// with z (`with_z`) and with the frozen DDPM alone (`ddpm_alone`): the share of the
    /// DDPM's error that z lets the estimator explain.
    #[serde(default)]
    pub with_z: f32,
    #[serde(default)]
    pub ddpm_alone: f32,
}

/// `B.ckpt/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PdaeState {
    pub config: PdaeConfig,
    /// The frozen DDPM's run directory.
    pub ddpm: PathBuf,
    pub data: String,
    pub epochs_done: usize,
    pub step: u64,
    pub seconds: f64,
    pub log: Vec<PdaeEpoch>,
}

/// Training's side of the model: a fresh E and G on the frozen DDPM, and the variables
/// Adam and the checkpoint see.
impl Pdae {
    fn init(unet: Unet, cfg: &PdaeConfig) -> Result<Pdae> {
        Ok(Pdae {
            enc: Encoder::with_dim(cfg.seed ^ 0x0dae, cfg.zdim)?,
            g: unet.up.estimator_copy(cfg.zdim, cfg.seed)?,
            unet,
            sched: NoiseSchedule::linear(STEPS),
        })
    }

    fn trained_vars(&self) -> Vec<(String, Var)> {
        let mut v = self.enc.vars();
        v.extend(self.g.named_vars("g."));
        v
    }

    fn checkpoint_vars(&self) -> Vec<(String, Var)> {
        let mut v = self.trained_vars();
        v.extend(self.enc.buffers());
        v
    }
}

/// PDAE's weighted loss on the images `idx` at seeded timesteps and noise, with the
/// estimator (`true`) or with the frozen DDPM alone (`false`, G ≡ 0): how much of the
/// DDPM's error z lets G explain.
pub fn eval_loss(
    model: &Pdae,
    ds: &Dataset,
    idx: &[usize],
    seed: u64,
    with_estimator: bool,
) -> Result<f32> {
    let b = ddpm::EvalBatch::draw(ds, idx, &model.sched, seed);
    let z = if with_estimator {
        Some(super::pdae_model::codes(model, ds, idx)?)
    } else {
        None
    };
    let pred = ddpm::batched(&b.xt, &b.t, |x, t, rows| match &z {
        Some(z) => model.eps(x, t, &z.narrow(0, rows.start, rows.len())?),
        None => model.unet.forward(x, t),
    })?;
    let px = SIDE * SIDE;
    let mut total = 0f64;
    for (k, &t) in b.t.iter().enumerate() {
        let mse: f64 = (k * px..(k + 1) * px)
            .map(|i| ((pred[i] - b.eps[i]) as f64).powi(2))
            .sum::<f64>()
            / px as f64;
        total += model.sched.pdae_weight(t) * mse;
    }
    Ok((total / idx.len().max(1) as f64) as f32)
}

/// Seed of the fixed timesteps and noise of the per-epoch gap measurement.
const EVAL_SEED: u64 = 0x9a9;

pub fn checkpoint_dir(bundle: &Path) -> PathBuf {
    bundle.with_extension("ckpt")
}

pub struct PdaeReport {
    pub bundle: Option<PathBuf>,
    pub state: PdaeState,
    pub train_images: usize,
    pub parameters: usize,
}

/// Train E and G on the frozen DDPM in `ddpm_dir`, on the training split of `data`; write
/// E as a `features` bundle to `out` (checkpoint in `out.ckpt/`) once every epoch is done
/// (`bundle` is `None` in the report when `ctl` stopped the run before that).
pub fn train(
    data: &Path,
    ddpm_dir: &Path,
    out: &Path,
    cfg: &PdaeConfig,
    ctl: RunControl,
) -> Result<PdaeReport> {
    if out.exists() {
        bail!("{}: already exists; refusing to overwrite", out.display());
    }
    if cfg.epochs == 0 || cfg.batch < 2 || !(cfg.lr > 0.0 && cfg.lr.is_finite()) || cfg.zdim == 0 {
        bail!("need epochs ≥ 1, batch ≥ 2, a positive learning rate and zdim ≥ 1");
    }
    let (ds, train_idx) = load_training_digits(data, cfg)?;
    let (unet, _) =
        ddpm::load(ddpm_dir).with_context(|| format!("--ddpm {}", ddpm_dir.display()))?;
    let model = Pdae::init(unet, cfg)?;
    let mut opt = Adam::new(model.trained_vars(), cfg.lr)?;
    let ckpt = checkpoint_dir(out);
    let fresh = PdaeState {
        config: cfg.clone(),
        ddpm: ddpm_dir.to_path_buf(),
        data: data.display().to_string(),
        epochs_done: 0,
        step: 0,
        seconds: 0.0,
        log: vec![],
    };
    let mut st = start_or_resume(fresh, &ckpt, &model, &mut opt, ctl.resume)?;
    let probe_idx: Vec<usize> = train_idx.iter().copied().take(1000).collect();
    let plan = ddpm::EpochPlan {
        what: "pdae",
        batch: cfg.batch,
        peak_lr: cfg.lr,
        total: (train_idx.len().div_ceil(cfg.batch) * cfg.epochs) as u64,
    };
    let pb = crate::progress::progress_if(ctl.progress, plan.total, plan.what);
    pb.set_position(st.step);
    let gap_idx = gap_images(&probe_idx);
    let ddpm_alone = eval_loss(&model, &ds, gap_idx, EVAL_SEED, false)?;
    let (t0, before) = (std::time::Instant::now(), st.seconds);
    let first = st.epochs_done;
    for epoch in first..cfg.epochs {
        let mut rng = ddpm::epoch_rng(cfg.seed ^ 0x0dae, epoch);
        let loss = ddpm::run_epoch(
            &plan,
            epoch,
            &train_idx,
            &mut opt,
            &mut rng,
            &pb,
            |opt, chunk, rng| step(&model, opt, &ds, chunk, rng),
        )?;
        let e = measure_epoch(&model, &ds, &probe_idx, cfg, epoch, loss, ddpm_alone)?;
        let rank = e.spread.effective_rank;
        st.log.push(e);
        st.epochs_done = epoch + 1;
        st.step = opt.step;
        st.seconds = before + t0.elapsed().as_secs_f64();
        checkpoint::save(&ckpt, &st, &model.checkpoint_vars(), Some(&opt))?;
        if rank < cfg.min_effective_rank {
            pb.finish_and_clear();
            bail!(
                "PDAE's code collapsed at epoch {}: effective rank {:.2} of {} (floor {}); no \
                 bundle written (checkpoint kept in {})",
                epoch + 1,
                rank,
                cfg.zdim,
                cfg.min_effective_rank,
                ckpt.display()
            );
        }
        if ctl.stops_after(first, epoch) {
            break;
        }
    }
    pb.finish_and_clear();
    let done = st.epochs_done == cfg.epochs;
    if done {
        write_bundle(out, data, &ds, &train_idx, &model, &st)?;
    }
    Ok(PdaeReport {
        bundle: done.then(|| out.to_path_buf()),
        train_images: train_idx.len(),
        parameters: model
            .trained_vars()
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum(),
        state: st,
    })
}

/// The digits and the training images used (`train_limit` of the training split, evenly
/// spaced); refused with fewer than 16.
fn load_training_digits(data: &Path, cfg: &PdaeConfig) -> Result<(Dataset, Vec<usize>)> {
    let ds = digits::load(data)?;
    ddpm::check_digits(&ds, data)?;
    let train_idx = limit_evenly(&ds.split().0, cfg.train_limit);
    if train_idx.len() < 16 {
        bail!(
            "{}: {} training images are too few",
            data.display(),
            train_idx.len()
        );
    }
    Ok((ds, train_idx))
}

/// The `fresh` progress record, or with `resume` the interrupted run's from the checkpoint
/// `ckpt` (same configuration and DDPM; only the epochs may grow), its weights and Adam state
/// loaded into `model` and `opt`. Without `resume` an earlier run's checkpoint is an error.
fn start_or_resume(
    fresh: PdaeState,
    ckpt: &Path,
    model: &Pdae,
    opt: &mut Adam,
    resume: bool,
) -> Result<PdaeState> {
    let cfg = &fresh.config;
    if !resume {
        if ckpt.join("state.json").exists() {
            bail!(
                "{}: a checkpoint of an earlier run is there; pass --resume to continue it, or remove it",
                ckpt.display()
            );
        }
        return Ok(fresh);
    }
    let old: PdaeState = checkpoint::load_state(ckpt)?;
    let mut want = old.config.clone();
    want.epochs = cfg.epochs;
    if &want != cfg || old.epochs_done > cfg.epochs || old.ddpm != fresh.ddpm {
        bail!(
            "{}: --resume needs the interrupted run's configuration and DDPM (only the \
             epochs may grow); it used {:?} on {}",
            ckpt.display(),
            old.config,
            old.ddpm.display()
        );
    }
    let map = checkpoint::load_tensors(ckpt)?;
    checkpoint::restore(&map, &model.checkpoint_vars(), "", ckpt)?;
    opt.load_state(&map, old.step)?;
    let st = PdaeState {
        config: cfg.clone(),
        ..old
    };
    eprintln!(
        "{}: resuming after epoch {}",
        ckpt.display(),
        st.epochs_done
    );
    Ok(st)
}

/// The images the gap between the DDPM alone and the DDPM with z is measured on: the first
/// 256 probe images.
fn gap_images(probe_idx: &[usize]) -> &[usize] {
    &probe_idx[..probe_idx.len().min(256)]
}

/// The record of an epoch just trained: its loss, the spread of z on the probe images and
/// the weighted error with z on the gap images (logged).
fn measure_epoch(
    model: &Pdae,
    ds: &Dataset,
    probe_idx: &[usize],
    cfg: &PdaeConfig,
    epoch: usize,
    loss: f32,
    ddpm_alone: f32,
) -> Result<PdaeEpoch> {
    let spread = collapse::spread(
        &embed_plain(&model.enc, ds, probe_idx, Representation::Fc)?,
        cfg.zdim,
    )?;
    let gap_idx = gap_images(probe_idx);
    let e = PdaeEpoch {
        epoch: epoch + 1,
        loss,
        spread,
        with_z: eval_loss(model, ds, gap_idx, EVAL_SEED, true)?,
        ddpm_alone,
    };
    log::info!(
        "pdae epoch {}: loss {loss:.5}, effective rank of z {:.1} of {}; on {} training \
         images the frozen DDPM's weighted error {:.5}, with z {:.5}",
        epoch + 1,
        spread.effective_rank,
        cfg.zdim,
        gap_idx.len(),
        e.ddpm_alone,
        e.with_z
    );
    Ok(e)
}

/// Digits of `idx` as the encoder sees them: `(n, 1, 28, 28)` in [-1, 1].
fn encoder_input(ds: &Dataset, idx: &[usize]) -> Result<Tensor> {
    let px = DIGIT * DIGIT;
    let mut x = vec![0f32; idx.len() * px];
    for (k, &i) in idx.iter().enumerate() {
        augment::plain(ds.image(i), &mut x[k * px..(k + 1) * px]);
    }
    Ok(Tensor::from_vec(
        x,
        (idx.len(), 1, DIGIT, DIGIT),
        &Device::Cpu,
    )?)
}

fn step(model: &Pdae, opt: &mut Adam, ds: &Dataset, chunk: &[usize], rng: &mut Rng) -> Result<f32> {
    let b = chunk.len();
    let x0 = ddpm::padded(ds, chunk);
    let t: Vec<usize> = (0..b).map(|_| rng.below(model.sched.steps())).collect();
    let eps = rng::normal(x0.len(), rng);
    let xt = ddpm::noisy(&x0, &eps, &t, &model.sched);
    let z = model.enc.forward(&encoder_input(ds, chunk)?, true)?;
    let shape = (b, 1, SIDE, SIDE);
    let pred = model.eps(&Tensor::from_vec(xt, shape, &Device::Cpu)?, &t, &z)?;
    let per_image = (pred - Tensor::from_vec(eps, shape, &Device::Cpu)?)?
        .sqr()?
        .reshape((b, SIDE * SIDE))?
        .mean(1)?;
    let w: Vec<f32> = t
        .iter()
        .map(|&ti| model.sched.pdae_weight(ti) as f32)
        .collect();
    let loss = (per_image * Tensor::from_vec(w, b, &Device::Cpu)?)?.mean_all()?;
    let v = loss.to_scalar::<f32>()?;
    opt.backward_step(&loss)?;
    Ok(v)
}

fn write_bundle(
    out: &Path,
    data: &Path,
    ds: &Dataset,
    train_idx: &[usize],
    model: &Pdae,
    st: &PdaeState,
) -> Result<()> {
    let mut prov = run_provenance(st.config.seed, st.seconds, &st.config, &st.log, |e| {
        (
            e.epoch,
            vec![
                e.loss as f64,
                e.spread.effective_rank as f64,
                e.with_z as f64,
                e.ddpm_alone as f64,
            ],
        )
    })?;
    prov.insert(
        "ddpm".into(),
        bevrt_models::bundle::path_label(&st.ddpm).into(),
    );
    write_encoder_bundle(
        out,
        &EncoderBundle {
            name: "pdae".into(),
            method: "pdae",
            description: format!(
                "PDAE encoder: the {}-value code z a gradient estimator uses to complete a frozen \
                 DDPM's posterior mean; epochs_log rows: epoch, weighted loss, effective rank of z, \
                 weighted error on 256 training images with z and with the DDPM alone",
                st.config.zdim
            ),
            data,
            ds,
            train_idx,
            enc: &model.enc,
            repr: Representation::Fc,
        },
        prov,
    )
}

/// A finished run: the frozen DDPM, E and G as trained, and the run's record.
pub fn load(ckpt: &Path) -> Result<(Pdae, PdaeState)> {
    let st: PdaeState = checkpoint::load_state(ckpt)?;
    if st.epochs_done == 0 {
        bail!("{}: PDAE has not finished an epoch", ckpt.display());
    }
    let (unet, _) = ddpm::load(&st.ddpm).with_context(|| {
        format!(
            "{}: the DDPM it was trained on ({})",
            ckpt.display(),
            st.ddpm.display()
        )
    })?;
    let model = Pdae::init(unet, &st.config)?;
    let map = checkpoint::load_tensors(ckpt)?;
    checkpoint::restore(&map, &model.checkpoint_vars(), "", ckpt)?;
    Ok((model, st))
}
