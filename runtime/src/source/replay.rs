//! `replay:DIR[?fps=N|?realtime]`: play back a recording.
//!
//! # Recording format (version 1)
//! ```text
//! DIR/recording.toml    format = 1, width, height, pixel_format (rgb8|bgr8|gray8|yuyv|nv12),
//!                       encoding (raw|png|jpeg), fps (nominal), optional calibration = FILE,
//!                       optional ground_truth = "bev" (what the gt files hold)
//! DIR/frames.csv        header `seq,timestamp_ns,file,gt`, one line per frame in order;
//!                       `file` and `gt` are relative to DIR, `gt` may be empty
//! DIR/frames/...        raw frames hold exactly width*height*bpp bytes of pixel_format;
//!                       png/jpeg frames are decoded to RGB8 or GRAY8
//! DIR/gt/...            optional ground truth per frame (BEV class-index PNG, 255 = unknown)
//! DIR/calibration.toml  optional camera calibration the frames were taken with
//! ```
//! Frames are played as fast as possible by default (lossless, the queue blocks), at a fixed
//! rate with `fps=N`, or at the recorded timestamps with `realtime` (both live: drop-oldest).
//! A frame that cannot be read or decoded is reported, counted and skipped.

use super::{FrameSource, Playback, SourceError, SourceSpec, SourceStatus, decode_into};
use crate::frame::{Frame, PixelFormat};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const RECORDING_FILE: &str = "recording.toml";
pub const INDEX_FILE: &str = "frames.csv";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameEncoding {
    Raw,
    Png,
    Jpeg,
}

/// `recording.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingInfo {
    pub format: u32,
    pub width: u32,
    pub height: u32,
    pub pixel_format: String,
    pub encoding: FrameEncoding,
    pub fps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ground_truth: Option<String>,
}

/// One line of `frames.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub seq: u64,
    pub timestamp_ns: u64,
    pub file: PathBuf,
    pub gt: Option<PathBuf>,
}

/// A recording's header and index, read and checked.
#[derive(Debug, Clone)]
pub struct Recording {
    pub dir: PathBuf,
    pub info: RecordingInfo,
    pub pixel_format: PixelFormat,
    pub frames: Vec<IndexEntry>,
}

fn open_err(path: &Path, message: String) -> SourceError {
    SourceError::Open {
        path: path.to_path_buf(),
        message,
    }
}

impl Recording {
    pub fn open(dir: &Path) -> Result<Recording, SourceError> {
        if !dir.is_dir() {
            return Err(open_err(
                dir,
                if dir.exists() {
                    "is a file, expected a recording directory (holding recording.toml)".into()
                } else {
                    "no such recording directory".into()
                },
            ));
        }
        let hpath = dir.join(RECORDING_FILE);
        let text = std::fs::read_to_string(&hpath)
            .map_err(|e| open_err(&hpath, format!("cannot read recording header: {e}")))?;
        let (info, pixel_format) = Self::parse_header(&text, &hpath)?;
        let ipath = dir.join(INDEX_FILE);
        let index = std::fs::read_to_string(&ipath)
            .map_err(|e| open_err(&ipath, format!("cannot read frame index: {e}")))?;
        let frames = Self::parse_index(&index, dir, &ipath)?;
        Ok(Recording {
            dir: dir.to_path_buf(),
            info,
            pixel_format,
            frames,
        })
    }

    /// Parse and check `recording.toml` (`hpath` names it in errors). Any text gives `Ok`
    /// or an error, never a panic (fuzzed: `tests/fuzz`).
    pub fn parse_header(
        text: &str,
        hpath: &Path,
    ) -> Result<(RecordingInfo, PixelFormat), SourceError> {
        let info: RecordingInfo = toml::from_str(text).map_err(|e| {
            open_err(
                hpath,
                format!("malformed: {}", e.to_string().trim().replace('\n', " | ")),
            )
        })?;
        if info.format != 1 {
            return Err(open_err(
                hpath,
                format!("field 'format': version {} not supported", info.format),
            ));
        }
        let pixel_format = PixelFormat::parse(&info.pixel_format).ok_or_else(|| {
            open_err(
                hpath,
                format!("field 'pixel_format': unknown '{}'", info.pixel_format),
            )
        })?;
        if info.width == 0 || info.height == 0 {
            return Err(open_err(
                hpath,
                "fields 'width'/'height' must be > 0".into(),
            ));
        }
        if info.width as u64 * info.height as u64 > super::MAX_FRAME_PIXELS {
            return Err(open_err(
                hpath,
                format!(
                    "fields 'width'/'height': {}x{} is over the {} megapixel frame limit",
                    info.width,
                    info.height,
                    super::MAX_FRAME_PIXELS >> 20
                ),
            ));
        }
        Ok((info, pixel_format))
    }

    /// Parse `frames.csv` of the recording in `dir` (`ipath` names it in errors). Any text
    /// gives `Ok` or an error, never a panic (fuzzed: `tests/fuzz`).
    pub fn parse_index(
        index: &str,
        dir: &Path,
        ipath: &Path,
    ) -> Result<Vec<IndexEntry>, SourceError> {
        let mut frames = Vec::new();
        for (n, line) in index.lines().enumerate() {
            if n == 0 {
                if !line.starts_with("seq,timestamp_ns,file") {
                    return Err(open_err(
                        ipath,
                        "line 1: expected header 'seq,timestamp_ns,file,gt'".into(),
                    ));
                }
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.split(',').collect();
            let bad = |m: &str| open_err(ipath, format!("line {}: {m}", n + 1));
            if cols.len() < 3 {
                return Err(bad("expected seq,timestamp_ns,file[,gt]"));
            }
            let seq = cols[0].trim().parse().map_err(|_| bad("bad seq"))?;
            let timestamp_ns = cols[1]
                .trim()
                .parse()
                .map_err(|_| bad("bad timestamp_ns"))?;
            let file = cols[2].trim();
            if file.is_empty() || Path::new(file).is_absolute() || file.contains("..") {
                return Err(bad("file must be a relative path inside the recording"));
            }
            let gt = cols.get(3).map(|s| s.trim()).filter(|s| !s.is_empty());
            if gt.is_some_and(|g| Path::new(g).is_absolute() || g.contains("..")) {
                return Err(bad("gt must be a relative path inside the recording"));
            }
            let gt = gt.map(|s| dir.join(s));
            frames.push(IndexEntry {
                seq,
                timestamp_ns,
                file: dir.join(file),
                gt,
            });
        }
        Ok(frames)
    }

    pub fn calibration_path(&self) -> Option<PathBuf> {
        self.info.calibration.as_ref().map(|c| self.dir.join(c))
    }
}

pub struct ReplaySource {
    rec: Recording,
    next: usize,
    playback: Playback,
    bytes: Vec<u8>,
    scratch: Vec<u8>,
}

impl ReplaySource {
    pub fn open(spec: &SourceSpec) -> Result<Self, SourceError> {
        spec.only_options(&["fps", "realtime"])?;
        let playback = Playback::from_spec(spec)?;
        let dir = PathBuf::from(&spec.body);
        let rec = Recording::open(&dir)?;
        let cap = rec
            .pixel_format
            .frame_bytes(rec.info.width, rec.info.height)
            .max(rec.info.width as usize * rec.info.height as usize * 3);
        Ok(ReplaySource {
            rec,
            next: 0,
            playback,
            bytes: Vec::with_capacity(cap),
            scratch: Vec::new(),
        })
    }

    pub fn recording(&self) -> &Recording {
        &self.rec
    }
}

impl FrameSource for ReplaySource {
    fn describe(&self) -> String {
        format!(
            "replay:{} ({} frames {}x{} {} {:?})",
            self.rec.dir.display(),
            self.rec.frames.len(),
            self.rec.info.width,
            self.rec.info.height,
            self.rec.pixel_format,
            self.rec.info.encoding
        )
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<SourceStatus, SourceError> {
        if self.next >= self.rec.frames.len() {
            return Ok(SourceStatus::End);
        }
        let i = self.next;
        self.next += 1;
        let (seq, ts) = (self.rec.frames[i].seq, self.rec.frames[i].timestamp_ns);
        self.playback.wait_for(ts);
        let entry = &self.rec.frames[i];
        let read_err = |e: std::io::Error| SourceError::BadFrame {
            path: entry.file.clone(),
            message: e.to_string(),
        };
        let mut file = std::fs::File::open(&entry.file).map_err(read_err)?;
        match self.rec.info.encoding {
            FrameEncoding::Raw => {
                let (w, h) = (self.rec.info.width, self.rec.info.height);
                frame.reset(self.rec.pixel_format, w, h);
                let expect = frame.data.len() as u64;
                let len = file.metadata().map_err(read_err)?.len();
                if len != expect {
                    return Err(SourceError::BadFrame {
                        path: entry.file.clone(),
                        message: format!(
                            "raw frame has {len} bytes, {w}x{h} {} needs {expect}",
                            self.rec.pixel_format
                        ),
                    });
                }
                file.read_exact(&mut frame.data).map_err(read_err)?;
            }
            FrameEncoding::Png | FrameEncoding::Jpeg => {
                self.bytes.clear();
                file.read_to_end(&mut self.bytes).map_err(read_err)?;
                decode_into(&self.bytes, frame, &mut self.scratch, &entry.file)?;
            }
        }
        frame.seq = seq;
        frame.timestamp_ns = ts;
        Ok(SourceStatus::Frame)
    }

    fn is_live(&self) -> bool {
        self.playback.is_live()
    }

    fn max_frame_bytes(&self) -> Option<usize> {
        Some(self.bytes.capacity())
    }

    fn calibration_path(&self) -> Option<PathBuf> {
        self.rec.calibration_path()
    }
}

/// Writes a recording frame by frame (used by the simulator, capture and tests).
pub struct RecordingWriter {
    dir: PathBuf,
    info: RecordingInfo,
    index: std::io::BufWriter<std::fs::File>,
    count: u64,
}

impl RecordingWriter {
    /// Create `dir` (which must not hold a recording yet) and write the header.
    pub fn create(dir: &Path, info: RecordingInfo) -> std::io::Result<RecordingWriter> {
        if dir.join(RECORDING_FILE).exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} already holds a recording", dir.display()),
            ));
        }
        std::fs::create_dir_all(dir.join("frames"))?;
        std::fs::write(
            dir.join(RECORDING_FILE),
            toml::to_string_pretty(&info).expect("header serializes"),
        )?;
        let mut index = std::io::BufWriter::new(std::fs::File::create(dir.join(INDEX_FILE))?);
        writeln!(index, "seq,timestamp_ns,file,gt")?;
        Ok(RecordingWriter {
            dir: dir.to_path_buf(),
            info,
            index,
            count: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write one frame's pixels (raw bytes or an encoded PNG/JPEG, matching the header's
    /// encoding) and optionally its ground-truth file contents (PNG).
    pub fn write_frame(
        &mut self,
        timestamp_ns: u64,
        encoded: &[u8],
        gt_png: Option<&[u8]>,
    ) -> std::io::Result<()> {
        let ext = match self.info.encoding {
            FrameEncoding::Raw => "raw",
            FrameEncoding::Png => "png",
            FrameEncoding::Jpeg => "jpg",
        };
        let name = format!("frames/{:06}.{ext}", self.count);
        std::fs::write(self.dir.join(&name), encoded)?;
        let gt = match gt_png {
            Some(bytes) => {
                std::fs::create_dir_all(self.dir.join("gt"))?;
                let g = format!("gt/{:06}.png", self.count);
                std::fs::write(self.dir.join(&g), bytes)?;
                g
            }
            None => String::new(),
        };
        writeln!(self.index, "{},{timestamp_ns},{name},{gt}", self.count)?;
        self.count += 1;
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<u64> {
        self.index.flush()?;
        Ok(self.count)
    }
}
