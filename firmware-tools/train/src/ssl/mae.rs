//! Masked autoencoding with the shared CNN encoder, and StructMAE's structure-guided masking.
//!
//! The image is cut into 4x4 patches (7x7 of them); a fraction `ratio` is masked (set to the
//! background, -1), the encoder sees the rest, and a decoder (ReLU → Linear 128→64·7·7 → ReLU
//! → ConvT 4/2 → 32x14x14 → ReLU → ConvT 4/2 → 1x28x28) reconstructs the whole image from the
//! 128-d vector; the loss is the mean squared error on the masked pixels only.
//!
//! Which patches are masked:
//! - `random` (MAE): uniformly;
//! - `struct` (StructMAE, Liu et al., IJCAI 2024, adapted from graph nodes to image patches):
//!   a patch's structural score is its gradient energy (sum of squared Sobel responses: stroke
//!   edges, where the digit's shape is). At progress `e/E`, a fraction `r_s = ratio·sqrt(e/E)`
//!   of the patches is chosen as the highest scores perturbed by `α·U(0,1)` (scores scaled to
//!   [0, 1] per image), the rest of the masked budget uniformly among the others: masking moves
//!   from random (easy) to structural (hard) over training.

use anyhow::Result;
use candle_core::{Device, Tensor, Var};

use super::encoder::{DIM, Linear, SIDE, uniform_var};
use crate::cpu_ops::conv_transpose2d;
use crate::masking::{structure_guided_mask, structured_count};
use crate::rng::Rng;

pub const PATCH: usize = 4;
const GRID: usize = SIDE / PATCH;
pub const PATCHES: usize = GRID * GRID;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct MaeConfig {
    /// Fraction of the 49 patches masked.
    pub ratio: f32,
    /// Structure-guided masking (StructMAE) instead of uniform.
    pub structured: bool,
    /// StructMAE's perturbation of the scores.
    pub alpha: f32,
}

impl Default for MaeConfig {
    fn default() -> Self {
        MaeConfig {
            ratio: 0.5,
            structured: false,
            alpha: 0.5,
        }
    }
}

pub struct Decoder {
    fc: Linear,
    t1: (Var, Var),
    t2: (Var, Var),
}

impl Decoder {
    pub fn init(seed: u64) -> Result<Decoder> {
        let mut r = Rng(seed ^ 0xdec0);
        let zeros = |n| Var::zeros(n, candle_core::DType::F32, &Device::Cpu);
        Ok(Decoder {
            fc: Linear::init(seed ^ 0xdec1, DIM, 64 * 49)?,
            t1: (
                uniform_var(&[64, 32, 4, 4], (6.0f32 / (64.0 * 4.0)).sqrt(), &mut r)?,
                zeros(32)?,
            ),
            t2: (
                uniform_var(&[32, 1, 4, 4], (3.0f32 / (32.0 * 4.0)).sqrt(), &mut r)?,
                zeros(1)?,
            ),
        })
    }
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut v = self.fc.vars("dec.fc");
        v.push(("dec.t1.weight".into(), self.t1.0.clone()));
        v.push(("dec.t1.bias".into(), self.t1.1.clone()));
        v.push(("dec.t2.weight".into(), self.t2.0.clone()));
        v.push(("dec.t2.bias".into(), self.t2.1.clone()));
        v
    }
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let n = h.dim(0)?;
        let x = self
            .fc
            .forward(&h.relu()?)?
            .relu()?
            .reshape((n, 64, 7, 7))?;
        let x = conv_transpose2d(&x, self.t1.0.as_tensor(), self.t1.1.as_tensor(), 1, 2)?.relu()?;
        Ok(conv_transpose2d(
            &x,
            self.t2.0.as_tensor(),
            self.t2.1.as_tensor(),
            1,
            2,
        )?)
    }
}

/// Gradient energy of each 4x4 patch of a 28x28 image in [-1, 1] units (Sobel, zero outside).
pub fn patch_scores(img: &[f32]) -> [f32; PATCHES] {
    let at = |x: isize, y: isize| -> f32 {
        if x < 0 || y < 0 || x >= SIDE as isize || y >= SIDE as isize {
            -1.0
        } else {
            img[y as usize * SIDE + x as usize]
        }
    };
    let mut out = [0f32; PATCHES];
    for y in 0..SIDE as isize {
        for x in 0..SIDE as isize {
            let gx = at(x + 1, y - 1) + 2.0 * at(x + 1, y) + at(x + 1, y + 1)
                - at(x - 1, y - 1)
                - 2.0 * at(x - 1, y)
                - at(x - 1, y + 1);
            let gy = at(x - 1, y + 1) + 2.0 * at(x, y + 1) + at(x + 1, y + 1)
                - at(x - 1, y - 1)
                - 2.0 * at(x, y - 1)
                - at(x + 1, y - 1);
            out[(y as usize / PATCH) * GRID + x as usize / PATCH] += gx * gx + gy * gy;
        }
    }
    out
}

/// Which of the 49 patches to mask (`true` = masked) at training progress `progress` ∈ [0, 1].
pub fn draw_mask(img: &[f32], cfg: &MaeConfig, progress: f32, rng: &mut Rng) -> [bool; PATCHES] {
    let n_struct = if cfg.structured {
        structured_count(cfg.ratio, progress, PATCHES)
    } else {
        0
    };
    // the scores are only needed when some patches are chosen by them
    let scores = if n_struct > 0 {
        patch_scores(img)
    } else {
        [0.0; PATCHES]
    };
    let v = structure_guided_mask(&scores, cfg.ratio, n_struct, cfg.alpha, rng);
    std::array::from_fn(|p| v[p])
}

/// Apply `masked` to `img` in place (masked pixels → -1, the background), and write the
/// per-pixel loss weights (1 on masked pixels) into `weight`.
pub fn apply_mask(img: &mut [f32], masked: &[bool; PATCHES], weight: &mut [f32]) {
    for y in 0..SIDE {
        for x in 0..SIDE {
            let m = masked[(y / PATCH) * GRID + x / PATCH];
            let k = y * SIDE + x;
            weight[k] = m as u8 as f32;
            if m {
                img[k] = -1.0;
            }
        }
    }
}

/// Mean squared error over the weighted (masked) pixels.
pub fn masked_mse(pred: &Tensor, target: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let n = weight.sum_all()?.to_scalar::<f32>()?.max(1.0);
    Ok(((pred - target)?.sqr()? * weight)?
        .sum_all()?
        .affine(1.0 / n as f64, 0.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stroke() -> Vec<f32> {
        // A vertical bar in columns 12..16, rows 4..24.
        (0..SIDE * SIDE)
            .map(|k| {
                let (y, x) = (k / SIDE, k % SIDE);
                if (12..16).contains(&x) && (4..24).contains(&y) {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect()
    }

    #[test]
    fn structured_masking_moves_onto_the_strokes_over_training() {
        let img = stroke();
        let s = patch_scores(&img);
        let on_edges = |m: &[bool; PATCHES]| (0..PATCHES).filter(|&p| m[p] && s[p] > 0.0).count();
        let cfg = MaeConfig {
            structured: true,
            ..Default::default()
        };
        let (mut early, mut late) = (0, 0);
        for seed in 0..20 {
            let mut r = Rng(seed);
            let e = draw_mask(&img, &cfg, 0.0, &mut r);
            let l = draw_mask(&img, &cfg, 1.0, &mut r);
            assert_eq!(e.iter().filter(|&&m| m).count(), 25);
            assert_eq!(l.iter().filter(|&&m| m).count(), 25);
            early += on_edges(&e);
            late += on_edges(&l);
        }
        assert!(
            late > early,
            "edge patches masked: early {early}, late {late}"
        );
    }

    #[test]
    fn mask_sets_background_and_weights() {
        let mut img = stroke();
        let mut masked = [false; PATCHES];
        masked[3 * GRID + 3] = true; // rows 12..16, columns 12..16: on the bar
        let mut w = vec![0f32; SIDE * SIDE];
        apply_mask(&mut img, &masked, &mut w);
        assert_eq!(w.iter().sum::<f32>(), 16.0);
        assert_eq!(img[13 * SIDE + 13], -1.0);
        assert_eq!(img[5 * SIDE + 13], 1.0);
    }
}
