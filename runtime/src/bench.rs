//! `bevrt bench`: per-stage latency on a synthetic frame, optionally beside ONNX Runtime
//! running the same model file with the same thread count in the same run.

use crate::backend::Backend;
use crate::frame::{Frame, PixelFormat};
use crate::metrics::Histogram;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub frame: String,
    pub frames: usize,
    pub preprocess: crate::metrics::StageSummary,
    pub inference: crate::metrics::StageSummary,
    pub postprocess: crate::metrics::StageSummary,
    pub total: crate::metrics::StageSummary,
    pub fps: f64,
    /// Mean ms per call of the backend's sub-stages of inference (timed frames only).
    pub inference_split: Vec<(String, f64)>,
    /// Per layer of the networks on bevrt's CPU kernels (timed frames only), in plan order.
    pub layers: Vec<LayerReport>,
}

/// One step of a kernel plan on the CPU engine.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub network: String,
    pub name: String,
    pub kernel: String,
    pub mean_ms: f64,
    /// Achieved GFLOP/s (GOP/s for INT8; 2 per multiply-add), 0 for data movement.
    pub gflops: f64,
}

/// The machine's FMA peak for the CPU engine's widest unit on `threads` threads (measured).
pub fn fma_peak(threads: usize) -> bevrt_kernels::cpu::peak::FmaPeak {
    let pool = bevrt_kernels::cpu::pool::shared(threads);
    bevrt_kernels::cpu::peak::measure(bevrt_kernels::cpu::isa::Isa::detect(), &pool)
}

/// A deterministic test-card frame (gradients and a checker) of the given size.
pub fn synthetic_frame(width: u32, height: u32) -> Frame {
    let mut f = Frame::with_capacity(PixelFormat::Rgb8.frame_bytes(width, height));
    f.reset(PixelFormat::Rgb8, width, height);
    for y in 0..height as usize {
        for x in 0..width as usize {
            let i = (y * width as usize + x) * 3;
            let checker = if ((x / 16) + (y / 16)) % 2 == 0 {
                40
            } else {
                0
            };
            f.data[i] = ((x * 255) / width as usize) as u8;
            f.data[i + 1] = ((y * 255) / height as usize) as u8;
            f.data[i + 2] = 128u8.wrapping_add(checker);
        }
    }
    f
}

/// Histograms of one backend's stages while it is being timed.
struct Timing<'a> {
    backend: &'a mut dyn Backend,
    result: crate::postprocess::FrameResult,
    h: [Histogram; 4],
    before: Vec<(&'static str, u64, u64)>,
    seconds: f64,
}

impl<'a> Timing<'a> {
    fn new(backend: &'a mut dyn Backend, frame: &Frame, warmup: usize) -> anyhow::Result<Self> {
        let mut result = backend.new_result();
        for _ in 0..warmup {
            backend.preprocess(frame)?;
            backend.infer()?;
            backend.postprocess(&mut result)?;
        }
        backend.reset_layer_profile();
        let before = backend.sub_stages();
        Ok(Timing {
            backend,
            result,
            h: Default::default(),
            before,
            seconds: 0.0,
        })
    }

    fn frame(&mut self, frame: &Frame) -> anyhow::Result<()> {
        let t0 = Instant::now();
        self.backend.preprocess(frame)?;
        let t1 = Instant::now();
        self.backend.infer()?;
        let t2 = Instant::now();
        self.backend.postprocess(&mut self.result)?;
        let t3 = Instant::now();
        for (h, d) in self.h.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2, t3 - t0]) {
            h.record(d.as_nanos() as u64);
        }
        self.seconds += (t3 - t0).as_secs_f64();
        Ok(())
    }

    fn report(self, frame: &Frame, frames: usize) -> BenchReport {
        let inference_split = self
            .backend
            .sub_stages()
            .into_iter()
            .zip(
                self.before
                    .into_iter()
                    .map(Some)
                    .chain(std::iter::repeat(None)),
            )
            .map(|((n, ns, c), b)| {
                let (ns0, c0) = b.map_or((0, 0), |(_, a, b)| (a, b));
                (
                    n.to_string(),
                    (ns - ns0) as f64 / 1e6 / (c - c0).max(1) as f64,
                )
            })
            .collect();
        let layers = self
            .backend
            .layer_profile()
            .into_iter()
            .map(|(net, p)| {
                let s = p.ns as f64 / 1e9 / p.calls.max(1) as f64;
                LayerReport {
                    network: net.to_string(),
                    name: p.name,
                    kernel: p.kernel,
                    mean_ms: s * 1e3,
                    gflops: if s > 0.0 { p.ops / s / 1e9 } else { 0.0 },
                }
            })
            .collect();
        let [hp, hi, ho, ht] = self.h;
        BenchReport {
            backend: self.backend.describe(),
            frame: format!("{}x{} {}", frame.width, frame.height, frame.format),
            frames,
            preprocess: hp.summary(),
            inference: hi.summary(),
            postprocess: ho.summary(),
            total: ht.summary(),
            fps: frames as f64 / self.seconds.max(1e-9),
            inference_split,
            layers,
        }
    }
}

pub fn run(
    backend: &mut dyn Backend,
    frame: &Frame,
    frames: usize,
    warmup: usize,
) -> anyhow::Result<BenchReport> {
    let mut t = Timing::new(backend, frame, warmup)?;
    for _ in 0..frames {
        t.frame(frame)?;
    }
    Ok(t.report(frame, frames))
}

/// Time two backends frame by frame alternately (e.g. an INT8 bundle and its FP32 original),
/// so load changes on the machine hit both alike.
pub fn run_pair(
    a: &mut dyn Backend,
    b: &mut dyn Backend,
    frame: &Frame,
    frames: usize,
    warmup: usize,
) -> anyhow::Result<(BenchReport, BenchReport)> {
    let mut ta = Timing::new(a, frame, warmup)?;
    let mut tb = Timing::new(b, frame, warmup)?;
    for _ in 0..frames {
        ta.frame(frame)?;
        tb.frame(frame)?;
    }
    Ok((ta.report(frame, frames), tb.report(frame, frames)))
}

/// ONNX Runtime's numbers for the same model, from `runtime/bench/ort_peer.py`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerReport {
    pub peer: String,
    pub version: String,
    pub threads: usize,
    pub iters: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The ONNX Runtime peer (`runtime/bench/ort_peer.py`), built into the binary so an installed
/// `bevrt` runs it without the source tree.
pub const ORT_PEER_SCRIPT: &str = include_str!("../bench/ort_peer.py");

/// Run the ONNX Runtime peer script on `model` with `shape`; needs python3 + onnxruntime.
pub fn run_ort_peer(
    model: &std::path::Path,
    shape: &[usize],
    threads: usize,
    iters: usize,
    warmup: usize,
) -> anyhow::Result<PeerReport> {
    let shape_s = shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = std::process::Command::new("python3")
        .args(["-c", ORT_PEER_SCRIPT, "--model"])
        .arg(model)
        .args(["--shape", &shape_s])
        .args(["--threads", &threads.to_string()])
        .args(["--iters", &iters.to_string()])
        .args(["--warmup", &warmup.to_string()])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run python3 for the ONNX Runtime peer: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "ONNX Runtime peer failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s.lines().last().unwrap_or("");
    serde_json::from_str(line).map_err(|e| anyhow::anyhow!("peer output '{line}': {e}"))
}

/// How fast a source delivers frames with nothing downstream: frames, errors and seconds.
#[derive(Debug, Clone, Serialize)]
pub struct SourceRate {
    pub source: String,
    pub frames: u64,
    pub errors: u64,
    pub seconds: f64,
    pub fps: f64,
    pub megabytes_per_s: f64,
}

/// Read `spec` to its end (or `max_frames`) as fast as it goes; bad frames are counted.
pub fn source_rate(spec: &str, max_frames: u64) -> anyhow::Result<SourceRate> {
    let mut src = crate::source::open(spec)?;
    let mut frame = Frame::with_capacity(src.max_frame_bytes().unwrap_or(1920 * 1080 * 3));
    let (mut frames, mut errors, mut bytes) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    while frames < max_frames {
        match src.next_frame(&mut frame) {
            Ok(crate::source::SourceStatus::Frame) => {
                frames += 1;
                bytes += frame.data.len() as u64;
            }
            Ok(crate::source::SourceStatus::End) => break,
            Err(e) if e.is_recoverable() => errors += 1,
            Err(e) => return Err(e.into()),
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(SourceRate {
        source: src.describe(),
        frames,
        errors,
        seconds,
        fps: frames as f64 / seconds.max(1e-9),
        megabytes_per_s: bytes as f64 / 1e6 / seconds.max(1e-9),
    })
}
