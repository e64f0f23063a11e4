//! Adversarial Fisher Vectors and the tools every feature encoder shares: the GAN whose
//! discriminator gives AFVs, embedding through the runtime, Fisher statistics, set distances
//! and probes.
//!
//! | module | what |
//! |---|---|
//! | [`gan`] | generator and spectral-norm discriminator in candle, their ONNX layers |
//! | [`train`] | `gan train`: training, snapshots, sample grid, the AFV bundle |
//! | [`fisher`] | `embed`, `afv fit`, `afv distance`: features through the runtime |
//! | [`probe`] | `probe`: linear and k-NN probes, probe bundles |

pub mod fisher;
pub mod gan;
pub mod probe;
pub mod train;
