//! The small ε-predicting UNet (DDPM's architecture, cut down for 32x32 grey images) and
//! PDAE's gradient estimator, which is a trainable copy of its middle and up path.
//!
//! ```text
//! x 1x32x32 → conv 32 → Res 32 ──────────────────────────────── skip0 ─┐
//!                    ↓ conv/2 → Res 64 @16 ────────────── skip1 ─┐    │
//!                                ↓ conv/2 → Res 64 @8 ─ skip2 ─┐ │    │
//!                                           → Res 64 (middle)  │ │    │
//!   up path:  Res(64⊕skip2 → 64) @8 → conv ×2 → Res(64⊕skip1 → 64) @16 → conv ×2
//!             → Res(64⊕skip0 → 32) @32 → GN → SiLU → conv → ε
//! ```
//! Every residual block is GroupNorm(8) → SiLU → conv3x3 → + time embedding → GroupNorm →
//! [AdaGN on z] → SiLU → conv3x3, plus a 1x1 projection when the width changes; its second
//! convolution starts at zero, so a fresh block is the identity (DDPM's initialisation). The
//! time embedding is sinusoidal (32) → Linear 128 → SiLU → Linear 128 → SiLU.
//!
//! [`UpPath`] is the part PDAE copies: [`Unet::down`] runs once per batch and feeds both the
//! frozen up path (ε_θ) and the estimator's copy (G), whose blocks also scale and shift their
//! normalised activations by `z` (zero-initialised, so G starts as the DDPM's own up path with
//! a zero output layer: G ≡ 0).

use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor, Var};

use crate::cpu_ops::{conv2d, group_norm_silu};
use crate::rng::Rng;
use crate::ssl::encoder::{Linear, uniform_var};

/// Image side the UNet runs at (28x28 digits are padded with background).
pub const SIDE: usize = 32;
const GROUPS: usize = 8;
const TIME_DIM: usize = 32;
const EMB: usize = 128;

/// A square convolution with bias.
pub struct Conv {
    pub w: Var,
    pub b: Var,
    pad: usize,
    stride: usize,
}

impl Conv {
    fn init(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        zero: bool,
        r: &mut Rng,
    ) -> Result<Conv> {
        let fan_in = (cin * k * k) as f32;
        let bound = if zero { 0.0 } else { (3.0 / fan_in).sqrt() };
        Ok(Conv {
            w: uniform_var(&[cout, cin, k, k], bound, r)?,
            b: Var::zeros(cout, DType::F32, &Device::Cpu)?,
            pad: k / 2,
            stride,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(conv2d(
            x,
            self.w.as_tensor(),
            self.b.as_tensor(),
            self.pad,
            self.stride,
        )?)
    }
    fn vars(&self, name: &str, out: &mut Vec<(String, Var)>) {
        out.push((format!("{name}.weight"), self.w.clone()));
        out.push((format!("{name}.bias"), self.b.clone()));
    }
}

/// GroupNorm with a per-channel affine map.
pub struct Norm {
    g: Var,
    b: Var,
}

impl Norm {
    fn init(c: usize) -> Result<Norm> {
        Ok(Norm {
            g: Var::ones(c, DType::F32, &Device::Cpu)?,
            b: Var::zeros(c, DType::F32, &Device::Cpu)?,
        })
    }
    /// `silu(GroupNorm(x)·γ + β)`.
    fn silu(&self, x: &Tensor) -> Result<Tensor> {
        self.silu_modulated(x, None)
    }

    /// `silu((GroupNorm(x)·γ + β)·(1 + s) + b)` with `(s, b)` per sample and channel from
    /// the condition (AdaGN), folded into one fused op's scale and shift.
    fn silu_modulated(&self, x: &Tensor, sb: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
        let (n, c) = (x.dim(0)?, x.dim(1)?);
        let g = self.g.as_tensor().unsqueeze(0)?.broadcast_as((n, c))?;
        let be = self.b.as_tensor().unsqueeze(0)?.broadcast_as((n, c))?;
        let (a, b) = match sb {
            None => (g, be),
            Some((s, b)) => {
                let k = (s + 1.0)?;
                ((g * &k)?, ((be * &k)? + b)?)
            }
        };
        Ok(group_norm_silu(x, &a, &b, GROUPS, 1e-5)?)
    }
    fn vars(&self, name: &str, out: &mut Vec<(String, Var)>) {
        out.push((format!("{name}.weight"), self.g.clone()));
        out.push((format!("{name}.bias"), self.b.clone()));
    }
}

pub struct ResBlock {
    n1: Norm,
    c1: Conv,
    temb: Linear,
    n2: Norm,
    c2: Conv,
    skip: Option<Conv>,
    /// AdaGN on the condition: `h ← h·(1 + s(z)) + b(z)` after the second normalisation.
    zmod: Option<Linear>,
    cout: usize,
}

impl ResBlock {
    fn init(cin: usize, cout: usize, r: &mut Rng) -> Result<ResBlock> {
        Ok(ResBlock {
            n1: Norm::init(cin)?,
            c1: Conv::init(cin, cout, 3, 1, false, r)?,
            temb: Linear::init(r.next_u64(), EMB, cout)?,
            n2: Norm::init(cout)?,
            c2: Conv::init(cout, cout, 3, 1, true, r)?,
            skip: (cin != cout)
                .then(|| Conv::init(cin, cout, 1, 1, false, r))
                .transpose()?,
            zmod: None,
            cout,
        })
    }

    fn forward(&self, x: &Tensor, temb: &Tensor, z: Option<&Tensor>) -> Result<Tensor> {
        let n = x.dim(0)?;
        let h = self.c1.forward(&self.n1.silu(x)?)?;
        let t = self.temb.forward(temb)?.reshape((n, self.cout, 1, 1))?;
        let h = h.broadcast_add(&t)?;
        let h = match (&self.zmod, z) {
            (Some(m), Some(z)) => {
                let sb = m.forward(z)?;
                let (s, b) = (
                    sb.narrow(1, 0, self.cout)?,
                    sb.narrow(1, self.cout, self.cout)?,
                );
                self.n2.silu_modulated(&h, Some((&s, &b)))?
            }
            _ => self.n2.silu(&h)?,
        };
        let h = self.c2.forward(&h)?;
        let x = match &self.skip {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        Ok((x + h)?)
    }

    fn vars(&self, name: &str, out: &mut Vec<(String, Var)>) {
        self.n1.vars(&format!("{name}.norm1"), out);
        self.c1.vars(&format!("{name}.conv1"), out);
        out.extend(self.temb.vars(&format!("{name}.temb")));
        self.n2.vars(&format!("{name}.norm2"), out);
        self.c2.vars(&format!("{name}.conv2"), out);
        if let Some(s) = &self.skip {
            s.vars(&format!("{name}.skip"), out);
        }
        if let Some(m) = &self.zmod {
            out.extend(m.vars(&format!("{name}.zmod")));
        }
    }
}

/// What the down path hands the up path: the skips (32, 16, 8 px), the deepest map, and the
/// activated time embedding.
pub struct DownOut {
    pub skips: Vec<Tensor>,
    pub h: Tensor,
    pub temb: Tensor,
}

impl DownOut {
    /// The same values cut from the graph (PDAE's frozen down path).
    pub fn detach(&self) -> DownOut {
        DownOut {
            skips: self.skips.iter().map(|s| s.detach()).collect(),
            h: self.h.detach(),
            temb: self.temb.detach(),
        }
    }
}

/// The middle block and the up path down to the output layer.
pub struct UpPath {
    mid: ResBlock,
    ups: Vec<ResBlock>,
    upconvs: Vec<Conv>,
    out_norm: Norm,
    out_conv: Conv,
}

impl UpPath {
    /// `(n, 1, 32, 32)`: ε for the DDPM, the posterior-mean shift for PDAE's estimator.
    pub fn forward(&self, d: &DownOut, z: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.mid.forward(&d.h, &d.temb, z)?;
        for (i, up) in self.ups.iter().enumerate() {
            let skip = &d.skips[d.skips.len() - 1 - i];
            h = up.forward(&Tensor::cat(&[&h, skip], 1)?, &d.temb, z)?;
            if let Some(c) = self.upconvs.get(i) {
                // Convolve, then upsample: the same receptive field as DDPM's
                // upsample-then-convolve at a quarter of the cost (the 32x32 one was the
                // network's most expensive layer).
                h = upsample2(&c.forward(&h)?)?;
            }
        }
        self.out_conv.forward(&self.out_norm.silu(&h)?)
    }

    /// The middle block's output (the DDPM's most abstract map, 64x8x8).
    pub fn middle(&self, d: &DownOut) -> Result<Tensor> {
        self.mid.forward(&d.h, &d.temb, None)
    }

    fn vars(&self, out: &mut Vec<(String, Var)>) {
        self.mid.vars("mid", out);
        for (i, u) in self.ups.iter().enumerate() {
            u.vars(&format!("up{i}"), out);
        }
        for (i, c) in self.upconvs.iter().enumerate() {
            c.vars(&format!("upsample{i}"), out);
        }
        self.out_norm.vars("out_norm", out);
        self.out_conv.vars("out_conv", out);
    }

    /// A trainable copy with AdaGN on a `zdim` condition in every block and a zeroed output
    /// layer (PDAE's gradient estimator G: starts at G ≡ 0).
    pub fn estimator_copy(&self, zdim: usize, seed: u64) -> Result<UpPath> {
        let copy = |v: &Var| -> Result<Var> { Ok(Var::from_tensor(&v.as_tensor().copy()?)?) };
        let conv = |c: &Conv| -> Result<Conv> {
            Ok(Conv {
                w: copy(&c.w)?,
                b: copy(&c.b)?,
                pad: c.pad,
                stride: c.stride,
            })
        };
        let norm = |n: &Norm| -> Result<Norm> {
            Ok(Norm {
                g: copy(&n.g)?,
                b: copy(&n.b)?,
            })
        };
        let mut r = Rng(seed ^ 0x9d_ae);
        let block = |b: &ResBlock, r: &mut Rng| -> Result<ResBlock> {
            let zmod = Linear {
                w: uniform_var(&[2 * b.cout, zdim], 0.0, r)?,
                b: Var::zeros(2 * b.cout, DType::F32, &Device::Cpu)?,
            };
            Ok(ResBlock {
                n1: norm(&b.n1)?,
                c1: conv(&b.c1)?,
                temb: Linear {
                    w: copy(&b.temb.w)?,
                    b: copy(&b.temb.b)?,
                },
                n2: norm(&b.n2)?,
                c2: conv(&b.c2)?,
                skip: b.skip.as_ref().map(conv).transpose()?,
                zmod: Some(zmod),
                cout: b.cout,
            })
        };
        let mut out_conv = conv(&self.out_conv)?;
        out_conv.w = Var::zeros(self.out_conv.w.dims(), DType::F32, &Device::Cpu)?;
        Ok(UpPath {
            mid: block(&self.mid, &mut r)?,
            ups: self
                .ups
                .iter()
                .map(|b| block(b, &mut r))
                .collect::<Result<_>>()?,
            upconvs: self.upconvs.iter().map(conv).collect::<Result<_>>()?,
            out_norm: norm(&self.out_norm)?,
            out_conv,
        })
    }

    /// Trained parameters, named as in the UNet (`g.` prefix for the estimator's copy).
    pub fn named_vars(&self, prefix: &str) -> Vec<(String, Var)> {
        let mut v = vec![];
        self.vars(&mut v);
        v.into_iter()
            .map(|(n, x)| (format!("{prefix}{n}"), x))
            .collect()
    }
}

/// Nearest-neighbour ×2 upsampling as a broadcast (its backward is a sum, no convolution).
fn upsample2(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    Ok(x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, 2, w, 2))?
        .contiguous()?
        .reshape((n, c, 2 * h, 2 * w))?)
}

/// Sinusoidal features of the timesteps, `(n, TIME_DIM)` (Transformer/DDPM style).
fn timestep_features(t: &[usize]) -> Result<Tensor> {
    let half = TIME_DIM / 2;
    let mut v = Vec::with_capacity(t.len() * TIME_DIM);
    for &ti in t {
        for i in 0..half {
            let f = (-(10000f64.ln()) * i as f64 / half as f64).exp();
            v.push((ti as f64 * f).sin() as f32);
        }
        for i in 0..half {
            let f = (-(10000f64.ln()) * i as f64 / half as f64).exp();
            v.push((ti as f64 * f).cos() as f32);
        }
    }
    Ok(Tensor::from_vec(v, (t.len(), TIME_DIM), &Device::Cpu)?)
}

/// Channel widths of the three levels (`--base` scales them: `[b, 2b, 2b]`).
pub fn widths(base: usize) -> [usize; 3] {
    [base, 2 * base, 2 * base]
}

pub struct Unet {
    t1: Linear,
    t2: Linear,
    conv_in: Conv,
    downs: Vec<ResBlock>,
    downconvs: Vec<Conv>,
    pub up: UpPath,
    pub base: usize,
}

impl Unet {
    pub fn init(base: usize, seed: u64) -> Result<Unet> {
        if base == 0 || !base.is_multiple_of(GROUPS) {
            bail!("UNet base width {base} must be a positive multiple of {GROUPS}");
        }
        let [c0, c1, c2] = widths(base);
        let mut r = Rng(seed ^ 0x0d_d9_3a);
        Ok(Unet {
            t1: Linear::init(r.next_u64(), TIME_DIM, EMB)?,
            t2: Linear::init(r.next_u64(), EMB, EMB)?,
            conv_in: Conv::init(1, c0, 3, 1, false, &mut r)?,
            downs: vec![
                ResBlock::init(c0, c0, &mut r)?,
                ResBlock::init(c0, c1, &mut r)?,
                ResBlock::init(c1, c2, &mut r)?,
            ],
            downconvs: vec![
                Conv::init(c0, c0, 3, 2, false, &mut r)?,
                Conv::init(c1, c1, 3, 2, false, &mut r)?,
            ],
            up: UpPath {
                mid: ResBlock::init(c2, c2, &mut r)?,
                ups: vec![
                    ResBlock::init(c2 + c2, c2, &mut r)?,
                    ResBlock::init(c2 + c1, c1, &mut r)?,
                    ResBlock::init(c1 + c0, c0, &mut r)?,
                ],
                upconvs: vec![
                    Conv::init(c2, c2, 3, 1, false, &mut r)?,
                    Conv::init(c1, c1, 3, 1, false, &mut r)?,
                ],
                out_norm: Norm::init(c0)?,
                out_conv: Conv::init(c0, 1, 3, 1, true, &mut r)?,
            },
            base,
        })
    }

    /// The down path of `x (n, 1, 32, 32)` at timesteps `t`.
    pub fn down(&self, x: &Tensor, t: &[usize]) -> Result<DownOut> {
        let temb = self
            .t2
            .forward(&self.t1.forward(&timestep_features(t)?)?.silu()?)?
            .silu()?;
        let mut h = self.conv_in.forward(x)?;
        let mut skips = vec![];
        for (i, block) in self.downs.iter().enumerate() {
            h = block.forward(&h, &temb, None)?;
            skips.push(h.clone());
            if let Some(c) = self.downconvs.get(i) {
                h = c.forward(&h)?;
            }
        }
        Ok(DownOut { skips, h, temb })
    }

    /// ε_θ(x, t).
    pub fn forward(&self, x: &Tensor, t: &[usize]) -> Result<Tensor> {
        self.up.forward(&self.down(x, t)?, None)
    }

    /// Every trained parameter, by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v = vec![];
        v.extend(self.t1.vars("time1"));
        v.extend(self.t2.vars("time2"));
        self.conv_in.vars("conv_in", &mut v);
        for (i, b) in self.downs.iter().enumerate() {
            b.vars(&format!("down{i}"), &mut v);
        }
        for (i, c) in self.downconvs.iter().enumerate() {
            c.vars(&format!("downsample{i}"), &mut v);
        }
        v.extend(self.up.named_vars(""));
        v
    }

    pub fn parameter_count(&self) -> usize {
        self.named_vars()
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_a_fresh_estimator_is_zero() {
        let u = Unet::init(8, 1).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 1, SIDE, SIDE), &Device::Cpu).unwrap();
        let eps = u.forward(&x, &[10, 900]).unwrap();
        assert_eq!(eps.dims(), [2, 1, SIDE, SIDE]);
        let g = u.up.estimator_copy(16, 3).unwrap();
        let z = Tensor::randn(0f32, 1.0, (2, 16), &Device::Cpu).unwrap();
        let d = u.down(&x, &[10, 900]).unwrap();
        let shift = g.forward(&d, Some(&z)).unwrap();
        let m = shift
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(m, 0.0);
        // The copy owns its parameters: training it leaves the DDPM as it was.
        let (name, v) = &g.named_vars("g.")[0];
        let (_, orig) = &u.up.named_vars("")[0];
        v.set(&(v.as_tensor() + 1.0).unwrap()).unwrap();
        let diff = (v.as_tensor() - orig.as_tensor()).unwrap().abs().unwrap();
        assert!(
            diff.min_all().unwrap().to_scalar::<f32>().unwrap() > 0.5,
            "{name}"
        );
    }

    #[test]
    fn upsample_repeats_each_pixel() {
        let x = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let y: Vec<f32> = upsample2(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y[..4], [1., 1., 2., 2.]);
        assert_eq!(y[12..], [3., 3., 4., 4.]);
    }
}
