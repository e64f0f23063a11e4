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
//! - Optionally a source map replaces the resize: per output pixel, the (x, y) frame position
//!   to sample (e.g. the calibration's undistortion table resampled to the model input), with
//!   the same clamping and bilinear taps.
//! - Outputs: f32; f16 (IEEE binary16 bits, round to nearest even); or int8 quantized as
//!   `clamp(round_half_even(v / q_scale) + zero_point, -128, 127)`.
//! - Every operation is a single f32 operation in this order, with no fused multiply-add, so
//!   the kernel (compiled with `--fmad=false`) gives bit-identical results.

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
    /// Per output pixel: the frame position to sample, replacing `xs`/`ys` when set.
    map: Option<Vec<[f32; 2]>>,
}

/// One tap pair from a source coordinate, exactly as [`taps`] computes it.
#[inline]
fn tap(s: f32, inp: u32) -> (u32, u32, f32) {
    let s = s.clamp(0.0, (inp - 1) as f32);
    let i0 = s.floor() as u32;
    (i0, (i0 + 1).min(inp - 1), s - i0 as f32)
}

/// f32 to IEEE binary16 bits, round to nearest even (as PTX `cvt.rn.f16.f32`, NaN included:
/// every NaN becomes the canonical 0x7fff).
pub fn f32_to_f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return if man != 0 { 0x7fff } else { sign | 0x7c00 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    let (m, shift) = if e <= 0 {
        if e < -10 {
            return sign;
        }
        (man | 0x80_0000, (14 - e) as u32)
    } else {
        (man, 13u32)
    };
    let mut half = m >> shift;
    let rem = m & ((1 << shift) - 1);
    let halfway = 1 << (shift - 1);
    if rem > halfway || (rem == halfway && half & 1 == 1) {
        half += 1;
    }
    if e <= 0 {
        sign | half as u16
    } else {
        sign | (((e as u32) << 10) + half) as u16
    }
}

/// Symmetric/asymmetric int8 quantization of the model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputQuant {
    pub scale: f32,
    pub zero_point: i32,
}

impl InputQuant {
    #[inline]
    pub fn quantize(self, v: f32) -> i8 {
        // the kernels' quantize_i8: rounded and clamped in float, so a huge value or zero
        // point cannot overflow an integer add, and NaN gives -128 as on the GPU
        bevrt_kernels::reference::quantize_i8(v, self.scale, self.zero_point)
    }
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
            map: None,
        }
    }

    /// Sample through a per-output-pixel source map (row-major, `width * height` entries of
    /// frame (x, y)) instead of the plain resize.
    pub fn with_source_map(mut self, map: Vec<[f32; 2]>) -> PreprocessPlan {
        assert_eq!(
            map.len(),
            self.out_w * self.out_h,
            "one source position per output pixel"
        );
        self.map = Some(map);
        self
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
        self.run_with(frame, out, |v| v)
    }

    /// As [`run`](Self::run), writing IEEE binary16 bits.
    pub fn run_f16(&self, frame: &Frame, out: &mut [u16]) {
        self.run_with(frame, out, f32_to_f16_bits)
    }

    /// As [`run`](Self::run), writing int8 quantized with `q`.
    pub fn run_i8(&self, frame: &Frame, out: &mut [i8], q: InputQuant) {
        self.run_with(frame, out, |v| q.quantize(v))
    }

    fn run_with<T: Copy>(&self, frame: &Frame, out: &mut [T], store: impl Fn(f32) -> T) {
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
        for oy in 0..self.out_h {
            for ox in 0..self.out_w {
                let pix = oy * self.out_w + ox;
                let ((x0, x1, wx), (y0, y1, wy)) = match &self.map {
                    Some(m) => (tap(m[pix][0], self.in_w), tap(m[pix][1], self.in_h)),
                    None => (self.xs[ox], self.ys[oy]),
                };
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
                for k in 0..c {
                    let v = store(vals[k] * self.scale[k] + self.bias[k]);
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

/// A frame's pixels as packed RGB8 in `out` (YUV as BT.601 limited range, the conversion the
/// network's input gets), for sinks that show the camera (the MCAP sink's JPEG).
pub fn frame_rgb8(data: &[u8], format: PixelFormat, width: u32, height: u32, out: &mut Vec<u8>) {
    let (w, h) = (width as usize, height as usize);
    let p = Pixels { data, format, w, h };
    out.clear();
    out.reserve(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            out.extend(p.rgb(x, y).map(|v| (v + 0.5) as u8));
        }
    }
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

/// The GPU preprocess kernel's parameters for `spec` and frames of `fmt` at `w` x `h`: the
/// same scale and bias as [`PreprocessPlan::new`] (so the kernel reproduces it bit for bit).
pub fn gpu_params(
    spec: &InputSpec,
    fmt: PixelFormat,
    w: u32,
    h: u32,
) -> bevrt_kernels::launch::PreprocessParams {
    use PixelFormat as F;
    let mut p = bevrt_kernels::launch::PreprocessParams {
        in_w: w as i32,
        in_h: h as i32,
        out_w: spec.width as i32,
        out_h: spec.height as i32,
        fmt: match fmt {
            F::Rgb8 => 0,
            F::Bgr8 => 1,
            F::Gray8 => 2,
            F::Yuyv => 3,
            F::Nv12 => 4,
        },
        order: match spec.channels {
            ChannelOrder::Rgb => 0,
            ChannelOrder::Bgr => 1,
            ChannelOrder::Gray => 2,
        },
        layout: match spec.layout {
            Layout::Nchw => 0,
            Layout::Nhwc => 1,
        },
        q_scale: 1.0,
        ..Default::default()
    };
    for i in 0..spec.channels.channels() {
        p.scale[i] = 1.0 / (255.0 * spec.std[i]);
        p.bias[i] = -spec.mean[i] / spec.std[i];
    }
    p
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
    fn f16_bits_round_to_nearest_even() {
        for (x, bits) in [
            (0.0f32, 0x0000u16),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (65504.0, 0x7bff),
            (65520.0, 0x7c00),        // rounds up to infinity
            (5.960_464_5e-8, 0x0001), // smallest subnormal
            (2.980_232_2e-8, 0x0000), // half of it: ties to even (0)
            (1.000_488_3, 0x3c00),    // exactly halfway 1 and next: even stays
            (1.001_464_8, 0x3c02),    // halfway between 0x3c01 and 0x3c02: to even
            (f32::INFINITY, 0x7c00),
        ] {
            assert_eq!(f32_to_f16_bits(x), bits, "{x}");
        }
        assert_eq!(f32_to_f16_bits(f32::NAN) & 0x7c00, 0x7c00);
    }

    #[test]
    fn identity_map_equals_plain_resize_and_int8_matches() {
        let data: Vec<u8> = (0..16 * 8 * 3).map(|i| (i * 37 % 251) as u8).collect();
        let f = frame(PixelFormat::Rgb8, 16, 8, data);
        let s = spec(6, 4, ChannelOrder::Bgr, Layout::Nchw);
        let plain = PreprocessPlan::new(&s, 16, 8);
        // the map the resize implies: half-pixel centres
        let map: Vec<[f32; 2]> = (0..4)
            .flat_map(|y| {
                (0..6).map(move |x| {
                    [
                        (x as f32 + 0.5) * (16.0 / 6.0) - 0.5,
                        (y as f32 + 0.5) * (8.0 / 4.0) - 0.5,
                    ]
                })
            })
            .collect();
        let mapped = PreprocessPlan::new(&s, 16, 8).with_source_map(map);
        let (mut a, mut b) = (vec![0f32; 72], vec![0f32; 72]);
        plain.run(&f, &mut a);
        mapped.run(&f, &mut b);
        assert_eq!(a, b);
        let q = InputQuant {
            scale: 1.0 / 127.0,
            zero_point: 0,
        };
        let mut i = vec![0i8; 72];
        plain.run_i8(&f, &mut i, q);
        for (x, y) in a.iter().zip(&i) {
            assert_eq!(q.quantize(*x), *y);
        }
        let mut h = vec![0u16; 72];
        plain.run_f16(&f, &mut h);
        assert_eq!(h[5], f32_to_f16_bits(a[5]));
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
