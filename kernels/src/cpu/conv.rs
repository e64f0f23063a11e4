//! Convolutions on the CPU, NCHW as the plan stores them: the overview, and what the
//! convolution kernels share (buffers, the fused epilogue, scratch views).
//!
//! - [`GemmConv`](super::gemm::GemmConv) (groups = 1, and the 1x1 "convolutions" that matrix products lower to): a
//!   GEMM over output channels x output pixels x taps. Weights are packed at load into panels
//!   of [`MR`](super::micro::MR) output channels; a micro-kernel keeps an `MR x nr` block of outputs (`nr` = 32
//!   pixels on AVX-512, two registers per channel) in registers over all taps, and the
//!   epilogue adds the bias, applies the activation and stores (or requantizes) the block.
//!   - The taps come from a *row source*: a padded copy of the input whose rows are split
//!     into `stride_w` phases, so the 32 values one tap needs for 32 consecutive output
//!     pixels are consecutive in memory and the micro-kernel loads them straight from there
//!     (an offset per tap, no im2col). FP32 1x1 convolutions read the input in place.
//!   - INT8 keeps four channels interleaved per pixel in its row source (`x + 128` bytes),
//!     the operand layout of `vpdpbusd`, and subtracts `(128 + zero point) * sum(w)` per
//!     channel after, so the integer sum is exactly the twin's `sum((x - zp) * w)`.
//!   - A convolution whose row source would need offsets beyond 32 bits is refused at load
//!     (the plan then runs on tract under `auto`).
//! - [`DirectConv`](super::direct::DirectConv) (grouped and depthwise): per task one output channel; its input channels
//!   are copied into a padded, phase-split scratch, then every tap of every output row is one
//!   contiguous multiply-add pass. Taps outside the image read padding that adds nothing
//!   (+0.0, or the zero point for INT8), so the sums equal the twin's.
//!
//! A task's whole body (padding copy, micro-kernel, epilogue) is compiled once per
//! instruction set (`#[target_feature]` wrappers around one `#[inline(always)]` body), so the
//! copies and the epilogue vectorise for the same unit as the micro-kernel. Rust never
//! contracts `a * b + c` into an FMA, so the epilogues round exactly as the twins do.

use super::ops::{Act, quantize_i8};
use super::phases::split_row;
use crate::params::{ConvParams, out_mode};

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
// Epilogue: bias (and INT8 rescale), activation, store; one monomorphised loop per activation

/// Per-channel epilogue constants shared by both convolution kinds.
pub struct Epilogue {
    pub bias: Vec<f32>,
    /// INT8: input scale x weight scale per channel.
    pub mult: Vec<f32>,
    /// INT8 GEMM: `(128 + in_zp) * sum(w)` per channel (see the module header).
    pub corr: Vec<i32>,
}

/// Accumulators of one output channel's run of pixels.
#[derive(Clone, Copy)]
pub(super) enum Acc<'a> {
    F32(&'a [f32]),
    /// Integer sums and the correction to subtract from each.
    I32(&'a [i32], i32),
    /// Integer sums held exactly in f32 (below 2^24).
    IntF32(&'a [f32]),
}

impl Epilogue {
    /// Finish `acc` (channel `k`) into the output at element `at`.
    ///
    /// # Safety
    /// `at .. at + acc.len()` lies inside the output.
    #[inline(always)]
    pub(super) unsafe fn row(&self, p: &ConvParams, k: usize, acc: Acc, out: OutBuf, at: usize) {
        unsafe { with_act!(p.act, A => self.row_with::<A>(p, k, acc, out, at)) }
    }

    #[inline(always)]
    unsafe fn row_with<A: Act>(&self, p: &ConvParams, k: usize, acc: Acc, out: OutBuf, at: usize) {
        let b = self.bias[k];
        // The twin's order: float `acc + bias`; INT8 `acc * mult + bias`, each rounded.
        match (acc, out) {
            (Acc::F32(a), OutBuf::F32(o)) => {
                let o = unsafe { std::slice::from_raw_parts_mut(o.add(at), a.len()) };
                for (d, v) in o.iter_mut().zip(a) {
                    *d = A::apply(p.act, p.act_a, p.act_b, *v + b);
                }
            }
            (Acc::I32(a, corr), OutBuf::F32(o)) => {
                let m = self.mult[k];
                let o = unsafe { std::slice::from_raw_parts_mut(o.add(at), a.len()) };
                for (d, v) in o.iter_mut().zip(a) {
                    *d = A::apply(p.act, p.act_a, p.act_b, (*v - corr) as f32 * m + b);
                }
            }
            (Acc::IntF32(a), OutBuf::F32(o)) => {
                let m = self.mult[k];
                let o = unsafe { std::slice::from_raw_parts_mut(o.add(at), a.len()) };
                for (d, v) in o.iter_mut().zip(a) {
                    *d = A::apply(p.act, p.act_a, p.act_b, *v * m + b);
                }
            }
            (Acc::IntF32(a), OutBuf::I8(o)) => {
                let m = self.mult[k];
                let o = unsafe { std::slice::from_raw_parts_mut(o.add(at), a.len()) };
                for (d, v) in o.iter_mut().zip(a) {
                    *d = quantize_i8(
                        A::apply(p.act, p.act_a, p.act_b, *v * m + b),
                        p.out_scale,
                        p.out_zp,
                    );
                }
            }
            (Acc::I32(a, corr), OutBuf::I8(o)) => {
                let m = self.mult[k];
                let o = unsafe { std::slice::from_raw_parts_mut(o.add(at), a.len()) };
                for (d, v) in o.iter_mut().zip(a) {
                    let y = A::apply(p.act, p.act_a, p.act_b, (*v - corr) as f32 * m + b);
                    *d = quantize_i8(y, p.out_scale, p.out_zp);
                }
            }
            (Acc::F32(a), OutBuf::I8(o)) => {
                let o = unsafe { std::slice::from_raw_parts_mut(o.add(at), a.len()) };
                for (d, v) in o.iter_mut().zip(a) {
                    *d = quantize_i8(
                        A::apply(p.act, p.act_a, p.act_b, *v + b),
                        p.out_scale,
                        p.out_zp,
                    );
                }
            }
        }
    }
}

/// Call one of three `#[target_feature]` builds of a task body: the one for the instruction set.
macro_rules! per_isa {
    ($isa:expr, $avx512:ident, $avx2:ident, $portable:ident, ($($arg:expr),*)) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Vnni => unsafe { $avx512($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { $avx2($($arg),*) },
            _ => unsafe { $portable($($arg),*) },
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Scratch views

pub(super) fn as_f32(b: &mut [u8]) -> &mut [f32] {
    // SAFETY: scratch buffers are allocated as u64 words (8-byte aligned); any bit pattern
    // is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut f32, b.len() / 4) }
}

pub(super) fn as_i32(b: &mut [u8]) -> &mut [i32] {
    // SAFETY: as `as_f32`.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut i32, b.len() / 4) }
}

/// A 1x1 convolution with unit strides and no padding: output pixel q reads input pixel q.
pub(super) fn is_pointwise(p: &ConvParams) -> bool {
    p.r == 1 && p.s == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0
}

// ---------------------------------------------------------------------------------------------
// Padded, phase-split input rows (shared by the GEMM's row source and the direct kernel)

/// The geometry of an input copy padded for a convolution, each row split into `stride_w`
/// phases (phase q holds padded columns q, q + s, q + 2s, ...), so the columns one tap reads
/// for consecutive output pixels are consecutive: output column ox of tap column offset
/// `col = sx * dil_w` is at `(col % s) * wph + col / s + ox` in its row.
#[derive(Debug, Clone, Copy)]
pub(super) struct PaddedRows {
    /// Rows per padded plane (top padding, the image, and what the last output row reads).
    pub hp: usize,
    /// Values per phase of a row.
    pub wph: usize,
    /// Values per padded row (`stride_w * wph`).
    pub row: usize,
}

impl PaddedRows {
    pub fn new(p: &ConvParams) -> PaddedRows {
        let (h, w) = (p.h as usize, p.w as usize);
        let sw = p.stride_w as usize;
        let last_row =
            (p.oh as usize - 1) * p.stride_h as usize + (p.r as usize - 1) * p.dil_h as usize;
        let last_col = (p.ow as usize - 1) * sw + (p.s as usize - 1) * p.dil_w as usize;
        let hp = (h + p.pad_h as usize).max(last_row + 1);
        let wp = (w + p.pad_w as usize).max(last_col + 1);
        let wph = wp.div_ceil(sw);
        PaddedRows {
            hp,
            wph,
            row: sw * wph,
        }
    }

    /// Where tap (ry, sx)'s run for output row `oy` starts within a padded plane.
    #[inline(always)]
    pub fn tap_start(&self, p: &ConvParams, oy: usize, ry: usize, sx: usize) -> usize {
        let (col, sw) = (sx * p.dil_w as usize, p.stride_w as usize);
        (oy * p.stride_h as usize + ry * p.dil_h as usize) * self.row
            + (col % sw) * self.wph
            + col / sw
    }

    /// Copy one input row (`line`, each value through `conv`) into padded row `dst`, starting
    /// `pw` columns into the padding; stride 1 and 2 are compiled with constant strides, so
    /// their loops vectorise.
    #[inline(always)]
    pub fn copy_row<T: Copy, U: Copy>(
        &self,
        line: &[T],
        dst: &mut [U],
        pw: usize,
        sw: usize,
        conv: impl Fn(T) -> U,
    ) {
        split_row(line, dst, pw, self.wph, sw, conv)
    }
}
