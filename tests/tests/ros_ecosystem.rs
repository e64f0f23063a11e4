//! The robotics ecosystem: ROS 2 bags (MCAP) in and out, the Foxglove live view, Prometheus.
//! Checked against the reference clients where they are installed (Python `mcap`,
//! `mcap-ros2-support`, `prometheus_client`, `websockets`: `.ci/run` installs them and sets
//! `BEVRT_REQUIRE_PYINTEROP=1`); without them those parts skip with a message.

use bevrt_runtime::ros2::bag::{BagCompression, BagWriter};
use bevrt_runtime::ros2::msgs;
use bevrt_tests::*;
use std::path::Path;

fn python_interop() -> bool {
    python_imports(
        "mcap, mcap_ros2, prometheus_client, websockets",
        "BEVRT_REQUIRE_PYINTEROP",
    )
}

fn interop_script(name: &str) -> String {
    workspace_root()
        .join("tests/interop")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn python(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("python3")
        .args(args)
        .output()
        .expect("python3");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn bundle() -> String {
    workspace_root()
        .join("models/bundles/letsmap-lite")
        .to_string_lossy()
        .into_owned()
}

/// `bevrt run` on `source` with `extra` arguments: (ok, report, stderr).
fn run_bevrt(source: &str, out: &Path, extra: &[&str]) -> (bool, serde_json::Value, String) {
    let b = bundle();
    let o = out.to_string_lossy().into_owned();
    let mut args = vec![
        "run", "--bundle", &b, "--source", source, "--out", &o, "--json",
    ];
    args.extend_from_slice(extra);
    let (ok, so, se) = run(&bin("bevrt"), &args);
    let v = serde_json::from_str(&so).unwrap_or(serde_json::Value::Null);
    (ok, v, se)
}

/// Per-frame class-cell counts from results.jsonl, latencies left out.
fn cells(results: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(results)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["cells"].clone())
        .collect()
}

/// Seed 5's drive, `frames` long, as a bag (`drive.mcap`) or as bevrt's recording (`rec/`).
fn sim_drive(dir: &Path, frames: u64, mcap: bool) -> std::path::PathBuf {
    let out = dir.join(if mcap { "drive.mcap" } else { "rec" });
    let n = frames.to_string();
    let mut args = vec!["sim", "record", "--seed", "5", "--frames", &n];
    if mcap {
        args.extend(["--format", "mcap"]);
    }
    args.extend(["--out", out.to_str().unwrap()]);
    let (ok, _, se) = run(&bin("bevrt-tool"), &args);
    assert!(ok, "{se}");
    out
}

#[test]
fn a_simulated_bag_gives_the_maps_of_the_same_drive_as_a_recording() {
    let w = scratch("mcap-sim");
    let bag = sim_drive(&w, 24, true);
    // The same drive as bevrt's own recording (PNG frames, calibration.toml).
    let rec = sim_drive(&w, 24, false);
    let (ok, r, se) = run_bevrt(
        &format!("mcap:{}", bag.display()),
        &w.join("from-bag"),
        &["--sinks", "mcap,jsonl"],
    );
    assert!(ok, "{se}");
    assert_eq!(r["frames_processed"], 24, "{se}");
    assert_eq!(r["source_errors"], 0);
    assert!(
        w.join("from-bag/calibration-from-stream.toml").is_file(),
        "the bag's CameraInfo and tf_static were not used:\n{se}"
    );
    let (ok, r2, se) = run_bevrt(
        &format!("replay:{}", rec.display()),
        &w.join("from-rec"),
        &[],
    );
    assert!(ok, "{se}");
    assert_eq!(r2["frames_processed"], 24);
    // Same pixels, same calibration (through CameraInfo and a quaternion): same maps.
    let (a, b) = (
        cells(&w.join("from-bag/results.jsonl")),
        cells(&w.join("from-rec/results.jsonl")),
    );
    assert_eq!(a.len(), 24);
    assert_eq!(
        a, b,
        "maps from the bag differ from maps from the recording"
    );

    if !python_interop() {
        return;
    }
    let run_mcap = w.join("from-bag/run.mcap");
    let (ok, so, se) = python(&[
        &interop_script("ros2_bags.py"),
        "check",
        run_mcap.to_str().unwrap(),
    ]);
    assert!(ok, "reference reader failed on bevrt's bag:\n{so}\n{se}");
    let v: serde_json::Value = serde_json::from_str(&so).unwrap();
    assert_eq!(v["decode_errors"], 0, "{so}");
    for (topic, n) in [
        ("/camera/image_raw", 24),
        ("/bevrt/bev/image", 24),
        ("/bevrt/bev/grid", 24),
        ("/bevrt/result", 24),
        ("/camera/camera_info", 1),
        ("/tf_static", 1),
    ] {
        assert_eq!(v["messages"][topic], n, "{topic}: {so}");
    }
    assert_eq!(v["types"]["/bevrt/bev/grid"], "nav_msgs/msg/OccupancyGrid");
    let (ok, so, se) = python(&[
        &interop_script("ros2_bags.py"),
        "check",
        bag.to_str().unwrap(),
    ]);
    assert!(
        ok && so.contains("\"decode_errors\": 0"),
        "sim bag:\n{so}\n{se}"
    );
}

#[test]
fn a_bag_written_by_the_ros2_python_library_runs_in_every_encoding() {
    if !python_interop() {
        return;
    }
    let w = scratch("mcap-py");
    let bag = w.join("py.mcap");
    let (ok, so, se) = python(&[
        &interop_script("ros2_bags.py"),
        "write",
        bag.to_str().unwrap(),
    ]);
    assert!(ok, "{so}\n{se}");
    // The rgb8 topic has CameraInfo beside it and the bag a tf_static: its calibration is
    // the bag's (80 px focal length, 1.5 m high). The other topics run with that same file,
    // so every difference in their maps would come from the pixels.
    let cal_path = w.join("_cam_rgb8_image_raw/calibration-from-stream.toml");
    let mut maps = vec![];
    for topic in [
        "/cam_rgb8/image_raw",
        "/cam_bgr8/image_raw",
        "/cam_png/image_raw/compressed",
        "/cam_mono8/image_raw",
        "/cam_yuv422_yuy2/image_raw",
        "/cam_nv12/image_raw",
    ] {
        let out = w.join(topic.replace('/', "_"));
        let cal = cal_path.to_string_lossy().into_owned();
        let extra: &[&str] = if maps.is_empty() {
            &[]
        } else {
            &["--calib", &cal]
        };
        let (ok, r, se) = run_bevrt(
            &format!("mcap:{}?topic={topic}", bag.display()),
            &out,
            extra,
        );
        assert!(ok, "{topic}: {se}");
        assert_eq!(r["frames_processed"], 6, "{topic}: {se}");
        assert_eq!(r["source_errors"], 0, "{topic}: {se}");
        maps.push(cells(&out.join("results.jsonl")));
    }
    // rgb8, bgr8 and PNG carry the same pixels.
    assert_eq!(maps[0], maps[1], "bgr8 differs from rgb8");
    assert_eq!(maps[0], maps[2], "PNG differs from rgb8");
    let cal = std::fs::read_to_string(&cal_path).expect("calibration from the bag");
    assert!(cal.contains("fx = 80"), "{cal}");
}

#[test]
fn bad_bags_are_refused_or_played_up_to_the_damage() {
    let w = scratch("mcap-bad");
    let bag = sim_drive(&w, 40, true);
    let src = |b: &Path, q: &str| format!("mcap:{}{q}", b.display());

    // A topic the bag lacks: the error names it and lists the image topics there are.
    let (ok, _, se) = run_bevrt(&src(&bag, "?topic=/front/image"), &w.join("o1"), &[]);
    assert!(!ok);
    assert!(
        se.contains("/front/image") && se.contains("/camera/image_raw"),
        "{se}"
    );

    // Cut short: frames before the damage are processed, then the run fails naming the file.
    let bytes = std::fs::read(&bag).unwrap();
    let cut = w.join("cut.mcap");
    std::fs::write(&cut, &bytes[..bytes.len() * 6 / 10]).unwrap();
    let (ok, r, se) = run_bevrt(&src(&cut, ""), &w.join("o2"), &[]);
    assert!(!ok, "a truncated bag must end the run with an error");
    let n = r["frames_processed"].as_u64().unwrap_or(0);
    assert!(n > 0 && n < 40, "processed {n}: {se}");
    assert!(
        se.contains("cut.mcap") && se.contains("damaged after"),
        "{se}"
    );

    // An encoding bevrt does not read, and a CameraInfo of zeros (an uncalibrated camera).
    let odd = w.join("odd.mcap");
    let mut b = BagWriter::create(&odd, BagCompression::None).unwrap();
    let img = b.ros2_channel("/cam/image_raw", &msgs::IMAGE).unwrap();
    let info = b
        .ros2_channel("/cam/camera_info", &msgs::CAMERA_INFO)
        .unwrap();
    let px = vec![128u8; 64 * 32 * 3];
    for (i, enc) in ["rgb8", "bayer_rggb8", "rgb8", "bayer_rggb8"]
        .iter()
        .enumerate()
    {
        let t = 1_000_000_000 * (i as u64 + 1);
        msgs::CameraInfo {
            header: msgs::Header {
                stamp_ns: t,
                frame_id: "cam",
            },
            height: 32,
            width: 64,
            distortion_model: "plumb_bob",
            d: vec![0.0; 5],
            k: [0.0; 9],
            r: [0.0; 9],
            p: [0.0; 12],
        }
        .encode(&mut b.buf);
        b.write(info, t, None).unwrap();
        msgs::Image {
            header: msgs::Header {
                stamp_ns: t,
                frame_id: "cam",
            },
            height: 32,
            width: 64,
            encoding: enc,
            is_bigendian: 0,
            step: 64 * 3,
            data: &px,
        }
        .encode(&mut b.buf);
        b.write(img, t, None).unwrap();
    }
    b.finish().unwrap();
    let (ok, r, se) = run_bevrt(&src(&odd, ""), &w.join("o3"), &[]);
    assert!(ok, "{se}");
    assert_eq!(r["frames_processed"], 2, "{se}");
    assert_eq!(r["source_errors"], 2, "{se}");
    assert!(
        se.contains("bayer_rggb8") && se.contains("readable:"),
        "{se}"
    );
    assert!(se.contains("K all zero"), "{se}");

    // Not a bag at all, and a directory.
    let junk = w.join("junk.mcap");
    std::fs::write(&junk, b"not an mcap file").unwrap();
    let (ok, _, se) = run_bevrt(&src(&junk, ""), &w.join("o4"), &[]);
    assert!(!ok && se.contains("junk.mcap"), "{se}");
    let (ok, _, se) = run_bevrt(&src(&w, ""), &w.join("o5"), &[]);
    assert!(!ok && se.contains("is a directory"), "{se}");
}

/// Run bevrt on the live simulated camera for `secs` with both endpoints, and the Python
/// clients against them; (bevrt report, clients' JSON).
fn live_run(tag: &str, secs: u32, stall: bool) -> (serde_json::Value, serde_json::Value) {
    let w = scratch(tag);
    let (http, ws) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let b = bundle();
    let child = std::process::Command::new(bin("bevrt"))
        .args([
            "run",
            "--bundle",
            &b,
            "--source",
            "sim:?seed=4&fps=20",
            "--duration",
            &secs.to_string(),
            "--prometheus",
            &http,
            "--foxglove",
            &ws,
            "--sinks",
            "jsonl",
            "--out",
            w.to_str().unwrap(),
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut args = vec![
        interop_script("live_clients.py"),
        http,
        ws,
        (secs - 3).to_string(),
    ];
    if stall {
        args.push("--stall".into());
    }
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (ok, so, se) = python(&args);
    let out = child.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        ok,
        "clients failed:\n{so}\n{se}\nbevrt:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (report, serde_json::from_str(&so).unwrap())
}

#[test]
fn live_view_and_metrics_serve_real_clients_without_losing_frames() {
    if !python_interop() {
        return;
    }
    let (r, c) = live_run("live", 8, false);
    eprintln!(
        "clients: {c}\nbevrt: frames {} dropped {} viewer_dropped {}",
        r["frames_processed"], r["frames_dropped"], r["viewer_dropped"]
    );
    assert_eq!(r["frames_dropped"], 0, "the viewer cost pipeline frames");
    let topics = c["topics"].as_array().unwrap();
    for t in [
        "/camera/image_raw",
        "/bevrt/bev/grid",
        "/bevrt/bev/image",
        "/bevrt/result",
    ] {
        assert!(topics.iter().any(|x| x == t), "{t} not advertised: {c}");
    }
    // 20 Hz source, viewer capped at 20 Hz: close to 20 grids a second reach the client.
    let rate = c["grid_rate_hz"].as_f64().unwrap();
    assert!(rate >= 10.0, "viewer got {rate} grids/s: {c}");
    assert_eq!(
        c["latency_stages"].as_array().unwrap().len(),
        bevrt_runtime::metrics::STAGES.len(),
        "{c}"
    );

    // A viewer that subscribes and stops reading: frames still all go through.
    let (r, c) = live_run("live-stall", 9, true);
    eprintln!(
        "stalled viewer: {c}\nbevrt: frames {} dropped {} viewer_dropped {}",
        r["frames_processed"], r["frames_dropped"], r["viewer_dropped"]
    );
    assert_eq!(
        r["frames_dropped"], 0,
        "a stalled viewer cost pipeline frames"
    );
    assert!(r["frames_processed"].as_u64().unwrap() >= 100);
}

/// Class maps a run wrote (`maps/NNNNNN.png`), as RGB bytes per frame.
fn maps_of(run: &Path, frames: usize) -> Vec<Vec<u8>> {
    (0..frames)
        .map(|n| {
            let p = run.join(format!("maps/{n:06}.png"));
            image::open(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .to_rgb8()
                .into_raw()
        })
        .collect()
}

/// Share of identical map pixels over frames `range` of two runs.
fn agreement(a: &[Vec<u8>], b: &[Vec<u8>], range: std::ops::Range<usize>) -> f64 {
    let (mut same, mut all) = (0usize, 0usize);
    for n in range {
        same += a[n]
            .chunks(3)
            .zip(b[n].chunks(3))
            .filter(|(x, y)| x == y)
            .count();
        all += a[n].len() / 3;
    }
    100.0 * same as f64 / all as f64
}

#[test]
fn a_bag_of_jpeg_frames_whose_camera_moves_on_tf_is_mapped_with_each_pose() {
    if !python_interop() {
        return;
    }
    let w = scratch("mcap-tf");
    // A drive filmed by the shipped bundle's camera (`bevrt demo` records it), as JPEG files.
    let demo = w.join("demo");
    let frames = 12;
    let (ok, so, se) = run(
        &bin("bevrt"),
        &["demo", "--out", demo.to_str().unwrap(), "--frames", "12"],
    );
    assert!(ok, "{so}\n{se}");
    let jpegs = w.join("jpeg");
    std::fs::create_dir_all(&jpegs).unwrap();
    for n in 0..frames {
        let img = image::open(demo.join(format!("recording/frames/{n:06}.png")))
            .unwrap()
            .to_rgb8();
        let mut f = std::fs::File::create(jpegs.join(format!("{n:06}.jpg"))).unwrap();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut f, 95)
            .encode_image(&img)
            .unwrap();
    }
    // The bundle's mounting on /tf_static, then at frame 6 the camera on /tf 0.3 m higher
    // and pitched 3 degrees further down (optical frame: x right, y down, z forward).
    let cal = bevrt_calib::Calibration::load(demo.join("recording/calibration.toml")).unwrap();
    let mount = cal.extrinsics.cam_to_vehicle;
    let delta = nalgebra::Isometry3::new(
        nalgebra::Vector3::new(0.0, -0.3, 0.0),
        nalgebra::Vector3::new(-3f64.to_radians(), 0.0, 0.0),
    );
    let pose = |iso: &nalgebra::Isometry3<f64>| {
        let (t, q) = bevrt_runtime::ros2::bag::tf_parts(iso);
        serde_json::json!({ "t": t, "q": q })
    };
    let poses = serde_json::json!({
        "mount": pose(&mount), "change_at": 6, "moved": pose(&delta),
    });
    let bag = w.join("moving.mcap");
    let (ok, so, se) = python(&[
        &interop_script("ros2_bags.py"),
        "moving",
        jpegs.to_str().unwrap(),
        bag.to_str().unwrap(),
        &poses.to_string(),
    ]);
    assert!(ok, "{so}\n{se}");
    // The moved camera as a calibration file, for the comparison run.
    let moved = bevrt_calib::Calibration {
        camera: cal.camera.clone(),
        extrinsics: bevrt_calib::Extrinsics::from_matrix(&(mount * delta).to_homogeneous())
            .unwrap(),
    };
    let moved_file = w.join("moved.toml");
    moved.save(&moved_file).unwrap();
    let src = format!("mcap:{}", bag.display());
    let (ok, r, se) = run_bevrt(&src, &w.join("follow"), &["--sinks", "png,mcap-jpeg"]);
    assert!(ok, "{se}");
    assert_eq!(r["frames_processed"], frames, "{se}");
    // The run's own bag, camera as JPEG, read back by the reference decoder.
    let (ok, so, se) = python(&[
        &interop_script("ros2_bags.py"),
        "check",
        w.join("follow/run.mcap").to_str().unwrap(),
    ]);
    assert!(ok, "reference reader failed on bevrt's bag:\n{so}\n{se}");
    let v: serde_json::Value = serde_json::from_str(&so).unwrap();
    assert_eq!(
        v["messages"]["/camera/image_raw/compressed"], frames,
        "{so}"
    );
    assert_eq!(
        v["types"]["/camera/image_raw/compressed"],
        "sensor_msgs/msg/CompressedImage"
    );
    assert_eq!(r["source_errors"], 0, "{se}");
    assert_eq!(r["calibration_errors"], 0, "{se}");
    assert_eq!(
        r["calibration_reloads"], 1,
        "one pose change on /tf, one rebuild: {se}"
    );
    let fixed = format!("{src}?tf=static");
    let (ok, _, se) = run_bevrt(&fixed, &w.join("mount"), &[]);
    assert!(ok, "{se}");
    let (ok, _, se) = run_bevrt(
        &fixed,
        &w.join("moved"),
        &["--calib", moved_file.to_str().unwrap()],
    );
    assert!(ok, "{se}");
    let n = frames as usize;
    let (follow, at_mount, at_moved) = (
        maps_of(&w.join("follow"), n),
        maps_of(&w.join("mount"), n),
        maps_of(&w.join("moved"), n),
    );
    let before = agreement(&follow, &at_mount, 0..6);
    let after = agreement(&follow, &at_moved, 6..n);
    let moved_matters = agreement(&at_mount, &at_moved, 6..n);
    eprintln!(
        "maps identical: before the move {before:.2} % (vs the mount), after it {after:.2} % \
         (vs the moved calibration); the two poses' maps agree on {moved_matters:.2} %"
    );
    assert!(before > 99.9 && after > 99.5, "{before} {after}");
    assert!(
        moved_matters < 97.0,
        "the move did not change the maps: {moved_matters}"
    );
}
