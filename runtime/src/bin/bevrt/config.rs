//! `bevrt run --config FILE`: every flag of `run` as a key of a TOML file (the service reads
//! `/etc/bevrt/bevrt.toml`), flags given on the command line overriding the file.
//!
//! ```toml
//! store = "/var/lib/bevrt/store"
//! source = "v4l:/dev/video0?width=1280&height=720&fps=30&format=yuyv"
//! sinks = ["jsonl"]
//! prometheus = "9090"          # a bare port binds 127.0.0.1
//! trial-frames = 30            # `trial_frames` works too
//! ```
//!
//! The file becomes flags placed before the command line's (clap lets a later flag override
//! an earlier one), so both go through the same parser and checks. What the file gets wrong is
//! one line naming the file and the key: an unknown key, a value of the wrong kind, a path key
//! (`store`, `bundle`, `trust`, `calib`) naming nothing.

use std::ffi::OsString;
use std::path::Path;

/// Keys whose value is a path that must exist when the run starts.
const PATH_KEYS: [&str; 4] = ["store", "bundle", "trust", "calib"];

/// `argv` with `run --config FILE` expanded into the file's flags (unchanged otherwise).
pub fn expand(argv: Vec<OsString>, run_flags: &[(String, bool)]) -> anyhow::Result<Vec<OsString>> {
    if argv.get(1).and_then(|a| a.to_str()) != Some("run") {
        return Ok(argv);
    }
    let mut file = None;
    let mut it = argv.iter().skip(2);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--config") => file = it.next().cloned(),
            Some(s) if s.starts_with("--config=") => file = Some(OsString::from(&s[9..])),
            _ => {}
        }
    }
    let Some(file) = file else { return Ok(argv) };
    // `bevrt run <the file's flags> <the command line's flags>`: the later ones win.
    let from_file = flags_from_file(Path::new(&file), run_flags)?;
    let mut out: Vec<OsString> = argv[..2].to_vec();
    out.extend(from_file);
    out.extend(argv[2..].iter().cloned());
    Ok(out)
}

/// The file's keys as `--flag value` pairs; `run_flags` are run's long flags with whether each
/// takes a value.
fn flags_from_file(path: &Path, run_flags: &[(String, bool)]) -> anyhow::Result<Vec<OsString>> {
    let p = path.display();
    anyhow::ensure!(!path.is_dir(), "{p}: is a directory, expected a TOML file");
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{p}: cannot read: {e}"))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{p}: not TOML: {}", e.message().trim()))?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        let Some((_, takes_value)) = run_flags.iter().find(|(f, _)| *f == flag) else {
            let known: Vec<&str> = run_flags.iter().map(|(f, _)| f.as_str()).collect();
            anyhow::bail!(
                "{p}: unknown key '{key}' (the keys are run's flags: {})",
                known.join(", ")
            );
        };
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) if !takes_value => {
                if *b {
                    out.push(OsString::from(format!("--{flag}")));
                }
                continue;
            }
            toml::Value::Array(items) if items.iter().all(|v| v.is_str()) => items
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(","),
            other => anyhow::bail!(
                "{p}: key '{key}': a {} is not a value for --{flag}",
                other.type_str()
            ),
        };
        if !*takes_value {
            anyhow::bail!("{p}: key '{key}': --{flag} is a switch, give true or false");
        }
        if PATH_KEYS.contains(&flag.as_str())
            && !Path::new(&text).exists()
            && !is_base64_key(&flag, &text)
        {
            anyhow::bail!("{p}: key '{key}': {text}: no such file or directory");
        }
        out.push(OsString::from(format!("--{flag}")));
        out.push(OsString::from(text));
    }
    Ok(out)
}

/// `trust` may be a minisign public key's base64 line instead of a file.
fn is_base64_key(flag: &str, text: &str) -> bool {
    flag == "trust" && text.len() == 56 && text.starts_with("RW")
}
