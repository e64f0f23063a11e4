//! letsmap-lite on the host: data, the candle model, pretraining, fine-tuning, evaluation.
//!
//! | module | what |
//! |---|---|
//! | [`data`] | recordings into memory; batches through the runtime's preprocess |
//! | [`nn`] | parameters, forward, the differentiable (depth-weighted) lift, losses |
//! | [`semantic`] | `pretrain`: the semantic pathway, temporal MAE (SparK masking, normalised targets, StructMAE easy-to-hard masking) |
//! | [`train`] | `finetune` (BEV head, label fraction, LP-FT), bundle export |
//! | [`semi`] | `finetune --unlabelled`: temporal BEV consistency with the ego-motion, mean teacher with class-balanced pseudo-labels |
//! | [`photo_error`] | Monodepth2's photometric error (SSIM + L1), shared by the two below |
//! | [`photometric`] | the geometry pathway's signal: plane-sweep view synthesis with the ego-motion, Monodepth2's error per depth bin |
//! | [`synthesis`] | Monodepth2's objective through the expected depth: warp with the sampler's gradient, SSIM+L1, min over sources, auto-mask, smoothness |
//! | [`geometry`] | `pretrain-geometry` (depth distribution from video, no labels) and `depth-eval` (AbsRel against the simulator's depth) |
//! | [`eval`] | `eval`: IoU / mIoU through the deployment path |
//! | [`oracle`] | `eval --oracle-depth`: the lift fed the simulator's true depth, the ceiling perfect geometry gives |
//! | [`scores`] | the scores `eval` measures, their table, their record in a bundle's manifest |

pub mod data;
pub mod eval;
pub mod geometry;
pub mod nn;
pub mod oracle;
pub mod photo_error;
pub mod photometric;
pub mod scores;
pub mod semantic;
pub mod semi;
pub mod synthesis;
pub mod train;
