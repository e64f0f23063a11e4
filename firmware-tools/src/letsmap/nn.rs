//! letsmap-lite in candle: parameters, forward passes, the differentiable view transform over
//! bevrt-calib's sampling table, losses, Adam, and checkpoints.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use bevrt_calib::SamplingTable;
use bevrt_models::{ConvLayer, LetsMapLite, Weights};
use candle_core::{DType, Device, Tensor, Var};

/// SplitMix64: deterministic weight init and data order (no `rand`, same on every machine).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// All trainable tensors by name (`<layer>.weight`, `<layer>.bias`), in a fixed order.
pub struct Params {
    pub vars: BTreeMap<String, Var>,
}

impl Params {
    /// He-uniform weights, zero biases, from `seed` (deterministic).
    pub fn init(arch: &LetsMapLite, seed: u64) -> Result<Params> {
        let mut vars = BTreeMap::new();
        for l in arch.all_layers() {
            // One stream per layer, so adding a layer does not change the others' init.
            let mut rng = Rng(seed ^ fnv(l.name));
            let fan_in = (l.cin * l.k * l.k) as f32;
            let bound = (6.0 / fan_in).sqrt() * if l.relu { 1.0 } else { 0.5 };
            let n: usize = l.weight_shape().iter().product();
            let w: Vec<f32> = (0..n)
                .map(|_| (rng.uniform() * 2.0 - 1.0) * bound)
                .collect();
            let wt = Tensor::from_vec(w, l.weight_shape().to_vec(), &Device::Cpu)?;
            vars.insert(format!("{}.weight", l.name), Var::from_tensor(&wt)?);
            let bt = Tensor::zeros(l.cout, DType::F32, &Device::Cpu)?;
            vars.insert(format!("{}.bias", l.name), Var::from_tensor(&bt)?);
        }
        Ok(Params { vars })
    }

    fn get(&self, name: &str) -> Result<&Var> {
        self.vars
            .get(name)
            .with_context(|| format!("parameter '{name}' missing"))
    }

    /// The trainable vars of the given layers.
    pub fn of_layers(&self, layers: &[ConvLayer]) -> Result<Vec<(String, Var)>> {
        let mut v = vec![];
        for l in layers {
            for s in ["weight", "bias"] {
                let n = format!("{}.{s}", l.name);
                v.push((n.clone(), self.get(&n)?.clone()));
            }
        }
        Ok(v)
    }

    /// Plain f32 copies for the exporter.
    pub fn weights(&self) -> Result<Weights> {
        let mut w = Weights::new();
        for (n, v) in &self.vars {
            w.insert(n.clone(), v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(w)
    }

    /// Overwrites the named parameters from a tensor map (a checkpoint), checking shapes.
    pub fn load_from(
        &self,
        map: &std::collections::HashMap<String, Tensor>,
        prefix: &str,
        only: Option<&[ConvLayer]>,
    ) -> Result<usize> {
        let mut n = 0;
        for (name, var) in &self.vars {
            if let Some(ls) = only
                && !ls.iter().any(|l| name.starts_with(&format!("{}.", l.name)))
            {
                continue;
            }
            let key = format!("{prefix}{name}");
            let t = map
                .get(&key)
                .with_context(|| format!("tensor '{key}' missing"))?;
            if t.dims() != var.dims() {
                anyhow::bail!(
                    "tensor '{key}' has shape {:?}, the architecture needs {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            var.set(t)?;
            n += 1;
        }
        Ok(n)
    }

    fn conv(&self, x: &Tensor, l: &ConvLayer) -> Result<Tensor> {
        let w = self.get(&format!("{}.weight", l.name))?;
        let b = self.get(&format!("{}.bias", l.name))?;
        let y = x.conv2d(w.as_tensor(), l.pad(), l.stride, 1, 1)?;
        let y = y.broadcast_add(&b.as_tensor().reshape((1, l.cout, 1, 1))?)?;
        Ok(if l.relu { y.relu()? } else { y })
    }

    pub fn chain(&self, x: &Tensor, layers: &[ConvLayer]) -> Result<Tensor> {
        let mut y = x.clone();
        for l in layers {
            y = self.conv(&y, l)?;
        }
        Ok(y)
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The sampling table as candle tensors: 4 tap index vectors and 4 weight vectors.
pub struct TableTensors {
    idx: [Tensor; 4],
    w: [Tensor; 4],
    levels: usize,
    grid_h: usize,
    grid_w: usize,
}

impl TableTensors {
    pub fn new(t: &SamplingTable) -> Result<TableTensors> {
        let n = t.len();
        let mk_idx = |k: usize| -> Result<Tensor> {
            let v: Vec<u32> = t.taps.iter().map(|e| e.idx[k]).collect();
            Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
        };
        let mk_w = |k: usize| -> Result<Tensor> {
            let v: Vec<f32> = t.taps.iter().map(|e| e.w[k]).collect();
            Ok(Tensor::from_vec(v, (1, 1, n), &Device::Cpu)?)
        };
        Ok(TableTensors {
            idx: [mk_idx(0)?, mk_idx(1)?, mk_idx(2)?, mk_idx(3)?],
            w: [mk_w(0)?, mk_w(1)?, mk_w(2)?, mk_w(3)?],
            levels: t.levels,
            grid_h: t.grid_h,
            grid_w: t.grid_w,
        })
    }

    /// Differentiable view transform, the same arithmetic as `bevrt_calib::view_transform`:
    /// (B, C, H, W) features to (B, C*Z, grid_h, grid_w), channel `c*Z + level`.
    pub fn apply(&self, feat: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = feat.dims4()?;
        let flat = feat.reshape((b, c, h * w))?;
        let mut acc: Option<Tensor> = None;
        for k in 0..4 {
            let g = flat
                .index_select(&self.idx[k], 2)?
                .broadcast_mul(&self.w[k])?;
            acc = Some(match acc {
                None => g,
                Some(a) => (a + g)?,
            });
        }
        let out = acc.expect("4 taps");
        Ok(out.reshape((b, c * self.levels, self.grid_h, self.grid_w))?)
    }
}

/// Class-weighted cross-entropy over cells; `cell_w` (B,1,H,W) is 0 for ignored cells
/// (not visible / unknown) and the class weight of the target otherwise.
pub fn weighted_ce(logits: &Tensor, target: &Tensor, cell_w: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    let picked = logp.gather(target, 1)?;
    let num = (picked * cell_w)?.sum_all()?;
    let den = cell_w.sum_all()?.to_scalar::<f32>()?.max(1e-6);
    Ok((num.neg()? / den as f64)?)
}

/// Masked-patch reconstruction loss: mean squared error over the masked stride-8 patches of
/// frame t. `pred` and `target` are (B, 3*8*8, Hf, Wf); `masked` (B,1,Hf,Wf) is 1 where masked.
pub fn masked_mse(pred: &Tensor, target: &Tensor, masked: &Tensor) -> Result<Tensor> {
    let d = (pred - target)?.sqr()?.broadcast_mul(masked)?.sum_all()?;
    let n = masked.sum_all()?.to_scalar::<f32>()? * pred.dim(1)? as f32;
    Ok((d / n.max(1.0) as f64)?)
}

/// (B, 3, H, W) image to (B, 3*s*s, H/s, W/s) patches, channel `(c*s + dy)*s + dx`.
pub fn patchify(x: &Tensor, s: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let t = x
        .reshape(&[b, c, h / s, s, w / s, s][..])?
        .permute([0, 1, 3, 5, 2, 4])?
        .contiguous()?;
    Ok(t.reshape((b, c * s * s, h / s, w / s))?)
}

/// Adam (Kingma & Ba) with bias correction; state is checkpointable.
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub step: u64,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl Adam {
    pub fn new(vars: Vec<(String, Var)>, lr: f64) -> Result<Adam> {
        let m = vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            vars,
            m,
            v,
        })
    }

    /// One update from the gradients of `loss`.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Gradients carry the op graph of the step: detach, or every state tensor would
            // keep all earlier steps' activations alive.
            let g = g.detach();
            self.m[i] = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?.detach();
            self.v[i] = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?.detach();
            let mhat = (&self.m[i] / bc1)?;
            let vhat = (&self.v[i] / bc2)?;
            let upd = (mhat / (vhat.sqrt()? + self.eps)?)?;
            var.set(&(var.as_tensor().detach() - (upd * self.lr)?)?.detach())?;
        }
        Ok(())
    }

    /// Optimizer state as named tensors (`adam.m.<name>`, `adam.v.<name>`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        for (i, (n, _)) in self.vars.iter().enumerate() {
            out.push((format!("adam.m.{n}"), self.m[i].clone()));
            out.push((format!("adam.v.{n}"), self.v[i].clone()));
        }
        out
    }

    pub fn load_state(
        &mut self,
        map: &std::collections::HashMap<String, Tensor>,
        step: u64,
    ) -> Result<()> {
        for (i, (n, _)) in self.vars.iter().enumerate() {
            for (k, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("adam.{k}.{n}");
                *dst = map
                    .get(&key)
                    .with_context(|| format!("checkpoint lacks '{key}'"))?
                    .clone();
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Writes parameters (prefix `param.`) and optimizer state to a safetensors file, atomically.
pub fn save_checkpoint(path: &Path, params: &Params, opt: Option<&Adam>) -> Result<()> {
    let mut map: std::collections::HashMap<String, Tensor> = params
        .vars
        .iter()
        .map(|(n, v)| (format!("param.{n}"), v.as_tensor().clone()))
        .collect();
    if let Some(o) = opt {
        map.extend(o.state());
    }
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&map, &tmp)
        .with_context(|| format!("{}: writing checkpoint", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: rename", path.display()))?;
    Ok(())
}

pub fn load_checkpoint(path: &Path) -> Result<std::collections::HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{}: not a readable safetensors checkpoint", path.display()))
}

/// Mean over the last dim helper for logging.
pub fn scalar(t: &Tensor) -> Result<f32> {
    Ok(t.to_scalar::<f32>()?)
}
