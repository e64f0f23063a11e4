//! The registry: which backend runs a bundle, and the fallbacks `auto` takes (see the
//! module's head in [`super`]).

use super::cpu::{CpuBackend, CpuEngine};
use super::{Backend, BackendKind, BackendOptions, cuda};
use bevrt_models::Bundle;

/// Open a backend of `kind` for `bundle`.
pub fn open(
    kind: BackendKind,
    bundle: &Bundle,
    opts: &BackendOptions,
) -> anyhow::Result<Box<dyn Backend>> {
    let on_cpu = |engine| -> anyhow::Result<Box<dyn Backend>> {
        Ok(Box::new(CpuBackend::load_engine(bundle, opts, engine)?))
    };
    match kind {
        BackendKind::Cpu => on_cpu(CpuEngine::Tract),
        BackendKind::CpuPlan => on_cpu(CpuEngine::Plan),
        BackendKind::Cuda => cuda::open(bundle, opts),
        BackendKind::Auto => match cuda::probe() {
            cuda::CudaProbe::Available(dev) => {
                log::info!("backend auto: CUDA device {} found, using cuda", dev.name);
                cuda::open(bundle, opts).or_else(|e| {
                    log::warn!(
                        "backend auto: the CUDA backend cannot run this bundle ({e:#}); using the CPU"
                    );
                    on_cpu(CpuEngine::PlanOrTract)
                })
            }
            other => {
                log::info!("backend auto: {}; using the CPU", other.summary());
                on_cpu(CpuEngine::PlanOrTract)
            }
        },
    }
}
