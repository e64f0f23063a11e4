//! CUDA device probing. cudarc loads libcuda dynamically and its `CudaContext::new` panics
//! when the library is missing, so every entry point checks for the library first.

use super::{Backend, BackendOptions};
use bevrt_models::Bundle;

/// Whether this build contains the CUDA kernel executor (the per-frame GPU path).
pub const EXECUTOR_BUILT: bool = false;

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
pub fn open(_bundle: &Bundle, _opts: &BackendOptions) -> anyhow::Result<Box<dyn Backend>> {
    match probe() {
        CudaProbe::NoDriver => anyhow::bail!(
            "--backend cuda: no CUDA driver on this machine (libcuda.so not found); \
             use --backend cpu or auto"
        ),
        CudaProbe::DriverError(e) => anyhow::bail!("--backend cuda: CUDA driver error: {e}"),
        CudaProbe::Available(d) => anyhow::bail!(
            "--backend cuda: device {} found, but this build has no CUDA executor yet \
             (kernels and executor are tracked in the CUDA backend issue); use --backend cpu",
            d.name
        ),
    }
}
