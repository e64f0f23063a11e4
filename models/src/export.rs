//! ONNX exporter for bevrt's own architectures: a chain of Conv (+ Relu) layers written with
//! tract-onnx's protobuf types (opset 13, IR 8), loadable by tract and ONNX Runtime.

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;
use tract_onnx::pb;

use crate::letsmap::ConvLayer;

/// What the exporter refused, naming the layer or tensor.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export: weight '{name}' is missing")]
    Missing { name: String },
    #[error("export: weight '{name}' has {got} values, layer needs {expected}")]
    Size {
        name: String,
        got: usize,
        expected: usize,
    },
    #[error("export: layers do not chain: {0}")]
    Chain(String),
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
}

/// Weights by name (`<layer>.weight`, `<layer>.bias`), row-major f32.
pub type Weights = BTreeMap<String, Vec<f32>>;

const F32: i32 = pb::tensor_proto::DataType::Float as i32;

fn value_info(name: &str, shape: &[usize]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value as DimValue};
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: F32,
                shape: Some(pb::TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(DimValue::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn initializer(name: &str, dims: &[usize], data: &[f32]) -> pb::TensorProto {
    let mut raw = Vec::with_capacity(data.len() * 4);
    for v in data {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    pb::TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: F32,
        raw_data: raw,
        ..Default::default()
    }
}

/// The model around a graph: opset 13, IR 8, producer bevrt, `doc` as provenance.
fn model_bytes(graph: pb::GraphProto, doc: &str) -> Vec<u8> {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "bevrt".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc.to_string(),
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Serialises a Conv chain as an ONNX model: input `input_name` of `input_shape` (NCHW),
/// output `output_name`. `doc` lands in the model's doc_string (provenance).
pub fn conv_chain_to_onnx(
    graph_name: &str,
    input_name: &str,
    output_name: &str,
    input_shape: [usize; 4],
    layers: &[ConvLayer],
    weights: &Weights,
    doc: &str,
) -> Result<Vec<u8>, ExportError> {
    let mut nodes = vec![];
    let mut inits = vec![];
    let (mut c, mut h, mut w) = (input_shape[1], input_shape[2], input_shape[3]);
    let mut cur = input_name.to_string();
    for (i, l) in layers.iter().enumerate() {
        if l.cin != c {
            return Err(ExportError::Chain(format!(
                "layer '{}' takes {} channels, gets {c}",
                l.name, l.cin
            )));
        }
        let wn = format!("{}.weight", l.name);
        let bn = format!("{}.bias", l.name);
        check_chain_weights(l, weights, &wn, &bn)?;
        inits.push(initializer(&wn, &l.weight_shape(), &weights[&wn]));
        inits.push(initializer(&bn, &[l.cout], &weights[&bn]));
        let last = i + 1 == layers.len();
        let (oh, ow) = l.out_hw(h, w);
        // An optional learned per-position bias `<layer>.position` (1, cout, oh, ow), added
        // after the convolution: where in the image a feature is (letsmap-lite's depth prior).
        let pn = format!("{}.position", l.name);
        let position = position_weights(l, weights, &pn, oh, ow)?;
        let named_out = last && !l.relu;
        let conv_out = if named_out && position.is_none() {
            output_name.to_string()
        } else {
            format!("{}.conv", l.name)
        };
        nodes.push(chain_conv_node(l, cur.clone(), wn, bn, conv_out.clone()));
        cur = conv_out;
        if let Some(v) = position {
            inits.push(initializer(&pn, &[1, l.cout, oh, ow], v));
            let out = if named_out {
                output_name.to_string()
            } else {
                format!("{}.positioned", l.name)
            };
            nodes.push(pb::NodeProto {
                name: format!("{}_position", l.name),
                op_type: "Add".into(),
                input: vec![cur.clone(), pn],
                output: vec![out.clone()],
                ..Default::default()
            });
            cur = out;
        }
        if l.relu {
            let out = if last {
                output_name.to_string()
            } else {
                format!("{}.relu", l.name)
            };
            nodes.push(pb::NodeProto {
                name: format!("{}_relu", l.name),
                op_type: "Relu".into(),
                input: vec![cur.clone()],
                output: vec![out.clone()],
                ..Default::default()
            });
            cur = out;
        }
        (h, w) = l.out_hw(h, w);
        c = l.cout;
    }
    let graph = pb::GraphProto {
        name: graph_name.to_string(),
        node: nodes,
        initializer: inits,
        input: vec![value_info(input_name, &input_shape)],
        output: vec![value_info(output_name, &[1, c, h, w])],
        ..Default::default()
    };
    Ok(model_bytes(graph, doc))
}

/// A chain layer's weight and bias are present, of the sizes the layer needs.
fn check_chain_weights(
    l: &ConvLayer,
    weights: &Weights,
    wn: &String,
    bn: &String,
) -> Result<(), ExportError> {
    for (n, expect) in [(wn, l.weight_shape().iter().product()), (bn, l.cout)] {
        let v = weights
            .get(n)
            .ok_or_else(|| ExportError::Missing { name: n.clone() })?;
        if v.len() != expect {
            return Err(ExportError::Size {
                name: n.clone(),
                got: v.len(),
                expected: expect,
            });
        }
    }
    Ok(())
}

/// The optional per-position bias `pn` of a chain layer with output `oh` x `ow`, checked
/// for size.
fn position_weights<'w>(
    l: &ConvLayer,
    weights: &'w Weights,
    pn: &str,
    oh: usize,
    ow: usize,
) -> Result<Option<&'w Vec<f32>>, ExportError> {
    match weights.get(pn) {
        Some(v) if v.len() != l.cout * oh * ow => Err(ExportError::Size {
            name: pn.to_string(),
            got: v.len(),
            expected: l.cout * oh * ow,
        }),
        Some(v) => Ok(Some(v)),
        None => Ok(None),
    }
}

/// A chain layer's Conv node (same padding on every side, no dilation).
fn chain_conv_node(
    l: &ConvLayer,
    input: String,
    wn: String,
    bn: String,
    output: String,
) -> pb::NodeProto {
    let p = l.pad() as i64;
    pb::NodeProto {
        name: l.name.to_string(),
        op_type: "Conv".into(),
        input: vec![input, wn, bn],
        output: vec![output],
        attribute: vec![
            ints("kernel_shape", &[l.k as i64, l.k as i64]),
            ints("strides", &[l.stride as i64, l.stride as i64]),
            ints("pads", &[p, p, p, p]),
            ints("dilations", &[1, 1]),
        ],
        ..Default::default()
    }
}

/// One layer of a sequential network for [`sequential_to_onnx`] (NCHW; weights row-major in
/// ONNX layouts: Conv `[out, in, k, k]`, ConvTranspose `[in, out, k, k]`, Linear `[out, in]`).
#[derive(Debug, Clone)]
pub enum SeqOp {
    Conv {
        weight: Vec<f32>,
        bias: Vec<f32>,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    },
    ConvTranspose {
        weight: Vec<f32>,
        bias: Vec<f32>,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    },
    Linear {
        weight: Vec<f32>,
        bias: Vec<f32>,
        cin: usize,
        cout: usize,
    },
    LeakyRelu(f32),
    Relu,
    Tanh,
    /// `[N, ...] → [N, rest]`
    Flatten,
    /// To `[N, dims...]`.
    Reshape(Vec<usize>),
    /// Nearest-neighbour upsampling by 2 in H and W (ONNX `Resize`, floor/asymmetric).
    Upsample2,
}

/// A named layer; `expose` also makes its output a graph output under that name.
#[derive(Debug, Clone)]
pub struct SeqLayer {
    pub name: String,
    pub op: SeqOp,
    pub expose: Option<String>,
}

/// Serialises a sequential network: input `input_name` of `input_shape`, the last layer's
/// output as `output_name` (first graph output), exposed layers after it in order.
pub fn sequential_to_onnx(
    graph_name: &str,
    input_name: &str,
    input_shape: &[usize],
    output_name: &str,
    layers: &[SeqLayer],
    doc: &str,
) -> Result<Vec<u8>, ExportError> {
    let mut nodes = vec![];
    let mut inits = vec![];
    let mut shape = input_shape.to_vec();
    let mut cur = input_name.to_string();
    let mut exposed = vec![];
    for (i, l) in layers.iter().enumerate() {
        let last = i + 1 == layers.len();
        let out = if last {
            output_name.to_string()
        } else {
            format!("{}.out", l.name)
        };
        let mut node = pb::NodeProto {
            name: l.name.clone(),
            input: vec![cur.clone()],
            output: vec![out.clone()],
            ..Default::default()
        };
        seq_op_node(l, &mut node, &mut shape, &mut inits)?;
        nodes.push(node);
        if let Some(e) = &l.expose {
            nodes.push(pb::NodeProto {
                name: format!("{}_expose", l.name),
                op_type: "Identity".into(),
                input: vec![out.clone()],
                output: vec![e.clone()],
                ..Default::default()
            });
            exposed.push(value_info(e, &shape));
        }
        cur = out;
    }
    let mut outputs = vec![value_info(output_name, &shape)];
    outputs.extend(exposed);
    let graph = pb::GraphProto {
        name: graph_name.to_string(),
        node: nodes,
        initializer: inits,
        input: vec![value_info(input_name, input_shape)],
        output: outputs,
        ..Default::default()
    };
    Ok(model_bytes(graph, doc))
}

fn check_size(name: &str, got: usize, expected: usize) -> Result<(), ExportError> {
    if got != expected {
        Err(ExportError::Size {
            name: name.to_string(),
            got,
            expected,
        })
    } else {
        Ok(())
    }
}

/// Check layer `l`'s weight (of shape `wdims`) and bias (`cout` values) for size, push them
/// as `<layer>.weight` and `<layer>.bias` initializers and append both to the node's inputs.
fn push_weight_and_bias(
    l: &SeqLayer,
    node: &mut pb::NodeProto,
    inits: &mut Vec<pb::TensorProto>,
    weight: &[f32],
    wdims: &[usize],
    bias: &[f32],
    cout: usize,
) -> Result<(), ExportError> {
    let (wn, bn) = (format!("{}.weight", l.name), format!("{}.bias", l.name));
    check_size(&wn, weight.len(), wdims.iter().product())?;
    check_size(&bn, bias.len(), cout)?;
    inits.push(initializer(&wn, wdims, weight));
    inits.push(initializer(&bn, &[cout], bias));
    node.input.extend([wn, bn]);
    Ok(())
}

/// Fill `node` (its name, activation input and output already set) with layer `l`'s op, push
/// the initializers it reads, and move `shape` on to the layer's output shape.
fn seq_op_node(
    l: &SeqLayer,
    node: &mut pb::NodeProto,
    shape: &mut Vec<usize>,
    inits: &mut Vec<pb::TensorProto>,
) -> Result<(), ExportError> {
    match &l.op {
        SeqOp::Conv { .. } | SeqOp::ConvTranspose { .. } => seq_conv(l, node, shape, inits)?,
        SeqOp::Linear {
            weight,
            bias,
            cin,
            cout,
        } => {
            if shape.len() != 2 || shape[1] != *cin {
                return Err(ExportError::Chain(format!(
                    "layer '{}' takes [N, {cin}], gets {shape:?}",
                    l.name
                )));
            }
            push_weight_and_bias(l, node, inits, weight, &[*cout, *cin], bias, *cout)?;
            node.op_type = "Gemm".into();
            node.attribute = vec![pb::AttributeProto {
                name: "transB".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: 1,
                ..Default::default()
            }];
            *shape = vec![shape[0], *cout];
        }
        SeqOp::LeakyRelu(a) => {
            node.op_type = "LeakyRelu".into();
            node.attribute = vec![pb::AttributeProto {
                name: "alpha".into(),
                r#type: pb::attribute_proto::AttributeType::Float as i32,
                f: *a,
                ..Default::default()
            }];
        }
        SeqOp::Upsample2 => seq_upsample2(l, node, shape, inits),
        SeqOp::Relu => node.op_type = "Relu".into(),
        SeqOp::Tanh => node.op_type = "Tanh".into(),
        SeqOp::Flatten => {
            node.op_type = "Flatten".into();
            *shape = vec![shape[0], shape[1..].iter().product()];
        }
        SeqOp::Reshape(dims) => seq_reshape(l, dims, node, shape, inits)?,
    }
    Ok(())
}

/// [`seq_op_node`] for Conv and ConvTranspose.
fn seq_conv(
    l: &SeqLayer,
    node: &mut pb::NodeProto,
    shape: &mut Vec<usize>,
    inits: &mut Vec<pb::TensorProto>,
) -> Result<(), ExportError> {
    let (SeqOp::Conv {
        weight,
        bias,
        cin,
        cout,
        k,
        stride,
        pad,
    }
    | SeqOp::ConvTranspose {
        weight,
        bias,
        cin,
        cout,
        k,
        stride,
        pad,
    }) = &l.op
    else {
        unreachable!("seq_conv takes Conv and ConvTranspose layers");
    };
    let transpose = matches!(l.op, SeqOp::ConvTranspose { .. });
    if shape.len() != 4 || shape[1] != *cin {
        return Err(ExportError::Chain(format!(
            "layer '{}' takes {cin} channels of NCHW, gets {shape:?}",
            l.name
        )));
    }
    let wdims = if transpose {
        [*cin, *cout, *k, *k]
    } else {
        [*cout, *cin, *k, *k]
    };
    push_weight_and_bias(l, node, inits, weight, &wdims, bias, *cout)?;
    node.op_type = if transpose { "ConvTranspose" } else { "Conv" }.into();
    let (s, p) = (*stride as i64, *pad as i64);
    node.attribute = vec![
        ints("kernel_shape", &[*k as i64, *k as i64]),
        ints("strides", &[s, s]),
        ints("pads", &[p, p, p, p]),
    ];
    let o = |n: usize| {
        if transpose {
            (n - 1) * stride + k - 2 * pad
        } else {
            (n + 2 * pad - k) / stride + 1
        }
    };
    *shape = vec![shape[0], *cout, o(shape[2]), o(shape[3])];
    Ok(())
}

/// [`seq_op_node`] for nearest-neighbour upsampling by 2 (ONNX `Resize`).
fn seq_upsample2(
    l: &SeqLayer,
    node: &mut pb::NodeProto,
    shape: &mut Vec<usize>,
    inits: &mut Vec<pb::TensorProto>,
) {
    let sn = format!("{}.scales", l.name);
    inits.push(initializer(&sn, &[4], &[1.0, 1.0, 2.0, 2.0]));
    node.op_type = "Resize".into();
    node.input.extend([String::new(), sn]);
    let s = |n: &str, v: &str| pb::AttributeProto {
        name: n.into(),
        r#type: pb::attribute_proto::AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    };
    node.attribute = vec![
        s("mode", "nearest"),
        s("coordinate_transformation_mode", "asymmetric"),
        s("nearest_mode", "floor"),
    ];
    *shape = vec![shape[0], shape[1], shape[2] * 2, shape[3] * 2];
}

/// [`seq_op_node`] for a reshape to `[N, dims...]` (its shape an int64 initializer).
fn seq_reshape(
    l: &SeqLayer,
    dims: &[usize],
    node: &mut pb::NodeProto,
    shape: &mut Vec<usize>,
    inits: &mut Vec<pb::TensorProto>,
) -> Result<(), ExportError> {
    let sn = format!("{}.shape", l.name);
    let mut v = vec![shape[0] as i64];
    v.extend(dims.iter().map(|&d| d as i64));
    let count: usize = shape.iter().product();
    if v.iter().product::<i64>() as usize != count {
        return Err(ExportError::Chain(format!(
            "layer '{}': cannot reshape {shape:?} to {v:?}",
            l.name
        )));
    }
    inits.push(pb::TensorProto {
        name: sn.clone(),
        dims: vec![v.len() as i64],
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        int64_data: v.clone(),
        ..Default::default()
    });
    node.op_type = "Reshape".into();
    node.input.push(sn);
    *shape = v.iter().map(|&d| d as usize).collect();
    Ok(())
}

/// [`conv_chain_to_onnx`] written to `path`.
#[allow(clippy::too_many_arguments)]
pub fn write_conv_chain(
    path: &Path,
    graph_name: &str,
    input_name: &str,
    output_name: &str,
    input_shape: [usize; 4],
    layers: &[ConvLayer],
    weights: &Weights,
    doc: &str,
) -> Result<(), ExportError> {
    let bytes = conv_chain_to_onnx(
        graph_name,
        input_name,
        output_name,
        input_shape,
        layers,
        weights,
        doc,
    )?;
    std::fs::write(path, bytes).map_err(|e| ExportError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

/// Plain CPU reference of a Conv chain (NCHW, batch 1): what the exported file must compute.
/// Used by tests to check the exporter and by tools to sanity-check weights.
pub fn conv_chain_reference(
    input: &[f32],
    input_shape: [usize; 4],
    layers: &[ConvLayer],
    weights: &Weights,
) -> Vec<f32> {
    let (mut c, mut h, mut w) = (input_shape[1], input_shape[2], input_shape[3]);
    let mut x = input.to_vec();
    for l in layers {
        let (oh, ow) = l.out_hw(h, w);
        let wt = &weights[&format!("{}.weight", l.name)];
        let b = &weights[&format!("{}.bias", l.name)];
        let position = weights.get(&format!("{}.position", l.name));
        let mut y = vec![0f32; l.cout * oh * ow];
        let p = l.pad() as isize;
        for co in 0..l.cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b[co];
                    for ci in 0..c {
                        for ky in 0..l.k {
                            let iy = (oy * l.stride) as isize + ky as isize - p;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..l.k {
                                let ix = (ox * l.stride) as isize + kx as isize - p;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                acc += wt[((co * c + ci) * l.k + ky) * l.k + kx]
                                    * x[(ci * h + iy as usize) * w + ix as usize];
                            }
                        }
                    }
                    if let Some(pos) = position {
                        acc += pos[(co * oh + oy) * ow + ox];
                    }
                    y[(co * oh + oy) * ow + ox] = if l.relu { acc.max(0.0) } else { acc };
                }
            }
        }
        x = y;
        (c, h, w) = (l.cout, oh, ow);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::letsmap::ConvLayer;

    fn layers() -> Vec<ConvLayer> {
        vec![
            ConvLayer {
                name: "a",
                cin: 3,
                cout: 4,
                k: 3,
                stride: 2,
                relu: true,
            },
            ConvLayer {
                name: "b",
                cin: 4,
                cout: 2,
                k: 1,
                stride: 1,
                relu: false,
            },
        ]
    }

    fn weights(ls: &[ConvLayer]) -> Weights {
        let mut s = 12345u32;
        let mut rnd = || {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let mut m = Weights::new();
        for l in ls {
            let n: usize = l.weight_shape().iter().product();
            m.insert(
                format!("{}.weight", l.name),
                (0..n).map(|_| rnd()).collect(),
            );
            m.insert(
                format!("{}.bias", l.name),
                (0..l.cout).map(|_| rnd()).collect(),
            );
        }
        m
    }

    #[test]
    fn exported_chain_runs_in_tract_like_the_reference() {
        use tract_onnx::prelude::*;
        let ls = layers();
        let w = weights(&ls);
        let bytes = conv_chain_to_onnx("t", "x", "y", [1, 3, 9, 10], &ls, &w, "test").unwrap();
        let model = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let input: Vec<f32> = (0..270)
            .map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0)
            .collect();
        let t = Tensor::from_shape(&[1, 3, 9, 10], &input).unwrap();
        let out = model.run(tvec![t.into()]).unwrap();
        assert_eq!(out[0].shape(), &[1, 2, 5, 5]);
        let got = out[0]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec();
        let want = conv_chain_reference(&input, [1, 3, 9, 10], &ls, &w);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn missing_and_wrong_weights_are_named() {
        let ls = layers();
        let mut w = weights(&ls);
        w.get_mut("b.bias").unwrap().push(0.0);
        let e = conv_chain_to_onnx("t", "x", "y", [1, 3, 9, 10], &ls, &w, "").unwrap_err();
        assert!(e.to_string().contains("b.bias"), "{e}");
        w.remove("a.weight");
        let e = conv_chain_to_onnx("t", "x", "y", [1, 3, 9, 10], &ls, &w, "").unwrap_err();
        assert!(e.to_string().contains("a.weight"), "{e}");
    }
}
