//! Every path argument of `bevrt` and `bevrt-tool`, given a directory where a file is expected
//! or a file where a directory is expected (as a new user easily does), fails with one clear
//! error line that names the path and says what was expected: never a panic, never an OS
//! error without context ("No such device (os error 19)").

use bevrt_tests::*;
use std::path::Path;

/// (binary, arguments with `{DIR}` / `{FILE}` / `{BUNDLE}` (a features bundle) / `{BEV}` (the
/// shipped letsmap-lite bundle) / `{OUT}` placeholders, the path the error must name).
const CASES: &[(&str, &str, &str)] = &[
    (
        "bevrt",
        "run --bundle {FILE} --source sim:?seed=1",
        "{FILE}",
    ),
    ("bevrt", "run --store {FILE} --source sim:?seed=1", "{FILE}"),
    (
        "bevrt",
        "run --bundle {BUNDLE} --trust {DIR} --source sim:?seed=1",
        "{DIR}",
    ),
    (
        "bevrt",
        "run --bundle {BUNDLE} --source sim:?seed=1 --calib {DIR} --max-frames 1 --out {OUT}",
        "{DIR}",
    ),
    (
        "bevrt",
        "run --bundle {BUNDLE} --source replay:{FILE}",
        "{FILE}",
    ),
    ("bevrt", "bench --bundle {FILE} --frames 1", "{FILE}"),
    ("bevrt", "info --bundle {FILE}", "{FILE}"),
    ("bevrt", "conformance --suite {FILE}", "{FILE}"),
    (
        "bevrt-tool",
        "calib-merge --camera {DIR} --extrinsics {DIR} --out {OUT}",
        "{DIR}",
    ),
    (
        "bevrt-tool",
        "bundle init --task features --model {DIR} --input 4x1:GRAY --out {OUT}",
        "{DIR}",
    ),
    (
        "bevrt-tool",
        "bundle init --task bev --model encoder={DIR} --model head={DIR} --input 4x1:GRAY --out {OUT}",
        "{DIR}",
    ),
    (
        "bevrt-tool",
        "bundle init --task features --model {BUNDLE}/model.onnx --input 32x32:RGB --calibration {DIR} --out {OUT}",
        "{DIR}",
    ),
    ("bevrt-tool", "bundle verify {FILE}", "{FILE}"),
    ("bevrt-tool", "bundle sign {BUNDLE} --key {DIR}", "{DIR}"),
    ("bevrt-tool", "bundle selftest {FILE}", "{FILE}"),
    (
        "bevrt-tool",
        "keygen --out {DIR}/k --password-file {DIR}",
        "{DIR}",
    ),
    ("bevrt-tool", "deploy --store {FILE} {BUNDLE}", "{FILE}"),
    ("bevrt-tool", "deploy --store {OUT} {FILE}", "{FILE}"),
    (
        "bevrt-tool",
        "deploy --store {OUT} --trust {DIR} {BUNDLE}",
        "{DIR}",
    ),
    ("bevrt-tool", "store status --store {FILE}", "{FILE}"),
    (
        "bevrt-tool",
        "quantize --bundle {FILE} --calib-source sim:?seed=1 --method minmax --out {OUT}",
        "{FILE}",
    ),
    (
        "bevrt-tool",
        "quantize --bundle {BUNDLE} --calib-data {FILE} --method minmax --out {OUT}",
        "{FILE}",
    ),
    ("bevrt-tool", "eval --bundle {FILE} --data {DIR}", "{FILE}"),
    ("bevrt-tool", "eval --bundle {BEV} --data {FILE}", "{FILE}"),
    ("bevrt-tool", "pretrain --data {FILE} --out {OUT}", "{FILE}"),
    (
        "bevrt-tool",
        "finetune --bundle {FILE} --data {FILE} --label-fraction 0.1 --out {OUT}",
        "{FILE}",
    ),
    (
        "bevrt-tool",
        "embed --bundle {FILE} --data {DIR} --out {OUT}",
        "{FILE}",
    ),
    (
        "bevrt-tool",
        "embed --bundle {BUNDLE} --data {DIR} --out {OUT}",
        "{DIR}",
    ),
    ("bevrt-tool", "probe --features {DIR} --data {DIR}", "{DIR}"),
    ("bevrt-tool", "hil --bundle {FILE} --out {OUT}", "{FILE}"),
    (
        "bevrt-tool",
        "calibrate --board 9x6 --square 0.025 --out {OUT}.yaml {DIR}",
        "{DIR}",
    ),
    (
        "bevrt-tool",
        "undistort --calib {DIR} --out {OUT} {FILE}",
        "{DIR}",
    ),
    (
        "bevrt-tool",
        "sim record --seed 1 --frames 1 --out {FILE}",
        "{FILE}",
    ),
];

#[test]
fn path_arguments_of_the_wrong_kind_get_a_clear_error() {
    let d = scratch("path-args");
    let dir = d.join("a-directory");
    std::fs::create_dir_all(&dir).unwrap();
    let file = d.join("a-file.txt");
    std::fs::write(&file, "not what you wanted\n").unwrap();
    let bundle = tiny_features_bundle(&d.join("bundle"), 5, "1.0.0", false);
    let fill = |s: &str, out: &Path| {
        s.replace("{DIR}", dir.to_str().unwrap())
            .replace("{FILE}", file.to_str().unwrap())
            .replace("{BUNDLE}", bundle.to_str().unwrap())
            .replace(
                "{BEV}",
                workspace_root()
                    .join("models/bundles/letsmap-lite")
                    .to_str()
                    .unwrap(),
            )
            .replace("{OUT}", out.to_str().unwrap())
    };
    let mut failures = vec![];
    for (i, (binary, args, must_name)) in CASES.iter().enumerate() {
        let out = d.join(format!("out-{i}"));
        let args = fill(args, &out);
        let argv: Vec<&str> = args.split(' ').collect();
        let (ok, _, se) = run(&bin(binary), &argv);
        let line = se
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or("")
            .to_string();
        let named = fill(must_name, &out);
        let problem = if ok {
            Some("succeeded".to_string())
        } else if se.contains("panicked") {
            Some("panicked".into())
        } else if !line.contains(&named) {
            Some(format!("error does not name {named}"))
        } else if line.contains("os error 19") || line.contains("No such device") {
            Some("says 'No such device'".into())
        } else if !(line.contains("directory")
            || line.contains("file")
            || line.contains("not found"))
        {
            Some("does not say what kind of path was expected".into())
        } else {
            None
        };
        if let Some(p) = problem {
            failures.push(format!(
                "{binary} {args}\n    {p}: {}",
                if line.is_empty() { se.trim() } else { &line }
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}
