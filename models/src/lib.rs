//! bevrt-models: what a deployable model is.
//!
//! - [`bundle`]: the bundle directory format (`bundle.toml` + hashed files), loading with
//!   digest checks, writing atomically.
//! - [`signature`]: minisign signatures over a bundle's manifest; trusted loading.
//! - [`store`]: the A/B bundle store (atomic deploy, trial, rollback, journal, no downgrade
//!   below the highest confirmed version).
//! - [`trust`]: the signed trust set (root keys, signing keys with expiry, revoked ids) a
//!   store verifies bundles against; key rotation and revocation without a new store.
//! - [`time`]: TOML datetimes as Unix seconds (trust set and bundle expiry).
//! - [`version`]: bundle versions in semver order (what the store's anti-rollback compares).
//! - [`atomic`]: durable single-file writes (temporary, fsync, rename) and the power-loss
//!   test's crash points, shared by the store and the signature writer.
//! - [`limits`]: what an ONNX file may declare (memory, nodes, depth, cycles) before any
//!   engine builds it: hostile files are refused, not run out of memory.
//! - [`onnx`]: reading an ONNX file's interface with errors that name the file.
//! - [`opset`]: which ONNX operator set a model imports.
//! - [`letsmap`]: the reference BEV architecture letsmap-lite (layer lists, classes, grid).
//! - [`export`]: our ONNX exporter (Conv chains) and its CPU reference.
//! - [`quant`]: INT8 post-training quantization of ONNX graphs (graph passes, Q/DQ placement,
//!   calibration methods).

pub mod atomic;
pub mod bundle;
pub mod export;
pub mod letsmap;
pub mod limits;
pub mod onnx;
pub mod opset;
pub mod quant;
pub mod signature;
pub mod store;
pub mod time;
pub mod trust;
pub mod version;

pub use bundle::{
    AfvSpec, Bundle, BundleError, ChannelOrder, ClassSpec, EmbeddingNorm, GridSpec, InputDtype,
    InputSpec, Layout, Manifest, ModelFile, OutputKind, OutputSpec, Task, sha256_file,
    write_bundle,
};
pub use export::{
    ExportError, SeqLayer, SeqOp, Weights, conv_chain_reference, conv_chain_to_onnx,
    sequential_to_onnx, write_conv_chain,
};
pub use letsmap::{ConvLayer, LetsMapLite};
pub use onnx::{
    LegalizeOptions, OnnxError, OnnxSummary, TensorInfo, inspect, legalize, load_for_tract,
    proto_from_bytes, read_proto, read_proto_within,
};
