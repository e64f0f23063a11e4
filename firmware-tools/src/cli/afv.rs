//! `bevrt-tool gan train`, `afv fit`, `afv distance`, `embed` and `probe`: their command
//! lines, each turned into the config [`bevrt_train::afv`] takes.

use std::path::PathBuf;

use bevrt_train::afv::fisher::{DistanceConfig, EmbedConfig, FitConfig};
use bevrt_train::afv::probe::{Loss, Metric, ProbeConfig, ProbeMethod};
use bevrt_train::afv::train::GanTrainConfig;
use clap::Args;

use super::choice;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[arg(long)]
    pub bundle: PathBuf,
    /// Dataset (shared digit CSV or image folder); every image, in file order.
    #[arg(long)]
    pub data: PathBuf,
    /// `[N, D]` float32 npy.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a copy of the bundle that standardises its vector per dimension, with the
    /// mean and std of this dataset's training split (`embedding_norm = "standardize"`).
    #[arg(long)]
    pub standardize_out: Option<PathBuf>,
}

impl EmbedArgs {
    /// These arguments as the library's [`EmbedConfig`].
    pub fn config(&self) -> EmbedConfig {
        EmbedConfig {
            bundle: self.bundle.clone(),
            data: self.data.clone(),
            out: self.out.clone(),
            standardize_out: self.standardize_out.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct FitArgs {
    #[arg(long)]
    pub bundle: PathBuf,
    /// Generator samples to estimate the mean and the diagonal Fisher information from.
    #[arg(long, default_value_t = 1024)]
    pub samples: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Write a new bundle here instead of updating --bundle in place.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Signed square root after the Fisher normalisation.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub power_norm: bool,
    /// Unit L2 norm at the end.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub l2_norm: bool,
    /// Added to the Fisher diagonal before the square root: `V = (U − μ)/√(diag + eps)`.
    /// Components whose score barely varies over generator samples are amplified by up to
    /// `1/√eps`; a larger eps damps them (the fit prints the diagonal's quantiles).
    #[arg(long, default_value_t = 1e-6)]
    pub eps: f32,
    /// Spatial cells per side: conv2's score per cell of an R×R grid on its 7x7 output
    /// (spatial pyramid of Fisher-vector practice; 1 = the plain gradient). 2 was chosen by
    /// 5-fold CV on MNIST-5k's training labels (README).
    #[arg(long, default_value_t = 2)]
    pub regions: usize,
}

impl FitArgs {
    /// These arguments as the library's [`FitConfig`].
    pub fn config(&self) -> FitConfig {
        FitConfig {
            bundle: self.bundle.clone(),
            samples: self.samples,
            seed: self.seed,
            out: self.out.clone(),
            power_norm: self.power_norm,
            l2_norm: self.l2_norm,
            eps: self.eps,
            regions: self.regions,
        }
    }
}

#[derive(Args, Debug)]
pub struct DistanceArgs {
    #[arg(long)]
    pub bundle: PathBuf,
    /// A set: `DATASET[:class=K][:half=0|1][:split=train|test]`, `generator[@ITER]`, or one
    /// image file (an example).
    #[arg(long)]
    pub a: Option<String>,
    #[arg(long)]
    pub b: Option<String>,
    /// For every pair of classes of this dataset: distance between two disjoint halves of a
    /// class against the distance between the two classes.
    #[arg(long)]
    pub class_pairs: Option<PathBuf>,
    /// Distance from this dataset to every generator snapshot in the bundle.
    #[arg(long)]
    pub snapshots: Option<PathBuf>,
    /// Generator samples per generator set.
    #[arg(long, default_value_t = 500)]
    pub samples: usize,
    #[arg(long)]
    pub json: bool,
}

impl DistanceArgs {
    /// These arguments as the library's [`DistanceConfig`].
    pub fn config(&self) -> DistanceConfig {
        DistanceConfig {
            bundle: self.bundle.clone(),
            a: self.a.clone(),
            b: self.b.clone(),
            class_pairs: self.class_pairs.clone(),
            snapshots: self.snapshots.clone(),
            samples: self.samples,
            json: self.json,
        }
    }
}

#[derive(Args, Debug)]
pub struct GanTrainArgs {
    /// Dataset (shared digit CSV or an image folder); only its training split is used.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 3000)]
    pub iters: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Generator snapshots kept in the bundle (for the set distance over training).
    #[arg(long, default_value_t = 5)]
    pub snapshots: usize,
    /// Discriminator widths `C1,C2`: output channels of conv1 and conv2. The AFV vector has
    /// C2·49 + R²·(C2·C1·16 + C2) values (R: `afv fit --regions`).
    #[arg(long, value_parser = parse_channels, default_value = "32,64")]
    pub d_channels: (usize, usize),
    #[arg(long)]
    pub out: PathBuf,
}

impl GanTrainArgs {
    /// These arguments as the library's [`GanTrainConfig`].
    pub fn config(&self) -> GanTrainConfig {
        GanTrainConfig {
            data: self.data.clone(),
            iters: self.iters,
            batch: self.batch,
            lr: self.lr,
            seed: self.seed,
            snapshots: self.snapshots,
            d_channels: self.d_channels,
            out: self.out.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// `[N, D]` features of every dataset image in file order (`bevrt-tool embed`), or `raw`
    /// for the pixels themselves (the baseline).
    #[arg(long, conflicts_with = "bundle")]
    pub features: Option<String>,
    /// Embed the dataset with this features bundle first.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    #[arg(long)]
    pub data: PathBuf,
    /// Labelled training images per class (0 = all).
    #[arg(long, default_value_t = 0)]
    pub labels_per_class: usize,
    #[arg(long, default_value = "linear", value_parser = choice::<ProbeMethod>())]
    pub method: ProbeMethod,
    #[arg(long, default_value_t = 5)]
    pub seeds: usize,
    #[arg(long, default_value = "ce", value_parser = choice::<Loss>())]
    pub loss: Loss,
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    /// Adam's initial learning rate (cosine decay to 0).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-2)]
    pub wd: f64,
    /// `--loss ls`: ridge λ relative to the mean squared norm of the standardised features
    /// (accuracy on MNIST-5k AFV is flat from 1e-5 to 1e-2).
    #[arg(long, default_value_t = 1e-3)]
    pub ridge: f64,
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    #[arg(long, default_value = "cosine", value_parser = choice::<Metric>())]
    pub metric: Metric,
    /// Linear probes: standardise each dimension with the labelled subset's mean and std
    /// (`false`: centre only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub standardize: bool,
    /// Model selection without the test split: K-fold cross-validation on the labelled
    /// training images (fold = position mod K); the test split is not read.
    #[arg(long, default_value_t = 0)]
    pub cv: usize,
    /// Write a classify bundle: the --bundle's network + vector + this probe (linear only;
    /// trained on the first seed's labels).
    #[arg(long)]
    pub out_bundle: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

impl ProbeArgs {
    /// These arguments as the library's [`ProbeConfig`].
    pub fn config(&self) -> ProbeConfig {
        ProbeConfig {
            features: self.features.clone(),
            bundle: self.bundle.clone(),
            data: self.data.clone(),
            labels_per_class: self.labels_per_class,
            method: self.method,
            seeds: self.seeds,
            loss: self.loss,
            epochs: self.epochs,
            lr: self.lr,
            wd: self.wd,
            ridge: self.ridge,
            k: self.k,
            metric: self.metric,
            standardize: self.standardize,
            cv: self.cv,
            out_bundle: self.out_bundle.clone(),
            json: self.json,
        }
    }
}

fn parse_channels(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{s:?}: expected two channel counts C1,C2 in 1..=512, such as 32,64");
    let (a, b) = s.split_once(',').ok_or_else(bad)?;
    let (a, b): (usize, usize) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if !(1..=512).contains(&a) || !(1..=512).contains(&b) {
        return Err(bad());
    }
    Ok((a, b))
}
