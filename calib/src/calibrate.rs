//! Intrinsic calibration from planar boards: Zhang's closed form from homographies, then
//! Levenberg-Marquardt over intrinsics, distortion and all view poses with analytic Jacobians.
//!
//! Cost = OpenCV's: sum of squared pixel residuals; RMS = sqrt(sum |r|^2 / number of points).
//! Parameter standard deviations = sqrt(diag((J^T J)^-1) * sum|r|^2 / (2N - n_free)) as OpenCV.

use nalgebra::{DMatrix, DVector, Isometry3, Matrix3, Point2, Point3, Vector3};
use serde::Serialize;

use crate::camera::{CameraModel, Distortion};
use crate::error::CalibError;
use crate::geom::{apply_increment, homography_dlt, pose_from_homography, refine_pose, skew};

/// Which model to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    #[default]
    Pinhole,
    Fisheye,
}

/// Calibration options (mirror OpenCV's flags).
#[derive(Debug, Clone)]
pub struct CalibOptions {
    pub model: ModelKind,
    /// Keep fx / fy = 1 (CALIB_FIX_ASPECT_RATIO with no initial guess).
    pub fix_aspect: bool,
    /// Keep the principal point at the image centre (CALIB_FIX_PRINCIPAL_POINT).
    pub fix_principal_point: bool,
    /// p1 = p2 = 0 (CALIB_ZERO_TANGENT_DIST). Pinhole only.
    pub zero_tangent: bool,
    /// k3 = 0 (CALIB_FIX_K3). Pinhole only.
    pub fix_k3: bool,
    pub max_iter: usize,
    /// A view is flagged as an outlier when its RMS exceeds this factor times the median view
    /// RMS (and 0.5 px).
    pub outlier_factor: f64,
}

impl Default for CalibOptions {
    fn default() -> Self {
        CalibOptions {
            model: ModelKind::Pinhole,
            fix_aspect: false,
            fix_principal_point: false,
            zero_tangent: false,
            fix_k3: false,
            max_iter: 100,
            outlier_factor: 3.0,
        }
    }
}

/// One view: board points (z = 0, metres) and detected pixels, same order.
#[derive(Debug, Clone)]
pub struct View {
    pub name: String,
    pub object: Vec<Point3<f64>>,
    pub image: Vec<Point2<f64>>,
}

/// Result of [`calibrate`].
#[derive(Debug, Clone)]
pub struct CalibResult {
    pub camera: CameraModel,
    pub rms: f64,
    pub per_view_rms: Vec<f64>,
    /// Board-to-camera pose per view.
    pub poses: Vec<Isometry3<f64>>,
    /// Parameter names, values and standard deviations (fx fy cx cy k1 ...).
    pub param_names: Vec<&'static str>,
    pub params: Vec<f64>,
    pub std_dev: Vec<f64>,
    /// Indices of views flagged as outliers.
    pub outlier_views: Vec<usize>,
    pub iterations: usize,
}

/// Board object points: `cols` per row, square size `square`, z = 0, row-major like the
/// detector's corner order.
pub fn board_points(cols: usize, rows: usize, square: f64) -> Vec<Point3<f64>> {
    let mut v = Vec::with_capacity(cols * rows);
    for r in 0..rows {
        for c in 0..cols {
            v.push(Point3::new(c as f64 * square, r as f64 * square, 0.0));
        }
    }
    v
}

fn vij(h: &Matrix3<f64>, i: usize, j: usize) -> [f64; 6] {
    let hi = h.column(i);
    let hj = h.column(j);
    [
        hi[0] * hj[0],
        hi[0] * hj[1] + hi[1] * hj[0],
        hi[1] * hj[1],
        hi[2] * hj[0] + hi[0] * hj[2],
        hi[2] * hj[1] + hi[1] * hj[2],
        hi[2] * hj[2],
    ]
}

/// Zhang's closed-form intrinsics (zero skew) from board->pixel homographies.
pub fn zhang_intrinsics(hs: &[Matrix3<f64>]) -> Option<(f64, f64, f64, f64)> {
    if hs.len() < 2 {
        return None;
    }
    // normalize the pixel scale for conditioning
    let mut rows: Vec<[f64; 6]> = Vec::new();
    for h in hs {
        let h = h / h.norm();
        let v12 = vij(&h, 0, 1);
        let v11 = vij(&h, 0, 0);
        let v22 = vij(&h, 1, 1);
        rows.push(v12);
        let mut d = [0.0; 6];
        for k in 0..6 {
            d[k] = v11[k] - v22[k];
        }
        rows.push(d);
    }
    // zero skew: B12 = 0
    rows.push([0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    let n = rows.len();
    let a = DMatrix::from_fn(n, 6, |i, j| rows[i][j]);
    let ata = a.transpose() * &a;
    let eig = ata.symmetric_eigen();
    let imin = (0..6).min_by(|&x, &y| eig.eigenvalues[x].total_cmp(&eig.eigenvalues[y]))?;
    let b = eig.eigenvectors.column(imin);
    let (b11, b12, b22, b13, b23, b33) = (b[0], b[1], b[2], b[3], b[4], b[5]);
    let den = b11 * b22 - b12 * b12;
    if den.abs() < 1e-300 {
        return None;
    }
    let v0 = (b12 * b13 - b11 * b23) / den;
    let lam = b33 - (b13 * b13 + v0 * (b12 * b13 - b11 * b23)) / b11;
    let alpha2 = lam / b11;
    let beta2 = lam * b11 / den;
    if !(alpha2 > 0.0 && beta2 > 0.0) {
        return None;
    }
    let alpha = alpha2.sqrt();
    let beta = beta2.sqrt();
    let gamma = -b12 * alpha * alpha * beta / lam;
    let u0 = gamma * v0 / beta - b13 * alpha * alpha / lam;
    Some((alpha, beta, u0, v0))
}

/// OpenCV-style fallback: principal point at the centre, focal length from vanishing points.
fn centre_focal(hs: &[Matrix3<f64>], w: u32, h: u32) -> f64 {
    let (cx, cy) = ((w as f64 - 1.0) * 0.5, (h as f64 - 1.0) * 0.5);
    let t = Matrix3::new(1.0, 0.0, -cx, 0.0, 1.0, -cy, 0.0, 0.0, 1.0);
    let mut a = Vec::new();
    let mut bv = Vec::new();
    for hh in hs {
        let hh = t * hh;
        let (h1, h2) = (hh.column(0).into_owned(), hh.column(1).into_owned());
        let n1 = h1.norm();
        let n2 = h2.norm();
        let h1 = h1 / n1;
        let h2 = h2 / n2;
        // orthogonality of r1, r2 and of the diagonals, with fx = fy = f:
        // (a1 a2 + b1 b2) / f^2 + c1 c2 = 0
        let pairs = [(h1, h2), ((h1 + h2) * 0.5, (h1 - h2) * 0.5)];
        for (p, q) in pairs {
            a.push(p.x * q.x + p.y * q.y);
            bv.push(-p.z * q.z);
        }
    }
    // least squares for 1/f^2
    let num: f64 = a.iter().zip(&bv).map(|(x, y)| x * y).sum();
    let den: f64 = a.iter().map(|x| x * x).sum();
    let inv_f2 = num / den.max(1e-300);
    if inv_f2 > 0.0 {
        (1.0 / inv_f2).sqrt()
    } else {
        w.max(h) as f64
    }
}

struct Layout {
    n_intr: usize,
    free: Vec<bool>,
    aspect: Option<f64>,
}

impl Layout {
    fn n(&self, views: usize) -> usize {
        self.n_intr + 6 * views
    }
}

fn make_camera(intr: &[f64], w: u32, h: u32, fisheye: bool) -> Result<CameraModel, CalibError> {
    let d = if fisheye {
        Distortion::Fisheye([intr[4], intr[5], intr[6], intr[7]])
    } else {
        Distortion::PlumbBob([intr[4], intr[5], intr[6], intr[7], intr[8]])
    };
    CameraModel::new(w, h, intr[0], intr[1], intr[2], intr[3], d)
}

/// Calibrates a camera from board views. `width` / `height` are the image size.
pub fn calibrate(
    views: &[View],
    width: u32,
    height: u32,
    opt: &CalibOptions,
) -> Result<CalibResult, CalibError> {
    if views.len() < 2 {
        return Err(CalibError::Calibration(format!(
            "need at least 2 board views, got {}",
            views.len()
        )));
    }
    for v in views {
        if v.object.len() != v.image.len() || v.object.len() < 4 {
            return Err(CalibError::Calibration(format!(
                "view {}: needs >= 4 matched points",
                v.name
            )));
        }
    }
    let hs: Vec<Matrix3<f64>> = views
        .iter()
        .map(|v| {
            let src: Vec<Point2<f64>> = v.object.iter().map(|p| Point2::new(p.x, p.y)).collect();
            homography_dlt(&src, &v.image).ok_or_else(|| {
                CalibError::Calibration(format!("view {}: degenerate homography", v.name))
            })
        })
        .collect::<Result<_, _>>()?;
    let (cx0, cy0) = ((width as f64 - 1.0) * 0.5, (height as f64 - 1.0) * 0.5);
    let diag = (width as f64).hypot(height as f64);
    let mut inits: Vec<(f64, f64, f64, f64)> = Vec::new();
    if !opt.fix_principal_point
        && let Some((fx, fy, cx, cy)) = zhang_intrinsics(&hs)
        && fx > 0.05 * diag
        && fy > 0.05 * diag
        && fx < 20.0 * diag
        && (0.0..width as f64).contains(&cx)
        && (0.0..height as f64).contains(&cy)
    {
        inits.push(if opt.fix_aspect {
            ((fx + fy) * 0.5, (fx + fy) * 0.5, cx, cy)
        } else {
            (fx, fy, cx, cy)
        });
    }
    let f = centre_focal(&hs, width, height);
    inits.push((f, f, cx0, cy0));
    if opt.model == ModelKind::Fisheye {
        let ff = width.max(height) as f64 / std::f64::consts::PI;
        inits.push((ff, ff, cx0, cy0));
    }
    let mut best: Option<CalibResult> = None;
    let mut last_err = None;
    for init in inits {
        match run_lm(views, width, height, opt, init) {
            Ok(r) => {
                let better = best.as_ref().is_none_or(|b| r.rms < b.rms);
                let good = r.rms < 1.0;
                if better {
                    best = Some(r);
                }
                if good && opt.model == ModelKind::Pinhole {
                    break;
                }
            }
            Err(e) => last_err = Some(e),
        }
    }
    best.ok_or_else(|| {
        last_err.unwrap_or_else(|| CalibError::Calibration("no initialization converged".into()))
    })
}

fn run_lm(
    views: &[View],
    width: u32,
    height: u32,
    opt: &CalibOptions,
    init: (f64, f64, f64, f64),
) -> Result<CalibResult, CalibError> {
    let fisheye = opt.model == ModelKind::Fisheye;
    let lm = Lm {
        views,
        width,
        height,
        fisheye,
        lay: parameter_layout(opt, fisheye),
    };
    let intr = initial_intrinsics(&lm.lay, init);
    let poses = lm.initial_poses(&intr)?;
    let np = lm.lay.n(views.len());
    let mut jtj = DMatrix::<f64>::zeros(np, np);
    let mut jtr = DVector::<f64>::zeros(np);
    let Solution {
        intr,
        poses,
        iterations: iters,
    } = lm.minimise(intr, poses, opt.max_iter, &mut jtj, &mut jtr)?;
    let cam = make_camera(&intr, width, height, fisheye)?;
    let (per_view, total) = residuals_per_view(&cam, views, &poses);
    let n_pts: usize = views.iter().map(|v| v.object.len()).sum();
    let rms = (total / n_pts as f64).sqrt();
    // standard deviations
    lm.normal_equations(&intr, &poses, &mut jtj, &mut jtr)?;
    let std = lm.intrinsics_std(&jtj, total, n_pts);
    let outliers = outlier_views(&per_view, opt.outlier_factor);
    let names: Vec<&'static str> = if fisheye {
        vec!["fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4"]
    } else {
        vec!["fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3"]
    };
    if !rms.is_finite() {
        return Err(CalibError::Calibration("solution diverged".into()));
    }
    Ok(CalibResult {
        camera: cam,
        rms,
        per_view_rms: per_view,
        poses,
        param_names: names,
        params: intr,
        std_dev: std,
        outlier_views: outliers,
        iterations: iters,
    })
}

/// Which intrinsics are free (the options' fixed ones are not) and whether fx is tied to fy.
fn parameter_layout(opt: &CalibOptions, fisheye: bool) -> Layout {
    let n_intr = if fisheye { 8 } else { 9 };
    let mut free = vec![true; n_intr];
    if opt.fix_principal_point {
        free[2] = false;
        free[3] = false;
    }
    if !fisheye {
        if opt.zero_tangent {
            free[6] = false;
            free[7] = false;
        }
        if opt.fix_k3 {
            free[8] = false;
        }
    }
    let aspect = if opt.fix_aspect { Some(1.0) } else { None };
    if aspect.is_some() {
        free[0] = false; // fx tied to fy
    }
    Layout {
        n_intr,
        free,
        aspect,
    }
}

/// The intrinsics vector from a starting (fx, fy, cx, cy), distortion zero.
fn initial_intrinsics(lay: &Layout, init: (f64, f64, f64, f64)) -> Vec<f64> {
    let mut intr = vec![0.0; lay.n_intr];
    intr[0] = init.0;
    intr[1] = init.1;
    intr[2] = init.2;
    intr[3] = init.3;
    if let Some(a) = lay.aspect {
        intr[0] = intr[1] * a;
    }
    intr
}

/// Each view's RMS residual, and the sum of squared residuals over all views.
fn residuals_per_view(
    cam: &CameraModel,
    views: &[View],
    poses: &[Isometry3<f64>],
) -> (Vec<f64>, f64) {
    let mut per_view = Vec::with_capacity(views.len());
    let mut total = 0.0;
    for (v, p) in views.iter().zip(poses) {
        let mut s = 0.0;
        for (o, i) in v.object.iter().zip(&v.image) {
            s += match cam.project_jac((p * o).coords) {
                Some((q, _)) => (q - i).norm_squared(),
                None => 1e8,
            };
        }
        total += s;
        per_view.push((s / v.object.len() as f64).sqrt());
    }
    (per_view, total)
}

/// Views whose RMS is over `factor` times the median (and over half a pixel).
fn outlier_views(per_view: &[f64], factor: f64) -> Vec<usize> {
    let mut sorted = per_view.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = sorted[sorted.len() / 2];
    per_view
        .iter()
        .enumerate()
        .filter(|(_, r)| **r > factor * median && **r > 0.5)
        .map(|(i, _)| i)
        .collect()
}

/// One Levenberg-Marquardt problem: the views, the image size, the model and which
/// parameters move.
struct Lm<'a> {
    views: &'a [View],
    width: u32,
    height: u32,
    fisheye: bool,
    lay: Layout,
}

/// An accepted damped step: the new parameters, their cost, and whether the step was too
/// small to go on.
struct Step {
    intr: Vec<f64>,
    poses: Vec<Isometry3<f64>>,
    cost: f64,
    small: bool,
}

/// Where the iterations ended: the parameters, and how many iterations ran.
struct Solution {
    intr: Vec<f64>,
    poses: Vec<Isometry3<f64>>,
    iterations: usize,
}

impl Lm<'_> {
    fn camera(&self, intr: &[f64]) -> Result<CameraModel, CalibError> {
        make_camera(intr, self.width, self.height, self.fisheye)
    }

    /// Initial poses from homographies of undistorted normalized points.
    fn initial_poses(&self, intr: &[f64]) -> Result<Vec<Isometry3<f64>>, CalibError> {
        let cam0 = self.camera(intr)?;
        let mut poses = Vec::with_capacity(self.views.len());
        for v in self.views {
            let src: Vec<Point2<f64>> = v.object.iter().map(|p| Point2::new(p.x, p.y)).collect();
            let dst: Vec<Point2<f64>> = v
                .image
                .iter()
                .map(|p| {
                    cam0.undistort_normalized(*p).unwrap_or(Point2::new(
                        (p.x - intr[2]) / intr[0],
                        (p.y - intr[3]) / intr[1],
                    ))
                })
                .collect();
            let h = homography_dlt(&src, &dst).ok_or_else(|| {
                CalibError::Calibration(format!("view {}: degenerate homography", v.name))
            })?;
            let (pose, _) = refine_pose(
                &cam0,
                &v.object,
                &v.image,
                pose_from_homography(&h, crate::geom::centroid(&src)),
                20,
            );
            poses.push(pose);
        }
        Ok(poses)
    }

    /// Sum of squared pixel residuals (1e8 for a point that does not project).
    fn cost(&self, intr: &[f64], poses: &[Isometry3<f64>]) -> Result<f64, CalibError> {
        let cam = self.camera(intr)?;
        let mut s = 0.0;
        for (v, p) in self.views.iter().zip(poses) {
            for (o, i) in v.object.iter().zip(&v.image) {
                match cam.project_jac((p * o).coords) {
                    Some((q, _)) if q.x.is_finite() && q.y.is_finite() => {
                        s += (q - i).norm_squared()
                    }
                    _ => s += 1e8,
                }
            }
        }
        Ok(s)
    }

    /// Fill `jtj` = JᵀJ and `jtr` = Jᵀr at the given parameters (fixed ones pinned).
    fn normal_equations(
        &self,
        intr: &[f64],
        poses: &[Isometry3<f64>],
        jtj: &mut DMatrix<f64>,
        jtr: &mut DVector<f64>,
    ) -> Result<(), CalibError> {
        jtj.fill(0.0);
        jtr.fill(0.0);
        let cam = self.camera(intr)?;
        let lay = &self.lay;
        let ni = lay.n_intr;
        for (vi, (v, p)) in self.views.iter().zip(poses).enumerate() {
            let off = ni + 6 * vi;
            for (o, im) in v.object.iter().zip(&v.image) {
                let rx = p.rotation * o.coords;
                let pc = rx + p.translation.vector;
                let Some((q, j)) = cam.project_jac(pc) else {
                    continue;
                };
                let r = q - im;
                let dpdr = -skew(&rx);
                for row in 0..2 {
                    let mut g = [0.0f64; 15];
                    g[..ni].copy_from_slice(&j.d_intr[row][..ni]);
                    if let Some(a) = lay.aspect {
                        g[1] += a * g[0];
                        g[0] = 0.0;
                    }
                    for (gk, free) in g.iter_mut().zip(&lay.free) {
                        if !free {
                            *gk = 0.0;
                        }
                    }
                    let dp = Vector3::new(j.d_point[row][0], j.d_point[row][1], j.d_point[row][2]);
                    let gr = dpdr.transpose() * dp;
                    g[ni] = gr.x;
                    g[ni + 1] = gr.y;
                    g[ni + 2] = gr.z;
                    g[ni + 3] = dp.x;
                    g[ni + 4] = dp.y;
                    g[ni + 5] = dp.z;
                    let idx = |k: usize| if k < ni { k } else { off + (k - ni) };
                    let m = ni + 6;
                    for a in 0..m {
                        if g[a] == 0.0 {
                            continue;
                        }
                        let ia = idx(a);
                        jtr[ia] += g[a] * r[row];
                        for b in a..m {
                            jtj[(ia, idx(b))] += g[a] * g[b];
                        }
                    }
                }
            }
        }
        self.symmetrize_and_pin(jtj, jtr);
        Ok(())
    }

    /// Mirror the upper triangle (blocks were filled upper-triangular in local order) and pin
    /// the fixed intrinsics (unit diagonal, zero gradient).
    fn symmetrize_and_pin(&self, jtj: &mut DMatrix<f64>, jtr: &mut DVector<f64>) {
        let np = jtj.nrows();
        for a in 0..np {
            for b in 0..a {
                let s = jtj[(a, b)] + jtj[(b, a)];
                jtj[(a, b)] = s;
                jtj[(b, a)] = s;
            }
        }
        for k in 0..self.lay.n_intr {
            if !self.lay.free[k] {
                jtj[(k, k)] = 1.0;
                jtr[k] = 0.0;
            }
        }
    }

    /// Levenberg-Marquardt iterations from the given start.
    fn minimise(
        &self,
        mut intr: Vec<f64>,
        mut poses: Vec<Isometry3<f64>>,
        max_iter: usize,
        jtj: &mut DMatrix<f64>,
        jtr: &mut DVector<f64>,
    ) -> Result<Solution, CalibError> {
        let mut cost = self.cost(&intr, &poses)?;
        let mut lambda = 1e-3;
        let mut iters = 0;
        for it in 0..max_iter {
            iters = it + 1;
            self.normal_equations(&intr, &poses, jtj, jtr)?;
            let Some(step) = self.damped_step(jtj, jtr, &intr, &poses, cost, &mut lambda) else {
                break;
            };
            intr = step.intr;
            poses = step.poses;
            cost = step.cost;
            if step.small {
                break;
            }
        }
        Ok(Solution {
            intr,
            poses,
            iterations: iters,
        })
    }

    /// Up to 12 tries of a damped Gauss-Newton step, raising `lambda` tenfold after each one
    /// that fails to lower the cost; lowers it tenfold on the first that does.
    fn damped_step(
        &self,
        jtj: &DMatrix<f64>,
        jtr: &DVector<f64>,
        intr: &[f64],
        poses: &[Isometry3<f64>],
        cost: f64,
        lambda: &mut f64,
    ) -> Option<Step> {
        let np = jtj.nrows();
        for _ in 0..12 {
            let mut a = jtj.clone();
            for k in 0..np {
                a[(k, k)] += *lambda * jtj[(k, k)].max(1e-12);
            }
            let Some(ch) = a.cholesky() else {
                *lambda *= 10.0;
                continue;
            };
            let d = ch.solve(&(-jtr));
            let (ni, np_) = self.apply_step(&d, intr, poses);
            let nc = self.cost(&ni, &np_).unwrap_or(f64::INFINITY);
            if nc < cost {
                let rel = (cost - nc) / cost.max(1e-300);
                *lambda = (*lambda / 10.0).max(1e-15);
                return Some(Step {
                    intr: ni,
                    poses: np_,
                    cost: nc,
                    small: rel < 1e-12 || d.norm() < 1e-12,
                });
            }
            *lambda *= 10.0;
        }
        None
    }

    /// The parameters moved by the increment `d` (intrinsics first, then 6 per view).
    fn apply_step(
        &self,
        d: &DVector<f64>,
        intr: &[f64],
        poses: &[Isometry3<f64>],
    ) -> (Vec<f64>, Vec<Isometry3<f64>>) {
        let mut ni = intr.to_vec();
        for k in 0..self.lay.n_intr {
            ni[k] += d[k];
        }
        if let Some(asp) = self.lay.aspect {
            ni[0] = ni[1] * asp;
        }
        let np_: Vec<Isometry3<f64>> = poses
            .iter()
            .enumerate()
            .map(|(vi, p)| {
                let o = self.lay.n_intr + 6 * vi;
                apply_increment(
                    p,
                    &Vector3::new(d[o], d[o + 1], d[o + 2]),
                    &Vector3::new(d[o + 3], d[o + 4], d[o + 5]),
                )
            })
            .collect();
        (ni, np_)
    }

    /// Standard deviations of the intrinsics from the normal equations at the solution and
    /// the residual variance `total / (2N - n_free)`.
    fn intrinsics_std(&self, jtj: &DMatrix<f64>, total: f64, n_pts: usize) -> Vec<f64> {
        let lay = &self.lay;
        let n_free = lay.free.iter().filter(|&&f| f).count() + 6 * self.views.len();
        let dof = (2 * n_pts).saturating_sub(n_free).max(1);
        let sigma2 = total / dof as f64;
        let mut std = vec![0.0; lay.n_intr];
        if let Some(inv) = jtj.clone().cholesky().map(|c| c.inverse()) {
            for k in 0..lay.n_intr {
                if lay.free[k] {
                    std[k] = (inv[(k, k)] * sigma2).max(0.0).sqrt();
                }
            }
            if let Some(a) = lay.aspect {
                std[0] = std[1] * a;
            }
        }
        std
    }
}
