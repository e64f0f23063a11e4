//! The preprocess kernels' test matrix, shared by the emulated-kernel tests
//! (`kernels/emu/tests/kernels.rs`) and the GPU device check (`bevrt-device-check`): every
//! pixel format × channel order × layout, and the int8 quantizations.

use bevrt_models::{ChannelOrder, InputDtype, InputSpec, Layout};
use bevrt_runtime::frame::PixelFormat;
use bevrt_runtime::preprocess::InputQuant;

/// Every pixel format, in the order of `PreprocessParams::fmt`'s codes.
pub const FORMATS: [PixelFormat; 5] = [
    PixelFormat::Rgb8,
    PixelFormat::Bgr8,
    PixelFormat::Gray8,
    PixelFormat::Yuyv,
    PixelFormat::Nv12,
];

/// Every channel order, in the order of `PreprocessParams::order`'s codes.
pub const ORDERS: [ChannelOrder; 3] = [ChannelOrder::Rgb, ChannelOrder::Bgr, ChannelOrder::Gray];

/// Every layout, in the order of `PreprocessParams::layout`'s codes.
pub const LAYOUTS: [Layout; 2] = [Layout::Nchw, Layout::Nhwc];

/// The int8 outputs' quantizations: an ordinary one, and one with the zero point at the edge
/// and a scale so small that `v / scale` is far outside the int range.
pub const INT8_QUANTS: [InputQuant; 2] = [
    InputQuant {
        scale: 0.03,
        zero_point: 3,
    },
    InputQuant {
        scale: 1e-12,
        zero_point: 127,
    },
];

/// One case of the matrix, with each choice's index in its table (= its kernel code).
#[derive(Debug, Clone, Copy)]
pub struct PreprocessCase {
    pub fmt_i: usize,
    pub fmt: PixelFormat,
    pub order_i: usize,
    pub order: ChannelOrder,
    pub layout_i: usize,
    pub layout: Layout,
}

impl PreprocessCase {
    /// The model input of this case at `width` x `height`: f32, mean 0.45 and std 0.25 on
    /// every channel.
    pub fn spec(&self, width: u32, height: u32) -> InputSpec {
        let c = self.order.channels();
        InputSpec {
            name: None,
            width,
            height,
            channels: self.order,
            layout: self.layout,
            dtype: InputDtype::F32,
            mean: vec![0.45; c],
            std: vec![0.25; c],
        }
    }
}

/// The source-map case's model input at `width` x `height`: BGR, NCHW, f32, mean and std 0.5.
pub fn source_map_spec(width: u32, height: u32) -> InputSpec {
    InputSpec {
        name: None,
        width,
        height,
        channels: ChannelOrder::Bgr,
        layout: Layout::Nchw,
        dtype: InputDtype::F32,
        mean: vec![0.5; 3],
        std: vec![0.5; 3],
    }
}

/// Every format × order × layout (30 cases): formats outermost, layouts innermost.
pub fn matrix() -> Vec<PreprocessCase> {
    let mut cases = Vec::with_capacity(FORMATS.len() * ORDERS.len() * LAYOUTS.len());
    for (fmt_i, fmt) in FORMATS.into_iter().enumerate() {
        for (order_i, order) in ORDERS.into_iter().enumerate() {
            for (layout_i, layout) in LAYOUTS.into_iter().enumerate() {
                cases.push(PreprocessCase {
                    fmt_i,
                    fmt,
                    order_i,
                    order,
                    layout_i,
                    layout,
                });
            }
        }
    }
    cases
}
