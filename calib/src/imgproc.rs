//! Minimal grayscale image type and filters used by detection and remapping.

use std::path::Path;

use crate::error::CalibError;

/// Row-major f32 grayscale image (0..255).
#[derive(Debug, Clone, PartialEq)]
pub struct GrayImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl GrayImage {
    pub fn new(width: usize, height: usize) -> Self {
        GrayImage {
            width,
            height,
            data: vec![0.0; width * height],
        }
    }
    pub fn from_luma8(width: usize, height: usize, px: &[u8]) -> Self {
        GrayImage {
            width,
            height,
            data: px.iter().map(|&v| v as f32).collect(),
        }
    }
    /// Loads any image the `image` crate decodes (PNG, JPEG) and converts it to gray.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, CalibError> {
        let path = path.as_ref();
        let img = image::open(path).map_err(|e| CalibError::Image {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        let g = img.to_luma8();
        Ok(Self::from_luma8(
            g.width() as usize,
            g.height() as usize,
            g.as_raw(),
        ))
    }
    pub fn to_luma8(&self) -> Vec<u8> {
        self.data
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect()
    }
    #[inline]
    pub fn at(&self, x: usize, y: usize) -> f32 {
        self.data[y * self.width + x]
    }
    /// Bilinear sample with border replication; pixel centres at integer coordinates.
    #[inline]
    pub fn bilinear(&self, x: f64, y: f64) -> f32 {
        let xm = (self.width - 1) as f64;
        let ym = (self.height - 1) as f64;
        let x = x.clamp(0.0, xm);
        let y = y.clamp(0.0, ym);
        let x0 = (x.floor() as usize).min(self.width.saturating_sub(2));
        let y0 = (y.floor() as usize).min(self.height.saturating_sub(2));
        let fx = (x - x0 as f64) as f32;
        let fy = (y - y0 as f64) as f32;
        let i = y0 * self.width + x0;
        let a = self.data[i];
        let b = self.data[i + 1];
        let c = self.data[i + self.width];
        let d = self.data[i + self.width + 1];
        (a * (1.0 - fx) + b * fx) * (1.0 - fy) + (c * (1.0 - fx) + d * fx) * fy
    }
    /// Separable Gaussian blur (border replicated).
    pub fn gaussian_blur(&self, sigma: f32) -> GrayImage {
        if sigma <= 0.0 {
            return self.clone();
        }
        let r = (sigma * 3.0).ceil() as isize;
        let mut k: Vec<f32> = (-r..=r)
            .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
            .collect();
        let s: f32 = k.iter().sum();
        k.iter_mut().for_each(|v| *v /= s);
        let (w, h) = (self.width as isize, self.height as isize);
        let mut tmp = take_buf(self.data.len());
        let wu = w as usize;
        let ru = r as usize;
        for y in 0..h as usize {
            let row = &self.data[y * wu..(y + 1) * wu];
            let o = &mut tmp[y * wu..(y + 1) * wu];
            if wu > 2 * ru {
                // interior: tap-wise accumulation over slices (vectorizes)
                let n = wu - 2 * ru;
                for (i, kv) in k.iter().enumerate() {
                    let src = &row[i..i + n];
                    for (a, b) in o[ru..ru + n].iter_mut().zip(src) {
                        *a += kv * b;
                    }
                }
            }
            for x in (0..w).filter(|&x| x < r || x + r >= w) {
                let mut acc = 0.0;
                for (i, kv) in k.iter().enumerate() {
                    let xx = (x + i as isize - r).clamp(0, w - 1) as usize;
                    acc += kv * row[xx];
                }
                o[x as usize] = acc;
            }
        }
        let mut out = take_buf(self.data.len());
        for y in 0..h {
            let o = &mut out[(y * w) as usize..((y + 1) * w) as usize];
            for (i, kv) in k.iter().enumerate() {
                let yy = (y + i as isize - r).clamp(0, h - 1) as usize;
                let src = &tmp[yy * w as usize..(yy + 1) * w as usize];
                for (a, b) in o.iter_mut().zip(src) {
                    *a += kv * b;
                }
            }
        }
        give_buf(tmp);
        GrayImage {
            width: self.width,
            height: self.height,
            data: out,
        }
    }
}

thread_local! {
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A zeroed scratch buffer of `n` floats from a small per-thread pool (avoids fresh page
/// faults for the large temporaries of every detection).
pub(crate) fn take_buf(n: usize) -> Vec<f32> {
    let mut v = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
    v.clear();
    v.resize(n, 0.0);
    v
}

/// Returns a buffer to the pool (at most 4 are kept).
pub(crate) fn give_buf(v: Vec<f32>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < 4 {
            p.push(v);
        }
    });
}
