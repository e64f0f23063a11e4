//! `bevrt-tool eval --oracle-depth` and `finetune --oracle-depth`: the ceiling that perfect
//! geometry gives the model. The encoder's depth distribution is replaced by the simulator's
//! true depth: each image pixel's depth is one-hot in its bin, and a feature pixel's
//! distribution is the share of its 8x8 block's pixels in each bin (sky, with no depth, counts
//! in the farthest bin). A block one-hot at its median depth was tried first: at 1 % of the
//! labels it scored 27.7 mIoU against scratch's 36.4 (subset 0), since a block spans more than
//! one bin at range and most cells then received nothing. The lift and head run on that. Evaluation only, through the training
//! code's forward (the deployment path has no place to feed depth in), so the same pass also
//! scores the bundle's own depth: that row must match `eval` through the runtime, which checks
//! the forward. Needs recordings made with `sim record --extras` (their `depth/` maps).

use std::path::Path;

use anyhow::{Context, Result, bail};
use bevrt_calib::{DepthBins, SamplingTable};
use bevrt_models::{Bundle, LetsMapLite, Task};
use bevrt_runtime::postprocess::Confusion;
use candle_core::{Device, Tensor};

use super::data::{self, Batcher};
use super::eval::{EvalConfig, EvalCounts, report};
use super::geometry::DepthTruth;
use super::nn::{Params, TableTensors};

/// The smallest share a bin's logit stands for (its log): bins no pixel falls in.
const EMPTY_BIN_SHARE: f32 = 1e-6;

/// `eval --oracle-depth`: prints the oracle's scores like `eval`, and the bundle's own-depth
/// mIoU through the same forward on stderr.
pub fn oracle_cmd(a: &EvalConfig) -> Result<()> {
    if a.shard.is_some() || a.partial.is_some() || a.frames.is_some() || a.record {
        bail!(
            "--oracle-depth scores whole recordings only (no --shard, --partial, --frames, --record)"
        );
    }
    let (own, oracle) = counts(&a.bundle, &a.data)?;
    let own = own.scores()?;
    eprintln!(
        "the bundle's own depth through the same forward: mIoU {:.1} (eval through the runtime must agree)",
        own.miou
    );
    report(&oracle, a.json, None)
}

/// Counts of the bundle with its own depth and with the true depth, on every recording under
/// `data_dir` (each with its own calibration).
pub fn counts(bundle_dir: &Path, data_dir: &Path) -> Result<(EvalCounts, EvalCounts)> {
    let bundle = Bundle::load(bundle_dir)?;
    if bundle.manifest.task != Task::Bev {
        bail!("{}: not a bev bundle", bundle_dir.display());
    }
    let arch = LetsMapLite::default();
    if bundle.manifest.grid.as_ref() != Some(&arch.grid) {
        bail!(
            "{}: --oracle-depth needs letsmap-lite's grid with its depth bins",
            bundle_dir.display()
        );
    }
    let bins = arch
        .grid
        .depth
        .clone()
        .context("letsmap-lite has depth bins")?;
    let params = Params::init(&arch, 0)?;
    super::nn::load_bundle_weights(&bundle, &params)?;
    let classes: Vec<String> = bundle
        .manifest
        .classes
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let mut own = EvalCounts::empty(data_dir, "training forward, the bundle's depth", &classes);
    let mut oracle = EvalCounts::empty(
        data_dir,
        "training forward, true depth per feature pixel",
        &classes,
    );
    for dir in data::recording_dirs(data_dir)? {
        let t = DepthTruth::load(&dir)?;
        let (a, b) = count_recording(&arch, &params, &bins, &t)
            .with_context(|| format!("{}", dir.display()))?;
        let frames = t.ds.labelled().len() as u64;
        own.add_recording(&dir, &a, frames)?;
        oracle.add_recording(&dir, &b, frames)?;
    }
    Ok((own, oracle))
}

/// One recording's confusions with the encoder's depth and with the true depth.
fn count_recording(
    arch: &LetsMapLite,
    params: &Params,
    bins: &DepthBins,
    t: &DepthTruth,
) -> Result<(Confusion, Confusion)> {
    let (fh, fw) = arch.feat_hw();
    let table = SamplingTable::try_build(
        &arch.grid,
        &t.ds.calibration.camera,
        &t.ds.calibration.extrinsics,
        fw,
        fh,
        arch.stride(),
    )?;
    let tt = TableTensors::new(&table)?;
    let encoder = arch.deployed_encoder();
    let mut batcher = Batcher::new(arch, &t.ds);
    let k = arch.num_classes();
    let (mut own, mut oracle) = (Confusion::new(k), Confusion::new(k));
    let labelled = t.ds.labelled();
    if labelled.is_empty() {
        bail!("no frame with ground truth");
    }
    for chunk in labelled.chunks(8) {
        let x = batcher.images(&t.ds, chunk)?;
        let out = params.chain(&x, &encoder)?.detach();
        let truth: Vec<Tensor> = chunk
            .iter()
            .map(|&i| true_depth_logits(&t.depth[i], t.ds.width as usize, bins, fw, fh))
            .collect::<Result<_>>()?;
        let with_truth = with_true_depth(&out, &truth)?;
        for (feat, conf) in [(&out, &mut own), (&with_truth, &mut oracle)] {
            let logits = params.chain(&tt.apply(feat)?, &arch.head)?;
            let pred = logits.argmax(1)?.to_dtype(candle_core::DType::U8)?;
            for (b, &i) in chunk.iter().enumerate() {
                let p = pred.get(b)?.flatten_all()?.to_vec1::<u8>()?;
                conf.add(t.ds.gt[i].as_deref().expect("labelled"), &p);
            }
        }
    }
    Ok((own, oracle))
}

/// An encoder output (B, C + D, fh, fw) with its D depth logits replaced by `truth` (one
/// (D, fh, fw) tensor per batch item, from [`true_depth_logits`]).
pub(super) fn with_true_depth(out: &Tensor, truth: &[Tensor]) -> Result<Tensor> {
    let d = truth.first().context("no batch")?.dim(0)?;
    let c = out.dim(1)? - d;
    Ok(Tensor::cat(
        &[out.narrow(1, 0, c)?, Tensor::stack(truth, 0)?],
        1,
    )?)
}

/// (D, fh, fw) logits whose softmax is the share of each feature pixel's block of image
/// pixels in each depth bin (log of the share, floored at [`EMPTY_BIN_SHARE`]).
pub(super) fn true_depth_logits(
    depth: &[f32],
    w: usize,
    bins: &DepthBins,
    fw: usize,
    fh: usize,
) -> Result<Tensor> {
    let h = depth.len() / w;
    let (sx, sy) = (w / fw, h / fh);
    let d = bins.bins;
    let mut share = vec![0f32; d * fh * fw];
    let per_pixel = 1.0 / (sx * sy) as f32;
    for y in 0..fh * sy {
        for x in 0..fw * sx {
            let z = depth[y * w + x];
            let bin = if z > 0.0 {
                bins.bin_of(z as f64) as usize
            } else {
                d - 1
            };
            share[(bin * fh + y / sy) * fw + x / sx] += per_pixel;
        }
    }
    let logits = share.iter().map(|&p| p.max(EMPTY_BIN_SHARE).ln()).collect();
    Ok(Tensor::from_vec(logits, (d, fh, fw), &Device::Cpu)?)
}
