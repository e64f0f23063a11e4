//! Camera model properties, formats and extrinsics.
mod common;

use bevrt_calib::{
    CalibError, Calibration, CameraModel, Extrinsics, load_camera_yaml, save_ros_yaml,
};
use common::Rng;
use nalgebra::{Matrix4, Point2, Vector3};

fn cameras() -> Vec<CameraModel> {
    vec![
        CameraModel::pinhole(
            640,
            480,
            536.07,
            536.02,
            342.37,
            235.54,
            [-0.26509, -0.04674, 0.001833, -0.00031469, 0.25232],
        )
        .unwrap(),
        common::wide_angle(),
        CameraModel::fisheye(
            1280,
            720,
            480.0,
            481.0,
            641.0,
            361.0,
            [0.03, -0.012, 0.004, -0.001],
        )
        .unwrap(),
        CameraModel::fisheye(
            640,
            480,
            300.0,
            300.0,
            320.0,
            240.0,
            [-0.02, 0.01, -0.004, 0.0005],
        )
        .unwrap(),
    ]
}

#[test]
fn project_unproject_roundtrip_across_image() {
    let mut rng = Rng(5);
    for cam in cameras() {
        let (w, h) = (cam.width() as f64, cam.height() as f64);
        let mut pts: Vec<Point2<f64>> = Vec::new();
        for i in 0..=40 {
            for j in 0..=30 {
                pts.push(Point2::new(
                    -0.5 + (w) * i as f64 / 40.0 * 0.9999,
                    -0.5 + h * j as f64 / 30.0 * 0.9999,
                ));
            }
        }
        for _ in 0..2000 {
            pts.push(Point2::new(
                rng.uniform(-0.5, w - 0.5),
                rng.uniform(-0.5, h - 0.5),
            ));
        }
        let mut worst: f64 = 0.0;
        for p in pts {
            let ray = cam
                .unproject(p)
                .unwrap_or_else(|| panic!("{:?}: cannot unproject {p}", cam.distortion()));
            assert!((ray.norm() - 1.0).abs() < 1e-12);
            let q = cam.project(ray * rng.uniform(0.5, 50.0)).unwrap();
            worst = worst.max((q - p).norm());
        }
        assert!(
            worst < 1e-6,
            "{:?}: worst roundtrip {worst} px",
            cam.distortion()
        );
    }
}

#[test]
fn analytic_jacobians_match_finite_differences() {
    let mut rng = Rng(17);
    for cam in cameras() {
        for _ in 0..50 {
            let p = Vector3::new(
                rng.uniform(-0.5, 0.5),
                rng.uniform(-0.4, 0.4),
                rng.uniform(0.8, 3.0),
            );
            let (q, j) = cam.project_jac(p).unwrap();
            let h = 1e-6;
            for c in 0..3 {
                let mut pp = p;
                pp[c] += h;
                let q2 = cam.project_jac(pp).unwrap().0;
                for r in 0..2 {
                    let fd = (q2[r] - q[r]) / h;
                    assert!(
                        (fd - j.d_point[r][c]).abs() < 1e-3 * (1.0 + fd.abs()),
                        "d_point[{r}][{c}] {fd} vs {}",
                        j.d_point[r][c]
                    );
                }
            }
            // intrinsics
            let n = 4 + cam.distortion().coeffs().len();
            for k in 0..n {
                let mut v = [cam.fx(), cam.fy(), cam.cx(), cam.cy()].to_vec();
                v.extend_from_slice(cam.distortion().coeffs());
                let hk = 1e-7 * (1.0 + v[k].abs());
                v[k] += hk;
                let d = if cam.is_fisheye() {
                    bevrt_calib::Distortion::Fisheye([v[4], v[5], v[6], v[7]])
                } else {
                    bevrt_calib::Distortion::PlumbBob([v[4], v[5], v[6], v[7], v[8]])
                };
                let cam2 =
                    CameraModel::new(cam.width(), cam.height(), v[0], v[1], v[2], v[3], d).unwrap();
                let q2 = cam2.project_jac(p).unwrap().0;
                for r in 0..2 {
                    let fd = (q2[r] - q[r]) / hk;
                    assert!(
                        (fd - j.d_intr[r][k]).abs() < 1e-3 * (1.0 + fd.abs()),
                        "d_intr[{r}][{k}] {fd} vs {}",
                        j.d_intr[r][k]
                    );
                }
            }
        }
    }
}

#[test]
fn behind_camera_and_folded_region_are_invalid() {
    let cam = &cameras()[1];
    assert!(cam.project(Vector3::new(0.0, 0.0, -1.0)).is_none());
    // far outside the field of view the plumb_bob polynomial folds back: must be rejected
    assert!(cam.project(Vector3::new(50.0, 0.0, 1.0)).is_none());
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("bevrt_calib_test_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn ros_yaml_roundtrip_both_models() {
    for (i, cam) in cameras().into_iter().enumerate() {
        let p = tmp(&format!("cam{i}.yaml"));
        save_ros_yaml(&cam, "front", &p).unwrap();
        let back = load_camera_yaml(&p).unwrap();
        assert_eq!(back.width(), cam.width());
        assert!((back.fx() - cam.fx()).abs() < 1e-6 && (back.cy() - cam.cy()).abs() < 1e-6);
        for (a, b) in back
            .distortion()
            .coeffs()
            .iter()
            .zip(cam.distortion().coeffs())
        {
            assert!((a - b).abs() < 1e-12);
        }
        assert_eq!(back.is_fisheye(), cam.is_fisheye());
    }
}

#[test]
fn ros_yaml_from_ros_tools_parses() {
    let text = "image_width: 640\nimage_height: 480\ncamera_name: narrow_stereo\ncamera_matrix:\n  rows: 3\n  cols: 3\n  data: [500.0, 0.0, 320.5, 0.0, 501.0, 240.5, 0.0, 0.0, 1.0]\ndistortion_model: plumb_bob\ndistortion_coefficients:\n  rows: 1\n  cols: 5\n  data: [-0.1, 0.01, 0.0, 0.0, 0.0]\nrectification_matrix:\n  rows: 3\n  cols: 3\n  data: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]\nprojection_matrix:\n  rows: 3\n  cols: 4\n  data: [500.0, 0.0, 320.5, 0.0, 0.0, 501.0, 240.5, 0.0, 0.0, 0.0, 1.0, 0.0]\n";
    let p = tmp("ros.yaml");
    std::fs::write(&p, text).unwrap();
    let cam = load_camera_yaml(&p).unwrap();
    assert_eq!(cam.fy(), 501.0);
    assert_eq!(cam.distortion().coeffs()[0], -0.1);
}

#[test]
fn malformed_yaml_names_file_and_field() {
    let good = "image_width: 640\nimage_height: 480\ncamera_matrix:\n  rows: 3\n  cols: 3\n  data: [500, 0, 320, 0, 500, 240, 0, 0, 1]\ndistortion_model: plumb_bob\ndistortion_coefficients:\n  rows: 1\n  cols: 5\n  data: [0, 0, 0, 0, 0]\n";
    let cases = [
        (good.replace("image_width: 640\n", ""), "image_width"),
        (
            good.replace("image_height: 480", "image_height: abc"),
            "image_height",
        ),
        (
            good.replace(
                "[500, 0, 320, 0, 500, 240, 0, 0, 1]",
                "[500, 0, 320, 0, 500, 240, 0, 0]",
            ),
            "camera_matrix.data",
        ),
        (
            good.replace(
                "[500, 0, 320, 0, 500, 240, 0, 0, 1]",
                "[500, 0, 320, 0, x, 240, 0, 0, 1]",
            ),
            "camera_matrix.data",
        ),
        (
            good.replace(
                "[500, 0, 320, 0, 500, 240, 0, 0, 1]",
                "[-5, 0, 320, 0, 500, 240, 0, 0, 1]",
            ),
            "camera_matrix",
        ),
        (good.replace("plumb_bob", "kb8"), "distortion_model"),
        (
            good.replace("distortion_model: plumb_bob\n", ""),
            "distortion_model",
        ),
        (
            good.replace("[0, 0, 0, 0, 0]", "[0, 0, 0, 0, 0"),
            "distortion_coefficients",
        ),
        (
            good.replace("  rows: 1\n  cols: 5", "  rows: 1\n  cols: 3"),
            "distortion_coefficients",
        ),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        let p = tmp(&format!("bad{i}.yaml"));
        std::fs::write(&p, text).unwrap();
        let e = load_camera_yaml(&p).expect_err("must fail");
        let msg = e.to_string();
        assert!(
            msg.contains(p.to_str().unwrap()),
            "case {i}: no file in `{msg}`"
        );
        assert!(
            msg.contains(field),
            "case {i}: field `{field}` not in `{msg}`"
        );
    }
    let e = load_camera_yaml(tmp("does_not_exist.yaml")).unwrap_err();
    assert!(matches!(e, CalibError::Io { .. }));
}

#[test]
fn extrinsics_angles_frame_and_toml() {
    // level camera 1.5 m high looking forward: optical axis = vehicle +x, image right = -y
    let e = Extrinsics::from_height_pitch_roll_yaw(1.5, 0.0, 0.0, 0.0);
    let r = e.cam_to_vehicle.rotation;
    assert!((r * Vector3::z() - Vector3::x()).norm() < 1e-12);
    assert!((r * Vector3::x() + Vector3::y()).norm() < 1e-12);
    assert!((r * Vector3::y() + Vector3::z()).norm() < 1e-12);
    // positive pitch looks down: the optical axis hits the ground in front
    let e = Extrinsics::from_height_pitch_roll_yaw(1.5, 10.0, 0.0, 0.0);
    let g = e.ray_to_ground(&Vector3::z()).unwrap();
    assert!(
        (g.x - 1.5 / 10f64.to_radians().tan()).abs() < 1e-9
            && g.y.abs() < 1e-9
            && g.z.abs() < 1e-12
    );
    // positive yaw turns left
    let e = Extrinsics::from_angles(1.0, 0.2, 1.4, 5.0, 2.0, 30.0);
    let d = e.cam_to_vehicle.rotation * Vector3::z();
    assert!(d.y > 0.0);
    let (x, y, h, p, ro, ya) = e.to_angles();
    assert!((x - 1.0).abs() < 1e-12 && (y - 0.2).abs() < 1e-12 && (h - 1.4).abs() < 1e-12);
    assert!((p - 5.0).abs() < 1e-9 && (ro - 2.0).abs() < 1e-9 && (ya - 30.0).abs() < 1e-9);
    let path = tmp("ext.toml");
    e.save(&path).unwrap();
    let back = Extrinsics::load(&path).unwrap();
    assert!((back.matrix() - e.matrix()).abs().max() < 1e-9);
    // matrix form
    std::fs::write(&path, "matrix = [[0.0, 0.0, 1.0, 1.2], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.5], [0.0, 0.0, 0.0, 1.0]]\n").unwrap();
    let m = Extrinsics::load(&path).unwrap();
    let (_, _, h, p, _, _) = m.to_angles();
    assert!((h - 1.5).abs() < 1e-12 && p.abs() < 1e-9);
    assert!(Extrinsics::from_matrix(&Matrix4::identity()).is_ok());
}

#[test]
fn malformed_extrinsics_name_field() {
    let cases = [
        ("pitch = 3.0\n", "height"),
        ("height = 1.5\n", "pitch"),
        ("height = \"tall\"\npitch = 1.0\n", "height"),
        ("height = 1.5\npitch = 1.0\nyawn = 3\n", "yawn"),
        ("matrix = [[1.0, 0.0], [0.0, 1.0]]\n", "matrix"),
        (
            "matrix = [[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]\n",
            "matrix",
        ),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        let p = tmp(&format!("badext{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let msg = Extrinsics::load(&p).unwrap_err().to_string();
        assert!(
            msg.contains(p.to_str().unwrap()) && msg.contains(field),
            "case {i}: `{msg}`"
        );
    }
}

#[test]
fn pnp_from_ground_points_recovers_extrinsics() {
    let cam = cameras()[1].clone();
    let truth = Extrinsics::from_angles(1.8, -0.1, 1.45, 12.0, 1.0, -3.0);
    let v2c = truth.vehicle_to_cam();
    let mut rng = Rng(3);
    let mut xy = Vec::new();
    let mut px = Vec::new();
    while xy.len() < 12 {
        let p = nalgebra::Point3::new(rng.uniform(4.0, 20.0), rng.uniform(-5.0, 5.0), 0.0);
        if let Some(q) = cam.project((v2c * p).coords)
            && cam.in_image(&q)
        {
            xy.push(Point2::new(p.x, p.y));
            px.push(Point2::new(
                q.x + 0.1 * rng.normal(),
                q.y + 0.1 * rng.normal(),
            ));
        }
    }
    let (e, rms) = Extrinsics::from_ground_points(&cam, &xy, &px).unwrap();
    let (x, y, h, p, r, yw) = e.to_angles();
    assert!(rms < 0.3, "rms {rms}");
    assert!(
        (h - 1.45).abs() < 0.03
            && (p - 12.0).abs() < 0.2
            && (r - 1.0).abs() < 0.3
            && (yw + 3.0).abs() < 0.3,
        "{x} {y} {h} {p} {r} {yw}"
    );
}

#[test]
fn calibration_bundle_toml_roundtrip() {
    let c = Calibration {
        camera: cameras()[2].clone(),
        extrinsics: Extrinsics::from_height_pitch_roll_yaw(1.6, 8.0, 0.0, 0.0),
    };
    let p = tmp("calib.toml");
    c.save(&p).unwrap();
    let back = Calibration::load(&p).unwrap();
    assert_eq!(back.camera, c.camera);
    assert!(
        (back.extrinsics.matrix() - c.extrinsics.matrix())
            .abs()
            .max()
            < 1e-9
    );
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace("fisheye", "kannala"),
    )
    .unwrap();
    let msg = Calibration::load(&p).unwrap_err().to_string();
    assert!(msg.contains("model"), "{msg}");
}
