//! The blocks the ONNX model zoo's classic CNNs are made of, as their exporters wrote them
//! (Caffe2 and PyTorch 1.x): ResNet's `Sum` of two and three inputs after BatchNormalizations
//! left unfolded, DenseNet's pre-activation `Concat → BatchNormalization → Mul → Add → Relu →
//! Conv`, Inception v2's `Conv → BatchNormalization → Mul → Add` with Unsqueezed constants,
//! pools of every stride, and the `GlobalAveragePool → Flatten → Gemm → Softmax` tail. Each
//! lowers to the kernel plan, runs on the CPU engine on 1 and 2 threads, and matches tract
//! (the oracle) within 1e-5 of the output's scale; the affine chains take one step or none.

use bevrt_kernels::cpu::CpuPlan;
use bevrt_kernels::params::{act, binary_op};
use bevrt_kernels::plan::{DType, KernelPlan, Op};
use bevrt_runtime::lower::{LowerError, LowerOptions, lower_onnx};
use bevrt_tests::*;
use prost::Message;
use std::path::{Path, PathBuf};
use tract_onnx::pb;

const FLOAT: i32 = 1;
const INT64: i32 = 7;

fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        ints: v.to_vec(),
        r#type: 7,
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        i: v,
        r#type: 2,
        ..Default::default()
    }
}

fn f32s(name: &str, dims: &[i64], v: Vec<f32>) -> pb::TensorProto {
    assert_eq!(v.len() as i64, dims.iter().product::<i64>());
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: FLOAT,
        float_data: v,
        ..Default::default()
    }
}

fn i64s(name: &str, v: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: INT64,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

/// Weights of a trained network's scale: He-normal-like convolutions, BN near identity.
struct Weights {
    seed: u64,
    init: Vec<pb::TensorProto>,
}

impl Weights {
    fn conv(&mut self, name: &str, k: i64, c: i64, r: i64) -> String {
        self.seed += 1;
        let n = (k * c * r * r) as usize;
        let a = (3.0 / (c * r * r) as f32).sqrt();
        self.init
            .push(f32s(name, &[k, c, r, r], noise(n, self.seed, -a, a)));
        name.into()
    }
    fn vec(&mut self, name: &str, dims: &[i64], lo: f32, hi: f32) -> String {
        self.seed += 1;
        let n = dims.iter().product::<i64>() as usize;
        self.init
            .push(f32s(name, dims, noise(n, self.seed, lo, hi)));
        name.into()
    }
    /// The four statistics of a BatchNormalization over `c` channels.
    fn bn(&mut self, name: &str, c: i64) -> [String; 4] {
        [
            self.vec(&format!("{name}.g"), &[c], 0.8, 1.2),
            self.vec(&format!("{name}.b"), &[c], -0.1, 0.1),
            self.vec(&format!("{name}.m"), &[c], -0.1, 0.1),
            self.vec(&format!("{name}.v"), &[c], 0.8, 1.2),
        ]
    }
}

fn bn_node(x: &str, stats: &[String; 4], out: &str) -> pb::NodeProto {
    let s: Vec<&str> = stats.iter().map(String::as_str).collect();
    node(
        "BatchNormalization",
        &[x, s[0], s[1], s[2], s[3]],
        out,
        vec![],
    )
}

fn write_model(name: &str, nodes: Vec<pb::NodeProto>, w: Weights, x: &[i64], y: &str) -> PathBuf {
    let m = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            name: name.into(),
            node: nodes,
            initializer: w.init,
            input: vec![onnx_float_value("x", x)],
            output: vec![pb::ValueInfoProto {
                name: y.into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let dir = scratch(&format!("zoo_blocks_{name}")).keep();
    let p = dir.join(format!("{name}.onnx"));
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    p
}

/// ResNet-50 (Caffe2) style: BN after each Conv unfolded in the file, `Sum` of the shortcut
/// and the branch, a `Sum` of three, then the stem's 3x3 stride-2 max pool.
fn resnet_block() -> PathBuf {
    let mut w = Weights {
        seed: 10,
        init: vec![],
    };
    let c1 = w.conv("c1.w", 8, 8, 3);
    let b1 = w.bn("bn1", 8);
    let c2 = w.conv("c2.w", 8, 8, 1);
    let b2 = w.bn("bn2", 8);
    let pads = || ints("pads", &[1, 1, 1, 1]);
    let nodes = vec![
        node("Conv", &["x", &c1], "h1", vec![pads()]),
        bn_node("h1", &b1, "h1n"),
        node("Relu", &["h1n"], "h1r", vec![]),
        node("Conv", &["h1r", &c2], "h2", vec![]),
        bn_node("h2", &b2, "h2n"),
        node("Sum", &["x", "h2n"], "s2", vec![]),
        node("Relu", &["s2"], "r2", vec![]),
        node("Sum", &["r2", "x", "h2n"], "s3", vec![]),
        node(
            "MaxPool",
            &["s3"],
            "y",
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[2, 2]),
                pads(),
            ],
        ),
    ];
    write_model("resnet_block", nodes, w, &[1, 8, 12, 13], "y")
}

/// DenseNet-121 and Inception v2 (Caffe2) style: Concat → BN → Mul → Add (Unsqueezed
/// per-channel constants) → Relu → Conv 1x1 → BN → Mul → Add → Relu, a 3x3 stride-1 average
/// pool (padding not counted), then the classifier tail.
fn densenet_block() -> PathBuf {
    let mut w = Weights {
        seed: 20,
        init: vec![],
    };
    let c0 = w.conv("c0.w", 4, 8, 3);
    let b1 = w.bn("bn1", 12);
    let s1 = w.vec("s1", &[12], 0.8, 1.2);
    let t1 = w.vec("t1", &[12], -0.1, 0.1);
    w.init.push(i64s("axes", &[1, 2]));
    let c1 = w.conv("c1.w", 6, 12, 1);
    let b2 = w.bn("bn2", 6);
    let s2 = w.vec("s2", &[6, 1, 1], 0.8, 1.2);
    let t2 = w.vec("t2", &[1, 6, 1, 1], -0.1, 0.1);
    let fc = w.vec("fc.w", &[5, 6], -0.5, 0.5);
    let fcb = w.vec("fc.b", &[5], -0.1, 0.1);
    let nodes = vec![
        node("Conv", &["x", &c0], "h0", vec![ints("pads", &[1, 1, 1, 1])]),
        node("Concat", &["x", "h0"], "cat", vec![int("axis", 1)]),
        bn_node("cat", &b1, "n1"),
        node("Unsqueeze", &[&s1, "axes"], "s1u", vec![]),
        node("Mul", &["n1", "s1u"], "m1", vec![]),
        node("Unsqueeze", &[&t1, "axes"], "t1u", vec![]),
        node("Add", &["m1", "t1u"], "a1", vec![]),
        node("Relu", &["a1"], "r1", vec![]),
        node("Conv", &["r1", &c1], "h1", vec![]),
        bn_node("h1", &b2, "n2"),
        node("Mul", &[&s2, "n2"], "m2", vec![]),
        node("Add", &["m2", &t2], "a2", vec![]),
        node("Relu", &["a2"], "r2", vec![]),
        node(
            "AveragePool",
            &["r2"],
            "p",
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[1, 1]),
                ints("pads", &[1, 1, 1, 1]),
            ],
        ),
        node("GlobalAveragePool", &["p"], "g", vec![]),
        node("Flatten", &["g"], "f", vec![int("axis", 1)]),
        node("Gemm", &["f", &fc, &fcb], "logits", vec![int("transB", 1)]),
        node("Softmax", &["logits"], "y", vec![int("axis", 1)]),
    ];
    write_model("densenet_block", nodes, w, &[1, 8, 11, 9], "y")
}

/// ShuffleNet (Caffe2) style: grouped 1x1 Conv → BN → channel shuffle (Reshape to 5-D →
/// Transpose [0, 2, 1, 3, 4] → Reshape back) → depthwise 3x3 stride 2 → BN, beside a 3x3
/// stride-2 average pool of the input, concatenated, then Relu.
fn shufflenet_block() -> PathBuf {
    let mut w = Weights {
        seed: 40,
        init: vec![],
    };
    let g1 = w.conv("g1.w", 12, 4, 1); // 3 groups of 4 → 12
    let b1 = w.bn("bn1", 12);
    let dw = w.conv("dw.w", 12, 1, 3);
    let b2 = w.bn("bn2", 12);
    w.init.push(i64s("to5", &[1, 3, 4, 12, 10]));
    w.init.push(i64s("to4", &[1, 12, 12, 10]));
    let nodes = vec![
        node("Conv", &["x", &g1], "h1", vec![int("group", 3)]),
        bn_node("h1", &b1, "n1"),
        node("Relu", &["n1"], "r1", vec![]),
        node("Reshape", &["r1", "to5"], "r5", vec![]),
        node(
            "Transpose",
            &["r5"],
            "t5",
            vec![ints("perm", &[0, 2, 1, 3, 4])],
        ),
        node("Reshape", &["t5", "to4"], "sh", vec![]),
        node(
            "Conv",
            &["sh", &dw],
            "d",
            vec![
                int("group", 12),
                ints("strides", &[2, 2]),
                ints("pads", &[1, 1, 1, 1]),
            ],
        ),
        bn_node("d", &b2, "dn"),
        node(
            "AveragePool",
            &["x"],
            "ap",
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[2, 2]),
                ints("pads", &[1, 1, 1, 1]),
            ],
        ),
        node("Concat", &["ap", "dn"], "cat", vec![int("axis", 1)]),
        node("Relu", &["cat"], "y", vec![]),
    ];
    write_model("shufflenet_block", nodes, w, &[1, 12, 12, 10], "y")
}

/// PP-OCR's DB head: Conv → BN → Relu → ConvTranspose 2x2/2 (with bias) → BN → Relu →
/// ConvTranspose 2x2/2 → Sigmoid: the probability map at 4x the feature resolution.
fn db_head(kernel: i64) -> PathBuf {
    let mut w = Weights {
        seed: 50,
        init: vec![],
    };
    let c0 = w.conv("c0.w", 8, 8, 3);
    let b0 = w.bn("bn0", 8);
    let t1 = w.vec("t1.w", &[8, 4, kernel, kernel], -0.4, 0.4);
    let t1b = w.vec("t1.b", &[4], -0.1, 0.1);
    let b1 = w.bn("bn1", 4);
    let t2 = w.vec("t2.w", &[4, 1, kernel, kernel], -0.4, 0.4);
    let up = |x: &str, wt: &str, b: Option<&str>, out: &str| {
        let mut ins = vec![x, wt];
        ins.extend(b);
        node(
            "ConvTranspose",
            &ins,
            out,
            vec![
                ints("kernel_shape", &[kernel, kernel]),
                ints("strides", &[2, 2]),
            ],
        )
    };
    let nodes = vec![
        node("Conv", &["x", &c0], "h0", vec![ints("pads", &[1, 1, 1, 1])]),
        bn_node("h0", &b0, "n0"),
        node("Relu", &["n0"], "r0", vec![]),
        up("r0", &t1, Some(&t1b), "u1"),
        bn_node("u1", &b1, "n1"),
        node("Relu", &["n1"], "r1", vec![]),
        up("r1", &t2, None, "u2"),
        node("Sigmoid", &["u2"], "y", vec![]),
    ];
    write_model(&format!("db_head_{kernel}"), nodes, w, &[1, 8, 6, 7], "y")
}

fn binary_steps(plan: &KernelPlan, op: i32) -> Vec<(String, i32)> {
    plan.steps
        .iter()
        .filter_map(|s| match &s.op {
            Op::Binary(p) if p.op == op => Some((s.name.clone(), p.act)),
            _ => None,
        })
        .collect()
}

fn unary_steps(plan: &KernelPlan) -> usize {
    plan.steps
        .iter()
        .filter(|s| matches!(s.op, Op::Unary { .. }))
        .count()
}

/// The plan in F32 on the CPU engine (1 and 2 threads) against tract on the same file.
fn matches_tract(path: &Path, shape: &[usize]) -> KernelPlan {
    let plan = lower_onnx(path, &[], &LowerOptions { float: DType::F32 })
        .unwrap_or_else(|e| panic!("{e}"));
    let x = noise(shape.iter().product(), 7, -2.0, 2.0);
    let want = tract_outputs(path, shape, &x).swap_remove(0);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    for threads in [1, 2] {
        let got = CpuPlan::run_once(&plan, &[&x], threads)
            .unwrap()
            .swap_remove(0);
        assert_eq!(got.len(), want.len());
        let d = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("{}: x{threads} max diff {d} of {scale}", path.display());
        assert!(d <= 1e-5 * scale, "{}: {d} of {scale}", path.display());
    }
    plan
}

#[test]
fn resnet_sums_lower_to_additions_with_the_relu_fused() {
    let plan = matches_tract(&resnet_block(), &[1, 8, 12, 13]);
    let adds = binary_steps(&plan, binary_op::ADD);
    // Sum of two: one addition (Relu fused into it); Sum of three: two
    assert_eq!(adds.len(), 3, "{adds:?}");
    assert_eq!(adds[0].1, act::RELU, "{adds:?}");
    assert_eq!(unary_steps(&plan), 0, "every Relu fused");
    assert!(binary_steps(&plan, binary_op::SCALE_SHIFT).is_empty());
}

#[test]
fn densenet_affine_chains_take_one_step_after_a_concat_and_none_after_a_conv() {
    let plan = matches_tract(&densenet_block(), &[1, 8, 11, 9]);
    let ss = binary_steps(&plan, binary_op::SCALE_SHIFT);
    assert_eq!(
        ss.len(),
        1,
        "BN → Mul → Add → Relu after the Concat: {ss:?}"
    );
    assert_eq!(ss[0].1, act::RELU, "{ss:?}");
    for op in [binary_op::ADD, binary_op::MUL] {
        assert!(binary_steps(&plan, op).is_empty(), "{:?}", plan.steps);
    }
    assert_eq!(unary_steps(&plan), 0, "every Relu fused");
    let copies = plan
        .steps
        .iter()
        .filter(|s| matches!(s.op, Op::CopySlice { .. }))
        .count();
    assert_eq!(
        copies, 1,
        "the Conv writes its slice of the Concat; the graph input is copied"
    );
    // and the FP16 plan (what the GPU runs) lowers the same way
    let p16 = lower_onnx(&densenet_block(), &[], &LowerOptions::default()).unwrap();
    assert_eq!(binary_steps(&p16, binary_op::SCALE_SHIFT).len(), 1);
}

#[test]
fn shufflenet_channel_shuffle_is_one_transpose_step() {
    let plan = matches_tract(&shufflenet_block(), &[1, 12, 12, 10]);
    let shuffles: Vec<&str> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.op, Op::Transpose(_)))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(shuffles, ["t5"], "{:?}", plan.steps);
}

#[test]
fn db_head_conv_transposes_lower_to_a_1x1_and_a_transpose() {
    let plan = matches_tract(&db_head(2), &[1, 8, 6, 7]);
    let transposes = plan
        .steps
        .iter()
        .filter(|s| matches!(s.op, Op::Transpose(_)))
        .count();
    assert_eq!(transposes, 2, "{:?}", plan.steps);
    // an overlapping kernel (3x3, stride 2) is refused, saying why
    let e = lower_onnx(&db_head(3), &[], &LowerOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("ConvTranspose ×1") && msg.contains("kernel = stride"),
        "{msg}"
    );
}

#[test]
fn a_refusal_names_each_missing_op_type_once_with_its_count() {
    let mut w = Weights {
        seed: 30,
        init: vec![],
    };
    let c = w.conv("c.w", 4, 4, 1);
    let nodes = vec![
        node("LRN", &["x"], "l1", vec![int("size", 3)]),
        node("Conv", &["l1", &c], "h", vec![]),
        node("Relu", &["h"], "r", vec![]),
        node("LRN", &["x"], "l2", vec![int("size", 3)]),
        node("Add", &["r", "l2"], "y", vec![]),
    ];
    let path = write_model("refused", nodes, w, &[1, 4, 5, 5], "y");
    let e = lower_onnx(&path, &[], &LowerOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("LRN ×2"), "{msg}");
    assert!(msg.contains("3 node(s) after them"), "{msg}");
    let LowerError::Unsupported { nodes, .. } = e else {
        panic!("{msg}")
    };
    assert_eq!(nodes.len(), 2, "only the causes are listed: {nodes:?}");
}

/// MobileNetV3's hard-swish as Paddle and older PyTorch exports spell it:
/// `Conv → x · Clip(x + 3, 0, 6) / 6`, and `Conv → x · HardSigmoid(x; 1/6, 1/2)`.
fn hard_swish_block() -> PathBuf {
    let mut w = Weights {
        seed: 60,
        init: vec![],
    };
    let c1 = w.conv("c1.w", 8, 8, 3);
    let c2 = w.conv("c2.w", 8, 8, 1);
    for (name, v) in [("three", 3.0), ("zero", 0.0), ("six", 6.0)] {
        w.init.push(f32s(name, &[], vec![v]));
    }
    let hsig = pb::AttributeProto {
        name: "alpha".into(),
        f: 1.0 / 6.0,
        r#type: 1,
        ..Default::default()
    };
    let nodes = vec![
        node("Conv", &["x", &c1], "h1", vec![ints("pads", &[1, 1, 1, 1])]),
        node("Add", &["h1", "three"], "a1", vec![]),
        node("Clip", &["a1", "zero", "six"], "k1", vec![]),
        node("Mul", &["h1", "k1"], "m1", vec![]),
        node("Div", &["m1", "six"], "s1", vec![]),
        node("Conv", &["s1", &c2], "h2", vec![]),
        node("HardSigmoid", &["h2"], "g2", vec![hsig]),
        node("Mul", &["g2", "h2"], "y", vec![]),
    ];
    write_model("hard_swish_block", nodes, w, &[1, 8, 9, 10], "y")
}

#[test]
fn hard_swish_patterns_fuse_into_the_convolution_before_them() {
    let plan = matches_tract(&hard_swish_block(), &[1, 8, 9, 10]);
    let convs: Vec<i32> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.op {
            Op::Conv { p, .. } => Some(p.act),
            _ => None,
        })
        .collect();
    assert_eq!(
        convs,
        [act::HARD_SWISH, act::HARD_SWISH],
        "{:?}",
        plan.steps
    );
    assert_eq!(plan.steps.len(), 2, "{:?}", plan.steps);
}
