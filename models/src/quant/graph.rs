//! Graph passes that run before quantization, on the ONNX protobuf: constants become
//! initializers, BatchNormalization folds into the Conv before it, a constant bias `Add`
//! after a Conv folds into the Conv's bias, and the opset is raised to 13 (per-channel
//! DequantizeLinear needs `axis`). Each pass reports what it changed.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType as D;

use super::error::QuantError;

/// A float initializer's values (raw_data or float_data) and dims.
pub(crate) fn f32_values(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != D::Float as i32 {
        return None;
    }
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    let n: i64 = t.dims.iter().product();
    if t.raw_data.len() != n as usize * 4 {
        return None;
    }
    Some(
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

pub(crate) fn f32_init(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: D::Float as i32,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

pub(crate) fn i64_init(name: &str, v: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: D::Int64 as i32,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

pub(crate) fn attr_i(n: &pb::NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

pub(crate) fn opset(model: &pb::ModelProto) -> i64 {
    crate::opset::default_opset(model).unwrap_or(0)
}

/// How many nodes read each tensor (graph outputs count as readers).
pub(crate) fn readers(g: &pb::GraphProto) -> HashMap<String, usize> {
    let mut r: HashMap<String, usize> = HashMap::new();
    for n in &g.node {
        for i in &n.input {
            *r.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &g.output {
        *r.entry(o.name.clone()).or_default() += 1;
    }
    r
}

/// `Constant` nodes holding a tensor become initializers (exporters such as Paddle's emit
/// every weight as a Constant node; the quantizer and ONNX Runtime's QDQ tools look for
/// initializers).
pub fn constants_to_initializers(g: &mut pb::GraphProto) -> usize {
    let mut moved = 0;
    let nodes = std::mem::take(&mut g.node);
    for n in nodes {
        if n.op_type == "Constant"
            && n.domain.is_empty()
            && n.output.len() == 1
            && let Some(a) = n.attribute.iter().find(|a| a.name == "value")
            && let Some(t) = &a.t
        {
            let mut t = t.clone();
            t.name = n.output[0].clone();
            g.initializer.push(t);
            moved += 1;
            continue;
        }
        g.node.push(n);
    }
    moved
}

/// Index of the node producing each tensor.
fn producers(g: &pb::GraphProto) -> HashMap<String, usize> {
    g.node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.clone(), i)))
        .collect()
}

fn init_index(g: &pb::GraphProto) -> HashMap<String, usize> {
    g.initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect()
}

/// Fold inference-mode BatchNormalization into the Conv that feeds it (the Conv output read by
/// the BN only): `W' = W·γ/√(σ²+ε)` per output channel, `b' = (b − μ)·γ/√(σ²+ε) + β`.
pub fn fold_batchnorm(g: &mut pb::GraphProto) -> Vec<String> {
    let mut done = vec![];
    loop {
        let readers = readers(g);
        let inits = init_index(g);
        let producer = producers(g);
        let mut found = None;
        for (bi, bn) in g.node.iter().enumerate() {
            if bn.op_type != "BatchNormalization"
                || attr_i(bn, "training_mode").unwrap_or(0) != 0
                || bn.output.iter().skip(1).any(|o| !o.is_empty())
                || bn.input.len() < 5
            {
                continue;
            }
            let Some(&ci) = producer.get(bn.input[0].as_str()) else {
                continue;
            };
            let conv = &g.node[ci];
            if conv.op_type != "Conv" || readers.get(&bn.input[0]).copied() != Some(1) {
                continue;
            }
            let Some(&wi) = conv.input.get(1).and_then(|w| inits.get(w)) else {
                continue;
            };
            let stats: Option<Vec<Vec<f32>>> = bn.input[1..5]
                .iter()
                .map(|n| inits.get(n).and_then(|&i| f32_values(&g.initializer[i])))
                .collect();
            let Some(stats) = stats else { continue };
            let bias = match conv.input.get(2).filter(|b| !b.is_empty()) {
                Some(b) => match inits.get(b).and_then(|&i| f32_values(&g.initializer[i])) {
                    Some(v) => Some(v),
                    None => continue,
                },
                None => None,
            };
            found = Some((bi, ci, wi, stats, bias));
            break;
        }
        let Some((bi, ci, wi, stats, bias)) = found else {
            break;
        };
        let eps = g.node[bi]
            .attribute
            .iter()
            .find(|a| a.name == "epsilon")
            .map(|a| a.f)
            .unwrap_or(1e-5);
        let wt = &g.initializer[wi];
        let Some(mut w) = f32_values(wt) else { break };
        let cout = wt.dims[0] as usize;
        let [gamma, beta, mean, var] = [&stats[0], &stats[1], &stats[2], &stats[3]];
        if [gamma, beta, mean, var].iter().any(|v| v.len() != cout) {
            break;
        }
        let per = w.len() / cout;
        let mut b = bias.unwrap_or_else(|| vec![0.0; cout]);
        for o in 0..cout {
            let k = gamma[o] / (var[o] + eps).sqrt();
            for x in &mut w[o * per..(o + 1) * per] {
                *x *= k;
            }
            b[o] = (b[o] - mean[o]) * k + beta[o];
        }
        let conv_name = g.node[ci].name.clone();
        let (wn, bname) = (
            format!("{}__bnfold_w", g.node[ci].input[1]),
            format!("{}__bnfold_b", conv_name_or(&g.node[ci])),
        );
        let dims = g.initializer[wi].dims.clone();
        g.initializer.push(f32_init(&wn, &dims, &w));
        g.initializer.push(f32_init(&bname, &[cout as i64], &b));
        let out = g.node[bi].output[0].clone();
        let bn_name = g.node[bi].name.clone();
        let conv = &mut g.node[ci];
        conv.input.truncate(1);
        conv.input.push(wn);
        conv.input.push(bname);
        conv.output[0] = out;
        g.node.remove(bi);
        done.push(format!(
            "BatchNormalization '{bn_name}' folded into Conv '{conv_name}'"
        ));
    }
    drop_unused_initializers(g);
    done
}

fn conv_name_or(n: &pb::NodeProto) -> String {
    if n.name.is_empty() {
        n.output[0].clone()
    } else {
        n.name.clone()
    }
}

/// `Reshape(constant, constant shape)` → a constant (Paddle's exporter reshapes every conv
/// bias at run time; folded, the bias Add can join the Conv).
pub fn fold_constant_reshapes(g: &mut pb::GraphProto) -> usize {
    let mut folded = 0;
    let mut i = 0;
    while i < g.node.len() {
        let n = &g.node[i];
        if n.op_type != "Reshape" || n.input.len() != 2 || !n.domain.is_empty() {
            i += 1;
            continue;
        }
        let inits = init_index(g);
        let (Some(&di), Some(&si)) = (inits.get(&n.input[0]), inits.get(&n.input[1])) else {
            i += 1;
            continue;
        };
        let data = &g.initializer[di];
        let shape_t = &g.initializer[si];
        let shape: Vec<i64> = if !shape_t.int64_data.is_empty() {
            shape_t.int64_data.clone()
        } else {
            shape_t
                .raw_data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect()
        };
        let count: i64 = data.dims.iter().product();
        let mut dims: Vec<i64> = shape
            .iter()
            .enumerate()
            .map(|(k, &d)| {
                if d == 0 {
                    data.dims.get(k).copied().unwrap_or(0)
                } else {
                    d
                }
            })
            .collect();
        let known: i64 = dims.iter().filter(|&&d| d != -1).product();
        if let Some(p) = dims.iter().position(|&d| d == -1) {
            if known == 0 {
                i += 1;
                continue;
            }
            dims[p] = count / known;
        }
        if dims.iter().product::<i64>() != count || shape_t.data_type != D::Int64 as i32 {
            i += 1;
            continue;
        }
        let mut t = data.clone();
        t.name = n.output[0].clone();
        t.dims = dims;
        g.initializer.push(t);
        g.node.remove(i);
        folded += 1;
    }
    if folded > 0 {
        drop_unused_initializers(g);
    }
    folded
}

/// Fold `Conv → Add(constant of shape [C], [1,C,1,1] or [C,1,1])` into the Conv's bias.
pub fn fold_conv_bias_add(g: &mut pb::GraphProto) -> Vec<String> {
    let mut done = vec![];
    loop {
        let readers = readers(g);
        let inits = init_index(g);
        let producer = producers(g);
        let mut found = None;
        for (ai, add) in g.node.iter().enumerate() {
            if add.op_type != "Add" || add.input.len() != 2 {
                continue;
            }
            for (x, c) in [(0, 1), (1, 0)] {
                let Some(&ci) = producer.get(add.input[x].as_str()) else {
                    continue;
                };
                let conv = &g.node[ci];
                if conv.op_type != "Conv" || readers.get(&add.input[x]).copied() != Some(1) {
                    continue;
                }
                let Some(&ki) = inits.get(&add.input[c]) else {
                    continue;
                };
                let Some(&wi) = conv.input.get(1).and_then(|w| inits.get(w)) else {
                    continue;
                };
                let cout = g.initializer[wi].dims[0];
                let kd = &g.initializer[ki].dims;
                let kd: Vec<i64> = kd.iter().copied().skip_while(|&d| d == 1).collect();
                let per_channel_shape =
                    kd.first() == Some(&cout) && kd[1..].iter().all(|&d| d == 1);
                // [C] alone broadcasts over W, not C: only [C,1,1] or [1,C,1,1] are biases.
                if !per_channel_shape || g.initializer[ki].dims.len() < 3 {
                    continue;
                }
                let Some(k) = f32_values(&g.initializer[ki]) else {
                    continue;
                };
                let bias = match conv.input.get(2).filter(|b| !b.is_empty()) {
                    Some(b) => match inits.get(b).and_then(|&i| f32_values(&g.initializer[i])) {
                        Some(v) => v,
                        None => continue,
                    },
                    None => vec![0.0; cout as usize],
                };
                found = Some((ai, ci, k, bias));
                break;
            }
            if found.is_some() {
                break;
            }
        }
        let Some((ai, ci, k, mut bias)) = found else {
            break;
        };
        for (b, k) in bias.iter_mut().zip(&k) {
            *b += k;
        }
        let bname = format!("{}__addfold_b", conv_name_or(&g.node[ci]));
        g.initializer
            .push(f32_init(&bname, &[bias.len() as i64], &bias));
        let out = g.node[ai].output[0].clone();
        let (add_name, conv_name) = (g.node[ai].name.clone(), g.node[ci].name.clone());
        let conv = &mut g.node[ci];
        conv.input.truncate(2);
        conv.input.push(bname);
        conv.output[0] = out;
        g.node.remove(ai);
        done.push(format!(
            "Add '{add_name}' folded into the bias of Conv '{conv_name}'"
        ));
    }
    drop_unused_initializers(g);
    done
}

pub(crate) fn drop_unused_initializers(g: &mut pb::GraphProto) {
    let used: HashSet<String> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(g.output.iter().map(|o| o.name.clone()))
        .collect();
    let dropped: HashSet<String> = g
        .initializer
        .iter()
        .filter(|t| !used.contains(&t.name))
        .map(|t| t.name.clone())
        .collect();
    g.initializer.retain(|t| !dropped.contains(&t.name));
    // Old exporters also list initializers as graph inputs.
    g.input.retain(|i| !dropped.contains(&i.name));
}

/// Raise the default-domain opset to 13, rewriting the ops whose meaning changed between 11
/// and 13 (Softmax family axis semantics; Squeeze/Unsqueeze/ReduceSum/Split attributes that
/// became inputs). Models below opset 11 are refused: other ops changed there too.
pub fn upgrade_to_13(
    model: &mut pb::ModelProto,
    path_hint: &str,
) -> Result<Vec<String>, QuantError> {
    let from = opset(model);
    if from >= 13 {
        return Ok(vec![]);
    }
    if from < 11 {
        return Err(QuantError::Model(format!(
            "{path_hint}: opset {from}; the quantizer upgrades opset 11 and later to 13 (per-channel DequantizeLinear needs it): convert the model to opset 11+ first"
        )));
    }
    let g = model.graph.as_mut().expect("checked by caller");
    let mut done = vec![];
    let mut out = vec![];
    let mut counter = 0;
    for n in std::mem::take(&mut g.node) {
        let mut n = n;
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            out.push(n);
            continue;
        }
        let op = n.op_type.clone();
        match op.as_str() {
            "Softmax" | "LogSoftmax" | "Hardmax" => {
                // opset 11: coerce to 2-D at `axis` (default 1), normalise rows, restore shape.
                let axis = attr_i(&n, "axis").unwrap_or(1);
                counter += 1;
                let t = |s: &str| format!("{}__op13_{counter}_{s}", n.output[0]);
                let x = n.input[0].clone();
                let y = n.output[0].clone();
                out.push(simple(
                    "Flatten",
                    &[&x],
                    &[&t("flat")],
                    vec![int_attr("axis", axis)],
                ));
                out.push(simple(
                    &op,
                    &[&t("flat")],
                    &[&t("norm")],
                    vec![int_attr("axis", 1)],
                ));
                out.push(simple("Shape", &[&x], &[&t("shape")], vec![]));
                out.push(simple("Reshape", &[&t("norm"), &t("shape")], &[&y], vec![]));
                done.push(format!(
                    "{op} '{}': opset-11 axis semantics kept explicit",
                    n.name
                ));
                continue;
            }
            "Squeeze" | "Unsqueeze" | "ReduceSum" | "Split" => {
                let key = if op == "Split" { "split" } else { "axes" };
                if let Some(pos) = n.attribute.iter().position(|a| a.name == key) {
                    let a = n.attribute.remove(pos);
                    counter += 1;
                    let name = format!("{}__op13_{counter}_{key}", n.output[0]);
                    g.initializer.push(i64_init(&name, &a.ints));
                    if op == "Split" {
                        n.input.truncate(1);
                    }
                    n.input.push(name);
                    done.push(format!(
                        "{op} '{}': '{key}' attribute became an input",
                        n.name
                    ));
                }
            }
            _ => {}
        }
        out.push(n);
    }
    g.node = out;
    for o in model
        .opset_import
        .iter_mut()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
    {
        o.version = 13;
    }
    if model.ir_version < 7 {
        model.ir_version = 7;
    }
    done.push(format!("opset {from} raised to 13"));
    Ok(done)
}

fn int_attr(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

/// A default-domain node (the front end's node builder).
pub(crate) use crate::onnx::node as simple;

/// Element type of every tensor we can tell statically (inputs, initializers, then node
/// outputs: Shape → int64, Cast → `to`, QuantizeLinear → its zero point's type, anything
/// else → its first input's type). Only float tensors are quantized.
pub(crate) fn elem_types(g: &pb::GraphProto) -> HashMap<String, i32> {
    let mut t: HashMap<String, i32> = HashMap::new();
    for v in &g.input {
        if let Some(pb::type_proto::Value::TensorType(tt)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
        {
            t.insert(v.name.clone(), tt.elem_type);
        }
    }
    for i in &g.initializer {
        t.insert(i.name.clone(), i.data_type);
    }
    for n in &g.node {
        let ty = match n.op_type.as_str() {
            "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => Some(D::Int64 as i32),
            "Cast" => attr_i(n, "to").map(|v| v as i32),
            "QuantizeLinear" => n
                .input
                .get(2)
                .and_then(|z| t.get(z).copied())
                .or(Some(D::Uint8 as i32)),
            "DequantizeLinear" => Some(D::Float as i32),
            "Equal" | "Less" | "Greater" | "Not" | "And" | "Or" => Some(D::Bool as i32),
            "Where" => n.input.get(1).and_then(|x| t.get(x).copied()),
            _ => n.input.first().and_then(|x| t.get(x).copied()),
        };
        if let Some(ty) = ty {
            for o in &n.output {
                t.insert(o.clone(), ty);
            }
        }
    }
    t
}
