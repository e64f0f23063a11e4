//! The plan's other kernels on the CPU, allocation-free, each with the twin's semantics
//! (pool, resize, softmax and argmax are the twins' own `*_into` functions; binary walks the
//! broadcast shape with nested loops instead of the twin's per-element division, computing
//! the same values).

use crate::params::{BinaryParams, PoolParams, ResizeParams, TransposeParams};
use crate::reference::activate;
use crate::reference::{nearest_index, src_coord};

/// An activation as a type, so each loop that applies one (a convolution's epilogue, a
/// binary op) is compiled for it and vectorises; the values are [`activate`]'s.
pub(super) trait Act {
    fn apply(code: i32, a: f32, b: f32, y: f32) -> f32;
}
pub(super) struct NoAct;
pub(super) struct Relu;
pub(super) struct Clip;
pub(super) struct HardSwish;
pub(super) struct HardSigmoid;
/// Any other code, through [`activate`].
pub(super) struct AnyAct;
impl Act for NoAct {
    #[inline(always)]
    fn apply(_: i32, _: f32, _: f32, y: f32) -> f32 {
        y
    }
}
impl Act for Relu {
    #[inline(always)]
    fn apply(_: i32, _: f32, _: f32, y: f32) -> f32 {
        if y < 0.0 { 0.0 } else { y }
    }
}
impl Act for Clip {
    #[inline(always)]
    fn apply(_: i32, a: f32, b: f32, y: f32) -> f32 {
        crate::reference::clip(y, a, b)
    }
}
impl Act for HardSwish {
    #[inline(always)]
    fn apply(_: i32, _: f32, _: f32, y: f32) -> f32 {
        y * crate::reference::clip(y / 6.0 + 0.5, 0.0, 1.0)
    }
}
impl Act for HardSigmoid {
    #[inline(always)]
    fn apply(_: i32, a: f32, b: f32, y: f32) -> f32 {
        crate::reference::clip(a * y + b, 0.0, 1.0)
    }
}
impl Act for AnyAct {
    #[inline(always)]
    fn apply(code: i32, a: f32, b: f32, y: f32) -> f32 {
        activate(y, code, a, b)
    }
}

/// `$body` with `$A` the [`Act`] type of activation code `$code`.
macro_rules! with_act {
    ($code:expr, $A:ident => $body:expr) => {
        match $code {
            $crate::params::act::NONE => {
                type $A = $crate::cpu::ops::NoAct;
                $body
            }
            $crate::params::act::RELU => {
                type $A = $crate::cpu::ops::Relu;
                $body
            }
            $crate::params::act::CLIP => {
                type $A = $crate::cpu::ops::Clip;
                $body
            }
            $crate::params::act::HARD_SWISH => {
                type $A = $crate::cpu::ops::HardSwish;
                $body
            }
            $crate::params::act::HARD_SIGMOID => {
                type $A = $crate::cpu::ops::HardSigmoid;
                $body
            }
            _ => {
                type $A = $crate::cpu::ops::AnyAct;
                $body
            }
        }
    };
}

/// `y = activate(a op b)` over the right-aligned 4-D broadcast shape of `p`, compiled once
/// per (op, activation) pair so the inner rows vectorise. `y` holds the outputs from outer
/// index `first` on (outer: the first two of the four dims together; each is `dims[2] *
/// dims[3]` outputs), as many as it has room for, so threads can split the work.
#[inline(always)]
pub fn binary(p: &BinaryParams, a: &[f32], b: &[f32], first: usize, y: &mut [f32]) {
    with_act!(p.act, A => match p.op {
        0 => binary_with::<A>(p, a, b, first, y, |u, v| u + v),
        1 => binary_with::<A>(p, a, b, first, y, |u, v| u - v),
        2 => binary_with::<A>(p, a, b, first, y, |u, v| u * v),
        3 => binary_with::<A>(p, a, b, first, y, |u, v| u / v),
        _ => scale_shift_with::<A>(p, a, b, first, y),
    })
}

/// Every innermost row of the broadcast shape that `y` covers (from outer index `first` on:
/// outer = the first two of the four dims together): `row(ia, ib, out)` with the row's first
/// offsets into `a` and `b` and its `dims[3]` outputs. Callers mark `row` `#[inline(always)]`:
/// a closure the optimiser leaves out of line is compiled without the calling kernel's target
/// features (baseline vector width).
#[inline(always)]
fn for_each_row<T>(
    p: &BinaryParams,
    first: usize,
    y: &mut [T],
    mut row: impl FnMut(usize, usize, &mut [T]),
) {
    let [_, d1, d2, d3] = p.dims.map(|d| d as usize);
    let [a0, a1, a2, _] = p.a_strides.map(|s| s as usize);
    let [b0, b1, b2, _] = p.b_strides.map(|s| s as usize);
    let outer = y.len() / (d2 * d3).max(1);
    for (o, block) in (first..first + outer).zip(y.chunks_exact_mut((d2 * d3).max(1))) {
        let (i0, i1) = (o / d1, o % d1);
        for (i2, out) in block.chunks_exact_mut(d3.max(1)).enumerate() {
            row(
                i0 * a0 + i1 * a1 + i2 * a2,
                i0 * b0 + i1 * b1 + i2 * b2,
                out,
            );
        }
    }
}

/// [`binary_op::SCALE_SHIFT`](crate::params::binary_op::SCALE_SHIFT): `a * b[ib] + b[ib +
/// shift_offset]`, a multiply then an add (two roundings, as the twin and the GPU with
/// `--fmad=false`).
#[inline(always)]
fn scale_shift_with<A: Act>(p: &BinaryParams, a: &[f32], b: &[f32], first: usize, y: &mut [f32]) {
    let act = |v: f32| A::apply(p.act, p.act_a, p.act_b, v);
    let (a3, b3) = (p.a_strides[3] as usize, p.b_strides[3] as usize);
    let shift = p.shift_offset as usize;
    for_each_row(
        p,
        first,
        y,
        #[inline(always)]
        |ia, ib, out| {
            let d3 = out.len();
            if a3 == 1 && b3 == 0 {
                let (m, c) = (b[ib], b[ib + shift]);
                for (o, u) in out.iter_mut().zip(&a[ia..ia + d3]) {
                    *o = act(*u * m + c);
                }
            } else {
                for (k, o) in out.iter_mut().enumerate() {
                    let j = ib + k * b3;
                    *o = act(a[ia + k * a3] * b[j] + b[j + shift]);
                }
            }
        },
    );
}

#[inline(always)]
fn binary_with<A: Act>(
    p: &BinaryParams,
    a: &[f32],
    b: &[f32],
    first: usize,
    y: &mut [f32],
    op: impl Fn(f32, f32) -> f32 + Copy,
) {
    let act = |v: f32| A::apply(p.act, p.act_a, p.act_b, v);
    let (a3, b3) = (p.a_strides[3] as usize, p.b_strides[3] as usize);
    for_each_row(
        p,
        first,
        y,
        #[inline(always)]
        |ia, ib, out| {
            let d3 = out.len();
            match (a3, b3) {
                (1, 1) => {
                    for ((o, u), v) in out.iter_mut().zip(&a[ia..ia + d3]).zip(&b[ib..ib + d3]) {
                        *o = act(op(*u, *v));
                    }
                }
                (1, 0) => {
                    let v = b[ib];
                    for (o, u) in out.iter_mut().zip(&a[ia..ia + d3]) {
                        *o = act(op(*u, v));
                    }
                }
                (0, 1) => {
                    let u = a[ia];
                    for (o, v) in out.iter_mut().zip(&b[ib..ib + d3]) {
                        *o = act(op(u, *v));
                    }
                }
                _ => {
                    for (k, o) in out.iter_mut().enumerate() {
                        *o = act(op(a[ia + k * a3], b[ib + k * b3]));
                    }
                }
            }
        },
    );
}

/// [`crate::reference::binary_i8`] for operands of one shape: int8 codes in, each dequantized,
/// `activate(a op b)`, requantized; the twin's f32 operations in its order. `q` holds the
/// (scale, zero point) of a, b and y.
#[inline(always)]
pub fn binary_i8(p: &BinaryParams, q: &[(f32, i32); 3], a: &[i8], b: &[i8], y: &mut [i8]) {
    with_act!(p.act, A => match p.op {
        0 => binary_i8_with::<A>(p, q, a, b, y, |u, v| u + v),
        1 => binary_i8_with::<A>(p, q, a, b, y, |u, v| u - v),
        2 => binary_i8_with::<A>(p, q, a, b, y, |u, v| u * v),
        _ => binary_i8_with::<A>(p, q, a, b, y, |u, v| u / v),
    })
}

/// [`crate::reference::scale_shift_i8`]: int8 codes dequantized, `a * b[ib] + b[ib +
/// shift_offset]` (f32 factors), activated, requantized; the outputs from outer index `first`
/// on, as [`binary`]. `q` holds the (scale, zero point) of a and y.
#[inline(always)]
pub fn scale_shift_i8(
    p: &BinaryParams,
    q: &[(f32, i32); 2],
    a: &[i8],
    b: &[f32],
    first: usize,
    y: &mut [i8],
) {
    with_act!(p.act, A => scale_shift_i8_with::<A>(p, q, a, b, first, y))
}

/// [`scale_shift_i8`] for one activation. The rows are walked here, not through
/// [`for_each_row`]: its closure would be compiled without the caller's target features.
#[inline(always)]
fn scale_shift_i8_with<A: Act>(
    p: &BinaryParams,
    q: &[(f32, i32); 2],
    a: &[i8],
    b: &[f32],
    first: usize,
    y: &mut [i8],
) {
    let [(sa, za), (sy, zy)] = *q;
    let [_, d1, d2, d3] = p.dims.map(|d| d as usize);
    let [a0, a1, a2, a3] = p.a_strides.map(|s| s as usize);
    let [b0, b1, b2, b3] = p.b_strides.map(|s| s as usize);
    let shift = p.shift_offset as usize;
    let outer = y.len() / (d2 * d3).max(1);
    for (o, block) in (first..first + outer).zip(y.chunks_exact_mut((d2 * d3).max(1))) {
        let (i0, i1) = (o / d1, o % d1);
        let (ia, ib) = (i0 * a0 + i1 * a1, i0 * b0 + i1 * b1);
        if a3 == 1 && a2 == d3 && b3 == 0 && b2 == 0 {
            // one channel's plane (NCHW, per-channel factors): its factors once, the codes
            // contiguous, one loop that vectorises however short the rows
            let (m, c) = (b[ib], b[ib + shift]);
            for (o, u) in block.iter_mut().zip(&a[ia..ia + d2 * d3]) {
                let u = (*u as i32 - za) as f32 * sa;
                *o = quantize_i8(A::apply(p.act, p.act_a, p.act_b, u * m + c), sy, zy);
            }
            continue;
        }
        for (i2, out) in block.chunks_exact_mut(d3.max(1)).enumerate() {
            let ia = ia + i2 * a2;
            let ib = ib + i2 * b2;
            if a3 == 1 && b3 == 0 {
                // one channel's row: its factors once, the codes contiguous (vectorises)
                let (m, c) = (b[ib], b[ib + shift]);
                for (o, u) in out.iter_mut().zip(&a[ia..ia + d3]) {
                    let u = (*u as i32 - za) as f32 * sa;
                    *o = quantize_i8(A::apply(p.act, p.act_a, p.act_b, u * m + c), sy, zy);
                }
                continue;
            }
            for (k, o) in out.iter_mut().enumerate() {
                let j = ib + k * b3;
                let u = (a[ia + k * a3] as i32 - za) as f32 * sa;
                let v = A::apply(p.act, p.act_a, p.act_b, u * b[j] + b[j + shift]);
                *o = quantize_i8(v, sy, zy);
            }
        }
    }
}

#[inline(always)]
fn binary_i8_with<A: Act>(
    p: &BinaryParams,
    q: &[(f32, i32); 3],
    a: &[i8],
    b: &[i8],
    y: &mut [i8],
    op: impl Fn(f32, f32) -> f32 + Copy,
) {
    let [(sa, za), (sb, zb), (sy, zy)] = *q;
    for ((o, u), v) in y.iter_mut().zip(a).zip(b) {
        let r = op((*u as i32 - za) as f32 * sa, (*v as i32 - zb) as f32 * sb);
        *o = quantize_i8(A::apply(p.act, p.act_a, p.act_b, r), sy, zy);
    }
}

/// [`crate::reference::pool`] without its per-tap bounds tests: every output visits its
/// taps in the twin's (row, column) order, so max and average equal the twin's bit for bit
/// (signed zeros and NaN included).
/// `y` holds the outputs of the planes (image × channel) from `first_plane` on, as many as
/// it has room for, so the planes can be spread over threads. A global average pool sums
/// eight channels side by side (eight independent chains, each in order).
#[inline(always)]
pub fn pool(p: &PoolParams, x: &[f32], first_plane: usize, y: &mut [f32]) {
    let (h, w, oh, ow) = (p.h as usize, p.w as usize, p.oh as usize, p.ow as usize);
    let planes = y.len() / (oh * ow).max(1);
    let global = oh == 1
        && ow == 1
        && p.kh as usize >= h
        && p.kw as usize >= w
        && p.pad_h == 0
        && p.pad_w == 0;
    if global && p.mode == 1 {
        let count = if p.count_include_pad != 0 {
            p.kh * p.kw
        } else {
            (h * w) as i32
        } as f32;
        for c0 in (0..planes).step_by(8) {
            let nb = 8.min(planes - c0);
            let mut acc = [0f32; 8];
            let xs = &x[(first_plane + c0) * h * w..];
            for i in 0..h * w {
                for (q, a) in acc.iter_mut().enumerate().take(nb) {
                    *a += xs[q * h * w + i];
                }
            }
            for q in 0..nb {
                y[c0 + q] = acc[q] / count;
            }
        }
        return;
    }
    let mut phases = [0f32; 2 * PHASE_ROW];
    for q in 0..planes {
        let xp = &x[(first_plane + q) * h * w..][..h * w];
        let yp = &mut y[q * oh * ow..][..oh * ow];
        if p.mode == 0 {
            let max = |o: &mut f32, v: f32| *o = if v > *o { v } else { *o };
            pool_plane(
                p,
                xp,
                yp,
                &mut phases,
                f32::NEG_INFINITY,
                false,
                max,
                |_, _| {},
            );
        } else {
            let add = |o: &mut f32, v: f32| *o += v;
            pool_plane(p, xp, yp, &mut phases, 0.0, false, add, |rows, out| {
                average(p, rows, out)
            });
        }
    }
}

/// [`crate::reference::pool_max_i8`]: max pooling of int8 codes, the planes from
/// `first_plane` on (as [`pool`]); a quarter of the float pool's bytes.
#[inline(always)]
pub fn pool_max_i8(p: &PoolParams, x: &[i8], first_plane: usize, y: &mut [i8]) {
    let (h, w, oh, ow) = (p.h as usize, p.w as usize, p.oh as usize, p.ow as usize);
    let planes = y.len() / (oh * ow).max(1);
    let mut phases = [0i8; 2 * PHASE_ROW];
    for q in 0..planes {
        let xp = &x[(first_plane + q) * h * w..][..h * w];
        let yp = &mut y[q * oh * ow..][..oh * ow];
        let max = |o: &mut i8, v: i8| *o = (*o).max(v);
        pool_plane(p, xp, yp, &mut phases, i8::MIN, true, max, |_, _| {});
    }
}

/// Longest input row a strided pool splits into its phases on the stack; longer rows take
/// the strided loads.
const PHASE_ROW: usize = 4096;

/// One plane of a pool: every output starts at `init` and takes `tap(out, value)` of each tap
/// inside the image, in the twin's (row, column) order (`max`, for int8 codes, where the
/// order cannot matter: the maximum of the rows, then of its columns, a third of the passes);
/// `finish(rows, out_row)` then sees each
/// output row with the count of its input rows inside the image. For stride s > 1 each input
/// row is first split into its s phases (columns j·s + r side by side), so every tap of a row
/// of outputs reads one contiguous run and the loop over outputs vectorises (`maxps` is
/// `v > o ? v : o`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pool_plane<T: Copy>(
    p: &PoolParams,
    xp: &[T],
    yp: &mut [T],
    phases: &mut [T],
    init: T,
    max: bool,
    tap: impl Fn(&mut T, T),
    finish: impl Fn(i32, &mut [T]),
) {
    let (w, ow) = (p.w as usize, p.ow as usize);
    let sw = p.stride_w;
    let split = sw > 1 && w <= phases.len() / 2;
    let plen = w.div_ceil(sw as usize);
    let mut runs = [None; 16];
    let cached = p.kw as usize <= runs.len();
    if cached {
        for sx in 0..p.kw {
            runs[sx as usize] = tap_run(p, sx, split, plen);
        }
    }
    let cols = TapColumns {
        p,
        split,
        plen,
        runs: cached.then_some(&runs),
    };
    // a max pool takes the rows' maximum first (one contiguous pass per row), then the
    // columns once: max is exact in any order
    let (phases, column) = phases.split_at_mut(phases.len() / 2);
    let by_columns = max && w <= column.len();
    for (oy, out) in yp.chunks_exact_mut(ow).enumerate() {
        out.fill(init);
        let mut rows = 0;
        for ry in 0..p.kh {
            let iy = oy as i32 * p.stride_h - p.pad_h + ry;
            if iy < 0 || iy >= p.h {
                continue;
            }
            let row = &xp[iy as usize * w..][..w];
            if !by_columns {
                cols.apply_row(row, out, phases, &tap);
            } else if rows == 0 {
                column[..w].copy_from_slice(row);
            } else {
                column[..w]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(o, v)| tap(o, *v));
            }
            rows += 1;
        }
        if by_columns && rows > 0 {
            cols.apply_row(&column[..w], out, phases, &tap);
        }
        finish(rows, out);
    }
}

/// A tap column's valid outputs `lo..hi` and where its run starts (see [`tap_run`]).
type TapRun = Option<(usize, usize, usize)>;

/// Where each tap column of a pool row reads, cached for up to 16 columns.
struct TapColumns<'a> {
    p: &'a PoolParams,
    split: bool,
    plen: usize,
    runs: Option<&'a [TapRun; 16]>,
}

impl TapColumns<'_> {
    /// Every tap column of one input row (or of the rows' maximum) into a row of outputs. (A
    /// function, not a closure: a closure's body is compiled without the calling kernel's
    /// target features, which kept the pools at SSE2 width.)
    #[inline(always)]
    fn apply_row<T: Copy>(
        &self,
        row: &[T],
        out: &mut [T],
        phases: &mut [T],
        tap: &impl Fn(&mut T, T),
    ) {
        let p = self.p;
        let sw = p.stride_w;
        if self.split {
            super::phases::split_row(row, phases, 0, self.plen, sw as usize, |v| v);
        }
        for sx in 0..p.kw {
            let run = match self.runs {
                Some(runs) => runs[sx as usize],
                None => tap_run(p, sx, self.split, self.plen),
            };
            let Some((lo, hi, start)) = run else {
                continue;
            };
            let dst = &mut out[lo..hi];
            if sw == 1 {
                let src = &row[start..][..hi - lo];
                dst.iter_mut().zip(src).for_each(|(o, v)| tap(o, *v));
            } else if self.split {
                let src = &phases[start..][..hi - lo];
                dst.iter_mut().zip(src).for_each(|(o, v)| tap(o, *v));
            } else {
                let off = sx - p.pad_w;
                for (k, o) in dst.iter_mut().enumerate() {
                    tap(o, row[((lo + k) as i32 * sw + off) as usize]);
                }
            }
        }
    }
}

/// Tap column `sx`'s valid outputs `lo..hi` (0 <= ox * stride - pad + sx < w) and where its
/// run starts in the row (or, `split`, in its phases of `plen`), the same for every row.
#[inline(always)]
fn tap_run(p: &PoolParams, sx: i32, split: bool, plen: usize) -> TapRun {
    let (sw, ow) = (p.stride_w, p.ow);
    let off = sx - p.pad_w;
    let lo = if off >= 0 { 0 } else { (-off + sw - 1) / sw };
    let hi = if p.w - off <= 0 {
        0
    } else {
        ((p.w - off + sw - 1) / sw).min(ow)
    };
    if lo >= hi {
        return None;
    }
    let start = if sw == 1 {
        (lo + off) as usize
    } else if split {
        // column ox·s + off = (ox + q)·s + r with off = q·s + r, 0 <= r < s
        let (q, r) = (off.div_euclid(sw), off.rem_euclid(sw) as usize);
        r * plen + (lo + q) as usize
    } else {
        0
    };
    Some((lo as usize, hi as usize, start))
}

/// An average pool's output row: each sum over its taps inside the image (or all taps, with
/// `count_include_pad`).
#[inline(always)]
fn average(p: &PoolParams, rows: i32, out: &mut [f32]) {
    let sw = p.stride_w;
    for (ox, o) in out.iter_mut().enumerate() {
        let n = if p.count_include_pad != 0 {
            p.kh * p.kw
        } else {
            let x0 = ox as i32 * sw - p.pad_w;
            rows * ((x0 + p.kw).min(p.w) - x0.max(0)).max(0)
        };
        *o /= n as f32;
    }
}

/// `$name(isa, args..)`: `$body(args..)` compiled for the instruction set `isa`. The worker
/// pool's tasks are closures, and a closure is a function of its own that does not inherit
/// its caller's target features: without this, the elementwise loops and pools that run as
/// pool tasks were compiled for SSE2 (a max pool at 5 GB/s, a scalar byte loop per phase).
macro_rules! for_isa {
    ($(#[$m:meta])* $name:ident => $body:ident ($($arg:ident: $ty:ty),*)) => {
        $(#[$m])*
        #[inline]
        pub fn $name(isa: super::isa::Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                use super::isa::Isa;
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,sse4.1")]
                fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                match isa {
                    // SAFETY: the CPU plan runs an instruction set this CPU has
                    Isa::Avx512 | Isa::Avx512Vnni => return unsafe { avx512($($arg),*) },
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    _ => {}
                }
            }
            let _ = isa;
            $body($($arg),*)
        }
    };
}

for_isa!(
    /// [`unary`] for an instruction set.
    unary_on => unary(x: &[f32], y: &mut [f32], code: i32, a: f32, b: f32)
);
for_isa!(
    /// [`binary`] for an instruction set.
    binary_on => binary(p: &BinaryParams, a: &[f32], b: &[f32], first: usize, y: &mut [f32])
);
for_isa!(
    /// [`binary_i8`] for an instruction set.
    binary_i8_on => binary_i8(p: &BinaryParams, q: &[(f32, i32); 3], a: &[i8], b: &[i8], y: &mut [i8])
);
for_isa!(
    /// [`scale_shift_i8`] for an instruction set.
    scale_shift_i8_on => scale_shift_i8(p: &BinaryParams, q: &[(f32, i32); 2], a: &[i8], b: &[f32], first: usize, y: &mut [i8])
);
for_isa!(
    /// [`quantize`] for an instruction set.
    quantize_on => quantize(x: &[f32], y: &mut [i8], s: f32, zp: i32)
);
for_isa!(
    /// [`pool`] for an instruction set.
    pool_on => pool(p: &PoolParams, x: &[f32], first_plane: usize, y: &mut [f32])
);
for_isa!(
    /// [`pool_max_i8`] for an instruction set.
    pool_max_i8_on => pool_max_i8(p: &PoolParams, x: &[i8], first_plane: usize, y: &mut [i8])
);
for_isa!(
    /// [`resize`] for an instruction set.
    resize_on => resize(p: &ResizeParams, x: &[f32], first_plane: usize, y: &mut [f32])
);

/// Widest output row [`resize`] takes (its per-column tables live on the stack).
pub const RESIZE_MAX_ROW: usize = 2048;

/// [`crate::reference::resize_into`] with the source columns (and, linear, their weights)
/// computed once per step instead of per element; the same f32 operations in the same
/// order, so equal to the twin bit for bit. `y` holds the planes from `first_plane` on.
/// Rows wider than [`RESIZE_MAX_ROW`] are the caller's to send to the twin.
#[inline(always)]
pub fn resize(p: &ResizeParams, x: &[f32], first_plane: usize, y: &mut [f32]) {
    let (h, w, oh, ow) = (p.h as usize, p.w as usize, p.oh as usize, p.ow as usize);
    let mut x0 = [0u32; RESIZE_MAX_ROW];
    let mut x1 = [0u32; RESIZE_MAX_ROW];
    let mut fx = [0f32; RESIZE_MAX_ROW];
    for ox in 0..ow {
        let sx = src_coord(ox as i32, p.w, p.ow, p.scale_w, p.coord);
        if p.mode == 0 {
            x0[ox] = nearest_index(sx, p.nearest_mode, p.w) as u32;
        } else {
            let sx = sx.max(0.0).min((p.w - 1) as f32);
            let a = sx as usize;
            x0[ox] = a as u32;
            x1[ox] = if a + 1 < w { a + 1 } else { a } as u32;
            fx[ox] = sx - a as f32;
        }
    }
    let planes = y.len() / (oh * ow).max(1);
    for q in 0..planes {
        let xp = &x[(first_plane + q) * h * w..][..h * w];
        for (oy, out) in y[q * oh * ow..][..oh * ow].chunks_exact_mut(ow).enumerate() {
            let sy = src_coord(oy as i32, p.h, p.oh, p.scale_h, p.coord);
            if p.mode == 0 {
                let row = &xp[nearest_index(sy, p.nearest_mode, p.h) * w..][..w];
                for (o, c) in out.iter_mut().zip(&x0[..ow]) {
                    *o = row[*c as usize];
                }
                continue;
            }
            let sy = sy.max(0.0).min((p.h - 1) as f32);
            let r0 = sy as usize;
            let r1 = if r0 + 1 < h { r0 + 1 } else { r0 };
            let fy = sy - r0 as f32;
            let (top, bot) = (&xp[r0 * w..][..w], &xp[r1 * w..][..w]);
            for ox in 0..ow {
                let (a, b, f) = (x0[ox] as usize, x1[ox] as usize, fx[ox]);
                let t = top[a] * (1.0 - f) + top[b] * f;
                let u = bot[a] * (1.0 - f) + bot[b] * f;
                out[ox] = t * (1.0 - fy) + u * fy;
            }
        }
    }
}

/// [`TransposeParams`] as nested loops over the five outer output dims, the innermost a
/// block copy where the permutation keeps the last axis (a channel shuffle does).
///
/// # Safety
/// `x` holds the input and `y` room for `p.n` elements; they do not overlap.
pub unsafe fn transpose<T: Copy>(p: &TransposeParams, x: *const T, y: *mut T) {
    let d = p.dims.map(|v| v as usize);
    let s = p.in_strides.map(|v| v as usize);
    let mut o = 0;
    for i0 in 0..d[0] {
        for i1 in 0..d[1] {
            for i2 in 0..d[2] {
                for i3 in 0..d[3] {
                    for i4 in 0..d[4] {
                        let at = i0 * s[0] + i1 * s[1] + i2 * s[2] + i3 * s[3] + i4 * s[4];
                        // SAFETY: `at + k·s[5]` and `o + k` are inside the tensors.
                        unsafe {
                            if s[5] == 1 {
                                std::ptr::copy_nonoverlapping(x.add(at), y.add(o), d[5]);
                            } else {
                                for k in 0..d[5] {
                                    *y.add(o + k) = *x.add(at + k * s[5]);
                                }
                            }
                        }
                        o += d[5];
                    }
                }
            }
        }
    }
}

#[inline(always)]
pub fn unary(x: &[f32], y: &mut [f32], code: i32, a: f32, b: f32) {
    with_act!(code, A => {
        for (o, v) in y.iter_mut().zip(x) {
            *o = A::apply(code, a, b, *v);
        }
    })
}

/// [`crate::reference::quantize_i8`] in operations that vectorise (the twin's scalar
/// `round_ties_even` and saturating `as` cost ResNet-50's INT8 1x1 layers two thirds of their
/// time): adding and subtracting 1.5 x 2^23 rounds half to even exactly for |y / s| < 2^22,
/// and beyond that both saturate to the same code.
#[inline(always)]
pub(crate) fn quantize_i8(y: f32, s: f32, zp: i32) -> i8 {
    const ROUND: f32 = 12_582_912.0;
    let r = ((y / s + ROUND) - ROUND) + zp as f32;
    // max/min, not clamp: NaN saturates to -128, as in the twin
    #[allow(clippy::manual_clamp)]
    let q = r.max(-128.0).min(127.0);
    // SAFETY: q is finite and within [-128, 127] (`as` would add a NaN test per element that
    // keeps the loop scalar)
    unsafe { q.to_int_unchecked::<i32>() as i8 }
}

/// Float to int8 codes: [`quantize_i8`] per element (run through [`quantize_on`], the loop
/// vectorises for the instruction set).
#[inline(always)]
pub fn quantize(x: &[f32], y: &mut [i8], s: f32, zp: i32) {
    for (o, v) in y.iter_mut().zip(x) {
        *o = quantize_i8(*v, s, zp);
    }
}

#[inline]
pub fn dequantize(x: &[i8], y: &mut [f32], s: f32, zp: i32) {
    for (o, q) in y.iter_mut().zip(x) {
        *o = (*q as i32 - zp) as f32 * s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_equals_the_twin() {
        let x: Vec<f32> = (0..2 * 3 * 9 * 11)
            .map(|i| ((i * 37) % 101) as f32 * 0.1 - 5.0)
            .collect();
        let base = PoolParams {
            n: 2,
            c: 3,
            h: 9,
            w: 11,
            ..Default::default()
        };
        let cases = [
            (3, 3, 2, 2, 1, 1, 0, 0), // max 3x3 s2 p1
            (3, 3, 2, 2, 1, 1, 1, 0), // average, padding not counted
            (3, 3, 2, 2, 1, 1, 1, 1), // average, padding counted
            (2, 2, 2, 2, 0, 0, 0, 0),
            (9, 11, 1, 1, 0, 0, 1, 0), // global average
            (9, 11, 1, 1, 0, 0, 0, 0), // global max
            (3, 3, 1, 1, 1, 1, 1, 0),  // Inception's 3x3 s1 average
            (3, 3, 1, 1, 1, 1, 0, 0),
            (3, 3, 2, 2, 0, 0, 0, 0), // SqueezeNet's max 3x3 s2
            (3, 2, 3, 3, 1, 1, 0, 0), // stride 3
            (2, 3, 2, 3, 1, 2, 1, 0),
        ];
        // signed zeros and NaN, where the order of the taps decides the result
        let mut x = x;
        for i in (0..x.len()).step_by(13) {
            x[i] = -0.0;
        }
        x[40] = f32::NAN;
        for (ceil, (kh, kw, sh, sw, ph, pw, mode, cip)) in cases
            .into_iter()
            .enumerate()
            .map(|(i, c)| ((i % 2) as i32, c))
        {
            // every other case as ceil_mode: one more output whose window leaves the image
            let oh = (9 + 2 * ph - kh + ceil * (sh - 1)) / sh + 1;
            let ow = (11 + 2 * pw - kw + ceil * (sw - 1)) / sw + 1;
            let p = PoolParams {
                oh,
                ow,
                kh,
                kw,
                stride_h: sh,
                stride_w: sw,
                pad_h: ph,
                pad_w: pw,
                mode,
                count_include_pad: cip,
                ..base
            };
            if mode == 0 {
                // the same windows over int8 codes, which take every value -128..=127
                let q: Vec<i8> = (0..x.len()).map(|i| (i * 97 % 256) as u8 as i8).collect();
                let want = crate::reference::pool_max_i8(&p, &q);
                let mut got = vec![0i8; want.len()];
                pool_max_i8(&p, &q, 0, &mut got);
                assert_eq!(got, want, "int8 {p:?}");
                let plane = (oh * ow) as usize;
                let mut part = vec![0i8; want.len() - 3 * plane];
                pool_max_i8(&p, &q, 3, &mut part);
                assert_eq!(part, want[3 * plane..], "int8 {p:?} from plane 3");
            }
            let want = crate::reference::pool(&p, &x);
            let mut got = vec![0f32; want.len()];
            pool(&p, &x, 0, &mut got);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{p:?}");
            // the planes from the fourth on, as a thread gets them
            let plane = (oh * ow) as usize;
            let mut part = vec![0f32; want.len() - 3 * plane];
            pool(&p, &x, 3, &mut part);
            assert_eq!(bits(&part), bits(&want[3 * plane..]), "{p:?} from plane 3");
        }
    }

    #[test]
    fn quantize_equals_the_twin_with_ties_nan_and_saturation() {
        let mut x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.37).collect();
        x.extend([
            0.5,
            1.5,
            2.5,
            -0.5,
            -2.5,
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            1e30,
        ]);
        for (s, zp) in [(1.0, 0), (0.5, -3), (0.02, 100)] {
            let mut y = vec![0i8; x.len()];
            quantize(&x, &mut y, s, zp);
            let want: Vec<i8> = x
                .iter()
                .map(|v| crate::reference::quantize_i8(*v, s, zp))
                .collect();
            assert_eq!(y, want, "scale {s} zp {zp}");
        }
    }

    #[test]
    fn binary_equals_the_twin_for_broadcasts() {
        // a: (2, 3, 4, 5), b broadcast along dims 0 and 3 (per-channel-row), and a scalar
        let a: Vec<f32> = (0..120).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..12).map(|i| 0.5 + i as f32).collect();
        for (b_strides, op) in [([0, 4, 1, 0], 3), ([0, 0, 0, 0], 1), ([0, 4, 1, 0], 2)] {
            let p = BinaryParams {
                n: 120,
                dims: [2, 3, 4, 5],
                a_strides: [60, 20, 5, 1],
                b_strides,
                op,
                act: crate::params::act::RELU,
                ..Default::default()
            };
            let want = crate::reference::binary(&p, &a, &b);
            let mut got = vec![0f32; 120];
            binary(&p, &a, &b, 0, &mut got);
            assert_eq!(got, want);
        }
        // same shapes, and a scalar left operand, under a non-trivial activation
        for (a_strides, op) in [([60, 20, 5, 1], 1), ([0, 0, 0, 0], 3)] {
            let p = BinaryParams {
                n: 120,
                dims: [2, 3, 4, 5],
                a_strides,
                b_strides: [60, 20, 5, 1],
                op,
                act: crate::params::act::HARD_SWISH,
                ..Default::default()
            };
            let b2: Vec<f32> = a.iter().map(|v| v * 3.0 + 0.25).collect();
            let want = crate::reference::binary(&p, &a, &b2);
            let mut got = vec![0f32; 120];
            binary(&p, &a, &b2, 0, &mut got);
            assert_eq!(got, want);
        }
    }

    #[test]
    fn binary_i8_equals_the_twin() {
        // every pair of codes, with saturation on both sides and each op and activation kind
        let a: Vec<i8> = (0..65536).map(|i| (i & 255) as u8 as i8).collect();
        let b: Vec<i8> = (0..65536).map(|i| (i >> 8) as u8 as i8).collect();
        for (op, act, q) in [
            (
                0,
                crate::params::act::RELU,
                [(0.05, -3), (0.02, 17), (0.06, -128)],
            ),
            (0, crate::params::act::NONE, [(0.5, 0), (0.5, 0), (0.01, 5)]),
            (
                1,
                crate::params::act::HARD_SWISH,
                [(0.1, 0), (0.07, -20), (0.05, 0)],
            ),
            (
                2,
                crate::params::act::NONE,
                [(0.02, 0), (0.03, 1), (0.004, -1)],
            ),
            (
                3,
                crate::params::act::CLIP,
                [(0.02, 0), (0.03, 1), (0.04, 0)],
            ),
        ] {
            let p = BinaryParams {
                n: 65536,
                dims: [1, 1, 256, 256],
                a_strides: [0, 0, 256, 1],
                b_strides: [0, 0, 256, 1],
                op,
                act,
                act_a: 0.0,
                act_b: 6.0,
                ..Default::default()
            };
            let want = crate::reference::binary_i8(&p, &q, &a, &b);
            let mut got = vec![0i8; want.len()];
            binary_i8(&p, &q, &a, &b, &mut got);
            assert_eq!(got, want, "op {op} act {act}");
        }
    }

    #[test]
    fn scale_shift_i8_equals_the_twin() {
        // NCHW (2, 3, 4, 5) with per-channel factors (the plane path), per-element factors
        // broadcast over the batch (the strided path), and every code
        let a: Vec<i8> = (0..120).map(|i| (i * 37 % 256) as u8 as i8).collect();
        let b: Vec<f32> = (0..120).map(|i| (i as f32 * 0.77).sin() * 2.0).collect();
        for (b_strides, shift, act) in [
            ([0, 1, 0, 0], 3, crate::params::act::RELU),
            ([0, 20, 5, 1], 60, crate::params::act::HARD_SWISH),
        ] {
            let p = BinaryParams {
                n: 120,
                dims: [2, 3, 4, 5],
                a_strides: [60, 20, 5, 1],
                b_strides,
                op: crate::params::binary_op::SCALE_SHIFT,
                act,
                shift_offset: shift,
                ..Default::default()
            };
            let q = [(0.05, -7), (0.03, 11)];
            let want = crate::reference::scale_shift_i8(&p, q, &a, &b);
            let mut got = vec![0i8; 120];
            scale_shift_i8(&p, &q, &a, &b, 0, &mut got);
            assert_eq!(got, want, "{b_strides:?}");
            // from outer index 2 on, as a thread gets them
            let mut part = vec![0i8; 80];
            scale_shift_i8(&p, &q, &a, &b, 2, &mut part);
            assert_eq!(part, want[40..], "{b_strides:?} from 2");
        }
    }

    #[test]
    fn resize_equals_the_twin_in_every_mode() {
        let x: Vec<f32> = (0..2 * 3 * 5 * 7)
            .map(|i| (i as f32 * 0.61).sin())
            .collect();
        for (oh, ow, mode, coord, nearest_mode) in [
            (10, 14, 0, 2, 1), // Upsample nearest x2
            (20, 28, 0, 0, 0), // x4 half_pixel round_prefer_floor
            (9, 11, 1, 0, 0),  // bilinear half_pixel, fractional scale
            (10, 14, 1, 1, 0), // align_corners
            (3, 4, 1, 3, 0),   // pytorch_half_pixel downscale
            (7, 9, 0, 0, 3),
        ] {
            let p = ResizeParams {
                n: 2,
                c: 3,
                h: 5,
                w: 7,
                oh,
                ow,
                mode,
                coord,
                nearest_mode,
                scale_h: oh as f32 / 5.0,
                scale_w: ow as f32 / 7.0,
            };
            let want = crate::reference::resize(&p, &x);
            let mut got = vec![0f32; want.len()];
            resize(&p, &x, 0, &mut got);
            assert_eq!(got, want, "{p:?}");
            let plane = (oh * ow) as usize;
            let mut part = vec![0f32; want.len() - 2 * plane];
            resize(&p, &x, 2, &mut part);
            assert_eq!(part, want[2 * plane..], "{p:?} from plane 2");
        }
    }

    #[test]
    fn transpose_moves_every_element_where_the_permutation_says() {
        // a channel shuffle (1, 3, 4, 5, 2) → perm [0, 2, 1, 3, 4], and a full reversal
        let shape = [1usize, 3, 4, 5, 2];
        let x: Vec<u32> = (0..120).collect();
        for perm in [[0usize, 2, 1, 3, 4], [4, 3, 2, 1, 0]] {
            let p = TransposeParams::new(&shape, &perm);
            let mut y = vec![0u32; 120];
            unsafe { transpose(&p, x.as_ptr(), y.as_mut_ptr()) };
            let strides = [120, 40, 10, 2, 1];
            let out_dims: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
            for (i, v) in y.iter().enumerate() {
                // decompose i over the output dims, read the input there
                let (mut rem, mut at) = (i, 0);
                for k in (0..5).rev() {
                    at += (rem % out_dims[k]) * strides[perm[k]];
                    rem /= out_dims[k];
                }
                assert_eq!(*v, x[at], "perm {perm:?} at {i}");
                assert_eq!(p.source(i), at);
            }
        }
    }

    #[test]
    fn scale_shift_equals_the_twin_per_channel_and_per_element() {
        use crate::params::{act, binary_op};
        let a: Vec<f32> = (0..120).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        // per channel of (2, 3, 4, 5): 3 scales then 3 shifts; per row along dim 3: 5 + 5
        let b: Vec<f32> = (0..10).map(|i| (i as f32 * 0.71).cos() * 1.7).collect();
        for (b_strides, shift_offset, code) in [
            ([0, 1, 0, 0], 3, act::RELU),
            ([0, 0, 0, 1], 5, act::NONE),
            ([0, 1, 0, 0], 3, act::HARD_SWISH),
        ] {
            let p = BinaryParams {
                n: 120,
                dims: [2, 3, 4, 5],
                a_strides: [60, 20, 5, 1],
                b_strides,
                op: binary_op::SCALE_SHIFT,
                act: code,
                shift_offset,
                ..Default::default()
            };
            let want = crate::reference::binary(&p, &a, &b);
            let mut got = vec![0f32; 120];
            binary(&p, &a, &b, 0, &mut got);
            assert_eq!(got, want, "{p:?}");
            // outer rows from the third on (each 20 outputs), as a thread gets them
            let mut part = vec![0f32; 80];
            binary(&p, &a, &b, 2, &mut part);
            assert_eq!(part, want[40..], "{p:?} from row 2");
            // and it is the affine map it claims to be
            let (i, ch) = (77, (77 / 20) % 3);
            let direct = crate::reference::activate(a[i] * b[ch] + b[ch + 3], code, 0.0, 0.0);
            if b_strides[1] == 1 {
                assert_eq!(got[i], direct);
            }
        }
    }
}
