//! Per-channel affine maps: a BatchNormalization that follows no convolution (DenseNet's
//! pre-activation blocks) and constant per-channel `Mul` / `Add` / `Sub` (Caffe2's `Scale`
//! layers after a BatchNormalization, as the ONNX zoo's DenseNet and Inception v2 carry them).
//!
//! Each becomes `y = x·scale[c] + shift[c]`, folded into what wrote `x` when `x` has no other
//! reader: into a float convolution's weights and bias, or into an earlier scale-shift step;
//! otherwise it is one scale-shift step (`binary_op::SCALE_SHIFT`). So a chain
//! `BatchNormalization → Mul → Add → Relu` is one pass over memory, or none after a Conv.

use super::attrs::*;
use super::lowering::Lowering;
use super::ops::{broadcast_strides, right_aligned};
use bevrt_kernels::params::{BinaryParams, binary_op, out_mode};
use bevrt_kernels::plan::{ConstData, DType, Op};
use bevrt_kernels::reference::{const_f32, f2h, h2f};
use tract_onnx::pb;

impl Lowering<'_> {
    /// Inference-mode BatchNormalization: `scale = γ/√(σ²+ε)`, `shift = β − μ·scale`.
    pub(super) fn batchnorm(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        if attr_i(n, "training_mode", 0) != 0 || n.output.iter().skip(1).any(|o| !o.is_empty()) {
            return Err("training-mode BatchNormalization".into());
        }
        if n.input.len() < 5 {
            return Err("BatchNormalization without its four statistics".into());
        }
        let eps = attr_f(n, "epsilon", 1e-5);
        let stats: Vec<Vec<f32>> = n.input[1..5]
            .iter()
            .map(|s| self.const_f32(s))
            .collect::<Result<_, _>>()?;
        let (gamma, beta, mean, var) = (&stats[0], &stats[1], &stats[2], &stats[3]);
        let c = gamma.len();
        if [beta, mean, var].iter().any(|v| v.len() != c) {
            return Err("statistics of different lengths".into());
        }
        let scale: Vec<f32> = (0..c).map(|i| gamma[i] / (var[i] + eps).sqrt()).collect();
        let shift: Vec<f32> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
        self.affine(&n.input[0], &n.output[0], name, scale, shift)
    }

    /// A constant per-channel `Mul`, `Add` or `Sub` (tensor on the left for `Sub`) as an affine
    /// map; `None` when the node is not of that form (the general binary step takes it).
    pub(super) fn binary_as_affine(
        &mut self,
        n: &pb::NodeProto,
        name: &str,
    ) -> Option<Result<(), String>> {
        if n.input.len() != 2 {
            return None;
        }
        let (xi, ci) = match (self.is_const(&n.input[0]), self.is_const(&n.input[1])) {
            (false, true) => (0, 1),
            (true, false) if n.op_type != "Sub" => (1, 0),
            _ => return None,
        };
        let x = &n.input[xi];
        let xt = *self.tensor.get(x)?;
        let xs = self.plan.tensors[xt].shape.clone();
        if self.plan.tensors[xt].dtype == DType::I8
            || !(2..=4).contains(&xs.len())
            || self.shape(&n.output[0]).ok()? != xs
        {
            return None;
        }
        let k = self.const_f32(&n.input[ci]).ok()?;
        let ks = self.const_shape(&n.input[ci]);
        // per channel: right-aligned to x, every dim but the channel axis (1) is 1
        if ks.len() > xs.len() {
            return None;
        }
        let lead = xs.len() - ks.len();
        let per_channel = ks
            .iter()
            .enumerate()
            .all(|(d, &v)| v == 1 || (d + lead == 1 && v == xs[1]));
        if !per_channel {
            return None;
        }
        let c = xs[1];
        let k: Vec<f32> = if k.len() == 1 { vec![k[0]; c] } else { k };
        let (scale, shift) = match n.op_type.as_str() {
            "Mul" => (k, vec![0.0; c]),
            "Add" => (vec![1.0; c], k),
            "Sub" => (vec![1.0; c], k.iter().map(|v| -v).collect()),
            _ => return None,
        };
        Some(self.affine(x, &n.output[0], name, scale, shift))
    }

    /// `out = x·scale[c] + shift[c]` over channel axis 1 of `x`.
    fn affine(
        &mut self,
        x: &str,
        out: &str,
        name: &str,
        scale: Vec<f32>,
        shift: Vec<f32>,
    ) -> Result<(), String> {
        let xt = self.float_tensor(x)?;
        let xs = self.plan.tensors[xt].shape.clone();
        if !(2..=4).contains(&xs.len()) || xs[1] != scale.len() {
            return Err(format!(
                "{} per-channel factors for a tensor of shape {xs:?}",
                scale.len()
            ));
        }
        if let Some(si) = self.fusable_producer(x)
            && self.fold_into_producer(si, &scale, &shift)
        {
            let t = self.plan.steps[si].output;
            self.plan.steps[si].name.push_str(&format!(" + {name}"));
            self.plan.tensors[t].name = out.to_string();
            self.tensor.insert(out.to_string(), t);
            return Ok(());
        }
        let c = scale.len();
        // the factors as a [C, 1, ...] operand: broadcast over all but the channel axis
        let mut per_channel = vec![1usize; xs.len() - 1];
        per_channel[0] = c;
        let p = BinaryParams {
            n: xs.iter().product::<usize>() as i32,
            dims: right_aligned(&xs),
            a_strides: broadcast_strides(&xs, &xs),
            b_strides: broadcast_strides(&per_channel, &xs),
            op: binary_op::SCALE_SHIFT,
            shift_offset: c as i32,
            ..Default::default()
        };
        // f32 factors even in FP16 plans (see `binary_op::SCALE_SHIFT`)
        let factors: Vec<f32> = scale.into_iter().chain(shift).collect();
        let k = self.plan.add_const(ConstData::F32(factors));
        let y = self.new_tensor(out, xs, self.float, None);
        self.tensor.insert(out.to_string(), y);
        self.push_with_consts(name, Op::Binary(p), vec![xt, xt], vec![(1, k)], y);
        Ok(())
    }

    /// Fold the map into step `si` (whose output only the map reads): a float convolution
    /// without an activation (weights and bias), or a scale-shift without one (its factors).
    fn fold_into_producer(&mut self, si: usize, scale: &[f32], shift: &[f32]) -> bool {
        let step = &self.plan.steps[si];
        match &step.op {
            Op::Conv {
                p,
                weights,
                bias,
                wsum: None,
                ..
            } if p.act == bevrt_kernels::params::act::NONE
                && p.out_mode != out_mode::I8
                && p.k as usize == scale.len() =>
            {
                let (weights, bias, kpad) = (*weights, *bias, p.kpad as usize);
                let rows = |v: usize| v / kpad;
                match &mut self.plan.consts[weights] {
                    ConstData::F32(w) => {
                        for (i, v) in w.iter_mut().enumerate() {
                            *v *= scale[rows(i)];
                        }
                    }
                    ConstData::F16(w) => {
                        for (i, v) in w.iter_mut().enumerate() {
                            *v = f2h(h2f(*v) * scale[rows(i)]);
                        }
                    }
                    _ => return false,
                }
                let ConstData::F32(b) = &mut self.plan.consts[bias] else {
                    return false;
                };
                for (o, v) in b.iter_mut().enumerate() {
                    *v = *v * scale[o] + shift[o];
                }
                true
            }
            Op::Binary(p)
                if p.op == binary_op::SCALE_SHIFT
                    && p.act == bevrt_kernels::params::act::NONE
                    && p.shift_offset as usize == scale.len() =>
            {
                let Some(k) = step.const_input(1) else {
                    return false;
                };
                let c = scale.len();
                let mut f = const_f32(&self.plan.consts[k]);
                for i in 0..c {
                    f[i] *= scale[i];
                    f[c + i] = f[c + i] * scale[i] + shift[i];
                }
                self.plan.consts[k] = ConstData::F32(f);
                true
            }
            _ => false,
        }
    }
}
