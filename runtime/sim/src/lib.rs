//! bevrt-sim: a seeded, deterministic synthetic driving world and a simulated front camera.
//!
//! | module | what |
//! |---|---|
//! | [`world`] | procedural 2.5D world: curved main road with lanes and markings, cross streets, sidewalks, terrain, buildings, trees, parked and moving cars / trucks / two-wheelers, pedestrians; ego route and speed |
//! | [`render`] | per-pixel ray caster through the calibrated camera: RGB8, depth, labels; BEV ground truth with visibility |
//! | [`record`] | writes N frames in the replay recording format of `runtime/src/source/replay.rs` |
//! | [`rng`] | SplitMix64 and hashes (no `rand`) |
//! | `config` | [`SimConfig`]: camera, extrinsics, BEV grid, world, noise; defaults and validation |
//! | `simulator` | [`Simulator`]: the world, the ego trajectory and the renderer, one call per frame |
//! | `error` | [`SimError`] |
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

mod config;
mod error;
pub mod record;
pub mod render;
pub mod rng;
mod simulator;
pub mod world;

pub use config::SimConfig;
pub use error::SimError;
pub use record::{RecordOptions, RecordSummary, record, right_of};
pub use render::{Renderer, colorize};
pub use simulator::Simulator;
pub use world::{EgoPose, Look, SimBox, World, WorldConfig, class};
