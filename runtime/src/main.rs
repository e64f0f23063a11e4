//! `bevrt`: run a model bundle on a camera stream, benchmark it, inspect the machine, and run
//! the ONNX conformance cases.

use anyhow::Context;
use bevrt_models::Bundle;
use bevrt_runtime::backend::{self, BackendKind, BackendOptions};
use bevrt_runtime::{bench, conformance, pipeline, sink, source, supervisor};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[global_allocator]
static ALLOC: bevrt_runtime::alloc_count::CountingAlloc = bevrt_runtime::alloc_count::CountingAlloc;

#[derive(Parser)]
#[command(name = "bevrt", version, about = "Edge perception runtime: camera frames to BEV maps, features and classes", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a bundle on a frame source, writing results to sinks.
    Run(Box<RunArgs>),
    /// The main job on an embedded default (no camera, no GPU, no download): the shipped
    /// letsmap-lite BEV bundle on a freshly simulated drive; side-by-side PNGs, latency, mIoU.
    Demo(BevDemoArgs),
    /// The shared text-orientation classifier on real text-line crops (needs ../shared).
    DemoClassify(DemoArgs),
    /// Per-stage latency on a synthetic frame (optionally beside ONNX Runtime).
    Bench(BenchArgs),
    /// CUDA driver and device, V4L2 devices, and a bundle's summary.
    Info(InfoArgs),
    /// Run ONNX backend node-test cases and compare outputs.
    Conformance(ConformanceArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Bundle directory (holding bundle.toml).
    #[arg(long, required_unless_present = "store", conflicts_with = "store")]
    bundle: Option<PathBuf>,
    /// Run the active slot of an A/B bundle store (`bevrt-tool deploy`): verified and
    /// self-tested at start, new deployments swapped in while running, a bundle that fails
    /// its trial rolled back.
    #[arg(long)]
    store: Option<PathBuf>,
    /// minisign public key (file or base64 line): refuse a bundle it did not sign. A store's
    /// own trust.pub applies without this.
    #[arg(long)]
    trust: Option<String>,
    /// Store: frames a newly deployed bundle must process before it is confirmed.
    #[arg(long, default_value_t = 30)]
    trial_frames: u64,
    /// Store: inference errors tolerated during a trial before rolling back.
    #[arg(long, default_value_t = 2)]
    trial_max_errors: u64,
    /// Frame source: images:GLOB[?fps=N], replay:DIR[?fps=N|?realtime],
    /// v4l:/dev/videoN?width=W&height=H&fps=F&format=yuyv|mjpeg, sim:?seed=S&fps=N,
    /// mcap:BAG?topic=/camera/image_raw[&info=/camera/camera_info][&fps=N|&realtime].
    #[arg(long)]
    source: String,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendKind,
    /// Output directory for sinks and metrics.jsonl.
    #[arg(long, default_value = "out/run")]
    out: PathBuf,
    /// Stop after this many processed frames.
    #[arg(long)]
    max_frames: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// CPU threads for the network (default 0: measure 1 and all cores at load, keep the
    /// faster).
    #[arg(long)]
    threads: Option<usize>,
    /// Run Q/DQ (INT8) convolutions with tract's integer kernels instead of float-simulated
    /// Q/DQ (CPU backend; same values, speed depends on the model).
    #[arg(long)]
    int8_kernels: bool,
    /// Sinks to write (default: png+jsonl for bev, jsonl otherwise).
    #[arg(long, value_enum, value_delimiter = ',')]
    sinks: Vec<sink::SinkKind>,
    /// Calibration file to watch: a change is applied between frames without restarting.
    /// Defaults to the recording's calibration for replay sources, and to a bag's CameraInfo
    /// and /tf_static for mcap sources.
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5.0)]
    report_every: f64,
    /// Serve the run live to Foxglove (WebSocket protocol) on HOST:PORT, e.g.
    /// 127.0.0.1:8765: camera, BEV map and grid, results, at most 20 Hz. A slow viewer loses
    /// viewer messages (counted), never frames.
    #[arg(long, value_name = "HOST:PORT")]
    foxglove: Option<String>,
    /// Serve Prometheus /metrics and /healthz on HOST:PORT, e.g. 127.0.0.1:9090.
    #[arg(long, value_name = "HOST:PORT")]
    prometheus: Option<String>,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Fault injection (HIL): delay every sink write by this many milliseconds.
    #[arg(long, hide = true, default_value_t = 0)]
    fault_sink_delay_ms: u64,
    /// Fault injection (soak): EVERY_S:FOR_MS, one sink write stalls FOR_MS every EVERY_S s.
    #[arg(long, hide = true)]
    fault_sink_stall: Option<String>,
}

/// `EVERY_S:FOR_MS` of `--fault-sink-stall`.
fn sink_stall(spec: &Option<String>) -> anyhow::Result<Option<(Duration, Duration)>> {
    let Some(s) = spec else { return Ok(None) };
    let parsed = s.split_once(':').and_then(|(e, f)| {
        let (e, f) = (e.parse::<f64>().ok()?, f.parse::<u64>().ok()?);
        (e.is_finite() && e > 0.0).then(|| (Duration::from_secs_f64(e), Duration::from_millis(f)))
    });
    parsed
        .map(Some)
        .with_context(|| format!("--fault-sink-stall '{s}': expected EVERY_S:FOR_MS"))
}

#[derive(clap::Args)]
struct BevDemoArgs {
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
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendKind,
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// The shared data folder (default: $BEVRT_SHARED or ../shared).
    #[arg(long)]
    shared: Option<PathBuf>,
    /// Where the demo bundle, frames and results go.
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long, default_value_t = 200)]
    frames: usize,
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendKind,
    /// CPU threads for the network (default 0: measure 1 and all cores at load, keep the
    /// faster). The ONNX Runtime peer gets the same count (all cores when 0).
    #[arg(long)]
    threads: Option<usize>,
    /// Run Q/DQ (INT8) convolutions with tract's integer kernels instead of float-simulated
    /// Q/DQ (CPU backend; same values, speed depends on the model).
    #[arg(long)]
    int8_kernels: bool,
    /// Synthetic camera frame size WxH (default: the model's input size).
    #[arg(long)]
    frame_size: Option<String>,
    /// Also time ONNX Runtime (python3 + onnxruntime) on the same model file, same threads.
    #[arg(long)]
    peer_onnxruntime: bool,
    /// Also time this bundle (e.g. the FP32 original of an INT8 bundle) on the same backend,
    /// threads and frame, interleaved in this run, and print the inference ratio.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Also read this frame source (e.g. mcap:BAG) as fast as it delivers, with nothing
    /// downstream, and print its rate against the bundle's per-frame rate.
    #[arg(long)]
    source: Option<String>,
    /// CPU engine (cpu-plan): how many of the slowest layers to list (0 = all).
    #[arg(long, default_value_t = 12)]
    layers: usize,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct InfoArgs {
    #[arg(long)]
    bundle: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ConformanceArgs {
    /// Folder of cases (each a directory with model.onnx and test_data_set_0/).
    #[arg(long)]
    suite: PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
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

fn main() {
    supervisor::single_malloc_arena();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => cmd_run(*a),
        Cmd::Demo(a) => cmd_bev_demo(a),
        Cmd::DemoClassify(a) => cmd_demo(a),
        Cmd::Bench(a) => cmd_bench(a),
        Cmd::Info(a) => cmd_info(a),
        Cmd::Conformance(a) => cmd_conformance(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

fn backend_opts(threads: Option<usize>, int8_kernels: bool) -> BackendOptions {
    let mut o = BackendOptions {
        int8_kernels,
        ..Default::default()
    };
    if let Some(t) = threads {
        o.threads = t;
    }
    o
}

/// The bundle to run and its backend, with a store supervisor when running from a store.
type RunModel = (
    Bundle,
    Box<dyn bevrt_runtime::Backend>,
    Option<Box<dyn supervisor::ModelUpdates>>,
);

fn trust_key(a: &RunArgs) -> anyhow::Result<Option<bevrt_models::signature::PublicKey>> {
    Ok(a.trust
        .as_deref()
        .map(bevrt_models::signature::load_public_key)
        .transpose()?)
}

/// `--bundle DIR`, checked (and with `--trust`, its signature) before anything else opens.
fn load_bundle(a: &RunArgs, dir: &std::path::Path) -> anyhow::Result<Bundle> {
    Ok(match trust_key(a)? {
        Some(k) => {
            let s = bevrt_models::signature::load_trusted(dir, &k)?;
            log::info!(
                "{}: signed by key {} ({})",
                dir.display(),
                s.key_id,
                s.trusted_comment
            );
            s.bundle
        }
        None => Bundle::load(dir)?,
    })
}

/// `--store DIR`: the active slot (rolled back while it fails), and its supervisor.
fn open_store(
    a: &RunArgs,
    dir: &std::path::Path,
    calib: Option<PathBuf>,
) -> anyhow::Result<RunModel> {
    let store = bevrt_models::store::Store::open(dir, false)?;
    let cfg = supervisor::LoadConfig {
        kind: a.backend,
        options: backend_opts(a.threads, a.int8_kernels),
        calibration: calib,
        trust: trust_key(a)?,
        trial_frames: a.trial_frames,
        max_errors: a.trial_max_errors,
    };
    let loaded = supervisor::start(&store, &cfg)?;
    let sup = supervisor::StoreSupervisor::new(store, cfg, &loaded)?;
    Ok((loaded.active.bundle, loaded.backend, Some(Box::new(sup))))
}

/// A bag's own calibration (CameraInfo, tf_static) when the user gave no file: written as
/// `OUT/calibration-from-stream.toml`, with what the bag lacks taken from the bundle's
/// calibration, and then watched like any calibration file.
fn calibration_from_stream(
    src: &dyn bevrt_runtime::FrameSource,
    bundle: Option<&Bundle>,
    out: &std::path::Path,
) -> anyhow::Result<Option<PathBuf>> {
    let Some(sc) = src.stream_calibration() else {
        return Ok(None);
    };
    let from_bundle = bundle.and_then(|b| calibration_in_use(None, b));
    let (camera, extrinsics) = match (sc.camera, sc.extrinsics, from_bundle) {
        (Some(c), Some(e), _) => (c, e),
        (Some(c), None, Some(b)) => {
            log::warn!(
                "{}: no camera pose in /tf_static; using the bundle's extrinsics",
                sc.origin
            );
            (c, b.extrinsics)
        }
        (None, Some(e), Some(b)) => {
            log::warn!(
                "{}: no CameraInfo (or an uncalibrated one); using the bundle's camera model",
                sc.origin
            );
            (b.camera, e)
        }
        _ => {
            log::warn!(
                "{}: the stream's calibration is incomplete and the bundle has none to fill it; not used",
                sc.origin
            );
            return Ok(None);
        }
    };
    let c = bevrt_calib::Calibration { camera, extrinsics };
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", out.display()))?;
    let p = out.join("calibration-from-stream.toml");
    c.save(&p)?;
    log::info!(
        "calibration from the stream ({}): {}",
        sc.origin,
        p.display()
    );
    Ok(Some(p))
}

/// The calibration the run uses: the file given (or found), else the bundle's.
fn calibration_in_use(
    path: Option<&std::path::Path>,
    bundle: &Bundle,
) -> Option<bevrt_calib::Calibration> {
    let p = path.map(|p| p.to_path_buf()).or_else(|| {
        bundle
            .manifest
            .calibration
            .as_ref()
            .map(|f| bundle.dir.join(&f.file))
    })?;
    bevrt_calib::Calibration::load(&p).ok()
}

fn cmd_run(a: RunArgs) -> anyhow::Result<()> {
    let given = match (&a.store, &a.bundle) {
        (None, Some(dir)) => Some(load_bundle(&a, dir)?),
        (None, None) => anyhow::bail!("--bundle or --store is required"),
        _ => None,
    };
    let src = source::open(&a.source)?;
    let calib = match a.calib.clone().or_else(|| src.calibration_path()) {
        Some(c) => Some(c),
        None => calibration_from_stream(&*src, given.as_ref(), &a.out)?,
    };
    let (bundle, be, updates) = match given {
        Some(b) => {
            let be = backend::open(a.backend, &b, &backend_opts(a.threads, a.int8_kernels))?;
            (b, be, None)
        }
        None => open_store(&a, a.store.as_deref().expect("checked"), calib.clone())?,
    };
    let kinds = if a.sinks.is_empty() {
        sink::default_sinks(bundle.manifest.task)
    } else {
        a.sinks.clone()
    };
    let n_out = be.new_result().outputs.len();
    let live = std::sync::Arc::new(pipeline::LiveMetrics::default());
    let sink_ctx = sink::SinkContext {
        calibration: calibration_in_use(calib.as_deref(), &bundle),
        live: Some(live.clone()),
    };
    let mut sinks = sink::build_with(&kinds, &a.out, &bundle.manifest, n_out, &sink_ctx)?;
    if let Some(addr) = &a.foxglove {
        let addr = bevrt_runtime::serve::parse_bind("foxglove", addr)?;
        sinks.push(Box::new(
            bevrt_runtime::serve::foxglove::LiveViewSink::start(
                addr,
                &bundle.manifest,
                sink_ctx.calibration.clone(),
                &be.new_result(),
                src.max_frame_bytes().unwrap_or(1920 * 1080 * 3),
                live.clone(),
            )?,
        ));
    }
    if let Some(addr) = &a.prometheus {
        let addr = bevrt_runtime::serve::parse_bind("prometheus", addr)?;
        bevrt_runtime::serve::prometheus::spawn(addr, live.clone())?;
    }
    let opts = pipeline::PipelineOptions {
        max_frames: a.max_frames,
        duration: a.duration.map(Duration::from_secs_f64),
        report_every: Duration::from_secs_f64(a.report_every.max(0.1)),
        calibration: calib,
        sink_delay: Duration::from_millis(a.fault_sink_delay_ms),
        sink_stall: sink_stall(&a.fault_sink_stall)?,
        metrics_out: Some(a.out.join("metrics.jsonl")),
        keep_camera_image: kinds.contains(&sink::SinkKind::Mcap) || a.foxglove.is_some(),
        live: Some(live),
    };
    let report = pipeline::run_supervised(src, be, sinks, &opts, updates)?;
    log::info!("done ({}): {}", report.ended_by, report.line());
    let al = &report.allocations;
    if al.measured && al.frames_counted > 0 {
        log::info!(
            "allocations per frame after warm-up ({} frames): capture {:.2}, inference (own) {:.2}, backend {:.2}, sinks {:.2}",
            al.frames_counted,
            al.capture_per_frame,
            al.inference_own_per_frame,
            al.backend_per_frame,
            al.sink_per_frame
        );
    }
    if let Some(d) = al.device_after_warmup {
        log::info!("device allocations after warm-up: {d}");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if report.ended_by.starts_with("source failed") {
        anyhow::bail!("{}", report.ended_by);
    }
    Ok(())
}

fn shared_dir(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("BEVRT_SHARED").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("../shared"))
}

fn cmd_bev_demo(a: BevDemoArgs) -> anyhow::Result<()> {
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

fn cmd_demo(a: DemoArgs) -> anyhow::Result<()> {
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

fn cmd_bench(a: BenchArgs) -> anyhow::Result<()> {
    let bundle = Bundle::load(&a.bundle)?;
    let opts = backend_opts(a.threads, a.int8_kernels);
    let mut be = backend::open(a.backend, &bundle, &opts)?;
    let spec = &bundle.manifest.input;
    let (w, h) = match &a.frame_size {
        Some(s) => {
            let (w, h) = s
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                .with_context(|| format!("--frame-size '{s}': expected WxH, e.g. 640x480"))?;
            (w, h)
        }
        None => (spec.width, spec.height),
    };
    let frame = bench::synthetic_frame(w, h);
    let mut base = match &a.baseline {
        Some(p) => {
            let b = Bundle::load(p)?;
            if b.manifest.input.shape() != spec.shape() {
                anyhow::bail!(
                    "{}: baseline input {:?} differs from the bundle's {:?}",
                    p.display(),
                    b.manifest.input.shape(),
                    spec.shape()
                );
            }
            let be = backend::open(a.backend, &b, &opts)?;
            Some((b.manifest.name.clone(), be))
        }
        None => None,
    };
    let (r, rb) = match base.as_mut() {
        Some((_, b)) => {
            let (r, rb) = bench::run_pair(be.as_mut(), b.as_mut(), &frame, a.frames, a.warmup)?;
            (r, Some(rb))
        }
        None => (bench::run(be.as_mut(), &frame, a.frames, a.warmup)?, None),
    };
    let peer = if a.peer_onnxruntime {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/ort_peer.py");
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            opts.threads
        };
        // Every network of the bundle (encoder and head for bev), each at its input shape;
        // the peer's time is their sum (bevrt's view transform and pre/post are not in it).
        let roles: &[&str] = if bundle.manifest.task == bevrt_models::Task::Bev {
            &["encoder", "head"]
        } else {
            &["model"]
        };
        let mut total: Option<bench::PeerReport> = None;
        for role in roles {
            let model = bundle
                .model_path(role)
                .with_context(|| format!("bundle has no '{role}' file"))?;
            let shape: Vec<usize> = if *role == "head" {
                let s = bevrt_models::inspect(&model)?;
                s.inputs[0]
                    .dims
                    .iter()
                    .map(|d| d.unwrap_or(1).max(1) as usize)
                    .collect()
            } else {
                spec.shape().to_vec()
            };
            let p = bench::run_ort_peer(&script, &model, &shape, threads, a.frames, a.warmup)?;
            total = Some(match total {
                None => p,
                Some(mut t) => {
                    t.mean_ms += p.mean_ms;
                    t.p50_ms += p.p50_ms;
                    t.p99_ms += p.p99_ms;
                    t
                }
            });
        }
        total
    } else {
        None
    };
    let source = a
        .source
        .as_deref()
        .map(|s| bench::source_rate(s, 100_000))
        .transpose()?;
    // The FMA peak the per-layer rates are judged against, on the engine's thread count.
    let peak = match (r.layers.is_empty(), be.cpu_threads()) {
        (false, Some(t)) => Some(bench::fma_peak(t)),
        _ => None,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"bevrt": r, "peer": peer,
                "baseline": rb, "source": source, "fma_peak": peak}))?
        );
        return Ok(());
    }
    if let Some(s) = &source {
        println!(
            "source {}: {} frames in {:.2} s = {:.0} frames/s ({:.0} MB/s, {} bad), {:.1}x the bundle's {:.0} frames/s",
            s.source,
            s.frames,
            s.seconds,
            s.fps,
            s.megabytes_per_s,
            s.errors,
            s.fps / r.fps.max(1e-9),
            r.fps
        );
    }
    println!(
        "bundle {} on {} ({} frames, frame {})",
        bundle.manifest.name, r.backend, r.frames, r.frame
    );
    println!("stage          mean ms   p50 ms   p99 ms   max ms");
    for (n, s) in [
        ("preprocess", r.preprocess),
        ("inference", r.inference),
        ("postprocess", r.postprocess),
        ("total", r.total),
    ] {
        println!(
            "{n:<12} {:>9.3} {:>8.3} {:>8.3} {:>8.3}",
            s.mean_ms, s.p50_ms, s.p99_ms, s.max_ms
        );
    }
    for (n, ms) in &r.inference_split {
        println!("  inference: {n:<16} mean {ms:.3} ms");
    }
    println!("throughput {:.1} frames/s", r.fps);
    if let Some(pk) = &peak {
        print_layers(&r.layers, pk, a.layers);
    }
    if let (Some(b), Some((name, _))) = (&rb, &base) {
        println!(
            "baseline {name}: inference mean {:.3} ms, p50 {:.3} ms | this / baseline = {:.2}x (p50), {:.2}x (mean)",
            b.inference.mean_ms,
            b.inference.p50_ms,
            r.inference.p50_ms / b.inference.p50_ms,
            r.inference.mean_ms / b.inference.mean_ms
        );
        for (n, ms) in &b.inference_split {
            println!("  baseline inference: {n:<16} mean {ms:.3} ms");
        }
    }
    if let Some(p) = peer {
        println!(
            "peer {} {} ({} threads): mean {:.3} ms, p50 {:.3} ms | bevrt inference / peer = {:.2}x (p50), {:.2}x (mean)",
            p.peer,
            p.version,
            p.threads,
            p.mean_ms,
            p.p50_ms,
            r.inference.p50_ms / p.p50_ms,
            r.inference.mean_ms / p.mean_ms
        );
        if !r.layers.is_empty() {
            // the same networks alone (bevrt's inference also holds the view transform and
            // the copy of the outputs out of the engine, which the peer's time does not)
            let nets: f64 = r.layers.iter().map(|l| l.mean_ms).sum();
            println!(
                "  networks alone (sum of cpu engine steps, mean): {nets:.3} ms | / peer mean = {:.2}x",
                nets / p.mean_ms
            );
        }
    }
    Ok(())
}

/// The slowest `top` layers (all with 0) of a CPU-engine run, with GFLOP/s as a share of
/// the measured FMA peak on the same thread count.
fn print_layers(layers: &[bench::LayerReport], pk: &bevrt_kernels::cpu::peak::FmaPeak, top: usize) {
    let peak = if pk.threads > 1 {
        pk.gflops_all
    } else {
        pk.gflops_1
    };
    let total: f64 = layers.iter().map(|l| l.mean_ms).sum();
    println!(
        "cpu engine: {} steps, {:.3} ms; FMA peak measured now ({}): {:.1} GFLOP/s on 1 thread, {:.1} on {}",
        layers.len(),
        total,
        pk.isa.name(),
        pk.gflops_1,
        pk.gflops_all,
        pk.threads
    );
    let mut order: Vec<&bench::LayerReport> = layers.iter().collect();
    order.sort_by(|a, b| b.mean_ms.total_cmp(&a.mean_ms));
    let shown = if top == 0 {
        order.len()
    } else {
        top.min(order.len())
    };
    println!(
        "  network  step                             kernel                 ms    share  GFLOP/s  of peak"
    );
    for l in &order[..shown] {
        let rate = if l.gflops > 0.0 {
            format!("{:>8.1}  {:>6.1} %", l.gflops, 100.0 * l.gflops / peak)
        } else {
            "       -        -".into()
        };
        println!(
            "  {:<8} {:<32} {:<20} {:>6.3} {:>6.1} % {rate}",
            l.network,
            truncate(&l.name, 32),
            l.kernel,
            l.mean_ms,
            100.0 * l.mean_ms / total.max(1e-12)
        );
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n - 1).collect();
        format!("{t}…")
    }
}

fn cmd_info(a: InfoArgs) -> anyhow::Result<()> {
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
            "not built in: --features v4l"
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

fn cmd_conformance(a: ConformanceArgs) -> anyhow::Result<()> {
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
        let s = conformance::summarize(&results);
        println!(
            "{} passed, {} failed, {} skipped (kernel plan on the CPU twins, FP16)",
            s.passed, s.failed, s.skipped
        );
        return Ok(());
    }
    if a.backend == BackendKind::CpuPlan {
        let cases = conformance::list_cases(&a.suite, a.filter.as_deref())?;
        let threads = a.threads.unwrap_or(1);
        let mut exec = |p: &bevrt_kernels::plan::KernelPlan, x: &[&[f32]]| {
            bevrt_kernels::cpu::CpuPlan::run_once(p, x, threads)
        };
        let results =
            conformance::run_suite_plan(&cases, bevrt_kernels::plan::DType::F32, &mut exec, print);
        let s = conformance::summarize(&results);
        println!(
            "{} passed, {} failed, {} skipped (cpu-plan, {}, {threads} thread(s))",
            s.passed,
            s.failed,
            s.skipped,
            bevrt_kernels::cpu::isa::Isa::detect().name()
        );
        return Ok(());
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
        let s = conformance::summarize(&results);
        println!(
            "{} passed, {} failed, {} skipped (cuda, sm_{})",
            s.passed, s.failed, s.skipped, gpu.sm
        );
        return Ok(());
    }
    log::info!("conformance on cpu ({})", probe.summary());
    let cases = conformance::list_cases(&a.suite, a.filter.as_deref())?;
    let results = conformance::run_suite(&cases, print);
    let s = conformance::summarize(&results);
    println!(
        "{} passed, {} failed, {} skipped",
        s.passed, s.failed, s.skipped
    );
    Ok(())
}
