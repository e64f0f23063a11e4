//! ROS 2 messages on the wire (CDR) and in MCAP files: what the `mcap:` source reads and the
//! MCAP sink and `sim record --format mcap` write.
//!
//! - [`cdr`]: the encoding, a bounds-checked reader and a writer into a reused buffer;
//! - [`msgs`]: Image, CompressedImage, CameraInfo, TFMessage, Odometry, OccupancyGrid, with
//!   their `ros2msg` schema texts;
//! - [`bag`]: an MCAP writer for those messages and the image / calibration / transform
//!   conventions both directions share.

pub mod bag;
pub mod cdr;
pub mod msgs;
