//! bevrt-kernels: CUDA C sources, their NVRTC build and cudarc launchers, and where each
//! kernel's CPU reference lives.
//!
//! | kernel (cuda/) | entry points | CPU reference |
//! |---|---|---|
//! | `preprocess.cu` | `preprocess_f32`, `preprocess_f16`, `preprocess_i8` | `bevrt_runtime::preprocess::PreprocessPlan::{run, run_f16, run_i8}` (bit-exact) |
//! | `bev_pool.cu` | `bev_pool_f32`, `bev_pool_f16` | `bevrt_calib::view_transform` |
//! | `postprocess.cu` | `bev_argmax`, `colourise` | `bevrt_runtime::postprocess::{bev_argmax, colourise}` |
//! | `fisher.cu` | `afv_delta`, `afv_conv_grad`, `fisher_normalise` | `bevrt_runtime::afv::{afv_score, fisher_normalise}` (launcher and GPU check arrive with the CUDA executor) |
//!
//! - [`device`]: finding a CUDA driver and device without panicking when there is none.
//! - [`nvrtc`]: the kernel sources, NVRTC options, target SMs, CUBIN compilation and ptxas
//!   register/spill reports.
//! - [`launch`]: [`launch::Gpu`], which loads the kernels for the device's SM and launches them.

pub mod device;
pub mod launch;
pub mod nvrtc;
