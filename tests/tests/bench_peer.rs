//! `bevrt bench --peer-onnxruntime` runs its ONNX Runtime peer from the binary alone: started
//! outside the source tree (as an installed `bevrt` is), it still times the peer and prints
//! the ratio.

use bevrt_tests::{bin, scratch, workspace_root};

#[test]
fn peer_runs_outside_the_source_tree() {
    let have_ort = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have_ort {
        assert!(
            std::env::var_os("BEVRT_REQUIRE_ORT").is_none(),
            "python3 cannot import onnxruntime (.ci/run installs it)"
        );
        eprintln!("SKIP: onnxruntime not importable");
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
