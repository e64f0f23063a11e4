//! The sinks a run writes, by name, built for a bundle.

use super::{ClassMapPngSink, JsonlSink, NpySink, Sink};
use bevrt_models::Task;
use std::path::Path;

/// Which sinks `bevrt run` writes, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    Png,
    Jsonl,
    Npy,
    /// `run.mcap`, a ROS 2 bag of camera, map, grid and results (see [`super::mcap`]).
    Mcap,
    /// The same bag with the camera as JPEG (`CompressedImage`).
    McapJpeg,
}

impl SinkKind {
    /// Whether this sink shows the camera frame (the pipeline then keeps a copy per result).
    pub fn shows_camera(self) -> bool {
        matches!(self, SinkKind::Mcap | SinkKind::McapJpeg)
    }
}

impl crate::choice::Choice for SinkKind {
    const ALL: &'static [Self] = &[
        Self::Png,
        Self::Jsonl,
        Self::Npy,
        Self::Mcap,
        Self::McapJpeg,
    ];
    fn name(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jsonl => "jsonl",
            Self::Npy => "npy",
            Self::Mcap => "mcap",
            Self::McapJpeg => "mcap-jpeg",
        }
    }
    fn help(self) -> &'static str {
        match self {
            Self::Mcap => "`run.mcap`, a ROS 2 bag of camera, map, grid and results",
            Self::McapJpeg => {
                "`run.mcap` with the camera as JPEG (CompressedImage), a tenth the size"
            }
            _ => "",
        }
    }
}
crate::named_choice!(SinkKind);

/// What some sinks need beyond the bundle: the calibration in use (written into the MCAP
/// bag) and the run's live counters (its metrics channel).
#[derive(Default, Clone)]
pub struct SinkContext {
    pub calibration: Option<bevrt_calib::Calibration>,
    pub live: Option<std::sync::Arc<crate::live::LiveMetrics>>,
}

/// The sinks for a task when the user names none.
pub fn default_sinks(task: Task) -> Vec<SinkKind> {
    match task {
        Task::Bev => vec![SinkKind::Png, SinkKind::Jsonl],
        Task::Classify | Task::Features => vec![SinkKind::Jsonl],
    }
}

pub fn build(
    kinds: &[SinkKind],
    out: &Path,
    manifest: &bevrt_models::Manifest,
    outputs: usize,
) -> anyhow::Result<Vec<Box<dyn Sink>>> {
    build_with(kinds, out, manifest, outputs, &SinkContext::default())
}

/// [`build`], with what the MCAP sink needs.
pub fn build_with(
    kinds: &[SinkKind],
    out: &Path,
    manifest: &bevrt_models::Manifest,
    outputs: usize,
    ctx: &SinkContext,
) -> anyhow::Result<Vec<Box<dyn Sink>>> {
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow::anyhow!("{}: cannot create output directory: {e}", out.display()))?;
    let mut v: Vec<Box<dyn Sink>> = vec![];
    for k in kinds {
        v.push(match k {
            SinkKind::Png => {
                if manifest.task != Task::Bev {
                    anyhow::bail!(
                        "sink 'png' writes BEV class maps; this bundle is '{}'",
                        manifest.task
                    );
                }
                Box::new(ClassMapPngSink::new(out)?)
            }
            SinkKind::Jsonl => Box::new(JsonlSink::new(
                out,
                manifest.outputs[0].labels.clone(),
                manifest.classes.clone(),
            )?),
            SinkKind::Npy => Box::new(NpySink::new(out, outputs)?),
            SinkKind::Mcap | SinkKind::McapJpeg => Box::new(super::mcap::McapSink::new(
                out,
                manifest,
                ctx.calibration.clone(),
                ctx.live.clone(),
                *k == SinkKind::McapJpeg,
            )?),
        });
    }
    Ok(v)
}
