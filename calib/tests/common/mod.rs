#![allow(dead_code)]
use std::path::PathBuf;

/// `$BEVRT_SHARED` or `<workspace>/../shared`; `None` (test prints SKIP) when absent.
pub fn shared_dir() -> Option<PathBuf> {
    let p = match std::env::var_os("BEVRT_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    };
    if p.join("data/calib/opencv_left").is_dir() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: shared data not found at {} (set BEVRT_SHARED)",
            p.display()
        );
        None
    }
}

/// The 1280x720 wide-angle test camera with strong barrel distortion used across the tests.
pub fn wide_angle() -> bevrt_calib::CameraModel {
    bevrt_calib::CameraModel::pinhole(
        1280,
        720,
        640.0,
        641.0,
        645.0,
        358.0,
        [-0.33, 0.12, 0.0008, -0.0005, -0.015],
    )
    .unwrap()
}

/// Small deterministic RNG (xorshift64*) so the property tests need no extra crates.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    pub fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform(1e-12, 1.0);
        let u2 = self.uniform(0.0, 1.0);
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

use bevrt_calib::{CameraModel, GrayImage};
use nalgebra::{Isometry3, Point2, Point3, Translation3, UnitQuaternion, Vector3};

/// Per-pixel rays and their pixel derivatives (linearized within a pixel), reused across
/// rendered views; rendering uses 16 rotated-grid samples per pixel (each sample has a distinct
/// x and y offset, so edges of any direction are anti-aliased in 1/16 px steps).
pub struct RayMap {
    pub w: usize,
    pub h: usize,
    rays: Vec<[Vector3<f64>; 3]>,
}

pub const NS: usize = 16;

impl RayMap {
    pub fn new(cam: &CameraModel) -> Self {
        let (w, h) = (cam.width() as usize, cam.height() as usize);
        let centre = |x: f64, y: f64| {
            let r = cam
                .unproject(Point2::new(x, y))
                .unwrap_or(Vector3::new(0.0, 0.0, -1.0));
            r / r.z.abs().max(1e-9)
        };
        let mut rays = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                let (xf, yf) = (x as f64, y as f64);
                let c = centre(xf, yf);
                let du = (centre(xf + 0.25, yf) - centre(xf - 0.25, yf)) * 2.0;
                let dv = (centre(xf, yf + 0.25) - centre(xf, yf - 0.25)) * 2.0;
                rays.push([c, du, dv]);
            }
        }
        RayMap { w, h, rays }
    }

    /// Renders a `cols` x `rows` inner-corner chessboard (square `s`, one white square of margin)
    /// seen with `pose` (board -> camera). `light` = (gain gradient per image width) for uneven
    /// lighting, 0 for uniform.
    pub fn render(
        &self,
        pose: &Isometry3<f64>,
        cols: usize,
        rows: usize,
        s: f64,
        light: f32,
    ) -> GrayImage {
        let rt = pose.rotation.to_rotation_matrix().matrix().transpose();
        let tb = rt * pose.translation.vector; // R^T t
        let r0 = rt.row(0).transpose();
        let r1 = rt.row(1).transpose();
        let r2 = rt.row(2).transpose();
        let mut img = GrayImage::new(self.w, self.h);
        let offs: Vec<(f64, f64)> = (0..NS)
            .map(|k| {
                (
                    (k as f64 + 0.5) / NS as f64 - 0.5,
                    (((5 * k) % NS) as f64 + 0.5) / NS as f64 - 0.5,
                )
            })
            .collect();
        for y in 0..self.h {
            for x in 0..self.w {
                let mut acc = 0.0f32;
                let [c, du, dv] = self.rays[y * self.w + x];
                for &(ox, oy) in &offs {
                    let d = c + du * ox + dv * oy;
                    let dz = r2.dot(&d);
                    let mut v = 110.0f32; // background
                    if dz.abs() > 1e-12 && c.z > 0.0 {
                        let lam = tb.z / dz;
                        if lam > 0.0 {
                            let bx = lam * r0.dot(&d) - tb.x;
                            let by = lam * r1.dot(&d) - tb.y;
                            let (i, j) = ((bx / s).floor() as i64, (by / s).floor() as i64);
                            if i >= -2 && i <= cols as i64 && j >= -2 && j <= rows as i64 {
                                v = if i == -2 || j == -2 || i == cols as i64 || j == rows as i64 {
                                    225.0 // white margin
                                } else if (i + j).rem_euclid(2) == 0 {
                                    30.0
                                } else {
                                    225.0
                                };
                            }
                        }
                    }
                    acc += v;
                }
                let acc = acc / NS as f32;
                let g = 1.0 + light * (x as f32 / self.w as f32 - 0.5);
                img.data[y * self.w + x] = acc * g;
            }
        }
        img
    }
}

pub fn add_noise(img: &mut GrayImage, sigma: f64, rng: &mut Rng) {
    for v in img.data.iter_mut() {
        *v = (*v + (sigma * rng.normal()) as f32).clamp(0.0, 255.0);
    }
}

/// Random board pose with every corner at least `margin` px inside the image; `tilt_deg`
/// bounds the rotation about the board's x and y axes.
pub fn random_pose(
    cam: &CameraModel,
    obj: &[Point3<f64>],
    rng: &mut Rng,
    tilt_deg: f64,
    dist: (f64, f64),
    margin: f64,
) -> Isometry3<f64> {
    let cx = obj.iter().map(|p| p.x).sum::<f64>() / obj.len() as f64;
    let cy = obj.iter().map(|p| p.y).sum::<f64>() / obj.len() as f64;
    for _ in 0..10_000 {
        let rot = UnitQuaternion::from_euler_angles(
            rng.uniform(-tilt_deg, tilt_deg).to_radians(),
            rng.uniform(-tilt_deg, tilt_deg).to_radians(),
            rng.uniform(-180.0, 180.0).to_radians(),
        );
        let z = rng.uniform(dist.0, dist.1);
        let ray = cam
            .unproject(Point2::new(
                rng.uniform(0.2, 0.8) * cam.width() as f64,
                rng.uniform(0.2, 0.8) * cam.height() as f64,
            ))
            .unwrap();
        let centre = ray * (z / ray.z);
        let t = centre - rot * Vector3::new(cx, cy, 0.0);
        let pose = Isometry3::from_parts(Translation3::from(t), rot);
        let ok = obj.iter().all(|p| {
            let pc = pose * p;
            match cam.project(pc.coords) {
                Some(q) => {
                    q.x > margin
                        && q.y > margin
                        && q.x < cam.width() as f64 - margin
                        && q.y < cam.height() as f64 - margin
                }
                None => false,
            }
        });
        if ok {
            return pose;
        }
    }
    panic!("no valid pose found");
}
