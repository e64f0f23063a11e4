//! `bevrt run`: a bundle (or a store's active slot) on a frame source, into sinks.

use crate::args::{backend_opts, choice};
use anyhow::Context;
use bevrt_models::Bundle;
use bevrt_runtime::backend::{self, BackendKind};
use bevrt_runtime::{pipeline, sink, source, supervisor};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct RunArgs {
    /// TOML file whose keys are these flags (e.g. `store = "/var/lib/bevrt/store"`,
    /// `sinks = ["jsonl"]`, `trial-frames = 30`); flags given here override it. The service
    /// reads /etc/bevrt/bevrt.toml.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
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
    /// mcap:BAG?topic=/camera/image_raw[&info=/camera/camera_info][&fps=N|&realtime][&tf=static];
    /// with the gst feature: gst:PIPELINE (bevrt appends its appsink), rtsp://URL,
    /// video:FILE[?fps=N|?realtime].
    #[arg(long)]
    source: String,
    #[arg(long, default_value = "auto", value_parser = choice::<BackendKind>())]
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
    #[arg(long, value_delimiter = ',', value_parser = choice::<sink::SinkKind>())]
    sinks: Vec<sink::SinkKind>,
    /// Calibration file to watch: a change is applied between frames without restarting.
    /// Defaults to the recording's calibration for replay sources, and to a bag's CameraInfo
    /// and /tf_static for mcap sources.
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5.0)]
    report_every: f64,
    /// Serve the run live to Foxglove (WebSocket protocol) on PORT (127.0.0.1) or HOST:PORT, e.g.
    /// 127.0.0.1:8765: camera, BEV map and grid, results, at most 20 Hz. A slow viewer loses
    /// viewer messages (counted), never frames.
    #[arg(long, value_name = "HOST:PORT")]
    foxglove: Option<String>,
    /// Serve Prometheus /metrics and /healthz on PORT (127.0.0.1) or HOST:PORT, e.g. 9090.
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

/// `--calib` given the camera YAML `calibrate` writes: one line naming it and the command that
/// makes the calibration TOML a run reads.
fn refuse_camera_yaml(calib: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(c) = calib
        && c.extension().is_some_and(|e| e == "yaml" || e == "yml")
    {
        anyhow::bail!(
            "{}: --calib takes a calibration TOML (camera and extrinsics), not a camera YAML; \
             join it with the mounting: bevrt-tool calib-merge --camera {} --extrinsics EXT.toml --out calibration.toml",
            c.display(),
            c.display()
        );
    }
    Ok(())
}

pub fn cmd_run(a: RunArgs) -> anyhow::Result<()> {
    if let Some(c) = &a.config {
        log::info!(
            "settings from {} (flags given on the command line override it)",
            c.display()
        );
    }
    let given = match (&a.store, &a.bundle) {
        (None, Some(dir)) => Some(load_bundle(&a, dir)?),
        (None, None) => anyhow::bail!("--bundle or --store is required"),
        _ => None,
    };
    refuse_camera_yaml(a.calib.as_deref())?;
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
    live.set_model_expiry(&bundle);
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
    bevrt_runtime::serve::systemd::spawn(live.clone())?;
    let opts = pipeline::PipelineOptions {
        max_frames: a.max_frames,
        duration: a.duration.map(Duration::from_secs_f64),
        report_every: Duration::from_secs_f64(a.report_every.max(0.1)),
        calibration: calib,
        sink_delay: Duration::from_millis(a.fault_sink_delay_ms),
        sink_stall: sink_stall(&a.fault_sink_stall)?,
        metrics_out: Some(a.out.join("metrics.jsonl")),
        keep_camera_image: kinds.iter().any(|k| k.shows_camera()) || a.foxglove.is_some(),
        live: Some(live),
    };
    bevrt_runtime::shutdown::catch_stop_signals();
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
