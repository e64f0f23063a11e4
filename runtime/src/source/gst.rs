//! GStreamer sources (cargo feature `gst`): whatever a GStreamer pipeline decodes, into
//! bevrt's pooled frames.
//!
//! - `gst:PIPELINE`: the user's pipeline, to which bevrt appends
//!   `! appsink name=bevrt_sink caps=video/x-raw,format={NV12,RGB,BGR,GRAY8,YUY2}`; end it
//!   in one of those formats (`videoconvert` does it on the CPU, `nvvidconv` on a Jetson).
//!   Everything after `gst:` is the pipeline, `?` included: it has no bevrt options.
//! - `rtsp://URL` (and `rtsps://`): `rtspsrc location=URL latency=100 ! decodebin !
//!   videoconvert`; H.264, H.265, MJPEG, whatever decodebin finds a decoder for.
//! - `video:FILE[?fps=N|?realtime]`: `filesrc ! decodebin ! videoconvert` (MP4, MKV, AVI, ...),
//!   as fast as possible by default (lossless), or paced like the other file sources.
//!
//! The appsink offers NV12 first: a decoder's I420 becomes NV12 by moving chroma bytes, and
//! bevrt's preprocess converts to RGB only at the network's resolution. Rows are copied out
//! of GStreamer's buffer (its strides) into the pooled frame; nothing in this file allocates
//! per frame. Frame timestamps are the buffer PTS: on the pipeline clock (CLOCK_MONOTONIC,
//! nanoseconds) for live sources, stream time for files.
//!
//! Live sources (RTSP, cameras: the pipeline says so by not prerolling) keep at most two
//! decoded frames in the appsink, dropping the oldest, and bevrt's own queue drops the oldest
//! as for every live source. A live stream that errors, ends or delivers nothing for
//! `timeout_ms` (gst: and rtsp: 5 s) is torn down and rebuilt with back-off (100 ms doubling
//! to 5 s): the loss and the return are counted (`camera_lost` / `camera_back`), the pipeline
//! never stops. A file that ends ends the run; a file that fails mid-way ends it with the
//! error. The first frame must arrive at open, so a typo, a missing plugin, a server that is
//! not there or an unreadable file is a one-line error before the run starts.

use super::{FrameSource, LinkCounts, Playback, SourceError, SourceSpec, SourceStatus};
use crate::frame::{Frame, PixelFormat};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The caps bevrt's appsink accepts, in order of preference.
const SINK_CAPS: &str = "video/x-raw,format=(string){NV12,RGB,BGR,GRAY8,YUY2}";
const SINK_NAME: &str = "bevrt_sink";
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a live source may stay silent before it counts as lost, and how long opening (or
/// reopening) waits for the first frame.
const LIVE_TIMEOUT: Duration = Duration::from_secs(5);
const FILE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which spelling opened the source: it decides liveness and how a failure is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pipeline,
    Rtsp,
    Video,
}

/// One built and playing pipeline.
struct Running {
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    /// The pipeline's clock time when it started playing: PTS + base time = capture clock.
    base_time: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

pub struct GstSource {
    kind: Kind,
    /// What the user wrote, for messages (a file's path, the URL, or the pipeline).
    name: PathBuf,
    /// The pipeline text without bevrt's appsink.
    launch: String,
    live: bool,
    timeout: Duration,
    running: Option<Running>,
    /// A sample pulled while opening, delivered as the first frame.
    first: Option<gst::Sample>,
    playback: Option<Playback>,
    backoff: Duration,
    next_retry: Instant,
    seq: u64,
    max_bytes: usize,
    link: LinkCounts,
}

/// The pipeline text a spec names.
fn launch_text(spec: &SourceSpec) -> Result<(Kind, PathBuf, String), SourceError> {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    match spec.scheme.as_str() {
        "gst" => {
            let text = spec.raw["gst:".len()..].trim().to_string();
            if text.is_empty() {
                return Err(spec.error("an empty pipeline (write gst:ELEMENT ! ELEMENT ...)"));
            }
            Ok((Kind::Pipeline, PathBuf::from(&text), text))
        }
        "rtsp" | "rtsps" => Ok((
            Kind::Rtsp,
            PathBuf::from(&spec.raw),
            format!(
                "rtspsrc location={} latency=100 ! decodebin ! videoconvert",
                quote(&spec.raw)
            ),
        )),
        "video" => {
            spec.only_options(&["fps", "realtime"])?;
            let path = PathBuf::from(&spec.body);
            if let Err(e) = std::fs::metadata(&path) {
                return Err(SourceError::Open {
                    path,
                    message: e.to_string(),
                });
            }
            Ok((
                Kind::Video,
                path,
                format!(
                    "filesrc location={} ! decodebin ! videoconvert",
                    quote(&spec.body)
                ),
            ))
        }
        other => Err(spec.error(format!("not a GStreamer scheme: '{other}'"))),
    }
}

impl GstSource {
    pub fn open(spec: &SourceSpec) -> Result<GstSource, SourceError> {
        let (kind, name, launch) = launch_text(spec)?;
        gst::init().map_err(|e| SourceError::Open {
            path: name.clone(),
            message: format!("GStreamer does not start: {e}"),
        })?;
        let playback = match kind {
            Kind::Video => Some(Playback::from_spec(spec)?),
            _ => None,
        };
        let mut s = GstSource {
            kind,
            name,
            launch,
            live: kind == Kind::Rtsp,
            timeout: if kind == Kind::Video {
                FILE_TIMEOUT
            } else {
                LIVE_TIMEOUT
            },
            running: None,
            first: None,
            playback,
            backoff: MIN_BACKOFF,
            next_retry: Instant::now(),
            seq: 0,
            max_bytes: 0,
            link: LinkCounts::default(),
        };
        // The first start must work: a typo, a missing plugin or no server is a configuration
        // error, not a camera to wait for.
        let first = s.start().map_err(|message| SourceError::Open {
            path: s.name.clone(),
            message,
        })?;
        s.max_bytes = frame_bytes_of(&first).unwrap_or(0).max(1920 * 1080 * 3);
        s.first = Some(first);
        Ok(s)
    }

    /// Build the pipeline, play it, and wait for its first frame.
    fn start(&mut self) -> Result<gst::Sample, String> {
        self.running = None;
        let text = format!(
            "{} ! appsink name={SINK_NAME} caps=\"{SINK_CAPS}\"",
            self.launch
        );
        let pipeline = gst::parse::launch(&text)
            .map_err(|e| format!("pipeline does not parse: {e}"))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| "the description is a single element, not a pipeline".to_string())?;
        let sink = pipeline
            .by_name(SINK_NAME)
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or("the pipeline has no appsink (an unterminated branch?)")?;
        // Never paced by the sink: live frames go out as they come, files as fast as
        // bevrt takes them (`fps=`/`realtime` pace them like the other file sources).
        sink.set_sync(false);
        let started = pipeline.set_state(gst::State::Playing);
        let mut running = Running {
            pipeline,
            sink,
            base_time: 0,
        };
        if let Err(e) = started {
            return Err(
                bus_error(&running.pipeline).unwrap_or_else(|| format!("cannot start: {e}"))
            );
        }
        if started == Ok(gst::StateChangeSuccess::NoPreroll) {
            self.live = true;
        }
        // Live: at most two decoded frames wait, the oldest goes; files: back-pressure.
        running.sink.set_max_buffers(if self.live { 2 } else { 4 });
        running.sink.set_drop(self.live);
        let sample = pull(&running, self.timeout)?;
        running.base_time = running
            .pipeline
            .base_time()
            .map(|t| t.nseconds())
            .unwrap_or(0);
        self.running = Some(running);
        Ok(sample)
    }

    fn fail(&self, message: String) -> SourceError {
        SourceError::Transient {
            path: self.name.clone(),
            message,
        }
    }

    /// A live source without a pipeline: rebuild it once its back-off has passed.
    fn reconnect(&mut self) -> Result<(), SourceError> {
        let now = Instant::now();
        if now < self.next_retry {
            std::thread::sleep(self.next_retry - now);
        }
        match self.start() {
            Ok(sample) => {
                self.first = Some(sample);
                self.backoff = MIN_BACKOFF;
                self.link.back += 1;
                log::info!("{}: stream back", self.name.display());
                Ok(())
            }
            Err(e) => {
                let wait = self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                self.next_retry = Instant::now() + wait;
                Err(self.fail(format!("{e}; retrying in {} ms", wait.as_millis())))
            }
        }
    }

    /// The live stream is gone: tear it down and count it.
    fn lose(&mut self, why: String) -> SourceError {
        self.running = None;
        self.link.lost += 1;
        self.next_retry = Instant::now() + self.backoff;
        self.fail(format!("stream lost ({why}); reconnecting"))
    }
}

/// The next decoded frame, or why there is none (an error, the end, silence).
fn pull(r: &Running, timeout: Duration) -> Result<gst::Sample, String> {
    let deadline = Instant::now() + timeout;
    loop {
        // Short waits, so an error on the bus is seen soon, not after the whole timeout.
        let step = gst::ClockTime::from_mseconds(100);
        if let Some(s) = r.sink.try_pull_sample(step) {
            return Ok(s);
        }
        if let Some(e) = bus_error(&r.pipeline) {
            return Err(e);
        }
        if r.sink.is_eos() {
            return Err("end of stream".into());
        }
        if Instant::now() >= deadline {
            return Err(format!("no frame for {} ms", timeout.as_millis()));
        }
    }
}

/// The first error the pipeline posted, as one line: the element and GStreamer's message.
fn bus_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    while let Some(m) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(e) = m.view() {
            let from = e
                .src()
                .map(|s| s.name().to_string())
                .unwrap_or_else(|| "pipeline".into());
            let mut text = format!("{from}: {}", e.error());
            // Debug text names the cause (a demuxer's "file is incomplete"); first line only.
            if let Some(d) = e.debug()
                && let Some(line) = d.lines().rev().find(|l| !l.trim().is_empty())
            {
                let line = line.trim();
                if line.len() < 200 && !text.contains(line) {
                    text.push_str(&format!(" ({line})"));
                }
            }
            return Some(text.replace('\n', " "));
        }
    }
    None
}

/// The pixel format and size a sample's caps declare.
fn layout(sample: &gst::Sample) -> Result<(gst_video::VideoInfo, PixelFormat), String> {
    let caps = sample.caps().ok_or("a frame without caps")?;
    let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| format!("caps {caps}: {e}"))?;
    let format = match info.format() {
        gst_video::VideoFormat::Nv12 => PixelFormat::Nv12,
        gst_video::VideoFormat::Rgb => PixelFormat::Rgb8,
        gst_video::VideoFormat::Bgr => PixelFormat::Bgr8,
        gst_video::VideoFormat::Gray8 => PixelFormat::Gray8,
        gst_video::VideoFormat::Yuy2 => PixelFormat::Yuyv,
        f => {
            return Err(format!(
                "pixel format {f:?} (bevrt reads NV12, RGB, BGR, GRAY8, YUY2)"
            ));
        }
    };
    Ok((info, format))
}

fn frame_bytes_of(sample: &gst::Sample) -> Option<usize> {
    let (info, _) = layout(sample).ok()?;
    Some(PixelFormat::Rgb8.frame_bytes(info.width(), info.height()))
}

/// Copy a decoded sample into `frame`, row by row through GStreamer's strides.
fn copy_sample(sample: &gst::Sample, frame: &mut Frame) -> Result<Option<u64>, String> {
    let (info, format) = layout(sample)?;
    let buffer = sample.buffer().ok_or("a sample without a buffer")?;
    let video = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
        .map_err(|e| format!("cannot map the frame: {e}"))?;
    let (w, h) = (info.width(), info.height());
    frame.reset(format, w, h);
    let (w, h) = (w as usize, h as usize);
    // (row bytes, rows) of each plane in bevrt's packed layout
    let planes: &[(usize, usize)] = match format {
        PixelFormat::Rgb8 | PixelFormat::Bgr8 => &[(w * 3, h)],
        PixelFormat::Gray8 => &[(w, h)],
        PixelFormat::Yuyv => &[(w.div_ceil(2) * 4, h)],
        PixelFormat::Nv12 => &[(w, h), (w.div_ceil(2) * 2, h.div_ceil(2))],
    };
    let mut at = 0;
    for (p, &(row, rows)) in planes.iter().enumerate() {
        let src = video
            .plane_data(p as u32)
            .map_err(|e| format!("plane {p}: {e}"))?;
        let stride = video.info().stride()[p] as usize;
        if stride < row || src.len() < stride * (rows - 1) + row {
            return Err(format!(
                "plane {p} is shorter than {rows} rows of {row} bytes"
            ));
        }
        for y in 0..rows {
            frame.data[at..at + row].copy_from_slice(&src[y * stride..y * stride + row]);
            at += row;
        }
    }
    Ok(buffer.pts().map(|t| t.nseconds()))
}

impl FrameSource for GstSource {
    fn describe(&self) -> String {
        let what = match self.kind {
            Kind::Pipeline => "gst",
            Kind::Rtsp => "rtsp",
            Kind::Video => "video",
        };
        format!(
            "{what}: {} ({}, lost {} back {})",
            self.name.display(),
            if self.live { "live" } else { "file" },
            self.link.lost,
            self.link.back
        )
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<SourceStatus, SourceError> {
        if self.running.is_none() {
            if !self.live {
                return Ok(SourceStatus::End);
            }
            self.reconnect()?;
        }
        let pulled = match self.first.take() {
            Some(s) => Ok(s),
            None => pull(self.running.as_ref().expect("running above"), self.timeout),
        };
        let sample = match pulled {
            Ok(s) => s,
            Err(e) if self.live => return Err(self.lose(e)),
            Err(e) if e == "end of stream" => {
                self.running = None;
                return Ok(SourceStatus::End);
            }
            Err(e) => {
                self.running = None;
                return Err(SourceError::Open {
                    path: self.name.clone(),
                    message: format!("stopped after {} frames: {e}", self.seq),
                });
            }
        };
        let pts = copy_sample(&sample, frame).map_err(|message| SourceError::BadFrame {
            path: self.name.clone(),
            message,
        })?;
        let base = self.running.as_ref().map(|r| r.base_time).unwrap_or(0);
        frame.timestamp_ns = match (pts, self.live) {
            (Some(t), true) => base + t,
            (Some(t), false) => t,
            (None, _) => super::monotonic_ns(),
        };
        frame.stamped_monotonic = self.live && pts.is_some();
        frame.seq = self.seq;
        self.seq += 1;
        if let Some(p) = &mut self.playback {
            p.wait_for(frame.timestamp_ns);
        }
        Ok(SourceStatus::Frame)
    }

    fn is_live(&self) -> bool {
        self.live || self.playback.as_ref().is_some_and(|p| p.is_live())
    }

    fn max_frame_bytes(&self) -> Option<usize> {
        Some(self.max_bytes)
    }

    fn link(&self) -> LinkCounts {
        self.link
    }
}
