//! bevrt's training and evaluation library: everything `bevrt-tool` trains, and the probes
//! that judge what it trained. The CLI parses arguments and calls in here; each training
//! method is one file beside the others.
//!
//! | module | what |
//! |---|---|
//! | [`rng`] | SplitMix64 and normal samples: the same stream on every machine |
//! | [`optim`] | Adam, safetensors checkpoints with optimizer state (exact resume) |
//! | [`checkpoint`] | a run's checkpoint directory (parameters, Adam, progress record), EMA |
//! | [`cpu_ops`] | convolutions as im2col/col2im + GEMM with cheap backward passes, LeakyReLU |
//! | [`progress`] | the progress bar (loss, ETA) |
//! | [`masking`] | StructMAE's easy-to-hard patch masking, shared by [`ssl`] and [`letsmap`] |
//! | [`digits`] | labelled image datasets (shared digit CSVs, folders) and the fixed split |
//! | [`letsmap`] | letsmap-lite: temporal MAE pretraining, BEV fine-tuning, evaluation |
//! | [`afv`] | the GAN for Adversarial Fisher Vectors, embedding, Fisher statistics, probes |
//! | [`ssl`] | self-supervised encoders: BAM, Invariance Propagation, MAE, StructMAE |
//! | [`diffusion`] | a small DDPM on digits and PDAE's encoder on top of it (frozen DDPM) |

pub mod afv;
pub mod checkpoint;
pub mod cpu_ops;
pub mod diffusion;
pub mod digits;
pub mod letsmap;
pub mod masking;
pub mod optim;
pub mod progress;
pub mod rng;
pub mod ssl;

/// Keep freed memory in the process: training allocates and frees tensors of several MB
/// every step, and glibc's defaults hand them back to the kernel and fault them in again
/// (zeroed) on the next step. Measured on the DDPM's step (batch 64, 2 cores): 5.1 s with the
/// defaults, of which most was page clearing, 2.4 s with these settings.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; it is called before any training
    // thread starts and takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
