//! Whole models lowered to kernel plans and run step by step on the emulated kernels, through
//! the launches `bevrt_kernels::exec::resolve_launches` resolves for the GPU runner (same
//! kernel names, grid shapes and argument lists), against the CPU twins on the same arena:
//! what `bevrt-device-check` does on a GPU. int8 steps bit-exact where the kernel can be
//! (else 1 LSB, `reference::int8_tolerance`), float steps within 1e-3 of the tensor's largest
//! value.

use bevrt_kernels::exec::Int8Gemm;
use bevrt_kernels::plan::{DType, KernelPlan, Op};
use bevrt_kernels::reference;
use bevrt_kernels_emu::{EmuOptions, EmuPlan};
use bevrt_runtime::lower::{LowerOptions, lower_onnx};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn shared() -> Option<PathBuf> {
    bevrt_tests::shared_dir().filter(|p| p.join("data/onnx/models").is_dir())
}

fn lower(path: &Path, shape: Option<(&str, Vec<usize>)>) -> KernelPlan {
    let shapes: Vec<(&str, Vec<usize>)> = shape.into_iter().collect();
    lower_onnx(path, &shapes, &LowerOptions { float: DType::F16 })
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every step of `plan` on the emulated kernels against its twin; returns the steps checked.
fn check_steps(plan: &KernelPlan, int8: Int8Gemm) -> usize {
    let mut emu = EmuPlan::load(plan.clone(), int8).unwrap_or_else(|e| panic!("{e}"));
    let n = plan.tensors[plan.inputs[0]].elems();
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 + 13) % 257) as f32 / 64.0 - 2.0)
        .collect();
    emu.set_input(0, &x);
    for (i, step) in plan.steps.iter().enumerate() {
        let mut host = emu.arena().to_vec();
        emu.launch_step(i, EmuOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        reference::run_step(plan, step, &mut host);
        let c = reference::compare_step(plan, step, &host, emu.arena());
        assert!(
            c.pass,
            "{int8:?} step {i} {} ({:?}): error {} (int8 in LSB)",
            step.name, step.op, c.err
        );
    }
    plan.steps.len()
}

fn has_int8_gemm(plan: &KernelPlan) -> bool {
    plan.steps
        .iter()
        .any(|s| matches!(&s.op, Op::Conv { wsum: Some(_), .. }))
}

#[test]
fn letsmap_lite_encoder_and_head_run_on_the_emulated_kernels() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    // the full-label bundle (plain view transform), and the 1 % one's encoder (its lift conv
    // with the per-position bias, an Add after the convolution; its head has the same shape)
    for (name, files) in [
        ("letsmap-lite", &["encoder.onnx", "bev_head.onnx"][..]),
        ("letsmap-lite-1pct", &["encoder.onnx"][..]),
    ] {
        let b = repo().join("models/bundles").join(name);
        for f in files {
            let plan = lower(&b.join(f), None);
            let steps = check_steps(&plan, Int8Gemm::Imma);
            eprintln!("{name} {f}: {steps} steps, {:?}", plan.kernel_counts());
        }
    }
}

#[test]
fn mobilenet_fp32_and_int8_qdq_run_on_the_emulated_kernels() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let Some(sh) = shared() else { return };
    let m = sh.join("data/onnx/models");
    for f in [
        "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "ch_ppocr_mobile_v2.0_cls_int8_qdq.onnx",
    ] {
        let plan = lower(&m.join(f), Some(("x", vec![1, 3, 48, 192])));
        let variants: &[Int8Gemm] = if has_int8_gemm(&plan) {
            &[Int8Gemm::Imma, Int8Gemm::Dp4a]
        } else {
            &[Int8Gemm::Imma]
        };
        for v in variants {
            let steps = check_steps(&plan, *v);
            eprintln!("{f} {v:?}: {steps} steps, {:?}", plan.kernel_counts());
        }
    }
}

/// An AFV bundle's whole GPU path, emulated: the discriminator lowered in FP32 as the CUDA
/// backend lowers it (f32 activations: `conv_direct_f32`, `unary_f32`), its `a1` and `z2`
/// outputs into `afv_delta` + `afv_conv_grad`, then `fisher_normalise`, against what the CPU
/// backend computes (tract for the network, `bevrt_runtime::afv` for the tail): within 1e-4.
#[test]
fn afv_discriminator_and_fisher_tail_equal_the_cpu_backend() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    use bevrt_kernels::launch::AfvDims;
    use bevrt_runtime::afv::{AfvGeometry, afv_score, fisher_normalise};
    use bevrt_tests::{afv_discriminator_onnx, noise};
    let (c1, c2) = (8usize, 16usize);
    let (bytes, w3) = afv_discriminator_onnx(c1, c2);
    let dir = std::env::temp_dir().join(format!("bevrt-emu-afv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("d.onnx");
    std::fs::write(&path, bytes).unwrap();
    let x = noise(28 * 28, 8, -1.0, 1.0);

    // the CPU backend: tract runs the network, bevrt_runtime::afv the tail
    let cpu = bevrt_tests::tract_outputs(&path, &[1, 1, 28, 28], &x);
    let g = AfvGeometry::k4s2(c1, (14, 14), c2, 0.2, 2);
    let mean = noise(g.dim(), 9, -0.01, 0.01);
    let diag = noise(g.dim(), 10, 0.01, 0.2);
    let mut delta = vec![0f32; g.z2_len()];
    let mut want = vec![0f32; g.dim()];
    afv_score(&g, &cpu[1], &cpu[2], &w3, &mut delta, &mut want);
    fisher_normalise(&mut want, &mean, &diag, 1e-6, true, true);

    // the CUDA backend's kernels, emulated
    let plan = lower_onnx(&path, &[], &LowerOptions { float: DType::F32 }).unwrap();
    let mut emu = EmuPlan::load(plan, Int8Gemm::Imma).unwrap_or_else(|e| panic!("{e}"));
    let kernels: Vec<&str> = emu.launches().iter().map(|l| l.kernel).collect();
    assert!(kernels.iter().all(|k| k.ends_with("_f32")), "{kernels:?}");
    emu.set_input(0, &x);
    emu.run(EmuOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let outs: Vec<Vec<f32>> = (0..3).map(|k| emu.output(k)).collect();
    for k in 0..3 {
        let scale = cpu[k].iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let e = outs[k]
            .iter()
            .zip(&cpu[k])
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        assert!(e <= 1e-5, "discriminator output {k}: {e}");
    }
    let d = AfvDims::from(&g);
    let mut u = vec![0f32; g.dim()];
    let mut dd = vec![0f32; g.z2_len()];
    bevrt_kernels_emu::afv_score(&d, &outs[1], &outs[2], &w3, &mut dd, &mut u).unwrap();
    bevrt_kernels_emu::fisher_normalise(&mut u, &mean, &diag, 1e-6, true, true).unwrap();
    let e = u
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        e <= 1e-4,
        "AFV vector: max difference {e} over {} values",
        g.dim()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
