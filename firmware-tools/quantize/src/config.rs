//! What one quantization is asked to do.

use bevrt_runtime::choice::Choice;
use std::path::PathBuf;

/// How activation ranges are chosen from the calibration frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodChoice {
    Minmax,
    Percentile,
    Entropy,
}

impl Choice for MethodChoice {
    const ALL: &'static [Self] = &[Self::Minmax, Self::Percentile, Self::Entropy];
    fn name(self) -> &'static str {
        match self {
            Self::Minmax => "minmax",
            Self::Percentile => "percentile",
            Self::Entropy => "entropy",
        }
    }
}

/// The activations' integer type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActChoice {
    Int8,
    Uint8,
}

impl Choice for ActChoice {
    const ALL: &'static [Self] = &[Self::Int8, Self::Uint8];
    fn name(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
            Self::Uint8 => "uint8",
        }
    }
    fn help(self) -> &'static str {
        match self {
            Self::Int8 => "int8 symmetric, zero point 0 (TensorRT)",
            Self::Uint8 => "uint8 asymmetric with a zero point (ONNX Runtime's default)",
        }
    }
}

/// `bevrt-tool quantize`'s flags, as the library takes them (their help is the CLI's).
#[derive(Debug, Clone)]
pub struct QuantizeConfig {
    pub bundle: PathBuf,
    pub calib_data: Option<PathBuf>,
    pub calib_source: Option<String>,
    pub frames: usize,
    pub method: MethodChoice,
    pub percentile: f32,
    pub per_tensor: bool,
    pub activations: ActChoice,
    pub keep_fp: Vec<String>,
    pub sensitivity: bool,
    pub auto_keep: Option<usize>,
    pub eval_data: Option<PathBuf>,
    pub sensitivity_frames: usize,
    pub report: Option<PathBuf>,
    pub out: PathBuf,
}
