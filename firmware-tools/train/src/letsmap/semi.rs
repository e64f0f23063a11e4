//! Fine-tuning that also learns from the unlabelled drives (`finetune --unlabelled DIR`): two
//! terms beside the labelled cross-entropy, each on its own weight.
//!
//! - **Temporal BEV consistency.** Frames i and j = i + gap of one drive, with the recorded
//!   ego-motion between them: every cell of frame i's grid is moved into frame j's grid (a
//!   rigid 2D motion, nearest cell). Where both frames see the cell, frame j's predicted class
//!   distribution (detached) is the soft target of frame i's. j is the later frame, so the
//!   ground ahead of frame i is nearer to the camera in j: the nearer, sharper view teaches the
//!   farther one. Static classes only: a cell either frame gives to a vehicle class (which may
//!   have moved) is weighted by the chance that it is not one.
//! - **Mean teacher.** An exponential moving average of the trained weights predicts frame i
//!   unaugmented; its confident cells are hard targets for the student on a strongly
//!   augmented copy (colour jitter, blur, cut-out; photometric only, so the BEV cells still
//!   align). Confidence thresholds are per class and per batch: the class's median confidence
//!   over the cells predicted as it, capped at `--pseudo-threshold`, so every predicted class
//!   keeps half its cells and cars are not drowned by road. The targets carry the labelled
//!   subset's class weights.
//!
//! Both terms start after LP-FT's probe phase (the teacher is the student then) and ramp up
//! linearly over the next fifth of the steps. [`SemiLog`] keeps each term's loss per step and
//! the pseudo-labels' class histogram, for the recipe and for the test that neither collapses.

use std::path::PathBuf;

use anyhow::{Result, bail};
use bevrt_calib::bev::FLAG_VALID;
use bevrt_calib::{BevGrid, SamplingTable};
use bevrt_models::{ConvLayer, LetsMapLite};
use candle_core::{Device, Tensor, Var};
use serde::Serialize;

use super::data::{Batcher, Dataset};
use super::nn::{self, Params, TableTensors};
use crate::rng::Rng;

/// `finetune`'s settings for the unlabelled drives.
#[derive(Debug, Clone, Serialize)]
pub struct SemiConfig {
    /// Unlabelled recordings with ego poses (`poses.csv`), e.g. the pretraining drives (not
    /// serialised: provenance names the folder, never a machine path).
    #[serde(skip)]
    pub unlabelled: Option<PathBuf>,
    /// Weight of the temporal BEV consistency term (0 = off).
    pub consistency: f64,
    /// Weight of the mean teacher's pseudo-label term (0 = off).
    pub teacher: f64,
    /// The teacher's EMA decay per step.
    pub teacher_ema: f64,
    /// Frames between the two frames of a consistency pair.
    pub pair_gap: usize,
    /// Upper bound of the per-class confidence thresholds of pseudo-labels.
    pub pseudo_threshold: f32,
    /// Distribution alignment (ReMixMatch): scale the teacher's class probabilities by the
    /// labelled cells' class shares over the running mean of its own predictions before
    /// picking pseudo-labels, so a class the teacher over-predicts is not reinforced.
    pub align_classes: bool,
}

impl SemiConfig {
    pub fn check(&self) -> Result<()> {
        let w_ok = |w: f64| w.is_finite() && w >= 0.0;
        if !w_ok(self.consistency) || !w_ok(self.teacher) {
            bail!("--consistency and --teacher must be >= 0");
        }
        if !(0.0..1.0).contains(&self.teacher_ema) {
            bail!("--teacher-ema must be in [0, 1), got {}", self.teacher_ema);
        }
        if self.pair_gap == 0 {
            bail!("--pair-gap must be at least 1");
        }
        if !(self.pseudo_threshold > 0.0 && self.pseudo_threshold <= 1.0) {
            bail!("--pseudo-threshold must be in (0, 1]");
        }
        if self.unlabelled.is_some() && self.consistency == 0.0 && self.teacher == 0.0 {
            bail!("--unlabelled with --consistency 0 and --teacher 0 would not use it");
        }
        Ok(())
    }
}

/// What the unlabelled terms did, per step from their start: the provenance of a bundle and
/// the evidence that each term lowers its own objective without collapsing.
#[derive(Debug, Default, Clone)]
pub struct SemiLog {
    pub consistency_loss: Vec<f32>,
    pub pseudo_loss: Vec<f32>,
    /// Pseudo-labelled cells per class, over the whole run.
    pub pseudo_histogram: Vec<u64>,
    /// Share of the seen cells that got a pseudo-label.
    pub pseudo_coverage: f64,
    /// Share of the seen cells of frame i whose moved position frame j sees too.
    pub pair_overlap: f64,
    seen_cells: u64,
    overlap_cells: u64,
}

/// The fixed parts of a forward pass, shared with the labelled term.
pub struct Model<'r> {
    pub arch: &'r LetsMapLite,
    /// The deployed encoder's layers; the last `unfrozen` of them train.
    pub encoder: &'r [ConvLayer],
    pub unfrozen: usize,
    pub tt: &'r TableTensors,
    /// The labelled subset's class weights.
    pub cw: &'r [f32],
}

impl Model<'_> {
    /// BEV logits (B, K, H, W) of `params` on images `x`, with gradients into the trained
    /// layers.
    pub fn logits(&self, params: &Params, x: &Tensor) -> Result<Tensor> {
        let feat = params.chain_training_last(x, self.encoder, self.unfrozen)?;
        params.chain(&self.tt.apply(&feat)?, &self.arch.head)
    }

    /// Class probabilities (B·K·H·W values) of `params` on `x`, as plain numbers.
    fn probabilities(&self, params: &Params, x: &Tensor) -> Result<Vec<f32>> {
        let bev = self.tt.apply(&params.chain(x, self.encoder)?.detach())?;
        let logits = params.chain(&bev, &self.arch.head)?.detach();
        Ok(candle_nn::ops::softmax(&logits, 1)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}

/// The unlabelled drives and the state of the two terms.
pub struct Unlabelled {
    cfg: SemiConfig,
    ds: Dataset,
    batcher: Batcher,
    /// Frames whose partner `i + gap` is in the same recording.
    anchors: Vec<usize>,
    /// Per grid cell: whether the camera sees its ground point (row-major, H x W).
    seen: Vec<bool>,
    vehicle: Vec<bool>,
    teacher: Option<Params>,
    /// The labelled cells' class shares, and the running mean of the teacher's class
    /// probabilities over seen cells (`--align-classes`).
    label_prior: Vec<f32>,
    teacher_mean: Option<Vec<f32>>,
    rng: Rng,
    pub log: SemiLog,
}

impl Unlabelled {
    /// Loads the drives; refuses recordings without poses (the consistency term needs them)
    /// or of another size than the model's input.
    pub fn load(
        cfg: &SemiConfig,
        arch: &LetsMapLite,
        table: &SamplingTable,
        seed: u64,
    ) -> Result<Option<Unlabelled>> {
        let Some(dir) = &cfg.unlabelled else {
            return Ok(None);
        };
        let ds = super::data::load_with_bar(dir, None)?;
        ds.check_for(arch, false)?;
        let Some(poses) = &ds.poses else {
            bail!(
                "{}: --unlabelled needs recordings with poses.csv (the ego-motion of the consistency term)",
                dir.display()
            );
        };
        debug_assert_eq!(poses.len(), ds.len());
        let anchors: Vec<usize> = (0..ds.len())
            .filter(|&i| {
                let j = i + cfg.pair_gap;
                j < ds.len() && ds.first_of_recording[j] == ds.first_of_recording[i]
            })
            .collect();
        if anchors.is_empty() {
            bail!(
                "{}: no recording is longer than --pair-gap {} frames",
                dir.display(),
                cfg.pair_gap
            );
        }
        let (gh, gw) = arch.bev_hw();
        // level 0 is the ground plane: entry e = row * W + col
        let seen = (0..gh * gw).map(|e| table.flags[e] == FLAG_VALID).collect();
        let vehicle = bevrt_models::letsmap::CLASSES
            .iter()
            .map(|(n, _)| bevrt_models::letsmap::is_vehicle(n))
            .collect();
        let batcher = Batcher::new(arch, &ds);
        Ok(Some(Unlabelled {
            cfg: cfg.clone(),
            batcher,
            anchors,
            seen,
            vehicle,
            teacher: None,
            label_prior: vec![],
            teacher_mean: None,
            rng: Rng(seed ^ 0x0A1A_BE11_ED00),
            log: SemiLog {
                pseudo_histogram: vec![0; arch.num_classes()],
                ..SemiLog::default()
            },
            ds,
        }))
    }

    /// The labelled subset's cells per class: the prior `--align-classes` aligns to.
    pub fn set_label_prior(&mut self, counts: &[u64]) {
        let n = counts.iter().sum::<u64>().max(1) as f32;
        self.label_prior = counts.iter().map(|&c| c as f32 / n).collect();
    }

    /// The teacher starts as a copy of the student (after the probe phase).
    pub fn start_teacher(&mut self, student: &Params) -> Result<()> {
        if self.cfg.teacher > 0.0 {
            self.teacher = Some(copy_params(student)?);
        }
        Ok(())
    }

    /// After an optimizer step: teacher = ema * teacher + (1 - ema) * student, for the
    /// trained parameters (the frozen ones are equal already).
    pub fn update_teacher(&self, trained: &[(String, Var)]) -> Result<()> {
        let Some(t) = &self.teacher else {
            return Ok(());
        };
        let a = self.cfg.teacher_ema;
        for (name, s) in trained {
            let tv = &t.vars[name];
            let mixed = ((tv.as_tensor().detach() * a)? + (s.as_tensor().detach() * (1.0 - a))?)?;
            tv.set(&mixed)?;
        }
        Ok(())
    }

    /// The weighted sum of the unlabelled terms on one batch of `batch` pairs, times `ramp`.
    pub fn loss(
        &mut self,
        model: &Model,
        student: &Params,
        batch: usize,
        ramp: f64,
    ) -> Result<Tensor> {
        let picks: Vec<usize> = (0..batch)
            .map(|_| self.anchors[self.rng.below(self.anchors.len())])
            .collect();
        let (w, h) = (self.ds.width, self.ds.height);
        let use_teacher = self.teacher.is_some();
        // the student sees frame i strongly augmented when there is a teacher to match
        let student_in = if use_teacher {
            let views: Vec<Vec<u8>> = picks
                .iter()
                .map(|&i| strong_view(&self.ds.frames[i], w as usize, h as usize, &mut self.rng))
                .collect();
            self.batcher.raw_images(&views, w, h)?
        } else {
            self.batcher.images(&self.ds, &picks)?
        };
        let logits = model.logits(student, &student_in)?;
        let logp = candle_nn::ops::log_softmax(&logits, 1)?;
        let mut total = None::<Tensor>;
        let mut add = |t: Tensor| -> Result<()> {
            total = Some(match total.take() {
                None => t,
                Some(s) => (s + t)?,
            });
            Ok(())
        };
        if self.cfg.consistency > 0.0 {
            let l = self.consistency(model, student, &picks, &logp)?;
            self.log.consistency_loss.push(crate::optim::scalar(&l)?);
            add((l * (self.cfg.consistency * ramp))?)?;
        }
        if let Some(teacher) = &self.teacher {
            let plain = self.batcher.images(&self.ds, &picks)?;
            let mut probs = model.probabilities(teacher, &plain)?;
            if self.cfg.align_classes {
                self.align(&mut probs, picks.len(), model);
            }
            let (t, cw) = self.pseudo_labels(&probs, picks.len(), model)?;
            let l = nn::weighted_ce(&logits, &t, &cw)?;
            self.log.pseudo_loss.push(crate::optim::scalar(&l)?);
            add((l * (self.cfg.teacher * ramp))?)?;
        }
        Ok(total.expect("at least one term is on (checked)"))
    }

    /// Soft cross-entropy of frame i's log-probabilities `logp` against frame j's moved
    /// class distribution, over the cells both see, weighted by P(not a vehicle) in each.
    fn consistency(
        &mut self,
        model: &Model,
        student: &Params,
        picks: &[usize],
        logp: &Tensor,
    ) -> Result<Tensor> {
        let partners: Vec<usize> = picks.iter().map(|&i| i + self.cfg.pair_gap).collect();
        let xj = self.batcher.images(&self.ds, &partners)?;
        let qj = model.probabilities(student, &xj)?;
        let pi = logp.detach().exp()?.flatten_all()?.to_vec1::<f32>()?;
        let (b, k, gh, gw) = logp.dims4()?;
        let plane = gh * gw;
        let poses = self.ds.poses.as_ref().expect("checked at load");
        let grid = &model.arch.grid;
        let mut target = vec![0f32; b * k * plane];
        let mut weight_sum = 0f64;
        for (s, (&i, &j)) in picks.iter().zip(&partners).enumerate() {
            let (fwd, left, dyaw) = poses[i].motion_to(&poses[j]);
            for r in 0..gh {
                for c in 0..gw {
                    let e = r * gw + c;
                    if !self.seen[e] {
                        continue;
                    }
                    self.log.seen_cells += 1;
                    let Some((rj, cj)) = moved_cell(grid, (fwd, left, dyaw), r, c) else {
                        continue;
                    };
                    let ej = rj * gw + cj;
                    if !self.seen[ej] {
                        continue;
                    }
                    self.log.overlap_cells += 1;
                    let at = |p: &[f32], cell: usize, cls: usize| p[(s * k + cls) * plane + cell];
                    let veh = |p: &[f32], cell: usize| -> f32 {
                        (0..k)
                            .filter(|&q| self.vehicle[q])
                            .map(|q| at(p, cell, q))
                            .sum()
                    };
                    let wgt = (1.0 - veh(&qj, ej)) * (1.0 - veh(&pi, e));
                    for q in 0..k {
                        target[(s * k + q) * plane + e] = wgt * at(&qj, ej, q);
                    }
                    weight_sum += wgt as f64;
                }
            }
        }
        self.log.pair_overlap = self.log.overlap_cells as f64 / self.log.seen_cells.max(1) as f64;
        let target = Tensor::from_vec(target, (b, k, gh, gw), &Device::Cpu)?;
        Ok(((logp * target)?.sum_all()?.neg()? / weight_sum.max(1e-6))?)
    }

    /// Distribution alignment of the teacher's probabilities (B·K·H·W), in place: each cell's
    /// `p_c * prior_c / mean_c`, renormalised; `mean` is the running (0.99) mean over seen cells.
    fn align(&mut self, probs: &mut [f32], b: usize, model: &Model) {
        let k = model.arch.num_classes();
        let plane = probs.len() / (b * k);
        let mut batch = vec![0f64; k];
        let mut n = 0f64;
        for s in 0..b {
            for e in (0..plane).filter(|&e| self.seen[e]) {
                for (q, m) in batch.iter_mut().enumerate() {
                    *m += probs[(s * k + q) * plane + e] as f64;
                }
                n += 1.0;
            }
        }
        let batch: Vec<f32> = batch.iter().map(|m| (m / n.max(1.0)) as f32).collect();
        let mean = match self.teacher_mean.take() {
            None => batch,
            Some(m) => m
                .iter()
                .zip(&batch)
                .map(|(m, x)| 0.99 * m + 0.01 * x)
                .collect(),
        };
        let scale: Vec<f32> = (0..k)
            .map(|q| self.label_prior.get(q).copied().unwrap_or(0.0) / mean[q].max(1e-6))
            .collect();
        self.teacher_mean = Some(mean);
        for s in 0..b {
            for e in 0..plane {
                let at = |q: usize| (s * k + q) * plane + e;
                let total: f32 = (0..k).map(|q| probs[at(q)] * scale[q]).sum();
                for q in 0..k {
                    probs[at(q)] = probs[at(q)] * scale[q] / total.max(1e-12);
                }
            }
        }
    }

    /// Hard targets (B,1,H,W) and cell weights from the teacher's probabilities: a seen cell
    /// whose top class reaches that class's threshold gets it, with the class weight.
    fn pseudo_labels(
        &mut self,
        probs: &[f32],
        b: usize,
        model: &Model,
    ) -> Result<(Tensor, Tensor)> {
        let k = model.arch.num_classes();
        let (gh, gw) = model.arch.bev_hw();
        let plane = gh * gw;
        let mut top = Vec::with_capacity(b * plane);
        let mut conf_of: Vec<Vec<f32>> = vec![vec![]; k];
        for s in 0..b {
            for e in 0..plane {
                let (mut best, mut p) = (0usize, f32::MIN);
                for q in 0..k {
                    let v = probs[(s * k + q) * plane + e];
                    if v > p {
                        (best, p) = (q, v);
                    }
                }
                top.push((best, p));
                if self.seen[e] {
                    conf_of[best].push(p);
                }
            }
        }
        let thresholds: Vec<f32> = conf_of
            .iter_mut()
            .map(|v| {
                if v.is_empty() {
                    return f32::INFINITY;
                }
                let mid = v.len() / 2;
                let median = *v.select_nth_unstable_by(mid, |a, b| a.total_cmp(b)).1;
                median.min(self.cfg.pseudo_threshold)
            })
            .collect();
        let mut t = vec![0u32; b * plane];
        let mut w = vec![0f32; b * plane];
        let (mut labelled, mut seen) = (0u64, 0u64);
        for (n, &(cls, p)) in top.iter().enumerate() {
            if !self.seen[n % plane] {
                continue;
            }
            seen += 1;
            if p >= thresholds[cls] && model.cw[cls] > 0.0 {
                t[n] = cls as u32;
                w[n] = model.cw[cls];
                self.log.pseudo_histogram[cls] += 1;
                labelled += 1;
            }
        }
        let steps = self.log.pseudo_loss.len() as f64;
        let coverage = labelled as f64 / seen.max(1) as f64;
        self.log.pseudo_coverage = (self.log.pseudo_coverage * steps + coverage) / (steps + 1.0);
        Ok((
            Tensor::from_vec(t, (b, 1, gh, gw), &Device::Cpu)?,
            Tensor::from_vec(w, (b, 1, gh, gw), &Device::Cpu)?,
        ))
    }
}

/// Where the ground under cell (r, c) of frame i's grid lies in frame j's grid, given frame
/// j's pose in frame i (`motion`: forward and left metres, yaw radians): the nearest cell,
/// or `None` outside the grid.
fn moved_cell(
    grid: &BevGrid,
    motion: (f64, f64, f64),
    r: usize,
    c: usize,
) -> Option<(usize, usize)> {
    let (fwd, left, dyaw) = motion;
    let (sn, cs) = dyaw.sin_cos();
    let (x, y) = grid.cell_center(r, c);
    let (dx, dy) = (x - fwd, y - left);
    let (xj, yj) = (cs * dx + sn * dy, -sn * dx + cs * dy);
    let rj = (grid.x_max as f64 - xj) / grid.cell as f64;
    let cj = (grid.y_max as f64 - yj) / grid.cell as f64;
    let inside = rj >= 0.0 && cj >= 0.0 && rj < grid.height() as f64 && cj < grid.width() as f64;
    inside.then_some((rj as usize, cj as usize))
}

/// A detached copy of every parameter (the teacher's starting weights).
fn copy_params(p: &Params) -> Result<Params> {
    let mut vars = std::collections::BTreeMap::new();
    for (n, v) in &p.vars {
        vars.insert(
            n.clone(),
            Var::from_tensor(&v.as_tensor().detach().copy()?)?,
        );
    }
    Ok(Params { vars })
}

/// A strongly augmented copy of an RGB8 frame (w x h): brightness, contrast and saturation
/// jitter, a 3x3 box blur half the time, and one or two grey cut-out rectangles. Photometric
/// only: every pixel stays where it was, so the BEV targets still align.
pub fn strong_view(src: &[u8], w: usize, h: usize, rng: &mut Rng) -> Vec<u8> {
    let jitter = |rng: &mut Rng, r: f32| 1.0 + (rng.uniform() * 2.0 - 1.0) * r;
    let (bright, contrast, sat) = (jitter(rng, 0.4), jitter(rng, 0.4), jitter(rng, 0.5));
    let mean = src.iter().map(|&v| v as f32).sum::<f32>() / src.len().max(1) as f32;
    let mut img: Vec<f32> = src
        .chunks_exact(3)
        .flat_map(|px| {
            let g = 0.299 * px[0] as f32 + 0.587 * px[1] as f32 + 0.114 * px[2] as f32;
            let mut o = [0f32; 3];
            for (oc, &v) in o.iter_mut().zip(px) {
                let s = g + (v as f32 - g) * sat;
                *oc = ((s - mean) * contrast + mean) * bright;
            }
            o
        })
        .collect();
    if rng.uniform() < 0.5 {
        img = box_blur3(&img, w, h);
    }
    for _ in 0..1 + rng.below(2) {
        let (cw, ch) = (
            ((0.1 + 0.2 * rng.uniform()) * w as f32) as usize,
            ((0.15 + 0.25 * rng.uniform()) * h as f32) as usize,
        );
        let (x0, y0) = (rng.below(w - cw.min(w - 1)), rng.below(h - ch.min(h - 1)));
        for y in y0..(y0 + ch).min(h) {
            for x in x0..(x0 + cw).min(w) {
                img[(y * w + x) * 3..(y * w + x) * 3 + 3].fill(128.0);
            }
        }
    }
    img.iter()
        .map(|&v| v.round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// 3x3 mean of an interleaved RGB f32 image, edges replicated.
fn box_blur3(img: &[f32], w: usize, h: usize) -> Vec<f32> {
    let mut out = vec![0f32; img.len()];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..3 {
                let mut s = 0f32;
                for dy in [-1isize, 0, 1] {
                    for dx in [-1isize, 0, 1] {
                        let yy = (y as isize + dy).clamp(0, h as isize - 1) as usize;
                        let xx = (x as isize + dx).clamp(0, w as isize - 1) as usize;
                        s += img[(yy * w + xx) * 3 + ch];
                    }
                }
                out[(y * w + x) * 3 + ch] = s / 9.0;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_move_against_the_ego_motion() {
        let grid = LetsMapLite::default().grid; // 0.5 m cells, x 0..40, y -20..20
        // 1 m forward: the ground ahead is 1 m nearer, two rows further down the map
        assert_eq!(moved_cell(&grid, (1.0, 0.0, 0.0), 10, 40), Some((12, 40)));
        // 1 m to the left: the ground moves right, two columns
        assert_eq!(moved_cell(&grid, (0.0, 1.0, 0.0), 10, 40), Some((10, 42)));
        // nearest row leaves the grid behind the vehicle
        assert_eq!(moved_cell(&grid, (1.0, 0.0, 0.0), 79, 40), None);
        // turned 90 degrees left: a point 10 m ahead is now 10 m to the right
        let (r, c) = moved_cell(&grid, (0.0, 0.0, std::f64::consts::FRAC_PI_2), 59, 39).unwrap();
        let (x, y) = grid.cell_center(r, c);
        assert!(x.abs() < 0.6 && (y + 10.0).abs() < 0.6, "({x}, {y})");
    }

    #[test]
    fn strong_view_changes_pixels_not_size_and_is_seeded() {
        let (w, h) = (64, 32);
        let src: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let a = strong_view(&src, w, h, &mut Rng(5));
        let b = strong_view(&src, w, h, &mut Rng(5));
        let c = strong_view(&src, w, h, &mut Rng(6));
        assert_eq!(a.len(), src.len());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, src);
        // a cut-out: at least 10 % x 15 % of the frame is flat grey
        assert!(a.iter().filter(|&&v| v == 128).count() >= w * h * 3 / 70);
    }
}
