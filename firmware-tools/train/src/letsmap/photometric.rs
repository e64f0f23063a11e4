//! The geometry pathway's label-free signal: a photometric cost volume per training frame.
//!
//! For a target frame t and its source frames (t-k, t+k, with the recorded ego-motion), every
//! target pixel is back-projected at the centre depth of each depth bin, moved into each source
//! camera and projected there; the source colour found is frame t re-synthesised at that depth
//! (a plane sweep of view synthesis). Monodepth2's photometric error
//! `pe = 0.85 (1 - SSIM) / 2 + 0.15 |I_t - I_s->t|` (SSIM over 3x3 windows) is taken per bin,
//! the minimum over sources (occlusion and out-of-view robustness), and Monodepth2's
//! auto-mask drops pixels that no depth explains better than no motion at all (the identity
//! error of the unwarped sources: static scenes, objects moving with the car, sky).
//! The kept pixels' errors are averaged over each feature pixel's block: a (D, feat_h, feat_w)
//! cost volume and a per-feature-pixel weight (the kept fraction). Nothing here is trained, so
//! the volume is computed once per frame, on half-resolution images (4x4 pixels per feature
//! pixel at stride 8).
//!
//! Conventions: camera frame OpenCV, vehicle frame x forward / y left / z up
//! (`bevrt_calib::extrinsics`); ego-motion from `poses.csv` ([`EgoPose::motion_to`]).

use bevrt_calib::{CameraModel, DepthBins, Extrinsics};
use bevrt_runtime::source::poses::EgoPose;
use candle_core::{Device, Tensor};
use nalgebra::{Isometry3, Point2, Translation3, UnitQuaternion, Vector3};

/// An RGB image as f32 planes in [0, 1] (channel-major), at some resolution.
#[derive(Debug, Clone)]
pub struct Planes {
    pub w: usize,
    pub h: usize,
    pub data: Vec<f32>,
}

impl Planes {
    /// RGB8 interleaved `w` x `h` to planes at half resolution (2x2 box mean).
    pub fn half_of_rgb8(rgb: &[u8], w: usize, h: usize) -> Planes {
        let (hw, hh) = (w / 2, h / 2);
        let mut data = vec![0f32; 3 * hw * hh];
        for y in 0..hh {
            for x in 0..hw {
                for c in 0..3 {
                    let at = |yy: usize, xx: usize| rgb[(yy * w + xx) * 3 + c] as f32;
                    let s = at(2 * y, 2 * x)
                        + at(2 * y, 2 * x + 1)
                        + at(2 * y + 1, 2 * x)
                        + at(2 * y + 1, 2 * x + 1);
                    data[(c * hh + y) * hw + x] = s / (4.0 * 255.0);
                }
            }
        }
        Planes { w: hw, h: hh, data }
    }

    /// Bilinear sample of channel `c` at (x, y), pixel centres at integers (inside the image).
    pub fn sample(&self, c: usize, x: f32, y: f32) -> f32 {
        let x = x.clamp(0.0, (self.w - 1) as f32);
        let y = y.clamp(0.0, (self.h - 1) as f32);
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(self.w - 1), (y0 + 1).min(self.h - 1));
        let (ax, ay) = (x - x0 as f32, y - y0 as f32);
        let p = &self.data[c * self.w * self.h..(c + 1) * self.w * self.h];
        let top = p[y0 * self.w + x0] * (1.0 - ax) + p[y0 * self.w + x1] * ax;
        let bot = p[y1 * self.w + x0] * (1.0 - ax) + p[y1 * self.w + x1] * ax;
        top * (1.0 - ay) + bot * ay
    }
}

/// The camera of one recording at the cost volume's resolution, with each pixel's ray
/// (camera frame, z = 1) computed once.
pub struct RayCamera {
    pub camera: CameraModel,
    pub extrinsics: Extrinsics,
    rays: Vec<Option<Vector3<f64>>>,
}

impl RayCamera {
    /// `camera` rescaled to `w` x `h`.
    pub fn new(camera: &CameraModel, extrinsics: &Extrinsics, w: usize, h: usize) -> RayCamera {
        let camera = camera.scaled(w as u32, h as u32);
        let rays = (0..w * h)
            .map(|i| {
                let p = Point2::new((i % w) as f64, (i / w) as f64);
                camera.unproject(p).filter(|r| r.z > 1e-6).map(|r| r / r.z)
            })
            .collect();
        RayCamera {
            camera,
            extrinsics: *extrinsics,
            rays,
        }
    }

    /// Target camera frame to the camera frame of a source whose vehicle pose is `source`
    /// (target pose `target`).
    pub fn target_to_source(&self, target: &EgoPose, source: &EgoPose) -> Isometry3<f64> {
        let (fwd, left, yaw) = target.motion_to(source);
        // a point p in the target's vehicle frame is R(-yaw) (p - (fwd, left, 0)) in the source's
        let to_source_vehicle = Isometry3::from_parts(
            Translation3::identity(),
            UnitQuaternion::from_axis_angle(&Vector3::z_axis(), -yaw),
        ) * Isometry3::translation(-fwd, -left, 0.0);
        self.extrinsics.vehicle_to_cam() * to_source_vehicle * self.extrinsics.cam_to_vehicle
    }
}

/// Monodepth2's error per pixel between two images of one size: the one definition training
/// also uses ([`super::photo_error::photometric_error`]).
fn photometric_error(target: &Planes, other: &Planes, out: &mut [f32]) -> anyhow::Result<()> {
    let shape = (1, 3, target.h, target.w);
    let t = Tensor::from_slice(&target.data, shape, &Device::Cpu)?;
    let o = Tensor::from_slice(&other.data, shape, &Device::Cpu)?;
    let pe = super::photo_error::photometric_error(&t, &o)?;
    out.copy_from_slice(&pe.flatten_all()?.to_vec1::<f32>()?);
    Ok(())
}

/// One source frame for view synthesis: its image and where its camera is.
pub struct Source<'a> {
    pub image: &'a Planes,
    /// Target camera frame to source camera frame.
    pub target_to_source: Isometry3<f64>,
}

/// A frame's cost volume at feature resolution (see the module docs).
#[derive(Debug, Clone)]
pub struct CostVolume {
    /// (D, feat_h, feat_w): mean photometric error of the kept pixels per bin.
    pub cost: Vec<f32>,
    /// (feat_h, feat_w): kept fraction of the block's pixels (0 = no signal).
    pub weight: Vec<f32>,
}

/// `target` re-synthesised from `src` at depth `d` for every pixel: the warped image and
/// which pixels landed inside the source.
fn warp_at_depth(cam: &RayCamera, src: &Source, d: f64, warped: &mut Planes, valid: &mut [bool]) {
    let (w, h) = (warped.w, warped.h);
    let n = w * h;
    for (i, ok) in valid.iter_mut().enumerate().take(n) {
        *ok = false;
        let Some(r) = cam.rays[i] else { continue };
        let p = src.target_to_source.transform_point(&(r * d).into());
        if p.z < 0.1 {
            continue;
        }
        let Some(q) = cam.camera.project(p.coords) else {
            continue;
        };
        if !cam.camera.in_image(&q) {
            continue;
        }
        *ok = true;
        for c in 0..3 {
            warped.data[c * n + i] = src.image.sample(c, q.x as f32, q.y as f32);
        }
    }
}

/// The source colour each target pixel finds at its own depth (`depth`, one per pixel, metres
/// of camera depth), and that colour's derivative with respect to the depth: the bilinear
/// sampler's gradient, for training the depth through view synthesis (Monodepth2's warp, with
/// the projection's Jacobian carried by hand). `valid` is 1 where the pixel lands inside the
/// source image in front of its camera. All three are (3|1, h, w) planes of `target`'s size.
pub fn warp_with_gradient(
    cam: &RayCamera,
    src: &Source,
    depth: &[f32],
    warped: &mut [f32],
    grad: &mut [f32],
    valid: &mut [f32],
) {
    let img = src.image;
    let (w, h) = (img.w, img.h);
    let n = w * h;
    let rot = src.target_to_source.rotation;
    for i in 0..n {
        valid[i] = 0.0;
        for c in 0..3 {
            warped[c * n + i] = 0.0;
            grad[c * n + i] = 0.0;
        }
        let Some(r) = cam.rays[i] else { continue };
        let p = src
            .target_to_source
            .transform_point(&(r * depth[i] as f64).into());
        if p.z < 0.1 {
            continue;
        }
        let Some((q, jac)) = cam.camera.project_jac(p.coords) else {
            continue;
        };
        if !cam.camera.in_image(&q) {
            continue;
        }
        valid[i] = 1.0;
        // d(u, v)/d depth = J · R · ray
        let dp = rot * r;
        let du = jac.d_point[0][0] * dp.x + jac.d_point[0][1] * dp.y + jac.d_point[0][2] * dp.z;
        let dv = jac.d_point[1][0] * dp.x + jac.d_point[1][1] * dp.y + jac.d_point[1][2] * dp.z;
        let x = (q.x as f32).clamp(0.0, (w - 1) as f32);
        let y = (q.y as f32).clamp(0.0, (h - 1) as f32);
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (ax, ay) = (x - x0 as f32, y - y0 as f32);
        for c in 0..3 {
            let pl = &img.data[c * n..(c + 1) * n];
            let (i00, i10) = (pl[y0 * w + x0], pl[y0 * w + x1]);
            let (i01, i11) = (pl[y1 * w + x0], pl[y1 * w + x1]);
            warped[c * n + i] =
                (1.0 - ay) * ((1.0 - ax) * i00 + ax * i10) + ay * ((1.0 - ax) * i01 + ax * i11);
            let dcdu = (1.0 - ay) * (i10 - i00) + ay * (i11 - i01);
            let dcdv = (1.0 - ax) * (i01 - i00) + ax * (i11 - i10);
            grad[c * n + i] = dcdu * du as f32 + dcdv * dv as f32;
        }
    }
}

/// The cost volume of `target` against `sources` over `bins`, aggregated to `feat_w` x
/// `feat_h` blocks (the target size must be a multiple of them).
pub fn cost_volume(
    cam: &RayCamera,
    target: &Planes,
    sources: &[Source],
    bins: &DepthBins,
    feat_w: usize,
    feat_h: usize,
    min_contrast: f32,
) -> anyhow::Result<CostVolume> {
    let (w, h) = (target.w, target.h);
    let n = w * h;
    let d = bins.bins;
    // per pixel: min over sources of the error at each bin (NaN: no source saw it)
    let mut per_bin = vec![f32::NAN; d * n];
    let mut warped = Planes {
        w,
        h,
        data: vec![0f32; 3 * n],
    };
    let mut valid = vec![false; n];
    let mut pe = vec![0f32; n];
    for src in sources {
        for k in 0..d {
            warp_at_depth(cam, src, bins.centre(k) as f64, &mut warped, &mut valid);
            photometric_error(target, &warped, &mut pe)?;
            let row = &mut per_bin[k * n..(k + 1) * n];
            for i in 0..n {
                // NaN (no source yet) or larger: take this source's error
                if valid[i] && row[i].partial_cmp(&pe[i]) != Some(std::cmp::Ordering::Less) {
                    row[i] = pe[i];
                }
            }
        }
    }
    // identity error: the unwarped sources (Monodepth2's auto-mask)
    let mut identity = vec![f32::INFINITY; n];
    for src in sources {
        photometric_error(target, src.image, &mut pe)?;
        for (a, b) in identity.iter_mut().zip(&pe) {
            *a = a.min(*b);
        }
    }
    Ok(aggregate_blocks(
        &per_bin,
        &identity,
        min_contrast,
        d,
        w,
        h,
        feat_w,
        feat_h,
    ))
}

/// Kept pixels (every bin seen by some source, some bin beats the identity error, and the
/// bins' errors differ by at least `min_contrast`) averaged per feature-pixel block.
#[allow(clippy::too_many_arguments)]
fn aggregate_blocks(
    per_bin: &[f32],
    identity: &[f32],
    min_contrast: f32,
    d: usize,
    w: usize,
    h: usize,
    feat_w: usize,
    feat_h: usize,
) -> CostVolume {
    let n = w * h;
    let plane = feat_w * feat_h;
    let (bw, bh) = (w / feat_w, h / feat_h);
    let mut cost = vec![0f32; d * plane];
    let mut weight = vec![0f32; plane];
    for i in 0..n {
        // A bin no source saw would bias the choice towards the bins that stay in view (the
        // far ones, for pixels at the border of a forward source): such pixels are dropped.
        let (mut best, mut worst) = (f32::INFINITY, f32::NEG_INFINITY);
        let mut seen_all = true;
        for k in 0..d {
            let v = per_bin[k * n + i];
            seen_all &= v.is_finite();
            best = best.min(v);
            worst = worst.max(v);
        }
        let beats_identity = best < identity[i];
        if !seen_all || !beats_identity || worst - best < min_contrast {
            continue;
        }
        let (x, y) = (i % w, i / w);
        let f = (y / bh).min(feat_h - 1) * feat_w + (x / bw).min(feat_w - 1);
        weight[f] += 1.0;
        for k in 0..d {
            cost[k * plane + f] += per_bin[k * n + i];
        }
    }
    for f in 0..plane {
        if weight[f] > 0.0 {
            for k in 0..d {
                cost[k * plane + f] /= weight[f];
            }
            weight[f] /= (bw * bh) as f32;
        }
    }
    CostVolume { cost, weight }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bevrt_calib::DepthSpacing;

    fn origin_pose() -> EgoPose {
        EgoPose {
            seq: 0,
            timestamp_ns: 0,
            x: 0.0,
            y: 0.0,
            yaw: 0.0,
        }
    }

    /// A textured vertical wall 12 m ahead seen by a default-like camera, rendered from the
    /// target pose and from 2 m behind and 2 m ahead of it: the cost volume must be lowest at
    /// the wall's bin; with the forward source alone, border pixels (out of its view at the
    /// wall's depth) are dropped instead of guessed.
    #[test]
    fn a_textured_wall_is_found_at_its_depth() {
        let cam_full =
            CameraModel::pinhole(192, 64, 96.0, 96.0, 95.5, 31.5, [0.0; 5]).expect("camera");
        let ext = Extrinsics::from_angles(0.0, 0.0, 1.5, 0.0, 0.0, 0.0);
        let (w, h) = (96usize, 32usize);
        let rc = RayCamera::new(&cam_full, &ext, w, h);
        let wall = 12.0f64;
        // render a wall at vehicle x = wall (+ ego shift) with a texture in (y, z)
        let render = |ego_x: f64| -> Planes {
            let n = w * h;
            let mut data = vec![0f32; 3 * n];
            let c2v = ext.cam_to_vehicle;
            for i in 0..n {
                let r = rc.rays[i].unwrap();
                let dir = c2v.rotation * r;
                let o = c2v.translation.vector;
                let t = (wall - ego_x - o.x) / dir.x;
                let p = o + dir * t;
                let v = 0.5
                    + 0.25 * ((p.y * 3.1).sin() * (p.z * 2.3).cos()) as f32
                    + 0.2 * ((p.y * 7.7 + p.z * 5.3).sin()) as f32;
                for c in 0..3 {
                    data[c * n + i] = v * (0.8 + 0.1 * c as f32);
                }
            }
            Planes { w, h, data }
        };
        let target = render(0.0);
        let behind = render(-2.0);
        let ahead = render(2.0);
        let p0 = origin_pose();
        let pose = |x: f64| EgoPose { x, ..p0 };
        let bins = DepthBins {
            min: 3.0,
            max: 48.0,
            bins: 32,
            spacing: DepthSpacing::Log,
        };
        let sources = [
            Source {
                image: &behind,
                target_to_source: rc.target_to_source(&p0, &pose(-2.0)),
            },
            Source {
                image: &ahead,
                target_to_source: rc.target_to_source(&p0, &pose(2.0)),
            },
        ];
        let plane = 24 * 8;
        let forward_only = cost_volume(&rc, &target, &sources[1..], &bins, 24, 8, 0.0).unwrap();
        let border = (0..plane).filter(|&f| f % 24 == 0 || f / 24 == 0);
        assert!(border.into_iter().all(|f| forward_only.weight[f] == 0.0));
        let cv = cost_volume(&rc, &target, &sources, &bins, 24, 8, 0.0).unwrap();
        let want = bins.bin_of(wall); // camera depth of a wall straight ahead = its distance
        let mut hits = 0;
        let mut used = 0;
        for f in 0..plane {
            if cv.weight[f] == 0.0 {
                continue;
            }
            used += 1;
            let best = (0..32)
                .min_by(|&a, &b| cv.cost[a * plane + f].total_cmp(&cv.cost[b * plane + f]))
                .unwrap();
            if (best as i64 - want as i64).abs() <= 1 {
                hits += 1;
            }
        }
        assert!(
            used > plane * 3 / 4,
            "only {used} of {plane} feature pixels kept"
        );
        assert!(
            hits * 10 >= used * 9,
            "{hits} of {used} feature pixels put the wall within one bin of bin {want}"
        );
    }

    /// The depth derivative of the warped colour matches a finite difference of the warp.
    #[test]
    fn warp_gradient_matches_finite_differences() {
        let cam_full = CameraModel::pinhole(
            192,
            64,
            96.0,
            96.0,
            95.5,
            31.5,
            [-0.05, 0.01, 0.0, 0.0, 0.0],
        )
        .expect("camera");
        let ext = Extrinsics::from_angles(0.0, 0.0, 1.5, 4.0, 0.0, 0.0);
        let (w, h) = (96usize, 32usize);
        let rc = RayCamera::new(&cam_full, &ext, w, h);
        let n = w * h;
        // a smooth source image
        let data: Vec<f32> = (0..3 * n)
            .map(|j| {
                let (c, i) = (j / n, j % n);
                let (x, y) = ((i % w) as f32, (i / w) as f32);
                0.5 + 0.3 * (x * 0.21 + c as f32).sin() * (y * 0.17).cos()
            })
            .collect();
        let img = Planes { w, h, data };
        let p0 = origin_pose();
        let p1 = EgoPose {
            x: -1.0,
            y: 0.2,
            yaw: 0.02,
            ..p0
        };
        let src = Source {
            image: &img,
            target_to_source: rc.target_to_source(&p0, &p1),
        };
        let depth: Vec<f32> = (0..n).map(|i| 6.0 + (i % 37) as f32 * 0.3).collect();
        let (mut wa, mut ga, mut va) = (vec![0f32; 3 * n], vec![0f32; 3 * n], vec![0f32; n]);
        warp_with_gradient(&rc, &src, &depth, &mut wa, &mut ga, &mut va);
        let eps = 1e-3f32;
        let plus: Vec<f32> = depth.iter().map(|d| d + eps).collect();
        let minus: Vec<f32> = depth.iter().map(|d| d - eps).collect();
        let (mut wp, mut wm) = (vec![0f32; 3 * n], vec![0f32; 3 * n]);
        let (mut g2, mut v2) = (vec![0f32; 3 * n], vec![0f32; n]);
        warp_with_gradient(&rc, &src, &plus, &mut wp, &mut g2, &mut v2);
        warp_with_gradient(&rc, &src, &minus, &mut wm, &mut g2, &mut v2);
        let (mut checked, mut bad) = (0, 0);
        for j in 0..3 * n {
            if va[j % n] == 0.0 {
                continue;
            }
            let fd = (wp[j] - wm[j]) / (2.0 * eps);
            checked += 1;
            // bilinear kinks at pixel boundaries make a few finite differences jump
            if (fd - ga[j]).abs() > 1e-2 + 0.05 * fd.abs() {
                bad += 1;
            }
        }
        assert!(checked > n, "only {checked} valid samples");
        assert!(bad * 50 < checked, "{bad} of {checked} gradients off");
    }
}
