//! Backends own every per-frame stage for one bundle, from preprocess to postprocess, so a GPU
//! backend can keep the frame on the device from upload to class map.
//!
//! - [`cpu`]: tract-onnx for the networks, bevrt's CPU references for its own stages.
//! - [`cuda`]: bevrt's own kernels for the whole per-frame path, one CUDA graph per frame.
//! - [`lower`]: ONNX → kernel plan, the CUDA backend's front end.
//!
//! [`open`] is the registry: `auto` picks CUDA when a driver and device exist, and CPU when
//! not or when the CUDA backend refuses the bundle (an op outside its set), saying which and
//! why; an explicit `cuda` that cannot run is an error at load, never a silent CPU run.

pub mod cpu;
pub mod cuda;
pub mod lower;

use crate::frame::Frame;
use crate::postprocess::FrameResult;
use bevrt_models::Bundle;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Auto,
    Cpu,
    Cuda,
}

/// Load-time options shared by backends.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Threads for the CPU backend's matrix kernels; 0 = pick 1 or all cores by measuring
    /// at load.
    pub threads: usize,
    /// CPU backend: run Q/DQ convolutions with tract's integer kernels (`ConvInteger`)
    /// instead of float-simulated Q/DQ (same values; which is faster depends on the model).
    pub int8_kernels: bool,
}

pub trait Backend: Send {
    /// Name and configuration, for logs and reports.
    fn describe(&self) -> String;
    /// Colour-convert, resize and normalise the frame into the input tensor.
    fn preprocess(&mut self, frame: &Frame) -> anyhow::Result<()>;
    /// Run the network(s) (and for BEV bundles the view transform between them).
    fn infer(&mut self) -> anyhow::Result<()>;
    /// Turn the raw outputs into the result the sinks consume.
    fn postprocess(&mut self, out: &mut FrameResult) -> anyhow::Result<()>;
    /// An empty result shaped for this bundle (allocated once, reused per frame).
    fn new_result(&self) -> FrameResult;
    /// Apply a new camera calibration between frames (BEV bundles rebuild their geometry).
    /// Returns what was done, for the log.
    fn set_calibration(&mut self, path: &std::path::Path) -> anyhow::Result<String>;
    /// Time spent inside `infer` per sub-stage since load (name, total ns, calls), for
    /// benchmarks; e.g. encoder / view transform / head for BEV bundles.
    fn sub_stages(&self) -> Vec<(&'static str, u64, u64)> {
        Vec::new()
    }
    /// Device memory allocations since load (`None` for backends without device memory):
    /// the pipeline reports how many happened after warm-up (the goal is zero).
    fn device_allocations(&self) -> Option<u64> {
        None
    }
}

/// Open a backend of `kind` for `bundle`.
pub fn open(
    kind: BackendKind,
    bundle: &Bundle,
    opts: &BackendOptions,
) -> anyhow::Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Cpu => Ok(Box::new(cpu::CpuBackend::load(bundle, opts)?)),
        BackendKind::Cuda => cuda::open(bundle, opts),
        BackendKind::Auto => {
            match cuda::probe() {
                cuda::CudaProbe::Available(dev) => {
                    log::info!("backend auto: CUDA device {} found, using cuda", dev.name);
                    cuda::open(bundle, opts).or_else(|e| {
                    log::warn!("backend auto: the CUDA backend cannot run this bundle ({e:#}); using cpu");
                    Ok(Box::new(cpu::CpuBackend::load(bundle, opts)?) as Box<dyn Backend>)
                })
                }
                other => {
                    log::info!("backend auto: {}; using cpu", other.summary());
                    Ok(Box::new(cpu::CpuBackend::load(bundle, opts)?))
                }
            }
        }
    }
}
