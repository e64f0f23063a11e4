//! Convolutions on the CPU, NCHW as the plan stores them.
//!
//! - [`GemmConv`] (groups = 1, and the 1x1 "convolutions" that matrix products lower to): a
//!   packed GEMM. Weights are packed at load into panels of [`MR`] output channels
//!   (`[panel][j][MR]`, j over the (c, r, s) taps); per task, a tile of output pixels is
//!   gathered (im2col) into the thread's scratch as panels of `nr` pixels (`[sub][j][nr]`);
//!   a micro-kernel keeps an `MR x nr` block of outputs in registers over all taps, and the
//!   epilogue adds the bias, applies the activation and stores (or requantizes) the block.
//!   INT8 stores activations as `x + 128` bytes (unsigned) four taps per 32-bit lane, the
//!   layout of `vpdpbusd`, and subtracts `(128 + zero point) * sum(w)` per channel after, so
//!   the integer sum is exactly the twin's `sum((x - zp) * w)`.
//! - [`DirectConv`] (grouped and depthwise): per output channel and row, taps outer and
//!   pixels inner, with the valid pixel range per tap computed once (no branch in the inner
//!   loop). Each output sums its taps in the twin's (c, r, s) order with separate multiply and
//!   add, so FP32 is bit-exact with the twin, as INT8 is.
//!
//! Both split their work over output tiles (GEMM) or channels (direct) for the pool.

use super::isa::Isa;
use crate::params::{ConvParams, out_mode};
use crate::reference::{activate, quantize_i8};

/// Output channels per weight panel (rows of the micro-kernel).
pub const MR: usize = 8;

/// Where a convolution writes: f32 values or requantized int8.
#[derive(Clone, Copy)]
pub enum OutBuf {
    F32(*mut f32),
    I8(*mut i8),
}

/// Where a convolution reads.
#[derive(Clone, Copy)]
pub enum InBuf {
    F32(*const f32),
    I8(*const i8),
}

/// Per-channel epilogue constants shared by both convolution kinds.
pub struct Epilogue {
    pub bias: Vec<f32>,
    /// INT8: input scale x weight scale per channel.
    pub mult: Vec<f32>,
    /// INT8 GEMM: `(128 + in_zp) * sum(w)` per channel (see the module header).
    pub corr: Vec<i32>,
}

impl Epilogue {
    /// The twin's float epilogue for one output: bias, activation.
    #[inline(always)]
    fn float(&self, p: &ConvParams, k: usize, acc: f32) -> f32 {
        activate(acc + self.bias[k], p.act, p.act_a, p.act_b)
    }

    /// The twin's INT8 epilogue: `acc * mult + bias` rounded twice, then activation.
    #[inline(always)]
    fn int(&self, p: &ConvParams, k: usize, acc: i32) -> f32 {
        activate(
            acc as f32 * self.mult[k] + self.bias[k],
            p.act,
            p.act_a,
            p.act_b,
        )
    }
}

/// Store one output value at element `i`.
///
/// # Safety
/// `i` lies inside the output tensor.
#[inline(always)]
unsafe fn store(p: &ConvParams, out: OutBuf, i: usize, y: f32) {
    unsafe {
        match out {
            OutBuf::F32(o) => *o.add(i) = y,
            OutBuf::I8(o) => *o.add(i) = quantize_i8(y, p.out_scale, p.out_zp),
        }
    }
}

/// Check that the plan's convolution can run here: float in f32 or int8 in int8, output
/// f32 or requantized int8 (the CPU engine runs F32 plans; FP16 storage is the GPU's).
pub fn check(p: &ConvParams, int8: bool) -> Result<(), String> {
    if p.out_mode == out_mode::F16 {
        return Err("FP16 output storage (lower with float = F32 for the CPU engine)".into());
    }
    if !int8 && p.out_mode == out_mode::I8 {
        return Err("a float convolution with int8 output".into());
    }
    if p.n < 1 || p.k < 1 || p.oh < 1 || p.ow < 1 || p.groups < 1 {
        return Err(format!("degenerate convolution {p:?}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// GEMM convolution

pub enum GemmWeights {
    /// `[panel][j][MR]`
    F32(Vec<f32>),
    /// `[panel][j/4][MR][4]`, j padded to a multiple of 4 with zeros.
    I8(Vec<i8>),
}

pub struct GemmConv {
    pub p: ConvParams,
    weights: GemmWeights,
    epi: Epilogue,
    isa: Isa,
    /// Pixels per micro-kernel column panel.
    nr: usize,
    /// Pixels per task (a multiple of `nr`).
    tile: usize,
    kdim: usize,
    /// kdim rounded up to 4 (INT8).
    kdim4: usize,
}

/// Pixels per micro-kernel call for an instruction set.
fn nr_for(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 | Isa::Avx512Vnni => 32,
        _ => 8,
    }
}

impl GemmConv {
    /// Pack float weights (`[k][kpad]` rows of the plan).
    pub fn new_f32(p: ConvParams, w: &[f32], bias: &[f32], isa: Isa) -> GemmConv {
        let (k, kdim, kpad) = (p.k as usize, p.kdim as usize, p.kpad as usize);
        let panels = k.div_ceil(MR);
        let mut packed = vec![0f32; panels * kdim * MR];
        for kk in 0..k {
            let (panel, r) = (kk / MR, kk % MR);
            for j in 0..kdim {
                packed[(panel * kdim + j) * MR + r] = w[kk * kpad + j];
            }
        }
        Self::finish(
            p,
            GemmWeights::F32(packed),
            Epilogue {
                bias: bias.to_vec(),
                mult: vec![],
                corr: vec![],
            },
            isa,
        )
    }

    /// Pack int8 weights; `wsum` is each row's sum (the plan's constant).
    pub fn new_i8(
        p: ConvParams,
        w: &[i8],
        wsum: &[i32],
        mult: &[f32],
        bias: &[f32],
        isa: Isa,
    ) -> GemmConv {
        let (k, kdim, kpad) = (p.k as usize, p.kdim as usize, p.kpad as usize);
        let kdim4 = kdim.div_ceil(4) * 4;
        let panels = k.div_ceil(MR);
        let mut packed = vec![0i8; panels * kdim4 * MR];
        for kk in 0..k {
            let (panel, r) = (kk / MR, kk % MR);
            for j in 0..kdim {
                packed[((panel * (kdim4 / 4) + j / 4) * MR + r) * 4 + j % 4] = w[kk * kpad + j];
            }
        }
        let corr = wsum.iter().map(|s| (128 + p.in_zp) * s).collect();
        Self::finish(
            p,
            GemmWeights::I8(packed),
            Epilogue {
                bias: bias.to_vec(),
                mult: mult.to_vec(),
                corr,
            },
            isa,
        )
    }

    fn finish(p: ConvParams, weights: GemmWeights, epi: Epilogue, isa: Isa) -> GemmConv {
        let kdim = p.kdim as usize;
        let nr = nr_for(isa);
        let pixels = (p.oh * p.ow) as usize;
        // A tile's gathered columns stay within ~96 KiB (L2-resident next to the weights).
        let bytes_per_pixel = kdim.max(1) * 4;
        let by_cache = (96 * 1024 / bytes_per_pixel / nr).max(1) * nr;
        let tile = by_cache.min(pixels.div_ceil(nr) * nr).min(8 * nr).max(nr);
        GemmConv {
            p,
            weights,
            epi,
            isa,
            nr,
            tile,
            kdim,
            kdim4: kdim.div_ceil(4) * 4,
        }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn is_int8(&self) -> bool {
        matches!(self.weights, GemmWeights::I8(_))
    }

    /// Independent tasks: output tiles of every image.
    pub fn tasks(&self) -> usize {
        let pixels = (self.p.oh * self.p.ow) as usize;
        self.p.n as usize * pixels.div_ceil(self.tile)
    }

    /// Scratch bytes one thread needs.
    pub fn scratch_bytes(&self) -> usize {
        self.tile * self.kdim4 * 4 + MR * self.nr * 4 + 64
    }

    /// Run task `t` (see [`GemmConv::tasks`]).
    ///
    /// # Safety
    /// `x` and `y` hold the whole input and output tensors; tasks write disjoint outputs;
    /// `scratch` holds [`GemmConv::scratch_bytes`] bytes, 4-byte aligned.
    pub unsafe fn run_task(&self, t: usize, x: InBuf, y: OutBuf, scratch: &mut [u8]) {
        let p = &self.p;
        let pixels = (p.oh * p.ow) as usize;
        let tiles = pixels.div_ceil(self.tile);
        let (img, p0) = (t / tiles, (t % tiles) * self.tile);
        let count = self.tile.min(pixels - p0);
        let subs = count.div_ceil(self.nr);
        let (cols, acc) = scratch.split_at_mut(self.tile * self.kdim4 * 4);
        let in_plane = (p.c * p.h * p.w) as usize;
        let out_img = img * p.k as usize * pixels;
        unsafe {
            match (x, &self.weights) {
                (InBuf::F32(x), GemmWeights::F32(w)) => {
                    let cols = as_f32(cols);
                    let x = std::slice::from_raw_parts(x.add(img * in_plane), in_plane);
                    for s in 0..subs {
                        let n = self.nr.min(count - s * self.nr);
                        let dst = &mut cols[s * self.kdim * self.nr..][..self.kdim * self.nr];
                        gather_f32(p, x, p0 + s * self.nr, n, self.nr, dst);
                    }
                    self.gemm_f32(w, cols, as_f32(acc), out_img, p0, count, y);
                }
                (InBuf::I8(x), GemmWeights::I8(w)) => {
                    let x = std::slice::from_raw_parts(x.add(img * in_plane), in_plane);
                    let per_sub = self.kdim4 * self.nr;
                    for s in 0..subs {
                        let n = self.nr.min(count - s * self.nr);
                        let dst = &mut cols[s * per_sub..][..per_sub];
                        gather_u8(p, x, p0 + s * self.nr, n, self.nr, self.kdim4, dst);
                    }
                    self.gemm_i8(w, cols, as_i32(acc), out_img, p0, count, y);
                }
                _ => unreachable!("input and weight types checked at load"),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_f32(
        &self,
        w: &[f32],
        cols: &[f32],
        acc: &mut [f32],
        out_img: usize,
        p0: usize,
        count: usize,
        y: OutBuf,
    ) {
        let p = &self.p;
        let (k, kdim, nr) = (p.k as usize, self.kdim, self.nr);
        let pixels = (p.oh * p.ow) as usize;
        for panel in 0..k.div_ceil(MR) {
            let a = &w[panel * kdim * MR..][..kdim * MR];
            for s in 0..count.div_ceil(nr) {
                let b = &cols[s * kdim * nr..][..kdim * nr];
                let acc = &mut acc[..MR * nr];
                micro_f32(self.isa, kdim, a, b, acc);
                let n = nr.min(count - s * nr);
                for r in 0..MR.min(k - panel * MR) {
                    let kk = panel * MR + r;
                    let base = out_img + kk * pixels + p0 + s * nr;
                    for (x, v) in acc[r * nr..][..n].iter().enumerate() {
                        unsafe { store(p, y, base + x, self.epi.float(p, kk, *v)) };
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_i8(
        &self,
        w: &[i8],
        cols: &[u8],
        acc: &mut [i32],
        out_img: usize,
        p0: usize,
        count: usize,
        y: OutBuf,
    ) {
        let p = &self.p;
        let (k, kdim4, nr) = (p.k as usize, self.kdim4, self.nr);
        let pixels = (p.oh * p.ow) as usize;
        for panel in 0..k.div_ceil(MR) {
            let a = &w[panel * kdim4 * MR..][..kdim4 * MR];
            for s in 0..count.div_ceil(nr) {
                let b = &cols[s * kdim4 * nr..][..kdim4 * nr];
                let acc = &mut acc[..MR * nr];
                micro_i8(self.isa, kdim4 / 4, a, b, acc);
                let n = nr.min(count - s * nr);
                for r in 0..MR.min(k - panel * MR) {
                    let kk = panel * MR + r;
                    let corr = self.epi.corr[kk];
                    let base = out_img + kk * pixels + p0 + s * nr;
                    for (x, v) in acc[r * nr..][..n].iter().enumerate() {
                        unsafe { store(p, y, base + x, self.epi.int(p, kk, v - corr)) };
                    }
                }
            }
        }
    }
}

fn as_f32(b: &mut [u8]) -> &mut [f32] {
    // SAFETY: scratch buffers are allocated as u64 words (8-byte aligned); any bit pattern
    // is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut f32, b.len() / 4) }
}

fn as_i32(b: &mut [u8]) -> &mut [i32] {
    // SAFETY: as `as_f32`.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut i32, b.len() / 4) }
}

/// Output pixel `q` of a plane as (row, column) for up to `nr` pixels from `p0`.
fn pixel_coords(p: &ConvParams, p0: usize, n: usize, oy: &mut [isize; 32], ox: &mut [isize; 32]) {
    let ow = p.ow as usize;
    let (mut y, mut x) = (p0 / ow, p0 % ow);
    for i in 0..n {
        oy[i] = (y * p.stride_h as usize) as isize - p.pad_h as isize;
        ox[i] = (x * p.stride_w as usize) as isize - p.pad_w as isize;
        x += 1;
        if x == ow {
            x = 0;
            y += 1;
        }
    }
}

fn is_pointwise(p: &ConvParams) -> bool {
    p.r == 1 && p.s == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0
}

/// im2col of `n` pixels from `p0` into `[j][nr]` (missing pixels and taps outside the
/// image are 0).
fn gather_f32(p: &ConvParams, x: &[f32], p0: usize, n: usize, nr: usize, dst: &mut [f32]) {
    let (h, w, r, s) = (p.h as isize, p.w as isize, p.r as usize, p.s as usize);
    let plane = (p.h * p.w) as usize;
    if is_pointwise(p) {
        for (c, row) in dst.chunks_exact_mut(nr).enumerate() {
            row[..n].copy_from_slice(&x[c * plane + p0..][..n]);
            row[n..].fill(0.0);
        }
        return;
    }
    let (mut oy, mut ox) = ([0isize; 32], [0isize; 32]);
    pixel_coords(p, p0, n, &mut oy, &mut ox);
    let (dh, dw) = (p.dil_h as isize, p.dil_w as isize);
    let mut j = 0;
    for c in 0..(p.c / p.groups) as usize {
        let xc = &x[c * plane..][..plane];
        for ry in 0..r {
            for sx in 0..s {
                let row = &mut dst[j * nr..][..nr];
                for i in 0..n {
                    let iy = oy[i] + ry as isize * dh;
                    let ix = ox[i] + sx as isize * dw;
                    row[i] = if iy >= 0 && iy < h && ix >= 0 && ix < w {
                        xc[(iy * w + ix) as usize]
                    } else {
                        0.0
                    };
                }
                row[n..].fill(0.0);
                j += 1;
            }
        }
    }
}

/// im2col of int8 activations as `x + 128` bytes in `[j/4][nr][4]`; taps outside the image
/// hold the zero point (`zp + 128`), so they add nothing after the correction.
#[allow(clippy::too_many_arguments)]
fn gather_u8(
    p: &ConvParams,
    x: &[i8],
    p0: usize,
    n: usize,
    nr: usize,
    kdim4: usize,
    dst: &mut [u8],
) {
    let (h, w, r, s) = (p.h as isize, p.w as isize, p.r as usize, p.s as usize);
    let plane = (p.h * p.w) as usize;
    let pad = (p.in_zp + 128) as u8;
    let kdim = p.kdim as usize;
    let (mut oy, mut ox) = ([0isize; 32], [0isize; 32]);
    pixel_coords(p, p0, n, &mut oy, &mut ox);
    let (dh, dw) = (p.dil_h as isize, p.dil_w as isize);
    let pointwise = is_pointwise(p);
    let mut put = |j: usize, i: usize, v: u8| dst[((j / 4) * nr + i) * 4 + j % 4] = v;
    let mut j = 0;
    for c in 0..(p.c / p.groups) as usize {
        let xc = &x[c * plane..][..plane];
        for ry in 0..r {
            for sx in 0..s {
                for i in 0..n {
                    let v = if pointwise {
                        (xc[p0 + i] as i32 + 128) as u8
                    } else {
                        let iy = oy[i] + ry as isize * dh;
                        let ix = ox[i] + sx as isize * dw;
                        if iy >= 0 && iy < h && ix >= 0 && ix < w {
                            (xc[(iy * w + ix) as usize] as i32 + 128) as u8
                        } else {
                            pad
                        }
                    };
                    put(j, i, v);
                }
                for i in n..nr {
                    put(j, i, pad);
                }
                j += 1;
            }
        }
    }
    // padded taps: weights are 0 there, any byte will do
    for j in kdim..kdim4 {
        for i in 0..nr {
            put(j, i, 0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Micro-kernels: acc[r][x] = sum_j a[j][r] * b[j][x]

fn micro_f32(isa: Isa, kdim: usize, a: &[f32], b: &[f32], acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the ISA was detected on this CPU; slices hold kdim x MR / kdim x nr.
        Isa::Avx512 | Isa::Avx512Vnni => unsafe { return micro_f32_avx512(kdim, a, b, acc) },
        Isa::Avx2 => unsafe { return micro_f32_avx2(kdim, a, b, acc) },
        Isa::Portable => {}
    }
    let _ = isa;
    micro_f32_generic::<8, false>(kdim, a, b, acc)
}

#[inline(always)]
fn micro_f32_generic<const NR: usize, const FMA: bool>(
    kdim: usize,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
) {
    let mut acc = [[0f32; NR]; MR];
    for (av, bv) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kdim) {
        for r in 0..MR {
            for x in 0..NR {
                acc[r][x] = if FMA {
                    av[r].mul_add(bv[x], acc[r][x])
                } else {
                    acc[r][x] + av[r] * bv[x]
                };
            }
        }
    }
    for r in 0..MR {
        out[r * NR..][..NR].copy_from_slice(&acc[r]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn micro_f32_avx2(kdim: usize, a: &[f32], b: &[f32], acc: &mut [f32]) {
    micro_f32_generic::<8, true>(kdim, a, b, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn micro_f32_avx512(kdim: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(a.len() >= kdim * MR && b.len() >= kdim * 32 && out.len() >= MR * 32);
    let mut acc = [_mm512_setzero_ps(); 2 * MR];
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    for j in 0..kdim {
        // SAFETY: j < kdim, bounds asserted above.
        unsafe {
            let b0 = _mm512_loadu_ps(pb.add(j * 32));
            let b1 = _mm512_loadu_ps(pb.add(j * 32 + 16));
            for r in 0..MR {
                let av = _mm512_set1_ps(*pa.add(j * MR + r));
                acc[2 * r] = _mm512_fmadd_ps(av, b0, acc[2 * r]);
                acc[2 * r + 1] = _mm512_fmadd_ps(av, b1, acc[2 * r + 1]);
            }
        }
    }
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: out holds MR x 32 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(i * 16), *v) };
    }
}

fn micro_i8(isa: Isa, k4: usize, a: &[i8], b: &[u8], acc: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the ISA was detected on this CPU; slices hold k4 x MR x 4 / k4 x nr x 4.
        Isa::Avx512Vnni => unsafe { return micro_i8_vnni(k4, a, b, acc) },
        Isa::Avx512 => unsafe { return micro_i8_avx2::<32>(k4, a, b, acc) },
        Isa::Avx2 => unsafe { return micro_i8_avx2::<8>(k4, a, b, acc) },
        Isa::Portable => {}
    }
    let _ = isa;
    micro_i8_generic::<8>(k4, a, b, acc)
}

#[inline(always)]
fn micro_i8_generic<const NR: usize>(k4: usize, a: &[i8], b: &[u8], out: &mut [i32]) {
    let mut acc = [[0i32; NR]; MR];
    for (av, bv) in a.chunks_exact(MR * 4).zip(b.chunks_exact(NR * 4)).take(k4) {
        for r in 0..MR {
            for x in 0..NR {
                let mut s = 0i32;
                for q in 0..4 {
                    s += bv[x * 4 + q] as i32 * av[r * 4 + q] as i32;
                }
                acc[r][x] += s;
            }
        }
    }
    for r in 0..MR {
        out[r * NR..][..NR].copy_from_slice(&acc[r]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn micro_i8_avx2<const NR: usize>(k4: usize, a: &[i8], b: &[u8], acc: &mut [i32]) {
    micro_i8_generic::<NR>(k4, a, b, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
fn micro_i8_vnni(k4: usize, a: &[i8], b: &[u8], out: &mut [i32]) {
    use std::arch::x86_64::*;
    assert!(a.len() >= k4 * MR * 4 && b.len() >= k4 * 128 && out.len() >= MR * 32);
    let mut acc = [_mm512_setzero_si512(); 2 * MR];
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    for j in 0..k4 {
        // SAFETY: j < k4, bounds asserted above.
        unsafe {
            let b0 = _mm512_loadu_si512(pb.add(j * 128) as *const _);
            let b1 = _mm512_loadu_si512(pb.add(j * 128 + 64) as *const _);
            for r in 0..MR {
                let w = _mm512_set1_epi32(std::ptr::read_unaligned(
                    pa.add((j * MR + r) * 4) as *const i32
                ));
                acc[2 * r] = _mm512_dpbusd_epi32(acc[2 * r], b0, w);
                acc[2 * r + 1] = _mm512_dpbusd_epi32(acc[2 * r + 1], b1, w);
            }
        }
    }
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: out holds MR x 32 i32.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(i * 16) as *mut _, *v) };
    }
}

// ---------------------------------------------------------------------------------------------
// Direct (grouped / depthwise) convolution

pub enum DirectWeights {
    F32(Vec<f32>),
    I8(Vec<i8>),
}

pub struct DirectConv {
    pub p: ConvParams,
    /// `[k][kpad]` as in the plan.
    weights: DirectWeights,
    epi: Epilogue,
}

impl DirectConv {
    pub fn new_f32(p: ConvParams, w: &[f32], bias: &[f32]) -> DirectConv {
        DirectConv {
            p,
            weights: DirectWeights::F32(w.to_vec()),
            epi: Epilogue {
                bias: bias.to_vec(),
                mult: vec![],
                corr: vec![],
            },
        }
    }

    pub fn new_i8(p: ConvParams, w: &[i8], mult: &[f32], bias: &[f32]) -> DirectConv {
        DirectConv {
            p,
            weights: DirectWeights::I8(w.to_vec()),
            epi: Epilogue {
                bias: bias.to_vec(),
                mult: mult.to_vec(),
                corr: vec![],
            },
        }
    }

    pub fn is_int8(&self) -> bool {
        matches!(self.weights, DirectWeights::I8(_))
    }

    /// One task per (image, output channel).
    pub fn tasks(&self) -> usize {
        (self.p.n * self.p.k) as usize
    }

    pub fn scratch_bytes(&self) -> usize {
        self.p.ow as usize * 4 + 64
    }

    /// # Safety
    /// As [`GemmConv::run_task`].
    pub unsafe fn run_task(&self, t: usize, x: InBuf, y: OutBuf, scratch: &mut [u8]) {
        let p = &self.p;
        let (k, c) = (p.k as usize, p.c as usize);
        let (img, kk) = (t / k, t % k);
        let groups = p.groups as usize;
        let (cpg, kpg) = (c / groups, k / groups);
        let c0 = (kk / kpg) * cpg;
        let plane = (p.h * p.w) as usize;
        let (oh, ow) = (p.oh as usize, p.ow as usize);
        let out_base = (img * k + kk) * oh * ow;
        let x_base = (img * c + c0) * plane;
        unsafe {
            match (x, &self.weights) {
                (InBuf::F32(x), DirectWeights::F32(w)) => {
                    let x = std::slice::from_raw_parts(x.add(x_base), cpg * plane);
                    let w = &w[kk * p.kpad as usize..][..p.kdim as usize];
                    let acc = &mut as_f32(scratch)[..ow];
                    for oy in 0..oh {
                        acc.fill(0.0);
                        taps(p, oy, cpg, |xi, wi, lo, hi| {
                            let wv = w[wi];
                            let stride = p.stride_w as usize;
                            for (i, a) in acc[lo..hi].iter_mut().enumerate() {
                                *a += x[xi + i * stride] * wv;
                            }
                        });
                        for (ox, a) in acc.iter().enumerate() {
                            store(p, y, out_base + oy * ow + ox, self.epi.float(p, kk, *a));
                        }
                    }
                }
                (InBuf::I8(x), DirectWeights::I8(w)) => {
                    let x = std::slice::from_raw_parts(x.add(x_base), cpg * plane);
                    let w = &w[kk * p.kpad as usize..][..p.kdim as usize];
                    let acc = &mut as_i32(scratch)[..ow];
                    let zp = p.in_zp;
                    for oy in 0..oh {
                        acc.fill(0);
                        taps(p, oy, cpg, |xi, wi, lo, hi| {
                            let wv = w[wi] as i32;
                            let stride = p.stride_w as usize;
                            for (i, a) in acc[lo..hi].iter_mut().enumerate() {
                                *a += (x[xi + i * stride] as i32 - zp) * wv;
                            }
                        });
                        for (ox, a) in acc.iter().enumerate() {
                            store(p, y, out_base + oy * ow + ox, self.epi.int(p, kk, *a));
                        }
                    }
                }
                _ => unreachable!("input and weight types checked at load"),
            }
        }
    }
}

/// For output row `oy`, every tap (ci, ry, sx) in the twin's order whose row is inside the
/// image, with the range `lo..hi` of output columns whose input column is inside too; `f`
/// gets the input index of column `lo` of that tap (column `ox` is at
/// `start + (ox - lo) * stride`) and the weight index.
#[inline(always)]
fn taps(p: &ConvParams, oy: usize, cpg: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    let (h, w) = (p.h as isize, p.w as isize);
    let plane = (p.h * p.w) as usize;
    let (sw, dw) = (p.stride_w as isize, p.dil_w as isize);
    let ow = p.ow as isize;
    for ci in 0..cpg {
        for ry in 0..p.r as usize {
            let iy = oy as isize * p.stride_h as isize + ry as isize * p.dil_h as isize
                - p.pad_h as isize;
            if iy < 0 || iy >= h {
                continue;
            }
            for sx in 0..p.s as usize {
                // ix = ox * sw + off, valid for 0 <= ix < w
                let off = sx as isize * dw - p.pad_w as isize;
                let lo = if off >= 0 { 0 } else { (-off + sw - 1) / sw };
                let hi = if w - off <= 0 {
                    0
                } else {
                    ((w - off + sw - 1) / sw).min(ow)
                };
                if lo >= hi {
                    continue;
                }
                // the input index of (iy, lo * sw + off), >= 0 by the choice of lo
                let row = (ci * plane) as isize + iy * w;
                let start = (row + off + lo * sw) as usize;
                let wi = (ci * p.r as usize + ry) * p.s as usize + sx;
                f(start, wi, lo as usize, hi as usize);
            }
        }
    }
}
