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
//!
//! # Depth-weighted lift (grids with `depth`)
//!
//! A grid may carry [`DepthBins`]: D bins of camera depth (OpenCV z, metres along the optical
//! axis; linear or log spaced between `min` and `max`). Then
//! * `bins[e]` (u32, one per entry, beside `taps`) is the bin of the entry's 3D point's camera
//!   depth, clamped to `0..D` (points nearer than `min` fall in bin 0, beyond `max` in bin D-1);
//!   0 for invalid entries. It is rebuilt with the taps, only when the calibration changes.
//! * The encoder gives C + D channels per feature pixel: C context features, then D depth
//!   logits. The depth weight of a pixel is `dw[k] = D * softmax(logits)[k]` (mean 1 over the
//!   bins, so a uniform distribution reproduces the plain view transform).
//! * Output channel `c * Z + level`, cell: `sum_t w[t] * dw[bins[e]](idx[t]) * f_c(idx[t])`:
//!   a cell behind what the pixel sees gets little of its feature (SkyEye's implicit depth).
//!   [`lift`] is the CPU reference; `kernels/cuda/bev_pool.cu` (`depth_softmax_f32`,
//!   `bev_lift_f32`) its GPU twin, in the same two steps.

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
    /// Depth bins of a depth-weighted lift (`[grid.depth]` in a manifest); `None`: the plain
    /// view transform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<DepthBins>,
}

/// How [`DepthBins`] divide `min..max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DepthSpacing {
    /// Equal widths in metres.
    Linear,
    /// Equal ratios (widths grow with depth, like the pixel footprint of the ground).
    Log,
}

/// D bins of camera depth for the depth-weighted lift (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DepthBins {
    pub min: f32,
    pub max: f32,
    pub bins: usize,
    pub spacing: DepthSpacing,
}

impl DepthBins {
    pub fn validate(&self) -> Result<(), CalibError> {
        if !(self.min > 0.0 && self.min.is_finite() && self.max.is_finite()) {
            return Err(CalibError::invalid(
                "depth.min",
                "must be positive and finite (as must depth.max)",
            ));
        }
        if self.max.partial_cmp(&self.min) != Some(std::cmp::Ordering::Greater) {
            return Err(CalibError::invalid("depth.max", "must exceed depth.min"));
        }
        if !(2..=256).contains(&self.bins) {
            return Err(CalibError::invalid("depth.bins", "must be in 2..=256"));
        }
        Ok(())
    }

    /// Lower edge of bin `k` (`k = bins` gives `max`).
    pub fn edge(&self, k: usize) -> f32 {
        let f = k as f64 / self.bins as f64;
        let (lo, hi) = (self.min as f64, self.max as f64);
        (match self.spacing {
            DepthSpacing::Linear => lo + (hi - lo) * f,
            DepthSpacing::Log => lo * (hi / lo).powf(f),
        }) as f32
    }

    /// The depth bin `k` stands for: the middle of its edges (geometric middle for log bins).
    pub fn centre(&self, k: usize) -> f32 {
        let (a, b) = (self.edge(k) as f64, self.edge(k + 1) as f64);
        (match self.spacing {
            DepthSpacing::Linear => 0.5 * (a + b),
            DepthSpacing::Log => (a * b).sqrt(),
        }) as f32
    }

    pub fn centres(&self) -> Vec<f32> {
        (0..self.bins).map(|k| self.centre(k)).collect()
    }

    /// The bin of camera depth `d`, clamped to `0..bins`.
    pub fn bin_of(&self, d: f64) -> u32 {
        let (lo, hi) = (self.min as f64, self.max as f64);
        let f = match self.spacing {
            DepthSpacing::Linear => (d - lo) / (hi - lo),
            DepthSpacing::Log if d > 0.0 => (d / lo).ln() / (hi / lo).ln(),
            DepthSpacing::Log => 0.0,
        };
        let k = (f * self.bins as f64).floor();
        if k.is_nan() {
            0
        } else {
            k.clamp(0.0, self.bins as f64 - 1.0) as u32
        }
    }
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
        if let Some(d) = &self.depth {
            d.validate()?;
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
    /// Depth bins D of the lift (0: the plain view transform).
    pub fn depth_bins(&self) -> usize {
        self.depth.as_ref().map_or(0, |d| d.bins)
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
    /// Depth bins D of the lift (0: plain view transform, `bins` empty).
    pub depth_bins: usize,
    /// Per entry: the depth bin of its point (grids with `depth` only; module docs).
    pub bins: Vec<u32>,
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
            depth_bins: 0,
            bins: Vec::new(),
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
        self.depth_bins = grid.depth_bins();
        self.bins.resize(if self.depth_bins > 0 { n } else { 0 }, 0);
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
                    if let Some(d) = &grid.depth {
                        self.bins[e] = d.bin_of(pc.z);
                    }
                    let Some(p) = cam.project(pc) else {
                        self.set_invalid(e, FLAG_BEHIND);
                        continue;
                    };
                    if !cam.in_image(&p) {
                        self.set_invalid(e, FLAG_OUTSIDE);
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

    fn set_invalid(&mut self, e: usize, flag: u8) {
        self.taps[e] = SampleTap::default();
        self.flags[e] = flag;
        if let Some(b) = self.bins.get_mut(e) {
            *b = 0;
        }
    }

    pub fn len(&self) -> usize {
        self.taps.len()
    }

    /// Feature channels the encoder must give for `c` context channels: `c + D`.
    pub fn encoder_channels(&self, c: usize) -> usize {
        c + self.depth_bins
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
    gather_channels(table, &table.taps, features, ch0, out)
}

/// The gather behind both transforms: `taps` is the table's own (plain view transform) or
/// the depth-weighted copy [`depth_weighted_taps`] makes each frame (lift).
pub fn gather_channels(
    table: &SamplingTable,
    taps: &[SampleTap],
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
            let taps = &taps[l * per_level..(l + 1) * per_level];
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

/// Per-frame scratch of the depth-weighted lift, sized once for a table (nothing allocated
/// per frame): the depth weights (D, feat_h, feat_w) and the weighted taps.
#[derive(Debug, Clone, Default)]
pub struct LiftScratch {
    pub depth_weight: Vec<f32>,
    pub taps: Vec<SampleTap>,
}

impl LiftScratch {
    pub fn new(table: &SamplingTable) -> LiftScratch {
        LiftScratch {
            depth_weight: vec![0.0; table.depth_bins * table.feat_w * table.feat_h],
            taps: vec![SampleTap::default(); table.len()],
        }
    }

    /// Resizes to `table` (only a new grid or feature size allocates).
    pub fn fit(&mut self, table: &SamplingTable) {
        self.depth_weight
            .resize(table.depth_bins * table.feat_w * table.feat_h, 0.0);
        self.taps.resize(table.len(), SampleTap::default());
    }
}

/// `D * softmax` over the D depth logits of every pixel: `logits` and `out` are (D, plane).
/// The GPU twin is `depth_softmax_f32` (the same max-shifted exponentials in f32; its `expf`
/// and [`exp_nonpositive`] both stay within 2 ulp of e^x). Pixels go in blocks of 64 with the
/// bins outermost, so the inner loops run over contiguous pixels and vectorise.
pub fn depth_softmax(logits: &[f32], bins: usize, out: &mut [f32]) {
    const BLOCK: usize = 64;
    let plane = logits.len() / bins.max(1);
    let scale = bins as f32;
    let mut p0 = 0;
    while p0 < plane {
        let nb = BLOCK.min(plane - p0);
        let mut max = [f32::NEG_INFINITY; BLOCK];
        let mut sum = [0f32; BLOCK];
        for k in 0..bins {
            let l = &logits[k * plane + p0..k * plane + p0 + nb];
            for (m, &v) in max[..nb].iter_mut().zip(l) {
                *m = m.max(v);
            }
        }
        for k in 0..bins {
            let l = &logits[k * plane + p0..k * plane + p0 + nb];
            let o = &mut out[k * plane + p0..k * plane + p0 + nb];
            for j in 0..nb {
                let e = exp_nonpositive(l[j] - max[j]);
                o[j] = e;
                sum[j] += e;
            }
        }
        for s in &mut sum[..nb] {
            *s = scale / *s;
        }
        for k in 0..bins {
            let o = &mut out[k * plane + p0..k * plane + p0 + nb];
            for (v, inv) in o.iter_mut().zip(&sum[..nb]) {
                *v *= inv;
            }
        }
        p0 += nb;
    }
}

/// e^x for x <= 0 (a max-shifted logit), within 2 ulp of `f32::exp`, in plain arithmetic the
/// compiler vectorises: x = n ln2 + r with |r| <= ln2/2, a degree-7 polynomial for e^r, and
/// 2^n from the exponent bits. Below -87 (and for NaN) it gives 0.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // NaN and x < -87 (e^x below f32's normal range) both give 0
    let x = if x >= -87.0 { x.min(0.0) } else { -88.0 };
    // n = round(x / ln2) for x <= 0 (truncation of a positive number is floor)
    let n = -(((-x) * std::f32::consts::LOG2_E + 0.5) as i32);
    let nf = n as f32;
    let r = (x - nf * LN2_HI) - nf * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    let e = if n > -127 {
        f32::from_bits(((n + 127) as u32) << 23)
    } else {
        0.0
    };
    p * e
}

/// The table's taps with every weight multiplied by the depth weight of its entry's bin at
/// the tap's pixel: `w'[t] = w[t] * dw[bins[e] * plane + idx[t]]`.
pub fn depth_weighted_taps(table: &SamplingTable, depth_weight: &[f32], out: &mut [SampleTap]) {
    depth_weighted_taps_from(table, depth_weight, 0, out)
}

/// [`depth_weighted_taps`] for the entries from `e0` that `out` holds (callers split the
/// entries over threads).
pub fn depth_weighted_taps_from(
    table: &SamplingTable,
    depth_weight: &[f32],
    e0: usize,
    out: &mut [SampleTap],
) {
    let plane = table.feat_w * table.feat_h;
    let (taps, bins) = (&table.taps[e0..], &table.bins[e0..]);
    for ((o, t), &b) in out.iter_mut().zip(taps).zip(bins) {
        let dw = &depth_weight[b as usize * plane..(b as usize + 1) * plane];
        *o = SampleTap {
            idx: t.idx,
            w: std::array::from_fn(|k| t.w[k] * dw[t.idx[k] as usize]),
        };
    }
}

/// The depth-weighted lift (CPU reference; module docs): `features` is (C + D, feat_h,
/// feat_w), C context channels then D depth logits; `out` is (C * Z, grid_h, grid_w).
/// A table without depth bins gives the plain [`view_transform`] of all channels.
pub fn lift(
    table: &SamplingTable,
    features: &[f32],
    scratch: &mut LiftScratch,
    out: &mut [f32],
) -> Result<(), CalibError> {
    if table.depth_bins == 0 {
        return view_transform(table, features, out);
    }
    let plane = table.feat_w * table.feat_h;
    let context = lift_context_channels(table, features.len())?;
    let per_level = table.grid_w * table.grid_h;
    if out.len() != context * table.levels * per_level {
        return Err(CalibError::invalid(
            "out",
            format!(
                "length {} != C*Z*H*W = {}",
                out.len(),
                context * table.levels * per_level
            ),
        ));
    }
    scratch.fit(table);
    lift_weights(table, &features[context * plane..], scratch);
    gather_channels(table, &scratch.taps, features, 0, out);
    Ok(())
}

/// The context channels C of a lift input of `len` floats (C + D planes), or why not.
pub fn lift_context_channels(table: &SamplingTable, len: usize) -> Result<usize, CalibError> {
    let plane = table.feat_w * table.feat_h;
    if plane == 0 || !len.is_multiple_of(plane) || len / plane <= table.depth_bins {
        return Err(CalibError::invalid(
            "features",
            format!(
                "length {len} is not (C + {} depth bins) planes of {}x{} with C >= 1",
                table.depth_bins, table.feat_h, table.feat_w
            ),
        ));
    }
    Ok(len / plane - table.depth_bins)
}

/// Both per-frame steps before the gather: depth weights from the logits (D planes), then the
/// weighted taps, into `scratch` (already sized by [`LiftScratch::fit`]).
pub fn lift_weights(table: &SamplingTable, logits: &[f32], scratch: &mut LiftScratch) {
    depth_softmax(logits, table.depth_bins, &mut scratch.depth_weight);
    depth_weighted_taps(table, &scratch.depth_weight, &mut scratch.taps);
}
