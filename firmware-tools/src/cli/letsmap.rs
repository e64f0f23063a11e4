//! `bevrt-tool pretrain`, `pretrain-geometry`, `depth-eval`, `finetune` and `eval`: their
//! command lines, each turned into the config [`bevrt_train::letsmap`] takes.
// The fields' doc comments are the `--help` text, kept word for word from the library they
// came from: their rustdoc links point there.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;

use bevrt_runtime::BackendKind;
use bevrt_train::letsmap::eval::EvalConfig;
use bevrt_train::letsmap::geometry::{DepthEvalConfig, GeometryConfig, Objective};
use bevrt_train::letsmap::semantic::{Masking, PretrainConfig};
use bevrt_train::letsmap::semi::SemiConfig;
use bevrt_train::letsmap::train::FinetuneConfig;
use clap::{Args, Subcommand};

use super::choice;

/// The optimisation schedule `pretrain` and `pretrain-geometry` share.
#[derive(Args, Debug)]
pub struct ScheduleArgs {
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
}

#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// Unlabelled recordings: a recording directory or a directory of them.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory for checkpoints (`pretrain.safetensors`, `pretrain.json`).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// Fraction of the stride-8 patches of frame t that are masked (SparK: 0.6).
    #[arg(long, default_value_t = 0.6)]
    pub mask_ratio: f32,
    /// Which patches are masked: uniformly, or StructMAE's easy-to-hard schedule onto the
    /// patches with the most gradient energy (`edges`) or frame difference (`motion`).
    #[arg(long, default_value = "random", value_parser = choice::<Masking>())]
    pub masking: Masking,
    /// StructMAE's perturbation of the (max-scaled) scores before ranking.
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f32,
    /// Largest frame gap k between frame t and its context frame t-k (k drawn in 1..=max).
    #[arg(long, default_value_t = 3)]
    pub max_gap: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use at most this many frames.
    #[arg(long)]
    pub frames: Option<usize>,
    /// Continue from the checkpoint in --out (same arguments), from the end of its last epoch.
    /// With structure-guided masking the schedule is stretched to the new --epochs from the
    /// resumed epoch on (epochs already done keep the masks they had).
    #[arg(long)]
    pub resume: bool,
}

impl PretrainArgs {
    /// These arguments as the library's [`PretrainConfig`].
    pub fn config(&self) -> PretrainConfig {
        PretrainConfig {
            data: self.data.clone(),
            out: self.out.clone(),
            epochs: self.schedule.epochs,
            batch: self.schedule.batch,
            lr: self.schedule.lr,
            mask_ratio: self.mask_ratio,
            masking: self.masking,
            alpha: self.alpha,
            max_gap: self.max_gap,
            seed: self.seed,
            frames: self.frames,
            resume: self.resume,
        }
    }
}

#[derive(Args, Debug)]
pub struct GeometryArgs {
    /// Unlabelled recordings with ego-motion (poses.csv): a recording or a directory of them.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory for the checkpoint (`geometry.safetensors`, `geometry.json`).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// `warp`: Monodepth2's view synthesis through the expected depth, by gradient descent
    /// through the warp ([`super::synthesis`]). `sweep`: the distribution trained towards
    /// softmax(-error/τ) of a plane-sweep cost volume ([`super::photometric::cost_volume`]).
    #[arg(long, default_value = "warp", value_parser = choice::<Objective>())]
    pub objective: Objective,
    /// Source frames are t-gap and t+gap (frames of the same recording).
    #[arg(long, default_value_t = 1)]
    pub gap: usize,
    /// Temperature of the target distribution softmax(-error / τ) (photometric error units;
    /// 0.01 is about the error sensor noise alone gives).
    #[arg(long, default_value_t = 0.01)]
    pub temperature: f32,
    /// Pixels whose errors over the bins differ by less than this carry no depth signal
    /// (texture-less road, walls, sky: every depth re-synthesises them equally) and are left
    /// out, so the depth there stays with the prior instead of following noise.
    #[arg(long, default_value_t = 0.05)]
    pub min_contrast: f32,
    /// Weight of the edge-aware smoothness (Monodepth2: 1e-3).
    #[arg(long, default_value_t = 1e-3)]
    pub smoothness: f64,
    /// Ignore the right camera of stereo recordings (by default each frame t is also
    /// re-synthesised from the right camera's frame t: the spatial pair, a known 0.5 m
    /// baseline that fixes the scale even where the ego stands still).
    #[arg(long)]
    pub mono: bool,
    /// Start the encoder from this checkpoint (e.g. the semantic pathway's pretrain.safetensors).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// Train only the last N layers of the deployed encoder (the depth head counting as the
    /// last; default all). With --encoder from the semantic pathway this keeps the two
    /// pathways disjoint: the trunk keeps what masked reconstruction taught and the geometry
    /// pathway trains the depth head and the layers nearest it.
    #[arg(long)]
    pub train_last: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start the depth head from a uniform distribution instead of the flat-ground prior the
    /// calibration gives ([`ground_prior_logits`]).
    #[arg(long)]
    pub no_ground_prior: bool,
    /// Use at most this many frames.
    #[arg(long)]
    pub frames: Option<usize>,
    /// Report depth metrics on these recordings (made with `sim record --extras`) before
    /// training and after every epoch. Only reported: nothing is chosen by them.
    #[arg(long)]
    pub eval_depth: Option<PathBuf>,
    /// Continue from the checkpoint in --out (same arguments; only --epochs may grow).
    #[arg(long)]
    pub resume: bool,
}

impl GeometryArgs {
    /// These arguments as the library's [`GeometryConfig`].
    pub fn config(&self) -> GeometryConfig {
        GeometryConfig {
            data: self.data.clone(),
            out: self.out.clone(),
            epochs: self.schedule.epochs,
            batch: self.schedule.batch,
            lr: self.schedule.lr,
            objective: self.objective,
            gap: self.gap,
            temperature: self.temperature,
            min_contrast: self.min_contrast,
            smoothness: self.smoothness,
            mono: self.mono,
            encoder: self.encoder.clone(),
            train_last: self.train_last,
            seed: self.seed,
            no_ground_prior: self.no_ground_prior,
            frames: self.frames,
            eval_depth: self.eval_depth.clone(),
            resume: self.resume,
        }
    }
}

#[derive(Args, Debug)]
pub struct DepthEvalArgs {
    /// A checkpoint with the encoder and lift conv (geometry.safetensors, or a fine-tuning's).
    #[arg(long, conflicts_with = "bundle")]
    pub encoder: Option<PathBuf>,
    /// A letsmap-lite bundle with depth bins (its encoder.onnx weights).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Recordings with depth maps (`sim record --extras`).
    #[arg(long)]
    pub data: PathBuf,
    /// Print the metrics as JSON.
    #[arg(long)]
    pub json: bool,
    /// Instead of a network, score the training signal: the lowest-error bin of each frame's
    /// photometric cost volume against sources GAP frames away (needs poses.csv).
    #[arg(long, conflicts_with_all = ["encoder", "bundle"])]
    pub cost_volume_gap: Option<usize>,
    /// With --cost-volume-gap: the pretraining's --min-contrast.
    #[arg(long, default_value_t = 0.05)]
    pub min_contrast: f32,
}

impl DepthEvalArgs {
    /// These arguments as the library's [`DepthEvalConfig`].
    pub fn config(&self) -> DepthEvalConfig {
        DepthEvalConfig {
            encoder: self.encoder.clone(),
            bundle: self.bundle.clone(),
            data: self.data.clone(),
            json: self.json,
            cost_volume_gap: self.cost_volume_gap,
            min_contrast: self.min_contrast,
        }
    }
}

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// Encoder from a pretraining checkpoint (pretrain.safetensors). Without it and without
    /// --bundle the encoder starts from scratch and is trained with the head.
    #[arg(long, conflicts_with = "bundle")]
    pub encoder: Option<PathBuf>,
    /// Start from a bundle's encoder and head (its ONNX weights).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Labelled recordings.
    #[arg(long)]
    pub data: PathBuf,
    /// Fraction of the labelled frames used (evenly spaced through the data).
    #[arg(long, default_value_t = 0.01)]
    pub label_fraction: f64,
    /// With a pretrained encoder: also train its last N conv layers, the lift conv counting
    /// as the last (0 = frozen encoder; a lift conv the checkpoint lacks is always trained).
    #[arg(long, default_value_t = 0)]
    pub unfreeze_last: usize,
    /// Which of three disjoint evenly spaced label subsets of that fraction (0, 1, 2).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..3))]
    pub subset: u8,
    /// Optimizer steps (the same budget whatever the label fraction).
    #[arg(long, default_value_t = 600)]
    pub iters: usize,
    /// LP-FT: the first N of --iters train the head alone on the frozen (pretrained) encoder,
    /// the rest also the unfrozen encoder layers.
    #[arg(long, default_value_t = 0)]
    pub probe_iters: usize,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Adam learning rate (0 exports the initial weights: an untrained baseline).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use at most this many frames of --data.
    #[arg(long)]
    pub frames: Option<usize>,
    /// Score the written bundle on these held-out recordings (through the runtime) and
    /// record the scores in its manifest.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Output bundle directory (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Also learn from these unlabelled recordings (with poses.csv; e.g. the pretraining
    /// drives): temporal BEV consistency and a mean teacher, after the probe phase.
    #[arg(long)]
    pub unlabelled: Option<PathBuf>,
    /// With --unlabelled: weight of the temporal BEV consistency term (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub consistency: f64,
    /// With --unlabelled: weight of the mean teacher's pseudo-label term (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub teacher: f64,
    /// The mean teacher's EMA decay per step.
    #[arg(long, default_value_t = 0.99)]
    pub teacher_ema: f64,
    /// Frames between the two frames of a consistency pair (5 at 10 fps: about 5 m).
    #[arg(long, default_value_t = 5)]
    pub pair_gap: usize,
    /// Upper bound of the per-class confidence thresholds of pseudo-labels.
    #[arg(long, default_value_t = 0.9)]
    pub pseudo_threshold: f32,
    /// Do not align the teacher's class distribution to the labelled cells' before picking
    /// pseudo-labels (ReMixMatch's distribution alignment, on by default: without it the
    /// teacher's over-predicted classes were reinforced, 42.4 against 44.9 mIoU on the
    /// validation drive).
    #[arg(long)]
    pub no_align_classes: bool,
    /// Train with the simulator's true depth (its distribution over each feature pixel's
    /// block) in the lift: the oracle that `eval --oracle-depth` scores (needs
    /// `sim record --extras` data; not deployable).
    #[arg(long)]
    pub oracle_depth: bool,
}

impl FinetuneArgs {
    /// These arguments as the library's [`FinetuneConfig`].
    pub fn config(&self) -> FinetuneConfig {
        FinetuneConfig {
            encoder: self.encoder.clone(),
            bundle: self.bundle.clone(),
            data: self.data.clone(),
            label_fraction: self.label_fraction,
            unfreeze_last: self.unfreeze_last,
            subset: self.subset,
            iters: self.iters,
            probe_iters: self.probe_iters,
            batch: self.batch,
            lr: self.lr,
            seed: self.seed,
            frames: self.frames,
            eval_data: self.eval_data.clone(),
            out: self.out.clone(),
            semi: SemiConfig {
                unlabelled: self.unlabelled.clone(),
                consistency: self.consistency,
                teacher: self.teacher,
                teacher_ema: self.teacher_ema,
                pair_gap: self.pair_gap,
                pseudo_threshold: self.pseudo_threshold,
                align_classes: !self.no_align_classes,
            },
            oracle_depth: self.oracle_depth,
        }
    }
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub sub: Option<EvalSub>,
    #[arg(long, required = true)]
    pub bundle: Option<PathBuf>,
    /// Held-out recordings with BEV ground truth (one recording, or a folder of them).
    #[arg(long, required = true)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value = "cpu", value_parser = super::choice::<BackendKind>())]
    pub backend: BackendKind,
    /// Score at most this many frames.
    #[arg(long)]
    pub frames: Option<usize>,
    /// Print the scores as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also record the scores in the bundle's manifest (`[provenance.scores]`).
    #[arg(long)]
    pub record: bool,
    /// Score only shard I of N: the recordings (in name order) whose index is I mod N.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<bevrt_train::letsmap::eval::Shard>,
    /// Write the raw counts (confusion matrix, hidden cells, frame-time histogram) to this
    /// JSON file instead of printing scores; `eval merge` adds such parts up.
    #[arg(long, value_name = "OUT.json")]
    pub partial: Option<PathBuf>,
    /// CPU threads for the backend (0: pick by measuring at load).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Replace the bundle's depth distribution by the simulator's true depth (its
    /// distribution over each feature pixel's block) in the lift: the ceiling perfect geometry
    /// gives (letsmap-lite bundles, recordings made with `sim record --extras`; the training
    /// code's forward, not the runtime).
    #[arg(long)]
    pub oracle_depth: bool,
}

#[derive(Subcommand, Debug)]
pub enum EvalSub {
    /// Add up `--partial` counts of shards and print exactly what one eval over all of their
    /// recordings prints.
    Merge {
        /// The parts: every shard I/N of one split, each once.
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

impl EvalArgs {
    /// These arguments as the library's [`EvalConfig`] (clap requires bundle and data
    /// unless a subcommand is given).
    pub fn config(&self) -> EvalConfig {
        EvalConfig {
            bundle: self.bundle.clone().unwrap_or_default(),
            data: self.data.clone().unwrap_or_default(),
            backend: self.backend,
            frames: self.frames,
            json: self.json,
            record: self.record,
            shard: self.shard,
            partial: self.partial.clone(),
            threads: self.threads,
            oracle_depth: self.oracle_depth,
        }
    }
}
