//! The PDAE model itself, shared by training ([`super::pdae`]) and the autoencoder measures
//! ([`super::autoencode`]): the frozen DDPM, the encoder E and the estimator G, and the codes
//! z the encoder gives a set of digits.

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::schedule::NoiseSchedule;
use super::unet::{Unet, UpPath};
use crate::digits::Dataset;
use crate::ssl::encoder::{Encoder, Representation};
use crate::ssl::run::embed_plain;

/// The trained parts and the frozen DDPM.
pub struct Pdae {
    pub unet: Unet,
    pub enc: Encoder,
    pub g: UpPath,
    pub sched: NoiseSchedule,
}

impl Pdae {
    /// The noise the conditioned model predicts: `ε_θ(x_t, t) + c_t·G(x_t, z, t)`, with the
    /// DDPM's part cut from the graph (it is frozen).
    pub fn eps(&self, xt: &Tensor, t: &[usize], z: &Tensor) -> Result<Tensor> {
        let d = self.unet.down(xt, t)?.detach();
        let eps_theta = self.unet.up.forward(&d, None)?.detach();
        let shift = self.g.forward(&d, Some(z))?;
        let c: Vec<f32> = t
            .iter()
            .map(|&ti| self.sched.shift_coef(ti) as f32)
            .collect();
        let c = Tensor::from_vec(c, (t.len(), 1, 1, 1), &Device::Cpu)?;
        Ok((eps_theta + shift.broadcast_mul(&c)?)?)
    }
}

/// `(n, zdim)` codes of the digits `idx` (what the bundle computes).
pub fn codes(model: &Pdae, ds: &Dataset, idx: &[usize]) -> Result<Tensor> {
    let rows = embed_plain(&model.enc, ds, idx, Representation::Fc)?;
    let dim = rows.len() / idx.len().max(1);
    Ok(Tensor::from_vec(rows, (idx.len(), dim), &Device::Cpu)?)
}
