//! Per-layer sensitivity: the bundle's output (and mIoU) with only one layer quantized.

use crate::config::QuantizeConfig;
use crate::nets::{Net, derive_bundle};
use crate::outputs::Outputs;
use anyhow::Result;
use bevrt_models::Bundle;
use bevrt_models::quant::QParams;
use prost::Message;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::Path;

#[derive(Debug, Serialize)]
pub(crate) struct LayerSensitivity {
    pub(crate) layer: String,
    pub(crate) op: String,
    /// Relative RMS error of the bundle's output with only this layer quantized.
    pub(crate) output_rel_rmse: f64,
    /// For classifiers: share of frames whose argmax changed.
    pub(crate) argmax_changed: Option<f64>,
    /// For BEV bundles with --eval-data: mIoU change in points (negative = worse).
    pub(crate) miou_delta: Option<f64>,
}

pub(crate) fn sensitivity_key(s: &LayerSensitivity) -> f64 {
    // mIoU loss ranks first where measured; output error otherwise.
    match s.miou_delta {
        Some(d) => -d * 1e3 + s.output_rel_rmse,
        None => s.output_rel_rmse,
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn measure_sensitivity(
    bundle: &Bundle,
    nets: &[Net],
    params: &[HashMap<String, QParams>],
    per_channel: bool,
    probe: &[Vec<f32>],
    fp32: &Outputs,
    cfg: &QuantizeConfig,
    work: &Path,
    calibration: Option<&Path>,
) -> Result<Vec<LayerSensitivity>> {
    let total: usize = nets.iter().map(|n| n.plan.layers.len()).sum();
    let base_miou = match &cfg.eval_data {
        Some(ed) => Some(
            bevrt_train::letsmap::eval::evaluate(
                &bundle.dir,
                ed,
                bevrt_runtime::BackendKind::Cpu,
                Some(cfg.sensitivity_frames),
            )?
            .miou,
        ),
        None => None,
    };
    let pb = bevrt_train::progress::progress(total as u64, "sensitivity");
    let mut out = vec![];
    let mut k = 0;
    for (ni, n) in nets.iter().enumerate() {
        for l in &n.plan.layers {
            k += 1;
            let only: HashSet<String> = [l.name.clone()].into();
            let q = n
                .plan
                .quantize(&n.model, &params[ni], Some(&only), per_channel)?;
            let dir = work.join(format!("layer-{k}"));
            let b = derive_bundle(
                bundle,
                &[(n.role.clone(), n.file.clone(), q.encode_to_vec())],
                &dir,
                None,
            )?;
            let o = Outputs::of(&b, probe, calibration)?;
            let (rel, agree) = o.compare(fp32);
            let miou_delta = match (&cfg.eval_data, base_miou) {
                (Some(ed), Some(base)) => Some(
                    bevrt_train::letsmap::eval::evaluate(
                        &dir,
                        ed,
                        bevrt_runtime::BackendKind::Cpu,
                        Some(cfg.sensitivity_frames),
                    )?
                    .miou
                        - base,
                ),
                _ => None,
            };
            out.push(LayerSensitivity {
                layer: format!("{}/{}", n.role, l.name),
                op: l.op.clone(),
                output_rel_rmse: rel,
                argmax_changed: agree.map(|a| 1.0 - a),
                miou_delta,
            });
            let _ = std::fs::remove_dir_all(&dir);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Ok(out)
}

pub(crate) fn print_sensitivity(s: &[LayerSensitivity]) {
    let mut by: Vec<&LayerSensitivity> = s.iter().collect();
    by.sort_by(|a, b| sensitivity_key(b).total_cmp(&sensitivity_key(a)));
    println!("sensitivity (only this layer INT8), most sensitive first:");
    println!(
        "  {:<40} {:<8} {:>12} {:>10} {:>10}",
        "layer", "op", "rel. RMSE", "argmax Δ", "mIoU Δ"
    );
    for l in by {
        println!(
            "  {:<40} {:<8} {:>12.5} {:>10} {:>10}",
            l.layer,
            l.op,
            l.output_rel_rmse,
            l.argmax_changed
                .map(|a| format!("{:.1} %", a * 100.0))
                .unwrap_or_else(|| "-".into()),
            l.miou_delta
                .map(|d| format!("{d:+.2}"))
                .unwrap_or_else(|| "-".into())
        );
    }
}
