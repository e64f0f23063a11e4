//! `images:GLOB[?fps=N]`: still images in name order, as a stream.

use super::{FrameSource, Pacer, SourceError, SourceSpec, SourceStatus, decode_into, monotonic_ns};
use crate::frame::Frame;
use std::io::Read;
use std::path::PathBuf;

pub struct ImageFolderSource {
    pattern: String,
    files: Vec<PathBuf>,
    next: usize,
    pacer: Pacer,
    bytes: Vec<u8>,
    scratch: Vec<u8>,
    max_bytes: usize,
}

impl ImageFolderSource {
    pub fn open(spec: &SourceSpec) -> Result<Self, SourceError> {
        spec.only_options(&["fps"])?;
        let fps: f64 = spec.opt("fps")?.unwrap_or(0.0);
        let mut files: Vec<PathBuf> = glob::glob(&spec.body)
            .map_err(|e| spec.error(format!("bad glob pattern: {e}")))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(SourceError::Open {
                path: PathBuf::from(&spec.body),
                message: "no files match this pattern".into(),
            });
        }
        // Size the buffers from the largest file header we can read cheaply.
        let mut max_bytes = 0usize;
        for f in files.iter().take(8) {
            if let Ok((w, h)) = image::image_dimensions(f) {
                max_bytes = max_bytes.max(w as usize * h as usize * 3);
            }
        }
        Ok(ImageFolderSource {
            pattern: spec.body.clone(),
            files,
            next: 0,
            pacer: Pacer::new(fps),
            bytes: Vec::with_capacity(max_bytes),
            scratch: Vec::new(),
            max_bytes,
        })
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

impl FrameSource for ImageFolderSource {
    fn describe(&self) -> String {
        format!("images:{} ({} files)", self.pattern, self.files.len())
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<SourceStatus, SourceError> {
        let Some(path) = self.files.get(self.next) else {
            return Ok(SourceStatus::End);
        };
        self.next += 1;
        self.pacer.wait();
        self.bytes.clear();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut self.bytes))
            .map_err(|e| SourceError::BadFrame {
                path: path.clone(),
                message: e.to_string(),
            })?;
        decode_into(&self.bytes, frame, &mut self.scratch, path)?;
        frame.seq = (self.next - 1) as u64;
        frame.timestamp_ns = monotonic_ns();
        Ok(SourceStatus::Frame)
    }

    fn is_live(&self) -> bool {
        self.pacer.is_paced()
    }

    fn max_frame_bytes(&self) -> Option<usize> {
        (self.max_bytes > 0).then_some(self.max_bytes)
    }
}
