//! `bevrt-tool ssl train`: arguments into a [`bevrt_train::ssl::SslConfig`], then the library.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bevrt_train::diffusion::ddpm::RunControl;
use bevrt_train::diffusion::pdae::{self, PdaeConfig};
use bevrt_train::ssl::encoder::Representation;
use bevrt_train::ssl::{self, Method, SslConfig};
use clap::{Args, Subcommand};

use super::choice;
use bevrt_runtime::choice::Choice;

#[derive(Subcommand)]
pub enum SslCmd {
    /// Pretrain the shared encoder without labels; writes a `features` bundle.
    Train(SslTrainArgs),
    /// BAM or InvProp on unlabelled driving recordings: the letsmap-lite encoder, written as
    /// `OUT/pretrain.safetensors` for `finetune --encoder`.
    Drive(SslDriveArgs),
}

#[derive(Args, Debug)]
pub struct SslDriveArgs {
    /// `bam` or `invprop`.
    #[arg(long, value_parser = choice::<Method>())]
    pub method: Method,
    /// Recordings: a recording directory or a directory of them.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Frames per step (two views each).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use at most this many frames.
    #[arg(long)]
    pub frames: Option<usize>,
}

#[derive(Args, Debug)]
pub struct SslTrainArgs {
    #[arg(long, value_parser = choice::<Method>())]
    pub method: Method,
    /// Dataset (shared digit CSV or an image folder, 28x28); only its training split is
    /// used, without labels.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Only N training images, evenly spaced over the split (quick runs).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Temperature of the attention (BAM) or of the bank softmax (InvProp).
    #[arg(long)]
    pub tau: Option<f32>,
    /// BAM: entropic regularisation of the Sinkhorn target.
    #[arg(long)]
    pub eps: Option<f32>,
    /// InvProp: hard positives per anchor.
    #[arg(long)]
    pub hard: Option<usize>,
    /// MAE / StructMAE: fraction of the 4x4 patches masked.
    #[arg(long)]
    pub mask_ratio: Option<f32>,
    /// Effective-rank floor below which the run is an error (collapse).
    #[arg(long, default_value_t = 4.0)]
    pub min_effective_rank: f32,
    /// The layer the bundle exports: `fc` (128 values) or `conv` (the last convolution's
    /// 2048). An export choice: `--resume` with the same epochs re-exports a finished run.
    #[arg(
        long,
        default_value = "fc",
        value_parser = choice::<Representation>()
    )]
    pub representation: Representation,
    /// Continue from the checkpoint beside --out (`OUT.ckpt/`), same arguments.
    #[arg(long)]
    pub resume: bool,
    /// PDAE: the frozen DDPM's run directory (`bevrt-tool ddpm train --out DIR`).
    #[arg(long, required_if_eq("method", "pdae"))]
    pub ddpm: Option<PathBuf>,
    /// PDAE: width of the code z.
    #[arg(long, default_value_t = 64)]
    pub zdim: usize,
    /// PDAE: stop after this many epochs, checkpoint kept, no bundle yet (continue with
    /// --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
}

pub fn run(c: &SslCmd) -> Result<()> {
    let a = match c {
        SslCmd::Train(a) => a,
        SslCmd::Drive(d) => return drive(d),
    };
    if a.method == Method::Pdae {
        return pdae(a);
    }
    let mut cfg = SslConfig::new(a.method);
    cfg.epochs = a.epochs;
    cfg.batch = a.batch;
    cfg.lr = a.lr;
    cfg.seed = a.seed;
    cfg.train_limit = a.train_limit;
    cfg.min_effective_rank = a.min_effective_rank;
    cfg.representation = a.representation;
    if let Some(t) = a.tau {
        cfg.bam.tau = t;
        cfg.invprop.tau = t;
    }
    if let Some(e) = a.eps {
        cfg.bam.eps = e;
    }
    if let Some(h) = a.hard {
        cfg.invprop.hard = h;
    }
    if let Some(r) = a.mask_ratio {
        cfg.mae.ratio = r;
    }
    let r = ssl::train(&a.data, &a.out, &cfg, a.resume, true)?;
    let last = r.log.last();
    println!(
        "wrote {} ({}, {} parameters, {} training images, {} epochs in {:.0} s; final loss {:.4}, effective rank {:.1} of 128; exported: {:?})",
        r.bundle.display(),
        a.method.name(),
        r.parameters,
        r.train_images,
        r.log.len(),
        r.seconds,
        last.map_or(f32::NAN, |l| l.loss),
        last.map_or(f32::NAN, |l| l.spread.effective_rank),
        a.representation,
    );
    Ok(())
}

fn pdae(a: &SslTrainArgs) -> Result<()> {
    let ddpm = a.ddpm.as_ref().context("--method pdae needs --ddpm DIR")?;
    let cfg = PdaeConfig {
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        seed: a.seed,
        zdim: a.zdim,
        train_limit: a.train_limit,
        min_effective_rank: a.min_effective_rank,
    };
    let ctl = RunControl {
        resume: a.resume,
        progress: true,
        stop_after: a.stop_after,
    };
    let r = pdae::train(&a.data, ddpm, &a.out, &cfg, ctl)?;
    let last = r.state.log.last();
    let what = match &r.bundle {
        Some(b) => format!("wrote {}", b.display()),
        None => format!(
            "stopped after epoch {} of {} (checkpoint {}; --resume continues)",
            r.state.epochs_done,
            cfg.epochs,
            pdae::checkpoint_dir(&a.out).display()
        ),
    };
    println!(
        "{what} (pdae, {} trained parameters, {} training images, {} epochs in {:.0} s; final weighted loss {:.5}, effective rank of z {:.1} of {})",
        r.parameters,
        r.train_images,
        r.state.epochs_done,
        r.state.seconds,
        last.map_or(f32::NAN, |l| l.loss),
        last.map_or(f32::NAN, |l| l.spread.effective_rank),
        cfg.zdim,
    );
    Ok(())
}

fn drive(a: &SslDriveArgs) -> Result<()> {
    let mut cfg = ssl::drive::DriveConfig::new(a.method);
    cfg.epochs = a.epochs;
    cfg.batch = a.batch;
    cfg.lr = a.lr;
    cfg.seed = a.seed;
    cfg.frames = a.frames;
    let r = ssl::drive::pretrain_letsmap(&a.data, &a.out, &cfg, true)?;
    let last = r.epochs.last();
    println!(
        "pretrained the letsmap-lite encoder ({}, {} frames, {} epochs in {:.0} s; final loss {:.4}, effective rank {:.1}); checkpoint {}",
        a.method.name(),
        r.frames,
        r.epochs.len(),
        r.seconds,
        last.map_or(f32::NAN, |e| e.loss),
        last.map_or(f32::NAN, |e| e.spread.effective_rank),
        r.checkpoint.display()
    );
    Ok(())
}
