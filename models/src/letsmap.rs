//! The reference BEV architecture "letsmap-lite", defined once: the trainer (candle, in
//! bevrt-tool), the ONNX exporter and the bundle writer all read these layer lists.
//!
//! ```text
//! image (1,3,128,384) ─▶ encoder (5 conv, stride 8) ─▶ (1,C,16,48)
//!   ─▶ lift conv (3x3, linear) ─▶ C context features + D depth logits (1,C+D,16,48)
//!   ─▶ depth-weighted lift (bevrt-calib SamplingTable with depth bins, no weights) ─▶ (1,C*Z,80,80)
//!   ─▶ head (4 conv) ─▶ logits (1,8,80,80)
//! ```
//! The lift sits between the two ONNX files so that a new calibration only rebuilds the
//! table (SkyEye-style voxel pull, bilinear taps, Z height levels, each tap weighted by the
//! pixel's depth distribution at the cell's depth bin: `bevrt_calib::bev` module docs).
//! `encoder.onnx` holds the encoder and the lift conv ([`LetsMapLite::deployed_encoder`]).
//! [`LetsMapLite::plain`] is the earlier form without depth (bundles made before it still run).
//!
//! Weights are named `<layer>.weight` (shape cout, cin, k, k) and `<layer>.bias` (cout).

use bevrt_calib::{BevGrid, DepthBins, DepthSpacing};

/// One convolution layer: square kernel, symmetric "same" padding, optional ReLU.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvLayer {
    pub name: &'static str,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub relu: bool,
}

impl ConvLayer {
    pub fn pad(&self) -> usize {
        self.k / 2
    }
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.cout, self.cin, self.k, self.k]
    }
    /// Output size for an input of `h` x `w`.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let f = |x: usize| (x + 2 * self.pad() - self.k) / self.stride + 1;
        (f(h), f(w))
    }
}

const fn conv(
    name: &'static str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    relu: bool,
) -> ConvLayer {
    ConvLayer {
        name,
        cin,
        cout,
        k,
        stride,
        relu,
    }
}

/// Channels of the encoder output (the features the view transform pulls).
pub const FEATURE_CHANNELS: usize = 32;
/// Output stride of the encoder.
pub const STRIDE: usize = 8;
/// Whether a class name is a vehicle: a cell of it may move between frames and hides what is
/// behind it (the hidden-cell scores, the temporal consistency term).
pub fn is_vehicle(class: &str) -> bool {
    matches!(class, "car" | "truck" | "2-wheeler")
}

/// The 8 classes in index order, with display colours (Cityscapes-like).
pub const CLASSES: [(&str, [u8; 3]); 8] = [
    ("road", [128, 64, 128]),
    ("sidewalk", [244, 35, 232]),
    ("building", [70, 70, 70]),
    ("terrain", [107, 142, 35]),
    ("person", [220, 20, 60]),
    ("2-wheeler", [119, 11, 32]),
    ("car", [0, 0, 142]),
    ("truck", [0, 60, 100]),
];

/// The letsmap-lite architecture for one input size and BEV grid.
#[derive(Debug, Clone, PartialEq)]
pub struct LetsMapLite {
    pub input_w: usize,
    pub input_h: usize,
    pub grid: BevGrid,
    pub encoder: Vec<ConvLayer>,
    /// The depth head with the context projection: C -> C + D (D = the grid's depth bins),
    /// linear; empty for a grid without depth bins (the plain view transform).
    pub lift: Vec<ConvLayer>,
    pub head: Vec<ConvLayer>,
    /// Pretraining only (never exported): reconstructs the 8x8x3 pixels of each masked
    /// stride-8 patch of frame t from the features of frames t and t-k.
    pub mae_decoder: Vec<ConvLayer>,
}

/// The depth bins of the default grid: 32 log-spaced bins of camera depth from 3 m (the
/// nearest ground the default camera sees is 3.7 m ahead) to 48 m (past the grid's deepest
/// point, about 40 m along the optical axis): each bin 9 % wider than the one before, 0.27 m
/// at 3 m, 4 m at 44 m.
pub fn default_depth_bins() -> DepthBins {
    DepthBins {
        min: 3.0,
        max: 48.0,
        bins: 32,
        spacing: DepthSpacing::Log,
    }
}

impl Default for LetsMapLite {
    fn default() -> Self {
        let mut a = Self::plain();
        a.grid.depth = Some(default_depth_bins());
        Self::new(a.input_w, a.input_h, a.grid)
    }
}

impl LetsMapLite {
    /// The architecture before the depth-weighted lift: same encoder and head, no lift conv,
    /// the plain view transform.
    pub fn plain() -> Self {
        Self::new(
            384,
            128,
            BevGrid {
                x_min: 0.0,
                x_max: 40.0,
                y_min: -20.0,
                y_max: 20.0,
                cell: 0.5,
                z_levels: vec![0.0, 1.0],
                depth: None,
            },
        )
    }

    pub fn new(input_w: usize, input_h: usize, grid: BevGrid) -> Self {
        let c = FEATURE_CHANNELS;
        let z = grid.z_levels.len();
        LetsMapLite {
            input_w,
            input_h,
            encoder: vec![
                conv("enc1", 3, 16, 3, 2, true),
                conv("enc2", 16, 32, 3, 2, true),
                conv("enc3", 32, 32, 3, 1, true),
                conv("enc4", 32, 48, 3, 2, true),
                conv("enc5", 48, c, 3, 1, true),
            ],
            lift: match grid.depth_bins() {
                0 => vec![],
                d => vec![conv("lift", c, c + d, 3, 1, false)],
            },
            head: vec![
                conv("head1", c * z, 32, 1, 1, true),
                conv("head2", 32, 32, 3, 1, true),
                conv("head3", 32, 32, 3, 1, true),
                conv("head4", 32, CLASSES.len(), 1, 1, false),
            ],
            mae_decoder: vec![
                conv("mae1", 2 * c, 64, 3, 1, true),
                conv("mae2", 64, 3 * STRIDE * STRIDE, 1, 1, false),
            ],
            grid,
        }
    }

    /// What `encoder.onnx` holds: the encoder, then the lift conv when there is one.
    pub fn deployed_encoder(&self) -> Vec<ConvLayer> {
        self.encoder.iter().chain(&self.lift).cloned().collect()
    }

    /// Channels of `encoder.onnx`'s output: C, or C + D with depth bins.
    pub fn encoder_out_channels(&self) -> usize {
        FEATURE_CHANNELS + self.grid.depth_bins()
    }

    /// Feature map size (h, w) the encoder gives.
    pub fn feat_hw(&self) -> (usize, usize) {
        self.encoder
            .iter()
            .fold((self.input_h, self.input_w), |(h, w), l| l.out_hw(h, w))
    }

    /// Output stride of the encoder (input height / feature height).
    pub fn stride(&self) -> usize {
        self.input_h / self.feat_hw().0
    }

    /// BEV map size (rows, cols).
    pub fn bev_hw(&self) -> (usize, usize) {
        (self.grid.height(), self.grid.width())
    }

    pub fn num_classes(&self) -> usize {
        CLASSES.len()
    }

    /// Every layer of the deployed networks and the pretraining decoder.
    pub fn all_layers(&self) -> impl Iterator<Item = &ConvLayer> {
        self.encoder
            .iter()
            .chain(&self.lift)
            .chain(&self.head)
            .chain(&self.mae_decoder)
    }

    /// Parameter count of encoder + head (what ships).
    pub fn deployed_params(&self) -> usize {
        self.encoder
            .iter()
            .chain(&self.lift)
            .chain(&self.head)
            .map(|l| l.cout * l.cin * l.k * l.k + l.cout)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_chain() {
        let a = LetsMapLite::default();
        assert_eq!(a.feat_hw(), (16, 48));
        assert_eq!(a.stride(), STRIDE);
        assert_eq!(a.bev_hw(), (80, 80));
        for w in a.encoder.windows(2).chain(a.head.windows(2)) {
            assert_eq!(w[0].cout, w[1].cin, "{} -> {}", w[0].name, w[1].name);
        }
        assert_eq!(a.head[0].cin, FEATURE_CHANNELS * a.grid.z_levels.len());
        assert!(a.deployed_params() < 200_000);
        let enc = a.deployed_encoder();
        assert_eq!(enc.last().unwrap().cout, a.encoder_out_channels());
        assert_eq!(a.encoder_out_channels(), FEATURE_CHANNELS + 32);
        let p = LetsMapLite::plain();
        assert!(p.lift.is_empty() && p.grid.depth.is_none());
        assert_eq!(p.encoder_out_channels(), FEATURE_CHANNELS);
    }
}
