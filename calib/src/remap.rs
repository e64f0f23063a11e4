//! Remap tables: undistortion / rectification and inverse perspective mapping (IPM).

use nalgebra::{Point2, Vector3};

use crate::bev::BevGrid;
use crate::camera::CameraModel;
use crate::extrinsics::Extrinsics;
use crate::imgproc::GrayImage;

/// For each output pixel (row-major, `width` x `height`), the source pixel to sample
/// (x, y in source pixel coordinates, pixel centres at integers); NaN = no source.
#[derive(Debug, Clone)]
pub struct RemapTable {
    pub width: usize,
    pub height: usize,
    pub map: Vec<[f32; 2]>,
}

impl RemapTable {
    /// Bilinear remap of a gray image; unmapped pixels get `fill`.
    pub fn apply_gray(&self, src: &GrayImage, fill: f32) -> GrayImage {
        let mut out = GrayImage::new(self.width, self.height);
        for (o, m) in out.data.iter_mut().zip(&self.map) {
            *o = if m[0].is_nan() || !inside(m, src.width, src.height) {
                fill
            } else {
                src.bilinear(m[0] as f64, m[1] as f64)
            };
        }
        out
    }

    /// Bilinear remap of an interleaved 8-bit image with `ch` channels.
    pub fn apply_u8(&self, src: &[u8], sw: usize, sh: usize, ch: usize) -> Vec<u8> {
        let mut out = vec![0u8; self.width * self.height * ch];
        for (k, m) in self.map.iter().enumerate() {
            if m[0].is_nan() || !inside(m, sw, sh) {
                continue;
            }
            let x = (m[0].max(0.0)).min((sw - 1) as f32);
            let y = (m[1].max(0.0)).min((sh - 1) as f32);
            let x0 = (x as usize).min(sw.saturating_sub(2));
            let y0 = (y as usize).min(sh.saturating_sub(2));
            let fx = x - x0 as f32;
            let fy = y - y0 as f32;
            for c in 0..ch {
                let at = |xx: usize, yy: usize| src[(yy * sw + xx) * ch + c] as f32;
                let v = (at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx) * (1.0 - fy)
                    + (at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx) * fy;
                out[k * ch + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
        out
    }
}

fn inside(m: &[f32; 2], w: usize, h: usize) -> bool {
    m[0] >= -0.5 && m[1] >= -0.5 && m[0] < w as f32 - 0.5 && m[1] < h as f32 - 0.5
}

/// Undistortion / rectification map: for each pixel of the ideal `out` camera (its
/// distortion is ignored; rotation `rect` = camera-from-output rotation, identity for plain
/// undistortion), the pixel of `cam` that sees the same ray.
pub fn undistort_map(
    cam: &CameraModel,
    out: &CameraModel,
    rect: Option<nalgebra::Rotation3<f64>>,
) -> RemapTable {
    let (w, h) = (out.width() as usize, out.height() as usize);
    let mut map = Vec::with_capacity(w * h);
    for v in 0..h {
        for u in 0..w {
            let x = (u as f64 - out.cx()) / out.fx();
            let y = (v as f64 - out.cy()) / out.fy();
            let mut ray = Vector3::new(x, y, 1.0);
            if let Some(r) = rect {
                ray = r * ray;
            }
            map.push(match cam.project(ray) {
                Some(p) => [p.x as f32, p.y as f32],
                None => [f32::NAN, f32::NAN],
            });
        }
    }
    RemapTable {
        width: w,
        height: h,
        map,
    }
}

/// The pinhole camera (no distortion) used by default as undistortion target: same size and K.
pub fn ideal_camera(cam: &CameraModel) -> CameraModel {
    CameraModel::pinhole(
        cam.width(),
        cam.height(),
        cam.fx(),
        cam.fy(),
        cam.cx(),
        cam.cy(),
        [0.0; 5],
    )
    .expect("valid intrinsics stay valid")
}

/// Inverse perspective mapping: for each cell of the BEV grid at ground height `z` (row 0 =
/// farthest x, column 0 = leftmost y, see [`BevGrid`]), the image pixel that sees it.
pub fn ipm_map(grid: &BevGrid, z: f64, cam: &CameraModel, ext: &Extrinsics) -> RemapTable {
    let (gw, gh) = (grid.width(), grid.height());
    let v2c = ext.vehicle_to_cam();
    let mut map = Vec::with_capacity(gw * gh);
    for r in 0..gh {
        for c in 0..gw {
            let (x, y) = grid.cell_center(r, c);
            let pc = v2c * nalgebra::Point3::new(x, y, z);
            let p: Option<Point2<f64>> = cam.project(pc.coords);
            map.push(match p {
                Some(p) if cam.in_image(&p) => [p.x as f32, p.y as f32],
                _ => [f32::NAN, f32::NAN],
            });
        }
    }
    RemapTable {
        width: gw,
        height: gh,
        map,
    }
}
