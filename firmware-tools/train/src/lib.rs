//! bevrt's training and evaluation library: everything `bevrt-tool` trains, and the probes
//! that judge what it trained. The CLI parses arguments and calls in here; each training
//! method is one file beside the others.
//!
//! | module | what |
//! |---|---|
//! | [`rng`] | SplitMix64 and normal samples: the same stream on every machine |
//! | [`optim`] | Adam, safetensors checkpoints with optimizer state (exact resume) |
//! | [`cpu_ops`] | convolutions as im2col/col2im + GEMM with cheap backward passes, LeakyReLU |
//! | [`progress`] | the progress bar (loss, ETA) |
//! | [`digits`] | labelled image datasets (shared digit CSVs, folders) and the fixed split |
//! | [`letsmap`] | letsmap-lite: temporal MAE pretraining, BEV fine-tuning, evaluation |
//! | [`afv`] | the GAN for Adversarial Fisher Vectors, embedding, Fisher statistics, probes |
//! | [`ssl`] | self-supervised encoders: BAM, Invariance Propagation, MAE, StructMAE |

pub mod afv;
pub mod cpu_ops;
pub mod digits;
pub mod letsmap;
pub mod optim;
pub mod progress;
pub mod rng;
pub mod ssl;

use std::path::Path;

/// Record self-test vectors into a bundle a command just wrote; a failure is reported, not
/// fatal (the bundle is complete without them).
pub fn record_selftest(dir: &Path) {
    match bevrt_runtime::selftest::record(dir, bevrt_runtime::selftest::DEFAULT_TOLERANCE) {
        Ok(st) => log::info!(
            "{}: self-test vectors recorded ({} outputs)",
            dir.display(),
            st.outputs.len()
        ),
        Err(e) => log::warn!("{}: no self-test vectors recorded: {e:#}", dir.display()),
    }
}
