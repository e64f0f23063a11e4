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
}
