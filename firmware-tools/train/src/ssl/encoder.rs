//! The one encoder every self-supervised method trains (28x28 grey in, a 128-d vector out),
//! and the small heads the methods put on top of it during training only.
//!
//! ```text
//! 1x28x28 → Conv3x3/1 → 32x28x28 → BN → ReLU → Conv4x4/2 → 64x14x14 → BN → ReLU
//!         → Conv4x4/2 → 128x7x7 → BN → ReLU → Conv3x3/2 → 128x4x4 → BN → ReLU → Flatten
//!         → Linear → 128
//! ```
//! Each convolution is batch-normalised in training and exported with the normalisation
//! folded into its weights. 575k parameters. The exported bundle's vector is the Linear output (before any head), the
//! representation linear probes and k-NN judge. Convolutions go through [`crate::cpu_ops`]
//! (im2col + GEMM both ways), so a training step costs about three forward passes.

use anyhow::Result;
use bevrt_models::{SeqLayer, SeqOp};
use bevrt_runtime::choice::Choice;
use candle_core::{DType, Device, Tensor, Var};

use crate::cpu_ops::{batch_norm_relu, conv2d};
use crate::rng::Rng;

/// Input side (square, grey).
pub const SIDE: usize = 28;
/// The representation's width.
pub const DIM: usize = 128;

/// `(cin, cout, k, stride, pad)` of each convolution.
const CONVS: [(usize, usize, usize, usize, usize); 4] = [
    (1, 32, 3, 1, 1),
    (32, 64, 4, 2, 1),
    (64, 128, 4, 2, 1),
    (128, 128, 3, 2, 1),
];
/// Output side of the last convolution.
const LAST_SIDE: usize = 4;
const FLAT: usize = 128 * LAST_SIDE * LAST_SIDE;

/// Which layer a bundle exports as its vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Representation {
    /// The Linear layer's 128 values (what the heads are trained on).
    #[default]
    Fc,
    /// The last convolution's 128x4x4 map, flattened (2048 values), before the Linear layer.
    Conv,
}

impl Choice for Representation {
    const ALL: &'static [Self] = &[Self::Fc, Self::Conv];
    fn name(self) -> &'static str {
        match self {
            Self::Fc => "fc",
            Self::Conv => "conv",
        }
    }
    fn help(self) -> &'static str {
        match self {
            Self::Fc => "The Linear layer's 128 values (what the heads are trained on)",
            Self::Conv => {
                "The last convolution's 128x4x4 map, flattened (2048 values), before the Linear layer"
            }
        }
    }
}
bevrt_runtime::named_choice!(Representation);

/// A Linear layer `y = x Wᵀ + b` (W: out × in).
pub struct Linear {
    pub w: Var,
    pub b: Var,
}

impl Linear {
    pub fn init(name_seed: u64, cin: usize, cout: usize) -> Result<Linear> {
        let mut r = Rng(name_seed);
        Ok(Linear {
            w: uniform_var(&[cout, cin], (1.0 / cin as f32).sqrt(), &mut r)?,
            b: Var::zeros(cout, DType::F32, &Device::Cpu)?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.w.as_tensor().t()?)?
            .broadcast_add(self.b.as_tensor())?)
    }
    pub fn vars(&self, name: &str) -> Vec<(String, Var)> {
        vec![
            (format!("{name}.weight"), self.w.clone()),
            (format!("{name}.bias"), self.b.clone()),
        ]
    }
    fn export(&self, name: &str) -> Result<SeqLayer> {
        let (cout, cin) = self.w.as_tensor().dims2()?;
        Ok(SeqLayer {
            name: name.into(),
            op: SeqOp::Linear {
                weight: self.w.as_tensor().flatten_all()?.to_vec1()?,
                bias: self.b.as_tensor().to_vec1()?,
                cin,
                cout,
            },
            expose: None,
        })
    }
}

/// Uniform(-bound, bound) weights from the SplitMix stream.
pub fn uniform_var(shape: &[usize], bound: f32, r: &mut Rng) -> Result<Var> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (r.uniform() * 2.0 - 1.0) * bound).collect();
    Ok(Var::from_tensor(&Tensor::from_vec(
        v,
        shape,
        &Device::Cpu,
    )?)?)
}

/// A convolution followed by batch normalisation (trained on batch statistics, exported
/// folded into the convolution with the running statistics) and ReLU.
struct ConvBn {
    w: Var,
    b: Var,
    gamma: Var,
    beta: Var,
    /// Running mean and variance: checkpointed, not trained.
    running_mean: Var,
    running_var: Var,
    geom: (usize, usize, usize, usize, usize),
}

/// Running statistics' momentum and the variance floor (PyTorch's defaults).
const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

impl ConvBn {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, cout, _, stride, pad) = self.geom;
        if train {
            let y = conv2d(x, self.w.as_tensor(), self.b.as_tensor(), pad, stride)?;
            let (y, mean, var) =
                batch_norm_relu(&y, self.gamma.as_tensor(), self.beta.as_tensor(), BN_EPS)?;
            // Running statistics use the unbiased variance, as PyTorch's do.
            let m = (y.elem_count() / mean.len()) as f32;
            let unbias = m / (m - 1.0).max(1.0);
            let keep = 1.0 - BN_MOMENTUM as f32;
            let update = |run: &Var, batch: &[f32], scale: f32| -> Result<()> {
                let old: Vec<f32> = run.as_tensor().to_vec1()?;
                let new: Vec<f32> = old
                    .iter()
                    .zip(batch)
                    .map(|(o, b)| keep * o + BN_MOMENTUM as f32 * b * scale)
                    .collect();
                run.set(&Tensor::from_vec(new, batch.len(), &Device::Cpu)?)?;
                Ok(())
            };
            update(&self.running_mean, &mean, 1.0)?;
            update(&self.running_var, &var, unbias)?;
            return Ok(y);
        }
        // Inference: exactly the exported convolution (normalisation folded in).
        let (w, b) = self.folded()?;
        let w = Tensor::from_vec(w, self.w.as_tensor().dims4()?, &Device::Cpu)?;
        let b = Tensor::from_vec(b, cout, &Device::Cpu)?;
        Ok(conv2d(x, &w, &b, pad, stride)?.relu()?)
    }

    /// Weights and bias with the normalisation folded in (inference: running statistics).
    fn folded(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let (_, cout, ..) = self.geom;
        let w: Vec<f32> = self.w.as_tensor().flatten_all()?.to_vec1()?;
        let b: Vec<f32> = self.b.as_tensor().to_vec1()?;
        let g: Vec<f32> = self.gamma.as_tensor().to_vec1()?;
        let be: Vec<f32> = self.beta.as_tensor().to_vec1()?;
        let rm: Vec<f32> = self.running_mean.as_tensor().to_vec1()?;
        let rv: Vec<f32> = self.running_var.as_tensor().to_vec1()?;
        let per = w.len() / cout;
        let mut wf = w;
        let mut bf = vec![0f32; cout];
        for o in 0..cout {
            let s = g[o] / (rv[o] + BN_EPS as f32).sqrt();
            wf[o * per..(o + 1) * per].iter_mut().for_each(|v| *v *= s);
            bf[o] = (b[o] - rm[o]) * s + be[o];
        }
        Ok((wf, bf))
    }
}

pub struct Encoder {
    convs: Vec<ConvBn>,
    fc: Linear,
    /// The Linear layer's width ([`DIM`] for the self-supervised methods).
    dim: usize,
}

impl Encoder {
    /// He-uniform convolutions, unit-gain normalisation, a LeCun-uniform Linear to [`DIM`].
    pub fn init(seed: u64) -> Result<Encoder> {
        Self::with_dim(seed, DIM)
    }

    /// The same network with a `dim`-wide Linear layer (PDAE's code z).
    pub fn with_dim(seed: u64, dim: usize) -> Result<Encoder> {
        let mut r = Rng(seed ^ 0xe4c0_de42);
        let vec = |n: usize, v: f32| -> Result<Var> {
            Ok(Var::from_tensor(&Tensor::from_vec(
                vec![v; n],
                n,
                &Device::Cpu,
            )?)?)
        };
        let convs = CONVS
            .iter()
            .map(|&geom| {
                let (cin, cout, k, _, _) = geom;
                let fan_in = (cin * k * k) as f32;
                Ok(ConvBn {
                    w: uniform_var(&[cout, cin, k, k], (6.0 / fan_in).sqrt(), &mut r)?,
                    b: vec(cout, 0.0)?,
                    gamma: vec(cout, 1.0)?,
                    beta: vec(cout, 0.0)?,
                    running_mean: vec(cout, 0.0)?,
                    running_var: vec(cout, 1.0)?,
                    geom,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder {
            convs,
            fc: Linear::init(seed ^ 0xfc, FLAT, dim)?,
            dim,
        })
    }

    /// Trained parameters.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut v = vec![];
        for (i, c) in self.convs.iter().enumerate() {
            v.push((format!("enc.conv{i}.weight"), c.w.clone()));
            v.push((format!("enc.conv{i}.bias"), c.b.clone()));
            v.push((format!("enc.bn{i}.weight"), c.gamma.clone()));
            v.push((format!("enc.bn{i}.bias"), c.beta.clone()));
        }
        v.extend(self.fc.vars("enc.fc"));
        v
    }

    /// State that is checkpointed but not trained: the running statistics.
    pub fn buffers(&self) -> Vec<(String, Var)> {
        let mut v = vec![];
        for (i, c) in self.convs.iter().enumerate() {
            v.push((format!("enc.bn{i}.running_mean"), c.running_mean.clone()));
            v.push((format!("enc.bn{i}.running_var"), c.running_var.clone()));
        }
        v
    }

    /// `(n, 1, 28, 28)` in the bundle's normalisation ([-1, 1]) → `(n, dim)`. `train`:
    /// normalise with the batch's statistics and update the running ones.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.features(x, train)?;
        self.fc.forward(&h)
    }

    /// The flattened output of the last convolution, `(n, 2048)`.
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for c in &self.convs {
            h = c.forward(&h, train)?;
        }
        let n = h.dim(0)?;
        Ok(h.reshape((n, FLAT))?)
    }

    /// Width of the exported vector for `repr`.
    pub fn repr_dim(&self, repr: Representation) -> usize {
        match repr {
            Representation::Fc => self.dim,
            Representation::Conv => FLAT,
        }
    }

    /// Inference up to the exported representation: what the bundle computes.
    pub fn embed(&self, x: &Tensor, repr: Representation) -> Result<Tensor> {
        match repr {
            Representation::Fc => self.forward(x, false),
            Representation::Conv => self.features(x, false),
        }
    }

    /// The network as exported layers: convolutions (normalisation folded in), ReLUs,
    /// Flatten, and the Linear layer for [`Representation::Fc`]. Equal to `embed(x, repr)`.
    pub fn layers(&self, repr: Representation) -> Result<Vec<SeqLayer>> {
        let mut out = vec![];
        for (i, c) in self.convs.iter().enumerate() {
            let (cin, cout, k, stride, pad) = c.geom;
            let (weight, bias) = c.folded()?;
            out.push(SeqLayer {
                name: format!("enc_conv{i}"),
                op: SeqOp::Conv {
                    weight,
                    bias,
                    cin,
                    cout,
                    k,
                    stride,
                    pad,
                },
                expose: None,
            });
            out.push(SeqLayer {
                name: format!("enc_relu{i}"),
                op: SeqOp::Relu,
                expose: None,
            });
        }
        out.push(SeqLayer {
            name: "enc_flatten".into(),
            op: SeqOp::Flatten,
            expose: None,
        });
        if repr == Representation::Fc {
            out.push(self.fc.export("enc_fc")?);
        }
        Ok(out)
    }

    pub fn parameter_count(&self) -> usize {
        self.vars()
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum()
    }
}

/// The projection head of the contrastive-style methods: ReLU → Linear(128, 256) → batch
/// standardisation → ReLU → Linear(256, 64) → batch standardisation → L2 normalisation.
/// Trained with the encoder, never exported: the representation before a head transfers
/// better than after it (SimCLR's finding, which BAM and InvProp keep).
///
/// Why the standardisation (batch norm without affine parameters, batch statistics): a fresh
/// ReLU network maps every image to nearly the same direction (cosine ≈ 0.99), where BAM's
/// attention and its Sinkhorn target are both uniform and the loss has no gradient: measured
/// here, a head without it stayed at the uniform loss (log 510) for 6 epochs on MNIST-5k.
/// Centring the batch spreads the projections over the sphere from the first step.
pub struct Projector {
    l1: Linear,
    l2: Linear,
}

pub const PROJ_DIM: usize = 64;

impl Projector {
    pub fn init(seed: u64) -> Result<Projector> {
        Self::init_from(seed, DIM)
    }
    /// A head over `dim`-wide inputs (the letsmap-lite encoder's pooled features).
    pub fn init_from(seed: u64, dim: usize) -> Result<Projector> {
        Ok(Projector {
            l1: Linear::init(seed ^ 0x9a01, dim, 256)?,
            l2: Linear::init(seed ^ 0x9a02, 256, PROJ_DIM)?,
        })
    }
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut v = self.l1.vars("proj.l1");
        v.extend(self.l2.vars("proj.l2"));
        v
    }
    /// L2-normalised projections.
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let a = batch_standardise(&self.l1.forward(&h.relu()?)?)?.relu()?;
        l2_normalise(&batch_standardise(&self.l2.forward(&a)?)?)
    }
}

/// Each column centred and scaled to unit variance over the batch (rows).
pub fn batch_standardise(x: &Tensor) -> Result<Tensor> {
    let mean = x.mean_keepdim(0)?;
    let c = x.broadcast_sub(&mean)?;
    let var = c.sqr()?.mean_keepdim(0)?;
    Ok(c.broadcast_div(&(var + 1e-5)?.sqrt()?)?)
}

/// Rows scaled to unit length.
pub fn l2_normalise(z: &Tensor) -> Result<Tensor> {
    Ok(z.broadcast_div(&(z.sqr()?.sum_keepdim(1)? + 1e-12)?.sqrt()?)?)
}
