//! Helpers shared by bevrt's integration, HIL and conformance tests.

pub mod device_report;
pub mod fuzz_targets;
pub mod preprocess_cases;

use std::path::{Path, PathBuf};

/// The shared data folder: `$BEVRT_SHARED`, else `../shared` beside the workspace.
/// `None` (with a printed reason) when absent, so tests can skip.
pub fn shared_dir() -> Option<PathBuf> {
    let p = std::env::var_os("BEVRT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared"));
    if p.join("data").is_dir() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: shared data not found at {} (set BEVRT_SHARED)",
            p.display()
        );
        None
    }
}

/// Whether `python3` imports `modules` (as in `import a, b`). When it cannot, a test that
/// needs them skips with a printed line, unless the environment variable `require` is set
/// (CI installs them and sets it): then it panics, so a missing package fails CI.
pub fn python_imports(modules: &str, require: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os(require).is_none(),
            "python3 cannot import {modules} (.ci/run installs them)"
        );
        eprintln!("SKIP: python3 cannot import {modules}");
    }
    ok
}

/// `python_imports("onnxruntime, numpy", "BEVRT_REQUIRE_ORT")`.
pub fn onnxruntime_available() -> bool {
    python_imports("onnxruntime, numpy", "BEVRT_REQUIRE_ORT")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Deterministic pseudo-random bytes (splitmix64): the kernel checks' inputs, on the
/// emulation and on the GPU alike.
pub fn splitmix_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E3779B97F4A7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for a server the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh, empty scratch directory under the target dir, removed when the test that made it
/// passes (a failing test's files stay for inspection). Some tests write gigabytes (AFV
/// features are 1797 x 134k floats); kept, they filled CI's disk.
pub fn scratch(name: &str) -> Scratch {
    let d = workspace_root()
        .join("target/test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    Scratch(d)
}

/// A scratch directory (see [`scratch`]); derefs to its path.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// The path, never removed: for a helper whose result lives in the directory after the
    /// helper returns (small files only).
    pub fn keep(self) -> PathBuf {
        let this = std::mem::ManuallyDrop::new(self);
        this.0.clone()
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Path of a workspace binary (`bevrt`, `bevrt-tool`) built in the same profile as the
/// running test. Panics with the command to run when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary lives in target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} not built: run `cargo build --release --workspace` before the tests (README)",
        p.display()
    );
    p
}

/// Run a binary, returning (success, stdout, stderr).
pub fn run(bin_path: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin_path)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("spawn");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `bevrt run --backend cpu-plan` of a features bundle for 28x28 grey images on a few
/// synthetic PNGs written under `dir`; panics with the output when it fails.
pub fn run_digit_bundle_on_images(bundle: &Path, dir: &Path) {
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).expect("create image dir");
    for i in 0..3u8 {
        image::GrayImage::from_fn(28, 28, |x, y| {
            image::Luma([((x * 9 + y * 3) as u8).wrapping_mul(i + 1)])
        })
        .save(imgs.join(format!("{i}.png")))
        .expect("write png");
    }
    let out = dir.join("run-out");
    let (ok, so, se) = run(
        &bin("bevrt"),
        &[
            "run",
            "--bundle",
            bundle.to_str().expect("utf-8 path"),
            "--source",
            &format!("images:{}/*.png", imgs.display()),
            "--backend",
            "cpu-plan",
            "--sinks",
            "npy",
            "--out",
            out.to_str().expect("utf-8 path"),
        ],
    );
    assert!(ok, "bevrt run on {}:\n{so}\n{se}", bundle.display());
}

/// The ONNX node conformance case whose name starts with `prefix` (shared data).
pub fn node_case(shared: &Path, prefix: &str) -> PathBuf {
    std::fs::read_dir(shared.join("data/onnx/node/cases"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no conformance case {prefix}*"))
}

/// Make a classify bundle of a shared model with `bevrt-tool bundle init`.
pub fn classifier_bundle(shared: &Path, model_file: &str, out: &Path) -> PathBuf {
    let model = shared.join("data/onnx/models").join(model_file);
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &[
            "bundle",
            "init",
            "--task",
            "classify",
            "--model",
            model.to_str().unwrap(),
            "--input",
            "192x48:BGR",
            "--mean",
            "0.5",
            "--std",
            "0.5",
            "--labels",
            "0,180",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "bundle init failed: {so}{se}");
    out.to_path_buf()
}

/// Record `frames` frames of the simulated world (seed, 2 fps, 0.5 m BEV cells) into `out`.
pub fn sim_record(seed: u64, frames: u64, out: &Path) {
    let (ok, so, se) = run(
        &bin("bevrt-tool"),
        &[
            "sim",
            "record",
            "--seed",
            &seed.to_string(),
            "--frames",
            &frames.to_string(),
            "--fps",
            "2",
            "--cell",
            "0.5",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "sim record: {so}{se}");
}

/// Deterministic pseudo-random values in [lo, hi).
pub fn noise(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// A small AFV discriminator with the real one's shape, as ONNX: Conv 4/2 (1 -> c1) →
/// LeakyReLU (exposed `a1`) → Conv 4/2 (c1 -> c2, exposed `z2`) → LeakyReLU → Flatten →
/// Linear (its weight `w3` returned too: the AFV score needs it). Input 1x1x28x28.
pub fn afv_discriminator_onnx(c1: usize, c2: usize) -> (Vec<u8>, Vec<f32>) {
    use bevrt_models::export::{SeqLayer, SeqOp, sequential_to_onnx};
    let l = |name: &str, op, expose: Option<&str>| SeqLayer {
        name: name.into(),
        op,
        expose: expose.map(String::from),
    };
    let w3 = noise(c2 * 49, 7, -0.1, 0.1);
    let layers = vec![
        l(
            "c1",
            SeqOp::Conv {
                weight: noise(c1 * 16, 3, -0.5, 0.5),
                bias: noise(c1, 4, -0.1, 0.1),
                cin: 1,
                cout: c1,
                k: 4,
                stride: 2,
                pad: 1,
            },
            None,
        ),
        l("a1", SeqOp::LeakyRelu(0.2), Some("a1")),
        l(
            "c2",
            SeqOp::Conv {
                weight: noise(c2 * c1 * 16, 5, -0.2, 0.2),
                bias: noise(c2, 6, -0.1, 0.1),
                cin: c1,
                cout: c2,
                k: 4,
                stride: 2,
                pad: 1,
            },
            Some("z2"),
        ),
        l("a2", SeqOp::LeakyRelu(0.2), None),
        l("flat", SeqOp::Flatten, None),
        l(
            "fc",
            SeqOp::Linear {
                weight: w3.clone(),
                bias: vec![0.05],
                cin: c2 * 49,
                cout: 1,
            },
            None,
        ),
    ];
    let bytes = sequential_to_onnx("d", "x", &[1, 1, 28, 28], "d", &layers, "test")
        .expect("export the test discriminator");
    (bytes, w3)
}

/// Every output of an ONNX file run by tract (the CPU backend's engine) on one f32 input of
/// `shape`.
pub fn tract_outputs(path: &Path, shape: &[usize], x: &[f32]) -> Vec<Vec<f32>> {
    use tract_onnx::prelude::*;
    let model = bevrt_models::load_for_tract(path, &Default::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .with_input_fact(0, f32::fact(shape).into())
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let t = tract_ndarray::ArrayD::from_shape_vec(shape.to_vec(), x.to_vec()).expect("shape");
    model
        .run(tvec!(Tensor::from(t).into()))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .iter()
        .map(|o| {
            o.to_plain_array_view::<f32>()
                .expect("f32 output")
                .iter()
                .copied()
                .collect()
        })
        .collect()
}

/// A small `features` bundle built from scratch (no shared data): Conv 3→32 (3x3, stride 2)
/// → ReLU → Flatten → Linear to 32 on a 32x32 RGB input, weights from `seed` (so bundles
/// of different seeds compute different vectors), about 1 MB of ONNX. With `selftest`, its
/// test vectors are recorded by the CPU reference backend.
pub fn tiny_features_bundle(out: &Path, seed: u64, version: &str, selftest: bool) -> PathBuf {
    use bevrt_models::export::{SeqLayer, SeqOp, sequential_to_onnx};
    use bevrt_models::*;
    let l = |name: &str, op| SeqLayer {
        name: name.into(),
        op,
        expose: None,
    };
    let layers = vec![
        l(
            "c1",
            SeqOp::Conv {
                weight: noise(32 * 3 * 9, seed, -0.3, 0.3),
                bias: noise(32, seed + 1, -0.1, 0.1),
                cin: 3,
                cout: 32,
                k: 3,
                stride: 2,
                pad: 1,
            },
        ),
        l("r1", SeqOp::Relu),
        l("flat", SeqOp::Flatten),
        l(
            "fc",
            SeqOp::Linear {
                weight: noise(32 * 32 * 256, seed + 2, -0.05, 0.05),
                bias: noise(32, seed + 3, -0.1, 0.1),
                cin: 32 * 256,
                cout: 32,
            },
        ),
    ];
    let bytes = sequential_to_onnx("tiny", "x", &[1, 3, 32, 32], "e", &layers, "test")
        .expect("export the tiny features network");
    let staging = out.with_extension("onnx-staging");
    std::fs::create_dir_all(&staging).expect("staging dir");
    let onnx = staging.join("model.onnx");
    std::fs::write(&onnx, bytes).expect("write onnx");
    let manifest = Manifest {
        format: 1,
        name: "tiny".into(),
        version: version.into(),
        task: Task::Features,
        description: format!("test features network, seed {seed}"),
        models: vec![ModelFile {
            role: "model".into(),
            file: "model.onnx".into(),
            sha256: "0".repeat(64),
        }],
        input: InputSpec {
            name: None,
            width: 32,
            height: 32,
            channels: ChannelOrder::Rgb,
            layout: Layout::Nchw,
            dtype: InputDtype::F32,
            mean: vec![0.5; 3],
            std: vec![0.25; 3],
        },
        outputs: vec![OutputSpec {
            name: None,
            kind: OutputKind::Embedding,
            labels: vec![],
        }],
        grid: None,
        classes: vec![],
        calibration: None,
        embedding_norm: EmbeddingNorm::None,
        embedding_stats: None,
        afv: None,
        selftest: None,
        provenance: Default::default(),
        expires: None,
    };
    write_bundle(out, manifest, &[(onnx, "model.onnx".into())]).expect("write the tiny bundle");
    let _ = std::fs::remove_dir_all(&staging);
    if selftest {
        bevrt_runtime::selftest::record(out, bevrt_runtime::selftest::DEFAULT_TOLERANCE)
            .expect("record self-test vectors");
    }
    out.to_path_buf()
}

/// A float graph input or output of fixed `dims`, for ONNX graphs the tests build by hand.
pub fn onnx_float_value(name: &str, dims: &[i64]) -> tract_onnx::pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    use tract_onnx::pb;
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
