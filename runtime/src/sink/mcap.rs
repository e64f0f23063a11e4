//! `--sinks mcap`: the run as a ROS 2 bag, `run.mcap`, that opens in Foxglove (or any MCAP
//! reader) with the map under the vehicle:
//!
//! | topic | type | what |
//! |---|---|---|
//! | `/camera/image_raw` | sensor_msgs/msg/Image | the camera frame the result came from |
//! | `/camera/image_raw/compressed` | sensor_msgs/msg/CompressedImage | instead, with `--sinks mcap-jpeg`: the frame as JPEG (quality 90), a tenth of the size |
//! | `/camera/camera_info`, `/tf_static` | CameraInfo, TFMessage | the calibration (once) |
//! | `/bevrt/bev/image` | sensor_msgs/msg/Image (rgb8) | the BEV class map in the bundle's colours |
//! | `/bevrt/bev/grid` | nav_msgs/msg/OccupancyGrid | class index per cell (-1 unknown), in `base_link` |
//! | `/bevrt/result` | JSON | the `results.jsonl` line |
//! | `/bevrt/metrics` | JSON | the run's counters, once a second |
//!
//! Message times are the frames' timestamps. Chunks are lz4-compressed (cheap enough for the
//! sink thread; `zstd` is the smaller choice for archives).

use super::{ResultJson, Sink};
use crate::live::LiveMetrics;
use crate::postprocess::FrameResult;
use crate::ros2::bag::{self, BagCompression, BagWriter};
use crate::ros2::msgs;
use bevrt_models::Task;
use std::path::Path;
use std::sync::Arc;

/// Channel ids of an open bag.
struct Channels {
    camera: u16,
    /// The camera as JPEG (`CompressedImage`) instead of raw.
    camera_jpeg: bool,
    bev_image: Option<u16>,
    bev_grid: Option<u16>,
    result: u16,
    metrics: u16,
}

pub struct McapSink {
    bag: BagWriter,
    channels: Channels,
    json: ResultJson,
    task: Task,
    grid: Option<bag::GridPlacement>,
    calibration: Option<bevrt_calib::Calibration>,
    live: Option<Arc<LiveMetrics>>,
    /// Reused per frame: the JSON line, the OccupancyGrid cells.
    text: Vec<u8>,
    cells: Vec<u8>,
    /// Reused per frame by the JPEG camera: the frame as RGB, and the JPEG.
    rgb: Vec<u8>,
    jpeg: Vec<u8>,
    wrote_calibration: bool,
    last_metrics_ns: Option<u64>,
}

const RESULT_SCHEMA: &str = r#"{"type":"object","properties":{"seq":{"type":"integer"},"timestamp_ns":{"type":"integer"},"latency_ms":{"type":"object"}}}"#;
const METRICS_SCHEMA: &str = r#"{"type":"object","properties":{"frames_processed":{"type":"integer"},"frames_dropped":{"type":"integer"},"inference_errors":{"type":"integer"}}}"#;

impl McapSink {
    pub fn new(
        out: &Path,
        manifest: &bevrt_models::Manifest,
        calibration: Option<bevrt_calib::Calibration>,
        live: Option<Arc<LiveMetrics>>,
        camera_jpeg: bool,
    ) -> anyhow::Result<McapSink> {
        let mut bag = BagWriter::create(&out.join("run.mcap"), BagCompression::Lz4)?;
        let is_bev = manifest.task == Task::Bev;
        let channels = Channels {
            camera: if camera_jpeg {
                bag.ros2_channel("/camera/image_raw/compressed", &msgs::COMPRESSED_IMAGE)?
            } else {
                bag.ros2_channel("/camera/image_raw", &msgs::IMAGE)?
            },
            camera_jpeg,
            bev_image: if is_bev {
                Some(bag.ros2_channel("/bevrt/bev/image", &msgs::IMAGE)?)
            } else {
                None
            },
            bev_grid: if is_bev {
                Some(bag.ros2_channel("/bevrt/bev/grid", &msgs::OCCUPANCY_GRID)?)
            } else {
                None
            },
            result: bag.json_channel("/bevrt/result", "bevrt.Result", RESULT_SCHEMA)?,
            metrics: bag.json_channel("/bevrt/metrics", "bevrt.Metrics", METRICS_SCHEMA)?,
        };
        let grid = manifest.grid.as_ref().map(bag::grid_placement);
        Ok(McapSink {
            bag,
            channels,
            json: ResultJson::new(manifest.outputs[0].labels.clone(), manifest.classes.clone()),
            task: manifest.task,
            grid,
            calibration,
            live,
            text: Vec::with_capacity(4096),
            cells: Vec::new(),
            rgb: Vec::new(),
            jpeg: Vec::new(),
            wrote_calibration: false,
            last_metrics_ns: None,
        })
    }

    fn write_camera(&mut self, r: &FrameResult) -> anyhow::Result<()> {
        let carried = if self.channels.camera_jpeg {
            encode_camera_jpeg(r, &mut self.rgb, &mut self.jpeg, &mut self.bag.buf)?
        } else {
            encode_camera(r, &mut self.bag.buf)
        };
        if !carried {
            return Ok(());
        }
        self.bag.write(self.channels.camera, r.timestamp_ns, None)
    }

    fn write_bev(&mut self, r: &FrameResult) -> anyhow::Result<()> {
        let (Some(img), Some(grid_ch)) = (self.channels.bev_image, self.channels.bev_grid) else {
            return Ok(());
        };
        encode_bev_image(r, &mut self.bag.buf);
        self.bag.write(img, r.timestamp_ns, None)?;
        let Some(place) = &self.grid else {
            return Ok(());
        };
        encode_grid(r, place, &mut self.cells, &mut self.bag.buf);
        self.bag.write(grid_ch, r.timestamp_ns, None)
    }

    fn write_metrics(&mut self, t_ns: u64) -> anyhow::Result<()> {
        let Some(live) = &self.live else {
            return Ok(());
        };
        if self
            .last_metrics_ns
            .is_some_and(|last| t_ns < last.saturating_add(1_000_000_000))
        {
            return Ok(());
        }
        self.last_metrics_ns = Some(t_ns);
        self.text.clear();
        serde_json::to_writer(&mut self.text, &live.counters.snapshot())?;
        self.bag
            .write(self.channels.metrics, t_ns, Some(&self.text))
    }
}

fn header(stamp_ns: u64, frame_id: &str) -> msgs::Header<'_> {
    msgs::Header { stamp_ns, frame_id }
}

/// The camera frame a result carries as an `Image` in `buf`; false when it carries none.
pub(crate) fn encode_camera(r: &FrameResult, buf: &mut Vec<u8>) -> bool {
    let c = &r.camera;
    let Some(fmt) = c.format.filter(|_| !c.is_empty()) else {
        return false;
    };
    let step = match fmt {
        crate::frame::PixelFormat::Nv12 => c.width,
        f => f.frame_bytes(c.width, 1) as u32,
    };
    msgs::Image {
        header: header(r.timestamp_ns, bag::CAMERA_FRAME),
        height: c.height,
        width: c.width,
        encoding: bag::ros_encoding(fmt),
        is_bigendian: 0,
        step,
        data: &c.data,
    }
    .encode(buf);
    true
}

/// The camera frame a result carries as a JPEG `CompressedImage` in `buf` (`rgb` and `jpeg`
/// are reused buffers); false when it carries none.
fn encode_camera_jpeg(
    r: &FrameResult,
    rgb: &mut Vec<u8>,
    jpeg: &mut Vec<u8>,
    buf: &mut Vec<u8>,
) -> anyhow::Result<bool> {
    use crate::frame::PixelFormat;
    use image::ExtendedColorType;
    let c = &r.camera;
    let Some(fmt) = c.format.filter(|_| !c.is_empty()) else {
        return Ok(false);
    };
    let (pixels, colour): (&[u8], _) = match fmt {
        PixelFormat::Rgb8 => (&c.data, ExtendedColorType::Rgb8),
        PixelFormat::Gray8 => (&c.data, ExtendedColorType::L8),
        f => {
            crate::preprocess::frame_rgb8(&c.data, f, c.width, c.height, rgb);
            (rgb, ExtendedColorType::Rgb8)
        }
    };
    jpeg.clear();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut *jpeg, 90)
        .encode(pixels, c.width, c.height, colour)
        .map_err(|e| anyhow::anyhow!("camera frame {} as JPEG: {e}", r.seq))?;
    msgs::CompressedImage {
        header: header(r.timestamp_ns, bag::CAMERA_FRAME),
        format: "jpeg",
        data: jpeg,
    }
    .encode(buf);
    Ok(true)
}

/// The colourised BEV map as an rgb8 `Image` in `buf`.
pub(crate) fn encode_bev_image(r: &FrameResult, buf: &mut Vec<u8>) {
    msgs::Image {
        header: header(r.timestamp_ns, bag::VEHICLE_FRAME),
        height: r.map_height as u32,
        width: r.map_width as u32,
        encoding: "rgb8",
        is_bigendian: 0,
        step: 3 * r.map_width as u32,
        data: &r.color_map,
    }
    .encode(buf);
}

/// The class map as an `OccupancyGrid` in `buf`: class index per cell, 255 (unknown) as -1,
/// rows in the grid's order; `cells` is reused scratch.
pub(crate) fn encode_grid(
    r: &FrameResult,
    place: &bag::GridPlacement,
    cells: &mut Vec<u8>,
    buf: &mut Vec<u8>,
) {
    let (w, h) = (r.map_width, r.map_height);
    cells.clear();
    for row in 0..h {
        let src = if place.reverse_rows { h - 1 - row } else { row };
        cells.extend(
            r.class_map[src * w..(src + 1) * w]
                .iter()
                .map(|&c| if c == 255 { 0xFF } else { c.min(100) }),
        );
    }
    msgs::OccupancyGrid {
        header: header(r.timestamp_ns, bag::VEHICLE_FRAME),
        resolution: place.resolution,
        width: w as u32,
        height: h as u32,
        origin_position: place.origin,
        origin_orientation: place.orientation,
        data: cells,
    }
    .encode(buf);
}

impl Sink for McapSink {
    fn name(&self) -> &'static str {
        "mcap"
    }

    fn write(&mut self, r: &FrameResult) -> anyhow::Result<()> {
        if !self.wrote_calibration {
            self.wrote_calibration = true;
            if let Some(c) = self.calibration.take() {
                self.bag
                    .write_calibration(&c, "/camera/camera_info", r.timestamp_ns)?;
            }
        }
        self.write_camera(r)?;
        if self.task == Task::Bev {
            self.write_bev(r)?;
        }
        self.text.clear();
        self.json.write(&mut self.text, r)?;
        self.bag
            .write(self.channels.result, r.timestamp_ns, Some(&self.text))?;
        self.write_metrics(r.timestamp_ns)
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.bag.finish()
    }
}
