//! `bevrt-tool ddpm`: the digit DDPM (train, sample), PDAE's autoencoding (reconstruct,
//! interpolate) and the DDPM's own features. Arguments in, [`bevrt_train::diffusion`] does
//! the work.

use std::path::PathBuf;

use anyhow::{Result, bail};
use bevrt_train::diffusion::{autoencode, ddpm, features, pdae};
use bevrt_train::digits;
use clap::{Args, Subcommand};
use serde::Serialize;

#[derive(Subcommand)]
pub enum DdpmCmd {
    /// Train the DDPM on a dataset's training split (no labels); OUT is its run directory.
    Train(TrainArgs),
    /// DDIM samples from the EMA weights as a PNG grid.
    Sample(SampleArgs),
    /// Rebuild test digits from PDAE's z (from the inferred x_T and from fresh noise):
    /// originals | reconstructions as a PNG grid, MSE and SSIM.
    Reconstruct(ReconstructArgs),
    /// Decode between two digits' z and x_T: a PNG strip.
    Interpolate(InterpolateArgs),
    /// The frozen DDPM's middle-block features of every dataset image at a fixed t (npy).
    Features(FeaturesArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// UNet base width (levels b, 2b, 2b; a multiple of 8).
    #[arg(long, default_value_t = 32)]
    pub base: usize,
    #[arg(long, default_value_t = 0.999)]
    pub ema_decay: f64,
    /// Only N training images, evenly spaced over the split (quick runs).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Continue the run in --out (same arguments; more epochs allowed).
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many epochs, checkpoint kept (continue with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// The DDPM's run directory.
    #[arg(long)]
    pub ddpm: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 64)]
    pub count: usize,
    /// DDIM steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct ReconstructArgs {
    /// A PDAE features bundle (its checkpoint `BUNDLE.ckpt/` holds the estimator and names
    /// the DDPM).
    #[arg(long)]
    pub bundle: PathBuf,
    /// The dataset whose test split is rebuilt.
    pub images: PathBuf,
    /// The PNG grid: rows of originals, from inferred x_T, from fresh noise.
    #[arg(long)]
    pub out: PathBuf,
    /// Test images to rebuild (N spread evenly over the test split, which is in class order).
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InterpolateArgs {
    #[arg(long)]
    pub bundle: PathBuf,
    #[arg(long)]
    pub data: PathBuf,
    /// Dataset indices of the two end points.
    #[arg(long)]
    pub from: usize,
    #[arg(long)]
    pub to: usize,
    #[arg(long, default_value_t = 10)]
    pub frames: usize,
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct FeaturesArgs {
    #[arg(long)]
    pub ddpm: PathBuf,
    #[arg(long)]
    pub data: PathBuf,
    /// The timestep of the noised input (0..999).
    #[arg(long, default_value_t = 50)]
    pub t: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(c: &DdpmCmd) -> Result<()> {
    match c {
        DdpmCmd::Train(a) => train(a),
        DdpmCmd::Sample(a) => sample(a),
        DdpmCmd::Reconstruct(a) => reconstruct(a),
        DdpmCmd::Interpolate(a) => interpolate(a),
        DdpmCmd::Features(a) => {
            let (unet, _) = ddpm::load(&a.ddpm)?;
            let ds = digits::load(&a.data)?;
            let (rows, dim) = features::middle_features(&unet, &ds, a.t, a.seed)?;
            features::write(&a.out, &rows, dim)?;
            println!(
                "wrote {} ({} x {dim}, t = {})",
                a.out.display(),
                ds.labels.len(),
                a.t
            );
            Ok(())
        }
    }
}

fn train(a: &TrainArgs) -> Result<()> {
    let cfg = ddpm::DdpmConfig {
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        seed: a.seed,
        base: a.base,
        ema_decay: a.ema_decay,
        train_limit: a.train_limit,
    };
    let ctl = ddpm::RunControl {
        resume: a.resume,
        progress: true,
        stop_after: a.stop_after,
    };
    let r = ddpm::train(&a.data, &a.out, &cfg, ctl)?;
    println!(
        "trained the DDPM in {} ({} parameters, {} training images, {} of {} epochs in {:.0} s; loss by epoch {:?})",
        r.dir.display(),
        r.parameters,
        r.state.train_images,
        r.state.epochs_done,
        cfg.epochs,
        r.state.seconds,
        r.state
            .losses
            .iter()
            .map(|l| (l * 1e4).round() / 1e4)
            .collect::<Vec<_>>()
    );
    Ok(())
}

fn sample(a: &SampleArgs) -> Result<()> {
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let (unet, _) = ddpm::load(&a.ddpm)?;
    let x = ddpm::sample(&unet, a.count, a.steps, a.seed)?;
    let cols = (a.count as f64).sqrt().ceil() as usize;
    bevrt_train::afv::train::grid_png(&ddpm::crop_to_u8(&x), ddpm::DIGIT, cols, &a.out)?;
    println!(
        "wrote {} ({} DDIM samples, {} steps)",
        a.out.display(),
        a.count,
        a.steps
    );
    Ok(())
}

#[derive(Serialize)]
struct ReconstructReport {
    images: usize,
    steps: usize,
    inferred_mse: f64,
    inferred_ssim: f64,
    noise_mse: f64,
    noise_ssim: f64,
    /// Share of reconstructions from fresh noise whose class (20-NN on raw pixels against
    /// the training split) equals the original's.
    noise_class_agreement: f64,
    inferred_class_agreement: f64,
    seconds: f64,
}

fn reconstruct(a: &ReconstructArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let (model, _) = pdae::load(&pdae::checkpoint_dir(&a.bundle))?;
    let ds = digits::load(&a.images)?;
    ddpm::check_digits(&ds, &a.images)?;
    let (_, test) = ds.split();
    let idx = bevrt_train::ssl::run::limit_evenly(&test, Some(a.count));
    if idx.is_empty() {
        bail!("{}: no test images", a.images.display());
    }
    let (inferred, noise) = autoencode::reconstruct(&model, &ds, &idx, a.steps, a.seed)?;
    let px = ddpm::DIGIT * ddpm::DIGIT;
    let originals: Vec<u8> = idx.iter().flat_map(|&i| ds.image(i).to_vec()).collect();
    let mean = |f: &dyn Fn(&[u8], &[u8]) -> f64, rec: &[u8]| -> f64 {
        originals
            .chunks(px)
            .zip(rec.chunks(px))
            .map(|(o, r)| f(o, r))
            .sum::<f64>()
            / idx.len() as f64
    };
    let ssim = |o: &[u8], r: &[u8]| autoencode::ssim(o, r, ddpm::DIGIT);
    let classes_orig = autoencode::pixel_knn_classes(&ds, &originals)?;
    let agree = |rec: &[u8]| -> Result<f64> {
        let c = autoencode::pixel_knn_classes(&ds, rec)?;
        Ok(c.iter().zip(&classes_orig).filter(|(a, b)| a == b).count() as f64 / idx.len() as f64)
    };
    let report = ReconstructReport {
        images: idx.len(),
        steps: a.steps,
        inferred_mse: mean(&autoencode::mse, &inferred),
        inferred_ssim: mean(&ssim, &inferred),
        noise_mse: mean(&autoencode::mse, &noise),
        noise_ssim: mean(&ssim, &noise),
        noise_class_agreement: agree(&noise)?,
        inferred_class_agreement: agree(&inferred)?,
        seconds: t0.elapsed().as_secs_f64(),
    };
    // Grid: blocks of up to 16 columns; each block is originals, from x_T, from noise.
    let cols = 16.min(idx.len());
    let show = idx.len().min(48);
    let mut grid = vec![];
    for s in (0..show).step_by(cols) {
        let e = (s + cols).min(show);
        for src in [&originals, &inferred, &noise] {
            grid.extend_from_slice(&src[s * px..e * px]);
            grid.resize(grid.len() + (cols - (e - s)) * px, 0);
        }
    }
    bevrt_train::afv::train::grid_png(&grid, ddpm::DIGIT, cols, &a.out)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} test images, {} DDIM steps: from inferred x_T MSE {:.4} SSIM {:.3}; from fresh noise MSE {:.4} SSIM {:.3}, class kept {:.1} % (pixel 20-NN judge; {:.1} % from x_T); grid {}",
            report.images,
            report.steps,
            report.inferred_mse,
            report.inferred_ssim,
            report.noise_mse,
            report.noise_ssim,
            100.0 * report.noise_class_agreement,
            100.0 * report.inferred_class_agreement,
            a.out.display()
        );
    }
    Ok(())
}

fn interpolate(a: &InterpolateArgs) -> Result<()> {
    let (model, _) = pdae::load(&pdae::checkpoint_dir(&a.bundle))?;
    let ds = digits::load(&a.data)?;
    ddpm::check_digits(&ds, &a.data)?;
    let n = ds.labels.len();
    if a.from >= n || a.to >= n {
        bail!(
            "{}: has {n} images; --from {} / --to {} are outside",
            a.data.display(),
            a.from,
            a.to
        );
    }
    let strip = autoencode::interpolate(&model, &ds, a.from, a.to, a.frames, a.steps)?;
    bevrt_train::afv::train::grid_png(&strip, ddpm::DIGIT, a.frames, &a.out)?;
    println!("wrote {} ({} frames)", a.out.display(), a.frames);
    Ok(())
}
