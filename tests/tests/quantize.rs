//! `bevrt-tool quantize` end to end: the real MobileNetV3 classifier against ONNX Runtime's
//! own QDQ model, letsmap-lite's mIoU after INT8, and refusals that leave nothing behind.

use bevrt_models::Bundle;
use bevrt_runtime::backend::cpu::CpuNetwork;
use bevrt_runtime::npy;
use bevrt_tests::*;
use std::path::{Path, PathBuf};

const CLS: [usize; 4] = [3, 48, 192, 1];

/// Deterministic variations of the four real text crops (already preprocessed to [-1, 1]):
/// half turned 180° (the other class), contrast, brightness, horizontal shift, noise.
fn augmented(real: &[f32], n: usize, seed: u64) -> Vec<f32> {
    let (c, h, w) = (CLS[0], CLS[1], CLS[2]);
    let per = c * h * w;
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut u = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f32 / (1u64 << 53) as f32
    };
    let mut out = Vec::with_capacity(n * per);
    for _ in 0..n {
        let i = ((u() * 4.0) as usize).min(3);
        let src = &real[i * per..(i + 1) * per];
        let turn = u() < 0.5;
        let (gain, off) = (0.6 + 0.8 * u(), -0.3 + 0.6 * u());
        let shift = (u() * 25.0) as isize - 12;
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let (sy, sx) = if turn { (h - 1 - y, w - 1 - x) } else { (y, x) };
                    let sx = (sx as isize - shift).rem_euclid(w as isize) as usize;
                    let noise = (u() + u() + u() - 1.5) * 0.1;
                    let v = src[ch * h * w + sy * w + sx] * gain + off + noise;
                    out.push(v.clamp(-1.0, 1.0));
                }
            }
        }
    }
    out
}

fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    let mut f = std::fs::File::create(path).unwrap();
    npy::write_f32(&mut f, shape, data).unwrap();
}

fn tract_outputs(model: &Path, inputs: &[f32]) -> Vec<[f32; 2]> {
    let per = CLS[0] * CLS[1] * CLS[2];
    let mut net = CpuNetwork::load(model, &[1, CLS[0], CLS[1], CLS[2]]).expect("loads");
    let mut out = net.output_buffers();
    inputs
        .chunks_exact(per)
        .map(|x| {
            net.run(x, &mut out).unwrap();
            [out[0].data[0], out[0].data[1]]
        })
        .collect()
}

/// (argmax agreement, mean |p - p_fp32|) against FP32.
fn agreement(q: &[[f32; 2]], fp: &[[f32; 2]]) -> (f64, f64) {
    let am = |p: &[f32; 2]| usize::from(p[1] > p[0]);
    let agree = q.iter().zip(fp).filter(|(a, b)| am(a) == am(b)).count();
    let dp: f64 = q
        .iter()
        .zip(fp)
        .map(|(a, b)| ((a[0] - b[0]).abs() + (a[1] - b[1]).abs()) as f64 / 2.0)
        .sum();
    (agree as f64 / q.len() as f64, dp / q.len() as f64)
}

/// ONNX Runtime's outputs (N x 2) for `models` on the batch in `inputs.npy`, one at a time.
fn ort_outputs(dir: &Path, inputs: &Path, models: &[PathBuf]) -> Vec<Vec<[f32; 2]>> {
    let script = dir.join("ort_eval.py");
    std::fs::write(
        &script,
        "import sys, numpy as np, onnxruntime as ort\n\
         x = np.load(sys.argv[1])\n\
         for k, f in enumerate(sys.argv[2:]):\n\
         \x20   s = ort.InferenceSession(f, providers=['CPUExecutionProvider'])\n\
         \x20   n = s.get_inputs()[0].name\n\
         \x20   y = np.concatenate([s.run(None, {n: x[i:i+1]})[0] for i in range(len(x))])\n\
         \x20   np.save(f'{sys.argv[1]}.out{k}.npy', y.astype(np.float32))\n",
    )
    .unwrap();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script).arg(inputs);
    for m in models {
        cmd.arg(m);
    }
    let o = cmd.output().expect("python3");
    assert!(
        o.status.success(),
        "onnxruntime: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (0..models.len())
        .map(|k| {
            let (_, v) =
                npy::read_f32(&PathBuf::from(format!("{}.out{k}.npy", inputs.display()))).unwrap();
            v.chunks_exact(2).map(|c| [c[0], c[1]]).collect()
        })
        .collect()
}

#[test]
fn mobilenetv3_int8_is_at_least_as_faithful_as_onnxruntimes_qdq_model() {
    let Some(shared) = shared_dir() else { return };
    let dir = scratch("quant-cls");
    let models = shared.join("data/onnx/models");
    let fp32 = classifier_bundle(
        &shared,
        "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        &dir.join("fp32"),
    );
    let (_, real) = npy::read_f32(&models.join("cls_input_4x3x48x192.npy")).unwrap();
    let per = CLS[0] * CLS[1] * CLS[2];
    // Calibration and evaluation never share a tensor: different augmentation seeds, and the
    // four real crops are only evaluated.
    let calib = augmented(&real, 64, 1);
    let mut eval = real.clone();
    eval.extend(augmented(&real, 508, 2));
    write_npy(
        &dir.join("calib.npy"),
        &[64, CLS[0], CLS[1], CLS[2]],
        &calib,
    );
    let eval_path = dir.join("eval.npy");
    write_npy(
        &eval_path,
        &[eval.len() / per, CLS[0], CLS[1], CLS[2]],
        &eval,
    );
    let out = dir.join("int8");
    let report = dir.join("report.json");
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &[
            "quantize",
            "--bundle",
            fp32.to_str().unwrap(),
            "--calib-data",
            dir.join("calib.npy").to_str().unwrap(),
            // ONNX Runtime quantize_static's defaults (MinMax, uint8 activations) with
            // per-channel weights; the note tabulates every method.
            "--method",
            "minmax",
            "--activations",
            "uint8",
            "--per-channel",
            "--report",
            report.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "quantize failed: {so}{se}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    // 53 Conv + the classifier MatMul + the residual Adds; ops it does not quantize are named
    assert!(r["quantized_layers"].as_array().unwrap().len() >= 54, "{r}");
    let float_ops = r["float_ops"].to_string();
    assert!(
        float_ops.contains("MaxPool") && float_ops.contains("HardSigmoid"),
        "{float_ops}"
    );
    let b = Bundle::load(&out).expect("INT8 bundle verifies");
    let q_model = b.model_path("model").unwrap();
    let summary = bevrt_models::inspect(&q_model).unwrap();
    assert!(
        summary.ops.iter().any(|o| o == "QuantizeLinear"),
        "{:?}",
        summary.ops
    );
    assert!(summary.opset >= 13);
    // INT8 weights: the file is far smaller than the FP32 one
    let (qs, fs) = (
        std::fs::metadata(&q_model).unwrap().len(),
        std::fs::metadata(models.join("ch_ppocr_mobile_v2.0_cls_infer.onnx"))
            .unwrap()
            .len(),
    );
    assert!(qs * 2 < fs, "INT8 file {qs} B vs FP32 {fs} B");

    // Our runtime on our INT8 file, against FP32 on the same runtime.
    let fp = tract_outputs(&models.join("ch_ppocr_mobile_v2.0_cls_infer.onnx"), &eval);
    let ours = tract_outputs(&q_model, &eval);
    let (agree, dp) = agreement(&ours, &fp);
    eprintln!("bevrt INT8 (tract): argmax agreement {agree:.3}, mean |dp| {dp:.4}");

    // The four real inputs also have ONNX Runtime's published outputs (no ORT needed).
    let (_, ort_fp) = npy::read_f32(&models.join("cls_output_fp32_4x2.npy")).unwrap();
    let (_, ort_q) = npy::read_f32(&models.join("cls_output_int8_qdq_4x2.npy")).unwrap();
    let pairs = |v: &[f32]| -> Vec<[f32; 2]> { v.chunks_exact(2).map(|c| [c[0], c[1]]).collect() };
    let (a4_ort, dp4_ort) = agreement(&pairs(&ort_q), &pairs(&ort_fp));
    let (a4, dp4) = agreement(&ours[..4], &pairs(&ort_fp));
    eprintln!(
        "4 real inputs: ours {a4:.2} / {dp4:.4}, ONNX Runtime QDQ {a4_ort:.2} / {dp4_ort:.4}"
    );
    assert!(
        a4 >= a4_ort,
        "real inputs: argmax agreement {a4} < ONNX Runtime's {a4_ort}"
    );

    if !bevrt_tests::onnxruntime_available() {
        eprintln!(
            "SKIP (onnxruntime not importable): ONNX Runtime comparison on {} inputs",
            fp.len()
        );
        return;
    }
    let ort = ort_outputs(
        &dir,
        &eval_path,
        &[
            models.join("ch_ppocr_mobile_v2.0_cls_infer.onnx"),
            models.join("ch_ppocr_mobile_v2.0_cls_int8_qdq.onnx"),
            q_model.clone(),
        ],
    );
    let (ort_agree, ort_dp) = agreement(&ort[1], &ort[0]);
    let (ours_in_ort, ours_in_ort_dp) = agreement(&ort[2], &ort[0]);
    eprintln!(
        "{} inputs: ONNX Runtime's QDQ model agreement {ort_agree:.3}, mean |dp| {ort_dp:.4}; \
         ours in ONNX Runtime {ours_in_ort:.3} / {ours_in_ort_dp:.4}",
        fp.len()
    );
    assert!(
        agree >= ort_agree,
        "argmax agreement {agree} < ONNX Runtime's {ort_agree}"
    );
    assert!(
        dp <= ort_dp,
        "mean |p - p_fp32| {dp} > ONNX Runtime's {ort_dp}"
    );
    // ONNX Runtime runs our file and agrees with our runtime on it
    let (same, d) = agreement(&ort[2], &ours);
    assert!(
        same >= 0.99 && d < 0.01,
        "ORT vs tract on our INT8 file: {same} / {d}"
    );
}

#[test]
fn letsmap_int8_keeps_miou_within_one_point() {
    let dir = scratch("quant-bev");
    let bundle = workspace_root().join("models/bundles/letsmap-lite");
    sim_record(11, 100, &dir.join("calib"));
    sim_record(1000, 40, &dir.join("eval/r"));
    let out = dir.join("int8");
    let report = dir.join("report.json");
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &[
            "quantize",
            "--bundle",
            bundle.to_str().unwrap(),
            "--calib-data",
            dir.join("calib").to_str().unwrap(),
            "--method",
            "entropy",
            "--sensitivity",
            "--sensitivity-frames",
            "20",
            "--eval-data",
            dir.join("eval").to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "quantize failed: {so}{se}");
    assert!(
        so.contains("sensitivity") && so.contains("encoder/enc1"),
        "{so}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let (a, b) = (
        r["fp32_miou"].as_f64().unwrap(),
        r["int8_miou"].as_f64().unwrap(),
    );
    eprintln!("letsmap-lite on 40 held-out frames: FP32 mIoU {a:.2}, INT8 {b:.2}");
    assert!(
        a > 40.0,
        "FP32 baseline {a} (shipped bundle should score well)"
    );
    assert!((a - b).abs() <= 1.0, "INT8 mIoU {b} vs FP32 {a}");
    assert_eq!(
        r["sensitivity"].as_array().unwrap().len(),
        9,
        "one row per conv"
    );
    assert_eq!(r["calibration_frames"], 100);
    let m = Bundle::load(&out).unwrap().manifest;
    assert_eq!(m.name, "letsmap-lite-int8");
    assert!(m.provenance.get("quantization").is_some());

    // --auto-keep 2 keeps the two most sensitive layers FP32, --keep-fp names one
    let out2 = dir.join("int8-keep");
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &[
            "quantize",
            "--bundle",
            bundle.to_str().unwrap(),
            "--calib-data",
            dir.join("calib").to_str().unwrap(),
            "--frames",
            "20",
            "--method",
            "minmax",
            "--auto-keep",
            "2",
            "--keep-fp",
            "head/head4",
            "--out",
            out2.to_str().unwrap(),
        ],
    );
    assert!(ok, "{so}{se}");
    let m = Bundle::load(&out2).unwrap().manifest;
    let kept = m.provenance["quantization"]["kept_fp"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(kept.iter().any(|k| k.as_str() == Some("head/head4")));

    // the INT8 bundle runs in the bench beside its FP32 original, with integer kernels too
    for extra in [None, Some("--int8-kernels")] {
        let mut args = vec![
            "bench",
            "--bundle",
            out.to_str().unwrap(),
            "--baseline",
            bundle.to_str().unwrap(),
            "--frames",
            "10",
            "--warmup",
            "2",
            "--threads",
            "1",
            "--backend",
            "cpu",
        ];
        args.extend(extra);
        let (ok, so, se) = run(&bin("bevrt"), &args);
        assert!(ok && so.contains("this / baseline"), "{so}{se}");
    }
}

#[test]
fn bad_calibration_input_is_refused_and_nothing_is_written() {
    let Some(shared) = shared_dir() else { return };
    let dir = scratch("quant-bad");
    let fp32 = classifier_bundle(
        &shared,
        "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        &dir.join("fp32"),
    );
    let out = dir.join("out");
    let quant = |extra: &[&str]| {
        let method = if extra.contains(&"uint8") {
            "entropy"
        } else {
            "minmax"
        };
        let mut a = vec![
            "quantize",
            "--bundle",
            fp32.to_str().unwrap(),
            "--method",
            method,
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        let (ok, so, se) = run(&bin("bevrt-tool"), &a);
        assert!(!ok, "should fail: {so}{se}");
        assert!(!out.exists(), "nothing may be written on failure");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".out"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        se
    };
    let e = quant(&[]);
    assert!(e.contains("no calibration data"), "{e}");
    // tensors of another shape than the bundle's input
    let wrong = dir.join("wrong.npy");
    write_npy(&wrong, &[2, 3, 32, 32], &vec![0.0; 2 * 3 * 32 * 32]);
    let e = quant(&["--calib-data", wrong.to_str().unwrap()]);
    assert!(
        e.contains("wrong.npy") && e.contains("does not match"),
        "{e}"
    );
    let e = quant(&["--calib-data", dir.join("missing").to_str().unwrap()]);
    assert!(e.contains("missing") && e.contains("not found"), "{e}");
    let ok_npy = shared.join("data/onnx/models/cls_input_4x3x48x192.npy");
    let e = quant(&[
        "--calib-data",
        ok_npy.to_str().unwrap(),
        "--keep-fp",
        "NoSuchNode",
    ]);
    assert!(e.contains("NoSuchNode"), "{e}");
    let e = quant(&[
        "--calib-data",
        ok_npy.to_str().unwrap(),
        "--activations",
        "uint8",
    ]);
    assert!(e.contains("entropy"), "{e}");
    // a BEV bundle calibrated with frames of another camera size
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    image::RgbImage::new(64, 48)
        .save(imgs.join("a.png"))
        .unwrap();
    let bev = workspace_root().join("models/bundles/letsmap-lite");
    let (ok, _, e) = run(
        &bin("bevrt-tool"),
        &[
            "quantize",
            "--bundle",
            bev.to_str().unwrap(),
            "--calib-data",
            imgs.to_str().unwrap(),
            "--method",
            "minmax",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(!ok && e.contains("64x48") && e.contains("384x128"), "{e}");
    assert!(!out.exists());
}
