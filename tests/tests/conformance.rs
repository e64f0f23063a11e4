//! ONNX backend node cases on the CPU backend: the whole staged suite runs without a panic,
//! and every case of the ops bevrt's bundles use passes.

use bevrt_runtime::conformance::{self, Outcome};
use bevrt_tests::{node_case, shared_dir};

/// Ops whose every staged case must pass, and the case-name fragments outside that promise
/// (data types or forms the issue excludes: 16-bit and blocked quantization, f16 scales).
const REQUIRED: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Relu",
    "Clip",
    "Sigmoid",
    "Add",
    "Mul",
    "Concat",
    "Reshape",
    "Transpose",
    "Flatten",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Softmax",
    "ArgMax",
    "Resize",
    "GridSample",
    "BatchNormalization",
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
];
const OUT_OF_SCOPE: &[&str] = &[
    "int16", "uint16", "blocked", "float16", "e4m3", "e5m2", "float4", "int4", "uint4", "int2",
    "uint2", "_3d", "1d_",
];

#[test]
fn staged_suite_runs_and_required_ops_pass() {
    let Some(shared) = shared_dir() else { return };
    let node = shared.join("data/onnx/node");
    let cases = conformance::list_cases(&node.join("cases"), None).unwrap();
    let results = conformance::run_suite(&cases, |_| {});
    let s = conformance::summarize(&results);
    eprintln!(
        "{} passed, {} failed, {} skipped",
        s.passed, s.failed, s.skipped
    );
    assert_eq!(results.len(), cases.len());
    assert!(s.passed >= 340, "pass count regressed: {}", s.passed);

    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(node.join("node_index_onnx1.22.0.json")).unwrap(),
    )
    .unwrap();
    let mut bad = vec![];
    let mut checked = 0;
    for c in index["all_cases"].as_array().unwrap() {
        let name = c["case"].as_str().unwrap();
        let ops: Vec<&str> = c["ops"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.as_str())
            .collect();
        if !ops.iter().any(|o| REQUIRED.contains(o)) {
            continue;
        }
        let Some(r) = results.iter().find(|r| r.name == name) else {
            continue;
        };
        let lname = name.to_ascii_lowercase();
        // Pool and GridSample cases outside 2-D, and quantization outside int8/uint8 with f32
        // scales, are not part of the promise.
        let pooling_or_grid = ops
            .iter()
            .any(|o| ["MaxPool", "AveragePool", "GridSample"].contains(o));
        let quant = ops
            .iter()
            .any(|o| o.to_ascii_lowercase().contains("quantize") || o.starts_with("QLinear"));
        if (quant || pooling_or_grid) && OUT_OF_SCOPE.iter().any(|f| lname.contains(f)) {
            continue;
        }
        checked += 1;
        if !matches!(r.outcome, Outcome::Pass { .. }) {
            bad.push(format!("{name}: {:?}", r.outcome));
        }
    }
    assert!(checked > 200, "only {checked} required-op cases found");
    assert!(
        bad.is_empty(),
        "required-op cases not passing:\n{}",
        bad.join("\n")
    );
}

/// The CUDA executor's lowering on the same suite, run on the kernels' CPU twins with FP16
/// storage (the GPU's arithmetic): every case it accepts passes, except where FP16 itself
/// cannot represent the case's inputs; everything else is refused at load with a reason.
#[test]
fn kernel_plan_passes_every_case_it_accepts() {
    let Some(shared) = shared_dir() else { return };
    let cases = conformance::list_cases(&shared.join("data/onnx/node/cases"), None).unwrap();
    let mut exec =
        |p: &bevrt_kernels::plan::KernelPlan, x: &[&[f32]]| Ok(bevrt_kernels::reference::run(p, x));
    let results =
        conformance::run_suite_plan(&cases, bevrt_kernels::plan::DType::F16, &mut exec, |_| {});
    let s = conformance::summarize(&results);
    eprintln!(
        "kernel plan: {} passed, {} failed, {} skipped",
        s.passed, s.failed, s.skipped
    );
    // inputs 10000, 10001, ... are one f16 value apart at best (spacing 8 there)
    const FP16_LIMITS: &[&str] = &["test_softmax_large_number"];
    let bad: Vec<String> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Fail { reason } if !FP16_LIMITS.contains(&r.name.as_str()) => {
                Some(format!("{}: {reason}", r.name))
            }
            _ => None,
        })
        .collect();
    assert!(bad.is_empty(), "kernel plan failures:\n{}", bad.join("\n"));
    assert!(s.passed >= 95, "pass count regressed: {}", s.passed);
    for must in [
        "test_conv_with_strides_padding",
        "test_maxpool_2d_pads",
        "test_softmax_axis_1",
        "test_resize_upsample_scales_linear",
        "test_concat_2d_axis_1",
        "test_hardswish",
        "test_gemm_default_single_elem_vector_bias",
    ] {
        let r = results
            .iter()
            .find(|r| r.name == must)
            .unwrap_or_else(|| panic!("{must} missing"));
        assert!(
            matches!(r.outcome, Outcome::Pass { .. }),
            "{must}: {:?}",
            r.outcome
        );
    }
}

/// `bevrt conformance` exits 0 when every case passes and 1 when one fails (a case whose
/// expected output was altered), so a script or CI step stops on a failing case.
#[test]
fn cli_exits_nonzero_on_a_failing_case() {
    let Some(shared) = shared_dir() else { return };
    let scratch = bevrt_tests::scratch("conformance-exit");
    let case = node_case(&shared, "test_relu");
    let status_of = |suite: &std::path::Path| {
        let out = std::process::Command::new(bevrt_tests::bin("bevrt"))
            .args(["conformance", "--backend", "cpu-plan", "--suite"])
            .arg(suite)
            .output()
            .expect("spawn bevrt");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let copy_case = |suite: &std::path::Path| -> std::path::PathBuf {
        let dst = suite.join("test_relu").join("test_data_set_0");
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::copy(case.join("model.onnx"), suite.join("test_relu/model.onnx")).unwrap();
        for f in ["input_0.pb", "output_0.pb"] {
            std::fs::copy(case.join("test_data_set_0").join(f), dst.join(f)).unwrap();
        }
        dst.join("output_0.pb")
    };
    let good = scratch.join("good");
    copy_case(&good);
    let (code, out) = status_of(&good);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 passed, 0 failed"), "{out}");

    let bad = scratch.join("bad");
    let expected = copy_case(&bad);
    // the tensor's raw data ends the file: its last value becomes 1000.0
    let mut bytes = std::fs::read(&expected).unwrap();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&1000.0f32.to_le_bytes());
    std::fs::write(&expected, bytes).unwrap();
    let (code, out) = status_of(&bad);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("0 passed, 1 failed"), "{out}");
}
