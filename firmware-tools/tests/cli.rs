//! The `bevrt-tool` binary itself (this file also makes `cargo test` build it, which the
//! workspace's end-to-end tests in `tests/` run).

use std::process::Command;

fn tool(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bevrt-tool"))
        .args(args)
        .output()
        .expect("run bevrt-tool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_the_commands() {
    let (ok, so, _) = tool(&["--help"]);
    assert!(ok);
    for c in ["sim", "hil", "deploy", "keygen", "bundle"] {
        assert!(so.contains(c), "{c} missing from --help:\n{so}");
    }
}

#[test]
fn mcap_recording_into_a_directory_is_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("bevrt-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();
    let (ok, _, se) = tool(&[
        "sim", "record", "--frames", "2", "--format", "mcap", "--out", d,
    ]);
    assert!(!ok);
    assert!(se.contains(d) && se.contains("is a directory"), "{se}");
    let _ = std::fs::remove_dir_all(&dir);
}
