//! The CUDA executor's plan, checked without a GPU: the ONNX lowering runs on the CPU twins of
//! the kernels (bevrt_kernels::reference) over the same arena the GPU would use, and must
//! reproduce tract and ONNX Runtime on real models.
//!
//! - F32 storage checks the lowering itself (every op's semantics, fusion, memory reuse).
//! - F16 storage is what the GPU runs: checked against tract within FP16 tolerance.
//! - INT8 (Q/DQ bundles): integer convolutions with requantizing epilogues.

use bevrt_kernels::plan::{DType, KernelPlan};
use bevrt_kernels::reference;
use bevrt_runtime::lower::{LowerError, LowerOptions, lower_onnx};
use bevrt_runtime::npy;
use bevrt_tests::*;
use std::path::Path;

fn lower(path: &Path, inputs: &[(&str, Vec<usize>)], float: DType) -> KernelPlan {
    lower_onnx(path, inputs, &LowerOptions { float })
        .unwrap_or_else(|e| panic!("lowering {}: {e}", path.display()))
}

fn tract_run(path: &Path, shape: &[usize], x: &[f32]) -> Vec<f32> {
    tract_outputs(path, shape, x).swap_remove(0)
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Share of positions where the channel argmax agrees, for (1, C, cells) logits.
fn argmax_agreement(a: &[f32], b: &[f32], classes: usize) -> f64 {
    let cells = a.len() / classes;
    let am = reference::argmax(a, classes, cells);
    let bm = reference::argmax(b, classes, cells);
    am.iter().zip(&bm).filter(|(x, y)| x == y).count() as f64 / cells as f64
}

fn letsmap() -> std::path::PathBuf {
    workspace_root().join("models/bundles/letsmap-lite")
}

#[test]
fn letsmap_lite_plans_match_tract_in_f32_and_f16() {
    let b = letsmap();
    let enc = b.join("encoder.onnx");
    let head = b.join("bev_head.onnx");
    let img_shape = vec![1, 3, 128, 384];
    let x = noise(3 * 128 * 384, 1, -2.0, 2.0);
    let want = tract_run(&enc, &img_shape, &x);

    let p32 = lower(&enc, &[], DType::F32);
    // 5 convolutions with their ReLU fused, one output cast: nothing else
    let convs = p32
        .steps
        .iter()
        .filter(|s| matches!(s.op, bevrt_kernels::plan::Op::Conv { .. }))
        .count();
    assert_eq!(convs, 5, "{:#?}", p32.kernel_counts());
    assert!(p32.steps.len() <= 6, "{:#?}", p32.kernel_counts());
    assert!(p32.arena_bytes < p32.bytes_without_reuse());
    let got = &reference::run(&p32, &[&x])[0];
    let tol = 1e-4 * max_abs(&want);
    assert!(
        max_diff(got, &want) <= tol,
        "f32 encoder: {} > {tol}",
        max_diff(got, &want)
    );

    let p16 = lower(&enc, &[], DType::F16);
    let got16 = &reference::run(&p16, &[&x])[0];
    let d = max_diff(got16, &want);
    assert!(
        d <= 1e-2 * max_abs(&want),
        "f16 encoder: max diff {d} of {}",
        max_abs(&want)
    );

    // the head on realistic features: the view transform of the encoder output is what it
    // sees; here non-negative features of the same magnitude
    let hx = noise(64 * 80 * 80, 2, 0.0, max_abs(&want));
    let hshape = vec![1, 64, 80, 80];
    let hwant = tract_run(&head, &hshape, &hx);
    let h32 = lower(&head, &[], DType::F32);
    let hgot = &reference::run(&h32, &[&hx])[0];
    assert!(max_diff(hgot, &hwant) <= 1e-4 * max_abs(&hwant));
    let h16 = lower(&head, &[], DType::F16);
    let hgot16 = &reference::run(&h16, &[&hx])[0];
    let agree = argmax_agreement(hgot16, &hwant, 8);
    assert!(agree > 0.99, "f16 head: class agreement {agree}");
    eprintln!(
        "letsmap-lite: encoder arena {} KiB (without reuse {} KiB), head arena {} KiB; f16 head class agreement {:.4}",
        p16.arena_bytes / 1024,
        p16.bytes_without_reuse() / 1024,
        h16.arena_bytes / 1024,
        agree
    );
}

#[test]
fn letsmap_lite_int8_plan_runs_integer_convolutions_and_matches_tract() {
    let w = scratch("cuda-plan-int8");
    let q = w.join("letsmap-int8");
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &[
            "quantize",
            "--bundle",
            letsmap().to_str().unwrap(),
            "--calib-source",
            "sim:?seed=5",
            "--frames",
            "16",
            "--method",
            "minmax",
            "--out",
            q.to_str().unwrap(),
        ],
    );
    assert!(ok, "quantize failed:\n{so}\n{se}");
    for (file, shape, seed, lo, hi) in [
        ("encoder.onnx", vec![1, 3, 128, 384], 3, -2.0, 2.0),
        ("bev_head.onnx", vec![1, 64, 80, 80], 4, 0.0, 4.0),
    ] {
        let path = q.join(file);
        let x = noise(shape.iter().product(), seed, lo, hi);
        let want = tract_run(&path, &shape, &x);
        let plan = lower(&path, &[], DType::F32);
        let counts = plan.kernel_counts();
        // every convolution runs on int8; quantize only at the network input, requantization
        // otherwise fused into the convolution before
        let n_int8 = counts
            .iter()
            .filter(|(k, _)| *k == "conv_i8_imma")
            .map(|(_, n)| *n)
            .sum::<usize>();
        assert!(n_int8 >= 4, "{file}: {counts:?}");
        assert!(
            !counts.iter().any(|(k, _)| k.starts_with("conv_f16")),
            "{file}: float convolution left: {counts:?}"
        );
        let quantizes = counts
            .iter()
            .filter(|(k, _)| k.starts_with("quantize"))
            .map(|(_, n)| *n)
            .sum::<usize>();
        assert_eq!(quantizes, 1, "{file}: {counts:?}");
        let got = &reference::run(&plan, &[&x])[0];
        // tract simulates Q/DQ in float: rare one-step differences at rounding boundaries
        let d = max_diff(got, &want);
        let scale = max_abs(&want);
        let close = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| (*a - *b).abs() <= 1e-3 * scale)
            .count() as f64
            / got.len() as f64;
        assert!(
            close > 0.99,
            "{file}: {close} of outputs within 1e-3 (max diff {d} of {scale})"
        );
        if file == "bev_head.onnx" {
            let agree = argmax_agreement(got, &want, 8);
            assert!(agree > 0.995, "int8 head class agreement {agree}");
        }
        // f16 float storage around the int8 convolutions (what the GPU runs)
        let p16 = lower(&path, &[], DType::F16);
        let g16 = &reference::run(&p16, &[&x])[0];
        let d16 = max_diff(g16, &want);
        assert!(
            d16 <= 0.05 * scale,
            "{file}: f16/int8 max diff {d16} of {scale}"
        );
    }
}

#[test]
fn mobilenetv3_plans_match_onnxruntime() {
    let Some(shared) = shared_dir() else { return };
    let models = shared.join("data/onnx/models");
    let (shape, x) = npy::read_f32(&models.join("cls_input_4x3x48x192.npy")).unwrap();
    let inputs = [("x", shape.clone())];
    // FP16 tolerance: rounding activations to f16 before a QuantizeLinear moves some values
    // across a quantization step, so the QDQ model gets more room.
    for (file, reference_out, tol, tol16) in [
        (
            "ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "cls_output_fp32_4x2.npy",
            1e-4,
            0.01,
        ),
        (
            "ch_ppocr_mobile_v2.0_cls_int8_qdq.onnx",
            "cls_output_int8_qdq_4x2.npy",
            0.02,
            0.05,
        ),
    ] {
        let path = models.join(file);
        let (_, want) = npy::read_f32(&models.join(reference_out)).unwrap();
        let plan = lower(&path, &inputs, DType::F32);
        let got = &reference::run(&plan, &[&x])[0];
        let d = max_diff(got, &want);
        eprintln!(
            "{file}: {} steps {:?}; max |Δp| vs ONNX Runtime {d}",
            plan.steps.len(),
            plan.kernel_counts()
        );
        assert!(d <= tol, "{file}: max |Δp| {d} > {tol}");
        let p16 = lower(&path, &inputs, DType::F16);
        let g16 = &reference::run(&p16, &[&x])[0];
        let d16 = max_diff(g16, &want);
        eprintln!("{file} f16: max |Δp| {d16}");
        assert!(d16 <= tol16, "{file} f16: max |Δp| {d16} > {tol16}");
        assert_eq!(
            reference::argmax(&transpose2(g16), 2, 4),
            reference::argmax(&transpose2(&want), 2, 4)
        );
    }
}

/// (4, 2) row-major → (2, 4) so that argmax over classes is over planes.
fn transpose2(v: &[f32]) -> Vec<f32> {
    (0..2)
        .flat_map(|c| (0..4).map(move |i| v[i * 2 + c]))
        .collect()
}

#[test]
fn unsupported_ops_are_refused_at_load_with_the_list() {
    let Some(shared) = shared_dir() else { return };
    // a conformance case with an op outside the set (TopK)
    let case = node_case(&shared, "test_top_k");
    match lower_onnx(&case.join("model.onnx"), &[], &LowerOptions::default()) {
        Err(e @ LowerError::Unsupported { .. }) => {
            let msg = e.to_string();
            let LowerError::Unsupported { path, nodes, .. } = e else {
                unreachable!()
            };
            assert!(msg.contains("TopK ×1"), "{msg}");
            assert!(path.ends_with("model.onnx"));
            assert!(nodes.iter().any(|n| n.starts_with("TopK")), "{nodes:?}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|p| p.steps.len())),
    }
}

/// The AFV discriminator's shape (the CUDA backend lowers it in F32 and reads `a1` and `z2`
/// from the plan's outputs): Conv 4/2 → LeakyReLU (exposed `a1`) → Conv 4/2 (exposed `z2`) →
/// LeakyReLU → Flatten → Linear. Every output of the plan on the CPU twins matches tract, and
/// the AFV score computed from the plan's activations matches the one from tract's.
#[test]
fn afv_discriminator_plan_matches_tract_on_every_output() {
    let (c1, c2) = (8usize, 16usize);
    let (bytes, w3) = afv_discriminator_onnx(c1, c2);
    let work = scratch("afv-plan");
    let path = work.join("d.onnx");
    std::fs::write(&path, bytes).unwrap();
    let x = noise(28 * 28, 8, -1.0, 1.0);

    let want = tract_outputs(&path, &[1, 1, 28, 28], &x);
    assert_eq!(want.len(), 3);

    let plan = lower(&path, &[], DType::F32);
    // conv1 carries its LeakyReLU; conv2 does not (z2 is an output before the activation)
    let conv_acts: Vec<i32> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.op {
            bevrt_kernels::plan::Op::Conv { p, .. } => Some(p.act),
            _ => None,
        })
        .collect();
    let leaky = bevrt_kernels::params::act::LEAKY_RELU;
    assert_eq!(&conv_acts[..2], &[leaky, 0], "{:#?}", plan.kernel_counts());
    let got = reference::run(&plan, &[&x]);
    assert_eq!(got.len(), 3);
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), w.len(), "output {k}");
        let tol = 1e-5 * max_abs(w).max(1e-3);
        assert!(
            max_diff(g, w) <= tol,
            "output {k}: {} > {tol}",
            max_diff(g, w)
        );
    }

    let geom = bevrt_runtime::afv::AfvGeometry::k4s2(c1, (14, 14), c2, 0.2, 1);
    let score = |a1: &[f32], z2: &[f32]| {
        let mut delta = vec![0f32; geom.z2_len()];
        let mut u = vec![0f32; geom.dim()];
        bevrt_runtime::afv::afv_score(&geom, a1, z2, &w3, &mut delta, &mut u);
        u
    };
    let (ug, uw) = (score(&got[1], &got[2]), score(&want[1], &want[2]));
    assert!(max_diff(&ug, &uw) <= 1e-5 * max_abs(&uw));
}
