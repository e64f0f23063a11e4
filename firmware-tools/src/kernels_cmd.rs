//! `bevrt-tool compile-kernels`: build every CUDA kernel ahead of time for one SM, so no
//! compiler runs in the car; the runtime loads such a directory.

use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CompileKernelsArgs {
    /// Target SM: sm_87 (Orin) or sm_90 (H100).
    #[arg(long)]
    pub arch: String,
    /// Output directory: one FILE.sm_XX.cubin per kernel file and resources.sm_XX.json, plus
    /// FILE.compute_80.ptx, which any GPU from sm_80 on loads when it has no CUBIN here.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn compile_kernels(a: &CompileKernelsArgs) -> anyhow::Result<()> {
    use bevrt_kernels::nvrtc;
    let sm: u32 = a
        .arch
        .strip_prefix("sm_")
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("--arch '{}': expected sm_87 or sm_90", a.arch))?;
    if !nvrtc::TARGET_SMS.contains(&sm) {
        log::warn!(
            "sm_{sm} is not one of bevrt's tested targets {:?}",
            nvrtc::TARGET_SMS
        );
    }
    let (maj, min) = nvrtc::version()?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("{}: cannot create", a.out.display()))?;
    let mut resources = vec![];
    for k in nvrtc::KERNELS {
        let c = nvrtc::compile(k, sm)?;
        let path = a
            .out
            .join(format!("{}.sm_{sm}.cubin", k.file.trim_end_matches(".cu")));
        std::fs::write(&path, &c.cubin)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        for r in &c.resources {
            println!(
                "{:<16} {:<16} sm_{sm}: {:>3} registers, {} B spill stores, {} B spill loads",
                k.file, r.kernel, r.registers, r.spill_stores, r.spill_loads
            );
        }
        resources.extend(c.resources);
        let ptx_image = nvrtc::KernelImage::Ptx(nvrtc::PTX_FALLBACK_ARCH);
        let ptx = nvrtc::compile_ptx(k, nvrtc::PTX_FALLBACK_ARCH)?;
        let path = a.out.join(nvrtc::image_file(k, ptx_image));
        std::fs::write(&path, ptx).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    let report =
        serde_json::json!({ "nvrtc": format!("{maj}.{min}"), "sm": sm, "kernels": resources });
    std::fs::write(
        a.out.join(format!("resources.sm_{sm}.json")),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!(
        "wrote {} kernel files for sm_{sm} (and compute_{} PTX) to {} (NVRTC {maj}.{min})",
        nvrtc::KERNELS.len(),
        nvrtc::PTX_FALLBACK_ARCH,
        a.out.display()
    );
    Ok(())
}
