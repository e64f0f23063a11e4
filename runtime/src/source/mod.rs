//! Frame sources: everything that produces camera frames, behind one trait.
//!
//! A source is chosen by a URI-like spec (see [`open`]):
//! - `images:GLOB[?fps=N]`: PNG/JPEG files in name order;
//! - `replay:DIR[?fps=N|?realtime]`: a recording (see [`replay`] for the format);
//! - `v4l:/dev/videoN?width=&height=&fps=&format=yuyv|mjpeg` (cargo feature `v4l`);
//! - `sim:?seed=S&fps=N[&width=W&height=H]`: the synthetic driving world (bevrt-sim);
//! - `mcap:FILE?topic=/camera/image_raw[&info=...]`: a ROS 2 bag (see [`mcap`]);
//! - `gst:PIPELINE`, `rtsp://URL`, `video:FILE.mp4` (cargo feature `gst`, see [`gst`]):
//!   GStreamer pipelines, RTSP cameras, recorded video.
//!
//! Sources fill a pooled [`Frame`] in place. A bad frame is an `Err(SourceError::BadFrame)`
//! that the pipeline counts and skips; the stream goes on.

#[cfg(feature = "gst")]
pub mod gst;
pub mod images;
pub mod mcap;
pub mod poses;
mod registry;
pub mod replay;
pub mod sim;
#[cfg(feature = "v4l")]
pub mod v4l;

use crate::frame::Frame;
use std::collections::BTreeMap;

pub use registry::open;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The spec itself is wrong; nothing was opened.
    #[error("source '{spec}': {message}")]
    Spec { spec: String, message: String },
    /// A file or device could not be opened at all.
    #[error("{path}: {message}")]
    Open { path: PathBuf, message: String },
    /// One frame is unusable (truncated, undecodable, wrong size); the stream goes on.
    #[error("{path}: bad frame: {message}")]
    BadFrame { path: PathBuf, message: String },
    /// The device went away or stalled; the source is trying to get it back.
    #[error("{path}: {message}")]
    Transient { path: PathBuf, message: String },
}

impl SourceError {
    /// Whether the stream can go on after this error.
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            SourceError::BadFrame { .. } | SourceError::Transient { .. }
        )
    }
}

/// What `next_frame` produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// `frame` holds a new frame.
    Frame,
    /// The stream has ended (files exhausted); live sources never end.
    End,
}

pub trait FrameSource: Send {
    /// Human-readable description for logs.
    fn describe(&self) -> String;
    /// Fill `frame` with the next frame, blocking (and pacing) as the source requires.
    fn next_frame(&mut self, frame: &mut Frame) -> Result<SourceStatus, SourceError>;
    /// Live sources (cameras, paced playback) must not be slowed by inference: the pipeline
    /// drops the oldest queued frame instead. Unpaced file sources block instead, losing
    /// nothing.
    fn is_live(&self) -> bool;
    /// Largest frame in bytes this source will deliver, when known, to size the pool.
    fn max_frame_bytes(&self) -> Option<usize> {
        None
    }
    /// Calibration file that came with the stream (a recording's), if any.
    fn calibration_path(&self) -> Option<PathBuf> {
        None
    }
    /// How often a live stream was lost and came back so far (cameras, RTSP).
    fn link(&self) -> LinkCounts {
        LinkCounts::default()
    }
    /// Calibration carried inside the stream (a bag's CameraInfo and tf), if any; either part
    /// may be missing.
    fn stream_calibration(&self) -> Option<StreamCalibration> {
        None
    }
}

/// A live source's losses and returns, counted by the source itself (the pipeline mirrors
/// them into `camera_lost` / `camera_back`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounts {
    pub lost: u64,
    pub back: u64,
}

/// Calibration a stream carries: the camera model and the camera's pose in the vehicle,
/// either of which may be absent.
#[derive(Debug, Clone)]
pub struct StreamCalibration {
    pub camera: Option<bevrt_calib::CameraModel>,
    pub extrinsics: Option<bevrt_calib::Extrinsics>,
    /// Where it came from, for logs.
    pub origin: String,
}

/// A parsed spec: scheme, body and `?key=value&...` options.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub raw: String,
    pub scheme: String,
    pub body: String,
    pub options: BTreeMap<String, String>,
}

impl SourceSpec {
    pub fn parse(spec: &str) -> Result<SourceSpec, SourceError> {
        let err = |m: &str| SourceError::Spec {
            spec: spec.to_string(),
            message: m.to_string(),
        };
        let (scheme, rest) = spec.split_once(':').ok_or_else(|| {
            err("expected SCHEME:BODY (images:, replay:, v4l:, sim:, mcap:, gst:, rtsp://, video:)")
        })?;
        let (body, query) = match rest.split_once('?') {
            Some((b, q)) => (b, q),
            None => (rest, ""),
        };
        let mut options = BTreeMap::new();
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            options.insert(k.to_string(), v.to_string());
        }
        Ok(SourceSpec {
            raw: spec.to_string(),
            scheme: scheme.to_string(),
            body: body.to_string(),
            options,
        })
    }

    fn error(&self, message: impl Into<String>) -> SourceError {
        SourceError::Spec {
            spec: self.raw.clone(),
            message: message.into(),
        }
    }

    /// Option `key` parsed as `T`, with a clear error when it does not parse.
    pub fn opt<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, SourceError> {
        match self.options.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| self.error(format!("option '{key}={v}' is not a valid value"))),
        }
    }

    /// Refuse options this scheme does not know, so typos are not silently ignored.
    pub fn only_options(&self, known: &[&str]) -> Result<(), SourceError> {
        for k in self.options.keys() {
            if !known.contains(&k.as_str()) {
                return Err(self.error(format!(
                    "unknown option '{k}' (known: {})",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// Sleeps so frames come out at a fixed period; resynchronises after a stall instead of
/// bursting to catch up (a live camera does not deliver missed frames later).
#[derive(Debug, Clone)]
pub struct Pacer {
    period: Option<Duration>,
    next_due: Option<Instant>,
}

impl Pacer {
    /// `fps` of 0 or less means as fast as possible.
    pub fn new(fps: f64) -> Pacer {
        Pacer {
            period: (fps > 0.0).then(|| Duration::from_secs_f64(1.0 / fps)),
            next_due: None,
        }
    }
    pub fn is_paced(&self) -> bool {
        self.period.is_some()
    }
    /// Wait for the next slot.
    pub fn wait(&mut self) {
        let Some(period) = self.period else { return };
        let now = Instant::now();
        match self.next_due {
            None => self.next_due = Some(now + period),
            Some(due) => {
                if due > now {
                    std::thread::sleep(due - now);
                    self.next_due = Some(due + period);
                } else {
                    self.next_due = Some(now + period);
                }
            }
        }
    }
}

/// How a file source plays: as fast as possible (lossless), at `fps=N`, or at the recorded
/// timestamps with `realtime` (both of the latter are live: the pipeline drops the oldest
/// queued frame instead of waiting).
#[derive(Debug, Clone)]
pub struct Playback {
    pacer: Pacer,
    use_timestamps: bool,
    /// Wall clock and stream time of the first frame played in real time.
    realtime: Option<(Instant, u64)>,
}

impl Playback {
    /// From the `fps` and `realtime` options of `spec`.
    pub fn from_spec(spec: &SourceSpec) -> Result<Playback, SourceError> {
        let fps: f64 = spec.opt("fps")?.unwrap_or(0.0);
        let use_timestamps = spec.options.contains_key("realtime");
        if use_timestamps && fps > 0.0 {
            return Err(spec.error("give either fps=N or realtime, not both"));
        }
        Ok(Playback {
            pacer: Pacer::new(fps),
            use_timestamps,
            realtime: None,
        })
    }

    /// Wait until the frame stamped `ts` (nanoseconds) is due.
    pub fn wait_for(&mut self, ts: u64) {
        if self.use_timestamps {
            let (start, ts0) = *self.realtime.get_or_insert((Instant::now(), ts));
            let due = start + Duration::from_nanos(ts.saturating_sub(ts0));
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        } else {
            self.pacer.wait();
        }
    }

    pub fn is_live(&self) -> bool {
        self.use_timestamps || self.pacer.is_paced()
    }
}

/// Nanoseconds on the process's monotonic clock, for sources without their own timestamps.
pub fn monotonic_ns() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Largest frame a decoder may produce: a file declaring more is refused before any
/// allocation (a 100000x100000 PNG header would otherwise ask for 30 GB).
pub const MAX_FRAME_PIXELS: u64 = 64 << 20;

/// Decode a PNG or JPEG held in `bytes` straight into `frame` (RGB8 or GRAY8), without an
/// intermediate image; `scratch` is used only for formats that need a conversion (alpha).
/// Any byte string gives `Ok` or an error, never a panic (fuzzed: `tests/fuzz`).
pub fn decode_into(
    bytes: &[u8],
    frame: &mut Frame,
    scratch: &mut Vec<u8>,
    path: &std::path::Path,
) -> Result<(), SourceError> {
    use crate::frame::PixelFormat;
    use image::{ColorType, ImageDecoder};
    let bad = |m: String| SourceError::BadFrame {
        path: path.to_path_buf(),
        message: m,
    };
    let is_jpeg = bytes.starts_with(&[0xFF, 0xD8]);
    if is_jpeg {
        // A JPEG cut short still decodes as grey bands in most decoders; refuse it instead.
        let tail = &bytes[bytes.len().saturating_sub(64)..];
        if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
            return Err(bad(
                "truncated JPEG (no end-of-image marker): file cut short?".into(),
            ));
        }
    }
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    if reader.format().is_none() {
        return Err(bad("not a PNG or JPEG image".into()));
    }
    let decoder = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 || w as u64 * h as u64 > MAX_FRAME_PIXELS {
        return Err(bad(format!(
            "image of {w}x{h} pixels: empty or over the {} megapixel frame limit",
            MAX_FRAME_PIXELS >> 20
        )));
    }
    let ct = decoder.color_type();
    match ct {
        ColorType::Rgb8 => {
            frame.reset(PixelFormat::Rgb8, w, h);
            decoder
                .read_image(&mut frame.data)
                .map_err(|e| bad(e.to_string()))?;
        }
        ColorType::L8 => {
            frame.reset(PixelFormat::Gray8, w, h);
            decoder
                .read_image(&mut frame.data)
                .map_err(|e| bad(e.to_string()))?;
        }
        ColorType::Rgba8 | ColorType::La8 => {
            let src_c = if ct == ColorType::Rgba8 { 4 } else { 2 };
            scratch.clear();
            scratch.resize(decoder.total_bytes() as usize, 0);
            decoder
                .read_image(scratch)
                .map_err(|e| bad(e.to_string()))?;
            if src_c == 4 {
                frame.reset(PixelFormat::Rgb8, w, h);
                for (d, s) in frame.data.chunks_exact_mut(3).zip(scratch.chunks_exact(4)) {
                    d.copy_from_slice(&s[..3]);
                }
            } else {
                frame.reset(PixelFormat::Gray8, w, h);
                for (d, s) in frame.data.iter_mut().zip(scratch.chunks_exact(2)) {
                    *d = s[0];
                }
            }
        }
        other => {
            return Err(bad(format!(
                "unsupported pixel type {other:?} (need 8-bit gray, RGB or RGBA)"
            )));
        }
    }
    Ok(())
}
