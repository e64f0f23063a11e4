//! ONNX → [`KernelPlan`]: the front end of both plan backends (CUDA and `cpu-plan`), of
//! `bevrt conformance` and of the plan tests. It sits above the backends and below nothing
//! that runs frames.
//!
//! One story from file to plan, in two places:
//! 1. `bevrt_models::onnx` reads and checks the file (limits, opset) and legalises what tract
//!    itself cannot run (the CPU backend's path, `bevrt_models::onnx::legalize`).
//! 2. Here, [`legalize`] applies the graph passes the plan needs before analysis (constants
//!    as initializers, BatchNormalization and constant bias Adds folded into their Conv: the
//!    quantizer's passes, `bevrt_models::quant::graph`), tract analyses the graph
//!    ([`analyse`]), and [`lowering`] turns each node into at most one step ([`conv`],
//!    [`ops`]).
//!
//! The graph is read with bevrt's ONNX reader, BatchNormalization and constant bias Adds are
//! folded into their Conv (the quantizer's graph passes), and tract parses and analyses it for
//! the bundle's static input shapes: every tensor's shape, and the value of every tensor that
//! does not depend on the input (shape arithmetic such as Shape → Gather → Concat → Reshape),
//! come from tract. Then each ONNX node becomes at most one kernel launch:
//!
//! - `Conv`, `Gemm`, `MatMul` (constant right operand) → implicit-GEMM convolution (1x1 for
//!   the matrix products), grouped/depthwise ones → the direct kernel; `ConvTranspose` with
//!   kernel = stride → a 1x1 convolution and a Transpose. With Q/DQ around them
//!   (`QuantizeLinear → DequantizeLinear → Conv` and int8 weights behind a DequantizeLinear,
//!   symmetric, per tensor or per output channel) they run in INT8; otherwise in FP16.
//! - An activation (`Relu`, `Clip`, `HardSigmoid`, `HardSwish`, `Sigmoid`) whose input is read
//!   by it alone is fused into the convolution or binary op that produced it (hard-swish
//!   spelt out as `x·Clip(x+3,0,6)/6` or `x·HardSigmoid(x)` counts as one, [`patterns`]); a
//!   `QuantizeLinear` likewise into the convolution before it (requantizing epilogue).
//! - Ops that commute with quantization stay on the int8 codes behind a `DequantizeLinear`:
//!   views, `Transpose`, `MaxPool`; a `QuantizeLinear` of such codes with their own scale and
//!   zero point is the codes themselves (ONNX Runtime's QDQ graphs put a pair around each).
//!   `Add`/`Sub`/`Mul`/`Div` of two dequantized tensors of one shape whose result is quantized
//!   again run on the codes too (a plan pass, [`int8_binary`]); a `Concat` of dequantized
//!   convolution outputs quantized again is written in int8 by the convolutions themselves,
//!   each requantizing to the Concat's scale ([`int8_concat`]).
//! - `BatchNormalization` after anything but a Conv, and `Mul`/`Add`/`Sub` of a per-channel
//!   constant → one scale-shift step, or folded into the float Conv or scale-shift before it
//!   ([`affine`]).
//! - `Add`/`Sub`/`Mul`/`Div` (broadcasting, rank ≤ 4), `Sum` (a chain of additions),
//!   `MaxPool`, `AveragePool`,
//!   `GlobalAveragePool`, `GlobalMaxPool`, `Resize`/`Upsample`, `Softmax`, `Concat`,
//!   `QuantizeLinear`, `DequantizeLinear` → their kernels; `Reshape`, `Flatten`, `Squeeze`,
//!   `Unsqueeze`, `Identity`, `Dropout` → views of the same bytes.
//!
//! Anything else is refused at load, naming the op types missing with their counts (the nodes
//! after a refused one are counted, not listed): no silent fallback.
//! Float activations are FP16 (`float: F16`, what the kernels run) or, for checking the
//! lowering itself against tract on the CPU, F32. Graph outputs are always f32.

mod affine;
mod attrs;
mod conv;
mod int8_binary;
mod int8_concat;
mod lowering;
mod ops;
mod patterns;

use bevrt_kernels::plan::{DType, KernelPlan, Op};
use lowering::{Facts, Lowering};
use std::collections::HashMap;
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::InferenceFact;

#[derive(Debug, thiserror::Error)]
pub enum LowerError {
    #[error("{path}: {message}")]
    Model { path: String, message: String },
    /// `nodes`: one entry per node that could not be lowered for a reason of its own
    /// (`OpType 'node': why`); the nodes after them, which fail only because an input is
    /// missing, are counted in `downstream`.
    #[error(
        "{path}: the kernel plan (CUDA and cpu-plan) does not support {}; {} node(s) after them not lowered; first: {}",
        op_type_counts(.nodes),
        .downstream,
        .nodes.first().map(String::as_str).unwrap_or("-")
    )]
    Unsupported {
        path: String,
        nodes: Vec<String>,
        downstream: usize,
    },
}

/// "Sum ×16, Transpose ×2": the op types of refused nodes with their counts, most first.
pub fn op_type_counts(nodes: &[String]) -> String {
    let mut counts: Vec<(&str, usize)> = vec![];
    for n in nodes {
        let op = n.split(' ').next().unwrap_or("?");
        match counts.iter_mut().find(|(o, _)| *o == op) {
            Some(c) => c.1 += 1,
            None => counts.push((op, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counts
        .iter()
        .map(|(o, c)| format!("{o} ×{c}"))
        .collect::<Vec<_>>()
        .join(", ")
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
                crate::panics::panic_message(p.as_ref())
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
    let err = |message: String| LowerError::Model {
        path: label.to_string(),
        message,
    };
    let opset = bevrt_models::onnx::default_opset(&proto).unwrap_or(13);
    legalize(&mut proto, label).map_err(err)?;
    let graph = proto.graph.as_ref().expect("legalize checked the graph");
    let real_inputs: Vec<&pb::ValueInfoProto> = real_inputs(graph);
    let (model, by_name) = analyse(&proto, &real_inputs, input_shapes).map_err(err)?;
    let mut l = Lowering {
        opset,
        float: opts.float,
        plan: KernelPlan::default(),
        tensor: HashMap::new(),
        qconst: HashMap::new(),
        dq_of: HashMap::new(),
        readers: count_readers(graph),
        graph_outputs: graph.output.iter().map(|o| o.name.clone()).collect(),
        producer_step: HashMap::new(),
        unsupported: vec![],
        facts: Facts {
            model: &model,
            by_name: &by_name,
        },
    };
    lower_inputs(&mut l, &real_inputs).map_err(err)?;
    // hard-swish patterns: their last node runs as one HardSwish of x, which x's producer
    // can then take into its epilogue (x was read by the pattern twice, now once)
    let scalar = |name: &str| {
        let v = l.facts.value(name)?;
        (v.len() == 1)
            .then(|| v.cast_to_scalar::<f32>().ok())
            .flatten()
    };
    let swishes = patterns::hard_swishes(graph, opset, scalar, &l.readers);
    let mut skip = std::collections::HashSet::new();
    let mut ends = HashMap::new();
    for hs in &swishes {
        if let Some(r) = l.readers.get_mut(&hs.x) {
            *r -= 1;
        }
        skip.extend(hs.nodes.iter().copied().filter(|&i| i != hs.end));
        ends.insert(hs.end, hs.as_node(graph));
    }
    // outputs of refused nodes: a node reading one is not a cause of its own
    let mut missing: std::collections::HashSet<&str> = Default::default();
    let mut downstream = 0;
    for (i, n) in graph.node.iter().enumerate() {
        if skip.contains(&i) {
            continue;
        }
        let n = ends.get(&i).unwrap_or(n);
        if n.input.iter().any(|i| missing.contains(i.as_str())) {
            missing.extend(n.output.iter().map(String::as_str));
            downstream += 1;
            continue;
        }
        if let Err(e) = l.node(n) {
            let node = if n.name.is_empty() {
                &n.output[0]
            } else {
                &n.name
            };
            l.unsupported.push(format!("{} '{node}': {e}", n.op_type));
            missing.extend(n.output.iter().map(String::as_str));
        }
    }
    if !l.unsupported.is_empty() {
        return Err(LowerError::Unsupported {
            path: label.to_string(),
            nodes: l.unsupported,
            downstream,
        });
    }
    lower_outputs(&mut l, graph).map_err(err)?;
    let mut plan = l.plan;
    let fused = int8_binary::fuse_int8_binaries(&mut plan);
    if fused > 0 {
        log::debug!("{label}: {fused} int8 binary op(s) on the codes");
    }
    let concats = int8_concat::fold_int8_concats(&mut plan);
    if concats > 0 {
        log::debug!("{label}: {concats} concat(s) of requantized convolutions written as int8");
    }
    plan.allocate();
    Ok(plan)
}

/// The plan's graph passes: constants as initializers, BatchNormalization and constant bias
/// Adds folded into the Conv before them.
fn legalize(proto: &mut pb::ModelProto, label: &str) -> Result<(), String> {
    use bevrt_models::quant::graph as passes;
    let graph = proto.graph.as_mut().ok_or_else(|| "no graph".to_string())?;
    passes::constants_to_initializers(graph);
    for r in passes::fold_batchnorm(graph)
        .into_iter()
        .chain(passes::fold_conv_bias_add(graph))
    {
        log::debug!("{label}: {r}");
    }
    Ok(())
}

/// The graph inputs that are not initializers.
fn real_inputs(graph: &pb::GraphProto) -> Vec<&pb::ValueInfoProto> {
    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .collect()
}

/// tract's analysis for the given input shapes: every tensor's shape, and the value of every
/// tensor that does not depend on the input.
fn analyse(
    proto: &pb::ModelProto,
    real_inputs: &[&pb::ValueInfoProto],
    input_shapes: &[(&str, Vec<usize>)],
) -> Result<(InferenceModel, HashMap<String, OutletId>), String> {
    let parsed = tract_onnx::onnx()
        .parse(proto, None)
        .map_err(|e| format!("{e:#}"))?;
    let mut model = parsed.model;
    for (ix, inp) in real_inputs.iter().enumerate() {
        if let Some((_, shape)) = input_shapes.iter().find(|(n, _)| *n == inp.name) {
            model
                .set_input_fact(
                    ix,
                    InferenceFact::dt_shape(f32::datum_type(), shape.clone()),
                )
                .map_err(|e| format!("{e:#}"))?;
        }
    }
    model
        .analyse(false)
        .map_err(|e| format!("shape analysis: {e:#}"))?;
    Ok((model, parsed.outlets_by_name))
}

/// How many nodes (and graph outputs) read each tensor: what decides fusions.
fn count_readers(graph: &pb::GraphProto) -> HashMap<String, usize> {
    let mut readers = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            *readers.entry(i.clone()).or_insert(0) += 1;
        }
    }
    for o in &graph.output {
        *readers.entry(o.name.clone()).or_insert(0) += 1;
    }
    readers
}

/// The plan's f32 inputs, each cast once to the float storage the kernels read.
fn lower_inputs(l: &mut Lowering, real_inputs: &[&pb::ValueInfoProto]) -> Result<(), String> {
    for inp in real_inputs {
        let shape = l.shape(&inp.name)?;
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
    Ok(())
}

/// The graph outputs, always f32.
fn lower_outputs(l: &mut Lowering, graph: &pb::GraphProto) -> Result<(), String> {
    for o in &graph.output {
        let t = l.float_tensor(&o.name)?;
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
    Ok(())
}
