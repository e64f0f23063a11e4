//! `mcap:FILE?topic=/camera/image_raw[&info=/camera/camera_info][&fps=N|&realtime]`: the
//! camera topic of a ROS 2 bag (MCAP, as `ros2 bag record` writes by default).
//!
//! - Images: `sensor_msgs/msg/Image` (see [`crate::ros2::bag::READABLE_ENCODINGS`]) or
//!   `sensor_msgs/msg/CompressedImage` (JPEG, PNG), CDR-encoded; chunks may be zstd or lz4
//!   compressed. Header stamps are the frame timestamps (the log time when a stamp is zero);
//!   frames are numbered in bag order from 0.
//! - `topic` may be left out when the bag has exactly one image topic; a bag without the topic
//!   is refused with the list of image topics it does have.
//! - Calibration, when the user gives none: the first `sensor_msgs/msg/CameraInfo` on `info`
//!   (default: `camera_info` beside the image topic) gives the camera model (plumb_bob /
//!   equidistant); `/tf_static` from the image's frame up to `base_footprint` or `base_link`
//!   gives the extrinsics (see [`crate::ros2::bag`] for the frames). A CameraInfo whose K is
//!   all zero is, by ROS's rule, an uncalibrated camera: it is ignored with a warning.
//! - A camera that moves: `/tf` (and later `/tf_static`) messages in the bag update the
//!   transform tree as they come; when the chain from the image's frame to the vehicle
//!   changes, the frames after it carry the new pose and the pipeline rebuilds the view
//!   transform before running them (counted as a calibration reload). `tf=static` ignores
//!   them (the calibration file or `/tf_static` pose stands).
//! - Played as fast as possible by default (lossless); `fps=N` or `realtime` make it live.
//! - A message that does not decode is a counted bad frame; a bag cut short (or otherwise
//!   damaged) plays every frame before the damage, then ends the run with an error naming the
//!   file and the byte offset.
//!
//! The bag is streamed (`mcap::io::MessageReader`): memory follows the largest chunk, not the
//! file.

use super::{FrameSource, Playback, SourceError, SourceSpec, SourceStatus, StreamCalibration};
use crate::frame::{Frame, PixelFormat};
use crate::ros2::{bag, msgs};
use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

type Reader = mcap::io::MessageReader<BufReader<std::fs::File>>;

pub struct McapSource {
    path: PathBuf,
    reader: Reader,
    topic: String,
    compressed: bool,
    calibration: Option<StreamCalibration>,
    playback: Playback,
    next_seq: u64,
    frame_bytes: usize,
    scratch: Vec<u8>,
    ended: bool,
    /// The transform tree so far (`/tf_static`, then `/tf` as it plays), the image's frame,
    /// the camera pose it last gave, and whether the frames carry it (after a `/tf` change).
    tf: TfTree,
    image_frame: String,
    pose: Option<bevrt_calib::Extrinsics>,
    moving_pose: Option<bevrt_calib::Extrinsics>,
    follow_tf: bool,
}

/// child frame → (parent frame, parent_T_child).
type TfTree = BTreeMap<String, (String, nalgebra::Isometry3<f64>)>;

fn open_reader(path: &Path) -> Result<Reader, SourceError> {
    let f = std::fs::File::open(path).map_err(|e| SourceError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    // A record or chunk declaring more than the limit is an error, not an allocation (the
    // fuzzer found a declared length that made the reader's buffer overflow `Vec`'s capacity);
    // chunks are checked whole (lengths and CRC) before their messages are used.
    let options = mcap::sans_io::LinearReaderOptions::default()
        .with_record_length_limit(MAX_RECORD_BYTES)
        .with_prevalidate_chunk_crcs(true);
    Ok(mcap::io::MessageReader::new_with_options(
        BufReader::with_capacity(1 << 20, f),
        options,
    ))
}

/// Largest record or (decompressed) chunk a bag may hold: 256 MiB, ten 4K RGB frames.
pub const MAX_RECORD_BYTES: usize = 256 << 20;

/// The next message, with a panic inside the `mcap` crate turned into an error: fuzzing found
/// malformed attachment records that make its record parser index out of bounds (mcap 0.26,
/// `read.rs`). After such an error the reader is not used again.
fn next_message(reader: &mut Reader) -> Option<Result<mcap::Message<'static>, String>> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.next())) {
        Ok(None) => None,
        Ok(Some(Ok(m))) => Some(Ok(m)),
        Ok(Some(Err(e))) => Some(Err(e.to_string())),
        Err(p) => Some(Err(format!(
            "the MCAP reader failed on this data ({})",
            crate::panics::panic_message(p.as_ref())
        ))),
    }
}

fn is_image_type(schema: &str) -> bool {
    schema == msgs::IMAGE.name || schema == msgs::COMPRESSED_IMAGE.name
}

/// What a first pass over the start of the bag found.
#[derive(Default)]
struct Survey {
    /// Every topic seen, with its schema name.
    topics: BTreeMap<String, String>,
    /// The image topic used, its type, and the first image's size.
    image: Option<(String, bool, usize)>,
    camera_info: Option<Vec<u8>>,
    image_frame: String,
    /// `/tf_static` transforms.
    tf: TfTree,
}

impl Survey {
    fn image_topics(&self) -> String {
        let v: Vec<&str> = self
            .topics
            .iter()
            .filter(|(_, s)| is_image_type(s))
            .map(|(t, _)| t.as_str())
            .collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }
}

/// The `camera_info` topic beside an image topic (`/cam/image_raw` → `/cam/camera_info`).
fn default_info_topic(image_topic: &str) -> String {
    match image_topic.rsplit_once('/') {
        Some((ns, _)) => format!("{ns}/camera_info"),
        None => "camera_info".into(),
    }
}

impl McapSource {
    pub fn open(s: &SourceSpec) -> Result<McapSource, SourceError> {
        s.only_options(&["topic", "info", "fps", "realtime", "tf"])?;
        let follow_tf = match s.options.get("tf").map(String::as_str) {
            None | Some("follow") => true,
            Some("static") => false,
            Some(v) => return Err(s.error(format!("tf={v}: expected follow or static"))),
        };
        let path = PathBuf::from(&s.body);
        if path.is_dir() {
            return Err(SourceError::Open {
                path,
                message: "is a directory, expected an MCAP file".into(),
            });
        }
        let topic = s.options.get("topic").cloned();
        let info = s.options.get("info").cloned();
        let survey = survey(&path, topic.as_deref(), info.as_deref())?;
        let Some((topic, compressed, first_bytes)) = survey.image.clone() else {
            return Err(SourceError::Open {
                path,
                message: match topic {
                    Some(t) => format!(
                        "no image messages on topic '{t}'; image topics in this bag: {}",
                        survey.image_topics()
                    ),
                    None => format!(
                        "no image topic (sensor_msgs/msg/Image or CompressedImage); topics: {}",
                        survey.topics.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                },
            });
        };
        let info_topic = info.clone().unwrap_or_else(|| default_info_topic(&topic));
        if info.is_some() && survey.camera_info.is_none() {
            return Err(SourceError::Open {
                path,
                message: format!("no sensor_msgs/msg/CameraInfo on '{info_topic}' (from ?info=)"),
            });
        }
        let calibration = stream_calibration(&path, &survey, &info_topic)?;
        let playback = Playback::from_spec(s)?;
        let pose = camera_to_vehicle(&survey.tf, &survey.image_frame)
            .and_then(|(p, _)| bevrt_calib::Extrinsics::from_matrix(&p.to_homogeneous()).ok());
        Ok(McapSource {
            tf: survey.tf,
            image_frame: survey.image_frame,
            pose,
            moving_pose: None,
            follow_tf,
            reader: open_reader(&path)?,
            path,
            topic,
            compressed,
            calibration,
            playback,
            next_seq: 0,
            frame_bytes: first_bytes.max(640 * 480 * 3),
            scratch: Vec::new(),
            ended: false,
        })
    }

    fn decode(
        &mut self,
        data: &[u8],
        log_time: u64,
        frame: &mut Frame,
    ) -> Result<u64, SourceError> {
        let bad = |e: String| SourceError::BadFrame {
            path: self.path.clone(),
            message: format!("{} message {}: {e}", self.topic, self.next_seq),
        };
        let stamp = if self.compressed {
            let m = msgs::CompressedImage::decode(data).map_err(|e| bad(e.to_string()))?;
            super::decode_into(m.data, frame, &mut self.scratch, &self.path)?;
            m.header.stamp_ns
        } else {
            let m = msgs::Image::decode(data).map_err(|e| bad(e.to_string()))?;
            copy_image(&m, frame).map_err(bad)?;
            m.header.stamp_ns
        };
        Ok(if stamp == 0 { log_time } else { stamp })
    }
}

impl McapSource {
    /// A transform message while playing: update the tree; when the camera's chain to the
    /// vehicle now gives another pose (beyond float noise: tf publishers resend the same
    /// transform many times a second), the frames from here on carry it.
    fn follow(&mut self, data: &[u8]) {
        add_transforms(&mut self.tf, data);
        let Some((pose, _)) = camera_to_vehicle(&self.tf, &self.image_frame) else {
            return;
        };
        match bevrt_calib::Extrinsics::from_matrix(&pose.to_homogeneous()) {
            Ok(e) if self.pose.is_some_and(|p| p.same_pose(&e)) => {}
            Ok(e) => {
                self.pose = Some(e);
                self.moving_pose = Some(e);
            }
            Err(e) => log::warn!(
                "{}: camera pose from /tf not usable, ignored: {e}",
                self.path.display()
            ),
        }
    }
}

/// Copy a raw `Image` into `frame`, dropping any row padding (`step`).
pub fn copy_image(m: &msgs::Image, frame: &mut Frame) -> Result<(), String> {
    let fmt = bag::pixel_format(m.encoding).ok_or_else(|| {
        format!(
            "image encoding '{}' is not read by bevrt (readable: {})",
            m.encoding,
            bag::READABLE_ENCODINGS
        )
    })?;
    let (w, h) = (m.width, m.height);
    if w == 0 || h == 0 || w as u64 * h as u64 > super::MAX_FRAME_PIXELS {
        return Err(format!(
            "image of {w}x{h} pixels: empty or over the frame limit"
        ));
    }
    // Bytes per row and rows; NV12 is a Y plane then a half-height interleaved UV plane,
    // both `w` bytes wide for an even width (odd NV12 widths are refused).
    let (row, rows) = match fmt {
        PixelFormat::Nv12 if w % 2 == 1 => return Err(format!("nv12 image of odd width {w}")),
        PixelFormat::Nv12 => (w as usize, h as usize + (h as usize).div_ceil(2)),
        _ => (fmt.frame_bytes(w, 1), h as usize),
    };
    let step = m.step as usize;
    let need = step.checked_mul(rows - 1).and_then(|v| v.checked_add(row));
    if step < row || need.is_none_or(|n| m.data.len() < n) {
        return Err(format!(
            "{w}x{h} {} with step {step} needs {} bytes, the message holds {}",
            m.encoding,
            need.map(|n| n.to_string())
                .unwrap_or_else(|| "too many".into()),
            m.data.len()
        ));
    }
    frame.reset(fmt, w, h);
    if step == row {
        frame.data.copy_from_slice(&m.data[..row * rows]);
    } else {
        for (r, d) in frame.data.chunks_exact_mut(row).enumerate() {
            d.copy_from_slice(&m.data[r * step..r * step + row]);
        }
    }
    Ok(())
}

/// Read the start of the bag: channels, the image topic, CameraInfo and `/tf_static`. Stops
/// 200 messages after the first image once the CameraInfo is in (or at the end of the bag).
fn survey(path: &Path, topic: Option<&str>, info: Option<&str>) -> Result<Survey, SourceError> {
    let mut s = Survey::default();
    let mut after_image = 0u32;
    let mut info_topic = info.map(str::to_string);
    let mut reader = open_reader(path)?;
    while let Some(m) = next_message(&mut reader) {
        let Ok(m) = m else { break }; // damage: the stream itself reports it later
        let schema = m
            .channel
            .schema
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let t = m.channel.topic.as_str();
        s.topics
            .entry(t.to_string())
            .or_insert_with(|| schema.clone());
        if s.image.is_none() && is_image_type(&schema) && topic.is_none_or(|w| w == t) {
            if topic.is_none() && s.topics.iter().filter(|(_, x)| is_image_type(x)).count() > 1 {
                return Err(SourceError::Open {
                    path: path.to_path_buf(),
                    message: format!(
                        "several image topics ({}): choose one with ?topic=",
                        s.image_topics()
                    ),
                });
            }
            let compressed = schema == msgs::COMPRESSED_IMAGE.name;
            // The first image's frame id (for tf) and size (to size the frame pool).
            let (frame_id, bytes) = if compressed {
                let m = msgs::CompressedImage::decode(&m.data);
                (m.map(|i| i.header.frame_id.to_string()).ok(), 0)
            } else {
                match msgs::Image::decode(&m.data) {
                    Ok(i) => (
                        Some(i.header.frame_id.to_string()),
                        PixelFormat::Rgb8.frame_bytes(i.width, i.height),
                    ),
                    Err(_) => (None, 0),
                }
            };
            s.image_frame = frame_id.unwrap_or_default();
            s.image = Some((t.to_string(), compressed, bytes));
            info_topic.get_or_insert_with(|| default_info_topic(t));
        }
        if schema == msgs::CAMERA_INFO.name
            && s.camera_info.is_none()
            && info_topic.as_deref().is_none_or(|w| w == t)
        {
            s.camera_info = Some(m.data.to_vec());
        }
        if schema == msgs::TF_MESSAGE.name && t == "/tf_static" {
            add_transforms(&mut s.tf, &m.data);
        }
        if s.image.is_some() {
            after_image += 1;
            if after_image > 200 && (s.camera_info.is_some() || after_image > 2000) {
                break;
            }
        }
    }
    Ok(s)
}

fn add_transforms(tf: &mut TfTree, data: &[u8]) {
    match msgs::decode_tf(data) {
        Ok(ts) => {
            for t in ts {
                match bag::isometry(t.translation, t.rotation) {
                    Some(iso) => {
                        tf.insert(
                            t.child_frame_id.to_string(),
                            (t.header.frame_id.to_string(), iso),
                        );
                    }
                    None => log::warn!(
                        "tf {} -> {}: not a rigid transform, ignored",
                        t.header.frame_id,
                        t.child_frame_id
                    ),
                }
            }
        }
        Err(e) => log::warn!("tf message does not decode, ignored: {e}"),
    }
}

/// The camera's pose in the vehicle, from `/tf_static`: the chain from `frame` up to
/// `base_footprint` (on the ground, as bevrt's vehicle frame) or else `base_link`.
fn camera_to_vehicle(tf: &TfTree, frame: &str) -> Option<(nalgebra::Isometry3<f64>, String)> {
    let mut pose = nalgebra::Isometry3::identity();
    let mut at = frame.to_string();
    let mut found: Option<(nalgebra::Isometry3<f64>, String)> = None;
    for _ in 0..32 {
        if at == "base_footprint" {
            return Some((pose, at));
        }
        if at == bag::VEHICLE_FRAME {
            found = Some((pose, at.clone()));
        }
        let Some((parent, t)) = tf.get(&at) else {
            break;
        };
        pose = t * pose;
        at = parent.clone();
    }
    found
}

fn stream_calibration(
    path: &Path,
    s: &Survey,
    info_topic: &str,
) -> Result<Option<StreamCalibration>, SourceError> {
    let bad = |m: String| SourceError::Open {
        path: path.to_path_buf(),
        message: m,
    };
    let mut camera = None;
    let mut frame = s.image_frame.clone();
    if let Some(data) = &s.camera_info {
        let ci = msgs::CameraInfo::decode(data)
            .map_err(|e| bad(format!("CameraInfo on '{info_topic}': {e}")))?;
        if ci.k.iter().all(|&v| v == 0.0) {
            log::warn!(
                "{}: CameraInfo on '{info_topic}' has K all zero (an uncalibrated camera, by ROS's rule): ignored",
                path.display()
            );
        } else {
            let where_ = PathBuf::from(format!("{}#{info_topic}", path.display()));
            let model = ci.distortion_model.to_ascii_lowercase();
            camera = Some(
                bevrt_calib::camera_from_ros(&where_, ci.width, ci.height, &ci.k, &model, &ci.d)
                    .map_err(|e| bad(format!("CameraInfo: {e}")))?,
            );
            if frame.is_empty() {
                frame = ci.header.frame_id.to_string();
            }
        }
    }
    let extrinsics = camera_to_vehicle(&s.tf, &frame).and_then(|(iso, root)| {
        log::info!(
            "{}: camera pose from /tf_static, {root} <- {frame}",
            path.display()
        );
        bevrt_calib::Extrinsics::from_matrix(&iso.to_homogeneous()).ok()
    });
    if camera.is_none() && extrinsics.is_none() {
        return Ok(None);
    }
    Ok(Some(StreamCalibration {
        camera,
        extrinsics,
        origin: format!("{} ({info_topic}, /tf_static)", path.display()),
    }))
}

impl FrameSource for McapSource {
    fn describe(&self) -> String {
        format!(
            "mcap:{} (topic {}, {})",
            self.path.display(),
            self.topic,
            if self.compressed {
                "CompressedImage"
            } else {
                "Image"
            }
        )
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<SourceStatus, SourceError> {
        if self.ended {
            return Ok(SourceStatus::End);
        }
        loop {
            let m = match next_message(&mut self.reader) {
                None => {
                    self.ended = true;
                    return Ok(SourceStatus::End);
                }
                Some(Err(e)) => {
                    self.ended = true;
                    return Err(SourceError::Open {
                        path: self.path.clone(),
                        message: format!(
                            "damaged after {} frames of '{}': {e}",
                            self.next_seq, self.topic
                        ),
                    });
                }
                Some(Ok(m)) => m,
            };
            if m.channel.topic != self.topic {
                if self.follow_tf && (m.channel.topic == "/tf" || m.channel.topic == "/tf_static") {
                    self.follow(&m.data);
                }
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let ts = self.decode(&m.data, m.log_time, frame)?;
            self.playback.wait_for(ts);
            frame.seq = seq;
            frame.timestamp_ns = ts;
            frame.camera_pose = self.moving_pose;
            return Ok(SourceStatus::Frame);
        }
    }

    fn is_live(&self) -> bool {
        self.playback.is_live()
    }

    fn max_frame_bytes(&self) -> Option<usize> {
        Some(self.frame_bytes)
    }

    fn stream_calibration(&self) -> Option<StreamCalibration> {
        self.calibration.clone()
    }
}
