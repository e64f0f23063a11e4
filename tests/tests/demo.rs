//! The README's main-job command (`bevrt demo`) works and gets every orientation right.

use bevrt_tests::*;

#[test]
fn demo_runs_end_to_end() {
    let Some(shared) = shared_dir() else { return };
    let out = scratch("demo");
    let (ok, so, se) = run(
        &bin("bevrt"),
        &[
            "demo",
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
