//! Hostile ONNX files: huge declared tensors, absurd shapes, cycles, very deep graphs,
//! external data. Each is refused with an error naming the file and the problem, within a
//! memory bound, never an abort or an out-of-memory kill.

use bevrt_models::limits::ModelLimits;
use bevrt_tests::*;
use prost::Message;
use std::path::{Path, PathBuf};
use tract_onnx::pb;

const FLOAT: i32 = pb::tensor_proto::DataType::Float as i32;
const INT64: i32 = pb::tensor_proto::DataType::Int64 as i32;

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn model(nodes: Vec<pb::NodeProto>, init: Vec<pb::TensorProto>, input: &[i64]) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            name: "hostile".into(),
            node: nodes,
            initializer: init,
            input: vec![onnx_float_value("x", input)],
            output: vec![onnx_float_value("y", &[])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn write(dir: &Path, name: &str, m: &pb::ModelProto) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    p
}

fn refused(p: &Path, limits: &ModelLimits, must: &str) {
    let e = bevrt_models::read_proto_within(p, limits)
        .err()
        .unwrap_or_else(|| panic!("{} was accepted", p.display()))
        .to_string();
    assert!(
        e.contains(&p.display().to_string()) && e.contains(must),
        "{e}"
    );
}

fn hostile_files(d: &Path) -> Vec<(PathBuf, &'static str)> {
    let relu = |i, o| node("Relu", "r", &[i], &[o]);
    let mut out = vec![];
    // A weight declaring 2^40 floats, carrying four bytes.
    let huge = pb::TensorProto {
        name: "w".into(),
        dims: vec![1 << 20, 1 << 20],
        data_type: FLOAT,
        raw_data: vec![0; 4],
        ..Default::default()
    };
    out.push((
        write(
            d,
            "huge_tensor.onnx",
            &model(
                vec![node("Add", "add", &["x", "w"], &["y"])],
                vec![huge],
                &[1],
            ),
        ),
        "declares 4096.0 GiB",
    ));
    // A weight whose shape and data disagree.
    let short = pb::TensorProto {
        name: "w".into(),
        dims: vec![10],
        data_type: FLOAT,
        float_data: vec![0.0; 3],
        ..Default::default()
    };
    out.push((
        write(
            d,
            "short_tensor.onnx",
            &model(
                vec![node("Add", "add", &["x", "w"], &["y"])],
                vec![short],
                &[10],
            ),
        ),
        "the file carries 3",
    ));
    // An input of a million by a million.
    out.push((
        write(
            d,
            "absurd_input.onnx",
            &model(vec![relu("x", "y")], vec![], &[1, 1_000_000, 1_000_000, 3]),
        ),
        "declared shape needs",
    ));
    // A shape that overflows 64 bits.
    let neg = pb::TensorProto {
        name: "w".into(),
        dims: vec![i64::MAX, 4],
        data_type: FLOAT,
        ..Default::default()
    };
    out.push((
        write(
            d,
            "overflow_shape.onnx",
            &model(
                vec![node("Add", "add", &["x", "w"], &["y"])],
                vec![neg],
                &[1],
            ),
        ),
        "overflows",
    ));
    // A cycle.
    out.push((
        write(
            d,
            "cycle.onnx",
            &model(
                vec![
                    node("Add", "a", &["x", "z"], &["y"]),
                    node("Relu", "b", &["y"], &["z"]),
                ],
                vec![],
                &[4],
            ),
        ),
        "cycle",
    ));
    // A chain deeper than the limit.
    let n = 25_000;
    let deep: Vec<pb::NodeProto> = (0..n)
        .map(|i| {
            let (a, b) = (
                if i == 0 {
                    "x".to_string()
                } else {
                    format!("t{i}")
                },
                if i == n - 1 {
                    "y".to_string()
                } else {
                    format!("t{}", i + 1)
                },
            );
            node("Relu", &format!("r{i}"), &[&a], &[&b])
        })
        .collect();
    out.push((
        write(d, "deep.onnx", &model(deep, vec![], &[4])),
        "chain of more than",
    ));
    // A constant shape that would allocate 4 TB.
    let shape = pb::TensorProto {
        name: "s".into(),
        dims: vec![2],
        data_type: INT64,
        int64_data: vec![1_000_000, 1_000_000],
        ..Default::default()
    };
    out.push((
        write(
            d,
            "constant_of_shape.onnx",
            &model(
                vec![node("ConstantOfShape", "cos", &["s"], &["y"])],
                vec![shape],
                &[1],
            ),
        ),
        "would make a tensor",
    ));
    // An output no node produces (tract indexes its name table with it and aborts).
    out.push((
        write(
            d,
            "output_from_nowhere.onnx",
            &model(vec![node("Relu", "r", &["x"], &["z"])], vec![], &[4]),
        ),
        "produced by no node",
    ));
    // An op without the inputs its schema requires (tract's shape rules index them).
    out.push((
        write(
            d,
            "maxpool_without_inputs.onnx",
            &model(vec![node("MaxPool", "p", &[], &["y"])], vec![], &[4]),
        ),
        "needs at least 1",
    ));
    // Weights outside the file (not covered by the bundle's digests).
    let ext = pb::TensorProto {
        name: "w".into(),
        dims: vec![4],
        data_type: FLOAT,
        data_location: Some(pb::tensor_proto::DataLocation::External as i32),
        ..Default::default()
    };
    out.push((
        write(
            d,
            "external.onnx",
            &model(
                vec![node("Add", "add", &["x", "w"], &["y"])],
                vec![ext],
                &[4],
            ),
        ),
        "external data",
    ));
    out
}

#[test]
fn hostile_models_are_refused_naming_the_file_and_the_problem() {
    let d = scratch("hostile");
    let limits = ModelLimits::default();
    for (p, must) in hostile_files(&d) {
        refused(&p, &limits, must);
    }
    // The limits are the user's: a tighter memory bound refuses a model the default admits.
    let ok = model(
        vec![node("Relu", "r", &["x"], &["y"])],
        vec![],
        &[1, 3, 1024, 1024],
    );
    let p = write(&d, "twelve_mb_input.onnx", &ok);
    bevrt_models::read_proto_within(&p, &limits).expect("within the default limits");
    let tight = ModelLimits {
        memory_bytes: 8 << 20,
        ..limits
    };
    refused(&p, &tight, "limit 8.0 MiB");
}

/// Through the command line, under a 1 GiB address-space limit: a clean error (exit code 2),
/// never a crash. `bundle init` is where a new model first enters.
#[test]
fn the_cli_refuses_hostile_models_within_a_memory_bound() {
    let d = scratch("hostile-cli");
    let tool = bin("bevrt-tool");
    let mut cases: Vec<(PathBuf, &str)> = hostile_files(&d);
    cases.push((d.to_path_buf(), "is a directory, expected an ONNX file"));
    for (p, must) in cases {
        let out_dir = d.join("bundle-out");
        let script = format!(
            "ulimit -v 1048576; exec '{}' bundle init --task features --model '{}' --input 4x1:GRAY --out '{}'",
            tool.display(),
            p.display(),
            out_dir.display()
        );
        let o = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        let se = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{}: {se}", p.display());
        let line = se.lines().find(|l| l.starts_with("error:")).unwrap_or("");
        assert!(
            line.contains(&p.display().to_string()) && line.contains(must),
            "{}: {se}",
            p.display()
        );
        assert!(!out_dir.exists());
    }
}
