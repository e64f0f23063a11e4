//! INT8 post-training quantization at the ONNX level (the calibration loop that runs frames
//! through the runtime lives in `bevrt-tool quantize`).
//!
//! Flow: [`prepare`] (constants → initializers, BatchNorm and bias-Add folded into Conv,
//! opset raised to 13) → [`QuantPlan::new`] (which nodes get Q/DQ and which stay float, and
//! why) → [`with_observers`] (the activation tensors exposed as outputs, for calibration) →
//! [`calibrate`] ranges → [`QuantPlan::quantize`] (explicit QuantizeLinear/DequantizeLinear,
//! as TensorRT and ONNX Runtime read them).
//!
//! Placement follows TensorRT's explicit-quantization recipe: Q/DQ on the activation inputs of
//! Conv, Gemm and MatMul (weights symmetric int8, per output channel or per tensor, bias kept
//! float) and on the inputs of Add and Concat, which share one scale so the integer add or
//! concat needs no rescale. Every other op runs in float between the pairs and is named in
//! [`QuantPlan::float_ops`].

pub mod calibrate;
mod error;
pub mod graph;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType as D;

pub use calibrate::{ActType, Method, Observer, QParams};
pub use error::QuantError;

/// Run the graph passes quantization needs. Returns what each changed.
pub fn prepare(model: &mut pb::ModelProto, name: &str) -> Result<Vec<String>, QuantError> {
    let Some(g) = model.graph.as_mut() else {
        return Err(QuantError::Model(format!("{name}: model has no graph")));
    };
    let mut done = vec![];
    let moved = graph::constants_to_initializers(g);
    if moved > 0 {
        done.push(format!("{moved} Constant nodes became initializers"));
    }
    let reshapes = graph::fold_constant_reshapes(g);
    if reshapes > 0 {
        done.push(format!("{reshapes} Reshapes of constants folded"));
    }
    done.extend(graph::fold_batchnorm(g));
    done.extend(graph::fold_conv_bias_add(g));
    done.extend(graph::upgrade_to_13(model, name)?);
    Ok(done)
}

/// A node that gets Q/DQ.
#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    /// Node name (or its first output when unnamed): what `--keep-fp` names.
    pub name: String,
    pub op: String,
    /// Float activation inputs that get a Q/DQ pair on the way in.
    pub inputs: Vec<String>,
    /// The weight initializer (Conv/Gemm/MatMul) and its output-channel axis.
    pub weight: Option<(String, i64)>,
}

/// Which nodes are quantized and which stay float.
#[derive(Debug, Clone, Serialize)]
pub struct QuantPlan {
    pub layers: Vec<Layer>,
    /// Nodes kept in float because `--keep-fp` named them.
    pub kept: Vec<String>,
    /// Op types that run in float between Q/DQ pairs, with how many nodes of each.
    pub float_ops: BTreeMap<String, usize>,
    /// Quantizable-looking nodes that could not be quantized, with the reason.
    pub refused: Vec<(String, String)>,
}

fn node_name(n: &pb::NodeProto) -> String {
    if n.name.is_empty() {
        n.output.first().cloned().unwrap_or_default()
    } else {
        n.name.clone()
    }
}

impl QuantPlan {
    pub fn new(model: &pb::ModelProto, keep_fp: &[String]) -> QuantPlan {
        let g = model.graph.as_ref().expect("prepared model has a graph");
        let types = graph::elem_types(g);
        let inits: HashMap<&str, &pb::TensorProto> =
            g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        let is_float_act =
            |t: &str| !inits.contains_key(t) && types.get(t).copied() == Some(D::Float as i32);
        let mut plan = QuantPlan {
            layers: vec![],
            kept: vec![],
            float_ops: BTreeMap::new(),
            refused: vec![],
        };
        for n in &g.node {
            let name = node_name(n);
            let op = n.op_type.as_str();
            let weighted = matches!(op, "Conv" | "Gemm" | "MatMul");
            let joining = matches!(op, "Add" | "Concat");
            if !(weighted || joining) || !n.domain.is_empty() {
                if !matches!(op, "QuantizeLinear" | "DequantizeLinear") {
                    *plan.float_ops.entry(op.to_string()).or_default() += 1;
                }
                continue;
            }
            if keep_fp.iter().any(|k| k == &name) {
                plan.kept.push(name);
                continue;
            }
            if weighted {
                let Some(w) = n.input.get(1).and_then(|w| inits.get(w.as_str())) else {
                    plan.refused
                        .push((name, format!("{op} weight is not a constant")));
                    continue;
                };
                if w.data_type != D::Float as i32 {
                    plan.refused
                        .push((name, format!("{op} weight is not float")));
                    continue;
                }
                let axis = match op {
                    "Conv" => 0,
                    "Gemm" => {
                        if graph::attr_i(n, "transB").unwrap_or(0) != 0 {
                            0
                        } else {
                            1
                        }
                    }
                    _ => {
                        if w.dims.len() != 2 {
                            plan.refused.push((
                                name,
                                format!("MatMul weight of rank {} (only 2-D)", w.dims.len()),
                            ));
                            continue;
                        }
                        1
                    }
                };
                if op == "Gemm" && graph::attr_i(n, "transA").unwrap_or(0) != 0 {
                    plan.refused.push((name, "Gemm with transA".into()));
                    continue;
                }
                let x = &n.input[0];
                if !is_float_act(x) {
                    plan.refused
                        .push((name, format!("{op} input '{x}' is not a float activation")));
                    continue;
                }
                plan.layers.push(Layer {
                    name,
                    op: op.into(),
                    inputs: vec![x.clone()],
                    weight: Some((n.input[1].clone(), axis)),
                });
            } else {
                // Add/Concat with a constant or a non-float input (shape arithmetic) stay float.
                if n.input.len() < 2 || !n.input.iter().all(|i| is_float_act(i)) {
                    *plan.float_ops.entry(op.to_string()).or_default() += 1;
                    continue;
                }
                plan.layers.push(Layer {
                    name,
                    op: op.into(),
                    inputs: n.input.clone(),
                    weight: None,
                });
            }
        }
        plan
    }

    /// Every activation tensor that needs a range, in first-use order.
    pub fn tensors(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.layers
            .iter()
            .flat_map(|l| l.inputs.iter())
            .filter(|t| seen.insert(t.as_str()))
            .cloned()
            .collect()
    }

    /// Tensors that must share one scale (the inputs of each Add/Concat, merged transitively
    /// when a tensor joins two of them). Each group lists its tensors.
    pub fn shared_scale_groups(&self) -> Vec<Vec<String>> {
        let tensors = self.tensors();
        let idx: HashMap<&str, usize> = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let mut parent: Vec<usize> = (0..tensors.len()).collect();
        fn root(p: &mut [usize], mut i: usize) -> usize {
            while p[i] != i {
                p[i] = p[p[i]];
                i = p[i];
            }
            i
        }
        for l in self.layers.iter().filter(|l| l.weight.is_none()) {
            let first = idx[l.inputs[0].as_str()];
            for t in &l.inputs[1..] {
                let (a, b) = (root(&mut parent, first), root(&mut parent, idx[t.as_str()]));
                parent[b] = a;
            }
        }
        let mut groups: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (i, t) in tensors.iter().enumerate() {
            let r = root(&mut parent, i);
            groups.entry(r).or_default().push(t.clone());
        }
        groups.into_values().collect()
    }

    /// Ranges per tensor → parameters per tensor, with every shared-scale group widened to
    /// the union of its members' ranges.
    pub fn qparams(
        &self,
        ranges: &HashMap<String, (f32, f32)>,
        act: ActType,
    ) -> HashMap<String, QParams> {
        let mut out = HashMap::new();
        for group in self.shared_scale_groups() {
            let (mut lo, mut hi) = (0f32, 0f32);
            for t in &group {
                if let Some(&(a, b)) = ranges.get(t) {
                    lo = lo.min(a);
                    hi = hi.max(b);
                }
            }
            let q = QParams::from_range(lo, hi, act);
            for t in group {
                out.insert(t, q);
            }
        }
        out
    }

    /// Write the QDQ model: Q/DQ pairs on the inputs of the layers in `only` (all layers when
    /// `None`), weights as int8 initializers with DequantizeLinear (per output channel when
    /// `per_channel`, else one scale per tensor).
    pub fn quantize(
        &self,
        model: &pb::ModelProto,
        params: &HashMap<String, QParams>,
        only: Option<&HashSet<String>>,
        per_channel: bool,
    ) -> Result<pb::ModelProto, QuantError> {
        let mut model = model.clone();
        let g = model.graph.as_mut().expect("prepared model has a graph");
        let layers: HashMap<&str, &Layer> = self
            .layers
            .iter()
            .filter(|l| only.is_none_or(|o| o.contains(&l.name)))
            .map(|l| (l.name.as_str(), l))
            .collect();
        let mut new_inits: Vec<pb::TensorProto> = vec![];
        let mut pairs_at: Vec<(usize, Vec<pb::NodeProto>)> = vec![];
        let mut pair_done: HashSet<String> = HashSet::new();
        let mut weight_done: HashSet<String> = HashSet::new();
        let inits: HashMap<String, pb::TensorProto> = g
            .initializer
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        for (ni, n) in g.node.iter_mut().enumerate() {
            let Some(layer) = layers.get(node_name(n).as_str()) else {
                continue;
            };
            let mut inserted = vec![];
            for t in &layer.inputs {
                let q = params.get(t).ok_or_else(|| {
                    QuantError::Model(format!("no calibration range for tensor '{t}'"))
                })?;
                let dq = format!("{t}__dq");
                if pair_done.insert(t.clone()) {
                    let (s, z) = (format!("{t}__scale"), format!("{t}__zp"));
                    new_inits.push(graph::f32_init(&s, &[], &[q.scale]));
                    new_inits.push(zero_point(&z, &[], &[q.zero_point], q.act));
                    let qn = format!("{t}__q");
                    inserted.push(graph::simple(
                        "QuantizeLinear",
                        &[t, &s, &z],
                        &[&qn],
                        vec![],
                    ));
                    inserted.push(graph::simple(
                        "DequantizeLinear",
                        &[&qn, &s, &z],
                        &[&dq],
                        vec![],
                    ));
                }
                for i in n.input.iter_mut().filter(|i| *i == t) {
                    *i = dq.clone();
                }
            }
            if let Some((w, axis)) = &layer.weight {
                let dqw = format!("{w}__dqw");
                if weight_done.insert(w.clone()) {
                    let t = &inits[w];
                    let (qt, s, z, ax) = quantize_weight(t, *axis, per_channel)?;
                    let mut attrs = vec![];
                    if let Some(ax) = ax {
                        attrs.push(pb::AttributeProto {
                            name: "axis".into(),
                            r#type: pb::attribute_proto::AttributeType::Int as i32,
                            i: ax,
                            ..Default::default()
                        });
                    }
                    inserted.push(graph::simple(
                        "DequantizeLinear",
                        &[&qt.name, &s.name, &z.name],
                        &[&dqw],
                        attrs,
                    ));
                    new_inits.extend([qt, s, z]);
                }
                n.input[1] = dqw;
            }
            if !inserted.is_empty() {
                pairs_at.push((ni, inserted));
            }
        }
        // Insert each layer's new nodes right before it (its inputs exist by then).
        for (ni, nodes) in pairs_at.into_iter().rev() {
            for (k, n) in nodes.into_iter().enumerate() {
                g.node.insert(ni + k, n);
            }
        }
        g.initializer.extend(new_inits);
        graph::drop_unused_initializers(g);
        Ok(model)
    }
}

fn zero_point(name: &str, dims: &[i64], v: &[i32], act: ActType) -> pb::TensorProto {
    let (data_type, raw) = match act {
        ActType::Int8 => (D::Int8 as i32, v.iter().map(|&z| z as i8 as u8).collect()),
        ActType::Uint8 => (D::Uint8 as i32, v.iter().map(|&z| z as u8).collect()),
    };
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type,
        raw_data: raw,
        ..Default::default()
    }
}

/// Symmetric int8 weights, range [-127, 127] (TensorRT's), zero point 0. Returns the int8
/// tensor, scale, zero point and the DequantizeLinear axis (None = per tensor).
fn quantize_weight(
    t: &pb::TensorProto,
    axis: i64,
    per_channel: bool,
) -> Result<
    (
        pb::TensorProto,
        pb::TensorProto,
        pb::TensorProto,
        Option<i64>,
    ),
    QuantError,
> {
    let w = graph::f32_values(t)
        .ok_or_else(|| QuantError::Model(format!("weight '{}' is not readable float", t.name)))?;
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let ax = axis as usize;
    let channels = if per_channel { dims[ax] } else { 1 };
    let inner: usize = dims[ax + 1..].iter().product();
    let chan_of = |i: usize| {
        if per_channel {
            (i / inner) % dims[ax]
        } else {
            0
        }
    };
    let mut absmax = vec![0f32; channels];
    for (i, v) in w.iter().enumerate() {
        let c = chan_of(i);
        absmax[c] = absmax[c].max(v.abs());
    }
    let scales: Vec<f32> = absmax
        .iter()
        .map(|&m| if m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let q: Vec<u8> = w
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (v / scales[chan_of(i)])
                .round_ties_even()
                .clamp(-127.0, 127.0) as i8 as u8
        })
        .collect();
    let qt = pb::TensorProto {
        name: format!("{}__int8", t.name),
        dims: t.dims.clone(),
        data_type: D::Int8 as i32,
        raw_data: q,
        ..Default::default()
    };
    let sdims: Vec<i64> = if per_channel {
        vec![channels as i64]
    } else {
        vec![]
    };
    let s = graph::f32_init(&format!("{}__wscale", t.name), &sdims, &scales);
    let z = zero_point(
        &format!("{}__wzp", t.name),
        &sdims,
        &vec![0; channels],
        ActType::Int8,
    );
    Ok((qt, s, z, per_channel.then_some(axis)))
}

/// A copy of `model` that also outputs `tensors` (for calibration: the runtime runs it and
/// hands every output to an observer). Graph inputs are exposed through an Identity.
pub fn with_observers(model: &pb::ModelProto, tensors: &[String]) -> pb::ModelProto {
    let mut model = model.clone();
    let g = model.graph.as_mut().expect("prepared model has a graph");
    let inputs: HashSet<String> = g.input.iter().map(|i| i.name.clone()).collect();
    let outputs: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    for t in tensors {
        let name = if inputs.contains(t) || outputs.contains(t) {
            let o = format!("{t}__observed");
            let id = graph::simple("Identity", &[t], &[&o], vec![]);
            if inputs.contains(t) {
                g.node.insert(0, id);
            } else {
                g.node.push(id);
            }
            o
        } else {
            t.clone()
        };
        g.output.push(pb::ValueInfoProto {
            name,
            ..Default::default()
        });
    }
    model
}

/// Ranges of every observed tensor for `method` (tensors never seen finite get (0, 0)).
pub fn calibrate(
    observers: &HashMap<String, Observer>,
    method: Method,
) -> HashMap<String, (f32, f32)> {
    observers
        .iter()
        .map(|(t, o)| (t.clone(), o.range(method)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{Weights, conv_chain_to_onnx};
    use crate::letsmap::ConvLayer;
    use prost::Message;
    use tract_onnx::prelude::*;

    fn rng(seed: u32) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        }
    }

    /// conv a (3→8, 3x3 s2, relu) → conv b (8→4, 1x1) as exported by bevrt.
    fn chain() -> pb::ModelProto {
        let ls = [
            ConvLayer {
                name: "a",
                cin: 3,
                cout: 8,
                k: 3,
                stride: 2,
                relu: true,
            },
            ConvLayer {
                name: "b",
                cin: 8,
                cout: 4,
                k: 1,
                stride: 1,
                relu: false,
            },
        ];
        let mut r = rng(7);
        let mut w = Weights::new();
        for l in &ls {
            let n: usize = l.weight_shape().iter().product();
            w.insert(format!("{}.weight", l.name), (0..n).map(|_| r()).collect());
            w.insert(
                format!("{}.bias", l.name),
                (0..l.cout).map(|_| r()).collect(),
            );
        }
        let bytes = conv_chain_to_onnx("t", "x", "y", [1, 3, 12, 16], &ls, &w, "").unwrap();
        pb::ModelProto::decode(bytes.as_slice()).unwrap()
    }

    fn input() -> Vec<f32> {
        let mut r = rng(99);
        (0..3 * 12 * 16).map(|_| r() * 4.0).collect()
    }

    /// Run a proto in tract (through the same legalize as the runtime); all outputs.
    fn run(model: &pb::ModelProto, x: &[f32], integer: bool) -> Vec<Vec<f32>> {
        let mut m = model.clone();
        crate::onnx::legalize(
            &mut m,
            &crate::onnx::LegalizeOptions {
                integer_kernels: integer,
            },
        );
        let plan = tract_onnx::onnx()
            .model_for_proto_model(&m)
            .unwrap()
            .with_input_fact(0, f32::fact([1, 3, 12, 16]).into())
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let t = Tensor::from_shape(&[1, 3, 12, 16], x).unwrap();
        plan.run(tvec![t.into()])
            .unwrap()
            .iter()
            .map(|o| {
                let t = o.cast_to::<f32>().unwrap().into_owned();
                t.try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .to_vec()
            })
            .collect()
    }

    fn rel_err(a: &[f32], b: &[f32]) -> f32 {
        let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
        let den: f32 = b.iter().map(|y| y * y).sum();
        (num / den).sqrt()
    }

    #[test]
    fn batchnorm_folds_into_conv_exactly() {
        let mut m = chain();
        let g = m.graph.as_mut().unwrap();
        // conv a's output now goes through a BatchNormalization with made-up statistics
        let a = g.node.iter().position(|n| n.name == "a").unwrap();
        let out = g.node[a].output[0].clone();
        g.node[a].output[0] = "a_raw".into();
        let mut r = rng(3);
        for (k, off) in [("g", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0)] {
            let v: Vec<f32> = (0..8)
                .map(|_| off + r().abs() * if k == "v" { 2.0 } else { 1.0 })
                .collect();
            g.initializer
                .push(graph::f32_init(&format!("bn_{k}"), &[8], &v));
        }
        g.node.insert(
            a + 1,
            graph::simple(
                "BatchNormalization",
                &["a_raw", "bn_g", "bn_b", "bn_m", "bn_v"],
                &[&out],
                vec![],
            ),
        );
        let x = input();
        let want = run(&m, &x, false);
        let mut folded = m.clone();
        let done = prepare(&mut folded, "test").unwrap();
        assert!(
            done.iter().any(|d| d.contains("BatchNormalization")),
            "{done:?}"
        );
        let g = folded.graph.as_ref().unwrap();
        assert!(!g.node.iter().any(|n| n.op_type == "BatchNormalization"));
        let got = run(&folded, &x, false);
        assert!(rel_err(&got[0], &want[0]) < 1e-5);
    }

    /// Observe with tract, quantize, and compare: the QDQ model stays close to FP32, its
    /// weights are int8 initializers, and the integer-kernel lowering computes the same.
    #[test]
    fn qdq_model_tracks_float_and_integer_lowering_agrees() {
        let mut m = chain();
        prepare(&mut m, "test").unwrap();
        let plan = QuantPlan::new(&m, &[]);
        assert_eq!(plan.layers.len(), 2);
        assert_eq!(plan.float_ops.get("Relu"), Some(&1));
        let observed = with_observers(&m, &plan.tensors());
        let mut obs: HashMap<String, Observer> = plan
            .tensors()
            .into_iter()
            .map(|t| (t, Observer::new(true)))
            .collect();
        let frames: Vec<Vec<f32>> = (0..4)
            .map(|k| input().iter().map(|v| v * (1.0 + k as f32 * 0.1)).collect())
            .collect();
        for pass in 0..2 {
            for x in &frames {
                let outs = run(&observed, x, false);
                for (t, o) in plan.tensors().iter().zip(&outs[1..]) {
                    let ob = obs.get_mut(t).unwrap();
                    if pass == 0 {
                        ob.observe_range(o)
                    } else {
                        ob.observe_hist(o)
                    }
                }
            }
        }
        let x = &frames[0];
        let want = run(&m, x, false);
        for per_channel in [true, false] {
            let params = plan.qparams(&calibrate(&obs, Method::MinMax), ActType::Int8);
            let q = plan.quantize(&m, &params, None, per_channel).unwrap();
            let g = q.graph.as_ref().unwrap();
            assert_eq!(
                g.node
                    .iter()
                    .filter(|n| n.op_type == "QuantizeLinear")
                    .count(),
                2
            );
            assert_eq!(
                g.initializer
                    .iter()
                    .filter(|t| t.data_type == D::Int8 as i32 && t.dims.len() == 4)
                    .count(),
                2
            );
            // float weights are gone from the file
            assert!(!g.initializer.iter().any(|t| t.name == "a.weight"));
            let got = run(&q, x, false);
            let e = rel_err(&got[0], &want[0]);
            assert!(e < 0.03, "per_channel {per_channel}: relative error {e}");
            let lowered = crate::onnx::legalize(
                &mut q.clone(),
                &crate::onnx::LegalizeOptions {
                    integer_kernels: true,
                },
            );
            assert_eq!(
                lowered.iter().filter(|d| d.contains("ConvInteger")).count(),
                2
            );
            let int = run(&q, x, true);
            assert!(rel_err(&int[0], &got[0]) < 1e-5, "integer kernels differ");
        }
        // only one layer: one Q/DQ pair, one int8 weight
        let params = plan.qparams(&calibrate(&obs, Method::MinMax), ActType::Uint8);
        let only: HashSet<String> = ["b".to_string()].into();
        let q = plan.quantize(&m, &params, Some(&only), true).unwrap();
        let g = q.graph.as_ref().unwrap();
        assert_eq!(
            g.node
                .iter()
                .filter(|n| n.op_type == "QuantizeLinear")
                .count(),
            1
        );
        assert!(g.initializer.iter().any(|t| t.name == "a.weight"));
    }

    #[test]
    fn add_inputs_share_one_scale() {
        // y = conv_a(x) + x2 where both are activations: one group, one scale
        let mut m = chain();
        prepare(&mut m, "test").unwrap();
        let g = m.graph.as_mut().unwrap();
        let y = g.output[0].name.clone();
        g.node
            .push(graph::simple("Add", &[&y, &y], &["sum"], vec![]));
        g.output[0].name = "sum".into();
        let plan = QuantPlan::new(&m, &[]);
        let groups = plan.shared_scale_groups();
        assert!(
            groups.iter().any(|g| g.len() == 1 && g[0] == y),
            "{groups:?}"
        );
        let ranges: HashMap<String, (f32, f32)> = plan
            .tensors()
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, (-(i as f32) - 1.0, i as f32 + 1.0)))
            .collect();
        let p = plan.qparams(&ranges, ActType::Int8);
        assert_eq!(p.len(), plan.tensors().len());
        // keep-fp removes the node from the plan
        let kept = QuantPlan::new(&m, &["b".to_string()]);
        assert_eq!(kept.kept, vec!["b".to_string()]);
        assert!(kept.layers.iter().all(|l| l.name != "b"));
    }
}
