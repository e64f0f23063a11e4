//! CPU twins of the executor's kernels (conv.cu, ops.cu) and a CPU runner for a whole
//! [`KernelPlan`] over the same byte arena the GPU uses.
//!
//! Semantics are the kernels', operation for operation: int8 convolutions accumulate exactly
//! in i32 and round with the same f32 operations (bit-exact with `conv_i8_imma`,
//! `conv_i8_dp4a` and `conv_direct_i8`); float convolutions accumulate in f32 over taps in
//! (c, r, s) order, skipping taps outside the image (bit-exact with `conv_direct_f16`; the
//! tensor-core `conv_f16_mma` sums in another order and is checked to 1e-3 relative); f16
//! storage rounds to nearest even; `expf`-based ops (sigmoid, silu, softmax) may differ from
//! the GPU in the last bits.

use crate::params::{BinaryParams, ConvParams, PoolParams, ResizeParams, act, out_mode};
use crate::plan::{ConstData, DType, KernelPlan, Op, Step, TensorId};
use half::f16;

/// `cvt.f32.f16`: exact, and a NaN becomes the canonical f32 NaN (0x7fffffff) as on the GPU.
pub fn h2f(h: u16) -> f32 {
    let v = f16::from_bits(h).to_f32();
    if v.is_nan() {
        f32::from_bits(0x7fff_ffff)
    } else {
        v
    }
}

/// `cvt.rn.f16.f32`: round to nearest even, and a NaN becomes the canonical f16 NaN (0x7fff)
/// as on the GPU (half's own conversion keeps the payload).
pub fn f2h(f: f32) -> u16 {
    if f.is_nan() {
        0x7fff
    } else {
        f16::from_f32(f).to_bits()
    }
}

/// `clip_f()` of common.cuh: min(max(y, lo), hi) in ONNX's order (lo > hi gives hi), with
/// explicit comparisons, so -0 stays -0 and NaN passes through.
#[inline]
pub fn clip(y: f32, lo: f32, hi: f32) -> f32 {
    let t = if y < lo { lo } else { y };
    if t > hi { hi } else { t }
}

/// `activate()` of common.cuh.
#[inline]
pub fn activate(y: f32, code: i32, a: f32, b: f32) -> f32 {
    match code {
        act::RELU => {
            if y < 0.0 {
                0.0
            } else {
                y
            }
        }
        act::CLIP => clip(y, a, b),
        act::HARD_SIGMOID => clip(a * y + b, 0.0, 1.0),
        act::HARD_SWISH => y * clip(y / 6.0 + 0.5, 0.0, 1.0),
        act::SIGMOID => 1.0 / (1.0 + (-y).exp()),
        act::SILU => y / (1.0 + (-y).exp()),
        act::LEAKY_RELU => {
            if y > 0.0 {
                y
            } else {
                a * y
            }
        }
        _ => y,
    }
}

/// `quantize_i8()` of common.cuh (ONNX QuantizeLinear, signed domain).
#[inline]
pub fn quantize_i8(y: f32, s: f32, zp: i32) -> i8 {
    let r = (y / s).round_ties_even() + zp as f32;
    // max/min, not clamp: NaN must saturate to -128 as fmaxf does on the GPU
    #[allow(clippy::manual_clamp)]
    let q = r.max(-128.0).min(127.0);
    q as i32 as i8
}

/// A convolution's input, in its storage type.
pub enum ConvInput<'a> {
    I8(&'a [i8]),
    Float(&'a [f32]),
}

/// Convolution weights [k][kpad] in their storage type.
pub enum ConvWeights<'a> {
    I8(&'a [i8]),
    Float(&'a [f32]),
}

/// Output of a convolution before storage: the epilogue's f32 value per element (activation
/// applied); [`store_conv`] rounds it the way `out_mode` says.
pub fn conv(
    p: &ConvParams,
    x: ConvInput,
    w: ConvWeights,
    bias: &[f32],
    mult: Option<&[f32]>,
) -> Vec<f32> {
    let (n, c, h, wd) = (p.n as usize, p.c as usize, p.h as usize, p.w as usize);
    let (k, oh, ow) = (p.k as usize, p.oh as usize, p.ow as usize);
    let (r, s) = (p.r as usize, p.s as usize);
    let groups = p.groups.max(1) as usize;
    let (cpg, kpg) = (c / groups, k / groups);
    let kpad = p.kpad as usize;
    let plane = oh * ow;
    let mut out = vec![0f32; n * k * plane];
    let mut acc_f = vec![0f32; plane];
    let mut acc_i = vec![0i32; plane];
    for ni in 0..n {
        for ki in 0..k {
            let c0 = (ki / kpg) * cpg;
            acc_f.fill(0.0);
            acc_i.fill(0);
            for ci in 0..cpg {
                let xbase = (ni * c + c0 + ci) * h * wd;
                for ry in 0..r {
                    for sx in 0..s {
                        let widx = ki * kpad + (ci * r + ry) * s + sx;
                        for oy in 0..oh {
                            let iy = (oy * p.stride_h as usize + ry * p.dil_h as usize) as isize
                                - p.pad_h as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            let row = xbase + iy as usize * wd;
                            for ox in 0..ow {
                                let ix = (ox * p.stride_w as usize + sx * p.dil_w as usize)
                                    as isize
                                    - p.pad_w as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                let xi = row + ix as usize;
                                match (&x, &w) {
                                    (ConvInput::I8(xv), ConvWeights::I8(wv)) => {
                                        acc_i[oy * ow + ox] +=
                                            (xv[xi] as i32 - p.in_zp) * wv[widx] as i32
                                    }
                                    (ConvInput::Float(xv), ConvWeights::Float(wv)) => {
                                        acc_f[oy * ow + ox] += xv[xi] * wv[widx]
                                    }
                                    _ => panic!("conv reference: input and weight types differ"),
                                }
                            }
                        }
                    }
                }
            }
            let o = &mut out[(ni * k + ki) * plane..][..plane];
            for (j, v) in o.iter_mut().enumerate() {
                let y = match &x {
                    ConvInput::I8(_) => {
                        acc_i[j] as f32 * mult.expect("int8 conv needs mult")[ki] + bias[ki]
                    }
                    ConvInput::Float(_) => acc_f[j] + bias[ki],
                };
                *v = activate(y, p.act, p.act_a, p.act_b);
            }
        }
    }
    out
}

/// Storage of a convolution's output per `out_mode`, as raw bytes.
pub fn store_conv(p: &ConvParams, y: &[f32]) -> Vec<u8> {
    match p.out_mode {
        out_mode::F32 => y.iter().flat_map(|v| v.to_le_bytes()).collect(),
        out_mode::F16 => y.iter().flat_map(|v| f2h(*v).to_le_bytes()).collect(),
        _ => y
            .iter()
            .map(|v| quantize_i8(*v, p.out_scale, p.out_zp) as u8)
            .collect(),
    }
}

pub fn binary(p: &BinaryParams, a: &[f32], b: &[f32]) -> Vec<f32> {
    (0..p.n as usize)
        .map(|i| {
            let (mut rem, mut ia, mut ib) = (i as i32, 0i32, 0i32);
            for d in (0..4).rev() {
                let coord = rem % p.dims[d];
                rem /= p.dims[d];
                ia += coord * p.a_strides[d];
                ib += coord * p.b_strides[d];
            }
            let (u, v) = (a[ia as usize], b[ib as usize]);
            let r = match p.op {
                0 => u + v,
                1 => u - v,
                2 => u * v,
                3 => u / v,
                _ => u * v + b[(ib + p.shift_offset) as usize],
            };
            activate(r, p.act, p.act_a, p.act_b)
        })
        .collect()
}

/// A binary op on int8 codes into int8 codes (`binary_i8`): what a QDQ graph's
/// `DequantizeLinear` x2 → op (→ activation) → `QuantizeLinear` computes, in f32, in that order:
/// each operand dequantized `(q - zp) * s`, [`binary`], then [`quantize_i8`]. `q` holds the
/// (scale, zero point) of a, b and y.
pub fn binary_i8(p: &BinaryParams, q: &[(f32, i32); 3], a: &[i8], b: &[i8]) -> Vec<i8> {
    let dq = |v: &[i8], (s, zp): (f32, i32)| -> Vec<f32> {
        v.iter().map(|x| (*x as i32 - zp) as f32 * s).collect()
    };
    let (sy, zy) = q[2];
    binary(p, &dq(a, q[0]), &dq(b, q[1]))
        .into_iter()
        .map(|v| quantize_i8(v, sy, zy))
        .collect()
}

/// A per-channel affine map of int8 codes into int8 codes (`scale_shift_i8`): a QDQ graph's
/// `DequantizeLinear` → BatchNormalization (→ activation) → `QuantizeLinear`, as DenseNet's
/// pre-activations are: a dequantized, [`binary`]'s scale-shift with the f32 factors `b`,
/// requantized. `q` holds the (scale, zero point) of a and y.
pub fn scale_shift_i8(p: &BinaryParams, q: [(f32, i32); 2], a: &[i8], b: &[f32]) -> Vec<i8> {
    let (sa, za) = q[0];
    let a: Vec<f32> = a.iter().map(|x| (*x as i32 - za) as f32 * sa).collect();
    let (sy, zy) = q[1];
    binary(p, &a, b)
        .into_iter()
        .map(|v| quantize_i8(v, sy, zy))
        .collect()
}

/// The (scale, zero point) of an int8 binary step's operands and output, from their tensors
/// (a constant operand's is (1, 0): its values are f32).
pub fn binary_i8_quant(plan: &KernelPlan, s: &Step) -> Result<[(f32, i32); 3], String> {
    let q = |t: TensorId| {
        plan.tensors[t].quant.ok_or_else(|| {
            format!(
                "{}: int8 tensor without a quantization",
                plan.tensors[t].name
            )
        })
    };
    let b = match s.const_input(1) {
        Some(_) => (1.0, 0),
        None => q(s.inputs[1])?,
    };
    Ok([q(s.inputs[0])?, b, q(s.output)?])
}

pub fn pool(p: &PoolParams, x: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; (p.n * p.c * p.oh * p.ow) as usize];
    pool_into(p, x, &mut y);
    y
}

/// [`pool`] into a buffer of `n * c * oh * ow` values (allocates nothing).
pub fn pool_into(p: &PoolParams, x: &[f32], out: &mut [f32]) {
    let plane = (p.oh * p.ow) as usize;
    let (h, w) = (p.h as usize, p.w as usize);
    for (i, o) in out
        .iter_mut()
        .enumerate()
        .take((p.n * p.c) as usize * plane)
    {
        *o = {
            let (nc, pix) = (i / plane, i % plane);
            let (oy, ox) = ((pix / p.ow as usize) as i32, (pix % p.ow as usize) as i32);
            let xp = &x[nc * h * w..][..h * w];
            let mut acc = if p.mode == 0 { f32::NEG_INFINITY } else { 0.0 };
            let mut taps = 0;
            for ry in 0..p.kh {
                let iy = oy * p.stride_h - p.pad_h + ry;
                if iy < 0 || iy >= p.h {
                    continue;
                }
                for sx in 0..p.kw {
                    let ix = ox * p.stride_w - p.pad_w + sx;
                    if ix < 0 || ix >= p.w {
                        continue;
                    }
                    let v = xp[iy as usize * w + ix as usize];
                    // max: ties and NaN keep the running value (as pool_f16)
                    acc = if p.mode == 0 {
                        if v > acc { v } else { acc }
                    } else {
                        acc + v
                    };
                    taps += 1;
                }
            }
            if p.mode == 1 {
                let count = if p.count_include_pad != 0 {
                    p.kh * p.kw
                } else {
                    taps
                };
                acc /= count as f32;
            }
            acc
        };
    }
}

/// Max pooling of int8 codes (`pool_max_i8`): a max of codes is the code of the max, since
/// quantization is monotone, so a QDQ graph's `DequantizeLinear → MaxPool → QuantizeLinear`
/// with one scale runs on the codes alone. The float max pool over the codes (exact in f32;
/// a window with no tap inside the image, which ONNX shapes never produce, gives -128).
pub fn pool_max_i8(p: &PoolParams, x: &[i8]) -> Vec<i8> {
    let codes: Vec<f32> = x.iter().map(|v| *v as f32).collect();
    pool(&PoolParams { mode: 0, ..*p }, &codes)
        .into_iter()
        .map(|v| v as i8)
        .collect()
}

pub(crate) fn src_coord(o: i32, inn: i32, out: i32, scale: f32, coord: i32) -> f32 {
    match coord {
        0 => (o as f32 + 0.5) / scale - 0.5,
        1 if out > 1 => o as f32 * (inn - 1) as f32 / (inn as f32 * scale - 1.0),
        1 => 0.0,
        2 => o as f32 / scale,
        _ if out > 1 => (o as f32 + 0.5) / scale - 0.5,
        _ => 0.0,
    }
}

pub(crate) fn nearest_index(v: f32, mode: i32, inn: i32) -> usize {
    let half = v - v.floor() == 0.5;
    let r = match mode {
        0 if half => v.floor(),
        1 => v.floor(),
        2 => v.ceil(),
        3 if half => v.ceil(),
        _ => v.round_ties_even(),
    };
    (r as i32).clamp(0, inn - 1) as usize
}

pub fn resize(p: &ResizeParams, x: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; (p.n * p.c * p.oh * p.ow) as usize];
    resize_into(p, x, &mut y);
    y
}

/// [`resize`] into a buffer of `n * c * oh * ow` values (allocates nothing).
pub fn resize_into(p: &ResizeParams, x: &[f32], out: &mut [f32]) {
    let plane = (p.oh * p.ow) as usize;
    let (h, w) = (p.h as usize, p.w as usize);
    for (i, o) in out
        .iter_mut()
        .enumerate()
        .take((p.n * p.c) as usize * plane)
    {
        *o = (|| {
            let (nc, pix) = (i / plane, i % plane);
            let (oy, ox) = ((pix / p.ow as usize) as i32, (pix % p.ow as usize) as i32);
            let xp = &x[nc * h * w..][..h * w];
            let sy = src_coord(oy, p.h, p.oh, p.scale_h, p.coord);
            let sx = src_coord(ox, p.w, p.ow, p.scale_w, p.coord);
            if p.mode == 0 {
                return xp[nearest_index(sy, p.nearest_mode, p.h) * w
                    + nearest_index(sx, p.nearest_mode, p.w)];
            }
            let sy = sy.max(0.0).min((p.h - 1) as f32);
            let sx = sx.max(0.0).min((p.w - 1) as f32);
            let (y0, x0) = (sy as usize, sx as usize);
            let y1 = if y0 + 1 < h { y0 + 1 } else { y0 };
            let x1 = if x0 + 1 < w { x0 + 1 } else { x0 };
            let (fy, fx) = (sy - y0 as f32, sx - x0 as f32);
            let top = xp[y0 * w + x0] * (1.0 - fx) + xp[y0 * w + x1] * fx;
            let bot = xp[y1 * w + x0] * (1.0 - fx) + xp[y1 * w + x1] * fx;
            top * (1.0 - fy) + bot * fy
        })();
    }
}

pub fn softmax(x: &[f32], outer: usize, len: usize, inner: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    softmax_into(x, outer, len, inner, &mut y);
    y
}

/// [`softmax`] into a buffer as long as `x` (allocates nothing).
pub fn softmax_into(x: &[f32], outer: usize, len: usize, inner: usize, y: &mut [f32]) {
    for i in 0..outer * inner {
        let base = (i / inner) * len * inner + i % inner;
        let at = |j: usize| base + j * inner;
        let mx = (0..len).fold(
            f32::NEG_INFINITY,
            |m, j| if x[at(j)] > m { x[at(j)] } else { m },
        );
        let sum: f32 = (0..len).fold(0.0, |s, j| s + (x[at(j)] - mx).exp());
        for j in 0..len {
            y[at(j)] = (x[at(j)] - mx).exp() / sum;
        }
    }
}

/// Ties take the lower class, like `argmax_f16` and `bev_argmax`.
pub fn argmax(x: &[f32], classes: usize, cells: usize) -> Vec<u8> {
    let mut y = vec![0u8; cells];
    argmax_into(x, classes, cells, &mut y);
    y
}

/// [`argmax`] into `cells` bytes (allocates nothing).
pub fn argmax_into(x: &[f32], classes: usize, cells: usize, out: &mut [u8]) {
    for (i, o) in out.iter_mut().enumerate().take(cells) {
        *o = {
            let mut best = 0;
            let mut bv = x[i];
            for c in 1..classes {
                if x[c * cells + i] > bv {
                    bv = x[c * cells + i];
                    best = c;
                }
            }
            best as u8
        };
    }
}

// ---------------------------------------------------------------------------------------------
// Whole plans over the arena

/// Read a float tensor (f32 or f16 storage) from the arena.
pub fn read_float(plan: &KernelPlan, arena: &[u8], t: TensorId) -> Vec<f32> {
    let d = &plan.tensors[t];
    let bytes = &arena[plan.offsets[t]..][..d.bytes()];
    match d.dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| h2f(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        DType::I8 => panic!("{}: read as float but stored as int8", d.name),
    }
}

/// Int8 values into tensor `t`.
fn write_i8(plan: &KernelPlan, arena: &mut [u8], t: TensorId, v: &[i8]) {
    let dst = &mut arena[plan.offsets[t]..][..v.len()];
    for (o, x) in dst.iter_mut().zip(v) {
        *o = *x as u8;
    }
}

pub fn read_i8(plan: &KernelPlan, arena: &[u8], t: TensorId) -> Vec<i8> {
    let d = &plan.tensors[t];
    arena[plan.offsets[t]..][..d.bytes()]
        .iter()
        .map(|b| *b as i8)
        .collect()
}

/// Store f32 values into a tensor of any float type (rounding to its storage).
pub fn write_float(plan: &KernelPlan, arena: &mut [u8], t: TensorId, v: &[f32]) {
    let d = &plan.tensors[t];
    let dst = &mut arena[plan.offsets[t]..][..d.bytes()];
    match d.dtype {
        DType::F32 => {
            for (o, x) in dst.chunks_exact_mut(4).zip(v) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
        DType::F16 => {
            for (o, x) in dst.chunks_exact_mut(2).zip(v) {
                o.copy_from_slice(&f2h(*x).to_le_bytes());
            }
        }
        DType::I8 => panic!("{}: written as float but stored as int8", d.name),
    }
}

/// A constant's values as f32 (whatever its storage).
pub fn const_f32(c: &ConstData) -> Vec<f32> {
    match c {
        ConstData::F32(v) => v.clone(),
        ConstData::F16(v) => v.iter().map(|h| h2f(*h)).collect(),
        ConstData::I8(v) => v.iter().map(|x| *x as f32).collect(),
        ConstData::I32(v) => v.iter().map(|x| *x as f32).collect(),
    }
}

/// Operand `pos` of a step as floats: a tensor from the arena or a constant.
fn operand(plan: &KernelPlan, arena: &[u8], step: &Step, pos: usize) -> Vec<f32> {
    match step.const_input(pos) {
        Some(c) => const_f32(&plan.consts[c]),
        None => read_float(plan, arena, step.inputs[pos]),
    }
}

/// How many LSB an int8 step's kernel output may differ from this twin: 0 where the kernel
/// computes exactly what the twin does (integer accumulation, exactly rounded epilogues);
/// 1 where it cannot: a tensor-core FP16 GEMM requantized to int8 adds in another order, and
/// an `expf` activation is within 2 ulp before rounding.
pub fn int8_tolerance(step: &Step) -> i32 {
    use crate::plan::ConvKernel;
    match &step.op {
        Op::Conv { kernel, p, .. } if p.out_mode == out_mode::I8 => {
            i32::from(*kernel == ConvKernel::GemmF16 || !act::is_exact(p.act))
        }
        _ => 0,
    }
}

/// One step's kernel output against this twin's, both read from arenas after the step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCheck {
    pub bit_exact: bool,
    /// int8: the largest difference in LSB; float: the largest difference relative to the
    /// twin's largest magnitude.
    pub err: f64,
    /// int8 within [`int8_tolerance`]; float within 1e-3 (FP16 storage) and finite.
    pub pass: bool,
}

/// Compare the output tensor of `step` in `got` (the kernel's arena) with `want` (the twin's).
pub fn compare_step(plan: &KernelPlan, step: &Step, want: &[u8], got: &[u8]) -> StepCheck {
    let t = step.output;
    let (o, n) = (plan.offsets[t], plan.tensors[t].bytes());
    let bit_exact = want[o..o + n] == got[o..o + n];
    match plan.tensors[t].dtype {
        DType::I8 => {
            let lsb = want[o..o + n]
                .iter()
                .zip(&got[o..o + n])
                .map(|(a, b)| (*a as i8 as i32 - *b as i8 as i32).abs())
                .max()
                .unwrap_or(0);
            StepCheck {
                bit_exact,
                err: lsb as f64,
                pass: lsb <= int8_tolerance(step),
            }
        }
        _ => {
            let a = output_f32(plan, got, t);
            let b = output_f32(plan, want, t);
            let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let e = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()))
                / scale;
            StepCheck {
                bit_exact,
                err: e as f64,
                pass: bit_exact || (e <= 1e-3 && e.is_finite()),
            }
        }
    }
}

/// The steps on int8 codes that have float twins of the same op (a binary op, a max pool);
/// false for any other step.
fn run_int8_step(plan: &KernelPlan, step: &Step, arena: &mut [u8]) -> bool {
    if plan.tensors[step.inputs[0]].dtype != DType::I8 {
        return false;
    }
    let x = read_i8(plan, arena, step.inputs[0]);
    let y = match &step.op {
        Op::Binary(p) if step.const_input(1).is_some() => {
            let q = binary_i8_quant(plan, step).expect("an int8 binary op on quantized tensors");
            scale_shift_i8(p, [q[0], q[2]], &x, &operand(plan, arena, step, 1))
        }
        Op::Binary(p) => {
            let q = binary_i8_quant(plan, step).expect("an int8 binary op on quantized tensors");
            binary_i8(p, &q, &x, &read_i8(plan, arena, step.inputs[1]))
        }
        Op::Pool(p) => pool_max_i8(p, &x),
        _ => return false,
    };
    write_i8(plan, arena, step.output, &y);
    true
}

/// Run one step on the host arena, exactly as its kernel would on the device arena.
pub fn run_step(plan: &KernelPlan, step: &Step, arena: &mut [u8]) {
    if run_int8_step(plan, step, arena) {
        return;
    }
    let out = step.output;
    let od = &plan.tensors[out];
    match &step.op {
        Op::Conv {
            p,
            weights,
            bias,
            mult,
            ..
        } => {
            let bias = const_f32(&plan.consts[*bias]);
            let y = match (&plan.consts[*weights], plan.tensors[step.inputs[0]].dtype) {
                (ConstData::I8(w), DType::I8) => {
                    let x = read_i8(plan, arena, step.inputs[0]);
                    let mult = mult.map(|m| const_f32(&plan.consts[m]));
                    conv(
                        p,
                        ConvInput::I8(&x),
                        ConvWeights::I8(w),
                        &bias,
                        mult.as_deref(),
                    )
                }
                (wc, _) => {
                    let x = read_float(plan, arena, step.inputs[0]);
                    let w = const_f32(wc);
                    conv(p, ConvInput::Float(&x), ConvWeights::Float(&w), &bias, None)
                }
            };
            let bytes = store_conv(p, &y);
            arena[plan.offsets[out]..][..bytes.len()].copy_from_slice(&bytes);
        }
        Op::Unary { act: code, a, b } => {
            let x = read_float(plan, arena, step.inputs[0]);
            let y: Vec<f32> = x.iter().map(|v| activate(*v, *code, *a, *b)).collect();
            write_float(plan, arena, out, &y);
        }
        Op::Binary(p) => {
            let a = operand(plan, arena, step, 0);
            let b = operand(plan, arena, step, 1);
            write_float(plan, arena, out, &binary(p, &a, &b));
        }
        Op::Pool(p) => {
            let y = pool(p, &read_float(plan, arena, step.inputs[0]));
            write_float(plan, arena, out, &y);
        }
        Op::Resize(p) => {
            let y = resize(p, &read_float(plan, arena, step.inputs[0]));
            write_float(plan, arena, out, &y);
        }
        Op::Softmax { outer, len, inner } => {
            let y = softmax(
                &read_float(plan, arena, step.inputs[0]),
                *outer,
                *len,
                *inner,
            );
            write_float(plan, arena, out, &y);
        }
        Op::Argmax { classes, cells } => {
            let y = argmax(&read_float(plan, arena, step.inputs[0]), *classes, *cells);
            arena[plan.offsets[out]..][..y.len()].copy_from_slice(&y);
        }
        Op::Quantize => {
            let x = read_float(plan, arena, step.inputs[0]);
            let (s, zp) = od.quant.expect("quantized output");
            let dst = &mut arena[plan.offsets[out]..][..x.len()];
            for (o, v) in dst.iter_mut().zip(&x) {
                *o = quantize_i8(*v, s, zp) as u8;
            }
        }
        Op::Dequantize => {
            let (s, zp) = plan.tensors[step.inputs[0]].quant.expect("quantized input");
            let q = read_i8(plan, arena, step.inputs[0]);
            let y: Vec<f32> = q.iter().map(|v| (*v as i32 - zp) as f32 * s).collect();
            write_float(plan, arena, out, &y);
        }
        Op::Cast => {
            let x = read_float(plan, arena, step.inputs[0]);
            write_float(plan, arena, out, &x);
        }
        Op::Transpose(p) => {
            let es = od.dtype.size();
            let (so, dof) = (plan.offsets[step.inputs[0]], plan.offsets[out]);
            for i in 0..p.n as usize {
                let from = so + p.source(i) * es;
                arena.copy_within(from..from + es, dof + i * es);
            }
        }
        Op::CopySlice {
            outer,
            src_inner,
            dst_inner,
            dst_offset,
        } => {
            let es = od.dtype.size();
            let src = step.inputs[0];
            let (so, dof) = (plan.offsets[src], plan.offsets[out]);
            for o in 0..*outer {
                let from = so + o * src_inner * es;
                let to = dof + (o * dst_inner + dst_offset) * es;
                arena.copy_within(from..from + src_inner * es, to);
            }
        }
    }
}

/// Run a whole plan on the CPU: inputs as f32 (converted to each input's storage), outputs as
/// f32 (int8 outputs dequantized; class maps as class indices).
pub fn run(plan: &KernelPlan, inputs: &[&[f32]]) -> Vec<Vec<f32>> {
    let mut arena = vec![0u8; plan.arena_bytes];
    for (t, x) in plan.inputs.iter().zip(inputs) {
        write_float(plan, &mut arena, *t, x);
    }
    for s in &plan.steps {
        run_step(plan, s, &mut arena);
    }
    plan.outputs
        .iter()
        .map(|&t| output_f32(plan, &arena, t))
        .collect()
}

/// A tensor as f32: floats as they are, int8 dequantized, unquantized int8 (class maps) as
/// unsigned values.
pub fn output_f32(plan: &KernelPlan, arena: &[u8], t: TensorId) -> Vec<f32> {
    let mut y = vec![0f32; plan.tensors[t].elems()];
    output_f32_into(plan, arena, t, &mut y);
    y
}

/// [`output_f32`] into a buffer of the tensor's length (allocates nothing).
pub fn output_f32_into(plan: &KernelPlan, arena: &[u8], t: TensorId, dst: &mut [f32]) {
    let d = &plan.tensors[t];
    let bytes = &arena[plan.offsets[t]..][..d.bytes()];
    match (d.dtype, d.quant) {
        (DType::I8, Some((s, zp))) => {
            for (o, q) in dst.iter_mut().zip(bytes) {
                *o = (*q as i8 as i32 - zp) as f32 * s;
            }
        }
        (DType::I8, None) => {
            for (o, q) in dst.iter_mut().zip(bytes) {
                *o = *q as f32;
            }
        }
        (DType::F32, _) => {
            for (o, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        (DType::F16, _) => {
            for (o, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = h2f(u16::from_le_bytes([b[0], b[1]]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_matches_onnx_rounding_and_saturation() {
        assert_eq!(quantize_i8(2.5, 1.0, 0), 2); // half to even
        assert_eq!(quantize_i8(3.5, 1.0, 0), 4);
        assert_eq!(quantize_i8(-2.5, 1.0, 0), -2);
        assert_eq!(quantize_i8(1000.0, 1.0, 0), 127);
        assert_eq!(quantize_i8(-1000.0, 1.0, 3), -128);
        assert_eq!(quantize_i8(f32::NAN, 1.0, 0), -128);
        // uint8 zero point 128 stored shifted by -128: 0.0 -> 128 - 128 = 0
        assert_eq!(quantize_i8(0.0, 0.1, 0), 0);
    }

    #[test]
    fn int8_conv_is_the_dequantized_float_conv() {
        // With integer values and scale 1 the int8 path and the float path agree exactly.
        let p = ConvParams {
            n: 1,
            c: 3,
            h: 5,
            w: 6,
            k: 4,
            oh: 3,
            ow: 3,
            r: 3,
            s: 3,
            stride_h: 2,
            stride_w: 2,
            pad_h: 1,
            pad_w: 1,
            dil_h: 1,
            dil_w: 1,
            groups: 1,
            kdim: 27,
            kpad: 32,
            in_zp: 3,
            act: act::RELU,
            out_mode: out_mode::F32,
            ..Default::default()
        };
        let x: Vec<i8> = (0..90).map(|i| ((i * 37) % 200 - 100) as i8).collect();
        let mut w = vec![0i8; 4 * 32];
        for k in 0..4 {
            for j in 0..27 {
                w[k * 32 + j] = ((k * 27 + j) as i32 * 11 % 61 - 30) as i8;
            }
        }
        let bias = [0.5, -1.0, 2.0, 0.0];
        let y = conv(
            &p,
            ConvInput::I8(&x),
            ConvWeights::I8(&w),
            &bias,
            Some(&[1.0; 4]),
        );
        let xf: Vec<f32> = x.iter().map(|v| (*v as i32 - 3) as f32).collect();
        let wf: Vec<f32> = w.iter().map(|v| *v as f32).collect();
        let yf = conv(
            &p,
            ConvInput::Float(&xf),
            ConvWeights::Float(&wf),
            &bias,
            None,
        );
        assert_eq!(y, yf);
        assert!(y.iter().any(|v| *v > 0.0) && y.contains(&0.0));
    }

    #[test]
    fn resize_nearest_and_linear_follow_onnx() {
        let p = ResizeParams {
            n: 1,
            c: 1,
            h: 2,
            w: 2,
            oh: 4,
            ow: 4,
            mode: 1,
            coord: 0,
            nearest_mode: 0,
            scale_h: 2.0,
            scale_w: 2.0,
        };
        let x = [1.0, 2.0, 3.0, 4.0];
        // ONNX's own test (resize_upsample_scales_linear): first row 1, 1.25, 1.75, 2
        let y = resize(&p, &x);
        assert_eq!(&y[..4], &[1.0, 1.25, 1.75, 2.0]);
        let y = resize(
            &ResizeParams {
                mode: 0,
                coord: 2,
                nearest_mode: 1,
                ..p
            },
            &x,
        );
        assert_eq!(&y[..4], &[1.0, 1.0, 2.0, 2.0]);
    }
}
