//! bevrt-runtime: from camera frames to maps, on CPU or GPU.
//!
//! - [`afv`]: Adversarial Fisher Vectors: the analytic per-example score of a discriminator's
//!   tail and the Fisher normalisation (CPU reference of the Fisher op).
//! - [`frame`]: frames and pixel formats.
//! - [`source`]: `FrameSource` and the `images:`, `replay:`, `v4l:`, `sim:` and `mcap:` sources
//!   (recording format in [`source::replay`]).
//! - [`ros2`]: ROS 2 messages (CDR) and MCAP bags: what the `mcap:` source reads and the MCAP
//!   sink and `sim record --format mcap` write.
//! - [`preprocess`]: colour conversion + resize + normalisation in one pass (the CPU reference
//!   of the GPU preprocess kernel).
//! - [`lower`]: the ONNX front end: a network file to a kernel plan (what the plan backends,
//!   conformance and the plan tests run).
//! - [`backend`]: the `Backend` trait, the CPU backend (tract or the kernel plan), the CUDA
//!   backend and the registry.
//! - [`postprocess`]: per-frame results, softmax/argmax/colourise references.
//! - [`pipeline`]: capture → queue → inference → queue → sinks, as stages, with counters and
//!   latency.
//! - [`sink`]: PNG class maps, JSONL, npy, MCAP.
//! - [`serve`]: what a run shows while it goes on: Prometheus `/metrics` and `/healthz`, the
//!   Foxglove live view.
//! - [`live`]: what a run counts while it goes on (counters, stage histograms), shared with
//!   the sinks and the endpoints that show it.
//! - [`metrics`], [`queue`], [`alloc_count`]: fixed-size histograms, bounded queues, allocation
//!   counting.
//! - [`panics`]: the message of a panic caught at a boundary.
//! - [`conformance`], [`bench`]: the ONNX node-case runner and the benchmark.
//! - [`npy`]: `.npy` read/write.
//! - [`choice`]: named choices (backend, sinks, compression) a user picks by name.
//! - [`selftest`]: the on-device self-test from the test vectors a bundle carries.
//! - [`shutdown`]: SIGTERM / SIGINT end a run between frames, its report written.
//! - [`supervisor`]: model updates from an A/B bundle store while the pipeline runs (load,
//!   verify, self-test, swap, trial, rollback).
//! - [`demo`]: the shipped letsmap-lite bundle (embedded) or `--bundle` on a simulated drive.
//! - [`legend`]: a 5x7 pixel font, panel titles and the class legend for images people read.

pub mod afv;
pub mod alloc_count;
pub mod backend;
pub mod bench;
pub mod choice;
pub mod conformance;
pub mod demo;
pub mod frame;
pub mod legend;
pub mod live;
pub mod lower;
pub mod metrics;
pub mod npy;
pub mod panics;
pub mod pipeline;
pub mod postprocess;
pub mod preprocess;
pub mod queue;
pub mod ros2;
pub mod selftest;
pub mod serve;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod supervisor;

pub use backend::{Backend, BackendKind, BackendOptions};
pub use frame::{Frame, PixelFormat};
pub use pipeline::{PipelineOptions, RunReport};
pub use source::{FrameSource, SourceError, SourceStatus};
