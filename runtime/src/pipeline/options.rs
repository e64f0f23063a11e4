//! What a caller sets for one run of the pipeline: limits, reporting, fault injection.

use crate::live::LiveMetrics;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Stop after this many processed frames.
    pub max_frames: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Log a progress line (and a metrics JSONL line) this often.
    pub report_every: Duration,
    /// Calibration file to watch; a change is applied between frames.
    pub calibration: Option<PathBuf>,
    /// Fault injection for HIL tests: sleep this long in every sink write.
    pub sink_delay: Duration,
    /// Fault injection for soak tests: every `.0`, one sink write stalls for `.1`.
    pub sink_stall: Option<(Duration, Duration)>,
    /// Where periodic metrics lines go (besides the log).
    pub metrics_out: Option<PathBuf>,
    /// Copy each camera frame into its result, for sinks that show it (MCAP, live view).
    pub keep_camera_image: bool,
    /// Shared with observers outside the run (the metrics endpoint); a fresh one if `None`.
    pub live: Option<Arc<LiveMetrics>>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            max_frames: None,
            duration: None,
            report_every: Duration::from_secs(5),
            calibration: None,
            sink_delay: Duration::ZERO,
            sink_stall: None,
            metrics_out: None,
            keep_camera_image: false,
            live: None,
        }
    }
}
