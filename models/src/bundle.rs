//! The model bundle: a directory with `bundle.toml` and the files it names.
//!
//! The manifest is the single source of truth for how a model is fed and read: input spec,
//! outputs, task, (for BEV) grid, classes and calibration, and provenance. Every file it names
//! carries a sha256, checked at load: a bundle whose bytes differ from what was exported is
//! refused with the file's name, never run.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Version of the manifest layout written by this code.
pub const MANIFEST_FORMAT: u32 = 1;
/// Name of the manifest inside a bundle directory.
pub const MANIFEST_FILE: &str = "bundle.toml";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed manifest: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{path}: sha256 mismatch: manifest says {expected}, file has {actual}")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl BundleError {
    fn manifest(path: &Path, message: impl Into<String>) -> Self {
        BundleError::Manifest {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// What the bundle's network computes, which decides the runtime path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Front-view encoder + view transform (calibration) + BEV head: a semantic map.
    Bev,
    /// One embedding vector per frame.
    Features,
    /// One class-probability (or logit) vector per frame.
    Classify,
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Task::Bev => "bev",
            Task::Features => "features",
            Task::Classify => "classify",
        })
    }
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bev" => Ok(Task::Bev),
            "features" => Ok(Task::Features),
            "classify" => Ok(Task::Classify),
            _ => Err(format!(
                "unknown task '{s}' (expected bev, features or classify)"
            )),
        }
    }
}

/// Channel order the network expects in its input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
    Gray,
}

impl ChannelOrder {
    pub fn channels(self) -> usize {
        match self {
            ChannelOrder::Gray => 1,
            _ => 3,
        }
    }
}

/// Memory layout of the input tensor (batch is always 1 per frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// Element type of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputDtype {
    F32,
}

/// How a camera frame becomes the model input:
/// `value[c] = (pixel[c] / 255 - mean[c]) / std[c]` after bilinear resize to `width x height`,
/// channels in `channels` order. `mean` and `std` are in [0, 1] pixel units, in the model's
/// channel order, one value per channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Name of the ONNX graph input this feeds (the first input when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub width: u32,
    pub height: u32,
    pub channels: ChannelOrder,
    #[serde(default = "default_layout")]
    pub layout: Layout,
    #[serde(default = "default_dtype")]
    pub dtype: InputDtype,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

fn default_layout() -> Layout {
    Layout::Nchw
}
fn default_dtype() -> InputDtype {
    InputDtype::F32
}

impl InputSpec {
    /// Number of f32 elements of one input tensor.
    pub fn numel(&self) -> usize {
        self.width as usize * self.height as usize * self.channels.channels()
    }
    /// Shape of the batch-1 input tensor.
    pub fn shape(&self) -> [usize; 4] {
        let (c, h, w) = (
            self.channels.channels(),
            self.height as usize,
            self.width as usize,
        );
        match self.layout {
            Layout::Nchw => [1, c, h, w],
            Layout::Nhwc => [1, h, w, c],
        }
    }
}

/// What an output tensor means; decides postprocessing and sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// Class scores that already sum to one.
    Probabilities,
    /// Unnormalised class scores (softmax applied by bevrt when reporting).
    Logits,
    /// An embedding vector.
    Embedding,
    /// Per-cell class logits of a BEV map, shape (1, classes, rows, cols).
    BevLogits,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// ONNX output name (the model's output order when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub kind: OutputKind,
    /// Label of each class index, for `probabilities`/`logits`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

/// One file of the bundle with its digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// `model` for single-network bundles; `encoder` and `head` for `bev`.
    pub role: String,
    /// Path relative to the bundle directory.
    pub file: String,
    pub sha256: String,
}

/// A semantic class of a BEV (or classify) bundle with its display colour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSpec {
    pub name: String,
    pub color: [u8; 3],
}

/// The BEV grid a `bev` bundle predicts on (vehicle frame: x forward, y left, metres);
/// the same type the sampling table is built from.
pub type GridSpec = bevrt_calib::BevGrid;

/// Optional post-network normalisation of `features` embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingNorm {
    #[default]
    None,
    L2,
    /// Per dimension `(x − mean) / std`, statistics in `embedding_stats`.
    Standardize,
}

/// `features` (and probe `classify`) bundles whose vector is an Adversarial Fisher Vector of
/// a discriminator: the tail geometry the runtime's Fisher op needs, and its statistics.
/// The model's outputs are `[D(x), a1, z2]` (see `bevrt_runtime::afv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfvSpec {
    /// conv2 kernel, stride and padding.
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    /// LeakyReLU slope after conv2.
    pub slope: f32,
    /// npy, float32 `[C2·H2·W2]`: the final linear layer's (effective) weights.
    pub head_weight: ModelFile,
    /// npy, float32 `[2, dim]`: mean and diagonal Fisher information of the score over
    /// generator samples (`bevrt-tool afv fit`); absent = raw scores `U_x`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fisher: Option<ModelFile>,
    /// Added to the Fisher diagonal before the square root.
    pub eps: f32,
    /// Signed square root of every component after normalisation (Fisher-vector practice).
    pub power_norm: bool,
    /// Unit L2 norm at the end.
    pub l2_norm: bool,
    /// Spatial regions per side: conv2's score is taken separately over each cell of an R×R
    /// grid on its output (the spatial pyramid of Fisher-vector practice); 1 = the plain
    /// gradient. Absent in bundles from before regions existed: 1.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub regions: usize,
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

/// Test vectors the bundle carries, recorded when it was made (`bundle init`, `quantize`,
/// `finetune`, or `bundle selftest --record`): a frame and the outputs the reference CPU
/// path computed for it. Before a device runs a new bundle it feeds the frame through its own
/// backend and compares (`bevrt_runtime::selftest`), so a bundle that computes something else
/// on this machine (wrong runtime version, broken backend, mismatched files) never goes live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfTest {
    /// PNG, RGB8, at the input size: fed as a camera frame would be.
    pub frame: ModelFile,
    /// npy, float32: the expected raw output tensors, in the model's output order.
    pub outputs: Vec<ModelFile>,
    /// Largest allowed |actual − expected| per output, as a fraction of
    /// max(1, max |expected|): covers FP16 and INT8 backends, not a different network.
    pub tolerance: f32,
    /// bev: smallest share of map cells whose class must agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_class_agreement: Option<f32>,
    /// The backend and bevrt version that computed the outputs.
    pub recorded_with: String,
}

/// The parsed `bundle.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub version: String,
    pub task: Task,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub models: Vec<ModelFile>,
    pub input: InputSpec,
    pub outputs: Vec<OutputSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<GridSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ClassSpec>,
    /// Calibration file (inside the bundle) the model was trained with; required for `bev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<ModelFile>,
    #[serde(default, skip_serializing_if = "is_default_norm")]
    pub embedding_norm: EmbeddingNorm,
    /// npy, float32 `[2, D]`: per-dimension mean and std for `embedding_norm = "standardize"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_stats: Option<ModelFile>,
    /// Adversarial Fisher Vector output (see [`AfvSpec`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub afv: Option<AfvSpec>,
    /// Test vectors for the on-device self-test (see [`SelfTest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selftest: Option<SelfTest>,
    /// Free-form provenance: how the model was trained or quantized, with what result.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub provenance: toml::Table,
    /// After this instant (`2027-06-30` or `2027-06-30T12:00:00Z`, UTC) the store refuses to
    /// deploy the bundle, and a run that still has it says so loudly and on `/metrics` (it
    /// keeps running it: a car must not lose its only model to a date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<toml::value::Datetime>,
}

fn is_default_norm(n: &EmbeddingNorm) -> bool {
    *n == EmbeddingNorm::None
}

impl Manifest {
    /// `expires` in Unix seconds.
    pub fn expires_unix(&self) -> Option<i64> {
        self.expires.as_ref().and_then(crate::time::unix_seconds)
    }

    /// Parse and check a manifest's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, BundleError> {
        let m: Manifest = toml::from_str(text).map_err(|e| {
            BundleError::manifest(path, e.to_string().trim_end().replace('\n', " | "))
        })?;
        m.validate(path)?;
        Ok(m)
    }

    /// Consistency checks serde cannot express.
    pub fn validate(&self, path: &Path) -> Result<(), BundleError> {
        let bad = |m: String| Err(BundleError::manifest(path, m));
        if self.format != MANIFEST_FORMAT {
            return bad(format!(
                "field 'format': {} is not supported (this bevrt reads format {MANIFEST_FORMAT})",
                self.format
            ));
        }
        if self.models.is_empty() {
            return bad("field 'models': at least one model file is required".into());
        }
        let c = self.input.channels.channels();
        if self.input.mean.len() != c || self.input.std.len() != c {
            return bad(format!(
                "field 'input.mean'/'input.std': need {c} values for {:?}, got {} and {}",
                self.input.channels,
                self.input.mean.len(),
                self.input.std.len()
            ));
        }
        if self.input.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return bad("field 'input.std': every value must be finite and > 0".into());
        }
        if self.input.width == 0 || self.input.height == 0 {
            return bad("field 'input.width'/'input.height': must be > 0".into());
        }
        if self.outputs.is_empty() {
            return bad("field 'outputs': at least one output is required".into());
        }
        if let Some(t) = &self.selftest
            && !(t.tolerance.is_finite() && t.tolerance >= 0.0)
        {
            return bad("field 'selftest.tolerance': must be finite and >= 0".into());
        }
        if (self.embedding_norm == EmbeddingNorm::Standardize) != self.embedding_stats.is_some() {
            return bad(
                "embedding_norm = \"standardize\" and [embedding_stats] go together".into(),
            );
        }
        for m in self.files() {
            check_relative(path, &m.file, "models.file")?;
            if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!(
                    "field 'models.sha256' of '{}': not a 64-digit hex sha256",
                    m.file
                ));
            }
        }
        match self.task {
            Task::Bev => {
                if self.model("encoder").is_none() || self.model("head").is_none() {
                    return bad("task 'bev' needs models with roles 'encoder' and 'head'".into());
                }
                let Some(g) = &self.grid else {
                    return bad("task 'bev' needs a [grid] table".into());
                };
                if !(g.cell > 0.0
                    && g.x_max > g.x_min
                    && g.y_max > g.y_min
                    && !g.z_levels.is_empty())
                {
                    return bad("field 'grid': need x_max > x_min, y_max > y_min, cell > 0 and at least one z level".into());
                }
                if self.classes.is_empty() {
                    return bad("task 'bev' needs [[classes]]".into());
                }
                if self.calibration.is_none() {
                    return bad("task 'bev' needs a [calibration] file".into());
                }
            }
            Task::Features | Task::Classify => {
                if self.model("model").is_none() {
                    return bad(format!(
                        "task '{}' needs a model with role 'model'",
                        self.task
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every hashed file the manifest names.
    pub fn files(&self) -> impl Iterator<Item = &ModelFile> {
        let afv = self
            .afv
            .iter()
            .flat_map(|a| std::iter::once(&a.head_weight).chain(a.fisher.iter()));
        let selftest = self
            .selftest
            .iter()
            .flat_map(|t| std::iter::once(&t.frame).chain(t.outputs.iter()));
        self.models
            .iter()
            .chain(self.calibration.iter())
            .chain(self.embedding_stats.iter())
            .chain(afv)
            .chain(selftest)
    }

    fn files_mut(&mut self) -> Vec<&mut ModelFile> {
        let mut v: Vec<&mut ModelFile> = self.models.iter_mut().collect();
        v.extend(self.calibration.iter_mut());
        v.extend(self.embedding_stats.iter_mut());
        if let Some(a) = self.afv.as_mut() {
            v.push(&mut a.head_weight);
            v.extend(a.fisher.iter_mut());
        }
        if let Some(t) = self.selftest.as_mut() {
            v.push(&mut t.frame);
            v.extend(t.outputs.iter_mut());
        }
        v
    }

    /// The model file with this role.
    pub fn model(&self, role: &str) -> Option<&ModelFile> {
        self.models.iter().find(|m| m.role == role)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("manifest serializes")
    }
}

fn check_relative(path: &Path, file: &str, field: &str) -> Result<(), BundleError> {
    let p = Path::new(file);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(BundleError::manifest(
            path,
            format!("field '{field}': '{file}' must be a path inside the bundle"),
        ));
    }
    Ok(())
}

/// How provenance names a data folder, a bundle or a run directory: by its own name (`train`,
/// `test`, `unlabelled` in the letsmap recipe), never by its machine-local path, so a shipped bundle
/// says what it saw on any machine (recording seeds and counts go beside the name).
pub fn path_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// sha256 of a file as lowercase hex, streamed.
pub fn sha256_file(path: &Path) -> Result<String, BundleError> {
    let io = |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A bundle on disk whose manifest parsed and whose files match their digests.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Bundle {
    /// `name version`, as logs and the store's journal name a bundle.
    pub fn label(&self) -> String {
        format!("{} {}", self.manifest.name, self.manifest.version)
    }

    /// Load `dir/bundle.toml` and verify every file's sha256.
    pub fn load(dir: impl AsRef<Path>) -> Result<Bundle, BundleError> {
        let b = Self::load_unverified(dir)?;
        b.verify()?;
        Ok(b)
    }

    /// Parse the manifest without hashing the files (for `info`).
    pub fn load_unverified(dir: impl AsRef<Path>) -> Result<Bundle, BundleError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(BundleError::Invalid {
                path: dir,
                message: "not a bundle directory (expected a directory holding bundle.toml)".into(),
            });
        }
        let mpath = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&mpath).map_err(|source| BundleError::Io {
            path: mpath.clone(),
            source,
        })?;
        let manifest = Manifest::parse(&text, &mpath)?;
        Ok(Bundle { dir, manifest })
    }

    /// Check every file named by the manifest against its sha256.
    pub fn verify(&self) -> Result<(), BundleError> {
        for f in self.files() {
            let path = self.dir.join(&f.file);
            let actual = sha256_file(&path)?;
            if !actual.eq_ignore_ascii_case(&f.sha256) {
                return Err(BundleError::HashMismatch {
                    path,
                    expected: f.sha256.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Every hashed file: models, calibration and AFV data.
    pub fn files(&self) -> impl Iterator<Item = &ModelFile> {
        self.manifest.files()
    }

    /// Absolute path of the model with this role.
    pub fn model_path(&self, role: &str) -> Option<PathBuf> {
        self.manifest.model(role).map(|m| self.dir.join(&m.file))
    }
}

/// Write `manifest` and copy `files` (source path, name in bundle) into a new bundle at `out`,
/// filling in the digests. Written to a temporary sibling directory and renamed, so a failure
/// leaves nothing half-written. Files the manifest does not name are not copied (a derived
/// bundle that drops, say, a stale self-test passes its parent's file list unchanged), so a
/// bundle never holds a file its signature would not cover.
pub fn write_bundle(
    out: &Path,
    mut manifest: Manifest,
    files: &[(PathBuf, String)],
) -> Result<Bundle, BundleError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Io { path, source }
    };
    if out.exists() {
        return Err(BundleError::Invalid {
            path: out.to_path_buf(),
            message: "already exists; refusing to overwrite".into(),
        });
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("bundle"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = (|| {
        let named: std::collections::BTreeSet<String> =
            manifest.files().map(|f| f.file.clone()).collect();
        for (src, name) in files.iter().filter(|(_, n)| named.contains(n)) {
            let dst = tmp.join(name);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::copy(src, &dst).map_err(io(src))?;
            let digest = sha256_file(&dst)?;
            for m in manifest.files_mut() {
                if &m.file == name {
                    m.sha256 = digest.clone();
                }
            }
        }
        let mpath = tmp.join(MANIFEST_FILE);
        manifest.validate(&out.join(MANIFEST_FILE))?;
        std::fs::write(&mpath, manifest.to_toml()).map_err(io(&mpath))?;
        std::fs::rename(&tmp, out).map_err(io(out))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Bundle::load(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        r#"
format = 1
name = "t"
version = "1"
task = "classify"
[[models]]
role = "model"
file = "m.onnx"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[input]
width = 4
height = 2
channels = "BGR"
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
[[outputs]]
kind = "probabilities"
labels = ["a", "b"]
"#
        .to_string()
    }

    #[test]
    fn parses_and_roundtrips() {
        let m = Manifest::parse(&sample(), Path::new("x/bundle.toml")).unwrap();
        assert_eq!(m.task, Task::Classify);
        assert_eq!(m.input.shape(), [1, 3, 2, 4]);
        let again = Manifest::parse(&m.to_toml(), Path::new("y")).unwrap();
        assert_eq!(m, again);
    }

    #[test]
    fn malformed_names_file_and_field() {
        let text = sample().replace("std = [0.5, 0.5, 0.5]", "std = [0.5, 0.5]");
        let e = Manifest::parse(&text, Path::new("b/bundle.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("b/bundle.toml") && e.contains("input.std"),
            "{e}"
        );
        let text = sample().replace("task = \"classify\"", "task = \"segment\"");
        let e = Manifest::parse(&text, Path::new("b/bundle.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("b/bundle.toml") && e.contains("task"), "{e}");
        let text = sample().replace("file = \"m.onnx\"", "file = \"../m.onnx\"");
        assert!(Manifest::parse(&text, Path::new("b")).is_err());
    }

    #[test]
    fn bev_requires_grid_classes_calibration() {
        let text = sample().replace("task = \"classify\"", "task = \"bev\"");
        let e = Manifest::parse(&text, Path::new("b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("encoder"), "{e}");
    }
}
