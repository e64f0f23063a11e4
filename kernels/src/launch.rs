//! Thin cudarc launchers for the kernels in `cuda/`: load the CUBINs for the device's SM (built
//! now by NVRTC, or read from a `bevrt-tool compile-kernels` directory) and launch them on one
//! stream. Buffers are the caller's: nothing here allocates per launch.

use crate::nvrtc;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchArgs,
    LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no CUDA driver on this machine (libcuda not found)")]
    NoDriver,
    #[error("CUDA: {0}")]
    Driver(String),
    #[error(transparent)]
    Nvrtc(#[from] nvrtc::NvrtcError),
    #[error("{path}: {message}")]
    Cubin { path: String, message: String },
}

fn drv(e: cudarc::driver::DriverError) -> GpuError {
    GpuError::Driver(format!("{e:?}"))
}

/// One kernel argument as cudarc pushes it: a value by reference, or a device buffer (its
/// address; the stream does no event tracking, see [`Gpu::open`]).
trait KernelArg {
    fn push<'a>(&'a self, b: &mut LaunchArgs<'a>);
}

macro_rules! by_value {
    ($($t:ty),*) => {
        $(impl KernelArg for $t {
            fn push<'a>(&'a self, b: &mut LaunchArgs<'a>) {
                b.arg(self);
            }
        })*
    };
}
by_value!(u64, i32, f32, PreprocessParams);

impl<T> KernelArg for CudaSlice<T> {
    fn push<'a>(&'a self, b: &mut LaunchArgs<'a>) {
        b.arg(self);
    }
}

/// Parameters of `preprocess_f32`; layout must match `PreprocessParams` in preprocess.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PreprocessParams {
    pub in_w: i32,
    pub in_h: i32,
    pub out_w: i32,
    pub out_h: i32,
    /// 0 RGB8, 1 BGR8, 2 GRAY8, 3 YUYV, 4 NV12
    pub fmt: i32,
    /// 0 RGB, 1 BGR, 2 GRAY
    pub order: i32,
    /// 0 NCHW, 1 NHWC
    pub layout: i32,
    pub scale: [f32; 3],
    pub bias: [f32; 3],
    /// int8 output only: `q = clamp(round_half_even(v / q_scale) + q_zp, -128, 127)`.
    pub q_scale: f32,
    pub q_zp: i32,
}

/// Element types `preprocess` can write, with their kernel.
pub trait PreprocessOutput: DeviceRepr {
    const KERNEL: &'static str;
}
impl PreprocessOutput for f32 {
    const KERNEL: &'static str = "preprocess_f32";
}
/// IEEE binary16 bits.
impl PreprocessOutput for u16 {
    const KERNEL: &'static str = "preprocess_f16";
}
impl PreprocessOutput for i8 {
    const KERNEL: &'static str = "preprocess_i8";
}

// SAFETY: plain-old-data with the C layout the kernel expects.
unsafe impl DeviceRepr for PreprocessParams {}

/// Shapes of an AFV discriminator tail (fisher.cu's arguments): `a1` C1×H1×W1 → conv2
/// (C2×C1×k×k, stride, pad) → `z2` C2×H2×W2 → LeakyReLU(slope) → linear.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AfvDims {
    pub c1: i32,
    pub h1: i32,
    pub w1: i32,
    pub c2: i32,
    pub h2: i32,
    pub w2: i32,
    pub k: i32,
    pub stride: i32,
    pub pad: i32,
    pub slope: f32,
    /// Spatial cells per side (conv2's score per cell of an R×R grid on its output).
    pub regions: i32,
}

/// Launch shapes, one function per kernel family, shared by the GPU launchers, the plan
/// runner and the CPU emulation (which rejects what `cuLaunchKernel` would: a grid of 0 blocks,
/// a block over 1024 threads). Every block is at most 256 threads, the size each kernel's
/// register budget is written for (`__launch_bounds__` where a kernel depends on it).
pub const ELEMENTWISE_BLOCK: u32 = 256;

/// One thread per element; an empty tensor still launches one block (whose threads all
/// return at once) rather than an invalid grid of 0.
pub fn elementwise_config(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(ELEMENTWISE_BLOCK).max(1), 1, 1),
        block_dim: (ELEMENTWISE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// conv.cu's GEMM kernels: 64 output pixels x 64 channels per block of 128 threads.
pub fn conv_gemm_config(p: &crate::params::ConvParams) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            ((p.n * p.oh * p.ow).max(0) as u32).div_ceil(64).max(1),
            (p.k.max(0) as u32).div_ceil(64).max(1),
            1,
        ),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// preprocess.cu: 32x8 output pixels per block.
pub fn preprocess_config(p: &PreprocessParams) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            (p.out_w.max(0) as u32).div_ceil(32).max(1),
            (p.out_h.max(0) as u32).div_ceil(8).max(1),
            1,
        ),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    }
}

/// bev_pool.cu: x over the table's entries (cells x levels), y over channels.
pub fn bev_pool_config(channels: i32, levels: i32, cells: i32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            ((cells * levels).max(0) as u32)
                .div_ceil(ELEMENTWISE_BLOCK)
                .max(1),
            (channels.max(0) as u32).max(1),
            1,
        ),
        block_dim: (ELEMENTWISE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// fisher.cu `fisher_normalise`: one block of exactly 256 threads (its reduction's width).
pub fn fisher_normalise_config() -> LaunchConfig {
    LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// fisher.cu `afv_conv_grad`: one thread per (cell, o, i, ky, kx).
pub fn afv_conv_grad_threads(d: &AfvDims) -> usize {
    (d.regions * d.regions * d.c2 * d.c1 * d.k * d.k).max(0) as usize
}

/// One kernel file's image for a device of SM `sm`: from an ahead-of-time directory (its
/// CUBIN, or its compute_80 PTX on an SM bevrt has no CUBIN for), else from NVRTC now (the
/// exact SM's CUBIN, cached; the PTX when this NVRTC does not know the SM).
fn kernel_image(
    k: &nvrtc::KernelSource,
    sm: u32,
    image: nvrtc::KernelImage,
    dir: Option<&Path>,
) -> Result<cudarc::nvrtc::Ptx, GpuError> {
    use cudarc::nvrtc::Ptx;
    let read = |p: std::path::PathBuf| {
        std::fs::read(&p).map_err(|e| GpuError::Cubin {
            path: p.display().to_string(),
            message: format!("{e} (build it with bevrt-tool compile-kernels --arch sm_{sm})"),
        })
    };
    Ok(match (dir, image) {
        (Some(dir), nvrtc::KernelImage::Cubin(_)) => {
            Ptx::from_binary(read(dir.join(nvrtc::image_file(k, image)))?)
        }
        (Some(dir), nvrtc::KernelImage::Ptx(_)) => {
            let p = dir.join(nvrtc::image_file(k, image));
            let text = String::from_utf8(read(p.clone())?).map_err(|e| GpuError::Cubin {
                path: p.display().to_string(),
                message: format!("not PTX text: {e}"),
            })?;
            Ptx::from_src(text)
        }
        (None, nvrtc::KernelImage::Cubin(sm)) => Ptx::from_binary(nvrtc::cubin_cached(k, sm)?),
        (None, nvrtc::KernelImage::Ptx(arch)) => match nvrtc::cubin_cached(k, sm) {
            Ok(c) => Ptx::from_binary(c),
            Err(e) => {
                log::info!(
                    "{}: no CUBIN for sm_{sm} ({e}); loading compute_{arch} PTX",
                    k.file
                );
                Ptx::from_src(nvrtc::compile_ptx(k, arch)?)
            }
        },
    })
}

/// A device, a stream and every bevrt kernel loaded.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub sm: u32,
    /// What was loaded: this SM's CUBIN, or the compute_80 PTX the driver JIT-compiled.
    pub image: nvrtc::KernelImage,
    functions: HashMap<&'static str, CudaFunction>,
}

impl Gpu {
    /// Open device 0 and load the kernels: from `cubin_dir` when given (ahead-of-time build
    /// for this SM), else from the NVRTC disk cache ([`nvrtc::cubin_cached`]), compiling what
    /// is missing.
    pub fn open(cubin_dir: Option<&Path>) -> Result<Gpu, GpuError> {
        let info = crate::device::probe()
            .map_err(|e| GpuError::Driver(e.to_string()))?
            .ok_or(GpuError::NoDriver)?;
        let sm = (info.sm.0 * 10 + info.sm.1) as u32;
        let ctx = CudaContext::new(0).map_err(drv)?;
        // One explicit stream for everything (a CUDA graph cannot be captured on the legacy
        // default stream), so no cross-stream event tracking is needed either.
        // SAFETY: every buffer is used on this one stream only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv)?;
        let image = nvrtc::image_for(sm).ok_or_else(|| {
            GpuError::Driver(format!(
                "{} is sm_{sm}: bevrt's kernels need sm_80 or newer (mma.sync with s8)",
                info.name
            ))
        })?;
        let mut functions = HashMap::new();
        for k in nvrtc::KERNELS {
            let module = ctx
                .load_module(kernel_image(k, sm, image, cubin_dir)?)
                .map_err(drv)?;
            for e in k.entries {
                functions.insert(*e, module.load_function(e).map_err(drv)?);
            }
        }
        Ok(Gpu {
            ctx,
            stream,
            sm,
            image,
            functions,
        })
    }

    /// Wait for the stream, then surface any error cudarc recorded while dropping buffers or
    /// events (it cannot return those from `Drop`): a fault lands on the group of launches
    /// it came from, not on some later call.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.stream.synchronize().map_err(drv)?;
        self.ctx.check_err().map_err(drv)
    }

    fn f(&self, name: &str) -> &CudaFunction {
        &self.functions[name]
    }

    /// Launch `func` on the stream with `args` in parameter order.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list, and every address must cover what the
    /// kernel reads and writes under `cfg`.
    unsafe fn launch<'a>(
        &'a self,
        func: &'a CudaFunction,
        cfg: LaunchConfig,
        args: &[&'a dyn KernelArg],
    ) -> Result<(), GpuError> {
        let mut b = self.stream.launch_builder(func);
        for a in args {
            a.push(&mut b);
        }
        // SAFETY: forwarded to the caller.
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(drv)
    }

    /// A loaded kernel by entry-point name.
    pub fn function(&self, name: &str) -> Result<&CudaFunction, GpuError> {
        self.functions
            .get(name)
            .ok_or_else(|| GpuError::Driver(format!("kernel {name} is not loaded")))
    }

    /// Camera frame (`src`, raw bytes of its pixel format) to the normalised input tensor in
    /// f32, f16 bits (`u16`) or int8; `map` (out_w*out_h (x, y) pairs) replaces the resize.
    pub fn preprocess<T: PreprocessOutput>(
        &self,
        src: &CudaSlice<u8>,
        dst: &mut CudaSlice<T>,
        map: Option<&CudaSlice<f32>>,
        p: &PreprocessParams,
    ) -> Result<(), GpuError> {
        let st = &self.stream;
        let m = map.map(|m| m.device_ptr(st).0).unwrap_or(0);
        self.preprocess_at(T::KERNEL, src.device_ptr(st).0, dst.device_ptr(st).0, m, p)
    }

    /// [`Gpu::preprocess`] on raw device addresses (`map` 0 = resize), for buffers inside a
    /// plan's arena; `kernel` is `preprocess_f32`, `preprocess_f16` or `preprocess_i8`.
    pub fn preprocess_at(
        &self,
        kernel: &str,
        src: u64,
        dst: u64,
        map: u64,
        p: &PreprocessParams,
    ) -> Result<(), GpuError> {
        let cfg = preprocess_config(p);
        // SAFETY: as `preprocess`; the addresses are the caller's buffers of the right size.
        unsafe { self.launch(self.function(kernel)?, cfg, &[&src, &dst, &map, p]) }
    }

    /// [`Gpu::bev_pool_f32`] on raw device addresses.
    #[allow(clippy::too_many_arguments)]
    pub fn bev_pool_f32_at(
        &self,
        taps: u64,
        feat: u64,
        out: u64,
        channels: i32,
        levels: i32,
        cells: i32,
        plane: i32,
    ) -> Result<(), GpuError> {
        let cfg = bev_pool_config(channels, levels, cells);
        let args: [&dyn KernelArg; 7] = [&taps, &feat, &out, &channels, &levels, &cells, &plane];
        // SAFETY: matches bev_pool_f32(taps, feat, out, channels, levels, cells, plane).
        unsafe { self.launch(self.f("bev_pool_f32"), cfg, &args) }
    }

    /// The depth-weighted lift's first step on raw device addresses: `dw` (bins, plane) =
    /// bins * softmax over the `bins` logit planes at `logits` (twin:
    /// `bevrt_calib::bev::depth_softmax`).
    pub fn depth_softmax_f32_at(
        &self,
        logits: u64,
        dw: u64,
        bins: i32,
        plane: i32,
    ) -> Result<(), GpuError> {
        let cfg = elementwise_config(plane.max(0) as usize);
        let args: [&dyn KernelArg; 4] = [&logits, &dw, &bins, &plane];
        // SAFETY: matches depth_softmax_f32(logits, dw, bins, plane).
        unsafe { self.launch(self.f("depth_softmax_f32"), cfg, &args) }
    }

    /// The depth-weighted lift's gather on raw device addresses: `taps` the table's taps
    /// (32 bytes per entry), `bins` one u32 bin per entry, `dw` [`Gpu::depth_softmax_f32_at`]'s
    /// output, `feat` the C context planes (twin: `bevrt_calib::lift`).
    #[allow(clippy::too_many_arguments)]
    pub fn bev_lift_f32_at(
        &self,
        taps: u64,
        bins: u64,
        dw: u64,
        feat: u64,
        out: u64,
        channels: i32,
        levels: i32,
        cells: i32,
        plane: i32,
    ) -> Result<(), GpuError> {
        let cfg = bev_pool_config(channels, levels, cells);
        let args: [&dyn KernelArg; 9] = [
            &taps, &bins, &dw, &feat, &out, &channels, &levels, &cells, &plane,
        ];
        // SAFETY: matches bev_lift_f32(taps, bin_of, dw, feat, out, channels, levels, cells,
        // plane); the caller's buffers hold entries = levels * cells taps and bins, `channels`
        // feature planes and the output.
        unsafe { self.launch(self.f("bev_lift_f32"), cfg, &args) }
    }

    /// [`Gpu::bev_argmax`] on raw device addresses.
    pub fn bev_argmax_at(
        &self,
        logits: u64,
        classes: u64,
        n_classes: i32,
        cells: i32,
    ) -> Result<(), GpuError> {
        let cfg = elementwise_config(cells.max(0) as usize);
        let args: [&dyn KernelArg; 4] = [&logits, &classes, &n_classes, &cells];
        // SAFETY: matches bev_argmax(logits, classes, n_classes, cells).
        unsafe { self.launch(self.f("bev_argmax"), cfg, &args) }
    }

    /// The view transform: `taps` is the SamplingTable's tap array as raw bytes (32 per entry).
    #[allow(clippy::too_many_arguments)]
    pub fn bev_pool_f32(
        &self,
        taps: &CudaSlice<u8>,
        feat: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        channels: i32,
        levels: i32,
        cells: i32,
        plane: i32,
    ) -> Result<(), GpuError> {
        let st = &self.stream;
        self.bev_pool_f32_at(
            taps.device_ptr(st).0,
            feat.device_ptr(st).0,
            out.device_ptr(st).0,
            channels,
            levels,
            cells,
            plane,
        )
    }

    /// Per-cell argmax over `n_classes` planes of `cells` logits.
    pub fn bev_argmax(
        &self,
        logits: &CudaSlice<f32>,
        classes: &mut CudaSlice<u8>,
        n_classes: i32,
        cells: i32,
    ) -> Result<(), GpuError> {
        let st = &self.stream;
        self.bev_argmax_at(
            logits.device_ptr(st).0,
            classes.device_ptr(st).0,
            n_classes,
            cells,
        )
    }

    /// The AFV score `U` of a discriminator tail from its activations (fisher.cu; CPU twin
    /// `bevrt_runtime::afv::afv_score`, same `U` layout). Pointers: `a1` (C1·H1·W1 f32), `z2`
    /// and `w3` (C2·H2·W2 f32), `delta` scratch (C2·H2·W2 f32), `u` (`AfvDims::dim()` f32).
    pub fn afv_score_at(
        &self,
        d: &AfvDims,
        a1: u64,
        z2: u64,
        w3: u64,
        delta: u64,
        u: u64,
    ) -> Result<(), GpuError> {
        let n2 = d.c2 * d.h2 * d.w2;
        let args: [&dyn KernelArg; 6] = [&z2, &w3, &d.slope, &u, &delta, &n2];
        let cfg = elementwise_config(n2.max(0) as usize);
        // SAFETY: matches afv_delta(z2, w3, slope, u, delta, n2).
        unsafe { self.launch(self.f("afv_delta"), cfg, &args) }?;
        let args: [&dyn KernelArg; 13] = [
            &a1, &delta, &u, &d.c1, &d.h1, &d.w1, &d.c2, &d.h2, &d.w2, &d.k, &d.stride, &d.pad,
            &d.regions,
        ];
        let cfg = elementwise_config(afv_conv_grad_threads(d));
        // SAFETY: matches afv_conv_grad(a1, delta, u, c1, h1, w1, c2, h2, w2, k, stride, pad,
        // regions); `u` holds AfvGeometry::dim() values, which counts the R² cells.
        unsafe { self.launch(self.f("afv_conv_grad"), cfg, &args) }
    }

    /// Fisher normalisation of `n` values at `v` in place (one block of 256 threads; CPU twin
    /// `bevrt_runtime::afv::fisher_normalise`).
    #[allow(clippy::too_many_arguments)]
    pub fn fisher_normalise_at(
        &self,
        v: u64,
        mean: u64,
        diag: u64,
        eps: f32,
        power: bool,
        l2: bool,
        n: i32,
    ) -> Result<(), GpuError> {
        let (power, l2) = (power as i32, l2 as i32);
        let args: [&dyn KernelArg; 7] = [&v, &mean, &diag, &eps, &power, &l2, &n];
        let cfg = fisher_normalise_config();
        // SAFETY: matches fisher_normalise(v, mean, diag, eps, power, l2, n); the kernel's
        // reduction is written for exactly 256 threads.
        unsafe { self.launch(self.f("fisher_normalise"), cfg, &args) }
    }

    /// Class map to RGB through a palette of `n_colors` RGB triples.
    pub fn colourise(
        &self,
        classes: &CudaSlice<u8>,
        palette: &CudaSlice<u8>,
        n_colors: i32,
        rgb: &mut CudaSlice<u8>,
        cells: i32,
    ) -> Result<(), GpuError> {
        let cfg = elementwise_config(cells.max(0) as usize);
        // `rgb` is written through its address; borrowed mutably so no one reads it meanwhile.
        let rgb: &CudaSlice<u8> = rgb;
        let args: [&dyn KernelArg; 5] = [classes, palette, &n_colors, rgb, &cells];
        // SAFETY: matches colourise(classes, palette, n_colors, rgb, cells).
        unsafe { self.launch(self.f("colourise"), cfg, &args) }
    }
}
