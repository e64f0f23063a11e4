//! letsmap-lite on the host: data, the candle model, pretraining, fine-tuning, evaluation.
//!
//! | module | what |
//! |---|---|
//! | [`data`] | recordings into memory; batches through the runtime's preprocess |
//! | [`nn`] | parameters, forward, differentiable view transform, losses, Adam, checkpoints |
//! | [`train`] | `pretrain` (temporal MAE) and `finetune` (BEV head, label fraction), bundle export |
//! | [`eval`] | `eval`: IoU / mIoU through the deployment path |

pub mod data;
pub mod eval;
pub mod nn;
pub mod train;
