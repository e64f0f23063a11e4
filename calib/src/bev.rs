//! BEV geometry: the grid and the sampling table of the view transform.
//!
//! # Layout contract (CPU view transform and CUDA kernel)
//!
//! * BEV grid: `grid_h` rows along vehicle x, `grid_w` columns along vehicle y.
//!   **Row 0 = farthest x** (`x_max`), **column 0 = leftmost y** (`y_max`; vehicle y points
//!   left): an image of the ground seen from above with forward = up.
//!   Cell (row, col) centre: `x = x_max - (row + 0.5) * cell`, `y = y_max - (col + 0.5) * cell`.
//!   `grid_h = round((x_max - x_min) / cell)`, `grid_w = round((y_max - y_min) / cell)`.
//! * Table entry index: `e = (level * grid_h + row) * grid_w + col` (level = index into
//!   `z_levels`, heights in metres above the ground, vehicle z).
//! * `taps[e]` is a `#[repr(C)]` [`SampleTap`] of 32 bytes: `idx: [u32; 4]` then `w: [f32; 4]`.
//!   Indices are `fy * feat_w + fx` into one HxW feature plane (add `c * feat_h * feat_w` for
//!   channel c); taps order: (x0,y0), (x0+1,y0), (x0,y0+1), (x0+1,y0+1), clamped to the map
//!   (border replicate). Weights are bilinear and sum to 1 for a valid entry.
//! * `flags[e]` (u8): [`FLAG_VALID`] = 0, [`FLAG_BEHIND`] = 1 (behind the camera or outside the
//!   lens model's range), [`FLAG_OUTSIDE`] = 2 (projects outside the image). Invalid entries
//!   have indices 0 and weights 0, so a kernel may gather unconditionally.
//! * Feature-map coordinates at stride s: `f = (pixel + 0.5) / s - 0.5` (centres aligned, as
//!   `align_corners = false` resizing). The camera is rescaled to `feat_w*s x feat_h*s` if its
//!   calibrated resolution differs (the network input is the resized camera image).
//! * View transform output: (C * Z, grid_h, grid_w) f32, channel `c * Z + level`.

use nalgebra::Point3;
use serde::{Deserialize, Serialize};

use crate::camera::CameraModel;
use crate::error::CalibError;
use crate::extrinsics::Extrinsics;

pub const FLAG_VALID: u8 = 0;
pub const FLAG_BEHIND: u8 = 1;
pub const FLAG_OUTSIDE: u8 = 2;

/// A BEV grid in the vehicle frame (metres).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BevGrid {
    pub x_min: f32,
    pub x_max: f32,
    pub y_min: f32,
    pub y_max: f32,
    pub cell: f32,
    /// Heights (vehicle z, metres) sampled per cell.
    pub z_levels: Vec<f32>,
}

impl BevGrid {
    pub fn validate(&self) -> Result<(), CalibError> {
        if !(self.cell > 0.0 && self.cell.is_finite()) {
            return Err(CalibError::invalid("cell", "must be positive"));
        }
        if self.x_max.partial_cmp(&self.x_min) != Some(std::cmp::Ordering::Greater) {
            return Err(CalibError::invalid("x_max", "must exceed x_min"));
        }
        if self.y_max.partial_cmp(&self.y_min) != Some(std::cmp::Ordering::Greater) {
            return Err(CalibError::invalid("y_max", "must exceed y_min"));
        }
        if self.z_levels.is_empty() {
            return Err(CalibError::invalid("z_levels", "at least one level"));
        }
        if self.width() * self.height() > 100_000_000 {
            return Err(CalibError::invalid("cell", "grid too large"));
        }
        Ok(())
    }
    /// Number of columns (along y).
    pub fn width(&self) -> usize {
        (((self.y_max - self.y_min) / self.cell).round() as usize).max(1)
    }
    /// Number of rows (along x).
    pub fn height(&self) -> usize {
        (((self.x_max - self.x_min) / self.cell).round() as usize).max(1)
    }
    pub fn levels(&self) -> usize {
        self.z_levels.len()
    }
    /// Vehicle (x, y) of a cell centre.
    pub fn cell_center(&self, row: usize, col: usize) -> (f64, f64) {
        let c = self.cell as f64;
        (
            self.x_max as f64 - (row as f64 + 0.5) * c,
            self.y_max as f64 - (col as f64 + 0.5) * c,
        )
    }
}

/// One table entry: 4 taps into an HxW feature plane and their bilinear weights (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SampleTap {
    pub idx: [u32; 4],
    pub w: [f32; 4],
}

const _: () =
    assert!(std::mem::size_of::<SampleTap>() == 32 && std::mem::align_of::<SampleTap>() == 4);

/// Sampling table of the view transform; see the module docs for the layout contract.
#[derive(Debug, Clone)]
pub struct SamplingTable {
    pub grid_w: usize,
    pub grid_h: usize,
    pub levels: usize,
    pub feat_w: usize,
    pub feat_h: usize,
    pub stride: usize,
    pub taps: Vec<SampleTap>,
    pub flags: Vec<u8>,
}

impl SamplingTable {
    /// Builds the table (one core; ~10 ms for 400 x 400 x 4). Panics only if the grid is
    /// invalid (see [`BevGrid::validate`]) — use [`SamplingTable::try_build`] for untrusted grids.
    pub fn build(
        grid: &BevGrid,
        camera: &CameraModel,
        ext: &Extrinsics,
        feat_w: usize,
        feat_h: usize,
        stride: usize,
    ) -> SamplingTable {
        Self::try_build(grid, camera, ext, feat_w, feat_h, stride)
            .expect("invalid BEV grid or feature size")
    }

    pub fn try_build(
        grid: &BevGrid,
        camera: &CameraModel,
        ext: &Extrinsics,
        feat_w: usize,
        feat_h: usize,
        stride: usize,
    ) -> Result<SamplingTable, CalibError> {
        grid.validate()?;
        if feat_w == 0 || feat_h == 0 || stride == 0 {
            return Err(CalibError::invalid(
                "feat_w/feat_h/stride",
                "must be positive",
            ));
        }
        let mut t = SamplingTable {
            grid_w: grid.width(),
            grid_h: grid.height(),
            levels: grid.levels(),
            feat_w,
            feat_h,
            stride,
            taps: Vec::new(),
            flags: Vec::new(),
        };
        t.rebuild(grid, camera, ext)?;
        Ok(t)
    }

    /// Recomputes the table in place for a new calibration (no reallocation when the grid and
    /// feature size are unchanged).
    pub fn rebuild(
        &mut self,
        grid: &BevGrid,
        camera: &CameraModel,
        ext: &Extrinsics,
    ) -> Result<(), CalibError> {
        grid.validate()?;
        self.grid_w = grid.width();
        self.grid_h = grid.height();
        self.levels = grid.levels();
        let n = self.grid_w * self.grid_h * self.levels;
        self.taps.resize(n, SampleTap::default());
        self.flags.resize(n, 0);
        let iw = (self.feat_w * self.stride) as u32;
        let ih = (self.feat_h * self.stride) as u32;
        let cam = if camera.width() != iw || camera.height() != ih {
            camera.scaled(iw, ih)
        } else {
            camera.clone()
        };
        let v2c = ext.vehicle_to_cam();
        let rot = v2c.rotation.to_rotation_matrix();
        let r = rot.matrix();
        let tr = v2c.translation.vector;
        let s = self.stride as f64;
        let (fw, fh) = (self.feat_w as f64, self.feat_h as f64);
        let (gw, gh) = (self.grid_w, self.grid_h);
        for (l, &z) in grid.z_levels.iter().enumerate() {
            let z = z as f64;
            for row in 0..gh {
                let (x, _) = grid.cell_center(row, 0);
                // p_cam = R (x, y, z) + t = base + y * R[:,1]
                let base = r * Point3::new(x, 0.0, z).coords + tr;
                let col_y = r.column(1).into_owned();
                let e0 = (l * gh + row) * gw;
                for col in 0..gw {
                    let (_, y) = grid.cell_center(row, col);
                    let pc = base + col_y * y;
                    let e = e0 + col;
                    let Some(p) = cam.project(pc) else {
                        self.taps[e] = SampleTap::default();
                        self.flags[e] = FLAG_BEHIND;
                        continue;
                    };
                    if !cam.in_image(&p) {
                        self.taps[e] = SampleTap::default();
                        self.flags[e] = FLAG_OUTSIDE;
                        continue;
                    }
                    let fx = ((p.x + 0.5) / s - 0.5).clamp(0.0, fw - 1.0);
                    let fy = ((p.y + 0.5) / s - 0.5).clamp(0.0, fh - 1.0);
                    let x0 = fx.floor();
                    let y0 = fy.floor();
                    let ax = (fx - x0) as f32;
                    let ay = (fy - y0) as f32;
                    let x0 = x0 as u32;
                    let y0 = y0 as u32;
                    let x1 = (x0 + 1).min(self.feat_w as u32 - 1);
                    let y1 = (y0 + 1).min(self.feat_h as u32 - 1);
                    let w = self.feat_w as u32;
                    self.taps[e] = SampleTap {
                        idx: [y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1],
                        w: [
                            (1.0 - ax) * (1.0 - ay),
                            ax * (1.0 - ay),
                            (1.0 - ax) * ay,
                            ax * ay,
                        ],
                    };
                    self.flags[e] = FLAG_VALID;
                }
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.taps.len()
    }

    /// The taps as raw bytes (32 per entry, native endianness) for a device upload.
    pub fn taps_as_bytes(&self) -> &[u8] {
        // SAFETY: SampleTap is #[repr(C)] of 4 u32 and 4 f32 (no padding, every bit pattern
        // valid as u8); the slice covers exactly the Vec's initialized elements.
        unsafe {
            std::slice::from_raw_parts(
                self.taps.as_ptr().cast::<u8>(),
                std::mem::size_of_val(self.taps.as_slice()),
            )
        }
    }
    pub fn is_empty(&self) -> bool {
        self.taps.is_empty()
    }
    pub fn valid_fraction(&self) -> f64 {
        self.flags.iter().filter(|&&f| f == FLAG_VALID).count() as f64
            / self.flags.len().max(1) as f64
    }
}

/// CPU reference view transform (allocation-free): `features` is (C, feat_h, feat_w) f32,
/// `out` is (C * Z, grid_h, grid_w) f32 with channel `c * Z + level`. C is inferred from
/// `features.len()`; fails if the buffer sizes do not match the table.
pub fn view_transform(
    table: &SamplingTable,
    features: &[f32],
    out: &mut [f32],
) -> Result<(), CalibError> {
    let plane = table.feat_w * table.feat_h;
    if plane == 0 || !features.len().is_multiple_of(plane) {
        return Err(CalibError::invalid(
            "features",
            format!(
                "length {} is not a multiple of {}x{}",
                features.len(),
                table.feat_h,
                table.feat_w
            ),
        ));
    }
    let c = features.len() / plane;
    let per_level = table.grid_w * table.grid_h;
    let need = c * table.levels * per_level;
    if out.len() != need {
        return Err(CalibError::invalid(
            "out",
            format!("length {} != C*Z*H*W = {}", out.len(), need),
        ));
    }
    view_transform_channels(table, features, 0, out);
    Ok(())
}

/// Channels per block of [`view_transform_channels`]: each tap (32 bytes) is read once per
/// block instead of once per channel.
pub const VIEW_TRANSFORM_BLOCK: usize = 8;

/// [`view_transform`] for the channels from `ch0` whose outputs `out` holds (`out.len()` a
/// multiple of Z * grid cells; sizes checked by the caller), so callers can split the
/// channels over threads. Every output is the same four-term sum in the same order.
pub fn view_transform_channels(
    table: &SamplingTable,
    features: &[f32],
    ch0: usize,
    out: &mut [f32],
) {
    let plane = table.feat_w * table.feat_h;
    let per_level = table.grid_w * table.grid_h;
    let channels = out.len() / (table.levels * per_level).max(1);
    for cb in (0..channels).step_by(VIEW_TRANSFORM_BLOCK) {
        let nb = VIEW_TRANSFORM_BLOCK.min(channels - cb);
        for l in 0..table.levels {
            let taps = &table.taps[l * per_level..(l + 1) * per_level];
            for (cell, t) in taps.iter().enumerate() {
                let idx = t.idx.map(|i| i as usize);
                for ch in cb..cb + nb {
                    let f = &features[(ch0 + ch) * plane..(ch0 + ch + 1) * plane];
                    out[(ch * table.levels + l) * per_level + cell] = t.w[0] * f[idx[0]]
                        + t.w[1] * f[idx[1]]
                        + t.w[2] * f[idx[2]]
                        + t.w[3] * f[idx[3]];
                }
            }
        }
    }
}
