//! The GPU runner of a [`KernelPlan`]: device memory for the whole plan allocated once at
//! load (one activation arena with the plan's offsets, one constant arena for weights), every
//! launch resolved to raw device addresses and parameter blocks at load, and the per-frame
//! sequence recorded once as a CUDA graph and replayed. Nothing here allocates per frame.
//!
//! [`crate::reference`] runs the same plan on the CPU over the same arena layout; the device
//! check compares the two step by step.

use crate::launch::{Gpu, GpuError, conv_gemm_config, elementwise_config};
use crate::params::{BinaryParams, ConvParams, PoolParams, ResizeParams, TransposeParams};
use crate::plan::{ALIGN, ConvKernel, DType, KernelPlan, Op, Step, TensorId};
use cudarc::driver::{CudaFunction, CudaGraph, CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};

fn drv(e: cudarc::driver::DriverError) -> GpuError {
    GpuError::Driver(format!("{e:?}"))
}

/// One kernel argument by value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    /// A device address.
    Ptr(u64),
    I32(i32),
    F32(f32),
    Conv(ConvParams),
    Binary(BinaryParams),
    Pool(PoolParams),
    Resize(ResizeParams),
    Transpose(TransposeParams),
}

impl Arg {
    /// Push onto a cudarc launch (the value must outlive the launch builder).
    pub fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        match self {
            Arg::Ptr(v) => b.arg(v),
            Arg::I32(v) => b.arg(v),
            Arg::F32(v) => b.arg(v),
            Arg::Conv(v) => b.arg(v),
            Arg::Binary(v) => b.arg(v),
            Arg::Pool(v) => b.arg(v),
            Arg::Resize(v) => b.arg(v),
            Arg::Transpose(v) => b.arg(v),
        };
    }
}

/// A launch's arguments in kernel-signature order (at most 10, binary_i8's); a fixed
/// array, so enqueueing a step allocates nothing.
pub type ArgList = heapless::Vec<Arg, 12>;

/// A plan step resolved to one launch: the kernel, its configuration and its arguments with
/// every address filled in. The same list drives the GPU ([`PlanRunner`]) and the CPU
/// emulation of the kernel sources (`bevrt-kernels-emu`).
#[derive(Debug, Clone)]
pub struct ResolvedLaunch {
    pub kernel: &'static str,
    pub cfg: LaunchConfig,
    pub args: ArgList,
}

/// Which INT8 convolution kernel runs the GEMM steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Gemm {
    /// `mma.sync` tensor cores (sm_80 and later: Orin, Ampere, Hopper).
    Imma,
    /// `__dp4a` on CUDA cores (every SM from 6.1).
    Dp4a,
}

/// The storage a kernel reads its (tensor) inputs in.
pub fn kernel_input_dtype(kernel: &str) -> DType {
    match kernel {
        "conv_i8_imma" | "conv_i8_dp4a" | "conv_direct_i8" | "dequantize_f16" | "transpose_b8"
        | "pool_max_i8" | "binary_i8" | "scale_shift_i8" => DType::I8,
        "conv_direct_f32" | "unary_f32" | "binary_f32" | "quantize_f32" | "cast_f32_f16"
        | "transpose_b32" => DType::F32,
        _ => DType::F16,
    }
}

/// Refuse a plan the kernels cannot run: every tensor a step reads must be stored the way
/// its kernel reads it (an f32 input handed to an FP16 kernel would be read as halves).
pub fn check_storage(plan: &KernelPlan) -> Result<(), String> {
    for s in &plan.steps {
        let ins: Vec<DType> = s.inputs.iter().map(|&i| plan.tensors[i].dtype).collect();
        let kernel = s.op.kernel_name(&ins, plan.tensors[s.output].dtype);
        let want = kernel_input_dtype(kernel);
        for (pos, &t) in s.inputs.iter().enumerate() {
            if s.const_input(pos).is_some() {
                continue;
            }
            let d = &plan.tensors[t];
            if d.dtype != want {
                return Err(format!(
                    "step '{}': {kernel} reads {want:?} but tensor '{}' is {:?} (FP32 plans run \
                     convolutions, activations and binary ops only; lower the rest with float = F16)",
                    s.name, d.name, d.dtype
                ));
            }
        }
    }
    Ok(())
}

/// Every constant of the plan packed into one buffer, each `ALIGN`-aligned, and each one's
/// offset in it.
pub fn pack_consts(plan: &KernelPlan) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = vec![];
    let mut offsets = vec![];
    for c in &plan.consts {
        offsets.push(bytes.len());
        bytes.extend(c.bytes());
        bytes.resize(bytes.len().div_ceil(ALIGN) * ALIGN, 0);
    }
    bytes.resize(bytes.len().max(ALIGN), 0);
    (bytes, offsets)
}

/// Resolve every step of `plan` to its launch, with the activation arena at `arena_base` and
/// the packed constants ([`pack_consts`]) at `const_base`.
pub fn resolve_launches(
    plan: &KernelPlan,
    arena_base: u64,
    const_base: u64,
    const_offsets: &[usize],
    int8: Int8Gemm,
) -> Result<Vec<ResolvedLaunch>, String> {
    check_storage(plan)?;
    let at = Addresses {
        plan,
        arena_base,
        const_base,
        const_offsets,
    };
    plan.steps
        .iter()
        .map(|s| resolve_step(&at, s, int8))
        .collect()
}

/// Where a plan's activation arena and packed constants lie on the device.
struct Addresses<'a> {
    plan: &'a KernelPlan,
    arena_base: u64,
    const_base: u64,
    const_offsets: &'a [usize],
}

impl Addresses<'_> {
    fn tensor(&self, t: TensorId) -> u64 {
        self.arena_base + self.plan.offsets[t] as u64
    }
    fn constant(&self, c: usize) -> u64 {
        self.const_base + self.const_offsets[c] as u64
    }
    /// Operand `k` of step `s`: its constant or its tensor.
    fn operand(&self, s: &Step, k: usize) -> Arg {
        Arg::Ptr(match s.const_input(k) {
            Some(c) => self.constant(c),
            None => self.tensor(s.inputs[k]),
        })
    }
}

fn list(v: &[Arg]) -> ArgList {
    v.iter().copied().collect()
}

/// One step's kernel, launch configuration and arguments.
fn resolve_step(at: &Addresses, s: &Step, int8: Int8Gemm) -> Result<ResolvedLaunch, String> {
    let plan = at.plan;
    let ins: Vec<DType> = s.inputs.iter().map(|&i| plan.tensors[i].dtype).collect();
    let out = &plan.tensors[s.output];
    let mut kernel = s.op.kernel_name(&ins, out.dtype);
    if kernel == "conv_i8_imma" && int8 == Int8Gemm::Dp4a {
        kernel = "conv_i8_dp4a";
    }
    let x = |k: usize| at.operand(s, k);
    let y = Arg::Ptr(at.tensor(s.output));
    let n = out.elems();
    let i32_ = |v: usize| Arg::I32(v as i32);
    let (cfg, args) = match &s.op {
        Op::Conv { .. } => conv_launch(at, s, kernel)?,
        Op::Unary { act, a, b } => (
            elementwise_config(n),
            list(&[x(0), y, i32_(n), Arg::I32(*act), Arg::F32(*a), Arg::F32(*b)]),
        ),
        Op::Binary(p) if kernel == "binary_i8" || kernel == "scale_shift_i8" => {
            let [(sa, za), (sb, zb), (sy, zy)] = crate::reference::binary_i8_quant(plan, s)?;
            // scale_shift_i8's second operand is f32 factors, without a quantization
            let b_quant: &[Arg] = if kernel == "binary_i8" {
                &[Arg::F32(sb), Arg::I32(zb)]
            } else {
                &[]
            };
            let args = [Arg::Binary(*p), x(0), x(1), y, Arg::F32(sa), Arg::I32(za)]
                .into_iter()
                .chain(b_quant.iter().copied())
                .chain([Arg::F32(sy), Arg::I32(zy)])
                .collect();
            (elementwise_config(n), args)
        }
        Op::Binary(p) => (
            elementwise_config(n),
            list(&[Arg::Binary(*p), x(0), x(1), y]),
        ),
        Op::Pool(p) => (elementwise_config(n), list(&[Arg::Pool(*p), x(0), y])),
        Op::Transpose(p) => (elementwise_config(n), list(&[Arg::Transpose(*p), x(0), y])),
        Op::Resize(p) => (elementwise_config(n), list(&[Arg::Resize(*p), x(0), y])),
        Op::Softmax { outer, len, inner } => (
            elementwise_config(outer * inner),
            list(&[x(0), y, i32_(*outer), i32_(*len), i32_(*inner)]),
        ),
        Op::Argmax { classes, cells } => (
            elementwise_config(*cells),
            list(&[x(0), y, i32_(*classes), i32_(*cells)]),
        ),
        Op::Quantize | Op::Dequantize => {
            let q = match s.op {
                Op::Quantize => out.quant,
                _ => plan.tensors[s.inputs[0]].quant,
            };
            let Some((sc, zp)) = q else {
                return Err(format!("{}: Q/DQ without a quantized tensor", s.name));
            };
            (
                elementwise_config(n),
                list(&[x(0), y, i32_(n), Arg::F32(sc), Arg::I32(zp)]),
            )
        }
        Op::Cast => (elementwise_config(n), list(&[x(0), y, i32_(n)])),
        Op::CopySlice {
            outer,
            src_inner,
            dst_inner,
            dst_offset,
        } => (
            elementwise_config(outer * src_inner),
            list(&[
                x(0),
                y,
                i32_(*outer),
                i32_(*src_inner),
                i32_(*dst_inner),
                i32_(*dst_offset),
            ]),
        ),
    };
    Ok(ResolvedLaunch { kernel, cfg, args })
}

/// [`resolve_step`] for a convolution run by `kernel`: GEMM kernels take their tiled
/// configuration, direct ones one thread per output; INT8 ones also read wsum and mult.
fn conv_launch(at: &Addresses, s: &Step, kernel: &str) -> Result<(LaunchConfig, ArgList), String> {
    let Op::Conv {
        kernel: ck,
        p,
        weights,
        bias,
        wsum,
        mult,
    } = &s.op
    else {
        unreachable!("conv_launch takes convolution steps");
    };
    let (x0, y) = (at.operand(s, 0), Arg::Ptr(at.tensor(s.output)));
    let cfg = match kernel {
        "conv_i8_imma" | "conv_i8_dp4a" | "conv_f16_mma" => conv_gemm_config(p),
        _ => elementwise_config(p.out_elems()),
    };
    let w = Arg::Ptr(at.constant(*weights));
    let b = Arg::Ptr(at.constant(*bias));
    let args = match ck {
        ConvKernel::GemmI8 | ConvKernel::DirectI8 => {
            let (Some(ws), Some(m)) = (wsum, mult) else {
                return Err(format!("{}: int8 convolution without wsum/mult", s.name));
            };
            let (ws, m) = (Arg::Ptr(at.constant(*ws)), Arg::Ptr(at.constant(*m)));
            list(&[Arg::Conv(*p), x0, w, ws, m, b, y])
        }
        _ => list(&[Arg::Conv(*p), x0, w, b, y]),
    };
    Ok((cfg, args))
}

struct Launch {
    func: CudaFunction,
    cfg: LaunchConfig,
    args: ArgList,
}

/// A plan on the device.
pub struct PlanRunner {
    pub plan: KernelPlan,
    arena: CudaSlice<u8>,
    _consts: CudaSlice<u8>,
    arena_base: u64,
    launches: Vec<Launch>,
    graph: Option<FrameGraph>,
}

impl PlanRunner {
    /// Allocate and upload everything the plan needs and resolve its launches.
    pub fn load(gpu: &Gpu, plan: KernelPlan, int8: Int8Gemm) -> Result<PlanRunner, GpuError> {
        // `resolve_launches` (below) checks the plan's storage for both runners; a refused
        // plan only costs these buffers, freed on return.
        let st = &gpu.stream;
        let (const_bytes, const_off) = pack_consts(&plan);
        let consts = st.clone_htod(&const_bytes).map_err(drv)?;
        let arena = st
            .alloc_zeros::<u8>(plan.arena_bytes.max(ALIGN))
            .map_err(drv)?;
        let (abase, _g) = arena.device_ptr(st);
        let (cbase, _h) = consts.device_ptr(st);
        drop((_g, _h));
        let resolved =
            resolve_launches(&plan, abase, cbase, &const_off, int8).map_err(GpuError::Driver)?;
        let mut launches = vec![];
        for r in resolved {
            launches.push(Launch {
                func: gpu.function(r.kernel)?.clone(),
                cfg: r.cfg,
                args: r.args,
            });
        }
        Ok(PlanRunner {
            plan,
            arena,
            _consts: consts,
            arena_base: abase,
            launches,
            graph: None,
        })
    }

    /// Device address of a tensor (for kernels outside the plan, e.g. preprocess writing
    /// the plan's input or the view transform reading its output).
    pub fn tensor_addr(&self, t: TensorId) -> u64 {
        self.arena_base + self.plan.offsets[t] as u64
    }

    /// The first output's bytes on the device, as f32 (outputs are always f32).
    pub fn output_view(&self) -> cudarc::driver::CudaView<'_, f32> {
        let t = self.plan.outputs[0];
        let (o, n) = (self.plan.offsets[t], self.plan.tensors[t].elems());
        // SAFETY: the plan casts every output to f32; offsets are ALIGN-aligned.
        unsafe { self.arena.transmute::<f32>(self.arena.len() / 4) }
            .expect("arena holds f32 values")
            .slice(o / 4..o / 4 + n)
    }

    /// Enqueue step `i` on the stream.
    pub fn launch_step(&self, gpu: &Gpu, i: usize) -> Result<(), GpuError> {
        let l = &self.launches[i];
        let mut b = gpu.stream.launch_builder(&l.func);
        for a in &l.args {
            a.push(&mut b);
        }
        // SAFETY: `resolve_launches` builds each argument list in its kernel's signature
        // order (conv.cu / ops.cu; the emulated kernels run from the same lists in CI), and
        // every address lies inside the arenas this runner owns (offsets from the plan).
        unsafe { b.launch(l.cfg) }.map(|_| ()).map_err(drv)
    }

    /// Enqueue every step (no graph).
    pub fn launch_all(&self, gpu: &Gpu) -> Result<(), GpuError> {
        for i in 0..self.launches.len() {
            self.launch_step(gpu, i)?;
        }
        Ok(())
    }

    pub fn steps(&self) -> usize {
        self.launches.len()
    }

    /// Copy the whole arena to the host (checks only).
    pub fn download_arena(&self, gpu: &Gpu) -> Result<Vec<u8>, GpuError> {
        let v = gpu.stream.clone_dtoh(&self.arena).map_err(drv)?;
        gpu.synchronize()?;
        Ok(v)
    }

    /// Overwrite the arena from the host (checks only).
    pub fn upload_arena(&mut self, gpu: &Gpu, bytes: &[u8]) -> Result<(), GpuError> {
        gpu.stream
            .memcpy_htod(bytes, &mut self.arena)
            .map_err(drv)?;
        gpu.synchronize()
    }

    /// Write input `k` from f32 values (converted to its storage on the host; checks and
    /// conformance only: the frame path writes inputs with the preprocess kernel).
    pub fn set_input(&mut self, gpu: &Gpu, k: usize, x: &[f32]) -> Result<(), GpuError> {
        let t = self.plan.inputs[k];
        let mut host = vec![0u8; self.plan.arena_bytes];
        crate::reference::write_float(&self.plan, &mut host, t, x);
        let (o, n) = (self.plan.offsets[t], self.plan.tensors[t].bytes());
        let mut view = self.arena.slice_mut(o..o + n);
        gpu.stream
            .memcpy_htod(&host[o..o + n], &mut view)
            .map_err(drv)
    }

    /// Read output `k` as f32 (checks and conformance only).
    pub fn output(&self, gpu: &Gpu, k: usize) -> Result<Vec<f32>, GpuError> {
        let host = self.download_arena(gpu)?;
        Ok(crate::reference::output_f32(
            &self.plan,
            &host,
            self.plan.outputs[k],
        ))
    }

    /// Record the whole plan as a CUDA graph (one replay per frame).
    pub fn capture(&mut self, gpu: &Gpu) -> Result<(), GpuError> {
        self.graph = capture(gpu, |g| self.launch_all(g))?;
        Ok(())
    }

    /// Replay the captured graph (or launch every step when none was captured).
    pub fn run(&self, gpu: &Gpu) -> Result<(), GpuError> {
        match &self.graph {
            Some(g) => g.launch(),
            None => self.launch_all(gpu),
        }
    }
}

/// A captured per-frame graph. CUDA graph objects must not be used from two threads at once;
/// this one is owned by one backend, which the pipeline drives from one thread at a time, so
/// moving it between threads is sound (cudarc leaves `CudaGraph` `!Send` by default).
pub struct FrameGraph(pub CudaGraph);

// SAFETY: see above: exclusive ownership serialises every use of the graph.
unsafe impl Send for FrameGraph {}

impl FrameGraph {
    pub fn launch(&self) -> Result<(), GpuError> {
        self.0.launch().map_err(drv)
    }
}

/// Record what `enqueue` launches on the GPU's stream as a CUDA graph.
pub fn capture(
    gpu: &Gpu,
    enqueue: impl FnOnce(&Gpu) -> Result<(), GpuError>,
) -> Result<Option<FrameGraph>, GpuError> {
    use cudarc::driver::sys;
    gpu.synchronize()?;
    gpu.stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(drv)?;
    let enqueued = enqueue(gpu);
    let ended = gpu.stream.end_capture(sys::CUgraphInstantiate_flags(0));
    // A failed launch invalidates the capture: report the launch's own error, not the
    // "capture invalidated" that ending the capture then returns.
    enqueued?;
    let g = ended.map_err(drv)?;
    if let Some(g) = &g {
        g.upload().map_err(drv)?;
    }
    Ok(g.map(FrameGraph))
}
