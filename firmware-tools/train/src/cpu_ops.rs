//! Candle ops on the CPU with cheap backward passes: 2-D convolution and transposed
//! convolution as im2col/col2im plus one GEMM, LeakyReLU, and the fused normalisations
//! (batch norm + ReLU for the encoders, group norm + SiLU for the diffusion UNet).
//!
//! Why not candle's own ops: candle 0.9's CPU `conv_transpose2d` is a direct loop that runs
//! in parallel only over output channels. The GAN's generator uses it forward, and candle's
//! `conv2d` backward uses it for every input gradient. Measured on the GAN's shapes (batch 64,
//! 2-core x86-64), a 64→32 channel transposed convolution took 37-41 ms there against about
//! 5 ms as a GEMM, and it was most of a training step. Here both directions are one GEMM (the
//! `gemm` crate candle already uses) and an im2col or col2im, which are each other's adjoint,
//! so the backward pass is GEMMs too. [`conv2d`]'s bias rides in the GEMM as a column of
//! ones, so its gradient needs no separate reduction ([`conv_transpose2d`] adds its bias
//! after col2im, where it has no column to ride in). `candle_nn::ops::leaky_relu` builds
//! five nodes whose backward takes about ten passes over the tensor; [`leaky_relu`] is one
//! node and one pass each way.
//!
//! Layout contract shared by [`Im2Col`] and [`Col2Im`]: an image `(b, c, h, w)` and a patch
//! matrix `(b·gh·gw, c·k·k [+ 1])` whose row is one grid position `(n, gy, gx)` and whose
//! column is `(c, ky, kx)`, then the optional constant column; grid position `g` covers image
//! pixel `g·stride + k - pad`.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The geometry relating an image to its patch matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Patches {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    gh: usize,
    gw: usize,
    /// The patch matrix ends with a constant column (the bias's input).
    ones: bool,
}

impl Patches {
    fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Values of one batch element's patch matrix.
    fn matrix_len(&self) -> usize {
        self.gh * self.gw * self.width()
    }
    fn width(&self) -> usize {
        self.c * self.k * self.k + self.ones as usize
    }

    /// Visit every (patch-matrix index, image index) pair of one batch element whose pixel is
    /// inside the image; padding contributes nothing, the constant column is not visited.
    #[inline]
    fn each(&self, mut f: impl FnMut(usize, usize)) {
        let (k, s, p) = (self.k, self.stride, self.pad);
        let width = self.width();
        for gy in 0..self.gh {
            for gx in 0..self.gw {
                let row = (gy * self.gw + gx) * width;
                for c in 0..self.c {
                    for ky in 0..k {
                        let Some(iy) = (gy * s + ky).checked_sub(p).filter(|&y| y < self.h) else {
                            continue;
                        };
                        for kx in 0..k {
                            let Some(ix) = (gx * s + kx).checked_sub(p).filter(|&x| x < self.w)
                            else {
                                continue;
                            };
                            f(row + (c * k + ky) * k + kx, (c * self.h + iy) * self.w + ix);
                        }
                    }
                }
            }
        }
    }
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: only f32 is supported");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

fn check_len(op: &str, got: usize, want: usize, p: &Patches) -> Result<()> {
    if got != want {
        candle_core::bail!("{op}: input has {got} values, expected {want} for {p:?}");
    }
    Ok(())
}

/// Image `(b, c, h, w)` → patch matrix `(b·gh·gw, width)`; the constant column, if any, holds
/// `one` (1 forward; 0 when this is [`Col2Im`]'s adjoint, which has no such input).
struct Im2Col {
    p: Patches,
    one: f32,
}
/// Patch matrix → image, summing overlapping patches (the adjoint of [`Im2Col`]; the constant
/// column is dropped).
struct Col2Im(Patches);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "cpu-ops-im2col"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = self.p;
        let x = contiguous_f32(s, l, self.name())?;
        check_len(self.name(), x.len(), p.b * p.image_len(), &p)?;
        let per = p.matrix_len();
        let mut out = vec![0f32; p.b * per];
        out.par_chunks_mut(per)
            .zip(x.par_chunks(p.image_len()))
            .for_each(|(o, img)| {
                p.each(|ci, ii| o[ci] = img[ii]);
                if p.ones {
                    o.chunks_mut(p.width())
                        .for_each(|row| row[p.width() - 1] = self.one);
                }
            });
        Ok((CpuStorage::F32(out), (p.b * p.gh * p.gw, p.width()).into()))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Col2Im(self.p))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "cpu-ops-col2im"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = self.0;
        let cols = contiguous_f32(s, l, self.name())?;
        let per = p.matrix_len();
        check_len(self.name(), cols.len(), p.b * per, &p)?;
        let mut out = vec![0f32; p.b * p.image_len()];
        out.par_chunks_mut(p.image_len())
            .zip(cols.par_chunks(per))
            .for_each(|(img, o)| p.each(|ci, ii| img[ii] += o[ci]));
        Ok((CpuStorage::F32(out), (p.b, p.c, p.h, p.w).into()))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = Im2Col {
            p: self.0,
            one: 0.0,
        };
        Ok(Some(grad.contiguous()?.apply_op1(op)?))
    }
}

/// `x.conv2d(w, pad, stride, 1, 1) + b` for square kernels: `x (b, cin, h, w)`,
/// `w (cout, cin, k, k)`, `b (cout)`.
pub fn conv2d(x: &Tensor, w: &Tensor, b: &Tensor, pad: usize, stride: usize) -> Result<Tensor> {
    let (n, cin, h, wd) = x.dims4()?;
    let (cout, wcin, k, k2) = w.dims4()?;
    if wcin != cin
        || k2 != k
        || b.dims() != [cout]
        || stride == 0
        || h + 2 * pad < k
        || wd + 2 * pad < k
    {
        candle_core::bail!(
            "conv2d: input {:?}, kernel {:?} and bias {:?} (pad {pad}, stride {stride}) do not fit",
            x.dims(),
            w.dims(),
            b.dims()
        );
    }
    let (gh, gw) = (
        (h + 2 * pad - k) / stride + 1,
        (wd + 2 * pad - k) / stride + 1,
    );
    let p = Patches {
        b: n,
        c: cin,
        h,
        w: wd,
        k,
        stride,
        pad,
        gh,
        gw,
        ones: true,
    };
    let cols = x.contiguous()?.apply_op1(Im2Col { p, one: 1.0 })?;
    let wb = Tensor::cat(&[w.reshape((cout, cin * k * k))?, b.reshape((cout, 1))?], 1)?;
    cols.matmul(&wb.t()?)?
        .reshape((n, gh, gw, cout))?
        .permute((0, 3, 1, 2))?
        .contiguous()
}

/// `x.conv_transpose2d(w, pad, 0, stride, 1) + b` for square kernels: `x (b, cin, h, w)`,
/// `w (cin, cout, k, k)`, `b (cout)`, output `(b, cout, (h-1)·stride - 2·pad + k, …)`.
pub fn conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    pad: usize,
    stride: usize,
) -> Result<Tensor> {
    let (n, cin, h, wd) = x.dims4()?;
    let (wcin, cout, k, k2) = w.dims4()?;
    if wcin != cin || k2 != k || b.dims() != [cout] || stride == 0 || h == 0 || wd == 0 {
        candle_core::bail!(
            "conv_transpose2d: input {:?}, kernel {:?} and bias {:?} do not fit",
            x.dims(),
            w.dims(),
            b.dims()
        );
    }
    let (Some(oh), Some(ow)) = (
        ((h - 1) * stride + k).checked_sub(2 * pad),
        ((wd - 1) * stride + k).checked_sub(2 * pad),
    ) else {
        candle_core::bail!("conv_transpose2d: padding {pad} larger than the output");
    };
    let p = Patches {
        b: n,
        c: cout,
        h: oh,
        w: ow,
        k,
        stride,
        pad,
        gh: h,
        gw: wd,
        ones: false,
    };
    x.permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((n * h * wd, cin))?
        .matmul(&w.reshape((cin, cout * k * k))?)?
        .apply_op1(Col2Im(p))?
        .broadcast_add(&b.reshape((1, cout, 1, 1))?)
}

/// `max(x, 0) + slope·min(x, 0)`; the derivative at 0 is `slope` (as the runtime's AFV op).
struct LeakyRelu(f32);
/// `grad · (x > 0 ? 1 : slope)`: [`LeakyRelu`]'s backward, from `x` and the incoming gradient.
struct LeakyReluGrad(f32);

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "cpu-ops-leaky-relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let y = x
            .iter()
            .map(|&v| if v > 0.0 { v } else { v * self.0 })
            .collect();
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = arg.apply_op2_no_bwd(&grad.contiguous()?, &LeakyReluGrad(self.0))?;
        Ok(Some(g))
    }
}

impl CustomOp2 for LeakyReluGrad {
    fn name(&self) -> &'static str {
        "cpu-ops-leaky-relu-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        if x.len() != g.len() {
            candle_core::bail!("{}: {} values against {}", self.name(), x.len(), g.len());
        }
        let d = x
            .iter()
            .zip(g)
            .map(|(&v, &g)| if v > 0.0 { g } else { g * self.0 })
            .collect();
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}

/// LeakyReLU with one autograd node (see the module comment).
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op1(LeakyRelu(slope as f32))
}

/// Per-channel batch mean and (biased) variance of `x (n, c, hw)`, in f64 sums.
fn channel_stats(x: &[f32], n: usize, c: usize, hw: usize) -> (Vec<f32>, Vec<f32>) {
    let m = (n * hw) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s, mut q) = (0f64, 0f64);
            for b in 0..n {
                let plane = &x[(b * c + ch) * hw..(b * c + ch + 1) * hw];
                let (ps, pq) = plane
                    .iter()
                    .fold((0f32, 0f32), |(s, q), &v| (s + v, q + v * v));
                s += ps as f64;
                q += pq as f64;
            }
            let mean = s / m;
            (mean as f32, (q / m - mean * mean).max(0.0) as f32)
        })
        .unzip()
}

fn dims_ncx(l: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    let d = l.dims();
    if d.len() < 2 {
        candle_core::bail!("{op}: expected (n, c, ...), got {d:?}");
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

/// `relu(γ·(x − μ)/√(σ² + eps) + β)` with the batch's per-channel μ and σ² (training-mode
/// batch normalisation fused with the ReLU that follows it). One node forward and one
/// backward, two parallel passes each, instead of candle's dozen whole-tensor ops; the batch
/// statistics are left in `stats` for the caller's running averages.
struct BnRelu {
    eps: f32,
    stats: BatchStats,
}

/// Where [`BnRelu`]'s forward leaves the batch's per-channel (mean, variance).
type BatchStats = Arc<Mutex<Option<(Vec<f32>, Vec<f32>)>>>;

/// [`BnRelu`]'s backward from `x`, `y` and the incoming gradient: `dx` then `dγ`, `dβ`,
/// packed in one vector.
struct BnReluGrad {
    eps: f32,
    gamma: Vec<f32>,
}

impl CustomOp3 for BnRelu {
    fn name(&self) -> &'static str {
        "cpu-ops-bn-relu"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let gamma = contiguous_f32(s2, l2, self.name())?;
        let beta = contiguous_f32(s3, l3, self.name())?;
        let (n, c, hw) = dims_ncx(l1, self.name())?;
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!(
                "{}: {c} channels, γ {} β {}",
                self.name(),
                gamma.len(),
                beta.len()
            );
        }
        let (mean, var) = channel_stats(x, n, c, hw);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(p, (o, xi))| {
                let ch = p % c;
                let s = gamma[ch] / (var[ch] + self.eps).sqrt();
                let t = beta[ch] - mean[ch] * s;
                for (o, &v) in o.iter_mut().zip(xi) {
                    *o = (v * s + t).max(0.0);
                }
            });
        *self.stats.lock().expect("stats lock") = Some((mean, var));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = BnReluGrad {
            eps: self.eps,
            gamma: gamma.to_vec1()?,
        };
        let packed = x.apply_op3_no_bwd(y, &grad.contiguous()?, &op)?;
        let (len, c) = (x.elem_count(), op.gamma.len());
        Ok((
            Some(packed.narrow(0, 0, len)?.reshape(x.shape())?),
            Some(packed.narrow(0, len, c)?),
            Some(packed.narrow(0, len + c, c)?),
        ))
    }
}

impl CustomOp3 for BnReluGrad {
    fn name(&self) -> &'static str {
        "cpu-ops-bn-relu-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let y = contiguous_f32(s2, l2, self.name())?;
        let g = contiguous_f32(s3, l3, self.name())?;
        let (n, c, hw) = dims_ncx(l1, self.name())?;
        let (mean, var) = channel_stats(x, n, c, hw);
        let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        // Per channel: dβ = Σ g' and dγ = Σ g'·x̂, with g' = g where the ReLU passed.
        let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut sb, mut sg) = (0f64, 0f64);
                for b in 0..n {
                    let r = (b * c + ch) * hw..(b * c + ch + 1) * hw;
                    for ((&xv, &yv), &gv) in x[r.clone()].iter().zip(&y[r.clone()]).zip(&g[r]) {
                        if yv > 0.0 {
                            sb += gv as f64;
                            sg += (gv * (xv - mean[ch]) * inv[ch]) as f64;
                        }
                    }
                }
                (sb as f32, sg as f32)
            })
            .unzip();
        let m = (n * hw) as f32;
        let mut out = vec![0f32; x.len() + 2 * c];
        out[..x.len()]
            .par_chunks_mut(hw)
            .enumerate()
            .for_each(|(p, o)| {
                let ch = p % c;
                let base = p * hw;
                let k = self.gamma[ch] * inv[ch];
                let (mb, mg) = (dbeta[ch] / m, dgamma[ch] / m);
                for (j, o) in o.iter_mut().enumerate() {
                    let gv = if y[base + j] > 0.0 { g[base + j] } else { 0.0 };
                    let xhat = (x[base + j] - mean[ch]) * inv[ch];
                    *o = k * (gv - mb - xhat * mg);
                }
            });
        out[x.len()..x.len() + c].copy_from_slice(&dgamma);
        out[x.len() + c..].copy_from_slice(&dbeta);
        Ok((CpuStorage::F32(out), (x.len() + 2 * c).into()))
    }
}

/// Training-mode batch normalisation fused with ReLU over `x (n, c, ...)`; returns the
/// output and the batch's per-channel mean and biased variance (for running averages).
pub fn batch_norm_relu(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Vec<f32>, Vec<f32>)> {
    let stats = Arc::new(Mutex::new(None));
    let op = BnRelu {
        eps: eps as f32,
        stats: stats.clone(),
    };
    let y = x.contiguous()?.apply_op3(gamma, beta, op)?;
    let (mean, var) = stats
        .lock()
        .expect("stats lock")
        .take()
        .ok_or_else(|| candle_core::Error::Msg("bn-relu: no statistics".into()))?;
    Ok((y, mean, var))
}

/// `silu(x̂·a + b)` with `x̂` the group-normalised `x (n, c, ...)` (statistics per sample and
/// group of `c/groups` channels) and `a`, `b` per sample and channel `(n, c)`: GroupNorm's
/// affine map, any per-sample modulation (AdaGN) folded into it by the caller, and the SiLU
/// that always follows in a diffusion UNet. Measured on the DDPM's shapes (batch 64, 32x32,
/// 2 cores), candle's own ops for this took most of a training step in single-threaded
/// whole-tensor passes and page faults; here it is one parallel pass forward and two back.
struct GnSilu {
    groups: usize,
    eps: f32,
}

/// [`GnSilu`]'s backward from `x` and the incoming gradient: `dx`, then `da` and `db`
/// (`n·c` each), packed in one vector.
struct GnSiluGrad {
    groups: usize,
    eps: f32,
    a: Vec<f32>,
    b: Vec<f32>,
}

/// Mean and 1/std of one group's values, in f64 sums.
fn group_stats(v: &[f32], eps: f32) -> (f32, f32) {
    let (s, q) = v.iter().fold((0f64, 0f64), |(s, q), &x| {
        (s + x as f64, q + (x * x) as f64)
    });
    let m = v.len().max(1) as f64;
    let mean = s / m;
    let var = (q / m - mean * mean).max(0.0);
    (mean as f32, 1.0 / (var as f32 + eps).sqrt())
}

#[inline]
fn sigmoid(u: f32) -> f32 {
    1.0 / (1.0 + (-u).exp())
}

fn gn_dims(l: &Layout, groups: usize, ab: &[usize], op: &str) -> Result<(usize, usize, usize)> {
    let (n, c, hw) = dims_ncx(l, op)?;
    if groups == 0 || !c.is_multiple_of(groups) || ab.iter().any(|&len| len != n * c) {
        candle_core::bail!(
            "{op}: {c} channels in {groups} groups, scale/shift of {ab:?} values for {n}x{c}"
        );
    }
    Ok((n, c, hw))
}

impl CustomOp3 for GnSilu {
    fn name(&self) -> &'static str {
        "cpu-ops-gn-silu"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let a = contiguous_f32(s2, l2, self.name())?;
        let b = contiguous_f32(s3, l3, self.name())?;
        let (_, c, hw) = gn_dims(l1, self.groups, &[a.len(), b.len()], self.name())?;
        let cg = c / self.groups;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(cg * hw)
            .zip(x.par_chunks(cg * hw))
            .enumerate()
            .for_each(|(p, (yo, xi))| {
                let (mean, rstd) = group_stats(xi, self.eps);
                let first = (p / self.groups) * c + (p % self.groups) * cg;
                for (j, (yc, xc)) in yo.chunks_mut(hw).zip(xi.chunks(hw)).enumerate() {
                    let (av, bv) = (
                        a[first + j] * rstd,
                        b[first + j] - mean * rstd * a[first + j],
                    );
                    for (o, &v) in yc.iter_mut().zip(xc) {
                        let u = v * av + bv;
                        *o = u * sigmoid(u);
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = GnSiluGrad {
            groups: self.groups,
            eps: self.eps,
            a: a.flatten_all()?.to_vec1()?,
            b: b.flatten_all()?.to_vec1()?,
        };
        let packed = x.apply_op2_no_bwd(&grad.contiguous()?, &op)?;
        let (len, nc) = (x.elem_count(), op.a.len());
        Ok((
            Some(packed.narrow(0, 0, len)?.reshape(x.shape())?),
            Some(packed.narrow(0, len, nc)?.reshape(a.shape())?),
            Some(packed.narrow(0, len + nc, nc)?.reshape(b.shape())?),
        ))
    }
}

impl CustomOp2 for GnSiluGrad {
    fn name(&self) -> &'static str {
        "cpu-ops-gn-silu-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let (_, c, hw) = gn_dims(l1, self.groups, &[self.a.len(), self.b.len()], self.name())?;
        if g.len() != x.len() {
            candle_core::bail!(
                "{}: gradient of {} values for {}",
                self.name(),
                g.len(),
                x.len()
            );
        }
        let cg = c / self.groups;
        let mut dx = vec![0f32; x.len()];
        // Per group: the SiLU's gradient at u, da/db per channel, then dx from the
        // normalisation's Jacobian: rstd·(g_x̂ − mean(g_x̂) − x̂·mean(g_x̂·x̂)).
        let dab: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(cg * hw)
            .zip(x.par_chunks(cg * hw).zip(g.par_chunks(cg * hw)))
            .enumerate()
            .map(|(p, (dxo, (xi, gi)))| {
                let (mean, rstd) = group_stats(xi, self.eps);
                let first = (p / self.groups) * c + (p % self.groups) * cg;
                let (mut da, mut db) = (vec![0f32; cg], vec![0f32; cg]);
                let (mut s1, mut s2) = (0f64, 0f64);
                for j in 0..cg {
                    let (av, bv) = (self.a[first + j], self.b[first + j]);
                    let (mut sa, mut sb) = (0f64, 0f64);
                    let r = j * hw..(j + 1) * hw;
                    for ((o, &v), &gv) in dxo[r.clone()].iter_mut().zip(&xi[r.clone()]).zip(&gi[r])
                    {
                        let xhat = (v - mean) * rstd;
                        let u = xhat * av + bv;
                        let sg = sigmoid(u);
                        let du = gv * sg * (1.0 + u * (1.0 - sg));
                        sa += (du * xhat) as f64;
                        sb += du as f64;
                        let gx = du * av;
                        s1 += gx as f64;
                        s2 += (gx * xhat) as f64;
                        *o = gx;
                    }
                    da[j] = sa as f32;
                    db[j] = sb as f32;
                }
                let m = xi.len() as f64;
                let (m1, m2) = ((s1 / m) as f32, (s2 / m) as f32);
                for (o, &v) in dxo.iter_mut().zip(xi) {
                    let xhat = (v - mean) * rstd;
                    *o = rstd * (*o - m1 - xhat * m2);
                }
                (da, db)
            })
            .collect();
        let nc = self.a.len();
        let mut out = dx;
        out.reserve(2 * nc);
        out.extend(dab.iter().flat_map(|(da, _)| da.iter().copied()));
        out.extend(dab.iter().flat_map(|(_, db)| db.iter().copied()));
        let len = out.len();
        Ok((CpuStorage::F32(out), len.into()))
    }
}

/// `silu(GroupNorm(x)·a + b)` over `x (n, c, ...)` with `groups` groups and per-sample,
/// per-channel `a`, `b` of shape `(n, c)` (see [`GnSilu`]).
pub fn group_norm_silu(
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    groups: usize,
    eps: f64,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &a.contiguous()?,
        &b.contiguous()?,
        GnSilu {
            groups,
            eps: eps as f32,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Result<Var> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect();
        Var::from_tensor(&Tensor::from_vec(v, shape.to_vec(), &Device::Cpu)?)
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> Result<f32> {
        let a: Vec<f32> = a.flatten_all()?.to_vec1()?;
        let b: Vec<f32> = b.flatten_all()?.to_vec1()?;
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        Ok(a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale)))
    }

    /// Forward values and gradients (input, kernel and bias, through a random linear loss)
    /// equal candle's own ops.
    fn check(transposed: bool, x: &[usize], w: &[usize], pad: usize, stride: usize) -> Result<()> {
        let cout = if transposed { w[1] } else { w[0] };
        let (xv, wv, bv) = (rand(x, 1)?, rand(w, 2)?, rand(&[cout], 4)?);
        let (xt, wt, bt) = (xv.as_tensor(), wv.as_tensor(), bv.as_tensor());
        let ours = if transposed {
            conv_transpose2d(xt, wt, bt, pad, stride)?
        } else {
            conv2d(xt, wt, bt, pad, stride)?
        };
        let theirs = if transposed {
            xt.conv_transpose2d(wt, pad, 0, stride, 1)?
        } else {
            xt.conv2d(wt, pad, stride, 1, 1)?
        }
        .broadcast_add(&bt.reshape((1, cout, 1, 1))?)?;
        assert_eq!(ours.dims(), theirs.dims());
        let what = format!("transposed {transposed}, x {x:?}, w {w:?}, pad {pad}, stride {stride}");
        assert!(max_rel(&ours, &theirs)? < 1e-5, "forward: {what}");
        let probe = rand(theirs.dims(), 3)?;
        let go = (&ours * probe.as_tensor())?.sum_all()?.backward()?;
        let gt = (&theirs * probe.as_tensor())?.sum_all()?.backward()?;
        for (name, v) in [("input", &xv), ("kernel", &wv), ("bias", &bv)] {
            let (a, b) = (go.get(v).unwrap(), gt.get(v).unwrap());
            assert!(max_rel(a, b)? < 1e-5, "{name} gradient: {what}");
        }
        Ok(())
    }

    #[test]
    fn gemm_conv_equals_candle_forward_and_gradients() -> Result<()> {
        // The GAN's shapes (smaller batch), then odd ones: stride 1, no padding, non-square
        // images, padding wider than a border patch.
        check(false, &[3, 1, 28, 28], &[8, 1, 4, 4], 1, 2)?;
        check(false, &[3, 8, 14, 14], &[16, 8, 4, 4], 1, 2)?;
        check(false, &[2, 3, 9, 7], &[5, 3, 3, 3], 0, 1)?;
        check(false, &[2, 2, 6, 6], &[4, 2, 3, 3], 2, 2)?; // candle's own backward needs h == w here
        check(true, &[3, 16, 7, 7], &[16, 8, 4, 4], 1, 2)?;
        check(true, &[3, 8, 14, 14], &[8, 1, 4, 4], 1, 2)?;
        check(true, &[2, 3, 5, 4], &[3, 2, 3, 3], 0, 1)?;
        check(true, &[2, 4, 3, 5], &[4, 3, 4, 4], 1, 3)?;
        Ok(())
    }

    /// Values and gradient equal candle-nn's LeakyReLU (inputs kept away from 0, where the
    /// two choose different one-sided derivatives).
    #[test]
    fn leaky_relu_equals_candle_nn() -> Result<()> {
        // |x| >= 0.01 everywhere: magnitudes shifted away from 0, signs kept
        let x = rand(&[2, 3, 5, 7], 5)?.as_tensor().clone();
        let x = Var::from_tensor(&((x.abs()? + 0.01)? * x.sign()?)?)?;
        let smallest = x.as_tensor().abs()?.min_all()?.to_scalar::<f32>()?;
        assert!(smallest >= 0.0099, "{smallest}");
        let ours = leaky_relu(x.as_tensor(), 0.2)?;
        let theirs = candle_nn::ops::leaky_relu(x.as_tensor(), 0.2)?;
        assert!(max_rel(&ours, &theirs)? < 1e-7);
        let probe = rand(x.dims(), 6)?;
        let go = (&ours * probe.as_tensor())?.sum_all()?.backward()?;
        let gt = (&theirs * probe.as_tensor())?.sum_all()?.backward()?;
        assert!(max_rel(go.get(&x).unwrap(), gt.get(&x).unwrap())? < 1e-7);
        Ok(())
    }

    #[test]
    fn bad_shapes_are_errors() {
        let z = |s: &[usize]| Tensor::zeros(s, candle_core::DType::F32, &Device::Cpu).unwrap();
        let (x, b3, b5) = (z(&[1, 2, 4, 4]), z(&[3]), z(&[5]));
        let w = z(&[3, 5, 3, 3]);
        assert!(conv2d(&x, &w, &b3, 1, 1).is_err());
        assert!(conv_transpose2d(&x, &w, &b5, 1, 1).is_err());
        let w = z(&[3, 2, 9, 9]);
        assert!(conv2d(&x, &w, &b3, 1, 1).is_err());
        let w = z(&[3, 2, 3, 3]);
        assert!(conv2d(&x, &w, &b5, 1, 1).is_err());
        assert!(conv2d(&x, &w, &b3, 1, 1).is_ok());
        let w = z(&[2, 5, 3, 3]);
        assert!(conv_transpose2d(&x, &w, &b3, 1, 1).is_err());
        assert!(conv_transpose2d(&x, &w, &b5, 1, 1).is_ok());
    }

    /// The fused op's values and gradients (input, γ, β) equal the same function built from
    /// candle's own ops.
    #[test]
    fn batch_norm_relu_equals_candle_composite() -> Result<()> {
        let x = rand(&[3, 4, 5, 6], 11)?;
        let gamma = rand(&[4], 12)?;
        let beta = rand(&[4], 13)?;
        let probe = rand(&[3, 4, 5, 6], 14)?.as_tensor().detach();
        let (y, mean, var) =
            batch_norm_relu(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-5)?;
        let xs = x.as_tensor();
        let mu = xs.mean_keepdim(3)?.mean_keepdim(2)?.mean_keepdim(0)?;
        let v = xs
            .broadcast_sub(&mu)?
            .sqr()?
            .mean_keepdim(3)?
            .mean_keepdim(2)?
            .mean_keepdim(0)?;
        let want = xs
            .broadcast_sub(&mu)?
            .broadcast_div(&(&v + 1e-5)?.sqrt()?)?
            .broadcast_mul(&gamma.as_tensor().reshape((1, 4, 1, 1))?)?
            .broadcast_add(&beta.as_tensor().reshape((1, 4, 1, 1))?)?
            .relu()?;
        assert!(max_rel(&y, &want)? < 1e-5);
        let mu_v: Vec<f32> = mu.flatten_all()?.to_vec1()?;
        let var_v: Vec<f32> = v.flatten_all()?.to_vec1()?;
        for c in 0..4 {
            assert!((mean[c] - mu_v[c]).abs() < 1e-5 && (var[c] - var_v[c]).abs() < 1e-5);
        }
        let ga = (y * &probe)?.sum_all()?.backward()?;
        let gb = (want * &probe)?.sum_all()?.backward()?;
        for t in [x.as_tensor(), gamma.as_tensor(), beta.as_tensor()] {
            let r = max_rel(ga.get(t).unwrap(), gb.get(t).unwrap())?;
            assert!(r < 1e-4, "gradient differs by {r}");
        }
        Ok(())
    }

    #[test]
    fn group_norm_silu_equals_candle_composite() -> Result<()> {
        let (n, c, groups) = (3, 8, 4);
        let x = rand(&[n, c, 5, 6], 21)?;
        let a = rand(&[n, c], 22)?;
        let b = rand(&[n, c], 23)?;
        let probe = rand(&[n, c, 5, 6], 24)?.as_tensor().detach();
        let y = group_norm_silu(x.as_tensor(), a.as_tensor(), b.as_tensor(), groups, 1e-5)?;
        let xg = x.as_tensor().reshape((n, groups, c / groups * 30))?;
        let xc = xg.broadcast_sub(&xg.mean_keepdim(2)?)?;
        let var = xc.sqr()?.mean_keepdim(2)?;
        let want = xc
            .broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .reshape((n, c, 5, 6))?
            .broadcast_mul(&a.as_tensor().reshape((n, c, 1, 1))?)?
            .broadcast_add(&b.as_tensor().reshape((n, c, 1, 1))?)?
            .silu()?;
        assert!(max_rel(&y, &want)? < 1e-5);
        let ga = (y * &probe)?.sum_all()?.backward()?;
        let gb = (want * &probe)?.sum_all()?.backward()?;
        for t in [x.as_tensor(), a.as_tensor(), b.as_tensor()] {
            let r = max_rel(ga.get(t).unwrap(), gb.get(t).unwrap())?;
            assert!(r < 1e-4, "gradient differs by {r}");
        }
        assert!(group_norm_silu(x.as_tensor(), a.as_tensor(), b.as_tensor(), 3, 1e-5).is_err());
        Ok(())
    }
}
