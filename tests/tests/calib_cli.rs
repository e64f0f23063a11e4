//! From `calibrate`'s camera YAML to a run: `bevrt-tool calib-merge` joins the YAML with the
//! mounting's extrinsics into the calibration TOML `bevrt run --calib` reads, and a run given
//! the YAML itself is refused with one line that names the file and the command to use.

use bevrt_calib::{Calibration, CameraModel, Extrinsics, save_ros_yaml};
use bevrt_tests::{bin, run, scratch, workspace_root};

#[test]
fn calib_merge_writes_the_toml_a_run_reads() {
    let dir = scratch("calib-merge");
    let cam = CameraModel::pinhole(
        640,
        480,
        536.07,
        536.02,
        342.37,
        235.54,
        [-0.265, -0.0467, 0.00183, -0.000315, 0.252],
    )
    .unwrap();
    let yaml = dir.join("camera.yaml");
    save_ros_yaml(&cam, "front", &yaml).unwrap();
    let ext = Extrinsics::from_height_pitch_roll_yaw(1.5, 8.0, 0.5, -1.0);
    let ext_path = dir.join("ext.toml");
    ext.save(&ext_path).unwrap();
    let out = dir.join("calibration.toml");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &[
            "calib-merge",
            "--camera",
            &s(&yaml),
            "--extrinsics",
            &s(&ext_path),
            "--out",
            &s(&out),
        ],
    );
    assert!(ok, "{so}\n{se}");
    let c = Calibration::load(&out).unwrap();
    assert_eq!(c.camera, cam);
    assert!(c.extrinsics.same_pose(&ext));

    // a run given the YAML: refused before anything opens, naming the file and the fix
    let bundle = workspace_root().join("models/bundles/letsmap-lite-1pct");
    let (ok, so, se) = run(
        &bin("bevrt"),
        &[
            "run",
            "--bundle",
            &s(&bundle),
            "--source",
            "sim:?seed=1",
            "--calib",
            &s(&yaml),
            "--max-frames",
            "1",
        ],
    );
    assert!(!ok, "{so}");
    let err = se
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{se}"));
    assert!(
        err.contains(&s(&yaml)) && err.contains("bevrt-tool calib-merge"),
        "{err}"
    );
}
