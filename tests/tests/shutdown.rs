//! `systemctl stop` sends SIGTERM, Ctrl-C SIGINT: `bevrt run` ends between frames, flushes its
//! sinks and writes the final report (stdout with `--json`, and `metrics.jsonl`), exit status 0,
//! instead of dying with the frames of the last seconds unreported.

use bevrt_tests::{bin, scratch, workspace_root};
use std::io::Read;
use std::time::{Duration, Instant};

fn stop_with(signal: &str, tag: &str) {
    let w = scratch(tag);
    let b = workspace_root().join("models/bundles/letsmap-lite");
    let mut child = std::process::Command::new(bin("bevrt"))
        .args(["run", "--bundle"])
        .arg(&b)
        .args(["--source", "sim:?seed=6&fps=20", "--duration", "120"])
        .args([
            "--sinks",
            "jsonl",
            "--report-every",
            "0.2",
            "--json",
            "--out",
        ])
        .arg(&*w)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start bevrt run");
    // Running: the periodic report has been written at least once.
    let metrics = w.join("metrics.jsonl");
    let t0 = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "bevrt run never reported"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let kill = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(20),
            "bevrt run did not stop on {signal}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status after {signal}: {status}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("final JSON report");
    let want = format!("signal SIG{}", signal.trim_start_matches("-"));
    assert_eq!(report["ended_by"], want.as_str(), "{out}");
    assert!(report["frames_processed"].as_u64().unwrap() > 0, "{out}");
    let last = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    assert_eq!(
        last["ended_by"],
        want.as_str(),
        "metrics.jsonl's last line: {last}"
    );
    let results = std::fs::read_to_string(w.join("results.jsonl")).unwrap_or_default();
    let dropped = report["sink_dropped"].as_u64().unwrap();
    assert_eq!(
        results.lines().count() as u64 + dropped,
        report["frames_processed"].as_u64().unwrap(),
        "every processed frame's result reached the JSONL sink or was counted as dropped"
    );
}

#[test]
fn sigterm_ends_the_run_with_its_report() {
    stop_with("-TERM", "shutdown-term");
}

#[test]
fn sigint_ends_the_run_with_its_report() {
    stop_with("-INT", "shutdown-int");
}
