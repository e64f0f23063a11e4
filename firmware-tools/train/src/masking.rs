//! StructMAE's easy-to-hard masking over any set of patches (Liu et al., IJCAI 2024): how many
//! patches structure chooses at a point of training, and which patches are masked. Shared by
//! the digit MAE ([`crate::ssl::mae`]) and letsmap-lite's temporal MAE
//! ([`crate::letsmap::semantic`]), so neither reaches into the other for it.

use crate::rng::Rng;

/// StructMAE's schedule: how many of `n` patches are chosen by structure at training progress
/// `progress` = e/E ∈ [0, 1]: `r_s·n` with `r_s = ratio·sqrt(progress)` (the "root" pacing).
pub fn structured_count(ratio: f32, progress: f32, n: usize) -> usize {
    let n_mask = ((ratio * n as f32).round() as usize).min(n);
    ((ratio * progress.clamp(0.0, 1.0).sqrt() * n as f32).round() as usize).min(n_mask)
}

/// StructMAE's masking over any set of patches: `round(ratio·n)` are masked, `n_struct` of
/// them the highest structural `scores` after an `alpha·U(0,1)` perturbation (scores scaled to
/// [0, 1] by their maximum), the rest uniformly among the others. `n_struct = 0` is MAE's
/// uniform masking.
pub fn structure_guided_mask(
    scores: &[f32],
    ratio: f32,
    n_struct: usize,
    alpha: f32,
    rng: &mut Rng,
) -> Vec<bool> {
    let n = scores.len();
    let n_mask = ((ratio * n as f32).round() as usize).min(n);
    let n_struct = n_struct.min(n_mask);
    let mut masked = vec![false; n];
    if n_struct > 0 {
        let max = scores.iter().copied().fold(0f32, f32::max).max(1e-12);
        let mut keyed: Vec<(f32, usize)> = scores
            .iter()
            .enumerate()
            .map(|(p, &v)| (v / max + alpha * rng.uniform(), p))
            .collect();
        keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
        for &(_, p) in &keyed[..n_struct] {
            masked[p] = true;
        }
    }
    let mut rest: Vec<usize> = (0..n).filter(|&p| !masked[p]).collect();
    rng.shuffle(&mut rest);
    for &p in rest.iter().take(n_mask - n_struct) {
        masked[p] = true;
    }
    masked
}
