//! Camera models: pinhole with OpenCV's plumb_bob (Brown-Conrady) distortion and the
//! equidistant fisheye model of OpenCV's `cv::fisheye`.
//!
//! Camera frame is OpenCV's: x right, y down, z forward. Pixel coordinates: (0,0) is the
//! centre of the top-left pixel (OpenCV convention).

use nalgebra::{Matrix2, Point2, Vector2, Vector3};
use serde::{Deserialize, Serialize};

use crate::error::CalibError;

/// Lens distortion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", content = "coeffs", rename_all = "snake_case")]
pub enum Distortion {
    /// OpenCV / ROS `plumb_bob`: k1 k2 p1 p2 k3.
    PlumbBob([f64; 5]),
    /// OpenCV `cv::fisheye` / ROS `equidistant`: k1 k2 k3 k4.
    Fisheye([f64; 4]),
}

impl Distortion {
    /// Coefficients as a slice (5 for plumb_bob, 4 for fisheye).
    pub fn coeffs(&self) -> &[f64] {
        match self {
            Distortion::PlumbBob(c) => c,
            Distortion::Fisheye(c) => c,
        }
    }
    pub fn is_fisheye(&self) -> bool {
        matches!(self, Distortion::Fisheye(_))
    }
}

/// An intrinsic camera model (image size, focal lengths, principal point, distortion).
///
/// `project` only accepts points with z > 0 whose normalized radius lies inside the range where
/// the distortion polynomial is monotonic (beyond it the model folds back and would map points
/// far outside the field of view into the image).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "CameraModelRaw", into = "CameraModelRaw")]
pub struct CameraModel {
    width: u32,
    height: u32,
    fx: f64,
    fy: f64,
    cx: f64,
    cy: f64,
    distortion: Distortion,
    /// Largest valid undistorted radius (pinhole: r = |(x,y)|/z; fisheye: theta in rad).
    limit: f64,
}

#[derive(Serialize, Deserialize)]
struct CameraModelRaw {
    width: u32,
    height: u32,
    fx: f64,
    fy: f64,
    cx: f64,
    cy: f64,
    /// "pinhole" (plumb_bob, 5 coefficients) or "fisheye" (4 coefficients).
    model: String,
    dist: Vec<f64>,
}

impl TryFrom<CameraModelRaw> for CameraModel {
    type Error = String;
    fn try_from(r: CameraModelRaw) -> Result<Self, String> {
        let d = match r.model.as_str() {
            "pinhole" | "plumb_bob" => {
                let mut c = [0.0; 5];
                if r.dist.len() > 5 {
                    return Err(format!(
                        "dist: at most 5 coefficients for pinhole, got {}",
                        r.dist.len()
                    ));
                }
                c[..r.dist.len()].copy_from_slice(&r.dist);
                Distortion::PlumbBob(c)
            }
            "fisheye" | "equidistant" => {
                if r.dist.len() != 4 {
                    return Err(format!(
                        "dist: fisheye needs 4 coefficients, got {}",
                        r.dist.len()
                    ));
                }
                Distortion::Fisheye([r.dist[0], r.dist[1], r.dist[2], r.dist[3]])
            }
            m => {
                return Err(format!(
                    "model: unknown camera model `{m}` (pinhole|fisheye)"
                ));
            }
        };
        CameraModel::new(r.width, r.height, r.fx, r.fy, r.cx, r.cy, d).map_err(|e| e.to_string())
    }
}

impl From<CameraModel> for CameraModelRaw {
    fn from(c: CameraModel) -> Self {
        CameraModelRaw {
            width: c.width,
            height: c.height,
            fx: c.fx,
            fy: c.fy,
            cx: c.cx,
            cy: c.cy,
            model: if c.distortion.is_fisheye() {
                "fisheye"
            } else {
                "pinhole"
            }
            .into(),
            dist: c.distortion.coeffs().to_vec(),
        }
    }
}

/// Jacobian of a projection: d(u,v)/d(point) and d(u,v)/d(intrinsics).
#[derive(Debug, Clone, Copy)]
pub struct ProjectionJacobian {
    /// d(u,v)/d(X,Y,Z), 2x3 row-major.
    pub d_point: [[f64; 3]; 2],
    /// d(u,v)/d(fx, fy, cx, cy, dist...). For plumb_bob 9 columns are used, fisheye 8.
    pub d_intr: [[f64; 9]; 2],
}

impl CameraModel {
    /// Builds a camera; fails if the focal lengths are not positive and finite.
    pub fn new(
        width: u32,
        height: u32,
        fx: f64,
        fy: f64,
        cx: f64,
        cy: f64,
        distortion: Distortion,
    ) -> Result<Self, CalibError> {
        for (n, v) in [("fx", fx), ("fy", fy)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(CalibError::invalid(n, format!("must be positive, got {v}")));
            }
        }
        for (n, v) in [("cx", cx), ("cy", cy)] {
            if !v.is_finite() {
                return Err(CalibError::invalid(n, "not finite"));
            }
        }
        if distortion.coeffs().iter().any(|c| !c.is_finite()) {
            return Err(CalibError::invalid("distortion", "not finite"));
        }
        let mut c = CameraModel {
            width,
            height,
            fx,
            fy,
            cx,
            cy,
            distortion,
            limit: 0.0,
        };
        c.limit = c.compute_limit();
        Ok(c)
    }

    pub fn pinhole(
        width: u32,
        height: u32,
        fx: f64,
        fy: f64,
        cx: f64,
        cy: f64,
        d: [f64; 5],
    ) -> Result<Self, CalibError> {
        Self::new(width, height, fx, fy, cx, cy, Distortion::PlumbBob(d))
    }
    pub fn fisheye(
        width: u32,
        height: u32,
        fx: f64,
        fy: f64,
        cx: f64,
        cy: f64,
        d: [f64; 4],
    ) -> Result<Self, CalibError> {
        Self::new(width, height, fx, fy, cx, cy, Distortion::Fisheye(d))
    }

    pub fn width(&self) -> u32 {
        self.width
    }
    pub fn height(&self) -> u32 {
        self.height
    }
    pub fn fx(&self) -> f64 {
        self.fx
    }
    pub fn fy(&self) -> f64 {
        self.fy
    }
    pub fn cx(&self) -> f64 {
        self.cx
    }
    pub fn cy(&self) -> f64 {
        self.cy
    }
    pub fn distortion(&self) -> &Distortion {
        &self.distortion
    }
    pub fn is_fisheye(&self) -> bool {
        self.distortion.is_fisheye()
    }
    /// Camera matrix K, row-major.
    pub fn k(&self) -> [[f64; 3]; 3] {
        [
            [self.fx, 0.0, self.cx],
            [0.0, self.fy, self.cy],
            [0.0, 0.0, 1.0],
        ]
    }
    /// Same camera at another resolution (intrinsics scaled; distortion unchanged).
    pub fn scaled(&self, width: u32, height: u32) -> Self {
        let sx = width as f64 / self.width as f64;
        let sy = height as f64 / self.height as f64;
        let mut c = self.clone();
        c.width = width;
        c.height = height;
        c.fx *= sx;
        c.fy *= sy;
        c.cx = (self.cx + 0.5) * sx - 0.5;
        c.cy = (self.cy + 0.5) * sy - 0.5;
        c
    }

    fn compute_limit(&self) -> f64 {
        match self.distortion {
            Distortion::PlumbBob(k) => {
                // radial map g(r) = r (1 + k1 r^2 + k2 r^4 + k3 r^6); keep g' > 0.
                let gp = |r: f64| {
                    let r2 = r * r;
                    1.0 + 3.0 * k[0] * r2 + 5.0 * k[1] * r2 * r2 + 7.0 * k[4] * r2 * r2 * r2
                };
                let mut r = 0.0;
                let step = 0.002;
                while r < 20.0 {
                    if gp(r + step) <= 0.05 {
                        return r;
                    }
                    r += step;
                }
                20.0
            }
            Distortion::Fisheye(k) => {
                let gp = |t: f64| {
                    let t2 = t * t;
                    1.0 + 3.0 * k[0] * t2
                        + 5.0 * k[1] * t2 * t2
                        + 7.0 * k[2] * t2.powi(3)
                        + 9.0 * k[3] * t2.powi(4)
                };
                let mut t = 0.0;
                let step = 0.001;
                let tmax = std::f64::consts::FRAC_PI_2 - 1e-3;
                while t < tmax {
                    if gp(t + step) <= 0.05 {
                        return t;
                    }
                    t += step;
                }
                tmax
            }
        }
    }

    /// Projects a point in the camera frame to pixels. `None` when behind the camera or outside
    /// the valid range of the distortion model (the pixel may still lie outside the image).
    #[inline]
    pub fn project(&self, p_cam: Vector3<f64>) -> Option<Point2<f64>> {
        if p_cam.z <= 0.0 {
            return None;
        }
        let x = p_cam.x / p_cam.z;
        let y = p_cam.y / p_cam.z;
        let (xd, yd) = self.distort(x, y)?;
        Some(Point2::new(self.fx * xd + self.cx, self.fy * yd + self.cy))
    }

    /// Whether a pixel lies inside the image (pixel centres at integers; [-0.5, w-0.5)).
    pub fn in_image(&self, p: &Point2<f64>) -> bool {
        p.x >= -0.5
            && p.y >= -0.5
            && p.x < self.width as f64 - 0.5
            && p.y < self.height as f64 - 0.5
    }

    /// Distorts a normalized point (x/z, y/z). `None` outside the valid range.
    #[inline]
    pub fn distort(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        let r2 = x * x + y * y;
        match self.distortion {
            Distortion::PlumbBob(k) => {
                if r2 > self.limit * self.limit {
                    return None;
                }
                let radial = 1.0 + r2 * (k[0] + r2 * (k[1] + r2 * k[4]));
                let xy2 = 2.0 * x * y;
                let xd = x * radial + k[2] * xy2 + k[3] * (r2 + 2.0 * x * x);
                let yd = y * radial + k[2] * (r2 + 2.0 * y * y) + k[3] * xy2;
                Some((xd, yd))
            }
            Distortion::Fisheye(k) => {
                let r = r2.sqrt();
                let th = r.atan();
                if th > self.limit {
                    return None;
                }
                if r < 1e-12 {
                    return Some((x, y));
                }
                let t2 = th * th;
                let thd = th * (1.0 + t2 * (k[0] + t2 * (k[1] + t2 * (k[2] + t2 * k[3]))));
                let s = thd / r;
                Some((x * s, y * s))
            }
        }
    }

    /// Distortion with Jacobians: returns (xd, yd), d(xd,yd)/d(x,y), d(xd,yd)/d(coeffs).
    pub fn distort_jac(&self, x: f64, y: f64) -> (Vector2<f64>, Matrix2<f64>, [[f64; 5]; 2]) {
        let r2 = x * x + y * y;
        match self.distortion {
            Distortion::PlumbBob(k) => {
                let radial = 1.0 + r2 * (k[0] + r2 * (k[1] + r2 * k[4]));
                let drad_dr2 = k[0] + 2.0 * k[1] * r2 + 3.0 * k[4] * r2 * r2;
                let xd = x * radial + 2.0 * k[2] * x * y + k[3] * (r2 + 2.0 * x * x);
                let yd = y * radial + k[2] * (r2 + 2.0 * y * y) + 2.0 * k[3] * x * y;
                let dxd_dx = radial + x * drad_dr2 * 2.0 * x + 2.0 * k[2] * y + k[3] * 6.0 * x;
                let dxd_dy = x * drad_dr2 * 2.0 * y + 2.0 * k[2] * x + k[3] * 2.0 * y;
                let dyd_dx = y * drad_dr2 * 2.0 * x + k[2] * 2.0 * x + 2.0 * k[3] * y;
                let dyd_dy = radial + y * drad_dr2 * 2.0 * y + k[2] * 6.0 * y + 2.0 * k[3] * x;
                let r4 = r2 * r2;
                let dk = [
                    [x * r2, x * r4, 2.0 * x * y, r2 + 2.0 * x * x, x * r4 * r2],
                    [y * r2, y * r4, r2 + 2.0 * y * y, 2.0 * x * y, y * r4 * r2],
                ];
                (
                    Vector2::new(xd, yd),
                    Matrix2::new(dxd_dx, dxd_dy, dyd_dx, dyd_dy),
                    dk,
                )
            }
            Distortion::Fisheye(k) => {
                let r = r2.sqrt();
                if r < 1e-10 {
                    let t2 = r2;
                    let s = 1.0 + t2 * k[0];
                    return (
                        Vector2::new(x * s, y * s),
                        Matrix2::identity(),
                        [[0.0; 5]; 2],
                    );
                }
                let th = r.atan();
                let t2 = th * th;
                let poly = 1.0 + t2 * (k[0] + t2 * (k[1] + t2 * (k[2] + t2 * k[3])));
                let thd = th * poly;
                let dthd_dth = 1.0
                    + t2 * (3.0 * k[0] + t2 * (5.0 * k[1] + t2 * (7.0 * k[2] + t2 * 9.0 * k[3])));
                let dth_dr = 1.0 / (1.0 + r2);
                let s = thd / r;
                // ds/dr = (dthd/dr * r - thd) / r^2
                let ds_dr = (dthd_dth * dth_dr * r - thd) / r2;
                let (drdx, drdy) = (x / r, y / r);
                let jac = Matrix2::new(
                    s + x * ds_dr * drdx,
                    x * ds_dr * drdy,
                    y * ds_dr * drdx,
                    s + y * ds_dr * drdy,
                );
                let t3 = th * t2;
                let dk = [
                    [
                        x / r * t3,
                        x / r * t3 * t2,
                        x / r * t3 * t2 * t2,
                        x / r * t3 * t2 * t2 * t2,
                        0.0,
                    ],
                    [
                        y / r * t3,
                        y / r * t3 * t2,
                        y / r * t3 * t2 * t2,
                        y / r * t3 * t2 * t2 * t2,
                        0.0,
                    ],
                ];
                (Vector2::new(x * s, y * s), jac, dk)
            }
        }
    }

    /// Projection with analytic Jacobians (no validity checks except z > 0).
    pub fn project_jac(&self, p: Vector3<f64>) -> Option<(Point2<f64>, ProjectionJacobian)> {
        if p.z <= 0.0 {
            return None;
        }
        let iz = 1.0 / p.z;
        let x = p.x * iz;
        let y = p.y * iz;
        let (d, jd, dk) = self.distort_jac(x, y);
        let u = self.fx * d.x + self.cx;
        let v = self.fy * d.y + self.cy;
        // d(x,y)/dP
        let dn = [[iz, 0.0, -x * iz], [0.0, iz, -y * iz]];
        let mut d_point = [[0.0; 3]; 2];
        for c in 0..3 {
            let a = jd[(0, 0)] * dn[0][c] + jd[(0, 1)] * dn[1][c];
            let b = jd[(1, 0)] * dn[0][c] + jd[(1, 1)] * dn[1][c];
            d_point[0][c] = self.fx * a;
            d_point[1][c] = self.fy * b;
        }
        let mut d_intr = [[0.0; 9]; 2];
        d_intr[0][0] = d.x;
        d_intr[1][1] = d.y;
        d_intr[0][2] = 1.0;
        d_intr[1][3] = 1.0;
        let n = self.distortion.coeffs().len();
        for i in 0..n {
            d_intr[0][4 + i] = self.fx * dk[0][i];
            d_intr[1][4 + i] = self.fy * dk[1][i];
        }
        Some((Point2::new(u, v), ProjectionJacobian { d_point, d_intr }))
    }

    /// Removes the distortion of a pixel: returns normalized coordinates (x/z, y/z) such that
    /// `distort(x, y)` maps back to the pixel (Newton iteration with the analytic Jacobian,
    /// converged to ~1e-12). `None` if it does not converge or leaves the valid range.
    pub fn undistort_normalized(&self, p: Point2<f64>) -> Option<Point2<f64>> {
        let xd = (p.x - self.cx) / self.fx;
        let yd = (p.y - self.cy) / self.fy;
        match self.distortion {
            Distortion::Fisheye(k) => {
                let thd = (xd * xd + yd * yd).sqrt();
                if thd < 1e-14 {
                    return Some(Point2::new(xd, yd));
                }
                // solve th * poly(th) = thd by Newton
                let mut th = thd.min(self.limit);
                for _ in 0..50 {
                    let t2 = th * th;
                    let f = th * (1.0 + t2 * (k[0] + t2 * (k[1] + t2 * (k[2] + t2 * k[3])))) - thd;
                    let fp = 1.0
                        + t2 * (3.0 * k[0]
                            + t2 * (5.0 * k[1] + t2 * (7.0 * k[2] + t2 * 9.0 * k[3])));
                    let step = f / fp;
                    th = (th - step).clamp(0.0, self.limit);
                    if step.abs() < 1e-15 {
                        break;
                    }
                }
                let t2 = th * th;
                let got = th * (1.0 + t2 * (k[0] + t2 * (k[1] + t2 * (k[2] + t2 * k[3]))));
                if (got - thd).abs() > 1e-9 || th >= std::f64::consts::FRAC_PI_2 {
                    return None;
                }
                let s = th.tan() / thd;
                Some(Point2::new(xd * s, yd * s))
            }
            Distortion::PlumbBob(_) => {
                let target = Vector2::new(xd, yd);
                let mut x = target;
                let lim2 = self.limit * self.limit;
                for _ in 0..100 {
                    let (d, j, _) = self.distort_jac(x.x, x.y);
                    let err = d - target;
                    if err.norm_squared() < 1e-26 {
                        break;
                    }
                    let step = j.try_inverse()? * err;
                    let mut nx = x - step;
                    // keep inside the monotonic region
                    let n2 = nx.norm_squared();
                    if n2 > lim2 {
                        nx *= (lim2 / n2).sqrt() * 0.999;
                    }
                    x = nx;
                }
                let (d, _, _) = self.distort_jac(x.x, x.y);
                if (d - target).norm() > 1e-9 || x.norm_squared() > lim2 {
                    return None;
                }
                Some(Point2::new(x.x, x.y))
            }
        }
    }

    /// Unprojects a pixel to a unit-length ray in the camera frame.
    pub fn unproject(&self, p: Point2<f64>) -> Option<Vector3<f64>> {
        let n = self.undistort_normalized(p)?;
        Some(Vector3::new(n.x, n.y, 1.0).normalize())
    }
}
