//! `bevrt-tool bundle init|verify|sign|selftest`: make a bundle from ONNX files a user
//! exported, check one, sign it, record or run its self-test.

use anyhow::Context;
use bevrt_models::*;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum BundleCmd {
    /// Make a bundle directory from exported ONNX files.
    Init(Box<InitArgs>),
    /// Check a bundle: manifest, file digests, that each ONNX file parses, and with --pubkey
    /// its signature (and that it holds no file the manifest does not name).
    Verify(VerifyArgs),
    /// Sign a bundle's manifest in the minisign format (bundle.toml.minisig).
    Sign(crate::trust_cmd::SignArgs),
    /// Record (--record) or run the self-test vectors a bundle carries.
    Selftest(crate::trust_cmd::SelftestArgs),
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// What the network computes: bev (needs --model encoder=FILE --model head=FILE, --grid,
    /// --classes and --calibration), features or classify (one --model FILE).
    #[arg(long)]
    pub task: Task,
    /// An ONNX file, as FILE or ROLE=FILE (roles: model; encoder and head for bev). Repeatable.
    #[arg(long = "model", required = true)]
    pub models: Vec<String>,
    /// Input spec: WIDTHxHEIGHT:ORDER with ORDER one of RGB, BGR, GRAY, e.g. 192x48:BGR.
    #[arg(long)]
    pub input: String,
    /// Per-channel mean in [0,1] pixel units, in the model's channel order (comma separated;
    /// one value is repeated). value = (pixel/255 - mean) / std.
    #[arg(long, default_value = "0")]
    pub mean: String,
    /// Per-channel std in [0,1] pixel units (comma separated; one value is repeated).
    #[arg(long, default_value = "1")]
    pub std: String,
    /// Input tensor layout.
    #[arg(long, default_value = "NCHW")]
    pub layout: String,
    /// Meaning of output 0: probabilities, logits, embedding or bev_logits (default by task).
    #[arg(long)]
    pub output_kind: Option<String>,
    /// Class labels for classify outputs, comma separated, in index order.
    #[arg(long)]
    pub labels: Option<String>,
    /// bev: grid as XMIN:XMAX,YMIN:YMAX,CELL,Z1:Z2:... in metres (vehicle frame).
    #[arg(long)]
    pub grid: Option<String>,
    /// bev: depth bins of a depth-weighted lift as MIN:MAX:COUNT:log|linear (metres of camera
    /// depth); the encoder then gives C context channels and COUNT depth logits.
    #[arg(long, requires = "grid")]
    pub depth_bins: Option<String>,
    /// bev: classes as NAME=RRGGBB, comma separated, in index order.
    #[arg(long)]
    pub classes: Option<String>,
    /// bev: the calibration file the model was trained with (copied into the bundle).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// features: normalise embeddings (none or l2).
    #[arg(long, default_value = "none")]
    pub embedding_norm: String,
    /// Bundle name (default: the output directory's name).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "1.0.0")]
    pub version: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Output bundle directory (must not exist).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    pub dir: PathBuf,
    /// minisign public key (file, or its base64 line) the bundle must be signed by.
    #[arg(long)]
    pub pubkey: Option<String>,
}

fn floats(s: &str, n: usize, what: &str) -> anyhow::Result<Vec<f32>> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| x.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--{what} '{s}': expected comma-separated numbers"))?;
    match v.len() {
        1 => Ok(vec![v[0]; n]),
        k if k == n => Ok(v),
        k => anyhow::bail!("--{what} '{s}': {k} values for {n} channels"),
    }
}

pub fn run(cmd: &BundleCmd) -> anyhow::Result<()> {
    match cmd {
        BundleCmd::Init(a) => init(a),
        BundleCmd::Verify(a) => verify(a),
        BundleCmd::Sign(a) => crate::trust_cmd::sign(a),
        BundleCmd::Selftest(a) => crate::trust_cmd::selftest(a),
    }
}

fn init(a: &InitArgs) -> anyhow::Result<()> {
    let (w, h, channels, layout) = parse_input(a)?;
    let c = channels.channels();
    let (models, mut files) = model_files(a, (w, h, c), layout)?;
    let kind = output_kind(a)?;
    let grid = grid_spec(a)?;
    let classes = class_specs(a)?;
    let calibration = calibration_file(a, &mut files)?;
    let name = a.name.clone().unwrap_or_else(|| {
        a.out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle".into())
    });
    let manifest = Manifest {
        format: 1,
        name,
        version: a.version.clone(),
        task: a.task,
        description: a.description.clone(),
        models,
        input: InputSpec {
            name: None,
            width: w,
            height: h,
            channels,
            layout,
            dtype: InputDtype::F32,
            mean: floats(&a.mean, c, "mean")?,
            std: floats(&a.std, c, "std")?,
        },
        outputs: vec![OutputSpec {
            name: None,
            kind,
            labels: a
                .labels
                .as_ref()
                .map(|l| l.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
        }],
        grid,
        classes,
        calibration,
        embedding_norm: match a.embedding_norm.as_str() {
            "none" => EmbeddingNorm::None,
            "l2" => EmbeddingNorm::L2,
            o => anyhow::bail!("--embedding-norm '{o}': expected none or l2"),
        },
        embedding_stats: None,
        afv: None,
        selftest: None,
        provenance: Default::default(),
        expires: None,
    };
    let b = write_bundle(&a.out, manifest, &files)?;
    bevrt_runtime::selftest::record_or_warn(&b.dir);
    println!(
        "wrote {} ({} task, {} file(s))",
        b.dir.display(),
        b.manifest.task,
        b.files().count()
    );
    Ok(())
}

/// `--input WIDTHxHEIGHT:ORDER` and `--layout`.
fn parse_input(a: &InitArgs) -> anyhow::Result<(u32, u32, ChannelOrder, Layout)> {
    let (size, order) = a.input.split_once(':').with_context(|| {
        format!(
            "--input '{}': expected WIDTHxHEIGHT:ORDER, e.g. 192x48:BGR",
            a.input
        )
    })?;
    let (w, h) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .with_context(|| format!("--input '{}': bad size '{size}'", a.input))?;
    let channels = match order.to_ascii_uppercase().as_str() {
        "RGB" => ChannelOrder::Rgb,
        "BGR" => ChannelOrder::Bgr,
        "GRAY" => ChannelOrder::Gray,
        o => anyhow::bail!(
            "--input '{}': channel order '{o}' is not RGB, BGR or GRAY",
            a.input
        ),
    };
    let layout = match a.layout.to_ascii_uppercase().as_str() {
        "NCHW" => Layout::Nchw,
        "NHWC" => Layout::Nhwc,
        l => anyhow::bail!("--layout '{l}': expected NCHW or NHWC"),
    };
    Ok((w, h, channels, layout))
}

/// Files copied into a bundle: (source path, name in the bundle).
type FilesToCopy = Vec<(PathBuf, String)>;

/// Each `--model [ROLE=]FILE`: checked against `--input` where its dims are fixed; the
/// manifest's entries and the files to copy.
fn model_files(
    a: &InitArgs,
    (w, h, c): (u32, u32, usize),
    layout: Layout,
) -> anyhow::Result<(Vec<ModelFile>, FilesToCopy)> {
    let mut models = vec![];
    let mut files = vec![];
    for m in &a.models {
        let (role, file) = match m.split_once('=') {
            Some((r, f)) => (r.to_string(), PathBuf::from(f)),
            None => ("model".to_string(), PathBuf::from(m)),
        };
        let summary = bevrt_models::inspect(&file)?;
        let name = format!("{role}.onnx");
        // The ONNX input must agree with --input wherever its dims are fixed.
        if (role == "model" || role == "encoder")
            && let Some(i) = summary.inputs.first()
            && i.dims.len() == 4
        {
            let want = match layout {
                Layout::Nchw => [1, c as i64, h as i64, w as i64],
                Layout::Nhwc => [1, h as i64, w as i64, c as i64],
            };
            for (k, (d, want)) in i.dims.iter().zip(want).enumerate() {
                if let Some(d) = d
                    && *d != want
                    && !(k == 0 && *d == -1)
                {
                    anyhow::bail!(
                        "{}: input '{}' has dims {:?}, --input {} gives {:?}",
                        file.display(),
                        i.name,
                        i.dims,
                        a.input,
                        want
                    );
                }
            }
        }
        if models.iter().any(|m: &ModelFile| m.role == role) {
            anyhow::bail!("--model: role '{role}' given twice");
        }
        models.push(ModelFile {
            role,
            file: name.clone(),
            sha256: "0".repeat(64),
        });
        files.push((file, name));
    }
    Ok((models, files))
}

/// `--output-kind`, or the task's usual output.
fn output_kind(a: &InitArgs) -> anyhow::Result<OutputKind> {
    Ok(match a.output_kind.as_deref() {
        Some("probabilities") => OutputKind::Probabilities,
        Some("logits") => OutputKind::Logits,
        Some("embedding") => OutputKind::Embedding,
        Some("bev_logits") => OutputKind::BevLogits,
        Some(o) => anyhow::bail!(
            "--output-kind '{o}': expected probabilities, logits, embedding or bev_logits"
        ),
        None => match a.task {
            Task::Classify => OutputKind::Probabilities,
            Task::Features => OutputKind::Embedding,
            Task::Bev => OutputKind::BevLogits,
        },
    })
}

/// `--grid XMIN:XMAX,YMIN:YMAX,CELL,Z1:Z2:...` with `--depth-bins`.
fn grid_spec(a: &InitArgs) -> anyhow::Result<Option<GridSpec>> {
    Ok(match &a.grid {
        None => None,
        Some(g) => {
            let parts: Vec<&str> = g.split(',').collect();
            let range = |s: &str| -> Option<(f32, f32)> {
                let (a, b) = s.split_once(':')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            };
            let bad =
                || anyhow::anyhow!("--grid '{g}': expected XMIN:XMAX,YMIN:YMAX,CELL,Z1:Z2:...");
            if parts.len() != 4 {
                return Err(bad());
            }
            let (x_min, x_max) = range(parts[0]).ok_or_else(bad)?;
            let (y_min, y_max) = range(parts[1]).ok_or_else(bad)?;
            let cell = parts[2].parse().map_err(|_| bad())?;
            let z_levels = parts[3]
                .split(':')
                .map(|z| z.parse::<f32>())
                .collect::<Result<_, _>>()
                .map_err(|_| bad())?;
            Some(GridSpec {
                x_min,
                x_max,
                y_min,
                y_max,
                cell,
                z_levels,
                depth: a.depth_bins.as_deref().map(parse_depth_bins).transpose()?,
            })
        }
    })
}

/// `--classes NAME=RRGGBB,...`.
fn class_specs(a: &InitArgs) -> anyhow::Result<Vec<ClassSpec>> {
    Ok(match &a.classes {
        None => vec![],
        Some(cs) => cs
            .split(',')
            .map(|c| {
                let (n, hex) = c
                    .split_once('=')
                    .with_context(|| format!("--classes: '{c}' is not NAME=RRGGBB"))?;
                let v = u32::from_str_radix(hex.trim_start_matches('#'), 16)
                    .ok()
                    .filter(|_| hex.trim_start_matches('#').len() == 6)
                    .with_context(|| format!("--classes: colour '{hex}' is not RRGGBB"))?;
                Ok(ClassSpec {
                    name: n.to_string(),
                    color: [(v >> 16) as u8, (v >> 8) as u8, v as u8],
                })
            })
            .collect::<anyhow::Result<_>>()?,
    })
}

/// `--calibration FILE`, copied into the bundle as `calibration.toml`.
fn calibration_file(a: &InitArgs, files: &mut FilesToCopy) -> anyhow::Result<Option<ModelFile>> {
    Ok(match &a.calibration {
        None => None,
        Some(p) => {
            anyhow::ensure!(
                p.is_file(),
                "{}: {}",
                p.display(),
                if p.is_dir() {
                    "is a directory, expected a calibration file"
                } else {
                    "calibration file not found"
                }
            );
            files.push((p.clone(), "calibration.toml".into()));
            Some(ModelFile {
                role: "calibration".into(),
                file: "calibration.toml".into(),
                sha256: "0".repeat(64),
            })
        }
    })
}

fn verify(a: &VerifyArgs) -> anyhow::Result<()> {
    let b = match &a.pubkey {
        Some(k) => {
            let key = bevrt_models::signature::load_public_key(k)?;
            let s = bevrt_models::signature::load_trusted(&a.dir, &key)?;
            println!("signature ok: key {} ({})", s.key_id, s.trusted_comment);
            s.bundle
        }
        None => Bundle::load(&a.dir)?,
    };
    for m in &b.manifest.models {
        let p = b.dir.join(&m.file);
        let s = bevrt_models::inspect(&p)?;
        println!(
            "{} {}: sha256 ok, opset {}, {} op types, inputs {:?}",
            m.role,
            m.file,
            s.opset,
            s.ops.len(),
            s.inputs
                .iter()
                .map(|i| (&i.name, &i.dims))
                .collect::<Vec<_>>()
        );
    }
    if let Some(c) = &b.manifest.calibration {
        println!("calibration {}: sha256 ok", c.file);
    }
    println!(
        "{}: ok ({} {} task {})",
        b.dir.display(),
        b.manifest.name,
        b.manifest.version,
        b.manifest.task
    );
    Ok(())
}

/// `MIN:MAX:COUNT:log|linear` as [`bevrt_calib::DepthBins`], validated.
fn parse_depth_bins(s: &str) -> anyhow::Result<bevrt_calib::DepthBins> {
    let bad = || anyhow::anyhow!("--depth-bins '{s}': expected MIN:MAX:COUNT:log|linear");
    let p: Vec<&str> = s.split(':').collect();
    let [min, max, count, spacing] = p[..] else {
        return Err(bad());
    };
    let d = bevrt_calib::DepthBins {
        min: min.parse().map_err(|_| bad())?,
        max: max.parse().map_err(|_| bad())?,
        bins: count.parse().map_err(|_| bad())?,
        spacing: match spacing {
            "log" => bevrt_calib::DepthSpacing::Log,
            "linear" => bevrt_calib::DepthSpacing::Linear,
            _ => return Err(bad()),
        },
    };
    d.validate()
        .map_err(|e| anyhow::anyhow!("--depth-bins '{s}': {e}"))?;
    Ok(d)
}
