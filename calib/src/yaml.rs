//! Camera YAML files: ROS `camera_info` (read and write) and OpenCV FileStorage (read).
//!
//! A small hand-written parser covers the YAML subset these files use: `key: value` mappings
//! nested by indentation, flow sequences `[a, b, ...]` (possibly spanning lines), quoted
//! strings, comments, the `%YAML:1.0` / `---` header and `!!opencv-matrix` tags.
//!
//! Distortion model rules: ROS `plumb_bob` / `rational_polynomial` (first 5 used, the rest must
//! be zero) -> pinhole; ROS `equidistant` or `fisheye` -> fisheye (4 coefficients). An OpenCV
//! FileStorage file without `distortion_model` is pinhole (4, 5 coefficients; 4 means k3 = 0).

use std::path::Path;

use crate::camera::{CameraModel, Distortion};
use crate::error::CalibError;

#[derive(Debug, Clone)]
enum YVal {
    Scalar(String),
    Seq(Vec<String>),
    Map(Vec<(String, YVal)>),
}

struct Line {
    indent: usize,
    text: String,
    no: usize,
}

fn strip_comment(s: &str) -> &str {
    let mut in_q: Option<char> = None;
    for (i, c) in s.char_indices() {
        match in_q {
            Some(q) if c == q => in_q = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => in_q = Some(c),
            None if c == '#' && (i == 0 || s[..i].ends_with(' ')) => return &s[..i],
            None => {}
        }
    }
    s
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2
        && ((s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\'')))
    {
        s[1..s.len() - 1].to_string()
    } else {
        s.to_string()
    }
}

fn parse_yaml(path: &Path, text: &str) -> Result<Vec<(String, YVal)>, CalibError> {
    let mut lines = Vec::new();
    for (no, raw) in text.lines().enumerate() {
        let t = strip_comment(raw).trim_end();
        let trimmed = t.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('%') || trimmed == "---" || trimmed == "..." {
            continue;
        }
        lines.push(Line {
            indent: t.len() - trimmed.len(),
            text: trimmed.to_string(),
            no: no + 1,
        });
    }
    let mut pos = 0;
    let base = lines.first().map(|l| l.indent).unwrap_or(0);
    let m = parse_map(path, &lines, &mut pos, base, "")?;
    if pos < lines.len() {
        return Err(CalibError::parse(
            path,
            format!("line {}: unexpected indentation", lines[pos].no),
        ));
    }
    Ok(m)
}

fn parse_map(
    path: &Path,
    lines: &[Line],
    pos: &mut usize,
    indent: usize,
    prefix: &str,
) -> Result<Vec<(String, YVal)>, CalibError> {
    let mut out = Vec::new();
    while *pos < lines.len() {
        let l = &lines[*pos];
        if l.indent < indent {
            break;
        }
        if l.indent > indent {
            return Err(CalibError::parse(
                path,
                format!("line {}: unexpected indentation", l.no),
            ));
        }
        let Some(colon) = find_key_colon(&l.text) else {
            return Err(CalibError::parse(
                path,
                format!("line {}: expected `key: value`, got `{}`", l.no, l.text),
            ));
        };
        let key = unquote(&l.text[..colon]);
        let mut val = l.text[colon + 1..].trim().to_string();
        if val.starts_with("!!") {
            val = val
                .split_once(' ')
                .map(|x| x.1.trim().to_string())
                .unwrap_or_default();
        }
        *pos += 1;
        if val.is_empty() {
            if *pos < lines.len() && lines[*pos].indent > indent {
                let ni = lines[*pos].indent;
                let m = parse_map(path, lines, pos, ni, &format!("{prefix}{key}."))?;
                out.push((key, YVal::Map(m)));
            } else {
                out.push((key, YVal::Scalar(String::new())));
            }
        } else if val.starts_with('[') {
            let mut buf = val.clone();
            let start_no = l.no;
            while !buf.contains(']') {
                if *pos >= lines.len() {
                    return Err(CalibError::field(
                        path,
                        &format!("{prefix}{key}"),
                        format!("unterminated `[` started on line {start_no}"),
                    ));
                }
                buf.push(' ');
                buf.push_str(&lines[*pos].text);
                *pos += 1;
            }
            let inner = &buf[1..buf.rfind(']').unwrap_or(buf.len())];
            let items: Vec<String> = inner
                .split(',')
                .map(unquote)
                .filter(|s| !s.is_empty())
                .collect();
            out.push((key, YVal::Seq(items)));
        } else {
            out.push((key, YVal::Scalar(unquote(&val))));
        }
    }
    Ok(out)
}

fn find_key_colon(s: &str) -> Option<usize> {
    let mut in_q: Option<char> = None;
    let b = s.as_bytes();
    for (i, c) in s.char_indices() {
        match in_q {
            Some(q) if c == q => in_q = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => in_q = Some(c),
            None if c == ':' && (i + 1 == b.len() || b[i + 1] == b' ') => return Some(i),
            None => {}
        }
    }
    None
}

fn get<'a>(m: &'a [(String, YVal)], key: &str) -> Option<&'a YVal> {
    m.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn scalar_f64(path: &Path, field: &str, v: &YVal) -> Result<f64, CalibError> {
    match v {
        YVal::Scalar(s) => s
            .parse::<f64>()
            .map_err(|_| CalibError::field(path, field, format!("expected a number, got `{s}`"))),
        _ => Err(CalibError::field(path, field, "expected a number")),
    }
}

fn req<'a>(path: &Path, m: &'a [(String, YVal)], key: &str) -> Result<&'a YVal, CalibError> {
    get(m, key).ok_or_else(|| CalibError::field(path, key, "missing"))
}

fn read_u32(path: &Path, m: &[(String, YVal)], key: &str) -> Result<u32, CalibError> {
    let v = scalar_f64(path, key, req(path, m, key)?)?;
    if v < 1.0 || v.fract() != 0.0 || v > 1e6 {
        return Err(CalibError::field(
            path,
            key,
            format!("expected a positive integer, got {v}"),
        ));
    }
    Ok(v as u32)
}

/// Reads a matrix field `{rows, cols, data: [...]}` (ROS and OpenCV both use this shape).
fn read_matrix(
    path: &Path,
    m: &[(String, YVal)],
    key: &str,
) -> Result<(usize, usize, Vec<f64>), CalibError> {
    let v = req(path, m, key)?;
    let (rows, cols, data) = match v {
        YVal::Map(mm) => {
            let f = |k: &str| -> Result<usize, CalibError> {
                let sub = format!("{key}.{k}");
                let v = get(mm, k).ok_or_else(|| CalibError::field(path, &sub, "missing"))?;
                let x = scalar_f64(path, &sub, v)?;
                if x < 0.0 || x.fract() != 0.0 {
                    return Err(CalibError::field(
                        path,
                        &sub,
                        format!("expected an integer, got {x}"),
                    ));
                }
                Ok(x as usize)
            };
            let rows = f("rows")?;
            let cols = f("cols")?;
            let sub = format!("{key}.data");
            let data = match get(mm, "data") {
                Some(YVal::Seq(items)) => items
                    .iter()
                    .map(|s| {
                        s.parse::<f64>().map_err(|_| {
                            CalibError::field(path, &sub, format!("`{s}` is not a number"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                Some(_) => return Err(CalibError::field(path, &sub, "expected a list `[...]`")),
                None => return Err(CalibError::field(path, &sub, "missing")),
            };
            (rows, cols, data)
        }
        YVal::Seq(items) => {
            let data = items
                .iter()
                .map(|s| {
                    s.parse::<f64>()
                        .map_err(|_| CalibError::field(path, key, format!("`{s}` is not a number")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            (1, data.len(), data)
        }
        YVal::Scalar(_) => {
            return Err(CalibError::field(
                path,
                key,
                "expected a matrix {rows, cols, data}",
            ));
        }
    };
    if rows * cols != data.len() {
        return Err(CalibError::field(
            path,
            &format!("{key}.data"),
            format!(
                "has {} values but rows x cols = {rows} x {cols}",
                data.len()
            ),
        ));
    }
    if data.iter().any(|x| !x.is_finite()) {
        return Err(CalibError::field(
            path,
            &format!("{key}.data"),
            "contains a non-finite value",
        ));
    }
    Ok((rows, cols, data))
}

/// Which format a camera YAML file was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YamlFormat {
    RosCameraInfo,
    OpenCvFileStorage,
}

/// Loads a camera from a ROS camera_info YAML or an OpenCV FileStorage YAML (auto-detected:
/// OpenCV files start with `%YAML:1.0` or tag matrices `!!opencv-matrix`; ROS files have
/// `distortion_model`).
pub fn load_camera_yaml(path: impl AsRef<Path>) -> Result<CameraModel, CalibError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| CalibError::io(path, e))?;
    parse_camera_yaml(path, &text).map(|x| x.0)
}

/// Parses camera YAML text; `path` is only used in error messages.
pub fn parse_camera_yaml(path: &Path, text: &str) -> Result<(CameraModel, YamlFormat), CalibError> {
    let m = parse_yaml(path, text)?;
    let is_opencv = text.trim_start().starts_with("%YAML") || text.contains("!!opencv-matrix");
    let fmt = if is_opencv {
        YamlFormat::OpenCvFileStorage
    } else {
        YamlFormat::RosCameraInfo
    };
    let width = read_u32(path, &m, "image_width")?;
    let height = read_u32(path, &m, "image_height")?;
    let (r, c, k) = read_matrix(path, &m, "camera_matrix")?;
    if r * c != 9 {
        return Err(CalibError::field(
            path,
            "camera_matrix",
            format!("must be 3x3, got {r}x{c}"),
        ));
    }
    let model = match get(&m, "distortion_model") {
        Some(YVal::Scalar(s)) => s.to_lowercase(),
        Some(_) => {
            return Err(CalibError::field(
                path,
                "distortion_model",
                "expected a string",
            ));
        }
        None if fmt == YamlFormat::OpenCvFileStorage => "plumb_bob".into(),
        None => return Err(CalibError::field(path, "distortion_model", "missing")),
    };
    let (_, _, d) = read_matrix(path, &m, "distortion_coefficients")?;
    let cam = camera_from_ros(path, width, height, &k, &model, &d)?;
    Ok((cam, fmt))
}

/// A camera from ROS `CameraInfo` fields (YAML file or message): `k` the row-major 3x3
/// camera matrix, `model` the lower-case distortion model, `d` its coefficients. Errors name
/// `path` and the field.
pub fn camera_from_ros(
    path: &Path,
    width: u32,
    height: u32,
    k: &[f64],
    model: &str,
    d: &[f64],
) -> Result<CameraModel, CalibError> {
    if k.len() != 9 {
        return Err(CalibError::field(
            path,
            "camera_matrix",
            format!("must hold 9 values, got {}", k.len()),
        ));
    }
    if k[1] != 0.0 || k[3] != 0.0 || k[6] != 0.0 || k[7] != 0.0 || (k[8] - 1.0).abs() > 1e-12 {
        return Err(CalibError::field(
            path,
            "camera_matrix",
            "expected [fx 0 cx; 0 fy cy; 0 0 1] (no skew)",
        ));
    }
    let dist = match model {
        "plumb_bob" | "rational_polynomial" | "radtan" | "pinhole" => {
            if d.len() < 4 && !d.is_empty() {
                return Err(CalibError::field(
                    path,
                    "distortion_coefficients",
                    format!("plumb_bob needs 4 or 5 values, got {}", d.len()),
                ));
            }
            if d.len() > 5 && d[5..].iter().any(|&x| x != 0.0) {
                return Err(CalibError::field(
                    path,
                    "distortion_coefficients",
                    "only k1 k2 p1 p2 k3 are supported; k4.. must be zero",
                ));
            }
            let mut c = [0.0; 5];
            for (i, v) in d.iter().take(5).enumerate() {
                c[i] = *v;
            }
            Distortion::PlumbBob(c)
        }
        "equidistant" | "fisheye" | "kannala_brandt" => {
            if d.len() != 4 {
                return Err(CalibError::field(
                    path,
                    "distortion_coefficients",
                    format!("equidistant needs 4 values, got {}", d.len()),
                ));
            }
            Distortion::Fisheye([d[0], d[1], d[2], d[3]])
        }
        other => {
            return Err(CalibError::field(
                path,
                "distortion_model",
                format!("unsupported `{other}` (plumb_bob | equidistant)"),
            ));
        }
    };
    let cam =
        CameraModel::new(width, height, k[0], k[4], k[2], k[5], dist).map_err(|e| match e {
            CalibError::Invalid { field, msg } => {
                CalibError::field(path, &format!("camera_matrix ({field})"), msg)
            }
            e => e,
        })?;
    Ok(cam)
}

fn fmt_list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.10e}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Formats a camera as ROS camera_info YAML (rectification = identity, projection = [K | 0]).
pub fn ros_yaml_string(cam: &CameraModel, camera_name: &str) -> String {
    let k = cam.k();
    let kf: Vec<f64> = k.iter().flatten().copied().collect();
    let (model, d) = match cam.distortion() {
        Distortion::PlumbBob(c) => ("plumb_bob", c.to_vec()),
        Distortion::Fisheye(c) => ("equidistant", c.to_vec()),
    };
    let p = [
        k[0][0], 0.0, k[0][2], 0.0, 0.0, k[1][1], k[1][2], 0.0, 0.0, 0.0, 1.0, 0.0,
    ];
    format!(
        "image_width: {}\nimage_height: {}\ncamera_name: {}\ncamera_matrix:\n  rows: 3\n  cols: 3\n  data: [{}]\n\
distortion_model: {}\ndistortion_coefficients:\n  rows: 1\n  cols: {}\n  data: [{}]\n\
rectification_matrix:\n  rows: 3\n  cols: 3\n  data: [1, 0, 0, 0, 1, 0, 0, 0, 1]\n\
projection_matrix:\n  rows: 3\n  cols: 4\n  data: [{}]\n",
        cam.width(),
        cam.height(),
        if camera_name.is_empty() {
            "camera"
        } else {
            camera_name
        },
        fmt_list(&kf),
        model,
        d.len(),
        fmt_list(&d),
        fmt_list(&p)
    )
}

/// Writes a ROS camera_info YAML file.
pub fn save_ros_yaml(
    cam: &CameraModel,
    camera_name: &str,
    path: impl AsRef<Path>,
) -> Result<(), CalibError> {
    let path = path.as_ref();
    std::fs::write(path, ros_yaml_string(cam, camera_name)).map_err(|e| CalibError::io(path, e))
}
