//! `bevrt bench --peer-onnxruntime` runs its ONNX Runtime peer from the binary alone: started
//! outside the source tree (as an installed `bevrt` is), it still times the peer and prints
//! the ratio.

use bevrt_tests::{bin, onnxruntime_available, scratch, workspace_root};

#[test]
fn peer_runs_outside_the_source_tree() {
    if !onnxruntime_available() {
        return;
    }
    let elsewhere = scratch("bench-peer");
    let bundle = workspace_root().join("models/bundles/letsmap-lite-1pct");
    let out = std::process::Command::new(bin("bevrt"))
        .args([
            "bench",
            "--frames",
            "3",
            "--warmup",
            "1",
            "--peer-onnxruntime",
            "--bundle",
        ])
        .arg(&bundle)
        .current_dir(&*elsewhere)
        .output()
        .expect("spawn bevrt");
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{so}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        so.contains("peer onnxruntime") && so.contains("/ peer"),
        "{so}"
    );
}
