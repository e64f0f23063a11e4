//! letsmap-lite in candle: parameters, forward passes, the differentiable view transform over
//! bevrt-calib's sampling table and losses (Adam and checkpoints: [`crate::optim`]).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use bevrt_calib::SamplingTable;
use bevrt_models::{ConvLayer, LetsMapLite, Weights};
use candle_core::{DType, Device, Tensor, Var};

use crate::rng::Rng;

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
        // The lift conv's per-position bias (starts at zero): a ground pixel's depth depends on
        // where it is in the image, which the encoder's 39-pixel receptive field cannot see.
        let (fh, fw) = arch.feat_hw();
        for l in &arch.lift {
            let pt = Tensor::zeros((1, l.cout, fh, fw), DType::F32, &Device::Cpu)?;
            vars.insert(format!("{}.position", l.name), Var::from_tensor(&pt)?);
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
            for s in ["weight", "bias", "position", "mask_token"] {
                let n = format!("{}.{s}", l.name);
                match self.vars.get(&n) {
                    Some(var) => v.push((n, var.clone())),
                    // optional: the lift's position bias, the MAE decoder's mask token
                    None if s == "position" || s == "mask_token" => {}
                    None => anyhow::bail!("parameter '{n}' missing"),
                }
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
        // im2col + one GEMM each way (`cpu_ops`): candle's own conv2d backward runs its
        // input gradient as a transposed convolution parallel only over output channels,
        // which was most of a fine-tuning step here.
        let mut y = crate::cpu_ops::conv2d(x, w.as_tensor(), b.as_tensor(), l.pad(), l.stride)?;
        if let Some(p) = self.vars.get(&format!("{}.position", l.name)) {
            y = y.broadcast_add(p.as_tensor())?;
        }
        Ok(if l.relu { y.relu()? } else { y })
    }

    pub fn chain(&self, x: &Tensor, layers: &[ConvLayer]) -> Result<Tensor> {
        let mut y = x.clone();
        for l in layers {
            y = self.conv(&y, l)?;
        }
        Ok(y)
    }

    /// [`Params::chain`] where only the last `trained` layers get gradients: the output of the
    /// layers before them is a constant (detached), so the backward pass stops there. Shared
    /// by fine-tuning's `--unfreeze-last` and the geometry pathway's `--train-last`.
    pub fn chain_training_last(
        &self,
        x: &Tensor,
        layers: &[ConvLayer],
        trained: usize,
    ) -> Result<Tensor> {
        let (frozen, trained) = layers.split_at(layers.len().saturating_sub(trained));
        self.chain(&self.chain(x, frozen)?.detach(), trained)
    }

    /// SparK's masked (sparse) convolution, emulated on dense tensors: the input and every
    /// layer's output are zeroed on masked patches (`keep` (B,1,Hf,Wf), 1 = visible, brought
    /// to each layer's resolution). A visible position then sees only visible neighbours and
    /// zeros, as a submanifold sparse convolution would; masked positions never receive
    /// anything, so no later layer can read a masked patch's content back through the
    /// convolutions' overlap, and the mask's shape does not leak through the biases.
    /// Unmasked (`keep` all ones) it is [`Params::chain`], the deployed encoder.
    pub fn chain_visible(&self, x: &Tensor, layers: &[ConvLayer], keep: &Tensor) -> Result<Tensor> {
        let mut y = x.broadcast_mul(&keep_at(keep, x.dim(2)?)?)?;
        for l in layers {
            y = self.conv(&y, l)?;
            y = y.broadcast_mul(&keep_at(keep, y.dim(2)?)?)?;
        }
        Ok(y)
    }
}

/// Overwrites `params` with a bundle's encoder and head weights (their ONNX initializers).
pub fn load_bundle_weights(bundle: &bevrt_models::Bundle, params: &Params) -> Result<()> {
    for role in ["encoder", "head"] {
        let path = bundle
            .model_path(role)
            .with_context(|| format!("bundle has no '{role}'"))?;
        let proto = bevrt_models::read_proto(&path)?;
        let graph = proto
            .graph
            .with_context(|| format!("{}: no graph", path.display()))?;
        for init in graph.initializer {
            let Some(var) = params.vars.get(&init.name) else {
                continue;
            };
            let v: Vec<f32> = if !init.raw_data.is_empty() {
                init.raw_data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            } else {
                init.float_data.clone()
            };
            let t = Tensor::from_vec(v, var.dims(), &Device::Cpu).with_context(|| {
                format!("{}: initializer '{}' shape", path.display(), init.name)
            })?;
            var.set(&t)?;
        }
    }
    Ok(())
}

/// A patch mask (B,1,Hf,Wf) repeated to a map of height `h` (a multiple of Hf): each patch
/// becomes an (h/Hf)² block.
pub fn keep_at(keep: &Tensor, h: usize) -> Result<Tensor> {
    let (b, _, hf, wf) = keep.dims4()?;
    anyhow::ensure!(
        h.is_multiple_of(hf),
        "feature height {h} is not a multiple of the patch grid's {hf}"
    );
    let f = h / hf;
    if f == 1 {
        return Ok(keep.clone());
    }
    Ok(keep
        .reshape((b, 1, hf, 1, wf, 1))?
        .broadcast_as((b, 1, hf, f, wf, f))?
        .contiguous()?
        .reshape((b, 1, hf * f, wf * f))?)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The sampling table as candle tensors: 4 tap index vectors and 4 weight vectors, and for
/// a depth-weighted lift the 4 indices of each tap's depth weight (`bin * plane + idx`).
pub struct TableTensors {
    idx: [Tensor; 4],
    w: [Tensor; 4],
    depth_idx: Option<[Tensor; 4]>,
    depth_bins: usize,
    levels: usize,
    grid_h: usize,
    grid_w: usize,
}

impl TableTensors {
    pub fn new(t: &SamplingTable) -> Result<TableTensors> {
        let n = t.len();
        let plane = (t.feat_w * t.feat_h) as u32;
        let mk_idx = |k: usize| -> Result<Tensor> {
            let v: Vec<u32> = t.taps.iter().map(|e| e.idx[k]).collect();
            Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
        };
        let mk_w = |k: usize| -> Result<Tensor> {
            let v: Vec<f32> = t.taps.iter().map(|e| e.w[k]).collect();
            Ok(Tensor::from_vec(v, (1, 1, n), &Device::Cpu)?)
        };
        let mk_didx = |k: usize| -> Result<Tensor> {
            let v: Vec<u32> = t
                .taps
                .iter()
                .zip(&t.bins)
                .map(|(e, &b)| b * plane + e.idx[k])
                .collect();
            Ok(Tensor::from_vec(v, n, &Device::Cpu)?)
        };
        let depth_idx = if t.depth_bins > 0 {
            Some([mk_didx(0)?, mk_didx(1)?, mk_didx(2)?, mk_didx(3)?])
        } else {
            None
        };
        Ok(TableTensors {
            idx: [mk_idx(0)?, mk_idx(1)?, mk_idx(2)?, mk_idx(3)?],
            w: [mk_w(0)?, mk_w(1)?, mk_w(2)?, mk_w(3)?],
            depth_idx,
            depth_bins: t.depth_bins,
            levels: t.levels,
            grid_h: t.grid_h,
            grid_w: t.grid_w,
        })
    }

    /// Differentiable view transform, the same arithmetic as `bevrt_calib::lift`: (B, C + D,
    /// H, W) encoder output (D = 0 without depth bins) to (B, C*Z, grid_h, grid_w), channel
    /// `c*Z + level`. Gradients reach the context features and, through the depth weights,
    /// the depth logits.
    pub fn apply(&self, feat: &Tensor) -> Result<Tensor> {
        let (b, ct, h, w) = feat.dims4()?;
        let c = ct - self.depth_bins;
        let flat = feat.narrow(1, 0, c)?.reshape((b, c, h * w))?;
        let depth_weight = match &self.depth_idx {
            Some(_) => Some(
                self.depth_weight(feat)?
                    .reshape((b, self.depth_bins * h * w))?,
            ),
            None => None,
        };
        let mut acc: Option<Tensor> = None;
        for k in 0..4 {
            let mut wk = self.w[k].clone();
            if let (Some(dw), Some(di)) = (&depth_weight, &self.depth_idx) {
                // (1,1,N) tap weight times (B,1,N) depth weight of the entry's bin at the tap
                wk = wk.broadcast_mul(&dw.index_select(&di[k], 1)?.unsqueeze(1)?)?;
            }
            let g = flat.index_select(&self.idx[k], 2)?.broadcast_mul(&wk)?;
            acc = Some(match acc {
                None => g,
                Some(a) => (a + g)?,
            });
        }
        let out = acc.expect("4 taps");
        Ok(out.reshape((b, c * self.levels, self.grid_h, self.grid_w))?)
    }

    /// Depth weights `D * softmax` (B, D, H, W) of an encoder output's last D channels.
    pub fn depth_weight(&self, feat: &Tensor) -> Result<Tensor> {
        Ok((depth_probabilities(feat, self.depth_bins)? * self.depth_bins as f64)?)
    }
}

/// Softmax over the last `bins` channels of an encoder output (B, C + D, H, W): the depth
/// distribution per feature pixel (B, D, H, W).
pub fn depth_probabilities(feat: &Tensor, bins: usize) -> Result<Tensor> {
    let ct = feat.dim(1)?;
    let logits = feat.narrow(1, ct - bins, bins)?;
    Ok(candle_nn::ops::softmax(&logits, 1)?)
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

/// MAE's per-patch normalised targets: each stride-`s` patch (all 3·s·s values) minus its
/// mean, over its standard deviation (ε 1e-6), so the loss asks for a patch's structure, not
/// its brightness (MAE Table 1d: +0.5-1 point over raw pixels).
pub fn normalised_patches(x: &Tensor, s: usize) -> Result<Tensor> {
    let p = patchify(x, s)?;
    let centred = p.broadcast_sub(&p.mean_keepdim(1)?)?;
    let std = (centred.sqr()?.mean_keepdim(1)? + 1e-6)?.sqrt()?;
    Ok(centred.broadcast_div(&std)?)
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
