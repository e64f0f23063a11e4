//! Monodepth2's objective on letsmap-lite's depth distribution: frame t re-synthesised from
//! its neighbours through the *expected* depth, the photometric error minimised by gradient
//! descent through the warp.
//!
//! The expected depth of each feature pixel is upsampled (bilinear) to the half-resolution
//! frame; [`super::photometric::warp_with_gradient`] samples each source where every pixel
//! lands and gives the sampled colour's derivative with respect to the depth, so the warped
//! image enters the graph as `W0 + G · (d − stopgrad(d))`: the value of the real warp, the
//! bilinear sampler's gradient. Then per pixel `pe = 0.85 (1 − SSIM)/2 + 0.15 L1`, the minimum
//! over sources, Monodepth2's auto-mask (kept where the warped error beats every unwarped
//! source's), and the edge-aware smoothness of the mean-normalised disparity.

use anyhow::Result;
use candle_core::{D, DType, Device, Tensor};

use super::photo_error::photometric_error;
use super::photometric::{Planes, RayCamera, Source, warp_with_gradient};

/// A frame to re-synthesise: its half-resolution image and its sources (at most
/// [`MAX_SOURCES`]).
pub struct Sample<'a> {
    pub target: &'a Planes,
    pub sources: Vec<Source<'a>>,
}

pub const MAX_SOURCES: usize = 2;

/// Error added where a source has nothing (out of view, or no such source), so the minimum
/// over sources never picks it and the auto-mask drops pixels no source sees.
const UNSEEN: f64 = 10.0;

/// Fixed pieces of the objective for one camera and feature size.
pub struct ViewSynthesis {
    cam: RayCamera,
    /// Bilinear upsampling (align_corners = false) feature rows -> frame rows (hh, fh), and
    /// feature columns -> frame columns, transposed (fw, hw).
    up_rows: Tensor,
    up_cols_t: Tensor,
    pub smoothness: f64,
}

fn interpolation_matrix(out: usize, inp: usize) -> Vec<f32> {
    let mut m = vec![0f32; out * inp];
    let s = inp as f64 / out as f64;
    for o in 0..out {
        let f = ((o as f64 + 0.5) * s - 0.5).clamp(0.0, inp as f64 - 1.0);
        let i0 = f.floor() as usize;
        let i1 = (i0 + 1).min(inp - 1);
        let a = (f - i0 as f64) as f32;
        m[o * inp + i0] += 1.0 - a;
        m[o * inp + i1] += a;
    }
    m
}

/// The loss of one batch and its photometric part (for the log).
pub struct SynthesisLoss {
    pub loss: Tensor,
    pub photometric: f32,
    /// Fraction of pixels the auto-mask kept.
    pub kept: f32,
}

impl ViewSynthesis {
    pub fn new(cam: RayCamera, fh: usize, fw: usize, smoothness: f64) -> Result<ViewSynthesis> {
        let (hw, hh) = (cam.camera.width() as usize, cam.camera.height() as usize);
        let up_rows = Tensor::from_vec(interpolation_matrix(hh, fh), (hh, fh), &Device::Cpu)?;
        let up_cols_t =
            Tensor::from_vec(interpolation_matrix(hw, fw), (hw, fw), &Device::Cpu)?.t()?;
        Ok(ViewSynthesis {
            cam,
            up_rows,
            up_cols_t: up_cols_t.contiguous()?,
            smoothness,
        })
    }

    pub fn camera(&self) -> &RayCamera {
        &self.cam
    }

    /// (B,1,fh,fw) feature-resolution map to (B,1,hh,hw).
    pub fn upsample(&self, m: &Tensor) -> Result<Tensor> {
        let (b, _, fh, fw) = m.dims4()?;
        let r = m.reshape((b, fh, fw))?.broadcast_matmul(&self.up_cols_t)?;
        let r = self.up_rows.broadcast_matmul(&r)?;
        let (hh, hw) = (r.dim(1)?, r.dim(2)?);
        Ok(r.reshape((b, 1, hh, hw))?)
    }

    /// The objective for a batch: `depth` and `disp` (B,1,fh,fw) from the network.
    pub fn loss(&self, depth: &Tensor, disp: &Tensor, batch: &[Sample]) -> Result<SynthesisLoss> {
        let b = batch.len();
        let d_up = self.upsample(depth)?;
        let (hh, hw) = (d_up.dim(2)?, d_up.dim(3)?);
        let n = hh * hw;
        let d0 = d_up.flatten_all()?.to_vec1::<f32>()?;
        // the depth's deviation from its own value: zero, with the depth's gradient
        let delta = (&d_up - d_up.detach())?;
        let dev = &Device::Cpu;
        let target = Tensor::from_vec(
            batch
                .iter()
                .flat_map(|s| s.target.data.clone())
                .collect::<Vec<_>>(),
            (b, 3, hh, hw),
            dev,
        )?;
        let mut warped_err = vec![];
        let mut identity_err = vec![];
        for slot in 0..MAX_SOURCES {
            let mut w0 = vec![0f32; b * 3 * n];
            let mut g = vec![0f32; b * 3 * n];
            let mut valid = vec![0f32; b * n];
            let mut raw = vec![0f32; b * 3 * n];
            let mut present = vec![0f32; b];
            for (bi, s) in batch.iter().enumerate() {
                let Some(src) = s.sources.get(slot) else {
                    continue;
                };
                present[bi] = 1.0;
                warp_with_gradient(
                    &self.cam,
                    src,
                    &d0[bi * n..(bi + 1) * n],
                    &mut w0[bi * 3 * n..(bi + 1) * 3 * n],
                    &mut g[bi * 3 * n..(bi + 1) * 3 * n],
                    &mut valid[bi * n..(bi + 1) * n],
                );
                raw[bi * 3 * n..(bi + 1) * 3 * n].copy_from_slice(&src.image.data);
            }
            let w0 = Tensor::from_vec(w0, (b, 3, hh, hw), dev)?;
            let g = Tensor::from_vec(g, (b, 3, hh, hw), dev)?;
            let valid = Tensor::from_vec(valid, (b, 1, hh, hw), dev)?;
            let warped = (w0 + g.broadcast_mul(&delta)?)?;
            let unseen = ((1.0 - valid)? * UNSEEN)?;
            warped_err.push((photometric_error(&target, &warped)? + unseen)?);
            let raw = Tensor::from_vec(raw, (b, 3, hh, hw), dev)?;
            let present = Tensor::from_vec(present, (b, 1, 1, 1), dev)?;
            let absent = ((1.0 - present)? * UNSEEN)?;
            identity_err.push(photometric_error(&target, &raw)?.broadcast_add(&absent)?);
        }
        let min_warped = Tensor::cat(&warped_err, 1)?.min_keepdim(1)?;
        let min_identity = Tensor::cat(&identity_err, 1)?.min_keepdim(1)?.detach();
        let mask = min_warped
            .detach()
            .lt(&min_identity)?
            .to_dtype(DType::F32)?
            .mul(&min_warped.detach().lt(UNSEEN * 0.5)?.to_dtype(DType::F32)?)?;
        let kept = mask.sum_all()?.to_scalar::<f32>()?;
        let photo = ((min_warped * &mask)?.sum_all()? / (kept.max(1.0) as f64))?;
        let gray = target.mean_keepdim(1)?;
        let smooth = edge_aware_smoothness(&self.upsample(disp)?, &gray)?;
        let loss = (&photo + (smooth * self.smoothness)?)?;
        Ok(SynthesisLoss {
            photometric: photo.to_scalar::<f32>()?,
            kept: kept / (b * n) as f32,
            loss,
        })
    }
}

/// Monodepth2's edge-aware smoothness of the mean-normalised disparity `disp` (B,1,h,w),
/// edges from `gray` (B,1,h,w).
pub fn edge_aware_smoothness(disp: &Tensor, gray: &Tensor) -> Result<Tensor> {
    let mean = disp.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
    let dn = disp.broadcast_div(&(mean + 1e-7)?)?;
    let (_, _, h, w) = dn.dims4()?;
    let dx = (dn.narrow(3, 1, w - 1)? - dn.narrow(3, 0, w - 1)?)?.abs()?;
    let dy = (dn.narrow(2, 1, h - 1)? - dn.narrow(2, 0, h - 1)?)?.abs()?;
    let gx = (gray.narrow(3, 1, w - 1)? - gray.narrow(3, 0, w - 1)?)?.abs()?;
    let gy = (gray.narrow(2, 1, h - 1)? - gray.narrow(2, 0, h - 1)?)?.abs()?;
    let sx = (dx * gx.neg()?.exp()?)?.mean_all()?;
    let sy = (dy * gy.neg()?.exp()?)?.mean_all()?;
    Ok((sx + sy)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsampling_keeps_constants_and_interpolates() {
        let m = interpolation_matrix(8, 2);
        for o in 0..8 {
            let s: f32 = m[o * 2..o * 2 + 2].iter().sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
        // align_corners = false: output 0 (centre 0.5/8*2 - 0.5 = -0.375) clamps to input 0
        assert_eq!(&m[0..2], &[1.0, 0.0]);
        assert_eq!(&m[14..16], &[0.0, 1.0]);
    }

    #[test]
    fn photometric_error_is_zero_for_equal_images_and_grows_with_difference() {
        let dev = &Device::Cpu;
        let x = Tensor::rand(0f32, 1f32, (1, 3, 8, 10), dev).unwrap();
        let same = photometric_error(&x, &x).unwrap();
        assert!(
            same.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                < 1e-4
        );
        let y = (&x + 0.2).unwrap();
        let z = (&x + 0.4).unwrap();
        let e1 = photometric_error(&x, &y)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let e2 = photometric_error(&x, &z)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(e1 > 0.02 && e2 > e1, "{e1} {e2}");
    }
}
