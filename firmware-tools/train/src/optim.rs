//! Adam and safetensors checkpoints (parameters and optimizer state), shared by every trainer.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, Var};

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
pub fn save_checkpoint<'a>(
    path: &Path,
    vars: impl IntoIterator<Item = (&'a String, &'a Var)>,
    opt: Option<&Adam>,
) -> Result<()> {
    let mut map: std::collections::HashMap<String, Tensor> = vars
        .into_iter()
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
