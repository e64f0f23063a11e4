//! bevrt-sim: a seeded, deterministic synthetic driving world and a simulated front camera.
//!
//! | module | what |
//! |---|---|
//! | [`world`] | procedural 2.5D world: curved main road with lanes and markings, cross streets, sidewalks, terrain, buildings, trees, parked and moving cars / trucks / two-wheelers, pedestrians; ego route and speed |
//! | [`render`] | per-pixel ray caster through the calibrated camera: RGB8, depth, labels; BEV ground truth with visibility |
//! | [`record`] | writes N frames in the replay recording format of `runtime/src/source/replay.rs` |
//! | [`rng`] | SplitMix64 and hashes (no `rand`) |
//!
//! Classes (per-pixel labels and BEV): road=0, sidewalk=1, building=2, terrain=3 (incl.
//! vegetation), person=4, 2-wheeler=5, car=6, truck=7; 254 = sky (labels only), 255 =
//! unknown / not visible (BEV) or a pixel outside the lens model's range.
//!
//! ```no_run
//! let mut sim = bevrt_sim::Simulator::new(bevrt_sim::SimConfig::default()).unwrap();
//! let mut rgb = vec![0u8; sim.frame_bytes()];
//! let pose = sim.render_frame(0, &mut rgb).unwrap();
//! let bev = sim.bev_ground_truth();
//! # let _ = (pose, bev);
//! ```

pub mod record;
pub mod render;
pub mod rng;
pub mod world;

use std::path::PathBuf;

use bevrt_calib::{BevGrid, CalibError, Calibration, CameraModel, Extrinsics};

pub use record::{RecordOptions, RecordSummary, record, right_of};
pub use render::{Renderer, colorize};
pub use world::{EgoPose, Look, SimBox, World, WorldConfig, class};

/// Errors of the simulator; messages name the field or file that was wrong.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("sim config: field `{field}`: {msg}")]
    Config { field: String, msg: String },
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error("buffer `{what}`: expected {expected} bytes, got {got}")]
    Buffer {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error(transparent)]
    Calib(#[from] CalibError),
}

impl SimError {
    pub(crate) fn config(field: &str, msg: impl Into<String>) -> Self {
        SimError::Config {
            field: field.to_string(),
            msg: msg.into(),
        }
    }
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        SimError::Io {
            path: path.to_path_buf(),
            msg: e.to_string(),
        }
    }
}

/// Everything that defines a simulated sequence.
///
/// Defaults: a 384x128 pinhole camera, fx = fy = 192 (horizontal FOV ~90 degrees), principal
/// point at the centre, mild barrel distortion k1 = -0.05, mounted 1.5 m above the ground at
/// the vehicle origin, pitched 4 degrees down; BEV grid x 0..40 m, y -20..20 m, cell 0.25 m
/// (160 x 160), z_levels [0, 1]; 10 fps; sensor noise sigma 2 DN; boxes drawn to 200 m.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub seed: u64,
    /// Frame rate: frame `n` is at time `n / fps` seconds.
    pub fps: f64,
    pub camera: CameraModel,
    pub extrinsics: Extrinsics,
    pub grid: BevGrid,
    pub world: WorldConfig,
    /// Sensor noise (8-bit DN, about one standard deviation); 0 disables it.
    pub noise_sigma: f32,
    /// Boxes farther than this from the camera are not drawn (metres).
    pub max_distance: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            fps: 10.0,
            camera: default_camera(384, 128),
            extrinsics: Extrinsics::from_angles(0.0, 0.0, 1.5, 4.0, 0.0, 0.0),
            grid: BevGrid {
                x_min: 0.0,
                x_max: 40.0,
                y_min: -20.0,
                y_max: 20.0,
                cell: 0.25,
                z_levels: vec![0.0, 1.0],
                depth: None,
            },
            world: WorldConfig::default(),
            noise_sigma: 2.0,
            max_distance: 200.0,
        }
    }
}

fn default_camera(w: u32, h: u32) -> CameraModel {
    CameraModel::pinhole(
        384,
        128,
        192.0,
        192.0,
        191.5,
        63.5,
        [-0.05, 0.0, 0.0, 0.0, 0.0],
    )
    .expect("default camera is valid")
    .scaled(w, h)
}

impl SimConfig {
    /// The default config with another seed.
    pub fn with_seed(seed: u64) -> Self {
        SimConfig {
            seed,
            ..SimConfig::default()
        }
    }
    /// The same camera at another resolution (intrinsics scaled). Fails on a zero or
    /// oversized resolution.
    pub fn with_size(mut self, width: u32, height: u32) -> Result<Self, SimError> {
        if width == 0 || height == 0 || width > 8192 || height > 8192 {
            return Err(SimError::config(
                "width/height",
                format!("{width}x{height} is not a usable size (1..=8192)"),
            ));
        }
        self.camera = self.camera.scaled(width, height);
        Ok(self)
    }
    pub fn width(&self) -> u32 {
        self.camera.width()
    }
    pub fn height(&self) -> u32 {
        self.camera.height()
    }
    /// Camera + extrinsics, as saved next to a recording.
    pub fn calibration(&self) -> Calibration {
        Calibration {
            camera: self.camera.clone(),
            extrinsics: self.extrinsics,
        }
    }
    pub fn validate(&self) -> Result<(), SimError> {
        if !(self.fps.is_finite() && self.fps > 0.0) {
            return Err(SimError::config(
                "fps",
                format!("must be > 0, got {}", self.fps),
            ));
        }
        let w = &self.world;
        for (n, v) in [
            ("world.route_length", w.route_length),
            ("world.lane_width", w.lane_width),
            ("world.parking_width", w.parking_width),
            ("world.sidewalk_width", w.sidewalk_width),
            ("world.mean_speed", w.mean_speed),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(SimError::config(n, format!("must be > 0, got {v}")));
            }
        }
        if w.route_length > 100_000.0 {
            return Err(SimError::config("world.route_length", "at most 100 km"));
        }
        if !(w.speed_amplitude.is_finite() && w.speed_amplitude >= 0.0) {
            return Err(SimError::config("world.speed_amplitude", "must be >= 0"));
        }
        if w.speed_amplitude >= w.mean_speed {
            return Err(SimError::config(
                "world.speed_amplitude",
                "must be below mean_speed (the ego never reverses)",
            ));
        }
        let (lo, hi) = w.intersection_spacing;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && hi >= lo) {
            return Err(SimError::config(
                "world.intersection_spacing",
                "need 0 < min <= max",
            ));
        }
        if !(0.0..=1.0).contains(&w.urban_fraction) {
            return Err(SimError::config("world.urban_fraction", "must be in 0..=1"));
        }
        self.grid.validate()?;
        Ok(())
    }
}

/// A world, its ego trajectory and the camera renderer: one call per frame.
#[derive(Debug, Clone)]
pub struct Simulator {
    cfg: SimConfig,
    world: World,
    renderer: Renderer,
    pose: EgoPose,
}

impl Simulator {
    /// Generates the world (a few ms) and prepares the renderer.
    pub fn new(cfg: SimConfig) -> Result<Simulator, SimError> {
        cfg.validate()?;
        let world = World::generate(&cfg.world, cfg.seed);
        Self::with_world(cfg, world)
    }

    /// A simulator over a given world (e.g. [`World::flat`] with custom boxes).
    pub fn with_world(cfg: SimConfig, world: World) -> Result<Simulator, SimError> {
        cfg.validate()?;
        let renderer = Renderer::new(
            &cfg.camera,
            &cfg.extrinsics,
            &cfg.grid,
            cfg.seed,
            cfg.noise_sigma,
            cfg.max_distance,
        )?;
        Ok(Simulator {
            cfg,
            world,
            renderer,
            pose: EgoPose::default(),
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }
    pub fn world(&self) -> &World {
        &self.world
    }
    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }
    /// Bytes of one RGB8 frame.
    pub fn frame_bytes(&self) -> usize {
        self.cfg.width() as usize * self.cfg.height() as usize * 3
    }
    /// Time of frame `n` in seconds.
    pub fn frame_time(&self, frame: u64) -> f64 {
        frame as f64 / self.cfg.fps
    }
    /// Timestamp of frame `n` in nanoseconds.
    pub fn frame_timestamp_ns(&self, frame: u64) -> u64 {
        (frame as f64 * 1e9 / self.cfg.fps).round() as u64
    }
    /// Ego pose of frame `n`.
    pub fn ego_pose(&self, frame: u64) -> EgoPose {
        self.world.ego_pose(self.frame_time(frame))
    }

    /// Renders frame `n` into `rgb` (width*height*3 bytes, RGB8) and returns its ego pose.
    /// Deterministic: the same config and frame index give the same bytes.
    pub fn render_frame(&mut self, frame: u64, rgb: &mut [u8]) -> Result<EgoPose, SimError> {
        let pose = self.ego_pose(frame);
        self.render_pose(&pose, frame, rgb)?;
        Ok(pose)
    }

    /// Renders from an explicit pose (`frame` seeds the sensor noise; `pose.time` places the
    /// actors and the light).
    pub fn render_pose(
        &mut self,
        pose: &EgoPose,
        frame: u64,
        rgb: &mut [u8],
    ) -> Result<(), SimError> {
        self.renderer.render_into(&self.world, pose, frame, rgb)?;
        self.pose = *pose;
        Ok(())
    }

    /// Depth (metres along the optical axis) of the last frame; infinity for sky.
    pub fn depth(&self) -> &[f32] {
        self.renderer.depth()
    }
    /// Per-pixel labels of the last frame.
    pub fn labels(&self) -> &[u8] {
        self.renderer.labels()
    }
    /// BEV ground truth of the last frame (see [`Renderer::bev_ground_truth`] for the
    /// visibility rule).
    pub fn bev_ground_truth(&mut self) -> &[u8] {
        self.renderer.bev_ground_truth(&self.world)
    }
    /// The amodal BEV of the last frame (every cell's true class, seen or hidden), valid
    /// after [`Simulator::bev_ground_truth`].
    pub fn bev_amodal(&self) -> &[u8] {
        self.renderer.bev_amodal()
    }
    /// Pose of the last rendered frame.
    pub fn last_pose(&self) -> EgoPose {
        self.pose
    }
}
