//! Sinks: where results go, on their own thread. A slow sink loses sink work (counted), never
//! frames: the inference thread hands results over through a bounded queue and moves on.

pub mod mcap;
mod registry;

use crate::npy;
use crate::postprocess::FrameResult;
use bevrt_models::{ClassSpec, Task};
use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub use registry::{SinkContext, SinkKind, build, build_with, default_sinks};

pub trait Sink: Send {
    fn name(&self) -> &'static str;
    fn write(&mut self, r: &FrameResult) -> anyhow::Result<()>;
    fn finish(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

fn create(path: &Path) -> anyhow::Result<BufWriter<std::fs::File>> {
    let f = std::fs::File::create(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", path.display()))?;
    Ok(BufWriter::new(f))
}

/// A path buffer reused per frame: `dir/NNNNNN<suffix>`.
struct FramePath {
    buf: String,
    base: usize,
}

impl FramePath {
    fn new(dir: &Path) -> FramePath {
        let mut buf = String::with_capacity(dir.as_os_str().len() + 64);
        buf.push_str(&dir.to_string_lossy());
        buf.push('/');
        let base = buf.len();
        FramePath { buf, base }
    }
    fn set(&mut self, seq: u64, suffix: &str) -> &Path {
        self.buf.truncate(self.base);
        let _ = write!(self.buf, "{seq:06}{suffix}");
        Path::new(&self.buf)
    }
}

/// Coloured BEV class maps as `maps/NNNNNN.png` (bundle colours).
pub struct ClassMapPngSink {
    path: FramePath,
}

impl ClassMapPngSink {
    pub fn new(out: &Path) -> anyhow::Result<Self> {
        let dir = out.join("maps");
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
        Ok(ClassMapPngSink {
            path: FramePath::new(&dir),
        })
    }
}

impl Sink for ClassMapPngSink {
    fn name(&self) -> &'static str {
        "png"
    }
    fn write(&mut self, r: &FrameResult) -> anyhow::Result<()> {
        let p = self.path.set(r.seq, ".png");
        image::save_buffer(
            p,
            &r.color_map,
            r.map_width as u32,
            r.map_height as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    }
}

/// One JSON line per frame in `results.jsonl`: classify gives the top class and all
/// probabilities, features the embedding, bev a class histogram of the map.
pub struct JsonlSink {
    w: BufWriter<std::fs::File>,
    json: ResultJson,
}

impl JsonlSink {
    pub fn new(out: &Path, labels: Vec<String>, classes: Vec<ClassSpec>) -> anyhow::Result<Self> {
        Ok(JsonlSink {
            w: create(&out.join("results.jsonl"))?,
            json: ResultJson::new(labels, classes),
        })
    }
}

/// A result as one JSON object (the `results.jsonl` line, the MCAP `/bevrt/result` message),
/// written without allocating.
pub struct ResultJson {
    labels: Vec<String>,
    classes: Vec<ClassSpec>,
    counts: Vec<u64>,
}

impl ResultJson {
    pub fn new(labels: Vec<String>, classes: Vec<ClassSpec>) -> ResultJson {
        let n = classes.len();
        ResultJson {
            labels,
            classes,
            counts: vec![0; n],
        }
    }

    /// The object, then a newline.
    pub fn write(&mut self, w: &mut impl Write, r: &FrameResult) -> std::io::Result<()> {
        write!(w, "{{\"seq\":{},\"timestamp_ns\":{}", r.seq, r.timestamp_ns)?;
        match r.task {
            Task::Classify => {
                if let Some((i, p)) = r.top {
                    write!(w, ",\"top\":{i},\"score\":{p}")?;
                    if let Some(l) = self.labels.get(i) {
                        w.write_all(b",\"label\":")?;
                        write_json_str(w, l)?;
                    }
                }
                w.write_all(b",\"probs\":")?;
                write_floats(w, &r.vector)?;
            }
            Task::Features => {
                w.write_all(b",\"embedding\":")?;
                write_floats(w, &r.vector)?;
            }
            Task::Bev => self.write_cell_counts(w, &r.class_map)?,
        }
        let [q, p, i, o] = r.stage_ns;
        writeln!(
            w,
            ",\"latency_ms\":{{\"queue\":{:.3},\"preprocess\":{:.3},\"inference\":{:.3},\"postprocess\":{:.3}}}}}",
            q as f64 / 1e6,
            p as f64 / 1e6,
            i as f64 / 1e6,
            o as f64 / 1e6
        )
    }

    fn write_cell_counts(&mut self, w: &mut impl Write, class_map: &[u8]) -> std::io::Result<()> {
        self.counts.iter_mut().for_each(|c| *c = 0);
        for &c in class_map {
            if let Some(n) = self.counts.get_mut(c as usize) {
                *n += 1;
            }
        }
        w.write_all(b",\"cells\":{")?;
        for (i, (c, n)) in self.classes.iter().zip(&self.counts).enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            write_json_str(w, &c.name)?;
            write!(w, ":{n}")?;
        }
        w.write_all(b"}")
    }
}

fn write_floats(w: &mut impl Write, v: &[f32]) -> std::io::Result<()> {
    w.write_all(b"[")?;
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        if x.is_finite() {
            write!(w, "{x}")?;
        } else {
            w.write_all(b"null")?;
        }
    }
    w.write_all(b"]")
}

impl Sink for JsonlSink {
    fn name(&self) -> &'static str {
        "jsonl"
    }
    fn write(&mut self, r: &FrameResult) -> anyhow::Result<()> {
        self.json.write(&mut self.w, r)?;
        Ok(())
    }
    fn finish(&mut self) -> anyhow::Result<()> {
        self.w.flush()?;
        Ok(())
    }
}

fn write_json_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(b"\"")?;
    for ch in s.chars() {
        match ch {
            '"' => w.write_all(b"\\\"")?,
            '\\' => w.write_all(b"\\\\")?,
            c if (c as u32) < 0x20 => write!(w, "\\u{:04x}", c as u32)?,
            c => write!(w, "{c}")?,
        }
    }
    w.write_all(b"\"")
}

/// Raw output tensors as `tensors/NNNNNN_K.npy` (K = output index), shape as the model's.
pub struct NpySink {
    path: FramePath,
    suffixes: Vec<String>,
    buf: Vec<u8>,
}

impl NpySink {
    pub fn new(out: &Path, outputs: usize) -> anyhow::Result<Self> {
        let dir = out.join("tensors");
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
        Ok(NpySink {
            path: FramePath::new(&dir),
            suffixes: (0..outputs).map(|k| format!("_{k}.npy")).collect(),
            buf: Vec::new(),
        })
    }
}

impl Sink for NpySink {
    fn name(&self) -> &'static str {
        "npy"
    }
    fn write(&mut self, r: &FrameResult) -> anyhow::Result<()> {
        for (o, suffix) in r.outputs.iter().zip(&self.suffixes) {
            // Serialise into a reused buffer, then one write: no per-frame allocation.
            self.buf.clear();
            npy::write_f32(&mut self.buf, &o.shape, &o.data)?;
            let p = self.path.set(r.seq, suffix);
            std::fs::write(p, &self.buf).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        }
        Ok(())
    }
}

/// `metrics.jsonl`: one line per report interval and one at the end.
pub fn metrics_writer(out: &Path) -> anyhow::Result<BufWriter<std::fs::File>> {
    create(&out.join("metrics.jsonl"))
}

pub fn out_path(out: &Path, name: &str) -> PathBuf {
    out.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postprocess::{OutputTensor, colourise};

    #[test]
    fn bev_png_and_jsonl_and_npy() {
        let out = std::env::temp_dir().join(format!("bevrt-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let classes = vec![
            ClassSpec {
                name: "road".into(),
                color: [128, 64, 128],
            },
            ClassSpec {
                name: "car".into(),
                color: [0, 0, 142],
            },
        ];
        let mut r = FrameResult::new(
            Task::Bev,
            vec![OutputTensor {
                name: "logits".into(),
                shape: vec![1, 2, 2, 3],
                data: vec![0.5; 12],
            }],
        );
        r.seq = 7;
        r.map_width = 3;
        r.map_height = 2;
        r.class_map = vec![0, 1, 0, 1, 1, 255];
        r.color_map = vec![0; 18];
        colourise(&r.class_map, &classes, &mut r.color_map);
        let mut png = ClassMapPngSink::new(&out).unwrap();
        png.write(&r).unwrap();
        let img = image::open(out.join("maps/000007.png")).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (3, 2));
        assert_eq!(img.get_pixel(1, 0).0, [0, 0, 142]);
        assert_eq!(img.get_pixel(2, 1).0, [0, 0, 0], "unknown cells are black");
        let mut j = JsonlSink::new(&out, vec![], classes).unwrap();
        j.write(&r).unwrap();
        j.finish().unwrap();
        let line = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["cells"]["road"], 2);
        assert_eq!(v["cells"]["car"], 3);
        let mut n = NpySink::new(&out, 1).unwrap();
        n.write(&r).unwrap();
        let (shape, data) = crate::npy::read_f32(&out.join("tensors/000007_0.npy")).unwrap();
        assert_eq!(shape, vec![1, 2, 2, 3]);
        assert_eq!(data, vec![0.5; 12]);
        let _ = std::fs::remove_dir_all(&out);
    }
}
