//! Features through the runtime: `embed` (any features bundle over a dataset), `afv fit`
//! (Fisher statistics from generator samples, stored in the bundle) and `afv distance`
//! (between examples, sets, class halves and generator snapshots).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bevrt_models::{AfvSpec, Bundle, Manifest, ModelFile, Task};
use bevrt_runtime::backend::cpu::{CpuBackend, CpuNetwork};
use bevrt_runtime::{Backend, BackendOptions, Frame, PixelFormat};

use crate::digits::{self as data, Dataset};
use crate::rng::Rng;

/// A backend for a features bundle (one thread: these are many small frames).
pub fn open(bundle: &Bundle) -> Result<CpuBackend> {
    if bundle.manifest.task == Task::Bev {
        bail!(
            "{}: a bev bundle has no feature vector",
            bundle.dir.display()
        );
    }
    CpuBackend::load(
        bundle,
        &BackendOptions {
            threads: 1,
            ..Default::default()
        },
    )
}

/// The bundle's vector for each image of `ds` at `idx`, through the runtime's preprocess
/// (gray frames of the dataset's size, resized to the bundle's input).
pub fn embed_images(
    backend: &mut CpuBackend,
    ds: &Dataset,
    idx: &[usize],
    what: &str,
) -> Result<Vec<Vec<f32>>> {
    let mut frame = Frame::with_capacity(ds.width * ds.height);
    let mut r = backend.new_result();
    let pb = crate::progress::progress(idx.len() as u64, what);
    let mut out = Vec::with_capacity(idx.len());
    for &i in idx {
        frame.reset(PixelFormat::Gray8, ds.width as u32, ds.height as u32);
        frame.data.copy_from_slice(ds.image(i));
        backend.preprocess(&frame)?;
        backend.infer()?;
        backend.postprocess(&mut r)?;
        out.push(r.vector.clone());
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// Vectors of `n` generator samples: the bundle's generator ONNX (role `role`) runs in the
/// runtime, its image goes in as the preprocessed input (it is already in [-1, 1]).
pub fn embed_generator(
    backend: &mut CpuBackend,
    bundle: &Bundle,
    role: &str,
    n: usize,
    seed: u64,
) -> Result<Vec<Vec<f32>>> {
    let path = bundle
        .model_path(role)
        .with_context(|| format!("{}: no '{role}' model in the bundle", bundle.dir.display()))?;
    let mut g = CpuNetwork::load(&path, &[1, super::gan::Z])?;
    let mut img = g.output_buffers();
    let mut r = backend.new_result();
    let mut rng = Rng(seed);
    let pb = crate::progress::progress(n as u64, "generator");
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let z = crate::rng::normal(super::gan::Z, &mut rng);
        g.run(&z, &mut img)?;
        backend.set_input(&img[0].data)?;
        backend.infer()?;
        backend.postprocess(&mut r)?;
        out.push(r.vector.clone());
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

pub fn write_matrix(path: &Path, rows: &[Vec<f32>]) -> Result<()> {
    let d = rows.first().map_or(0, |r| r.len());
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path)
            .with_context(|| format!("{}: cannot create", path.display()))?,
    );
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    bevrt_runtime::npy::write_f32(&mut f, &[rows.len(), d], &flat)?;
    Ok(())
}

pub fn read_matrix(path: &Path) -> Result<Vec<Vec<f32>>> {
    let (shape, v) = bevrt_runtime::npy::read_f32(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let [n, d] = shape[..] else {
        bail!("{}: shape {shape:?}, expected [N, D]", path.display());
    };
    Ok((0..n).map(|i| v[i * d..(i + 1) * d].to_vec()).collect())
}

/// `embed`'s settings.
#[derive(Debug)]
pub struct EmbedConfig {
    pub bundle: PathBuf,
    /// Dataset (shared digit CSV or image folder); every image, in file order.
    pub data: PathBuf,
    /// `[N, D]` float32 npy.
    pub out: PathBuf,
    /// Also write a copy of the bundle that standardises its vector per dimension, with the
    /// mean and std of this dataset's training split (`embedding_norm = "standardize"`).
    pub standardize_out: Option<PathBuf>,
}

/// A bundle's `embedding_stats` from `rows` of `dim` values: the means, then the standard
/// deviations (constant dimensions keep 1: nothing to scale), as `[2, dim]` row-major.
pub fn standardisation<'a>(rows: impl Iterator<Item = &'a [f32]> + Clone, dim: usize) -> Vec<f32> {
    let n = rows.clone().count().max(1) as f64;
    let mut mean = vec![0f64; dim];
    for r in rows.clone() {
        for (m, x) in mean.iter_mut().zip(r) {
            *m += *x as f64 / n;
        }
    }
    let mut var = vec![0f64; dim];
    for r in rows {
        for ((s, x), m) in var.iter_mut().zip(r).zip(&mean) {
            *s += (*x as f64 - m).powi(2) / n;
        }
    }
    let mut flat: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    flat.extend(
        var.iter()
            .map(|&s| if s > 1e-12 { s.sqrt() as f32 } else { 1.0 }),
    );
    flat
}

pub fn embed(a: &EmbedConfig) -> Result<()> {
    let bundle = Bundle::load(&a.bundle)?;
    let ds = data::load(&a.data)?;
    let mut b = open(&bundle)?;
    let t0 = std::time::Instant::now();
    let all: Vec<usize> = (0..ds.labels.len()).collect();
    let v = embed_images(&mut b, &ds, &all, "embed")?;
    write_matrix(&a.out, &v)?;
    if let Some(out) = &a.standardize_out {
        if bundle.manifest.embedding_norm != bevrt_models::EmbeddingNorm::None {
            bail!(
                "{}: embedding_norm is {:?}; standardisation statistics are taken from bundles without one",
                a.bundle.display(),
                bundle.manifest.embedding_norm
            );
        }
        let (train, _) = ds.split();
        let d = v[0].len();
        let flat = standardisation(train.iter().map(|&i| v[i].as_slice()), d);
        let staging = std::env::temp_dir().join(format!("bevrt-embed-{}", std::process::id()));
        std::fs::create_dir_all(&staging)?;
        let stats = staging.join("embedding_stats.npy");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&stats)?);
            bevrt_runtime::npy::write_f32(&mut f, &[2, d], &flat)?;
        }
        let mut manifest = bundle.manifest.clone();
        manifest.selftest = None; // recorded for the network before standardisation
        manifest.embedding_norm = bevrt_models::EmbeddingNorm::Standardize;
        manifest.embedding_stats = Some(ModelFile {
            role: "embedding_stats".into(),
            file: "embedding_stats.npy".into(),
            sha256: String::new(),
        });
        let mut prov = toml::Table::new();
        prov.insert(
            "data".into(),
            bevrt_models::bundle::path_label(&a.data).into(),
        );
        prov.insert("images".into(), (train.len() as i64).into());
        manifest
            .provenance
            .insert("standardization".into(), toml::Value::Table(prov));
        let mut files: Vec<(PathBuf, String)> = bundle
            .files()
            .map(|f| (bundle.dir.join(&f.file), f.file.clone()))
            .collect();
        files.push((stats, "embedding_stats.npy".into()));
        let r = bevrt_models::write_bundle(out, manifest, &files);
        let _ = std::fs::remove_dir_all(&staging);
        r?;
        println!(
            "wrote {} (standardised with {} training images)",
            out.display(),
            train.len()
        );
    }
    println!(
        "wrote {} ({} x {}) in {:.1} s",
        a.out.display(),
        v.len(),
        v.first().map_or(0, |r| r.len()),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `afv fit`'s settings.
#[derive(Debug)]
pub struct FitConfig {
    pub bundle: PathBuf,
    /// Generator samples to estimate the mean and the diagonal Fisher information from.
    pub samples: usize,
    pub seed: u64,
    /// Write a new bundle here instead of updating --bundle in place.
    pub out: Option<PathBuf>,
    /// Signed square root after the Fisher normalisation.
    pub power_norm: bool,
    /// Unit L2 norm at the end.
    pub l2_norm: bool,
    /// Added to the Fisher diagonal before the square root: `V = (U − μ)/√(diag + eps)`.
    /// Components whose score barely varies over generator samples are amplified by up to
    /// `1/√eps`; a larger eps damps them (the fit prints the diagonal's quantiles).
    pub eps: f32,
    /// Spatial cells per side: conv2's score per cell of an R×R grid on its 7x7 output
    /// (spatial pyramid of Fisher-vector practice; 1 = the plain gradient). 2 was chosen by
    /// 5-fold CV on MNIST-5k's training labels (README).
    pub regions: usize,
}

/// `afv fit`: `μ = E_G[U]`, `diag I = E_G[(U − μ)²]` over generator samples, stored as
/// `fisher.npy` in the bundle.
pub fn fit(a: &FitConfig) -> Result<()> {
    let bundle = Bundle::load(&a.bundle)?;
    let spec = check_fit_config(a, &bundle)?;
    // Raw scores: the same bundle without its Fisher statistics.
    let mut raw = bundle.clone();
    let raw_spec = raw.manifest.afv.as_mut().expect("checked");
    raw_spec.fisher = None;
    raw_spec.regions = a.regions;
    let mut b = open(&raw)?;
    let t0 = std::time::Instant::now();
    let u = embed_generator(&mut b, &bundle, "generator", a.samples, a.seed)?;
    let dim = u[0].len();
    let (mean, var) = mean_and_variance(&u, dim);
    let mut flat: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    flat.extend(var.iter().map(|&v| v as f32));
    let out = a.out.clone().unwrap_or_else(|| a.bundle.clone());
    let staging = std::env::temp_dir().join(format!("bevrt-afv-fit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let fisher_path = staging.join("fisher.npy");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&fisher_path)?);
        bevrt_runtime::npy::write_f32(&mut f, &[2, dim], &flat)?;
    }
    print_diagonal_quantiles(&var, dim, a.eps);
    let manifest = fitted_manifest(a, &bundle, spec, dim);
    let mut files: Vec<(PathBuf, String)> = bundle
        .files()
        .filter(|f| f.file != "fisher.npy")
        .map(|f| (bundle.dir.join(&f.file), f.file.clone()))
        .collect();
    files.push((fisher_path, "fisher.npy".into()));
    install_fitted_bundle(a, &out, &staging, manifest, &files)?;
    let _ = std::fs::remove_dir_all(&staging);
    println!(
        "afv fit: {} generator samples, dim {dim}, mean |μ| {:.3e}, mean diag {:.3e} ({:.1} s) → {}",
        a.samples,
        mean.iter().map(|m| m.abs()).sum::<f64>() / dim as f64,
        var.iter().sum::<f64>() / dim as f64,
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// The bundle's `[afv]` table, after refusing a bundle without one and settings no fit can
/// use.
fn check_fit_config(a: &FitConfig, bundle: &Bundle) -> Result<AfvSpec> {
    let Some(spec) = bundle.manifest.afv.clone() else {
        bail!("{}: not an AFV bundle (no [afv] table)", a.bundle.display());
    };
    if a.samples < 2 {
        bail!("--samples {}: need at least 2", a.samples);
    }
    if !(a.eps.is_finite() && a.eps >= 0.0) {
        bail!("--eps {}: must be finite and >= 0", a.eps);
    }
    if !(1..=bevrt_runtime::afv::MAX_REGIONS).contains(&a.regions) {
        bail!(
            "--regions {}: must be 1..={}",
            a.regions,
            bevrt_runtime::afv::MAX_REGIONS
        );
    }
    Ok(spec)
}

/// Per-component mean and (population) variance of the rows `u` of `dim` values.
fn mean_and_variance(u: &[Vec<f32>], dim: usize) -> (Vec<f64>, Vec<f64>) {
    let mut mean = vec![0f64; dim];
    for r in u {
        for (m, x) in mean.iter_mut().zip(r) {
            *m += *x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= u.len() as f64);
    let mut var = vec![0f64; dim];
    for r in u {
        for ((v, m), x) in var.iter_mut().zip(&mean).zip(r) {
            *v += (*x as f64 - m).powi(2);
        }
    }
    var.iter_mut().for_each(|v| *v /= u.len() as f64);
    (mean, var)
}

/// Prints the Fisher diagonal's quantiles beside `eps` (what `--eps` damps).
fn print_diagonal_quantiles(var: &[f64], dim: usize, eps: f32) {
    let mut sorted = var.to_vec();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize];
    println!(
        "Fisher diagonal over {dim} components: min {:.3e}, 10 % {:.3e}, median {:.3e}, 90 % {:.3e}, max {:.3e}; eps {:e}",
        q(0.0),
        q(0.1),
        q(0.5),
        q(0.9),
        q(1.0),
        eps
    );
}

/// The bundle's manifest with the Fisher tail (`fisher.npy`, the normalisation settings)
/// and the fit's provenance; no self-test (the tail changes what the bundle computes).
fn fitted_manifest(a: &FitConfig, bundle: &Bundle, spec: AfvSpec, dim: usize) -> Manifest {
    let mut manifest = bundle.manifest.clone();
    manifest.selftest = None; // the Fisher tail changes what the bundle computes
    let mut s = spec;
    s.eps = a.eps;
    s.power_norm = a.power_norm;
    s.l2_norm = a.l2_norm;
    s.regions = a.regions;
    s.fisher = Some(ModelFile {
        role: "afv_fisher".into(),
        file: "fisher.npy".into(),
        sha256: String::new(),
    });
    manifest.afv = Some(s);
    let mut fit = toml::Table::new();
    fit.insert("samples".into(), (a.samples as i64).into());
    fit.insert("seed".into(), (a.seed as i64).into());
    fit.insert("dim".into(), (dim as i64).into());
    fit.insert("regions".into(), (a.regions as i64).into());
    manifest
        .provenance
        .insert("afv_fit".into(), toml::Value::Table(fit));
    manifest
}

/// Writes the fitted bundle to `out`; in place of `--bundle` through `staging` and a swap of
/// directories (the old bundle stays whole until the new one is in place). `staging` is
/// removed on failure.
fn install_fitted_bundle(
    a: &FitConfig,
    out: &Path,
    staging: &Path,
    manifest: Manifest,
    files: &[(PathBuf, String)],
) -> Result<()> {
    let target = if out == a.bundle {
        staging.join("bundle")
    } else {
        out.to_path_buf()
    };
    let r = bevrt_models::write_bundle(&target, manifest, files);
    if let Err(e) = r {
        let _ = std::fs::remove_dir_all(staging);
        return Err(e.into());
    }
    if out == a.bundle {
        // Swap directories: the old bundle stays whole until the new one is in place.
        let old = a
            .bundle
            .with_extension(format!("old-{}", std::process::id()));
        std::fs::rename(&a.bundle, &old)?;
        if let Err(e) =
            std::fs::rename(&target, &a.bundle).or_else(|_| copy_dir(&target, &a.bundle))
        {
            std::fs::rename(&old, &a.bundle)?;
            return Err(e).context("installing the fitted bundle");
        }
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)?.flatten() {
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

/// `afv distance`'s settings.
#[derive(Debug)]
pub struct DistanceConfig {
    pub bundle: PathBuf,
    /// A set: `DATASET[:class=K][:half=0|1][:split=train|test]`, `generator[@ITER]`, or one
    /// image file (an example).
    pub a: Option<String>,
    pub b: Option<String>,
    /// For every pair of classes of this dataset: distance between two disjoint halves of a
    /// class against the distance between the two classes.
    pub class_pairs: Option<PathBuf>,
    /// Distance from this dataset to every generator snapshot in the bundle.
    pub snapshots: Option<PathBuf>,
    /// Generator samples per generator set.
    pub samples: usize,
    pub json: bool,
}

/// Mean of a set's vectors.
fn mean(v: &[Vec<f32>]) -> Vec<f64> {
    let mut m = vec![0f64; v.first().map_or(0, |r| r.len())];
    for r in v {
        for (a, x) in m.iter_mut().zip(r) {
            *a += *x as f64;
        }
    }
    m.iter_mut().for_each(|a| *a /= v.len().max(1) as f64);
    m
}

pub fn dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn set_vectors(
    spec: &str,
    bundle: &Bundle,
    backend: &mut CpuBackend,
    samples: usize,
) -> Result<Vec<Vec<f32>>> {
    if let Some(rest) = spec.strip_prefix("generator") {
        let role = if rest.is_empty() {
            "generator".to_string()
        } else {
            format!("generator{rest}")
        };
        return embed_generator(backend, bundle, &role, samples, 99);
    }
    let mut parts = spec.split(':');
    let path = PathBuf::from(parts.next().unwrap_or_default());
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if matches!(ext.as_str(), "png" | "jpg" | "jpeg" | "bmp" | "pgm") {
        let img = image::open(&path)
            .with_context(|| format!("{}: not a readable image", path.display()))?
            .to_luma8();
        let ds = Dataset {
            name: path.display().to_string(),
            width: img.width() as usize,
            height: img.height() as usize,
            pixels: img.into_raw(),
            labels: vec![0],
            classes: vec!["0".into()],
        };
        return embed_images(backend, &ds, &[0], "example");
    }
    let ds = data::load(&path)?;
    let (train, test) = ds.split();
    let mut idx: Vec<usize> = (0..ds.labels.len()).collect();
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("set '{spec}': '{p}' is not key=value"))?;
        match k {
            "class" => {
                let c: usize = v
                    .parse()
                    .with_context(|| format!("set '{spec}': class '{v}'"))?;
                idx.retain(|&i| ds.labels[i] == c);
            }
            "half" => {
                let h: usize = v
                    .parse()
                    .ok()
                    .filter(|h| *h < 2)
                    .with_context(|| format!("set '{spec}': half must be 0 or 1"))?;
                idx = idx
                    .into_iter()
                    .enumerate()
                    .filter(|(k, _)| k % 2 == h)
                    .map(|(_, i)| i)
                    .collect();
            }
            "split" => {
                let keep: std::collections::HashSet<usize> = match v {
                    "train" => train.iter().copied().collect(),
                    "test" => test.iter().copied().collect(),
                    o => bail!("set '{spec}': split '{o}' (train or test)"),
                };
                idx.retain(|i| keep.contains(i));
            }
            o => bail!("set '{spec}': unknown key '{o}' (class, half, split)"),
        }
    }
    if idx.is_empty() {
        bail!("set '{spec}' is empty");
    }
    embed_images(backend, &ds, &idx, "set")
}

pub fn distance(a: &DistanceConfig) -> Result<()> {
    let bundle = Bundle::load(&a.bundle)?;
    let mut b = open(&bundle)?;
    let mut report = serde_json::Map::new();
    if let (Some(sa), Some(sb)) = (&a.a, &a.b) {
        let va = set_vectors(sa, &bundle, &mut b, a.samples)?;
        let vb = set_vectors(sb, &bundle, &mut b, a.samples)?;
        let d = dist(&mean(&va), &mean(&vb));
        println!(
            "distance({sa} [{}], {sb} [{}]) = {d:.5}",
            va.len(),
            vb.len()
        );
        report.insert("distance".into(), d.into());
    } else if a.a.is_some() || a.b.is_some() {
        bail!("give both --a and --b");
    }
    if let Some(path) = &a.class_pairs {
        class_pairs(path, &mut b, &mut report)?;
    }
    if let Some(path) = &a.snapshots {
        snapshot_distances(path, a, &bundle, &mut b, &mut report)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// `--class-pairs`: for every pair of classes of the dataset at `path`, the distance between
/// two halves of each class against the distance between the classes (held-out images),
/// printed and added to `report`.
fn class_pairs(
    path: &Path,
    b: &mut CpuBackend,
    report: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let ds = data::load(path)?;
    let (_, test) = ds.split();
    let c = ds.classes.len();
    // held-out images only, per class, split in two halves by position
    let mut halves: Vec<[Vec<f64>; 2]> = vec![];
    let mut whole: Vec<Vec<f64>> = vec![];
    for k in 0..c {
        let idx: Vec<usize> = test
            .iter()
            .copied()
            .filter(|&i| ds.labels[i] == k)
            .collect();
        let v = embed_images(b, &ds, &idx, &format!("class {k}"))?;
        let (h0, h1): (Vec<_>, Vec<_>) =
            v.iter().cloned().enumerate().partition(|(i, _)| i % 2 == 0);
        let strip = |h: Vec<(usize, Vec<f32>)>| h.into_iter().map(|(_, r)| r).collect::<Vec<_>>();
        halves.push([mean(&strip(h0)), mean(&strip(h1))]);
        whole.push(mean(&v));
    }
    let mut ok = 0;
    let mut total = 0;
    let mut rows = vec![];
    println!(
        "class pairs (held-out images): within = |half0 − half1| of a class, between = |class i − class j|"
    );
    for i in 0..c {
        for j in (i + 1)..c {
            let within = dist(&halves[i][0], &halves[i][1]).max(dist(&halves[j][0], &halves[j][1]));
            let between = dist(&whole[i], &whole[j]);
            total += 1;
            ok += usize::from(within < between);
            rows.push(serde_json::json!({"i": i, "j": j, "within": within, "between": between}));
        }
    }
    let within: Vec<f64> = (0..c).map(|i| dist(&halves[i][0], &halves[i][1])).collect();
    let min_between = rows
        .iter()
        .map(|r| r["between"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    println!(
        "  within-class: {}\n  smallest between-class: {min_between:.4}\n  pairs where both classes' halves are closer than the classes: {ok}/{total}",
        within
            .iter()
            .map(|d| format!("{d:.4}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    report.insert("class_pairs_ok".into(), ok.into());
    report.insert("class_pairs_total".into(), total.into());
    report.insert("class_pairs".into(), rows.into());
    Ok(())
}

/// `--snapshots`: the distance from the training split of the dataset at `path` to every
/// generator snapshot in the bundle, printed and added to `report`.
fn snapshot_distances(
    path: &Path,
    a: &DistanceConfig,
    bundle: &Bundle,
    b: &mut CpuBackend,
    report: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let ds = data::load(path)?;
    let (train, _) = ds.split();
    let data_mean = mean(&embed_images(b, &ds, &train, "data")?);
    let mut snaps: Vec<(usize, String)> = bundle
        .manifest
        .models
        .iter()
        .filter_map(|m| {
            let it = m.role.strip_prefix("generator@")?.parse().ok()?;
            Some((it, m.role.clone()))
        })
        .collect();
    let iters = bundle
        .manifest
        .provenance
        .get("iterations")
        .and_then(|v| v.as_integer())
        .unwrap_or(0) as usize;
    if bundle.manifest.model("generator").is_some() {
        snaps.push((iters, "generator".into()));
    }
    snaps.sort();
    println!(
        "generator-to-data distance over training ({} samples each):",
        a.samples
    );
    let mut rows = vec![];
    for (it, role) in snaps {
        let d = dist(
            &mean(&embed_generator(b, bundle, &role, a.samples, 99)?),
            &data_mean,
        );
        println!("  iteration {it:>6}: {d:.5}");
        rows.push(serde_json::json!({"iteration": it, "distance": d}));
    }
    report.insert("snapshots".into(), rows.into());
    Ok(())
}
