//! `poses.csv`: a recording's ego-motion, the optional part of the recording format that
//! self-supervised geometry needs (re-synthesising a frame from its neighbours takes the
//! camera's motion between them). `bevrt-tool sim record` writes it; in a car, wheel
//! odometry or GNSS/INS gives it.
//!
//! ```text
//! seq,timestamp_ns,x,y,yaw[,speed,s]
//! 0,0,12.5,-3.0,0.02,8.3,0.0
//! ```
//! One row per frame of `frames.csv` (same `seq`, same `timestamp_ns`), in frame order. The
//! pose is the vehicle frame's (x forward, y left, on the ground) in a fixed world frame:
//! `x`, `y` in metres, `yaw` in radians counter-clockwise from world +x. Only differences
//! between poses are used, so the world frame's origin is arbitrary. Extra columns are
//! ignored.

use std::path::Path;

use super::SourceError;
use super::replay::{IndexEntry, Recording};

/// The vehicle's pose at one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EgoPose {
    pub seq: u64,
    pub timestamp_ns: u64,
    pub x: f64,
    pub y: f64,
    pub yaw: f64,
}

impl EgoPose {
    /// Where `other`'s vehicle frame is, seen from this one: `(forward, left, yaw)`, metres
    /// and radians (yaw wrapped to (−π, π]).
    pub fn motion_to(&self, other: &EgoPose) -> (f64, f64, f64) {
        let (dx, dy) = (other.x - self.x, other.y - self.y);
        let (s, c) = self.yaw.sin_cos();
        let mut dyaw = other.yaw - self.yaw;
        while dyaw > std::f64::consts::PI {
            dyaw -= 2.0 * std::f64::consts::PI;
        }
        while dyaw <= -std::f64::consts::PI {
            dyaw += 2.0 * std::f64::consts::PI;
        }
        (c * dx + s * dy, -s * dx + c * dy, dyaw)
    }
}

fn err(path: &Path, message: String) -> SourceError {
    SourceError::Open {
        path: path.to_path_buf(),
        message,
    }
}

/// Parse the text of a `poses.csv` (named `path` in errors): header, then rows with finite
/// numbers and strictly increasing `seq`.
pub fn parse(text: &str, path: &Path) -> Result<Vec<EgoPose>, SourceError> {
    let mut out: Vec<EgoPose> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if n == 0 {
            if !line.starts_with("seq,timestamp_ns,x,y,yaw") {
                return Err(err(
                    path,
                    "line 1: expected header 'seq,timestamp_ns,x,y,yaw[,...]'".into(),
                ));
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: &str| err(path, format!("line {}: {m}", n + 1));
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.len() < 5 {
            return Err(bad("expected seq,timestamp_ns,x,y,yaw"));
        }
        let seq: u64 = cols[0].parse().map_err(|_| bad("bad seq"))?;
        let timestamp_ns = cols[1].parse().map_err(|_| bad("bad timestamp_ns"))?;
        let num = |i: usize, name: &str| -> Result<f64, SourceError> {
            cols[i]
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(&format!("{name} is not a finite number")))
        };
        let pose = EgoPose {
            seq,
            timestamp_ns,
            x: num(2, "x")?,
            y: num(3, "y")?,
            yaw: num(4, "yaw")?,
        };
        if let Some(prev) = out.last()
            && prev.seq >= seq
        {
            return Err(bad(&format!(
                "seq {seq} after {}: rows must be sorted by seq, each once",
                prev.seq
            )));
        }
        out.push(pose);
    }
    Ok(out)
}

/// One pose per frame of `frames`, in frame order, from the text of `poses.csv`: every frame
/// needs a row with its `seq` and the same timestamp.
pub fn match_frames(
    poses: &[EgoPose],
    frames: &[IndexEntry],
    path: &Path,
) -> Result<Vec<EgoPose>, SourceError> {
    let mut out = Vec::with_capacity(frames.len());
    for f in frames {
        let Ok(k) = poses.binary_search_by_key(&f.seq, |p| p.seq) else {
            return Err(err(
                path,
                format!("frame seq {} of frames.csv has no pose", f.seq),
            ));
        };
        if poses[k].timestamp_ns != f.timestamp_ns {
            return Err(err(
                path,
                format!(
                    "seq {}: timestamp {} ns here, {} ns in frames.csv",
                    f.seq, poses[k].timestamp_ns, f.timestamp_ns
                ),
            ));
        }
        out.push(poses[k]);
    }
    Ok(out)
}

/// The recording's ego-motion, one pose per frame. An error names the file and says what is
/// wrong: missing (with where it comes from), malformed, unsorted, or not matching the frames.
pub fn load(rec: &Recording) -> Result<Vec<EgoPose>, SourceError> {
    let path = rec.dir.join("poses.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        err(
            &path,
            format!(
                "cannot read ({e}): this needs the recording's ego-motion (`bevrt-tool sim \
                 record` writes poses.csv; from a car, export wheel odometry or GNSS poses \
                 in the format of docs/src/reference/recording-format.md)"
            ),
        )
    })?;
    match_frames(&parse(&text, &path)?, &rec.frames, &path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn frame(seq: u64, ts: u64) -> IndexEntry {
        IndexEntry {
            seq,
            timestamp_ns: ts,
            file: PathBuf::from("f.png"),
            gt: None,
        }
    }

    #[test]
    fn parses_and_matches_and_names_each_problem() {
        let p = Path::new("rec/poses.csv");
        let text = "seq,timestamp_ns,x,y,yaw,speed,s\n0,0,1.0,2.0,0.0,5,0\n1,100,2.0,2.0,0.1,5,1\n";
        let poses = parse(text, p).unwrap();
        assert_eq!(poses.len(), 2);
        let m = match_frames(&poses, &[frame(1, 100)], p).unwrap();
        assert_eq!(m[0].x, 2.0);
        let msg = |r: Result<Vec<EgoPose>, SourceError>| r.unwrap_err().to_string();
        assert!(msg(parse("a,b\n", p)).contains("line 1"));
        assert!(
            msg(parse("seq,timestamp_ns,x,y,yaw\n1,0,0,0,0\n0,1,0,0,0\n", p)).contains("sorted")
        );
        assert!(msg(parse("seq,timestamp_ns,x,y,yaw\n1,0,nan,0,0\n", p)).contains("x is not"));
        assert!(msg(parse("seq,timestamp_ns,x,y,yaw\n1,0,0\n", p)).contains("line 2"));
        assert!(msg(match_frames(&poses, &[frame(7, 0)], p)).contains("seq 7"));
        assert!(msg(match_frames(&poses, &[frame(1, 5)], p)).contains("timestamp"));
    }

    #[test]
    fn motion_is_in_the_first_vehicle_frame() {
        let a = EgoPose {
            seq: 0,
            timestamp_ns: 0,
            x: 0.0,
            y: 0.0,
            yaw: std::f64::consts::FRAC_PI_2,
        };
        // Facing world +y; the next pose 2 m further along +y and turned slightly left.
        let b = EgoPose {
            y: 2.0,
            yaw: a.yaw + 0.1,
            ..a
        };
        let (fwd, left, dyaw) = a.motion_to(&b);
        assert!((fwd - 2.0).abs() < 1e-12 && left.abs() < 1e-12 && (dyaw - 0.1).abs() < 1e-12);
        let c = EgoPose { yaw: -3.1, ..a };
        let d = EgoPose { yaw: 3.1, ..a };
        assert!((c.motion_to(&d).2 + (2.0 * std::f64::consts::PI - 6.2)).abs() < 1e-9);
    }
}
