//! The bundle's networks prepared for quantization, and bundles derived from it.

use anyhow::{Context, Result};
use bevrt_models::quant::{self, QuantPlan};
use bevrt_models::{Bundle, Task, write_bundle};
use std::path::{Path, PathBuf};
use tract_onnx::pb;

/// One network of the bundle, prepared for quantization.
pub(crate) struct Net {
    pub(crate) role: String,
    pub(crate) file: String,
    pub(crate) model: pb::ModelProto,
    pub(crate) plan: QuantPlan,
    pub(crate) passes: Vec<String>,
    /// Outputs the original model has (observed tensors come after them).
    pub(crate) base_outputs: usize,
}

pub(crate) fn tempdir(what: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).with_context(|| format!("{}: cannot create", d.display()))?;
    Ok(d)
}

pub(crate) fn prepare_nets(bundle: &Bundle, keep_fp: &[String]) -> Result<Vec<Net>> {
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
pub(crate) fn derive_bundle(
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
