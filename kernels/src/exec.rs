//! The GPU runner of a [`KernelPlan`]: device memory for the whole plan allocated once at
//! load (one activation arena with the plan's offsets, one constant arena for weights), every
//! launch resolved to raw device addresses and parameter blocks at load, and the per-frame
//! sequence recorded once as a CUDA graph and replayed. Nothing here allocates per frame.
//!
//! [`crate::reference`] runs the same plan on the CPU over the same arena layout; the device
//! check compares the two step by step.

use crate::launch::{Gpu, GpuError};
use crate::params::{BinaryParams, ConvParams, PoolParams, ResizeParams};
use crate::plan::{ALIGN, ConvKernel, DType, KernelPlan, Op, TensorId};
use cudarc::driver::{CudaFunction, CudaGraph, CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};

fn drv(e: cudarc::driver::DriverError) -> GpuError {
    GpuError::Driver(format!("{e:?}"))
}

/// A launch with everything resolved.
#[derive(Debug, Clone, Copy)]
enum Args {
    ConvI8(ConvParams, [u64; 6]),
    ConvF16(ConvParams, [u64; 4]),
    /// x, y, n, act, a, b
    Unary(u64, u64, i32, i32, f32, f32),
    Binary(BinaryParams, [u64; 3]),
    Pool(PoolParams, [u64; 2]),
    Resize(ResizeParams, [u64; 2]),
    /// x, y, outer, len, inner
    Softmax(u64, u64, i32, i32, i32),
    /// x, classes, n_classes, cells
    Argmax(u64, u64, i32, i32),
    /// x, y, n, scale, zp
    Quant(u64, u64, i32, f32, i32),
    /// x, y, n
    Cast(u64, u64, i32),
    /// x, y, outer, src_inner, dst_inner, dst_offset
    Copy(u64, u64, i32, i32, i32, i32),
}

struct Launch {
    func: CudaFunction,
    cfg: LaunchConfig,
    args: Args,
}

fn grid1(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(256).max(1), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Which INT8 convolution kernel runs the GEMM steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Gemm {
    /// `mma.sync` tensor cores (sm_80 and later: Orin, Ampere, Hopper).
    Imma,
    /// `__dp4a` on CUDA cores (every SM from 6.1).
    Dp4a,
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
        if let Some(t) = plan.tensors.iter().enumerate().find(|(i, t)| {
            t.dtype == DType::F32
                && !plan.inputs.contains(i)
                && !plan.outputs.contains(i)
                && plan
                    .steps
                    .iter()
                    .any(|s| s.inputs.contains(i) && !matches!(s.op, Op::Cast | Op::Quantize))
        }) {
            return Err(GpuError::Driver(format!(
                "tensor '{}' is f32 inside the plan: the GPU kernels take FP16 activations (lower with float = F16)",
                t.1.name
            )));
        }
        let st = &gpu.stream;
        // constants, each 256-byte aligned
        let mut const_bytes = vec![];
        let mut const_off = vec![];
        for c in &plan.consts {
            const_off.push(const_bytes.len());
            const_bytes.extend(c.bytes());
            const_bytes.resize(const_bytes.len().div_ceil(ALIGN) * ALIGN, 0);
        }
        const_bytes.resize(const_bytes.len().max(ALIGN), 0);
        let consts = st.clone_htod(&const_bytes).map_err(drv)?;
        let arena = st
            .alloc_zeros::<u8>(plan.arena_bytes.max(ALIGN))
            .map_err(drv)?;
        let (abase, _g) = arena.device_ptr(st);
        let (cbase, _h) = consts.device_ptr(st);
        drop((_g, _h));
        let t_addr = |t: TensorId| abase + plan.offsets[t] as u64;
        let c_addr = |c: usize| cbase + const_off[c] as u64;
        let mut launches = vec![];
        for s in &plan.steps {
            let ins: Vec<DType> = s.inputs.iter().map(|&i| plan.tensors[i].dtype).collect();
            let out = plan.tensors[s.output].clone();
            let mut name = s.op.kernel_name(&ins, out.dtype);
            if name == "conv_i8_imma" && int8 == Int8Gemm::Dp4a {
                name = "conv_i8_dp4a";
            }
            let func = gpu.function(name)?.clone();
            let x = |k: usize| match s.const_inputs.iter().find(|(p, _)| *p == k) {
                Some((_, c)) => c_addr(*c),
                None => t_addr(s.inputs[k]),
            };
            let y = t_addr(s.output);
            let n = out.elems();
            let (cfg, args) = match &s.op {
                Op::Conv {
                    kernel,
                    p,
                    weights,
                    bias,
                    wsum,
                    mult,
                } => {
                    let cfg = match kernel {
                        ConvKernel::GemmI8 | ConvKernel::GemmF16 => LaunchConfig {
                            grid_dim: (
                                ((p.n * p.oh * p.ow) as u32).div_ceil(64),
                                (p.k as u32).div_ceil(64),
                                1,
                            ),
                            block_dim: (128, 1, 1),
                            shared_mem_bytes: 0,
                        },
                        _ => grid1(p.out_elems()),
                    };
                    let args = match kernel {
                        ConvKernel::GemmI8 | ConvKernel::DirectI8 => {
                            let (Some(ws), Some(m)) = (wsum, mult) else {
                                return Err(GpuError::Driver(format!(
                                    "{}: int8 convolution without wsum/mult",
                                    s.name
                                )));
                            };
                            Args::ConvI8(
                                *p,
                                [
                                    x(0),
                                    c_addr(*weights),
                                    c_addr(*ws),
                                    c_addr(*m),
                                    c_addr(*bias),
                                    y,
                                ],
                            )
                        }
                        _ => Args::ConvF16(*p, [x(0), c_addr(*weights), c_addr(*bias), y]),
                    };
                    (cfg, args)
                }
                Op::Unary { act, a, b } => (grid1(n), Args::Unary(x(0), y, n as i32, *act, *a, *b)),
                Op::Binary(p) => (grid1(n), Args::Binary(*p, [x(0), x(1), y])),
                Op::Pool(p) => (grid1(n), Args::Pool(*p, [x(0), y])),
                Op::Resize(p) => (grid1(n), Args::Resize(*p, [x(0), y])),
                Op::Softmax { outer, len, inner } => (
                    grid1(outer * inner),
                    Args::Softmax(x(0), y, *outer as i32, *len as i32, *inner as i32),
                ),
                Op::Argmax { classes, cells } => (
                    grid1(*cells),
                    Args::Argmax(x(0), y, *classes as i32, *cells as i32),
                ),
                Op::Quantize => {
                    let (sc, zp) = out.quant.unwrap_or((1.0, 0));
                    (grid1(n), Args::Quant(x(0), y, n as i32, sc, zp))
                }
                Op::Dequantize => {
                    let (sc, zp) = plan.tensors[s.inputs[0]].quant.unwrap_or((1.0, 0));
                    (grid1(n), Args::Quant(x(0), y, n as i32, sc, zp))
                }
                Op::Cast => (grid1(n), Args::Cast(x(0), y, n as i32)),
                Op::CopySlice {
                    outer,
                    src_inner,
                    dst_inner,
                    dst_offset,
                } => (
                    grid1(outer * src_inner),
                    Args::Copy(
                        x(0),
                        y,
                        *outer as i32,
                        *src_inner as i32,
                        *dst_inner as i32,
                        *dst_offset as i32,
                    ),
                ),
            };
            launches.push(Launch { func, cfg, args });
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
        match &l.args {
            Args::ConvI8(p, a) => {
                b.arg(p);
                for v in a {
                    b.arg(v);
                }
            }
            Args::ConvF16(p, a) => {
                b.arg(p);
                for v in a {
                    b.arg(v);
                }
            }
            Args::Unary(x, y, n, act, aa, bb) => {
                b.arg(x).arg(y).arg(n).arg(act).arg(aa).arg(bb);
            }
            Args::Binary(p, a) => {
                b.arg(p).arg(&a[0]).arg(&a[1]).arg(&a[2]);
            }
            Args::Pool(p, a) => {
                b.arg(p).arg(&a[0]).arg(&a[1]);
            }
            Args::Resize(p, a) => {
                b.arg(p).arg(&a[0]).arg(&a[1]);
            }
            Args::Softmax(x, y, o, l2, i2) => {
                b.arg(x).arg(y).arg(o).arg(l2).arg(i2);
            }
            Args::Argmax(x, y, c, n) => {
                b.arg(x).arg(y).arg(c).arg(n);
            }
            Args::Quant(x, y, n, s, z) => {
                b.arg(x).arg(y).arg(n).arg(s).arg(z);
            }
            Args::Cast(x, y, n) => {
                b.arg(x).arg(y).arg(n);
            }
            Args::Copy(x, y, o, si, di, off) => {
                b.arg(x).arg(y).arg(o).arg(si).arg(di).arg(off);
            }
        }
        // SAFETY: each Args variant matches its kernel's signature in conv.cu / ops.cu, and
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
        gpu.stream.synchronize().map_err(drv)?;
        Ok(v)
    }

    /// Overwrite the arena from the host (checks only).
    pub fn upload_arena(&mut self, gpu: &Gpu, bytes: &[u8]) -> Result<(), GpuError> {
        gpu.stream
            .memcpy_htod(bytes, &mut self.arena)
            .map_err(drv)?;
        gpu.stream.synchronize().map_err(drv)
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
    gpu.stream.synchronize().map_err(drv)?;
    gpu.stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(drv)?;
    let r = enqueue(gpu);
    let g = gpu
        .stream
        .end_capture(sys::CUgraphInstantiate_flags(0))
        .map_err(drv)?;
    r?;
    if let Some(g) = &g {
        g.upload().map_err(drv)?;
    }
    Ok(g.map(FrameGraph))
}
