//! Self-supervised feature encoders: one encoder, one data path, one file per method.
//!
//! | module | what |
//! |---|---|
//! | [`encoder`] | the shared CNN (28x28 grey → 128), its projection head, export layers |
//! | [`augment`] | views of a digit: random resized crop + affine, stroke width, noise |
//! | [`bam`] | BAM: attention over the batch matched to a Sinkhorn-balanced target |
//! | [`invprop`] | Invariance Propagation: memory bank, k-NN graph, hard positives |
//! | [`mae`] | masked autoencoding; StructMAE's easy-to-hard structure-guided masking |
//! | [`collapse`] | effective rank and per-dimension spread: collapse is an error |
//! | [`run`] | the training loop, checkpoints and exact resume, the `features` bundle |
//! | [`drive`] | BAM / InvProp on driving frames: the letsmap-lite encoder for `finetune` |
//!
//! Every method trains [`encoder::Encoder`] on a dataset's training split without its labels
//! and writes a `features` bundle whose vector is the encoder's output; `bevrt run`, `embed`
//! and `probe` use it like any other features bundle.

pub mod augment;
pub mod bam;
pub mod collapse;
pub mod drive;
pub mod encoder;
pub mod invprop;
pub mod mae;
pub mod run;

pub use run::{Method, SslConfig, TrainReport, train};
