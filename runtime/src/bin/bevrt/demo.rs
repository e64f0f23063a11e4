//! `bevrt demo` (letsmap-lite, embedded, on a simulated drive) and `bevrt demo-classify`.

use crate::args::choice;
use bevrt_runtime::backend::{self, BackendKind, BackendOptions};
use bevrt_runtime::{pipeline, sink, source};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct BevDemoArgs {
    /// Where the bundle, the simulated drive, results and side-by-side PNGs go.
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
    /// Run this BEV bundle (e.g. a 1 %-label one) instead of the embedded reference.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Frames to simulate (2 per second of driving).
    #[arg(long, default_value_t = 20)]
    frames: u64,
    /// World seed of the drive (the bundle was trained on other seeds).
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    #[arg(long, default_value = "auto", value_parser = choice::<BackendKind>())]
    backend: BackendKind,
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The shared data folder (default: $BEVRT_SHARED or ../shared).
    #[arg(long)]
    shared: Option<PathBuf>,
    /// Where the demo bundle, frames and results go.
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
}

fn shared_dir(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("BEVRT_SHARED").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("../shared"))
}

pub fn cmd_bev_demo(a: BevDemoArgs) -> anyhow::Result<()> {
    let r = bevrt_runtime::demo::run(&bevrt_runtime::demo::DemoOptions {
        out: a.out.clone(),
        bundle: a.bundle.clone(),
        frames: a.frames,
        seed: a.seed,
        backend: a.backend,
        threads: a.threads,
    })?;
    println!(
        "{} on a new simulated drive (seed {}): {}",
        a.bundle
            .as_ref()
            .map_or("letsmap-lite reference bundle".to_string(), |b| b
                .display()
                .to_string()),
        a.seed,
        r.run.line()
    );
    println!("class        IoU %   gt cells");
    for c in &r.per_class {
        let iou = c.iou.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!("{:<12} {iou:>5} {:>10}", c.class, c.gt_cells);
    }
    println!(
        "mIoU {:.1} % (classes present in the ground truth), cell accuracy {:.1} %",
        r.miou, r.accuracy
    );
    println!(
        "camera | predicted BEV | ground truth per frame: {}",
        r.side_by_side.display()
    );
    Ok(())
}

pub fn cmd_demo(a: DemoArgs) -> anyhow::Result<()> {
    use bevrt_models::*;
    let shared = shared_dir(a.shared);
    let models = shared.join("data/onnx/models");
    let onnx = models.join("ch_ppocr_mobile_v2.0_cls_infer.onnx");
    let crops = models.join("cls_input_4x3x48x192.npy");
    let reference = models.join("cls_output_fp32_4x2.npy");
    anyhow::ensure!(
        onnx.is_file() && crops.is_file(),
        "{}: the shared classifier and its inputs are missing (set --shared or BEVRT_SHARED)",
        models.display()
    );
    let bundle_dir = a.out.join("bundle");
    let frames_dir = a.out.join("frames");
    if bundle_dir.exists() {
        std::fs::remove_dir_all(&bundle_dir)?;
    }
    let _ = std::fs::remove_dir_all(&frames_dir);
    std::fs::create_dir_all(&frames_dir)?;
    // Real text-line crops: ONNX Runtime's reference inputs turned back into BGR images,
    // each also rotated by 180 degrees, which the classifier must tell apart.
    let (shape, data) = bevrt_runtime::npy::read_f32(&crops).map_err(anyhow::Error::msg)?;
    let (n, h, w) = (shape[0], shape[2], shape[3]);
    for i in 0..n {
        for rot in [false, true] {
            let mut img = image::RgbImage::new(w as u32, h as u32);
            for y in 0..h {
                for x in 0..w {
                    let (sx, sy) = if rot { (w - 1 - x, h - 1 - y) } else { (x, y) };
                    let px = |c: usize| {
                        let v = data[((i * 3 + c) * h + sy) * w + sx];
                        ((v * 0.5 + 0.5) * 255.0).round().clamp(0.0, 255.0) as u8
                    };
                    // model channels are B, G, R
                    img.put_pixel(x as u32, y as u32, image::Rgb([px(2), px(1), px(0)]));
                }
            }
            let name = format!("crop{i}_{}.png", if rot { "180" } else { "000" });
            img.save(frames_dir.join(name))?;
        }
    }
    let manifest = Manifest {
        format: 1,
        name: "ppocr-text-orientation".into(),
        version: "2.0".into(),
        task: Task::Classify,
        description: "PaddleOCR mobile v2.0 text-line orientation classifier (0 or 180 deg)".into(),
        models: vec![ModelFile {
            role: "model".into(),
            file: "model.onnx".into(),
            sha256: "0".repeat(64),
        }],
        input: InputSpec {
            name: Some("x".into()),
            width: 192,
            height: 48,
            channels: ChannelOrder::Bgr,
            layout: Layout::Nchw,
            dtype: InputDtype::F32,
            mean: vec![0.5; 3],
            std: vec![0.5; 3],
        },
        outputs: vec![OutputSpec {
            name: None,
            kind: OutputKind::Probabilities,
            labels: vec!["0".into(), "180".into()],
        }],
        grid: None,
        classes: vec![],
        calibration: None,
        embedding_norm: EmbeddingNorm::None,
        embedding_stats: None,
        afv: None,
        selftest: None,
        provenance: Default::default(),
        expires: None,
    };
    let bundle = write_bundle(&bundle_dir, manifest, &[(onnx, "model.onnx".into())])?;
    println!("bundle: {}", bundle.dir.display());
    let src = source::open(&format!("images:{}/*.png", frames_dir.display()))?;
    let be = backend::open(BackendKind::Auto, &bundle, &BackendOptions::default())?;
    let sinks = sink::build(&[sink::SinkKind::Jsonl], &a.out, &bundle.manifest, 1)?;
    let opts = pipeline::PipelineOptions {
        metrics_out: Some(a.out.join("metrics.jsonl")),
        ..Default::default()
    };
    let report = pipeline::run(src, be, sinks, &opts)?;
    let results = std::fs::read_to_string(a.out.join("results.jsonl"))?;
    let mut files: Vec<_> = std::fs::read_dir(&frames_dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    // Expected: ONNX Runtime's class for each original crop, the other class when rotated.
    let (_, ort) = bevrt_runtime::npy::read_f32(&reference).map_err(anyhow::Error::msg)?;
    println!("frame                 predicted  score  expected");
    let mut correct = 0;
    for (line, f) in results.lines().zip(&files) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let label = v["label"].as_str().unwrap_or("?");
        let i: usize = f[4..5].parse().unwrap_or(0);
        let upright = ort[i * 2] >= ort[i * 2 + 1];
        let truth = if upright != f.contains("_180") {
            "0"
        } else {
            "180"
        };
        correct += (label == truth) as usize;
        println!(
            "{f:<21} {label:>9}  {:.3}  {truth:>8}",
            v["score"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "{correct}/{} orientations as expected (ONNX Runtime's class, flipped for rotated crops); {}",
        files.len(),
        report.line()
    );
    println!("results: {}", a.out.join("results.jsonl").display());
    Ok(())
}
