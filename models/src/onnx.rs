//! Reading ONNX files: the graph's interface (inputs, outputs, ops), with errors that name
//! the file. Parsing is tract-onnx's protobuf layer; nothing here runs a model.

use crate::limits::{ModelLimits, check_model};
pub use crate::opset::default_opset;
use std::path::{Path, PathBuf};
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot load ONNX model: {message}")]
    Parse { path: PathBuf, message: String },
}

/// One graph input or output: name and static dims (`None` for symbolic or unknown).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<Option<i64>>,
    /// ONNX `TensorProto.DataType` code (1 = float).
    pub elem_type: i32,
}

/// What `bundle init` and `info` need to know about an ONNX file.
#[derive(Debug, Clone)]
pub struct OnnxSummary {
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    /// Distinct op types in first-seen order.
    pub ops: Vec<String>,
    pub opset: i64,
    pub ir_version: i64,
}

/// `path` must exist and be a regular file (a directory would otherwise surface from the
/// memory-mapping loader as "No such device (os error 19)").
fn expect_onnx_file(path: &Path) -> Result<u64, OnnxError> {
    let meta = std::fs::metadata(path).map_err(|source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(OnnxError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(if meta.is_dir() {
                "is a directory, expected an ONNX file"
            } else {
                "not a regular file, expected an ONNX file"
            }),
        });
    }
    Ok(meta.len())
}

/// Parse `path` as an ONNX ModelProto and summarise its interface.
pub fn inspect(path: &Path) -> Result<OnnxSummary, OnnxError> {
    let proto = read_proto(path)?;
    let graph = proto.graph.as_ref().ok_or_else(|| OnnxError::Parse {
        path: path.to_path_buf(),
        message: "model has no graph".into(),
    })?;
    if graph.node.is_empty() {
        return Err(OnnxError::Parse {
            path: path.to_path_buf(),
            message: "graph has no nodes".into(),
        });
    }
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let info = |v: &pb::ValueInfoProto| {
        let (dims, elem_type) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(tt)) => (
                tt.shape
                    .as_ref()
                    .map(|s| {
                        s.dim
                            .iter()
                            .map(|d| match d.value {
                                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                                    Some(v)
                                }
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                tt.elem_type,
            ),
            _ => (vec![], 0),
        };
        TensorInfo {
            name: v.name.clone(),
            dims,
            elem_type,
        }
    };
    let mut ops: Vec<String> = vec![];
    for n in &graph.node {
        if !ops.contains(&n.op_type) {
            ops.push(n.op_type.clone());
        }
    }
    Ok(OnnxSummary {
        inputs: graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .map(info)
            .collect(),
        outputs: graph.output.iter().map(info).collect(),
        ops,
        opset: default_opset(&proto).unwrap_or(0),
        ir_version: proto.ir_version,
    })
}

/// Parse an ONNX file into its protobuf model, with errors naming the file.
/// The file and what it declares are checked against [`ModelLimits::from_env`] first
/// (see [`crate::limits`]): a hostile file is refused here, before any engine sees it.
pub fn read_proto(path: &Path) -> Result<pb::ModelProto, OnnxError> {
    read_proto_within(path, &ModelLimits::from_env())
}

/// [`read_proto`] with explicit limits.
pub fn read_proto_within(path: &Path, limits: &ModelLimits) -> Result<pb::ModelProto, OnnxError> {
    let size = expect_onnx_file(path)?;
    let refuse = |message: String| OnnxError::Parse {
        path: path.to_path_buf(),
        message,
    };
    if size > limits.memory_bytes {
        return Err(refuse(format!(
            "the file is {size} bytes, over the model memory limit of {} (BEVRT_MODEL_MEMORY_MB)",
            limits.memory_bytes
        )));
    }
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    proto_from_bytes(&bytes, path, limits)
}

/// Decode ONNX bytes and check them against `limits`; `path` names them in errors. Any
/// byte string gives `Ok` or an error, never a panic or an unbounded allocation (fuzzed:
/// `tests/fuzz`).
pub fn proto_from_bytes(
    bytes: &[u8],
    path: &Path,
    limits: &ModelLimits,
) -> Result<pb::ModelProto, OnnxError> {
    use prost::Message;
    let refuse = |message: String| OnnxError::Parse {
        path: path.to_path_buf(),
        message,
    };
    if bytes.len() as u64 > limits.memory_bytes {
        return Err(refuse(format!(
            "{} bytes, over the model memory limit of {}",
            bytes.len(),
            limits.memory_bytes
        )));
    }
    let proto =
        pb::ModelProto::decode(bytes).map_err(|e| refuse(format!("not an ONNX model: {e}")))?;
    check_model(&proto, limits).map_err(refuse)?;
    Ok(proto)
}

/// Choices the front end makes for a backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct LegalizeOptions {
    /// Lower Q/DQ convolutions to `ConvInteger` so tract runs them with its integer kernels.
    /// Off by default: measured slower than the float-simulated Q/DQ path with tract 0.23.9
    /// on x86-64 (letsmap-lite encoder 4.0 vs 3.0 ms; MobileNetV3 13.8 vs 2.0 ms), and the
    /// values are the same up to float rounding of the rescale.
    pub integer_kernels: bool,
}

/// Rewrites ONNX constructs the inference engine lacks into equivalent standard ops, before
/// the graph is handed to it (the front end lowers, backends never see these forms):
/// - `MatMul` of two rank-1 tensors (a dot product) → reshape to 1xK · Kx1 → reshape to scalar;
/// - `BatchNormalization` with `training_mode=1` → batch statistics from ReduceMean/Sub/Mul,
///   normalisation, and the running-statistics outputs (`mean*momentum + batch*(1-momentum)`,
///   population variance, as the ONNX reference computes them).
///
/// - `Softmax` whose output is quantized (`Softmax → QuantizeLinear`): spelled out as
///   `exp(x - max) / sum` so it stays a float op between exact Q/DQ. tract 0.23.9 otherwise
///   fuses it into its integer softmax, which returns 1.0 for every class on the shared
///   MobileNetV3 QDQ model (ONNX Runtime: 0.93/0.07). With the rewrite tract reproduces ONNX
///   Runtime's unfused QDQ semantics (ORT_DISABLE_ALL) exactly on that model.
/// - `QuantizeLinear → DequantizeLinear` on an activation (constant scalar scale and zero
///   point, the Q output read only by that DQ) → the same arithmetic in float,
///   `clamp(round_half_even(x · (1/s)), qmin − zp, qmax − zp) · s`, with rounding by adding and
///   subtracting 1.5·2^23. Bit-identical to tract's own Q then DQ, but tract fuses it into one
///   vectorised chain: its scalar QuantizeLinearU8 took 3.9 of 5.9 ms on the shared
///   MobileNetV3 QDQ model.
///
/// With [`LegalizeOptions::integer_kernels`], Q/DQ convolutions become `ConvInteger` (see
/// `integer_convs`) before the remaining pairs are turned to float.
///
/// Returns a description of each rewrite.
pub fn legalize(model: &mut pb::ModelProto, opts: &LegalizeOptions) -> Vec<String> {
    let opset = default_opset(model).unwrap_or(0);
    let Some(graph) = model.graph.as_mut() else {
        return vec![];
    };
    let ranks = tensor_ranks(graph);
    let mut done = float_softmax(graph, opset);
    if opts.integer_kernels {
        done.extend(integer_convs(graph));
    }
    done.extend(fake_quant_pairs(graph));
    let mut e = Emit {
        nodes: Vec::with_capacity(graph.node.len()),
        inits: vec![],
        counter: 0,
    };
    let nodes = std::mem::take(&mut graph.node);
    for n in nodes {
        let rank = |i: usize| n.input.get(i).and_then(|x| ranks.get(x)).copied();
        if n.op_type == "MatMul" && n.domain.is_empty() && rank(0) == Some(1) && rank(1) == Some(1)
        {
            lower_dot(&n, &mut e);
            done.push(format!(
                "MatMul '{}': 1-D x 1-D lowered to 2-D MatMul",
                n.name
            ));
            continue;
        }
        let training = n
            .attribute
            .iter()
            .any(|a| a.name == "training_mode" && a.i != 0);
        if n.op_type == "BatchNormalization"
            && n.domain.is_empty()
            && training
            && let Some(r) = rank(0)
            && r >= 2
        {
            lower_training_batchnorm(&n, r, opset, &mut e);
            done.push(format!(
                "BatchNormalization '{}': training mode lowered to batch statistics",
                n.name
            ));
            continue;
        }
        e.nodes.push(n);
    }
    graph.node = e.nodes;
    graph.initializer.extend(e.inits);
    done
}

/// The rank of every tensor whose shape the graph declares (inputs, value infos, outputs,
/// initializers).
fn tensor_ranks(graph: &pb::GraphProto) -> std::collections::HashMap<String, usize> {
    let mut ranks: std::collections::HashMap<String, usize> = Default::default();
    for v in graph
        .input
        .iter()
        .chain(&graph.value_info)
        .chain(&graph.output)
    {
        if let Some(pb::type_proto::Value::TensorType(tt)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
            && let Some(s) = &tt.shape
        {
            ranks.insert(v.name.clone(), s.dim.len());
        }
    }
    for t in &graph.initializer {
        ranks.insert(t.name.clone(), t.dims.len());
    }
    ranks
}

/// What [`legalize`]'s rewrites emit: the graph's nodes in order, new initializers, and a
/// counter for fresh tensor names.
struct Emit {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    counter: usize,
}

impl Emit {
    /// A tensor name no model uses: `base__bevrtN`.
    fn fresh(&mut self, base: &str) -> String {
        self.counter += 1;
        format!("{base}__bevrt{}", self.counter)
    }
}

/// `MatMul` of two rank-1 tensors → reshape to 1xK · Kx1 → reshape to a scalar.
fn lower_dot(n: &pb::NodeProto, e: &mut Emit) {
    let (sa, sb, se) = (
        e.fresh("shape_row"),
        e.fresh("shape_col"),
        e.fresh("shape_scalar"),
    );
    e.inits.push(i64_tensor(&sa, &[1, -1]));
    e.inits.push(i64_tensor(&sb, &[-1, 1]));
    e.inits.push(i64_tensor(&se, &[]));
    let (a2, b2, c2) = (e.fresh("a"), e.fresh("b"), e.fresh("c"));
    e.nodes
        .push(node("Reshape", &[&n.input[0], &sa], &[&a2], vec![]));
    e.nodes
        .push(node("Reshape", &[&n.input[1], &sb], &[&b2], vec![]));
    e.nodes.push(node("MatMul", &[&a2, &b2], &[&c2], vec![]));
    e.nodes
        .push(node("Reshape", &[&c2, &se], &[&n.output[0]], vec![]));
}

/// `BatchNormalization` with `training_mode=1` on a rank-`r` input → batch statistics from
/// ReduceMean/Sub/Mul, normalisation, and the running-statistics outputs.
fn lower_training_batchnorm(n: &pb::NodeProto, r: usize, opset: i64, e: &mut Emit) {
    let eps = attr_f(n, "epsilon").unwrap_or(1e-5);
    let momentum = attr_f(n, "momentum").unwrap_or(0.9);
    let axes: Vec<i64> = (0..r as i64).filter(|&a| a != 1).collect();
    let x = &n.input[0];
    let reduce = |input: &str,
                  output: &str,
                  out_nodes: &mut Vec<pb::NodeProto>,
                  inits: &mut Vec<pb::TensorProto>,
                  axes_name: &str| {
        if opset >= 18 {
            if !inits.iter().any(|t: &pb::TensorProto| t.name == axes_name) {
                inits.push(i64_tensor(axes_name, &axes));
            }
            out_nodes.push(node(
                "ReduceMean",
                &[input, axes_name],
                &[output],
                vec![attr_i("keepdims", 1)],
            ));
        } else {
            out_nodes.push(node(
                "ReduceMean",
                &[input],
                &[output],
                vec![attr_i("keepdims", 1), attr_ints("axes", &axes)],
            ));
        }
    };
    let axes_name = e.fresh("axes");
    let (mean, d, d2, var) = (
        e.fresh("mean"),
        e.fresh("centered"),
        e.fresh("sq"),
        e.fresh("var"),
    );
    reduce(x, &mean, &mut e.nodes, &mut e.inits, &axes_name);
    e.nodes.push(node("Sub", &[x, &mean], &[&d], vec![]));
    e.nodes.push(node("Mul", &[&d, &d], &[&d2], vec![]));
    reduce(&d2, &var, &mut e.nodes, &mut e.inits, &axes_name);
    let mut bshape = vec![1i64; r];
    bshape[1] = -1;
    let (bs, flat, epsn) = (e.fresh("bshape"), e.fresh("flat"), e.fresh("eps"));
    e.inits.push(i64_tensor(&bs, &bshape));
    e.inits.push(i64_tensor(&flat, &[-1]));
    e.inits.push(f32_tensor(&epsn, &[eps]));
    let (ve, sd, norm, sc, scb, bb, y) = (
        e.fresh("ve"),
        e.fresh("sd"),
        e.fresh("norm"),
        e.fresh("scale"),
        e.fresh("scaled"),
        e.fresh("bias"),
        n.output[0].clone(),
    );
    e.nodes.push(node("Add", &[&var, &epsn], &[&ve], vec![]));
    e.nodes.push(node("Sqrt", &[&ve], &[&sd], vec![]));
    e.nodes.push(node("Div", &[&d, &sd], &[&norm], vec![]));
    e.nodes
        .push(node("Reshape", &[&n.input[1], &bs], &[&sc], vec![]));
    e.nodes.push(node("Mul", &[&norm, &sc], &[&scb], vec![]));
    e.nodes
        .push(node("Reshape", &[&n.input[2], &bs], &[&bb], vec![]));
    e.nodes.push(node("Add", &[&scb, &bb], &[&y], vec![]));
    let (mom, one_m) = (e.fresh("momentum"), e.fresh("one_minus_momentum"));
    e.inits.push(f32_tensor(&mom, &[momentum]));
    e.inits.push(f32_tensor(&one_m, &[1.0 - momentum]));
    for (k, stat, running) in [(1usize, &mean, 3usize), (2, &var, 4)] {
        let Some(out) = n.output.get(k).filter(|o| !o.is_empty()) else {
            continue;
        };
        let Some(run_in) = n.input.get(running) else {
            continue;
        };
        let (sf, a, b) = (e.fresh("stat"), e.fresh("old"), e.fresh("new"));
        e.nodes
            .push(node("Reshape", &[stat, &flat], &[&sf], vec![]));
        e.nodes.push(node("Mul", &[run_in, &mom], &[&a], vec![]));
        e.nodes.push(node("Mul", &[&sf, &one_m], &[&b], vec![]));
        e.nodes.push(node("Add", &[&a, &b], &[out], vec![]));
    }
}

/// Spell out Softmax nodes that feed a QuantizeLinear (see [`legalize`]).
fn float_softmax(graph: &mut pb::GraphProto, opset: i64) -> Vec<String> {
    let mut done = vec![];
    let quantized: std::collections::HashSet<String> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "QuantizeLinear")
        .filter_map(|n| n.input.first().cloned())
        .collect();
    let mut out = Vec::with_capacity(graph.node.len());
    let mut inits = vec![];
    for (k, n) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        if n.op_type != "Softmax"
            || !n.domain.is_empty()
            || !n.output.first().is_some_and(|o| quantized.contains(o))
        {
            out.push(n);
            continue;
        }
        let default_axis = if opset < 13 { 1 } else { -1 };
        let axis = n
            .attribute
            .iter()
            .find(|a| a.name == "axis")
            .map(|a| a.i)
            .unwrap_or(default_axis);
        let (x, y) = (n.input[0].clone(), n.output[0].clone());
        let t = |s: &str| format!("{y}__bevrt_softmax{k}_{s}");
        // opset < 13 softmax works on the input flattened to 2-D at `axis`.
        let (src, red_axis) = if opset < 13 {
            out.push(node(
                "Flatten",
                &[&x],
                &[&t("flat")],
                vec![attr_i("axis", axis)],
            ));
            (t("flat"), 1)
        } else {
            (x.clone(), axis)
        };
        let axes_name = t("axes");
        inits.push(i64_tensor(&axes_name, &[red_axis]));
        let reduce =
            |op: &str, input: &str, output: &str, as_input: bool, out: &mut Vec<pb::NodeProto>| {
                if as_input {
                    out.push(node(
                        op,
                        &[input, &axes_name],
                        &[output],
                        vec![attr_i("keepdims", 1)],
                    ));
                } else {
                    out.push(node(
                        op,
                        &[input],
                        &[output],
                        vec![attr_i("keepdims", 1), attr_ints("axes", &[red_axis])],
                    ));
                }
            };
        reduce("ReduceMax", &src, &t("max"), opset >= 18, &mut out);
        out.push(node("Sub", &[&src, &t("max")], &[&t("shifted")], vec![]));
        out.push(node("Exp", &[&t("shifted")], &[&t("exp")], vec![]));
        reduce("ReduceSum", &t("exp"), &t("sum"), opset >= 13, &mut out);
        if opset < 13 {
            out.push(node("Div", &[&t("exp"), &t("sum")], &[&t("p")], vec![]));
            out.push(node("Shape", &[&x], &[&t("shape")], vec![]));
            out.push(node("Reshape", &[&t("p"), &t("shape")], &[&y], vec![]));
        } else {
            out.push(node("Div", &[&t("exp"), &t("sum")], &[&y], vec![]));
        }
        done.push(format!(
            "Softmax '{}': quantized output, spelled out in float",
            n.name
        ));
    }
    graph.node = out;
    graph.initializer.extend(inits);
    done
}

/// `QuantizeLinear → DequantizeLinear → Conv` whose weight is `DequantizeLinear(int8
/// constant)` (the QDQ form `bevrt-tool quantize` and ONNX Runtime write) → `ConvInteger` on
/// the quantized input and weight, then `Cast` to float, one multiply by `s_x · s_w[c]` and
/// the float bias: tract runs ConvInteger with its integer matrix kernels (i8·i8 → i32)
/// instead of dequantizing the weights and convolving in float. Same values as the QDQ
/// graph up to float rounding of the rescale (the i32 accumulation is exact).
fn integer_convs(graph: &mut pb::GraphProto) -> Vec<String> {
    let mut done = vec![];
    let producer: std::collections::HashMap<String, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.clone(), i)))
        .collect();
    let mut rewrites: Vec<(usize, Vec<pb::NodeProto>, Vec<pb::TensorProto>)> = vec![];
    for (ci, c) in graph.node.iter().enumerate() {
        let Some(m) = QdqConv::find(graph, &producer, c) else {
            continue;
        };
        let (nodes, inits) = m.to_conv_integer();
        done.push(format!(
            "Conv '{}': QDQ lowered to ConvInteger (integer kernels)",
            c.name
        ));
        rewrites.push((ci, nodes, inits));
    }
    for (ci, nodes, inits) in rewrites.into_iter().rev() {
        graph.node.splice(ci..=ci, nodes);
        graph.initializer.extend(inits);
    }
    done
}

/// A float initializer's values (`float_data` or little-endian `raw_data`).
fn float_values(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != pb::tensor_proto::DataType::Float as i32 {
        return None;
    }
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    Some(
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// A Conv that [`integer_convs`] can lower: its input's DequantizeLinear `dx` (fed by a
/// QuantizeLinear of the same zero point), its weight's `dw` (int8 constant, zero zero
/// point), the scales and the float bias.
struct QdqConv<'g> {
    c: &'g pb::NodeProto,
    dx: &'g pb::NodeProto,
    dw: &'g pb::NodeProto,
    sx: Vec<f32>,
    sw: Vec<f32>,
    per_channel: bool,
    cout: usize,
    bias: Option<Vec<f32>>,
}

impl<'g> QdqConv<'g> {
    /// `c` when it has the QDQ form [`integer_convs`] lowers.
    fn find(
        graph: &'g pb::GraphProto,
        producer: &std::collections::HashMap<String, usize>,
        c: &'g pb::NodeProto,
    ) -> Option<QdqConv<'g>> {
        use pb::tensor_proto::DataType as D;
        let init = |name: &str| graph.initializer.iter().find(|t| t.name == name);
        let is_zero = |t: &pb::TensorProto| {
            t.raw_data.iter().all(|&b| b == 0) && t.int32_data.iter().all(|&v| v == 0)
        };
        if c.op_type != "Conv" || !c.domain.is_empty() || c.input.len() < 2 {
            return None;
        }
        let dq = |name: &str| {
            producer
                .get(name)
                .map(|&i| &graph.node[i])
                .filter(|n| n.op_type == "DequantizeLinear" && n.input.len() == 3)
        };
        let (Some(dx), Some(dw)) = (dq(&c.input[0]), dq(&c.input[1])) else {
            return None;
        };
        let q = producer
            .get(&dx.input[0])
            .map(|&i| &graph.node[i])
            .filter(|n| n.op_type == "QuantizeLinear")?;
        let (Some(sx), Some(zx), Some(wq), Some(sw), Some(zw)) = (
            init(&dx.input[1]).and_then(float_values),
            init(&dx.input[2]),
            init(&dw.input[0]),
            init(&dw.input[1]).and_then(float_values),
            init(&dw.input[2]),
        ) else {
            return None;
        };
        let axis = dw
            .attribute
            .iter()
            .find(|a| a.name == "axis")
            .map(|a| a.i)
            .unwrap_or(1);
        let cout = wq.dims.first().copied().unwrap_or(0) as usize;
        let per_channel = sw.len() == cout && axis == 0;
        if sx.len() != 1
            || zx.dims.iter().product::<i64>() != 1
            || wq.data_type != D::Int8 as i32
            || !is_zero(zw)
            || !(sw.len() == 1 || per_channel)
            || q.input.get(2) != Some(&dx.input[2])
        {
            return None;
        }
        let bias = match c.input.get(2).filter(|b| !b.is_empty()) {
            Some(b) => match init(b).and_then(float_values) {
                Some(v) if v.len() == cout => Some(v),
                _ => return None,
            },
            None => None,
        };
        Some(QdqConv {
            c,
            dx,
            dw,
            sx,
            sw,
            per_channel,
            cout,
            bias,
        })
    }

    /// `ConvInteger` → `Cast` to float → multiply by `s_x · s_w[c]` (→ add the bias): the
    /// nodes that replace the Conv and the initializers they read.
    fn to_conv_integer(&self) -> (Vec<pb::NodeProto>, Vec<pb::TensorProto>) {
        use pb::tensor_proto::DataType as D;
        let (c, dx, dw, cout) = (self.c, self.dx, self.dw, self.cout);
        let (sx, sw) = (&self.sx, &self.sw);
        let y = &c.output[0];
        let t = |s: &str| format!("{y}__bevrt_int_{s}");
        let scale: Vec<f32> = (0..cout)
            .map(|o| sx[0] * if self.per_channel { sw[o] } else { sw[0] })
            .collect();
        let bshape = [1, cout as i64, 1, 1];
        let mut inits = vec![tensor_f32(&t("scale"), &bshape, &scale)];
        let mut conv = c.clone();
        conv.op_type = "ConvInteger".into();
        conv.name = t("conv");
        conv.input = vec![
            dx.input[0].clone(),
            dw.input[0].clone(),
            dx.input[2].clone(),
        ];
        conv.output = vec![t("acc")];
        let cast = pb::NodeProto {
            attribute: vec![attr_i("to", D::Float as i64)],
            ..node("Cast", &[&t("acc")], &[&t("accf")], vec![])
        };
        let mut nodes = vec![conv, cast];
        match &self.bias {
            Some(b) => {
                inits.push(tensor_f32(&t("bias"), &bshape, b));
                nodes.push(node(
                    "Mul",
                    &[&t("accf"), &t("scale")],
                    &[&t("scaled")],
                    vec![],
                ));
                nodes.push(node("Add", &[&t("scaled"), &t("bias")], &[y], vec![]));
            }
            None => nodes.push(node("Mul", &[&t("accf"), &t("scale")], &[y], vec![])),
        }
        (nodes, inits)
    }
}

fn tensor_f32(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: v.to_vec(),
        ..Default::default()
    }
}

/// Replace `QuantizeLinear → DequantizeLinear` pairs on activations (constant scalar scale and
/// zero point, the Q output read only by that DQ) by the same arithmetic in float:
/// `clamp(round_even(x * (1/s)), qmin - zp, qmax - zp) * s`, rounding with the 1.5·2^23 trick
/// so tract fuses it into one vectorised binary chain (see [`legalize`]).
fn fake_quant_pairs(graph: &mut pb::GraphProto) -> Vec<String> {
    use pb::tensor_proto::DataType as D;
    let mut done = vec![];
    let mut pairs: Vec<(usize, usize, f32, f32, f32)> = vec![];
    {
        let g: &pb::GraphProto = graph;
        for (qi, q) in g.node.iter().enumerate() {
            if q.op_type != "QuantizeLinear" || !q.domain.is_empty() || q.input.len() < 3 {
                continue;
            }
            let Some(s) = init_f32(g, &q.input[1]) else {
                continue;
            };
            let Some(zp_t) = g.initializer.iter().find(|t| t.name == q.input[2]) else {
                continue;
            };
            if zp_t.dims.iter().product::<i64>() != 1 {
                continue;
            }
            let (qmin, qmax, zp) = if zp_t.data_type == D::Uint8 as i32 {
                let z = zp_t
                    .raw_data
                    .first()
                    .copied()
                    .map(i32::from)
                    .or(zp_t.int32_data.first().copied());
                (0.0, 255.0, z)
            } else if zp_t.data_type == D::Int8 as i32 {
                let z = zp_t
                    .raw_data
                    .first()
                    .map(|b| *b as i8 as i32)
                    .or(zp_t.int32_data.first().copied());
                (-128.0, 127.0, z)
            } else {
                continue;
            };
            let Some(zp) = zp else { continue };
            let out = &q.output[0];
            if g.output.iter().any(|o| &o.name == out) {
                continue;
            }
            let cons: Vec<usize> = g
                .node
                .iter()
                .enumerate()
                .filter(|(_, n)| n.input.iter().any(|i| i == out))
                .map(|(i, _)| i)
                .collect();
            if cons.len() != 1 {
                continue;
            }
            let dq = &g.node[cons[0]];
            if dq.op_type != "DequantizeLinear" || dq.input.len() < 3 || dq.input[0] != *out {
                continue;
            }
            if init_f32(g, &dq.input[1]) != Some(s)
                || (dq.input[2] != q.input[2] && !same_init(g, &dq.input[2], &q.input[2]))
            {
                continue;
            }
            pairs.push((qi, cons[0], s, qmin - zp as f32, qmax - zp as f32));
        }
    }
    let mut inits = vec![];
    let mut remove = vec![];
    for (k, &(qi, di, s, lo, hi)) in pairs.iter().enumerate() {
        let x = graph.node[qi].input[0].clone();
        let y = graph.node[di].output[0].clone();
        let t = |n: &str| format!("{y}__bevrt_fq{k}_{n}");
        inits.push(f32_tensor(&t("inv_s"), &[1.0 / s]));
        inits.push(f32_tensor(&t("magic"), &[12_582_912.0]));
        inits.push(f32_tensor(&t("lo"), &[lo]));
        inits.push(f32_tensor(&t("hi"), &[hi]));
        inits.push(f32_tensor(&t("s"), &[s]));
        let nodes = [
            node("Mul", &[&x, &t("inv_s")], &[&t("a")], vec![]),
            node("Add", &[&t("a"), &t("magic")], &[&t("b")], vec![]),
            node("Sub", &[&t("b"), &t("magic")], &[&t("r")], vec![]),
            node("Max", &[&t("r"), &t("lo")], &[&t("c")], vec![]),
            node("Min", &[&t("c"), &t("hi")], &[&t("d")], vec![]),
            node("Mul", &[&t("d"), &t("s")], &[&y], vec![]),
        ];
        graph.node[qi] = nodes[0].clone();
        graph.node[di] = nodes[5].clone();
        // the middle nodes go right after the first
        remove.push((qi, nodes[1..5].to_vec()));
        done.push(format!("Q/DQ pair on '{x}' computed in float"));
    }
    remove.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
    for (i, mid) in remove {
        for (j, n) in mid.into_iter().enumerate() {
            graph.node.insert(i + 1 + j, n);
        }
    }
    graph.initializer.extend(inits);
    done
}

fn same_init(g: &pb::GraphProto, a: &str, b: &str) -> bool {
    let f = |n: &str| {
        g.initializer
            .iter()
            .find(|t| t.name == n)
            .map(|t| (t.data_type, t.raw_data.clone(), t.int32_data.clone()))
    };
    f(a).is_some() && f(a) == f(b)
}

/// A scalar (or one-element) float initializer's value.
fn init_f32(graph: &pb::GraphProto, name: &str) -> Option<f32> {
    let t = graph.initializer.iter().find(|t| t.name == name)?;
    if t.dims.iter().product::<i64>() != 1
        || t.data_type != pb::tensor_proto::DataType::Float as i32
    {
        return None;
    }
    if let Some(v) = t.float_data.first() {
        return Some(*v);
    }
    let b = t.raw_data.get(..4)?;
    Some(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub(crate) fn node(
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: format!("bevrt_{op}_{}", outputs.first().copied().unwrap_or("")),
        op_type: op.to_string(),
        attribute,
        ..Default::default()
    }
}

fn attr_f(n: &pb::NodeProto, name: &str) -> Option<f32> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.f)
}

fn attr_i(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn i64_tensor(name: &str, v: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn f32_tensor(name: &str, v: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![],
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: v.to_vec(),
        ..Default::default()
    }
}

/// Read, legalize and parse an ONNX file into tract's inference model.
pub fn load_for_tract(
    path: &Path,
    opts: &LegalizeOptions,
) -> Result<tract_onnx::prelude::InferenceModel, OnnxError> {
    let mut proto = read_proto(path)?;
    for r in legalize(&mut proto, opts) {
        log::debug!("{}: {r}", path.display());
    }
    model_from_proto(&proto, path)
}

/// tract's inference model for a decoded (and checked) proto. A panic inside the engine on a
/// malformed graph becomes an error naming the file, not the end of the process.
pub fn model_from_proto(
    proto: &pb::ModelProto,
    path: &Path,
) -> Result<tract_onnx::prelude::InferenceModel, OnnxError> {
    let refuse = |message: String| OnnxError::Parse {
        path: path.to_path_buf(),
        message,
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tract_onnx::onnx().model_for_proto_model(proto)
    })) {
        Ok(r) => r.map_err(|e| refuse(format!("{e:#}"))),
        Err(p) => {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(refuse(format!(
                "the ONNX engine failed on this graph: {what}"
            )))
        }
    }
}
