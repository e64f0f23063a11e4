//! Calibration frames (recordings, images, `.npy` tensors or a source spec) through the
//! runtime's own preprocess, and the observers that record each quantized tensor's range.

use crate::config::QuantizeConfig;
use crate::nets::{Net, derive_bundle};
use crate::outputs::open_backend;
use anyhow::{Context, Result, bail};
use bevrt_models::Bundle;
use bevrt_models::quant::{self, ActType, Method, Observer};
use bevrt_runtime::preprocess::PreprocessPlan;
use bevrt_runtime::{Backend, Frame, SourceStatus};
use prost::Message;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Preprocessed calibration tensors, a name for the data, and the calibration file that came
/// with it (a recording's camera), if any.
pub(crate) fn calibration_inputs(
    cfg: &QuantizeConfig,
    bundle: &Bundle,
) -> Result<(Vec<Vec<f32>>, String, Option<PathBuf>)> {
    let spec = &bundle.manifest.input;
    let (sources, name): (Vec<String>, String) = match (&cfg.calib_data, &cfg.calib_source) {
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
                let inputs = read_npy_tensors(&npys, spec, cfg.frames)?;
                return Ok((inputs, bevrt_models::bundle::path_label(d), None));
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
                    bevrt_models::bundle::path_label(d),
                )
            } else {
                (
                    vec![format!("images:{}/*", d.display())],
                    bevrt_models::bundle::path_label(d),
                )
            }
        }
    };
    let (inputs, calibration) = read_frames(&sources, bundle, cfg.frames)?;
    if inputs.is_empty() {
        bail!("{name}: no calibration frames could be read");
    }
    Ok((inputs, name, calibration))
}

/// Preprocessed tensors from `.npy` files in the bundle's input shape, at most `frames`.
fn read_npy_tensors(
    npys: &[PathBuf],
    spec: &bevrt_models::InputSpec,
    frames: usize,
) -> Result<Vec<Vec<f32>>> {
    let numel = spec.numel();
    let mut inputs = vec![];
    let want = spec.shape();
    for f in npys {
        let (shape, data) = bevrt_runtime::npy::read_f32(f)
            .map_err(|e| anyhow::anyhow!("{}: not a float32 .npy tensor: {e}", f.display()))?;
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
            if inputs.len() < frames {
                inputs.push(c.to_vec());
            }
        }
    }
    Ok(inputs)
}

/// Up to `frames` frames from the sources, through the runtime's preprocess; the first
/// source's own calibration file, if any.
fn read_frames(
    sources: &[String],
    bundle: &Bundle,
    frames: usize,
) -> Result<(Vec<Vec<f32>>, Option<PathBuf>)> {
    let spec = &bundle.manifest.input;
    let numel = spec.numel();
    let mut inputs = Vec::with_capacity(frames);
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
    let pb = bevrt_train::progress::progress(frames as u64, "frames     ");
    'outer: for s in sources {
        let mut src = bevrt_runtime::source::open(s)?;
        if let Some(c) = src.calibration_path() {
            calibration.get_or_insert(c);
        }
        let mut bad = 0usize;
        while inputs.len() < frames {
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
            if inputs.len() >= frames {
                break 'outer;
            }
        }
    }
    pb.finish_and_clear();
    Ok((inputs, calibration))
}

/// Run the calibration frames through a copy of the bundle whose networks also output every
/// tensor the plans quantize; two passes (ranges, then histograms over those ranges).
pub(crate) fn observe(
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
