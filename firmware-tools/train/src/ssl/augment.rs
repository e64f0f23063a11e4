//! Augmentations: the views a self-supervised method compares.
//!
//! Digits (28x28 grey): one random affine warp that combines a random resized crop (area
//! `scale`, aspect `ratio`), a rotation, a shear and the crop's position, sampled bilinearly
//! with black outside; then, with probability `thickness_p`, a 3x3 dilation or erosion (stroke
//! width is the strongest nuisance in handwritten digits); then Gaussian pixel noise.
//! Everything is drawn from the caller's [`Rng`], so a run is reproducible and resumable.

use crate::rng::{Rng, normal};

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct DigitAugment {
    /// Crop area as a fraction of the image, drawn uniformly in this range.
    pub scale: (f32, f32),
    /// Crop aspect ratio (log-uniform).
    pub ratio: (f32, f32),
    /// Largest rotation, degrees (uniform in ±).
    pub rotate_deg: f32,
    /// Largest horizontal shear (uniform in ±).
    pub shear: f32,
    /// Probability of a dilation or erosion (half each).
    pub thickness_p: f32,
    /// Std of additive noise, in the bundle's [-1, 1] units.
    pub noise: f32,
}

impl Default for DigitAugment {
    fn default() -> Self {
        DigitAugment {
            scale: (0.5, 1.0),
            ratio: (0.75, 1.333),
            rotate_deg: 15.0,
            shear: 0.2,
            thickness_p: 0.5,
            noise: 0.1,
        }
    }
}

impl DigitAugment {
    /// Light augmentation for reconstruction methods (MAE): the target is the view itself.
    pub fn light() -> Self {
        DigitAugment {
            scale: (0.8, 1.0),
            ratio: (0.9, 1.1),
            rotate_deg: 8.0,
            shear: 0.1,
            thickness_p: 0.0,
            noise: 0.0,
        }
    }

    /// One view of `src` (side x side, 0..=255) into `out` in [-1, 1] units.
    pub fn view(&self, src: &[u8], side: usize, rng: &mut Rng, out: &mut [f32]) {
        debug_assert_eq!(src.len(), side * side);
        let sd = side as f32;
        let area = self.scale.0 + (self.scale.1 - self.scale.0) * rng.uniform();
        let log_r = self.ratio.0.ln() + (self.ratio.1.ln() - self.ratio.0.ln()) * rng.uniform();
        let r = log_r.exp();
        // Crop half-extent (fraction of the image) along x and y.
        let (cw, ch) = (((area * r).sqrt()).min(1.0), ((area / r).sqrt()).min(1.0));
        let cx = (1.0 - cw) * (rng.uniform() - 0.5) * sd;
        let cy = (1.0 - ch) * (rng.uniform() - 0.5) * sd;
        let th = (rng.uniform() * 2.0 - 1.0) * self.rotate_deg.to_radians();
        let sh = (rng.uniform() * 2.0 - 1.0) * self.shear;
        let (s, c) = th.sin_cos();
        // Output pixel offset (u, v) from the centre → source offset: rotate(shear(scale(u, v))).
        let (a, b) = (cw, sh * ch);
        let (d, e) = (0.0, ch);
        let m = [c * a - s * d, c * b - s * e, s * a + c * d, s * b + c * e];
        let half = sd / 2.0;
        let mut tmp = vec![0f32; side * side];
        warp(src, side, m, (cx + half, cy + half), &mut tmp);
        self.finish(&mut tmp, side, rng, out);
    }

    /// Thickness change, noise, and the [-1, 1] scaling.
    fn finish(&self, img: &mut [f32], side: usize, rng: &mut Rng, out: &mut [f32]) {
        if rng.uniform() < self.thickness_p {
            morph(img, side, rng.uniform() < 0.5, out);
            img.copy_from_slice(out);
        }
        let noise = if self.noise > 0.0 {
            normal(img.len(), rng)
        } else {
            vec![]
        };
        for (i, (o, &v)) in out.iter_mut().zip(img.iter()).enumerate() {
            let n = noise.get(i).map_or(0.0, |n| n * self.noise);
            *o = v / 127.5 - 1.0 + n;
        }
    }
}

/// Bilinear inverse warp: output pixel centre offset (u, v) from the image centre samples the
/// source at `centre + M·(u, v)`; black outside. Values stay in 0..=255.
fn warp(src: &[u8], side: usize, m: [f32; 4], centre: (f32, f32), out: &mut [f32]) {
    let half = side as f32 / 2.0;
    let px = |x: isize, y: isize| -> f32 {
        if x < 0 || y < 0 || x >= side as isize || y >= side as isize {
            0.0
        } else {
            src[y as usize * side + x as usize] as f32
        }
    };
    for y in 0..side {
        let v = y as f32 + 0.5 - half;
        for x in 0..side {
            let u = x as f32 + 0.5 - half;
            let sx = centre.0 + m[0] * u + m[1] * v - 0.5;
            let sy = centre.1 + m[2] * u + m[3] * v - 0.5;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            let top = px(x0, y0) * (1.0 - fx) + px(x0 + 1, y0) * fx;
            let bot = px(x0, y0 + 1) * (1.0 - fx) + px(x0 + 1, y0 + 1) * fx;
            out[y * side + x] = top * (1.0 - fy) + bot * fy;
        }
    }
}

/// 3x3 grey dilation (`dilate`) or erosion of `img` into `out`.
fn morph(img: &[f32], side: usize, dilate: bool, out: &mut [f32]) {
    for y in 0..side {
        for x in 0..side {
            let mut acc = if dilate { f32::MIN } else { f32::MAX };
            for dy in -1isize..=1 {
                for dx in -1isize..=1 {
                    let (xx, yy) = (x as isize + dx, y as isize + dy);
                    let v = if xx < 0 || yy < 0 || xx >= side as isize || yy >= side as isize {
                        0.0
                    } else {
                        img[yy as usize * side + xx as usize]
                    };
                    acc = if dilate { acc.max(v) } else { acc.min(v) };
                }
            }
            out[y * side + x] = acc;
        }
    }
}

/// The image as the bundle sees it, no augmentation: [-1, 1].
pub fn plain(src: &[u8], out: &mut [f32]) {
    for (o, &p) in out.iter_mut().zip(src) {
        *o = p as f32 / 127.5 - 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_warp_reproduces_the_image() {
        let src: Vec<u8> = (0..784).map(|i| (i * 7 % 256) as u8).collect();
        let mut out = vec![0f32; 784];
        warp(&src, 28, [1.0, 0.0, 0.0, 1.0], (14.0, 14.0), &mut out);
        for (a, &b) in out.iter().zip(&src) {
            assert!((a - b as f32).abs() < 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn views_differ_stay_in_range_and_repeat_with_the_seed() {
        let src: Vec<u8> = (0..784)
            .map(|i: usize| {
                if (i / 28).abs_diff(14) < 6 && (i % 28).abs_diff(14) < 3 {
                    255
                } else {
                    0
                }
            })
            .collect();
        let aug = DigitAugment::default();
        let (mut a, mut b, mut c) = (vec![0f32; 784], vec![0f32; 784], vec![0f32; 784]);
        let mut r = Rng(3);
        aug.view(&src, 28, &mut r, &mut a);
        aug.view(&src, 28, &mut r, &mut b);
        aug.view(&src, 28, &mut Rng(3), &mut c);
        assert_eq!(a, c, "same seed, same view");
        assert!(
            a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 0.5),
            "two draws differ"
        );
        assert!(a.iter().all(|v| (-2.0..=2.0).contains(v)));
        // The stroke survives: some bright pixels remain.
        assert!(a.iter().filter(|&&v| v > 0.5).count() > 10);
    }
}
