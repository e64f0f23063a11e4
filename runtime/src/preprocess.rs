//! Frame to model input in one pass: colour conversion, bilinear resize and normalisation.
//!
//! This is the CPU reference of the GPU preprocess kernel (`kernels/cuda/preprocess.cu`):
//! same taps, same weights, same colour matrix, all in f32.
//!
//! Semantics, fixed:
//! - Resize is bilinear with half-pixel centres (OpenCV `INTER_LINEAR`, ONNX Resize
//!   `half_pixel`): `src = (dst + 0.5) * in/out - 0.5`, clamped to `[0, in-1]`.
//! - YUYV and NV12 are BT.601 limited range: `R = 1.164(Y-16) + 1.596(V-128)`,
//!   `G = 1.164(Y-16) - 0.392(U-128) - 0.813(V-128)`, `B = 1.164(Y-16) + 2.017(U-128)`,
//!   clamped to [0, 255], not rounded. Chroma is taken from the pixel pair / 2x2 block.
//! - Gray from colour: `0.299 R + 0.587 G + 0.114 B`; colour from gray replicates.
//! - Conversion happens per tap before interpolation (so the result equals resizing the
//!   converted image), then `out = value * scale[c] + bias[c]` with
//!   `scale = 1 / (255 std)`, `bias = -mean / std`.

use crate::frame::{Frame, PixelFormat};
use bevrt_models::{ChannelOrder, InputSpec, Layout};

/// Precomputed taps and constants for one (input size, output spec) pair. Built once at load
/// (and again only when the camera's resolution changes); `run` never allocates.
#[derive(Debug, Clone)]
pub struct PreprocessPlan {
    in_w: u32,
    in_h: u32,
    out_w: usize,
    out_h: usize,
    order: ChannelOrder,
    layout: Layout,
    scale: [f32; 3],
    bias: [f32; 3],
    /// Per output column: left tap, right tap, right weight.
    xs: Vec<(u32, u32, f32)>,
    /// Per output row: top tap, bottom tap, bottom weight.
    ys: Vec<(u32, u32, f32)>,
}

fn taps(out: usize, inp: u32) -> Vec<(u32, u32, f32)> {
    let scale = inp as f32 / out as f32;
    let max = (inp - 1) as f32;
    (0..out)
        .map(|d| {
            let s = ((d as f32 + 0.5) * scale - 0.5).clamp(0.0, max);
            let i0 = s.floor() as u32;
            let i1 = (i0 + 1).min(inp - 1);
            (i0, i1, s - i0 as f32)
        })
        .collect()
}

impl PreprocessPlan {
    pub fn new(spec: &InputSpec, in_w: u32, in_h: u32) -> PreprocessPlan {
        assert!(in_w > 0 && in_h > 0, "frame size must be positive");
        let c = spec.channels.channels();
        let mut scale = [0f32; 3];
        let mut bias = [0f32; 3];
        for i in 0..c {
            scale[i] = 1.0 / (255.0 * spec.std[i]);
            bias[i] = -spec.mean[i] / spec.std[i];
        }
        PreprocessPlan {
            in_w,
            in_h,
            out_w: spec.width as usize,
            out_h: spec.height as usize,
            order: spec.channels,
            layout: spec.layout,
            scale,
            bias,
            xs: taps(spec.width as usize, in_w),
            ys: taps(spec.height as usize, in_h),
        }
    }

    /// Frame size this plan was built for.
    pub fn input_size(&self) -> (u32, u32) {
        (self.in_w, self.in_h)
    }

    /// Number of f32 values `run` writes.
    pub fn output_len(&self) -> usize {
        self.out_w * self.out_h * self.order.channels()
    }

    /// Convert, resize and normalise `frame` into `out` (layout and channel order of the
    /// spec). Panics only on caller bugs (wrong frame size or output length): the pipeline
    /// checks frames with [`Frame::is_consistent`] and rebuilds the plan on size changes.
    pub fn run(&self, frame: &Frame, out: &mut [f32]) {
        assert_eq!((frame.width, frame.height), (self.in_w, self.in_h));
        assert!(frame.is_consistent());
        assert_eq!(out.len(), self.output_len());
        let px = Pixels {
            data: &frame.data,
            format: frame.format,
            w: frame.width as usize,
            h: frame.height as usize,
        };
        let c = self.order.channels();
        let plane = self.out_w * self.out_h;
        for (oy, &(y0, y1, wy)) in self.ys.iter().enumerate() {
            for (ox, &(x0, x1, wx)) in self.xs.iter().enumerate() {
                let p00 = px.rgb(x0 as usize, y0 as usize);
                let p01 = px.rgb(x1 as usize, y0 as usize);
                let p10 = px.rgb(x0 as usize, y1 as usize);
                let p11 = px.rgb(x1 as usize, y1 as usize);
                let mut rgb = [0f32; 3];
                for k in 0..3 {
                    let top = p00[k] + (p01[k] - p00[k]) * wx;
                    let bot = p10[k] + (p11[k] - p10[k]) * wx;
                    rgb[k] = top + (bot - top) * wy;
                }
                let vals: [f32; 3] = match self.order {
                    ChannelOrder::Rgb => rgb,
                    ChannelOrder::Bgr => [rgb[2], rgb[1], rgb[0]],
                    ChannelOrder::Gray => [luma(rgb), 0.0, 0.0],
                };
                let pix = oy * self.out_w + ox;
                for k in 0..c {
                    let v = vals[k] * self.scale[k] + self.bias[k];
                    match self.layout {
                        Layout::Nchw => out[k * plane + pix] = v,
                        Layout::Nhwc => out[pix * c + k] = v,
                    }
                }
            }
        }
    }
}

#[inline]
fn luma(rgb: [f32; 3]) -> f32 {
    0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
}

struct Pixels<'a> {
    data: &'a [u8],
    format: PixelFormat,
    w: usize,
    h: usize,
}

/// BT.601 limited-range YUV to RGB in f32, clamped, not rounded.
#[inline]
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [f32; 3] {
    let c = 1.164 * (y as f32 - 16.0);
    let d = u as f32 - 128.0;
    let e = v as f32 - 128.0;
    [
        (c + 1.596 * e).clamp(0.0, 255.0),
        (c - 0.392 * d - 0.813 * e).clamp(0.0, 255.0),
        (c + 2.017 * d).clamp(0.0, 255.0),
    ]
}

impl Pixels<'_> {
    #[inline]
    fn rgb(&self, x: usize, y: usize) -> [f32; 3] {
        let d = self.data;
        match self.format {
            PixelFormat::Rgb8 => {
                let i = (y * self.w + x) * 3;
                [d[i] as f32, d[i + 1] as f32, d[i + 2] as f32]
            }
            PixelFormat::Bgr8 => {
                let i = (y * self.w + x) * 3;
                [d[i + 2] as f32, d[i + 1] as f32, d[i] as f32]
            }
            PixelFormat::Gray8 => {
                let g = d[y * self.w + x] as f32;
                [g, g, g]
            }
            PixelFormat::Yuyv => {
                let stride = self.w.div_ceil(2) * 4;
                let pair = y * stride + (x / 2) * 4;
                let luma = d[pair + (x & 1) * 2];
                yuv_to_rgb(luma, d[pair + 1], d[pair + 3])
            }
            PixelFormat::Nv12 => {
                let luma = d[y * self.w + x];
                let uv_stride = self.w.div_ceil(2) * 2;
                let uv = self.w * self.h + (y / 2) * uv_stride + (x / 2) * 2;
                yuv_to_rgb(luma, d[uv], d[uv + 1])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bevrt_models::InputDtype;

    fn spec(w: u32, h: u32, order: ChannelOrder, layout: Layout) -> InputSpec {
        let c = order.channels();
        InputSpec {
            name: None,
            width: w,
            height: h,
            channels: order,
            layout,
            dtype: InputDtype::F32,
            mean: vec![0.0; c],
            std: vec![1.0; c],
        }
    }

    fn frame(format: PixelFormat, w: u32, h: u32, data: Vec<u8>) -> Frame {
        let mut f = Frame::with_capacity(data.len());
        f.reset(format, w, h);
        f.data.copy_from_slice(&data);
        f
    }

    #[test]
    fn identity_size_is_exact_and_bgr_swaps() {
        let data: Vec<u8> = (0..4 * 2 * 3).map(|i| (i * 10) as u8).collect();
        let f = frame(PixelFormat::Rgb8, 4, 2, data.clone());
        let p = PreprocessPlan::new(&spec(4, 2, ChannelOrder::Bgr, Layout::Nchw), 4, 2);
        let mut out = vec![0f32; p.output_len()];
        p.run(&f, &mut out);
        // channel 0 of BGR is the frame's blue = byte 2 of each pixel
        for i in 0..8 {
            assert!((out[i] - data[i * 3 + 2] as f32 / 255.0).abs() < 1e-6);
            assert!((out[16 + i] - data[i * 3] as f32 / 255.0).abs() < 1e-6);
        }
    }

    #[test]
    fn downscale_by_two_averages_pairs() {
        // half-pixel centres: output pixel 0 of a 4->2 resize samples at 0.5
        let data = vec![0u8, 100, 200, 250];
        let f = frame(PixelFormat::Gray8, 4, 1, data);
        let p = PreprocessPlan::new(&spec(2, 1, ChannelOrder::Gray, Layout::Nchw), 4, 1);
        let mut out = vec![0f32; 2];
        p.run(&f, &mut out);
        assert!((out[0] * 255.0 - 50.0).abs() < 1e-3);
        assert!((out[1] * 255.0 - 225.0).abs() < 1e-3);
    }

    #[test]
    fn yuyv_and_nv12_agree_with_rgb_conversion() {
        // 2x2 image, uniform chroma: YUYV and NV12 must give the same RGB.
        let ys = [16u8, 235, 128, 60];
        let (u, v) = (90u8, 200u8);
        let yuyv = vec![ys[0], u, ys[1], v, ys[2], u, ys[3], v];
        let mut nv12 = ys.to_vec();
        nv12.extend_from_slice(&[u, v]);
        let s = spec(2, 2, ChannelOrder::Rgb, Layout::Nhwc);
        let p = PreprocessPlan::new(&s, 2, 2);
        let mut a = vec![0f32; 12];
        let mut b = vec![0f32; 12];
        p.run(&frame(PixelFormat::Yuyv, 2, 2, yuyv), &mut a);
        p.run(&frame(PixelFormat::Nv12, 2, 2, nv12), &mut b);
        assert_eq!(a, b);
        let expect = yuv_to_rgb(235, u, v);
        for k in 0..3 {
            assert!((a[3 + k] * 255.0 - expect[k]).abs() < 1e-3);
        }
        // white and black
        assert_eq!(yuv_to_rgb(235, 128, 128).map(|x| x.round()), [255.0; 3]);
        assert_eq!(yuv_to_rgb(16, 128, 128), [0.0; 3]);
    }

    #[test]
    fn normalisation_applies_mean_and_std() {
        let f = frame(PixelFormat::Rgb8, 1, 1, vec![255, 0, 127]);
        let mut s = spec(1, 1, ChannelOrder::Rgb, Layout::Nchw);
        s.mean = vec![0.5; 3];
        s.std = vec![0.5; 3];
        let p = PreprocessPlan::new(&s, 1, 1);
        let mut out = vec![0f32; 3];
        p.run(&f, &mut out);
        assert!((out[0] - 1.0).abs() < 1e-6);
        assert!((out[1] + 1.0).abs() < 1e-6);
        assert!((out[2] - (127.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6);
    }
}
