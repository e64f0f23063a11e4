//! bevrt-models: what a deployable model is.
//!
//! - [`bundle`]: the bundle directory format (`bundle.toml` + hashed files), loading with
//!   digest checks, writing atomically.
//! - [`onnx`]: reading an ONNX file's interface with errors that name the file.

pub mod bundle;
pub mod onnx;

pub use bundle::{
    Bundle, BundleError, ChannelOrder, ClassSpec, EmbeddingNorm, GridSpec, InputDtype, InputSpec,
    Layout, Manifest, ModelFile, OutputKind, OutputSpec, Task, sha256_file, write_bundle,
};
pub use onnx::{OnnxError, OnnxSummary, TensorInfo, inspect, legalize, load_for_tract, read_proto};
