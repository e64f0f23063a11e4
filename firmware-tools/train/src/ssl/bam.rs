//! BAM: Balanced-Attention Matching (Shalam & Korman, ECCV 2024).
//!
//! For a batch of `B` images in `V` augmented views, `z` holds the `N = V·B` L2-normalised
//! projections, view-major (row `v·B + i` is view `v` of image `i`). With `S = z zᵀ`:
//! - the *source* attention of each row is `A = softmax(S / τ)` over the other images' views
//!   (every view of the row's own image, itself included, is masked out);
//! - the *target* is the self optimal-transport plan of the same similarities:
//!   `P = Sinkhorn(exp(S / ε))` with the same mask, a few iterations alternating column sums
//!   (every view equally attended) and row sums, then rows normalised; no gradient;
//! - the loss matches each view's attention to the target of every *other* view of the same
//!   image: `L = mean over (t ≠ s) of CE(P_t(i), A_s(i))`.
//!
//! The balanced target keeps attention spread over the batch (no collapse without negatives
//! or an asymmetric branch), and matching across views makes the relation to other images
//! invariant to augmentation. Defaults from the paper: τ 0.1, ε 0.05, 3 iterations.

use anyhow::Result;
use candle_core::{Device, Tensor};

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct BamConfig {
    pub tau: f32,
    pub eps: f32,
    pub sinkhorn_iters: usize,
}

impl Default for BamConfig {
    fn default() -> Self {
        BamConfig {
            tau: 0.1,
            eps: 0.05,
            sinkhorn_iters: 3,
        }
    }
}

/// Logit added to masked entries: `exp` of it is 0 in f32, and it stays finite, so the
/// zero target weights there multiply it to exactly 0.
const MASKED: f32 = -1e4;

/// The Sinkhorn target for similarities `s` (n × n, row-major), row `r` belonging to image
/// `r % b`: entries of the same image are 0, every row sums to 1.
pub fn sinkhorn_target(s: &[f32], n: usize, b: usize, eps: f32, iters: usize) -> Vec<f32> {
    let same = |r: usize, c: usize| r % b == c % b;
    let max = s.iter().copied().fold(f32::MIN, f32::max);
    let mut p: Vec<f64> = (0..n * n)
        .map(|k| {
            if same(k / n, k % n) {
                0.0
            } else {
                (((s[k] - max) / eps) as f64).exp()
            }
        })
        .collect();
    let total: f64 = p.iter().sum();
    p.iter_mut()
        .for_each(|v| *v /= total.max(f64::MIN_POSITIVE));
    let mut col = vec![0f64; n];
    for _ in 0..iters {
        // Columns: each view is attended equally in total.
        col.iter_mut().for_each(|c| *c = 0.0);
        for r in 0..n {
            for c in 0..n {
                col[c] += p[r * n + c];
            }
        }
        for r in 0..n {
            for c in 0..n {
                p[r * n + c] *= 1.0 / (n as f64 * col[c].max(f64::MIN_POSITIVE));
            }
        }
        // Rows: each view attends with the same total mass.
        for r in 0..n {
            let row = &mut p[r * n..(r + 1) * n];
            let sum: f64 = row.iter().sum();
            row.iter_mut()
                .for_each(|v| *v *= 1.0 / (n as f64 * sum.max(f64::MIN_POSITIVE)));
        }
    }
    let mut out = vec![0f32; n * n];
    for r in 0..n {
        let row = &p[r * n..(r + 1) * n];
        let sum: f64 = row.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        for c in 0..n {
            out[r * n + c] = (row[c] / sum) as f32;
        }
    }
    out
}

/// The BAM loss of `z` (`views·batch` × d, L2-normalised, view-major).
pub fn loss(z: &Tensor, views: usize, batch: usize, cfg: &BamConfig) -> Result<Tensor> {
    let n = views * batch;
    let s = z.matmul(&z.t()?)?;
    let s_host: Vec<f32> = s.detach().flatten_all()?.to_vec1()?;
    let p = sinkhorn_target(&s_host, n, batch, cfg.eps, cfg.sinkhorn_iters);
    let mask: Vec<f32> = (0..n * n)
        .map(|k| {
            if (k / n) % batch == (k % n) % batch {
                MASKED
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (n, n), &Device::Cpu)?;
    let log_a = candle_nn::ops::log_softmax(&((s / cfg.tau as f64)? + mask)?, 1)?;
    // Target for row (s, i): the target row (t, i) of every other view t, averaged; the
    // cross-entropy is linear in the target, so the average is the mean over pairs.
    let mut tgt = vec![0f32; n * n];
    if views > 1 {
        let w = 1.0 / (views - 1) as f32;
        for sv in 0..views {
            for tv in (0..views).filter(|&t| t != sv) {
                for i in 0..batch {
                    let (dst, src) = ((sv * batch + i) * n, (tv * batch + i) * n);
                    for c in 0..n {
                        tgt[dst + c] += w * p[src + c];
                    }
                }
            }
        }
    } else {
        tgt.copy_from_slice(&p);
    }
    let tgt = Tensor::from_vec(tgt, (n, n), &Device::Cpu)?;
    Ok(((tgt * log_a)?.sum_all()? * (-1.0 / n as f64))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_rows_sum_to_one_and_skip_the_same_image() {
        let (b, v) = (5, 2);
        let n = b * v;
        let s: Vec<f32> = (0..n * n)
            .map(|k| ((k * 37 % 17) as f32 / 17.0) - 0.5)
            .collect();
        let p = sinkhorn_target(&s, n, b, 0.05, 3);
        for r in 0..n {
            let sum: f32 = p[r * n..(r + 1) * n].iter().sum();
            assert!((sum - 1.0).abs() < 1e-5);
            for c in 0..n {
                if r % b == c % b {
                    assert_eq!(p[r * n + c], 0.0);
                }
            }
        }
        // Iterated to convergence the plan is balanced: every column sums to 1 as well
        // (n rows of mass 1 over n columns), which 3 iterations only approach.
        let p = sinkhorn_target(&s, n, b, 0.05, 200);
        for c in 0..n {
            let col: f32 = (0..n).map(|r| p[r * n + c]).sum();
            assert!((col - 1.0).abs() < 1e-2, "column {c} sums to {col}");
        }
    }

    #[test]
    fn loss_is_lower_when_views_agree_on_their_neighbours() {
        // Two views of 4 images; in `agree` each view of an image points the same way.
        let dirs = [[1.0f32, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]];
        let mk = |jitter: &dyn Fn(usize) -> f32| -> Tensor {
            let mut v = vec![];
            for view in 0..2 {
                for (i, d) in dirs.iter().enumerate() {
                    let a = (d[1].atan2(d[0])) + if view == 1 { jitter(i) } else { 0.0 };
                    v.extend([a.cos(), a.sin()]);
                }
            }
            Tensor::from_vec(v, (8, 2), &Device::Cpu).unwrap()
        };
        let cfg = BamConfig::default();
        let agree = loss(&mk(&|_| 0.05), 2, 4, &cfg)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let swap = loss(&mk(&|i| if i % 2 == 0 { 1.5 } else { -1.5 }), 2, 4, &cfg)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(agree.is_finite() && swap.is_finite());
        assert!(agree < swap, "agree {agree} swap {swap}");
    }
}
