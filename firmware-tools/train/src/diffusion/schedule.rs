//! The forward process and the deterministic (DDIM) steps that run it both ways.
//!
//! Conventions, stated once: timesteps are indices `t = 0..T-1` (the papers' `t = 1..T`);
//! `alpha_bar[t] = Π_{s≤t} (1 − β_s)`; a noisy image is
//! `x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε`; networks predict `ε`. "Before the first step" has
//! `ᾱ = 1` (the clean image).

/// Steps of the forward process (DDPM's).
pub const STEPS: usize = 1000;

#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    pub beta: Vec<f64>,
    pub alpha_bar: Vec<f64>,
}

impl NoiseSchedule {
    /// DDPM's linear β from 1e-4 to 0.02 over `steps` (scaled to keep the same end points).
    pub fn linear(steps: usize) -> NoiseSchedule {
        let (b0, b1) = (1e-4, 0.02);
        let beta: Vec<f64> = (0..steps)
            .map(|i| b0 + (b1 - b0) * i as f64 / (steps.max(2) - 1) as f64)
            .collect();
        let mut alpha_bar = Vec::with_capacity(steps);
        let mut acc = 1.0;
        for b in &beta {
            acc *= 1.0 - b;
            alpha_bar.push(acc);
        }
        NoiseSchedule { beta, alpha_bar }
    }

    pub fn steps(&self) -> usize {
        self.beta.len()
    }

    /// `ᾱ` at `t`, with `t = None` the clean image (`ᾱ = 1`).
    pub fn abar(&self, t: Option<usize>) -> f64 {
        t.map_or(1.0, |t| self.alpha_bar[t])
    }

    /// PDAE's `c_t = −√α_t·(1−ᾱ_{t−1})/√(1−ᾱ_t)`: how a shift of the posterior mean shows
    /// in ε-space. 0 at the first step, where the posterior mean is the data itself.
    pub fn shift_coef(&self, t: usize) -> f64 {
        let alpha = 1.0 - self.beta[t];
        let prev = if t == 0 { 1.0 } else { self.alpha_bar[t - 1] };
        -alpha.sqrt() * (1.0 - prev) / (1.0 - self.alpha_bar[t]).sqrt()
    }

    /// PDAE's loss weight `λ_t = SNR_t^0.1 / (1 + SNR_t)`, `SNR_t = ᾱ_t/(1−ᾱ_t)`: the noisy
    /// steps, where the encoder's information matters, count most.
    pub fn pdae_weight(&self, t: usize) -> f64 {
        let snr = self.alpha_bar[t] / (1.0 - self.alpha_bar[t]);
        snr.powf(0.1) / (1.0 + snr)
    }

    /// `n` evenly spaced timesteps, ascending, ending at the last one (DDIM's sub-sequence).
    pub fn ddim_timesteps(&self, n: usize) -> Vec<usize> {
        let t = self.steps();
        let n = n.clamp(1, t);
        (0..n).map(|i| (i + 1) * t / n - 1).collect()
    }

    /// One deterministic DDIM move from `t` to `s` (either direction) given the predicted
    /// noise: `x₀ = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t`, `x_s = √ᾱ_s·x₀ + √(1−ᾱ_s)·ε`. `clip`: clamp
    /// the predicted `x₀` to the data range (sampling; not for inversion, which must stay
    /// invertible).
    pub fn ddim_move(
        &self,
        x: &mut [f32],
        eps: &[f32],
        t: Option<usize>,
        s: Option<usize>,
        clip: bool,
    ) {
        let (at, as_) = (self.abar(t), self.abar(s));
        let (st, ss) = ((1.0 - at).sqrt(), (1.0 - as_).sqrt());
        for (xv, &e) in x.iter_mut().zip(eps) {
            let mut x0 = (*xv as f64 - st * e as f64) / at.sqrt();
            if clip {
                x0 = x0.clamp(-1.0, 1.0);
            }
            *xv = (as_.sqrt() * x0 + ss * e as f64) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_schedule_matches_ddpm() {
        let s = NoiseSchedule::linear(STEPS);
        assert!((s.beta[0] - 1e-4).abs() < 1e-12 && (s.beta[999] - 0.02).abs() < 1e-12);
        // DDPM's ᾱ_T ≈ 4.0e-5: almost pure noise at the end.
        assert!(
            s.alpha_bar[999] > 3e-5 && s.alpha_bar[999] < 5e-5,
            "{}",
            s.alpha_bar[999]
        );
        assert_eq!(s.shift_coef(0), 0.0);
        assert!(s.shift_coef(500) < -0.9 && s.shift_coef(500) > -1.0);
        assert!(s.pdae_weight(999) > s.pdae_weight(10));
        assert_eq!(s.ddim_timesteps(50)[..2], [19, 39]);
        assert_eq!(*s.ddim_timesteps(50).last().unwrap(), 999);
    }

    #[test]
    fn ddim_moves_invert_each_other_for_a_fixed_noise() {
        let s = NoiseSchedule::linear(STEPS);
        let x0 = vec![0.3f32, -0.7, 0.9];
        let eps = vec![0.5f32, -1.2, 0.1];
        let mut x = x0.clone();
        s.ddim_move(&mut x, &eps, None, Some(400), false);
        s.ddim_move(&mut x, &eps, Some(400), None, false);
        for (a, b) in x.iter().zip(&x0) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
