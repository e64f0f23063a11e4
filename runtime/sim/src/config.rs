//! [`SimConfig`]: everything that defines a simulated sequence, its defaults and checks.

use bevrt_calib::{BevGrid, Calibration, CameraModel, Extrinsics};

use crate::error::SimError;
use crate::world::WorldConfig;

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
