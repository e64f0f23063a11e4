//! [`Simulator`]: a world, its ego trajectory and the camera renderer, one call per frame.

use crate::config::SimConfig;
use crate::error::SimError;
use crate::render::Renderer;
use crate::world::{EgoPose, World};

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
