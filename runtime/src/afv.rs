//! Adversarial Fisher Vectors on the runtime path: the per-example score
//! `U_x = ∂D(x)/∂θ` of a discriminator's last two layers, computed analytically from the
//! forward activations (no autograd at run time), and the Fisher normalisation
//! `V_x = (U_x − μ) / √(diag I + ε)` with optional power and L2 normalisation.
//!
//! This is the CPU reference of the Fisher op (the CUDA kernel joins the kernels crate with
//! the CUDA backend work); `bevrt-tools` tests it against candle's autograd.
//!
//! The discriminator's tail, in the bundle's contract: `a1` (C1×H1×W1, after the first
//! LeakyReLU) → conv2 (weights C2×C1×k×k, stride s, pad p, bias) → `z2` (C2×H2×W2) →
//! LeakyReLU(slope) → flatten → linear (weights `w3`, C2·H2·W2) → D. θ = (w3, conv2 weights,
//! conv2 bias), all effective (already spectrally normalised) weights. The linear bias's
//! gradient is the constant 1 and is left out.
//!
//! Spatial regions (`regions` R > 1): conv2's weights and bias are untied over the cells of an
//! R×R grid on its output (cell of row y: `y·R / H2`, same for columns), all copies equal to
//! the trained values, so D(x) is unchanged and the score is the gradient for each copy: the
//! conv2 gradient summed over one cell's positions instead of all of them. This is the
//! spatial pyramid of Fisher-vector practice (Perronnin et al. 2010): a digit's strokes in
//! the top-left and bottom-right no longer add into one number.
//!
//! `U` layout: `[∂/∂w3 (= a2), ∂/∂W2 per cell (R²·C2·C1·k·k: cell-major, each row-major),
//! ∂/∂b2 per cell (R²·C2)]`; R = 1 is `[a2, ∂/∂W2, ∂/∂b2]`.

/// Shapes of the discriminator tail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AfvGeometry {
    pub c1: usize,
    pub h1: usize,
    pub w1: usize,
    pub c2: usize,
    pub h2: usize,
    pub w2: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub slope: f32,
    /// Cells per side of the spatial grid (1..=[`MAX_REGIONS`], at most H2 and W2).
    pub regions: usize,
}

/// Largest spatial grid side the op accepts (R² copies of conv2's gradient: at 4, 16 of them).
pub const MAX_REGIONS: usize = 4;

impl AfvGeometry {
    /// A tail whose conv2 has kernel 4, stride 2 and padding 1 (the bevrt GAN's):
    /// `a1` C1×H1×W1 → `z2` C2×(H1/2)×(W1/2).
    pub fn k4s2(
        c1: usize,
        (h1, w1): (usize, usize),
        c2: usize,
        slope: f32,
        regions: usize,
    ) -> Self {
        AfvGeometry {
            c1,
            h1,
            w1,
            c2,
            h2: h1 / 2,
            w2: w1 / 2,
            k: 4,
            stride: 2,
            pad: 1,
            slope,
            regions,
        }
    }
    pub fn a1_len(&self) -> usize {
        self.c1 * self.h1 * self.w1
    }
    pub fn z2_len(&self) -> usize {
        self.c2 * self.h2 * self.w2
    }
    /// Length of `U` (and `V`).
    pub fn dim(&self) -> usize {
        self.z2_len() + self.cells() * (self.c2 * self.c1 * self.k * self.k + self.c2)
    }
    pub fn cells(&self) -> usize {
        self.regions * self.regions
    }
    /// conv2 output rows of cell row `c` (those with `y·R / H2 == c`), and columns likewise.
    pub fn cell_rows(&self, c: usize) -> std::ops::Range<usize> {
        (c * self.h2).div_ceil(self.regions)..((c + 1) * self.h2).div_ceil(self.regions)
    }
    pub fn cell_cols(&self, c: usize) -> std::ops::Range<usize> {
        (c * self.w2).div_ceil(self.regions)..((c + 1) * self.w2).div_ceil(self.regions)
    }
    /// Why this geometry cannot be run, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.regions == 0 || self.regions > MAX_REGIONS {
            return Err(format!(
                "regions {}: must be 1..={MAX_REGIONS}",
                self.regions
            ));
        }
        if self.regions > self.h2 || self.regions > self.w2 {
            return Err(format!(
                "regions {}: more cells per side than conv2's {}x{} output",
                self.regions, self.h2, self.w2
            ));
        }
        Ok(())
    }
}

/// The Fisher kernels' arguments (fisher.cu) for this tail.
impl From<&AfvGeometry> for bevrt_kernels::launch::AfvDims {
    fn from(g: &AfvGeometry) -> Self {
        bevrt_kernels::launch::AfvDims {
            c1: g.c1 as i32,
            h1: g.h1 as i32,
            w1: g.w1 as i32,
            c2: g.c2 as i32,
            h2: g.h2 as i32,
            w2: g.w2 as i32,
            k: g.k as i32,
            stride: g.stride as i32,
            pad: g.pad as i32,
            slope: g.slope,
            regions: g.regions as i32,
        }
    }
}

/// `U_x` from the activations (`a1`, `z2`) and the linear weights `w3`. `delta` is scratch of
/// `z2_len()` (∂D/∂z2); `u` has `dim()` values. Panics on wrong lengths (the caller sizes
/// everything at load).
pub fn afv_score(
    g: &AfvGeometry,
    a1: &[f32],
    z2: &[f32],
    w3: &[f32],
    delta: &mut [f32],
    u: &mut [f32],
) {
    let n2 = g.z2_len();
    assert!(a1.len() == g.a1_len() && z2.len() == n2 && w3.len() == n2 && delta.len() == n2);
    assert_eq!(u.len(), g.dim());
    let (cells, per_cell) = (g.cells(), g.c2 * g.c1 * g.k * g.k);
    assert!(g.check().is_ok(), "{:?}", g.check());
    let (uw3, rest) = u.split_at_mut(n2);
    let (uw2, ub2) = rest.split_at_mut(cells * per_cell);
    for i in 0..n2 {
        let z = z2[i];
        let (act, der) = if z > 0.0 {
            (z, 1.0)
        } else {
            (z * g.slope, g.slope)
        };
        uw3[i] = act;
        delta[i] = w3[i] * der;
    }
    let (hw2, kk) = (g.h2 * g.w2, g.k * g.k);
    for o in 0..g.c2 {
        let d = &delta[o * hw2..(o + 1) * hw2];
        for q in 0..cells {
            let (rows, cols) = (g.cell_rows(q / g.regions), g.cell_cols(q % g.regions));
            ub2[q * g.c2 + o] = rows
                .flat_map(|y| cols.clone().map(move |x| d[y * g.w2 + x]))
                .sum();
        }
        for i in 0..g.c1 {
            let a = &a1[i * g.h1 * g.w1..(i + 1) * g.h1 * g.w1];
            for ky in 0..g.k {
                for kx in 0..g.k {
                    let j = (o * g.c1 + i) * kk + ky * g.k + kx;
                    for q in 0..cells {
                        let mut acc = 0f32;
                        for y in g.cell_rows(q / g.regions) {
                            let iy = (y * g.stride + ky) as isize - g.pad as isize;
                            if iy < 0 || iy >= g.h1 as isize {
                                continue;
                            }
                            let row = &a[iy as usize * g.w1..(iy as usize + 1) * g.w1];
                            for x in g.cell_cols(q % g.regions) {
                                let ix = (x * g.stride + kx) as isize - g.pad as isize;
                                if ix < 0 || ix >= g.w1 as isize {
                                    continue;
                                }
                                acc += d[y * g.w2 + x] * row[ix as usize];
                            }
                        }
                        uw2[q * per_cell + j] = acc;
                    }
                }
            }
        }
    }
}

/// Fisher normalisation in place: `v = (u − mean) / √(diag + eps)`, then `sign(v)·√|v|` when
/// `power`, then `v / ‖v‖` when `l2`.
pub fn fisher_normalise(
    v: &mut [f32],
    mean: &[f32],
    diag: &[f32],
    eps: f32,
    power: bool,
    l2: bool,
) {
    assert!(v.len() == mean.len() && v.len() == diag.len());
    for ((x, m), d) in v.iter_mut().zip(mean).zip(diag) {
        *x = (*x - m) / (d + eps).sqrt();
        if power {
            *x = x.signum() * x.abs().sqrt();
        }
    }
    if l2 {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            for x in v.iter_mut() {
                *x /= n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finite differences of D through the same tail, on a tiny geometry, with conv2 untied
    /// into one copy per spatial cell (all copies equal, as the score assumes).
    fn score_matches_finite_differences(regions: usize) {
        let g = AfvGeometry::k4s2(2, (6, 6), 3, 0.2, regions);
        let cells = regions * regions;
        let cell = |y: usize, x: usize| (y * regions / 3) * regions + x * regions / 3;
        let mut s = 1u32;
        let mut r = || {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let a1: Vec<f32> = (0..g.a1_len()).map(|_| r()).collect();
        let w2: Vec<f32> = (0..g.c2 * g.c1 * 16).map(|_| r()).collect();
        let b2: Vec<f32> = (0..g.c2).map(|_| r() * 0.1).collect();
        let w3: Vec<f32> = (0..g.z2_len()).map(|_| r()).collect();
        // w2s[q], b2s[q]: the copy of conv2 that cell q's outputs use.
        let conv = |w2s: &[Vec<f32>], b2s: &[Vec<f32>]| -> Vec<f32> {
            let mut z = vec![0f32; g.z2_len()];
            for o in 0..g.c2 {
                for y in 0..g.h2 {
                    for x in 0..g.w2 {
                        let (w2, b2) = (&w2s[cell(y, x)], &b2s[cell(y, x)]);
                        let mut acc = b2[o] as f64;
                        for i in 0..g.c1 {
                            for ky in 0..g.k {
                                for kx in 0..g.k {
                                    let iy = (y * 2 + ky) as isize - 1;
                                    let ix = (x * 2 + kx) as isize - 1;
                                    if iy < 0 || ix < 0 || iy >= 6 || ix >= 6 {
                                        continue;
                                    }
                                    acc += (w2[((o * g.c1 + i) * 4 + ky) * 4 + kx]
                                        * a1[(i * 6 + iy as usize) * 6 + ix as usize])
                                        as f64;
                                }
                            }
                        }
                        z[(o * 3 + y) * 3 + x] = acc as f32;
                    }
                }
            }
            z
        };
        let d = |w2s: &[Vec<f32>], b2s: &[Vec<f32>], w3: &[f32]| -> f64 {
            conv(w2s, b2s)
                .iter()
                .zip(w3)
                .map(|(&z, &w)| (if z > 0.0 { z } else { z * 0.2 }) as f64 * w as f64)
                .sum()
        };
        let (w2s, b2s) = (vec![w2.clone(); cells], vec![b2.clone(); cells]);
        let z2 = conv(&w2s, &b2s);
        let mut delta = vec![0f32; g.z2_len()];
        let mut u = vec![0f32; g.dim()];
        afv_score(&g, &a1, &z2, &w3, &mut delta, &mut u);
        let h = 1e-3f32;
        let n2 = g.z2_len();
        let nudge = |v: &[Vec<f32>], q: usize, j: usize, by: f32| {
            let mut v = v.to_vec();
            v[q][j] += by;
            v
        };
        for q in 0..cells {
            for j in 0..w2.len() {
                let fd = (d(&nudge(&w2s, q, j, h), &b2s, &w3)
                    - d(&nudge(&w2s, q, j, -h), &b2s, &w3))
                    / (2.0 * h as f64);
                let got = u[n2 + q * w2.len() + j] as f64;
                assert!((fd - got).abs() < 2e-3, "cell {q} dW2[{j}]: {fd} vs {got}");
            }
            for o in 0..g.c2 {
                let fd = (d(&w2s, &nudge(&b2s, q, o, h), &w3)
                    - d(&w2s, &nudge(&b2s, q, o, -h), &w3))
                    / (2.0 * h as f64);
                let got = u[n2 + cells * w2.len() + q * g.c2 + o] as f64;
                assert!((fd - got).abs() < 2e-3, "cell {q} db2[{o}]: {fd} vs {got}");
            }
        }
        for j in 0..n2 {
            let (mut p, mut m) = (w3.clone(), w3.clone());
            p[j] += h;
            m[j] -= h;
            let fd = (d(&w2s, &b2s, &p) - d(&w2s, &b2s, &m)) / (2.0 * h as f64);
            assert!((fd - u[j] as f64).abs() < 2e-3);
        }
    }

    #[test]
    fn score_matches_finite_differences_without_regions() {
        score_matches_finite_differences(1);
    }

    /// 2x2 cells on a 3x3 output: cells of 2x2, 2x1, 1x2 and 1x1 positions.
    #[test]
    fn score_matches_finite_differences_per_cell() {
        score_matches_finite_differences(2);
    }

    /// Per-cell scores sum to the plain score.
    #[test]
    fn cells_partition_the_plain_score() {
        let g = |regions| AfvGeometry::k4s2(3, (14, 14), 4, 0.2, regions);
        let (g1, g3) = (g(1), g(3));
        let a1: Vec<f32> = (0..g1.a1_len())
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let z2: Vec<f32> = (0..g1.z2_len())
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0)
            .collect();
        let w3: Vec<f32> = (0..g1.z2_len())
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0)
            .collect();
        let mut delta = vec![0f32; g1.z2_len()];
        let (mut u1, mut u3) = (vec![0f32; g1.dim()], vec![0f32; g3.dim()]);
        afv_score(&g1, &a1, &z2, &w3, &mut delta, &mut u1);
        afv_score(&g3, &a1, &z2, &w3, &mut delta, &mut u3);
        let (n2, per) = (g1.z2_len(), g1.c2 * g1.c1 * 16);
        assert_eq!(u1[..n2], u3[..n2]);
        for j in 0..per + g1.c2 {
            let (w, off) = if j < per { (per, j) } else { (g1.c2, j - per) };
            let base = n2 + if j < per { 0 } else { 9 * per };
            let sum: f32 = (0..9).map(|q| u3[base + q * w + off]).sum();
            assert!(
                (sum - u1[n2 + j]).abs() < 1e-4,
                "component {j}: {sum} vs {}",
                u1[n2 + j]
            );
        }
        assert!(g(5).check().is_err() && g(0).check().is_err() && g(4).check().is_ok());
    }

    #[test]
    fn fisher_normalisation() {
        let mut v = vec![3.0, -1.0];
        fisher_normalise(&mut v, &[1.0, 1.0], &[4.0, 0.0], 0.0, false, false);
        assert_eq!(v, vec![1.0, f32::NEG_INFINITY]);
        let mut v = vec![5.0, 1.0];
        fisher_normalise(&mut v, &[1.0, 0.0], &[4.0, 1.0], 0.0, true, true);
        // (2, 1) → power (√2, 1) → L2
        let n = 3f32.sqrt();
        assert!((v[0] - 2f32.sqrt() / n).abs() < 1e-6 && (v[1] - 1.0 / n).abs() < 1e-6);
    }
}
