//! Invariance Propagation (Wang, Liu, Guo, Sun, NeurIPS 2020).
//!
//! A memory bank keeps one L2-normalised projection per training image (momentum 0.5). Each
//! step, the augmented views `z` of a batch are compared with the whole bank (`s = z·mⱼ / τ`):
//! - instance loss: `L_ins = −log softmax(s)ᵢ`, the view against its own image's bank entry;
//! - propagation: the bank's k-NN graph (k 4, rebuilt every epoch) is walked breadth-first
//!   from image `i` for 3 steps; of the images reached, the `P` (20) *least* similar to the
//!   view are its hard positives, and `L_inv = −log Σ_{p∈hard} exp(s_p) / Σ_{j≠i} exp(s_j)`
//!   pulls them in as a group;
//! - `L = L_ins + λ·L_inv` (λ 0.6), the second term only after a warm-up (the graph of a
//!   random bank is noise).
//!
//! The background is the whole bank (the paper keeps the 4096 nearest; our training sets are
//! that size or smaller). Two views per image per step, the bank updated with their mean.

use anyhow::{Result, bail};
use candle_core::{D, Device, Tensor};

use crate::rng::{Rng, normal};

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct InvPropConfig {
    pub tau: f32,
    /// Neighbours per node of the k-NN graph.
    pub k: usize,
    /// Breadth-first steps on the graph.
    pub depth: usize,
    /// Hard positives kept (the least similar of those reached).
    pub hard: usize,
    /// Weight of the propagation loss.
    pub lambda: f32,
    /// Fraction of the epochs before the propagation loss is switched on.
    pub warmup: f32,
    /// Bank momentum: `m ← normalise(momentum·m + (1 − momentum)·z)`.
    pub momentum: f32,
}

impl Default for InvPropConfig {
    fn default() -> Self {
        InvPropConfig {
            tau: 0.1,
            k: 4,
            depth: 3,
            hard: 20,
            lambda: 0.6,
            warmup: 0.3,
            momentum: 0.5,
        }
    }
}

/// The memory bank and its k-NN graph.
pub struct Bank {
    pub dim: usize,
    /// `n × dim`, rows L2-normalised.
    pub m: Vec<f32>,
    /// `n × k` neighbour indices (most similar first), empty until [`Bank::rebuild_graph`].
    graph: Vec<u32>,
    k: usize,
}

impl Bank {
    /// Random unit vectors (InstDisc's start).
    pub fn new(n: usize, dim: usize, seed: u64) -> Bank {
        let mut m = normal(n * dim, &mut Rng(seed ^ 0xba4c));
        for row in m.chunks_mut(dim) {
            normalise(row);
        }
        Bank {
            dim,
            m,
            graph: vec![],
            k: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.m.len() / self.dim
    }
    pub fn is_empty(&self) -> bool {
        self.m.is_empty()
    }

    pub fn tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.m,
            (self.len(), self.dim),
            &Device::Cpu,
        )?)
    }

    /// Restore from a checkpoint's values.
    pub fn load(&mut self, m: Vec<f32>) -> Result<()> {
        if m.len() != self.m.len() {
            bail!(
                "bank has {} values, the checkpoint {}",
                self.m.len(),
                m.len()
            );
        }
        self.m = m;
        self.graph.clear();
        Ok(())
    }

    /// Each entry's `k` most similar other entries (cosine), by blocks of rows.
    pub fn rebuild_graph(&mut self, k: usize) -> Result<()> {
        let n = self.len();
        let k = k.min(n.saturating_sub(1));
        let all = self.tensor()?;
        self.graph = Vec::with_capacity(n * k);
        self.k = k;
        for start in (0..n).step_by(512) {
            let rows = (n - start).min(512);
            let sims: Vec<f32> = all
                .narrow(0, start, rows)?
                .matmul(&all.t()?)?
                .flatten_all()?
                .to_vec1()?;
            for r in 0..rows {
                let row = &sims[r * n..(r + 1) * n];
                let mut cand: Vec<(f32, u32)> = row
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != start + r)
                    .map(|(j, &s)| (s, j as u32))
                    .collect();
                if k > 0 {
                    cand.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
                }
                let mut top: Vec<(f32, u32)> = cand[..k].to_vec();
                top.sort_by(|a, b| b.0.total_cmp(&a.0));
                self.graph.extend(top.iter().map(|t| t.1));
            }
        }
        Ok(())
    }

    /// Images reached from `i` in `depth` breadth-first steps (without `i`).
    pub fn propagate(&self, i: usize, depth: usize) -> Vec<usize> {
        let mut seen = vec![i];
        let mut frontier = vec![i];
        for _ in 0..depth {
            let mut next = vec![];
            for &f in &frontier {
                for &nb in &self.graph[f * self.k..(f + 1) * self.k] {
                    let nb = nb as usize;
                    if !seen.contains(&nb) {
                        seen.push(nb);
                        next.push(nb);
                    }
                }
            }
            frontier = next;
        }
        seen.remove(0);
        seen
    }

    /// `m_i ← normalise(momentum·m_i + (1 − momentum)·z̄_i)`, with `z̄_i` the mean of image
    /// `idx[i]`'s views in `z` (`views·idx.len()` rows, view-major).
    pub fn update(&mut self, idx: &[usize], z: &Tensor, views: usize, momentum: f32) -> Result<()> {
        let d = self.dim;
        let b = idx.len();
        let zs: Vec<f32> = z.detach().flatten_all()?.to_vec1()?;
        if zs.len() != views * b * d {
            bail!(
                "bank update: {} values for {views} views of {b} images of {d}",
                zs.len()
            );
        }
        for (r, &i) in idx.iter().enumerate() {
            let row = &mut self.m[i * d..(i + 1) * d];
            for (k, m) in row.iter_mut().enumerate() {
                let mean = (0..views).map(|v| zs[(v * b + r) * d + k]).sum::<f32>() / views as f32;
                *m = momentum * *m + (1.0 - momentum) * mean;
            }
            normalise(row);
        }
        Ok(())
    }

    pub fn has_graph(&self) -> bool {
        !self.graph.is_empty()
    }
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// Logit for excluded entries: finite, and `exp` of it is 0 in f32.
const MASKED: f32 = -1e4;

/// The loss of views `z` (`views·batch` × dim, normalised, view-major) of images `idx`;
/// `propagate`: include `L_inv` (the graph must be built).
pub fn loss(
    z: &Tensor,
    idx: &[usize],
    bank: &Bank,
    cfg: &InvPropConfig,
    propagate: bool,
) -> Result<(Tensor, f32)> {
    let b = idx.len();
    let rows = z.dim(0)?;
    let n = bank.len();
    let logits = (z.matmul(&bank.tensor()?.t()?)? / cfg.tau as f64)?;
    let own: Vec<u32> = (0..rows).map(|r| idx[r % b] as u32).collect();
    let own = Tensor::from_vec(own, rows, &Device::Cpu)?;
    let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let l_ins = log_p.gather(&own.unsqueeze(1)?, 1)?.mean_all()?.neg()?;
    if !propagate {
        let v = l_ins.to_scalar::<f32>()?;
        return Ok((l_ins, v));
    }
    // Hard positives of each row, from the graph and the current similarities.
    let sims: Vec<f32> = logits.detach().flatten_all()?.to_vec1()?;
    let mut not_self = vec![0f32; rows * n];
    let mut hard = vec![0f32; rows * n];
    for r in 0..rows {
        let i = idx[r % b];
        not_self[r * n + i] = MASKED;
        let mut reached: Vec<(f32, usize)> = bank
            .propagate(i, cfg.depth)
            .into_iter()
            .map(|j| (sims[r * n + j], j))
            .collect();
        reached.sort_by(|a, b| a.0.total_cmp(&b.0));
        for &(_, j) in reached.iter().take(cfg.hard) {
            hard[r * n + j] = 1.0;
        }
    }
    let not_self = Tensor::from_vec(not_self, (rows, n), &Device::Cpu)?;
    let hard = Tensor::from_vec(hard, (rows, n), &Device::Cpu)?;
    let p = candle_nn::ops::softmax_last_dim(&(logits + not_self)?)?;
    let l_inv = (p * hard)?
        .sum(1)?
        .clamp(1e-30, f32::MAX)?
        .log()?
        .mean_all()?
        .neg()?;
    let total = (l_ins + (l_inv * cfg.lambda as f64)?)?;
    let v = total.to_scalar::<f32>()?;
    Ok((total, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagation_walks_the_graph() {
        // Points on a circle: neighbours are adjacent indices.
        let n = 40;
        let mut bank = Bank::new(n, 2, 1);
        bank.m = (0..n)
            .flat_map(|i| {
                let a = i as f32 / n as f32 * std::f32::consts::TAU;
                [a.cos(), a.sin()]
            })
            .collect();
        bank.rebuild_graph(2).unwrap();
        let mut reached = bank.propagate(10, 3);
        reached.sort();
        assert_eq!(reached, vec![7, 8, 9, 11, 12, 13]);
    }

    #[test]
    fn loss_prefers_views_near_their_own_entry() {
        let n = 16;
        let bank = Bank::new(n, 8, 2);
        let idx = [3usize, 5];
        let own: Vec<f32> = idx
            .iter()
            .flat_map(|&i| bank.m[i * 8..(i + 1) * 8].to_vec())
            .collect();
        let near = Tensor::from_vec(own, (2, 8), &Device::Cpu).unwrap();
        let far = Tensor::from_vec(bank.m[8 * 8..10 * 8].to_vec(), (2, 8), &Device::Cpu).unwrap();
        let cfg = InvPropConfig::default();
        let (_, a) = loss(&near, &idx, &bank, &cfg, false).unwrap();
        let (_, b) = loss(&far, &idx, &bank, &cfg, false).unwrap();
        assert!(a < b, "{a} {b}");
    }
}
