//! The training loop every self-supervised method shares: epochs over the training split in
//! a seeded order, one method-specific step per batch, Adam with a cosine schedule, spread
//! checks and a checkpoint after every epoch, then the `features` bundle.
//!
//! Exact resume: an epoch's randomness (order, augmentations, masks) comes from
//! `Rng(seed, epoch)`, and the checkpoint holds parameters, Adam's moments and the memory
//! bank at an epoch's end, so an interrupted run resumed with `--resume` writes the same
//! bundle as an uninterrupted one.

use bevrt_runtime::choice::Choice;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bevrt_models::{Manifest, ModelFile, OutputKind, OutputSpec, Task};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::augment::{self, DigitAugment};
use super::bam::{self, BamConfig};
use super::collapse::{self, Spread};
use super::encoder::{DIM, Encoder, Projector, Representation, SIDE};
use super::invprop::{self, Bank, InvPropConfig};
use super::mae::{self, Decoder, MaeConfig};
use crate::checkpoint;
use crate::digits::{self, Dataset};
use crate::optim::Adam;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Balanced-Attention Matching.
    Bam,
    /// Invariance Propagation.
    Invprop,
    /// Masked autoencoder, uniform masking.
    Mae,
    /// Masked autoencoder, structure-guided masking from easy to hard.
    Structmae,
    /// PDAE: the encoder of a frozen, pre-trained DDPM's missing posterior-mean shift
    /// (trained by [`crate::diffusion::pdae`]; needs `--ddpm`).
    Pdae,
}

impl Choice for Method {
    const ALL: &'static [Self] = &[
        Self::Bam,
        Self::Invprop,
        Self::Mae,
        Self::Structmae,
        Self::Pdae,
    ];
    fn name(self) -> &'static str {
        match self {
            Self::Bam => "bam",
            Self::Invprop => "invprop",
            Self::Mae => "mae",
            Self::Structmae => "structmae",
            Self::Pdae => "pdae",
        }
    }
    fn help(self) -> &'static str {
        match self {
            Self::Bam => "Balanced-Attention Matching",
            Self::Invprop => "Invariance Propagation",
            Self::Mae => "Masked autoencoder, uniform masking",
            Self::Structmae => "Masked autoencoder, structure-guided masking from easy to hard",
            Self::Pdae => {
                "PDAE: the encoder of a frozen, pre-trained DDPM's missing posterior-mean shift (trained by [`crate::diffusion::pdae`]; needs `--ddpm`)"
            }
        }
    }
}
bevrt_runtime::named_choice!(Method);

impl Method {
    fn views(self) -> usize {
        match self {
            Method::Bam | Method::Invprop => 2,
            Method::Mae | Method::Structmae | Method::Pdae => 1,
        }
    }
}

/// Everything that decides a run's result (recorded in the manifest and the checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SslConfig {
    pub method: Method,
    pub epochs: usize,
    pub batch: usize,
    /// Adam's peak learning rate (one epoch of linear warm-up, then cosine decay to 0).
    pub lr: f64,
    pub seed: u64,
    /// Use only N images of the training split, evenly spaced (quick runs, CI).
    pub train_limit: Option<usize>,
    pub augment: DigitAugment,
    pub bam: BamConfig,
    pub invprop: InvPropConfig,
    pub mae: MaeConfig,
    /// A run whose representation's effective rank falls below this is an error.
    pub min_effective_rank: f32,
    /// The layer the bundle exports (an export choice: a resumed run may change it).
    #[serde(default)]
    pub representation: Representation,
}

impl SslConfig {
    /// The defaults for a method (the recipe's settings).
    pub fn new(method: Method) -> SslConfig {
        SslConfig {
            method,
            epochs: 30,
            batch: 256,
            lr: 1e-3,
            seed: 1,
            train_limit: None,
            augment: match method {
                Method::Bam | Method::Invprop => DigitAugment::default(),
                Method::Mae | Method::Structmae | Method::Pdae => DigitAugment::light(),
            },
            bam: BamConfig::default(),
            invprop: InvPropConfig::default(),
            mae: MaeConfig {
                structured: method == Method::Structmae,
                ..MaeConfig::default()
            },
            min_effective_rank: 4.0,
            representation: Representation::Fc,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f32,
    pub spread: Spread,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    config: SslConfig,
    epochs_done: usize,
    step: u64,
    seconds: f64,
    log: Vec<EpochLog>,
}

#[derive(Debug, Clone)]
pub struct TrainReport {
    pub bundle: PathBuf,
    pub train_images: usize,
    pub seconds: f64,
    pub log: Vec<EpochLog>,
    pub parameters: usize,
}

/// The trainable parts of a run beside the encoder.
enum Head {
    Projector(Projector),
    Decoder(Decoder),
}

struct Model {
    enc: Encoder,
    head: Head,
    bank: Option<Bank>,
}

impl Model {
    /// The encoder and `cfg.method`'s head, fresh; InvProp's memory bank over `train_images`.
    fn init(cfg: &SslConfig, train_images: usize) -> Result<Model> {
        Ok(Model {
            enc: Encoder::init(cfg.seed)?,
            head: match cfg.method {
                Method::Bam | Method::Invprop => Head::Projector(Projector::init(cfg.seed)?),
                Method::Mae | Method::Structmae | Method::Pdae => {
                    Head::Decoder(Decoder::init(cfg.seed)?)
                }
            },
            bank: (cfg.method == Method::Invprop)
                .then(|| Bank::new(train_images, super::encoder::PROJ_DIM, cfg.seed)),
        })
    }

    fn vars(&self) -> Vec<(String, Var)> {
        let mut v = self.enc.vars();
        v.extend(match &self.head {
            Head::Projector(p) => p.vars(),
            Head::Decoder(d) => d.vars(),
        });
        v
    }
}

/// Where the checkpoint of a run writing bundle `out` lives.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.with_extension("ckpt")
}

/// Train `cfg.method` on the training split of `data` and write a `features` bundle to
/// `out`. `resume`: continue from `out`'s checkpoint (the same configuration, `epochs` may
/// grow). `progress`: show a progress bar.
pub fn train(
    data: &Path,
    out: &Path,
    cfg: &SslConfig,
    resume: bool,
    progress: bool,
) -> Result<TrainReport> {
    if out.exists() {
        bail!("{}: already exists; refusing to overwrite", out.display());
    }
    check_config(cfg)?;
    if cfg.method == Method::Pdae {
        bail!(
            "PDAE trains on a frozen DDPM: use diffusion::pdae::train (`ssl train --method pdae --ddpm DIR`)"
        );
    }
    let (ds, train_idx) = load_training_digits(data, cfg)?;
    let mut model = Model::init(cfg, train_idx.len())?;
    let mut opt = Adam::new(model.vars(), cfg.lr)?;
    let ckpt_dir = checkpoint_dir(out);
    let mut state = start_or_resume(&ckpt_dir, cfg, &mut model, &mut opt, resume)?;
    std::fs::create_dir_all(&ckpt_dir)
        .with_context(|| format!("{}: cannot create", ckpt_dir.display()))?;
    // Spread is measured on a fixed, unaugmented sample of the training split.
    let probe_idx: Vec<usize> = train_idx.iter().copied().take(1000).collect();
    let steps_per_epoch = train_idx.len().div_ceil(cfg.batch);
    let total_steps = (steps_per_epoch * cfg.epochs) as u64;
    let pb = crate::progress::progress_if(progress, total_steps, cfg.method.name());
    pb.set_position(state.step);
    let (t0, seconds_before) = (std::time::Instant::now(), state.seconds);
    for epoch in state.epochs_done..cfg.epochs {
        let loss = train_epoch(&mut model, &mut opt, cfg, &ds, &train_idx, epoch, &pb)?;
        let spread = collapse::spread(
            &embed_plain(&model.enc, &ds, &probe_idx, Representation::Fc)?,
            DIM,
        )?;
        state.log.push(EpochLog {
            epoch: epoch + 1,
            loss,
            spread,
        });
        log::info!(
            "{} epoch {}: loss {:.4}, effective rank {:.1} of {DIM}, median std {:.3}, {} dead dims",
            cfg.method.name(),
            epoch + 1,
            loss,
            spread.effective_rank,
            spread.median_std,
            spread.dead_dims
        );
        state.epochs_done = epoch + 1;
        state.step = opt.step;
        state.seconds = seconds_before + t0.elapsed().as_secs_f64();
        save_checkpoint(&ckpt_dir, &state, &model, &opt)?;
        if spread.effective_rank < cfg.min_effective_rank {
            pb.finish_and_clear();
            return Err(collapsed(cfg, epoch, &spread, &ckpt_dir));
        }
    }
    pb.finish_and_clear();
    let seconds = state.seconds;
    write_bundle(out, data, &ds, &train_idx, cfg, &model.enc, &state)?;
    Ok(TrainReport {
        bundle: out.to_path_buf(),
        train_images: train_idx.len(),
        seconds,
        log: state.log,
        parameters: model.enc.parameter_count(),
    })
}

/// The digits (28x28 only) and the training images used (`train_limit` of the training
/// split, evenly spaced); refused with fewer than 16.
fn load_training_digits(data: &Path, cfg: &SslConfig) -> Result<(Dataset, Vec<usize>)> {
    let ds = digits::load(data)?;
    if (ds.width, ds.height) != (SIDE, SIDE) {
        bail!(
            "{}: images are {}x{}; the self-supervised encoder is built for {SIDE}x{SIDE} \
             (MNIST-style) images",
            data.display(),
            ds.width,
            ds.height
        );
    }
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

/// A fresh progress record, or with `resume` the interrupted run's from `ckpt_dir`, its
/// weights and Adam state loaded into `model` and `opt`. Without `resume` an earlier run's
/// checkpoint is an error.
fn start_or_resume(
    ckpt_dir: &Path,
    cfg: &SslConfig,
    model: &mut Model,
    opt: &mut Adam,
    resume: bool,
) -> Result<Checkpoint> {
    if resume {
        let state = load_checkpoint(ckpt_dir, cfg, model, opt)?;
        eprintln!(
            "{}: resuming after epoch {} of {}",
            ckpt_dir.display(),
            state.epochs_done,
            cfg.epochs
        );
        return Ok(state);
    }
    if ckpt_dir.exists() {
        bail!(
            "{}: a checkpoint of an earlier run is there; pass --resume to continue it, or \
             remove it",
            ckpt_dir.display()
        );
    }
    Ok(Checkpoint {
        config: cfg.clone(),
        epochs_done: 0,
        step: 0,
        seconds: 0.0,
        log: vec![],
    })
}

/// The error of a run whose representation collapsed at `epoch`.
fn collapsed(cfg: &SslConfig, epoch: usize, spread: &Spread, ckpt_dir: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{} collapsed at epoch {}: the representation's effective rank is {:.2} of {DIM} \
         (floor {}), median per-dimension std {:.2e}, {} dead dimensions; no bundle \
         written (checkpoint kept in {})",
        cfg.method.name(),
        epoch + 1,
        spread.effective_rank,
        cfg.min_effective_rank,
        spread.median_std,
        spread.dead_dims,
        ckpt_dir.display()
    )
}

/// At most `limit` of `idx`, evenly spaced: the split is in file order, and dataset files are
/// often sorted by class (MNIST-5k is), so the first N would be a few classes only.
pub fn limit_evenly(idx: &[usize], limit: Option<usize>) -> Vec<usize> {
    match limit {
        Some(n) if n < idx.len() => {
            let step = idx.len() as f64 / n as f64;
            (0..n).map(|k| idx[(k as f64 * step) as usize]).collect()
        }
        _ => idx.to_vec(),
    }
}

/// One epoch: a seeded order over the training split, the bank's graph when InvProp's
/// propagation is on, one [`step`] per batch. Returns the mean loss.
fn train_epoch(
    model: &mut Model,
    opt: &mut Adam,
    cfg: &SslConfig,
    ds: &Dataset,
    train_idx: &[usize],
    epoch: usize,
    pb: &indicatif::ProgressBar,
) -> Result<f32> {
    let steps_per_epoch = train_idx.len().div_ceil(cfg.batch);
    let total_steps = (steps_per_epoch * cfg.epochs) as u64;
    let mut rng = Rng(cfg.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..train_idx.len()).collect();
    rng.shuffle(&mut order);
    if let Some(bank) = &mut model.bank
        && epoch as f32 >= cfg.invprop.warmup * cfg.epochs as f32
    {
        bank.rebuild_graph(cfg.invprop.k)?;
    }
    let (mut sum, mut n) = (0f64, 0usize);
    for chunk in order.chunks(cfg.batch) {
        opt.lr = schedule(cfg.lr, opt.step, steps_per_epoch as u64, total_steps);
        let progress = opt.step as f32 / total_steps.max(1) as f32;
        let l = step(model, opt, cfg, ds, train_idx, chunk, progress, &mut rng)?;
        if !l.is_finite() {
            bail!("training diverged at epoch {} (loss {l})", epoch + 1);
        }
        sum += l as f64;
        n += 1;
        pb.inc(1);
        pb.set_message(format!("epoch {} loss {:.4}", epoch + 1, sum / n as f64));
    }
    Ok((sum / n.max(1) as f64) as f32)
}

fn check_config(cfg: &SslConfig) -> Result<()> {
    if cfg.epochs == 0 || cfg.batch < 2 {
        bail!("need at least one epoch and a batch of 2 or more");
    }
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        bail!("learning rate {} is not a positive number", cfg.lr);
    }
    if !(0.0..1.0).contains(&cfg.mae.ratio) {
        bail!("mask ratio {} is outside [0, 1)", cfg.mae.ratio);
    }
    Ok(())
}

/// Linear warm-up over the first epoch, cosine decay to 0 at the end.
fn schedule(peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let t = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    peak * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
}

/// One optimisation step on the images `chunk` (positions in `train_idx`); the loss.
#[allow(clippy::too_many_arguments)]
fn step(
    model: &mut Model,
    opt: &mut Adam,
    cfg: &SslConfig,
    ds: &Dataset,
    train_idx: &[usize],
    chunk: &[usize],
    progress: f32,
    rng: &mut Rng,
) -> Result<f32> {
    let b = chunk.len();
    let px = SIDE * SIDE;
    let views = cfg.method.views();
    let mut x = vec![0f32; views * b * px];
    for v in 0..views {
        for (i, &pos) in chunk.iter().enumerate() {
            let dst = &mut x[(v * b + i) * px..(v * b + i + 1) * px];
            cfg.augment.view(ds.image(train_idx[pos]), SIDE, rng, dst);
        }
    }
    match &model.head {
        Head::Projector(proj) => {
            let xt = Tensor::from_vec(x, (views * b, 1, SIDE, SIDE), &Device::Cpu)?;
            let z = proj.forward(&model.enc.forward(&xt, true)?)?;
            let (loss, value) = projection_loss(
                cfg.method,
                &z,
                views,
                chunk,
                &cfg.bam,
                &cfg.invprop,
                model.bank.as_ref(),
            )?;
            opt.backward_step(&loss)?;
            if let Some(bank) = &mut model.bank {
                bank.update(chunk, &z, views, cfg.invprop.momentum)?;
            }
            Ok(value)
        }
        Head::Decoder(dec) => {
            let target = x.clone();
            let mut w = vec![0f32; b * px];
            for i in 0..b {
                let img = &mut x[i * px..(i + 1) * px];
                let masked = mae::draw_mask(img, &cfg.mae, progress, rng);
                mae::apply_mask(img, &masked, &mut w[i * px..(i + 1) * px]);
            }
            let shape = (b, 1, SIDE, SIDE);
            let xt = Tensor::from_vec(x, shape, &Device::Cpu)?;
            let pred = dec.forward(&model.enc.forward(&xt, true)?)?;
            let loss = mae::masked_mse(
                &pred,
                &Tensor::from_vec(target, shape, &Device::Cpu)?,
                &Tensor::from_vec(w, shape, &Device::Cpu)?,
            )?;
            let value = loss.to_scalar::<f32>()?;
            opt.backward_step(&loss)?;
            Ok(value)
        }
    }
}

/// The loss of the projection-head methods on `z` (`views·idx.len()` L2-normalised rows,
/// view-major) of the images `idx` (rows of the bank), and its value. Shared by the digit
/// encoder and the letsmap-lite encoder on driving frames.
pub(super) fn projection_loss(
    method: Method,
    z: &Tensor,
    views: usize,
    idx: &[usize],
    bam_cfg: &BamConfig,
    inv_cfg: &InvPropConfig,
    bank: Option<&Bank>,
) -> Result<(Tensor, f32)> {
    match method {
        Method::Bam => {
            let l = bam::loss(z, views, idx.len(), bam_cfg)?;
            let v = l.to_scalar::<f32>()?;
            Ok((l, v))
        }
        Method::Invprop => {
            let bank = bank.context("InvProp without a memory bank")?;
            invprop::loss(z, idx, bank, inv_cfg, bank.has_graph())
        }
        Method::Mae | Method::Structmae | Method::Pdae => {
            bail!("{} has no projection head", method.name())
        }
    }
}

/// Encoder outputs of unaugmented images (`n × repr.dim()`, row-major).
pub fn embed_plain(
    enc: &Encoder,
    ds: &Dataset,
    idx: &[usize],
    repr: Representation,
) -> Result<Vec<f32>> {
    let px = SIDE * SIDE;
    let mut out = Vec::with_capacity(idx.len() * enc.repr_dim(repr));
    for chunk in idx.chunks(256) {
        let mut x = vec![0f32; chunk.len() * px];
        for (k, &i) in chunk.iter().enumerate() {
            augment::plain(ds.image(i), &mut x[k * px..(k + 1) * px]);
        }
        let xt = Tensor::from_vec(x, (chunk.len(), 1, SIDE, SIDE), &Device::Cpu)?;
        out.extend(enc.embed(&xt, repr)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

fn save_checkpoint(dir: &Path, st: &Checkpoint, model: &Model, opt: &Adam) -> Result<()> {
    let mut vars = model.vars();
    vars.extend(model.enc.buffers());
    if let Some(bank) = &model.bank {
        vars.push(("invprop.bank".into(), Var::from_tensor(&bank.tensor()?)?));
    }
    checkpoint::save(dir, st, &vars, Some(opt))
}

fn load_checkpoint(
    dir: &Path,
    cfg: &SslConfig,
    model: &mut Model,
    opt: &mut Adam,
) -> Result<Checkpoint> {
    let st: Checkpoint = checkpoint::load_state(dir)?;
    let mut want = st.config.clone();
    want.epochs = cfg.epochs;
    want.representation = cfg.representation;
    if &want != cfg {
        bail!(
            "{}: --resume needs the configuration of the interrupted run (only the epochs may \
             grow); it used {:?}",
            dir.display(),
            st.config
        );
    }
    if st.epochs_done > cfg.epochs {
        bail!(
            "{}: {} epochs are done already, more than the {} asked for",
            dir.display(),
            st.epochs_done,
            cfg.epochs
        );
    }
    let map = checkpoint::load_tensors(dir)?;
    let mut vars = model.vars();
    vars.extend(model.enc.buffers());
    checkpoint::restore(&map, &vars, "", dir)?;
    if let Some(bank) = &mut model.bank {
        let t = map
            .get("param.invprop.bank")
            .with_context(|| format!("{}: the memory bank is missing", dir.display()))?;
        bank.load(t.flatten_all()?.to_vec1()?)?;
    }
    opt.load_state(&map, st.step)?;
    Ok(st)
}

/// Per-dimension mean and std of the training split's vectors (no labels involved), which
/// the runtime subtracts and divides by: the encoder's output carries a large common offset
/// that would otherwise dominate cosine similarities.
fn write_embedding_stats(
    path: &Path,
    enc: &Encoder,
    ds: &Dataset,
    idx: &[usize],
    repr: Representation,
) -> Result<()> {
    let dim = enc.repr_dim(repr);
    let v = embed_plain(enc, ds, idx, repr)?;
    let flat = crate::afv::fisher::standardisation(v.chunks(dim), dim);
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path)
            .with_context(|| format!("{}: cannot create", path.display()))?,
    );
    bevrt_runtime::npy::write_f32(&mut f, &[2, dim], &flat)?;
    Ok(())
}

fn write_bundle(
    out: &Path,
    data: &Path,
    ds: &Dataset,
    train_idx: &[usize],
    cfg: &SslConfig,
    enc: &Encoder,
    st: &Checkpoint,
) -> Result<()> {
    let prov = run_provenance(cfg.seed, st.seconds, cfg, &st.log, |e| {
        (
            e.epoch,
            vec![
                e.loss as f64,
                e.spread.effective_rank as f64,
                e.spread.median_std as f64,
            ],
        )
    })?;
    write_encoder_bundle(
        out,
        &EncoderBundle {
            name: format!("ssl-{}", cfg.method.name()),
            method: cfg.method.name(),
            description: format!(
                "Self-supervised image encoder ({}), {}-d vector; epochs_log rows: epoch, loss, \
                 effective rank, median std",
                cfg.method.name(),
                enc.repr_dim(cfg.representation)
            ),
            data,
            ds,
            train_idx,
            enc,
            repr: cfg.representation,
        },
        prov,
    )
}

/// The provenance every trained encoder records: its seed, training seconds, configuration
/// (JSON), and `epochs_log`, one row per epoch: the epoch number, then `row`'s values.
pub fn run_provenance<E>(
    seed: u64,
    seconds: f64,
    config: &impl Serialize,
    log: &[E],
    row: impl Fn(&E) -> (usize, Vec<f64>),
) -> Result<toml::Table> {
    let mut prov = toml::Table::new();
    prov.insert("seed".into(), (seed as i64).into());
    prov.insert("seconds".into(), seconds.into());
    prov.insert("config".into(), serde_json::to_string(config)?.into());
    let rows = log
        .iter()
        .map(|e| {
            let (epoch, values) = row(e);
            let mut r = vec![toml::Value::from(epoch as i64)];
            r.extend(values.into_iter().map(toml::Value::from));
            toml::Value::Array(r)
        })
        .collect();
    prov.insert("epochs_log".into(), toml::Value::Array(rows));
    Ok(prov)
}

/// What a `features` bundle of [`Encoder`] records beside the network.
pub struct EncoderBundle<'a> {
    /// The manifest's name.
    pub name: String,
    pub method: &'a str,
    pub description: String,
    /// The unlabelled training data and the images of it used.
    pub data: &'a Path,
    pub ds: &'a Dataset,
    pub train_idx: &'a [usize],
    pub enc: &'a Encoder,
    pub repr: Representation,
}

/// Write `b.enc` as a `features` bundle: the encoder's ONNX (normalisation folded in), the
/// training split's standardisation statistics, provenance (`extra` added to the common
/// entries), self-test vectors.
pub fn write_encoder_bundle(out: &Path, b: &EncoderBundle, extra: toml::Table) -> Result<()> {
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let onnx = bevrt_models::sequential_to_onnx(
        "encoder",
        "image",
        &[1, 1, SIDE, SIDE],
        "embedding",
        &b.enc.layers(b.repr)?,
        &format!("bevrt image encoder ({})", b.method),
    )?;
    std::fs::write(tmp.join("encoder.onnx"), onnx)?;
    write_embedding_stats(
        &tmp.join("embedding_stats.npy"),
        b.enc,
        b.ds,
        b.train_idx,
        b.repr,
    )?;
    let mut prov = toml::Table::new();
    prov.insert("method".into(), b.method.into());
    prov.insert(
        "architecture".into(),
        format!(
            "CNN 1x28x28 → 32 → 64 → 128 → 128x4x4 → Linear {} (ssl::encoder)",
            b.enc.repr_dim(Representation::Fc)
        )
        .into(),
    );
    prov.insert(
        "data".into(),
        format!("{} (training split without labels)", b.data.display()).into(),
    );
    prov.insert("train_images".into(), (b.train_idx.len() as i64).into());
    prov.insert("parameters".into(), (b.enc.parameter_count() as i64).into());
    prov.insert(
        "representation".into(),
        format!("{:?}", b.repr).to_lowercase().into(),
    );
    prov.extend(extra);
    let manifest = Manifest {
        format: 1,
        name: b.name.clone(),
        version: "1".into(),
        task: Task::Features,
        description: b.description.clone(),
        models: vec![ModelFile {
            role: "model".into(),
            file: "encoder.onnx".into(),
            sha256: String::new(),
        }],
        input: crate::afv::train::input_spec(b.ds),
        outputs: vec![OutputSpec {
            name: Some("embedding".into()),
            kind: OutputKind::Embedding,
            labels: vec![],
        }],
        grid: None,
        classes: vec![],
        calibration: None,
        embedding_norm: bevrt_models::EmbeddingNorm::Standardize,
        embedding_stats: Some(ModelFile {
            role: "embedding_stats".into(),
            file: "embedding_stats.npy".into(),
            sha256: String::new(),
        }),
        afv: None,
        selftest: None,
        provenance: prov,
        expires: None,
    };
    let r = bevrt_models::write_bundle(
        out,
        manifest,
        &[
            (tmp.join("encoder.onnx"), "encoder.onnx".to_string()),
            (
                tmp.join("embedding_stats.npy"),
                "embedding_stats.npy".to_string(),
            ),
        ],
    );
    let _ = std::fs::remove_dir_all(&tmp);
    r?;
    bevrt_runtime::selftest::record_or_warn(out);
    Ok(())
}
