//! Minimal NumPy `.npy` (version 1.0) reading and writing for little-endian f32 and u8.

use std::io::{Read, Write};
use std::path::Path;

/// Write the `.npy` header for a C-order array of `descr` (`<f4`, `|u1`) and `shape`.
/// Formats into a stack buffer: no allocation.
pub fn write_header(w: &mut impl Write, descr: &str, shape: &[usize]) -> std::io::Result<()> {
    let mut dict = [0u8; 128];
    let mut cur = std::io::Cursor::new(&mut dict[..]);
    write!(
        cur,
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ("
    )?;
    for (i, d) in shape.iter().enumerate() {
        write!(cur, "{d}")?;
        if i + 1 < shape.len() || shape.len() == 1 {
            write!(cur, ",")?;
        }
        if i + 1 < shape.len() {
            write!(cur, " ")?;
        }
    }
    write!(cur, "), }}")?;
    let n = cur.position() as usize;
    // magic(6) + version(2) + len(2) + dict + padding + '\n' is a multiple of 64
    let total = (10 + n + 1).div_ceil(64) * 64;
    let hlen = (total - 10) as u16;
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&hlen.to_le_bytes())?;
    w.write_all(&dict[..n])?;
    for _ in 0..(total - 10 - n - 1) {
        w.write_all(b" ")?;
    }
    w.write_all(b"\n")
}

/// Write a f32 array.
pub fn write_f32(w: &mut impl Write, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
    write_header(w, "<f4", shape)?;
    for x in data {
        w.write_all(&x.to_le_bytes())?;
    }
    Ok(())
}

/// Read an `.npy` file holding little-endian f32 (`<f4`); returns shape and data.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), String> {
    let mut bytes = vec![];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    parse_f32(&bytes).map_err(|m| format!("{}: {m}", path.display()))
}

/// Parse `.npy` bytes holding little-endian f32 (`<f4`); returns shape and data. Any byte
/// string gives `Ok` or an error message, never a panic (fuzzed: `tests/fuzz`).
pub fn parse_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    let err = |m: &str| m.to_string();
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("not an .npy file"));
    }
    let (hlen, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        2 | 3 => return Err(err("truncated header")),
        v => return Err(format!("npy version {v} not supported")),
    };
    let header = std::str::from_utf8(
        start
            .checked_add(hlen)
            .and_then(|end| bytes.get(start..end))
            .ok_or_else(|| err("truncated header"))?,
    )
    .map_err(|_| err("header is not text"))?;
    if !header.contains("'descr': '<f4'") {
        return Err(format!("need little-endian float32, header is {header}"));
    }
    if header.contains("'fortran_order': True") {
        return Err(err("Fortran order not supported"));
    }
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| err("no shape in header"))?;
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad shape '{shape_txt}'")))
        .collect::<Result<_, _>>()?;
    let body = &bytes[start + hlen..];
    let need = shape
        .iter()
        .try_fold(4usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if body.len() != need {
        return Err(format!(
            "data has {} bytes, shape {shape:?} needs {need}",
            body.len()
        ));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let dir = std::env::temp_dir().join(format!("bevrt-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let mut f = std::fs::File::create(&p).unwrap();
        write_f32(&mut f, &[2, 3], &data).unwrap();
        drop(f);
        let (s, d) = read_f32(&p).unwrap();
        assert_eq!(s, vec![2, 3]);
        assert_eq!(d, data);
        let mut f = std::fs::File::create(&p).unwrap();
        write_f32(&mut f, &[3], &data[..3]).unwrap();
        drop(f);
        assert_eq!(read_f32(&p).unwrap().0, vec![3]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
