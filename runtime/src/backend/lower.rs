//! ONNX → [`KernelPlan`]: the CUDA executor's front end.
//!
//! The graph is read with bevrt's ONNX reader, BatchNormalization and constant bias Adds are
//! folded into their Conv (the quantizer's graph passes), and tract parses and analyses it for
//! the bundle's static input shapes: every tensor's shape, and the value of every tensor that
//! does not depend on the input (shape arithmetic such as Shape → Gather → Concat → Reshape),
//! come from tract. Then each ONNX node becomes at most one kernel launch:
//!
//! - `Conv`, `Gemm`, `MatMul` (constant right operand) → implicit-GEMM convolution (1x1 for
//!   the matrix products), grouped/depthwise ones → the direct kernel. With Q/DQ around them
//!   (`QuantizeLinear → DequantizeLinear → Conv` and int8 weights behind a DequantizeLinear,
//!   symmetric, per tensor or per output channel) they run in INT8; otherwise in FP16.
//! - An activation (`Relu`, `Clip`, `HardSigmoid`, `HardSwish`, `Sigmoid`) whose input is read
//!   by it alone is fused into the convolution or binary op that produced it; a
//!   `QuantizeLinear` likewise into the convolution before it (requantizing epilogue).
//! - `Add`/`Sub`/`Mul`/`Div` (broadcasting, rank ≤ 4), `MaxPool`, `AveragePool`,
//!   `GlobalAveragePool`, `GlobalMaxPool`, `Resize`/`Upsample`, `Softmax`, `Concat`,
//!   `QuantizeLinear`, `DequantizeLinear` → their kernels; `Reshape`, `Flatten`, `Squeeze`,
//!   `Unsqueeze`, `Identity`, `Dropout` → views of the same bytes.
//!
//! Anything else is refused at load with the list of unsupported nodes: no silent fallback.
//! Float activations are FP16 (`float: F16`, what the kernels run) or, for checking the
//! lowering itself against tract on the CPU, F32. Graph outputs are always f32.

use bevrt_kernels::params::{BinaryParams, ConvParams, PoolParams, ResizeParams, act, out_mode};
use bevrt_kernels::plan::{
    ConstData, ConvKernel, DType, KernelPlan, Op, Step, TensorDesc, TensorId,
};
use bevrt_kernels::reference::f2h;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{Factoid, InferenceFact};

#[derive(Debug, thiserror::Error)]
pub enum LowerError {
    #[error("{path}: {message}")]
    Model { path: String, message: String },
    #[error(
        "{path}: the kernel plan (CUDA and cpu-plan) does not support {} node(s): {}",
        .nodes.len(),
        .nodes.join("; ")
    )]
    Unsupported { path: String, nodes: Vec<String> },
}

#[derive(Debug, Clone, Copy)]
pub struct LowerOptions {
    /// Storage of float activations: F16 for the GPU, F32 to check the lowering on the CPU.
    pub float: DType,
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions { float: DType::F16 }
    }
}

/// A DequantizeLinear of a constant: integer values and their per-axis quantization.
#[derive(Clone)]
struct QConst {
    values: Vec<i32>,
    shape: Vec<usize>,
    scales: Vec<f32>,
    zps: Vec<i32>,
    axis: usize,
}

impl QConst {
    fn dequantized(&self) -> Vec<f32> {
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

/// Lower one ONNX file for fixed input shapes (`name → shape`; inputs not listed keep the
/// model's own static shape).
pub fn lower_onnx(
    path: &Path,
    input_shapes: &[(&str, Vec<usize>)],
    opts: &LowerOptions,
) -> Result<KernelPlan, LowerError> {
    let proto = bevrt_models::read_proto(path).map_err(|e| LowerError::Model {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    lower_proto(proto, &path.display().to_string(), input_shapes, opts)
}

/// Lower a bundle's network file with its first input fixed to `shape` (what both plan
/// backends load).
pub fn lower_network(
    path: &Path,
    shape: Vec<usize>,
    opts: &LowerOptions,
) -> anyhow::Result<KernelPlan> {
    use anyhow::Context;
    let input = bevrt_models::inspect(path)?
        .inputs
        .first()
        .map(|i| i.name.clone())
        .with_context(|| format!("{}: model has no input", path.display()))?;
    Ok(lower_onnx(path, &[(&input, shape)], opts)?)
}

/// [`lower_onnx`] for a model already in memory; `label` names it in errors. tract parses
/// and analyses the graph first; a panic in it on a malformed graph (fuzzing found several)
/// becomes an error naming the model, not the end of the process.
pub fn lower_proto(
    proto: pb::ModelProto,
    label: &str,
    input_shapes: &[(&str, Vec<usize>)],
    opts: &LowerOptions,
) -> Result<KernelPlan, LowerError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        lower_proto_unguarded(proto, label, input_shapes, opts)
    }))
    .unwrap_or_else(|p| {
        Err(LowerError::Model {
            path: label.to_string(),
            message: format!(
                "the ONNX engine failed on this graph: {}",
                crate::pipeline::panic_message(p.as_ref())
            ),
        })
    })
}

fn lower_proto_unguarded(
    mut proto: pb::ModelProto,
    label: &str,
    input_shapes: &[(&str, Vec<usize>)],
    opts: &LowerOptions,
) -> Result<KernelPlan, LowerError> {
    let p = label.to_string();
    let err = |message: String| LowerError::Model {
        path: p.clone(),
        message,
    };
    let opset = bevrt_models::onnx::default_opset(&proto).unwrap_or(13);
    let graph = proto.graph.as_mut().ok_or_else(|| err("no graph".into()))?;
    use bevrt_models::quant::graph as passes;
    passes::constants_to_initializers(graph);
    for r in passes::fold_batchnorm(graph)
        .into_iter()
        .chain(passes::fold_conv_bias_add(graph))
    {
        log::debug!("{p}: {r}");
    }
    let parsed = tract_onnx::onnx()
        .parse(&proto, None)
        .map_err(|e| err(format!("{e:#}")))?;
    let mut model = parsed.model;
    let graph = proto.graph.as_ref().expect("checked above");
    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let real_inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .collect();
    for (ix, inp) in real_inputs.iter().enumerate() {
        if let Some((_, shape)) = input_shapes.iter().find(|(n, _)| *n == inp.name) {
            model
                .set_input_fact(
                    ix,
                    InferenceFact::dt_shape(f32::datum_type(), shape.clone()),
                )
                .map_err(|e| err(format!("{e:#}")))?;
        }
    }
    model
        .analyse(false)
        .map_err(|e| err(format!("shape analysis: {e:#}")))?;
    let facts = Facts {
        model: &model,
        by_name: &parsed.outlets_by_name,
    };
    let mut l = Lowering {
        opset,
        float: opts.float,
        plan: KernelPlan::default(),
        tensor: HashMap::new(),
        qconst: HashMap::new(),
        dq_of: HashMap::new(),
        readers: HashMap::new(),
        graph_outputs: graph.output.iter().map(|o| o.name.clone()).collect(),
        producer_step: HashMap::new(),
        unsupported: vec![],
        facts,
    };
    for n in &graph.node {
        for i in &n.input {
            *l.readers.entry(i.clone()).or_insert(0) += 1;
        }
    }
    for o in &graph.output {
        *l.readers.entry(o.name.clone()).or_insert(0) += 1;
    }
    for inp in &real_inputs {
        let shape = l.shape(&inp.name).map_err(err)?;
        let t = l.new_tensor(&inp.name, shape, DType::F32, None);
        l.plan.inputs.push(t);
        // kernels read f16: convert once at the start
        let t = if l.float == DType::F32 {
            t
        } else {
            let shape = l.plan.tensors[t].shape.clone();
            let h = l.new_tensor(&format!("{}.f16", inp.name), shape, l.float, None);
            l.push("input cast", Op::Cast, vec![t], h);
            h
        };
        l.tensor.insert(inp.name.clone(), t);
    }
    for n in &graph.node {
        if let Err(e) = l.node(n) {
            l.unsupported.push(format!(
                "{} '{}': {e}",
                n.op_type,
                if n.name.is_empty() {
                    &n.output[0]
                } else {
                    &n.name
                }
            ));
        }
    }
    if !l.unsupported.is_empty() {
        return Err(LowerError::Unsupported {
            path: p,
            nodes: l.unsupported,
        });
    }
    for o in &graph.output {
        let t = l.float_tensor(&o.name).map_err(err)?;
        let t = if l.plan.tensors[t].dtype == DType::F32 {
            t
        } else {
            let shape = l.plan.tensors[t].shape.clone();
            let f = l.new_tensor(&format!("{}.f32", o.name), shape, DType::F32, None);
            l.push("output cast", Op::Cast, vec![t], f);
            f
        };
        l.plan.outputs.push(t);
    }
    let mut plan = l.plan;
    plan.allocate();
    Ok(plan)
}

struct Facts<'a> {
    model: &'a InferenceModel,
    by_name: &'a HashMap<String, OutletId>,
}

impl Facts<'_> {
    fn fact(&self, name: &str) -> Option<&InferenceFact> {
        let o = self.by_name.get(name)?;
        self.model.outlet_fact(*o).ok()
    }
    fn value(&self, name: &str) -> Option<Arc<Tensor>> {
        self.fact(name)?.value.concretize()
    }
}

struct Lowering<'a> {
    opset: i64,
    float: DType,
    plan: KernelPlan,
    /// ONNX tensor name → plan tensor.
    tensor: HashMap<String, TensorId>,
    qconst: HashMap<String, QConst>,
    /// DequantizeLinear outputs of int8 activations: name → the int8 tensor. The float
    /// tensor is materialised only if a non-convolution reads it.
    dq_of: HashMap<String, TensorId>,
    readers: HashMap<String, usize>,
    graph_outputs: Vec<String>,
    /// Plan tensor → the step that writes it.
    producer_step: HashMap<TensorId, usize>,
    unsupported: Vec<String>,
    facts: Facts<'a>,
}

fn attr<'n>(n: &'n pb::NodeProto, name: &str) -> Option<&'n pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}
fn attr_i(n: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map(|a| a.i).unwrap_or(default)
}
fn attr_f(n: &pb::NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map(|a| a.f).unwrap_or(default)
}
fn attr_ints(n: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}
fn attr_s(n: &pb::NodeProto, name: &str, default: &str) -> String {
    attr(n, name)
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
        .unwrap_or_else(|| default.to_string())
}

fn to_f32(t: &Tensor) -> Result<Vec<f32>, String> {
    let t = t.cast_to::<f32>().map_err(|e| e.to_string())?;
    let view = t.try_as_plain_ram().map_err(|e| e.to_string())?;
    Ok(view.as_slice::<f32>().map_err(|e| e.to_string())?.to_vec())
}
fn to_i32(t: &Tensor) -> Result<Vec<i32>, String> {
    let t = t.cast_to::<i32>().map_err(|e| e.to_string())?;
    let view = t.try_as_plain_ram().map_err(|e| e.to_string())?;
    Ok(view.as_slice::<i32>().map_err(|e| e.to_string())?.to_vec())
}

/// Zero points of uint8 tensors move to the signed domain (values are stored shifted by -128).
fn signed_zp(t: &Tensor) -> Result<Vec<i32>, String> {
    let shift = if t.datum_type() == u8::datum_type() {
        128
    } else {
        0
    };
    Ok(to_i32(t)?.into_iter().map(|z| z - shift).collect())
}

impl Lowering<'_> {
    fn shape(&self, name: &str) -> Result<Vec<usize>, String> {
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

    fn new_tensor(
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
        })
    }

    fn push(&mut self, name: &str, op: Op, inputs: Vec<TensorId>, output: TensorId) {
        self.push_with_consts(name, op, inputs, vec![], output)
    }

    fn push_with_consts(
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

    fn is_const(&self, name: &str) -> bool {
        !self.tensor.contains_key(name)
            && !self.dq_of.contains_key(name)
            && (self.qconst.contains_key(name) || self.facts.value(name).is_some())
    }

    fn const_f32(&self, name: &str) -> Result<Vec<f32>, String> {
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
    fn float_tensor(&mut self, name: &str) -> Result<TensorId, String> {
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

    fn single_reader(&self, name: &str) -> bool {
        self.readers.get(name).copied().unwrap_or(0) == 1
            && !self.graph_outputs.iter().any(|o| o == name)
    }

    /// The step writing `name` when `name` is read only by the node being lowered.
    fn fusable_producer(&self, name: &str) -> Option<usize> {
        let t = *self.tensor.get(name)?;
        if !self.single_reader(name) {
            return None;
        }
        self.producer_step.get(&t).copied()
    }

    fn out_tensor(
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

    fn node(&mut self, n: &pb::NodeProto) -> Result<(), String> {
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

    fn view(&mut self, n: &pb::NodeProto) -> Result<(), String> {
        if let Some(&q) = self.dq_of.get(&n.input[0]) {
            // a view of a dequantized activation: keep it int8 for the convolution after it
            let shape = self.shape(&n.output[0])?;
            let mut d = self.plan.tensors[q].clone();
            d.name = n.output[0].clone();
            d.shape = shape;
            d.view_of = Some(q);
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
        let t = self.plan.add_tensor(d);
        self.tensor.insert(n.output[0].clone(), t);
        Ok(())
    }

    fn activation(
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

    /// Weights as the kernels want them: rows of kdim values padded to a multiple of 32.
    fn pad_rows<T: Copy + Default>(v: &[T], rows: usize, kdim: usize) -> (Vec<T>, usize) {
        let kpad = kdim.div_ceil(32) * 32;
        let mut out = vec![T::default(); rows * kpad];
        for r in 0..rows {
            out[r * kpad..r * kpad + kdim].copy_from_slice(&v[r * kdim..(r + 1) * kdim]);
        }
        (out, kpad)
    }

    /// The convolution step for input `x` (an ONNX name), weights `w` (rows = output
    /// channels, `kdim` each) and float bias; INT8 when both are quantized.
    #[allow(clippy::too_many_arguments)]
    fn conv_step(
        &mut self,
        name: &str,
        x: &str,
        w: &str,
        w_scale: f32,
        bias: Vec<f32>,
        mut p: ConvParams,
        out_name: &str,
        transpose: Option<(usize, usize)>,
    ) -> Result<(), String> {
        let rows = p.k as usize;
        let kdim = p.kdim as usize;
        let out_shape = self.shape(out_name)?;
        let int8 = self
            .dq_of
            .get(x)
            .copied()
            .filter(|_| self.qconst.contains_key(w));
        let (kernel_i8, kernel_f) = if p.groups == 1 {
            (ConvKernel::GemmI8, ConvKernel::GemmF16)
        } else {
            (ConvKernel::DirectI8, ConvKernel::DirectF16)
        };
        let bias_c = self.plan.add_const(ConstData::F32(bias));
        if let Some(xq) = int8 {
            let q = self.qconst[w].clone();
            if q.zps.iter().any(|z| *z != 0) {
                return Err("int8 weights with a non-zero zero point".into());
            }
            if q.scales.len() != 1 && (q.axis != 0 || q.scales.len() != rows)
                || transpose.is_some() && q.scales.len() != 1
            {
                return Err(
                    "int8 weights quantized along another axis than the output channels".into(),
                );
            }
            let mut vals = q.values.clone();
            if let Some((r, c)) = transpose {
                vals = (0..c)
                    .flat_map(|j| (0..r).map(move |i| (i, j)))
                    .map(|(i, j)| q.values[i * c + j])
                    .collect();
            }
            if vals.iter().any(|v| *v < -128 || *v > 127) {
                return Err("weights outside int8".into());
            }
            let wi8: Vec<i8> = vals.iter().map(|v| *v as i8).collect();
            let (wpad, kpad) = Self::pad_rows(&wi8, rows, kdim);
            let (sx, zpx) = self.plan.tensors[xq]
                .quant
                .expect("int8 tensors carry scales");
            let wsum: Vec<i32> = (0..rows)
                .map(|r| {
                    wi8[r * kdim..(r + 1) * kdim]
                        .iter()
                        .map(|v| *v as i32)
                        .sum()
                })
                .collect();
            let mult: Vec<f32> = (0..rows)
                .map(|r| sx * (q.scales[if q.scales.len() == 1 { 0 } else { r }] * w_scale))
                .collect();
            p.kpad = kpad as i32;
            p.in_zp = zpx;
            p.out_mode = if self.float == DType::F32 {
                out_mode::F32
            } else {
                out_mode::F16
            };
            let weights = self.plan.add_const(ConstData::I8(wpad));
            let wsum = Some(self.plan.add_const(ConstData::I32(wsum)));
            let mult = Some(self.plan.add_const(ConstData::F32(mult)));
            let y = self.new_tensor(out_name, out_shape, self.float, None);
            self.tensor.insert(out_name.to_string(), y);
            self.push(
                name,
                Op::Conv {
                    kernel: kernel_i8,
                    p,
                    weights,
                    bias: bias_c,
                    wsum,
                    mult,
                },
                vec![xq],
                y,
            );
            return Ok(());
        }
        let xt = self.float_tensor(x)?;
        let mut wf = self.const_f32(w)?;
        if let Some((r, c)) = transpose {
            wf = (0..c)
                .flat_map(|j| (0..r).map(move |i| (i, j)))
                .map(|(i, j)| wf[i * c + j])
                .collect();
        }
        if w_scale != 1.0 {
            wf.iter_mut().for_each(|v| *v *= w_scale);
        }
        if wf.len() != rows * kdim {
            return Err(format!(
                "weights have {} values, expected {}",
                wf.len(),
                rows * kdim
            ));
        }
        let (wpad, kpad) = Self::pad_rows(&wf, rows, kdim);
        p.kpad = kpad as i32;
        p.out_mode = if self.float == DType::F32 {
            out_mode::F32
        } else {
            out_mode::F16
        };
        let weights = self.plan.add_const(match self.float {
            DType::F32 => ConstData::F32(wpad),
            _ => ConstData::F16(wpad.iter().map(|v| f2h(*v)).collect()),
        });
        let y = self.new_tensor(out_name, out_shape, self.float, None);
        self.tensor.insert(out_name.to_string(), y);
        self.push(
            name,
            Op::Conv {
                kernel: kernel_f,
                p,
                weights,
                bias: bias_c,
                wsum: None,
                mult: None,
            },
            vec![xt],
            y,
        );
        Ok(())
    }

    fn conv(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let (x, w) = (&n.input[0], &n.input[1]);
        if !self.is_const(w) {
            return Err("weights are not constant".into());
        }
        let xs = self.shape(x)?;
        let ys = self.shape(&n.output[0])?;
        if xs.len() != 4 {
            return Err(format!("only 2-D convolution (input rank {})", xs.len()));
        }
        let ws = match self.qconst.get(w.as_str()) {
            Some(q) => q.shape.clone(),
            None => self
                .facts
                .value(w)
                .map(|v| v.shape().to_vec())
                .unwrap_or_default(),
        };
        if ws.len() != 4 {
            return Err("weights are not 4-D".into());
        }
        let groups = attr_i(n, "group", 1) as usize;
        let strides = attr_ints(n, "strides").unwrap_or(vec![1, 1]);
        let dil = attr_ints(n, "dilations").unwrap_or(vec![1, 1]);
        let pads = attr_ints(n, "pads").unwrap_or(vec![0, 0, 0, 0]);
        let auto_pad = attr_s(n, "auto_pad", "NOTSET");
        let (kh, kw) = (ws[2], ws[3]);
        // top/left padding; SAME_* from the output size tract inferred
        let (pad_h, pad_w) = match auto_pad.as_str() {
            "NOTSET" => (pads[0], pads[1]),
            "VALID" => (0, 0),
            mode => {
                let total = |i: usize, o: usize, k: usize, s: i64, d: i64| {
                    ((o as i64 - 1) * s + (k as i64 - 1) * d + 1 - i as i64).max(0)
                };
                let th = total(xs[2], ys[2], kh, strides[0], dil[0]);
                let tw = total(xs[3], ys[3], kw, strides[1], dil[1]);
                if mode == "SAME_UPPER" {
                    (th / 2, tw / 2)
                } else {
                    (th - th / 2, tw - tw / 2)
                }
            }
        };
        let bias = match n.input.get(2).filter(|s| !s.is_empty()) {
            Some(b) => self.const_f32(b)?,
            None => vec![0.0; ws[0]],
        };
        let p = ConvParams {
            n: xs[0] as i32,
            c: xs[1] as i32,
            h: xs[2] as i32,
            w: xs[3] as i32,
            k: ys[1] as i32,
            oh: ys[2] as i32,
            ow: ys[3] as i32,
            r: kh as i32,
            s: kw as i32,
            stride_h: strides[0] as i32,
            stride_w: strides[1] as i32,
            pad_h: pad_h as i32,
            pad_w: pad_w as i32,
            dil_h: dil[0] as i32,
            dil_w: dil[1] as i32,
            groups: groups as i32,
            kdim: (ws[1] * kh * kw) as i32,
            ..Default::default()
        };
        self.conv_step(name, x, w, 1.0, bias, p, &n.output[0], None)
    }

    fn matmul(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let (a, b) = (&n.input[0], &n.input[1]);
        if !self.is_const(b) {
            return Err("the right operand is not constant".into());
        }
        let gemm = n.op_type == "Gemm";
        if gemm && attr_i(n, "transA", 0) != 0 {
            return Err("transA".into());
        }
        let a_shape = self.shape(a)?;
        let bs = match self.qconst.get(b.as_str()) {
            Some(q) => q.shape.clone(),
            None => self
                .facts
                .value(b)
                .map(|v| v.shape().to_vec())
                .unwrap_or_default(),
        };
        if bs.len() != 2 {
            return Err("the right operand is not 2-D".into());
        }
        let trans_b = gemm && attr_i(n, "transB", 0) != 0;
        let (kdim, nout) = if trans_b {
            (bs[1], bs[0])
        } else {
            (bs[0], bs[1])
        };
        let m: usize = a_shape[..a_shape.len() - 1].iter().product();
        if *a_shape.last().unwrap_or(&0) != kdim {
            return Err("inner dimensions differ".into());
        }
        let alpha = if gemm { attr_f(n, "alpha", 1.0) } else { 1.0 };
        let mut bias = vec![0f32; nout];
        if gemm && let Some(c) = n.input.get(2).filter(|s| !s.is_empty()) {
            let beta = attr_f(n, "beta", 1.0);
            let cv = self.const_f32(c)?;
            if cv.len() != 1 && cv.len() != nout {
                return Err("C is not a row vector".into());
            }
            for (j, b) in bias.iter_mut().enumerate() {
                *b = beta * cv[if cv.len() == 1 { 0 } else { j }];
            }
        }
        let p = ConvParams {
            n: m as i32,
            c: kdim as i32,
            h: 1,
            w: 1,
            k: nout as i32,
            oh: 1,
            ow: 1,
            r: 1,
            s: 1,
            stride_h: 1,
            stride_w: 1,
            dil_h: 1,
            dil_w: 1,
            groups: 1,
            kdim: kdim as i32,
            ..Default::default()
        };
        let transpose = if trans_b { None } else { Some((bs[0], bs[1])) };
        self.conv_step(name, a, b, alpha, bias, p, &n.output[0], transpose)
    }

    fn binary(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let out_shape = self.shape(&n.output[0])?;
        if out_shape.len() > 4 {
            return Err(format!("rank {} > 4", out_shape.len()));
        }
        let mut inputs = vec![];
        let mut consts = vec![];
        let mut strides = [[0i32; 4]; 2];
        for (pos, inp) in n.input.iter().take(2).enumerate() {
            let shape = if self.is_const(inp) {
                let v = self.const_f32(inp)?;
                let shape = self
                    .facts
                    .value(inp)
                    .map(|t| t.shape().to_vec())
                    .unwrap_or(vec![v.len()]);
                let c = self.plan.add_const(match self.float {
                    DType::F32 => ConstData::F32(v),
                    _ => ConstData::F16(v.iter().map(|x| f2h(*x)).collect()),
                });
                consts.push((pos, c));
                inputs.push(usize::MAX); // placeholder: the constant replaces it
                shape
            } else {
                let t = self.float_tensor(inp)?;
                inputs.push(t);
                self.plan.tensors[t].shape.clone()
            };
            if shape.len() > 4 {
                return Err(format!("rank {} > 4", shape.len()));
            }
            // right-align to 4 dims; broadcast dims get stride 0
            let mut st = 1i32;
            for d in 0..shape.len() {
                let dim = shape[shape.len() - 1 - d];
                let od = out_shape[out_shape.len() - 1 - d];
                strides[pos][3 - d] = if dim == 1 && od != 1 { 0 } else { st };
                st *= dim as i32;
            }
        }
        // a constant input has no tensor: point it at the other input (never read)
        let first = inputs
            .iter()
            .copied()
            .find(|t| *t != usize::MAX)
            .ok_or("both operands are constant")?;
        for t in inputs.iter_mut() {
            if *t == usize::MAX {
                *t = first;
            }
        }
        let mut dims = [1i32; 4];
        for (d, v) in out_shape.iter().rev().enumerate() {
            dims[3 - d] = *v as i32;
        }
        let p = BinaryParams {
            n: out_shape.iter().product::<usize>() as i32,
            dims,
            a_strides: strides[0],
            b_strides: strides[1],
            op: match n.op_type.as_str() {
                "Add" => 0,
                "Sub" => 1,
                "Mul" => 2,
                _ => 3,
            },
            ..Default::default()
        };
        let y = self.out_tensor(n, self.float, None)?;
        self.push_with_consts(name, Op::Binary(p), inputs, consts, y);
        Ok(())
    }

    fn pool(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let x = self.float_tensor(&n.input[0])?;
        let xs = self.plan.tensors[x].shape.clone();
        let ys = self.shape(&n.output[0])?;
        if xs.len() != 4 {
            return Err("only 2-D pooling".into());
        }
        if n.output.len() > 1 && !n.output[1].is_empty() {
            return Err("MaxPool indices output".into());
        }
        let global = n.op_type.starts_with("Global");
        let (k, strides, pads) = if global {
            (
                vec![xs[2] as i64, xs[3] as i64],
                vec![1, 1],
                vec![0, 0, 0, 0],
            )
        } else {
            if attr_ints(n, "dilations").is_some_and(|d| d.iter().any(|v| *v != 1)) {
                return Err("dilated pooling".into());
            }
            if attr_s(n, "auto_pad", "NOTSET") != "NOTSET" {
                return Err("auto_pad pooling".into());
            }
            (
                attr_ints(n, "kernel_shape").ok_or("no kernel_shape")?,
                attr_ints(n, "strides").unwrap_or(vec![1, 1]),
                attr_ints(n, "pads").unwrap_or(vec![0, 0, 0, 0]),
            )
        };
        let p = PoolParams {
            n: xs[0] as i32,
            c: xs[1] as i32,
            h: xs[2] as i32,
            w: xs[3] as i32,
            oh: ys[2] as i32,
            ow: ys[3] as i32,
            kh: k[0] as i32,
            kw: k[1] as i32,
            stride_h: strides[0] as i32,
            stride_w: strides[1] as i32,
            pad_h: pads[0] as i32,
            pad_w: pads[1] as i32,
            mode: if n.op_type.contains("Max") { 0 } else { 1 },
            count_include_pad: attr_i(n, "count_include_pad", 0) as i32,
        };
        if p.mode == 1 && p.count_include_pad != 0 && attr_i(n, "ceil_mode", 0) != 0 {
            return Err("ceil_mode with count_include_pad".into());
        }
        let y = self.out_tensor(n, self.float, None)?;
        self.push(name, Op::Pool(p), vec![x], y);
        Ok(())
    }

    fn resize(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let x = self.float_tensor(&n.input[0])?;
        let xs = self.plan.tensors[x].shape.clone();
        let ys = self.shape(&n.output[0])?;
        if xs.len() != 4 || xs[0] != ys[0] || xs[1] != ys[1] {
            return Err("only spatial resizing of NCHW".into());
        }
        let mode = attr_s(n, "mode", "nearest");
        let upsample = n.op_type == "Upsample";
        let coord = if upsample {
            "asymmetric".to_string()
        } else {
            attr_s(n, "coordinate_transformation_mode", "half_pixel")
        };
        // scales: Upsample input 1 / Resize input 2, else output size / input size
        let scales_input = if upsample {
            n.input.get(1)
        } else {
            n.input.get(2)
        };
        let scales = scales_input
            .filter(|s| !s.is_empty())
            .and_then(|s| self.const_f32(s).ok())
            .filter(|v| v.len() == 4);
        let (sh, sw) = match scales {
            Some(v) => (v[2], v[3]),
            None => (ys[2] as f32 / xs[2] as f32, ys[3] as f32 / xs[3] as f32),
        };
        if !upsample && attr_i(n, "antialias", 0) != 0 {
            return Err("antialias".into());
        }
        let p = ResizeParams {
            n: xs[0] as i32,
            c: xs[1] as i32,
            h: xs[2] as i32,
            w: xs[3] as i32,
            oh: ys[2] as i32,
            ow: ys[3] as i32,
            mode: match mode.as_str() {
                "nearest" => 0,
                "linear" | "bilinear" => 1,
                m => return Err(format!("mode {m}")),
            },
            coord: match coord.as_str() {
                "half_pixel" => 0,
                "align_corners" => 1,
                "asymmetric" => 2,
                "pytorch_half_pixel" => 3,
                c => return Err(format!("coordinate_transformation_mode {c}")),
            },
            nearest_mode: if upsample {
                1
            } else {
                match attr_s(n, "nearest_mode", "round_prefer_floor").as_str() {
                    "round_prefer_floor" => 0,
                    "floor" => 1,
                    "ceil" => 2,
                    _ => 3,
                }
            },
            scale_h: sh,
            scale_w: sw,
        };
        let y = self.out_tensor(n, self.float, None)?;
        self.push(name, Op::Resize(p), vec![x], y);
        Ok(())
    }

    fn softmax(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let x = self.float_tensor(&n.input[0])?;
        let s = self.plan.tensors[x].shape.clone();
        let default_axis = if self.opset < 13 { 1 } else { -1 };
        let mut axis = attr_i(n, "axis", default_axis);
        if axis < 0 {
            axis += s.len() as i64;
        }
        let a = axis as usize;
        let (outer, len, inner) = if self.opset < 13 {
            (s[..a].iter().product(), s[a..].iter().product(), 1)
        } else {
            (s[..a].iter().product(), s[a], s[a + 1..].iter().product())
        };
        let y = self.out_tensor(n, self.float, None)?;
        self.push(name, Op::Softmax { outer, len, inner }, vec![x], y);
        Ok(())
    }

    fn concat(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let ys = self.shape(&n.output[0])?;
        let mut axis = attr_i(n, "axis", 0);
        if axis < 0 {
            axis += ys.len() as i64;
        }
        let a = axis as usize;
        let outer: usize = ys[..a].iter().product();
        let after: usize = ys[a + 1..].iter().product();
        let y = self.out_tensor(n, self.float, None)?;
        let mut off = 0usize;
        for (i, inp) in n.input.iter().enumerate() {
            if self.is_const(inp) {
                return Err("a constant Concat input".into());
            }
            let x = self.float_tensor(inp)?;
            let xs = self.plan.tensors[x].shape.clone();
            let src_inner = xs[a] * after;
            self.push(
                &format!("{name} [{i}]"),
                Op::CopySlice {
                    outer,
                    src_inner,
                    dst_inner: ys[a] * after,
                    dst_offset: off,
                },
                vec![x],
                y,
            );
            off += src_inner;
        }
        Ok(())
    }

    /// (scale, zero point) of a per-tensor Q/DQ, as constants.
    fn scalar_q(&self, n: &pb::NodeProto) -> Result<(f32, i32), String> {
        let s = self.const_f32(&n.input[1])?;
        let zp = match n.input.get(2).filter(|s| !s.is_empty()) {
            Some(z) => signed_zp(&*self.facts.value(z).ok_or("zero point is not constant")?)?,
            // no zero point: uint8 with zero point 0, i.e. -128 in the signed domain
            None => vec![-128],
        };
        if s.len() != 1 || zp.len() != 1 {
            return Err("per-axis quantization of an activation".into());
        }
        Ok((s[0], zp[0]))
    }

    fn quantize(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let (s, zp) = self.scalar_q(n)?;
        let x = &n.input[0];
        // requantizing epilogue: the convolution before writes int8 directly
        if let Some(si) = self.fusable_producer(x) {
            let out = self.plan.steps[si].output;
            if let Op::Conv { p, .. } = &mut self.plan.steps[si].op
                && p.out_mode != out_mode::I8
            {
                p.out_mode = out_mode::I8;
                p.out_scale = s;
                p.out_zp = zp;
                let d = &mut self.plan.tensors[out];
                d.dtype = DType::I8;
                d.quant = Some((s, zp));
                d.name = n.output[0].clone();
                self.plan.steps[si].name.push_str(&format!(" + {name}"));
                self.tensor.insert(n.output[0].clone(), out);
                return Ok(());
            }
        }
        let xt = self.float_tensor(x)?;
        let y = self.out_tensor(n, DType::I8, Some((s, zp)))?;
        self.push(name, Op::Quantize, vec![xt], y);
        Ok(())
    }

    fn dequantize(&mut self, n: &pb::NodeProto, _name: &str) -> Result<(), String> {
        let q = &n.input[0];
        if let Some(v) = self.facts.value(q).filter(|_| !self.tensor.contains_key(q)) {
            // a quantized constant (weights, bias)
            let scales = self.const_f32(&n.input[1])?;
            let zps = match n.input.get(2).filter(|s| !s.is_empty()) {
                Some(z) => to_i32(&*self.facts.value(z).ok_or("zero point is not constant")?)?,
                None => vec![0; scales.len()],
            };
            let mut axis = attr_i(n, "axis", 1);
            if axis < 0 {
                axis += v.rank() as i64;
            }
            self.qconst.insert(
                n.output[0].clone(),
                QConst {
                    values: to_i32(&v)?,
                    shape: v.shape().to_vec(),
                    scales,
                    zps,
                    axis: axis as usize,
                },
            );
            return Ok(());
        }
        let (s, zp) = self.scalar_q(n)?;
        let &qt = self
            .tensor
            .get(q)
            .ok_or_else(|| format!("'{q}' is not computed by the plan"))?;
        if self.plan.tensors[qt].dtype != DType::I8 || self.plan.tensors[qt].quant != Some((s, zp))
        {
            return Err("DequantizeLinear of a tensor its QuantizeLinear did not write".into());
        }
        self.dq_of.insert(n.output[0].clone(), qt);
        Ok(())
    }
}
