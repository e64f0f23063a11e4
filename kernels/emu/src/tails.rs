//! The AFV tail's kernels (score and Fisher normalisation) on the emulation, with the same
//! launches and shapes as `bevrt_kernels::launch::Gpu`.

use crate::run::{Args, EmuError, EmuOptions};

/// [`bevrt_kernels::launch::Gpu::afv_score_at`] on the emulated kernels, with the same two
/// launches and shapes: `u` (`AfvGeometry::dim()` values) from the tail's activations; `delta`
/// is scratch of `c2·h2·w2` values.
pub fn afv_score(
    d: &bevrt_kernels::launch::AfvDims,
    a1: &[f32],
    z2: &[f32],
    w3: &[f32],
    delta: &mut [f32],
    u: &mut [f32],
) -> Result<(), EmuError> {
    use bevrt_kernels::launch::{afv_conv_grad_threads, elementwise_config};
    let n2 = d.c2 * d.h2 * d.w2;
    let cells = (d.regions * d.regions) as usize;
    let per_cell = (d.c2 * d.c1 * d.k * d.k + d.c2) as usize;
    let sizes_ok = a1.len() == (d.c1 * d.h1 * d.w1) as usize
        && [z2.len(), w3.len(), delta.len()]
            .iter()
            .all(|n| *n == n2 as usize)
        && u.len() == n2 as usize + cells * per_cell;
    if !sizes_ok {
        return Err(EmuError(format!(
            "afv_score: buffer sizes do not fit {d:?}"
        )));
    }
    let mut a = Args::new();
    a.ptr(z2.as_ptr())
        .ptr(w3.as_ptr())
        .arg(d.slope)
        .ptr(u.as_mut_ptr())
        .ptr(delta.as_mut_ptr())
        .arg(n2);
    // SAFETY: afv_delta(z2, w3, slope, u, delta, n2), sizes checked above.
    unsafe {
        a.launch(
            "afv_delta",
            &elementwise_config(n2 as usize),
            EmuOptions::default(),
        )
    }?;
    let mut a = Args::new();
    a.ptr(a1.as_ptr()).ptr(delta.as_ptr()).ptr(u.as_mut_ptr());
    for v in [
        d.c1, d.h1, d.w1, d.c2, d.h2, d.w2, d.k, d.stride, d.pad, d.regions,
    ] {
        a.arg(v);
    }
    let cfg = elementwise_config(afv_conv_grad_threads(d));
    // SAFETY: afv_conv_grad(a1, delta, u, c1, h1, w1, c2, h2, w2, k, stride, pad, regions).
    unsafe { a.launch("afv_conv_grad", &cfg, EmuOptions::default()) }
}

/// [`bevrt_kernels::launch::Gpu::fisher_normalise_at`] on the emulated kernel.
pub fn fisher_normalise(
    v: &mut [f32],
    mean: &[f32],
    diag: &[f32],
    eps: f32,
    power: bool,
    l2: bool,
) -> Result<(), EmuError> {
    if mean.len() != v.len() || diag.len() != v.len() {
        return Err(EmuError(
            "fisher_normalise: v, mean and diag differ in length".into(),
        ));
    }
    let mut a = Args::new();
    a.ptr(v.as_mut_ptr())
        .ptr(mean.as_ptr())
        .ptr(diag.as_ptr())
        .arg(eps)
        .arg(power as i32)
        .arg(l2 as i32)
        .arg(v.len() as i32);
    let cfg = bevrt_kernels::launch::fisher_normalise_config();
    // SAFETY: fisher_normalise(v, mean, diag, eps, power, l2, n), lengths checked.
    unsafe { a.launch("fisher_normalise", &cfg, EmuOptions::default()) }
}
