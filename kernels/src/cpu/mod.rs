//! The CPU engine: a [`KernelPlan`] (the same plan the CUDA executor runs, lowered with FP32
//! activations) on the CPU with bevrt's own kernels.
//!
//! - [`CpuPlan::load`] checks every step, packs the weights for the chosen instruction set
//!   ([`isa`]), allocates the arena (the plan's own offsets) and every thread's scratch. After
//!   that, [`CpuPlan::run`] allocates nothing.
//! - [`conv`]: how convolutions run here (overview), their shared epilogue and buffers;
//!   [`gemm`]: groups = 1 as a GEMM on row sources (FP32, INT8 via `vpdpbusd`);
//!   [`micro`]: the register-blocked micro-kernels per ISA; [`winograd`]: FP32 3x3 stride 1
//!   by F(2x2, 3x3); [`direct`]: grouped and depthwise; [`phases`]: padded rows split into
//!   stride phases (convolution row sources and strided pools).
//! - [`ops`]: the other kernels (activations, broadcasting binary ops, Q/DQ; pool, resize,
//!   softmax and argmax are the twins' own allocation-free functions).
//! - [`pool`]: the persistent worker pool (tasks are output tiles or channels).
//! - [`peak`]: the machine's measured FP32 FMA peak, the yardstick for per-layer GFLOP/s.
//!
//! Every kernel is checked against its twin in [`crate::reference`]: INT8 and the direct
//! convolutions bit-exact, FP32 GEMM to 1e-5 relative (FMA rounds once where the twin rounds
//! twice, and sums in the same order).

#[macro_use]
pub mod ops;
#[macro_use]
pub mod conv;
pub mod direct;
pub mod gemm;
pub mod isa;
pub mod micro;
pub mod peak;
pub mod phases;
pub mod pool;
pub mod winograd;

use crate::params::{
    BinaryParams, ConvParams, PoolParams, ResizeParams, TransposeParams, out_mode,
};
use crate::plan::{ConstData, ConvKernel, DType, KernelPlan, Op, Step};
use crate::reference::const_f32;
use conv::{InBuf, OutBuf};
use direct::DirectConv;
use gemm::GemmConv;
use isa::Isa;
use pool::WorkerPool;
use std::sync::Arc;
use std::time::Instant;
use winograd::WinogradConv;

/// A step operand: a tensor of the arena (byte offset, elements) or a float constant.
enum Src {
    Tensor { off: usize, len: usize },
    Const(Vec<f32>),
}

enum Kernel {
    Gemm(GemmConv),
    /// A grouped convolution of one image as one GEMM per group, side by side in the pool.
    Grouped(GroupedGemm),
    Winograd(WinogradConv),
    Direct(DirectConv),
    Unary {
        act: i32,
        a: f32,
        b: f32,
    },
    Binary(BinaryParams),
    /// A binary op of two int8 tensors of one shape into int8 (a QDQ graph's residual Add).
    BinaryI8 {
        p: BinaryParams,
        /// (scale, zero point) of a, b and y.
        q: [(f32, i32); 3],
    },
    /// A per-channel affine map of int8 codes into int8 (a QDQ graph's BatchNormalization).
    ScaleShiftI8 {
        p: BinaryParams,
        /// (scale, zero point) of a and y.
        q: [(f32, i32); 2],
    },
    Pool(PoolParams),
    /// Max pooling of int8 codes (a QDQ graph's MaxPool).
    PoolMaxI8(PoolParams),
    Resize(ResizeParams),
    Softmax {
        outer: usize,
        len: usize,
        inner: usize,
    },
    Argmax {
        classes: usize,
        cells: usize,
    },
    Quantize {
        scale: f32,
        zp: i32,
    },
    Dequantize {
        scale: f32,
        zp: i32,
    },
    /// A byte copy (f32 → f32 Cast).
    Copy,
    Transpose {
        p: TransposeParams,
        elem: usize,
    },
    CopySlice {
        outer: usize,
        src_inner: usize,
        dst_inner: usize,
        dst_offset: usize,
        elem: usize,
    },
}

struct CpuStep {
    name: String,
    kernel: Kernel,
    ins: Vec<Src>,
    out_off: usize,
    out_len: usize,
    /// Multiply-adds x 2 (convolutions), for GFLOP/s.
    ops: f64,
}

/// One step's time since load, for `bevrt bench`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepProfile {
    pub name: String,
    pub kernel: String,
    pub ns: u64,
    pub calls: u64,
    /// Operations per call (2 per multiply-add; 0 for data movement).
    pub ops: f64,
}

/// Raw pointer shared with the pool's threads.
#[derive(Clone, Copy)]
struct SyncPtr(*mut u8);
// SAFETY: the engine hands each thread disjoint scratch and each task disjoint outputs.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The address (a method, so closures capture the whole `SyncPtr`, not its field).
    fn get(self) -> *mut u8 {
        self.0
    }
}

/// Elements per pool task of a large elementwise step.
const ELEMENTWISE_CHUNK: usize = 32 * 1024;

/// Work below this many operations runs on the calling thread (waking workers costs more).
const PARALLEL_MIN_OPS: f64 = 400_000.0;

pub struct CpuPlan {
    plan: KernelPlan,
    steps: Vec<CpuStep>,
    /// The activation arena as 8-byte words (so f32 and i32 views are aligned).
    arena: Vec<u64>,
    scratch: Vec<Vec<u64>>,
    /// `scratch[i]`'s address, handed to thread i.
    scratch_ptrs: Vec<SyncPtr>,
    scratch_bytes: usize,
    pool: Arc<WorkerPool>,
    isa: Isa,
    timing: Vec<(u64, u64)>,
}

impl CpuPlan {
    /// Prepare `plan` (activations F32 or INT8) to run on `pool` with `isa`'s kernels.
    pub fn load(plan: KernelPlan, pool: Arc<WorkerPool>, isa: Isa) -> Result<CpuPlan, String> {
        for t in &plan.tensors {
            if t.dtype == DType::F16 {
                return Err(format!(
                    "tensor '{}' is stored as FP16: the CPU engine runs plans lowered with \
                     float = F32",
                    t.name
                ));
            }
        }
        let mut steps = vec![];
        for s in &plan.steps {
            steps.push(prepare(&plan, s, isa).map_err(|e| format!("step '{}': {e}", s.name))?);
        }
        let scratch_bytes = steps
            .iter()
            .map(|s| match &s.kernel {
                Kernel::Gemm(g) => g.scratch_bytes(),
                Kernel::Grouped(g) => g.convs[0].scratch_bytes(),
                Kernel::Winograd(w) => w.scratch_bytes(),
                Kernel::Direct(d) => d.scratch_bytes(),
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        let mut engine = CpuPlan {
            arena: vec![0u64; plan.arena_bytes.div_ceil(8).max(1)],
            timing: vec![(0, 0); steps.len()],
            steps,
            plan,
            scratch: vec![],
            scratch_ptrs: vec![],
            scratch_bytes,
            pool: pool.clone(),
            isa,
        };
        engine.set_pool(pool);
        Ok(engine)
    }

    /// Run on another pool (a different thread count): scratch for each of its threads.
    pub fn set_pool(&mut self, pool: Arc<WorkerPool>) {
        self.scratch = (0..pool.threads())
            .map(|_| vec![0u64; self.scratch_bytes.div_ceil(8) + 1])
            .collect();
        self.scratch_ptrs = self
            .scratch
            .iter_mut()
            .map(|s| SyncPtr(s.as_mut_ptr() as *mut u8))
            .collect();
        self.pool = pool;
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// The worker pool (shared with other stages of the same backend).
    pub fn pool(&self) -> &WorkerPool {
        &self.pool
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn plan(&self) -> &KernelPlan {
        &self.plan
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: u64 words viewed as their bytes.
        unsafe {
            std::slice::from_raw_parts_mut(self.arena.as_mut_ptr() as *mut u8, self.arena.len() * 8)
        }
    }

    /// Input `k` as a mutable f32 slice (write the frame's tensor straight into the arena).
    pub fn input_mut(&mut self, k: usize) -> &mut [f32] {
        let t = self.plan.inputs[k];
        let (off, len) = (self.plan.offsets[t], self.plan.tensors[t].elems());
        let b = self.bytes();
        // SAFETY: inputs are f32 tensors (checked at load), offsets are 256-aligned.
        unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().add(off) as *mut f32, len) }
    }

    /// Output `k` as f32 into `dst` (int8 outputs dequantized, class maps as class indices),
    /// without allocating.
    pub fn output_into(&mut self, k: usize, dst: &mut [f32]) -> Result<(), String> {
        let t = self.plan.outputs[k];
        let elems = self.plan.tensors[t].elems();
        if dst.len() != elems {
            return Err(format!(
                "output {k} has {elems} values, the buffer {}",
                dst.len()
            ));
        }
        // SAFETY: u64 words viewed as their bytes (read only).
        let arena = unsafe {
            std::slice::from_raw_parts(self.arena.as_ptr() as *const u8, self.arena.len() * 8)
        };
        crate::reference::output_f32_into(&self.plan, arena, t, dst);
        Ok(())
    }

    /// Load `plan`, run it once on `inputs` (f32, one per plan input) and return every
    /// output as f32: for checks and conformance (allocates; the frame path does not).
    pub fn run_once(
        plan: &KernelPlan,
        inputs: &[&[f32]],
        threads: usize,
    ) -> Result<Vec<Vec<f32>>, String> {
        let mut e = CpuPlan::load(plan.clone(), pool::shared(threads), Isa::detect())?;
        if inputs.len() != plan.inputs.len() {
            return Err(format!(
                "{} inputs given, the plan has {}",
                inputs.len(),
                plan.inputs.len()
            ));
        }
        for (k, x) in inputs.iter().enumerate() {
            if plan.tensors[plan.inputs[k]].dtype != DType::F32 {
                return Err(format!("input {k} is not stored as f32"));
            }
            let dst = e.input_mut(k);
            if dst.len() != x.len() {
                return Err(format!(
                    "input {k}: {} values, expected {}",
                    x.len(),
                    dst.len()
                ));
            }
            dst.copy_from_slice(x);
        }
        e.run();
        (0..plan.outputs.len())
            .map(|k| {
                let mut y = vec![0f32; plan.tensors[plan.outputs[k]].elems()];
                e.output_into(k, &mut y).map(|_| y)
            })
            .collect()
    }

    /// Run every step once.
    pub fn run(&mut self) {
        let base = SyncPtr(self.arena.as_mut_ptr() as *mut u8);
        let scratch = &self.scratch_ptrs;
        for (i, s) in self.steps.iter().enumerate() {
            let t0 = Instant::now();
            // SAFETY: offsets come from the plan's allocator (tensors alive at one step never
            // overlap, so a step's inputs and output are disjoint) and lie inside the arena.
            unsafe { run_step_isa(self.isa, s, base, scratch, self.scratch_bytes, &self.pool) };
            let t = &mut self.timing[i];
            t.0 += t0.elapsed().as_nanos() as u64;
            t.1 += 1;
        }
    }

    /// Per-step time since load (or the last reset).
    pub fn profile(&self) -> Vec<StepProfile> {
        self.steps
            .iter()
            .zip(&self.timing)
            .map(|(s, (ns, calls))| StepProfile {
                name: s.name.clone(),
                kernel: kernel_name(&s.kernel),
                ns: *ns,
                calls: *calls,
                ops: s.ops,
            })
            .collect()
    }

    pub fn reset_profile(&mut self) {
        self.timing.iter_mut().for_each(|t| *t = (0, 0));
    }
}

fn kernel_name(k: &Kernel) -> String {
    let s = match k {
        Kernel::Grouped(g) => {
            let t = if g.convs[0].is_int8() { "i8" } else { "f32" };
            return format!("gemm_{t}_{}_x{}", g.convs[0].isa().name(), g.convs.len());
        }
        Kernel::Gemm(g) => {
            let t = if g.is_int8() { "i8" } else { "f32" };
            return format!("gemm_{t}_{}", g.isa().name());
        }
        Kernel::Winograd(_) => "winograd_f32",
        Kernel::Direct(d) => {
            return format!(
                "direct_{}_{}",
                if d.is_int8() { "i8" } else { "f32" },
                if d.p.groups == d.p.c && d.p.c == d.p.k {
                    "depthwise"
                } else {
                    "grouped"
                }
            );
        }
        Kernel::Unary { .. } => "unary",
        Kernel::Binary(_) => "binary",
        Kernel::BinaryI8 { .. } => "binary_i8",
        Kernel::ScaleShiftI8 { .. } => "scale_shift_i8",
        Kernel::Pool(_) => "pool",
        Kernel::PoolMaxI8(_) => "pool_i8",
        Kernel::Resize(_) => "resize",
        Kernel::Softmax { .. } => "softmax",
        Kernel::Argmax { .. } => "argmax",
        Kernel::Quantize { .. } => "quantize",
        Kernel::Dequantize { .. } => "dequantize",
        Kernel::Copy => "copy",
        Kernel::CopySlice { .. } => "copy_slice",
        Kernel::Transpose { .. } => "transpose",
    };
    s.to_string()
}

/// Check one step and turn it into its CPU kernel.
fn prepare(plan: &KernelPlan, s: &Step, isa: Isa) -> Result<CpuStep, String> {
    let od = &plan.tensors[s.output];
    let in_dtype = |k: usize| plan.tensors[s.inputs[k]].dtype;
    let want = |k: usize, d: DType, what: &str| want_dtype(plan, s, k, d, what);
    let mut ops = 0.0;
    let kernel = match &s.op {
        Op::Conv { .. } => {
            let (kernel, conv_ops) = prepare_conv(plan, s, isa)?;
            ops = conv_ops;
            kernel
        }
        Op::Unary { act, a, b } => {
            want(0, DType::F32, "activation")?;
            Kernel::Unary {
                act: *act,
                a: *a,
                b: *b,
            }
        }
        Op::Binary(p) if in_dtype(0) == DType::I8 => prepare_binary_i8(plan, s, p)?,
        Op::Binary(p) => {
            want(0, DType::F32, "binary op")?;
            want(1, DType::F32, "binary op")?;
            Kernel::Binary(*p)
        }
        Op::Pool(p) => prepare_pool(plan, s, p)?,
        Op::Resize(p) => {
            want(0, DType::F32, "resize")?;
            Kernel::Resize(*p)
        }
        Op::Softmax { outer, len, inner } => {
            want(0, DType::F32, "softmax")?;
            Kernel::Softmax {
                outer: *outer,
                len: *len,
                inner: *inner,
            }
        }
        Op::Argmax { classes, cells } => {
            want(0, DType::F32, "argmax")?;
            Kernel::Argmax {
                classes: *classes,
                cells: *cells,
            }
        }
        Op::Quantize => {
            want(0, DType::F32, "quantize")?;
            let (scale, zp) = od.quant.ok_or("quantize into an unquantized tensor")?;
            Kernel::Quantize { scale, zp }
        }
        Op::Dequantize => {
            want(0, DType::I8, "dequantize")?;
            let (scale, zp) = plan.tensors[s.inputs[0]]
                .quant
                .ok_or("dequantize of an unquantized tensor")?;
            Kernel::Dequantize { scale, zp }
        }
        Op::Cast => {
            if in_dtype(0) != od.dtype {
                return Err(format!("cast {:?} → {:?}", in_dtype(0), od.dtype));
            }
            Kernel::Copy
        }
        Op::CopySlice {
            outer,
            src_inner,
            dst_inner,
            dst_offset,
        } => Kernel::CopySlice {
            outer: *outer,
            src_inner: *src_inner,
            dst_inner: *dst_inner,
            dst_offset: *dst_offset,
            elem: od.dtype.size(),
        },
        Op::Transpose(p) => {
            if in_dtype(0) != od.dtype {
                return Err(format!("transpose {:?} → {:?}", in_dtype(0), od.dtype));
            }
            Kernel::Transpose {
                p: *p,
                elem: od.dtype.size(),
            }
        }
    };
    Ok(CpuStep {
        name: s.name.clone(),
        kernel,
        ins: step_sources(plan, s),
        out_off: plan.offsets[s.output],
        out_len: od.elems(),
        ops,
    })
}

/// Operand `k` of step `s` is a constant or of dtype `d`; `what` names the op in the error.
fn want_dtype(plan: &KernelPlan, s: &Step, k: usize, d: DType, what: &str) -> Result<(), String> {
    let in_dtype = |k: usize| plan.tensors[s.inputs[k]].dtype;
    if s.const_input(k).is_some() || in_dtype(k) == d {
        Ok(())
    } else {
        Err(format!("{what} reads {:?}, expected {d:?}", in_dtype(k)))
    }
}

/// [`prepare`] for a binary op on int8 codes: two tensors of one shape into int8.
fn prepare_binary_i8(plan: &KernelPlan, s: &Step, p: &BinaryParams) -> Result<Kernel, String> {
    if p.op == crate::params::binary_op::SCALE_SHIFT {
        if s.const_input(1).is_none() || plan.tensors[s.output].dtype != DType::I8 {
            return Err("an int8 scale-shift takes int8 codes and f32 factors into int8".into());
        }
        let q = crate::reference::binary_i8_quant(plan, s)?;
        return Ok(Kernel::ScaleShiftI8 {
            p: *p,
            q: [q[0], q[2]],
        });
    }
    let dense = p.a_strides == p.b_strides && p.a_strides[3] == 1;
    if !(0..=3).contains(&p.op)
        || !dense
        || !s.const_inputs.is_empty()
        || plan.tensors[s.output].dtype != DType::I8
    {
        return Err("an int8 binary op takes two int8 tensors of one shape into int8".into());
    }
    want_dtype(plan, s, 1, DType::I8, "int8 binary op")?;
    Ok(Kernel::BinaryI8 {
        p: *p,
        q: crate::reference::binary_i8_quant(plan, s)?,
    })
}

/// [`prepare`] for a pool: float, or max pooling of int8 codes into int8.
fn prepare_pool(plan: &KernelPlan, s: &Step, p: &PoolParams) -> Result<Kernel, String> {
    if plan.tensors[s.inputs[0]].dtype == DType::I8 {
        if p.mode != 0 || plan.tensors[s.output].dtype != DType::I8 {
            return Err("an int8 pool is a max pool into int8".into());
        }
        return Ok(Kernel::PoolMaxI8(*p));
    }
    want_dtype(plan, s, 0, DType::F32, "pool")?;
    Ok(Kernel::Pool(*p))
}

/// [`prepare`] for a convolution step: its kernel (direct, Winograd or GEMM; INT8 or float)
/// and its operation count.
fn prepare_conv(plan: &KernelPlan, s: &Step, isa: Isa) -> Result<(Kernel, f64), String> {
    let Op::Conv {
        kernel,
        p,
        weights,
        bias,
        wsum,
        mult,
    } = &s.op
    else {
        unreachable!("prepare_conv takes convolution steps");
    };
    let want = |k: usize, d: DType, what: &str| want_dtype(plan, s, k, d, what);
    let int8 = matches!(kernel, ConvKernel::GemmI8 | ConvKernel::DirectI8);
    conv::check(p, int8)?;
    want(0, if int8 { DType::I8 } else { DType::F32 }, "convolution")?;
    // the epilogue writes what out_mode says: the output tensor must be sized for it
    let out_i8 = plan.tensors[s.output].dtype == DType::I8;
    if out_i8 != (p.out_mode == crate::params::out_mode::I8) {
        return Err(format!(
            "convolution writes {} into a {:?} tensor",
            if out_i8 { "f32" } else { "int8" },
            plan.tensors[s.output].dtype
        ));
    }
    let bias = const_f32(&plan.consts[*bias]);
    let ops = p.ops();
    let direct = matches!(kernel, ConvKernel::DirectI8 | ConvKernel::DirectF16);
    let kernel = match (&plan.consts[*weights], int8) {
        (ConstData::I8(w), true) if direct && GroupedGemm::applies(p) => {
            let mult = mult
                .map(|m| const_f32(&plan.consts[m]))
                .ok_or("int8 convolution without mult")?;
            let wsum: Vec<i32> = match wsum.map(|c| &plan.consts[c]) {
                Some(ConstData::I32(v)) => v.clone(),
                _ => return Err("int8 grouped convolution without an i32 wsum".into()),
            };
            Kernel::Grouped(GroupedGemm::new(p, |gp, rows| {
                let (w, r) = (
                    &w[rows.start * p.kpad as usize..rows.end * p.kpad as usize],
                    rows,
                );
                GemmConv::new_i8(gp, w, &wsum[r.clone()], &mult[r.clone()], &bias[r], isa)
            })?)
        }
        (c @ (ConstData::F32(_) | ConstData::F16(_)), false)
            if direct && GroupedGemm::applies(p) =>
        {
            let w = const_f32(c);
            Kernel::Grouped(GroupedGemm::new(p, |gp, rows| {
                let w = &w[rows.start * p.kpad as usize..rows.end * p.kpad as usize];
                GemmConv::new_f32(gp, w, &bias[rows], isa)
            })?)
        }
        (ConstData::I8(w), true) => {
            let mult = mult
                .map(|m| const_f32(&plan.consts[m]))
                .ok_or("int8 convolution without mult")?;
            if direct {
                Kernel::Direct(DirectConv::new_i8(*p, w, &mult, &bias, isa))
            } else {
                let wsum: Vec<i32> = match wsum.map(|c| &plan.consts[c]) {
                    Some(ConstData::I32(v)) => v.clone(),
                    _ => return Err("int8 GEMM without an i32 wsum".into()),
                };
                Kernel::Gemm(GemmConv::new_i8(*p, w, &wsum, &mult, &bias, isa)?)
            }
        }
        (c @ (ConstData::F32(_) | ConstData::F16(_)), false) => {
            let w = const_f32(c);
            if direct {
                Kernel::Direct(DirectConv::new_f32(*p, &w, &bias, isa))
            } else if WinogradConv::applies(p, isa) {
                Kernel::Winograd(WinogradConv::new(*p, &w, &bias, isa))
            } else {
                Kernel::Gemm(GemmConv::new_f32(*p, &w, &bias, isa)?)
            }
        }
        _ => return Err("weights of another type than the input".into()),
    };
    Ok((kernel, ops))
}

/// Where each operand of step `s` is read from: a constant (as f32) or an arena tensor.
fn step_sources(plan: &KernelPlan, s: &Step) -> Vec<Src> {
    (0..s.inputs.len())
        .map(|k| match s.const_input(k) {
            Some(c) => Src::Const(const_f32(&plan.consts[c])),
            None => {
                let t = s.inputs[k];
                Src::Tensor {
                    off: plan.offsets[t],
                    len: plan.tensors[t].elems(),
                }
            }
        })
        .collect()
}

/// Operand `k` of a step as f32.
///
/// # Safety
/// `base` is the arena; the tensor is f32 (checked at load).
unsafe fn src_f32(s: &CpuStep, k: usize, base: SyncPtr) -> &[f32] {
    match &s.ins[k] {
        Src::Const(v) => v,
        Src::Tensor { off, len } => unsafe {
            std::slice::from_raw_parts(base.0.add(*off) as *const f32, *len)
        },
    }
}

/// # Safety
/// As [`src_f32`], for an int8 tensor.
unsafe fn src_i8(s: &CpuStep, k: usize, base: SyncPtr) -> &[i8] {
    match &s.ins[k] {
        Src::Const(_) => &[],
        Src::Tensor { off, len } => unsafe {
            std::slice::from_raw_parts(base.0.add(*off) as *const i8, *len)
        },
    }
}

/// [`run_step`] compiled for `isa`, so the elementwise kernels vectorise for it (and
/// rounding such as `round_ties_even` becomes one instruction instead of a library call).
///
/// # Safety
/// See [`CpuPlan::run`].
unsafe fn run_step_isa(
    isa: Isa,
    s: &CpuStep,
    base: SyncPtr,
    scratch: &[SyncPtr],
    scratch_bytes: usize,
    pool: &WorkerPool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
        unsafe fn avx512(s: &CpuStep, b: SyncPtr, sc: &[SyncPtr], n: usize, p: &WorkerPool) {
            unsafe { run_step(Isa::Avx512, s, b, sc, n, p) }
        }
        #[target_feature(enable = "avx2,fma,sse4.1")]
        unsafe fn avx2(s: &CpuStep, b: SyncPtr, sc: &[SyncPtr], n: usize, p: &WorkerPool) {
            unsafe { run_step(Isa::Avx2, s, b, sc, n, p) }
        }
        match isa {
            Isa::Avx512 | Isa::Avx512Vnni => {
                return unsafe { avx512(s, base, scratch, scratch_bytes, pool) };
            }
            Isa::Avx2 => return unsafe { avx2(s, base, scratch, scratch_bytes, pool) },
            _ => {}
        }
    }
    let _ = isa;
    unsafe { run_step(isa, s, base, scratch, scratch_bytes, pool) }
}

/// A pool step, its planes spread over the worker pool.
///
/// # Safety
/// See [`CpuPlan::run`]; `out` is the step's output.
#[inline(always)]
unsafe fn run_pool(isa: Isa, s: &CpuStep, base: SyncPtr, out: *mut u8, pool: &WorkerPool) {
    let (Kernel::Pool(p) | Kernel::PoolMaxI8(p)) = &s.kernel else {
        return;
    };
    let plane = (p.oh * p.ow) as usize;
    let planes = spread_rows(s.out_len, plane, (p.kh * p.kw) as usize, pool);
    unsafe {
        if let Kernel::PoolMaxI8(_) = s.kernel {
            let x = src_i8(s, 0, base);
            let y = std::slice::from_raw_parts_mut(out as *mut i8, s.out_len);
            pool.for_each_chunk_mut(y, planes * plane, &|i, y| {
                ops::pool_max_i8_on(isa, p, x, i * planes, y)
            });
        } else {
            let x = src_f32(s, 0, base);
            let y = std::slice::from_raw_parts_mut(out as *mut f32, s.out_len);
            pool.for_each_chunk_mut(y, planes * plane, &|i, y| {
                ops::pool_on(isa, p, x, i * planes, y)
            });
        }
    }
}

/// # Safety
/// See [`CpuPlan::run`].
#[inline(always)]
unsafe fn run_step(
    isa: Isa,
    s: &CpuStep,
    base: SyncPtr,
    scratch: &[SyncPtr],
    scratch_bytes: usize,
    pool: &WorkerPool,
) {
    let out = unsafe { base.0.add(s.out_off) };
    let out_f32 = || unsafe { std::slice::from_raw_parts_mut(out as *mut f32, s.out_len) };
    unsafe {
        match &s.kernel {
            Kernel::Gemm(_) | Kernel::Grouped(_) | Kernel::Direct(_) | Kernel::Winograd(_) => {
                run_conv(s, base, SyncPtr(out), scratch, scratch_bytes, pool)
            }
            Kernel::Unary { act, a, b } => {
                let x = src_f32(s, 0, base);
                pool.for_each_chunk_mut(out_f32(), ELEMENTWISE_CHUNK, &|i, y| {
                    ops::unary_on(isa, &x[i * ELEMENTWISE_CHUNK..][..y.len()], y, *act, *a, *b)
                });
            }
            Kernel::Binary(p) => {
                let (a, b) = (src_f32(s, 0, base), src_f32(s, 1, base));
                let rows = spread_rows(s.out_len, (p.dims[2] * p.dims[3]) as usize, 1, pool);
                pool.for_each_chunk_mut(
                    out_f32(),
                    rows * (p.dims[2] * p.dims[3]) as usize,
                    &|i, y| ops::binary_on(isa, p, a, b, i * rows, y),
                );
            }
            Kernel::BinaryI8 { p, q } => {
                let (a, b) = (src_i8(s, 0, base), src_i8(s, 1, base));
                let y = std::slice::from_raw_parts_mut(out as *mut i8, s.out_len);
                let job = |i, y: &mut [i8]| {
                    let (a, b) = (&a[i * ELEMENTWISE_CHUNK..], &b[i * ELEMENTWISE_CHUNK..]);
                    ops::binary_i8_on(isa, p, q, a, b, y)
                };
                pool.for_each_chunk_mut(y, ELEMENTWISE_CHUNK, &job);
            }
            Kernel::ScaleShiftI8 { p, q } => {
                let (a, b) = (src_i8(s, 0, base), src_f32(s, 1, base));
                let rows = spread_rows(s.out_len, (p.dims[2] * p.dims[3]) as usize, 1, pool);
                let y = std::slice::from_raw_parts_mut(out as *mut i8, s.out_len);
                let job = |i, y: &mut [i8]| ops::scale_shift_i8_on(isa, p, q, a, b, i * rows, y);
                pool.for_each_chunk_mut(y, rows * (p.dims[2] * p.dims[3]) as usize, &job);
            }
            Kernel::Pool(_) | Kernel::PoolMaxI8(_) => run_pool(isa, s, base, out, pool),
            Kernel::Resize(p) if p.ow as usize <= ops::RESIZE_MAX_ROW => {
                let x = src_f32(s, 0, base);
                let plane = (p.oh * p.ow) as usize;
                let planes = spread_rows(s.out_len, plane, 4, pool);
                pool.for_each_chunk_mut(out_f32(), planes * plane, &|i, y| {
                    ops::resize_on(isa, p, x, i * planes, y)
                });
            }
            Kernel::Resize(p) => crate::reference::resize_into(p, src_f32(s, 0, base), out_f32()),
            Kernel::Softmax { outer, len, inner } => {
                crate::reference::softmax_into(src_f32(s, 0, base), *outer, *len, *inner, out_f32())
            }
            Kernel::Argmax { classes, cells } => {
                let y = std::slice::from_raw_parts_mut(out, *cells);
                crate::reference::argmax_into(src_f32(s, 0, base), *classes, *cells, y)
            }
            Kernel::Quantize { scale, zp } => {
                // large tensors (a BEV head's input) in chunks over the pool
                let x = src_f32(s, 0, base);
                let y = std::slice::from_raw_parts_mut(out as *mut i8, s.out_len);
                pool.for_each_chunk_mut(y, ELEMENTWISE_CHUNK, &|i, y| {
                    ops::quantize_on(isa, &x[i * ELEMENTWISE_CHUNK..][..y.len()], y, *scale, *zp)
                });
            }
            Kernel::Dequantize { scale, zp } => {
                ops::dequantize(src_i8(s, 0, base), out_f32(), *scale, *zp)
            }
            Kernel::Copy => {
                let Src::Tensor { off, len } = &s.ins[0] else {
                    return;
                };
                std::ptr::copy_nonoverlapping(base.0.add(*off), out, len * 4);
            }
            Kernel::Transpose { p, elem } => {
                let Src::Tensor { off, .. } = &s.ins[0] else {
                    return;
                };
                let x = base.0.add(*off) as *const u8;
                match elem {
                    4 => ops::transpose(p, x as *const u32, out as *mut u32),
                    2 => ops::transpose(p, x as *const u16, out as *mut u16),
                    _ => ops::transpose(p, x, out),
                }
            }
            Kernel::CopySlice {
                outer,
                src_inner,
                dst_inner,
                dst_offset,
                elem,
            } => {
                let Src::Tensor { off, .. } = &s.ins[0] else {
                    return;
                };
                for o in 0..*outer {
                    let from = base.0.add(off + o * src_inner * elem);
                    let to = out.add((o * dst_inner + dst_offset) * elem);
                    std::ptr::copy_nonoverlapping(from, to, src_inner * elem);
                }
            }
        }
    }
}

/// How many rows (of `row` outputs, each costing about `taps` operations) one task of a
/// bandwidth-bound step takes: all of them when the step is too small to be worth waking the
/// workers, else about four tasks per thread.
fn spread_rows(outputs: usize, row: usize, taps: usize, pool: &WorkerPool) -> usize {
    let rows = outputs / row.max(1);
    if ((outputs * taps.max(1)) as f64) < PARALLEL_MIN_OPS / 4.0 || pool.threads() == 1 {
        return rows.max(1);
    }
    rows.div_ceil(pool.threads() * 4).max(1)
}

/// A convolution's input and output as the kernels take them, int8 or f32.
fn conv_bufs(x: *mut u8, y: *mut u8, int8_in: bool, int8_out: bool) -> (InBuf, OutBuf) {
    let xin = if int8_in {
        InBuf::I8(x as *const i8)
    } else {
        InBuf::F32(x as *const f32)
    };
    let yout = if int8_out {
        OutBuf::I8(y as *mut i8)
    } else {
        OutBuf::F32(y as *mut f32)
    };
    (xin, yout)
}

/// `job` over `n` tasks: on the pool, or on the calling thread for a step of fewer than
/// [`PARALLEL_MIN_OPS`] operations (waking workers costs more than they gain).
fn spread(pool: &WorkerPool, ops: f64, n: usize, job: &pool::Job<'_>) {
    if ops < PARALLEL_MIN_OPS {
        (0..n).for_each(|t| job(t, 0));
    } else {
        pool.run(n, job);
    }
}

/// A grouped (not depthwise) convolution of one image: group g reads input channels
/// `[g·c/G, (g+1)·c/G)` and writes output channels `[g·k/G, (g+1)·k/G)`, both contiguous
/// planes in NCHW, so each group is an ordinary GEMM convolution on its slice (ShuffleNet's
/// grouped 1x1s, ResNeXt's grouped 3x3s). The direct kernel would run them at a few GFLOP/s.
struct GroupedGemm {
    convs: Vec<GemmConv>,
    /// Elements of one group's input and output slices.
    in_group: usize,
    out_group: usize,
    int8_out: bool,
}

impl GroupedGemm {
    /// One image, at least 4 input and 4 output channels per group (depthwise and
    /// near-depthwise stay on the direct kernel).
    fn applies(p: &ConvParams) -> bool {
        p.n == 1 && p.groups > 1 && p.c / p.groups >= 4 && p.k / p.groups >= 4
    }

    /// `make(group params, output rows of the group)` builds each group's GEMM.
    fn new(
        p: &ConvParams,
        make: impl Fn(ConvParams, std::ops::Range<usize>) -> Result<GemmConv, String>,
    ) -> Result<GroupedGemm, String> {
        let g = p.groups as usize;
        let gp = ConvParams {
            c: p.c / p.groups,
            k: p.k / p.groups,
            groups: 1,
            ..*p
        };
        let kg = gp.k as usize;
        let convs = (0..g)
            .map(|i| make(gp, i * kg..(i + 1) * kg))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GroupedGemm {
            convs,
            in_group: (gp.c * p.h * p.w) as usize,
            out_group: (gp.k * p.oh * p.ow) as usize,
            int8_out: p.out_mode == out_mode::I8,
        })
    }

    /// # Safety
    /// As [`run_conv`].
    unsafe fn run(
        &self,
        x: SyncPtr,
        out: SyncPtr,
        ops: f64,
        scratch: &[SyncPtr],
        scratch_bytes: usize,
        pool: &WorkerPool,
    ) {
        let first = &self.convs[0];
        let (int8_in, int8_out) = (first.is_int8(), self.int8_out);
        let (ein, eout) = (if int8_in { 1 } else { 4 }, if int8_out { 1 } else { 4 });
        let at = |g: usize| {
            // SAFETY: group g's slices lie inside the input and output tensors.
            let xg = unsafe { x.get().add(g * self.in_group * ein) };
            let yg = unsafe { out.get().add(g * self.out_group * eout) };
            conv_bufs(xg, yg, int8_in, int8_out)
        };
        let pads = first.pad_tasks();
        // SAFETY: each (group, plane) once, before any GEMM task of the step.
        spread(pool, ops, pads * self.convs.len(), &|t, _| unsafe {
            self.convs[t / pads].pad_task(t % pads, at(t / pads).0)
        });
        let tasks = first.tasks();
        spread(pool, ops, tasks * self.convs.len(), &|t, thread| {
            let (g, t) = (t / tasks, t % tasks);
            let (xin, y) = at(g);
            // SAFETY: each thread owns scratch[thread]; tasks write disjoint outputs.
            unsafe {
                let scr = std::slice::from_raw_parts_mut(scratch[thread].get(), scratch_bytes);
                self.convs[g].run_task(t, xin, y, scr)
            }
        });
    }
}

/// A convolution step: its tasks over the pool (inline when small), each thread on its own
/// scratch.
///
/// # Safety
/// See [`CpuPlan::run`].
unsafe fn run_conv(
    s: &CpuStep,
    base: SyncPtr,
    out: SyncPtr,
    scratch: &[SyncPtr],
    scratch_bytes: usize,
    pool: &WorkerPool,
) {
    let Src::Tensor { off, .. } = &s.ins[0] else {
        return;
    };
    if let Kernel::Grouped(g) = &s.kernel {
        let x = SyncPtr(unsafe { base.0.add(*off) });
        return unsafe { g.run(x, out, s.ops, scratch, scratch_bytes, pool) };
    }
    let (int8_in, int8_out, tasks) = match &s.kernel {
        Kernel::Gemm(g) => (g.is_int8(), g.p.out_mode == out_mode::I8, g.tasks()),
        Kernel::Direct(d) => (d.is_int8(), d.p.out_mode == out_mode::I8, d.tasks()),
        Kernel::Winograd(w) => (false, w.p.out_mode == out_mode::I8, w.tasks()),
        _ => return,
    };
    let x = SyncPtr(unsafe { base.0.add(*off) });
    let job = move |t: usize, thread: usize| {
        let (xin, y) = conv_bufs(x.get(), out.get(), int8_in, int8_out);
        // SAFETY: each thread owns scratch[thread]; tasks write disjoint outputs.
        let scr = unsafe { std::slice::from_raw_parts_mut(scratch[thread].get(), scratch_bytes) };
        unsafe {
            match &s.kernel {
                Kernel::Gemm(g) => g.run_task(t, xin, y, scr),
                Kernel::Direct(d) => d.run_task(t, xin, y, scr),
                Kernel::Winograd(w) => w.run_task(t, y, scr),
                _ => {}
            }
        }
    };
    // The padded copy of the input first (GEMM row source, Winograd tiles), all of it.
    let pad_tasks = match &s.kernel {
        Kernel::Gemm(g) => g.pad_tasks(),
        Kernel::Winograd(w) => w.pad_tasks(),
        _ => 0,
    };
    spread(pool, s.ops, pad_tasks, &move |t, _| {
        let (xin, _) = conv_bufs(x.get(), out.get(), int8_in, int8_out);
        // SAFETY: one (image, channel block) per task, before any task below reads it.
        unsafe {
            match &s.kernel {
                Kernel::Gemm(g) => g.pad_task(t, xin),
                Kernel::Winograd(w) => w.pad_task(t, xin),
                _ => {}
            }
        }
    });
    spread(pool, s.ops, tasks, &job);
}

#[cfg(test)]
mod tests;
