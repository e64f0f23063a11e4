//! `bevrt-tool finetune` (BEV head on a fraction of the labels, class-balanced, unseen cells
//! ignored, from scratch or from a pathway's checkpoint) and the bundle it produces.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bevrt_models::{
    ClassSpec, ConvLayer, LetsMapLite, Manifest, ModelFile, OutputKind, OutputSpec, Task,
    write_conv_chain,
};
use candle_core::{Device, Tensor};
use serde::Serialize;

use super::data::{self, Batcher, Dataset};
use super::nn::{self, Params, TableTensors};
use super::scores::{print_scores, record_scores};
use super::semi::{Model, SemiConfig, SemiLog, Unlabelled};
use crate::optim::{self, Adam};
use crate::progress::progress;
use crate::rng::Rng;

/// `finetune`'s settings.
#[derive(Debug, Clone, Serialize)]
pub struct FinetuneConfig {
    /// Encoder from a pretraining checkpoint (pretrain.safetensors). Without it and without
    /// --bundle the encoder starts from scratch and is trained with the head.
    pub encoder: Option<PathBuf>,
    /// Start from a bundle's encoder and head (its ONNX weights).
    pub bundle: Option<PathBuf>,
    /// Labelled recordings.
    pub data: PathBuf,
    /// Fraction of the labelled frames used (evenly spaced through the data).
    pub label_fraction: f64,
    /// With a pretrained encoder: also train its last N conv layers, the lift conv counting
    /// as the last (0 = frozen encoder; a lift conv the checkpoint lacks is always trained).
    pub unfreeze_last: usize,
    /// Which of three disjoint evenly spaced label subsets of that fraction (0, 1, 2).
    pub subset: u8,
    /// Optimizer steps (the same budget whatever the label fraction).
    pub iters: usize,
    /// LP-FT: the first N of --iters train the head alone on the frozen (pretrained) encoder,
    /// the rest also the unfrozen encoder layers.
    pub probe_iters: usize,
    pub batch: usize,
    /// Adam learning rate (0 exports the initial weights: an untrained baseline).
    pub lr: f64,
    pub seed: u64,
    /// Use at most this many frames of --data.
    pub frames: Option<usize>,
    /// Score the written bundle on these held-out recordings (through the runtime) and
    /// record the scores in its manifest.
    pub eval_data: Option<PathBuf>,
    /// Output bundle directory (must not exist).
    pub out: PathBuf,
    /// The unlabelled drives' terms (off without `unlabelled`).
    pub semi: SemiConfig,
    /// Train with the simulator's true depth (its distribution over each feature pixel's
    /// block) in the lift instead of the encoder's: the oracle of `eval --oracle-depth`
    /// (needs `sim record --extras` data; not deployable).
    pub oracle_depth: bool,
}

/// Labelled (visible) cells per class over the frames `idx`.
fn class_counts(ds: &Dataset, idx: &[usize], k: usize) -> Vec<u64> {
    let mut cnt = vec![0u64; k];
    for &i in idx {
        for &c in ds.gt[i].as_ref().expect("labelled") {
            if (c as usize) < k {
                cnt[c as usize] += 1;
            }
        }
    }
    cnt
}

/// Class weights from label frequencies over visible cells: (median / freq)^0.5, clamped,
/// 0 for classes never seen.
fn class_weights(cnt: &[u64]) -> Vec<f32> {
    let mut seen: Vec<f64> = cnt.iter().filter(|&&c| c > 0).map(|&c| c as f64).collect();
    seen.sort_by(|a, b| a.total_cmp(b));
    let median = seen.get(seen.len() / 2).copied().unwrap_or(1.0);
    cnt.iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                ((median / c as f64).sqrt()).clamp(0.2, 5.0) as f32
            }
        })
        .collect()
}

/// Targets (B,1,H,W) u32 and per-cell weights (B,1,H,W) for a batch.
fn targets(
    ds: &Dataset,
    idx: &[usize],
    cw: &[f32],
    h: usize,
    w: usize,
) -> Result<(Tensor, Tensor)> {
    let mut t = Vec::with_capacity(idx.len() * h * w);
    let mut wt = Vec::with_capacity(idx.len() * h * w);
    for &i in idx {
        for &c in ds.gt[i].as_ref().expect("labelled") {
            let known = (c as usize) < cw.len();
            t.push(if known { c as u32 } else { 0 });
            wt.push(if known { cw[c as usize] } else { 0.0 });
        }
    }
    let b = idx.len();
    Ok((
        Tensor::from_vec(t, (b, 1, h, w), &Device::Cpu)?,
        Tensor::from_vec(wt, (b, 1, h, w), &Device::Cpu)?,
    ))
}

/// Evenly spaced `fraction` of the labelled frames (at least one). `subset` 0 takes the
/// middle of each of the n equal stretches of the data, 1 and 2 the points a third of a
/// stretch before and after it: three disjoint subsets of the same size and spread (while a
/// stretch holds at least 3 frames).
pub fn label_subset(labelled: &[usize], fraction: f64, subset: usize) -> Vec<usize> {
    let len = labelled.len();
    let n = ((len as f64 * fraction).round() as usize).clamp(1, len);
    let offset = [0.5, 1.0 / 6.0, 5.0 / 6.0][subset % 3];
    (0..n)
        .map(|j| labelled[(((j as f64 + offset) * len as f64 / n as f64) as usize).min(len - 1)])
        .collect()
}

pub fn finetune(a: &FinetuneConfig) -> Result<()> {
    check_finetune_config(a)?;
    let arch = LetsMapLite::default();
    let ds = data::load_with_bar(&a.data, a.frames)?;
    ds.check_for(&arch, true)?;
    let params = Params::init(&arch, a.seed)?;
    let (init, lift_pretrained) = load_initial_weights(a, &arch, &params)?;
    let from_scratch = a.encoder.is_none() && a.bundle.is_none();
    // What encoder.onnx holds: the encoder and the lift conv (context + depth logits).
    let encoder = arch.deployed_encoder();
    let unfrozen = unfrozen_layers(a, &arch, from_scratch, lift_pretrained);
    let trained: Vec<_> = encoder[encoder.len() - unfrozen..]
        .iter()
        .chain(&arch.head)
        .cloned()
        .collect();
    let mut opt = Adam::new(params.of_layers(&trained)?, a.lr)?;
    // LP-FT's probe phase: the head alone, with its own Adam state
    let mut probe_opt = Adam::new(params.of_layers(&arch.head)?, a.lr)?;

    let subset = label_subset(&ds.labelled(), a.label_fraction, a.subset as usize);
    let labelled_histogram = class_counts(&ds, &subset, arch.num_classes());
    let cw = class_weights(&labelled_histogram);
    let table = sampling_table(&arch, &ds)?;
    let tt = TableTensors::new(&table)?;
    let mut batcher = Batcher::new(&arch, &ds);
    let mut unlabelled = Unlabelled::load(&a.semi, &arch, &table, a.seed)?;
    if let Some(u) = unlabelled.as_mut() {
        u.set_label_prior(&labelled_histogram);
    }
    let true_depth = if a.oracle_depth {
        Some(true_depth_of(&arch, &ds, &subset)?)
    } else {
        None
    };
    let run = HeadTraining {
        a,
        ds: &ds,
        params: &params,
        model: Model {
            arch: &arch,
            encoder: &encoder,
            unfrozen,
            tt: &tt,
            cw: &cw,
        },
        subset: &subset,
        trained_vars: params.of_layers(&trained)?,
        true_depth,
    };
    let cached = run.cached_bev_features(&mut batcher)?;
    println!(
        "finetune: {init}, {} of {} labelled frames ({:.1} %), training {} layer(s){}{}, class weights {:?}",
        subset.len(),
        ds.labelled().len(),
        a.label_fraction * 100.0,
        trained.len(),
        if cached.is_some() {
            " on cached BEV features"
        } else {
            ""
        },
        if unlabelled.is_some() {
            format!(
                ", unlabelled drives (consistency {}, teacher {})",
                a.semi.consistency, a.semi.teacher
            )
        } else {
            String::new()
        },
        cw.iter()
            .map(|w| (w * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    let t0 = std::time::Instant::now();
    let ema = run.train(
        &mut opt,
        &mut probe_opt,
        &mut batcher,
        cached.as_deref(),
        unlabelled.as_mut(),
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let mut recipe = finetune_recipe(a, &ds, from_scratch, subset.len(), unfrozen, secs, ema);
    recipe.unlabelled =
        unlabelled.map(|u| UnlabelledRecord::new(&a.semi, u.log, labelled_histogram));
    let deployed: Vec<ConvLayer> = encoder.iter().chain(&arch.head).cloned().collect();
    recipe.parameters = params
        .of_layers(&deployed)?
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    write_letsmap_bundle(&a.out, &arch, &params, &ds.calibration_path, &recipe)?;
    println!(
        "wrote {} ({} steps in {:.0} s, final loss {:.4})",
        a.out.display(),
        a.iters,
        secs,
        recipe.final_loss
    );
    if let Some(ev) = &a.eval_data {
        let scores = super::eval::evaluate(&a.out, ev, bevrt_runtime::BackendKind::Cpu, None)?;
        print_scores(&scores);
        record_scores(&a.out, &scores)?;
    }
    Ok(())
}

/// The view transform's table for the data's camera (the calibration the bundle ships).
fn sampling_table(arch: &LetsMapLite, ds: &Dataset) -> Result<bevrt_calib::SamplingTable> {
    let (fh, fw) = arch.feat_hw();
    Ok(bevrt_calib::SamplingTable::try_build(
        &arch.grid,
        &ds.calibration.camera,
        &ds.calibration.extrinsics,
        fw,
        fh,
        arch.stride(),
    )?)
}

/// How many of the deployed encoder's layers train: all from scratch, else `--unfreeze-last`
/// (at least the lift conv when the checkpoint did not pretrain it).
fn unfrozen_layers(
    a: &FinetuneConfig,
    arch: &LetsMapLite,
    from_scratch: bool,
    lift_pretrained: bool,
) -> usize {
    let n_enc = arch.encoder.len() + arch.lift.len();
    if from_scratch {
        n_enc
    } else {
        let fresh_lift = if lift_pretrained { 0 } else { arch.lift.len() };
        a.unfreeze_last.max(fresh_lift).min(n_enc)
    }
}

/// `--oracle-depth`: the true depth's logits of each frame of the subset, in its order.
fn true_depth_of(arch: &LetsMapLite, ds: &Dataset, subset: &[usize]) -> Result<Vec<Tensor>> {
    let bins = arch.grid.depth.as_ref().context("no depth bins")?;
    let (fh, fw) = arch.feat_hw();
    subset
        .iter()
        .map(|&i| {
            let d = data::read_depth_map(ds, i)?;
            super::oracle::true_depth_logits(&d, ds.width as usize, bins, fw, fh)
        })
        .collect()
}

/// Refuses settings no run can use, and an existing output.
fn check_finetune_config(a: &FinetuneConfig) -> Result<()> {
    if a.probe_iters > a.iters {
        bail!(
            "--probe-iters {} exceeds --iters {}",
            a.probe_iters,
            a.iters
        );
    }
    if !(a.label_fraction > 0.0 && a.label_fraction <= 1.0) {
        bail!(
            "--label-fraction must be in (0, 1], got {}",
            a.label_fraction
        );
    }
    if a.batch == 0 || a.iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    if !(a.lr.is_finite() && a.lr >= 0.0) {
        bail!("--lr must be >= 0, got {}", a.lr);
    }
    if a.out.exists() {
        bail!("{}: already exists; refusing to overwrite", a.out.display());
    }
    if a.oracle_depth && a.semi.unlabelled.is_some() {
        bail!("--oracle-depth with --unlabelled: the unlabelled drives have no true depth to use");
    }
    a.semi.check()
}

/// Loads `--encoder` (with its lift conv when the checkpoint holds one) or `--bundle` into
/// `params`; how the run starts, for the log, and whether the lift conv comes trained (a
/// geometry-pretrained checkpoint or a bundle).
fn load_initial_weights(
    a: &FinetuneConfig,
    arch: &LetsMapLite,
    params: &Params,
) -> Result<(String, bool)> {
    let mut lift_pretrained = a.bundle.is_some();
    let init = if let Some(p) = &a.encoder {
        let map = optim::load_checkpoint(p)?;
        params
            .load_from(&map, "param.", Some(&arch.encoder))
            .with_context(|| format!("{}: encoder weights", p.display()))?;
        // A geometry-pretrained checkpoint also holds the lift conv (its depth logits).
        let with_lift = arch
            .lift
            .iter()
            .all(|l| map.contains_key(&format!("param.{}.weight", l.name)));
        if with_lift && !arch.lift.is_empty() {
            lift_pretrained = true;
            params
                .load_from(&map, "param.", Some(&arch.lift))
                .with_context(|| format!("{}: lift weights", p.display()))?;
        }
        format!(
            "pretrained encoder{} ({})",
            if with_lift && !arch.lift.is_empty() {
                " and depth head"
            } else {
                ""
            },
            p.display()
        )
    } else if let Some(b) = &a.bundle {
        let bundle = bevrt_models::Bundle::load(b)?;
        nn::load_bundle_weights(&bundle, params)?;
        format!("bundle {}", b.display())
    } else {
        "scratch".to_string()
    };
    Ok((init, lift_pretrained))
}

/// What every fine-tuning step reads.
struct HeadTraining<'r> {
    a: &'r FinetuneConfig,
    ds: &'r Dataset,
    params: &'r Params,
    /// The forward pass's fixed parts (shared with the unlabelled terms).
    model: Model<'r>,
    /// The labelled frames used.
    subset: &'r [usize],
    /// What `opt` trains (the unlabelled terms' teacher follows these).
    trained_vars: Vec<(String, candle_core::Var)>,
    /// `--oracle-depth`: per subset position, the true depth's logits.
    true_depth: Option<Vec<Tensor>>,
}

impl HeadTraining<'_> {
    /// With the encoder wholly frozen, its BEV features never change: computed once here for
    /// every frame of the subset (unless they would take 1 GiB or more).
    fn cached_bev_features(&self, batcher: &mut Batcher) -> Result<Option<Vec<Tensor>>> {
        let m = &self.model;
        let (gh, gw) = m.arch.bev_hw();
        let cache_bytes = self.subset.len() * m.arch.head[0].cin * gh * gw * 4;
        Ok(if m.unfrozen == 0 && cache_bytes < (1 << 30) {
            let mut v = vec![];
            for (j, &i) in self.subset.iter().enumerate() {
                let x = batcher.images(self.ds, &[i])?;
                let feat = self.depth_override(self.params.chain(&x, m.encoder)?, &[j])?;
                v.push(m.tt.apply(&feat)?.detach());
            }
            Some(v)
        } else {
            None
        })
    }

    /// `--iters` steps on batches drawn without replacement (reshuffled at each pass), the
    /// first `--probe-iters` of them (LP-FT) with `probe_opt` on the head alone; after those,
    /// the unlabelled terms (when given) join, ramped up over a fifth of the remaining steps.
    /// The final moving average of the labelled loss.
    fn train(
        &self,
        opt: &mut Adam,
        probe_opt: &mut Adam,
        batcher: &mut Batcher,
        cached: Option<&[Tensor]>,
        mut unlabelled: Option<&mut Unlabelled>,
    ) -> Result<Option<f32>> {
        let a = self.a;
        let pb = progress(a.iters as u64, "finetune");
        let mut rng = Rng(a.seed ^ 0x5EED_F1E7);
        let mut order: Vec<usize> = (0..self.subset.len()).collect();
        let mut pos = order.len();
        let mut ema = None::<f32>;
        for it in 0..a.iters {
            let mut pick = Vec::with_capacity(a.batch);
            for _ in 0..a.batch.min(self.subset.len()) {
                if pos == order.len() {
                    rng.shuffle(&mut order);
                    pos = 0;
                }
                pick.push(order[pos]);
                pos += 1;
            }
            let probing = it < a.probe_iters;
            let loss = self.batch_loss(&pick, probing, batcher, cached)?;
            let l = optim::scalar(&loss)?;
            if probing {
                probe_opt.backward_step(&loss)?;
            } else if let Some(u) = unlabelled.as_deref_mut() {
                let since = it - a.probe_iters;
                if since == 0 {
                    u.start_teacher(self.params)?;
                }
                let ramp_len = ((a.iters - a.probe_iters) / 5).max(1);
                let ramp = ((since + 1) as f64 / ramp_len as f64).min(1.0);
                let total = (&loss + u.loss(&self.model, self.params, a.batch, ramp)?)?;
                opt.backward_step(&total)?;
                u.update_teacher(&self.trained_vars)?;
            } else {
                opt.backward_step(&loss)?;
            }
            if !l.is_finite() {
                bail!("fine-tuning diverged at step {it} (loss {l}); lower --lr");
            }
            let e = ema.map_or(l, |e| 0.95 * e + 0.05 * l);
            ema = Some(e);
            pb.inc(1);
            pb.set_message(format!("loss {e:.4}"));
        }
        pb.finish_and_clear();
        Ok(ema)
    }

    /// The weighted cross-entropy of the subset's frames at positions `pick`, through the
    /// cached BEV features, the frozen encoder (`probing`) or the partly trained one.
    fn batch_loss(
        &self,
        pick: &[usize],
        probing: bool,
        batcher: &mut Batcher,
        cached: Option<&[Tensor]>,
    ) -> Result<Tensor> {
        let (params, m) = (self.params, &self.model);
        let frames: Vec<usize> = pick.iter().map(|&j| self.subset[j]).collect();
        let bev = match cached {
            Some(c) => Tensor::cat(&pick.iter().map(|&j| &c[j]).collect::<Vec<_>>(), 0)?,
            None => {
                let x = batcher.images(self.ds, &frames)?;
                let feat = if probing {
                    params.chain(&x, m.encoder)?.detach()
                } else {
                    params.chain_training_last(&x, m.encoder, m.unfrozen)?
                };
                m.tt.apply(&self.depth_override(feat, pick)?)?
            }
        };
        self.labelled_ce(&params.chain(&bev, &m.arch.head)?, &frames)
    }

    /// The encoder output as the lift takes it: with `--oracle-depth`, the true depth of the
    /// subset positions `pick` in place of the depth logits.
    fn depth_override(&self, feat: Tensor, pick: &[usize]) -> Result<Tensor> {
        match &self.true_depth {
            None => Ok(feat),
            Some(t) => {
                let truth: Vec<Tensor> = pick.iter().map(|&j| t[j].clone()).collect();
                super::oracle::with_true_depth(&feat, &truth)
            }
        }
    }

    /// The class-weighted cross-entropy of BEV logits against the frames' labels.
    fn labelled_ce(&self, logits: &Tensor, frames: &[usize]) -> Result<Tensor> {
        let (gh, gw) = self.model.arch.bev_hw();
        let (t, w) = targets(self.ds, frames, self.model.cw, gh, gw)?;
        nn::weighted_ce(logits, &t, &w)
    }
}

/// The bundle's `[provenance]` record of a fine-tuning run.
fn finetune_recipe(
    a: &FinetuneConfig,
    ds: &Dataset,
    from_scratch: bool,
    labelled_frames: usize,
    unfrozen: usize,
    secs: f64,
    ema: Option<f32>,
) -> Recipe {
    let (pretrained_by, pretraining) = a
        .encoder
        .as_ref()
        .map(|p| describe_pretraining(p))
        .unwrap_or_default();
    Recipe {
        init: if from_scratch {
            "scratch".into()
        } else if a.encoder.is_some() {
            format!("{pretrained_by}-pretrained")
        } else {
            "bundle".into()
        },
        data: bevrt_models::bundle::path_label(&a.data),
        data_seeds: ds.seeds.clone(),
        data_frames: ds.len(),
        pretraining,
        labelled_frames,
        label_fraction: a.label_fraction,
        label_subset: a.subset,
        unfrozen_encoder_layers: unfrozen,
        iters: a.iters,
        probe_iters: a.probe_iters,
        batch: a.batch,
        lr: a.lr,
        seed: a.seed,
        train_seconds: secs,
        final_loss: ema.unwrap_or(f32::NAN),
        unlabelled: None,
        oracle_depth: a.oracle_depth,
        parameters: 0,
    }
}

/// The provenance of the unlabelled terms: settings, and each term's loss over the first and
/// the last tenth of its steps (each must fall), the pseudo-labels' class histogram.
#[derive(Debug, Serialize)]
pub struct UnlabelledRecord {
    pub data: String,
    #[serde(flatten)]
    pub settings: SemiConfig,
    /// [first tenth, last tenth] mean of the consistency loss (empty when off).
    pub consistency_loss: Vec<f32>,
    pub pseudo_loss: Vec<f32>,
    pub pseudo_histogram: Vec<u64>,
    /// The labelled subset's cells per class, to compare the pseudo-labels with.
    pub labelled_histogram: Vec<u64>,
    pub pseudo_coverage: f64,
    pub pair_overlap: f64,
}

impl UnlabelledRecord {
    fn new(c: &SemiConfig, log: SemiLog, labelled_histogram: Vec<u64>) -> UnlabelledRecord {
        let ends = |v: &[f32]| -> Vec<f32> {
            if v.is_empty() {
                return vec![];
            }
            let n = (v.len() / 10).max(1);
            let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
            vec![mean(&v[..n]), mean(&v[v.len() - n..])]
        };
        UnlabelledRecord {
            data: c
                .unlabelled
                .as_deref()
                .map(bevrt_models::bundle::path_label)
                .unwrap_or_default(),
            settings: c.clone(),
            consistency_loss: ends(&log.consistency_loss),
            pseudo_loss: ends(&log.pseudo_loss),
            pseudo_histogram: log.pseudo_histogram,
            labelled_histogram,
            pseudo_coverage: log.pseudo_coverage,
            pair_overlap: log.pair_overlap,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Recipe {
    pub init: String,
    pub data: String,
    /// Simulator seeds of the training recordings and their frame count.
    pub data_seeds: Vec<u64>,
    pub data_frames: usize,
    /// How the encoder was pretrained ("" when it was not).
    pub pretraining: String,
    pub labelled_frames: usize,
    pub label_fraction: f64,
    /// Which of the three evenly spaced subsets of that fraction.
    pub label_subset: u8,
    pub unfrozen_encoder_layers: usize,
    pub iters: usize,
    /// LP-FT: steps that trained the head alone first.
    pub probe_iters: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    pub train_seconds: f64,
    pub final_loss: f32,
    /// `--unlabelled`'s terms, when used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unlabelled: Option<UnlabelledRecord>,
    /// Trained with the true depth in the lift (`--oracle-depth`): an oracle, not deployable.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub oracle_depth: bool,
    /// Trainable numbers of the deployed networks (encoder, lift conv and head).
    pub parameters: usize,
}

/// Which pathway made a checkpoint ("mae", "geometry", "mae+geometry" for both, or "ssl" for
/// `ssl drive`) and a line on how, from the progress record beside it (`pretrain.json` or `geometry.json`).
fn describe_pretraining(ckpt: &Path) -> (String, String) {
    let read = |name: &str| read_json(&ckpt.with_file_name(name));
    if let Some(v) = read("geometry.json") {
        let a = &v["args"];
        // Both pathways: the geometry pathway started from the semantic pathway's encoder.
        let from = a["encoder"]
            .as_str()
            .and_then(|p| read_json(&Path::new(p).with_file_name("pretrain.json")))
            .filter(|v| v.get("config").is_none())
            .map(|v| describe_mae(&v));
        let line = format!(
            "geometry pathway: {} epochs over {}, training {}, objective {}, gap {}, batch {}, \
             lr {}, seed {}; photometric error per epoch {}; depth on --eval-depth {}{}",
            v["epochs_done"],
            data_label(&a["data"]),
            a["train_last"]
                .as_u64()
                .map(|n| format!("the last {n} layers"))
                .unwrap_or_else(|| "every layer".into()),
            a["objective"],
            a["gap"],
            a["batch"],
            a["lr"],
            a["seed"],
            v["epoch_photometric_error"],
            v["depth"]
                .as_array()
                .and_then(|d| d.last())
                .map(|d| format!("AbsRel {:.3}", d["abs_rel"].as_f64().unwrap_or(f64::NAN)))
                .unwrap_or_else(|| "not measured".into()),
            from.as_ref()
                .map(|l| format!("; its encoder started from the {l}"))
                .unwrap_or_default()
        );
        let by = if from.is_some() {
            "mae+geometry"
        } else {
            "geometry"
        };
        return (by.into(), line);
    }
    if let Some(v) = read("pretrain.json") {
        if v.get("config").is_some() {
            return ("ssl".into(), format!("ssl drive: {v}"));
        }
        let line = describe_mae(&v);
        return ("mae".into(), line);
    }
    ("unknown".into(), String::new())
}

/// A data folder recorded as a JSON string in a run's arguments (`pretrain.json`), quoted, by
/// its own name ([`bevrt_models::bundle::path_label`]).
fn data_label(path: &serde_json::Value) -> String {
    let name = path
        .as_str()
        .map(|p| bevrt_models::bundle::path_label(Path::new(p)));
    format!("{:?}", name.unwrap_or_default())
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
}

/// A line on a semantic-pathway run from its `pretrain.json`.
fn describe_mae(v: &serde_json::Value) -> String {
    let a = &v["args"];
    format!(
        "semantic pathway (temporal MAE): {} epochs over {}, {} masking (alpha {}), mask ratio \
         {}, max gap {}, batch {}, lr {}, seed {}; masked-patch MSE per epoch {}; probe loss {}",
        v["epochs_done"],
        data_label(&a["data"]),
        a["masking"].as_str().unwrap_or("random"),
        a["alpha"],
        a["mask_ratio"],
        a["max_gap"],
        a["batch"],
        a["lr"],
        a["seed"],
        v["epoch_loss"],
        v["probe_loss"]
    )
}

/// Exports encoder and head to ONNX and writes the bundle (atomically).
pub fn write_letsmap_bundle(
    out: &Path,
    arch: &LetsMapLite,
    params: &Params,
    calibration: &Path,
    recipe: &Recipe,
) -> Result<()> {
    let weights = params.weights()?;
    let tmp = std::env::temp_dir().join(format!("bevrt-export-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let doc = format!("letsmap-lite; recipe: {}", serde_json::to_string(recipe)?);
    let enc = tmp.join("encoder.onnx");
    write_conv_chain(
        &enc,
        "letsmap_lite_encoder",
        "image",
        "features",
        [1, 3, arch.input_h, arch.input_w],
        &arch.deployed_encoder(),
        &weights,
        &doc,
    )?;
    let head = tmp.join("bev_head.onnx");
    let (gh, gw) = arch.bev_hw();
    write_conv_chain(
        &head,
        "letsmap_lite_bev_head",
        "bev_features",
        "logits",
        [1, arch.head[0].cin, gh, gw],
        &arch.head,
        &weights,
        &doc,
    )?;
    let mut prov = toml::Table::new();
    prov.insert("architecture".into(), "letsmap-lite".into());
    let recipe_toml: toml::Table = toml::from_str(&toml::to_string(recipe)?)?;
    prov.insert("recipe".into(), toml::Value::Table(recipe_toml));
    let manifest = Manifest {
        format: 1,
        name: "letsmap-lite".into(),
        version: "1".into(),
        task: Task::Bev,
        description: format!(
            "letsmap-lite BEV segmentation ({} encoder, {:.1} % labels, {} parameters)",
            recipe.init,
            recipe.label_fraction * 100.0,
            arch.deployed_params()
        ),
        models: vec![
            ModelFile {
                role: "encoder".into(),
                file: "encoder.onnx".into(),
                sha256: String::new(),
            },
            ModelFile {
                role: "head".into(),
                file: "bev_head.onnx".into(),
                sha256: String::new(),
            },
        ],
        input: data::input_spec(arch),
        outputs: vec![OutputSpec {
            name: Some("logits".into()),
            kind: OutputKind::BevLogits,
            labels: vec![],
        }],
        grid: Some(arch.grid.clone()),
        classes: bevrt_models::letsmap::CLASSES
            .iter()
            .map(|(n, c)| ClassSpec {
                name: n.to_string(),
                color: *c,
            })
            .collect(),
        calibration: Some(ModelFile {
            role: "calibration".into(),
            file: "calibration.toml".into(),
            sha256: String::new(),
        }),
        embedding_norm: Default::default(),
        embedding_stats: None,
        afv: None,
        selftest: None,
        provenance: prov,
        expires: None,
    };
    let r = bevrt_models::write_bundle(
        out,
        manifest,
        &[
            (enc, "encoder.onnx".into()),
            (head, "bev_head.onnx".into()),
            (calibration.to_path_buf(), "calibration.toml".into()),
        ],
    );
    let _ = std::fs::remove_dir_all(&tmp);
    r?;
    bevrt_runtime::selftest::record_or_warn(out);
    Ok(())
}
