//! The kernel plan: what the CUDA executor runs per frame, as data. It knows nothing of ONNX
//! (the runtime's lowering builds it) and nothing of CUDA (the GPU runner in [`crate::exec`]
//! and the CPU runner in [`crate::reference`] both execute it), so the lowering and the memory
//! plan are tested on any machine.
//!
//! - Tensors are dense, row-major (NCHW for images), typed f32, f16 or int8 (with the scale
//!   and zero point of their quantization; uint8 is stored shifted into int8).
//! - Every step is one kernel launch with its parameters resolved at load.
//! - All activation memory is one arena. [`KernelPlan::allocate`] gives each tensor an offset
//!   so that tensors alive at the same time never overlap (greedy by size over lifetimes, the
//!   scheme TFLite and TensorRT use); views (Reshape, Flatten) share their source's bytes.
//! - Weights are constants in a second, read-only arena.

use crate::params::{BinaryParams, ConvParams, PoolParams, ResizeParams, TransposeParams};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DType {
    F32,
    F16,
    I8,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
            DType::I8 => 1,
        }
    }
}

pub type TensorId = usize;
pub type ConstId = usize;

#[derive(Debug, Clone, PartialEq)]
pub struct TensorDesc {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// int8 tensors: (scale, zero point in the signed domain).
    pub quant: Option<(f32, i32)>,
    /// A view of another tensor's bytes: a Reshape (same element count and type), or a
    /// Concat input placed inside the Concat's output (see `view_offset`).
    pub view_of: Option<TensorId>,
    /// Bytes from the start of `view_of`'s bytes to this tensor's (0 but for Concat inputs
    /// written in place).
    pub view_offset: usize,
}

impl TensorDesc {
    pub fn elems(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> usize {
        self.elems() * self.dtype.size()
    }
}

/// Constant data (weights, per-channel factors).
#[derive(Debug, Clone, PartialEq)]
pub enum ConstData {
    F32(Vec<f32>),
    /// IEEE binary16 bits.
    F16(Vec<u16>),
    I8(Vec<i8>),
    I32(Vec<i32>),
}

impl ConstData {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            ConstData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ConstData::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ConstData::I8(v) => v.iter().map(|x| *x as u8).collect(),
            ConstData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// Which convolution kernel a step launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ConvKernel {
    /// INT8 implicit GEMM on tensor cores (`conv_i8_imma`); `conv_i8_dp4a` is its twin.
    GemmI8,
    /// FP16 implicit GEMM on tensor cores (`conv_f16_mma`).
    GemmF16,
    /// Grouped / depthwise, INT8 (`conv_direct_i8`).
    DirectI8,
    /// Grouped / depthwise, FP16 (`conv_direct_f16`).
    DirectF16,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// inputs: [x]; weights [k][kpad] (i8 or f16), bias f32 [k]; int8 kernels also take
    /// `wsum` (i32, sum of each weight row) and `mult` (f32, input scale x weight scale).
    Conv {
        kernel: ConvKernel,
        p: ConvParams,
        weights: ConstId,
        bias: ConstId,
        wsum: Option<ConstId>,
        mult: Option<ConstId>,
    },
    /// inputs: [x]; `activate(x)` (codes in [`crate::params::Act`]).
    Unary {
        act: i32,
        a: f32,
        b: f32,
    },
    /// inputs: [a, b], either may be a constant tensor (see [`Step::const_inputs`]).
    Binary(BinaryParams),
    Pool(PoolParams),
    Resize(ResizeParams),
    Softmax {
        outer: usize,
        len: usize,
        inner: usize,
    },
    /// Channel argmax of (1, classes, cells) into u8 class indices (an I8 tensor).
    Argmax {
        classes: usize,
        cells: usize,
    },
    /// Float to int8 with the output tensor's quantization.
    Quantize,
    /// int8 to float with the input tensor's quantization.
    Dequantize,
    /// Float to float of another width.
    Cast,
    /// A permutation of the axes (any element type: a data move).
    Transpose(TransposeParams),
    /// A Concat input into its slice of the output (`outer` blocks).
    CopySlice {
        outer: usize,
        src_inner: usize,
        dst_inner: usize,
        dst_offset: usize,
    },
}

impl Op {
    /// The kernel (entry point) this op launches on the GPU. Convolutions, activations and
    /// binary ops have f32 variants; the rest take FP16 (see `exec::check_storage`).
    pub fn kernel_name(&self, inputs: &[DType], output: DType) -> &'static str {
        let f32_in = inputs.first() == Some(&DType::F32);
        match self {
            // FP32 plans: every convolution on the direct kernel (small networks only)
            Op::Conv {
                kernel: ConvKernel::GemmF16 | ConvKernel::DirectF16,
                ..
            } if f32_in => "conv_direct_f32",
            Op::Conv { kernel, .. } => match kernel {
                ConvKernel::GemmI8 => "conv_i8_imma",
                ConvKernel::GemmF16 => "conv_f16_mma",
                ConvKernel::DirectI8 => "conv_direct_i8",
                ConvKernel::DirectF16 => "conv_direct_f16",
            },
            Op::Unary { .. } if output == DType::F32 => "unary_f32",
            Op::Unary { .. } => "unary_f16",
            Op::Binary(p)
                if inputs.first() == Some(&DType::I8)
                    && p.op == crate::params::binary_op::SCALE_SHIFT =>
            {
                "scale_shift_i8"
            }
            Op::Binary(_) if inputs.first() == Some(&DType::I8) => "binary_i8",
            Op::Binary(_) if output == DType::F32 => "binary_f32",
            Op::Binary(_) => "binary_f16",
            Op::Pool(_) if inputs.first() == Some(&DType::I8) => "pool_max_i8",
            Op::Pool(_) => "pool_f16",
            Op::Resize(_) => "resize_f16",
            Op::Softmax { .. } => "softmax_f16",
            Op::Argmax { .. } => "argmax_f16",
            Op::Quantize => match inputs.first() {
                Some(DType::F32) if f32_in => "quantize_f32",
                _ => "quantize_f16",
            },
            Op::Dequantize => "dequantize_f16",
            Op::Cast => match output {
                DType::F16 => "cast_f32_f16",
                _ => "cast_f16_f32",
            },
            Op::CopySlice { .. } => "copy_slice_f16",
            Op::Transpose(_) => match output {
                DType::F32 => "transpose_b32",
                DType::F16 => "transpose_b16",
                DType::I8 => "transpose_b8",
            },
        }
    }
}

/// One kernel launch.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The ONNX node (or nodes, fused) it came from.
    pub name: String,
    pub op: Op,
    pub inputs: Vec<TensorId>,
    /// Inputs that are constants instead of tensors (Binary with an initializer operand):
    /// `(input position, constant)`.
    pub const_inputs: Vec<(usize, ConstId)>,
    pub output: TensorId,
}

impl Step {
    /// The constant operand `pos` reads, when it is one (else it reads `inputs[pos]`).
    pub fn const_input(&self, pos: usize) -> Option<ConstId> {
        self.const_inputs
            .iter()
            .find(|(p, _)| *p == pos)
            .map(|(_, c)| *c)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelPlan {
    pub tensors: Vec<TensorDesc>,
    pub consts: Vec<ConstData>,
    pub steps: Vec<Step>,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
    /// Byte offset of every tensor in the arena (filled by [`KernelPlan::allocate`]).
    pub offsets: Vec<usize>,
    pub arena_bytes: usize,
}

/// Arena offsets are aligned to this many bytes (coalesced 128-byte lines, 16-byte vectors).
pub const ALIGN: usize = 256;

impl KernelPlan {
    pub fn add_tensor(&mut self, t: TensorDesc) -> TensorId {
        self.tensors.push(t);
        self.tensors.len() - 1
    }

    pub fn add_const(&mut self, c: ConstData) -> ConstId {
        self.consts.push(c);
        self.consts.len() - 1
    }

    /// The step that writes `t`, if one does (a view's bytes are written by the steps of the
    /// tensors inside it).
    pub fn producer(&self, t: TensorId) -> Option<usize> {
        self.steps.iter().position(|s| s.output == t)
    }

    /// How many times steps read `t` (once per operand), plus the plan's outputs that are
    /// `t`; views of `t` are not counted (see [`KernelPlan::views_of`]).
    pub fn step_readers(&self, t: TensorId) -> usize {
        self.steps
            .iter()
            .map(|s| s.inputs.iter().filter(|&&i| i == t).count())
            .sum::<usize>()
            + self.outputs.iter().filter(|&&o| o == t).count()
    }

    /// The tensors that are views of `t`'s bytes (Reshapes, Concat inputs placed inside it).
    pub fn views_of(&self, t: TensorId) -> impl Iterator<Item = TensorId> + '_ {
        (0..self.tensors.len()).filter(move |&v| self.tensors[v].view_of == Some(t))
    }

    /// The tensor that owns `t`'s bytes (follows views).
    pub fn root(&self, mut t: TensorId) -> TensorId {
        while let Some(s) = self.tensors[t].view_of {
            t = s;
        }
        t
    }

    /// Bytes from the start of `t`'s root to `t` (the sum of the view offsets on the way).
    pub fn offset_in_root(&self, mut t: TensorId) -> usize {
        let mut off = 0;
        while let Some(s) = self.tensors[t].view_of {
            off += self.tensors[t].view_offset;
            t = s;
        }
        off
    }

    /// Steps per kernel name, for reports.
    pub fn kernel_counts(&self) -> Vec<(&'static str, usize)> {
        let mut counts: Vec<(&'static str, usize)> = vec![];
        for s in &self.steps {
            let ins: Vec<DType> = s.inputs.iter().map(|&i| self.tensors[i].dtype).collect();
            let k = s.op.kernel_name(&ins, self.tensors[s.output].dtype);
            match counts.iter_mut().find(|(n, _)| *n == k) {
                Some(c) => c.1 += 1,
                None => counts.push((k, 1)),
            }
        }
        counts
    }

    /// Lifetime of every root tensor as (first step, last step), inclusive; graph inputs are
    /// born before step 0 and graph outputs live past the last step.
    pub fn lifetimes(&self) -> Vec<Option<(usize, usize)>> {
        let n = self.steps.len();
        let mut life: Vec<Option<(usize, usize)>> = vec![None; self.tensors.len()];
        let touch = |t: TensorId, at: usize, life: &mut Vec<Option<(usize, usize)>>| {
            let r = self.root(t);
            life[r] = Some(match life[r] {
                None => (at, at),
                Some((a, b)) => (a.min(at), b.max(at)),
            });
        };
        for &t in &self.inputs {
            touch(t, 0, &mut life);
        }
        for (i, s) in self.steps.iter().enumerate() {
            for &t in &s.inputs {
                touch(t, i, &mut life);
            }
            touch(s.output, i, &mut life);
        }
        for &t in &self.outputs {
            touch(t, n, &mut life);
        }
        life
    }

    /// Give every tensor its arena offset: largest first, each at the lowest aligned offset
    /// that overlaps no tensor already placed whose lifetime intersects its own.
    pub fn allocate(&mut self) {
        let life = self.lifetimes();
        let mut order: Vec<TensorId> = (0..self.tensors.len())
            .filter(|&t| self.tensors[t].view_of.is_none() && life[t].is_some())
            .collect();
        order.sort_by_key(|&t| (std::cmp::Reverse(self.tensors[t].bytes()), t));
        let mut placed: Vec<(usize, usize, (usize, usize))> = vec![]; // offset, bytes, life
        let mut offsets = vec![0usize; self.tensors.len()];
        let mut arena = 0usize;
        for t in order {
            let size = self.tensors[t].bytes().div_ceil(ALIGN) * ALIGN;
            let lt = life[t].expect("filtered");
            let mut busy: Vec<(usize, usize)> = placed
                .iter()
                .filter(|(_, _, l)| l.0 <= lt.1 && lt.0 <= l.1)
                .map(|(o, b, _)| (*o, *b))
                .collect();
            busy.sort();
            let mut off = 0usize;
            for (o, b) in busy {
                if off + size <= o {
                    break;
                }
                off = off.max(o + b);
            }
            placed.push((off, size, lt));
            offsets[t] = off;
            arena = arena.max(off + size);
        }
        for t in 0..self.tensors.len() {
            offsets[t] = offsets[self.root(t)] + self.offset_in_root(t);
        }
        self.offsets = offsets;
        self.arena_bytes = arena;
    }

    /// Sum of all tensor sizes: what the arena would be without reuse.
    pub fn bytes_without_reuse(&self) -> usize {
        self.tensors
            .iter()
            .filter(|t| t.view_of.is_none())
            .map(|t| t.bytes().div_ceil(ALIGN) * ALIGN)
            .sum()
    }

    pub fn const_bytes(&self) -> usize {
        self.consts
            .iter()
            .map(|c| c.bytes().len().div_ceil(ALIGN) * ALIGN)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(plan: &mut KernelPlan, n: usize) -> TensorId {
        plan.add_tensor(TensorDesc {
            name: format!("t{}", plan.tensors.len()),
            shape: vec![n],
            dtype: DType::F32,
            quant: None,
            view_of: None,
            view_offset: 0,
        })
    }

    #[test]
    fn tensors_alive_together_never_overlap_and_dead_ones_are_reused() {
        let mut p = KernelPlan::default();
        let ids: Vec<TensorId> = [1000, 64, 5000, 300, 1000, 7]
            .iter()
            .map(|&n| t(&mut p, n))
            .collect();
        p.inputs = vec![ids[0]];
        // a chain: t0 -> t1 -> t2 -> t3 -> t4 -> t5, t0 also read by the last step
        for i in 1..ids.len() {
            let mut inputs = vec![ids[i - 1]];
            if i == ids.len() - 1 {
                inputs.push(ids[0]);
            }
            p.steps.push(Step {
                name: format!("s{i}"),
                op: Op::Cast,
                inputs,
                const_inputs: vec![],
                output: ids[i],
            });
        }
        p.outputs = vec![ids[5]];
        p.allocate();
        let life = p.lifetimes();
        for a in 0..ids.len() {
            for b in a + 1..ids.len() {
                let (la, lb) = (life[a].unwrap(), life[b].unwrap());
                if la.0 <= lb.1 && lb.0 <= la.1 {
                    let (oa, ob) = (p.offsets[a], p.offsets[b]);
                    let (ea, eb) = (oa + p.tensors[a].bytes(), ob + p.tensors[b].bytes());
                    assert!(ea <= ob || eb <= oa, "t{a} and t{b} overlap");
                }
            }
            assert_eq!(p.offsets[a] % ALIGN, 0);
        }
        assert!(p.arena_bytes < p.bytes_without_reuse(), "no reuse happened");
    }

    #[test]
    fn views_share_their_source() {
        let mut p = KernelPlan::default();
        let a = t(&mut p, 100);
        let mut d = p.tensors[a].clone();
        d.view_of = Some(a);
        d.shape = vec![10, 10];
        let v = p.add_tensor(d);
        let o = t(&mut p, 100);
        p.inputs = vec![a];
        p.steps.push(Step {
            name: "s".into(),
            op: Op::Cast,
            inputs: vec![v],
            const_inputs: vec![],
            output: o,
        });
        p.outputs = vec![o];
        p.allocate();
        assert_eq!(p.offsets[v], p.offsets[a]);
        assert_ne!(p.offsets[o], p.offsets[a]);
    }
}
