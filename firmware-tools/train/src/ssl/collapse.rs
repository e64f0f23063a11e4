//! Anti-collapse evidence: is the representation still spread over many directions?
//!
//! - per-dimension standard deviation over a fixed set of images (a dimension that no longer
//!   varies carries nothing);
//! - effective rank (Roy & Vetterli 2007): `exp(H(p))` with `p` the singular values of the
//!   centred embedding matrix divided by their sum. 1 when every image maps onto one line
//!   (complete collapse), the width when all directions carry equal variance.
//!
//! Every epoch logs both; a run whose effective rank falls below a floor stops with an error
//! instead of writing a bundle.

use anyhow::Result;
use nalgebra::{DMatrix, SymmetricEigen};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    pub effective_rank: f32,
    /// Median over dimensions of the per-dimension std, relative to the mean row norm.
    pub median_std: f32,
    /// Dimensions whose std is below 1e-3 of the mean row norm.
    pub dead_dims: usize,
}

/// The spread of `rows` (`n × dim`, row-major).
pub fn spread(rows: &[f32], dim: usize) -> Result<Spread> {
    let n = rows.len() / dim;
    anyhow::ensure!(
        n >= 2 && rows.len() == n * dim,
        "need at least two rows of {dim}"
    );
    let mut mean = vec![0f64; dim];
    for r in rows.chunks(dim) {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += v as f64 / n as f64;
        }
    }
    let norm = rows
        .chunks(dim)
        .map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt())
        .sum::<f64>()
        / n as f64;
    let mut cov = DMatrix::<f64>::zeros(dim, dim);
    let mut centred = vec![0f64; dim];
    for r in rows.chunks(dim) {
        for (c, (&v, m)) in centred.iter_mut().zip(r.iter().zip(&mean)) {
            *c = v as f64 - m;
        }
        for a in 0..dim {
            let ca = centred[a];
            for b in a..dim {
                cov[(a, b)] += ca * centred[b];
            }
        }
    }
    for a in 0..dim {
        for b in 0..a {
            cov[(a, b)] = cov[(b, a)];
        }
    }
    cov /= (n - 1) as f64;
    let mut stds: Vec<f64> = (0..dim).map(|d| cov[(d, d)].max(0.0).sqrt()).collect();
    let sv: Vec<f64> = SymmetricEigen::new(cov)
        .eigenvalues
        .iter()
        .map(|&l| l.max(0.0).sqrt())
        .collect();
    let total: f64 = sv.iter().sum();
    let entropy: f64 = if total > 0.0 {
        sv.iter()
            .filter(|&&s| s > 0.0)
            .map(|&s| {
                let p = s / total;
                -p * p.ln()
            })
            .sum()
    } else {
        0.0
    };
    let scale = norm.max(1e-30);
    let dead = stds.iter().filter(|&&s| s < 1e-3 * scale).count();
    stds.sort_by(|a, b| a.total_cmp(b));
    Ok(Spread {
        effective_rank: entropy.exp() as f32,
        median_std: (stds[dim / 2] / scale) as f32,
        dead_dims: dead,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Rng, normal};

    #[test]
    fn collapsed_embeddings_have_rank_one_and_spread_ones_a_high_rank() {
        let dim = 16;
        let mut r = Rng(1);
        let spread_rows = normal(500 * dim, &mut r);
        let s = spread(&spread_rows, dim).unwrap();
        assert!(s.effective_rank > 12.0, "{s:?}");
        assert_eq!(s.dead_dims, 0);
        // Every row a multiple of one direction.
        let dir = normal(dim, &mut r);
        let line: Vec<f32> = (0..500)
            .flat_map(|i| dir.iter().map(move |&d| d * (1.0 + i as f32 * 1e-3)))
            .collect();
        let c = spread(&line, dim).unwrap();
        assert!(c.effective_rank < 1.2, "{c:?}");
        // Identical rows: no variance at all.
        let same: Vec<f32> = (0..100).flat_map(|_| dir.clone()).collect();
        let d = spread(&same, dim).unwrap();
        assert_eq!(d.dead_dims, dim);
    }
}
