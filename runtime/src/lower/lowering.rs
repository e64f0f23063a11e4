//! The state of one lowering (ONNX names to plan tensors, constants, readers, what could not
//! be lowered) and the node dispatch; each op family's lowering is in [`super::conv`] and
//! [`super::ops`].

use super::attrs::*;
use bevrt_kernels::params::act;
use bevrt_kernels::plan::{DType, KernelPlan, Op, Step, TensorDesc, TensorId};
use std::collections::HashMap;
use std::sync::Arc;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{Factoid, InferenceFact};

/// A DequantizeLinear of a constant: integer values and their per-axis quantization.
#[derive(Clone)]
pub(super) struct QConst {
    pub(super) values: Vec<i32>,
    pub(super) shape: Vec<usize>,
    pub(super) scales: Vec<f32>,
    pub(super) zps: Vec<i32>,
    pub(super) axis: usize,
}

impl QConst {
    pub(super) fn dequantized(&self) -> Vec<f32> {
        let inner: usize = self.shape.iter().skip(self.axis + 1).product();
        let len = self.shape.get(self.axis).copied().unwrap_or(1);
        self.values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let ch = if self.scales.len() == 1 {
                    0
                } else {
                    (i / inner) % len
                };
                (*v - self.zps[ch]) as f32 * self.scales[ch]
            })
            .collect()
    }
}

pub(super) struct Facts<'a> {
    pub(super) model: &'a InferenceModel,
    pub(super) by_name: &'a HashMap<String, OutletId>,
}

impl Facts<'_> {
    pub(super) fn fact(&self, name: &str) -> Option<&InferenceFact> {
        let o = self.by_name.get(name)?;
        self.model.outlet_fact(*o).ok()
    }
    pub(super) fn value(&self, name: &str) -> Option<Arc<Tensor>> {
        self.fact(name)?.value.concretize()
    }
}

pub(super) struct Lowering<'a> {
    pub(super) opset: i64,
    pub(super) float: DType,
    pub(super) plan: KernelPlan,
    /// ONNX tensor name → plan tensor.
    pub(super) tensor: HashMap<String, TensorId>,
    pub(super) qconst: HashMap<String, QConst>,
    /// DequantizeLinear outputs of int8 activations: name → the int8 tensor. The float
    /// tensor is materialised only if a non-convolution reads it.
    pub(super) dq_of: HashMap<String, TensorId>,
    pub(super) readers: HashMap<String, usize>,
    pub(super) graph_outputs: Vec<String>,
    /// Plan tensor → the step that writes it.
    pub(super) producer_step: HashMap<TensorId, usize>,
    pub(super) unsupported: Vec<String>,
    pub(super) facts: Facts<'a>,
}

impl Lowering<'_> {
    pub(super) fn shape(&self, name: &str) -> Result<Vec<usize>, String> {
        let f = self
            .facts
            .fact(name)
            .ok_or_else(|| format!("tensor '{name}' unknown to the shape analysis"))?;
        f.shape
            .as_concrete_finite()
            .ok()
            .flatten()
            .map(|s| s.to_vec())
            .ok_or_else(|| format!("tensor '{name}' has no static shape ({:?})", f.shape))
    }

    pub(super) fn new_tensor(
        &mut self,
        name: &str,
        shape: Vec<usize>,
        dtype: DType,
        quant: Option<(f32, i32)>,
    ) -> TensorId {
        self.plan.add_tensor(TensorDesc {
            name: name.to_string(),
            shape,
            dtype,
            quant,
            view_of: None,
            view_offset: 0,
        })
    }

    pub(super) fn push(&mut self, name: &str, op: Op, inputs: Vec<TensorId>, output: TensorId) {
        self.push_with_consts(name, op, inputs, vec![], output)
    }

    pub(super) fn push_with_consts(
        &mut self,
        name: &str,
        op: Op,
        inputs: Vec<TensorId>,
        const_inputs: Vec<(usize, usize)>,
        output: TensorId,
    ) {
        self.producer_step.insert(output, self.plan.steps.len());
        self.plan.steps.push(Step {
            name: name.to_string(),
            op,
            inputs,
            const_inputs,
            output,
        });
    }

    /// The shape of a constant (quantized or float); empty when it has none.
    pub(super) fn const_shape(&self, name: &str) -> Vec<usize> {
        match self.qconst.get(name) {
            Some(q) => q.shape.clone(),
            None => self
                .facts
                .value(name)
                .map(|v| v.shape().to_vec())
                .unwrap_or_default(),
        }
    }

    pub(super) fn is_const(&self, name: &str) -> bool {
        !self.tensor.contains_key(name)
            && !self.dq_of.contains_key(name)
            && (self.qconst.contains_key(name) || self.facts.value(name).is_some())
    }

    pub(super) fn const_f32(&self, name: &str) -> Result<Vec<f32>, String> {
        if let Some(q) = self.qconst.get(name) {
            return Ok(q.dequantized());
        }
        let v = self
            .facts
            .value(name)
            .ok_or_else(|| format!("'{name}' is not a constant"))?;
        to_f32(&v)
    }

    /// The float tensor for an ONNX name, dequantizing an int8 activation on first use.
    pub(super) fn float_tensor(&mut self, name: &str) -> Result<TensorId, String> {
        if let Some(&t) = self.tensor.get(name) {
            if self.plan.tensors[t].dtype == DType::I8 {
                return Err(format!("'{name}' is int8 where a float tensor is needed"));
            }
            return Ok(t);
        }
        if let Some(&q) = self.dq_of.get(name) {
            let shape = self.plan.tensors[q].shape.clone();
            let t = self.new_tensor(name, shape, self.float, None);
            self.push(&format!("{name} (dequantize)"), Op::Dequantize, vec![q], t);
            self.tensor.insert(name.to_string(), t);
            return Ok(t);
        }
        Err(format!("tensor '{name}' is not computed by the plan"))
    }

    pub(super) fn single_reader(&self, name: &str) -> bool {
        self.readers.get(name).copied().unwrap_or(0) == 1
            && !self.graph_outputs.iter().any(|o| o == name)
    }

    /// The step writing `name` when `name` is read only by the node being lowered.
    pub(super) fn fusable_producer(&self, name: &str) -> Option<usize> {
        let t = *self.tensor.get(name)?;
        if !self.single_reader(name) {
            return None;
        }
        self.producer_step.get(&t).copied()
    }

    pub(super) fn out_tensor(
        &mut self,
        n: &pb::NodeProto,
        dtype: DType,
        quant: Option<(f32, i32)>,
    ) -> Result<TensorId, String> {
        let name = &n.output[0];
        let shape = self.shape(name)?;
        let t = self.new_tensor(name, shape, dtype, quant);
        self.tensor.insert(name.clone(), t);
        Ok(t)
    }

    pub(super) fn node(&mut self, n: &pb::NodeProto) -> Result<(), String> {
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            return Err(format!("domain '{}'", n.domain));
        }
        // Everything tract could compute without the input is a constant (shape arithmetic).
        if n.output
            .iter()
            .all(|o| o.is_empty() || self.facts.value(o).is_some())
            && n.op_type != "DequantizeLinear"
        {
            return Ok(());
        }
        let name = if n.name.is_empty() {
            n.output[0].clone()
        } else {
            n.name.clone()
        };
        match n.op_type.as_str() {
            "Conv" => self.conv(n, &name),
            "ConvTranspose" => self.conv_transpose(n, &name),
            "Gemm" | "MatMul" => self.matmul(n, &name),
            "Relu" => self.activation(n, &name, act::RELU, 0.0, 0.0),
            "Sigmoid" => self.activation(n, &name, act::SIGMOID, 0.0, 0.0),
            "HardSwish" => self.activation(n, &name, act::HARD_SWISH, 0.0, 0.0),
            "LeakyRelu" => {
                let a = attr_f(n, "alpha", 0.01);
                self.activation(n, &name, act::LEAKY_RELU, a, 0.0)
            }
            "HardSigmoid" => {
                let (a, b) = (attr_f(n, "alpha", 0.2), attr_f(n, "beta", 0.5));
                self.activation(n, &name, act::HARD_SIGMOID, a, b)
            }
            "Clip" => {
                let (mut lo, mut hi) = (f32::NEG_INFINITY, f32::INFINITY);
                if self.opset < 11 {
                    lo = attr_f(n, "min", lo);
                    hi = attr_f(n, "max", hi);
                } else {
                    if let Some(m) = n.input.get(1).filter(|s| !s.is_empty()) {
                        lo = self.const_f32(m)?[0];
                    }
                    if let Some(m) = n.input.get(2).filter(|s| !s.is_empty()) {
                        hi = self.const_f32(m)?[0];
                    }
                }
                self.activation(n, &name, act::CLIP, lo, hi)
            }
            "Add" | "Sub" | "Mul" | "Div" => self.binary(n, &name),
            "Sum" => self.sum(n, &name),
            "Transpose" => self.transpose(n, &name),
            "BatchNormalization" => self.batchnorm(n, &name),
            "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" => {
                self.pool(n, &name)
            }
            "Resize" | "Upsample" => self.resize(n, &name),
            "Softmax" => self.softmax(n, &name),
            "Concat" => self.concat(n, &name),
            "QuantizeLinear" => self.quantize(n, &name),
            "DequantizeLinear" => self.dequantize(n, &name),
            "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Identity" | "Dropout" => {
                self.view(n)
            }
            other => Err(format!("op {other} is not in the supported set")),
        }
    }

    pub(super) fn view(&mut self, n: &pb::NodeProto) -> Result<(), String> {
        if let Some(&q) = self.dq_of.get(&n.input[0]) {
            // a view of a dequantized activation: keep it int8 for the convolution after it
            let shape = self.shape(&n.output[0])?;
            let mut d = self.plan.tensors[q].clone();
            d.name = n.output[0].clone();
            d.shape = shape;
            d.view_of = Some(q);
            d.view_offset = 0;
            let t = self.plan.add_tensor(d);
            self.dq_of.insert(n.output[0].clone(), t);
            return Ok(());
        }
        let src = *self
            .tensor
            .get(&n.input[0])
            .ok_or_else(|| format!("input '{}' is not computed by the plan", n.input[0]))?;
        let shape = self.shape(&n.output[0])?;
        let mut d = self.plan.tensors[src].clone();
        d.name = n.output[0].clone();
        d.shape = shape;
        d.view_of = Some(src);
        d.view_offset = 0;
        let t = self.plan.add_tensor(d);
        self.tensor.insert(n.output[0].clone(), t);
        Ok(())
    }

    pub(super) fn activation(
        &mut self,
        n: &pb::NodeProto,
        name: &str,
        code: i32,
        a: f32,
        b: f32,
    ) -> Result<(), String> {
        let x = &n.input[0];
        // fuse into the producer when it has no activation yet and writes float
        if let Some(si) = self.fusable_producer(x) {
            let out = self.plan.steps[si].output;
            let float_out = self.plan.tensors[out].dtype != DType::I8;
            let fusable = match &mut self.plan.steps[si].op {
                Op::Conv { p, .. } if p.act == act::NONE && float_out => {
                    p.act = code;
                    p.act_a = a;
                    p.act_b = b;
                    true
                }
                Op::Binary(p) if p.act == act::NONE => {
                    p.act = code;
                    p.act_a = a;
                    p.act_b = b;
                    true
                }
                _ => false,
            };
            if fusable {
                self.plan.steps[si].name.push_str(&format!(" + {name}"));
                self.plan.tensors[out].name = n.output[0].clone();
                self.tensor.insert(n.output[0].clone(), out);
                return Ok(());
            }
        }
        let xt = self.float_tensor(x)?;
        let y = self.out_tensor(n, self.float, None)?;
        self.push(name, Op::Unary { act: code, a, b }, vec![xt], y);
        Ok(())
    }
}
