//! A small DCGAN-style generator and a spectral-norm discriminator in candle (CPU), trained
//! with the hinge loss, and their export to ONNX.
//!
//! Generator: z (64) → Linear → 64x7x7 → ReLU → ConvT 4/2 → 32x14x14 → ReLU → ConvT 4/2 →
//! 1x28x28 → tanh. (Resize-convolutions were tried: 1.6x slower per step in candle on CPU.)
//! Both networks convolve through [`crate::cpu_ops`] (im2col/col2im + GEMM), not candle's
//! CPU convolutions, whose transposed convolution made a training step about 2x slower.
//!
//! Discriminator: 1x28x28 → Conv 4/2 → 32x14x14 → LeakyReLU(0.2) ("a1") → Conv 4/2 → 64x7x7
//! ("z2", before its LeakyReLU) → Linear → 1. Every discriminator weight is divided by its
//! spectral norm (one power iteration per step, as Miyato et al.), which keeps D
//! 1-Lipschitz-ish and its gradients, the AFV features, well scaled.

use anyhow::Result;
use bevrt_models::{SeqLayer, SeqOp};
use candle_core::{D, DType, Device, Tensor, Var};

use crate::cpu_ops::{conv_transpose2d, conv2d, leaky_relu};
use crate::rng::Rng;

pub const Z: usize = 64;
pub const SLOPE: f64 = 0.2;

fn uniform(shape: &[usize], bound: f32, rng: &mut Rng) -> Result<Var> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| (rng.uniform() * 2.0 - 1.0) * bound)
        .collect();
    Ok(Var::from_tensor(&Tensor::from_vec(
        v,
        shape.to_vec(),
        &Device::Cpu,
    )?)?)
}

fn zeros(n: usize) -> Result<Var> {
    Ok(Var::from_tensor(&Tensor::zeros(
        n,
        DType::F32,
        &Device::Cpu,
    )?)?)
}

pub struct Generator {
    pub fc_w: Var,
    pub fc_b: Var,
    pub t1_w: Var,
    pub t1_b: Var,
    pub t2_w: Var,
    pub t2_b: Var,
}

impl Generator {
    pub fn init(seed: u64) -> Result<Generator> {
        let mut r = Rng(seed ^ 0x6e6e);
        Ok(Generator {
            fc_w: uniform(&[64 * 49, Z], (6.0 / Z as f32).sqrt() * 0.5, &mut r)?,
            fc_b: zeros(64 * 49)?,
            t1_w: uniform(&[64, 32, 4, 4], (6.0f32 / (64.0 * 4.0)).sqrt(), &mut r)?,
            t1_b: zeros(32)?,
            t2_w: uniform(&[32, 1, 4, 4], (6.0f32 / (32.0 * 4.0)).sqrt(), &mut r)?,
            t2_b: zeros(1)?,
        })
    }

    pub fn vars(&self) -> Vec<(String, Var)> {
        [
            ("g.fc.weight", &self.fc_w),
            ("g.fc.bias", &self.fc_b),
            ("g.t1.weight", &self.t1_w),
            ("g.t1.bias", &self.t1_b),
            ("g.t2.weight", &self.t2_w),
            ("g.t2.bias", &self.t2_b),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect()
    }

    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let b = z.dim(0)?;
        let h = z
            .matmul(&self.fc_w.as_tensor().t()?)?
            .broadcast_add(self.fc_b.as_tensor())?
            .reshape((b, 64, 7, 7))?
            .relu()?;
        let h = conv_transpose2d(&h, self.t1_w.as_tensor(), self.t1_b.as_tensor(), 1, 2)?.relu()?;
        let x = conv_transpose2d(&h, self.t2_w.as_tensor(), self.t2_b.as_tensor(), 1, 2)?.tanh()?;
        Ok(x)
    }

    pub fn layers(&self) -> Result<Vec<SeqLayer>> {
        let v = |t: &Var| -> Result<Vec<f32>> { Ok(t.as_tensor().flatten_all()?.to_vec1()?) };
        let l = |name: &str, op| SeqLayer {
            name: name.into(),
            op,
            expose: None,
        };
        Ok(vec![
            l(
                "g_fc",
                SeqOp::Linear {
                    weight: v(&self.fc_w)?,
                    bias: v(&self.fc_b)?,
                    cin: Z,
                    cout: 64 * 49,
                },
            ),
            l("g_reshape", SeqOp::Reshape(vec![64, 7, 7])),
            l("g_relu1", SeqOp::Relu),
            l(
                "g_t1",
                SeqOp::ConvTranspose {
                    weight: v(&self.t1_w)?,
                    bias: v(&self.t1_b)?,
                    cin: 64,
                    cout: 32,
                    k: 4,
                    stride: 2,
                    pad: 1,
                },
            ),
            l("g_relu2", SeqOp::Relu),
            l(
                "g_t2",
                SeqOp::ConvTranspose {
                    weight: v(&self.t2_w)?,
                    bias: v(&self.t2_b)?,
                    cin: 32,
                    cout: 1,
                    k: 4,
                    stride: 2,
                    pad: 1,
                },
            ),
            l("g_tanh", SeqOp::Tanh),
        ])
    }
}

/// A weight with its spectral-norm power-iteration vector `u` (not trained).
pub struct SnWeight {
    pub w: Var,
    pub u: Tensor,
}

impl SnWeight {
    fn new(w: Var, rng: &mut Rng) -> Result<SnWeight> {
        let out = w.as_tensor().dim(0)?;
        let u: Vec<f32> = (0..out).map(|_| rng.uniform() - 0.5).collect();
        let u = Tensor::from_vec(u, out, &Device::Cpu)?;
        let u = (&u / u.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64)?;
        Ok(SnWeight { w, u })
    }

    /// `W / σ(W)`; with `update`, one power iteration refines `u` first (training).
    pub fn normalised(&mut self, update: bool) -> Result<Tensor> {
        let w = self.w.as_tensor();
        let out = w.dim(0)?;
        let m = w.reshape((out, ()))?;
        let md = m.detach();
        let norm = |t: Tensor| -> Result<Tensor> {
            let n = t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?.max(1e-12);
            Ok((t / n as f64)?)
        };
        let v = norm(md.t()?.matmul(&self.u.unsqueeze(1)?)?.squeeze(1)?)?;
        if update {
            self.u = norm(md.matmul(&v.unsqueeze(1)?)?.squeeze(1)?)?;
        }
        let sigma = self
            .u
            .unsqueeze(0)?
            .matmul(&m.matmul(&v.unsqueeze(1)?)?)?
            .reshape(())?;
        Ok(w.broadcast_div(&sigma)?)
    }
}

/// Geometry (the AFV op's contract): conv 4/2/1 twice, then linear.
pub struct Discriminator {
    /// Output channels of conv1 and conv2.
    pub ch: (usize, usize),
    pub c1: SnWeight,
    pub c1_b: Var,
    pub c2: SnWeight,
    pub c2_b: Var,
    pub fc: SnWeight,
    pub fc_b: Var,
}

/// Forward activations the AFV op reads.
#[cfg_attr(not(test), allow(dead_code))] // a1 and z2 are read by the AFV-op tests
pub struct DOut {
    pub d: Tensor,
    pub a1: Tensor,
    pub z2: Tensor,
}

impl Discriminator {
    pub fn init(seed: u64, (c1, c2): (usize, usize)) -> Result<Discriminator> {
        let mut r = Rng(seed ^ 0xd15c);
        Ok(Discriminator {
            ch: (c1, c2),
            c1: SnWeight::new(
                uniform(&[c1, 1, 4, 4], (6.0f32 / 16.0).sqrt(), &mut r)?,
                &mut r,
            )?,
            c1_b: zeros(c1)?,
            c2: SnWeight::new(
                uniform(&[c2, c1, 4, 4], (6.0 / (c1 as f32 * 16.0)).sqrt(), &mut r)?,
                &mut r,
            )?,
            c2_b: zeros(c2)?,
            fc: SnWeight::new(
                uniform(&[1, c2 * 49], (6.0 / (c2 as f32 * 49.0)).sqrt(), &mut r)?,
                &mut r,
            )?,
            fc_b: zeros(1)?,
        })
    }

    pub fn vars(&self) -> Vec<(String, Var)> {
        [
            ("d.c1.weight", &self.c1.w),
            ("d.c1.bias", &self.c1_b),
            ("d.c2.weight", &self.c2.w),
            ("d.c2.bias", &self.c2_b),
            ("d.fc.weight", &self.fc.w),
            ("d.fc.bias", &self.fc_b),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect()
    }

    /// The effective (spectrally normalised) weights: w1, w2, w3.
    pub fn weights(&mut self, update: bool) -> Result<[Tensor; 3]> {
        Ok([
            self.c1.normalised(update)?,
            self.c2.normalised(update)?,
            self.fc.normalised(update)?,
        ])
    }

    /// Forward with given effective weights (so a training step normalises once).
    pub fn forward_with(&self, x: &Tensor, w: &[Tensor; 3]) -> Result<DOut> {
        let b = [&self.c1_b, &self.c2_b, &self.fc_b].map(|v| v.as_tensor().clone());
        Self::forward_params(x, w, &b)
    }

    /// Forward with every parameter detached: the generator's step needs gradients through D
    /// to its input only, and skips D's weight and bias gradients.
    pub fn forward_frozen(&self, x: &Tensor, w: &[Tensor; 3]) -> Result<DOut> {
        let b = [&self.c1_b, &self.c2_b, &self.fc_b].map(|v| v.as_tensor().detach());
        Self::forward_params(x, &w.clone().map(|t| t.detach()), &b)
    }

    fn forward_params(x: &Tensor, w: &[Tensor; 3], b: &[Tensor; 3]) -> Result<DOut> {
        let n = x.dim(0)?;
        let z1 = conv2d(x, &w[0], &b[0], 1, 2)?;
        let a1 = leaky_relu(&z1, SLOPE)?;
        let z2 = conv2d(&a1, &w[1], &b[1], 1, 2)?;
        let a2 = leaky_relu(&z2, SLOPE)?.reshape((n, ()))?;
        let d = a2
            .matmul(&w[2].t()?)?
            .broadcast_add(&b[2])?
            .squeeze(D::Minus1)?;
        Ok(DOut { d, a1, z2 })
    }

    /// Export layers with the effective weights; `a1` and `z2` exposed after `d`.
    pub fn layers(&mut self) -> Result<Vec<SeqLayer>> {
        let w = self.weights(false)?;
        let v = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
        let b = |t: &Var| -> Result<Vec<f32>> { Ok(t.as_tensor().to_vec1()?) };
        let l = |name: &str, op, expose: Option<&str>| SeqLayer {
            name: name.into(),
            op,
            expose: expose.map(String::from),
        };
        Ok(vec![
            l(
                "d_c1",
                SeqOp::Conv {
                    weight: v(&w[0])?,
                    bias: b(&self.c1_b)?,
                    cin: 1,
                    cout: self.ch.0,
                    k: 4,
                    stride: 2,
                    pad: 1,
                },
                None,
            ),
            l("d_a1", SeqOp::LeakyRelu(SLOPE as f32), Some("a1")),
            l(
                "d_c2",
                SeqOp::Conv {
                    weight: v(&w[1])?,
                    bias: b(&self.c2_b)?,
                    cin: self.ch.0,
                    cout: self.ch.1,
                    k: 4,
                    stride: 2,
                    pad: 1,
                },
                Some("z2"),
            ),
            l("d_a2", SeqOp::LeakyRelu(SLOPE as f32), None),
            l("d_flat", SeqOp::Flatten, None),
            l(
                "d_fc",
                SeqOp::Linear {
                    weight: v(&w[2])?,
                    bias: b(&self.fc_b)?,
                    cin: self.ch.1 * 49,
                    cout: 1,
                },
                None,
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::normal;
    use bevrt_runtime::afv::{AfvGeometry, afv_score};

    /// The default widths of `gan train --d-channels`.
    const D_C1: usize = 32;
    const D_C2: usize = 64;

    /// The runtime's analytic per-sample score equals candle's autograd gradient of D with
    /// respect to the effective conv2 weights and bias and the linear weights.
    #[test]
    fn analytic_score_equals_autograd() -> Result<()> {
        let mut d = Discriminator::init(3, (D_C1, D_C2))?;
        // trained-looking biases so both LeakyReLU branches are exercised
        let mut r = Rng(11);
        d.c2_b
            .set(&Tensor::from_vec(normal(D_C2, &mut r), D_C2, &Device::Cpu)?)?;
        let [w1, w2, w3] = d.weights(false)?;
        let (w2v, w3v) = (
            Var::from_tensor(&w2.detach())?,
            Var::from_tensor(&w3.detach())?,
        );
        let geom = AfvGeometry::k4s2(D_C1, (14, 14), D_C2, SLOPE as f32, 1);
        for sample in 0..3 {
            let x = Tensor::from_vec(normal(784, &mut r), (1, 1, 28, 28), &Device::Cpu)?;
            let out = d.forward_with(
                &x,
                &[
                    w1.detach(),
                    w2v.as_tensor().clone(),
                    w3v.as_tensor().clone(),
                ],
            )?;
            let grads = out.d.sum_all()?.backward()?;
            let g_w3: Vec<f32> = grads
                .get(w3v.as_tensor())
                .expect("w3 grad")
                .flatten_all()?
                .to_vec1()?;
            let g_w2: Vec<f32> = grads
                .get(w2v.as_tensor())
                .expect("w2 grad")
                .flatten_all()?
                .to_vec1()?;
            let g_b2: Vec<f32> = grads.get(d.c2_b.as_tensor()).expect("b2 grad").to_vec1()?;
            let want: Vec<f32> = g_w3.into_iter().chain(g_w2).chain(g_b2).collect();
            let a1: Vec<f32> = out.a1.flatten_all()?.to_vec1()?;
            let z2: Vec<f32> = out.z2.flatten_all()?.to_vec1()?;
            let w3f: Vec<f32> = w3.flatten_all()?.to_vec1()?;
            let mut delta = vec![0f32; geom.z2_len()];
            let mut u = vec![0f32; geom.dim()];
            afv_score(&geom, &a1, &z2, &w3f, &mut delta, &mut u);
            assert_eq!(u.len(), want.len());
            let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
            let err = u
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                .sqrt();
            assert!(
                err / norm < 1e-4,
                "sample {sample}: relative error {}",
                err / norm
            );
            for (k, (a, b)) in u.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(norm / (want.len() as f32).sqrt()),
                    "component {k}: {a} vs {b}"
                );
            }
        }
        Ok(())
    }

    /// With 2x2 spatial cells, the analytic score equals candle's autograd gradient of D with
    /// conv2 untied into one copy per cell (weights and bias; copies equal, D unchanged).
    #[test]
    fn analytic_cell_scores_equal_autograd_of_untied_conv2() -> Result<()> {
        let mut d = Discriminator::init(4, (8, 16))?;
        let mut r = Rng(12);
        d.c2_b
            .set(&Tensor::from_vec(normal(16, &mut r), 16, &Device::Cpu)?)?;
        let [w1, w2, w3] = d.weights(false)?;
        let geom = AfvGeometry::k4s2(8, (14, 14), 16, SLOPE as f32, 2);
        // cell masks over the 7x7 output: rows/cols 0..4 and 4..7
        let masks: Vec<Tensor> = (0..4)
            .map(|q| {
                let m: Vec<f32> = (0..49)
                    .map(|p| {
                        let (y, x) = (p / 7, p % 7);
                        ((y * 2 / 7) * 2 + x * 2 / 7 == q) as u8 as f32
                    })
                    .collect();
                Tensor::from_vec(m, (1, 1, 7, 7), &Device::Cpu)
            })
            .collect::<candle_core::Result<_>>()?;
        let w2s: Vec<Var> = (0..4)
            .map(|_| Var::from_tensor(&w2.detach()))
            .collect::<candle_core::Result<_>>()?;
        let b2s: Vec<Var> = (0..4)
            .map(|_| Var::from_tensor(&d.c2_b.as_tensor().detach()))
            .collect::<candle_core::Result<_>>()?;
        let x = Tensor::from_vec(normal(784, &mut r), (1, 1, 28, 28), &Device::Cpu)?;
        let out = d.forward_with(&x, &[w1.detach(), w2.detach(), w3.detach()])?;
        let mut z2 = out.z2.zeros_like()?;
        for q in 0..4 {
            let zq = out
                .a1
                .conv2d(w2s[q].as_tensor(), 1, 2, 1, 1)?
                .broadcast_add(&b2s[q].as_tensor().reshape((1, 16, 1, 1))?)?;
            z2 = (z2 + zq.broadcast_mul(&masks[q])?)?;
        }
        // untying changes nothing in the forward pass
        let same = (&z2 - &out.z2)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(same < 1e-5, "untied z2 differs by {same}");
        let dval = candle_nn::ops::leaky_relu(&z2, SLOPE)?
            .reshape((1, 16 * 49))?
            .matmul(&w3.t()?)?
            .sum_all()?;
        let grads = dval.backward()?;
        let flat = |v: &Var| -> Result<Vec<f32>> {
            Ok(grads
                .get(v.as_tensor())
                .expect("grad")
                .flatten_all()?
                .to_vec1()?)
        };
        let mut want: Vec<f32> = candle_nn::ops::leaky_relu(&out.z2, SLOPE)?
            .flatten_all()?
            .to_vec1()?;
        for v in &w2s {
            want.extend(flat(v)?);
        }
        for v in &b2s {
            want.extend(flat(v)?);
        }
        let mut delta = vec![0f32; geom.z2_len()];
        let mut u = vec![0f32; geom.dim()];
        afv_score(
            &geom,
            &out.a1.flatten_all()?.to_vec1::<f32>()?,
            &out.z2.flatten_all()?.to_vec1::<f32>()?,
            &w3.flatten_all()?.to_vec1::<f32>()?,
            &mut delta,
            &mut u,
        );
        assert_eq!(u.len(), want.len());
        let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
        for (k, (a, b)) in u.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(norm / (want.len() as f32).sqrt()),
                "component {k}: {a} vs {b}"
            );
        }
        Ok(())
    }

    /// The exported ONNX discriminator and generator compute what candle computes.
    #[test]
    fn exported_networks_match_candle() -> Result<()> {
        use bevrt_runtime::backend::cpu::CpuNetwork;
        let dir = std::env::temp_dir().join(format!("bevrt-gan-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut d = Discriminator::init(5, (D_C1, D_C2))?;
        let g = Generator::init(5)?;
        let mut r = Rng(2);
        let dp = dir.join("d.onnx");
        std::fs::write(
            &dp,
            bevrt_models::sequential_to_onnx("d", "image", &[1, 1, 28, 28], "d", &d.layers()?, "")?,
        )?;
        let gp = dir.join("g.onnx");
        std::fs::write(
            &gp,
            bevrt_models::sequential_to_onnx("g", "z", &[1, Z], "image", &g.layers()?, "")?,
        )?;
        let mut dn = CpuNetwork::load(&dp, &[1, 1, 28, 28])?;
        let mut gn = CpuNetwork::load(&gp, &[1, Z])?;
        let (mut dout, mut gout) = (dn.output_buffers(), gn.output_buffers());
        let z = normal(Z, &mut r);
        gn.run(&z, &mut gout)?;
        let want_img: Vec<f32> = g
            .forward(&Tensor::from_vec(z, (1, Z), &Device::Cpu)?)?
            .flatten_all()?
            .to_vec1()?;
        let close = |a: &[f32], b: &[f32], what: &str| {
            assert_eq!(a.len(), b.len(), "{what}");
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                    "{what}: {x} vs {y}"
                );
            }
        };
        close(&gout[0].data, &want_img, "generator image");
        dn.run(&gout[0].data, &mut dout)?;
        let w = d.weights(false)?;
        let x = Tensor::from_vec(gout[0].data.clone(), (1, 1, 28, 28), &Device::Cpu)?;
        let o = d.forward_with(&x, &w)?;
        close(&dout[0].data, &o.d.flatten_all()?.to_vec1::<f32>()?, "D(x)");
        close(&dout[1].data, &o.a1.flatten_all()?.to_vec1::<f32>()?, "a1");
        close(&dout[2].data, &o.z2.flatten_all()?.to_vec1::<f32>()?, "z2");
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
