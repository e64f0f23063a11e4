//! `bevrt-tool` calibration commands: `calibrate`, `birdseye`, `undistort`, `calib-bench`.
//!
//! Wiring (in main.rs): `mod calib_cmd;` and subcommands
//! `Calibrate(calib_cmd::CalibrateArgs)`, `Birdseye(calib_cmd::BirdseyeArgs)`,
//! `Undistort(calib_cmd::UndistortArgs)`, `CalibBench(calib_cmd::CalibBenchArgs)` dispatching to
//! `calib_cmd::calibrate(&a)`, `birdseye(&a)`, `undistort(&a)`, `bench_calib(&a)`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bevrt_calib::calibrate::{CalibOptions, ModelKind};
use bevrt_calib::chessboard::DetectOptions;
use bevrt_calib::pipeline::calibrate_images;
use bevrt_calib::remap::{RemapTable, ideal_camera, ipm_map, undistort_map};
use bevrt_calib::{
    BevGrid, Calibration, CameraModel, Extrinsics, GrayImage, load_camera_yaml, save_ros_yaml,
};
use clap::Args;

/// Calibrate a camera from chessboard images.
#[derive(Args, Debug, Clone)]
pub struct CalibrateArgs {
    /// Inner corners per row x per column, e.g. 9x6.
    #[arg(long, default_value = "9x6")]
    pub board: String,
    /// Square size in metres.
    #[arg(long)]
    pub square: f64,
    /// Camera model: pinhole (plumb_bob) or fisheye (equidistant).
    #[arg(long, default_value = "pinhole")]
    pub model: String,
    /// Keep fx = fy.
    #[arg(long)]
    pub fix_aspect: bool,
    /// Keep the principal point at the image centre.
    #[arg(long)]
    pub fix_principal_point: bool,
    /// Force p1 = p2 = 0 (pinhole).
    #[arg(long)]
    pub zero_tangent: bool,
    /// Output ROS camera_info YAML.
    #[arg(long)]
    pub out: PathBuf,
    /// Optional JSON report.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// camera_name written to the YAML.
    #[arg(long, default_value = "camera")]
    pub name: String,
    /// Detection threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Half size of the subpixel refinement window in px (window 2*N+1). Default: adaptive,
    /// min(5, cell width/2 - 1), so the window stays inside one board cell. `11` is OpenCV's
    /// calibration sample (`-ws=11`), the setting of the shared reference result.
    #[arg(long)]
    pub subpix_window: Option<usize>,
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Inverse perspective mapping of an image onto the ground plane.
#[derive(Args, Debug, Clone)]
pub struct BirdseyeArgs {
    /// Camera YAML (ROS camera_info or OpenCV FileStorage) or a calibration TOML bundle.
    #[arg(long)]
    pub calib: PathBuf,
    /// Extrinsics TOML (not needed with a calibration TOML bundle).
    #[arg(long)]
    pub extrinsics: Option<PathBuf>,
    /// Forward range in metres, MIN:MAX.
    #[arg(long, allow_hyphen_values = true)]
    pub x_range: String,
    /// Lateral range in metres (y left), MIN:MAX.
    #[arg(long, allow_hyphen_values = true)]
    pub y_range: String,
    /// Cell size in metres per output pixel.
    #[arg(long)]
    pub cell: f64,
    /// Height of the plane in metres (vehicle z), 0 = ground.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub z: f64,
    /// Output PNG (row 0 = farthest x, column 0 = leftmost y).
    #[arg(long)]
    pub out: PathBuf,
    pub image: PathBuf,
}

/// Undistort images with a calibration (same size and camera matrix, no distortion).
#[derive(Args, Debug, Clone)]
pub struct UndistortArgs {
    #[arg(long)]
    pub calib: PathBuf,
    /// Output directory (PNG files named after the inputs).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Join a camera YAML (what `calibrate` writes) and an extrinsics TOML into the Calibration
/// TOML that `bevrt run --calib`, bundles and recordings read.
#[derive(Args, Debug, Clone)]
pub struct CalibMergeArgs {
    /// Camera YAML (ROS camera_info or OpenCV FileStorage) or a Calibration TOML whose
    /// camera is kept.
    #[arg(long)]
    pub camera: PathBuf,
    /// Extrinsics TOML (camera-to-vehicle: height, pitch, roll, yaw, or a matrix).
    #[arg(long)]
    pub extrinsics: PathBuf,
    /// Output Calibration TOML (`[camera]` and `[extrinsics]`).
    #[arg(long)]
    pub out: PathBuf,
}

/// Time detection + calibration against OpenCV on the same images in one run.
#[derive(Args, Debug, Clone)]
pub struct CalibBenchArgs {
    /// Folder of chessboard images (*.jpg, *.png); default: $BEVRT_SHARED or ../shared,
    /// data/calib/opencv_left.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, default_value = "9x6")]
    pub board: String,
    #[arg(long, default_value_t = 0.025)]
    pub square: f64,
    /// Repetitions; the best time of each side is reported.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Python interpreter for the OpenCV peer (opencv-python-headless, numpy).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// OpenCV peer script; default: calib/bench/opencv_peer.py of this repository.
    #[arg(long)]
    pub peer: Option<PathBuf>,
    /// Skip the OpenCV peer.
    #[arg(long)]
    pub no_opencv: bool,
    /// Write the result as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn parse_board(s: &str) -> Result<(usize, usize)> {
    let (a, b) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("--board `{s}`: expected COLSxROWS, e.g. 9x6"))?;
    let cols: usize = a
        .trim()
        .parse()
        .with_context(|| format!("--board `{s}`: bad column count"))?;
    let rows: usize = b
        .trim()
        .parse()
        .with_context(|| format!("--board `{s}`: bad row count"))?;
    if cols < 2 || rows < 2 {
        bail!("--board `{s}`: need at least 2x2 inner corners");
    }
    Ok((cols, rows))
}

fn parse_range(name: &str, s: &str) -> Result<(f64, f64)> {
    let (a, b) = s
        .split_once(':')
        .with_context(|| format!("{name} `{s}`: expected MIN:MAX"))?;
    let lo: f64 = a
        .trim()
        .parse()
        .with_context(|| format!("{name} `{s}`: bad MIN"))?;
    let hi: f64 = b
        .trim()
        .parse()
        .with_context(|| format!("{name} `{s}`: bad MAX"))?;
    if !lo.is_finite() || !hi.is_finite() || hi <= lo {
        bail!("{name} `{s}`: MAX must exceed MIN");
    }
    Ok((lo, hi))
}

fn threads(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

fn load_images(paths: &[PathBuf]) -> Result<Vec<(String, GrayImage)>> {
    let pb = indicatif::ProgressBar::new(paths.len() as u64);
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        out.push((p.display().to_string(), GrayImage::load(p)?));
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// `bevrt-tool calibrate`.
pub fn calibrate(a: &CalibrateArgs) -> Result<()> {
    let (cols, rows) = parse_board(&a.board)?;
    if !(a.square > 0.0 && a.square.is_finite()) {
        bail!("--square must be a positive length in metres");
    }
    let model = match a.model.as_str() {
        "pinhole" | "plumb_bob" => ModelKind::Pinhole,
        "fisheye" | "equidistant" => ModelKind::Fisheye,
        m => bail!("--model `{m}`: expected pinhole or fisheye"),
    };
    let opt = CalibOptions {
        model,
        fix_aspect: a.fix_aspect,
        fix_principal_point: a.fix_principal_point,
        zero_tangent: a.zero_tangent,
        ..Default::default()
    };
    // checked before any image is decoded
    if a.subpix_window.is_some_and(|h| !(1..=50).contains(&h)) {
        bail!("--subpix-window: give a half size from 1 to 50 px");
    }
    let images = load_images(&a.images)?;
    let detect = DetectOptions {
        subpix_half_window: a.subpix_window,
        ..Default::default()
    };
    let r = calibrate_images(
        &images,
        cols,
        rows,
        a.square,
        &opt,
        &detect,
        threads(a.threads),
    )?;
    for rej in &r.rejected {
        log::warn!("rejected {}: {}", rej.file, rej.reason);
    }
    let c = &r.calib;
    let cam = &c.camera;
    save_ros_yaml(cam, &a.name, &a.out)?;
    println!(
        "{} views used, {} rejected; RMS {:.4} px; fx {:.3} fy {:.3} cx {:.3} cy {:.3} dist {:?}",
        r.used.len(),
        r.rejected.len(),
        c.rms,
        cam.fx(),
        cam.fy(),
        cam.cx(),
        cam.cy(),
        cam.distortion().coeffs()
    );
    for &i in &c.outlier_views {
        println!(
            "outlier view: {} (RMS {:.3} px)",
            r.used[i], c.per_view_rms[i]
        );
    }
    if let Some(rep) = &a.report {
        let per_view: Vec<_> = r
            .used
            .iter()
            .zip(&c.per_view_rms)
            .enumerate()
            .map(|(i, (f, e))| serde_json::json!({"file": f, "rms_px": e, "outlier": c.outlier_views.contains(&i)}))
            .collect();
        let std: serde_json::Map<String, serde_json::Value> = c
            .param_names
            .iter()
            .zip(&c.std_dev)
            .map(|(n, s)| (n.to_string(), serde_json::json!(s)))
            .collect();
        let j = serde_json::json!({
            "model": if cam.is_fisheye() { "fisheye" } else { "pinhole" },
            "image_width": cam.width(),
            "image_height": cam.height(),
            "board": [cols, rows],
            "square_m": a.square,
            "rms_px": c.rms,
            "fx": cam.fx(), "fy": cam.fy(), "cx": cam.cx(), "cy": cam.cy(),
            "dist": cam.distortion().coeffs(),
            "std_dev": std,
            "views_used": r.used,
            "views_rejected": r.rejected,
            "per_view_rms": per_view,
            "outlier_views": c.outlier_views.iter().map(|&i| r.used[i].clone()).collect::<Vec<_>>(),
            "iterations": c.iterations,
            "detect_s": r.detect_s,
            "solve_s": r.solve_s,
        });
        std::fs::write(rep, serde_json::to_string_pretty(&j)?)
            .with_context(|| format!("writing {}", rep.display()))?;
    }
    Ok(())
}

/// Loads a camera (YAML) or a bundle (TOML with [camera] and [extrinsics]).
fn load_calib(path: &Path, ext: Option<&Path>) -> Result<(CameraModel, Option<Extrinsics>)> {
    if path.extension().is_some_and(|e| e == "toml") {
        let c = Calibration::load(path)?;
        let e = match ext {
            Some(p) => Extrinsics::load(p)?,
            None => c.extrinsics,
        };
        return Ok((c.camera, Some(e)));
    }
    let cam = load_camera_yaml(path)?;
    let e = ext.map(Extrinsics::load).transpose()?;
    Ok((cam, e))
}

fn fit_to_image(cam: CameraModel, w: u32, h: u32, what: &Path) -> CameraModel {
    if (cam.width(), cam.height()) != (w, h) {
        log::warn!(
            "{}: image is {w}x{h}, calibration {}x{}: scaling the intrinsics",
            what.display(),
            cam.width(),
            cam.height()
        );
        cam.scaled(w, h)
    } else {
        cam
    }
}

fn save_rgb(path: &Path, w: usize, h: usize, px: Vec<u8>) -> Result<()> {
    let img = image::RgbImage::from_raw(w as u32, h as u32, px).context("image buffer size")?;
    img.save(path)
        .with_context(|| format!("writing {}", path.display()))
}

/// `bevrt-tool calib-merge`: the written file is read back with the loader a run uses and
/// compared, so what was written is what `bevrt run --calib` will see.
pub fn calib_merge(a: &CalibMergeArgs) -> Result<()> {
    let (camera, _) = load_calib(&a.camera, None)?;
    let extrinsics = Extrinsics::load(&a.extrinsics)?;
    let c = Calibration { camera, extrinsics };
    c.save(&a.out)?;
    let back = Calibration::load(&a.out)?;
    if back.camera != c.camera || !back.extrinsics.same_pose(&c.extrinsics) {
        bail!(
            "{}: reads back different from what was written",
            a.out.display()
        );
    }
    println!(
        "wrote {} ({}x{} {} camera, extrinsics from {})",
        a.out.display(),
        c.camera.width(),
        c.camera.height(),
        if c.camera.is_fisheye() {
            "fisheye"
        } else {
            "pinhole"
        },
        a.extrinsics.display()
    );
    Ok(())
}

/// `bevrt-tool birdseye`.
pub fn birdseye(a: &BirdseyeArgs) -> Result<()> {
    let (cam, ext) = load_calib(&a.calib, a.extrinsics.as_deref())?;
    let ext = ext.context("--extrinsics is required with a camera YAML")?;
    let (x0, x1) = parse_range("--x-range", &a.x_range)?;
    let (y0, y1) = parse_range("--y-range", &a.y_range)?;
    if !a.cell.is_finite() || a.cell <= 0.0 {
        bail!("--cell must be positive");
    }
    let grid = BevGrid {
        x_min: x0 as f32,
        x_max: x1 as f32,
        y_min: y0 as f32,
        y_max: y1 as f32,
        cell: a.cell as f32,
        z_levels: vec![a.z as f32],
        depth: None,
    };
    grid.validate()?;
    let img = image::open(&a.image)
        .with_context(|| format!("reading {}", a.image.display()))?
        .to_rgb8();
    let cam = fit_to_image(cam, img.width(), img.height(), &a.image);
    let t = Instant::now();
    let map = ipm_map(&grid, a.z, &cam, &ext);
    let out = map.apply_u8(img.as_raw(), img.width() as usize, img.height() as usize, 3);
    log::info!("IPM {}x{} in {:?}", map.width, map.height, t.elapsed());
    save_rgb(&a.out, map.width, map.height, out)?;
    println!(
        "wrote {} ({}x{}, {} m/px)",
        a.out.display(),
        map.width,
        map.height,
        a.cell
    );
    Ok(())
}

/// `bevrt-tool undistort`.
pub fn undistort(a: &UndistortArgs) -> Result<()> {
    let (cam, _) = load_calib(&a.calib, None)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut cache: Option<((u32, u32), RemapTable)> = None;
    let pb = indicatif::ProgressBar::new(a.images.len() as u64);
    for p in &a.images {
        let img = image::open(p)
            .with_context(|| format!("reading {}", p.display()))?
            .to_rgb8();
        let size = (img.width(), img.height());
        if cache.as_ref().is_none_or(|c| c.0 != size) {
            let c = fit_to_image(cam.clone(), size.0, size.1, p);
            cache = Some((size, undistort_map(&c, &ideal_camera(&c), None)));
        }
        let Some((_, map)) = cache.as_ref() else {
            unreachable!()
        };
        let out = map.apply_u8(img.as_raw(), size.0 as usize, size.1 as usize, 3);
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "image".into());
        save_rgb(
            &a.out.join(format!("{stem}.png")),
            map.width,
            map.height,
            out,
        )?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    println!(
        "undistorted {} images into {}",
        a.images.len(),
        a.out.display()
    );
    Ok(())
}

/// The calibration figures calib-bench reports for one run.
fn result_json(r: &bevrt_calib::pipeline::PipelineResult) -> serde_json::Value {
    let c = &r.calib;
    serde_json::json!({"views_used": r.used.len(), "rms_px": c.rms, "fx": c.camera.fx(),
        "fy": c.camera.fy(), "cx": c.camera.cx(), "cy": c.camera.cy(),
        "dist": c.camera.distortion().coeffs()})
}

/// cornerSubPix half windows compared on both sides (11 is the reference's).
const WINDOW_SWEEP: [usize; 4] = [3, 5, 7, 11];

fn default_bench_dir() -> PathBuf {
    let shared = std::env::var_os("BEVRT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    shared.join("data/calib/opencv_left")
}

/// `bevrt-tool calib-bench`: detection + calibration timed here and in OpenCV (Python peer
/// `calib/bench/opencv_peer.py`) on the same images, in one run; decoding is not timed on
/// either side. Reports best-of-N times and the ratio.
pub fn bench_calib(a: &CalibBenchArgs) -> Result<()> {
    let dir = a.dir.clone().unwrap_or_else(default_bench_dir);
    let (cols, rows) = parse_board(&a.board)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {} (set BEVRT_SHARED or --dir)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "png"))
        .collect();
    files.sort();
    let images = load_images(&files)?;
    let opt = CalibOptions::default();
    let auto = DetectOptions::default();
    let mut ours = serde_json::Map::new();
    for (label, th) in [
        ("bevrt_1_thread", 1usize),
        ("bevrt_all_threads", threads(0)),
    ] {
        let mut best = f64::MAX;
        let mut last = None;
        for _ in 0..a.repeat.max(1) {
            let t = Instant::now();
            let r = calibrate_images(&images, cols, rows, a.square, &opt, &auto, th)?;
            best = best.min(t.elapsed().as_secs_f64());
            last = Some(r);
        }
        let r = last.context("no run")?;
        let mut v = result_json(&r);
        v["threads"] = serde_json::json!(th);
        v["total_s"] = serde_json::json!(best);
        ours.insert(label.into(), v);
    }
    // Like-for-like with OpenCV's sweep (untimed, once): our refinement with the same fixed
    // half windows instead of the adaptive one.
    let mut sweep = vec![];
    for half in WINDOW_SWEEP {
        let fixed = DetectOptions {
            subpix_half_window: Some(half),
            ..Default::default()
        };
        let r = calibrate_images(&images, cols, rows, a.square, &opt, &fixed, threads(0))?;
        let mut v = result_json(&r);
        v["half_window"] = serde_json::json!(half);
        sweep.push(v);
    }
    ours.insert("window_sweep".into(), serde_json::Value::Array(sweep));
    let mut result =
        serde_json::json!({"dir": dir.display().to_string(), "images": files.len(), "bevrt": ours});
    if !a.no_opencv {
        let script = a.peer.clone().unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../calib/bench/opencv_peer.py")
        });
        let mut best: Option<serde_json::Value> = None;
        let mut sweep = serde_json::Value::Null;
        for rep in 0..a.repeat.max(1) {
            let mut cmd = std::process::Command::new(&a.python);
            cmd.arg(&script)
                .arg(&dir)
                .arg("--board")
                .arg(&a.board)
                .arg("--square")
                .arg(a.square.to_string());
            // OpenCV's answer depends on cornerSubPix's window (the reference uses 11, i.e.
            // 23x23 px): the sweep (untimed, once) shows how much.
            if rep == 0 {
                let halves: Vec<String> = WINDOW_SWEEP.iter().map(|h| h.to_string()).collect();
                cmd.arg("--window-sweep").arg(halves.join(","));
            }
            let out = cmd
                .output()
                .with_context(|| format!("running {} {}", a.python, script.display()))?;
            if !out.status.success() {
                bail!(
                    "OpenCV peer failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let mut v: serde_json::Value =
                serde_json::from_slice(&out.stdout).context("OpenCV peer output")?;
            if rep == 0 {
                sweep = v["window_sweep"].take();
            }
            let t = v["total_s"].as_f64().unwrap_or(f64::MAX);
            if best
                .as_ref()
                .is_none_or(|b| t < b["total_s"].as_f64().unwrap_or(f64::MAX))
            {
                best = Some(v);
            }
        }
        let mut cv = best.context("no OpenCV run")?;
        cv["window_sweep"] = sweep;
        let cvt = cv["total_s"].as_f64().unwrap_or(f64::NAN);
        for k in ["bevrt_1_thread", "bevrt_all_threads"] {
            let t = result["bevrt"][k]["total_s"].as_f64().unwrap_or(f64::NAN);
            result["ratio_bevrt_over_opencv"][k] = serde_json::json!(t / cvt);
        }
        result["opencv"] = cv;
    }
    let s = serde_json::to_string_pretty(&result)?;
    println!("{s}");
    if let Some(p) = &a.json {
        std::fs::write(p, &s).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
