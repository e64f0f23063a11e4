//! `bevrt-tool hil`: hardware-in-the-loop without the car. Runs the real `bevrt` binary as a
//! subprocess on a simulator recording, injects faults, and checks that the pipeline recovers
//! and loses nothing it must keep. Writes a human table and a JUnit XML report.
//!
//! Fault matrix (each scenario is one `bevrt run`, judged on its `--json` report and outputs):
//! - `baseline`: every frame processed, no error, p99 of every per-frame stage within its
//!   budget (inference `--budget-ms`; preprocess, postprocess, sink `--stage-budget-ms`);
//! - `dropped_frames`: the recording lacks every 5th frame; the rest are processed and the
//!   gaps show in the result sequence numbers;
//! - `corrupt_frames`: 3 frame files truncated; each is a counted source error, all others
//!   processed in order;
//! - `stalled_camera`: played at recorded timestamps with a 1.5 s hole; the run waits through
//!   it and processes every frame;
//! - `slow_sink`: every sink write delayed 60 ms at 50 fps (3 frame periods); sink work is dropped and counted,
//!   frames are not;
//! - `camera_lost`: the live camera (`sim:` with `unplug_at`/`unplug_for`) disappears for
//!   1.5 s and returns; each reconnect attempt is a counted transient source error, the run
//!   goes on and ends normally, and the outage shows as one gap in the sequence numbers;
//! - `bundle_replaced`: the bundle's model file is overwritten with garbage while running; the
//!   loaded network keeps running (designed behaviour: a bundle is read once at load), the
//!   process exits cleanly, and a fresh start refuses the damaged bundle naming the file.
//!
//! - `map_quality` (BEV bundles): the baseline run's maps against the recording's BEV ground
//!   truth, per-class IoU and mIoU over visible cells, at least `--min-miou`. The recording is
//!   simulated on the bundle's grid with the bundle's camera.
//!
//! The V4L2 source's own reconnect (a real device unplugged) needs a device and is not in the
//! matrix; `camera_lost` exercises the same pipeline path with the simulated camera.
//!
//! Split over machines (the Ray driver, `scripts/fleet`): `--scenarios a,b` runs some of the
//! matrix, `--partial OUT.json` writes their outcomes instead of the report, and `hil merge
//! PART...` makes the one table and JUnit report of all of them (each scenario once). `--list`
//! prints the scenarios a bundle gets.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct HilArgs {
    #[command(subcommand)]
    pub sub: Option<HilSub>,
    /// Bundle under test.
    #[arg(long, required = true)]
    pub bundle: Option<PathBuf>,
    /// Work directory (recordings, outputs, report); created.
    #[arg(long, default_value = "out/hil")]
    pub out: PathBuf,
    /// Simulator seed and frames for the test recording.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 60)]
    pub frames: u64,
    /// p99 inference budget in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    pub budget_ms: f64,
    /// p99 budget of each other per-frame stage (preprocess, postprocess, sink write), ms.
    #[arg(long, default_value_t = 20.0)]
    pub stage_budget_ms: f64,
    /// The bevrt binary (default: next to this bevrt-tool).
    #[arg(long)]
    pub bevrt: Option<PathBuf>,
    /// BEV bundles: lowest acceptable mIoU (percent) of the baseline maps.
    #[arg(long, default_value_t = 30.0)]
    pub min_miou: f64,
    /// JUnit XML report path (default OUT/junit.xml).
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Instead of the fault matrix: a soak run of this long (e.g. 1h, 2m, 90s) at full rate,
    /// with calibration reloads, sink stalls, camera unplugs and bundle swaps, watching
    /// memory, file descriptors and threads (see `soak.rs`).
    #[arg(long)]
    pub soak: Option<String>,
    /// Soak: seconds between injected faults.
    #[arg(long, default_value_t = 120.0)]
    pub fault_every: f64,
    /// Soak: largest acceptable resident-memory growth after warm-up, percent.
    #[arg(long, default_value_t = 1.0)]
    pub max_rss_growth: f64,
    /// Run only these scenarios (comma-separated names; `--list` prints them).
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Write the outcomes to this JSON file instead of the report (for `hil merge`).
    #[arg(long, value_name = "OUT.json")]
    pub partial: Option<PathBuf>,
    /// Print the scenarios this bundle gets, one per line, and stop.
    #[arg(long)]
    pub list: bool,
}

#[derive(clap::Subcommand)]
pub enum HilSub {
    /// One table and JUnit report from `--partial` outcomes of several runs (each scenario once).
    Merge {
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        /// JUnit XML report path.
        #[arg(long, default_value = "junit.xml")]
        junit: PathBuf,
    },
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Outcome {
    name: String,
    seconds: f64,
    failure: Option<String>,
    detail: String,
}

/// What `--partial` writes: the outcomes and what they were run on.
#[derive(serde::Serialize, serde::Deserialize)]
struct HilPart {
    format: String,
    bundle: String,
    seed: u64,
    frames: u64,
    outcomes: Vec<Outcome>,
}

const PART_FORMAT: &str = "bevrt-hil-outcomes/1";

fn bevrt_path(a: &HilArgs) -> Result<PathBuf> {
    if let Some(p) = &a.bevrt {
        return Ok(p.clone());
    }
    let me = std::env::current_exe()?;
    let p = me.with_file_name("bevrt");
    anyhow::ensure!(
        p.is_file(),
        "{}: bevrt binary not found (give --bevrt)",
        p.display()
    );
    Ok(p)
}

/// Run bevrt and parse its final JSON report (stdout); stderr is kept for the failure text.
fn run_bevrt(bevrt: &Path, args: &[String]) -> Result<(serde_json::Value, String, bool)> {
    let out = std::process::Command::new(bevrt)
        .args(args)
        .arg("--json")
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("starting {}", bevrt.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if stderr.contains("panicked") {
        bail!("bevrt panicked: {stderr}");
    }
    let v = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    Ok((v, stderr, out.status.success()))
}

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(u64::MAX)
}

/// Copy a recording, rewriting its index with `edit(seq, timestamp_ns, rest) -> Option<line>`.
fn derive_recording(
    src: &Path,
    dst: &Path,
    mut edit: impl FnMut(u64, u64, &str) -> Option<String>,
) -> Result<()> {
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst.join("frames"))?;
    for f in ["recording.toml", "calibration.toml"] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), dst.join(f))?;
        }
    }
    for e in std::fs::read_dir(src.join("frames"))? {
        let e = e?;
        std::fs::copy(e.path(), dst.join("frames").join(e.file_name()))?;
    }
    let index = std::fs::read_to_string(src.join("frames.csv"))?;
    let mut out = String::new();
    for (i, line) in index.lines().enumerate() {
        if i == 0 {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut cols = line.splitn(3, ',');
        let seq: u64 = cols.next().unwrap_or("0").parse()?;
        let ts: u64 = cols.next().unwrap_or("0").parse()?;
        let rest = cols.next().unwrap_or("");
        // ground truth is not copied: the HIL runs here judge the pipeline, not the map
        let rest = rest.split(',').next().unwrap_or("");
        if let Some(l) = edit(seq, ts, rest) {
            out.push_str(&l);
            out.push('\n');
        }
    }
    std::fs::write(dst.join("frames.csv"), out)?;
    Ok(())
}

fn seqs(results: &Path) -> Vec<u64> {
    std::fs::read_to_string(results)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["seq"].as_u64())
        .collect()
}

/// One fault scenario: judged on what `bevrt` reported and wrote; `(passed, detail)`.
type Scenario = fn(&HilCtx) -> Result<(bool, String)>;

/// A row of the fault matrix.
struct ScenarioSpec {
    name: &'static str,
    run: Scenario,
    /// BEV bundles only.
    bev_only: bool,
    /// A scenario whose outputs this one reads: run first (unreported) when not chosen too.
    needs: Option<&'static str>,
}

const fn row(name: &'static str, run: Scenario) -> ScenarioSpec {
    ScenarioSpec {
        name,
        run,
        bev_only: false,
        needs: None,
    }
}

/// The fault matrix, in the order it runs (the module comment says what each one checks).
const SCENARIOS: &[ScenarioSpec] = &[
    row("baseline", baseline),
    ScenarioSpec {
        bev_only: true,
        needs: Some("baseline"), // scores the baseline run's maps
        ..row("map_quality", map_quality)
    },
    row("dropped_frames", dropped_frames),
    row("corrupt_frames", corrupt_frames),
    row("stalled_camera", stalled_camera),
    row("slow_sink", slow_sink),
    row("camera_lost", camera_lost),
    row("bundle_replaced", bundle_replaced),
];

/// What every scenario works from: the arguments, the binary, the bundle and the base
/// recording (`n` frames) the scenarios derive theirs from.
struct HilCtx<'a> {
    a: &'a HilArgs,
    bevrt: PathBuf,
    bundle: bevrt_models::Bundle,
    base: PathBuf,
    n: u64,
}

impl HilCtx<'_> {
    /// `bevrt run` arguments for the bundle under test on `src`, writing into `out`.
    fn run_args(&self, src: String, out: &Path, extra: &[&str]) -> Vec<String> {
        let bundle = self.a.bundle().display().to_string();
        let mut v: Vec<String> = ["run", "--bundle", &bundle, "--source", &src, "--out"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(out.display().to_string());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }
}

pub fn hil(a: &HilArgs) -> Result<()> {
    if let Some(HilSub::Merge { parts, junit }) = &a.sub {
        return merge(parts, junit);
    }
    if let Some(d) = &a.soak {
        return soak(a, d);
    }
    let bundle = bevrt_models::Bundle::load(a.bundle())?;
    let chosen = chosen_scenarios(a, &bundle)?;
    if a.list {
        for s in &chosen {
            println!("{}", s.name);
        }
        return Ok(());
    }
    let x = prepare(a, bundle)?;
    let mut outcomes: Vec<Outcome> = vec![];
    for s in &chosen {
        if let Some(need) = s.needs
            && !chosen.iter().any(|c| c.name == need)
            && let Some(pre) = SCENARIOS.iter().find(|p| p.name == need)
        {
            let _ = (pre.run)(&x); // its failure shows in the scenario that reads it
        }
    }
    for s in chosen {
        let t = Instant::now();
        let (failure, detail) = match (s.run)(&x) {
            Ok((true, d)) => (None, d),
            Ok((false, d)) => (Some(d.clone()), d),
            Err(e) => (Some(format!("{e:#}")), format!("{e:#}")),
        };
        outcomes.push(Outcome {
            name: s.name.to_string(),
            seconds: t.elapsed().as_secs_f64(),
            failure,
            detail,
        });
    }
    if let Some(p) = &a.partial {
        let part = HilPart {
            format: PART_FORMAT.into(),
            bundle: a.bundle().display().to_string(),
            seed: a.seed,
            frames: a.frames,
            outcomes,
        };
        std::fs::write(p, serde_json::to_string_pretty(&part)?)
            .with_context(|| format!("{}: cannot write", p.display()))?;
        return Ok(());
    }
    let junit = a.junit.clone().unwrap_or_else(|| a.out.join("junit.xml"));
    report(&junit, &outcomes)
}

impl HilArgs {
    /// The bundle (clap requires it unless a subcommand is given).
    fn bundle(&self) -> &Path {
        self.bundle.as_deref().unwrap_or(Path::new(""))
    }
}

/// The matrix's scenarios for this bundle (BEV-only ones only for BEV bundles), or those named
/// with `--scenarios`, in matrix order.
fn chosen_scenarios(
    a: &HilArgs,
    bundle: &bevrt_models::Bundle,
) -> Result<Vec<&'static ScenarioSpec>> {
    let is_bev = bundle.manifest.task == bevrt_models::Task::Bev;
    let all: Vec<&ScenarioSpec> = SCENARIOS.iter().filter(|s| is_bev || !s.bev_only).collect();
    for want in &a.scenarios {
        if !all.iter().any(|s| s.name == want) {
            let names: Vec<&str> = all.iter().map(|s| s.name).collect();
            bail!(
                "--scenarios: no scenario '{want}' for this bundle (it gets: {})",
                names.join(", ")
            );
        }
    }
    Ok(all
        .into_iter()
        .filter(|s| a.scenarios.is_empty() || a.scenarios.iter().any(|w| w == s.name))
        .collect())
}

/// `hil merge`: the parts' outcomes, each scenario once, in matrix order, as one report.
fn merge(parts: &[PathBuf], junit: &Path) -> Result<()> {
    let mut outcomes: Vec<Outcome> = vec![];
    let mut first: Option<(String, u64, u64)> = None;
    for p in parts {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
        let part: HilPart = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not HIL outcomes (bevrt-tool hil --partial)",
                p.display()
            )
        })?;
        anyhow::ensure!(
            part.format == PART_FORMAT,
            "{}: format '{}', expected '{PART_FORMAT}'",
            p.display(),
            part.format
        );
        let run = (part.bundle.clone(), part.seed, part.frames);
        if *first.get_or_insert(run.clone()) != run {
            bail!(
                "{}: outcomes of another run (bundle, seed or frames differ)",
                p.display()
            );
        }
        for o in part.outcomes {
            if outcomes.iter().any(|x| x.name == o.name) {
                bail!("{}: scenario '{}' is in two parts", p.display(), o.name);
            }
            outcomes.push(o);
        }
    }
    let order = |n: &str| {
        SCENARIOS
            .iter()
            .position(|s| s.name == n)
            .unwrap_or(usize::MAX)
    };
    outcomes.sort_by_key(|o| order(&o.name));
    report(junit, &outcomes)
}

fn soak(a: &HilArgs, duration: &str) -> Result<()> {
    let bevrt = bevrt_path(a)?;
    anyhow::ensure!(
        a.fault_every.is_finite() && a.fault_every >= 5.0,
        "--fault-every {}: at least 5 seconds (a fault needs time to settle)",
        a.fault_every
    );
    let ok = crate::soak::soak(&crate::soak::SoakConfig {
        bevrt: &bevrt,
        bundle: a.bundle(),
        out: &a.out,
        duration: crate::soak::parse_duration(duration)?,
        fault_every: Duration::from_secs_f64(a.fault_every),
        seed: a.seed,
        max_rss_growth: a.max_rss_growth,
    })?;
    if !ok {
        bail!(
            "soak failed (see {})",
            a.out.join("soak/report.json").display()
        );
    }
    Ok(())
}

/// Record the base drive (a BEV bundle's is filmed with its camera on its grid, so the maps
/// can be scored).
fn prepare(a: &HilArgs, bundle: bevrt_models::Bundle) -> Result<HilCtx<'_>> {
    let bevrt = bevrt_path(a)?;
    std::fs::create_dir_all(&a.out)?;
    let base = a.out.join("rec-base");
    let _ = std::fs::remove_dir_all(&base);
    let mut cfg = bevrt_sim::SimConfig::with_seed(a.seed);
    if bundle.manifest.task == bevrt_models::Task::Bev
        && let (Some(g), Some(c)) = (&bundle.manifest.grid, &bundle.manifest.calibration)
    {
        let cal = bevrt_calib::Calibration::load(bundle.dir.join(&c.file))?;
        cfg.grid = g.clone();
        cfg.camera = cal.camera;
        cfg.extrinsics = cal.extrinsics;
    }
    bevrt_sim::record(&cfg, a.frames, &base, &Default::default(), &mut |_, _| {})
        .with_context(|| format!("recording {}", base.display()))?;
    Ok(HilCtx {
        a,
        bevrt,
        bundle,
        base,
        n: a.frames,
    })
}

fn baseline(x: &HilCtx) -> Result<(bool, String)> {
    let (a, bevrt, base, n) = (x.a, &x.bevrt, &x.base, x.n);
    let out = a.out.join("baseline");
    let (r, err, ok) = run_bevrt(
        bevrt,
        &x.run_args(format!("replay:{}", base.display()), &out, &[]),
    )?;
    let p99 = |stage: &str| {
        r["stages"][stage]["p99_ms"]
            .as_f64()
            .unwrap_or(f64::INFINITY)
    };
    // Per-stage p99 budgets: inference has its own; the other per-frame stages share one.
    let budgets = [
        ("preprocess", a.stage_budget_ms),
        ("inference", a.budget_ms),
        ("postprocess", a.stage_budget_ms),
        ("sink", a.stage_budget_ms),
    ];
    let over: Vec<String> = budgets
        .iter()
        .filter(|(st, b)| p99(st) > *b)
        .map(|(st, b)| format!("{st} p99 {:.2} ms over {b} ms", p99(st)))
        .collect();
    let good = ok
        && u(&r, "frames_processed") == n
        && u(&r, "source_errors") == 0
        && u(&r, "inference_errors") == 0
        && over.is_empty();
    Ok((
        good,
        format!(
            "processed {}/{n}; p99 preprocess {:.2}, inference {:.2} (budget {}), postprocess {:.2}, sink {:.2} ms (budget {}){}{}",
            u(&r, "frames_processed"),
            p99("preprocess"),
            p99("inference"),
            a.budget_ms,
            p99("postprocess"),
            p99("sink"),
            a.stage_budget_ms,
            if over.is_empty() {
                String::new()
            } else {
                format!("; {}", over.join(", "))
            },
            if ok { "" } else { &err }
        ),
    ))
}

fn map_quality(x: &HilCtx) -> Result<(bool, String)> {
    let (a, base, bundle) = (x.a, &x.base, &x.bundle);
    let rec = bevrt_runtime::source::replay::Recording::open(base)?;
    let maps = a.out.join("baseline/maps");
    let classes = &bundle.manifest.classes;
    let mut pairs = vec![];
    for e in &rec.frames {
        let gt_path = e.gt.as_ref().context("recording without ground truth")?;
        let gt = image::open(gt_path)
            .with_context(|| format!("{}", gt_path.display()))?
            .to_luma8()
            .into_raw();
        let mp = maps.join(format!("{:06}.png", e.seq));
        let pred = image::open(&mp)
            .with_context(|| format!("{}: baseline map missing", mp.display()))?
            .to_rgb8();
        pairs.push((
            gt,
            bevrt_runtime::postprocess::class_map_from_rgb(pred.as_raw(), classes),
        ));
    }
    let names: Vec<String> = classes.iter().map(|c| c.name.clone()).collect();
    let refs: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(g, p)| (g.as_slice(), p.as_slice()))
        .collect();
    let (cells, miou, _, per) = bevrt_runtime::postprocess::score_maps(&refs, &names);
    let detail = per
        .iter()
        .filter_map(|c| c.iou.map(|v| format!("{} {v:.0}", c.class)))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((
        miou >= a.min_miou,
        format!(
            "mIoU {miou:.1} % over {cells} visible cells (min {}); {detail}",
            a.min_miou
        ),
    ))
}

fn dropped_frames(x: &HilCtx) -> Result<(bool, String)> {
    let (a, bevrt, base, n) = (x.a, &x.bevrt, &x.base, x.n);
    let rec = a.out.join("rec-dropped");
    derive_recording(base, &rec, |s, ts, f| {
        (s % 5 != 4).then(|| format!("{s},{ts},{f},"))
    })?;
    let out = a.out.join("dropped");
    let (r, _, ok) = run_bevrt(
        bevrt,
        &x.run_args(format!("replay:{}", rec.display()), &out, &[]),
    )?;
    let removed = (0..n).filter(|s| s % 5 == 4).count() as u64;
    // a frame missing at the very end leaves no visible gap
    let visible = removed - u64::from(n > 0 && (n - 1) % 5 == 4);
    let want = n - removed;
    let s = seqs(&out.join("results.jsonl"));
    let gaps = s.windows(2).filter(|w| w[1] != w[0] + 1).count() as u64;
    let good = ok && u(&r, "frames_processed") == want && gaps == visible;
    Ok((
        good,
        format!(
            "processed {}/{want} delivered, {gaps} sequence gaps in results (expected {visible})",
            u(&r, "frames_processed")
        ),
    ))
}

fn corrupt_frames(x: &HilCtx) -> Result<(bool, String)> {
    let (a, bevrt, base, n) = (x.a, &x.bevrt, &x.base, x.n);
    let rec = a.out.join("rec-corrupt");
    derive_recording(base, &rec, |s, ts, f| Some(format!("{s},{ts},{f},")))?;
    let bad = [3u64, n / 2, n - 2];
    for k in bad {
        let p = rec.join(format!("frames/{k:06}.png"));
        let bytes = std::fs::read(&p)?;
        std::fs::write(&p, &bytes[..bytes.len() / 3])?;
    }
    let out = a.out.join("corrupt");
    let (r, _, ok) = run_bevrt(
        bevrt,
        &x.run_args(format!("replay:{}", rec.display()), &out, &[]),
    )?;
    let s = seqs(&out.join("results.jsonl"));
    let in_order = s.windows(2).all(|w| w[0] < w[1]);
    let good = ok
        && u(&r, "source_errors") == 3
        && u(&r, "frames_processed") == n - 3
        && in_order
        && !bad.iter().any(|b| s.contains(b));
    Ok((
        good,
        format!(
            "source errors {}, processed {}/{}, in order {in_order}",
            u(&r, "source_errors"),
            u(&r, "frames_processed"),
            n - 3
        ),
    ))
}

fn stalled_camera(x: &HilCtx) -> Result<(bool, String)> {
    let (a, bevrt, base, n) = (x.a, &x.bevrt, &x.base, x.n);
    let rec = a.out.join("rec-stall");
    let hole = 1_500_000_000u64;
    derive_recording(base, &rec, |s, ts, f| {
        let ts = if s >= n / 2 { ts + hole } else { ts };
        Some(format!("{s},{ts},{f},"))
    })?;
    let out = a.out.join("stall");
    let t = Instant::now();
    let (r, _, ok) = run_bevrt(
        bevrt,
        &x.run_args(format!("replay:{}?realtime", rec.display()), &out, &[]),
    )?;
    let el = t.elapsed();
    let good = ok && u(&r, "frames_processed") == n && el >= Duration::from_millis(1500);
    Ok((
        good,
        format!(
            "processed {}/{n} across a 1.5 s stall ({:.1} s run), dropped {}",
            u(&r, "frames_processed"),
            el.as_secs_f64(),
            u(&r, "frames_dropped")
        ),
    ))
}

fn slow_sink(x: &HilCtx) -> Result<(bool, String)> {
    let (a, bevrt, base, n) = (x.a, &x.bevrt, &x.base, x.n);
    let out = a.out.join("slow-sink");
    let (r, _, ok) = run_bevrt(
        bevrt,
        &x.run_args(
            format!("replay:{}?fps=50", base.display()),
            &out,
            &["--fault-sink-delay-ms", "60"],
        ),
    )?;
    let good = ok
        && u(&r, "frames_processed") + u(&r, "frames_dropped") == n
        && u(&r, "sink_written") + u(&r, "sink_dropped") == u(&r, "frames_processed")
        && u(&r, "sink_dropped") > 0;
    Ok((
        good,
        format!(
            "processed {}, sink wrote {}, sink dropped {} (frames dropped {})",
            u(&r, "frames_processed"),
            u(&r, "sink_written"),
            u(&r, "sink_dropped"),
            u(&r, "frames_dropped")
        ),
    ))
}

fn camera_lost(x: &HilCtx) -> Result<(bool, String)> {
    let (a, bevrt) = (x.a, &x.bevrt);
    // The live sim camera disappears before frame 10 for 1.5 s and comes back.
    let out = a.out.join("camera-lost");
    let want = 30u64;
    let src = format!("sim:?seed={}&fps=20&unplug_at=10&unplug_for=1.5", a.seed);
    let (r, err, ok) = run_bevrt(
        bevrt,
        &x.run_args(src, &out, &["--max-frames", &want.to_string()]),
    )?;
    let s = seqs(&out.join("results.jsonl"));
    let gap = s.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let errors = u(&r, "source_errors");
    let ended = r["ended_by"].as_str().unwrap_or("").to_string();
    let good = ok
        && u(&r, "frames_processed") == want
        && errors >= 3
        && errors != u64::MAX
        && gap >= 20
        && ended == "max frames";
    Ok((
        good,
        format!(
            "processed {}/{want} ({ended}), {errors} reconnect attempts counted as source errors, \
             largest sequence gap {gap} frames (the outage){}",
            u(&r, "frames_processed"),
            if ok {
                String::new()
            } else {
                format!("; {err}")
            }
        ),
    ))
}

fn bundle_replaced(x: &HilCtx) -> Result<(bool, String)> {
    let (a, bevrt, bundle) = (x.a, &x.bevrt, &x.bundle);
    let copy = a.out.join("bundle-copy");
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy)?;
    for f in bundle
        .files()
        .map(|f| f.file.as_str())
        .chain(["bundle.toml"])
    {
        if let Some(parent) = copy.join(f).parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(bundle.dir.join(f), copy.join(f))?;
    }
    let out = a.out.join("bundle-replaced");
    let mut args = x.run_args("sim:?seed=2&fps=25".into(), &out, &["--duration", "2"]);
    args[2] = copy.display().to_string();
    let child = std::process::Command::new(bevrt)
        .args(&args)
        .arg("--json")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(700));
    let model = bundle
        .manifest
        .model("model")
        .or_else(|| bundle.manifest.model("encoder"))
        .map(|m| m.file.clone())
        .unwrap_or_else(|| "model.onnx".into());
    std::fs::write(copy.join(&model), b"replaced while running")?;
    let o = child.wait_with_output()?;
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    let (r2, err2, ok2) = run_bevrt(bevrt, &args)?;
    let refused = !ok2 && r2.is_null() && err2.contains(&model) && err2.contains("sha256 mismatch");
    let good = o.status.success()
        && u(&r, "frames_processed") >= 25
        && u(&r, "inference_errors") == 0
        && refused;
    Ok((
        good,
        format!(
            "running process kept its network: {} frames, 0 errors expected ({}); restart refused: {refused}",
            u(&r, "frames_processed"),
            u(&r, "inference_errors")
        ),
    ))
}

/// The human table, the JUnit XML, and the verdict.
fn report(junit: &Path, outcomes: &[Outcome]) -> Result<()> {
    println!(
        "{:<16} {:<6} {:>7}  detail",
        "scenario", "result", "seconds"
    );
    for o in outcomes {
        println!(
            "{:<16} {:<6} {:>7.2}  {}",
            o.name,
            if o.failure.is_none() { "pass" } else { "FAIL" },
            o.seconds,
            o.detail
        );
    }
    let failures = outcomes.iter().filter(|o| o.failure.is_some()).count();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let total: f64 = outcomes.iter().map(|o| o.seconds).sum();
    x.push_str(&format!(
        "<testsuites tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">\n  <testsuite name=\"bevrt-hil\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{total:.3}\">\n",
        outcomes.len(),
        outcomes.len()
    ));
    for o in outcomes {
        x.push_str(&format!(
            "    <testcase classname=\"hil\" name=\"{}\" time=\"{:.3}\">",
            o.name, o.seconds
        ));
        if let Some(f) = &o.failure {
            x.push_str(&format!("<failure message=\"{}\"/>", xml_escape(f)));
        }
        x.push_str(&format!(
            "<system-out>{}</system-out></testcase>\n",
            xml_escape(&o.detail)
        ));
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    std::fs::write(junit, x).with_context(|| format!("{}: cannot write", junit.display()))?;
    println!(
        "{} passed, {} failed; JUnit report {}",
        outcomes.len() - failures,
        failures,
        junit.display()
    );
    if failures > 0 {
        bail!("{failures} HIL scenario(s) failed");
    }
    Ok(())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
