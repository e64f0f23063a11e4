//! bevrt as a systemd service, without systemd as PID 1: the unit's own `ExecStart` line run
//! with `NOTIFY_SOCKET` on a socket the test listens on (READY=1 at the first frame, WATCHDOG=1
//! only while frames flow, through a simulated unplug), `--config` files (flags override them;
//! a bad one is one line naming the file and the key, exit code 2), and the unit file checked
//! by `systemd-analyze verify`.

use bevrt_tests::{bin, scratch, workspace_root};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn unit_file() -> String {
    std::fs::read_to_string(workspace_root().join("runtime/packaging/bevrt.service")).unwrap()
}

/// The unit's `ExecStart` with the installed paths replaced by the built binary and `config`.
fn exec_start(config: &Path) -> Vec<String> {
    let unit = unit_file();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart line");
    line.split_whitespace()
        .map(|w| match w {
            "/usr/bin/bevrt" => bin("bevrt").to_string_lossy().into_owned(),
            "/etc/bevrt/bevrt.toml" => config.to_string_lossy().into_owned(),
            w => w.to_string(),
        })
        .collect()
}

fn bundle() -> String {
    workspace_root()
        .join("models/bundles/letsmap-lite")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn the_service_is_ready_at_the_first_frame_and_pets_the_watchdog_only_while_frames_flow() {
    let d = scratch("service-notify");
    let sock_path = d.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // The camera goes away before frame 60 (3 s at 20 fps) for 4 s.
    let cfg = d.join("bevrt.toml");
    std::fs::write(
        &cfg,
        format!(
            "bundle = \"{}\"\nsource = \"sim:?seed=4&fps=20&unplug_at=60&unplug_for=4\"\nduration = 11\nsinks = [\"jsonl\"]\nout = \"{}\"\nbackend = \"cpu\"\n",
            bundle(),
            d.join("out").display()
        ),
    )
    .unwrap();
    let argv = exec_start(&cfg);
    let t0 = Instant::now();
    // systemd sets WATCHDOG_PID to the service's pid: a shell that execs the command keeps
    // its own pid, so it can say it.
    let mut child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .args(&argv)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut msgs: Vec<(f64, String)> = Vec::new();
    let mut buf = [0u8; 4096];
    while child.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the run did not end"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            msgs.push((t0.elapsed().as_secs_f64(), text));
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at = |what: &str| -> Vec<f64> {
        msgs.iter()
            .filter(|(_, m)| m.lines().any(|l| l == what))
            .map(|(t, _)| *t)
            .collect()
    };
    let (ready, pets) = (at("READY=1"), at("WATCHDOG=1"));
    for (t, m) in &msgs {
        eprintln!("{t:6.2} {}", m.replace('\n', " | "));
    }
    assert_eq!(ready.len(), 1, "READY=1 exactly once");
    assert!(
        pets.first().is_some_and(|p| *p >= ready[0] - 0.01),
        "no petting before ready"
    );
    // The unplug shows as the longest gap between pets: at least 3 s of the 4 s away, while
    // the status says stalled; before and after it, a pet every ~0.5 s.
    let gaps: Vec<(f64, f64)> = pets.windows(2).map(|w| (w[0], w[1] - w[0])).collect();
    let (gap_at, gap) = gaps
        .iter()
        .copied()
        .fold((0.0, 0.0), |m, g| if g.1 > m.1 { g } else { m });
    assert!(gap >= 3.0, "no watchdog gap during the unplug: {gaps:?}");
    let before = pets.iter().filter(|t| **t <= gap_at).count();
    let after = pets.iter().filter(|t| **t > gap_at + gap - 0.01).count();
    assert!(
        before >= 2 && after >= 4,
        "pets before {before}, after {after}"
    );
    let stalled = msgs
        .iter()
        .any(|(t, m)| *t > gap_at && *t < gap_at + gap && m.contains("STATUS=stalled"));
    assert!(stalled, "no STATUS=stalled during the gap");
    assert!(
        msgs.iter().any(|(_, m)| m.contains("fps")),
        "no STATUS with the rate"
    );
}

/// `bevrt run --config FILE EXTRA...`: (exit code, stdout, stderr).
fn run_with_config(cfg: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("bevrt"))
        .args(["run", "--config"])
        .arg(cfg)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_files_set_every_flag_the_command_line_overrides_and_mistakes_are_one_line() {
    let d = scratch("service-config");
    let cfg = d.join("bevrt.toml");
    let base = format!(
        "bundle = \"{}\"\nsource = \"sim:?seed=2\"\nmax_frames = 50\nsinks = [\"jsonl\"]\nout = \"{}\"\njson = true\nbackend = \"cpu\"\n",
        bundle(),
        d.join("out").display()
    );
    std::fs::write(&cfg, &base).unwrap();
    // The file alone: 50 frames; the command line's --max-frames wins over the file's.
    let (code, so, se) = run_with_config(&cfg, &[]);
    assert_eq!(code, 0, "{se}");
    let r: serde_json::Value = serde_json::from_str(&so).unwrap();
    assert_eq!(r["frames_processed"], 50);
    let (code, so, se) = run_with_config(&cfg, &["--max-frames", "7"]);
    assert_eq!(code, 0, "{se}");
    let r: serde_json::Value = serde_json::from_str(&so).unwrap();
    assert_eq!(r["frames_processed"], 7);

    let c = cfg.display().to_string();
    for (extra, key, why) in [
        ("frobnicate = 3\n", "frobnicate", "unknown key"),
        ("trust = \"/nonexistent/k.pub\"\n", "trust", "no such file"),
        ("max-frames = [1, 2]\n", "max-frames", "not a value"),
        ("json = \"yes\"\n", "json", "switch"),
    ] {
        let text = if key == "max-frames" {
            base.replace("max_frames = 50\n", extra)
        } else if key == "json" {
            base.replace("json = true\n", extra)
        } else {
            format!("{extra}{base}")
        };
        std::fs::write(&cfg, text).unwrap();
        let (code, _, se) = run_with_config(&cfg, &[]);
        assert_eq!(code, 2, "{key}: {se}");
        let line = se.trim();
        assert_eq!(line.lines().count(), 1, "one line: {se}");
        assert!(
            line.contains(&c) && line.contains(key) && line.contains(why),
            "{key}: {line}"
        );
    }
    // A store that is not there: the file and the key.
    std::fs::write(
        &cfg,
        base.replace(
            &format!("bundle = \"{}\"", bundle()),
            "store = \"/var/lib/bevrt-missing/store\"",
        ),
    )
    .unwrap();
    let (code, _, se) = run_with_config(&cfg, &[]);
    assert!(
        code == 2 && se.trim().lines().count() == 1 && se.contains(&c) && se.contains("store"),
        "{se}"
    );
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        assert!(
            std::env::var_os("BEVRT_REQUIRE_SYSTEMD").is_none(),
            "BEVRT_REQUIRE_SYSTEMD is set but systemd-analyze is not installed"
        );
        eprintln!("SKIP: systemd-analyze is not installed (.ci/run installs systemd)");
        return;
    };
    assert!(v.status.success());
    // verify resolves ExecStart's binary: give it one at the unit's path inside a scratch
    // root, and the unit beside it.
    let d = scratch("service-unit");
    let unit = d.join("bevrt.service");
    let exe = d.join("bevrt");
    std::fs::copy(bin("bevrt"), &exe).unwrap();
    std::fs::write(
        &unit,
        unit_file().replace("/usr/bin/bevrt", &exe.to_string_lossy()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Lines about the rest of this machine's units (not ours) are not our business.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("bevrt")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{err}"
    );
}
