//! bevrt-kernels: CUDA C sources, their NVRTC build and cudarc launchers, and where each
//! kernel's CPU reference lives.
//!
//! | kernel (cuda/) | entry points | CPU reference |
//! |---|---|---|
//! | `preprocess.cu` | `preprocess_f32`, `preprocess_f16`, `preprocess_i8` | `bevrt_runtime::preprocess::PreprocessPlan::{run, run_f16, run_i8}` (bit-exact) |
//! | `bev_pool.cu` | `bev_pool_f32`, `bev_pool_f16`; depth-weighted lift: `depth_softmax_f32`, `bev_lift_f32` | `bevrt_calib::view_transform`; `bevrt_calib::bev::{depth_softmax, depth_weighted_taps, gather_channels}` (= `bevrt_calib::lift`) |
//! | `postprocess.cu` | `bev_argmax`, `colourise` | `bevrt_runtime::postprocess::{bev_argmax, colourise}` |
//! | `conv.cu` | `conv_i8_imma`, `conv_i8_dp4a`, `conv_f16_mma`, `conv_direct_i8`, `conv_direct_f16`, `conv_direct_f32` | [`reference::conv`] (INT8 and direct bit-exact, tensor-core FP16 to 1e-3) |
//! | `ops.cu` | activations and binary ops (f16, f32; int8 on the codes), pool (f16; int8 max), resize, softmax, argmax, Q/DQ, casts, concat slices | [`reference`] (same file order) |
//! | `fisher.cu` | `afv_delta`, `afv_conv_grad`, `fisher_normalise` | `bevrt_runtime::afv::{afv_score, fisher_normalise}` (launchers `Gpu::afv_score_at`, `Gpu::fisher_normalise_at`) |
//!
//! Every entry point also runs, from its real source, under the CPU emulation of the
//! `bevrt-kernels-emu` crate (`kernels/emu`), against the twin named here.
//!
//! The same plans also run on the CPU, fast, in [`cpu`] (`--backend cpu-plan`):
//!
//! | CPU engine kernel (cpu/) | runs | checked against |
//! |---|---|---|
//! | `conv.rs` `GemmConv` FP32 | groups = 1 convolutions and matrix products: AVX-512 / AVX2+FMA / portable micro-kernel, taps read from a padded, stride-phase-split row source | [`reference::conv`] to 1e-5 relative |
//! | `conv.rs` `GemmConv` INT8 | the same with `vpdpbusd` (AVX-512 VNNI) or exact AVX2 / portable dot products, 4-channel-interleaved row source | [`reference::conv`] bit-exact |
//! | `winograd.rs` `WinogradConv` | FP32 3x3 stride-1 convolutions, F(2x2, 3x3), AVX-512 | [`reference::conv`] to 1e-5 relative |
//! | `conv.rs` `DirectConv` | grouped and depthwise, FP32 and INT8 | [`reference::conv`] bit-exact |
//! | `ops.rs` | binary (per op and activation), pool, quantize (AVX-512), activations, Q/DQ | [`reference`] bit-exact; resize, softmax, argmax are the twins themselves |
//!
//! - [`device`]: finding a CUDA driver and device without panicking when there is none.
//! - [`nvrtc`]: the kernel sources, NVRTC options, target SMs, CUBIN compilation and ptxas
//!   register/spill reports.
//! - [`params`]: kernel parameter blocks, laid out as in the `.cu` files.
//! - [`plan`]: the executor's plan (tensors, constants, one kernel launch per step) and its
//!   arena memory plan with liveness-based reuse; built by the runtime's ONNX lowering.
//! - [`reference`]: the CPU twin of every executor kernel and a CPU runner for whole plans.
//! - [`cpu`]: the CPU engine: a plan on bevrt's own CPU kernels (packed GEMM, Winograd,
//!   direct, elementwise), a persistent worker pool, nothing allocated per run.
//! - [`exec`]: [`exec::resolve_launches`] (a plan's steps as kernel launches with every address
//!   filled in, shared by the GPU and the emulation) and [`exec::PlanRunner`], a plan on the
//!   GPU: memory allocated at load, launches resolved at load, the per-frame sequence
//!   replayed as one CUDA graph.
//! - [`launch`]: launch shapes per kernel family (`*_config`) and [`launch::Gpu`], which loads
//!   the kernels for the device's SM (CUBIN, or compute_80 PTX on other sm_80+ parts) and
//!   launches them.

pub mod cpu;
pub mod device;
pub mod exec;
pub mod launch;
pub mod nvrtc;
pub mod params;
pub mod plan;
pub mod reference;
