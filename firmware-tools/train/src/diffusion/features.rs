//! Diffusion features without an encoder: the frozen DDPM's middle-block activations of a
//! slightly noised image (`x_t` at a fixed `t`, one seeded noise per image position, so the
//! same image always gives the same vector), average-pooled 8x8 → 4x4. A baseline row for
//! the feature-encoder table: what the DDPM alone knows, against what PDAE's z adds.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::ddpm::{self, DIGIT, batched};
use super::schedule::NoiseSchedule;
use super::unet::{SIDE, Unet};
use crate::digits::Dataset;
use crate::rng::{self, Rng};

/// Every image of `ds` in file order (other sizes are resized to 28x28 bilinearly, as the
/// runtime's preprocess does for bundles), `(n, dim)` row-major, and `dim`.
pub fn middle_features(
    unet: &Unet,
    ds: &Dataset,
    t: usize,
    seed: u64,
) -> Result<(Vec<f32>, usize)> {
    let sched = NoiseSchedule::linear(super::schedule::STEPS);
    if t >= sched.steps() {
        bail!("timestep {t} is outside 0..{}", sched.steps());
    }
    let n = ds.labels.len();
    let px = SIDE * SIDE;
    let mut x0 = vec![0f32; n * px];
    for i in 0..n {
        ddpm::pad_digit(&as_digit(ds, i)?, &mut x0[i * px..(i + 1) * px]);
    }
    let eps = rng::normal(x0.len(), &mut Rng(seed));
    let xt = ddpm::noisy(&x0, &eps, &vec![t; n], &sched);
    let mut dim = 0;
    let out = batched(&xt, &vec![t; n], |x, tt, _| {
        let m = unet.up.middle(&unet.down(x, tt)?)?;
        let pooled = m.avg_pool2d(2)?;
        let (b, c, h, w) = pooled.dims4()?;
        dim = c * h * w;
        Ok(pooled.reshape((b, dim))?)
    })?;
    Ok((out, dim))
}

fn as_digit(ds: &Dataset, i: usize) -> Result<Vec<u8>> {
    if (ds.width, ds.height) == (DIGIT, DIGIT) {
        return Ok(ds.image(i).to_vec());
    }
    let img =
        image::GrayImage::from_raw(ds.width as u32, ds.height as u32, ds.image(i).to_vec())
            .with_context(|| format!("{}: image {i} is not {}x{}", ds.name, ds.width, ds.height))?;
    Ok(image::imageops::resize(
        &img,
        DIGIT as u32,
        DIGIT as u32,
        image::imageops::FilterType::Triangle,
    )
    .into_raw())
}

/// Write the features of every image as an `[n, dim]` npy (what `probe --features` reads).
pub fn write(path: &Path, rows: &[f32], dim: usize) -> Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path)
            .with_context(|| format!("{}: cannot create", path.display()))?,
    );
    bevrt_runtime::npy::write_f32(&mut f, &[rows.len() / dim.max(1), dim], rows)?;
    Ok(())
}
