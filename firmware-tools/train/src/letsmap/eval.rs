//! `bevrt-tool eval`: per-class IoU and mIoU of a BEV bundle on held-out recordings, through
//! the deployment path (the bundle's ONNX files, the runtime's preprocess, view transform and
//! argmax on the chosen backend), never through the training code.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bevrt_calib::BevGrid;
use bevrt_models::{Bundle, Task};
use bevrt_runtime::{BackendKind, BackendOptions, Frame, PixelFormat};

use super::data;
use super::scores::{OcclusionScores, Scores, print_scores, record_scores};
use bevrt_runtime::postprocess::score_maps;

/// `eval`'s settings.
#[derive(Debug)]
pub struct EvalConfig {
    pub bundle: PathBuf,
    /// Held-out recordings with BEV ground truth.
    pub data: PathBuf,
    pub backend: BackendKind,
    /// Score at most this many frames.
    pub frames: Option<usize>,
    /// Print the scores as JSON instead of a table.
    pub json: bool,
    /// Also record the scores in the bundle's manifest (`[provenance.scores]`).
    pub record: bool,
}

/// The amodal map beside a frame's ground truth (`gt_amodal/` next to `frames/`), if present.
fn amodal_of(frame_file: &Path) -> Option<PathBuf> {
    let rec = frame_file.parent()?.parent()?;
    let p = rec.join("gt_amodal").join(frame_file.file_name()?);
    p.is_file().then_some(p)
}

fn score_occlusion(frames: &[(Vec<u8>, Vec<u8>, Vec<u8>)], classes: &[String]) -> OcclusionScores {
    let vehicle: Vec<bool> = (0..=255u16)
        .map(|c| {
            classes
                .get(c as usize)
                .is_some_and(|n| matches!(n.as_str(), "car" | "truck" | "2-wheeler"))
        })
        .collect();
    let (mut hidden, mut right, mut fp, mut no_vehicle) = (0u64, 0u64, 0u64, 0u64);
    for (gt, amodal, pred) in frames {
        for ((&g, &a), &p) in gt.iter().zip(amodal).zip(pred) {
            if g != 255 || p == 255 || a == 255 {
                continue;
            }
            hidden += 1;
            right += (p == a) as u64;
            if !vehicle[a as usize] {
                no_vehicle += 1;
                fp += vehicle[p as usize] as u64;
            }
        }
    }
    let pct = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    OcclusionScores {
        hidden_cells: hidden,
        accuracy: pct(right, hidden),
        vehicle_false_positives: fp,
        vehicle_false_positive_rate: pct(fp, no_vehicle),
    }
}

pub fn evaluate(
    bundle_dir: &Path,
    data_dir: &Path,
    backend: BackendKind,
    limit: Option<usize>,
) -> Result<Scores> {
    let bundle = Bundle::load(bundle_dir)?;
    let m = &bundle.manifest;
    if m.task != Task::Bev {
        bail!(
            "{}: task '{}', eval scores bev bundles",
            bundle_dir.display(),
            m.task
        );
    }
    let ds = data::load(data_dir, limit, &|_, _| {})?;
    let grid = m.grid.clone().context("bev bundle without grid")?;
    check_grid(data_dir, ds.grid.as_ref(), &grid)?;
    let mut be = bevrt_runtime::backend::open(backend, &bundle, &BackendOptions::default())?;
    // Evaluate with the recording's camera: the runtime rebuilds its sampling table.
    be.set_calibration(&ds.calibration_path)?;
    let mut res = be.new_result();
    let mut frame = Frame::with_capacity((ds.width * ds.height * 3) as usize);
    let mut preds: Vec<(usize, Vec<u8>)> = vec![];
    let mut times = vec![];
    for i in 0..ds.len() {
        if ds.gt[i].is_none() {
            continue;
        }
        frame.reset(PixelFormat::Rgb8, ds.width, ds.height);
        frame.data.copy_from_slice(&ds.frames[i]);
        frame.seq = i as u64;
        let t0 = std::time::Instant::now();
        be.preprocess(&frame)?;
        be.infer()?;
        be.postprocess(&mut res)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        preds.push((i, res.class_map.clone()));
    }
    if preds.is_empty() {
        bail!("{}: no frame with ground truth", data_dir.display());
    }
    let names: Vec<String> = m.classes.iter().map(|c| c.name.clone()).collect();
    let pairs: Vec<(&[u8], &[u8])> = preds
        .iter()
        .map(|(i, p)| (ds.gt[*i].as_deref().expect("filtered"), p.as_slice()))
        .collect();
    let (cells, miou, accuracy, per_class) = score_maps(&pairs, &names);
    let occlusion = occlusion_scores(&ds, &preds, &names)?;
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(Scores {
        data: data_dir.display().to_string(),
        backend: be.describe(),
        frames: preds.len(),
        cells,
        miou,
        accuracy,
        per_class,
        median_frame_ms: times[times.len() / 2],
        occlusion,
    })
}

/// Refuses data without BEV ground truth or with another grid than the bundle's.
fn check_grid(data_dir: &Path, gt: Option<&BevGrid>, grid: &BevGrid) -> Result<()> {
    match gt {
        Some(g)
            if (g.x_min, g.x_max, g.y_min, g.y_max, g.cell)
                == (grid.x_min, grid.x_max, grid.y_min, grid.y_max, grid.cell) => {}
        Some(g) => bail!(
            "{}: ground-truth grid (cell {} m, x {}..{}, y {}..{}) differs from the bundle's (cell {} m, x {}..{}, y {}..{})",
            data_dir.display(),
            g.cell,
            g.x_min,
            g.x_max,
            g.y_min,
            g.y_max,
            grid.cell,
            grid.x_min,
            grid.x_max,
            grid.y_min,
            grid.y_max
        ),
        None => bail!(
            "{}: no BEV ground truth (ground_truth.toml)",
            data_dir.display()
        ),
    }
    Ok(())
}

/// With amodal ground truth beside every scored frame (`gt_amodal/`), the scores of the
/// cells the camera cannot see; none otherwise.
fn occlusion_scores(
    ds: &data::Dataset,
    preds: &[(usize, Vec<u8>)],
    names: &[String],
) -> Result<Option<OcclusionScores>> {
    let amodal: Option<Vec<PathBuf>> = preds
        .iter()
        .map(|(i, _)| amodal_of(&ds.frame_files[*i]))
        .collect();
    let occlusion = match amodal {
        Some(paths) => {
            let mut frames = vec![];
            for ((i, p), a) in preds.iter().zip(&paths) {
                let am = image::open(a)
                    .with_context(|| format!("{}: cannot decode", a.display()))?
                    .to_luma8()
                    .into_raw();
                if am.len() != p.len() {
                    bail!("{}: size differs from the ground truth's", a.display());
                }
                let gt = ds.gt[*i].clone().expect("filtered");
                frames.push((gt, am, p.clone()));
            }
            Some(score_occlusion(&frames, names))
        }
        None => None,
    };
    Ok(occlusion)
}

pub fn eval_cmd(a: &EvalConfig) -> Result<()> {
    let s = evaluate(&a.bundle, &a.data, a.backend, a.frames)?;
    if a.record {
        record_scores(&a.bundle, &s)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_scores(&s);
    }
    Ok(())
}
