//! The procedural 2.5D world: roads (main route with curves, cross streets at intersections),
//! sidewalks, terrain, buildings and trees as boxes on the ground plane, and actors (parked and
//! moving cars, trucks, two-wheelers, pedestrians) as oriented boxes.
//!
//! World frame: x, y on the ground plane (z = 0 everywhere: the terrain is flat), z up,
//! metres. Everything is generated from one seed and is a pure function of (seed, config,
//! time): the same seed gives the same world and the same actor positions at a given time.
//!
//! Main road cross-section (lateral offset `l` from the centreline, left positive):
//! driving lanes `|l| < lane_width` (right-hand traffic: the ego drives in `-lane_width..0`),
//! parking lanes out to `half_width = lane_width + parking_width`, then sidewalks
//! `sidewalk_width` wide; terrain, trees and buildings beyond. Cross streets have one lane
//! each way and no parking lane.

use crate::rng::SplitMix64;

/// Class ids (the order of issue 4). [`SKY`] and [`UNKNOWN`] are not classes.
pub mod class {
    pub const ROAD: u8 = 0;
    pub const SIDEWALK: u8 = 1;
    pub const BUILDING: u8 = 2;
    /// Terrain and vegetation (grass, trees).
    pub const TERRAIN: u8 = 3;
    pub const PERSON: u8 = 4;
    pub const TWO_WHEELER: u8 = 5;
    pub const CAR: u8 = 6;
    pub const TRUCK: u8 = 7;
    /// Sky in the per-pixel label image (never in the BEV ground truth).
    pub const SKY: u8 = 254;
    /// Unknown / not visible (BEV), or a pixel outside the lens model's valid range.
    pub const UNKNOWN: u8 = 255;
    pub const COUNT: usize = 8;
    pub const NAMES: [&str; COUNT] = [
        "road",
        "sidewalk",
        "building",
        "terrain",
        "person",
        "2-wheeler",
        "car",
        "truck",
    ];
    /// Display colours (RGB) for colourised label / BEV images.
    pub const COLORS: [[u8; 3]; COUNT] = [
        [128, 64, 128],
        [244, 35, 232],
        [70, 70, 70],
        [107, 142, 35],
        [220, 20, 60],
        [119, 11, 32],
        [0, 0, 142],
        [0, 60, 100],
    ];
    /// Colour for a class id, including sky (light blue) and unknown (black).
    pub fn color(id: u8) -> [u8; 3] {
        match id {
            SKY => [70, 130, 180],
            i if (i as usize) < COUNT => COLORS[i as usize],
            _ => [0, 0, 0],
        }
    }
}

/// How a box is textured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    Building,
    Canopy,
    Trunk,
    Car,
    Truck,
    Person,
    TwoWheeler,
    /// Uniform colour (tests).
    Plain,
}

/// An oriented box standing on (or floating above) the ground: footprint centre (x, y),
/// heading `yaw` (radians, about z, 0 = world +x), half extents along its own x (length) and
/// y (width), vertical extent `z0..z1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimBox {
    pub class: u8,
    pub look: Look,
    pub x: f64,
    pub y: f64,
    pub yaw: f64,
    pub half_len: f64,
    pub half_wid: f64,
    pub z0: f64,
    pub z1: f64,
    pub color: [u8; 3],
    pub color2: [u8; 3],
}

impl SimBox {
    /// Whether the ground point (x, y) lies inside the footprint.
    pub fn contains_xy(&self, x: f64, y: f64) -> bool {
        let (s, c) = self.yaw.sin_cos();
        let (dx, dy) = (x - self.x, y - self.y);
        let lx = c * dx + s * dy;
        let ly = -s * dx + c * dy;
        lx.abs() <= self.half_len && ly.abs() <= self.half_wid
    }
    /// The 4 footprint corners.
    pub fn corners_xy(&self) -> [[f64; 2]; 4] {
        let (s, c) = self.yaw.sin_cos();
        let mut out = [[0.0; 2]; 4];
        for (k, (a, b)) in [(1.0, 1.0), (1.0, -1.0), (-1.0, -1.0), (-1.0, 1.0)]
            .iter()
            .enumerate()
        {
            let lx = a * self.half_len;
            let ly = b * self.half_wid;
            out[k] = [self.x + c * lx - s * ly, self.y + s * lx + c * ly];
        }
        out
    }
}

/// Ego vehicle pose in the world at one instant (vehicle frame: x forward, y left, origin on
/// the ground below the camera mount's reference point).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EgoPose {
    pub x: f64,
    pub y: f64,
    /// Heading, radians (0 = world +x, counter-clockwise).
    pub yaw: f64,
    /// Speed, m/s.
    pub speed: f64,
    /// Arc length along the main road, metres.
    pub s: f64,
    /// Seconds since the start of the sequence.
    pub time: f64,
}

impl EgoPose {
    /// Vehicle-frame point to world.
    pub fn to_world(&self, xv: f64, yv: f64) -> (f64, f64) {
        let (s, c) = self.yaw.sin_cos();
        (self.x + c * xv - s * yv, self.y + s * xv + c * yv)
    }
    /// World point to vehicle frame.
    pub fn to_vehicle(&self, xw: f64, yw: f64) -> (f64, f64) {
        let (s, c) = self.yaw.sin_cos();
        let (dx, dy) = (xw - self.x, yw - self.y);
        (c * dx + s * dy, -s * dx + c * dy)
    }
}

/// World generation parameters (all lengths in metres, speeds in m/s).
#[derive(Debug, Clone, PartialEq)]
pub struct WorldConfig {
    /// Length of the main road. The ego loops over it (jumping back near the start).
    pub route_length: f64,
    pub lane_width: f64,
    pub parking_width: f64,
    pub sidewalk_width: f64,
    /// Ego speed: `mean_speed + speed_amplitude * sin(2 pi t / 40 s + phase)`.
    pub mean_speed: f64,
    pub speed_amplitude: f64,
    /// Share of the route lined with buildings (the rest has trees).
    pub urban_fraction: f64,
    /// Spacing of intersections along the main road (min, max).
    pub intersection_spacing: (f64, f64),
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            route_length: 2500.0,
            lane_width: 3.5,
            parking_width: 2.5,
            sidewalk_width: 2.5,
            mean_speed: 11.0,
            speed_amplitude: 3.0,
            urban_fraction: 0.7,
            intersection_spacing: (110.0, 240.0),
        }
    }
}

/// Road surface paint at a ground point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    None,
    White,
    Zebra,
}

/// What lies on the ground at a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ground {
    pub class: u8,
    pub paint: Paint,
}

#[derive(Debug, Clone, Copy)]
struct Seg {
    ax: f32,
    ay: f32,
    dx: f32,
    dy: f32,
    len: f32,
    /// Arc length at `a` along its road.
    s0: f32,
    road: u16,
    hw: f32,
    sw: f32,
    main: bool,
}

#[derive(Debug, Clone, Copy)]
enum Motion {
    Fixed,
    /// Along the main road at lateral offset `lat`; negative speed = against the route.
    Along {
        s0: f64,
        lat: f64,
        speed: f64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Actor {
    bx: SimBox,
    motion: Motion,
}

const ROUTE_STEP: f64 = 1.0;
const GRID_CELL: f32 = 8.0;
const RING_START: f64 = 30.0;
const RING_END_MARGIN: f64 = 220.0;
const SPEED_PERIOD: f64 = 40.0;

/// The generated world.
#[derive(Debug, Clone)]
pub struct World {
    cfg: WorldConfig,
    seed: u64,
    /// Main road samples every metre: (x, y, heading).
    route: Vec<[f64; 3]>,
    segs: Vec<Seg>,
    grid_x0: f32,
    grid_y0: f32,
    grid_nx: usize,
    grid_ny: usize,
    cell_start: Vec<u32>,
    cell_items: Vec<u32>,
    statics: Vec<SimBox>,
    actors: Vec<Actor>,
    intersections: Vec<f64>,
    /// Cross streets: start point, unit direction, length.
    cross: Vec<([f64; 2], [f64; 2], f64)>,
    ego_s0: f64,
    ego_phase: f64,
}

fn wrap_angle(a: f64) -> f64 {
    (a + std::f64::consts::PI).rem_euclid(std::f64::consts::TAU) - std::f64::consts::PI
}

impl World {
    /// A flat world of terrain with no roads, boxes or actors; the ego route is the world x
    /// axis. Add boxes with [`World::push_static`] (tests and custom scenes).
    pub fn flat(seed: u64) -> World {
        let cfg = WorldConfig {
            route_length: 1000.0,
            ..WorldConfig::default()
        };
        let route = (0..=1000)
            .map(|i| [i as f64 * ROUTE_STEP, 0.0, 0.0])
            .collect();
        let mut w = World {
            cfg,
            seed,
            route,
            segs: Vec::new(),
            grid_x0: 0.0,
            grid_y0: 0.0,
            grid_nx: 0,
            grid_ny: 0,
            cell_start: vec![0],
            cell_items: Vec::new(),
            statics: Vec::new(),
            actors: Vec::new(),
            intersections: Vec::new(),
            cross: Vec::new(),
            ego_s0: RING_START,
            ego_phase: 0.0,
        };
        w.build_grid();
        w
    }

    /// Generates the world for `seed`.
    pub fn generate(cfg: &WorldConfig, seed: u64) -> World {
        let mut rng = SplitMix64::new(seed ^ 0x5EED_0FB0_57AB);
        let len = cfg.route_length.max(RING_START + RING_END_MARGIN + 100.0);
        let cfg = WorldConfig {
            route_length: len,
            ..cfg.clone()
        };
        let route = generate_route(&mut rng, len);
        let mut w = World {
            cfg: cfg.clone(),
            seed,
            route,
            segs: Vec::new(),
            grid_x0: 0.0,
            grid_y0: 0.0,
            grid_nx: 0,
            grid_ny: 0,
            cell_start: Vec::new(),
            cell_items: Vec::new(),
            statics: Vec::new(),
            actors: Vec::new(),
            intersections: Vec::new(),
            cross: Vec::new(),
            ego_s0: RING_START + rng.range(0.0, 40.0),
            ego_phase: rng.range(0.0, std::f64::consts::TAU),
        };
        w.push_main_road();
        w.place_intersections(&mut rng);
        w.build_grid();
        w.place_roadside(&mut rng);
        w.place_cross_buildings(&mut rng);
        w.place_actors(&mut rng);
        w
    }

    /// Main road segments (every 2 m).
    fn push_main_road(&mut self) {
        let main_hw = self.cfg.lane_width + self.cfg.parking_width;
        let step = 2usize;
        let mut i = 0;
        while i + step < self.route.len() {
            let a = self.route[i];
            let b = self.route[i + step];
            self.push_seg(
                a,
                b,
                (i as f64) * ROUTE_STEP,
                0,
                main_hw,
                self.cfg.sidewalk_width,
                true,
            );
            i += step;
        }
    }

    /// Intersections: straight cross streets, some T junctions.
    fn place_intersections(&mut self, rng: &mut SplitMix64) {
        let len = self.cfg.route_length;
        let cross_hw = self.cfg.lane_width;
        let mut s = RING_START + self.ego_s0 + rng.range(40.0, 90.0);
        let mut road_id = 1u16;
        while s < len - 60.0 {
            let p = self.route_pose(s);
            let (nx, ny) = (-p[2].sin(), p[2].cos());
            let kind = rng.below(3);
            let left = if kind == 1 {
                0.0
            } else {
                rng.range(60.0, 120.0)
            };
            let right = if kind == 2 {
                0.0
            } else {
                rng.range(60.0, 120.0)
            };
            let a = [p[0] - nx * right, p[1] - ny * right, 0.0];
            let b = [p[0] + nx * left, p[1] + ny * left, 0.0];
            // Ends inside the main road for T junctions.
            let sidewalk = self.cfg.sidewalk_width;
            self.push_seg(a, b, 0.0, road_id, cross_hw, sidewalk, false);
            self.cross.push(([a[0], a[1]], [nx, ny], left + right));
            self.intersections.push(s);
            road_id = road_id.wrapping_add(1).max(1);
            let (lo, hi) = self.cfg.intersection_spacing;
            s += rng.range(lo.max(30.0), hi.max(lo.max(30.0) + 1.0));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push_seg(
        &mut self,
        a: [f64; 3],
        b: [f64; 3],
        s0: f64,
        road: u16,
        hw: f64,
        sw: f64,
        main: bool,
    ) {
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let len = (dx * dx + dy * dy).sqrt();
        if len < 1e-6 {
            return;
        }
        self.segs.push(Seg {
            ax: a[0] as f32,
            ay: a[1] as f32,
            dx: (dx / len) as f32,
            dy: (dy / len) as f32,
            len: len as f32,
            s0: s0 as f32,
            road,
            hw: hw as f32,
            sw: sw as f32,
            main,
        });
    }

    fn build_grid(&mut self) {
        if self.segs.is_empty() {
            self.grid_nx = 0;
            self.grid_ny = 0;
            self.cell_start = vec![0];
            self.cell_items.clear();
            return;
        }
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for s in &self.segs {
            let r = s.hw + s.sw + 1.0;
            let (bx, by) = (s.ax + s.dx * s.len, s.ay + s.dy * s.len);
            x0 = x0.min(s.ax.min(bx) - r);
            y0 = y0.min(s.ay.min(by) - r);
            x1 = x1.max(s.ax.max(bx) + r);
            y1 = y1.max(s.ay.max(by) + r);
        }
        self.grid_x0 = x0;
        self.grid_y0 = y0;
        self.grid_nx = ((x1 - x0) / GRID_CELL).ceil() as usize + 1;
        self.grid_ny = ((y1 - y0) / GRID_CELL).ceil() as usize + 1;
        let ncell = self.grid_nx * self.grid_ny;
        let mut lists: Vec<Vec<u32>> = vec![Vec::new(); ncell];
        for (k, s) in self.segs.iter().enumerate() {
            let r = s.hw + s.sw + 0.5;
            let (bx, by) = (s.ax + s.dx * s.len, s.ay + s.dy * s.len);
            let cx0 = ((s.ax.min(bx) - r - x0) / GRID_CELL).floor().max(0.0) as usize;
            let cy0 = ((s.ay.min(by) - r - y0) / GRID_CELL).floor().max(0.0) as usize;
            let cx1 =
                (((s.ax.max(bx) + r - x0) / GRID_CELL).floor() as usize).min(self.grid_nx - 1);
            let cy1 =
                (((s.ay.max(by) + r - y0) / GRID_CELL).floor() as usize).min(self.grid_ny - 1);
            for cy in cy0..=cy1 {
                for cx in cx0..=cx1 {
                    lists[cy * self.grid_nx + cx].push(k as u32);
                }
            }
        }
        self.cell_start = Vec::with_capacity(ncell + 1);
        self.cell_items.clear();
        self.cell_start.push(0);
        for l in &lists {
            self.cell_items.extend_from_slice(l);
            self.cell_start.push(self.cell_items.len() as u32);
        }
    }

    /// Main-road pose (x, y, heading) at arc length `s` (clamped to the route).
    pub fn route_pose(&self, s: f64) -> [f64; 3] {
        let last = self.route.len() - 1;
        let f = (s / ROUTE_STEP).clamp(0.0, last as f64);
        let i = (f.floor() as usize).min(last.saturating_sub(1));
        let a = self.route[i];
        let b = self.route[(i + 1).min(last)];
        let u = f - i as f64;
        let dh = wrap_angle(b[2] - a[2]);
        [
            a[0] + (b[0] - a[0]) * u,
            a[1] + (b[1] - a[1]) * u,
            a[2] + dh * u,
        ]
    }

    fn along(&self, s: f64, lat: f64) -> (f64, f64, f64) {
        let p = self.route_pose(s);
        let (sn, cs) = p[2].sin_cos();
        (p[0] - sn * lat, p[1] + cs * lat, p[2])
    }

    fn ring_len(&self) -> f64 {
        (self.cfg.route_length - RING_START - RING_END_MARGIN).max(1.0)
    }

    fn ring(&self, s: f64) -> f64 {
        RING_START + (s - RING_START).rem_euclid(self.ring_len())
    }

    /// Ego pose at `time` seconds: right lane of the main road, speed varying smoothly
    /// between `mean_speed -+ speed_amplitude` (period 40 s), slight lane-keeping sway.
    pub fn ego_pose(&self, time: f64) -> EgoPose {
        let (vm, a) = (self.cfg.mean_speed, self.cfg.speed_amplitude);
        let w = std::f64::consts::TAU / SPEED_PERIOD;
        let ph = self.ego_phase;
        let dist = vm * time - a / w * ((w * time + ph).cos() - ph.cos());
        let s = self.ring(self.ego_s0 + dist);
        let lat = -0.5 * self.cfg.lane_width + 0.15 * (0.4 * time).sin();
        let (x, y, yaw) = self.along(s, lat);
        EgoPose {
            x,
            y,
            yaw,
            speed: vm + a * (w * time + ph).sin(),
            s,
            time,
        }
    }

    /// The ground (class and paint) at world (x, y).
    #[inline]
    pub fn ground_at(&self, x: f32, y: f32) -> Ground {
        let terrain = Ground {
            class: class::TERRAIN,
            paint: Paint::None,
        };
        if self.grid_nx == 0 {
            return terrain;
        }
        let cx = ((x - self.grid_x0) / GRID_CELL).floor();
        let cy = ((y - self.grid_y0) / GRID_CELL).floor();
        if cx < 0.0 || cy < 0.0 || cx >= self.grid_nx as f32 || cy >= self.grid_ny as f32 {
            return terrain;
        }
        let c = cy as usize * self.grid_nx + cx as usize;
        let items = &self.cell_items[self.cell_start[c] as usize..self.cell_start[c + 1] as usize];
        let mut road: Option<(u16, f32, f32, bool)> = None;
        let mut multi = false;
        let mut side = false;
        for &k in items {
            let s = &self.segs[k as usize];
            let rx = x - s.ax;
            let ry = y - s.ay;
            let t = rx * s.dx + ry * s.dy;
            let tc = t.clamp(0.0, s.len);
            let px = rx - tc * s.dx;
            let py = ry - tc * s.dy;
            let d2 = px * px + py * py;
            if d2 < s.hw * s.hw {
                match road {
                    None => road = Some((s.road, s.dx * ry - s.dy * rx, s.s0 + t, s.main)),
                    Some((r, ..)) if r != s.road => multi = true,
                    _ => {}
                }
            } else {
                let o = s.hw + s.sw;
                if d2 < o * o {
                    side = true;
                }
            }
        }
        match road {
            Some((_, l, a, main)) => {
                let lw = self.cfg.lane_width as f32;
                let paint = if multi {
                    Paint::None
                } else {
                    let la = l.abs();
                    let centre = la < 0.075 && a.rem_euclid(9.0) < 3.0;
                    let lane_edge = main && (la - lw).abs() < 0.075;
                    if centre || lane_edge {
                        Paint::White
                    } else {
                        Paint::None
                    }
                };
                let paint = if paint == Paint::None && main && !multi {
                    self.zebra(a, l, lw)
                } else {
                    paint
                };
                Ground {
                    class: class::ROAD,
                    paint,
                }
            }
            None if side => Ground {
                class: class::SIDEWALK,
                paint: Paint::None,
            },
            None => terrain,
        }
    }

    /// Zebra crossing on the main road just before and after each intersection.
    #[inline]
    fn zebra(&self, a: f32, l: f32, lw: f32) -> Paint {
        if l.abs() > lw {
            return Paint::None;
        }
        let a = a as f64;
        let i = self.intersections.partition_point(|&s| s < a - 12.0);
        if let Some(&s) = self.intersections.get(i) {
            let d = (a - s).abs();
            if (self.cfg.lane_width + 1.0..self.cfg.lane_width + 4.0).contains(&d)
                && (l + 10.0).rem_euclid(1.0) < 0.5
            {
                return Paint::Zebra;
            }
        }
        Paint::None
    }

    /// Whether the whole footprint (sampled every <= 2 m, edges included) is terrain.
    fn is_clear_terrain(&self, b: &SimBox) -> bool {
        let (s, c) = b.yaw.sin_cos();
        let nx = (b.half_len).ceil().max(1.0) as i32;
        let ny = (b.half_wid).ceil().max(1.0) as i32;
        for i in -nx..=nx {
            for j in -ny..=ny {
                let lx = b.half_len * i as f64 / nx as f64;
                let ly = b.half_wid * j as f64 / ny as f64;
                let (x, y) = (b.x + c * lx - s * ly, b.y + s * lx + c * ly);
                if self.ground_at(x as f32, y as f32).class != class::TERRAIN {
                    return false;
                }
            }
        }
        true
    }

    fn near_intersection(&self, s: f64, d: f64) -> bool {
        self.intersections.iter().any(|&i| (i - s).abs() < d)
    }

    fn place_roadside(&mut self, rng: &mut SplitMix64) {
        let hw = self.cfg.lane_width + self.cfg.parking_width;
        let edge = hw + self.cfg.sidewalk_width;
        let facades: [[u8; 3]; 8] = [
            [176, 160, 140],
            [150, 120, 100],
            [200, 190, 170],
            [120, 110, 105],
            [170, 90, 70],
            [210, 200, 185],
            [140, 150, 160],
            [185, 170, 120],
        ];
        let len = self.cfg.route_length;
        for side in [-1.0f64, 1.0] {
            let mut s = 0.0;
            let mut urban = rng.chance(self.cfg.urban_fraction);
            let mut zone_end = rng.range(150.0, 300.0);
            while s < len {
                if s > zone_end {
                    urban = rng.chance(self.cfg.urban_fraction);
                    zone_end = s + rng.range(150.0, 300.0);
                }
                if urban {
                    let front = rng.range(8.0, 24.0);
                    let depth = rng.range(8.0, 16.0);
                    let setback = rng.range(0.6, 4.0);
                    let sm = s + front * 0.5;
                    let (x, y, yaw) = self.along(sm, side * (edge + setback + depth * 0.5));
                    let fi = rng.below(facades.len() as u64) as usize;
                    let b = SimBox {
                        class: class::BUILDING,
                        look: Look::Building,
                        x,
                        y,
                        yaw,
                        half_len: front * 0.5,
                        half_wid: depth * 0.5,
                        z0: 0.0,
                        z1: rng.range(4.5, 24.0),
                        color: facades[fi],
                        color2: [
                            rng.range(40.0, 90.0) as u8,
                            rng.range(50.0, 90.0) as u8,
                            110,
                        ],
                    };
                    if self.is_clear_terrain(&b) {
                        self.statics.push(b);
                    }
                    s += front
                        + if rng.chance(0.3) {
                            rng.range(2.0, 10.0)
                        } else {
                            0.3
                        };
                } else {
                    let lat = side * (edge + rng.range(1.0, 9.0));
                    let (x, y, _) = self.along(s, lat);
                    let r = rng.range(1.2, 2.6);
                    let top = rng.range(4.5, 9.0);
                    let green = [
                        rng.range(40.0, 80.0) as u8,
                        rng.range(90.0, 130.0) as u8,
                        rng.range(30.0, 55.0) as u8,
                    ];
                    let canopy = SimBox {
                        class: class::TERRAIN,
                        look: Look::Canopy,
                        x,
                        y,
                        yaw: rng.range(0.0, 1.5),
                        half_len: r,
                        half_wid: r,
                        z0: rng.range(1.8, 2.6),
                        z1: top,
                        color: green,
                        color2: green,
                    };
                    let trunk = SimBox {
                        look: Look::Trunk,
                        half_len: 0.18,
                        half_wid: 0.18,
                        z0: 0.0,
                        z1: canopy.z0 + 0.3,
                        color: [95, 70, 50],
                        ..canopy
                    };
                    if self.is_clear_terrain(&canopy) {
                        self.statics.push(trunk);
                        self.statics.push(canopy);
                    }
                    s += rng.range(5.0, 14.0);
                }
            }
        }
    }

    /// Buildings along the cross streets (where they do not overlap the road, sidewalks or
    /// other buildings).
    fn place_cross_buildings(&mut self, rng: &mut SplitMix64) {
        let edge = self.cfg.lane_width + self.cfg.sidewalk_width;
        let cross = self.cross.clone();
        for (a, d, len) in cross {
            let yaw = d[1].atan2(d[0]);
            for side in [-1.0f64, 1.0] {
                let mut u = rng.range(0.0, 6.0);
                while u < len {
                    let front = rng.range(8.0, 20.0);
                    let depth = rng.range(8.0, 14.0);
                    let off = side * (edge + rng.range(0.6, 3.0) + depth * 0.5);
                    let um = u + front * 0.5;
                    let g = rng.range(140.0, 210.0);
                    let b = SimBox {
                        class: class::BUILDING,
                        look: Look::Building,
                        x: a[0] + d[0] * um - d[1] * off,
                        y: a[1] + d[1] * um + d[0] * off,
                        yaw,
                        half_len: front * 0.5,
                        half_wid: depth * 0.5,
                        z0: 0.0,
                        z1: rng.range(4.5, 18.0),
                        color: [g as u8, (g * 0.92) as u8, (g * 0.8) as u8],
                        color2: [50, 65, 110],
                    };
                    if rng.chance(0.8) && self.is_clear_terrain(&b) && !self.overlaps_static(&b) {
                        self.statics.push(b);
                    }
                    u += front + rng.range(0.3, 6.0);
                }
            }
        }
    }

    fn overlaps_static(&self, b: &SimBox) -> bool {
        let r = b.half_len.hypot(b.half_wid);
        self.statics.iter().any(|o| {
            let ro = o.half_len.hypot(o.half_wid);
            if (o.x - b.x).hypot(o.y - b.y) > r + ro {
                return false;
            }
            // Sample both footprints against each other.
            let inside = |p: &SimBox, q: &SimBox| {
                let (s, c) = p.yaw.sin_cos();
                (-4..=4).any(|i| {
                    (-4..=4).any(|j| {
                        let lx = p.half_len * i as f64 / 4.0;
                        let ly = p.half_wid * j as f64 / 4.0;
                        q.contains_xy(p.x + c * lx - s * ly, p.y + s * lx + c * ly)
                    })
                })
            };
            inside(b, o) || inside(o, b)
        })
    }

    fn place_actors(&mut self, rng: &mut SplitMix64) {
        let hw = self.cfg.lane_width + self.cfg.parking_width;
        let ring = self.ring_len();
        self.place_parked(rng, hw);
        self.place_traffic(rng, ring);
        self.place_pedestrians(rng, hw, ring);
    }

    /// Parked vehicles in both parking lanes (`hw`: half width of the main road).
    fn place_parked(&mut self, rng: &mut SplitMix64, hw: f64) {
        let len = self.cfg.route_length;
        for side in [-1.0f64, 1.0] {
            let mut s = rng.range(5.0, 20.0);
            while s < len - 10.0 {
                if rng.chance(0.55) && !self.near_intersection(s, 14.0) {
                    let r = rng.next_f64();
                    let cls = if r < 0.8 {
                        class::CAR
                    } else if r < 0.9 {
                        class::TRUCK
                    } else {
                        class::TWO_WHEELER
                    };
                    let mut b = actor_box(rng, cls);
                    let lat = side * (hw - self.cfg.parking_width * 0.5 + rng.range(-0.15, 0.15));
                    let (x, y, yaw) = self.along(s, lat);
                    b.x = x;
                    b.y = y;
                    b.yaw =
                        yaw + if side > 0.0 {
                            std::f64::consts::PI
                        } else {
                            0.0
                        } + rng.range(-0.04, 0.04);
                    self.actors.push(Actor {
                        bx: b,
                        motion: Motion::Fixed,
                    });
                    s += b.half_len * 2.0 + rng.range(0.8, 3.0);
                } else {
                    s += rng.range(3.0, 12.0);
                }
            }
        }
    }

    /// Moving traffic on the ring: lead traffic in the ego lane, then oncoming traffic.
    fn place_traffic(&mut self, rng: &mut SplitMix64, ring: f64) {
        let lw = self.cfg.lane_width;
        let vm = self.cfg.mean_speed;
        // Lead traffic in the ego lane: same mean speed as the ego, never closer than ~12 m.
        let start = rng.range(45.0, 70.0);
        let lead = TrafficLane {
            end: ring - 60.0,
            s0: self.ego_s0,
            p: [0.75, 0.9],
            lat: [-0.5 * lw, -0.7 * lw],
            speed: vm,
            gap: [45.0, 140.0],
        };
        lead.fill(rng, &mut self.actors, start);
        // Oncoming traffic: one speed so vehicles never overlap.
        let start = rng.range(0.0, 30.0);
        let oncoming = TrafficLane {
            end: ring,
            s0: RING_START,
            p: [0.7, 0.85],
            lat: [0.5 * lw, 0.85 * lw],
            speed: -vm,
            gap: [20.0, 70.0],
        };
        oncoming.fill(rng, &mut self.actors, start);
    }

    /// Pedestrians on both sidewalks, walking either way (`hw`: half width of the main road).
    fn place_pedestrians(&mut self, rng: &mut SplitMix64, hw: f64, ring: f64) {
        for side in [-1.0f64, 1.0] {
            let mut s = rng.range(0.0, 10.0);
            while s < ring {
                let b = actor_box(rng, class::PERSON);
                let lat = side * (hw + self.cfg.sidewalk_width * rng.range(0.25, 0.75));
                let speed = if rng.chance(0.5) { 1.0 } else { -1.0 } * rng.range(0.9, 1.6);
                self.actors.push(Actor {
                    bx: b,
                    motion: Motion::Along {
                        s0: RING_START + s,
                        lat,
                        speed,
                    },
                });
                s += rng.range(4.0, 30.0);
            }
        }
    }

    /// Adds a static box (custom scenes, tests).
    pub fn push_static(&mut self, b: SimBox) {
        self.statics.push(b);
    }

    /// Every box (static and actors at `time`) whose footprint centre lies within `radius` of
    /// (cx, cy), appended to `out` (cleared first).
    pub fn boxes_at(&self, time: f64, cx: f64, cy: f64, radius: f64, out: &mut Vec<SimBox>) {
        out.clear();
        let near = |b: &SimBox| {
            let (dx, dy) = (b.x - cx, b.y - cy);
            let rr = radius.max(0.0) + b.half_len.max(b.half_wid);
            dx * dx + dy * dy < rr * rr
        };
        for b in &self.statics {
            if near(b) {
                out.push(*b);
            }
        }
        for a in &self.actors {
            let mut b = a.bx;
            if let Motion::Along { s0, lat, speed } = a.motion {
                let s = self.ring(s0 + speed * time);
                let (x, y, yaw) = self.along(s, lat);
                b.x = x;
                b.y = y;
                b.yaw = if speed < 0.0 {
                    yaw + std::f64::consts::PI
                } else {
                    yaw
                };
            }
            if near(&b) {
                out.push(b);
            }
        }
    }

    pub fn config(&self) -> &WorldConfig {
        &self.cfg
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// Arc lengths of the intersections along the main road.
    pub fn intersections(&self) -> &[f64] {
        &self.intersections
    }
    pub fn static_boxes(&self) -> &[SimBox] {
        &self.statics
    }
    pub fn actor_count(&self) -> usize {
        self.actors.len()
    }
}

/// Main road: piecewise-constant curvature, heading kept within +-50 degrees; one
/// (x, y, heading) every `ROUTE_STEP` metres over `len`.
fn generate_route(rng: &mut SplitMix64, len: f64) -> Vec<[f64; 3]> {
    let n = (len / ROUTE_STEP).ceil() as usize + 1;
    let mut route = Vec::with_capacity(n);
    let (mut x, mut y, mut h) = (0.0f64, 0.0f64, 0.0f64);
    let mut piece_left = 0.0;
    let mut kappa = 0.0;
    for i in 0..n {
        route.push([x, y, h]);
        if piece_left <= 0.0 {
            if i < 80 || rng.chance(0.45) {
                kappa = 0.0;
                piece_left = rng.range(60.0, 180.0);
            } else {
                let r = rng.range(70.0, 300.0);
                let mut sign = if rng.chance(0.5) { 1.0 } else { -1.0 };
                if h.abs() > 0.5 {
                    sign = -h.signum();
                }
                kappa = sign / r;
                piece_left = rng.range(40.0, 110.0);
            }
        }
        piece_left -= ROUTE_STEP;
        if (h + kappa * ROUTE_STEP).abs() > 0.87 {
            kappa = 0.0;
        }
        let hm = h + 0.5 * kappa * ROUTE_STEP;
        x += hm.cos() * ROUTE_STEP;
        y += hm.sin() * ROUTE_STEP;
        h += kappa * ROUTE_STEP;
    }
    route
}

/// Body colours of vehicles.
const CAR_COLORS: [[u8; 3]; 9] = [
    [235, 235, 235],
    [170, 172, 178],
    [30, 30, 34],
    [160, 25, 25],
    [30, 60, 140],
    [70, 75, 80],
    [120, 130, 60],
    [200, 160, 40],
    [90, 20, 30],
];

/// A box of class `cls` with drawn size and colours, at the origin (the caller places it).
fn actor_box(rng: &mut SplitMix64, cls: u8) -> SimBox {
    let color = CAR_COLORS[rng.below(CAR_COLORS.len() as u64) as usize];
    let color2 = [
        rng.range(30.0, 220.0) as u8,
        rng.range(30.0, 220.0) as u8,
        rng.range(30.0, 220.0) as u8,
    ];
    let (l, w, h, look) = match cls {
        class::CAR => (
            rng.range(3.9, 4.9),
            rng.range(1.7, 1.9),
            rng.range(1.4, 1.65),
            Look::Car,
        ),
        class::TRUCK => (rng.range(7.0, 11.0), 2.5, rng.range(3.0, 3.8), Look::Truck),
        class::TWO_WHEELER => (1.9, 0.7, 1.6, Look::TwoWheeler),
        _ => (0.45, 0.55, rng.range(1.55, 1.9), Look::Person),
    };
    SimBox {
        class: cls,
        look,
        x: 0.0,
        y: 0.0,
        yaw: 0.0,
        half_len: l * 0.5,
        half_wid: w * 0.5,
        z0: 0.0,
        z1: h,
        color,
        color2,
    }
}

/// Moving traffic in one lane up to `end`: class by cumulative car/truck probabilities `p`
/// (the rest two-wheelers), lane offset `lat` (vehicle, two-wheeler), gaps drawn from `gap`,
/// route positions counted from `s0`.
struct TrafficLane {
    end: f64,
    s0: f64,
    p: [f64; 2],
    lat: [f64; 2],
    speed: f64,
    gap: [f64; 2],
}

impl TrafficLane {
    /// Vehicles from `s` on, one gap apart.
    fn fill(&self, rng: &mut SplitMix64, actors: &mut Vec<Actor>, mut s: f64) {
        while s < self.end {
            let r = rng.next_f64();
            let cls = if r < self.p[0] {
                class::CAR
            } else if r < self.p[1] {
                class::TRUCK
            } else {
                class::TWO_WHEELER
            };
            let b = actor_box(rng, cls);
            let lat = if cls == class::TWO_WHEELER {
                self.lat[1]
            } else {
                self.lat[0]
            };
            actors.push(Actor {
                bx: b,
                motion: Motion::Along {
                    s0: self.s0 + s,
                    lat,
                    speed: self.speed,
                },
            });
            s += rng.range(self.gap[0], self.gap[1]);
        }
    }
}
