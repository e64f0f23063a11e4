//! `bevrt demo`: the shipped letsmap-lite reference bundle (embedded in the binary) on a
//! freshly simulated drive, through the real pipeline (replay source, backend, sinks), then
//! camera frame | predicted BEV | ground truth side by side per frame, latency and mIoU.
//!
//! The bundle is `models/bundles/letsmap-lite/`, rebuilt by `scripts/letsmap-recipe.sh`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bevrt_models::Bundle;

use crate::backend::{self, BackendKind, BackendOptions};
use crate::postprocess::{ClassIou, class_map_from_rgb, score_maps};
use crate::{pipeline, sink, source};

macro_rules! shipped {
    ($f:literal) => {
        (
            $f,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../models/bundles/letsmap-lite/",
                $f
            ))
            .as_slice(),
        )
    };
}

/// The reference bundle's files, compiled in so the demo needs no download and no data.
pub const SHIPPED_BUNDLE: [(&str, &[u8]); 4] = [
    shipped!("bundle.toml"),
    shipped!("encoder.onnx"),
    shipped!("bev_head.onnx"),
    shipped!("calibration.toml"),
];

/// Writes the embedded reference bundle to `dir` (replacing it) and loads it (digests checked).
pub fn write_shipped_bundle(dir: &Path) -> Result<Bundle> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("{}: cannot replace", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    for (name, bytes) in SHIPPED_BUNDLE {
        let p = dir.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("{}: cannot write", p.display()))?;
    }
    Ok(Bundle::load(dir)?)
}

pub struct DemoOptions {
    pub out: PathBuf,
    pub frames: u64,
    pub seed: u64,
    pub backend: BackendKind,
    pub threads: usize,
}

pub struct DemoReport {
    pub run: pipeline::RunReport,
    pub miou: f64,
    pub accuracy: f64,
    pub per_class: Vec<ClassIou>,
    pub side_by_side: PathBuf,
}

fn read_rgb(p: &Path) -> Result<image::RgbImage> {
    Ok(image::open(p)
        .with_context(|| format!("{}: cannot decode", p.display()))?
        .to_rgb8())
}

/// Upscales a map by an integer factor (nearest), so cells stay crisp.
fn upscale(img: &image::RgbImage, f: u32) -> image::RgbImage {
    image::imageops::resize(
        img,
        img.width() * f,
        img.height() * f,
        image::imageops::FilterType::Nearest,
    )
}

pub fn run(o: &DemoOptions) -> Result<DemoReport> {
    let bundle = write_shipped_bundle(&o.out.join("bundle"))?;
    let m = &bundle.manifest;
    let grid = m.grid.clone().context("shipped bundle has no grid")?;
    let cal_file = m
        .calibration
        .as_ref()
        .context("shipped bundle has no calibration")?;
    let cal = bevrt_calib::Calibration::load(bundle.dir.join(&cal_file.file))?;
    // A drive the model never saw (its training seeds are in the manifest), filmed by the
    // camera it was trained for, with ground truth on its grid.
    let mut cfg = bevrt_sim::SimConfig::with_seed(o.seed);
    cfg.camera = cal.camera.clone();
    cfg.extrinsics = cal.extrinsics;
    cfg.grid = grid.clone();
    cfg.fps = 2.0;
    let rec = o.out.join("recording");
    let _ = std::fs::remove_dir_all(&rec);
    bevrt_sim::record(&cfg, o.frames, &rec, false, &mut |_, _| {})
        .with_context(|| format!("{}: recording the simulated drive", rec.display()))?;
    let results = o.out.join("results");
    let _ = std::fs::remove_dir_all(&results);
    std::fs::create_dir_all(&results)?;
    let src = source::open(&format!("replay:{}", rec.display()))?;
    let bo = BackendOptions {
        threads: o.threads,
        ..Default::default()
    };
    let be = backend::open(o.backend, &bundle, &bo)?;
    let sinks = sink::build(
        &[sink::SinkKind::Png, sink::SinkKind::Jsonl],
        &results,
        m,
        1,
    )?;
    let opts = pipeline::PipelineOptions {
        metrics_out: Some(results.join("metrics.jsonl")),
        ..Default::default()
    };
    let run = pipeline::run(src, be, sinks, &opts)?;

    // Side by side and scores, from what the sinks wrote (colours back to class indices).
    let recording = source::replay::Recording::open(&rec)?;
    let sbs = o.out.join("side_by_side");
    let _ = std::fs::remove_dir_all(&sbs);
    std::fs::create_dir_all(&sbs)?;
    let colour_of = |c: u8| m.classes.get(c as usize).map_or([0, 0, 0], |s| s.color);
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![];
    for e in &recording.frames {
        let cam = read_rgb(&e.file)?;
        let pred = read_rgb(&results.join("maps").join(format!("{:06}.png", e.seq)))?;
        let gt_path = e.gt.as_ref().context("recording without ground truth")?;
        let gt = image::open(gt_path)
            .with_context(|| format!("{}: cannot decode", gt_path.display()))?
            .to_luma8();
        let mut gt_rgb = image::RgbImage::new(gt.width(), gt.height());
        for (d, s) in gt_rgb.pixels_mut().zip(gt.pixels()) {
            d.0 = colour_of(s.0[0]);
        }
        let f = cam.height().div_ceil(pred.height()).max(1);
        let (pred_up, gt_up) = (upscale(&pred, f), upscale(&gt_rgb, f));
        let gap = 8;
        let w = cam.width() + 2 * (pred_up.width() + gap);
        let h = cam.height().max(pred_up.height());
        let mut canvas = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
        image::imageops::replace(&mut canvas, &cam, 0, 0);
        image::imageops::replace(&mut canvas, &pred_up, (cam.width() + gap) as i64, 0);
        image::imageops::replace(
            &mut canvas,
            &gt_up,
            (cam.width() + 2 * gap + pred_up.width()) as i64,
            0,
        );
        let out = sbs.join(format!("{:06}.png", e.seq));
        canvas
            .save(&out)
            .with_context(|| format!("{}: cannot write", out.display()))?;
        let pred_cls = class_map_from_rgb(pred.as_raw(), &m.classes);
        pairs.push((gt.into_raw(), pred_cls));
    }
    let names: Vec<String> = m.classes.iter().map(|c| c.name.clone()).collect();
    let refs: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(g, p)| (g.as_slice(), p.as_slice()))
        .collect();
    let (_, miou, accuracy, per_class) = score_maps(&refs, &names);
    Ok(DemoReport {
        run,
        miou,
        accuracy,
        per_class,
        side_by_side: sbs,
    })
}
