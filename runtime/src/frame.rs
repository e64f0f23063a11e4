//! Camera frames: pixels in a pooled buffer plus format, size, time and sequence number.

use std::fmt;

/// Pixel layouts a [`crate::source::FrameSource`] may deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Packed 8-bit R, G, B.
    Rgb8,
    /// Packed 8-bit B, G, R (OpenCV's order).
    Bgr8,
    /// 8-bit luma.
    Gray8,
    /// Packed 4:2:2, Y0 U Y1 V per pixel pair (V4L2 `YUYV`), BT.601 limited range.
    Yuyv,
    /// Planar Y then interleaved UV at half resolution (4:2:0), BT.601 limited range.
    Nv12,
}

impl PixelFormat {
    /// Bytes of one `width x height` frame in this format.
    pub fn frame_bytes(self, width: u32, height: u32) -> usize {
        let (w, h) = (width as usize, height as usize);
        match self {
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => w * h * 3,
            PixelFormat::Gray8 => w * h,
            PixelFormat::Yuyv => w.div_ceil(2) * 2 * h * 2,
            PixelFormat::Nv12 => w * h + w.div_ceil(2) * 2 * h.div_ceil(2),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Rgb8 => "rgb8",
            PixelFormat::Bgr8 => "bgr8",
            PixelFormat::Gray8 => "gray8",
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Nv12 => "nv12",
        }
    }

    pub fn parse(s: &str) -> Option<PixelFormat> {
        Some(match s.to_ascii_lowercase().as_str() {
            "rgb8" | "rgb" => PixelFormat::Rgb8,
            "bgr8" | "bgr" => PixelFormat::Bgr8,
            "gray8" | "gray" | "grey" => PixelFormat::Gray8,
            "yuyv" | "yuy2" => PixelFormat::Yuyv,
            "nv12" => PixelFormat::Nv12,
            _ => return None,
        })
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One camera frame. `data` is a buffer owned by the pipeline's frame pool: sources fill it
/// in place (its capacity is reserved at load, so steady-state filling never allocates).
#[derive(Debug, Clone)]
pub struct Frame {
    pub data: Vec<u8>,
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Capture time in nanoseconds (driver or recording clock; monotonic per source).
    pub timestamp_ns: u64,
    /// Sequence number assigned by the source (gaps mean the source skipped frames).
    pub seq: u64,
    /// When the source handed the frame over (for queue latency).
    pub ready_at: Option<std::time::Instant>,
    /// `timestamp_ns` is on CLOCK_MONOTONIC (a live stream's capture clock), so the time from
    /// capture to map can be measured ([`crate::metrics::Stage::StreamToMap`]).
    pub stamped_monotonic: bool,
    /// The camera's pose in the vehicle at this frame, when the stream carries a moving one
    /// (a bag's `/tf`); the inference stage applies a change before running the frame.
    /// `None`: the calibration in use stands.
    pub camera_pose: Option<bevrt_calib::Extrinsics>,
}

impl Frame {
    /// An empty frame whose buffer can hold `capacity` bytes without reallocating.
    pub fn with_capacity(capacity: usize) -> Frame {
        Frame {
            data: Vec::with_capacity(capacity),
            format: PixelFormat::Rgb8,
            width: 0,
            height: 0,
            timestamp_ns: 0,
            seq: 0,
            ready_at: None,
            stamped_monotonic: false,
            camera_pose: None,
        }
    }

    /// Set size and format and size the buffer to match (within capacity: no allocation).
    /// The bytes are whatever the pooled buffer held (new ones zero): the caller writes the
    /// whole frame, so a same-sized frame is not cleared first (a 1080p NV12 frame is 3 MB of
    /// memset per frame otherwise).
    pub fn reset(&mut self, format: PixelFormat, width: u32, height: u32) {
        self.format = format;
        self.width = width;
        self.height = height;
        self.data.resize(format.frame_bytes(width, height), 0);
    }

    /// Checks that `data` holds a whole frame of the declared format and size.
    pub fn is_consistent(&self) -> bool {
        self.width > 0
            && self.height > 0
            && self.data.len() == self.format.frame_bytes(self.width, self.height)
    }
}
