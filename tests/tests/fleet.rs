//! Evaluation beyond one process: `bevrt-tool eval --shard/--partial`, `eval merge`, and the
//! Ray driver (`scripts/fleet`, `python3 -m bevrt_fleet`) on a local Ray cluster of 2 worker
//! slots. The merged scores must equal one process's exactly (integer confusion counts), also
//! when a worker is killed mid-task and when a recording in the set is corrupt.
//!
//! The Ray parts need `ray` importable by python3 (`.ci/run` installs it from PyPI and sets
//! `BEVRT_REQUIRE_RAY=1`); elsewhere they skip with a message. The shard/merge parts need
//! nothing.

use bevrt_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One local Ray cluster at a time: the tests of this file run in parallel threads, and two
/// clusters plus their bevrt processes on 2 cores make the HIL's timing budgets fail.
static RAY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ray_lock() -> std::sync::MutexGuard<'static, ()> {
    RAY.lock().unwrap_or_else(|p| p.into_inner())
}

fn ray_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import ray"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("BEVRT_REQUIRE_RAY").is_none(),
            "python3 cannot import ray (.ci/run installs it)"
        );
        eprintln!("SKIP: ray is not importable");
    }
    ok
}

fn bundle() -> String {
    workspace_root()
        .join("models/bundles/letsmap-lite")
        .to_string_lossy()
        .into_owned()
}

/// `drives` simulated drives of `frames` frames each under `dir` (seeds 100..), recorded on
/// the letsmap-lite grid.
fn drives(dir: &Path, drives: u64, frames: u64) -> PathBuf {
    for d in 0..drives {
        sim_record(100 + d, frames, &dir.join(format!("drive-{d:02}")));
    }
    dir.to_path_buf()
}

/// `bevrt-tool eval ... --json` (extra arguments appended): the scores.
fn eval_json(data: &Path, extra: &[&str]) -> serde_json::Value {
    let (d, b) = (data.to_string_lossy().into_owned(), bundle());
    let mut args = vec![
        "eval",
        "--bundle",
        &b,
        "--data",
        &d,
        "--backend",
        "cpu-plan",
        "--json",
    ];
    args.extend_from_slice(extra);
    let (ok, so, se) = run(&bin("bevrt-tool"), &args);
    assert!(ok, "eval: {se}");
    serde_json::from_str(&so).unwrap_or_else(|e| panic!("{e}: {so}"))
}

/// The parts of two score reports that must be identical: counts, IoUs, failures.
fn exact(v: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "frames": v["frames"], "recordings": v["recordings"], "cells": v["cells"],
        "miou": v["miou"], "accuracy": v["accuracy"], "per_class": v["per_class"],
        "failed": v["failed"],
    })
}

#[test]
fn shards_merge_to_exactly_one_evals_scores() {
    let w = scratch("fleet-merge");
    let data = drives(&w.join("drives"), 3, 4);
    let one = eval_json(&data, &[]);
    let tool = bin("bevrt-tool");
    let mut parts = vec![];
    for i in 0..2 {
        let p = w.join(format!("part-{i}.json"));
        let (ok, _, se) = run(
            &tool,
            &[
                "eval",
                "--bundle",
                &bundle(),
                "--data",
                data.to_str().unwrap(),
                "--backend",
                "cpu-plan",
                "--shard",
                &format!("{i}/2"),
                "--partial",
                p.to_str().unwrap(),
            ],
        );
        assert!(ok, "{se}");
        parts.push(p.to_string_lossy().into_owned());
    }
    let mut args = vec!["eval", "merge", "--json"];
    args.extend(parts.iter().map(String::as_str));
    let (ok, so, se) = run(&tool, &args);
    assert!(ok, "{se}");
    let merged: serde_json::Value = serde_json::from_str(&so).unwrap();
    assert_eq!(exact(&merged), exact(&one));
    assert_eq!(merged["recordings"], 3);
    // A part twice, or one missing, is refused: nothing may count twice or go missing.
    for bad in [
        vec!["eval", "merge", &parts[0], &parts[0]],
        vec!["eval", "merge", &parts[1]],
    ] {
        let (ok, _, se) = run(&tool, &bad);
        assert!(!ok, "{bad:?} was merged");
        assert!(se.contains("shard"), "{se}");
    }
    let (ok, _, se) = run(
        &tool,
        &["eval", "--shard", "2/2", "--bundle", "b", "--data", "d"],
    );
    assert!(!ok && se.contains("I/N"), "{se}");
}

/// `python3 -m bevrt_fleet eval` on `data` with `extra` arguments: (merged scores, stdout).
fn fleet(w: &Path, data: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    let out = w.join("merged.json");
    let _ = std::fs::remove_file(&out);
    let b = bundle();
    let mut args = vec![
        "eval",
        "--bundle",
        &b,
        "--recordings",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let so = fleet_cmd(w, &args);
    let v = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    (v, so)
}

#[test]
fn ray_eval_of_six_drives_equals_one_process_even_with_a_worker_killed_and_a_corrupt_drive() {
    if !ray_ready() {
        return;
    }
    let _one_cluster = ray_lock();
    let w = scratch("fleet-ray");
    let data = drives(&w.join("drives"), 6, 6);
    let one = eval_json(&data, &[]);
    assert_eq!(one["recordings"], 6);

    let (merged, so) = fleet(&w, &data, &[]);
    eprintln!("{so}");
    assert_eq!(exact(&merged), exact(&one), "{so}");
    assert!(so.contains("Ray per-task overhead"), "{so}");

    // Kill the first worker that starts a shard, by its pid: Ray runs the shard again.
    let log = w.join("task-log");
    std::fs::create_dir_all(&log).unwrap();
    let killer = {
        let log = log.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(120) {
                if let Some(e) = std::fs::read_dir(&log).unwrap().flatten().next() {
                    let pid = std::fs::read_to_string(e.path()).unwrap_or_default();
                    if let Ok(pid) = pid.trim().parse::<u32>() {
                        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                        return Some(e.file_name().to_string_lossy().into_owned());
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            None
        })
    };
    let (merged, so) = fleet(&w, &data, &["--task-log", log.to_str().unwrap()]);
    let killed = killer.join().unwrap().expect("no shard started");
    let shard = killed.split('.').next().unwrap().to_string();
    let attempts = std::fs::read_dir(&log)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{shard}."))
        })
        .count();
    eprintln!("killed {killed}; {shard} ran {attempts} times");
    assert!(
        attempts >= 2,
        "{shard} was not run again after its worker died"
    );
    assert_eq!(exact(&merged), exact(&one), "after a killed worker: {so}");

    // A corrupt drive among them: named in the summary, the six others still merge exactly.
    let bad = data.join("drive-99");
    std::fs::create_dir_all(bad.join("frames")).unwrap();
    std::fs::copy(
        data.join("drive-00/recording.toml"),
        bad.join("recording.toml"),
    )
    .unwrap();
    std::fs::copy(data.join("drive-00/frames.csv"), bad.join("frames.csv")).unwrap();
    let (merged, so) = fleet(&w, &data, &[]);
    assert!(so.contains("FAILED") && so.contains("drive-99"), "{so}");
    let failed = merged["failed"].as_array().expect("failed list");
    assert_eq!(failed.len(), 1, "{merged}");
    assert!(
        failed[0]["recording"]
            .as_str()
            .unwrap()
            .ends_with("drive-99")
    );
    let mut want = exact(&one);
    want["failed"] = merged["failed"].clone();
    assert_eq!(exact(&merged), want);
}

#[test]
fn the_hil_matrix_on_ray_gives_one_junit_report_of_every_scenario() {
    if !ray_ready() {
        return;
    }
    let _one_cluster = ray_lock();
    let w = scratch("fleet-hil");
    let tool = bin("bevrt-tool");
    let (ok, so, se) = run(&tool, &["hil", "--bundle", &bundle(), "--list"]);
    assert!(ok, "{se}");
    let names: Vec<&str> = so.split_whitespace().collect();
    assert!(names.len() >= 8 && names.contains(&"map_quality"), "{so}");
    let junit = w.join("hil.xml");
    let so = fleet_cmd(
        &w,
        &[
            "hil",
            "--bundle",
            &bundle(),
            "--frames",
            "30",
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    eprintln!("{so}");
    let x = std::fs::read_to_string(&junit).unwrap();
    assert!(
        x.contains(&format!("tests=\"{}\" failures=\"0\"", names.len())),
        "{x}"
    );
    // Every scenario once, in the matrix's order.
    let at: Vec<usize> = names
        .iter()
        .map(|n| x.find(&format!("name=\"{n}\"")).expect(n))
        .collect();
    assert!(at.windows(2).all(|p| p[0] < p[1]), "{x}");
    // A scenario in two parts is refused.
    let part = w.join("part.json");
    let (ok, _, se) = run(
        &tool,
        &[
            "hil",
            "--bundle",
            &bundle(),
            "--frames",
            "10",
            "--out",
            w.join("one").to_str().unwrap(),
            "--scenarios",
            "dropped_frames",
            "--partial",
            part.to_str().unwrap(),
        ],
    );
    assert!(ok, "{se}");
    let (ok, _, se) = run(
        &tool,
        &[
            "hil",
            "merge",
            part.to_str().unwrap(),
            part.to_str().unwrap(),
        ],
    );
    assert!(!ok && se.contains("two parts"), "{se}");
    let (ok, _, se) = run(
        &tool,
        &[
            "hil",
            "--bundle",
            &bundle(),
            "--scenarios",
            "nope",
            "--list",
        ],
    );
    assert!(!ok && se.contains("no scenario 'nope'"), "{se}");
}

/// `python3 -m bevrt_fleet ARGS` on a local 2-slot cluster: stdout (panics with the output
/// when it fails).
fn fleet_cmd(w: &Path, args: &[&str]) -> String {
    let mut py_path = workspace_root()
        .join("scripts/fleet")
        .to_string_lossy()
        .into_owned();
    if let Some(p) = std::env::var_os("PYTHONPATH") {
        py_path = format!("{py_path}:{}", p.to_string_lossy());
    }
    let o = Command::new("python3")
        .args(["-m", "bevrt_fleet"])
        .args(args)
        .args(["--address", "local", "--parallel", "2", "--tool"])
        .arg(bin("bevrt-tool"))
        .env("PYTHONPATH", py_path)
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .current_dir(w)
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "bevrt_fleet {args:?} failed:\n{so}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    so
}

#[test]
fn runs_and_quantization_sweeps_on_ray_match_the_single_commands() {
    if !ray_ready() {
        return;
    }
    let _one_cluster = ray_lock();
    let w = scratch("fleet-run");
    let data = drives(&w.join("drives"), 3, 5);
    // and a ROS 2 bag among the recordings
    let bag = data.join("drive-bag.mcap");
    let (ok, _, se) = run(
        &bin("bevrt-tool"),
        &[
            "sim",
            "record",
            "--seed",
            "7",
            "--frames",
            "5",
            "--format",
            "mcap",
            "--out",
            bag.to_str().unwrap(),
        ],
    );
    assert!(ok, "{se}");
    let out = w.join("runs");
    let so = fleet_cmd(
        &w,
        &[
            "run",
            "--bundle",
            &bundle(),
            "--recordings",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--sinks",
            "jsonl",
        ],
    );
    eprintln!("{so}");
    let cells = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p.join("results.jsonl"))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["cells"].clone())
            .collect()
    };
    for d in 0..4 {
        // three recordings, then the bag
        let (name, source) = match d {
            3 => ("drive-bag".to_string(), format!("mcap:{}", bag.display())),
            _ => {
                let n = format!("drive-{d:02}");
                let s = format!("replay:{}", data.join(&n).display());
                (n, s)
            }
        };
        let direct = w.join(format!("direct-{d}"));
        let (ok, _, se) = run(
            &bin("bevrt"),
            &[
                "run",
                "--bundle",
                &bundle(),
                "--source",
                &source,
                "--out",
                direct.to_str().unwrap(),
                "--sinks",
                "jsonl",
                "--backend",
                "cpu-plan",
            ],
        );
        assert!(ok, "{se}");
        let (a, b) = (cells(&out.join(&name)), cells(&direct));
        assert_eq!(a.len(), 5, "{name}");
        assert_eq!(a, b, "{name}: maps through Ray differ from a direct run");
    }
    // Two calibration methods side by side, each scored by eval on the same drive.
    let q = w.join("int8");
    let so = fleet_cmd(
        &w,
        &[
            "quantize",
            "--bundle",
            &bundle(),
            "--calib-data",
            data.join("drive-00").to_str().unwrap(),
            "--eval-data",
            data.join("drive-01").to_str().unwrap(),
            "--methods",
            "minmax,percentile",
            "--frames",
            "5",
            "--out",
            q.to_str().unwrap(),
        ],
    );
    eprintln!("{so}");
    let sweep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(q.join("fleet-quantize.json")).unwrap())
            .unwrap();
    for m in ["fp32", "minmax", "percentile"] {
        assert!(so.contains(m), "{so}");
        let b = if m == "fp32" {
            PathBuf::from(bundle())
        } else {
            q.join(m)
        };
        let one = eval_on(&b, &data.join("drive-01"));
        assert_eq!(sweep["scores"][m]["miou"], one["miou"], "{m}");
    }
}

/// `bevrt-tool eval --json` of `bundle` on `data` (cpu-plan, 1 thread, as the driver runs it).
fn eval_on(bundle: &Path, data: &Path) -> serde_json::Value {
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &[
            "eval",
            "--bundle",
            bundle.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--backend",
            "cpu-plan",
            "--threads",
            "1",
            "--json",
        ],
    );
    assert!(ok, "{se}");
    serde_json::from_str(&so).unwrap()
}
