//! The CPU engine (`--backend cpu-plan`): the kernel plan on bevrt's own CPU kernels, checked
//! against the kernels' twins on the real networks, against ONNX Runtime's outputs, against
//! the tract backend on whole bundles, and on the ONNX node suite.

use bevrt_kernels::cpu::CpuPlan;
use bevrt_kernels::plan::{DType, KernelPlan};
use bevrt_kernels::reference;
use bevrt_models::Bundle;
use bevrt_runtime::backend::{self, BackendKind, BackendOptions};
use bevrt_runtime::conformance::{self, Outcome};
use bevrt_runtime::lower::{LowerOptions, lower_onnx};
use bevrt_runtime::npy;
use bevrt_tests::*;
use std::path::Path;

fn lower32(path: &Path, inputs: &[(&str, Vec<usize>)]) -> KernelPlan {
    lower_onnx(path, inputs, &LowerOptions { float: DType::F32 })
        .unwrap_or_else(|e| panic!("lowering {}: {e}", path.display()))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// The engine's outputs against the twins' on 1 and 2 threads: `exact` where every step is
/// exact (INT8 convolutions, the same float ops), else within FMA rounding.
fn check_against_twins(label: &str, plan: &KernelPlan, x: &[f32]) {
    let want = reference::run(plan, &[x]);
    for threads in [1, 2] {
        let got = CpuPlan::run_once(plan, &[x], threads).unwrap();
        for (g, w) in got.iter().zip(&want) {
            let d = max_diff(g, w);
            let scale = max_abs(w).max(1e-6);
            eprintln!("{label} x{threads}: max diff {d} of {scale}");
            assert!(
                d <= 1e-4 * scale,
                "{label} x{threads}: max diff {d} of {scale}"
            );
        }
    }
}

#[test]
fn letsmap_lite_fp32_and_int8_plans_match_the_twins() {
    let b = workspace_root().join("models/bundles/letsmap-lite");
    let shapes = [
        (
            "encoder.onnx",
            vec![1usize, 3, 128, 384],
            3u64,
            -2.0f32,
            2.0f32,
        ),
        ("bev_head.onnx", vec![1, 64, 80, 80], 4, 0.0, 4.0),
    ];
    for (file, shape, seed, lo, hi) in &shapes {
        let x = noise(shape.iter().product(), *seed, *lo, *hi);
        check_against_twins(file, &lower32(&b.join(file), &[]), &x);
    }
    let work = scratch("cpu-plan-int8");
    let q = work.join("letsmap-int8");
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &[
            "quantize",
            "--bundle",
            b.to_str().unwrap(),
            "--calib-source",
            "sim:?seed=5",
            "--frames",
            "8",
            "--method",
            "minmax",
            "--out",
            q.to_str().unwrap(),
        ],
    );
    assert!(ok, "quantize failed:\n{so}\n{se}");
    for (file, shape, seed, lo, hi) in &shapes {
        let plan = lower32(&q.join(file), &[]);
        assert!(
            plan.kernel_counts()
                .iter()
                .any(|(k, _)| *k == "conv_i8_imma"),
            "{file}: no int8 convolution"
        );
        let x = noise(shape.iter().product(), *seed, *lo, *hi);
        check_against_twins(&format!("int8 {file}"), &plan, &x);
    }
}

#[test]
fn mobilenetv3_fp32_and_int8_match_onnxruntime() {
    let Some(shared) = shared_dir() else { return };
    let models = shared.join("data/onnx/models");
    let (shape, x) = npy::read_f32(&models.join("cls_input_4x3x48x192.npy")).unwrap();
    for (file, ort_out, tol) in [
        (
            "ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "cls_output_fp32_4x2.npy",
            1e-4,
        ),
        (
            "ch_ppocr_mobile_v2.0_cls_int8_qdq.onnx",
            "cls_output_int8_qdq_4x2.npy",
            0.02,
        ),
    ] {
        let plan = lower32(&models.join(file), &[("x", shape.clone())]);
        check_against_twins(file, &plan, &x);
        let (_, want) = npy::read_f32(&models.join(ort_out)).unwrap();
        let got = CpuPlan::run_once(&plan, &[&x], 2).unwrap().remove(0);
        let d = max_diff(&got, &want);
        eprintln!("{file}: max |Δp| vs ONNX Runtime {d}");
        assert!(d <= tol, "{file}: max |Δp| {d} > {tol}");
    }
}

#[test]
fn cpu_plan_backend_agrees_with_tract_and_auto_prefers_it() {
    let bundle = Bundle::load(workspace_root().join("models/bundles/letsmap-lite")).unwrap();
    let opts = BackendOptions {
        threads: 2,
        ..Default::default()
    };
    let frame = bevrt_runtime::bench::synthetic_frame(384, 128);
    let mut results = vec![];
    for kind in [BackendKind::Cpu, BackendKind::CpuPlan, BackendKind::Auto] {
        let mut be = backend::open(kind, &bundle, &opts).unwrap();
        let mut r = be.new_result();
        be.preprocess(&frame).unwrap();
        be.infer().unwrap();
        be.postprocess(&mut r).unwrap();
        results.push((be.describe(), r));
    }
    assert!(results[1].0.starts_with("cpu-plan"), "{}", results[1].0);
    // no GPU here: auto takes the plan engine, which lowers the whole bundle
    if matches!(backend::cuda::probe(), backend::cuda::CudaProbe::NoDriver) {
        assert!(
            results[2].0.starts_with("cpu-plan"),
            "auto: {}",
            results[2].0
        );
    }
    let (tract, plan) = (&results[0].1, &results[1].1);
    let agree = tract
        .class_map
        .iter()
        .zip(&plan.class_map)
        .filter(|(a, b)| a == b)
        .count() as f64
        / tract.class_map.len() as f64;
    let d = max_diff(&tract.outputs[0].data, &plan.outputs[0].data);
    eprintln!("class agreement {agree}, logit max diff {d}");
    assert!(agree > 0.999, "class agreement {agree}");
    assert!(
        d < 1e-3 * max_abs(&tract.outputs[0].data).max(1.0),
        "logits differ by {d}"
    );
    assert!(!backend_layers(&bundle).is_empty());
}

/// The per-layer profile of a cpu-plan run: every step named, convolutions with their work.
fn backend_layers(bundle: &Bundle) -> Vec<String> {
    let opts = BackendOptions {
        threads: 1, // no thread measurement at load: one call per step below
        ..Default::default()
    };
    let mut be = backend::open(BackendKind::CpuPlan, bundle, &opts).unwrap();
    let frame = bevrt_runtime::bench::synthetic_frame(384, 128);
    be.preprocess(&frame).unwrap();
    be.infer().unwrap();
    let layers = be.layer_profile();
    assert!(
        layers
            .iter()
            .any(|(net, p)| *net == "head" && p.kernel.starts_with("gemm_f32") && p.ops > 1e6),
        "{layers:?}"
    );
    assert!(layers.iter().all(|(_, p)| p.calls == 1 && p.ns > 0));
    layers.into_iter().map(|(_, p)| p.name).collect()
}

#[test]
fn a_network_outside_the_plan_is_refused_naming_its_nodes() {
    let Some(shared) = shared_dir() else { return };
    let case = node_case(&shared, "test_top_k");
    let e = bevrt_runtime::backend::cpu::CpuNetwork::load_plan(&case.join("model.onnx"), &[3, 4])
        .err()
        .expect("refused");
    let msg = format!("{e:#}");
    assert!(msg.contains("TopK") && msg.contains("model.onnx"), "{msg}");
}

#[test]
fn node_suite_every_case_the_plan_accepts_passes_on_the_cpu_engine() {
    let Some(shared) = shared_dir() else { return };
    let cases = conformance::list_cases(&shared.join("data/onnx/node/cases"), None).unwrap();
    for threads in [1, 2] {
        let mut exec = |p: &KernelPlan, x: &[&[f32]]| CpuPlan::run_once(p, x, threads);
        let results = conformance::run_suite_plan(&cases, DType::F32, &mut exec, |_| {});
        let s = conformance::summarize(&results);
        eprintln!(
            "cpu-plan x{threads}: {} passed, {} failed, {} skipped",
            s.passed, s.failed, s.skipped
        );
        let bad: Vec<String> = results
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Fail { reason } => Some(format!("{}: {reason}", r.name)),
                _ => None,
            })
            .collect();
        assert!(bad.is_empty(), "cpu-plan failures:\n{}", bad.join("\n"));
        assert!(s.passed >= 100, "pass count regressed: {}", s.passed);
    }
}
