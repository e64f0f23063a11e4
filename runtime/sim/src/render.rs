//! Per-pixel ray caster: RGB, depth and labels of the front camera, and the BEV ground truth.
//!
//! Each pixel's camera ray is unprojected once through the calibrated [`CameraModel`]
//! (distortion included) at construction. Per frame the rays are rotated into the world with
//! the extrinsics and the ego pose and intersected with the ground plane (z = 0) and the boxes
//! near the ego (slab test in each box's frame). Boxes are binned into 16x16-pixel tiles by the
//! bounding rectangle of their projected corners, so a pixel tests only the boxes that can
//! cover it. The nearest hit gives class, depth and a shaded colour: per-class base colours
//! with procedural texture (asphalt noise, lane markings and zebra crossings, paving joints,
//! grass noise, facade windows, car windows and lights, clothing), a directional sun plus
//! ambient light that drift slowly over the sequence, sun shadows of every box on the ground
//! (boxes binned on a 4 m grid by their shadow's extent; one shadow ray per ground pixel),
//! contact shadows under vehicles and people, distance haze, and seeded per-pixel sensor noise.
//! Not modelled: shadows of boxes on other boxes, motion blur, rolling shutter, auto exposure,
//! vignetting, reflections.

use bevrt_calib::{BevGrid, CameraModel, Extrinsics};
use nalgebra::{Point2, Point3, Vector3};

use crate::error::SimError;
use crate::rng::{hash01, value_noise};
use crate::world::{EgoPose, Ground, Look, Paint, SimBox, World, class};

const TILE: usize = 16;
/// Box capacity reserved up front (per frame list and per tile), so steady-state frames do
/// not allocate; more boxes still work (the lists grow).
const MAX_BOXES_HINT: usize = 2048;
const HIT_GROUND: u32 = 0;
const HIT_NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct PBox {
    /// Camera origin in the box frame.
    ox: f32,
    oy: f32,
    oz: f32,
    c: f32,
    s: f32,
    hl: f32,
    hw: f32,
    z0: f32,
    z1: f32,
    /// Darkens the ground around its footprint (contact shadow of vehicles and people).
    contact: bool,
}

/// Lighting of one frame.
#[derive(Debug, Clone, Copy)]
struct Light {
    sun: [f32; 3],
    ambient: f32,
    diffuse: f32,
    horizon: [f32; 3],
    zenith: [f32; 3],
}

/// What every pixel of one frame shares: the camera's rotation into the world and its
/// position, the shadow bins' corner, the light and the seeds of texture and noise.
struct FrameSetup {
    m: [[f32; 3]; 3],
    origin: [f32; 3],
    shadow_origin: (f32, f32),
    light: Light,
    seed32: u32,
    nseed: u32,
}

fn light_at(time: f64, seed: u64) -> Light {
    let ph = (crate::rng::mix64(seed ^ 0x5A17) % 6283) as f64 * 0.001;
    let az = ph + 0.004 * time;
    let el = 0.7 + 0.25 * (0.01 * time + ph).sin();
    let (se, ce) = el.sin_cos();
    let sun = [(az.cos() * ce) as f32, (az.sin() * ce) as f32, se as f32];
    let b = (1.0 + 0.12 * (0.013 * time + 2.0 * ph).sin()) as f32;
    Light {
        sun,
        ambient: 0.5 * b,
        diffuse: 0.55 * b,
        horizon: [205.0 * b, 215.0 * b, 225.0 * b],
        zenith: [105.0 * b, 145.0 * b, 205.0 * b],
    }
}

/// Renderer with all buffers allocated at construction; `render_into` allocates nothing once
/// the per-frame box lists have grown to their working size.
#[derive(Debug, Clone)]
pub struct Renderer {
    camera: CameraModel,
    ext: Extrinsics,
    w: usize,
    h: usize,
    /// Camera-frame unit ray per pixel; z = 0 marks a pixel outside the lens model's range.
    rays: Vec<[f32; 3]>,
    depth: Vec<f32>,
    labels: Vec<u8>,
    hit: Vec<u32>,
    boxes: Vec<SimBox>,
    pboxes: Vec<PBox>,
    tiles: Vec<Vec<u16>>,
    tiles_x: usize,
    seed: u64,
    noise_sigma: f32,
    max_distance: f64,
    // BEV ground truth
    grid: BevGrid,
    gw: usize,
    gh: usize,
    cell_px: Vec<u32>,
    cell_depth: Vec<f32>,
    bev: Vec<u8>,
    /// The same map before the visibility rule: every cell's true class (amodal).
    amodal: Vec<u8>,
    owner: Vec<u32>,
    pose: EgoPose,
    // Sun shadows on the ground: boxes binned by the bounding rectangle of their shadow
    // (CSR over a SHADOW_BINS x SHADOW_BINS grid of SHADOW_CELL metres around the camera).
    sboxes: Vec<SBox>,
    sbin_rect: Vec<[u16; 4]>,
    sbin_start: Vec<u32>,
    sbin_items: Vec<u16>,
}

/// A box as seen by a shadow ray: centre, rotation, extents, sun direction in its frame.
#[derive(Debug, Clone, Copy)]
struct SBox {
    x: f32,
    y: f32,
    c: f32,
    s: f32,
    hl: f32,
    hw: f32,
    z0: f32,
    z1: f32,
    lx: f32,
    ly: f32,
}

const SHADOW_CELL: f32 = 4.0;
const SHADOW_BINS: usize = 100;

impl Renderer {
    /// `noise_sigma`: sensor noise (DN, roughly a standard deviation); `max_distance`: boxes
    /// farther than this from the camera are not drawn (the ground always is).
    pub fn new(
        camera: &CameraModel,
        ext: &Extrinsics,
        grid: &BevGrid,
        seed: u64,
        noise_sigma: f32,
        max_distance: f64,
    ) -> Result<Renderer, SimError> {
        grid.validate()?;
        let (w, h) = (camera.width() as usize, camera.height() as usize);
        if w == 0 || h == 0 || w > 8192 || h > 8192 {
            return Err(SimError::config(
                "camera.width/height",
                format!("{w}x{h} is not a usable size (1..=8192)"),
            ));
        }
        if !(noise_sigma.is_finite() && noise_sigma >= 0.0) {
            return Err(SimError::config("noise_sigma", "must be >= 0"));
        }
        if !(max_distance.is_finite() && max_distance > 0.0) {
            return Err(SimError::config("max_distance", "must be > 0"));
        }
        let mut rays = Vec::with_capacity(w * h);
        for v in 0..h {
            for u in 0..w {
                let r = camera
                    .unproject(Point2::new(u as f64, v as f64))
                    .map(|r| [r.x as f32, r.y as f32, r.z as f32])
                    .unwrap_or([0.0; 3]);
                rays.push(r);
            }
        }
        let tiles_x = w.div_ceil(TILE);
        let tiles_y = h.div_ceil(TILE);
        let (gw, gh) = (grid.width(), grid.height());
        let mut r = Renderer {
            camera: camera.clone(),
            ext: *ext,
            w,
            h,
            rays,
            depth: vec![0.0; w * h],
            labels: vec![0; w * h],
            hit: vec![0; w * h],
            boxes: Vec::with_capacity(MAX_BOXES_HINT),
            pboxes: Vec::with_capacity(MAX_BOXES_HINT),
            tiles: (0..tiles_x * tiles_y)
                .map(|_| Vec::with_capacity(MAX_BOXES_HINT / 4))
                .collect(),
            tiles_x,
            seed,
            noise_sigma,
            max_distance,
            grid: grid.clone(),
            gw,
            gh,
            cell_px: vec![u32::MAX; gw * gh],
            cell_depth: vec![0.0; gw * gh],
            bev: vec![class::UNKNOWN; gw * gh],
            amodal: vec![class::UNKNOWN; gw * gh],
            owner: vec![0; gw * gh],
            pose: EgoPose::default(),
            sboxes: Vec::with_capacity(MAX_BOXES_HINT),
            sbin_rect: Vec::with_capacity(MAX_BOXES_HINT),
            sbin_start: vec![0; SHADOW_BINS * SHADOW_BINS + 1],
            sbin_items: Vec::with_capacity(1 << 16),
        };
        // Ground point of every BEV cell in the image (fixed: the camera rides on the vehicle).
        for row in 0..gh {
            for col in 0..gw {
                let (x, y) = grid.cell_center(row, col);
                if let Some((px, d)) = r.project_vehicle(x, y, 0.0) {
                    r.cell_px[row * gw + col] = px;
                    r.cell_depth[row * gw + col] = d;
                }
            }
        }
        Ok(r)
    }

    pub fn width(&self) -> usize {
        self.w
    }
    pub fn height(&self) -> usize {
        self.h
    }
    pub fn camera(&self) -> &CameraModel {
        &self.camera
    }
    pub fn grid(&self) -> &BevGrid {
        &self.grid
    }

    /// Vehicle-frame point to (pixel index, depth along the optical axis) when it projects
    /// into the image.
    fn project_vehicle(&self, x: f64, y: f64, z: f64) -> Option<(u32, f32)> {
        let pc = self.ext.vehicle_to_cam() * Point3::new(x, y, z);
        let p = self.camera.project(pc.coords)?;
        if !self.camera.in_image(&p) {
            return None;
        }
        let u = (p.x.round() as usize).min(self.w - 1);
        let v = (p.y.round() as usize).min(self.h - 1);
        Some(((v * self.w + u) as u32, pc.z as f32))
    }

    /// Depth along the optical axis (metres) of the last frame; `f32::INFINITY` for sky and
    /// for pixels outside the lens model's range.
    pub fn depth(&self) -> &[f32] {
        &self.depth
    }
    /// Per-pixel class of the last frame (see [`class`]; 254 = sky, 255 = invalid pixel).
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
    /// The boxes considered in the last frame (world frame).
    pub fn boxes(&self) -> &[SimBox] {
        &self.boxes
    }

    /// Renders the view from `pose` at frame index `frame` into `rgb` (packed RGB8,
    /// width*height*3 bytes); depth and labels land in [`Renderer::depth`] and
    /// [`Renderer::labels`].
    pub fn render_into(
        &mut self,
        world: &World,
        pose: &EgoPose,
        frame: u64,
        rgb: &mut [u8],
    ) -> Result<(), SimError> {
        let need = self.w * self.h * 3;
        if rgb.len() != need {
            return Err(SimError::Buffer {
                what: "rgb",
                expected: need,
                got: rgb.len(),
            });
        }
        if !(pose.x.is_finite() && pose.y.is_finite() && pose.yaw.is_finite()) {
            return Err(SimError::config("pose", "not finite"));
        }
        self.pose = *pose;
        let light = light_at(pose.time, self.seed);
        let (m, (ox, oy, oz)) = self.camera_to_world(pose);
        // Boxes near the camera, binned into tiles.
        world.boxes_at(pose.time, ox, oy, self.max_distance, &mut self.boxes);
        self.bin_boxes(pose, ox, oy, oz);
        self.build_shadow_bins(&light, ox, oy);
        let seed32 = (self.seed as u32) ^ ((self.seed >> 32) as u32);
        let f = FrameSetup {
            m,
            origin: [ox as f32, oy as f32, oz as f32],
            shadow_origin: (
                ox as f32 - SHADOW_CELL * (SHADOW_BINS / 2) as f32,
                oy as f32 - SHADOW_CELL * (SHADOW_BINS / 2) as f32,
            ),
            light,
            seed32,
            nseed: seed32 ^ (frame as u32).wrapping_mul(0x9E37_79B9),
        };
        self.shade_pixels(world, &f, rgb);
        Ok(())
    }

    /// The camera's rotation into the world (rows of R_wc, as f32) and its position.
    #[allow(clippy::type_complexity)]
    fn camera_to_world(&self, pose: &EgoPose) -> ([[f32; 3]; 3], (f64, f64, f64)) {
        let (sy, cy) = pose.yaw.sin_cos();
        let rcv = self.ext.cam_to_vehicle.rotation.to_rotation_matrix();
        let rcv = rcv.matrix();
        let tcv = self.ext.cam_to_vehicle.translation.vector;
        let mut m = [[0f32; 3]; 3];
        for i in 0..3 {
            let row_v = [rcv[(0, i)], rcv[(1, i)], rcv[(2, i)]];
            // column i of R_wc = Rz * column i of R_cv
            m[0][i] = (cy * row_v[0] - sy * row_v[1]) as f32;
            m[1][i] = (sy * row_v[0] + cy * row_v[1]) as f32;
            m[2][i] = row_v[2] as f32;
        }
        let ox = pose.x + cy * tcv.x - sy * tcv.y;
        let oy = pose.y + sy * tcv.x + cy * tcv.y;
        let oz = tcv.z;
        (m, (ox, oy, oz))
    }

    /// Each of the frame's boxes in its own frame relative to the camera ([`PBox`]), and the
    /// screen tiles its projection can cover.
    fn bin_boxes(&mut self, pose: &EgoPose, ox: f64, oy: f64, oz: f64) {
        self.pboxes.clear();
        for t in &mut self.tiles {
            t.clear();
        }
        let v2c = self.ext.vehicle_to_cam();
        for (k, b) in self.boxes.iter().enumerate() {
            let (s, c) = b.yaw.sin_cos();
            let (dx, dy) = (ox - b.x, oy - b.y);
            self.pboxes.push(PBox {
                ox: (c * dx + s * dy) as f32,
                oy: (-s * dx + c * dy) as f32,
                oz: oz as f32,
                c: c as f32,
                s: s as f32,
                hl: b.half_len as f32,
                hw: b.half_wid as f32,
                z0: b.z0 as f32,
                z1: b.z1 as f32,
                contact: b.z0 <= 0.0
                    && matches!(
                        b.class,
                        class::CAR | class::TRUCK | class::PERSON | class::TWO_WHEELER
                    ),
            });
            if k >= u16::MAX as usize {
                continue;
            }
            let Some((tu0, tv0, tu1, tv1)) = self.screen_rect(b, pose, &v2c) else {
                continue;
            };
            for ty in tv0 / TILE..=tv1 / TILE {
                for tx in tu0 / TILE..=tu1 / TILE {
                    self.tiles[ty * self.tiles_x + tx].push(k as u16);
                }
            }
        }
    }

    /// Screen rectangle (u0, v0, u1, v1) of a box's projected corners, with a 2-pixel margin:
    /// the whole image if any corner is behind the camera or beyond the lens model's range,
    /// `None` when the box is wholly behind or off screen.
    fn screen_rect(
        &self,
        b: &SimBox,
        pose: &EgoPose,
        v2c: &nalgebra::Isometry3<f64>,
    ) -> Option<(usize, usize, usize, usize)> {
        let (mut u0, mut v0, mut u1, mut v1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
        let mut all_behind = true;
        let mut full = false;
        for cxy in b.corners_xy() {
            let (xv, yv) = pose.to_vehicle(cxy[0], cxy[1]);
            for z in [b.z0, b.z1] {
                let pc = v2c * Point3::new(xv, yv, z);
                if pc.z > 0.05 {
                    all_behind = false;
                    match self.camera.project(pc.coords) {
                        Some(p) => {
                            u0 = u0.min(p.x);
                            u1 = u1.max(p.x);
                            v0 = v0.min(p.y);
                            v1 = v1.max(p.y);
                        }
                        None => full = true,
                    }
                } else {
                    full = true;
                }
            }
        }
        if all_behind {
            return None;
        }
        if full {
            return Some((0, 0, self.w - 1, self.h - 1));
        }
        let m = 2.0;
        if u1 < -m || v1 < -m || u0 > self.w as f64 + m || v0 > self.h as f64 + m {
            return None;
        }
        Some((
            (u0 - m).max(0.0) as usize,
            (v0 - m).max(0.0) as usize,
            ((u1 + m).max(0.0) as usize).min(self.w - 1),
            ((v1 + m).max(0.0) as usize).min(self.h - 1),
        ))
    }

    /// Every pixel: the nearest hit along its ray, its colour with sensor noise, its depth,
    /// label and hit.
    fn shade_pixels(&mut self, world: &World, f: &FrameSetup, rgb: &mut [u8]) {
        for v in 0..self.h {
            for u in 0..self.w {
                let i = v * self.w + u;
                let r = self.rays[i];
                if r[2] == 0.0 {
                    rgb[i * 3..i * 3 + 3].copy_from_slice(&[0, 0, 0]);
                    self.depth[i] = f32::INFINITY;
                    self.labels[i] = class::UNKNOWN;
                    self.hit[i] = HIT_NONE;
                    continue;
                }
                let (col, lab, depth, hit) = self.shade_ray(world, f, r, u, v);
                self.depth[i] = depth;
                self.hit[i] = hit;
                self.labels[i] = lab;
                let n = if self.noise_sigma > 0.0 {
                    let ua = hash01(f.nseed, u as i32, v as i32);
                    let ub = hash01(f.nseed ^ 0x68E3_1DA4, u as i32, v as i32);
                    (ua + ub - 1.0) * 2.45 * self.noise_sigma
                } else {
                    0.0
                };
                let o = &mut rgb[i * 3..i * 3 + 3];
                for c in 0..3 {
                    o[c] = (col[c] + n).round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }

    /// Colour, label, depth and hit (`HIT_NONE`, `HIT_GROUND` or box index + 1) of the
    /// camera ray `r` through pixel (u, v).
    fn shade_ray(
        &self,
        world: &World,
        f: &FrameSetup,
        r: [f32; 3],
        u: usize,
        v: usize,
    ) -> ([f32; 3], u8, f32, u32) {
        let m = &f.m;
        let d = [
            m[0][0] * r[0] + m[0][1] * r[1] + m[0][2] * r[2],
            m[1][0] * r[0] + m[1][1] * r[1] + m[1][2] * r[2],
            m[2][0] * r[0] + m[2][1] * r[1] + m[2][2] * r[2],
        ];
        let tile = &self.tiles[(v / TILE) * self.tiles_x + u / TILE];
        let (best_t, best, best_axis) = self.nearest_hit(tile, d, f.origin[2]);
        match best {
            HIT_NONE => {
                let a = d[2].clamp(0.0, 1.0).sqrt();
                let col = mix3(f.light.horizon, f.light.zenith, a);
                (col, class::SKY, f32::INFINITY, HIT_NONE)
            }
            HIT_GROUND => {
                let (col, lab) = self.shade_ground(world, f, tile, d, best_t);
                (col, lab, best_t * r[2], HIT_GROUND)
            }
            k => {
                let (col, lab) = self.shade_box(f, (k - 1) as usize, best_axis, d, best_t);
                (col, lab, best_t * r[2], k)
            }
        }
    }

    /// The nearest of the ground plane and the tile's boxes along world direction `d` from
    /// camera height `ozf`: (distance, hit, box face axis).
    fn nearest_hit(&self, tile: &[u16], d: [f32; 3], ozf: f32) -> (f32, u32, u8) {
        let mut best_t = f32::INFINITY;
        let mut best = HIT_NONE;
        let mut best_axis = 0u8;
        if d[2] < -1e-6 {
            best_t = -ozf / d[2];
            best = HIT_GROUND;
        }
        for &k in tile {
            let pb = &self.pboxes[k as usize];
            let lx = pb.c * d[0] + pb.s * d[1];
            let ly = -pb.s * d[0] + pb.c * d[1];
            let (ax0, ax1) = slab(pb.ox, lx, -pb.hl, pb.hl);
            let (ay0, ay1) = slab(pb.oy, ly, -pb.hw, pb.hw);
            let (az0, az1) = slab(pb.oz, d[2], pb.z0, pb.z1);
            let mut tn = ax0;
            let mut axis = 0u8;
            if ay0 > tn {
                tn = ay0;
                axis = 1;
            }
            if az0 > tn {
                tn = az0;
                axis = 2;
            }
            let tf = ax1.min(ay1).min(az1);
            if tn <= tf && tn > 1e-3 && tn < best_t {
                best_t = tn;
                best = k as u32 + 1;
                best_axis = axis;
            }
        }
        (best_t, best, best_axis)
    }

    /// Colour and class of the ground hit at distance `t` along `d`: sun and box shadows,
    /// contact shadows around vehicles and people, haze.
    fn shade_ground(
        &self,
        world: &World,
        f: &FrameSetup,
        tile: &[u16],
        d: [f32; 3],
        best_t: f32,
    ) -> ([f32; 3], u8) {
        let light = &f.light;
        let gx = f.origin[0] + best_t * d[0];
        let gy = f.origin[1] + best_t * d[1];
        let g = world.ground_at(gx, gy);
        let base = ground_color(g, gx, gy, best_t, f.seed32);
        let lit = self.sun_visible(gx, gy, f.shadow_origin.0, f.shadow_origin.1, light);
        let mut shade = light.ambient + lit * light.diffuse * light.sun[2];
        // Contact shadow: darker ground close around vehicles and people.
        for &k in tile {
            let pb = &self.pboxes[k as usize];
            if !pb.contact {
                continue;
            }
            let lx = pb.ox + best_t * (pb.c * d[0] + pb.s * d[1]);
            let ly = pb.oy + best_t * (-pb.s * d[0] + pb.c * d[1]);
            let out = (lx.abs() - pb.hl).max(ly.abs() - pb.hw);
            if out < 0.35 {
                shade *= 0.5 + 0.5 * (out / 0.35).max(0.0);
            }
        }
        (haze(scale3(base, shade), light, best_t), g.class)
    }

    /// Colour and class of box `bi`'s face `best_axis` hit at distance `t` along `d`.
    fn shade_box(
        &self,
        f: &FrameSetup,
        bi: usize,
        best_axis: u8,
        d: [f32; 3],
        best_t: f32,
    ) -> ([f32; 3], u8) {
        let light = &f.light;
        let b = &self.boxes[bi];
        let pb = &self.pboxes[bi];
        let lx = pb.c * d[0] + pb.s * d[1];
        let ly = -pb.s * d[0] + pb.c * d[1];
        let hx = pb.ox + best_t * lx;
        let hy = pb.oy + best_t * ly;
        let hz = pb.oz + best_t * d[2];
        // World normal of the face hit.
        let n = match best_axis {
            0 => {
                let sg = if lx > 0.0 { -1.0 } else { 1.0 };
                [pb.c * sg, pb.s * sg, 0.0]
            }
            1 => {
                let sg = if ly > 0.0 { -1.0 } else { 1.0 };
                [-pb.s * sg, pb.c * sg, 0.0]
            }
            _ => [0.0, 0.0, if d[2] > 0.0 { -1.0 } else { 1.0 }],
        };
        let base = box_color(b, pb, best_axis, hx, hy, hz, f.seed32);
        let ndl = (n[0] * light.sun[0] + n[1] * light.sun[1] + n[2] * light.sun[2]).max(0.0);
        let shade = light.ambient + light.diffuse * ndl;
        (haze(scale3(base, shade), light, best_t), b.class)
    }

    /// Bins the frame's boxes by the rectangle their shadow can fall in.
    fn build_shadow_bins(&mut self, light: &Light, ox: f64, oy: f64) {
        self.sboxes.clear();
        self.sbin_rect.clear();
        let sun = light.sun;
        // Ground offset of the shadow of a point at height 1 m.
        let (shx, shy) = (-sun[0] / sun[2].max(0.2), -sun[1] / sun[2].max(0.2));
        let half = (SHADOW_BINS / 2) as f64 * SHADOW_CELL as f64;
        let (x0, y0) = (ox - half, oy - half);
        let nb = SHADOW_BINS as f64;
        for b in &self.boxes {
            if self.sboxes.len() >= u16::MAX as usize {
                break;
            }
            let (s, c) = b.yaw.sin_cos();
            let (mut u0, mut v0, mut u1, mut v1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
            for p in b.corners_xy() {
                for z in [0.0, b.z1] {
                    let x = p[0] + shx as f64 * z;
                    let y = p[1] + shy as f64 * z;
                    u0 = u0.min(x);
                    u1 = u1.max(x);
                    v0 = v0.min(y);
                    v1 = v1.max(y);
                }
            }
            let bx0 = ((u0 - x0) / SHADOW_CELL as f64).floor();
            let bx1 = ((u1 - x0) / SHADOW_CELL as f64).floor();
            let by0 = ((v0 - y0) / SHADOW_CELL as f64).floor();
            let by1 = ((v1 - y0) / SHADOW_CELL as f64).floor();
            if bx1 < 0.0 || by1 < 0.0 || bx0 >= nb || by0 >= nb {
                continue;
            }
            let cl = |v: f64| v.clamp(0.0, nb - 1.0) as u16;
            self.sbin_rect.push([cl(bx0), cl(by0), cl(bx1), cl(by1)]);
            self.sboxes.push(SBox {
                x: b.x as f32,
                y: b.y as f32,
                c: c as f32,
                s: s as f32,
                hl: b.half_len as f32,
                hw: b.half_wid as f32,
                z0: b.z0 as f32,
                z1: b.z1 as f32,
                lx: (c * sun[0] as f64 + s * sun[1] as f64) as f32,
                ly: (-s * sun[0] as f64 + c * sun[1] as f64) as f32,
            });
        }
        // Counting sort into CSR (no allocation once the item list has its working size).
        let start = &mut self.sbin_start;
        start.iter_mut().for_each(|v| *v = 0);
        for r in &self.sbin_rect {
            for by in r[1]..=r[3] {
                for bx in r[0]..=r[2] {
                    start[by as usize * SHADOW_BINS + bx as usize + 1] += 1;
                }
            }
        }
        for i in 0..SHADOW_BINS * SHADOW_BINS {
            start[i + 1] += start[i];
        }
        let total = start[SHADOW_BINS * SHADOW_BINS] as usize;
        self.sbin_items.clear();
        self.sbin_items.resize(total, 0);
        // Fill, using start[bin] as a cursor, then shift back.
        for (k, r) in self.sbin_rect.iter().enumerate() {
            for by in r[1]..=r[3] {
                for bx in r[0]..=r[2] {
                    let bin = by as usize * SHADOW_BINS + bx as usize;
                    self.sbin_items[start[bin] as usize] = k as u16;
                    start[bin] += 1;
                }
            }
        }
        for i in (1..=SHADOW_BINS * SHADOW_BINS).rev() {
            start[i] = start[i - 1];
        }
        start[0] = 0;
    }

    /// 1 when the sun reaches the ground point (x, y), 0 in a box's shadow.
    #[inline]
    fn sun_visible(&self, x: f32, y: f32, bx0: f32, by0: f32, light: &Light) -> f32 {
        let bx = ((x - bx0) / SHADOW_CELL).floor();
        let by = ((y - by0) / SHADOW_CELL).floor();
        if bx < 0.0 || by < 0.0 || bx >= SHADOW_BINS as f32 || by >= SHADOW_BINS as f32 {
            return 1.0;
        }
        let bin = by as usize * SHADOW_BINS + bx as usize;
        let items =
            &self.sbin_items[self.sbin_start[bin] as usize..self.sbin_start[bin + 1] as usize];
        for &k in items {
            let b = &self.sboxes[k as usize];
            let (dx, dy) = (x - b.x, y - b.y);
            let ox = b.c * dx + b.s * dy;
            let oy = -b.s * dx + b.c * dy;
            let (ax0, ax1) = slab(ox, b.lx, -b.hl, b.hl);
            let (ay0, ay1) = slab(oy, b.ly, -b.hw, b.hw);
            let (az0, az1) = slab(0.0, light.sun[2], b.z0, b.z1);
            let tn = ax0.max(ay0).max(az0);
            let tf = ax1.min(ay1).min(az1);
            if tn <= tf && tf > 1e-3 {
                return 0.0;
            }
        }
        1.0
    }

    /// The amodal BEV of the last [`Renderer::bev_ground_truth`] call: the true class of every
    /// cell, seen or hidden (the world is known), same layout; never 255.
    pub fn bev_amodal(&self) -> &[u8] {
        &self.amodal
    }

    /// BEV semantic ground truth of the last rendered frame on the grid (row-major,
    /// `grid.height()` rows x `grid.width()` columns, layout of `bevrt_calib::SamplingTable`).
    ///
    /// Cell class: the box covering the cell centre (objects and buildings; trees keep the
    /// terrain below them), else the ground class there. **Visibility rule** (else 255):
    /// * ground cells: the cell centre on the ground projects into the image, the nearest
    ///   pixel sees the ground (not an object, not sky) and its rendered depth is within
    ///   `0.25 m + 5 % of d` of the cell centre's depth `d` (nothing in front of it, and the
    ///   pixel really looks at this stretch of ground: far cells whose nearest pixel row lies
    ///   more than that away in depth are marked unknown);
    /// * object cells: the point at the cell centre at height `min((z0 + z1) / 2, 1 m)` projects
    ///   into the image and that pixel sees the same box (object-level visibility: the whole
    ///   footprint of a seen car counts as seen, as in common BEV datasets).
    pub fn bev_ground_truth(&mut self, world: &World) -> &[u8] {
        let pose = self.pose;
        let (gw, gh) = (self.gw, self.gh);
        for row in 0..gh {
            for col in 0..gw {
                let (x, y) = self.grid.cell_center(row, col);
                let (wx, wy) = pose.to_world(x, y);
                self.bev[row * gw + col] = world.ground_at(wx as f32, wy as f32).class;
                self.owner[row * gw + col] = 0;
            }
        }
        let cell = self.grid.cell as f64;
        let (xmax, ymax) = (self.grid.x_max as f64, self.grid.y_max as f64);
        for (k, b) in self.boxes.iter().enumerate() {
            if b.class == class::TERRAIN {
                continue;
            }
            let mut rr = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
            for c in b.corners_xy() {
                let (xv, yv) = pose.to_vehicle(c[0], c[1]);
                let row = (xmax - xv) / cell - 0.5;
                let col = (ymax - yv) / cell - 0.5;
                rr = (rr.0.min(row), rr.1.max(row), rr.2.min(col), rr.3.max(col));
            }
            if rr.1 < 0.0 || rr.3 < 0.0 || rr.0 > gh as f64 || rr.2 > gw as f64 {
                continue;
            }
            let r0 = rr.0.ceil().max(0.0) as usize;
            let r1 = (rr.1.floor().max(0.0) as usize).min(gh - 1);
            let c0 = rr.2.ceil().max(0.0) as usize;
            let c1 = (rr.3.floor().max(0.0) as usize).min(gw - 1);
            for row in r0..=r1 {
                for col in c0..=c1 {
                    let (x, y) = self.grid.cell_center(row, col);
                    let (wx, wy) = pose.to_world(x, y);
                    if b.contains_xy(wx, wy) {
                        self.bev[row * gw + col] = b.class;
                        self.owner[row * gw + col] = k as u32 + 1;
                    }
                }
            }
        }
        self.amodal.copy_from_slice(&self.bev);
        for row in 0..gh {
            for col in 0..gw {
                let c = row * gw + col;
                let visible = match self.owner[c] {
                    0 => {
                        let px = self.cell_px[c];
                        if px == u32::MAX || self.hit[px as usize] != HIT_GROUND {
                            false
                        } else {
                            let d = self.cell_depth[c];
                            (self.depth[px as usize] - d).abs() <= 0.25 + 0.05 * d
                        }
                    }
                    k => {
                        let b = &self.boxes[(k - 1) as usize];
                        let (x, y) = self.grid.cell_center(row, col);
                        let z = ((b.z0 + b.z1) * 0.5).min(1.0);
                        match self.project_vehicle(x, y, z) {
                            Some((px, _)) => self.hit[px as usize] == k,
                            None => false,
                        }
                    }
                };
                if !visible {
                    self.bev[c] = class::UNKNOWN;
                }
            }
        }
        &self.bev
    }
}

#[inline]
fn slab(o: f32, d: f32, lo: f32, hi: f32) -> (f32, f32) {
    if d.abs() < 1e-9 {
        if o >= lo && o <= hi {
            (f32::NEG_INFINITY, f32::INFINITY)
        } else {
            (f32::INFINITY, f32::NEG_INFINITY)
        }
    } else {
        let inv = 1.0 / d;
        let a = (lo - o) * inv;
        let b = (hi - o) * inv;
        if a < b { (a, b) } else { (b, a) }
    }
}

#[inline]
fn mix3(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

#[inline]
fn scale3(a: [f32; 3], s: f32) -> [f32; 3] {
    [a[0] * s, a[1] * s, a[2] * s]
}

#[inline]
fn haze(c: [f32; 3], l: &Light, t: f32) -> [f32; 3] {
    let f = 1.0 - (-t / 350.0).exp();
    mix3(c, l.horizon, f)
}

#[inline]
fn rgb(c: [u8; 3]) -> [f32; 3] {
    [c[0] as f32, c[1] as f32, c[2] as f32]
}

/// Ground colour before lighting (values ~0..255 at full light).
#[inline]
fn ground_color(g: Ground, x: f32, y: f32, t: f32, seed: u32) -> [f32; 3] {
    // Fine detail fades out with distance (a crude level of detail against aliasing).
    let fine = (1.0 - t / 35.0).clamp(0.0, 1.0);
    let coarse = value_noise(seed ^ 0xA5, x * 0.35, y * 0.35);
    let detail = if fine > 0.0 {
        (value_noise(seed ^ 0x3C, x * 5.0, y * 5.0) - 0.5) * fine
    } else {
        0.0
    };
    match (g.class, g.paint) {
        (class::ROAD, Paint::White | Paint::Zebra) => {
            let k = 200.0 + 25.0 * coarse + 20.0 * detail;
            [k, k, k * 0.97]
        }
        (class::ROAD, _) => {
            let k = 78.0 + 26.0 * coarse + 30.0 * detail;
            [k, k * 1.01, k * 1.05]
        }
        (class::SIDEWALK, _) => {
            let jx = (x * (1.0 / 0.8)).rem_euclid(1.0);
            let jy = (y * (1.0 / 0.8)).rem_euclid(1.0);
            let joint = fine > 0.2 && (jx < 0.06 || jy < 0.06);
            let k = if joint {
                125.0
            } else {
                158.0 + 18.0 * coarse + 14.0 * detail
            };
            [k, k * 0.97, k * 0.92]
        }
        _ => {
            let dirt = value_noise(seed ^ 0x77, x * 0.8, y * 0.8);
            let grass = [70.0, 112.0, 42.0];
            let soil = [118.0, 100.0, 66.0];
            let c = mix3(grass, soil, (dirt - 0.45).clamp(0.0, 0.55) * 1.4);
            scale3(c, 0.85 + 0.3 * coarse + 0.35 * detail)
        }
    }
}

/// Box surface colour before lighting; (hx, hy, hz) is the hit point in the box frame.
#[inline]
fn box_color(b: &SimBox, pb: &PBox, axis: u8, hx: f32, hy: f32, hz: f32, seed: u32) -> [f32; 3] {
    let base = rgb(b.color);
    let rel = hz - pb.z0;
    let h = pb.z1 - pb.z0;
    // Horizontal coordinate along the face.
    let along = if axis == 0 { hy } else { hx };
    match b.look {
        Look::Building => {
            if axis == 2 {
                return [85.0, 82.0, 80.0];
            }
            let floor = rel.rem_euclid(3.2);
            let bay = (along + 50.0).rem_euclid(2.6);
            let win = rel > 1.0 && (1.0..2.3).contains(&floor) && (0.6..1.9).contains(&bay);
            if win {
                let g = hash01(
                    seed ^ 0x1234,
                    (along / 2.6).floor() as i32,
                    (rel / 3.2) as i32,
                );
                let w = rgb(b.color2);
                scale3(w, 0.8 + 0.5 * g)
            } else {
                let n = value_noise(seed ^ 0x99, along * 2.0, hz * 2.0);
                scale3(base, 0.92 + 0.12 * n)
            }
        }
        Look::Canopy => {
            let n = value_noise(seed ^ 0x55, (hx + hy) * 3.0, hz * 3.0);
            scale3(base, 0.7 + 0.5 * n)
        }
        Look::Trunk | Look::Plain => base,
        Look::Car => {
            if rel < 0.35 {
                [28.0, 28.0, 30.0]
            } else if axis != 2 && rel > 0.62 * h && rel < 0.93 * h {
                [45.0, 55.0, 65.0]
            } else if axis == 0 && rel > 0.45 && rel < 0.7 && along.abs() > pb.hw - 0.35 {
                // lights: the face towards the box's +x is the front
                if hx > 0.0 {
                    [235.0, 230.0, 200.0]
                } else {
                    [200.0, 30.0, 30.0]
                }
            } else {
                base
            }
        }
        Look::Truck => {
            if rel < 0.5 {
                [30.0, 30.0, 32.0]
            } else if hx > pb.hl - 2.2 {
                // cab
                if axis != 2 && rel > 1.7 && rel < 2.5 {
                    [45.0, 55.0, 65.0]
                } else {
                    base
                }
            } else {
                rgb(b.color2)
            }
        }
        Look::Person => {
            if rel > h - 0.25 {
                [205.0, 160.0, 130.0]
            } else if rel > 0.48 * h {
                rgb(b.color2)
            } else {
                scale3(base, 0.6)
            }
        }
        Look::TwoWheeler => {
            if rel > h - 0.3 {
                base
            } else if rel > 0.9 {
                rgb(b.color2)
            } else {
                [35.0, 35.0, 38.0]
            }
        }
    }
}

/// Colourises a class-index image (BEV or labels) into RGB8 with [`class::color`].
pub fn colorize(labels: &[u8], rgb: &mut [u8]) {
    for (o, &l) in rgb.chunks_exact_mut(3).zip(labels) {
        o.copy_from_slice(&class::color(l));
    }
}

/// Unit ray of a pixel in the camera frame (tests and tools); `None` outside the lens range.
pub fn pixel_ray(camera: &CameraModel, u: f64, v: f64) -> Option<Vector3<f64>> {
    camera.unproject(Point2::new(u, v))
}
