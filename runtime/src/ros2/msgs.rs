//! The ROS 2 messages bevrt reads and writes, with their `ros2msg` schema texts (the message
//! definition followed by every nested one, as rosbag2 stores them in MCAP). Decoders borrow
//! pixel data from the message; encoders write into a reused buffer.

use super::cdr::{CdrError, CdrReader, CdrWriter};

const SEP: &str =
    "================================================================================\n";

const TIME: &str = "MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n";
const HEADER: &str = "MSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id\n";
const VECTOR3: &str = "MSG: geometry_msgs/Vector3\nfloat64 x\nfloat64 y\nfloat64 z\n";
const POINT: &str = "MSG: geometry_msgs/Point\nfloat64 x\nfloat64 y\nfloat64 z\n";
const QUATERNION: &str =
    "MSG: geometry_msgs/Quaternion\nfloat64 x\nfloat64 y\nfloat64 z\nfloat64 w\n";
const POSE: &str =
    "MSG: geometry_msgs/Pose\ngeometry_msgs/Point position\ngeometry_msgs/Quaternion orientation\n";

fn schema(top: &str, nested: &[&str]) -> String {
    let mut s = top.to_string();
    for n in nested {
        s.push_str(SEP);
        s.push_str(n);
    }
    s
}

/// A message type: its name in the bag and its schema text.
pub struct MsgType {
    pub name: &'static str,
    pub definition: fn() -> String,
}

pub const IMAGE: MsgType = MsgType {
    name: "sensor_msgs/msg/Image",
    definition: || {
        schema(
            "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\nuint32 step\nuint8[] data\n",
            &[HEADER, TIME],
        )
    },
};
pub const COMPRESSED_IMAGE: MsgType = MsgType {
    name: "sensor_msgs/msg/CompressedImage",
    definition: || {
        schema(
            "std_msgs/Header header\nstring format\nuint8[] data\n",
            &[HEADER, TIME],
        )
    },
};
pub const CAMERA_INFO: MsgType = MsgType {
    name: "sensor_msgs/msg/CameraInfo",
    definition: || {
        schema(
            "std_msgs/Header header\nuint32 height\nuint32 width\nstring distortion_model\nfloat64[] d\nfloat64[9] k\nfloat64[9] r\nfloat64[12] p\nuint32 binning_x\nuint32 binning_y\nsensor_msgs/RegionOfInterest roi\n",
            &[
                HEADER,
                TIME,
                "MSG: sensor_msgs/RegionOfInterest\nuint32 x_offset\nuint32 y_offset\nuint32 height\nuint32 width\nbool do_rectify\n",
            ],
        )
    },
};
pub const TF_MESSAGE: MsgType = MsgType {
    name: "tf2_msgs/msg/TFMessage",
    definition: || {
        schema(
            "geometry_msgs/TransformStamped[] transforms\n",
            &[
                "MSG: geometry_msgs/TransformStamped\nstd_msgs/Header header\nstring child_frame_id\ngeometry_msgs/Transform transform\n",
                HEADER,
                TIME,
                "MSG: geometry_msgs/Transform\ngeometry_msgs/Vector3 translation\ngeometry_msgs/Quaternion rotation\n",
                VECTOR3,
                QUATERNION,
            ],
        )
    },
};
pub const ODOMETRY: MsgType = MsgType {
    name: "nav_msgs/msg/Odometry",
    definition: || {
        schema(
            "std_msgs/Header header\nstring child_frame_id\ngeometry_msgs/PoseWithCovariance pose\ngeometry_msgs/TwistWithCovariance twist\n",
            &[
                HEADER,
                TIME,
                "MSG: geometry_msgs/PoseWithCovariance\ngeometry_msgs/Pose pose\nfloat64[36] covariance\n",
                POSE,
                POINT,
                QUATERNION,
                "MSG: geometry_msgs/TwistWithCovariance\ngeometry_msgs/Twist twist\nfloat64[36] covariance\n",
                "MSG: geometry_msgs/Twist\ngeometry_msgs/Vector3 linear\ngeometry_msgs/Vector3 angular\n",
                VECTOR3,
            ],
        )
    },
};
pub const OCCUPANCY_GRID: MsgType = MsgType {
    name: "nav_msgs/msg/OccupancyGrid",
    definition: || {
        schema(
            "std_msgs/Header header\nnav_msgs/MapMetaData info\nint8[] data\n",
            &[
                HEADER,
                TIME,
                "MSG: nav_msgs/MapMetaData\nbuiltin_interfaces/Time map_load_time\nfloat32 resolution\nuint32 width\nuint32 height\ngeometry_msgs/Pose origin\n",
                POSE,
                POINT,
                QUATERNION,
            ],
        )
    },
};

/// `std_msgs/Header`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header<'a> {
    pub stamp_ns: u64,
    pub frame_id: &'a str,
}

impl<'a> Header<'a> {
    fn write(&self, w: &mut CdrWriter) {
        w.i32((self.stamp_ns / 1_000_000_000) as i32);
        w.u32((self.stamp_ns % 1_000_000_000) as u32);
        w.string(self.frame_id);
    }
    fn read(r: &mut CdrReader<'a>) -> Result<Header<'a>, CdrError> {
        let sec = r.i32("header.stamp.sec")?;
        let nanosec = r.u32("header.stamp.nanosec")?;
        let frame_id = r.string("header.frame_id")?;
        // Stamps before 1970 (negative) are clamped to 0: frame times only need order.
        let stamp_ns = (sec.max(0) as u64) * 1_000_000_000 + nanosec.min(999_999_999) as u64;
        Ok(Header { stamp_ns, frame_id })
    }
}

/// `sensor_msgs/Image`, pixels borrowed.
#[derive(Debug, Clone, PartialEq)]
pub struct Image<'a> {
    pub header: Header<'a>,
    pub height: u32,
    pub width: u32,
    pub encoding: &'a str,
    pub is_bigendian: u8,
    pub step: u32,
    pub data: &'a [u8],
}

impl<'a> Image<'a> {
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let mut w = CdrWriter::new(buf);
        self.header.write(&mut w);
        w.u32(self.height);
        w.u32(self.width);
        w.string(self.encoding);
        w.u8(self.is_bigendian);
        w.u32(self.step);
        w.bytes(self.data);
    }
    pub fn decode(msg: &'a [u8]) -> Result<Image<'a>, CdrError> {
        let mut r = CdrReader::new(msg)?;
        Ok(Image {
            header: Header::read(&mut r)?,
            height: r.u32("height")?,
            width: r.u32("width")?,
            encoding: r.string("encoding")?,
            is_bigendian: r.u8("is_bigendian")?,
            step: r.u32("step")?,
            data: r.bytes("data")?,
        })
    }
}

/// `sensor_msgs/CompressedImage`, bytes borrowed.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedImage<'a> {
    pub header: Header<'a>,
    pub format: &'a str,
    pub data: &'a [u8],
}

impl<'a> CompressedImage<'a> {
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let mut w = CdrWriter::new(buf);
        self.header.write(&mut w);
        w.string(self.format);
        w.bytes(self.data);
    }
    pub fn decode(msg: &'a [u8]) -> Result<CompressedImage<'a>, CdrError> {
        let mut r = CdrReader::new(msg)?;
        Ok(CompressedImage {
            header: Header::read(&mut r)?,
            format: r.string("format")?,
            data: r.bytes("data")?,
        })
    }
}

/// `sensor_msgs/CameraInfo` (binning and ROI are written as zeros and not read back).
#[derive(Debug, Clone, PartialEq)]
pub struct CameraInfo<'a> {
    pub header: Header<'a>,
    pub height: u32,
    pub width: u32,
    pub distortion_model: &'a str,
    pub d: Vec<f64>,
    pub k: [f64; 9],
    pub r: [f64; 9],
    pub p: [f64; 12],
}

impl<'a> CameraInfo<'a> {
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let mut w = CdrWriter::new(buf);
        self.header.write(&mut w);
        w.u32(self.height);
        w.u32(self.width);
        w.string(self.distortion_model);
        w.f64_seq(&self.d);
        w.f64_array(&self.k);
        w.f64_array(&self.r);
        w.f64_array(&self.p);
        for _ in 0..6 {
            w.u32(0); // binning x, y; roi x_offset, y_offset, height, width
        }
        w.u8(0); // roi.do_rectify
    }
    pub fn decode(msg: &'a [u8]) -> Result<CameraInfo<'a>, CdrError> {
        let mut r = CdrReader::new(msg)?;
        let info = CameraInfo {
            header: Header::read(&mut r)?,
            height: r.u32("height")?,
            width: r.u32("width")?,
            distortion_model: r.string("distortion_model")?,
            d: r.f64_seq("d")?,
            k: r.f64_array("k")?,
            r: r.f64_array("r")?,
            p: r.f64_array("p")?,
        };
        // Binning and ROI are not used, but read: a message cut short is refused whole.
        for what in [
            "binning_x",
            "binning_y",
            "roi.x_offset",
            "roi.y_offset",
            "roi.height",
        ] {
            r.u32(what)?;
        }
        r.u32("roi.width")?;
        r.u8("roi.do_rectify")?;
        Ok(info)
    }
}

/// `geometry_msgs/TransformStamped`: `parent_T_child`, translation in metres and rotation
/// as a quaternion (x, y, z, w).
#[derive(Debug, Clone, PartialEq)]
pub struct Transform<'a> {
    pub header: Header<'a>,
    pub child_frame_id: &'a str,
    pub translation: [f64; 3],
    pub rotation: [f64; 4],
}

/// `tf2_msgs/TFMessage`.
pub fn encode_tf(transforms: &[Transform], buf: &mut Vec<u8>) {
    let mut w = CdrWriter::new(buf);
    w.u32(transforms.len() as u32);
    for t in transforms {
        t.header.write(&mut w);
        w.string(t.child_frame_id);
        w.f64_array(&t.translation);
        w.f64_array(&t.rotation);
    }
}

pub fn decode_tf(msg: &[u8]) -> Result<Vec<Transform<'_>>, CdrError> {
    let mut r = CdrReader::new(msg)?;
    let n = r.u32("transforms")? as usize;
    // Each transform takes at least 64 bytes: a count beyond that is a lie, not a reason to
    // reserve memory.
    if n > msg.len() / 64 {
        return Err(CdrError::Invalid {
            what: "transforms",
            message: format!("{n} transforms declared in a {}-byte message", msg.len()),
        });
    }
    (0..n)
        .map(|_| {
            Ok(Transform {
                header: Header::read(&mut r)?,
                child_frame_id: r.string("child_frame_id")?,
                translation: r.f64_array("transform.translation")?,
                rotation: r.f64_array("transform.rotation")?,
            })
        })
        .collect()
}

/// `nav_msgs/Odometry` without covariances or twist (written as zeros).
pub struct Odometry<'a> {
    pub header: Header<'a>,
    pub child_frame_id: &'a str,
    pub position: [f64; 3],
    pub orientation: [f64; 4],
}

impl Odometry<'_> {
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let mut w = CdrWriter::new(buf);
        self.header.write(&mut w);
        w.string(self.child_frame_id);
        w.f64_array(&self.position);
        w.f64_array(&self.orientation);
        w.f64_array(&[0.0; 36]);
        w.f64_array(&[0.0; 6]);
        w.f64_array(&[0.0; 36]);
    }
}

/// `nav_msgs/OccupancyGrid`: `width` cells along the grid's x, row-major from `origin`.
pub struct OccupancyGrid<'a> {
    pub header: Header<'a>,
    pub resolution: f32,
    pub width: u32,
    pub height: u32,
    pub origin_position: [f64; 3],
    pub origin_orientation: [f64; 4],
    pub data: &'a [u8],
}

impl OccupancyGrid<'_> {
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let mut w = CdrWriter::new(buf);
        self.header.write(&mut w);
        w.i32((self.header.stamp_ns / 1_000_000_000) as i32); // map_load_time
        w.u32((self.header.stamp_ns % 1_000_000_000) as u32);
        w.f32(self.resolution);
        w.u32(self.width);
        w.u32(self.height);
        w.f64_array(&self.origin_position);
        w.f64_array(&self.origin_orientation);
        w.bytes(self.data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_and_camera_info_round_trip() {
        let px = [1u8, 2, 3, 4, 5, 6];
        let img = Image {
            header: Header {
                stamp_ns: 1_700_000_000_123_456_789,
                frame_id: "cam",
            },
            height: 1,
            width: 2,
            encoding: "rgb8",
            is_bigendian: 0,
            step: 6,
            data: &px,
        };
        let mut buf = vec![];
        img.encode(&mut buf);
        assert_eq!(Image::decode(&buf).unwrap(), img);
        let info = CameraInfo {
            header: img.header.clone(),
            height: 480,
            width: 640,
            distortion_model: "plumb_bob",
            d: vec![0.1, -0.2, 0.0, 0.0, 0.01],
            k: [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0],
            r: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            p: [0.0; 12],
        };
        info.encode(&mut buf);
        assert_eq!(CameraInfo::decode(&buf).unwrap(), info);
        for cut in [0, 3, 10, buf.len() / 2, buf.len() - 1] {
            assert!(CameraInfo::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn schemas_name_every_nested_type() {
        for t in [
            IMAGE,
            COMPRESSED_IMAGE,
            CAMERA_INFO,
            TF_MESSAGE,
            ODOMETRY,
            OCCUPANCY_GRID,
        ] {
            let s = (t.definition)();
            for line in s
                .lines()
                .filter(|l| !l.starts_with("MSG:") && !l.starts_with('='))
            {
                let ty = line.split_whitespace().next().unwrap_or("");
                let ty = ty.split('[').next().unwrap_or("");
                if ty.contains('/') {
                    assert!(
                        s.contains(&format!("MSG: {ty}\n")),
                        "{}: {ty} not defined",
                        t.name
                    );
                }
            }
        }
    }
}
