//! `bevrt-tool eval`: per-class IoU and mIoU of a BEV bundle on held-out recordings, through
//! the deployment path (the bundle's ONNX files, the runtime's preprocess, view transform and
//! argmax on the chosen backend), never through the training code.
//!
//! What is counted is integers ([`EvalCounts`]: the confusion matrix, the hidden-cell counts,
//! the frame-time histogram's fixed bins), and the scores are made from them, so the work can
//! be split: `--shard I/N` takes the recordings whose index (in name order) is I mod N,
//! `--partial OUT.json` writes the counts instead of scores, and `eval merge PART...` adds
//! the parts and prints exactly what one `eval` over all recordings prints (the median frame
//! time comes from the merged histogram, within one bin, in both). Each recording runs with its
//! own calibration; a recording that cannot be read is named in the result and the rest still
//! count.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bevrt_calib::BevGrid;
use bevrt_models::{Bundle, Task};
use bevrt_runtime::{BackendKind, BackendOptions, Frame, PixelFormat};

use super::data;
use super::scores::{FailedRecording, OcclusionScores, Scores, print_scores, record_scores};
use bevrt_runtime::metrics::{Histogram, HistogramCounts};
use bevrt_runtime::postprocess::Confusion;
use serde::{Deserialize, Serialize};

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
    /// Score only shard I of N (recordings in name order, index mod N).
    pub shard: Option<Shard>,
    /// Write the raw counts here (for `eval merge`) instead of printing scores.
    pub partial: Option<PathBuf>,
    /// CPU threads for the backend (0: pick by measuring).
    pub threads: usize,
    /// Score with the simulator's true depth in the lift instead (`oracle::oracle_cmd`).
    pub oracle_depth: bool,
}

/// Shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("shard '{s}': expected I/N with 0 <= I < N");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// Raw counts of cells the camera cannot see, scored against the amodal truth.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OcclusionCounts {
    pub hidden: u64,
    pub right: u64,
    pub vehicle_false_positives: u64,
    pub no_vehicle: u64,
    /// Frames whose recording had amodal ground truth.
    pub frames: u64,
}

/// What an eval (or a shard of one) counted: everything needed to make its scores, and
/// nothing that does not add up exactly across shards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalCounts {
    /// "bevrt-eval-counts/1"
    pub format: String,
    pub data: String,
    pub backend: String,
    pub classes: Vec<String>,
    pub shard: Option<Shard>,
    pub recordings: Vec<String>,
    pub failed: Vec<FailedRecording>,
    pub frames: u64,
    pub confusion: Confusion,
    pub occlusion: OcclusionCounts,
    /// Per-frame time (preprocess + networks + view transform + argmax), nanoseconds.
    pub frame_ns: HistogramCounts,
}

const COUNTS_FORMAT: &str = "bevrt-eval-counts/1";

/// The amodal map beside a frame's ground truth (`gt_amodal/` next to `frames/`), if present.
fn amodal_of(frame_file: &Path) -> Option<PathBuf> {
    let rec = frame_file.parent()?.parent()?;
    let p = rec.join("gt_amodal").join(frame_file.file_name()?);
    p.is_file().then_some(p)
}

/// Hidden cells of one frame (visible truth unknown, prediction and amodal truth known).
fn count_occlusion(
    gt: &[u8],
    amodal: &[u8],
    pred: &[u8],
    vehicle: &[bool],
    o: &mut OcclusionCounts,
) {
    for ((&g, &a), &p) in gt.iter().zip(amodal).zip(pred) {
        if g != 255 || p == 255 || a == 255 {
            continue;
        }
        o.hidden += 1;
        o.right += (p == a) as u64;
        if !vehicle[a as usize] {
            o.no_vehicle += 1;
            o.vehicle_false_positives += vehicle[p as usize] as u64;
        }
    }
}

/// Per class index (0..=255): whether it names a vehicle.
fn vehicle_classes(classes: &[String]) -> Vec<bool> {
    (0..=255u16)
        .map(|c| {
            classes
                .get(c as usize)
                .is_some_and(|n| bevrt_models::letsmap::is_vehicle(n))
        })
        .collect()
}

/// Scores of a bundle on every recording under `data_dir` (at most `limit` frames); a
/// recording that cannot be read is an error here (the library's callers score data they
/// made themselves).
pub fn evaluate(
    bundle_dir: &Path,
    data_dir: &Path,
    backend: BackendKind,
    limit: Option<usize>,
) -> Result<Scores> {
    let counts = count(bundle_dir, data_dir, backend, limit, None, 0)?;
    if let Some(f) = counts.failed.first() {
        bail!("{}: {}", f.recording, f.error);
    }
    counts.scores()
}

/// Count a bundle's results on the recordings under `data_dir` (those of `shard` only),
/// recording by recording with each one's calibration.
pub fn count(
    bundle_dir: &Path,
    data_dir: &Path,
    backend: BackendKind,
    limit: Option<usize>,
    shard: Option<Shard>,
    threads: usize,
) -> Result<EvalCounts> {
    let bundle = Bundle::load(bundle_dir)?;
    let m = &bundle.manifest;
    if m.task != Task::Bev {
        bail!(
            "{}: task '{}', eval scores bev bundles",
            bundle_dir.display(),
            m.task
        );
    }
    let grid = m.grid.clone().context("bev bundle without grid")?;
    let classes: Vec<String> = m.classes.iter().map(|c| c.name.clone()).collect();
    let opts = BackendOptions {
        threads,
        ..Default::default()
    };
    let mut be = bevrt_runtime::backend::open(backend, &bundle, &opts)?;
    let mut c = EvalCounts::empty(data_dir, &be.describe(), &classes);
    c.shard = shard;
    let mut times = Histogram::default();
    let dirs = data::recording_dirs(data_dir)?;
    let mine = dirs
        .iter()
        .enumerate()
        .filter(|(i, _)| shard.is_none_or(|s| i % s.count == s.index));
    for (_, dir) in mine {
        let left = limit.map(|l| l.saturating_sub(c.frames as usize));
        if left == Some(0) {
            break;
        }
        if let Err(e) = count_recording(dir, &grid, be.as_mut(), left, &mut c, &mut times) {
            c.failed.push(FailedRecording {
                recording: dir.display().to_string(),
                error: format!("{e:#}"),
            });
        }
    }
    c.frame_ns = times.to_counts();
    Ok(c)
}

/// One recording's frames with ground truth into `c` (at most `limit`).
fn count_recording(
    dir: &Path,
    grid: &BevGrid,
    be: &mut dyn bevrt_runtime::backend::Backend,
    limit: Option<usize>,
    c: &mut EvalCounts,
    times: &mut Histogram,
) -> Result<()> {
    let ds = data::load(dir, limit, &|_, _| {})?;
    check_grid(dir, ds.grid.as_ref(), grid)?;
    // Evaluate with the recording's camera: the runtime rebuilds its sampling table.
    be.set_calibration(&ds.calibration_path)?;
    let mut res = be.new_result();
    let mut frame = Frame::with_capacity((ds.width * ds.height * 3) as usize);
    let vehicle = vehicle_classes(&c.classes);
    let (mut confusion, mut occlusion) =
        (Confusion::new(c.classes.len()), OcclusionCounts::default());
    let mut frames = 0;
    let mut local_times = Histogram::default();
    for i in 0..ds.len() {
        let Some(gt) = ds.gt[i].as_deref() else {
            continue;
        };
        let amodal = match amodal_of(&ds.frame_files[i]) {
            Some(p) => Some(
                image::open(&p)
                    .with_context(|| format!("{}: cannot decode", p.display()))?
                    .to_luma8()
                    .into_raw(),
            ),
            None => None,
        };
        frame.reset(PixelFormat::Rgb8, ds.width, ds.height);
        frame.data.copy_from_slice(&ds.frames[i]);
        frame.seq = i as u64;
        let t0 = std::time::Instant::now();
        be.preprocess(&frame)?;
        be.infer()?;
        be.postprocess(&mut res)?;
        local_times.record(t0.elapsed().as_nanos() as u64);
        confusion.add(gt, &res.class_map);
        if let Some(a) = &amodal {
            if a.len() != gt.len() {
                bail!(
                    "{}: amodal map size differs from the ground truth's",
                    dir.display()
                );
            }
            count_occlusion(gt, a, &res.class_map, &vehicle, &mut occlusion);
            occlusion.frames += 1;
        }
        frames += 1;
    }
    if frames == 0 {
        bail!("no frame with ground truth");
    }
    // Only a recording that ran whole counts.
    c.confusion.merge(&confusion).map_err(anyhow::Error::msg)?;
    add_occlusion(&mut c.occlusion, &occlusion);
    times.merge(&local_times);
    c.frames += frames;
    c.recordings.push(dir.display().to_string());
    Ok(())
}

fn add_occlusion(a: &mut OcclusionCounts, b: &OcclusionCounts) {
    a.hidden += b.hidden;
    a.right += b.right;
    a.vehicle_false_positives += b.vehicle_false_positives;
    a.no_vehicle += b.no_vehicle;
    a.frames += b.frames;
}

impl EvalCounts {
    /// Nothing counted yet, of `data_dir` by `backend` (a description).
    pub fn empty(data_dir: &Path, backend: &str, classes: &[String]) -> EvalCounts {
        EvalCounts {
            format: COUNTS_FORMAT.into(),
            data: bevrt_models::bundle::path_label(data_dir),
            backend: backend.into(),
            confusion: Confusion::new(classes.len()),
            classes: classes.to_vec(),
            shard: None,
            recordings: vec![],
            failed: vec![],
            frames: 0,
            occlusion: OcclusionCounts::default(),
            frame_ns: Histogram::default().to_counts(),
        }
    }

    /// Adds one whole recording's confusion (`frames` scored frames).
    pub fn add_recording(&mut self, dir: &Path, confusion: &Confusion, frames: u64) -> Result<()> {
        self.confusion
            .merge(confusion)
            .map_err(anyhow::Error::msg)?;
        self.frames += frames;
        self.recordings.push(dir.display().to_string());
        Ok(())
    }

    /// The scores these counts make (what `eval` prints).
    pub fn scores(&self) -> Result<Scores> {
        if self.frames == 0 {
            bail!(
                "{}: no frame with ground truth was scored{}",
                self.data,
                match self.failed.first() {
                    Some(f) => format!(" ({}: {})", f.recording, f.error),
                    None => String::new(),
                }
            );
        }
        let (cells, miou, accuracy, per_class) = self.confusion.scores(&self.classes);
        let times = Histogram::from_counts(&self.frame_ns).map_err(anyhow::Error::msg)?;
        let o = &self.occlusion;
        let pct = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                100.0 * a as f64 / b as f64
            }
        };
        Ok(Scores {
            data: self.data.clone(),
            backend: self.backend.clone(),
            frames: self.frames as usize,
            recordings: self.recordings.len(),
            cells,
            miou,
            accuracy,
            per_class,
            median_frame_ms: times.quantile(0.5) as f64 / 1e6,
            // only when every scored frame had amodal truth beside it
            occlusion: (o.frames == self.frames).then(|| OcclusionScores {
                hidden_cells: o.hidden,
                accuracy: pct(o.right, o.hidden),
                vehicle_false_positives: o.vehicle_false_positives,
                vehicle_false_positive_rate: pct(o.vehicle_false_positives, o.no_vehicle),
            }),
            failed: self.failed.clone(),
        })
    }

    /// Add another part (another shard of the same bundle and data).
    pub fn merge(&mut self, o: &EvalCounts, name: &str) -> Result<()> {
        if o.format != COUNTS_FORMAT {
            bail!("{name}: format '{}', expected '{COUNTS_FORMAT}'", o.format);
        }
        if o.classes != self.classes {
            bail!(
                "{name}: classes {:?} differ from {:?}",
                o.classes,
                self.classes
            );
        }
        if o.data != self.data {
            bail!(
                "{name}: counts of '{}', the others are of '{}'",
                o.data,
                self.data
            );
        }
        self.confusion
            .merge(&o.confusion)
            .map_err(anyhow::Error::msg)?;
        add_occlusion(&mut self.occlusion, &o.occlusion);
        let mut h = Histogram::from_counts(&self.frame_ns).map_err(anyhow::Error::msg)?;
        h.merge(&Histogram::from_counts(&o.frame_ns).map_err(|e| anyhow::anyhow!("{name}: {e}"))?);
        self.frame_ns = h.to_counts();
        self.frames += o.frames;
        self.recordings.extend(o.recordings.iter().cloned());
        self.failed.extend(o.failed.iter().cloned());
        self.shard = None;
        Ok(())
    }
}

/// `eval merge PART...`: the parts' counts added, then the scores one `eval` prints. Parts must
/// be distinct shards of one split (every I of one N, each once), so nothing counts twice.
pub fn merge_parts(parts: &[PathBuf]) -> Result<EvalCounts> {
    let mut total: Option<EvalCounts> = None;
    let mut seen = std::collections::BTreeSet::new();
    let mut count_of = None;
    for p in parts {
        let name = p.display().to_string();
        let text = std::fs::read_to_string(p).with_context(|| format!("{name}: cannot read"))?;
        let c: EvalCounts = serde_json::from_str(&text)
            .with_context(|| format!("{name}: not eval counts (bevrt-tool eval --partial)"))?;
        if let Some(s) = c.shard
            && (*count_of.get_or_insert(s.count) != s.count || !seen.insert(s.index))
        {
            bail!(
                "{name}: shard {}/{} repeats one or mixes splits",
                s.index,
                s.count
            );
        }
        match &mut total {
            None => total = Some(c),
            Some(t) => t.merge(&c, &name)?,
        }
    }
    let mut t = total.context("eval merge: no parts given")?;
    if let Some(n) = count_of {
        let missing: Vec<usize> = (0..n).filter(|i| !seen.contains(i)).collect();
        if !missing.is_empty() {
            bail!("eval merge: shards {missing:?} of {n} are missing");
        }
    }
    t.shard = None;
    t.recordings.sort();
    Ok(t)
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

pub fn eval_cmd(a: &EvalConfig) -> Result<()> {
    if a.shard.is_some() && a.frames.is_some() {
        bail!("--frames with --shard: a frame limit per shard would not add up to one eval's");
    }
    let counts = count(&a.bundle, &a.data, a.backend, a.frames, a.shard, a.threads)?;
    if let Some(p) = &a.partial {
        let tmp = p.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string(&counts)?)
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        std::fs::rename(&tmp, p).with_context(|| format!("{}: cannot write", p.display()))?;
        eprintln!(
            "{}: {} frames of {} recordings ({} failed) counted",
            p.display(),
            counts.frames,
            counts.recordings.len(),
            counts.failed.len()
        );
        return Ok(());
    }
    report(&counts, a.json, a.record.then_some(a.bundle.as_path()))
}

/// `eval merge PART... [--json]`.
pub fn merge_cmd(parts: &[PathBuf], json: bool) -> Result<()> {
    report(&merge_parts(parts)?, json, None)
}

/// Print the scores (table or JSON), optionally recording them in a bundle.
pub fn report(counts: &EvalCounts, json: bool, record: Option<&Path>) -> Result<()> {
    let s = counts.scores()?;
    if let Some(b) = record {
        record_scores(b, &s)?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_scores(&s);
    }
    Ok(())
}
