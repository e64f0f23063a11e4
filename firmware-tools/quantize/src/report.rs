//! What a quantization did, printed and written as JSON.

use crate::sensitivity::LayerSensitivity;
use bevrt_models::quant::{ActType, Method};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) bundle: String,
    pub(crate) out: String,
    pub(crate) method: Method,
    pub(crate) per_channel: bool,
    pub(crate) activations: ActType,
    pub(crate) calibration_frames: usize,
    pub(crate) calibration_data: String,
    pub(crate) calibration_seconds: f64,
    pub(crate) graph_passes: Vec<String>,
    pub(crate) quantized_layers: Vec<String>,
    pub(crate) kept_fp: Vec<String>,
    pub(crate) float_ops: Vec<String>,
    pub(crate) refused: Vec<String>,
    pub(crate) sensitivity: Vec<LayerSensitivity>,
    /// Whole-model error of the written INT8 bundle against FP32 on the calibration frames.
    pub(crate) output_rel_rmse: f64,
    pub(crate) argmax_agreement: Option<f64>,
    pub(crate) fp32_miou: Option<f64>,
    pub(crate) int8_miou: Option<f64>,
}

pub(crate) fn print_report(r: &Report) {
    println!(
        "quantize: {} → {}: method {}, weights {}, activations {:?}, {} calibration frames ({:.1} s)",
        r.bundle,
        r.out,
        r.method,
        if r.per_channel {
            "per-channel"
        } else {
            "per-tensor"
        },
        r.activations,
        r.calibration_frames,
        r.calibration_seconds
    );
    // One line per kind of rewrite (node names dropped; the JSON report has them all).
    let mut kinds: Vec<(String, usize)> = vec![];
    for p in &r.graph_passes {
        let generic: String = p
            .split('\'')
            .enumerate()
            .map(|(i, part)| if i % 2 == 1 { "…" } else { part })
            .collect::<Vec<_>>()
            .join("'");
        match kinds.iter_mut().find(|(k, _)| *k == generic) {
            Some((_, n)) => *n += 1,
            None => kinds.push((generic, 1)),
        }
    }
    for (k, n) in kinds {
        if n > 1 {
            println!("  pass: {k} (x{n})");
        } else {
            println!("  pass: {k}");
        }
    }
    println!("  INT8 layers: {}", r.quantized_layers.len());
    if !r.kept_fp.is_empty() {
        println!("  kept FP32: {}", r.kept_fp.join(", "));
    }
    if !r.float_ops.is_empty() {
        println!(
            "  ops that run in float between Q/DQ: {}",
            r.float_ops.join(", ")
        );
    }
    for f in &r.refused {
        println!("  not quantized: {f}");
    }
    print!(
        "  INT8 vs FP32 output: relative RMSE {:.5}",
        r.output_rel_rmse
    );
    if let Some(a) = r.argmax_agreement {
        print!(", argmax agreement {:.1} %", a * 100.0);
    }
    println!();
    if let (Some(a), Some(b)) = (r.fp32_miou, r.int8_miou) {
        println!(
            "  mIoU on the eval data: FP32 {a:.2}, INT8 {b:.2} ({:+.2})",
            b - a
        );
    }
}
