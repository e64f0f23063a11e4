//! Planar geometry helpers: homographies, pose from homography, pose refinement.

use nalgebra::{
    Isometry3, Matrix3, Matrix6, Point2, Point3, Rotation3, SymmetricEigen, Translation3,
    UnitQuaternion, Vector3, Vector6,
};

use crate::camera::CameraModel;

fn normalizer(p: &[Point2<f64>]) -> Matrix3<f64> {
    let n = p.len() as f64;
    let (mut mx, mut my) = (0.0, 0.0);
    for q in p {
        mx += q.x;
        my += q.y;
    }
    mx /= n;
    my /= n;
    let mut d = 0.0;
    for q in p {
        d += ((q.x - mx).powi(2) + (q.y - my).powi(2)).sqrt();
    }
    d /= n;
    let s = if d > 1e-15 {
        std::f64::consts::SQRT_2 / d
    } else {
        1.0
    };
    Matrix3::new(s, 0.0, -s * mx, 0.0, s, -s * my, 0.0, 0.0, 1.0)
}

/// Homography H with dst ~ H src (normalized DLT). Needs >= 4 points.
pub fn homography_dlt(src: &[Point2<f64>], dst: &[Point2<f64>]) -> Option<Matrix3<f64>> {
    if src.len() < 4 || src.len() != dst.len() {
        return None;
    }
    let ts = normalizer(src);
    let td = normalizer(dst);
    let mut ata = nalgebra::SMatrix::<f64, 9, 9>::zeros();
    for (s, d) in src.iter().zip(dst) {
        let a = ts * s.to_homogeneous();
        let b = td * d.to_homogeneous();
        let (x, y) = (a.x, a.y);
        let (u, v) = (b.x, b.y);
        let r1 = [-x, -y, -1.0, 0.0, 0.0, 0.0, u * x, u * y, u];
        let r2 = [0.0, 0.0, 0.0, -x, -y, -1.0, v * x, v * y, v];
        for i in 0..9 {
            for j in i..9 {
                ata[(i, j)] += r1[i] * r1[j] + r2[i] * r2[j];
            }
        }
    }
    for i in 0..9 {
        for j in 0..i {
            ata[(i, j)] = ata[(j, i)];
        }
    }
    let eig = SymmetricEigen::new(ata);
    let (mut imin, mut vmin) = (0, f64::MAX);
    for i in 0..9 {
        if eig.eigenvalues[i] < vmin {
            vmin = eig.eigenvalues[i];
            imin = i;
        }
    }
    let h = eig.eigenvectors.column(imin);
    let hn = Matrix3::new(h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]);
    let hh = td.try_inverse()? * hn * ts;
    let s = hh[(2, 2)];
    if s.abs() < 1e-300 {
        return None;
    }
    let hh = hh / s;
    if hh.iter().all(|x| x.is_finite()) {
        Some(hh)
    } else {
        None
    }
}

/// Nearest rotation matrix (SVD projection).
pub fn orthonormalize(m: &Matrix3<f64>) -> Rotation3<f64> {
    let svd = m.svd(true, true);
    let (u, vt) = (svd.u.unwrap(), svd.v_t.unwrap());
    let mut r = u * vt;
    if r.determinant() < 0.0 {
        let mut u2 = u;
        u2.column_mut(2).neg_mut();
        r = u2 * vt;
    }
    Rotation3::from_matrix_unchecked(r)
}

/// Pose (plane -> camera) from a homography mapping plane (X, Y) to normalized image coordinates.
/// The sign is chosen so that the plane point `centroid` lies in front of the camera.
pub fn pose_from_homography(h: &Matrix3<f64>, centroid: Point2<f64>) -> Isometry3<f64> {
    let h1 = h.column(0).into_owned();
    let h2 = h.column(1).into_owned();
    let h3 = h.column(2).into_owned();
    let mut lam = 2.0 / (h1.norm() + h2.norm());
    if (h1 * centroid.x + h2 * centroid.y + h3).z * lam < 0.0 {
        lam = -lam;
    }
    let r1 = h1 * lam;
    let r2 = h2 * lam;
    let r3 = r1.cross(&r2);
    let m = Matrix3::from_columns(&[r1, r2, r3]);
    let r = orthonormalize(&m);
    Isometry3::from_parts(
        Translation3::from(h3 * lam),
        UnitQuaternion::from_rotation_matrix(&r),
    )
}

pub fn centroid(p: &[Point2<f64>]) -> Point2<f64> {
    let n = p.len().max(1) as f64;
    Point2::new(
        p.iter().map(|q| q.x).sum::<f64>() / n,
        p.iter().map(|q| q.y).sum::<f64>() / n,
    )
}

pub fn skew(v: &Vector3<f64>) -> Matrix3<f64> {
    Matrix3::new(0.0, -v.z, v.y, v.z, 0.0, -v.x, -v.y, v.x, 0.0)
}

/// Applies a left-multiplied increment (rotation vector, translation) to a pose.
pub fn apply_increment(
    pose: &Isometry3<f64>,
    dr: &Vector3<f64>,
    dt: &Vector3<f64>,
) -> Isometry3<f64> {
    let rot = UnitQuaternion::from_scaled_axis(*dr) * pose.rotation;
    // P' = exp(dr) R X + t + dt
    Isometry3::from_parts(Translation3::from(pose.translation.vector + dt), rot)
}

/// Levenberg-Marquardt refinement of a pose (object -> camera) with the intrinsics fixed.
/// Returns the pose and the RMS reprojection error.
pub fn refine_pose(
    cam: &CameraModel,
    obj: &[Point3<f64>],
    img: &[Point2<f64>],
    pose: Isometry3<f64>,
    iters: usize,
) -> (Isometry3<f64>, f64) {
    let cost = |p: &Isometry3<f64>| -> f64 {
        let mut s = 0.0;
        for (o, i) in obj.iter().zip(img) {
            match cam.project_jac((p * o).coords) {
                Some((q, _)) => s += (q - i).norm_squared(),
                None => s += 1e6,
            }
        }
        s
    };
    let mut pose = pose;
    let mut c = cost(&pose);
    let mut lambda = 1e-3;
    for _ in 0..iters {
        let mut jtj = Matrix6::<f64>::zeros();
        let mut jtr = Vector6::<f64>::zeros();
        for (o, i) in obj.iter().zip(img) {
            let pc = pose * o;
            let Some((q, j)) = cam.project_jac(pc.coords) else {
                continue;
            };
            let r = q - i;
            let rx = pose.rotation * o.coords;
            let dp_dr = -skew(&rx);
            for row in 0..2 {
                let dp = Vector3::new(j.d_point[row][0], j.d_point[row][1], j.d_point[row][2]);
                let g_r = dp_dr.transpose() * dp;
                let jr = Vector6::new(g_r.x, g_r.y, g_r.z, dp.x, dp.y, dp.z);
                jtj += jr * jr.transpose();
                jtr += jr * r[row];
            }
        }
        let mut improved = false;
        for _ in 0..10 {
            let mut a = jtj;
            for k in 0..6 {
                a[(k, k)] += lambda * (jtj[(k, k)] + 1e-12);
            }
            let Some(ch) = a.cholesky() else {
                lambda *= 10.0;
                continue;
            };
            let d = ch.solve(&(-jtr));
            let np = apply_increment(
                &pose,
                &Vector3::new(d[0], d[1], d[2]),
                &Vector3::new(d[3], d[4], d[5]),
            );
            let nc = cost(&np);
            if nc < c {
                let rel = (c - nc) / c.max(1e-30);
                pose = np;
                c = nc;
                lambda = (lambda * 0.3).max(1e-12);
                improved = rel > 1e-12;
                break;
            }
            lambda *= 10.0;
        }
        if !improved {
            break;
        }
    }
    (pose, (c / obj.len().max(1) as f64).sqrt())
}

/// Pose of a planar target (points with z = 0) seen by a calibrated camera: homography on
/// undistorted normalized coordinates, then LM refinement. `None` if points cannot be
/// undistorted or the homography is degenerate.
pub fn planar_pose(
    cam: &CameraModel,
    obj: &[Point3<f64>],
    img: &[Point2<f64>],
) -> Option<(Isometry3<f64>, f64)> {
    let src: Vec<Point2<f64>> = obj.iter().map(|p| Point2::new(p.x, p.y)).collect();
    let dst: Vec<Point2<f64>> = img
        .iter()
        .map(|p| cam.undistort_normalized(*p))
        .collect::<Option<_>>()?;
    let h = homography_dlt(&src, &dst)?;
    let pose = pose_from_homography(&h, centroid(&src));
    Some(refine_pose(cam, obj, img, pose, 50))
}
