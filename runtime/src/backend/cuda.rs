//! The CUDA backend: the whole per-frame path on the GPU through bevrt's own kernels.
//!
//! - Load: each network is lowered to a kernel plan ([`super::lower`], FP16 activations, INT8
//!   convolutions where the bundle is Q/DQ-quantized) and put on the device
//!   ([`bevrt_kernels::exec::PlanRunner`]): every buffer is allocated here, once.
//! - Per frame: the frame is copied into a pinned host buffer and uploaded; preprocess,
//!   encoder, view transform (the sampling table lives on the device), head and argmax run as
//!   one CUDA graph replay; the class map (and logits) come back into pinned buffers.
//! - A new calibration rebuilds the sampling table on the host and uploads it between frames,
//!   into the same device buffer (the graph keeps pointing at it).
//!
//! Device probing never panics: cudarc loads libcuda dynamically and its
//! `CudaContext::new` panics when the library is missing, so the library is checked first.

use super::{Backend, BackendOptions};
use bevrt_models::Bundle;

#[derive(Debug, Clone)]
pub struct CudaDevice {
    pub name: String,
    pub sm: (i32, i32),
    pub memory_bytes: usize,
    pub driver_version: i32,
}

#[derive(Debug, Clone)]
pub enum CudaProbe {
    /// libcuda could not be loaded: no NVIDIA driver on this machine.
    NoDriver,
    /// The driver loaded but reported an error (no device, permissions, ...).
    DriverError(String),
    Available(CudaDevice),
}

impl CudaProbe {
    pub fn summary(&self) -> String {
        match self {
            CudaProbe::NoDriver => "no CUDA driver (libcuda not found)".into(),
            CudaProbe::DriverError(e) => format!("CUDA driver present but unusable: {e}"),
            CudaProbe::Available(d) => format!(
                "CUDA device {} (sm_{}{}, {:.1} GiB, driver {}.{})",
                d.name,
                d.sm.0,
                d.sm.1,
                d.memory_bytes as f64 / (1u64 << 30) as f64,
                d.driver_version / 1000,
                (d.driver_version % 1000) / 10
            ),
        }
    }
}

/// Look for a driver and device without panicking.
pub fn probe() -> CudaProbe {
    bevrt_kernels::device::probe()
        .map(|d| match d {
            None => CudaProbe::NoDriver,
            Some(d) => CudaProbe::Available(CudaDevice {
                name: d.name,
                sm: d.sm,
                memory_bytes: d.memory_bytes,
                driver_version: d.driver_version,
            }),
        })
        .unwrap_or_else(|e| CudaProbe::DriverError(e.to_string()))
}

/// `--backend cuda`: refuse clearly when it cannot run.
pub fn open(bundle: &Bundle, opts: &BackendOptions) -> anyhow::Result<Box<dyn Backend>> {
    match probe() {
        CudaProbe::NoDriver => anyhow::bail!(
            "--backend cuda: no CUDA driver on this machine (libcuda.so not found); \
             use --backend cpu or auto"
        ),
        CudaProbe::DriverError(e) => anyhow::bail!("--backend cuda: CUDA driver error: {e}"),
        CudaProbe::Available(d) => {
            let b = CudaBackend::load(bundle, opts)
                .map_err(|e| anyhow::anyhow!("--backend cuda on {}: {e:#}", d.name))?;
            Ok(Box::new(b))
        }
    }
}

use crate::frame::Frame;
use crate::postprocess::{self, FrameResult, OutputTensor};
use anyhow::Context;
use bevrt_kernels::exec::FrameGraph;
use bevrt_kernels::exec::{Int8Gemm, PlanRunner};
use bevrt_kernels::launch::{AfvDims, Gpu, PreprocessParams};
use bevrt_kernels::plan::DType;
use bevrt_models::{InputSpec, OutputKind, Task};
use cudarc::driver::{CudaSlice, DevicePtr, PinnedHostSlice};

/// A driver error of cudarc's, named as CUDA's. (The kernel library's `GpuError` says so
/// itself and converts with `?`.)
fn gpu_err(e: cudarc::driver::DriverError) -> anyhow::Error {
    anyhow::anyhow!("CUDA: {e}")
}

/// Kernel directory for `Gpu::open`: `$BEVRT_KERNELS` (an ahead-of-time
/// `bevrt-tool compile-kernels` output, so no compiler runs in the car), else NVRTC now.
pub fn kernel_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("BEVRT_KERNELS").map(std::path::PathBuf::from)
}

struct CudaBev {
    grid: bevrt_calib::BevGrid,
    classes: Vec<bevrt_models::ClassSpec>,
    geometry: super::CameraGeometry,
    taps: CudaSlice<u8>,
    /// The depth-weighted lift (grids with depth bins): the table's bin per entry and the
    /// per-frame depth weights (bins x plane), both allocated at load.
    lift: Option<CudaLift>,
    head: PlanRunner,
    /// (channels, levels, cells, feature plane) of the view transform.
    dims: (i32, i32, i32, i32),
    class_dev: CudaSlice<u8>,
    class_host: PinnedHostSlice<u8>,
}

struct CudaLift {
    bins: CudaSlice<u32>,
    depth_weight: CudaSlice<f32>,
    depth_bins: i32,
}

/// A `features` bundle's AFV tail on the device: the Fisher op (fisher.cu) on the
/// discriminator plan's `a1`/`z2` outputs, then, for probe bundles, the probe's plan on `V`.
struct CudaAfv {
    dims: AfvDims,
    w3: CudaSlice<f32>,
    delta: CudaSlice<f32>,
    dim: usize,
    fisher: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
    eps: f32,
    power: bool,
    l2: bool,
    out: AfvOut,
}

/// Where the AFV tail writes `U`/`V`, and what the frame downloads.
enum AfvOut {
    /// No probe: a buffer of its own, downloaded as the frame's vector.
    Vector(CudaSlice<f32>),
    /// A probe head: `V` goes straight into the probe plan's input tensor, and the frame
    /// downloads the probe's output.
    Probe(Box<PlanRunner>),
}

impl AfvOut {
    fn probe(&self) -> Option<&PlanRunner> {
        match self {
            AfvOut::Probe(p) => Some(p),
            AfvOut::Vector(_) => None,
        }
    }
}

pub struct CudaBackend {
    gpu: Gpu,
    task: Task,
    spec: InputSpec,
    output_kind: OutputKind,
    norm: bevrt_models::EmbeddingNorm,
    net: PlanRunner,
    bev: Option<CudaBev>,
    afv: Option<CudaAfv>,
    /// `embedding_stats` of a features bundle (applied on the host, as on the CPU backend).
    stats: Option<super::EmbeddingStats>,
    /// The frame: pinned staging buffer, device copy, preprocess parameters, and the size
    /// they were made for (a new size reallocates them, rare).
    frame_host: Option<PinnedHostSlice<u8>>,
    frame_dev: Option<CudaSlice<u8>>,
    pre: Option<(PreprocessParams, (u32, u32), crate::frame::PixelFormat)>,
    frame_len: usize,
    /// The last network's output, downloaded per frame.
    out_host: PinnedHostSlice<f32>,
    outputs: Vec<OutputTensor>,
    graph: Option<FrameGraph>,
    describe: String,
    infer_ns: (u64, u64),
    /// Device allocations after load (a new camera mode reallocates the frame buffer).
    device_allocs: u64,
}

/// Lower one ONNX file of the bundle with its first input at `shape` and put it on the device.
fn load_plan(
    gpu: &Gpu,
    path: &std::path::Path,
    shape: Vec<usize>,
    opts: &crate::lower::LowerOptions,
    int8: Int8Gemm,
) -> anyhow::Result<PlanRunner> {
    let plan = crate::lower::lower_network(path, shape, opts)?;
    PlanRunner::load(gpu, plan, int8).map_err(anyhow::Error::from)
}

impl CudaBackend {
    pub fn load(bundle: &Bundle, _opts: &BackendOptions) -> anyhow::Result<CudaBackend> {
        let m = &bundle.manifest;
        if m.afv.is_none() && bundle.model_path("probe").is_some() {
            anyhow::bail!(
                "{}: a probe head without an [afv] tail runs on the CPU backend only",
                bundle.dir.display()
            );
        }
        let gpu = Gpu::open(kernel_dir().as_deref())?;
        let int8 = if gpu.sm >= 80 {
            Int8Gemm::Imma
        } else {
            Int8Gemm::Dp4a
        };
        // FP16 activations, except an AFV discriminator: the Fisher vector reads its
        // activations in f32 and the network is small (a 28x28 input).
        let float = if m.afv.is_some() {
            DType::F32
        } else {
            DType::F16
        };
        let opts = crate::lower::LowerOptions { float };
        let role = if m.task == Task::Bev {
            "encoder"
        } else {
            "model"
        };
        let path = bundle
            .model_path(role)
            .with_context(|| format!("bundle has no '{role}' file"))?;
        let net = load_plan(&gpu, &path, m.input.shape().to_vec(), &opts, int8)?;
        let out_t = net.plan.outputs[0];
        let out_shape = net.plan.tensors[out_t].shape.clone();
        let mut bev = None;
        let mut last_out = (out_shape.clone(), net.plan.tensors[out_t].name.clone());
        if m.task == Task::Bev {
            let (b, out) = Self::load_bev(&gpu, bundle, &out_shape, &opts, int8)?;
            (bev, last_out) = (Some(b), out);
        }
        let mut afv = None;
        if m.afv.is_some() {
            let (a, out) = Self::load_afv(&gpu, bundle, &net, &opts, int8)?;
            (afv, last_out) = (Some(a), out);
        }
        let n_out: usize = last_out.0.iter().product();
        // SAFETY: pinned host memory, written by the device before it is read.
        let out_host =
            unsafe { gpu.ctx.alloc_pinned_with_flags::<f32>(n_out, 0) }.map_err(gpu_err)?;
        let describe = describe_load(&gpu, int8, role, &net, bev.as_ref(), afv.as_ref());
        log::info!("{describe}");
        Ok(CudaBackend {
            task: m.task,
            spec: m.input.clone(),
            output_kind: m.outputs[0].kind,
            norm: m.embedding_norm,
            outputs: vec![OutputTensor {
                name: last_out.1,
                shape: last_out.0,
                data: vec![0.0; n_out],
            }],
            gpu,
            net,
            bev,
            afv,
            stats: super::EmbeddingStats::load(bundle)?,
            frame_host: None,
            frame_dev: None,
            pre: None,
            frame_len: 0,
            out_host,
            graph: None,
            describe,
            infer_ns: (0, 0),
            device_allocs: 0,
        })
    }

    /// A BEV bundle's view transform (sampling taps, the depth lift) and head, on the device;
    /// the head's output shape and name.
    fn load_bev(
        gpu: &Gpu,
        bundle: &Bundle,
        out_shape: &[usize],
        opts: &crate::lower::LowerOptions,
        int8: Int8Gemm,
    ) -> anyhow::Result<(CudaBev, (Vec<usize>, String))> {
        let m = &bundle.manifest;
        let super::BevGeometry {
            grid,
            table,
            channels: c,
            calibration,
        } = super::BevGeometry::load(bundle, out_shape)?;
        let (fh, fw) = (out_shape[2], out_shape[3]);
        let (gh, gw, z) = (grid.height(), grid.width(), grid.levels());
        let head_path = bundle
            .model_path("head")
            .context("bundle has no 'head' file")?;
        let head = load_plan(gpu, &head_path, vec![1, c * z, gh, gw], opts, int8)?;
        let ho = head.plan.outputs[0];
        let hs = &head.plan.tensors[ho].shape;
        if hs[..] != [1, m.classes.len(), gh, gw] {
            anyhow::bail!(
                "{}: head output {hs:?} is not (1, {} classes, {gh}, {gw})",
                head_path.display(),
                m.classes.len()
            );
        }
        let last_out = (
            head.plan.tensors[ho].shape.clone(),
            head.plan.tensors[ho].name.clone(),
        );
        let st = &gpu.stream;
        let taps = st.clone_htod(table.taps_as_bytes()).map_err(gpu_err)?;
        let lift = if table.depth_bins > 0 {
            Some(CudaLift {
                bins: st.clone_htod(&table.bins).map_err(gpu_err)?,
                depth_weight: st
                    .alloc_zeros::<f32>(table.depth_bins * fh * fw)
                    .map_err(gpu_err)?,
                depth_bins: table.depth_bins as i32,
            })
        } else {
            None
        };
        let cells = gh * gw;
        let class_dev = st.alloc_zeros::<u8>(cells).map_err(gpu_err)?;
        // SAFETY: pinned host memory, written by the device before it is read.
        let class_host =
            unsafe { gpu.ctx.alloc_pinned_with_flags::<u8>(cells, 0) }.map_err(gpu_err)?;
        let bev = CudaBev {
            dims: (c as i32, z as i32, cells as i32, (fh * fw) as i32),
            grid,
            classes: m.classes.clone(),
            geometry: super::CameraGeometry::new(table, calibration),
            taps,
            lift,
            head,
            class_dev,
            class_host,
        };
        Ok((bev, last_out))
    }

    /// An AFV bundle's Fisher tail (and its probe head, if any) on the device; the last
    /// output's shape and name.
    fn load_afv(
        gpu: &Gpu,
        bundle: &Bundle,
        net: &PlanRunner,
        opts: &crate::lower::LowerOptions,
        int8: Int8Gemm,
    ) -> anyhow::Result<(CudaAfv, (Vec<usize>, String))> {
        let shapes: Vec<Vec<usize>> = net
            .plan
            .outputs
            .iter()
            .map(|&t| net.plan.tensors[t].shape.clone())
            .collect();
        let tail = super::AfvTail::load(bundle, &shapes)?;
        let g = &tail.geom;
        let dims = AfvDims::from(g);
        let dim = g.dim();
        let probe = match bundle.model_path("probe") {
            None => None,
            Some(p) => Some(load_plan(gpu, &p, vec![1, dim], opts, int8)?),
        };
        let last_out = match &probe {
            Some(p) => {
                let o = p.plan.outputs[0];
                (
                    p.plan.tensors[o].shape.clone(),
                    p.plan.tensors[o].name.clone(),
                )
            }
            None => (vec![1, dim], "afv".into()),
        };
        let st = &gpu.stream;
        let up = |v: &[f32]| st.clone_htod(v).map_err(gpu_err);
        let fisher = match &tail.fisher {
            Some((mean, diag)) => Some((up(mean)?, up(diag)?)),
            None => None,
        };
        let afv = CudaAfv {
            dims,
            w3: up(&tail.w3)?,
            delta: st.alloc_zeros::<f32>(g.z2_len()).map_err(gpu_err)?,
            dim,
            fisher,
            eps: tail.eps,
            power: tail.power,
            l2: tail.l2,
            out: match probe {
                Some(p) => AfvOut::Probe(Box::new(p)),
                None => AfvOut::Vector(st.alloc_zeros::<f32>(dim).map_err(gpu_err)?),
            },
        };
        Ok((afv, last_out))
    }

    /// Enqueue the whole per-frame path after the upload (captured once as a graph).
    fn enqueue(&self, gpu: &Gpu) -> Result<(), bevrt_kernels::launch::GpuError> {
        let (p, _, _) = self.pre.as_ref().expect("preprocess ran first");
        let frame = self.frame_dev.as_ref().expect("frame buffer allocated");
        let (src, _g) = frame.device_ptr(&gpu.stream);
        let dst = self.net.tensor_addr(self.net.plan.inputs[0]);
        gpu.preprocess_at("preprocess_f32", src, dst, 0, p)?;
        self.net.launch_all(gpu)?;
        if let Some(b) = &self.bev {
            let feat = self.net.tensor_addr(self.net.plan.outputs[0]);
            let head_in = b.head.tensor_addr(b.head.plan.inputs[0]);
            let (taps, _t) = b.taps.device_ptr(&gpu.stream);
            let (c, z, cells, plane) = b.dims;
            match &b.lift {
                None => gpu.bev_pool_f32_at(taps, feat, head_in, c, z, cells, plane)?,
                Some(l) => {
                    let (bins, _b) = l.bins.device_ptr(&gpu.stream);
                    let (dw, _d) = l.depth_weight.device_ptr(&gpu.stream);
                    // the D logit planes follow the C context planes
                    let logits = feat + (c as u64) * (plane as u64) * 4;
                    gpu.depth_softmax_f32_at(logits, dw, l.depth_bins, plane)?;
                    gpu.bev_lift_f32_at(taps, bins, dw, feat, head_in, c, z, cells, plane)?;
                }
            }
            b.head.launch_all(gpu)?;
            let logits = b.head.tensor_addr(b.head.plan.outputs[0]);
            let (cls, _c) = b.class_dev.device_ptr(&gpu.stream);
            gpu.bev_argmax_at(logits, cls, b.classes.len() as i32, cells)?;
        }
        if let Some(a) = &self.afv {
            let a1 = self.net.tensor_addr(self.net.plan.outputs[1]);
            let z2 = self.net.tensor_addr(self.net.plan.outputs[2]);
            let st = &gpu.stream;
            let (w3, _w) = a.w3.device_ptr(st);
            let (delta, _d) = a.delta.device_ptr(st);
            let v = match &a.out {
                AfvOut::Probe(p) => p.tensor_addr(p.plan.inputs[0]),
                AfvOut::Vector(v) => v.device_ptr(st).0,
            };
            gpu.afv_score_at(&a.dims, a1, z2, w3, delta, v)?;
            if let Some((mean, diag)) = &a.fisher {
                let (mean, _m) = mean.device_ptr(st);
                let (diag, _g) = diag.device_ptr(st);
                gpu.fisher_normalise_at(v, mean, diag, a.eps, a.power, a.l2, a.dim as i32)?;
            }
            if let AfvOut::Probe(p) = &a.out {
                p.launch_all(gpu)?;
            }
        }
        Ok(())
    }
}

impl Backend for CudaBackend {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn preprocess(&mut self, frame: &Frame) -> anyhow::Result<()> {
        let key = ((frame.width, frame.height), frame.format);
        if self.pre.as_ref().map(|(_, s, f)| (*s, *f)) != Some(key) {
            // first frame or a new camera mode: new buffers and a new graph (allocates, rare)
            log::info!(
                "cuda preprocess: frames are {}x{} {}",
                frame.width,
                frame.height,
                frame.format
            );
            let n = frame.data.len();
            // SAFETY: written from the frame before every upload.
            self.frame_host = Some(unsafe { self.gpu.ctx.alloc_pinned::<u8>(n) }.map_err(gpu_err)?);
            self.frame_dev = Some(self.gpu.stream.alloc_zeros::<u8>(n).map_err(gpu_err)?);
            self.frame_len = n;
            self.device_allocs += 1;
            self.pre = Some((
                crate::preprocess::gpu_params(&self.spec, frame.format, frame.width, frame.height),
                key.0,
                key.1,
            ));
            self.graph = None;
        }
        if frame.data.len() != self.frame_len {
            anyhow::bail!(
                "frame has {} bytes, {} expected",
                frame.data.len(),
                self.frame_len
            );
        }
        let host = self.frame_host.as_mut().expect("allocated above");
        host.as_mut_slice()
            .map_err(gpu_err)?
            .copy_from_slice(&frame.data);
        let dev = self.frame_dev.as_mut().expect("allocated above");
        self.gpu.stream.memcpy_htod(&*host, dev).map_err(gpu_err)
    }

    fn infer(&mut self) -> anyhow::Result<()> {
        let t0 = std::time::Instant::now();
        if self.graph.is_none() {
            let g = bevrt_kernels::exec::capture(&self.gpu, |gpu| self.enqueue(gpu))?;
            self.graph = g;
        }
        match &self.graph {
            Some(g) => g.launch()?,
            None => self.enqueue(&self.gpu)?,
        }
        // results back into pinned buffers
        let st = &self.gpu.stream;
        match (&self.bev, &self.afv) {
            (Some(b), _) => st.memcpy_dtoh(&b.head.output_view(), &mut self.out_host),
            (None, Some(a)) => match &a.out {
                AfvOut::Probe(p) => st.memcpy_dtoh(&p.output_view(), &mut self.out_host),
                AfvOut::Vector(v) => st.memcpy_dtoh(v, &mut self.out_host),
            },
            (None, None) => st.memcpy_dtoh(&self.net.output_view(), &mut self.out_host),
        }
        .map_err(gpu_err)?;
        if let Some(b) = &mut self.bev {
            st.memcpy_dtoh(&b.class_dev, &mut b.class_host)
                .map_err(gpu_err)?;
        }
        self.gpu.synchronize()?;
        self.outputs[0]
            .data
            .copy_from_slice(self.out_host.as_slice().map_err(gpu_err)?);
        self.infer_ns.0 += t0.elapsed().as_nanos() as u64;
        self.infer_ns.1 += 1;
        Ok(())
    }

    fn postprocess(&mut self, out: &mut FrameResult) -> anyhow::Result<()> {
        for (d, s) in out.outputs.iter_mut().zip(&self.outputs) {
            d.data.copy_from_slice(&s.data);
        }
        let first = &self.outputs[0].data;
        match self.task {
            Task::Bev => {
                let b = self
                    .bev
                    .as_ref()
                    .expect("bev stage loaded with a bev bundle");
                out.map_width = b.grid.width();
                out.map_height = b.grid.height();
                out.class_map
                    .copy_from_slice(b.class_host.as_slice().map_err(gpu_err)?);
                for (c, &v) in out.class_map.iter_mut().zip(&b.geometry.visible) {
                    if !v {
                        *c = postprocess::UNSEEN;
                    }
                }
                postprocess::colourise(&out.class_map, &b.classes, &mut out.color_map);
            }
            Task::Classify => {
                out.vector.copy_from_slice(first);
                if self.output_kind == OutputKind::Logits {
                    postprocess::softmax_in_place(&mut out.vector);
                }
                out.top = postprocess::argmax(&out.vector);
            }
            Task::Features => {
                out.vector.copy_from_slice(first);
                if let Some(st) = &self.stats {
                    st.apply(&mut out.vector)?;
                }
                postprocess::normalise_embedding(&mut out.vector, self.norm)
            }
        }
        Ok(())
    }

    fn new_result(&self) -> FrameResult {
        let mut r = FrameResult::new(self.task, self.outputs.clone());
        match &self.bev {
            Some(b) => {
                let cells = b.grid.height() * b.grid.width();
                r.class_map = vec![0; cells];
                r.color_map = vec![0; cells * 3];
                r.map_width = b.grid.width();
                r.map_height = b.grid.height();
            }
            None => r.vector = vec![0.0; self.outputs[0].data.len()],
        }
        r
    }

    fn sub_stages(&self) -> Vec<(&'static str, u64, u64)> {
        vec![("gpu_graph", self.infer_ns.0, self.infer_ns.1)]
    }

    fn device_allocations(&self) -> Option<u64> {
        Some(self.device_allocs)
    }

    fn apply_calibration(
        &mut self,
        c: &bevrt_calib::Calibration,
        origin: &str,
    ) -> anyhow::Result<String> {
        let Some(b) = &mut self.bev else {
            return Ok(format!(
                "{origin}: a {} bundle uses no camera geometry",
                self.task
            ));
        };
        let t0 = std::time::Instant::now();
        let size_before = b.geometry.table.taps_as_bytes().len();
        b.geometry
            .rebuild(&b.grid, c)
            .with_context(|| format!("{origin}: sampling table"))?;
        // The grid is the bundle's, so the size cannot change; the device buffer relies on it.
        anyhow::ensure!(
            b.geometry.table.taps_as_bytes().len() == size_before,
            "{origin}: the sampling table changed size"
        );
        // same device buffer: the captured graph keeps reading it
        self.gpu.synchronize()?;
        self.gpu
            .stream
            .memcpy_htod(b.geometry.table.taps_as_bytes(), &mut b.taps)
            .map_err(gpu_err)?;
        if let Some(l) = &mut b.lift {
            self.gpu
                .stream
                .memcpy_htod(&b.geometry.table.bins, &mut l.bins)
                .map_err(gpu_err)?;
        }
        self.gpu.synchronize()?;
        Ok(format!(
            "{origin}: sampling table rebuilt and uploaded in {:.1} ms ({:.0} % valid)",
            t0.elapsed().as_secs_f64() * 1e3,
            b.geometry.table.valid_fraction() * 100.0
        ))
    }

    fn calibration(&self) -> Option<&bevrt_calib::Calibration> {
        self.bev.as_ref().map(|b| &b.geometry.calibration)
    }
}

/// The load's one-line summary: device, INT8 GEMM path, launches and arena per network.
fn describe_load(
    gpu: &Gpu,
    int8: Int8Gemm,
    role: &str,
    net: &PlanRunner,
    bev: Option<&CudaBev>,
    afv: Option<&CudaAfv>,
) -> String {
    let counts = |p: &PlanRunner| {
        p.plan
            .kernel_counts()
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut describe = format!(
        "cuda (sm_{}, INT8 GEMM {:?}; {}: {} launches [{}], arena {} KiB",
        gpu.sm,
        int8,
        role,
        net.steps(),
        counts(net),
        net.plan.arena_bytes / 1024
    );
    if let Some(b) = bev {
        describe.push_str(&format!(
            "; head: {} launches [{}], arena {} KiB",
            b.head.steps(),
            counts(&b.head),
            b.head.plan.arena_bytes / 1024
        ));
    }
    if let Some(p) = afv.and_then(|a| a.out.probe()) {
        describe.push_str(&format!(
            "; AFV tail; probe: {} launches [{}]",
            p.steps(),
            counts(p)
        ));
    } else if afv.is_some() {
        describe.push_str("; AFV tail");
    }
    describe.push(')');
    describe
}
