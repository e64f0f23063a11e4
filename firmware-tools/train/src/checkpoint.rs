//! A training run's checkpoint directory, shared by every trainer: `state.safetensors` (parameters as `param.<name>`, Adam's
//! moments) and `state.json` (the run's configuration and progress), each replaced
//! atomically, so an interrupted run resumes from its last complete epoch.

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{Tensor, Var};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::optim::{self, Adam};

pub fn save(
    dir: &Path,
    state: &impl Serialize,
    vars: &[(String, Var)],
    opt: Option<&Adam>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    optim::save_checkpoint(
        &dir.join("state.safetensors"),
        vars.iter().map(|(n, v)| (n, v)),
        opt,
    )?;
    let json = dir.join("state.json");
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(state)?)
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, &json).with_context(|| format!("{}: rename", json.display()))?;
    Ok(())
}

/// The progress record of a run directory.
pub fn load_state<T: DeserializeOwned>(dir: &Path) -> Result<T> {
    let json = dir.join("state.json");
    let text = std::fs::read_to_string(&json)
        .with_context(|| format!("{}: no checkpoint here (state.json missing)", dir.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: malformed", json.display()))
}

pub fn load_tensors(dir: &Path) -> Result<std::collections::HashMap<String, Tensor>> {
    optim::load_checkpoint(&dir.join("state.safetensors"))
}

/// Set every var from `param.<from_prefix><name>`, checking shapes.
pub fn restore(
    map: &std::collections::HashMap<String, Tensor>,
    vars: &[(String, Var)],
    from_prefix: &str,
    dir: &Path,
) -> Result<()> {
    for (name, var) in vars {
        let key = format!("param.{from_prefix}{name}");
        let t = map
            .get(&key)
            .with_context(|| format!("{}: tensor '{key}' missing", dir.display()))?;
        if t.dims() != var.dims() {
            bail!(
                "{}: tensor '{key}' has shape {:?}, not {:?}",
                dir.display(),
                t.dims(),
                var.dims()
            );
        }
        var.set(t)?;
    }
    Ok(())
}

/// An exponential moving average of parameters (the DDPM samples from it).
pub struct Ema {
    pub vars: Vec<(String, Var)>,
}

impl Ema {
    pub fn of(params: &[(String, Var)]) -> Result<Ema> {
        Ok(Ema {
            vars: params
                .iter()
                .map(|(n, v)| {
                    Ok((
                        format!("ema.{n}"),
                        Var::from_tensor(&v.as_tensor().copy()?)?,
                    ))
                })
                .collect::<Result<_>>()?,
        })
    }

    /// `ema ← d·ema + (1−d)·param`, with d warming up as `(1+step)/(10+step)` (short runs
    /// would otherwise average in the random start).
    pub fn update(&self, params: &[(String, Var)], decay: f64, step: u64) -> Result<()> {
        let d = decay.min((1.0 + step as f64) / (10.0 + step as f64));
        for ((_, e), (_, p)) in self.vars.iter().zip(params) {
            e.set(&((e.as_tensor() * d)? + (p.as_tensor().detach() * (1.0 - d))?)?)?;
        }
        Ok(())
    }
}

/// The progress record of an interrupted run, for `--resume`; refused (naming the file and
/// the arguments it used) unless `same_args` accepts it.
pub fn resume_state<S: DeserializeOwned>(path: &Path, same_args: impl Fn(&S) -> bool) -> Result<S> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: nothing to resume", path.display()))?;
    let prev: S =
        serde_json::from_str(&text).with_context(|| format!("{}: malformed", path.display()))?;
    if !same_args(&prev) {
        let used = serde_json::from_str::<serde_json::Value>(&text)
            .map(|v| v["args"].to_string())
            .unwrap_or_default();
        bail!(
            "{}: --resume needs the same arguments as the interrupted run (only --epochs may grow, --out may differ); it used {used}",
            path.display()
        );
    }
    Ok(prev)
}
