//! PDAE as an autoencoder: images → z (and x_T by deterministic DDIM inversion with the
//! z-conditioned noise) → images again, with the measures the issue asks for.
//!
//! - *From the inferred x_T*: invert x₀ to x_T along the conditioned DDIM path, then decode
//!   it back with the same z. Tests how much of the image z and the path keep together.
//! - *From fresh noise*: decode seeded Gaussian noise with z. Only what z carries survives;
//!   the digit's class should.
//! - *Interpolation*: z linearly and x_T spherically between two digits.

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::ddpm::{self, DIGIT, batched};
use super::pdae_model::Pdae;
pub use super::pdae_model::codes;
use super::unet::SIDE;
use crate::digits::Dataset;
use crate::rng::{self, Rng};

/// The conditioned noise prediction for every image of `x` (`n × 32·32`) at `t`.
fn eps(model: &Pdae, x: &[f32], t: usize, z: &Tensor) -> Result<Vec<f32>> {
    let n = x.len() / (SIDE * SIDE);
    batched(x, &vec![t; n], |xt, tt, rows| {
        model.eps(xt, tt, &z.narrow(0, rows.start, rows.len())?)
    })
}

/// x₀ → x_T along the deterministic, z-conditioned DDIM path of `steps` steps.
pub fn invert(model: &Pdae, x0: &[f32], z: &Tensor, steps: usize) -> Result<Vec<f32>> {
    let ts = model.sched.ddim_timesteps(steps);
    let mut x = x0.to_vec();
    for (i, &t) in ts.iter().enumerate() {
        let from = i.checked_sub(1).map(|j| ts[j]);
        // Noise is predicted at the point we stand on (step 0 for the clean image).
        let e = eps(model, &x, from.unwrap_or(0), z)?;
        model.sched.ddim_move(&mut x, &e, from, Some(t), false);
    }
    Ok(x)
}

/// x_T → x₀ by DDIM with the z-conditioned noise; values clamped to [-1, 1] at the end.
/// `clip`: also clamp each step's predicted x₀ (sampling from noise); not when decoding an
/// inverted x_T, whose path must mirror the unclipped inversion.
pub fn decode(model: &Pdae, x_t: &[f32], z: &Tensor, steps: usize, clip: bool) -> Result<Vec<f32>> {
    let ts = model.sched.ddim_timesteps(steps);
    let mut x = x_t.to_vec();
    for (i, &t) in ts.iter().enumerate().rev() {
        let e = eps(model, &x, t, z)?;
        let to = i.checked_sub(1).map(|j| ts[j]);
        model.sched.ddim_move(&mut x, &e, Some(t), to, clip);
    }
    Ok(x.iter().map(|v| v.clamp(-1.0, 1.0)).collect())
}

/// Reconstructions of `idx`: (from the inferred x_T, from seeded fresh noise), 28x28 bytes.
pub fn reconstruct(
    model: &Pdae,
    ds: &Dataset,
    idx: &[usize],
    steps: usize,
    seed: u64,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let z = codes(model, ds, idx)?;
    let x0 = ddpm::padded(ds, idx);
    let x_t = invert(model, &x0, &z, steps)?;
    let from_inferred = ddpm::crop_to_u8(&decode(model, &x_t, &z, steps, false)?);
    let noise = rng::normal(x0.len(), &mut Rng(seed));
    let from_noise = ddpm::crop_to_u8(&decode(model, &noise, &z, steps, true)?);
    Ok((from_inferred, from_noise))
}

/// `frames` images between digits `a` and `b`: z linearly, x_T spherically (DDIM latents
/// are near-Gaussian, whose mass lies on a sphere), decoded; 28x28 bytes.
pub fn interpolate(
    model: &Pdae,
    ds: &Dataset,
    a: usize,
    b: usize,
    frames: usize,
    steps: usize,
) -> Result<Vec<u8>> {
    if frames < 2 {
        bail!("an interpolation needs at least 2 frames");
    }
    let z = codes(model, ds, &[a, b])?;
    let x_t = invert(model, &ddpm::padded(ds, &[a, b]), &z, steps)?;
    let px = SIDE * SIDE;
    let (xa, xb) = x_t.split_at(px);
    let (za, zb) = (z.get(0)?, z.get(1)?);
    let mut xs = Vec::with_capacity(frames * px);
    let mut zs = vec![];
    for k in 0..frames {
        let w = k as f64 / (frames - 1) as f64;
        xs.extend(slerp(xa, xb, w));
        zs.push(((&za * (1.0 - w))? + (&zb * w)?)?.unsqueeze(0)?);
    }
    Ok(ddpm::crop_to_u8(&decode(
        model,
        &xs,
        &Tensor::cat(&zs, 0)?,
        steps,
        false,
    )?))
}

fn slerp(a: &[f32], b: &[f32], w: f64) -> Vec<f32> {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let theta = (dot / (na * nb).max(1e-12)).clamp(-1.0, 1.0).acos();
    if theta < 1e-6 {
        return a
            .iter()
            .zip(b)
            .map(|(x, y)| ((1.0 - w) * *x as f64 + w * *y as f64) as f32)
            .collect();
    }
    let (sa, sb) = (
        ((1.0 - w) * theta).sin() / theta.sin(),
        (w * theta).sin() / theta.sin(),
    );
    a.iter()
        .zip(b)
        .map(|(x, y)| (sa * *x as f64 + sb * *y as f64) as f32)
        .collect()
}

/// Mean squared error of two 28x28 byte images on the [0, 1] scale.
pub fn mse(a: &[u8], b: &[u8]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| ((*x as f64 - *y as f64) / 255.0).powi(2))
        .sum::<f64>()
        / a.len().max(1) as f64
}

/// SSIM (Wang et al. 2004) of two grey images on the [0, 1] scale: an 11x11 Gaussian window
/// (σ 1.5) at every position where it fits, C₁ = 0.01², C₂ = 0.03², averaged.
pub fn ssim(a: &[u8], b: &[u8], side: usize) -> f64 {
    const K: usize = 11;
    if side < K || a.len() != side * side || b.len() != a.len() {
        return f64::NAN;
    }
    let g: Vec<f64> = (0..K)
        .map(|i| (-((i as f64 - 5.0).powi(2)) / (2.0 * 1.5 * 1.5)).exp())
        .collect();
    let gs: f64 = g.iter().sum();
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let px = |v: &[u8], y: usize, x: usize| v[y * side + x] as f64 / 255.0;
    let mut total = 0.0;
    let positions = side - K + 1;
    for y0 in 0..positions {
        for x0 in 0..positions {
            let (mut ma, mut mb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for dy in 0..K {
                for dx in 0..K {
                    let w = g[dy] * g[dx] / (gs * gs);
                    let (va, vb) = (px(a, y0 + dy, x0 + dx), px(b, y0 + dy, x0 + dx));
                    ma += w * va;
                    mb += w * vb;
                    saa += w * va * va;
                    sbb += w * vb * vb;
                    sab += w * va * vb;
                }
            }
            let (va, vb, cov) = (saa - ma * ma, sbb - mb * mb, sab - ma * mb);
            total += ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                / ((ma * ma + mb * mb + c1) * (va + vb + c2));
        }
    }
    total / (positions * positions) as f64
}

/// Each image of `images` (28x28 bytes) classified by weighted 20-NN on raw pixels
/// (cosine) against the labelled training split: a judge of class that knows nothing of
/// the model.
pub fn pixel_knn_classes(ds: &Dataset, images: &[u8]) -> Result<Vec<usize>> {
    let (train, _) = ds.split();
    let to_row = |img: &[u8]| -> Vec<f32> { img.iter().map(|&v| v as f32 / 255.0).collect() };
    let train_rows: Vec<Vec<f32>> = train.iter().map(|&i| to_row(ds.image(i))).collect();
    let labels: Vec<usize> = train.iter().map(|&i| ds.labels[i]).collect();
    let test_rows: Vec<Vec<f32>> = images.chunks(DIGIT * DIGIT).map(to_row).collect();
    crate::afv::probe::knn(
        &train_rows.iter().collect::<Vec<_>>(),
        &labels,
        &test_rows.iter().collect::<Vec<_>>(),
        ds.classes.len(),
        20,
        crate::afv::probe::Metric::Cosine,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssim_is_one_for_equal_images_and_falls_with_noise() {
        let a: Vec<u8> = (0..784).map(|i| ((i * 37) % 256) as u8).collect();
        assert!((ssim(&a, &a, 28) - 1.0).abs() < 1e-9);
        let mut r = Rng(3);
        let b: Vec<u8> = a
            .iter()
            .map(|&v| (v as f32 + (r.uniform() - 0.5) * 80.0).clamp(0.0, 255.0) as u8)
            .collect();
        let s = ssim(&a, &b, 28);
        assert!(s < 0.95 && s > 0.0, "{s}");
        assert_eq!(mse(&a, &a), 0.0);
    }

    #[test]
    fn slerp_ends_at_its_end_points() {
        let (a, b) = (vec![1f32, 0.0], vec![0f32, 1.0]);
        assert_eq!(slerp(&a, &b, 0.0), a);
        let m = slerp(&a, &b, 0.5);
        assert!((m[0] - m[1]).abs() < 1e-6 && (m[0] - 0.5f32.sqrt()).abs() < 1e-6);
    }
}
