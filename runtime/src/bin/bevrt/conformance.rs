//! `bevrt conformance`: ONNX backend node cases on a backend.

use crate::args::choice;
use bevrt_runtime::backend::{self, BackendKind};
use bevrt_runtime::conformance;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ConformanceArgs {
    /// Folder of cases (each a directory with model.onnx and test_data_set_0/).
    #[arg(long)]
    suite: PathBuf,
    #[arg(long, default_value = "cpu", value_parser = choice::<BackendKind>())]
    backend: BackendKind,
    /// Only cases whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Print every case as JSON lines instead of the failure lines.
    #[arg(long)]
    json: bool,
    /// Run the CUDA executor's kernel plan on the kernels' CPU twins (FP16 storage, exactly
    /// what the GPU computes up to expf rounding): checks the lowering without a GPU.
    #[arg(long)]
    kernel_reference: bool,
    /// `--backend cpu-plan`: threads of the CPU engine (default 1).
    #[arg(long)]
    threads: Option<usize>,
}

/// Runs the suite and prints its summary line; whether every case that ran passed (the
/// caller exits 1 when not, so a script or CI step fails on a failing case).
pub fn cmd_conformance(a: ConformanceArgs) -> anyhow::Result<bool> {
    let print = |r: &conformance::CaseResult| {
        if a.json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        } else if let conformance::Outcome::Fail { reason } = &r.outcome {
            println!("FAIL {}: {reason}", r.name);
        }
    };
    if a.kernel_reference {
        let cases = conformance::list_cases(&a.suite, a.filter.as_deref())?;
        let mut exec = |p: &bevrt_kernels::plan::KernelPlan, x: &[&[f32]]| {
            Ok(bevrt_kernels::reference::run(p, x))
        };
        let results =
            conformance::run_suite_plan(&cases, bevrt_kernels::plan::DType::F16, &mut exec, print);
        return Ok(summary(&results, "kernel plan on the CPU twins, FP16"));
    }
    if a.backend == BackendKind::CpuPlan {
        let cases = conformance::list_cases(&a.suite, a.filter.as_deref())?;
        let threads = a.threads.unwrap_or(1);
        let mut exec = |p: &bevrt_kernels::plan::KernelPlan, x: &[&[f32]]| {
            bevrt_kernels::cpu::CpuPlan::run_once(p, x, threads)
        };
        let results =
            conformance::run_suite_plan(&cases, bevrt_kernels::plan::DType::F32, &mut exec, print);
        let isa = bevrt_kernels::cpu::isa::Isa::detect().name();
        return Ok(summary(
            &results,
            &format!("cpu-plan, {isa}, {threads} thread(s)"),
        ));
    }
    let probe = backend::cuda::probe();
    let use_cuda = match a.backend {
        BackendKind::Cpu | BackendKind::CpuPlan => false,
        BackendKind::Cuda => true,
        BackendKind::Auto => matches!(probe, backend::cuda::CudaProbe::Available(_)),
    };
    if use_cuda {
        if !matches!(probe, backend::cuda::CudaProbe::Available(_)) {
            anyhow::bail!("conformance --backend cuda: {}", probe.summary());
        }
        let gpu = bevrt_kernels::launch::Gpu::open(backend::cuda::kernel_dir().as_deref())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let int8 = if gpu.sm >= 80 {
            bevrt_kernels::exec::Int8Gemm::Imma
        } else {
            bevrt_kernels::exec::Int8Gemm::Dp4a
        };
        let cases = conformance::list_cases(&a.suite, a.filter.as_deref())?;
        let mut exec = |p: &bevrt_kernels::plan::KernelPlan, x: &[&[f32]]| {
            let e = |e: bevrt_kernels::launch::GpuError| e.to_string();
            let mut r = bevrt_kernels::exec::PlanRunner::load(&gpu, p.clone(), int8).map_err(e)?;
            for (k, v) in x.iter().enumerate() {
                r.set_input(&gpu, k, v).map_err(e)?;
            }
            r.launch_all(&gpu).map_err(e)?;
            (0..p.outputs.len())
                .map(|k| r.output(&gpu, k).map_err(e))
                .collect()
        };
        let results =
            conformance::run_suite_plan(&cases, bevrt_kernels::plan::DType::F16, &mut exec, print);
        return Ok(summary(&results, &format!("cuda, sm_{}", gpu.sm)));
    }
    log::info!("conformance on cpu ({})", probe.summary());
    let cases = conformance::list_cases(&a.suite, a.filter.as_deref())?;
    let results = conformance::run_suite(&cases, print);
    Ok(summary(&results, "cpu"))
}

/// Prints `N passed, M failed, K skipped (where)`; whether none failed.
fn summary(results: &[conformance::CaseResult], where_: &str) -> bool {
    let s = conformance::summarize(results);
    println!(
        "{} passed, {} failed, {} skipped ({where_})",
        s.passed, s.failed, s.skipped
    );
    s.failed == 0
}
