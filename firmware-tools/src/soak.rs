//! `bevrt-tool hil --soak DURATION`: the real `bevrt` for a long time at full rate, with a
//! fault every few minutes, watched from outside like a service on a vehicle computer.
//!
//! - The bundle runs from an A/B store (`bevrt run --store`); every other fault period a
//!   variant of it (same network, another version) is deployed, so swaps, self-tests, trials
//!   and confirmations happen while frames flow.
//! - The calibration file is rewritten every other fault period (reload between frames).
//! - The simulated camera is unplugged for 1.5 s every fault period (`unplug_every`) and the
//!   sink stalls 300 ms every fault period (`--fault-sink-stall`), both inside `bevrt`.
//! - Every few seconds the harness samples the process's resident memory, open file
//!   descriptors and threads from `/proc` (`samples.csv`).
//!
//! Verdict (`report.json`, exit status): the run lasted its duration; every deployed variant
//! was swapped in and none rolled back or refused; every calibration rewrite was applied; the
//! unplugs show as counted source errors; no inference error; after warm-up (3.5 fault
//! periods: both variants loaded and swapped once), resident memory growth below
//! `--max-rss-growth` percent (default 1; a least-squares line through the samples, so the few
//! percent each swap moves it either way average out); no growth in file descriptors or
//! threads.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Parse `90`, `90s`, `2m`, `1h` into a duration.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let v: f64 = num
        .parse()
        .with_context(|| format!("duration '{s}': expected a number with s, m or h"))?;
    let secs = match unit {
        "" | "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        u => bail!("duration '{s}': unknown unit '{u}' (s, m or h)"),
    };
    anyhow::ensure!(secs.is_finite() && secs > 0.0, "duration '{s}' must be > 0");
    Ok(Duration::from_secs_f64(secs))
}

/// One `/proc` sample of the process under test.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
}

fn sample(pid: u32, t0: Instant) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample {
        t_s: t0.elapsed().as_secs_f64(),
        rss_kib: field("VmRSS:")?,
        fds,
        threads: field("Threads:")?,
    })
}

fn median(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

/// Resource trend of the samples taken after `warmup_s` (by then both bundle variants have
/// been loaded and swapped once): medians of the first and last quarter, and fitted growth.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trend {
    pub warmup_s: f64,
    pub rss_kib: (u64, u64),
    pub rss_growth_percent: f64,
    pub fds: (u64, u64),
    pub threads: (u64, u64),
}

pub fn trend(samples: &[Sample], warmup_s: f64) -> Trend {
    let after: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.t_s >= warmup_s)
        .collect();
    let q = (after.len() / 4).max(1);
    let (first, last) = (
        &after[..q.min(after.len())],
        &after[after.len().saturating_sub(q)..],
    );
    let med = |s: &[Sample], f: fn(&Sample) -> u64| median(s.iter().map(f).collect());
    let rss = (med(first, |s| s.rss_kib), med(last, |s| s.rss_kib));
    Trend {
        warmup_s,
        rss_kib: rss,
        rss_growth_percent: fitted_growth_percent(&after),
        fds: (med(first, |s| s.fds), med(last, |s| s.fds)),
        threads: (med(first, |s| s.threads), med(last, |s| s.threads)),
    }
}

/// Growth of resident memory over the samples, from a least-squares line: slope times the
/// time covered, as a share of the mean. Each swap moves the resident set a few percent either
/// way (which pages the new network lands on); a leak shows as a slope, the noise averages out.
fn fitted_growth_percent(s: &[Sample]) -> f64 {
    if s.len() < 2 {
        return 0.0;
    }
    let n = s.len() as f64;
    let (mt, mr) = (
        s.iter().map(|x| x.t_s).sum::<f64>() / n,
        s.iter().map(|x| x.rss_kib as f64).sum::<f64>() / n,
    );
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for x in s {
        sxy += (x.t_s - mt) * (x.rss_kib as f64 - mr);
        sxx += (x.t_s - mt).powi(2);
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    slope * (s[s.len() - 1].t_s - s[0].t_s) / mr.max(1.0) * 100.0
}

/// A copy of `src` whose manifest says `version` (same network, so it swaps in place).
fn variant(src: &Path, dst: &Path, version: &str) -> Result<()> {
    let b = bevrt_models::Bundle::load(src)?;
    if dst.exists() {
        std::fs::remove_dir_all(dst)?;
    }
    let mut m = b.manifest.clone();
    m.version = version.into();
    let files: Vec<(PathBuf, String)> = b
        .files()
        .map(|f| (src.join(&f.file), f.file.clone()))
        .collect();
    bevrt_models::write_bundle(dst, m, &files)?;
    Ok(())
}

/// Write `src` as version `0.1.n` into `dir` and deploy it.
fn deploy_variant(
    store: &bevrt_models::store::Store,
    src: &Path,
    dir: &Path,
    n: usize,
) -> Result<()> {
    variant(src, dir, &format!("0.1.{n}"))?;
    store
        .deploy(dir, None, Default::default())
        .map(|_| ())
        .with_context(|| format!("deploy {}", dir.display()))
}

pub struct SoakConfig<'a> {
    /// Largest acceptable resident-memory growth after warm-up, percent.
    pub max_rss_growth: f64,
    pub bevrt: &'a Path,
    pub bundle: &'a Path,
    pub out: &'a Path,
    pub duration: Duration,
    pub fault_every: Duration,
    pub seed: u64,
}

/// Run the soak; `Ok(true)` when every check passed (the report says which did not).
pub fn soak(c: &SoakConfig) -> Result<bool> {
    let out = c.out.join("soak");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
    // Two bundle directories in turn, each deploy one version higher (the store refuses
    // downgrades).
    let variants = [out.join("bundle-v1"), out.join("bundle-v2")];
    let store = bevrt_models::store::Store::open(&out.join("store"), true)?;
    deploy_variant(&store, c.bundle, &variants[0], 0)?;
    let calib = bevrt_models::Bundle::load(c.bundle)?
        .manifest
        .calibration
        .as_ref()
        .map(|f| c.bundle.join(&f.file));
    let calib_copy = out.join("calibration.toml");
    if let Some(p) = &calib {
        std::fs::copy(p, &calib_copy).with_context(|| format!("{}", p.display()))?;
    }
    let every = c.fault_every.as_secs_f64();
    let mut args: Vec<String> = [
        "run",
        "--store",
        &store.dir.to_string_lossy(),
        "--source",
        &format!("sim:?seed={}&unplug_every={every}&unplug_for=1.5", c.seed),
        "--backend",
        "cpu",
        "--sinks",
        "jsonl",
        "--duration",
        &c.duration.as_secs_f64().to_string(),
        "--fault-sink-stall",
        &format!("{every}:300"),
        "--report-every",
        "30",
        "--json",
        "--out",
        &out.join("run").to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if calib.is_some() {
        args.extend(["--calib".into(), calib_copy.to_string_lossy().into_owned()]);
    }
    let log_path = out.join("bevrt.log");
    let mut child = std::process::Command::new(c.bevrt)
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .with_context(|| format!("{}: cannot start", c.bevrt.display()))?;
    let pid = child.id();
    let t0 = Instant::now();
    let mut samples = vec![];
    let mut csv = std::io::BufWriter::new(std::fs::File::create(out.join("samples.csv"))?);
    writeln!(csv, "t_s,rss_kib,fds,threads")?;
    let (mut deploys, mut calib_writes, mut fault_no) = (0u64, 0u64, 0u64);
    let mut next_fault = t0 + c.fault_every;
    let sample_every = Duration::from_secs_f64((c.duration.as_secs_f64() / 200.0).clamp(0.5, 10.0));
    let mut next_sample = t0;
    // Stop injecting well before the end, so the last fault has time to settle.
    let faults_until = c.duration.saturating_sub(c.fault_every / 2);
    while child.try_wait()?.is_none() {
        let now = Instant::now();
        if now >= next_sample {
            next_sample += sample_every;
            if let Some(s) = sample(pid, t0) {
                writeln!(csv, "{:.1},{},{},{}", s.t_s, s.rss_kib, s.fds, s.threads)?;
                samples.push(s);
            }
        }
        if now >= next_fault && now - t0 < faults_until {
            next_fault += c.fault_every;
            fault_no += 1;
            if fault_no % 2 == 1 {
                let next = deploys as usize + 1;
                deploy_variant(&store, c.bundle, &variants[next % 2], next)?;
                deploys += 1;
            } else if calib.is_some() {
                // Same content, new mtime: a reload the pipeline must apply between frames.
                let text = std::fs::read(&calib_copy)?;
                std::fs::write(&calib_copy, text)?;
                calib_writes += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    csv.flush()?;
    let output = child.wait_with_output()?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("bevrt gave no JSON report; see {}", log_path.display()))?;
    let injected = Injected {
        // Warm-up: the first two deploys (faults 1 and 3) and the trial after the second.
        warmup_s: 3.5 * c.fault_every.as_secs_f64(),
        deploys,
        calib_writes,
        exited_ok: output.status.success(),
        max_rss_growth: c.max_rss_growth,
    };
    judge(&out, &report, &samples, &injected)
}

/// What the harness did to the run, and how the process ended.
struct Injected {
    warmup_s: f64,
    deploys: u64,
    calib_writes: u64,
    exited_ok: bool,
    max_rss_growth: f64,
}

fn judge(
    out: &Path,
    report: &serde_json::Value,
    samples: &[Sample],
    inj: &Injected,
) -> Result<bool> {
    let u = |k: &str| report[k].as_u64().unwrap_or(0);
    let Injected {
        warmup_s,
        deploys,
        calib_writes,
        exited_ok,
        max_rss_growth,
    } = *inj;
    let after = samples.iter().filter(|s| s.t_s >= warmup_s).count();
    anyhow::ensure!(
        after >= 8,
        "only {after} resource samples after the {warmup_s:.0} s warm-up: run longer than 4 fault periods"
    );
    let t = trend(samples, warmup_s);
    let mut checks: Vec<(String, bool)> = vec![
        (
            format!("exit status ok, ended by {}", report["ended_by"]),
            exited_ok && report["ended_by"] == "duration",
        ),
        (
            format!(
                "{} frames processed, {} inference errors",
                u("frames_processed"),
                u("inference_errors")
            ),
            u("frames_processed") > 0 && u("inference_errors") == 0,
        ),
        (
            format!(
                "{deploys} deploys: {} swaps, {} rollbacks, {} refused",
                u("model_swaps"),
                u("model_rollbacks"),
                u("model_updates_refused")
            ),
            u("model_swaps") == deploys
                && u("model_rollbacks") == 0
                && u("model_updates_refused") == 0,
        ),
        (
            format!(
                "{calib_writes} calibration rewrites: {} reloads, {} errors",
                u("calibration_reloads"),
                u("calibration_errors")
            ),
            u("calibration_reloads") == calib_writes && u("calibration_errors") == 0,
        ),
        (
            format!(
                "camera unplugs: {} transient source errors",
                u("source_errors")
            ),
            u("source_errors") > 0,
        ),
        (
            format!(
                "sink stalls: {} results written, {} sink errors",
                u("sink_written"),
                u("sink_errors")
            ),
            u("sink_errors") == 0,
        ),
        (
            format!(
                "resident memory {} -> {} KiB (medians of first and last quarter), fitted growth {:+.2} % (limit {max_rss_growth} %)",
                t.rss_kib.0, t.rss_kib.1, t.rss_growth_percent
            ),
            t.rss_growth_percent < max_rss_growth,
        ),
        (
            format!("file descriptors {} -> {}", t.fds.0, t.fds.1),
            t.fds.1 <= t.fds.0,
        ),
        (
            format!("threads {} -> {}", t.threads.0, t.threads.1),
            t.threads.1 <= t.threads.0,
        ),
    ];
    let ok = checks.iter().all(|(_, pass)| *pass);
    for (what, pass) in &mut checks {
        println!("{} {what}", if *pass { "PASS" } else { "FAIL" });
    }
    let summary = serde_json::json!({
        "ok": ok,
        "checks": checks.iter().map(|(w, p)| serde_json::json!({"check": w, "pass": p})).collect::<Vec<_>>(),
        "trend": t,
        "deploys": deploys,
        "calibration_rewrites": calib_writes,
        "samples": samples.len(),
        "run": report,
    });
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!("soak report: {}", out.join("report.json").display());
    Ok(ok)
}
