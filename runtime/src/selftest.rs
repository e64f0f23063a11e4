//! The on-device self-test: before a new bundle goes live, feed the test frame it carries
//! (`[selftest]` in the manifest) through this machine's backend, exactly as a camera frame
//! goes (preprocess, network, postprocess), and compare every raw output with the vectors the
//! reference CPU path recorded when the bundle was made.
//!
//! Tolerance: per output, max |actual − expected| ≤ `tolerance` · max(1, max |expected|). The
//! default 0.05 admits FP16 and INT8 backends and refuses a different network (whose outputs
//! differ at full scale). BEV bundles also require `min_class_agreement` of map cells to keep
//! their class (near-ties may flip on a lower-precision backend).

use crate::backend::{self, Backend, BackendKind, BackendOptions};
use crate::frame::{Frame, PixelFormat};
use anyhow::Context;
use bevrt_models::bundle::SelfTest;
use bevrt_models::{Bundle, ModelFile, Task};
use std::path::Path;

/// Default share of max(1, max |expected|) an output may deviate by.
pub const DEFAULT_TOLERANCE: f32 = 0.05;
/// Default share of BEV cells whose class must agree.
pub const DEFAULT_CLASS_AGREEMENT: f32 = 0.97;
const FRAME_FILE: &str = "selftest/frame.png";

/// What a passing self-test measured.
#[derive(Debug, Clone)]
pub struct SelfTestReport {
    /// Per output: (max |difference|, allowed).
    pub outputs: Vec<(f32, f32)>,
    /// bev: share of cells whose class agreed.
    pub class_agreement: Option<f32>,
}

impl SelfTestReport {
    pub fn line(&self) -> String {
        let outs: Vec<String> = self
            .outputs
            .iter()
            .map(|(d, t)| format!("{d:.2e} (allowed {t:.2e})"))
            .collect();
        let mut s = format!("max difference per output: {}", outs.join(", "));
        if let Some(a) = self.class_agreement {
            s += &format!("; class agreement {:.2} %", a * 100.0);
        }
        s
    }
}

/// A deterministic RGB8 test image: smooth gradients, a few discs and a checker patch, so
/// every channel and both image halves carry structure (not just a flat colour).
pub fn test_image(width: u32, height: u32) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let mut rgb = vec![0u8; w * h * 3];
    let discs = [
        (0.3f32, 0.6f32, 0.12f32, [220u8, 40, 40]),
        (0.7, 0.4, 0.18, [40, 200, 60]),
        (0.5, 0.8, 0.08, [30, 60, 230]),
    ];
    for y in 0..h {
        for x in 0..w {
            let (u, v) = ((x as f32 + 0.5) / w as f32, (y as f32 + 0.5) / h as f32);
            let mut px = [
                (255.0 * u) as u8,
                (255.0 * v) as u8,
                (128.0 + 100.0 * (6.0 * u + 3.0 * v).sin()) as u8,
            ];
            for (cx, cy, r, c) in discs {
                if (u - cx).powi(2) + ((v - cy) * h as f32 / w as f32).powi(2) < r * r {
                    px = c;
                }
            }
            if u > 0.85 && v < 0.25 && ((x / 4 + y / 4) % 2 == 0) {
                px = [250, 250, 250];
            }
            rgb[(y * w + x) * 3..][..3].copy_from_slice(&px);
        }
    }
    rgb
}

/// Run one RGB8 frame through `backend`; returns the result it gives the sinks.
fn run_frame(
    backend: &mut dyn Backend,
    rgb: &[u8],
    width: u32,
    height: u32,
) -> anyhow::Result<crate::postprocess::FrameResult> {
    let mut frame = Frame::with_capacity(rgb.len());
    frame.reset(PixelFormat::Rgb8, width, height);
    frame.data.copy_from_slice(rgb);
    backend.preprocess(&frame)?;
    backend.infer()?;
    let mut out = backend.new_result();
    backend.postprocess(&mut out)?;
    Ok(out)
}

/// Record self-test vectors into a bundle a command just wrote, logging the outcome; a
/// failure is reported, not fatal (the bundle is complete without them).
pub fn record_or_warn(dir: &Path) {
    match record(dir, DEFAULT_TOLERANCE) {
        Ok(st) => log::info!(
            "{}: self-test vectors recorded ({} outputs)",
            dir.display(),
            st.outputs.len()
        ),
        Err(e) => log::warn!("{}: no self-test vectors recorded: {e:#}", dir.display()),
    }
}

/// Record test vectors for the bundle at `dir` with the CPU reference backend, write them
/// into the bundle and its manifest (atomically). A signature made before is no longer valid
/// afterwards: record, then sign.
pub fn record(dir: &Path, tolerance: f32) -> anyhow::Result<SelfTest> {
    let bundle = Bundle::load(dir)?;
    let m = &bundle.manifest;
    let (w, h) = (m.input.width, m.input.height);
    let rgb = test_image(w, h);
    let mut be = backend::open(
        BackendKind::Cpu,
        &bundle,
        &BackendOptions {
            threads: 1,
            ..Default::default()
        },
    )?;
    let result = run_frame(&mut *be, &rgb, w, h).with_context(|| {
        format!(
            "{}: the reference backend failed on the test frame",
            dir.display()
        )
    })?;
    let st_dir = dir.join("selftest");
    std::fs::create_dir_all(&st_dir)
        .with_context(|| format!("{}: cannot create", st_dir.display()))?;
    let frame_path = dir.join(FRAME_FILE);
    image::RgbImage::from_raw(w, h, rgb)
        .context("test image size")?
        .save(&frame_path)
        .with_context(|| format!("{}: cannot write", frame_path.display()))?;
    let mut outputs = vec![];
    for (i, o) in result.outputs.iter().enumerate() {
        let name = format!("selftest/output{i}.npy");
        let p = dir.join(&name);
        let mut buf = vec![];
        crate::npy::write_f32(&mut buf, &o.shape, &o.data)?;
        std::fs::write(&p, &buf).with_context(|| format!("{}: cannot write", p.display()))?;
        outputs.push(file_entry(dir, "selftest_output", &name)?);
    }
    let st = SelfTest {
        frame: file_entry(dir, "selftest_frame", FRAME_FILE)?,
        outputs,
        tolerance,
        min_class_agreement: (m.task == Task::Bev).then_some(DEFAULT_CLASS_AGREEMENT),
        recorded_with: format!("bevrt {} {}", env!("CARGO_PKG_VERSION"), be.describe()),
    };
    let mut manifest = m.clone();
    manifest.selftest = Some(st.clone());
    let mpath = dir.join(bevrt_models::bundle::MANIFEST_FILE);
    manifest.validate(&mpath)?;
    bevrt_models::store::write_atomically(&mpath, manifest.to_toml().as_bytes())
        .with_context(|| format!("{}: cannot write", mpath.display()))?;
    let sig = dir.join(bevrt_models::signature::SIGNATURE_FILE);
    if sig.exists() {
        std::fs::remove_file(&sig)
            .with_context(|| format!("{}: cannot remove the stale signature", sig.display()))?;
        log::warn!(
            "{}: removed the signature of the old manifest; sign the bundle again",
            sig.display()
        );
    }
    Ok(st)
}

fn file_entry(dir: &Path, role: &str, name: &str) -> anyhow::Result<ModelFile> {
    Ok(ModelFile {
        role: role.into(),
        file: name.into(),
        sha256: bevrt_models::sha256_file(&dir.join(name))?,
    })
}

/// Run the bundle's self-test on `backend` (`Ok(None)`: the bundle carries none). An error
/// names the file and the output that disagreed, and by how much.
pub fn check(backend: &mut dyn Backend, bundle: &Bundle) -> anyhow::Result<Option<SelfTestReport>> {
    let Some(st) = &bundle.manifest.selftest else {
        return Ok(None);
    };
    let frame_path = bundle.dir.join(&st.frame.file);
    let img = image::open(&frame_path)
        .with_context(|| format!("{}: cannot read the self-test frame", frame_path.display()))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    let result = run_frame(backend, img.as_raw(), w, h).with_context(|| {
        format!(
            "{}: self-test: the backend failed on the test frame",
            bundle.dir.display()
        )
    })?;
    if result.outputs.len() != st.outputs.len() {
        anyhow::bail!(
            "{}: self-test: the backend gives {} outputs, the bundle recorded {}",
            bundle.dir.display(),
            result.outputs.len(),
            st.outputs.len()
        );
    }
    let mut report = SelfTestReport {
        outputs: vec![],
        class_agreement: None,
    };
    for (i, (actual, f)) in result.outputs.iter().zip(&st.outputs).enumerate() {
        let p = bundle.dir.join(&f.file);
        let (shape, expected) = crate::npy::read_f32(&p).map_err(|e| anyhow::anyhow!(e))?;
        if shape.iter().product::<usize>() != actual.data.len() {
            anyhow::bail!(
                "{}: self-test output {i}: recorded shape {shape:?}, the backend gives {:?}",
                p.display(),
                actual.shape
            );
        }
        let scale = expected.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        let allowed = st.tolerance * scale;
        let diff = actual
            .data
            .iter()
            .zip(&expected)
            .map(|(a, e)| {
                if a.is_nan() || e.is_nan() {
                    f32::INFINITY
                } else {
                    (a - e).abs()
                }
            })
            .fold(0.0f32, f32::max);
        if diff > allowed {
            anyhow::bail!(
                "{}: self-test output {i} ('{}') differs by up to {diff:.3e}, allowed {allowed:.3e}: this backend does not compute what the bundle recorded ({})",
                p.display(),
                actual.name,
                st.recorded_with
            );
        }
        report.outputs.push((diff, allowed));
    }
    if let Some(min) = st.min_class_agreement {
        report.class_agreement = Some(class_agreement(&result, &st.outputs, bundle, min)?);
    }
    Ok(Some(report))
}

/// BEV: share of cells whose argmax over the recorded logits equals the backend's class map.
fn class_agreement(
    result: &crate::postprocess::FrameResult,
    outputs: &[ModelFile],
    bundle: &Bundle,
    min: f32,
) -> anyhow::Result<f32> {
    let p = bundle.dir.join(&outputs[0].file);
    let (shape, logits) = crate::npy::read_f32(&p).map_err(|e| anyhow::anyhow!(e))?;
    let [1, k, rows, cols] = shape[..] else {
        anyhow::bail!(
            "{}: self-test BEV logits of shape {shape:?}, expected (1, K, H, W)",
            p.display()
        );
    };
    let cells = rows * cols;
    if result.class_map.len() != cells {
        anyhow::bail!(
            "{}: the backend's class map has {} cells, the recorded logits {cells}",
            p.display(),
            result.class_map.len()
        );
    }
    let mut agree = 0usize;
    let mut counted = 0usize;
    for c in 0..cells {
        let got = result.class_map[c];
        if got == 255 {
            continue; // unseen cells are reported as unknown, not classified
        }
        let best = (0..k)
            .max_by(|&a, &b| logits[a * cells + c].total_cmp(&logits[b * cells + c]))
            .unwrap_or(0);
        counted += 1;
        agree += (best == got as usize) as usize;
    }
    let share = if counted == 0 {
        1.0
    } else {
        agree as f32 / counted as f32
    };
    if share < min {
        anyhow::bail!(
            "{}: self-test: {:.1} % of map cells keep their class, {:.1} % required",
            p.display(),
            share * 100.0,
            min * 100.0
        );
    }
    Ok(share)
}
