//! `v4l:/dev/videoN?width=W&height=H&fps=F&format=yuyv|mjpeg`: a V4L2 camera, mmap streaming.
//!
//! Timestamps and sequence numbers come from the driver. When the device disappears (USB
//! unplug, driver reset) or stalls for `timeout_ms`, the stream is closed and reopened with
//! exponential back-off (100 ms doubling to 5 s); each failed attempt is a recoverable error
//! the pipeline counts, so a camera that returns is picked up without a restart.

use super::{FrameSource, LinkCounts, SourceError, SourceSpec, SourceStatus, decode_into};
use crate::frame::{Frame, PixelFormat};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wire {
    Yuyv,
    Mjpeg,
}

pub struct V4lSource {
    path: PathBuf,
    want: (u32, u32, u32, Wire),
    got: (u32, u32, u32),
    timeout: Duration,
    live: Option<(Device, Stream<'static>)>,
    backoff: Duration,
    next_retry: Instant,
    scratch: Vec<u8>,
    reconnects: u64,
    lost: u64,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl V4lSource {
    pub fn open(spec: &SourceSpec) -> Result<Self, SourceError> {
        spec.only_options(&["width", "height", "fps", "format", "timeout_ms"])?;
        let width = spec.opt("width")?.unwrap_or(640);
        let height = spec.opt("height")?.unwrap_or(480);
        let fps = spec.opt("fps")?.unwrap_or(30);
        let wire = match spec
            .options
            .get("format")
            .map(|s| s.as_str())
            .unwrap_or("yuyv")
        {
            "yuyv" => Wire::Yuyv,
            "mjpeg" | "mjpg" => Wire::Mjpeg,
            f => return Err(spec.error(format!("format '{f}': expected yuyv or mjpeg"))),
        };
        let timeout = Duration::from_millis(spec.opt("timeout_ms")?.unwrap_or(2000));
        let path = PathBuf::from(&spec.body);
        if !path.exists() {
            return Err(SourceError::Open {
                path,
                message: "no such video device".into(),
            });
        }
        let mut s = V4lSource {
            path,
            want: (width, height, fps, wire),
            got: (width, height, fps),
            timeout,
            live: None,
            backoff: MIN_BACKOFF,
            next_retry: Instant::now(),
            scratch: Vec::new(),
            reconnects: 0,
            lost: 0,
        };
        // The first open must work: a wrong path or format is a configuration error.
        s.connect().map_err(|e| SourceError::Open {
            path: s.path.clone(),
            message: e,
        })?;
        Ok(s)
    }

    fn connect(&mut self) -> Result<(), String> {
        let (w, h, fps, wire) = self.want;
        let dev = Device::with_path(&self.path).map_err(|e| format!("cannot open device: {e}"))?;
        let mut fmt = dev
            .format()
            .map_err(|e| format!("cannot read format: {e}"))?;
        fmt.width = w;
        fmt.height = h;
        fmt.fourcc = FourCC::new(match wire {
            Wire::Yuyv => b"YUYV",
            Wire::Mjpeg => b"MJPG",
        });
        let fmt = dev
            .set_format(&fmt)
            .map_err(|e| format!("cannot set format: {e}"))?;
        if fmt.fourcc != FourCC::new(if wire == Wire::Yuyv { b"YUYV" } else { b"MJPG" }) {
            return Err(format!(
                "device does not offer {wire:?} (it chose {})",
                fmt.fourcc
            ));
        }
        if (fmt.width, fmt.height) != (w, h) {
            log::warn!(
                "{}: asked for {w}x{h}, driver gives {}x{}",
                self.path.display(),
                fmt.width,
                fmt.height
            );
        }
        let params = dev
            .set_params(&v4l::video::capture::Parameters::with_fps(fps))
            .map_err(|e| format!("cannot set frame rate: {e}"))?;
        let got_fps = params
            .interval
            .denominator
            .checked_div(params.interval.numerator)
            .unwrap_or(fps);
        let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, 4)
            .map_err(|e| format!("cannot start mmap streaming: {e}"))?;
        stream.set_timeout(self.timeout);
        self.got = (fmt.width, fmt.height, got_fps);
        self.live = Some((dev, stream));
        self.backoff = MIN_BACKOFF;
        Ok(())
    }

    fn transient(&self, message: String) -> SourceError {
        SourceError::Transient {
            path: self.path.clone(),
            message,
        }
    }
}

impl FrameSource for V4lSource {
    fn describe(&self) -> String {
        let (w, h, fps) = self.got;
        format!(
            "v4l:{} {w}x{h} {:?} at {fps} fps (reconnects {})",
            self.path.display(),
            self.want.3,
            self.reconnects
        )
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<SourceStatus, SourceError> {
        if self.live.is_none() {
            let now = Instant::now();
            if now < self.next_retry {
                std::thread::sleep(self.next_retry - now);
            }
            if let Err(e) = self.connect() {
                let wait = self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                self.next_retry = Instant::now() + wait;
                return Err(self.transient(format!("{e}; retrying in {} ms", wait.as_millis())));
            }
            self.reconnects += 1;
            log::info!("{}: camera back ({})", self.path.display(), self.describe());
        }
        let (w, h, _) = self.got;
        let wire = self.want.3;
        let (_, stream) = self.live.as_mut().expect("connected above");
        let r = stream.next().map(|(buf, meta)| {
            let used = (meta.bytesused as usize).min(buf.len());
            (buf, used, meta.timestamp, meta.sequence)
        });
        let (buf, used, ts, seq) = match r {
            Ok(x) => x,
            Err(e) => {
                self.live = None;
                self.lost += 1;
                self.next_retry = Instant::now() + self.backoff;
                return Err(self.transient(format!(
                    "capture failed ({e}); camera lost or stalled, reconnecting"
                )));
            }
        };
        match wire {
            Wire::Yuyv => {
                frame.reset(PixelFormat::Yuyv, w, h);
                let need = frame.data.len();
                if used < need {
                    return Err(SourceError::BadFrame {
                        path: self.path.clone(),
                        message: format!("short YUYV frame: {used} of {need} bytes"),
                    });
                }
                frame.data.copy_from_slice(&buf[..need]);
            }
            Wire::Mjpeg => {
                decode_into(&buf[..used], frame, &mut self.scratch, &self.path)?;
            }
        }
        frame.timestamp_ns = ts.sec as u64 * 1_000_000_000 + ts.usec as u64 * 1_000;
        frame.seq = seq as u64;
        Ok(SourceStatus::Frame)
    }

    fn is_live(&self) -> bool {
        true
    }

    fn max_frame_bytes(&self) -> Option<usize> {
        Some(self.want.0 as usize * self.want.1 as usize * 3)
    }

    fn link(&self) -> LinkCounts {
        LinkCounts {
            lost: self.lost,
            back: self.reconnects,
        }
    }
}
