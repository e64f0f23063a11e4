//! Representations from a pre-trained diffusion model (PDAE): a small DDPM trained on digits
//! without labels, then an encoder whose code `z` lets a gradient estimator fill the gap
//! between the frozen DDPM's predicted posterior mean and the true one.
//!
//! | module | what |
//! |---|---|
//! | [`schedule`] | the forward process, PDAE's `c_t` and `λ_t`, DDIM moves both ways |
//! | [`unet`] | the ε-predicting UNet and the estimator's AdaGN copy of its up path |
//! | [`ddpm`] | DDPM training with exact resume, DDIM sampling |
//! | [`pdae_model`] | the PDAE model (frozen DDPM, encoder E, estimator G) and the codes z it gives |
//! | [`pdae`] | encoder + estimator on the frozen DDPM; the `features` bundle of the encoder |
//! | [`autoencode`] | reconstruction from z (inferred x_T, fresh noise), interpolation, SSIM |
//! | [`features`] | the frozen DDPM's own middle-block features at a fixed t (a probe row) |

pub mod autoencode;
pub mod ddpm;
pub mod features;
pub mod pdae;
pub mod pdae_model;
pub mod schedule;
pub mod unet;
