//! Acceptance on OpenCV's left01..left14 sample (13 views, 9x6, 25 mm).
mod common;

use bevrt_calib::{CalibOptions, GrayImage, View, board_points, calibrate, find_chessboard};

const NAMES: [&str; 13] = [
    "left01", "left02", "left03", "left04", "left05", "left06", "left07", "left08", "left09",
    "left11", "left12", "left13", "left14",
];

#[test]
fn opencv_left_matches_opencv() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let dir = shared.join("data/calib/opencv_left");
    let obj = board_points(9, 6, 0.025);
    let t0 = std::time::Instant::now();
    let mut views = Vec::new();
    for n in NAMES {
        let img = GrayImage::load(dir.join(format!("{n}.jpg"))).unwrap();
        let c = find_chessboard(&img, 9, 6).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(c.len(), 54);
        // consistent order: first corner is the top-left extreme corner, rows of 9
        assert!(
            c[0].x + c[0].y <= c[8].x + c[8].y
                && c[0].x + c[0].y <= c[45].x + c[45].y
                && c[0].x + c[0].y <= c[53].x + c[53].y
        );
        views.push(View {
            name: n.into(),
            object: obj.clone(),
            image: c,
        });
    }
    let td = t0.elapsed();
    let r = calibrate(&views, 640, 480, &CalibOptions::default()).unwrap();
    let cam = &r.camera;
    eprintln!(
        "detect {:?} total {:?}: rms {:.4} fx {:.2} fy {:.2} cx {:.2} cy {:.2} dist {:?} per_view {:?} std {:?} outliers {:?}",
        td,
        t0.elapsed(),
        r.rms,
        cam.fx(),
        cam.fy(),
        cam.cx(),
        cam.cy(),
        cam.distortion().coeffs(),
        r.per_view_rms,
        r.std_dev,
        r.outlier_views
    );
    // OpenCV's own corners are off by 4-6 px on left02 (and ~3.5 px on one corner of left13):
    // its cornerSubPix starts from quad corners and converges to a neighbouring edge there
    // (left02 per-view RMS 1.22 px in OpenCV vs 0.17 px here), which pulls its fx up by ~3 px.
    // cv2.calibrateCamera fed with *our* corners reproduces our numbers to 1e-4 px, and
    // OpenCV on its own corners without left02 gives fx 534.13 fy 534.19 cx 342.84 cy 233.72,
    // RMS 0.234. So we check: close to OpenCV's published numbers (1 %, 2.5 px), tight to
    // OpenCV without its mis-detected view (0.5 %, 1.5 px), and an RMS no worse than OpenCV's.
    assert!((cam.fx() / 536.073 - 1.0).abs() < 0.01, "fx {}", cam.fx());
    assert!((cam.fy() / 536.016 - 1.0).abs() < 0.01, "fy {}", cam.fy());
    assert!((cam.cx() - 342.370).abs() < 2.5, "cx {}", cam.cx());
    assert!((cam.cy() - 235.537).abs() < 2.5, "cy {}", cam.cy());
    assert!((cam.fx() / 534.13 - 1.0).abs() < 0.005, "fx {}", cam.fx());
    assert!((cam.fy() / 534.19 - 1.0).abs() < 0.005, "fy {}", cam.fy());
    assert!((cam.cx() - 342.84).abs() < 1.5, "cx {}", cam.cx());
    assert!((cam.cy() - 233.72).abs() < 1.5, "cy {}", cam.cy());
    assert!(r.rms < 0.4087 * 1.1, "rms {}", r.rms);
    assert!(r.rms > 0.1, "rms {} suspiciously small", r.rms);
    assert!(
        r.outlier_views.is_empty(),
        "no outlier view with correct corners: {:?}",
        r.outlier_views
    );

    let fa = calibrate(
        &views,
        640,
        480,
        &CalibOptions {
            fix_aspect: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(fa.camera.fx(), fa.camera.fy());
    assert!(
        (fa.camera.fx() / 536.108 - 1.0).abs() < 0.01,
        "fixed-aspect f {}",
        fa.camera.fx()
    );
}

/// The reference was made with OpenCV's calibration sample settings: cornerSubPix half window
/// 11 (23x23 px, wider than left02's 21.8 px corner spacing). With the same window our
/// refinement lands within the tolerances of it (0.5 %, 1.5 px); the default adaptive
/// window (inside one cell) is the one to use on other cameras.
#[test]
fn opencv_left_with_the_reference_window_meets_its_tolerances() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let dir = shared.join("data/calib/opencv_left");
    let images: Vec<(String, GrayImage)> = NAMES
        .iter()
        .map(|n| {
            let img = GrayImage::load(dir.join(format!("{n}.jpg"))).unwrap();
            (n.to_string(), img)
        })
        .collect();
    let detect = bevrt_calib::chessboard::DetectOptions {
        subpix_half_window: Some(11),
        ..Default::default()
    };
    let r = bevrt_calib::pipeline::calibrate_images(
        &images,
        9,
        6,
        0.025,
        &CalibOptions::default(),
        &detect,
        2,
    )
    .unwrap();
    assert_eq!(r.used.len(), 13, "rejected: {:?}", r.rejected);
    let cam = &r.calib.camera;
    eprintln!(
        "window 11: rms {:.4} fx {:.2} fy {:.2} cx {:.2} cy {:.2}",
        r.calib.rms,
        cam.fx(),
        cam.fy(),
        cam.cx(),
        cam.cy()
    );
    assert!((cam.fx() / 536.073 - 1.0).abs() < 0.005, "fx {}", cam.fx());
    assert!((cam.fy() / 536.016 - 1.0).abs() < 0.005, "fy {}", cam.fy());
    assert!((cam.cx() - 342.370).abs() < 1.5, "cx {}", cam.cx());
    assert!((cam.cy() - 235.537).abs() < 1.5, "cy {}", cam.cy());
    assert!(r.calib.rms < 0.4087 * 1.1, "rms {}", r.calib.rms);
}

#[test]
fn opencv_filestorage_yaml_loads() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let cam =
        bevrt_calib::load_camera_yaml(shared.join("data/calib/opencv_left/left_intrinsics.yml"))
            .unwrap();
    assert_eq!((cam.width(), cam.height()), (640, 480));
    assert!((cam.fx() - 535.915_733_961_632).abs() < 1e-9);
    assert!((cam.cy() - 235.570_829_097_881_7).abs() < 1e-9);
    assert!((cam.distortion().coeffs()[4] - 0.238_391_530_808_784_86).abs() < 1e-12);
}
