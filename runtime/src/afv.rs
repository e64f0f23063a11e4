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
//! `U` layout: `[∂/∂w3 (= a2), ∂/∂W2 (C2·C1·k·k, row-major), ∂/∂b2 (C2)]`.

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
}

impl AfvGeometry {
    pub fn a1_len(&self) -> usize {
        self.c1 * self.h1 * self.w1
    }
    pub fn z2_len(&self) -> usize {
        self.c2 * self.h2 * self.w2
    }
    /// Length of `U` (and `V`).
    pub fn dim(&self) -> usize {
        self.z2_len() + self.c2 * self.c1 * self.k * self.k + self.c2
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
    let (uw3, rest) = u.split_at_mut(n2);
    let (uw2, ub2) = rest.split_at_mut(g.c2 * g.c1 * g.k * g.k);
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
        ub2[o] = d.iter().sum();
        for i in 0..g.c1 {
            let a = &a1[i * g.h1 * g.w1..(i + 1) * g.h1 * g.w1];
            let out = &mut uw2[(o * g.c1 + i) * kk..(o * g.c1 + i + 1) * kk];
            for ky in 0..g.k {
                for kx in 0..g.k {
                    let mut acc = 0f32;
                    for y in 0..g.h2 {
                        let iy = (y * g.stride + ky) as isize - g.pad as isize;
                        if iy < 0 || iy >= g.h1 as isize {
                            continue;
                        }
                        let row = &a[iy as usize * g.w1..(iy as usize + 1) * g.w1];
                        for x in 0..g.w2 {
                            let ix = (x * g.stride + kx) as isize - g.pad as isize;
                            if ix < 0 || ix >= g.w1 as isize {
                                continue;
                            }
                            acc += d[y * g.w2 + x] * row[ix as usize];
                        }
                    }
                    out[ky * g.k + kx] = acc;
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

    /// Finite differences of D through the same tail, on a tiny geometry.
    #[test]
    fn score_matches_finite_differences() {
        let g = AfvGeometry {
            c1: 2,
            h1: 6,
            w1: 6,
            c2: 3,
            h2: 3,
            w2: 3,
            k: 4,
            stride: 2,
            pad: 1,
            slope: 0.2,
        };
        let mut s = 1u32;
        let mut r = || {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let a1: Vec<f32> = (0..g.a1_len()).map(|_| r()).collect();
        let w2: Vec<f32> = (0..g.c2 * g.c1 * 16).map(|_| r()).collect();
        let b2: Vec<f32> = (0..g.c2).map(|_| r() * 0.1).collect();
        let w3: Vec<f32> = (0..g.z2_len()).map(|_| r()).collect();
        let conv = |w2: &[f32], b2: &[f32]| -> Vec<f32> {
            let mut z = vec![0f32; g.z2_len()];
            for o in 0..g.c2 {
                for y in 0..g.h2 {
                    for x in 0..g.w2 {
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
        let d = |w2: &[f32], b2: &[f32], w3: &[f32]| -> f64 {
            conv(w2, b2)
                .iter()
                .zip(w3)
                .map(|(&z, &w)| (if z > 0.0 { z } else { z * 0.2 }) as f64 * w as f64)
                .sum()
        };
        let z2 = conv(&w2, &b2);
        let mut delta = vec![0f32; g.z2_len()];
        let mut u = vec![0f32; g.dim()];
        afv_score(&g, &a1, &z2, &w3, &mut delta, &mut u);
        let h = 1e-3f32;
        let n2 = g.z2_len();
        for j in 0..w2.len() {
            let (mut p, mut m) = (w2.clone(), w2.clone());
            p[j] += h;
            m[j] -= h;
            let fd = (d(&p, &b2, &w3) - d(&m, &b2, &w3)) / (2.0 * h as f64);
            assert!(
                (fd - u[n2 + j] as f64).abs() < 2e-3,
                "dW2[{j}]: {fd} vs {}",
                u[n2 + j]
            );
        }
        for o in 0..g.c2 {
            let (mut p, mut m) = (b2.clone(), b2.clone());
            p[o] += h;
            m[o] -= h;
            let fd = (d(&w2, &p, &w3) - d(&w2, &m, &w3)) / (2.0 * h as f64);
            let got = u[g.dim() - g.c2 + o] as f64;
            assert!((fd - got).abs() < 2e-3, "db2[{o}]: {fd} vs {got}");
        }
        for j in 0..n2 {
            let (mut p, mut m) = (w3.clone(), w3.clone());
            p[j] += h;
            m[j] -= h;
            let fd = (d(&w2, &b2, &p) - d(&w2, &b2, &m)) / (2.0 * h as f64);
            assert!((fd - u[j] as f64).abs() < 2e-3);
        }
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
