//! A 500-frame replay with no heap allocation per frame in bevrt's own code after warm-up
//! (the backend's network call is measured separately), and resident memory that does not
//! grow.

use bevrt_models::Bundle;
use bevrt_runtime::source::replay::{FrameEncoding, RecordingInfo, RecordingWriter};
use bevrt_runtime::{backend, pipeline, sink, source};
use bevrt_tests::*;

#[global_allocator]
static ALLOC: bevrt_runtime::alloc_count::CountingAlloc = bevrt_runtime::alloc_count::CountingAlloc;

#[test]
fn replay_500_frames_allocation_free() {
    let Some(shared) = shared_dir() else { return };
    let dir = scratch("alloc");
    let b = classifier_bundle(
        &shared,
        "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        &dir.join("b"),
    );
    // 500 raw YUYV camera frames (320x120); 20 distinct frames, each file written once and
    // referenced 25 times by the index.
    let (w, h) = (320u32, 120u32);
    let rec = dir.join("rec");
    let mut wr = RecordingWriter::create(
        &rec,
        RecordingInfo {
            format: 1,
            width: w,
            height: h,
            pixel_format: "yuyv".into(),
            encoding: FrameEncoding::Raw,
            fps: 30.0,
            calibration: None,
            ground_truth: None,
        },
    )
    .unwrap();
    for i in 0..20u32 {
        let frame: Vec<u8> = (0..(w * h * 2))
            .map(|k| ((k.wrapping_mul(2654435761).wrapping_add(i * 7919)) >> 13) as u8)
            .collect();
        wr.write_frame(i as u64 * 33_333_333, &frame, None).unwrap();
    }
    wr.finish().unwrap();
    let index = std::fs::read_to_string(rec.join("frames.csv")).unwrap();
    let mut lines: Vec<&str> = index.lines().collect();
    let header = lines.remove(0);
    let mut text = format!("{header}\n");
    for k in 0..500 {
        let l = lines[k % 20];
        let file = l.split(',').nth(2).unwrap();
        text.push_str(&format!("{k},{},{file},\n", k as u64 * 33_333_333));
    }
    std::fs::write(rec.join("frames.csv"), text).unwrap();

    let bundle = Bundle::load(&b).unwrap();
    let src = source::open(&format!("replay:{}", rec.display())).unwrap();
    let be = backend::open(
        backend::BackendKind::Cpu,
        &bundle,
        &backend::BackendOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let out = dir.join("out");
    let sinks = sink::build(
        &[sink::SinkKind::Jsonl, sink::SinkKind::Npy],
        &out,
        &bundle.manifest,
        1,
    )
    .unwrap();
    let r = pipeline::run(src, be, sinks, &Default::default()).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&r.allocations).unwrap());
    eprintln!(
        "rss after warm-up {} KiB, at end {} KiB",
        r.rss_kib_after_warmup, r.rss_kib_end
    );
    assert_eq!(r.frames_processed, 500);
    assert_eq!(r.source_errors + r.inference_errors + r.sink_errors, 0);
    assert_eq!(r.sink_written + r.sink_dropped, 500);
    let a = &r.allocations;
    assert!(a.measured, "counting allocator not active");
    assert_eq!(a.capture_per_frame, 0.0, "capture allocates per frame");
    assert_eq!(
        a.inference_own_per_frame, 0.0,
        "preprocess/postprocess/hand-over allocate"
    );
    assert_eq!(a.sink_per_frame, 0.0, "jsonl/npy sinks allocate per frame");
    assert!(
        r.rss_kib_end <= r.rss_kib_after_warmup + 2048,
        "resident memory grew from {} to {} KiB",
        r.rss_kib_after_warmup,
        r.rss_kib_end
    );
    // The output files are all there: one JSON line and one npy per frame.
    let jsonl = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count() as u64, r.sink_written);
}
