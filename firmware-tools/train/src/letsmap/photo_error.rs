//! Monodepth2's photometric error, the one definition both the plane-sweep cost volume
//! ([`super::photometric`]) and the view-synthesis objective ([`super::synthesis`]) use:
//! `pe = 0.85 (1 - SSIM) / 2 + 0.15 |x - y|`, SSIM over 3x3 windows.

use anyhow::Result;
use candle_core::Tensor;

/// Monodepth2's weights of SSIM and L1 in the photometric error.
pub const SSIM_WEIGHT: f32 = 0.85;

/// Monodepth2's photometric error per pixel, (B,3,H,W) x2 -> (B,1,H,W).
pub fn photometric_error(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    const C1: f64 = 0.01 * 0.01;
    const C2: f64 = 0.03 * 0.03;
    // 3x3 mean, edges replicated, as nine shifted views (candle has no backward for an
    // overlapping avg_pool2d)
    let pool = |t: &Tensor| -> Result<Tensor> {
        let (h, w) = (t.dim(2)?, t.dim(3)?);
        let p = t.pad_with_same(3, 1, 1)?.pad_with_same(2, 1, 1)?;
        let mut acc: Option<Tensor> = None;
        for dy in 0..3 {
            for dx in 0..3 {
                let v = p.narrow(2, dy, h)?.narrow(3, dx, w)?;
                acc = Some(match acc {
                    None => v,
                    Some(a) => (a + v)?,
                });
            }
        }
        Ok((acc.expect("nine taps") / 9.0)?)
    };
    let (mx, my) = (pool(x)?, pool(y)?);
    let sx = (pool(&x.sqr()?)? - mx.sqr()?)?;
    let sy = (pool(&y.sqr()?)? - my.sqr()?)?;
    let sxy = (pool(&(x * y)?)? - (&mx * &my)?)?;
    let num = ((((&mx * &my)? * 2.0)? + C1)? * ((sxy * 2.0)? + C2)?)?;
    let den = (((mx.sqr()? + my.sqr()?)? + C1)? * ((sx + sy)? + C2)?)?;
    let dssim = ((1.0 - (num / den)?)? / 2.0)?.clamp(0f32, 1f32)?;
    let l1 = (x - y)?.abs()?;
    let pe = ((dssim * SSIM_WEIGHT as f64)? + (l1 * (1.0 - SSIM_WEIGHT as f64))?)?;
    Ok(pe.mean_keepdim(1)?)
}
