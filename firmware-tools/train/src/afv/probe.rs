//! `bevrt-tool probe`: frozen features → labels, with few or all labels.
//!
//! - `linear`: features standardised with the labelled subset's mean and std; a linear layer
//!   trained full-batch with Adam (lr `--lr` 1e-3, cosine decay to 0 over `--epochs` 100,
//!   weight decay `--wd` 1e-2 as an L2 term; the best of a small grid on MNIST-5k AFV
//!   features), cross-entropy or the squared-hinge one-vs-rest L2-SVM that AFV
//!   uses. Weights start at zero, so a run is deterministic given the labelled subset.
//!   `--loss ls`: regularised least squares on ±1 one-vs-rest targets, solved exactly
//!   (`(XᵀX + λI)W = XᵀY`, through the n×n Gram matrix when there are more dimensions than
//!   labelled images; λ = `--ridge` × mean ‖x‖²). No optimiser, no epochs: the full-batch
//!   Adam probes above stop far from their optimum on 36k- to 134k-dimensional AFV features
//!   in 100 epochs (94.5 % vs 97.1 % on MNIST-5k), which take 10 minutes at 134k.
//! - `knn`: cosine similarity on L2-normalised features, k = 20, votes weighted by
//!   `exp(sim / 0.07)` (the weighted k-NN BAM and InstDisc evaluate with); `--k 1 --metric
//!   euclidean` is the classic 1-NN.
//!
//! Labelled subsets: `--labels-per-class K` draws K training images per class with seed
//! `s` for each of `--seeds` runs (K = 0: every training label, one run). Test: the fixed
//! held-out split of [`crate::digits::Dataset::split`].

use bevrt_runtime::choice::Choice;
use std::path::PathBuf;

use anyhow::{Result, bail};
use bevrt_models::{Bundle, ModelFile, OutputKind, OutputSpec, Task};
use candle_core::{D, Device, Tensor};
use serde::Serialize;

use crate::digits as data;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeMethod {
    Linear,
    Knn,
}

impl Choice for ProbeMethod {
    const ALL: &'static [Self] = &[Self::Linear, Self::Knn];
    fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Knn => "knn",
        }
    }
}
bevrt_runtime::named_choice!(ProbeMethod);

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    Ce,
    Hinge,
    /// Regularised least squares on ±1 one-vs-rest targets, solved exactly (no epochs).
    Ls,
}

impl Choice for Loss {
    const ALL: &'static [Self] = &[Self::Ce, Self::Hinge, Self::Ls];
    fn name(self) -> &'static str {
        match self {
            Self::Ce => "ce",
            Self::Hinge => "hinge",
            Self::Ls => "ls",
        }
    }
    fn help(self) -> &'static str {
        match self {
            Self::Ls => {
                "Regularised least squares on ±1 one-vs-rest targets, solved exactly (no epochs)"
            }
            _ => "",
        }
    }
}
bevrt_runtime::named_choice!(Loss);

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Cosine,
    Euclidean,
}

impl Choice for Metric {
    const ALL: &'static [Self] = &[Self::Cosine, Self::Euclidean];
    fn name(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::Euclidean => "euclidean",
        }
    }
}
bevrt_runtime::named_choice!(Metric);

/// `probe`'s settings.
#[derive(Debug)]
pub struct ProbeConfig {
    /// `[N, D]` features of every dataset image in file order (`bevrt-tool embed`), or `raw`
    /// for the pixels themselves (the baseline).
    pub features: Option<String>,
    /// Embed the dataset with this features bundle first.
    pub bundle: Option<PathBuf>,
    pub data: PathBuf,
    /// Labelled training images per class (0 = all).
    pub labels_per_class: usize,
    pub method: ProbeMethod,
    pub seeds: usize,
    pub loss: Loss,
    pub epochs: usize,
    /// Adam's initial learning rate (cosine decay to 0).
    pub lr: f64,
    pub wd: f64,
    /// `--loss ls`: ridge λ relative to the mean squared norm of the standardised features
    /// (accuracy on MNIST-5k AFV is flat from 1e-5 to 1e-2).
    pub ridge: f64,
    pub k: usize,
    pub metric: Metric,
    /// Linear probes: standardise each dimension with the labelled subset's mean and std
    /// (`false`: centre only).
    pub standardize: bool,
    /// Model selection without the test split: K-fold cross-validation on the labelled
    /// training images (fold = position mod K); the test split is not read.
    pub cv: usize,
    /// Write a classify bundle: the --bundle's network + vector + this probe (linear only;
    /// trained on the first seed's labels).
    pub out_bundle: Option<PathBuf>,
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub data: String,
    pub features: String,
    pub method: ProbeMethod,
    pub labels_per_class: usize,
    pub train_labels: usize,
    /// `test split` or `K-fold CV on the training labels`.
    pub evaluated_on: String,
    pub test_images: usize,
    pub accuracies: Vec<f64>,
    pub mean: f64,
    pub std: f64,
}

/// Labelled subset for one seed: K per class from `train` (all when K = 0).
fn labelled(train: &[usize], labels: &[usize], classes: usize, k: usize, seed: u64) -> Vec<usize> {
    if k == 0 {
        return train.to_vec();
    }
    let mut rng = Rng(seed.wrapping_mul(0x51_7cc1) ^ 0xabc);
    let mut out = vec![];
    for c in 0..classes {
        let mut of: Vec<usize> = train.iter().copied().filter(|&i| labels[i] == c).collect();
        rng.shuffle(&mut of);
        out.extend(of.into_iter().take(k));
    }
    out
}

fn matrix(rows: &[&Vec<f32>]) -> Result<Tensor> {
    let d = rows[0].len();
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Ok(Tensor::from_vec(flat, (rows.len(), d), &Device::Cpu)?)
}

/// A trained linear probe: standardisation and weights (`w` D×C, `b` C).
pub struct Linear {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub w: Tensor,
    pub b: Tensor,
}

/// `standardize`: divide by the per-dimension std of the labelled subset (else only centre:
/// features that carry their own scale, like Fisher vectors, keep it).
#[allow(clippy::too_many_arguments)]
pub fn train_linear(
    x: &[&Vec<f32>],
    y: &[usize],
    classes: usize,
    loss: Loss,
    epochs: usize,
    lr: f64,
    wd: f64,
    standardize: bool,
) -> Result<Linear> {
    let d = x[0].len();
    let n = x.len() as f32;
    let mut mean = vec![0f32; d];
    for r in x {
        for (m, v) in mean.iter_mut().zip(r.iter()) {
            *m += v / n;
        }
    }
    let mut std = vec![0f32; d];
    for r in x {
        for ((s, v), m) in std.iter_mut().zip(r.iter()).zip(&mean) {
            *s += (v - m).powi(2) / n;
        }
    }
    // Dimensions that never vary carry nothing; a floor keeps them from exploding.
    std.iter_mut().for_each(|s| *s = s.sqrt().max(1e-6));
    if !standardize {
        std.iter_mut().for_each(|s| *s = 1.0);
    }
    let xt = matrix(x)?;
    let mt = Tensor::from_vec(mean.clone(), (1, d), &Device::Cpu)?;
    let st = Tensor::from_vec(std.clone(), (1, d), &Device::Cpu)?;
    let xs = xt.broadcast_sub(&mt)?.broadcast_div(&st)?;
    if loss == Loss::Ls {
        let (w, b) = least_squares(&xs, y, classes, wd)?;
        return Ok(Linear { mean, std, w, b });
    }
    // Gradients written out (the model is linear): X^T once, contiguous, so each epoch is two
    // plain GEMMs instead of autograd through a strided transpose.
    let xs_t = xs.t()?.contiguous()?;
    let dev = Device::Cpu;
    let mut w = Tensor::zeros((d, classes), candle_core::DType::F32, &dev)?;
    let mut b = Tensor::zeros(classes, candle_core::DType::F32, &dev)?;
    let (mut mw, mut vw) = (w.zeros_like()?, w.zeros_like()?);
    let (mut mb, mut vb) = (b.zeros_like()?, b.zeros_like()?);
    let mut y1 = vec![0f32; y.len() * classes];
    for (i, &c) in y.iter().enumerate() {
        y1[i * classes + c] = 1.0;
    }
    let onehot = Tensor::from_vec(y1, (y.len(), classes), &dev)?;
    let pm = ((&onehot * 2.0)? - 1.0)?; // ±1 targets for the hinge loss
    let inv_n = 1.0 / y.len() as f64;
    let (b1, b2) = (0.9f64, 0.999f64);
    for e in 0..epochs {
        let step_lr = lr * 0.5 * (1.0 + (std::f64::consts::PI * e as f64 / epochs as f64).cos());
        let s = xs.matmul(&w)?.broadcast_add(&b)?;
        let g = match loss {
            Loss::Ce => ((candle_nn::ops::softmax_last_dim(&s)? - &onehot)? * inv_n)?,
            Loss::Hinge => {
                let m = (1.0 - (&s * &pm)?)?.relu()?;
                ((m * &pm)? * (-2.0 * inv_n))?
            }
            Loss::Ls => unreachable!("solved in closed form above"),
        };
        let gw = (xs_t.matmul(&g)? + (&w * (2.0 * wd))?)?;
        let gb = g.sum(0)?;
        let t = (e + 1) as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        mw = ((&mw * b1)? + (&gw * (1.0 - b1))?)?;
        vw = ((&vw * b2)? + (gw.sqr()? * (1.0 - b2))?)?;
        mb = ((&mb * b1)? + (&gb * (1.0 - b1))?)?;
        vb = ((&vb * b2)? + (gb.sqr()? * (1.0 - b2))?)?;
        w = (&w - (((&mw / c1)? / ((&vw / c2)?.sqrt()? + 1e-8)?)? * step_lr)?)?;
        b = (&b - (((&mb / c1)? / ((&vb / c2)?.sqrt()? + 1e-8)?)? * step_lr)?)?;
    }
    Ok(Linear { mean, std, w, b })
}

/// Ridge regression of ±1 one-vs-rest targets on centred features `xs` (n × d): the
/// intercept is the targets' mean, the weights solve the normal equations in whichever of
/// the d×d or n×n forms is smaller (the same solution), by Cholesky in f64.
fn least_squares(xs: &Tensor, y: &[usize], classes: usize, ridge: f64) -> Result<(Tensor, Tensor)> {
    use nalgebra::DMatrix;
    let (n, d) = xs.dims2()?;
    let mut t = vec![-1f64; n * classes];
    for (i, &c) in y.iter().enumerate() {
        t[i * classes + c] = 1.0;
    }
    let bias: Vec<f64> = (0..classes)
        .map(|c| (0..n).map(|i| t[i * classes + c]).sum::<f64>() / n as f64)
        .collect();
    for i in 0..n {
        for c in 0..classes {
            t[i * classes + c] -= bias[c];
        }
    }
    let dual = d > n;
    // Gram matrix of the smaller side, in f32 GEMM, then f64 for the solve.
    let g = if dual {
        xs.matmul(&xs.t()?)?
    } else {
        xs.t()?.matmul(xs)?
    };
    let m = g.dims2()?.0;
    let gv: Vec<f32> = g.flatten_all()?.to_vec1()?;
    let mut a = DMatrix::<f64>::from_iterator(m, m, gv.iter().map(|v| *v as f64));
    let scale = a.trace() / m as f64 * if dual { 1.0 } else { d as f64 / n as f64 };
    for i in 0..m {
        a[(i, i)] += ridge * scale;
    }
    let rhs = if dual {
        DMatrix::<f64>::from_row_slice(n, classes, &t)
    } else {
        // Xᵀ T
        let tt = Tensor::from_vec(
            t.iter().map(|v| *v as f32).collect::<Vec<f32>>(),
            (n, classes),
            &Device::Cpu,
        )?;
        let r: Vec<f32> = xs.t()?.matmul(&tt)?.flatten_all()?.to_vec1()?;
        DMatrix::<f64>::from_row_slice(d, classes, &r.iter().map(|v| *v as f64).collect::<Vec<_>>())
    };
    let chol = a.cholesky().ok_or_else(|| {
        anyhow::anyhow!("least squares: the regularised Gram matrix is not positive definite")
    })?;
    let sol = chol.solve(&rhs);
    // row-major copy of the solution
    let flat: Vec<f32> = (0..sol.nrows())
        .flat_map(|i| (0..classes).map(move |c| (i, c)))
        .map(|(i, c)| sol[(i, c)] as f32)
        .collect();
    let sol_t = Tensor::from_vec(flat, (sol.nrows(), classes), &Device::Cpu)?;
    let w = if dual { xs.t()?.matmul(&sol_t)? } else { sol_t };
    let b = Tensor::from_vec(
        bias.iter().map(|v| *v as f32).collect::<Vec<f32>>(),
        classes,
        &Device::Cpu,
    )?;
    Ok((w, b))
}

impl Linear {
    pub fn predict(&self, x: &[&Vec<f32>]) -> Result<Vec<usize>> {
        let d = self.mean.len();
        let mt = Tensor::from_vec(self.mean.clone(), (1, d), &Device::Cpu)?;
        let st = Tensor::from_vec(self.std.clone(), (1, d), &Device::Cpu)?;
        let mut out = vec![];
        for chunk in x.chunks(512) {
            let s = matrix(chunk)?
                .broadcast_sub(&mt)?
                .broadcast_div(&st)?
                .matmul(&self.w)?
                .broadcast_add(&self.b)?;
            out.extend(
                s.argmax(D::Minus1)?
                    .to_vec1::<u32>()?
                    .into_iter()
                    .map(|c| c as usize),
            );
        }
        Ok(out)
    }

    /// Standardisation folded into the weights: `W' = W / σ`, `b' = b − μ·W'` (row-major
    /// `[C, D]` for a Gemm with transB).
    pub fn folded(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let w: Vec<Vec<f32>> = self.w.to_vec2()?;
        let b: Vec<f32> = self.b.to_vec1()?;
        let (d, c) = (w.len(), b.len());
        let mut wt = vec![0f32; c * d];
        let mut bt = b.clone();
        for i in 0..d {
            for k in 0..c {
                let v = w[i][k] / self.std[i];
                wt[k * d + i] = v;
                bt[k] -= self.mean[i] * v;
            }
        }
        Ok((wt, bt))
    }
}

/// Weighted k-NN (cosine, temperature 0.07) or plain majority (euclidean).
pub fn knn(
    train: &[&Vec<f32>],
    ty: &[usize],
    test: &[&Vec<f32>],
    classes: usize,
    k: usize,
    metric: Metric,
) -> Result<Vec<usize>> {
    let norm = |rows: &[&Vec<f32>]| -> Result<Tensor> {
        let m = matrix(rows)?;
        Ok(match metric {
            Metric::Cosine => {
                m.broadcast_div(&m.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?)?
            }
            Metric::Euclidean => m,
        })
    };
    let tr = norm(train)?;
    let tr_sq = tr.sqr()?.sum(1)?.to_vec1::<f32>()?;
    let mut out = vec![];
    for chunk in test.chunks(256) {
        let te = norm(chunk)?;
        let sims: Vec<Vec<f32>> = te.matmul(&tr.t()?)?.to_vec2()?;
        let te_sq = te.sqr()?.sum(1)?.to_vec1::<f32>()?;
        for (q, row) in sims.iter().enumerate() {
            // score: similarity (cosine) or minus squared distance (euclidean)
            let mut cand: Vec<(f32, usize)> = row
                .iter()
                .enumerate()
                .map(|(i, &s)| match metric {
                    Metric::Cosine => (s, i),
                    Metric::Euclidean => (-(te_sq[q] + tr_sq[i] - 2.0 * s), i),
                })
                .collect();
            let kk = k.min(cand.len());
            cand.select_nth_unstable_by(kk - 1, |a, b| b.0.total_cmp(&a.0));
            let mut votes = vec![0f64; classes];
            for &(s, i) in &cand[..kk] {
                votes[ty[i]] += match metric {
                    Metric::Cosine => ((s - 1.0) as f64 / 0.07).exp(),
                    Metric::Euclidean => 1.0,
                };
            }
            out.push(
                votes
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(c, _)| c),
            );
        }
    }
    Ok(out)
}

pub fn probe(a: &ProbeConfig) -> Result<()> {
    let ds = data::load(&a.data)?;
    let (feats, fname) = probe_features(a, &ds)?;
    let (train, test) = ds.split();
    let classes = ds.classes.len();
    let test_x: Vec<&Vec<f32>> = test.iter().map(|&i| &feats[i]).collect();
    let test_y: Vec<usize> = test.iter().map(|&i| ds.labels[i]).collect();
    let runs = if a.labels_per_class == 0 {
        1
    } else {
        a.seeds.max(1)
    };
    let mut accs = vec![];
    let mut n_train = 0;
    if a.cv == 1 {
        bail!("--cv 1: give at least 2 folds (or 0 for the test split)");
    }
    if a.cv > 1 && a.out_bundle.is_some() {
        bail!("--cv only evaluates: drop --out-bundle");
    }
    let mut prober = Prober {
        a,
        ds: &ds,
        feats: &feats,
        classes,
        first: None,
    };
    for s in 0..runs {
        let lab = labelled(&train, &ds.labels, classes, a.labels_per_class, s as u64);
        n_train = lab.len();
        let (correct, seen) = if a.cv > 1 {
            prober.cross_validate(&lab)?
        } else {
            let pred = prober.fit_predict(&lab, &test_x)?;
            let correct = pred.iter().zip(&test_y).filter(|(p, t)| p == t).count();
            (correct, test_y.len())
        };
        accs.push(correct as f64 / seen as f64 * 100.0);
    }
    let first = prober.first;
    let mean = accs.iter().sum::<f64>() / accs.len() as f64;
    let std = (accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / accs.len() as f64).sqrt();
    let r = ProbeReport {
        data: ds.name.clone(),
        features: fname,
        method: a.method,
        labels_per_class: a.labels_per_class,
        train_labels: n_train,
        evaluated_on: if a.cv > 1 {
            format!("{}-fold CV on the training labels", a.cv)
        } else {
            "test split".into()
        },
        test_images: if a.cv > 1 { 0 } else { test_y.len() },
        accuracies: accs,
        mean,
        std,
    };
    print_probe_report(a, &r)?;
    if let Some(out) = &a.out_bundle {
        let (Some(m), Some(b)) = (first, &a.bundle) else {
            bail!("--out-bundle needs --method linear and --bundle");
        };
        write_probe_bundle(&Bundle::load(b)?, &m, &ds.classes, out, &r)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// The feature rows of every dataset image (the pixels for `raw`, an npy file, or embedded
/// with `--bundle`) and what they are, for the report.
fn probe_features(a: &ProbeConfig, ds: &data::Dataset) -> Result<(Vec<Vec<f32>>, String)> {
    let (feats, fname): (Vec<Vec<f32>>, String) = match (&a.features, &a.bundle) {
        (Some(f), _) if f == "raw" => (
            (0..ds.labels.len())
                .map(|i| ds.image(i).iter().map(|&p| p as f32 / 255.0).collect())
                .collect(),
            "raw pixels".into(),
        ),
        (Some(f), _) => (
            super::fisher::read_matrix(std::path::Path::new(f))?,
            f.clone(),
        ),
        (None, Some(b)) => {
            let bundle = Bundle::load(b)?;
            let mut be = super::fisher::open(&bundle)?;
            let all: Vec<usize> = (0..ds.labels.len()).collect();
            (
                super::fisher::embed_images(&mut be, ds, &all, "embed")?,
                b.display().to_string(),
            )
        }
        (None, None) => bail!("give --features F.npy|raw or --bundle B"),
    };
    if feats.len() != ds.labels.len() {
        bail!(
            "{fname}: {} feature rows, the dataset has {} images",
            feats.len(),
            ds.labels.len()
        );
    }
    Ok((feats, fname))
}

/// Fits probes on labelled images and predicts others; keeps the first linear probe (the one
/// `--out-bundle` writes).
struct Prober<'p> {
    a: &'p ProbeConfig,
    ds: &'p data::Dataset,
    feats: &'p [Vec<f32>],
    classes: usize,
    first: Option<Linear>,
}

impl Prober<'_> {
    /// Fit on `fit` (dataset indices), predict the rows `eval`.
    fn fit_predict(&mut self, fit: &[usize], eval: &[&Vec<f32>]) -> Result<Vec<usize>> {
        let a = self.a;
        let x: Vec<&Vec<f32>> = fit.iter().map(|&i| &self.feats[i]).collect();
        let y: Vec<usize> = fit.iter().map(|&i| self.ds.labels[i]).collect();
        Ok(match a.method {
            ProbeMethod::Linear => {
                let reg = if a.loss == Loss::Ls { a.ridge } else { a.wd };
                let m = train_linear(
                    &x,
                    &y,
                    self.classes,
                    a.loss,
                    a.epochs,
                    a.lr,
                    reg,
                    a.standardize,
                )?;
                let p = m.predict(eval)?;
                if self.first.is_none() {
                    self.first = Some(m);
                }
                p
            }
            ProbeMethod::Knn => knn(&x, &y, eval, self.classes, a.k, a.metric)?,
        })
    }

    /// `--cv` folds over the labelled images `lab` (fold = position mod K): the predictions
    /// that were right and the predictions made, over all folds.
    fn cross_validate(&mut self, lab: &[usize]) -> Result<(usize, usize)> {
        let cv = self.a.cv;
        let (mut correct, mut seen) = (0usize, 0usize);
        for f in 0..cv {
            let in_fold = |j: &usize| j % cv == f;
            let val: Vec<usize> = (0..lab.len()).filter(in_fold).map(|j| lab[j]).collect();
            let fit: Vec<usize> = (0..lab.len())
                .filter(|j| !in_fold(j))
                .map(|j| lab[j])
                .collect();
            let vx: Vec<&Vec<f32>> = val.iter().map(|&i| &self.feats[i]).collect();
            let pred = self.fit_predict(&fit, &vx)?;
            correct += pred
                .iter()
                .zip(&val)
                .filter(|(p, i)| **p == self.ds.labels[**i])
                .count();
            seen += val.len();
        }
        Ok((correct, seen))
    }
}

/// The report as JSON (`--json`) or as one line.
fn print_probe_report(a: &ProbeConfig, r: &ProbeReport) -> Result<()> {
    if a.json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        println!(
            "probe {:?} on {} of {}: {} labels ({}), {}: accuracy {:.2} % ± {:.2} over {} run(s)",
            a.method,
            r.features,
            r.data,
            r.train_labels,
            if a.labels_per_class == 0 {
                "all".to_string()
            } else {
                format!("{} per class", a.labels_per_class)
            },
            if a.cv > 1 {
                r.evaluated_on.clone()
            } else {
                format!("{} test images", r.test_images)
            },
            r.mean,
            r.std,
            r.accuracies.len()
        );
    }
    Ok(())
}

/// A classify bundle: the features bundle's files + `probe.onnx` (Gemm + Softmax on the
/// vector, standardisation folded in).
fn write_probe_bundle(
    src: &Bundle,
    m: &Linear,
    classes: &[String],
    out: &std::path::Path,
    r: &ProbeReport,
) -> Result<()> {
    let (w, b) = m.folded()?;
    let (d, c) = (m.mean.len(), classes.len());
    let layers = vec![bevrt_models::SeqLayer {
        name: "probe".into(),
        op: bevrt_models::SeqOp::Linear {
            weight: w,
            bias: b,
            cin: d,
            cout: c,
        },
        expose: None,
    }];
    let mut bytes = bevrt_models::sequential_to_onnx(
        "probe",
        "features",
        &[1, d],
        "logits",
        &layers,
        "bevrt linear probe",
    )?;
    // append a Softmax so the bundle reports probabilities
    {
        use prost::Message;
        let mut p = tract_onnx::pb::ModelProto::decode(bytes.as_slice())?;
        let g = p.graph.as_mut().expect("graph");
        g.node.push(tract_onnx::pb::NodeProto {
            name: "softmax".into(),
            op_type: "Softmax".into(),
            input: vec!["logits".into()],
            output: vec!["probabilities".into()],
            ..Default::default()
        });
        g.output[0].name = "probabilities".into();
        bytes = p.encode_to_vec();
    }
    let tmp = std::env::temp_dir().join(format!("bevrt-probe-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    std::fs::write(tmp.join("probe.onnx"), bytes)?;
    let mut manifest = src.manifest.clone();
    manifest.task = Task::Classify;
    manifest.selftest = None; // a new network: the parent's vectors do not describe it
    manifest.name = format!("{}-probe", manifest.name);
    manifest.description = format!("{} + linear probe", manifest.description);
    manifest.models.retain(|f| f.role == "model");
    manifest.models.push(ModelFile {
        role: "probe".into(),
        file: "probe.onnx".into(),
        sha256: String::new(),
    });
    manifest.outputs = vec![OutputSpec {
        name: Some("probabilities".into()),
        kind: OutputKind::Probabilities,
        labels: classes.to_vec(),
    }];
    let mut prov = toml::Table::new();
    prov.insert("features".into(), r.features.clone().into());
    prov.insert("train_labels".into(), (r.train_labels as i64).into());
    prov.insert("test_accuracy".into(), r.accuracies[0].into());
    manifest
        .provenance
        .insert("probe".into(), toml::Value::Table(prov));
    let files: Vec<(PathBuf, String)> = manifest
        .files()
        .map(|f| {
            let p = if f.file == "probe.onnx" {
                tmp.join("probe.onnx")
            } else {
                src.dir.join(&f.file)
            };
            (p, f.file.clone())
        })
        .collect();
    let res = bevrt_models::write_bundle(out, manifest, &files);
    let _ = std::fs::remove_dir_all(&tmp);
    res?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both forms (n×n Gram when d > n, d×d otherwise) satisfy the ridge normal equations
    /// `(XᵀX + λ·s·I) W = Xᵀ(T − b)` with `s` the mean squared row norm.
    #[test]
    fn least_squares_solves_the_normal_equations_in_both_forms() {
        for (n, d) in [(12usize, 40usize), (40, 12)] {
            let mut r = Rng(7 + n as u64);
            let v: Vec<f32> = (0..n * d).map(|_| r.uniform() * 2.0 - 1.0).collect();
            let x = Tensor::from_vec(v.clone(), (n, d), &Device::Cpu).unwrap();
            let y: Vec<usize> = (0..n).map(|i| i % 3).collect();
            let lam = 0.1;
            let (w, b) = least_squares(&x, &y, 3, lam).unwrap();
            let w: Vec<Vec<f32>> = w.to_vec2().unwrap();
            let b: Vec<f32> = b.to_vec1().unwrap();
            let s = v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>() / n as f64;
            for c in 0..3 {
                for j in 0..d {
                    // (XᵀX w)_j + λ s w_j  vs  (Xᵀ (t − b))_j
                    let mut lhs = lam * s * w[j][c] as f64;
                    let mut rhs = 0f64;
                    for i in 0..n {
                        let xw: f64 = (0..d).map(|k| v[i * d + k] as f64 * w[k][c] as f64).sum();
                        lhs += v[i * d + j] as f64 * xw;
                        let t = if y[i] == c { 1.0 } else { -1.0 };
                        rhs += v[i * d + j] as f64 * (t - b[c] as f64);
                    }
                    assert!(
                        (lhs - rhs).abs() < 1e-3 * (1.0 + rhs.abs()),
                        "n {n} d {d}: {lhs} vs {rhs}"
                    );
                }
            }
        }
    }
}
