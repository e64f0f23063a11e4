//! Backends own every per-frame stage for one bundle, from preprocess to postprocess, so a GPU
//! backend can keep the frame on the device from upload to class map.
//!
//! - [`cpu`]: the networks on tract-onnx or on bevrt's own CPU kernels (the kernel plan,
//!   [`bevrt_kernels::cpu`]), bevrt's CPU references for its own stages.
//! - [`cuda`]: bevrt's own kernels for the whole per-frame path, one CUDA graph per frame.
//!
//! Both plan backends take their plans from [`crate::lower`], the ONNX front end.
//! [`open`] (`registry.rs`) is the registry: `auto` picks CUDA when a driver and device exist, and the CPU
//! when not or when the CUDA backend refuses the bundle (an op outside its set), saying which
//! and why; on the CPU it prefers the kernel plan (`cpu-plan`) and falls back to tract when a
//! network does not lower, naming the nodes. An explicit `cuda` or `cpu-plan` that cannot run
//! is an error at load, never a silent fallback.

pub mod cpu;
pub mod cuda;
mod registry;

use crate::frame::Frame;
use crate::postprocess::FrameResult;
use anyhow::Context;
use bevrt_models::Bundle;
pub use registry::open;

/// Which backend runs a bundle (see [`open`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Auto,
    Cpu,
    CpuPlan,
    Cuda,
}

impl crate::choice::Choice for BackendKind {
    const ALL: &'static [Self] = &[Self::Auto, Self::Cpu, Self::CpuPlan, Self::Cuda];
    fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::CpuPlan => "cpu-plan",
            Self::Cuda => "cuda",
        }
    }
    fn help(self) -> &'static str {
        match self {
            Self::Auto => {
                "CUDA when a device exists and takes the bundle; else cpu-plan when every \
                 network lowers to the kernel plan; else cpu (tract)"
            }
            Self::Cpu => "tract-onnx on the CPU",
            Self::CpuPlan => {
                "bevrt's kernel plan on its own CPU kernels (the plan the CUDA backend runs)"
            }
            Self::Cuda => "",
        }
    }
}
crate::named_choice!(BackendKind);

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
    /// Apply a new camera calibration between frames (BEV bundles rebuild their geometry);
    /// `origin` names it in messages. Returns what was done, for the log. A calibration the
    /// geometry refuses leaves the one in use untouched.
    fn apply_calibration(
        &mut self,
        c: &bevrt_calib::Calibration,
        origin: &str,
    ) -> anyhow::Result<String>;
    /// [`Backend::apply_calibration`] of a calibration file, checked whole first.
    fn set_calibration(&mut self, path: &std::path::Path) -> anyhow::Result<String> {
        let c = bevrt_calib::Calibration::load(path)?;
        self.apply_calibration(&c, &path.display().to_string())
    }
    /// The calibration the camera geometry uses now (the bundle's until another is applied);
    /// `None` for bundles without camera geometry.
    fn calibration(&self) -> Option<&bevrt_calib::Calibration>;
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
    /// Per-layer time of the networks that run on bevrt's CPU kernels (role, step), since
    /// load or the last [`Backend::reset_layer_profile`]; empty for other engines.
    fn layer_profile(&self) -> Vec<(&'static str, bevrt_kernels::cpu::StepProfile)> {
        Vec::new()
    }
    fn reset_layer_profile(&mut self) {}
    /// CPU threads the backend's networks run on (`None` where that is not the question).
    fn cpu_threads(&self) -> Option<usize> {
        None
    }
}

/// A `bev` bundle's camera geometry for an encoder output of shape `fshape` (1, C + D, H, W):
/// the grid, the sampling table from the bundle's calibration (with the grid's D depth bins,
/// 0 for the plain view transform), and the C context channels the lift passes on. Shared by
/// the backends so both refuse the same bundles with the same words.
pub struct BevGeometry {
    pub grid: bevrt_calib::BevGrid,
    pub table: bevrt_calib::SamplingTable,
    pub channels: usize,
    /// The bundle's calibration, which built `table`.
    pub calibration: bevrt_calib::Calibration,
}

impl BevGeometry {
    pub fn load(bundle: &Bundle, fshape: &[usize]) -> anyhow::Result<BevGeometry> {
        let m = &bundle.manifest;
        let grid = m.grid.clone().context("bev bundle without [grid]")?;
        let cal_file = m
            .calibration
            .as_ref()
            .context("bev bundle without [calibration]")?;
        let cal_path = bundle.dir.join(&cal_file.file);
        let cal = bevrt_calib::Calibration::load(&cal_path)?;
        let [1, c_out, fh, fw] = fshape[..] else {
            anyhow::bail!(
                "{}: encoder output {fshape:?} is not (1, C, H, W)",
                bundle.dir.display()
            );
        };
        let bins = grid.depth_bins();
        if c_out <= bins {
            anyhow::bail!(
                "{}: encoder output has {c_out} channels; [grid.depth] needs {bins} depth logits \
                 after at least one context channel",
                bundle.dir.display()
            );
        }
        let c = c_out - bins;
        let stride = m.input.height as usize / fh;
        if stride == 0
            || fh * stride != m.input.height as usize
            || fw * stride != m.input.width as usize
        {
            anyhow::bail!(
                "{}: encoder output {fw}x{fh} is not the input {}x{} divided by one integer stride",
                bundle.dir.display(),
                m.input.width,
                m.input.height
            );
        }
        let table = bevrt_calib::SamplingTable::try_build(
            &grid,
            &cal.camera,
            &cal.extrinsics,
            fw,
            fh,
            stride,
        )
        .with_context(|| format!("{}: sampling table", cal_path.display()))?;
        log::info!(
            "bev: grid {}x{} x {} levels at {} m, features {c}x{fh}x{fw} (stride {stride}), {bins} depth bins, {:.0} % of table entries valid",
            grid.height(),
            grid.width(),
            grid.levels(),
            grid.cell,
            table.valid_fraction() * 100.0
        );
        Ok(BevGeometry {
            grid,
            table,
            channels: c,
            calibration: cal,
        })
    }
}

/// The calibration-derived half of a BEV stage, as CUDA-BEVFusion keeps it: the sampling
/// table in use, a spare of the same size to rebuild into, and the visible-cell mask. All
/// three are allocated at load; a calibration change rebuilds the spare and swaps it in, so it
/// allocates nothing (a soak showed each reload's fresh table leaving 1-3 MiB of freed heap
/// resident until the next model swap), and a calibration the table refuses leaves the table
/// in use untouched.
pub struct CameraGeometry {
    pub table: bevrt_calib::SamplingTable,
    spare: bevrt_calib::SamplingTable,
    /// Per cell: seen by the camera at some height level (from the table's flags). Cells
    /// nobody can see are reported as 255 (unknown) instead of a guess.
    pub visible: Vec<bool>,
    /// The calibration `table` was built from.
    pub calibration: bevrt_calib::Calibration,
}

impl CameraGeometry {
    pub fn new(
        table: bevrt_calib::SamplingTable,
        calibration: bevrt_calib::Calibration,
    ) -> CameraGeometry {
        let mut visible = vec![false; table.grid_w * table.grid_h];
        mark_visible_cells(&table, &mut visible);
        CameraGeometry {
            spare: table.clone(),
            table,
            visible,
            calibration,
        }
    }

    /// Rebuild the table for a new calibration on the same grid; on error the table in use
    /// is unchanged.
    pub fn rebuild(
        &mut self,
        grid: &bevrt_calib::BevGrid,
        calibration: &bevrt_calib::Calibration,
    ) -> Result<(), bevrt_calib::CalibError> {
        self.spare
            .rebuild(grid, &calibration.camera, &calibration.extrinsics)?;
        std::mem::swap(&mut self.table, &mut self.spare);
        mark_visible_cells(&self.table, &mut self.visible);
        self.calibration = calibration.clone();
        Ok(())
    }
}

fn mark_visible_cells(t: &bevrt_calib::SamplingTable, visible: &mut Vec<bool>) {
    let per = t.grid_w * t.grid_h;
    visible.resize(per, false);
    for (i, v) in visible.iter_mut().enumerate() {
        *v = (0..t.levels).any(|l| t.flags[l * per + i] == bevrt_calib::bev::FLAG_VALID);
    }
}

/// A `features` bundle's `embedding_stats`: per-dimension (mean, std), applied to the vector
/// before `embedding_norm`, the same on every backend.
pub struct EmbeddingStats {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl EmbeddingStats {
    pub fn load(bundle: &Bundle) -> anyhow::Result<Option<EmbeddingStats>> {
        let Some(f) = &bundle.manifest.embedding_stats else {
            return Ok(None);
        };
        let p = bundle.dir.join(&f.file);
        let (s, v) =
            crate::npy::read_f32(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        if s.len() != 2 || s[0] != 2 {
            anyhow::bail!("{}: shape {s:?}, expected [2, D] (mean, std)", p.display());
        }
        let (mean, std) = v.split_at(s[1]);
        if std.iter().any(|x| !(*x > 0.0 && x.is_finite())) {
            anyhow::bail!("{}: every std must be finite and > 0", p.display());
        }
        Ok(Some(EmbeddingStats {
            mean: mean.to_vec(),
            std: std.to_vec(),
        }))
    }

    /// `(v - mean) / std` in place.
    pub fn apply(&self, v: &mut [f32]) -> anyhow::Result<()> {
        if self.mean.len() != v.len() {
            anyhow::bail!(
                "embedding_stats has {} dimensions, the embedding {}",
                self.mean.len(),
                v.len()
            );
        }
        for ((x, m), s) in v.iter_mut().zip(&self.mean).zip(&self.std) {
            *x = (*x - m) / s;
        }
        Ok(())
    }
}

/// The AFV tail of a `features` bundle (`[afv]` in the manifest): the discriminator tail's
/// geometry from the network's outputs (`a1` is output 1, `z2` output 2), the linear weights
/// and, after `afv fit`, the Fisher mean and diagonal. Shared by the CPU and CUDA backends.
pub struct AfvTail {
    pub geom: crate::afv::AfvGeometry,
    pub w3: Vec<f32>,
    /// Fisher mean and diagonal (`None` before `afv fit`: raw scores).
    pub fisher: Option<(Vec<f32>, Vec<f32>)>,
    pub eps: f32,
    pub power: bool,
    pub l2: bool,
}

impl AfvTail {
    pub fn load(bundle: &Bundle, output_shapes: &[Vec<usize>]) -> anyhow::Result<AfvTail> {
        let a = bundle
            .manifest
            .afv
            .as_ref()
            .with_context(|| format!("{}: no [afv] section", bundle.dir.display()))?;
        let shape = |k: usize, what: &str| -> anyhow::Result<[usize; 3]> {
            match output_shapes.get(k).map(|s| &s[..]) {
                Some(&[1, c, h, w]) => Ok([c, h, w]),
                other => anyhow::bail!(
                    "{}: AFV needs model output {k} ({what}) of shape (1, C, H, W), got {other:?}",
                    bundle.dir.display()
                ),
            }
        };
        let ([c1, h1, w1], [c2, h2, w2]) = (shape(1, "a1")?, shape(2, "z2")?);
        let geom = crate::afv::AfvGeometry {
            c1,
            h1,
            w1,
            c2,
            h2,
            w2,
            k: a.kernel,
            stride: a.stride,
            pad: a.pad,
            slope: a.slope,
            regions: a.regions,
        };
        geom.check()
            .map_err(|e| anyhow::anyhow!("{}: [afv] {e}", bundle.dir.display()))?;
        let read = |f: &bevrt_models::ModelFile| {
            let p = bundle.dir.join(&f.file);
            crate::npy::read_f32(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        };
        let (_, w3) = read(&a.head_weight)?;
        if w3.len() != geom.z2_len() {
            anyhow::bail!(
                "{}: {} values, the discriminator's z2 has {}",
                a.head_weight.file,
                w3.len(),
                geom.z2_len()
            );
        }
        let fisher = match &a.fisher {
            None => None,
            Some(f) => {
                let (s, v) = read(f)?;
                if s != [2, geom.dim()] {
                    anyhow::bail!(
                        "{}: shape {s:?}, expected [2, {}] (mean, diagonal)",
                        f.file,
                        geom.dim()
                    );
                }
                let (mean, diag) = v.split_at(geom.dim());
                Some((mean.to_vec(), diag.to_vec()))
            }
        };
        Ok(AfvTail {
            geom,
            w3,
            fisher,
            eps: a.eps,
            power: a.power_norm,
            l2: a.l2_norm,
        })
    }
}
