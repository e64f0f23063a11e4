//! `bevrt-tool quantize`: INT8 post-training quantization of a bundle into explicit Q/DQ
//! ONNX files, calibrated on frames run through the runtime's own path (preprocess, and for
//! BEV bundles encoder → view transform → head), with a per-layer sensitivity report.
//!
//! The graph work (folding, Q/DQ placement, range methods) is `bevrt_models::quant`; this
//! file gathers frames, runs the observers, evaluates variants and writes the bundle.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bevrt_models::quant::{self, ActType, Method, Observer, QParams, QuantPlan};
use bevrt_models::{Bundle, Task, write_bundle};
use bevrt_runtime::backend::cpu::CpuBackend;
use bevrt_runtime::preprocess::PreprocessPlan;
use bevrt_runtime::{Backend, BackendOptions, Frame, SourceStatus};
use clap::{Args, ValueEnum};
use prost::Message;
use serde::Serialize;
use tract_onnx::pb;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MethodArg {
    Minmax,
    Percentile,
    Entropy,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ActArg {
    /// int8 symmetric, zero point 0 (TensorRT).
    Int8,
    /// uint8 asymmetric with a zero point (ONNX Runtime's default).
    Uint8,
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The FP32 bundle to quantize.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Calibration frames: a recording (or a folder of recordings), a folder of images, or
    /// a folder of / one `.npy` file of preprocessed tensors in the bundle's input shape.
    #[arg(long, conflicts_with = "calib_source")]
    pub calib_data: Option<PathBuf>,
    /// Calibration frames from a source spec (`sim:...`, `replay:DIR`, `images:GLOB`, `v4l:...`).
    #[arg(long)]
    pub calib_source: Option<String>,
    /// Calibration frames to use (fewer when the data has fewer).
    #[arg(long, default_value_t = 200)]
    pub frames: usize,
    #[arg(long, value_enum)]
    pub method: MethodArg,
    /// Percentile of |x| kept by `--method percentile`.
    #[arg(long, default_value_t = 99.99)]
    pub percentile: f32,
    /// One weight scale per output channel (the default).
    #[arg(long, overrides_with = "per_tensor")]
    pub per_channel: bool,
    /// One weight scale per weight tensor.
    #[arg(long)]
    pub per_tensor: bool,
    #[arg(long, value_enum, default_value_t = ActArg::Int8)]
    pub activations: ActArg,
    /// Nodes to keep in FP32 (`NODE` or `ROLE/NODE`, as the report names them).
    #[arg(long, num_args = 1..)]
    pub keep_fp: Vec<String>,
    /// Measure each layer's sensitivity (only that layer quantized).
    #[arg(long)]
    pub sensitivity: bool,
    /// Keep the K most sensitive layers in FP32 (implies --sensitivity).
    #[arg(long)]
    pub auto_keep: Option<usize>,
    /// Held-out recordings with BEV ground truth: mIoU of FP32 and INT8 (and per layer with
    /// --sensitivity).
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Frames of --eval-data scored per sensitivity variant (the final scores use all).
    #[arg(long, default_value_t = 50)]
    pub sensitivity_frames: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
}

/// One network of the bundle, prepared for quantization.
struct Net {
    role: String,
    file: String,
    model: pb::ModelProto,
    plan: QuantPlan,
    passes: Vec<String>,
    /// Outputs the original model has (observed tensors come after them).
    base_outputs: usize,
}

#[derive(Debug, Serialize)]
struct LayerSensitivity {
    layer: String,
    op: String,
    /// Relative RMS error of the bundle's output with only this layer quantized.
    output_rel_rmse: f64,
    /// For classifiers: share of frames whose argmax changed.
    argmax_changed: Option<f64>,
    /// For BEV bundles with --eval-data: mIoU change in points (negative = worse).
    miou_delta: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    bundle: String,
    out: String,
    method: Method,
    per_channel: bool,
    activations: ActType,
    calibration_frames: usize,
    calibration_data: String,
    calibration_seconds: f64,
    graph_passes: Vec<String>,
    quantized_layers: Vec<String>,
    kept_fp: Vec<String>,
    float_ops: Vec<String>,
    refused: Vec<String>,
    sensitivity: Vec<LayerSensitivity>,
    /// Whole-model error of the written INT8 bundle against FP32 on the calibration frames.
    output_rel_rmse: f64,
    argmax_agreement: Option<f64>,
    fp32_miou: Option<f64>,
    int8_miou: Option<f64>,
}

pub fn quantize(args: &QuantizeArgs) -> Result<()> {
    let t_start = std::time::Instant::now();
    let bundle = Bundle::load(&args.bundle)?;
    if args.out.exists() {
        bail!(
            "{}: already exists; refusing to overwrite",
            args.out.display()
        );
    }
    let method = match args.method {
        MethodArg::Minmax => Method::MinMax,
        MethodArg::Percentile => {
            if !(50.0..100.0).contains(&args.percentile) {
                bail!("--percentile {}: expected 50 <= p < 100", args.percentile);
            }
            Method::Percentile {
                percentile: args.percentile,
            }
        }
        MethodArg::Entropy => Method::Entropy,
    };
    let act = match args.activations {
        ActArg::Int8 => ActType::Int8,
        ActArg::Uint8 => ActType::Uint8,
    };
    if act == ActType::Uint8 && method == Method::Entropy {
        bail!(
            "--method entropy is TensorRT's symmetric calibration; use --activations int8, or minmax/percentile for uint8"
        );
    }
    let per_channel = !args.per_tensor;
    if args.eval_data.is_some() && bundle.manifest.task != Task::Bev {
        bail!(
            "--eval-data scores BEV bundles; '{}' is a {} bundle",
            args.bundle.display(),
            bundle.manifest.task
        );
    }

    // Calibration frames first: a bad calibration set fails before any work.
    let (inputs, source_name, source_calibration) = calibration_inputs(args, &bundle)?;
    eprintln!(
        "quantize: {} calibration frames from {source_name}",
        inputs.len()
    );

    let nets = prepare_nets(&bundle, &args.keep_fp)?;
    let unknown: Vec<&String> = args
        .keep_fp
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

    let work = tempdir("bevrt-quantize")?;
    let result = (|| -> Result<Report> {
        let observers = observe(
            &bundle,
            &nets,
            &inputs,
            method,
            act,
            &work,
            source_calibration.as_deref(),
        )?;
        let t_cal = t_start.elapsed().as_secs_f64();
        let params: Vec<HashMap<String, QParams>> = nets
            .iter()
            .zip(&observers)
            .map(|(n, obs)| n.plan.qparams(&quant::calibrate(obs, method), act))
            .collect();
        let probe: Vec<Vec<f32>> = inputs.iter().take(32).cloned().collect();
        let fp32 = Outputs::of(&bundle, &probe, source_calibration.as_deref())?;
        let mut sensitivity = vec![];
        let mut auto_kept: HashSet<String> = HashSet::new();
        if args.sensitivity || args.auto_keep.is_some() {
            sensitivity = measure_sensitivity(
                &bundle,
                &nets,
                &params,
                per_channel,
                &probe,
                &fp32,
                args,
                &work,
                source_calibration.as_deref(),
            )?;
            if let Some(k) = args.auto_keep {
                let mut by: Vec<&LayerSensitivity> = sensitivity.iter().collect();
                by.sort_by(|a, b| sensitivity_key(b).total_cmp(&sensitivity_key(a)));
                auto_kept = by.iter().take(k).map(|s| s.layer.clone()).collect();
            }
            print_sensitivity(&sensitivity);
        }
        // The bundle as asked: every planned layer except the auto-kept ones.
        let mut models = vec![];
        let mut quantized_layers = vec![];
        for (n, p) in nets.iter().zip(&params) {
            let only: HashSet<String> = n
                .plan
                .layers
                .iter()
                .filter(|l| !auto_kept.contains(&format!("{}/{}", n.role, l.name)))
                .map(|l| l.name.clone())
                .collect();
            quantized_layers.extend(only.iter().map(|l| format!("{}/{l}", n.role)));
            let q = n.plan.quantize(&n.model, p, Some(&only), per_channel)?;
            models.push((n.role.clone(), n.file.clone(), q.encode_to_vec()));
        }
        quantized_layers.sort();
        let staged = work.join("final");
        derive_bundle(&bundle, &models, &staged, None)?;
        let int8 = Outputs::of(
            &Bundle::load(&staged)?,
            &probe,
            source_calibration.as_deref(),
        )?;
        let (rel, agree) = int8.compare(&fp32);
        let (mut fp32_miou, mut int8_miou) = (None, None);
        if let Some(ed) = &args.eval_data {
            let a = bevrt_train::letsmap::eval::evaluate(
                &bundle.dir,
                ed,
                bevrt_runtime::BackendKind::Cpu,
                None,
            )?;
            let b = bevrt_train::letsmap::eval::evaluate(
                &staged,
                ed,
                bevrt_runtime::BackendKind::Cpu,
                None,
            )?;
            fp32_miou = Some(a.miou);
            int8_miou = Some(b.miou);
        }
        let mut kept_fp: Vec<String> = nets
            .iter()
            .flat_map(|n| n.plan.kept.iter().map(move |l| format!("{}/{l}", n.role)))
            .chain(auto_kept.iter().cloned())
            .collect();
        kept_fp.sort();
        let mut float_ops = vec![];
        let mut refused = vec![];
        let mut graph_passes = vec![];
        for n in &nets {
            for (op, c) in &n.plan.float_ops {
                float_ops.push(format!("{}: {op} x{c}", n.role));
            }
            for (l, why) in &n.plan.refused {
                refused.push(format!("{}/{l}: {why}", n.role));
            }
            graph_passes.extend(n.passes.iter().map(|p| format!("{}: {p}", n.role)));
        }
        Ok(Report {
            bundle: args.bundle.display().to_string(),
            out: args.out.display().to_string(),
            method,
            per_channel,
            activations: act,
            calibration_frames: inputs.len(),
            calibration_data: source_name.clone(),
            calibration_seconds: t_cal,
            graph_passes,
            quantized_layers,
            kept_fp,
            float_ops,
            refused,
            sensitivity,
            output_rel_rmse: rel,
            argmax_agreement: agree,
            fp32_miou,
            int8_miou,
        })
    })();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    // Final write: manifest with the quantization recipe, then one rename into place.
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
    let final_models: Vec<(String, String, Vec<u8>)> = {
        let staged = Bundle::load(work.join("final"))?;
        nets.iter()
            .map(|n| {
                let p = staged
                    .model_path(&n.role)
                    .expect("staged bundle has every role");
                Ok((n.role.clone(), n.file.clone(), std::fs::read(&p)?))
            })
            .collect::<Result<_>>()?
    };
    let written = derive_bundle(&bundle, &final_models, &args.out, Some(prov));
    let _ = std::fs::remove_dir_all(&work);
    written?;
    bevrt_train::record_selftest(&args.out);
    print_report(&report);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("{}: cannot write report", path.display()))?;
    }
    eprintln!(
        "wrote {} ({} layers INT8, {} kept FP32) in {:.1} s",
        args.out.display(),
        report.quantized_layers.len(),
        report.kept_fp.len(),
        t_start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn sensitivity_key(s: &LayerSensitivity) -> f64 {
    // mIoU loss ranks first where measured; output error otherwise.
    match s.miou_delta {
        Some(d) => -d * 1e3 + s.output_rel_rmse,
        None => s.output_rel_rmse,
    }
}

fn tempdir(what: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).with_context(|| format!("{}: cannot create", d.display()))?;
    Ok(d)
}

fn prepare_nets(bundle: &Bundle, keep_fp: &[String]) -> Result<Vec<Net>> {
    let mut nets = vec![];
    // The networks the backend runs per frame, in its order; other files (generators,
    // probe heads) are copied as they are.
    let roles: &[&str] = if bundle.manifest.task == Task::Bev {
        &["encoder", "head"]
    } else {
        &["model"]
    };
    for role in roles {
        let m = bundle
            .manifest
            .model(role)
            .with_context(|| format!("{}: no '{role}' model", bundle.dir.display()))?;
        let path = bundle.dir.join(&m.file);
        let mut model = bevrt_models::read_proto(&path)?;
        let base_outputs = model.graph.as_ref().map(|g| g.output.len()).unwrap_or(0);
        let passes = quant::prepare(&mut model, &path.display().to_string())?;
        let keep: Vec<String> = keep_fp
            .iter()
            .map(|k| {
                k.strip_prefix(&format!("{}/", m.role))
                    .unwrap_or(k)
                    .to_string()
            })
            .collect();
        let plan = QuantPlan::new(&model, &keep);
        nets.push(Net {
            role: m.role.clone(),
            file: m.file.clone(),
            model,
            plan,
            passes,
            base_outputs,
        });
    }
    Ok(nets)
}

/// A copy of `src` with some model files replaced (bytes), written atomically to `out`.
fn derive_bundle(
    src: &Bundle,
    models: &[(String, String, Vec<u8>)],
    out: &Path,
    quantization: Option<toml::Table>,
) -> Result<Bundle> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = parent.join(format!(
        ".{}.files-{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("bundle"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("{}: cannot create", staging.display()))?;
    let r = (|| -> Result<Bundle> {
        let mut manifest = src.manifest.clone();
        // The parent's test vectors describe the parent; the caller records new ones.
        manifest.selftest = None;
        let mut files = vec![];
        // Every file the manifest names (models, calibration, AFV data), replaced or copied.
        for m in src.manifest.files() {
            let replaced = src.manifest.models.iter().any(|x| x.file == m.file);
            match models
                .iter()
                .find(|(role, _, _)| replaced && *role == m.role)
            {
                Some((_, name, bytes)) => {
                    let p = staging.join(name);
                    std::fs::write(&p, bytes).with_context(|| format!("{}", p.display()))?;
                    files.push((p, name.clone()));
                }
                None => files.push((src.dir.join(&m.file), m.file.clone())),
            }
        }
        if let Some(q) = quantization {
            manifest.name = format!("{}-int8", manifest.name);
            manifest.description = format!("{} (INT8 Q/DQ)", manifest.description);
            // FP32 scores do not describe the INT8 model; the quantization table has its own.
            if let Some(old) = manifest.provenance.remove("scores") {
                manifest.provenance.insert("fp32_scores".into(), old);
            }
            manifest
                .provenance
                .insert("quantization".into(), toml::Value::Table(q));
        }
        Ok(write_bundle(out, manifest, &files)?)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    r
}

/// Preprocessed calibration tensors, a name for the data, and the calibration file that came
/// with it (a recording's camera), if any.
fn calibration_inputs(
    args: &QuantizeArgs,
    bundle: &Bundle,
) -> Result<(Vec<Vec<f32>>, String, Option<PathBuf>)> {
    let spec = &bundle.manifest.input;
    let numel = spec.numel();
    let (sources, name): (Vec<String>, String) = match (&args.calib_data, &args.calib_source) {
        (None, None) => bail!(
            "{}: no calibration data: give --calib-data DIR (recordings, images or .npy tensors) or --calib-source SPEC",
            bundle.dir.display()
        ),
        (Some(_), Some(_)) => bail!("give --calib-data or --calib-source, not both"),
        (None, Some(s)) => (vec![s.clone()], s.clone()),
        (Some(d), None) => {
            if !d.exists() {
                bail!("{}: calibration data not found", d.display());
            }
            let npys: Vec<PathBuf> = if d.is_file() {
                vec![d.clone()]
            } else {
                let mut v: Vec<PathBuf> = std::fs::read_dir(d)
                    .with_context(|| format!("{}: cannot read", d.display()))?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "npy"))
                    .collect();
                v.sort();
                v
            };
            if !npys.is_empty() {
                let mut inputs = vec![];
                let want = spec.shape();
                for f in npys {
                    let (shape, data) = bevrt_runtime::npy::read_f32(&f).map_err(|e| {
                        anyhow::anyhow!("{}: not a float32 .npy tensor: {e}", f.display())
                    })?;
                    let per_ok = shape.len() >= 3 && shape[shape.len() - 3..] == want[1..];
                    if !per_ok || (shape.len() == 4 && data.len() % numel != 0) || shape.len() > 4 {
                        bail!(
                            "{}: tensor shape {shape:?} does not match the bundle's input {want:?} (expected [N, {}, {}, {}])",
                            f.display(),
                            want[1],
                            want[2],
                            want[3]
                        );
                    }
                    for c in data.chunks_exact(numel) {
                        if inputs.len() < args.frames {
                            inputs.push(c.to_vec());
                        }
                    }
                }
                return Ok((inputs, d.display().to_string(), None));
            }
            let mut recs = vec![];
            if d.join("recording.toml").is_file() {
                recs.push(d.clone());
            } else if d.is_dir() {
                for e in std::fs::read_dir(d)?.flatten() {
                    if e.path().join("recording.toml").is_file() {
                        recs.push(e.path());
                    }
                }
                recs.sort();
            }
            if !recs.is_empty() {
                (
                    recs.iter()
                        .map(|r| format!("replay:{}", r.display()))
                        .collect(),
                    d.display().to_string(),
                )
            } else {
                (
                    vec![format!("images:{}/*", d.display())],
                    d.display().to_string(),
                )
            }
        }
    };
    let mut inputs = Vec::with_capacity(args.frames);
    let mut plan: Option<PreprocessPlan> = None;
    let mut frame = Frame::with_capacity(0);
    let mut calibration = None;
    let cal_size = bundle
        .manifest
        .calibration
        .as_ref()
        .map(|c| bevrt_calib::Calibration::load(bundle.dir.join(&c.file)))
        .transpose()?
        .map(|c| (c.camera.width(), c.camera.height()));
    let pb = bevrt_train::progress::progress(args.frames as u64, "frames     ");
    'outer: for s in &sources {
        let mut src = bevrt_runtime::source::open(s)?;
        if let Some(c) = src.calibration_path() {
            calibration.get_or_insert(c);
        }
        let mut bad = 0usize;
        while inputs.len() < args.frames {
            match src.next_frame(&mut frame) {
                Ok(SourceStatus::End) => break,
                Ok(SourceStatus::Frame) => {}
                Err(e) if e.is_recoverable() && bad < 10 => {
                    bad += 1;
                    log::warn!("calibration frame skipped: {e}");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            let size = (frame.width, frame.height);
            // A BEV bundle's geometry is for one camera: frames of another size (with no
            // calibration of their own) would calibrate ranges the model never sees.
            if calibration.is_none()
                && let Some((w, h)) = cal_size
                && (w, h) != size
            {
                bail!(
                    "{s}: frames are {}x{}, the bundle's camera calibration is for {w}x{h}",
                    size.0,
                    size.1
                );
            }
            if plan.as_ref().map(|p| p.input_size()) != Some(size) {
                plan = Some(PreprocessPlan::new(spec, size.0, size.1));
            }
            let mut t = vec![0f32; numel];
            plan.as_ref().expect("set above").run(&frame, &mut t);
            inputs.push(t);
            pb.inc(1);
            if inputs.len() >= args.frames {
                break 'outer;
            }
        }
    }
    pb.finish_and_clear();
    if inputs.is_empty() {
        bail!("{name}: no calibration frames could be read");
    }
    Ok((inputs, name, calibration))
}

fn open_backend(bundle: &Bundle, calibration: Option<&Path>) -> Result<CpuBackend> {
    let mut b = CpuBackend::load(bundle, &BackendOptions::default())?;
    if let Some(c) = calibration
        && bundle.manifest.task == Task::Bev
    {
        b.set_calibration(c)?;
    }
    Ok(b)
}

/// Run the calibration frames through a copy of the bundle whose networks also output every
/// tensor the plans quantize; two passes (ranges, then histograms over those ranges).
fn observe(
    bundle: &Bundle,
    nets: &[Net],
    inputs: &[Vec<f32>],
    method: Method,
    act: ActType,
    work: &Path,
    calibration: Option<&Path>,
) -> Result<Vec<HashMap<String, Observer>>> {
    let models: Vec<(String, String, Vec<u8>)> = nets
        .iter()
        .map(|n| {
            (
                n.role.clone(),
                n.file.clone(),
                quant::with_observers(&n.model, &n.plan.tensors()).encode_to_vec(),
            )
        })
        .collect();
    let dir = work.join("observed");
    let observed = derive_bundle(bundle, &models, &dir, None)?;
    let mut backend = open_backend(&observed, calibration)?;
    let symmetric = act == ActType::Int8;
    let mut obs: Vec<HashMap<String, Observer>> = nets
        .iter()
        .map(|n| {
            n.plan
                .tensors()
                .into_iter()
                .map(|t| (t, Observer::new(symmetric)))
                .collect()
        })
        .collect();
    let tensors: Vec<Vec<String>> = nets.iter().map(|n| n.plan.tensors()).collect();
    let passes = if method.needs_histogram() { 2 } else { 1 };
    let pb = bevrt_train::progress::progress((inputs.len() * passes) as u64, "calibrate  ");
    for pass in 0..passes {
        for x in inputs {
            backend.set_input(x)?;
            backend.infer()?;
            for (((role, outs), (n, o)), ts) in backend
                .network_outputs()
                .into_iter()
                .zip(nets.iter().zip(obs.iter_mut()))
                .zip(&tensors)
            {
                debug_assert_eq!(role, n.role);
                for (t, out) in ts.iter().zip(&outs[n.base_outputs..]) {
                    let ob = o.get_mut(t).expect("observer per tensor");
                    if pass == 0 {
                        ob.observe_range(&out.data);
                    } else {
                        ob.observe_hist(&out.data);
                    }
                }
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    for (n, o) in nets.iter().zip(&obs) {
        for t in n.plan.tensors() {
            if !o[&t].has_range() {
                bail!(
                    "{}: tensor '{t}' held no finite value on any calibration frame",
                    n.role
                );
            }
        }
    }
    Ok(obs)
}

/// The bundle's final output on the probe inputs.
struct Outputs(Vec<Vec<f32>>);

impl Outputs {
    fn of(bundle: &Bundle, inputs: &[Vec<f32>], calibration: Option<&Path>) -> Result<Outputs> {
        let mut b = open_backend(bundle, calibration)?;
        let mut r = b.new_result();
        let mut out = vec![];
        for x in inputs {
            b.set_input(x)?;
            b.infer()?;
            b.postprocess(&mut r)?;
            out.push(r.outputs[0].data.clone());
        }
        Ok(Outputs(out))
    }

    /// Relative RMS error against `reference`, and (for vectors of a few classes) the share
    /// of inputs whose argmax agrees.
    fn compare(&self, reference: &Outputs) -> (f64, Option<f64>) {
        let (mut num, mut den) = (0f64, 0f64);
        let mut agree = 0usize;
        for (a, b) in self.0.iter().zip(&reference.0) {
            for (x, y) in a.iter().zip(b) {
                num += ((x - y) as f64).powi(2);
                den += (*y as f64).powi(2);
            }
            let am = |v: &[f32]| {
                v.iter()
                    .enumerate()
                    .max_by(|p, q| p.1.total_cmp(q.1))
                    .map(|(i, _)| i)
            };
            agree += usize::from(am(a) == am(b));
        }
        let rel = (num / den.max(f64::MIN_POSITIVE)).sqrt();
        let small = reference.0.first().is_some_and(|v| v.len() <= 1000);
        (
            rel,
            small.then(|| agree as f64 / self.0.len().max(1) as f64),
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn measure_sensitivity(
    bundle: &Bundle,
    nets: &[Net],
    params: &[HashMap<String, QParams>],
    per_channel: bool,
    probe: &[Vec<f32>],
    fp32: &Outputs,
    args: &QuantizeArgs,
    work: &Path,
    calibration: Option<&Path>,
) -> Result<Vec<LayerSensitivity>> {
    let total: usize = nets.iter().map(|n| n.plan.layers.len()).sum();
    let base_miou = match &args.eval_data {
        Some(ed) => Some(
            bevrt_train::letsmap::eval::evaluate(
                &bundle.dir,
                ed,
                bevrt_runtime::BackendKind::Cpu,
                Some(args.sensitivity_frames),
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
            let miou_delta = match (&args.eval_data, base_miou) {
                (Some(ed), Some(base)) => Some(
                    bevrt_train::letsmap::eval::evaluate(
                        &dir,
                        ed,
                        bevrt_runtime::BackendKind::Cpu,
                        Some(args.sensitivity_frames),
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

fn print_sensitivity(s: &[LayerSensitivity]) {
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

fn print_report(r: &Report) {
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
