//! The CPU engine allocates nothing per frame after warm-up, on any thread: the whole
//! backend call (preprocess, networks on the worker pool, view transform, postprocess) is
//! counted process-wide. One test in its own binary, so no other test allocates meanwhile.

use bevrt_models::Bundle;
use bevrt_runtime::alloc_count;
use bevrt_runtime::backend::{self, BackendKind, BackendOptions};
use bevrt_tests::*;

#[global_allocator]
static ALLOC: alloc_count::CountingAlloc = alloc_count::CountingAlloc;

#[test]
fn cpu_plan_frames_allocate_nothing_on_any_thread() {
    let mut bundles = vec![workspace_root().join("models/bundles/letsmap-lite")];
    let dir = scratch("cpu-plan-alloc");
    if let Some(shared) = shared_dir() {
        bundles.push(classifier_bundle(
            &shared,
            "ch_ppocr_mobile_v2.0_cls_int8_qdq.onnx",
            &dir.join("int8"),
        ));
    }
    for path in bundles {
        let bundle = Bundle::load(&path).unwrap();
        let (w, h) = (bundle.manifest.input.width, bundle.manifest.input.height);
        let frame = bevrt_runtime::bench::synthetic_frame(w, h);
        for threads in [1, 2] {
            let opts = BackendOptions {
                threads,
                ..Default::default()
            };
            let mut be = backend::open(BackendKind::CpuPlan, &bundle, &opts).unwrap();
            let mut r = be.new_result();
            let mut frame_once = || {
                be.preprocess(&frame).unwrap();
                be.infer().unwrap();
                be.postprocess(&mut r).unwrap();
            };
            for _ in 0..5 {
                frame_once();
            }
            assert!(alloc_count::is_active());
            let before = alloc_count::process_allocs();
            for _ in 0..50 {
                frame_once();
            }
            let per_frame = (alloc_count::process_allocs() - before) as f64 / 50.0;
            eprintln!(
                "{} x{threads}: {per_frame} allocations per frame",
                path.display()
            );
            assert_eq!(per_frame, 0.0, "{} with {threads} threads", path.display());
        }
    }
}
