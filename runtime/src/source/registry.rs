//! Which source a spec's scheme names.

use super::{FrameSource, SourceError, SourceSpec, images, mcap, replay, sim};
#[cfg(not(feature = "v4l"))]
use std::path::PathBuf;

/// Open the source a spec names.
pub fn open(spec: &str) -> Result<Box<dyn FrameSource>, SourceError> {
    let s = SourceSpec::parse(spec)?;
    match s.scheme.as_str() {
        "images" => Ok(Box::new(images::ImageFolderSource::open(&s)?)),
        "replay" => Ok(Box::new(replay::ReplaySource::open(&s)?)),
        "v4l" => open_v4l(&s),
        "sim" => Ok(Box::new(sim::SimSource::open(&s)?)),
        "mcap" => Ok(Box::new(mcap::McapSource::open(&s)?)),
        "gst" | "rtsp" | "rtsps" | "video" => open_gst(&s),
        other => Err(s.error(format!(
            "unknown source scheme '{other}' (expected images:, replay:, v4l:, sim:, mcap:, gst:, rtsp:// or video:)"
        ))),
    }
}

#[cfg(feature = "v4l")]
fn open_v4l(s: &SourceSpec) -> Result<Box<dyn FrameSource>, SourceError> {
    Ok(Box::new(super::v4l::V4lSource::open(s)?))
}

#[cfg(not(feature = "v4l"))]
fn open_v4l(s: &SourceSpec) -> Result<Box<dyn FrameSource>, SourceError> {
    let path = PathBuf::from(&s.body);
    if !path.exists() {
        return Err(SourceError::Open {
            path,
            message: "no such video device".into(),
        });
    }
    Err(s.error(
        "this bevrt was built without V4L2 support (rebuild with --features bevrt-runtime/v4l)",
    ))
}

#[cfg(feature = "gst")]
fn open_gst(s: &SourceSpec) -> Result<Box<dyn FrameSource>, SourceError> {
    Ok(Box::new(super::gst::GstSource::open(s)?))
}

#[cfg(not(feature = "gst"))]
fn open_gst(s: &SourceSpec) -> Result<Box<dyn FrameSource>, SourceError> {
    Err(s.error(
        "this bevrt was built without GStreamer (rebuild with --features bevrt-runtime/gst)",
    ))
}
