//! The real MobileNetV3 text-orientation classifier, made into bundles with `bundle init`,
//! against ONNX Runtime's outputs for the same four inputs.

use bevrt_models::Bundle;
use bevrt_runtime::backend::cpu::CpuNetwork;
use bevrt_runtime::npy;
use bevrt_tests::*;

fn check(model_file: &str, reference: &str, tol: f32) {
    let Some(shared) = shared_dir() else { return };
    let dir = scratch(&format!("cls-{}", model_file.len()));
    let b = classifier_bundle(&shared, model_file, &dir.join("bundle"));
    let bundle = Bundle::load(&b).expect("bundle loads");
    let models = shared.join("data/onnx/models");
    let (shape, input) = npy::read_f32(&models.join("cls_input_4x3x48x192.npy")).unwrap();
    let (_, want) = npy::read_f32(&models.join(reference)).unwrap();
    assert_eq!(shape, vec![4, 3, 48, 192]);
    let mut net = CpuNetwork::load(
        &bundle.model_path("model").unwrap(),
        &bundle.manifest.input.shape(),
    )
    .expect("loads");
    let mut out = net.output_buffers();
    let per = 3 * 48 * 192;
    let mut worst = 0f32;
    for i in 0..4 {
        net.run(&input[i * per..(i + 1) * per], &mut out).unwrap();
        for k in 0..2 {
            let d = (out[0].data[k] - want[i * 2 + k]).abs();
            worst = worst.max(d);
            assert!(
                d <= tol,
                "{model_file} sample {i} class {k}: {} vs ONNX Runtime {} (tolerance {tol})",
                out[0].data[k],
                want[i * 2 + k]
            );
        }
    }
    eprintln!("{model_file}: largest difference to ONNX Runtime {worst:e}");
}

#[test]
fn fp32_matches_onnxruntime_within_1e4() {
    check(
        "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "cls_output_fp32_4x2.npy",
        1e-4,
    );
}

#[test]
fn int8_qdq_matches_onnxruntime_within_one_step() {
    check(
        "ch_ppocr_mobile_v2.0_cls_int8_qdq.onnx",
        "cls_output_int8_qdq_4x2.npy",
        // one quantization step of the model's output, plus f32 rounding of that step
        1.0 / 255.0 + 1e-6,
    );
}
