//! bevrt-calib: camera models, calibration and BEV geometry.
//!
//! | module | what |
//! |---|---|
//! | [`camera`] | [`CameraModel`]: pinhole + plumb_bob, equidistant fisheye; project / unproject with Jacobians |
//! | [`yaml`] | ROS camera_info YAML (read/write), OpenCV FileStorage YAML (read) |
//! | [`extrinsics`] | [`Extrinsics`]: camera-to-vehicle SE(3), TOML, ground plane, PnP from ground points |
//! | [`calibration`] | [`Calibration`]: camera + extrinsics bundle in TOML |
//! | [`chessboard`] | chessboard corner detection and `cornerSubPix`-style refinement |
//! | [`calibrate`](mod@calibrate) | Zhang init + Levenberg-Marquardt intrinsic calibration |
//! | [`bev`] | [`BevGrid`], [`SamplingTable`] (layout contract), CPU [`view_transform`] and depth-weighted [`lift`] ([`DepthBins`]) |
//! | [`remap`] | undistortion and inverse-perspective-mapping remap tables |
//! | [`imgproc`] | minimal grayscale image type |
//! | [`geom`] | homographies and planar pose |
//!
//! Frames: camera = OpenCV (x right, y down, z forward); vehicle = x forward, y left, z up,
//! origin on the ground.

pub mod bev;
pub mod calibrate;
pub mod calibration;
pub mod camera;
pub mod chessboard;
pub mod error;
pub mod extrinsics;
pub mod geom;
pub mod imgproc;
pub mod pipeline;
pub mod remap;
pub mod yaml;

pub use bev::{
    BevGrid, DepthBins, DepthSpacing, LiftScratch, SampleTap, SamplingTable, lift, view_transform,
};
pub use calibrate::{CalibOptions, CalibResult, ModelKind, View, board_points, calibrate};
pub use calibration::Calibration;
pub use camera::{CameraModel, Distortion};
pub use chessboard::{DetectError, find_chessboard};
pub use error::CalibError;
pub use extrinsics::Extrinsics;
pub use imgproc::GrayImage;
pub use yaml::{camera_from_ros, load_camera_yaml, save_ros_yaml};
