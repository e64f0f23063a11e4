//! `bevrt run` applies a changed calibration file between frames without restarting, and
//! refuses a broken one while keeping the previous calibration.

use bevrt_models::Bundle;
use bevrt_runtime::source::replay::{FrameEncoding, RecordingInfo, RecordingWriter};
use bevrt_runtime::{backend, pipeline, sink, source};
use bevrt_tests::*;
use std::time::Duration;

const CALIB: &str = r#"
[camera]
width = 320
height = 120
fx = 300.0
fy = 300.0
cx = 160.0
cy = 60.0
model = "pinhole"
dist = [0.0, 0.0, 0.0, 0.0, 0.0]

[extrinsics]
height = 1.5
pitch = 5.0
roll = 0.0
yaw = 0.0
"#;

#[test]
fn calibration_change_applied_while_running() {
    let Some(shared) = shared_dir() else { return };
    let dir = scratch("reload");
    let b = classifier_bundle(
        &shared,
        "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        &dir.join("b"),
    );
    let rec = dir.join("rec");
    let calib_path = rec.join("calibration.toml");
    let mut w = RecordingWriter::create(
        &rec,
        RecordingInfo {
            format: 1,
            width: 320,
            height: 120,
            pixel_format: "gray8".into(),
            encoding: FrameEncoding::Raw,
            fps: 50.0,
            calibration: Some("calibration.toml".into()),
            ground_truth: None,
        },
    )
    .unwrap();
    for i in 0..60u64 {
        w.write_frame(i * 20_000_000, &vec![(i * 4) as u8; 320 * 120], None)
            .unwrap();
    }
    w.finish().unwrap();
    std::fs::write(&calib_path, CALIB).unwrap();

    let bundle = Bundle::load(&b).unwrap();
    // Paced at 50 fps: 60 frames take 1.2 s, during which the file changes twice.
    let src = source::open(&format!("replay:{}?fps=50", rec.display())).unwrap();
    assert_eq!(src.calibration_path(), Some(calib_path.clone()));
    let be = backend::open(backend::BackendKind::Cpu, &bundle, &Default::default()).unwrap();
    let sinks = sink::build(
        &[sink::SinkKind::Jsonl],
        &dir.join("out"),
        &bundle.manifest,
        1,
    )
    .unwrap();
    let opts = pipeline::PipelineOptions {
        calibration: src.calibration_path(),
        ..Default::default()
    };
    let p2 = calib_path.clone();
    let editor = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(350));
        std::fs::write(&p2, CALIB.replace("height = 1.5", "height = 1.62")).unwrap();
        std::thread::sleep(Duration::from_millis(450));
        std::fs::write(&p2, CALIB.replace("fx = 300.0", "fx = \"oops\"")).unwrap();
    });
    let r = pipeline::run(src, be, sinks, &opts).unwrap();
    editor.join().unwrap();
    assert_eq!(r.frames_processed, 60, "no frame lost: {r:?}");
    assert_eq!(r.calibration_reloads, 1, "{r:?}");
    assert_eq!(r.calibration_errors, 1, "{r:?}");
}
