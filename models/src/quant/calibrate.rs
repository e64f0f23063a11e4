//! Activation range calibration: observers fed with every calibration frame's tensors, and
//! the three ways to turn what they saw into a clipping range.
//!
//! - `minmax`: the extremes seen (ONNX Runtime's MinMax).
//! - `percentile`: the |x| (or, for asymmetric ranges, two-sided) percentile of a 2048-bin
//!   histogram (ONNX Runtime's Percentile calibrator).
//! - `entropy`: TensorRT's KL-divergence calibration: the |x| threshold whose 128-level
//!   quantized distribution loses the least information relative to the 2048-bin histogram.
//!
//! Observation takes two passes over the frames: ranges first, then histograms over those
//! ranges, so the bins never move (no re-binning error).

use serde::Serialize;

pub const BINS: usize = 2048;

/// How activation ranges are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "method")]
pub enum Method {
    MinMax,
    Percentile { percentile: f32 },
    Entropy,
}

impl Method {
    pub fn needs_histogram(self) -> bool {
        !matches!(self, Method::MinMax)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::MinMax => write!(f, "minmax"),
            Method::Percentile { percentile } => write!(f, "percentile {percentile}"),
            Method::Entropy => write!(f, "entropy"),
        }
    }
}

/// Activation encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActType {
    /// int8, zero point 0, range ±T (TensorRT's only activation encoding).
    Int8,
    /// uint8 with a zero point, range [min, max] (ONNX Runtime's default).
    Uint8,
}

/// What one activation tensor looked like over the calibration frames.
#[derive(Debug, Clone)]
pub struct Observer {
    pub min: f32,
    pub max: f32,
    pub count: u64,
    /// Histogram over [lo, hi] (|x| over [0, absmax] when symmetric); empty until pass 2.
    /// Exact zeros of a symmetric observer are counted in `zeros`, not here.
    pub hist: Vec<u64>,
    /// Exact zeros (symmetric observers): ReLU outputs are often half zeros, and zero is
    /// exact at every scale, so they say nothing about where to clip. Left in the histogram
    /// they make the entropy method clip hard (measured on letsmap-lite: −4.1 mIoU).
    pub zeros: u64,
    lo: f32,
    hi: f32,
    symmetric: bool,
}

impl Observer {
    pub fn new(symmetric: bool) -> Observer {
        Observer {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            count: 0,
            hist: vec![],
            zeros: 0,
            lo: 0.0,
            hi: 0.0,
            symmetric,
        }
    }

    /// Pass 1: extremes. Non-finite values are skipped (they would make every range useless);
    /// a tensor that only ever holds them keeps an empty range and is reported by the caller.
    pub fn observe_range(&mut self, x: &[f32]) {
        let (mut lo, mut hi) = (self.min, self.max);
        for &v in x {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        self.min = lo;
        self.max = hi;
        self.count += x.len() as u64;
    }

    pub fn has_range(&self) -> bool {
        self.min <= self.max
    }

    /// Pass 2: histogram over the range found in pass 1.
    pub fn observe_hist(&mut self, x: &[f32]) {
        if self.hist.is_empty() {
            self.hist = vec![0; BINS];
            if self.symmetric {
                self.lo = 0.0;
                self.hi = self.min.abs().max(self.max.abs());
            } else {
                self.lo = self.min;
                self.hi = self.max;
            }
        }
        let width = (self.hi - self.lo).max(f32::MIN_POSITIVE);
        let k = BINS as f32 / width;
        let last = BINS - 1;
        for &v in x {
            if !v.is_finite() {
                continue;
            }
            if self.symmetric && v == 0.0 {
                self.zeros += 1;
                continue;
            }
            let v = if self.symmetric { v.abs() } else { v };
            let b = ((v - self.lo) * k) as usize; // negative → 0 (saturating cast)
            self.hist[b.min(last)] += 1;
        }
    }

    fn bin_width(&self) -> f32 {
        (self.hi - self.lo) / BINS as f32
    }

    /// The clipping range `(lo, hi)` for `method`. Symmetric observers return `(-T, T)`.
    pub fn range(&self, method: Method) -> (f32, f32) {
        if !self.has_range() {
            return (0.0, 0.0);
        }
        let absmax = self.min.abs().max(self.max.abs());
        match method {
            Method::MinMax => {
                if self.symmetric {
                    (-absmax, absmax)
                } else {
                    (self.min, self.max)
                }
            }
            _ if self.hist.is_empty() => self.range(Method::MinMax),
            Method::Percentile { percentile } => {
                // ONNX Runtime's percentile counts every value, zeros included.
                let total: u64 = self.hist.iter().sum::<u64>() + self.zeros;
                let cut = |q: f64| -> usize {
                    let target = q * total as f64;
                    let mut acc = self.zeros;
                    for (i, &h) in self.hist.iter().enumerate() {
                        acc += h;
                        if acc as f64 >= target {
                            return i;
                        }
                    }
                    BINS - 1
                };
                let w = self.bin_width();
                if self.symmetric {
                    let t = (cut(percentile as f64 / 100.0) + 1) as f32 * w;
                    let t = t.min(absmax);
                    (-t, t)
                } else {
                    let side = (100.0 - percentile as f64) / 200.0;
                    let lo = self.lo + cut(side) as f32 * w;
                    let hi = self.lo + (cut(1.0 - side) + 1) as f32 * w;
                    (lo.max(self.min), hi.min(self.max))
                }
            }
            Method::Entropy => {
                let t = entropy_threshold(&self.hist, self.bin_width(), 128);
                let t = t.min(absmax);
                if self.symmetric {
                    (-t, t)
                } else {
                    (self.min.max(-t), self.max.min(t))
                }
            }
        }
    }
}

/// TensorRT's entropy calibration on a histogram of |x|: for every candidate threshold bin
/// `i` (from `levels` to the end), the reference P is the histogram up to `i` with everything
/// beyond folded into its last bin; Q merges those `i` bins into `levels` groups and spreads
/// each group's mass evenly over its non-empty bins. The threshold with the smallest
/// KL(P‖Q) wins; returned at the far edge of its bin.
pub fn entropy_threshold(hist: &[u64], bin_width: f32, levels: usize) -> f32 {
    let n = hist.len();
    if n <= levels {
        return n as f32 * bin_width;
    }
    let mut best = (f64::INFINITY, n);
    let mut p = vec![0f64; n];
    let mut q = vec![0f64; n];
    let total_beyond: Vec<u64> = {
        // suffix sums: mass at and beyond bin i
        let mut s = vec![0u64; n + 1];
        for i in (0..n).rev() {
            s[i] = s[i + 1] + hist[i];
        }
        s
    };
    for i in levels..=n {
        for (d, &h) in p[..i].iter_mut().zip(hist) {
            *d = h as f64;
        }
        p[i - 1] += total_beyond[i] as f64;
        // Q from the unclipped bins merged into `levels` groups.
        let per = i as f64 / levels as f64;
        for j in 0..levels {
            let start = (j as f64 * per).floor() as usize;
            let end = if j + 1 == levels {
                i
            } else {
                ((j + 1) as f64 * per).floor() as usize
            };
            let chunk = &hist[start..end];
            let mass: u64 = chunk.iter().sum();
            let nonzero = chunk.iter().filter(|&&h| h > 0).count();
            for (k, &h) in chunk.iter().enumerate() {
                q[start + k] = if h > 0 {
                    mass as f64 / nonzero as f64
                } else {
                    0.0
                };
            }
        }
        let (sp, sq): (f64, f64) = (p[..i].iter().sum(), q[..i].iter().sum());
        if sp == 0.0 || sq == 0.0 {
            continue;
        }
        let mut kl = 0.0;
        for k in 0..i {
            let pk = p[k] / sp;
            if pk == 0.0 {
                continue;
            }
            let qk = q[k] / sq;
            // P has mass where Q has none only in the folded last bin: a tiny floor keeps the
            // divergence finite there, as TensorRT's smoothing does.
            kl += pk * (pk / qk.max(1e-12)).ln();
        }
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1 as f32 * bin_width
}

/// Quantization parameters of one activation tensor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
    pub act: ActType,
}

impl QParams {
    /// Parameters covering `(lo, hi)`. The range always includes 0 (exact zero padding).
    pub fn from_range(lo: f32, hi: f32, act: ActType) -> QParams {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        match act {
            ActType::Int8 => {
                let t = lo.abs().max(hi);
                QParams {
                    scale: if t > 0.0 { t / 127.0 } else { 1.0 },
                    zero_point: 0,
                    act,
                }
            }
            ActType::Uint8 => {
                let s = (hi - lo) / 255.0;
                if s <= 0.0 {
                    return QParams {
                        scale: 1.0,
                        zero_point: 0,
                        act,
                    };
                }
                QParams {
                    scale: s,
                    zero_point: (-lo / s).round_ties_even().clamp(0.0, 255.0) as i32,
                    act,
                }
            }
        }
    }

    /// ONNX QuantizeLinear then DequantizeLinear of one value (the reference semantics).
    pub fn fake_quant(&self, x: f32) -> f32 {
        let (qmin, qmax) = match self.act {
            ActType::Int8 => (-128.0, 127.0),
            ActType::Uint8 => (0.0, 255.0),
        };
        let q = ((x / self.scale).round_ties_even() + self.zero_point as f32).clamp(qmin, qmax);
        (q - self.zero_point as f32) * self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian_like(n: usize) -> Vec<f32> {
        // deterministic heavy-ish tailed sample: sum of uniforms plus rare outliers
        let mut s = 0x1234_5678u64;
        let mut u = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f32 / (1u64 << 53) as f32
        };
        (0..n)
            .map(|i| {
                let g = (0..6).map(|_| u()).sum::<f32>() - 3.0;
                if i % 5000 == 0 { g * 20.0 } else { g }
            })
            .collect()
    }

    #[test]
    fn minmax_percentile_entropy_order_on_an_outlier_tail() {
        let x = gaussian_like(200_000);
        let mut o = Observer::new(true);
        o.observe_range(&x);
        o.observe_hist(&x);
        let (_, mm) = o.range(Method::MinMax);
        let (_, pc) = o.range(Method::Percentile { percentile: 99.9 });
        let (_, en) = o.range(Method::Entropy);
        let absmax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        assert_eq!(mm, absmax);
        // the outliers (1 in 5000) are clipped by both histogram methods
        assert!(pc < 0.5 * mm, "percentile {pc} vs minmax {mm}");
        assert!(en < 0.5 * mm, "entropy {en} vs minmax {mm}");
        // ... but neither clips the bulk (|g| < 3 by construction, most mass below 2)
        assert!(pc > 1.5 && en > 1.5, "percentile {pc}, entropy {en}");
    }

    #[test]
    fn entropy_keeps_a_uniform_range_whole() {
        // With no tail, clipping only loses information: the threshold is the full range.
        let hist = vec![100u64; BINS];
        let t = entropy_threshold(&hist, 1.0 / BINS as f32, 128);
        assert!(t > 0.99, "threshold {t}");
    }

    #[test]
    fn qparams_follow_onnx_semantics() {
        let q = QParams::from_range(-1.0, 2.0, ActType::Int8);
        assert_eq!(q.zero_point, 0);
        assert!((q.scale - 2.0 / 127.0).abs() < 1e-9);
        assert_eq!(q.fake_quant(5.0), 127.0 * q.scale);
        let u = QParams::from_range(-1.0, 2.0, ActType::Uint8);
        assert_eq!(u.zero_point, 85);
        assert_eq!(u.fake_quant(0.0), 0.0);
        assert_eq!(u.fake_quant(-10.0), -85.0 * u.scale);
        // ties to even: 0.5 step rounds to 0, 1.5 to 2
        let s = QParams {
            scale: 1.0,
            zero_point: 0,
            act: ActType::Int8,
        };
        assert_eq!(s.fake_quant(0.5), 0.0);
        assert_eq!(s.fake_quant(1.5), 2.0);
    }

    #[test]
    fn asymmetric_percentile_cuts_both_tails() {
        let x: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        let mut o = Observer::new(false);
        o.observe_range(&x);
        o.observe_hist(&x);
        let (lo, hi) = o.range(Method::Percentile { percentile: 98.0 });
        assert!(
            (lo - 0.01).abs() < 2e-3 && (hi - 0.99).abs() < 2e-3,
            "{lo} {hi}"
        );
    }
}
