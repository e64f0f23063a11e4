//! `bevrt info`: the CUDA driver and device, V4L2 devices, a bundle's summary.

use bevrt_models::Bundle;
use bevrt_runtime::backend::{self};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct InfoArgs {
    #[arg(long)]
    bundle: Option<PathBuf>,
}

pub fn cmd_info(a: InfoArgs) -> anyhow::Result<()> {
    println!("bevrt {}", env!("CARGO_PKG_VERSION"));
    println!("cuda: {}", backend::cuda::probe().summary());
    match bevrt_kernels::nvrtc::version() {
        Ok((a, b)) => println!("nvrtc: {a}.{b} (kernels can be compiled here)"),
        Err(e) => println!("nvrtc: {e}"),
    }
    println!(
        "cuda executor: kernel plans from ONNX (FP16, INT8 Q/DQ), {} kernels for sm_{}",
        bevrt_kernels::nvrtc::KERNELS
            .iter()
            .map(|k| k.entries.len())
            .sum::<usize>(),
        bevrt_kernels::nvrtc::TARGET_SMS
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("/sm_")
    );
    let mut videos: Vec<_> = std::fs::read_dir("/dev")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("video"))
                })
                .collect()
        })
        .unwrap_or_default();
    videos.sort();
    println!(
        "v4l: {} (support {})",
        if videos.is_empty() {
            "no /dev/video* devices".to_string()
        } else {
            videos
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
        if cfg!(feature = "v4l") {
            "built in"
        } else {
            "not built in: --features bevrt-runtime/v4l"
        }
    );
    if let Some(b) = a.bundle {
        let bundle = Bundle::load_unverified(&b)?;
        let m = &bundle.manifest;
        println!(
            "bundle: {} {} (task {}) at {}",
            m.name,
            m.version,
            m.task,
            b.display()
        );
        match bundle.verify() {
            Ok(()) => println!("  files: all sha256 match"),
            Err(e) => println!("  files: {e}"),
        }
        println!(
            "  input: {}x{} {:?} {:?} mean {:?} std {:?}",
            m.input.width,
            m.input.height,
            m.input.channels,
            m.input.layout,
            m.input.mean,
            m.input.std
        );
        for f in &m.models {
            let p = bundle.dir.join(&f.file);
            match bevrt_models::inspect(&p) {
                Ok(s) => println!(
                    "  {} {}: opset {}, inputs {:?}, outputs {:?}, ops {}",
                    f.role,
                    f.file,
                    s.opset,
                    s.inputs
                        .iter()
                        .map(|i| (&i.name, &i.dims))
                        .collect::<Vec<_>>(),
                    s.outputs.iter().map(|i| &i.name).collect::<Vec<_>>(),
                    s.ops.join(" ")
                ),
                Err(e) => println!("  {} {}: {e}", f.role, f.file),
            }
        }
        if let Some(g) = &m.grid {
            println!(
                "  grid: x {}..{} y {}..{} cell {} levels {:?}",
                g.x_min, g.x_max, g.y_min, g.y_max, g.cell, g.z_levels
            );
        }
        if !m.classes.is_empty() {
            println!(
                "  classes: {}",
                m.classes
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}
