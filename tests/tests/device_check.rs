//! `bevrt-device-check` on a machine without a GPU (every CI machine): it must still write a
//! complete JSON report, with the reason, and exit 2. The per-group isolation itself (a
//! failing or panicking group leaves every other result in the file) is tested in
//! `bevrt_tests::device_report`; on a GPU, `--fail-check GROUP` shows it live.

use bevrt_tests::scratch;

#[test]
fn without_a_gpu_the_device_check_still_writes_its_report() {
    if bevrt_kernels::device::probe().ok().flatten().is_some() {
        eprintln!("SKIP: a CUDA device is present; tests/device/run.sh covers this machine");
        return;
    }
    let work = scratch("device-check");
    let out = work.join("device_check.json");
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_bevrt-device-check"))
        .args(["--out", out.to_str().unwrap(), "--fail-check", "bev_pool"])
        .output()
        .unwrap();
    assert_eq!(
        r.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap())
        .expect("a complete JSON report");
    assert_eq!(v["all_passed"], serde_json::json!(false));
    assert!(
        v["open_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{v}"
    );
    assert_eq!(v["groups"][0]["group"], "open");
    assert_eq!(v["groups"][0]["pass"], false);
}
