//! CDR, the wire encoding of ROS 2 messages in MCAP files (`message_encoding: cdr`): a 4-byte
//! encapsulation header (`00 01 00 00`: plain CDR, little-endian), then fields in order, each
//! primitive aligned to its own size counted from the end of that header. Strings are a u32
//! length (with the terminating NUL) then the bytes and the NUL; sequences a u32 count then the
//! elements; fixed arrays just the elements.
//!
//! The reader never panics and never allocates more than the message holds: every length is
//! checked against the bytes left (bags come from anywhere; fuzzed through the MCAP source).

/// Why a message did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CdrError {
    #[error("message ends at byte {at} while reading {what} ({need} more bytes needed)")]
    Truncated {
        at: usize,
        what: &'static str,
        need: usize,
    },
    #[error("encapsulation {0:02x?}: only little-endian plain CDR (00 01) is read")]
    Encapsulation([u8; 2]),
    #[error("{what}: {message}")]
    Invalid { what: &'static str, message: String },
}

pub struct CdrWriter<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> CdrWriter<'a> {
    /// Start a message in `buf` (cleared; its capacity is reused).
    pub fn new(buf: &'a mut Vec<u8>) -> CdrWriter<'a> {
        buf.clear();
        buf.extend_from_slice(&[0, 1, 0, 0]);
        CdrWriter { buf }
    }
    fn align(&mut self, n: usize) {
        let pos = self.buf.len() - 4;
        let pad = (n - pos % n) % n;
        self.buf.resize(self.buf.len() + pad, 0);
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn i8(&mut self, v: i8) {
        self.buf.push(v as u8);
    }
    pub fn u32(&mut self, v: u32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i32(&mut self, v: i32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f32(&mut self, v: f32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.align(8);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn string(&mut self, s: &str) {
        self.u32(s.len() as u32 + 1);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
    /// `uint8[]` / `int8[]`: count, then the bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
    }
    /// `float64[]`: count, then the values.
    pub fn f64_seq(&mut self, v: &[f64]) {
        self.u32(v.len() as u32);
        self.f64_array(v);
    }
    /// `float64[N]`: the values only.
    pub fn f64_array(&mut self, v: &[f64]) {
        for &x in v {
            self.f64(x);
        }
    }
}

pub struct CdrReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> CdrReader<'a> {
    pub fn new(data: &'a [u8]) -> Result<CdrReader<'a>, CdrError> {
        if data.len() < 4 {
            return Err(CdrError::Truncated {
                at: 0,
                what: "encapsulation header",
                need: 4 - data.len(),
            });
        }
        if data[0] != 0 || data[1] != 1 {
            return Err(CdrError::Encapsulation([data[0], data[1]]));
        }
        Ok(CdrReader { data, pos: 4 })
    }
    fn take(&mut self, n: usize, align: usize, what: &'static str) -> Result<&'a [u8], CdrError> {
        let rel = self.pos - 4;
        let start = self.pos + (align - rel % align) % align;
        let end = start.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(CdrError::Truncated {
                at: self.pos,
                what,
                need: start.saturating_add(n).saturating_sub(self.data.len()),
            });
        };
        self.pos = end;
        Ok(&self.data[start..end])
    }
    pub fn u8(&mut self, what: &'static str) -> Result<u8, CdrError> {
        Ok(self.take(1, 1, what)?[0])
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, CdrError> {
        let b = self.take(4, 4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn i32(&mut self, what: &'static str) -> Result<i32, CdrError> {
        Ok(self.u32(what)? as i32)
    }
    pub fn f32(&mut self, what: &'static str) -> Result<f32, CdrError> {
        Ok(f32::from_bits(self.u32(what)?))
    }
    pub fn f64(&mut self, what: &'static str) -> Result<f64, CdrError> {
        let b = self.take(8, 8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_le_bytes(a))
    }
    pub fn string(&mut self, what: &'static str) -> Result<&'a str, CdrError> {
        let n = self.u32(what)? as usize;
        let b = self.take(n, 1, what)?;
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        std::str::from_utf8(b).map_err(|e| CdrError::Invalid {
            what,
            message: format!("not UTF-8: {e}"),
        })
    }
    /// `uint8[]`: borrowed from the message, no copy.
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], CdrError> {
        let n = self.u32(what)? as usize;
        self.take(n, 1, what)
    }
    pub fn f64_seq(&mut self, what: &'static str) -> Result<Vec<f64>, CdrError> {
        let n = self.u32(what)? as usize;
        // Checked against the bytes left before anything is allocated.
        let left = self.data.len().saturating_sub(self.pos);
        if n > left / 8 {
            return Err(CdrError::Truncated {
                at: self.pos,
                what,
                need: n * 8 - left,
            });
        }
        (0..n).map(|_| self.f64(what)).collect()
    }
    pub fn f64_array<const N: usize>(&mut self, what: &'static str) -> Result<[f64; N], CdrError> {
        let mut a = [0.0; N];
        for v in a.iter_mut() {
            *v = self.f64(what)?;
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_counts_from_after_the_header() {
        let mut buf = vec![];
        let mut w = CdrWriter::new(&mut buf);
        w.u8(7);
        w.f64(1.5);
        w.string("ab");
        w.u32(9);
        // header 4, u8 at 4, pad to 8-aligned offset 8 (relative) = absolute 12, f64 to 20,
        // string length at 20..24, "ab\0" to 27, pad 1, u32 at 28..32.
        assert_eq!(buf.len(), 32);
        let mut r = CdrReader::new(&buf).unwrap();
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.f64("b").unwrap(), 1.5);
        assert_eq!(r.string("c").unwrap(), "ab");
        assert_eq!(r.u32("d").unwrap(), 9);
        assert!(r.u32("e").is_err());
    }

    #[test]
    fn huge_declared_lengths_are_refused_before_allocating() {
        let mut buf = vec![];
        let mut w = CdrWriter::new(&mut buf);
        w.u32(u32::MAX);
        let mut r = CdrReader::new(&buf).unwrap();
        assert!(matches!(r.f64_seq("d"), Err(CdrError::Truncated { .. })));
        let mut r = CdrReader::new(&buf).unwrap();
        assert!(r.bytes("data").is_err());
        assert!(CdrReader::new(&[1, 0, 0, 0]).is_err());
    }
}
