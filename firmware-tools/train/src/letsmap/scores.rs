//! What `eval` measures and where it goes: the scores of a BEV bundle, their table, and their
//! record in the bundle's manifest. Shared by `eval` ([`super::eval`]) and `finetune`
//! ([`super::train`]), which scores the bundle it just wrote.

use std::path::Path;

use anyhow::{Context, Result};
use bevrt_runtime::postprocess::ClassIou;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    pub data: String,
    pub backend: String,
    pub frames: usize,
    /// Recordings scored (each whole).
    pub recordings: usize,
    /// Visible (known) ground-truth cells scored.
    pub cells: u64,
    /// Mean IoU over the classes present in the ground truth, in percent.
    pub miou: f64,
    /// Cell accuracy over visible cells, in percent.
    pub accuracy: f64,
    pub per_class: Vec<ClassIou>,
    /// Median per-frame time of preprocess + networks + view transform + argmax, ms.
    pub median_frame_ms: f64,
    /// Cells hidden from the camera, scored against the amodal ground truth (recordings made
    /// with `sim record --extras` carry it in `gt_amodal/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occlusion: Option<OcclusionScores>,
    /// Recordings that could not be scored, by name, with why; the rest still count.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedRecording>,
}

/// A recording `eval` could not score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FailedRecording {
    pub recording: String,
    pub error: String,
}

/// The model's guesses where the camera cannot see: cells inside its view (the runtime gives
/// them a class) whose visible ground truth is unknown (occluded, or ground the camera's
/// pixels do not resolve), against the amodal truth.
#[derive(Debug, Clone, Serialize)]
pub struct OcclusionScores {
    pub hidden_cells: u64,
    /// Percent of hidden cells whose predicted class is the amodal truth.
    pub accuracy: f64,
    /// Hidden cells predicted as a vehicle (car, truck, 2-wheeler) that hold none.
    pub vehicle_false_positives: u64,
    /// The same as a percent of the hidden cells that hold no vehicle.
    pub vehicle_false_positive_rate: f64,
}

pub fn print_scores(s: &Scores) {
    println!(
        "{} frames of {} recordings, {} visible cells, backend {}",
        s.frames, s.recordings, s.cells, s.backend
    );
    for f in &s.failed {
        println!("FAILED {}: {}", f.recording, f.error);
    }
    println!("{:<12} {:>8} {:>10}", "class", "IoU %", "gt cells");
    for c in &s.per_class {
        let iou = c.iou.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!("{:<12} {:>8} {:>10}", c.class, iou, c.gt_cells);
    }
    println!(
        "mIoU {:.1} %  cell accuracy {:.1} %  median frame {:.2} ms",
        s.miou, s.accuracy, s.median_frame_ms
    );
    if let Some(o) = &s.occlusion {
        println!(
            "hidden cells {}: accuracy {:.1} % against the amodal truth, vehicle false positives {} ({:.2} % of hidden cells without a vehicle)",
            o.hidden_cells, o.accuracy, o.vehicle_false_positives, o.vehicle_false_positive_rate
        );
    }
}

/// Adds `[provenance.scores]` to a bundle's manifest (rewritten via a temporary file).
pub fn record_scores(bundle: &Path, scores: &Scores) -> Result<()> {
    let b = bevrt_models::Bundle::load(bundle)?;
    let mut m = b.manifest.clone();
    let t: toml::Table = toml::from_str(&toml::to_string(scores)?)?;
    m.provenance.insert("scores".into(), toml::Value::Table(t));
    let path = bundle.join("bundle.toml");
    let tmp = bundle.join("bundle.toml.tmp");
    std::fs::write(&tmp, m.to_toml()).with_context(|| format!("{}: write", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("{}: rename", path.display()))?;
    Ok(())
}
