//! Bad input gives one clear error naming the file and the problem, or a counted skip; never a
//! panic; a running pipeline goes on.

use bevrt_models::Bundle;
use bevrt_runtime::source::{self, SourceError};
use bevrt_runtime::{backend, pipeline, sink};
use bevrt_tests::*;
use std::path::Path;

fn assert_clean_failure(args: &[&str], must_contain: &[&str]) {
    let (ok, so, se) = run(&bin("bevrt"), args);
    assert!(!ok, "bevrt {args:?} should fail; stdout {so}");
    assert!(!se.contains("panicked"), "bevrt {args:?} panicked: {se}");
    let err_line = se.lines().find(|l| l.starts_with("error:")).unwrap_or("");
    for m in must_contain {
        assert!(err_line.contains(m), "error for {args:?} lacks '{m}': {se}");
    }
}

fn bundle(name: &str) -> Option<std::path::PathBuf> {
    let shared = shared_dir()?;
    let dir = scratch(name).keep();
    Some(classifier_bundle(
        &shared,
        "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        &dir.join("b"),
    ))
}

#[test]
fn missing_bundle_and_missing_model_file() {
    assert_clean_failure(
        &[
            "run",
            "--bundle",
            "/nonexistent/bundle",
            "--source",
            "sim:?seed=1",
        ],
        &["/nonexistent/bundle"],
    );
    let Some(b) = bundle("missing") else { return };
    std::fs::remove_file(b.join("model.onnx")).unwrap();
    let e = Bundle::load(&b).unwrap_err().to_string();
    assert!(e.contains("model.onnx") && e.contains("cannot read"), "{e}");
}

#[test]
fn hash_mismatch_names_the_file() {
    let Some(b) = bundle("hash") else { return };
    let p = b.join("model.onnx");
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xFF;
    std::fs::write(&p, bytes).unwrap();
    let e = Bundle::load(&b).unwrap_err().to_string();
    assert!(
        e.contains("model.onnx") && e.contains("sha256 mismatch"),
        "{e}"
    );
    assert_clean_failure(
        &[
            "run",
            "--bundle",
            b.to_str().unwrap(),
            "--source",
            "sim:?seed=1",
        ],
        &["model.onnx", "sha256 mismatch"],
    );
}

/// Replace the model with `bytes` and fix the digest, so loading reaches the ONNX parser.
fn with_model_bytes(b: &Path, bytes: &[u8]) {
    std::fs::write(b.join("model.onnx"), bytes).unwrap();
    let digest = bevrt_models::sha256_file(&b.join("model.onnx")).unwrap();
    let mut m = Bundle::load_unverified(b).unwrap().manifest;
    for f in m.models.iter_mut().filter(|f| f.file == "model.onnx") {
        f.sha256 = digest.clone();
    }
    std::fs::write(b.join("bundle.toml"), m.to_toml()).unwrap();
}

#[test]
fn truncated_and_corrupted_onnx() {
    let Some(b) = bundle("trunc") else { return };
    let full = std::fs::read(b.join("model.onnx")).unwrap();
    with_model_bytes(&b, &full[..full.len() / 3]);
    let bundle = Bundle::load(&b).expect("digest was fixed");
    let e = backend::open(backend::BackendKind::Cpu, &bundle, &Default::default())
        .err()
        .expect("truncated model must not load")
        .to_string();
    assert!(e.contains("model.onnx"), "{e}");
    assert_clean_failure(
        &[
            "run",
            "--bundle",
            b.to_str().unwrap(),
            "--source",
            "sim:?seed=1",
            "--backend",
            "cpu",
        ],
        &["model.onnx"],
    );
    with_model_bytes(&b, b"this is not a protobuf at all \xff\xfe\x00\x01");
    let e = bevrt_models::inspect(&b.join("model.onnx"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.onnx") && e.contains("cannot load ONNX model"),
        "{e}"
    );
}

#[test]
fn malformed_manifest_names_file_and_field() {
    let Some(b) = bundle("manifest") else { return };
    let m = b.join("bundle.toml");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replace("width = 192", "width = \"wide\"")).unwrap();
    let e = Bundle::load(&b).unwrap_err().to_string();
    assert!(e.contains("bundle.toml") && e.contains("width"), "{e}");
    std::fs::write(&m, "this is = = not toml").unwrap();
    assert_clean_failure(
        &["info", "--bundle", b.to_str().unwrap()],
        &["bundle.toml", "malformed manifest"],
    );
}

#[test]
fn unknown_scheme_and_missing_v4l_device() {
    let e = source::open("rtmp://camera/1").err().unwrap();
    assert!(
        e.to_string().contains("unknown source scheme 'rtmp'"),
        "{e}"
    );
    let e = source::open("v4l:/dev/video97?width=640&height=480")
        .err()
        .unwrap();
    assert!(matches!(e, SourceError::Open { .. }), "{e:?}");
    assert!(e.to_string().contains("/dev/video97"), "{e}");
    let e = source::open("images:/nonexistent/dir/*.png").err().unwrap();
    assert!(e.to_string().contains("/nonexistent/dir/*.png"), "{e}");
    let e = source::open("replay:/nonexistent/rec").err().unwrap();
    assert!(
        e.to_string().contains("/nonexistent/rec")
            && e.to_string().contains("no such recording directory"),
        "{e}"
    );
    assert_clean_failure(
        &["run", "--bundle", "/nonexistent", "--source", "ftp:x"],
        &["/nonexistent"],
    );
}

#[test]
fn truncated_jpeg_mid_replay_is_skipped_and_counted() {
    let Some(b) = bundle("jpeg") else { return };
    let dir = scratch("jpeg-replay");
    let rec_dir = dir.join("rec");
    let mut w = bevrt_runtime::source::replay::RecordingWriter::create(
        &rec_dir,
        bevrt_runtime::source::replay::RecordingInfo {
            format: 1,
            width: 192,
            height: 48,
            pixel_format: "rgb8".into(),
            encoding: bevrt_runtime::source::replay::FrameEncoding::Jpeg,
            fps: 10.0,
            calibration: None,
            ground_truth: None,
        },
    )
    .unwrap();
    let mut jpegs = vec![];
    for i in 0..6u8 {
        let img =
            image::RgbImage::from_fn(192, 48, |x, y| image::Rgb([x as u8, y as u8 * 4, i * 40]));
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, image::ImageFormat::Jpeg).unwrap();
        let mut bytes = buf.into_inner();
        if i == 2 {
            bytes.truncate(bytes.len() / 2);
        }
        jpegs.push(bytes);
    }
    for (i, j) in jpegs.iter().enumerate() {
        w.write_frame(i as u64 * 100_000_000, j, None).unwrap();
    }
    w.finish().unwrap();
    let bundle = Bundle::load(&b).unwrap();
    let src = source::open(&format!("replay:{}", rec_dir.display())).unwrap();
    let be = backend::open(backend::BackendKind::Cpu, &bundle, &Default::default()).unwrap();
    let out = dir.join("out");
    let sinks = sink::build(&[sink::SinkKind::Jsonl], &out, &bundle.manifest, 1).unwrap();
    let r = pipeline::run(src, be, sinks, &Default::default()).unwrap();
    assert_eq!(r.frames_processed, 5, "{r:?}");
    assert_eq!(r.source_errors, 1, "{r:?}");
    assert_eq!(r.frames_dropped, 0);
    let lines = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let seqs: Vec<u64> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![0, 1, 3, 4, 5], "every good frame kept, in order");
}
