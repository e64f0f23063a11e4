//! The README's main-job command (`bevrt demo`: the shipped letsmap-lite bundle on a fresh
//! simulated drive) and the classifier demo (`bevrt demo-classify`) work end to end.

use bevrt_tests::*;

#[test]
fn classify_demo_runs_end_to_end() {
    let Some(shared) = shared_dir() else { return };
    let out = scratch("demo");
    let (ok, so, se) = run(
        &bin("bevrt"),
        &[
            "demo-classify",
            "--shared",
            shared.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "demo failed: {so}{se}");
    assert!(so.contains("8/8 orientations as expected"), "{so}");
    assert!(so.contains("source errors 0, inference errors 0"), "{so}");
    let lines = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 8);
}

/// `bevrt demo` on 6 frames of a new drive with the CPU backend (and `extra` arguments): its
/// stdout and the mIoU line it prints. Fails the test when the demo fails or drops a frame.
fn demo(out: &std::path::Path, extra: &[&str]) -> (String, f64) {
    let mut args = vec!["demo", "--frames", "6", "--backend", "cpu", "--out"];
    args.push(out.to_str().unwrap());
    args.extend_from_slice(extra);
    let (ok, so, se) = run(&bin("bevrt"), &args);
    assert!(ok, "demo failed: {so}{se}");
    assert!(so.contains("source errors 0, inference errors 0"), "{so}");
    let miou = so
        .lines()
        .find_map(|l| l.strip_prefix("mIoU "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no mIoU line: {so}"));
    (so, miou)
}

#[test]
fn bev_demo_maps_a_new_drive() {
    let out = scratch("bev-demo");
    let (so, miou) = demo(&out, &[]);
    assert!(so.contains("frames 6 "), "{so}");
    // 8 classes: a constant or random map scores far below this.
    assert!(
        miou > 30.0,
        "reference bundle mIoU {miou} on a new drive: {so}"
    );
    let pngs = std::fs::read_dir(out.join("side_by_side")).unwrap().count();
    assert_eq!(pngs, 6);
    let img = image::open(out.join("side_by_side/000000.png")).unwrap();
    assert!(
        img.width() > 384 && img.height() >= 128,
        "{:?}",
        (img.width(), img.height())
    );
}

/// The shipped 1 %-label bundle (both label-free pathways, 12 labelled frames) runs in the
/// demo beside the embedded full-label one, with its depth-weighted lift.
#[test]
fn bev_demo_runs_the_shipped_one_percent_bundle() {
    let out = scratch("bev-demo-1pct");
    let bundle = workspace_root().join("models/bundles/letsmap-lite-1pct");
    let (so, miou) = demo(&out, &["--bundle", bundle.to_str().unwrap()]);
    assert!(miou > 25.0, "1 % bundle mIoU {miou} on a new drive: {so}");
    let manifest = std::fs::read_to_string(bundle.join("bundle.toml")).unwrap();
    assert!(manifest.contains("[grid.depth]"), "{manifest}");
}
