//! GStreamer sources against things bevrt did not make: GStreamer's own RTSP server
//! (`scripts/rtsp-server.py`, GstRtspServer, H.264 by x264 and MJPEG) on 127.0.0.1, an MP4
//! of a simulated drive encoded by x264, and what goes wrong on a vehicle: the server killed
//! mid-stream and restarted, a truncated file, a typo in a pipeline.
//!
//! Needs bevrt built with `--features bevrt-runtime/gst`, `gst-launch-1.0` and Debian's
//! `/usr/bin/python3` with GstRtspServer's bindings: `.ci/run` installs them and sets
//! `BEVRT_REQUIRE_GST=1`; elsewhere each test skips with a message.

use bevrt_runtime::postprocess::{class_map_from_rgb, score_maps};
use bevrt_tests::*;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether this machine can run these tests (probed once: the tests run in parallel threads
/// and would share the probe's scratch folder); panics when CI requires them and it cannot.
fn gst_ready() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(probe_gst)
}

fn probe_gst() -> bool {
    let tools = Command::new("gst-launch-1.0")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer",
            ])
            .status()
            .is_ok_and(|s| s.success());
    let w = scratch("gst-probe");
    let (_, _, se) = bevrt_run(
        "gst:videotestsrc num-buffers=2 ! videoconvert",
        &w,
        &default_bundle(&w),
        &[],
    );
    let built = !se.contains("built without GStreamer");
    let ok = tools && built;
    if !ok {
        assert!(
            std::env::var_os("BEVRT_REQUIRE_GST").is_none(),
            "GStreamer tests required but not possible: gst-launch-1.0 and python3-gi with \
             GstRtspServer {}, bevrt built with the gst feature {built} (.ci/run installs them)",
            if tools { "found" } else { "missing" }
        );
        eprintln!("SKIP: no GStreamer here (tools {tools}, bevrt feature gst {built})");
    }
    ok
}

/// The shipped letsmap-lite bundle, written out by `bevrt demo` (with a drive recorded on
/// its camera and grid, ground truth included) under `dir`.
fn demo(dir: &Path, frames: u32) -> PathBuf {
    let (ok, so, se) = run(
        &bin("bevrt"),
        &[
            "demo",
            "--out",
            dir.to_str().unwrap(),
            "--frames",
            &frames.to_string(),
        ],
    );
    assert!(ok, "demo failed: {so}\n{se}");
    dir.to_path_buf()
}

fn default_bundle(dir: &Path) -> PathBuf {
    let b = dir.join("bundle");
    if !b.join("bundle.toml").is_file() {
        demo(dir, 2);
    }
    b
}

/// `bevrt run` with `extra` arguments: (ok, report, stderr).
fn bevrt_run(
    source: &str,
    out: &Path,
    bundle: &Path,
    extra: &[&str],
) -> (bool, serde_json::Value, String) {
    let o = out.join("run");
    let mut args = vec![
        "run",
        "--bundle",
        bundle.to_str().unwrap(),
        "--source",
        source,
        "--out",
        o.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let (ok, so, se) = run(&bin("bevrt"), &args);
    (ok, serde_json::from_str(&so).unwrap_or_default(), se)
}

fn u(r: &serde_json::Value, k: &str) -> u64 {
    r[k].as_u64().unwrap_or(u64::MAX)
}

/// GStreamer's RTSP server on `port`, started and ready (it prints READY once listening).
struct RtspServer(Child);

impl RtspServer {
    fn start(port: u16) -> RtspServer {
        let script = workspace_root().join("scripts/rtsp-server.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--max-seconds", "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the RTSP server");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the server's READY line");
        assert!(
            line.starts_with("READY"),
            "RTSP server did not start: {line}"
        );
        RtspServer(child)
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Class maps a run wrote (`maps/NNNNNN.png`) scored against a recording's ground truth:
/// (mIoU, the maps as class indices).
fn score_run(recording: &Path, maps: &Path, bundle: &Path) -> (f64, Vec<Vec<u8>>) {
    let b = bevrt_models::Bundle::load(bundle).unwrap();
    let classes = &b.manifest.classes;
    let rec = bevrt_runtime::source::replay::Recording::open(recording).unwrap();
    let mut gts = vec![];
    let mut preds = vec![];
    for e in &rec.frames {
        let gt = image::open(e.gt.as_ref().unwrap()).unwrap().to_luma8();
        let p = maps.join(format!("{:06}.png", e.seq));
        let pred = image::open(&p)
            .unwrap_or_else(|err| panic!("{}: {err}", p.display()))
            .to_rgb8();
        gts.push(gt.into_raw());
        preds.push(class_map_from_rgb(pred.as_raw(), classes));
    }
    let names: Vec<String> = classes.iter().map(|c| c.name.clone()).collect();
    let pairs: Vec<(&[u8], &[u8])> = gts
        .iter()
        .zip(&preds)
        .map(|(g, p)| (g.as_slice(), p.as_slice()))
        .collect();
    (score_maps(&pairs, &names).1, preds)
}

#[test]
fn an_mp4_of_a_simulated_drive_maps_like_its_png_frames() {
    if !gst_ready() {
        return;
    }
    let w = scratch("gst-mp4");
    let frames = 40;
    demo(&w, frames);
    let bundle = w.join("bundle");
    // The drive's PNG frames through x264 at a usual quality (constant quantizer 23), 4:2:0.
    let mp4 = w.join("drive.mp4");
    let status = Command::new("gst-launch-1.0")
        .args(["-q", "multifilesrc"])
        .arg(format!(
            "location={}/recording/frames/%06d.png",
            w.display()
        ))
        .args([
            "index=0",
            "caps=image/png,framerate=2/1",
            "!",
            "pngdec",
            "!",
        ])
        .args(["videoconvert", "!", "video/x-raw,format=I420", "!"])
        .args(["x264enc", "pass=quant", "quantizer=23", "!", "mp4mux", "!"])
        .arg("filesink")
        .arg(format!("location={}", mp4.display()))
        .status()
        .unwrap();
    assert!(status.success(), "gst-launch could not encode the drive");
    let (ok, r, se) = bevrt_run(&format!("video:{}", mp4.display()), &w, &bundle, &[]);
    assert!(ok, "{se}");
    assert_eq!(u(&r, "frames_processed"), frames as u64, "{se}");
    assert_eq!(u(&r, "source_errors"), 0, "{se}");
    assert!(
        se.contains("nv12"),
        "the decoder's frames should arrive as NV12: {se}"
    );
    let rec = w.join("recording");
    let (png_miou, png_maps) = score_run(&rec, &w.join("results/maps"), &bundle);
    let (mp4_miou, mp4_maps) = score_run(&rec, &w.join("run/maps"), &bundle);
    let same: usize = png_maps
        .iter()
        .zip(&mp4_maps)
        .map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x == y).count())
        .sum();
    let cells: usize = png_maps.iter().map(|m| m.len()).sum();
    let agree = 100.0 * same as f64 / cells as f64;
    eprintln!(
        "mIoU from PNG frames {png_miou:.2} %, from the H.264 MP4 {mp4_miou:.2} % \
         ({:+.2} points); {agree:.2} % of map cells identical",
        mp4_miou - png_miou
    );
    assert!(png_miou > 30.0, "the PNG replay itself is off: {png_miou}");
    assert!(
        (mp4_miou - png_miou).abs() < 3.0,
        "the codec changed the maps too much: {mp4_miou} vs {png_miou}"
    );
    assert!(agree > 90.0, "only {agree:.1} % of cells agree");
}

#[test]
fn rtsp_h264_and_mjpeg_from_gstreamers_own_server() {
    if !gst_ready() {
        return;
    }
    let w = scratch("gst-rtsp");
    let bundle = default_bundle(&w);
    let port = free_port();
    let _server = RtspServer::start(port);
    for path in ["h264", "mjpeg"] {
        let src = format!("rtsp://127.0.0.1:{port}/{path}");
        let (ok, r, se) = bevrt_run(&src, &w, &bundle, &["--max-frames", "45"]);
        assert!(ok, "{path}: {se}");
        assert_eq!(u(&r, "frames_processed"), 45, "{path}: {se}");
        assert_eq!(u(&r, "camera_lost"), 0, "{path}: {se}");
        let lat = &r["stages"]["stream_to_map"];
        assert_eq!(lat["count"], 45, "{path}: no capture-clock latency: {r}");
        let p50 = lat["p50_ms"].as_f64().unwrap();
        eprintln!(
            "{path}: {} frames, dropped {}, stream to map p50 {p50:.1} ms p99 {:.1} ms",
            u(&r, "frames_processed"),
            u(&r, "frames_dropped"),
            lat["p99_ms"].as_f64().unwrap()
        );
        // 100 ms of jitter buffer plus decode and the network: anything near a second
        // would mean frames queue up somewhere.
        assert!(p50 > 0.0 && p50 < 1000.0, "{path}: stream to map {p50} ms");
    }
}

#[test]
fn a_killed_rtsp_server_is_counted_and_the_stream_comes_back() {
    if !gst_ready() {
        return;
    }
    let w = scratch("gst-rtsp-loss");
    let bundle = default_bundle(&w);
    let port = free_port();
    let server = RtspServer::start(port);
    let out = w.join("run");
    let child = Command::new(bin("bevrt"))
        .args(["run", "--bundle", bundle.to_str().unwrap(), "--source"])
        .arg(format!("rtsp://127.0.0.1:{port}/h264"))
        .args(["--out", out.to_str().unwrap(), "--json", "--duration", "12"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // At most ~2.5 s of frames before the server goes: at 30 fps no more than 75.
    std::thread::sleep(Duration::from_millis(2500));
    drop(server);
    std::thread::sleep(Duration::from_secs(2));
    let t_back = Instant::now();
    let _server = RtspServer::start(port);
    let o = child.wait_with_output().unwrap();
    let se = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "bevrt died: {se}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    eprintln!(
        "processed {}, camera lost {} back {}, source errors {}, {:.1} s of stream after the return",
        u(&r, "frames_processed"),
        u(&r, "camera_lost"),
        u(&r, "camera_back"),
        u(&r, "source_errors"),
        t_back.elapsed().as_secs_f64()
    );
    assert_eq!(r["ended_by"], "duration", "{se}");
    assert!(u(&r, "camera_lost") >= 1, "the loss was not counted: {se}");
    assert!(
        u(&r, "camera_back") >= 1,
        "the return was not counted: {se}"
    );
    assert!(
        u(&r, "frames_processed") > 100,
        "too few frames after the server came back: {r}\n{se}"
    );
}

#[test]
fn a_truncated_mp4_a_pipeline_typo_and_no_server_are_one_line_errors() {
    if !gst_ready() {
        return;
    }
    let w = scratch("gst-errors");
    let bundle = default_bundle(&w);
    let mp4 = w.join("clip.mp4");
    let status = Command::new("gst-launch-1.0")
        .args(["-q", "videotestsrc", "num-buffers=30", "!"])
        .args([
            "video/x-raw,width=320,height=240,framerate=30/1",
            "!",
            "x264enc",
            "!",
        ])
        .args(["mp4mux", "!", "filesink"])
        .arg(format!("location={}", mp4.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&mp4).unwrap();
    let cut = w.join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let closed = free_port();
    let cases = [
        (
            format!("video:{}", cut.display()),
            cut.display().to_string(),
        ),
        (
            "gst:videotestsrc ! videoconvrt".to_string(),
            "no element \"videoconvrt\"".to_string(),
        ),
        (
            format!("rtsp://127.0.0.1:{closed}/h264"),
            format!("rtsp://127.0.0.1:{closed}/h264"),
        ),
        (
            format!("video:{}", w.join("missing.mp4").display()),
            "missing.mp4".to_string(),
        ),
    ];
    for (src, names) in cases {
        let t0 = Instant::now();
        let (ok, _, se) = bevrt_run(&src, &w, &bundle, &[]);
        let last = se.lines().last().unwrap_or("");
        eprintln!("{src}: {last}");
        assert!(!ok, "{src} was accepted");
        assert!(
            last.to_lowercase().starts_with("error: ") && last.contains(&names),
            "{src}: the last line should name the problem: {se}"
        );
        assert!(!se.contains("panicked"), "{src}: {se}");
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{src}: too slow to fail"
        );
    }
    // The whole clip plays and ends the run cleanly.
    let (ok, r, se) = bevrt_run(&format!("video:{}", mp4.display()), &w, &bundle, &[]);
    assert!(ok, "{se}");
    assert_eq!(u(&r, "frames_processed"), 30);
    assert_eq!(r["ended_by"], "end of stream");
}
