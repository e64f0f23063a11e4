//! bevrt-quantize: INT8 post-training quantization of a bundle into explicit Q/DQ ONNX files,
//! calibrated on frames run through the runtime's own path (preprocess, and for BEV bundles
//! encoder → view transform → head), with a per-layer sensitivity report. `bevrt-tool
//! quantize` parses its flags into a [`QuantizeConfig`] and calls [`quantize`].
//!
//! The graph work (folding, Q/DQ placement, range methods) is `bevrt_models::quant`; this
//! crate gathers frames, runs the observers, evaluates variants and writes the bundle.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | what one quantization is asked to do |
//! | `nets` | the bundle's networks prepared for quantization; derived bundles |
//! | `calibration` | calibration frames through the runtime's preprocess; range observers |
//! | `outputs` | a bundle's output on probe inputs, compared with another's |
//! | `sensitivity` | each layer alone quantized: output error and mIoU change |
//! | `report` | what a quantization did, printed and as JSON |

mod calibration;
pub mod config;
mod nets;
mod outputs;
mod report;
mod sensitivity;

pub use config::{ActChoice, MethodChoice, QuantizeConfig};

use anyhow::{Context, Result, bail};
use bevrt_models::quant::{self, ActType, Method, QParams};
use bevrt_models::{Bundle, Task};
use calibration::{calibration_inputs, observe};
use nets::{Net, derive_bundle, prepare_nets, tempdir};
use outputs::Outputs;
use prost::Message;
use report::{Report, print_report};
use sensitivity::{LayerSensitivity, measure_sensitivity, print_sensitivity, sensitivity_key};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Quantize `cfg.bundle` into `cfg.out` (which must not exist): calibrate, optionally measure
/// each layer's sensitivity, write the bundle with its recipe and self-test vectors.
pub fn quantize(cfg: &QuantizeConfig) -> Result<()> {
    let t_start = std::time::Instant::now();
    let bundle = Bundle::load(&cfg.bundle)?;
    if cfg.out.exists() {
        bail!(
            "{}: already exists; refusing to overwrite",
            cfg.out.display()
        );
    }
    let (method, act) = checked_method(cfg, &bundle)?;
    let per_channel = !cfg.per_tensor;

    // Calibration frames first: a bad calibration set fails before any work.
    let (inputs, source_name, source_calibration) = calibration_inputs(cfg, &bundle)?;
    eprintln!(
        "quantize: {} calibration frames from {source_name}",
        inputs.len()
    );

    let nets = prepare_nets(&bundle, &cfg.keep_fp)?;
    check_keep_fp(&nets, &cfg.keep_fp)?;

    let work = tempdir("bevrt-quantize")?;
    let run = Calibrated {
        cfg,
        bundle: &bundle,
        nets: &nets,
        inputs: &inputs,
        method,
        act,
        per_channel,
        work: &work,
        calibration: source_calibration.as_deref(),
    };
    let report = match run.stage(t_start, &source_name) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    // Final write: manifest with the quantization recipe, then one rename into place.
    let prov = recipe(&report, method, per_channel, act);
    let written = final_models(&work, &nets)
        .and_then(|models| derive_bundle(&bundle, &models, &cfg.out, Some(prov)));
    let _ = std::fs::remove_dir_all(&work);
    written?;
    bevrt_runtime::selftest::record_or_warn(&cfg.out);
    print_report(&report);
    if let Some(path) = &cfg.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("{}: cannot write report", path.display()))?;
    }
    eprintln!(
        "wrote {} ({} layers INT8, {} kept FP32) in {:.1} s",
        cfg.out.display(),
        report.quantized_layers.len(),
        report.kept_fp.len(),
        t_start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The range method and activation type asked for, refused where they do not go together
/// or do not fit the bundle.
fn checked_method(cfg: &QuantizeConfig, bundle: &Bundle) -> Result<(Method, ActType)> {
    let method = match cfg.method {
        MethodChoice::Minmax => Method::MinMax,
        MethodChoice::Percentile => {
            if !(50.0..100.0).contains(&cfg.percentile) {
                bail!("--percentile {}: expected 50 <= p < 100", cfg.percentile);
            }
            Method::Percentile {
                percentile: cfg.percentile,
            }
        }
        MethodChoice::Entropy => Method::Entropy,
    };
    let act = match cfg.activations {
        ActChoice::Int8 => ActType::Int8,
        ActChoice::Uint8 => ActType::Uint8,
    };
    if act == ActType::Uint8 && method == Method::Entropy {
        bail!(
            "--method entropy is TensorRT's symmetric calibration; use --activations int8, or minmax/percentile for uint8"
        );
    }
    if cfg.eval_data.is_some() && bundle.manifest.task != Task::Bev {
        bail!(
            "--eval-data scores BEV bundles; '{}' is a {} bundle",
            cfg.bundle.display(),
            bundle.manifest.task
        );
    }
    Ok((method, act))
}

/// Every `--keep-fp` name must be a quantizable node of some network.
fn check_keep_fp(nets: &[Net], keep_fp: &[String]) -> Result<()> {
    let unknown: Vec<&String> = keep_fp
        .iter()
        .filter(|k| {
            !nets.iter().any(|n| {
                n.plan
                    .kept
                    .iter()
                    .any(|l| *k == l || **k == format!("{}/{l}", n.role))
            })
        })
        .collect();
    if !unknown.is_empty() {
        let names: Vec<String> = nets
            .iter()
            .flat_map(|n| {
                n.plan
                    .layers
                    .iter()
                    .map(move |l| format!("{}/{}", n.role, l.name))
            })
            .collect();
        bail!(
            "--keep-fp {unknown:?}: no quantizable node of that name (layers: {})",
            names.join(", ")
        );
    }
    Ok(())
}

/// One quantization after its inputs are read: what the staging steps share.
struct Calibrated<'a> {
    cfg: &'a QuantizeConfig,
    bundle: &'a Bundle,
    nets: &'a [Net],
    inputs: &'a [Vec<f32>],
    method: Method,
    act: ActType,
    per_channel: bool,
    work: &'a Path,
    calibration: Option<&'a Path>,
}

impl Calibrated<'_> {
    /// Observe ranges, measure sensitivity if asked, and stage the quantized bundle in
    /// `work/final`; the report of all of it.
    fn stage(&self, t_start: std::time::Instant, source_name: &str) -> Result<Report> {
        let observers = observe(
            self.bundle,
            self.nets,
            self.inputs,
            self.method,
            self.act,
            self.work,
            self.calibration,
        )?;
        let t_cal = t_start.elapsed().as_secs_f64();
        let params: Vec<HashMap<String, QParams>> = self
            .nets
            .iter()
            .zip(&observers)
            .map(|(n, obs)| {
                n.plan
                    .qparams(&quant::calibrate(obs, self.method), self.act)
            })
            .collect();
        let probe: Vec<Vec<f32>> = self.inputs.iter().take(32).cloned().collect();
        let fp32 = Outputs::of(self.bundle, &probe, self.calibration)?;
        let (sensitivity, auto_kept) = self.sensitivity(&params, &probe, &fp32)?;
        let quantized_layers = self.write_staged(&params, &auto_kept)?;
        let staged = self.work.join("final");
        let int8 = Outputs::of(&Bundle::load(&staged)?, &probe, self.calibration)?;
        let (rel, agree) = int8.compare(&fp32);
        let (fp32_miou, int8_miou) = self.eval_miou(&staged)?;
        let summary = plan_summary(self.nets, &auto_kept);
        Ok(Report {
            bundle: bevrt_models::bundle::path_label(&self.cfg.bundle),
            out: bevrt_models::bundle::path_label(&self.cfg.out),
            method: self.method,
            per_channel: self.per_channel,
            activations: self.act,
            calibration_frames: self.inputs.len(),
            calibration_data: source_name.to_string(),
            calibration_seconds: t_cal,
            graph_passes: summary.graph_passes,
            quantized_layers,
            kept_fp: summary.kept_fp,
            float_ops: summary.float_ops,
            refused: summary.refused,
            sensitivity,
            output_rel_rmse: rel,
            argmax_agreement: agree,
            fp32_miou,
            int8_miou,
        })
    }

    /// Each layer's sensitivity (when asked) and the `--auto-keep` most sensitive layers.
    fn sensitivity(
        &self,
        params: &[HashMap<String, QParams>],
        probe: &[Vec<f32>],
        fp32: &Outputs,
    ) -> Result<(Vec<LayerSensitivity>, HashSet<String>)> {
        let mut sensitivity = vec![];
        let mut auto_kept: HashSet<String> = HashSet::new();
        if self.cfg.sensitivity || self.cfg.auto_keep.is_some() {
            sensitivity = measure_sensitivity(
                self.bundle,
                self.nets,
                params,
                self.per_channel,
                probe,
                fp32,
                self.cfg,
                self.work,
                self.calibration,
            )?;
            if let Some(k) = self.cfg.auto_keep {
                let mut by: Vec<&LayerSensitivity> = sensitivity.iter().collect();
                by.sort_by(|a, b| sensitivity_key(b).total_cmp(&sensitivity_key(a)));
                auto_kept = by.iter().take(k).map(|s| s.layer.clone()).collect();
            }
            print_sensitivity(&sensitivity);
        }
        Ok((sensitivity, auto_kept))
    }

    /// The bundle as asked (every planned layer except the auto-kept ones) into
    /// `work/final`; the quantized layers' names, sorted.
    fn write_staged(
        &self,
        params: &[HashMap<String, QParams>],
        auto_kept: &HashSet<String>,
    ) -> Result<Vec<String>> {
        let mut models = vec![];
        let mut quantized_layers = vec![];
        for (n, p) in self.nets.iter().zip(params) {
            let only: HashSet<String> = n
                .plan
                .layers
                .iter()
                .filter(|l| !auto_kept.contains(&format!("{}/{}", n.role, l.name)))
                .map(|l| l.name.clone())
                .collect();
            quantized_layers.extend(only.iter().map(|l| format!("{}/{l}", n.role)));
            let q = n
                .plan
                .quantize(&n.model, p, Some(&only), self.per_channel)?;
            models.push((n.role.clone(), n.file.clone(), q.encode_to_vec()));
        }
        quantized_layers.sort();
        derive_bundle(self.bundle, &models, &self.work.join("final"), None)?;
        Ok(quantized_layers)
    }

    /// mIoU of the original and the staged bundle on `--eval-data`, when given.
    fn eval_miou(&self, staged: &Path) -> Result<(Option<f64>, Option<f64>)> {
        let Some(ed) = &self.cfg.eval_data else {
            return Ok((None, None));
        };
        let cpu = bevrt_runtime::BackendKind::Cpu;
        let a = bevrt_train::letsmap::eval::evaluate(&self.bundle.dir, ed, cpu, None)?;
        let b = bevrt_train::letsmap::eval::evaluate(staged, ed, cpu, None)?;
        Ok((Some(a.miou), Some(b.miou)))
    }
}

/// What stays float and why, per network.
struct PlanSummary {
    kept_fp: Vec<String>,
    float_ops: Vec<String>,
    refused: Vec<String>,
    graph_passes: Vec<String>,
}

fn plan_summary(nets: &[Net], auto_kept: &HashSet<String>) -> PlanSummary {
    let mut kept_fp: Vec<String> = nets
        .iter()
        .flat_map(|n| n.plan.kept.iter().map(move |l| format!("{}/{l}", n.role)))
        .chain(auto_kept.iter().cloned())
        .collect();
    kept_fp.sort();
    let mut float_ops = vec![];
    let mut refused = vec![];
    let mut graph_passes = vec![];
    for n in nets {
        for (op, c) in &n.plan.float_ops {
            float_ops.push(format!("{}: {op} x{c}", n.role));
        }
        for (l, why) in &n.plan.refused {
            refused.push(format!("{}/{l}: {why}", n.role));
        }
        graph_passes.extend(n.passes.iter().map(|p| format!("{}: {p}", n.role)));
    }
    PlanSummary {
        kept_fp,
        float_ops,
        refused,
        graph_passes,
    }
}

/// The manifest's quantization recipe.
fn recipe(report: &Report, method: Method, per_channel: bool, act: ActType) -> toml::Table {
    let mut prov = toml::Table::new();
    prov.insert("method".into(), method.to_string().into());
    prov.insert(
        "weights".into(),
        (if per_channel {
            "int8 symmetric per output channel"
        } else {
            "int8 symmetric per tensor"
        })
        .into(),
    );
    prov.insert(
        "activations".into(),
        (match act {
            ActType::Int8 => "int8 symmetric per tensor",
            ActType::Uint8 => "uint8 asymmetric per tensor",
        })
        .into(),
    );
    prov.insert(
        "calibration_frames".into(),
        (report.calibration_frames as i64).into(),
    );
    prov.insert(
        "calibration_data".into(),
        report.calibration_data.clone().into(),
    );
    prov.insert(
        "kept_fp".into(),
        toml::Value::Array(report.kept_fp.iter().map(|s| s.clone().into()).collect()),
    );
    prov.insert("output_rel_rmse".into(), report.output_rel_rmse.into());
    if let (Some(a), Some(b)) = (report.fp32_miou, report.int8_miou) {
        prov.insert("fp32_miou".into(), a.into());
        prov.insert("int8_miou".into(), b.into());
    }
    prov
}

/// The staged bundle's model files, read back for the final write.
fn final_models(work: &Path, nets: &[Net]) -> Result<Vec<(String, String, Vec<u8>)>> {
    let staged = Bundle::load(work.join("final"))?;
    nets.iter()
        .map(|n| {
            let p: PathBuf = staged
                .model_path(&n.role)
                .expect("staged bundle has every role");
            Ok((n.role.clone(), n.file.clone(), std::fs::read(&p)?))
        })
        .collect()
}
