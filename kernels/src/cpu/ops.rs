//! The plan's other kernels on the CPU, allocation-free, each with the twin's semantics
//! (pool, resize, softmax and argmax are the twins' own `*_into` functions; binary walks the
//! broadcast shape with nested loops instead of the twin's per-element division, computing
//! the same values).

use crate::params::{BinaryParams, PoolParams};
use crate::reference::activate;

/// An activation as a type, so each loop that applies one (a convolution's epilogue, a
/// binary op) is compiled for it and vectorises; the values are [`activate`]'s.
pub(super) trait Act {
    fn apply(code: i32, a: f32, b: f32, y: f32) -> f32;
}
pub(super) struct NoAct;
pub(super) struct Relu;
pub(super) struct Clip;
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
            _ => {
                type $A = $crate::cpu::ops::AnyAct;
                $body
            }
        }
    };
}

/// `y = activate(a op b)` over the right-aligned 4-D broadcast shape of `p`, compiled once
/// per (op, activation) pair so the inner rows vectorise.
#[inline(always)]
pub fn binary(p: &BinaryParams, a: &[f32], b: &[f32], y: &mut [f32]) {
    with_act!(p.act, A => match p.op {
        0 => binary_with::<A>(p, a, b, y, |u, v| u + v),
        1 => binary_with::<A>(p, a, b, y, |u, v| u - v),
        2 => binary_with::<A>(p, a, b, y, |u, v| u * v),
        _ => binary_with::<A>(p, a, b, y, |u, v| u / v),
    })
}

#[inline(always)]
fn binary_with<A: Act>(
    p: &BinaryParams,
    a: &[f32],
    b: &[f32],
    y: &mut [f32],
    op: impl Fn(f32, f32) -> f32 + Copy,
) {
    let act = |v: f32| A::apply(p.act, p.act_a, p.act_b, v);
    let [d0, d1, d2, d3] = p.dims.map(|d| d as usize);
    let [a0, a1, a2, a3] = p.a_strides.map(|s| s as usize);
    let [b0, b1, b2, b3] = p.b_strides.map(|s| s as usize);
    let mut i = 0;
    for i0 in 0..d0 {
        for i1 in 0..d1 {
            for i2 in 0..d2 {
                let ia = i0 * a0 + i1 * a1 + i2 * a2;
                let ib = i0 * b0 + i1 * b1 + i2 * b2;
                let out = &mut y[i..i + d3];
                i += d3;
                match (a3, b3) {
                    (1, 1) => {
                        for ((o, u), v) in out.iter_mut().zip(&a[ia..ia + d3]).zip(&b[ib..ib + d3])
                        {
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
            }
        }
    }
}

/// [`crate::reference::pool`] without its per-tap bounds tests: every output visits its
/// taps in the twin's (row, column) order, so max and average equal the twin's. A global
/// pool sums eight channels side by side (eight independent chains, each in order).
#[inline(always)]
pub fn pool(p: &PoolParams, x: &[f32], y: &mut [f32]) {
    let (h, w, oh, ow) = (p.h as usize, p.w as usize, p.oh as usize, p.ow as usize);
    let planes = (p.n * p.c) as usize;
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
            for i in 0..h * w {
                for (q, a) in acc.iter_mut().enumerate().take(nb) {
                    *a += x[(c0 + q) * h * w + i];
                }
            }
            for q in 0..nb {
                y[c0 + q] = acc[q] / count;
            }
        }
        return;
    }
    let mut taps = [0i32; 64];
    for nc in 0..planes {
        let xp = &x[nc * h * w..][..h * w];
        for oy in 0..oh {
            let out = &mut y[(nc * oh + oy) * ow..][..ow];
            out.fill(if p.mode == 0 { f32::NEG_INFINITY } else { 0.0 });
            let counts = &mut taps[..ow.min(64)];
            counts.fill(0);
            for ry in 0..p.kh {
                let iy = oy as i32 * p.stride_h - p.pad_h + ry;
                if iy < 0 || iy >= p.h {
                    continue;
                }
                let row = &xp[iy as usize * w..][..w];
                for sx in 0..p.kw {
                    // valid output columns: 0 <= ox * stride - pad + sx < w
                    let off = sx - p.pad_w;
                    let sw = p.stride_w;
                    let lo = if off >= 0 { 0 } else { (-off + sw - 1) / sw };
                    let hi = if p.w - off <= 0 {
                        0
                    } else {
                        ((p.w - off + sw - 1) / sw).min(ow as i32)
                    };
                    for ox in lo.max(0)..hi {
                        let v = row[(ox * sw + off) as usize];
                        let o = &mut out[ox as usize];
                        *o = if p.mode == 0 {
                            if v > *o { v } else { *o }
                        } else {
                            *o + v
                        };
                        if (ox as usize) < 64 {
                            counts[ox as usize] += 1;
                        }
                    }
                }
            }
            if p.mode == 1 {
                for (ox, o) in out.iter_mut().enumerate() {
                    let n = if p.count_include_pad != 0 {
                        p.kh * p.kw
                    } else if ox < 64 {
                        counts[ox]
                    } else {
                        // rare: rows wider than 64 without count_include_pad
                        pool_taps(p, oy as i32, ox as i32)
                    };
                    *o /= n as f32;
                }
            }
        }
    }
}

/// Valid taps of output (oy, ox) (the average's divisor without count_include_pad).
fn pool_taps(p: &PoolParams, oy: i32, ox: i32) -> i32 {
    let rows = (0..p.kh)
        .filter(|ry| (0..p.h).contains(&(oy * p.stride_h - p.pad_h + ry)))
        .count() as i32;
    let cols = (0..p.kw)
        .filter(|sx| (0..p.w).contains(&(ox * p.stride_w - p.pad_w + sx)))
        .count() as i32;
    rows * cols
}

#[inline]
pub fn unary(x: &[f32], y: &mut [f32], code: i32, a: f32, b: f32) {
    for (o, v) in y.iter_mut().zip(x) {
        *o = activate(*v, code, a, b);
    }
}

#[inline]
pub fn quantize(x: &[f32], y: &mut [i8], s: f32, zp: i32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is present.
        return unsafe { quantize_avx512(x, y, s, zp) };
    }
    for (o, v) in y.iter_mut().zip(x) {
        *o = crate::reference::quantize_i8(*v, s, zp);
    }
}

/// [`crate::reference::quantize_i8`] 16 lanes at a time, the same operations: a true
/// division, round half to even, `+ zp`, then `max(-128)` (which also turns NaN into -128,
/// as `maxps` returns its second operand for a NaN) and `min(127)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn quantize_avx512(x: &[f32], y: &mut [i8], s: f32, zp: i32) {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len());
    let (vs, vzp) = (_mm512_set1_ps(s), _mm512_set1_ps(zp as f32));
    let (lo, hi) = (_mm512_set1_ps(-128.0), _mm512_set1_ps(127.0));
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n for both slices.
        unsafe {
            let v = _mm512_div_ps(_mm512_loadu_ps(x.as_ptr().add(i)), vs);
            let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            let r = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(r, vzp), lo), hi);
            let q = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r));
            _mm_storeu_si128(y.as_mut_ptr().add(i) as *mut __m128i, q);
        }
        i += 16;
    }
    for (o, v) in y[i..n].iter_mut().zip(&x[i..n]) {
        *o = crate::reference::quantize_i8(*v, s, zp);
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
        ];
        for (kh, kw, sh, sw, ph, pw, mode, cip) in cases {
            let oh = (9 + 2 * ph - kh) / sh + 1;
            let ow = (11 + 2 * pw - kw) / sw + 1;
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
            let want = crate::reference::pool(&p, &x);
            let mut got = vec![0f32; want.len()];
            pool(&p, &x, &mut got);
            assert_eq!(got, want, "{p:?}");
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
            binary(&p, &a, &b, &mut got);
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
            binary(&p, &a, &b2, &mut got);
            assert_eq!(got, want);
        }
    }
}
