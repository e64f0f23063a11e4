//! `bevrt demo`: the shipped letsmap-lite reference bundle (embedded in the binary), or any
//! BEV bundle given with `--bundle`, on a freshly simulated drive, through the real pipeline
//! (replay source, backend, sinks), then camera frame | predicted BEV | ground truth side by
//! side per frame with panel titles and a class legend, latency and mIoU.
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
    /// A BEV bundle to run instead of the embedded reference.
    pub bundle: Option<PathBuf>,
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

/// Camera | prediction | ground truth, each under its title, and the class legend below.
fn compose_side_by_side(
    cam: &image::RgbImage,
    pred: &image::RgbImage,
    gt: &image::RgbImage,
    classes: &[(String, [u8; 3])],
) -> image::RgbImage {
    use crate::legend::{class_legend, draw_text};
    let (gap, title_h) = (8, 14);
    let w = cam.width() + 2 * (pred.width() + gap);
    let h = cam.height().max(pred.height());
    let legend = class_legend(w, classes, 1);
    let mut canvas = image::RgbImage::from_pixel(
        w,
        title_h + h + legend.height(),
        image::Rgb([255, 255, 255]),
    );
    let x_pred = cam.width() + gap;
    let x_gt = x_pred + pred.width() + gap;
    for (x, title) in [
        (0, "CAMERA"),
        (x_pred, "PREDICTED BEV"),
        (x_gt, "GROUND TRUTH BEV"),
    ] {
        draw_text(&mut canvas, x + 2, 3, title, 1, [0, 0, 0]);
    }
    image::imageops::replace(&mut canvas, cam, 0, title_h as i64);
    image::imageops::replace(&mut canvas, pred, x_pred as i64, title_h as i64);
    image::imageops::replace(&mut canvas, gt, x_gt as i64, title_h as i64);
    image::imageops::replace(&mut canvas, &legend, 0, (title_h + h) as i64);
    canvas
}

pub fn run(o: &DemoOptions) -> Result<DemoReport> {
    let bundle = match &o.bundle {
        Some(b) => Bundle::load(b)?,
        None => write_shipped_bundle(&o.out.join("bundle"))?,
    };
    let m = &bundle.manifest;
    let grid = m
        .grid
        .clone()
        .with_context(|| format!("{}: not a BEV bundle (no [grid])", bundle.dir.display()))?;
    let cal_file = m
        .calibration
        .as_ref()
        .with_context(|| format!("{}: BEV bundle without [calibration]", bundle.dir.display()))?;
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
    bevrt_sim::record(&cfg, o.frames, &rec, &Default::default(), &mut |_, _| {})
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
    let legend_classes: Vec<(String, [u8; 3])> = m
        .classes
        .iter()
        .map(|c| (c.name.clone(), c.color))
        .chain([("unknown / unseen".to_string(), [0, 0, 0])])
        .collect();
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
        let canvas = compose_side_by_side(&cam, &pred_up, &gt_up, &legend_classes);
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
