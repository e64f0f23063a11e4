//! The HIL harness runs its fault matrix against the real `bevrt` binary on the CPU backend and
//! writes a JUnit report in which every scenario passes.

use bevrt_tests::*;

#[test]
fn hil_fault_matrix_passes_on_cpu() {
    let Some(shared) = shared_dir() else { return };
    let dir = scratch("hil");
    let b = classifier_bundle(
        &shared,
        "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        &dir.join("b"),
    );
    let out = dir.join("hil");
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &[
            "hil",
            "--bundle",
            b.to_str().unwrap(),
            "--frames",
            "20",
            "--out",
            out.to_str().unwrap(),
            "--bevrt",
            bin("bevrt").to_str().unwrap(),
        ],
    );
    assert!(ok, "hil failed:\n{so}\n{se}");
    for s in [
        "baseline",
        "dropped_frames",
        "corrupt_frames",
        "stalled_camera",
        "slow_sink",
        "camera_lost",
        "bundle_replaced",
    ] {
        assert!(
            so.lines().any(|l| l.starts_with(s) && l.contains(" pass ")),
            "{s} did not pass:\n{so}"
        );
    }
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.starts_with("<?xml"));
    assert_eq!(junit.matches("<testcase ").count(), 7);
    assert_eq!(junit.matches("</testcase>").count(), 7);
    assert!(junit.contains("failures=\"0\""));
    assert!(!junit.contains("<failure"));
}

/// With the shipped BEV bundle the matrix also scores the maps against the simulator's BEV
/// ground truth (map_quality), and the `bundle_replaced` fault hits the encoder file.
#[test]
fn hil_fault_matrix_with_bev_bundle_scores_maps() {
    let dir = scratch("hil-bev");
    let b = dir.join("letsmap-lite");
    bevrt_runtime::demo::write_shipped_bundle(&b).unwrap();
    let out = dir.join("hil");
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &[
            "hil",
            "--bundle",
            b.to_str().unwrap(),
            "--frames",
            "20",
            // The latency budget is judged by the classifier matrix; here a generous one, so
            // a loaded CI box does not fail the map-quality check.
            "--budget-ms",
            "250",
            "--stage-budget-ms",
            "100",
            "--out",
            out.to_str().unwrap(),
            "--bevrt",
            bin("bevrt").to_str().unwrap(),
        ],
    );
    assert!(ok, "hil failed:\n{so}\n{se}");
    let mq = so
        .lines()
        .find(|l| l.starts_with("map_quality"))
        .unwrap_or_else(|| panic!("no map_quality row:\n{so}"));
    assert!(mq.contains(" pass ") && mq.contains("mIoU"), "{mq}");
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), 8);
    assert!(!junit.contains("<failure"));
}
