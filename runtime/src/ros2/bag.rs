//! Writing ROS 2 bags (MCAP, `ros2msg` schemas, CDR messages), and the conventions shared by
//! reading and writing them: image encodings, camera calibration, transforms, the BEV grid's
//! placement under the vehicle.
//!
//! Frames: the vehicle frame is `base_link` (x forward, y left, z up, REP-103; bevrt's vehicle
//! frame, origin on the ground); the camera frame is an *optical* frame (x right, y down,
//! z forward), bevrt's camera frame. A `tf_static` transform `base_link → camera_optical` is
//! therefore exactly bevrt's camera-to-vehicle extrinsics.

use super::msgs::{self, MsgType};
use crate::frame::PixelFormat;
use nalgebra::{Isometry3, Quaternion, Translation3, UnitQuaternion, Vector3};
use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

pub const VEHICLE_FRAME: &str = "base_link";
pub const CAMERA_FRAME: &str = "camera_optical";

/// The ROS image encoding of a pixel format.
pub fn ros_encoding(f: PixelFormat) -> &'static str {
    match f {
        PixelFormat::Rgb8 => "rgb8",
        PixelFormat::Bgr8 => "bgr8",
        PixelFormat::Gray8 => "mono8",
        PixelFormat::Yuyv => "yuv422_yuy2",
        PixelFormat::Nv12 => "nv12",
    }
}

/// The pixel format of a ROS image encoding, if bevrt reads it.
pub fn pixel_format(encoding: &str) -> Option<PixelFormat> {
    Some(match encoding.to_ascii_lowercase().as_str() {
        "rgb8" => PixelFormat::Rgb8,
        "bgr8" => PixelFormat::Bgr8,
        "mono8" | "8uc1" => PixelFormat::Gray8,
        "yuv422_yuy2" | "yuyv" | "yuy2" => PixelFormat::Yuyv,
        "nv12" => PixelFormat::Nv12,
        _ => return None,
    })
}

/// Encodings named in errors, so a user sees what would work.
pub const READABLE_ENCODINGS: &str = "rgb8, bgr8, mono8, yuv422_yuy2 (yuyv), nv12";

/// A `tf` transform as a rigid motion `parent_T_child`.
pub fn isometry(translation: [f64; 3], rotation_xyzw: [f64; 4]) -> Option<Isometry3<f64>> {
    let [x, y, z, w] = rotation_xyzw;
    let q = Quaternion::new(w, x, y, z);
    let n = q.norm();
    if !(n.is_finite() && (n - 1.0).abs() < 1e-3) || translation.iter().any(|v| !v.is_finite()) {
        return None;
    }
    Some(Isometry3::from_parts(
        Translation3::from(Vector3::from(translation)),
        UnitQuaternion::from_quaternion(q),
    ))
}

/// Rotation as (x, y, z, w), translation as (x, y, z).
pub fn tf_parts(t: &Isometry3<f64>) -> ([f64; 3], [f64; 4]) {
    let q = t.rotation.quaternion();
    (
        [t.translation.x, t.translation.y, t.translation.z],
        [q.i, q.j, q.k, q.w],
    )
}

/// Where an OccupancyGrid of the BEV map sits in `base_link`: origin of cell (0, 0)'s corner,
/// orientation, and whether the map's rows must be written in reverse (the grid's x runs
/// along the map's columns, its y along the rows; when that would be a mirror image, the rows
/// are flipped instead, so the grid is always a proper rotation).
pub struct GridPlacement {
    pub origin: [f64; 3],
    pub orientation: [f64; 4],
    pub reverse_rows: bool,
    pub resolution: f32,
}

pub fn grid_placement(g: &bevrt_calib::BevGrid) -> GridPlacement {
    let (h, w) = (g.height(), g.width());
    let c = |r: usize, col: usize| {
        let (x, y) = g.cell_center(r, col);
        Vector3::new(x, y, 0.0)
    };
    let p00 = c(0, 0);
    let ex = if w > 1 {
        (c(0, 1) - p00).normalize()
    } else {
        Vector3::y()
    };
    let mut ey = if h > 1 {
        (c(1, 0) - p00).normalize()
    } else {
        -Vector3::x()
    };
    let reverse_rows = ex.cross(&ey).z < 0.0;
    let first_row = if reverse_rows {
        ey = -ey;
        c(h - 1, 0)
    } else {
        p00
    };
    let half = g.cell as f64 / 2.0;
    let corner = first_row - ex * half - ey * half;
    let rot = nalgebra::Rotation3::from_basis_unchecked(&[ex, ey, ex.cross(&ey)]);
    let q = UnitQuaternion::from_rotation_matrix(&rot);
    GridPlacement {
        origin: [corner.x, corner.y, 0.0],
        orientation: [q.i, q.j, q.k, q.w],
        reverse_rows,
        resolution: g.cell,
    }
}

/// An MCAP file of ROS 2 (and JSON) channels, written message by message.
pub struct BagWriter {
    path: PathBuf,
    writer: mcap::Writer<BufWriter<std::fs::File>>,
    schemas: BTreeMap<&'static str, u16>,
    sequence: u32,
    /// Reused for encoding each message.
    pub buf: Vec<u8>,
}

/// Chunk compression of a written bag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BagCompression {
    None,
    Lz4,
    Zstd,
}

impl crate::choice::Choice for BagCompression {
    const ALL: &'static [Self] = &[Self::None, Self::Lz4, Self::Zstd];
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}
crate::named_choice!(BagCompression);

impl BagWriter {
    pub fn create(path: &Path, compression: BagCompression) -> anyhow::Result<BagWriter> {
        let f = std::fs::File::create(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", path.display()))?;
        let c = match compression {
            BagCompression::None => None,
            BagCompression::Lz4 => Some(mcap::Compression::Lz4),
            BagCompression::Zstd => Some(mcap::Compression::Zstd),
        };
        let writer = mcap::WriteOptions::new()
            .profile("ros2")
            .library(concat!("bevrt ", env!("CARGO_PKG_VERSION")))
            .compression(c)
            .create(BufWriter::new(f))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(BagWriter {
            path: path.to_path_buf(),
            writer,
            schemas: BTreeMap::new(),
            sequence: 0,
            buf: Vec::new(),
        })
    }

    fn err(&self, e: mcap::McapError) -> anyhow::Error {
        anyhow::anyhow!("{}: {e}", self.path.display())
    }

    /// A channel of CDR-encoded ROS 2 messages of type `t`.
    pub fn ros2_channel(&mut self, topic: &str, t: &MsgType) -> anyhow::Result<u16> {
        let schema = match self.schemas.get(t.name) {
            Some(&id) => id,
            None => {
                let id = self
                    .writer
                    .add_schema(t.name, "ros2msg", (t.definition)().as_bytes())
                    .map_err(|e| self.err(e))?;
                self.schemas.insert(t.name, id);
                id
            }
        };
        self.writer
            .add_channel(schema, topic, "cdr", &BTreeMap::new())
            .map_err(|e| self.err(e))
    }

    /// A channel of JSON messages described by a JSON Schema.
    pub fn json_channel(
        &mut self,
        topic: &str,
        name: &'static str,
        json_schema: &str,
    ) -> anyhow::Result<u16> {
        let id = self
            .writer
            .add_schema(name, "jsonschema", json_schema.as_bytes())
            .map_err(|e| self.err(e))?;
        self.writer
            .add_channel(id, topic, "json", &BTreeMap::new())
            .map_err(|e| self.err(e))
    }

    /// Write `data` (or, when `None`, the message encoded into [`Self::buf`]).
    pub fn write(&mut self, channel: u16, time_ns: u64, data: Option<&[u8]>) -> anyhow::Result<()> {
        self.sequence = self.sequence.wrapping_add(1);
        let header = mcap::records::MessageHeader {
            channel_id: channel,
            sequence: self.sequence,
            log_time: time_ns,
            publish_time: time_ns,
        };
        let r = match data {
            Some(d) => self.writer.write_to_known_channel(&header, d),
            None => self.writer.write_to_known_channel(&header, &self.buf),
        };
        r.map_err(|e| self.err(e))
    }

    /// Write the summary and close the file; a bag not finished is still readable up to its
    /// last complete chunk.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        self.writer.finish().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// `/tf_static` with the camera's pose in the vehicle, and `camera_info` from the model.
    pub fn write_calibration(
        &mut self,
        c: &bevrt_calib::Calibration,
        info_topic: &str,
        time_ns: u64,
    ) -> anyhow::Result<()> {
        let tf = self.ros2_channel("/tf_static", &msgs::TF_MESSAGE)?;
        encode_camera_tf(c, time_ns, &mut self.buf);
        self.write(tf, time_ns, None)?;
        let ch = self.ros2_channel(info_topic, &msgs::CAMERA_INFO)?;
        camera_info(&c.camera, time_ns).encode(&mut self.buf);
        self.write(ch, time_ns, None)
    }
}

/// The camera's pose in the vehicle as a `TFMessage` (base_link → camera_optical) in `buf`.
pub fn encode_camera_tf(c: &bevrt_calib::Calibration, stamp_ns: u64, buf: &mut Vec<u8>) {
    let (translation, rotation) = tf_parts(&c.extrinsics.cam_to_vehicle);
    msgs::encode_tf(
        &[msgs::Transform {
            header: msgs::Header {
                stamp_ns,
                frame_id: VEHICLE_FRAME,
            },
            child_frame_id: CAMERA_FRAME,
            translation,
            rotation,
        }],
        buf,
    );
}

/// `CameraInfo` of a camera model (R identity, P = [K | 0]).
pub fn camera_info(cam: &bevrt_calib::CameraModel, stamp_ns: u64) -> msgs::CameraInfo<'static> {
    let k = cam.k();
    let (model, d) = match cam.distortion() {
        bevrt_calib::Distortion::PlumbBob(c) => ("plumb_bob", c.to_vec()),
        bevrt_calib::Distortion::Fisheye(c) => ("equidistant", c.to_vec()),
    };
    msgs::CameraInfo {
        header: msgs::Header {
            stamp_ns,
            frame_id: CAMERA_FRAME,
        },
        height: cam.height(),
        width: cam.width(),
        distortion_model: model,
        d,
        k: [
            k[0][0], k[0][1], k[0][2], k[1][0], k[1][1], k[1][2], k[2][0], k[2][1], k[2][2],
        ],
        r: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p: [
            k[0][0], 0.0, k[0][2], 0.0, 0.0, k[1][1], k[1][2], 0.0, 0.0, 0.0, 1.0, 0.0,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_placement_puts_cells_where_the_grid_says() {
        let g = bevrt_calib::BevGrid {
            x_min: 0.0,
            x_max: 40.0,
            y_min: -20.0,
            y_max: 20.0,
            cell: 0.5,
            z_levels: vec![0.0],
            depth: None,
        };
        let p = grid_placement(&g);
        let rot = UnitQuaternion::from_quaternion(Quaternion::new(
            p.orientation[3],
            p.orientation[0],
            p.orientation[1],
            p.orientation[2],
        ));
        // The centre of OccupancyGrid cell (i, j) maps back to the BEV cell it came from.
        let (h, w) = (g.height(), g.width());
        for &(r, c) in &[(0, 0), (h - 1, 0), (0, w - 1), (h / 2, w / 3)] {
            let row = if p.reverse_rows { h - 1 - r } else { r };
            let local = Vector3::new(
                (c as f64 + 0.5) * g.cell as f64,
                (row as f64 + 0.5) * g.cell as f64,
                0.0,
            );
            let world = rot * local + Vector3::from(p.origin);
            let (x, y) = g.cell_center(r, c);
            assert!(
                (world.x - x).abs() < 1e-6 && (world.y - y).abs() < 1e-6,
                "{r},{c}"
            );
        }
    }
}
