//! `bevrt-tool quantize`: the flags of INT8 post-training quantization; the work is
//! `bevrt_quantize`.

use crate::cli::choice;
use bevrt_quantize::{ActChoice, MethodChoice, QuantizeConfig};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The FP32 bundle to quantize.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Calibration frames: a recording (or a folder of recordings), a folder of images, or
    /// a folder of / one `.npy` file of preprocessed tensors in the bundle's input shape.
    #[arg(long, conflicts_with = "calib_source")]
    pub calib_data: Option<PathBuf>,
    /// Calibration frames from a source spec (`sim:...`, `replay:DIR`, `images:GLOB`, `v4l:...`).
    #[arg(long)]
    pub calib_source: Option<String>,
    /// Calibration frames to use (fewer when the data has fewer).
    #[arg(long, default_value_t = 200)]
    pub frames: usize,
    #[arg(long, value_parser = choice::<MethodChoice>())]
    pub method: MethodChoice,
    /// Percentile of |x| kept by `--method percentile`.
    #[arg(long, default_value_t = 99.99)]
    pub percentile: f32,
    /// One weight scale per output channel (the default).
    #[arg(long, overrides_with = "per_tensor")]
    pub per_channel: bool,
    /// One weight scale per weight tensor.
    #[arg(long)]
    pub per_tensor: bool,
    #[arg(long, default_value = "int8", value_parser = choice::<ActChoice>())]
    pub activations: ActChoice,
    /// Nodes to keep in FP32 (`NODE` or `ROLE/NODE`, as the report names them).
    #[arg(long, num_args = 1..)]
    pub keep_fp: Vec<String>,
    /// Measure each layer's sensitivity (only that layer quantized).
    #[arg(long)]
    pub sensitivity: bool,
    /// Keep the K most sensitive layers in FP32 (implies --sensitivity).
    #[arg(long)]
    pub auto_keep: Option<usize>,
    /// Held-out recordings with BEV ground truth: mIoU of FP32 and INT8 (and per layer with
    /// --sensitivity).
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Frames of --eval-data scored per sensitivity variant (the final scores use all).
    #[arg(long, default_value_t = 50)]
    pub sensitivity_frames: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn quantize(a: &QuantizeArgs) -> anyhow::Result<()> {
    bevrt_quantize::quantize(&QuantizeConfig {
        bundle: a.bundle.clone(),
        calib_data: a.calib_data.clone(),
        calib_source: a.calib_source.clone(),
        frames: a.frames,
        method: a.method,
        percentile: a.percentile,
        per_tensor: a.per_tensor,
        activations: a.activations,
        keep_fp: a.keep_fp.clone(),
        sensitivity: a.sensitivity,
        auto_keep: a.auto_keep,
        eval_data: a.eval_data.clone(),
        sensitivity_frames: a.sensitivity_frames,
        report: a.report.clone(),
        out: a.out.clone(),
    })
}
