//! Per-frame results: raw output tensors plus what each task derives from them. Every buffer
//! is sized once per bundle and reused, so postprocessing never allocates.

use bevrt_models::{ClassSpec, EmbeddingNorm, Task};

/// One output tensor of the network, copied out of the backend.
#[derive(Debug, Clone, Default)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The camera frame a result came from, for sinks that show it (MCAP, live view); empty
/// unless the pipeline was asked to keep it. Its buffer is reserved at start, so copying a
/// frame in never allocates.
#[derive(Debug, Clone, Default)]
pub struct CameraImage {
    pub data: Vec<u8>,
    pub format: Option<crate::frame::PixelFormat>,
    pub width: u32,
    pub height: u32,
}

impl CameraImage {
    pub fn reserve(&mut self, bytes: usize) {
        self.data.reserve(bytes.saturating_sub(self.data.len()));
    }
    pub fn copy_from(&mut self, f: &crate::frame::Frame) {
        self.data.clear();
        self.data.extend_from_slice(&f.data);
        self.format = Some(f.format);
        self.width = f.width;
        self.height = f.height;
    }
    pub fn is_empty(&self) -> bool {
        self.format.is_none() || self.data.is_empty()
    }
}

/// What the sinks receive for one frame.
#[derive(Debug, Clone)]
pub struct FrameResult {
    pub task: Task,
    pub seq: u64,
    pub timestamp_ns: u64,
    /// Raw outputs in the model's order.
    pub outputs: Vec<OutputTensor>,
    /// classify: class probabilities (softmax applied when the model gives logits);
    /// features: the (optionally normalised) embedding.
    pub vector: Vec<f32>,
    /// classify: index and probability of the best class.
    pub top: Option<(usize, f32)>,
    /// bev: class index per cell, row-major, row 0 the farthest row.
    pub class_map: Vec<u8>,
    pub map_width: usize,
    pub map_height: usize,
    /// bev: the class map in the bundle's colours, RGB8.
    pub color_map: Vec<u8>,
    /// Per-stage latencies of this frame in nanoseconds (queue, preprocess, infer, post).
    pub stage_ns: [u64; 4],
    pub camera: CameraImage,
}

impl FrameResult {
    pub fn new(task: Task, outputs: Vec<OutputTensor>) -> FrameResult {
        FrameResult {
            task,
            seq: 0,
            timestamp_ns: 0,
            outputs,
            vector: Vec::new(),
            top: None,
            class_map: Vec::new(),
            map_width: 0,
            map_height: 0,
            color_map: Vec::new(),
            stage_ns: [0; 4],
            camera: CameraImage::default(),
        }
    }

    /// Copy another result into this one without reallocating when shapes match.
    pub fn copy_from(&mut self, o: &FrameResult) {
        self.task = o.task;
        self.seq = o.seq;
        self.timestamp_ns = o.timestamp_ns;
        if self.outputs.len() != o.outputs.len() {
            self.outputs
                .resize_with(o.outputs.len(), OutputTensor::default);
        }
        for (d, s) in self.outputs.iter_mut().zip(&o.outputs) {
            if d.name != s.name {
                d.name.clone_from(&s.name);
            }
            d.shape.clone_from(&s.shape);
            d.data.clone_from(&s.data);
        }
        self.vector.clone_from(&o.vector);
        self.top = o.top;
        self.class_map.clone_from(&o.class_map);
        self.map_width = o.map_width;
        self.map_height = o.map_height;
        self.color_map.clone_from(&o.color_map);
        self.stage_ns = o.stage_ns;
        self.camera.data.clone_from(&o.camera.data);
        self.camera.format = o.camera.format;
        self.camera.width = o.camera.width;
        self.camera.height = o.camera.height;
    }
}

/// In-place numerically stable softmax.
pub fn softmax_in_place(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    if sum > 0.0 {
        for x in v.iter_mut() {
            *x /= sum;
        }
    }
}

/// Index and value of the maximum (first on ties).
pub fn argmax(v: &[f32]) -> Option<(usize, f32)> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in v.iter().enumerate() {
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best
}

/// Normalise an embedding as the bundle asks.
pub fn normalise_embedding(v: &mut [f32], norm: EmbeddingNorm) {
    if norm == EmbeddingNorm::L2 {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            for x in v.iter_mut() {
                *x /= n;
            }
        }
    }
}

/// Class-map value of a BEV cell the camera cannot see (drawn black, never scored as a class).
pub const UNSEEN: u8 = 255;

/// Per-cell argmax over class planes `(classes, h, w)` into `class_map`; CPU reference of the
/// argmax kernel. Ties take the lower class index.
pub fn bev_argmax(logits: &[f32], classes: usize, h: usize, w: usize, class_map: &mut [u8]) {
    let plane = h * w;
    assert_eq!(logits.len(), classes * plane);
    assert_eq!(class_map.len(), plane);
    for (i, out) in class_map.iter_mut().enumerate() {
        let mut best = 0usize;
        let mut bv = logits[i];
        for c in 1..classes {
            let v = logits[c * plane + i];
            if v > bv {
                bv = v;
                best = c;
            }
        }
        *out = best as u8;
    }
}

/// Class map to RGB with the bundle's colours; CPU reference of the colourise kernel.
/// Indices outside the class list (255 = unknown) are drawn black.
pub fn colourise(class_map: &[u8], classes: &[ClassSpec], rgb: &mut [u8]) {
    assert_eq!(rgb.len(), class_map.len() * 3);
    for (px, &c) in rgb.chunks_exact_mut(3).zip(class_map) {
        let col = classes
            .get(c as usize)
            .map(|s| s.color)
            .unwrap_or([0, 0, 0]);
        px.copy_from_slice(&col);
    }
}

/// Inverse of [`colourise`] for a class-map PNG written by the sinks: each pixel's class by
/// exact colour, 255 where no class has that colour.
pub fn class_map_from_rgb(rgb: &[u8], classes: &[ClassSpec]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|px| {
            classes
                .iter()
                .position(|s| s.color == [px[0], px[1], px[2]])
                .map_or(255, |i| i as u8)
        })
        .collect()
}

/// IoU of one class over a set of maps.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassIou {
    pub class: String,
    /// None when the class appears neither in the ground truth nor in the predictions.
    pub iou: Option<f64>,
    pub gt_cells: u64,
}

/// Confusion counts over cells whose ground truth is a class (255 = unknown skipped): row =
/// true class, column = predicted class, column `k` = none predicted (255: the camera cannot
/// see the cell), which counts as a miss of the true class, never as a hit of another.
/// Integer counts, so confusions of parts of a data set add up to the whole's exactly.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Confusion {
    pub classes: usize,
    /// `classes` rows of `classes + 1` counts.
    pub counts: Vec<u64>,
}

impl Confusion {
    pub fn new(classes: usize) -> Confusion {
        Confusion {
            classes,
            counts: vec![0; classes * (classes + 1)],
        }
    }

    /// Count one map against its ground truth.
    pub fn add(&mut self, gt: &[u8], pred: &[u8]) {
        let k = self.classes;
        for (&g, &p) in gt.iter().zip(pred.iter()) {
            if (g as usize) < k {
                self.counts[g as usize * (k + 1) + (p as usize).min(k)] += 1;
            }
        }
    }

    /// Add another part's counts; refused when the class counts differ.
    pub fn merge(&mut self, o: &Confusion) -> Result<(), String> {
        if o.classes != self.classes || o.counts.len() != self.counts.len() {
            return Err(format!(
                "confusion of {} classes cannot merge with one of {}",
                o.classes, self.classes
            ));
        }
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        Ok(())
    }

    /// (cells scored, mIoU over the classes present in the ground truth, cell accuracy, per
    /// class), percentages.
    pub fn scores(&self, names: &[String]) -> (u64, f64, f64, Vec<ClassIou>) {
        let k = self.classes;
        let conf = &self.counts;
        let cells: u64 = conf.iter().sum();
        let mut per = vec![];
        let mut sum = 0.0;
        let mut n = 0;
        let mut correct = 0;
        for c in 0..k {
            let tp = conf[c * (k + 1) + c];
            correct += tp;
            let gt_c: u64 = (0..=k).map(|j| conf[c * (k + 1) + j]).sum();
            let pred_c: u64 = (0..k).map(|i| conf[i * (k + 1) + c]).sum();
            let union = gt_c + pred_c - tp;
            let iou = (union > 0).then(|| 100.0 * tp as f64 / union as f64);
            if gt_c > 0 {
                sum += iou.unwrap_or(0.0);
                n += 1;
            }
            per.push(ClassIou {
                class: names
                    .get(c)
                    .cloned()
                    .unwrap_or_else(|| format!("class {c}")),
                iou,
                gt_cells: gt_c,
            });
        }
        let miou = if n > 0 { sum / n as f64 } else { 0.0 };
        let acc = 100.0 * correct as f64 / cells.max(1) as f64;
        (cells, miou, acc, per)
    }
}

/// [`Confusion`] scoring of (ground truth, prediction) pairs.
pub fn score_maps(pairs: &[(&[u8], &[u8])], names: &[String]) -> (u64, f64, f64, Vec<ClassIou>) {
    let mut c = Confusion::new(names.len());
    for (gt, pred) in pairs {
        c.add(gt, pred);
    }
    c.scores(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_and_argmax() {
        let mut v = [1.0f32, 3.0, 2.0];
        softmax_in_place(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(argmax(&v).unwrap().0, 1);
        assert_eq!(argmax(&[2.0, 2.0]).unwrap().0, 0);
        assert!(argmax(&[]).is_none());
    }

    #[test]
    fn bev_argmax_and_colours() {
        // 2 classes, 1x2 map
        let logits = [0.0f32, 5.0, 1.0, 4.0];
        let mut map = [0u8; 2];
        bev_argmax(&logits, 2, 1, 2, &mut map);
        assert_eq!(map, [1, 0]);
        let classes = vec![
            ClassSpec {
                name: "a".into(),
                color: [1, 2, 3],
            },
            ClassSpec {
                name: "b".into(),
                color: [4, 5, 6],
            },
        ];
        let mut rgb = [0u8; 6];
        colourise(&map, &classes, &mut rgb);
        assert_eq!(rgb, [4, 5, 6, 1, 2, 3]);
    }

    #[test]
    fn iou_counts_and_skips_unknown() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let gt = [0u8, 0, 1, 1, 255, 255];
        let pr = [0u8, 1, 1, 1, 2, 0];
        let (cells, miou, acc, per) = score_maps(&[(&gt, &pr)], &names);
        // an unseen cell (255) predicted for a known one is a miss, not a class-c hit
        let (_, _, _, per2) = score_maps(&[(&[2u8, 2][..], &[255u8, 2][..])], &names);
        assert!((per2[2].iou.unwrap() - 50.0).abs() < 1e-9);
        assert!(per2[1].iou.is_none());
        assert_eq!(cells, 4);
        assert!((per[0].iou.unwrap() - 50.0).abs() < 1e-9); // tp 1, union 2
        assert!((per[1].iou.unwrap() - 200.0 / 3.0).abs() < 1e-9); // tp 2, union 3
        assert!(per[2].iou.is_none());
        assert!((miou - (50.0 + 200.0 / 3.0) / 2.0).abs() < 1e-9);
        assert!((acc - 75.0).abs() < 1e-9);
    }
}
