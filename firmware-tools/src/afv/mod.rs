//! Feature encoders on the host: labelled datasets, the GAN whose discriminator gives
//! Adversarial Fisher Vectors, embedding, Fisher statistics, set distances and probes.
//!
//! | module | what |
//! |---|---|
//! | [`data`] | the shared digit CSVs and image folders, the fixed train/test split |
//! | [`gan`] | generator and spectral-norm discriminator in candle, their ONNX layers |
//! | [`train`] | `gan train`: training, snapshots, sample grid, the AFV bundle |
//! | [`fisher`] | `embed`, `afv fit`, `afv distance`: features through the runtime |
//! | [`probe`] | `probe`: linear and k-NN probes, probe bundles |

pub mod data;
pub mod fisher;
pub mod gan;
pub mod probe;
pub mod train;
