//! The bodies of bevrt's fuzz targets: every parser that reads a file or camera data nobody
//! checked. Each takes arbitrary bytes and must return (with `Ok` or an error) without a
//! panic, an abort or an unbounded allocation.
//!
//! `tests/fuzz` (cargo-fuzz, nightly) drives them with libFuzzer; `tests/tests/fuzz_replay.rs`
//! replays the kept corpora (`tests/fuzz/corpus/TARGET/`) on stable in every test run, so a
//! crash once found and fixed stays fixed.

use std::path::Path;

/// A fuzz target's body: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Target names, each with its body; the corpus directory of a target has its name.
pub const TARGETS: &[(&str, Target)] = &[
    ("onnx", onnx),
    ("manifest", manifest),
    ("calib_toml", calib_toml),
    ("calib_yaml", calib_yaml),
    ("recording_header", recording_header),
    ("recording_index", recording_index),
    ("poses_csv", poses_csv),
    ("image_decode", image_decode),
    ("raw_frame", raw_frame),
    ("npy", npy),
    ("ros2_messages", ros2_messages),
    ("mcap_bag", mcap_bag),
];

/// A fuzz target's body by name.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

/// ONNX: decode and limit checks, the front end's legalisation, tract's model build (as the
/// CPU backend loads it) and our lowering to a kernel plan (as the CUDA backend does).
pub fn onnx(bytes: &[u8]) {
    let limits = bevrt_models::limits::ModelLimits {
        memory_bytes: 64 << 20,
        max_nodes: 2_000,
        max_depth: 2_000,
        ..Default::default()
    };
    let path = Path::new("fuzz.onnx");
    let Ok(proto) = bevrt_models::proto_from_bytes(bytes, path, &limits) else {
        return;
    };
    let mut legal = proto.clone();
    let _ = bevrt_models::legalize(&mut legal, &Default::default());
    let _ = bevrt_models::onnx::model_from_proto(&legal, path);
    let _ = bevrt_runtime::lower::lower_proto(proto, "fuzz.onnx", &[], &Default::default());
}

/// `bundle.toml`.
pub fn manifest(bytes: &[u8]) {
    if let Some(t) = text(bytes) {
        let _ = bevrt_models::Manifest::parse(t, Path::new("bundle.toml"));
    }
}

/// Calibration TOML (camera model and extrinsics).
pub fn calib_toml(bytes: &[u8]) {
    if let Some(t) = text(bytes) {
        let _ = bevrt_calib::Calibration::from_toml_str(t, Path::new("calibration.toml"));
    }
}

/// ROS `camera_info` and OpenCV YAML.
pub fn calib_yaml(bytes: &[u8]) {
    if let Some(t) = text(bytes) {
        let _ = bevrt_calib::yaml::parse_camera_yaml(Path::new("camera.yaml"), t);
    }
}

/// `recording.toml`.
pub fn recording_header(bytes: &[u8]) {
    if let Some(t) = text(bytes) {
        let _ =
            bevrt_runtime::source::replay::Recording::parse_header(t, Path::new("recording.toml"));
    }
}

/// `frames.csv`.
pub fn recording_index(bytes: &[u8]) {
    if let Some(t) = text(bytes) {
        let _ = bevrt_runtime::source::replay::Recording::parse_index(
            t,
            Path::new("rec"),
            Path::new("frames.csv"),
        );
    }
}

/// `poses.csv`, parsed and matched against a three-frame index.
pub fn poses_csv(bytes: &[u8]) {
    use bevrt_runtime::source::poses;
    use bevrt_runtime::source::replay::IndexEntry;
    if let Some(t) = text(bytes) {
        let path = Path::new("poses.csv");
        if let Ok(p) = poses::parse(t, path) {
            let frames: Vec<IndexEntry> = (0..3)
                .map(|seq| IndexEntry {
                    seq,
                    timestamp_ns: seq * 100,
                    file: "f.png".into(),
                    gt: None,
                })
                .collect();
            if let Ok(m) = poses::match_frames(&p, &frames, path) {
                let _ = m[0].motion_to(&m[2]);
            }
        }
    }
}

/// PNG, JPEG and MJPEG frames (as `images:`, `replay:` and `v4l:` decode them).
pub fn image_decode(bytes: &[u8]) {
    let mut frame = bevrt_runtime::Frame::with_capacity(0);
    let mut scratch = vec![];
    let _ = bevrt_runtime::source::decode_into(bytes, &mut frame, &mut scratch, Path::new("frame"));
}

/// Raw camera frames: the first bytes choose the pixel format and size, the rest are the
/// pixels; a consistent frame goes through the preprocessing every backend starts with.
pub fn raw_frame(bytes: &[u8]) {
    use bevrt_runtime::PixelFormat;
    if bytes.len() < 3 {
        return;
    }
    let format = [
        PixelFormat::Rgb8,
        PixelFormat::Bgr8,
        PixelFormat::Gray8,
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
    ][bytes[0] as usize % 5];
    let (w, h) = (1 + bytes[1] as u32 % 64, 1 + bytes[2] as u32 % 64);
    let mut frame = bevrt_runtime::Frame::with_capacity(bytes.len());
    frame.format = format;
    frame.width = w;
    frame.height = h;
    frame.data.extend_from_slice(&bytes[3..]);
    if !frame.is_consistent() {
        return; // the pipeline counts such a frame as bad and skips it
    }
    let spec = bevrt_models::InputSpec {
        name: None,
        width: 8,
        height: 4,
        channels: bevrt_models::ChannelOrder::Rgb,
        layout: bevrt_models::Layout::Nchw,
        dtype: bevrt_models::InputDtype::F32,
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    };
    let plan = bevrt_runtime::preprocess::PreprocessPlan::new(&spec, w, h);
    let mut out = vec![0f32; plan.output_len()];
    plan.run(&frame, &mut out);
}

/// `.npy` arrays (embedding statistics, AFV data, self-test vectors).
pub fn npy(bytes: &[u8]) {
    let _ = bevrt_runtime::npy::parse_f32(bytes);
}

/// Replay every file of `dir` through `f`; returns how many ran. A panic names the file.
pub fn replay_dir(dir: &Path, f: Target) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for p in &files {
        let bytes = std::fs::read(p).expect("read corpus file");
        if std::panic::catch_unwind(|| f(&bytes)).is_err() {
            panic!("{} crashes its fuzz target", p.display());
        }
    }
    files.len()
}

/// ROS 2 messages as the `mcap:` source decodes them (CDR): Image, CompressedImage,
/// CameraInfo and TFMessage from the same bytes, and an Image copied into a frame.
pub fn ros2_messages(bytes: &[u8]) {
    use bevrt_runtime::ros2::msgs;
    let _ = msgs::CompressedImage::decode(bytes);
    let _ = msgs::CameraInfo::decode(bytes);
    let _ = msgs::decode_tf(bytes);
    if let Ok(m) = msgs::Image::decode(bytes) {
        let mut frame = bevrt_runtime::Frame::with_capacity(0);
        let _ = bevrt_runtime::source::mcap::copy_image(&m, &mut frame);
    }
}

/// A whole bag through the `mcap:` source (survey, calibration, every frame) from a file,
/// as `bevrt run --source mcap:FILE` reads it.
///
/// The `mcap` crate panics on some malformed attachment records (0.26, `read.rs`); bevrt catches
/// that and reports the bag as damaged. libFuzzer's panic hook would abort on the caught panic
/// too, so this target restores the default hook: a panic that escapes bevrt still crashes the
/// target (libfuzzer-sys aborts on it), a contained one does not.
pub fn mcap_bag(bytes: &[u8]) {
    use bevrt_runtime::source::{SourceStatus, open};
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let _ = std::panic::take_hook();
    });
    let path = std::env::temp_dir().join(format!("bevrt-fuzz-{}.mcap", std::process::id()));
    if std::fs::write(&path, bytes).is_err() {
        return;
    }
    if let Ok(mut src) = open(&format!("mcap:{}", path.display())) {
        let _ = src.stream_calibration();
        let mut frame = bevrt_runtime::Frame::with_capacity(0);
        for _ in 0..64 {
            match src.next_frame(&mut frame) {
                Ok(SourceStatus::Frame) => {}
                Err(e) if e.is_recoverable() => {}
                _ => break,
            }
        }
    }
}
