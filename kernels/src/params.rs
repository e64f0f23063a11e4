//! Kernel parameter blocks, passed by value to the kernels: each struct's layout matches its
//! namesake in `cuda/` field for field (all 4-byte fields, C order).

/// Activation codes of `activate()` in common.cuh.
pub mod act {
    pub const NONE: i32 = 0;
    pub const RELU: i32 = 1;
    /// clip(a, b)
    pub const CLIP: i32 = 2;
    /// max(0, min(1, a*x + b))
    pub const HARD_SIGMOID: i32 = 3;
    pub const HARD_SWISH: i32 = 4;
    pub const SIGMOID: i32 = 5;
    pub const SILU: i32 = 6;
    /// `x > 0 ? x : a*x`
    pub const LEAKY_RELU: i32 = 7;
    /// Codes whose results are exactly rounded (bit-identical on GPU and CPU).
    pub fn is_exact(code: i32) -> bool {
        code <= HARD_SWISH || code == LEAKY_RELU
    }
}

/// Output storage of a convolution (`out_mode`).
pub mod out_mode {
    pub const F32: i32 = 0;
    pub const F16: i32 = 1;
    pub const I8: i32 = 2;
}

/// `ConvParams` in conv.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ConvParams {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub k: i32,
    pub oh: i32,
    pub ow: i32,
    pub r: i32,
    pub s: i32,
    pub stride_h: i32,
    pub stride_w: i32,
    /// Top / left padding (the bottom / right is implied by the output size).
    pub pad_h: i32,
    pub pad_w: i32,
    pub dil_h: i32,
    pub dil_w: i32,
    pub groups: i32,
    /// (c / groups) * r * s
    pub kdim: i32,
    /// Weight row length: kdim rounded up to a multiple of 32.
    pub kpad: i32,
    pub in_zp: i32,
    pub act: i32,
    pub act_a: f32,
    pub act_b: f32,
    pub out_mode: i32,
    pub out_scale: f32,
    pub out_zp: i32,
}

impl ConvParams {
    pub fn out_elems(&self) -> usize {
        (self.n * self.k * self.oh * self.ow) as usize
    }
    pub fn in_elems(&self) -> usize {
        (self.n * self.c * self.h * self.w) as usize
    }
    /// GEMM work: 2 * M * N * K operations.
    pub fn ops(&self) -> f64 {
        2.0 * (self.n * self.oh * self.ow) as f64 * self.k as f64 * self.kdim as f64
    }
}

/// `BinaryParams` in ops.cu: shapes right-aligned to 4 dims, stride 0 broadcasts.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BinaryParams {
    pub n: i32,
    pub dims: [i32; 4],
    pub a_strides: [i32; 4],
    pub b_strides: [i32; 4],
    /// 0 add, 1 sub, 2 mul, 3 div, 4 scale-shift ([`binary_op::SCALE_SHIFT`])
    pub op: i32,
    pub act: i32,
    pub act_a: f32,
    pub act_b: f32,
    /// Scale-shift only: where the shifts start in `b` (after the scales).
    pub shift_offset: i32,
}

/// `BinaryParams::op` codes.
pub mod binary_op {
    pub const ADD: i32 = 0;
    pub const SUB: i32 = 1;
    pub const MUL: i32 = 2;
    pub const DIV: i32 = 3;
    /// `a * b[ib] + b[ib + shift_offset]`: a per-channel affine map (a BatchNormalization
    /// that follows no convolution, or a chain of constant Mul/Add folded into one) in one
    /// pass, `b` holding the scales then the shifts, always as f32 (FP16 plans too).
    pub const SCALE_SHIFT: i32 = 4;
}

/// `PoolParams` in ops.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PoolParams {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub oh: i32,
    pub ow: i32,
    pub kh: i32,
    pub kw: i32,
    pub stride_h: i32,
    pub stride_w: i32,
    pub pad_h: i32,
    pub pad_w: i32,
    /// 0 max, 1 average
    pub mode: i32,
    pub count_include_pad: i32,
}

/// `ResizeParams` in ops.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResizeParams {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub oh: i32,
    pub ow: i32,
    /// 0 nearest, 1 linear
    pub mode: i32,
    /// 0 half_pixel, 1 align_corners, 2 asymmetric, 3 pytorch_half_pixel
    pub coord: i32,
    /// 0 round_prefer_floor, 1 floor, 2 ceil, 3 round_prefer_ceil
    pub nearest_mode: i32,
    pub scale_h: f32,
    pub scale_w: f32,
}

/// `TransposeParams` in ops.cu: output element i, its coordinates over `dims` (the output's
/// shape right-aligned to 6 dims), reads the input at `Σ coord[d]·in_strides[d]`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TransposeParams {
    pub n: i32,
    pub dims: [i32; 6],
    pub in_strides: [i32; 6],
}

impl TransposeParams {
    /// The permutation `perm` (ONNX `Transpose`) of a dense tensor of shape `shape`
    /// (rank ≤ 6).
    pub fn new(shape: &[usize], perm: &[usize]) -> TransposeParams {
        let r = shape.len();
        let mut strides = vec![1usize; r];
        for d in (0..r.saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        let mut p = TransposeParams {
            n: shape.iter().product::<usize>() as i32,
            dims: [1; 6],
            in_strides: [0; 6],
        };
        for (k, &axis) in perm.iter().enumerate() {
            p.dims[6 - r + k] = shape[axis] as i32;
            p.in_strides[6 - r + k] = strides[axis] as i32;
        }
        p
    }

    /// Input element read by output element `i`.
    pub fn source(&self, i: usize) -> usize {
        let (mut rem, mut at) = (i, 0usize);
        for d in (0..6).rev() {
            let dim = self.dims[d] as usize;
            at += (rem % dim) * self.in_strides[d] as usize;
            rem /= dim;
        }
        at
    }
}

// SAFETY: plain-old-data, C layout, no padding (all fields 4 bytes).
unsafe impl cudarc::driver::DeviceRepr for ConvParams {}
unsafe impl cudarc::driver::DeviceRepr for BinaryParams {}
unsafe impl cudarc::driver::DeviceRepr for PoolParams {}
unsafe impl cudarc::driver::DeviceRepr for ResizeParams {}
unsafe impl cudarc::driver::DeviceRepr for TransposeParams {}
