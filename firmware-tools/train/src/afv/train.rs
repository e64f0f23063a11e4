//! `bevrt-tool gan train`: the GAN on a dataset's training split, written as a `features`
//! bundle whose vector is the discriminator's Adversarial Fisher Vector (before `afv fit`,
//! the raw score), with the generator (final and snapshots) beside it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bevrt_models::{
    AfvSpec, ChannelOrder, InputDtype, InputSpec, Layout, Manifest, ModelFile, OutputKind,
    OutputSpec, Task,
};
use candle_core::{Device, Tensor};

use super::gan::{self, Discriminator, Generator};
use crate::digits::{self as data, Dataset};
use crate::optim::Adam;
use crate::rng::Rng;

/// `gan train`'s settings.
#[derive(Debug)]
pub struct GanTrainConfig {
    /// Dataset (shared digit CSV or an image folder); only its training split is used.
    pub data: PathBuf,
    pub iters: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    /// Generator snapshots kept in the bundle (for the set distance over training).
    pub snapshots: usize,
    /// Discriminator widths `C1,C2`: output channels of conv1 and conv2. The AFV vector has
    /// C2·49 + R²·(C2·C1·16 + C2) values (R: `afv fit --regions`).
    pub d_channels: (usize, usize),
    pub out: PathBuf,
}

/// Images as a [-1, 1] tensor (N, 1, H, W): the bundle's preprocess (`/255`, mean 0.5, std 0.5).
pub fn to_tensor(ds: &Dataset, idx: &[usize]) -> Result<Tensor> {
    let n = ds.width * ds.height;
    let mut v = Vec::with_capacity(idx.len() * n);
    for &i in idx {
        v.extend(ds.image(i).iter().map(|&p| (p as f32 / 255.0 - 0.5) / 0.5));
    }
    Ok(Tensor::from_vec(
        v,
        (idx.len(), 1, ds.height, ds.width),
        &Device::Cpu,
    )?)
}

pub fn input_spec(ds: &Dataset) -> InputSpec {
    InputSpec {
        name: Some("image".into()),
        width: ds.width as u32,
        height: ds.height as u32,
        channels: ChannelOrder::Gray,
        layout: Layout::Nchw,
        dtype: InputDtype::F32,
        mean: vec![0.5],
        std: vec![0.5],
    }
}

/// `n` generator samples as u8 images (the inverse of the bundle's preprocess).
pub fn sample_images(g: &Generator, n: usize, rng: &mut Rng) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(n * 784);
    for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
        let z = Tensor::from_vec(
            crate::rng::normal(chunk.len() * gan::Z, rng),
            (chunk.len(), gan::Z),
            &Device::Cpu,
        )?;
        let x: Vec<f32> = g.forward(&z)?.flatten_all()?.to_vec1()?;
        out.extend(
            x.iter()
                .map(|v| ((v * 0.5 + 0.5) * 255.0).round().clamp(0.0, 255.0) as u8),
        );
    }
    Ok(out)
}

pub fn grid_png(pixels: &[u8], side: usize, cols: usize, path: &Path) -> Result<()> {
    let n = pixels.len() / (side * side);
    let rows = n.div_ceil(cols);
    let pad = 2;
    let (w, h) = (cols * (side + pad) + pad, rows * (side + pad) + pad);
    let mut img = image::GrayImage::from_pixel(w as u32, h as u32, image::Luma([64]));
    for k in 0..n {
        let (r, c) = (k / cols, k % cols);
        for y in 0..side {
            for x in 0..side {
                let v = pixels[k * side * side + y * side + x];
                img.put_pixel(
                    (pad + c * (side + pad) + x) as u32,
                    (pad + r * (side + pad) + y) as u32,
                    image::Luma([v]),
                );
            }
        }
    }
    // 3x nearest upscale so a person can judge the digits.
    let img = image::imageops::resize(
        &img,
        w as u32 * 3,
        h as u32 * 3,
        image::imageops::FilterType::Nearest,
    );
    img.save(path)
        .with_context(|| format!("{}: cannot write", path.display()))
}

fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path)
            .with_context(|| format!("{}: cannot create", path.display()))?,
    );
    bevrt_runtime::npy::write_f32(&mut f, shape, data)?;
    Ok(())
}

pub fn gan_train(a: &GanTrainConfig) -> Result<()> {
    if a.out.exists() {
        bail!("{}: already exists; refusing to overwrite", a.out.display());
    }
    let (ds, train, real) = load_training_images(a)?;
    let mut rng = Rng(a.seed);
    let g = Generator::init(a.seed)?;
    let d = Discriminator::init(a.seed, a.d_channels)?;
    // SN-GAN settings: Adam(β1 = 0.5, β2 = 0.999), hinge loss, one D step per G step.
    let mut opt_d = Adam::new(d.vars(), a.lr)?;
    let mut opt_g = Adam::new(g.vars(), a.lr)?;
    for o in [&mut opt_d, &mut opt_g] {
        o.beta1 = 0.5;
    }
    let tmp = a.out.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let mut nets = GanNets { g, d, opt_d, opt_g };
    let run = train_gan(a, &train, &real, &mut nets, &mut rng, &tmp)?;
    let GanNets { g, mut d, .. } = nets;
    export_networks(a, &mut d, &g, &tmp)?;
    let (models, files) = bundle_files(a, &g, &run.snapshot_files, &tmp)?;
    let prov = gan_provenance(a, train.len(), &run);
    let manifest = afv_manifest(&ds, models, prov);
    let r = bevrt_models::write_bundle(&a.out, manifest, &files);
    let samples = a.out.with_extension("samples.png");
    if r.is_ok() {
        std::fs::copy(tmp.join("samples.png"), &samples)?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    r?;
    println!(
        "wrote {} (discriminator + {} generator snapshot(s)); samples: {}",
        a.out.display(),
        run.snapshot_files.len(),
        samples.display()
    );
    Ok(())
}

/// The dataset, its training split and those images as a [-1, 1] tensor; refused unless the
/// images are 28x28 (what the GAN is built for).
fn load_training_images(a: &GanTrainConfig) -> Result<(Dataset, Vec<usize>, Tensor)> {
    let ds = data::load(&a.data)?;
    if (ds.width, ds.height) != (28, 28) {
        bail!(
            "{}: images are {}x{}; this GAN is built for 28x28 (MNIST-style) images",
            a.data.display(),
            ds.width,
            ds.height
        );
    }
    let (train, _) = ds.split();
    let real = to_tensor(&ds, &train)?;
    Ok((ds, train, real))
}

/// The two networks and their optimizers.
struct GanNets {
    g: Generator,
    d: Discriminator,
    opt_d: Adam,
    opt_g: Adam,
}

/// What the training loop leaves for the bundle.
struct GanRun {
    /// `(iteration, file name)` of every generator snapshot written into the temporary dir.
    snapshot_files: Vec<(usize, String)>,
    /// `(iteration, D loss, G loss)` every 100 iterations.
    log: Vec<(usize, f32, f32)>,
    seconds: f64,
}

/// `a.iters` alternating D and G steps, with generator snapshots written into `tmp`.
fn train_gan(
    a: &GanTrainConfig,
    train: &[usize],
    real: &Tensor,
    nets: &mut GanNets,
    rng: &mut Rng,
    tmp: &Path,
) -> Result<GanRun> {
    let snap_at: Vec<usize> = (1..=a.snapshots)
        .map(|k| k * a.iters / a.snapshots.max(1))
        .collect();
    let mut snapshot_files = vec![];
    let pb = crate::progress::progress(a.iters as u64, "gan");
    let t0 = std::time::Instant::now();
    let mut log = vec![];
    for it in 1..=a.iters {
        let (ld, lg) = gan_step(a, train, real, nets, rng)?;
        if !(ld.is_finite() && lg.is_finite()) {
            bail!("training diverged at iteration {it} (D loss {ld}, G loss {lg})");
        }
        pb.set_message(format!("D {ld:.3} G {lg:.3}"));
        pb.inc(1);
        if it % 100 == 0 {
            log.push((it, ld, lg));
        }
        if snap_at.contains(&it) {
            let name = format!("generator@{it}.onnx");
            let bytes = generator_onnx(
                &nets.g,
                &format!("bevrt GAN generator after {it} iterations"),
            )?;
            std::fs::write(tmp.join(&name), bytes)?;
            snapshot_files.push((it, name));
        }
    }
    pb.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    eprintln!("gan: {} iterations in {seconds:.0} s", a.iters);
    Ok(GanRun {
        snapshot_files,
        log,
        seconds,
    })
}

/// One D step (hinge loss on a real batch and a fake one) then one G step; the two losses.
fn gan_step(
    a: &GanTrainConfig,
    train: &[usize],
    real: &Tensor,
    nets: &mut GanNets,
    rng: &mut Rng,
) -> Result<(f32, f32)> {
    let GanNets { g, d, opt_d, opt_g } = nets;
    let idx: Vec<u32> = (0..a.batch)
        .map(|_| rng.below(train.len()) as u32)
        .collect();
    let x = real.index_select(&Tensor::new(idx.as_slice(), &Device::Cpu)?, 0)?;
    let z = Tensor::from_vec(
        crate::rng::normal(a.batch * gan::Z, rng),
        (a.batch, gan::Z),
        &Device::Cpu,
    )?;
    let fake = g.forward(&z)?.detach();
    let w = d.weights(true)?;
    // Real and fake in one batch: half the graph nodes of two passes, the same loss.
    let both = d.forward_with(&Tensor::cat(&[&x, &fake], 0)?, &w)?.d;
    let (dr, df) = (
        both.narrow(0, 0, a.batch)?,
        both.narrow(0, a.batch, a.batch)?,
    );
    let loss_d = ((1.0 - dr)?.relu()?.mean_all()? + (1.0 + df)?.relu()?.mean_all()?)?;
    opt_d.backward_step(&loss_d)?;
    let z = Tensor::from_vec(
        crate::rng::normal(a.batch * gan::Z, rng),
        (a.batch, gan::Z),
        &Device::Cpu,
    )?;
    let w = d.weights(false)?;
    let loss_g = d.forward_frozen(&g.forward(&z)?, &w)?.d.mean_all()?.neg()?;
    opt_g.backward_step(&loss_g)?;
    Ok((loss_d.to_scalar::<f32>()?, loss_g.to_scalar::<f32>()?))
}

/// The generator as ONNX (`z` in, `image` out).
fn generator_onnx(g: &Generator, doc: &str) -> Result<Vec<u8>> {
    Ok(bevrt_models::sequential_to_onnx(
        "generator",
        "z",
        &[1, gan::Z],
        "image",
        &g.layers()?,
        doc,
    )?)
}

/// Writes the discriminator (outputs D, a1, z2), its final-layer weights and a grid of
/// generator samples into `tmp`.
fn export_networks(
    a: &GanTrainConfig,
    d: &mut Discriminator,
    g: &Generator,
    tmp: &Path,
) -> Result<()> {
    let d_bytes = bevrt_models::sequential_to_onnx(
        "discriminator",
        "image",
        &[1, 1, 28, 28],
        "d",
        &d.layers()?,
        "bevrt GAN discriminator (spectral norm folded into the weights); outputs D(x), a1, z2",
    )?;
    std::fs::write(tmp.join("discriminator.onnx"), d_bytes)?;
    let w3: Vec<f32> = d.weights(false)?[2].flatten_all()?.to_vec1()?;
    write_npy(&tmp.join("head_weight.npy"), &[w3.len()], &w3)?;
    let mut srng = Rng(a.seed ^ 0x5a5a);
    grid_png(
        &sample_images(g, 64, &mut srng)?,
        28,
        8,
        &tmp.join("samples.png"),
    )?;
    Ok(())
}

/// A file for the bundle: where it is now, its name in the bundle.
type BundleFile = (PathBuf, String);

/// The bundle's model entries and files: the discriminator, every generator snapshot (the
/// last one is `generator`; written now if no snapshot fell on the last iteration), the head
/// weights.
fn bundle_files(
    a: &GanTrainConfig,
    g: &Generator,
    snapshot_files: &[(usize, String)],
    tmp: &Path,
) -> Result<(Vec<ModelFile>, Vec<BundleFile>)> {
    let mut models = vec![ModelFile {
        role: "model".into(),
        file: "discriminator.onnx".into(),
        sha256: String::new(),
    }];
    let mut files = vec![(
        tmp.join("discriminator.onnx"),
        "discriminator.onnx".to_string(),
    )];
    for (it, name) in snapshot_files {
        let role = if *it == a.iters {
            "generator".to_string()
        } else {
            format!("generator@{it}")
        };
        models.push(ModelFile {
            role,
            file: name.clone(),
            sha256: String::new(),
        });
        files.push((tmp.join(name), name.clone()));
    }
    if !snapshot_files.iter().any(|(it, _)| *it == a.iters) {
        let bytes = generator_onnx(g, "bevrt GAN generator")?;
        std::fs::write(tmp.join("generator.onnx"), bytes)?;
        models.push(ModelFile {
            role: "generator".into(),
            file: "generator.onnx".into(),
            sha256: String::new(),
        });
        files.push((tmp.join("generator.onnx"), "generator.onnx".into()));
    }
    files.push((tmp.join("head_weight.npy"), "head_weight.npy".into()));
    Ok((models, files))
}

/// The bundle's `[provenance]`: architecture, data, settings, time and the loss log.
fn gan_provenance(a: &GanTrainConfig, train_images: usize, run: &GanRun) -> toml::Table {
    let mut prov = toml::Table::new();
    prov.insert(
        "architecture".into(),
        "dcgan-28 generator, spectral-norm discriminator (hinge loss)".into(),
    );
    prov.insert(
        "data".into(),
        format!(
            "{} (training split: 4 of every 5 per class)",
            a.data.display()
        )
        .into(),
    );
    prov.insert("train_images".into(), (train_images as i64).into());
    prov.insert("iterations".into(), (a.iters as i64).into());
    prov.insert("batch".into(), (a.batch as i64).into());
    prov.insert(
        "d_channels".into(),
        format!("{},{}", a.d_channels.0, a.d_channels.1).into(),
    );
    prov.insert("lr".into(), a.lr.into());
    prov.insert("seed".into(), (a.seed as i64).into());
    prov.insert("seconds".into(), run.seconds.into());
    prov.insert(
        "loss_log".into(),
        toml::Value::Array(
            run.log
                .iter()
                .map(|(i, d, g)| {
                    toml::Value::Array(vec![
                        (*i as i64).into(),
                        (*d as f64).into(),
                        (*g as f64).into(),
                    ])
                })
                .collect(),
        ),
    );
    prov
}

/// The `features` manifest of the AFV bundle (raw scores until `afv fit` adds the Fisher
/// statistics).
fn afv_manifest(ds: &Dataset, models: Vec<ModelFile>, prov: toml::Table) -> Manifest {
    Manifest {
        format: 1,
        name: "afv-gan".into(),
        version: "1".into(),
        task: Task::Features,
        description: "Adversarial Fisher Vectors of a GAN discriminator (conv2 + linear scores)"
            .into(),
        models,
        input: input_spec(ds),
        outputs: vec![OutputSpec {
            name: Some("afv".into()),
            kind: OutputKind::Embedding,
            labels: vec![],
        }],
        grid: None,
        classes: vec![],
        calibration: None,
        embedding_norm: Default::default(),
        embedding_stats: None,
        afv: Some(AfvSpec {
            kernel: 4,
            stride: 2,
            pad: 1,
            slope: gan::SLOPE as f32,
            head_weight: ModelFile {
                role: "afv_head_weight".into(),
                file: "head_weight.npy".into(),
                sha256: String::new(),
            },
            fisher: None,
            eps: 1e-6,
            power_norm: true,
            l2_norm: true,
            regions: 1,
        }),
        selftest: None,
        provenance: prov,
        expires: None,
    }
}
