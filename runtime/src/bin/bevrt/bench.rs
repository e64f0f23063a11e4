//! `bevrt bench`: per-stage latency, beside ONNX Runtime or a baseline bundle.

use crate::args::{backend_opts, choice};
use anyhow::Context;
use bevrt_models::Bundle;
use bevrt_runtime::backend::{self, BackendKind, BackendOptions};
use bevrt_runtime::bench;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long, default_value_t = 200)]
    frames: usize,
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    #[arg(long, default_value = "auto", value_parser = choice::<BackendKind>())]
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

pub fn cmd_bench(a: BenchArgs) -> anyhow::Result<()> {
    let bundle = Bundle::load(&a.bundle)?;
    let opts = backend_opts(a.threads, a.int8_kernels);
    let mut be = backend::open(a.backend, &bundle, &opts)?;
    let spec = &bundle.manifest.input;
    let (w, h) = frame_size(&a, spec)?;
    let frame = bench::synthetic_frame(w, h);
    let mut base = open_baseline(&a, spec, &opts)?;
    let (r, rb) = match base.as_mut() {
        Some((_, b)) => {
            let (r, rb) = bench::run_pair(be.as_mut(), b.as_mut(), &frame, a.frames, a.warmup)?;
            (r, Some(rb))
        }
        None => (bench::run(be.as_mut(), &frame, a.frames, a.warmup)?, None),
    };
    let peer = if a.peer_onnxruntime {
        Some(run_peer(&a, &bundle, &opts)?)
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
    let baseline = rb
        .as_ref()
        .zip(base.as_ref().map(|(name, _)| name.as_str()));
    print_bench(
        &a,
        &bundle,
        &r,
        source.as_ref(),
        peak.as_ref(),
        baseline,
        peer,
    );
    Ok(())
}

/// `--frame-size WxH`, or the bundle's input size.
fn frame_size(a: &BenchArgs, spec: &bevrt_models::InputSpec) -> anyhow::Result<(u32, u32)> {
    Ok(match &a.frame_size {
        Some(s) => {
            let (w, h) = s
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                .with_context(|| format!("--frame-size '{s}': expected WxH, e.g. 640x480"))?;
            (w, h)
        }
        None => (spec.width, spec.height),
    })
}

/// `--baseline`: the other bundle, opened on the same backend, with its name.
fn open_baseline(
    a: &BenchArgs,
    spec: &bevrt_models::InputSpec,
    opts: &BackendOptions,
) -> anyhow::Result<Option<(String, Box<dyn bevrt_runtime::Backend>)>> {
    Ok(match &a.baseline {
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
            let be = backend::open(a.backend, &b, opts)?;
            Some((b.manifest.name.clone(), be))
        }
        None => None,
    })
}

/// ONNX Runtime on every network of the bundle (encoder and head for bev), each at its input
/// shape, on the same thread count; the peer's time is their sum (bevrt's view transform and
/// pre/post are not in it).
fn run_peer(
    a: &BenchArgs,
    bundle: &Bundle,
    opts: &BackendOptions,
) -> anyhow::Result<bench::PeerReport> {
    let spec = &bundle.manifest.input;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.threads
    };
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
        let p = bench::run_ort_peer(&model, &shape, threads, a.frames, a.warmup)?;
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
    total.context("the bundle has no network")
}

/// The human-readable report: source rate, per-stage latency, slowest layers, baseline and
/// peer ratios.
#[allow(clippy::too_many_arguments)]
fn print_bench(
    a: &BenchArgs,
    bundle: &Bundle,
    r: &bench::BenchReport,
    source: Option<&bench::SourceRate>,
    peak: Option<&bevrt_kernels::cpu::peak::FmaPeak>,
    baseline: Option<(&bench::BenchReport, &str)>,
    peer: Option<bench::PeerReport>,
) {
    if let Some(s) = source {
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
    if let Some(pk) = peak {
        print_layers(&r.layers, pk, a.layers);
    }
    if let Some((b, name)) = baseline {
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
