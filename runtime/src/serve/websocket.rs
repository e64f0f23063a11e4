//! The WebSocket frames a viewer sends (RFC 6455 §5.2), checked as they pass through the
//! gate in front of the Foxglove server. A viewer only sends small control messages
//! (subscribe, unsubscribe, pings), so anything large, unmasked or malformed ends the
//! connection before it reaches the server.
//!
//! [`ClientFrames`] is fed the byte stream in whatever pieces the socket delivers; it keeps at
//! most one frame header (14 bytes) and never buffers payload.

/// Largest frame payload a viewer may send, bytes.
pub const MAX_FRAME_PAYLOAD: u64 = 64 * 1024;
/// Largest message (all fragments together) a viewer may send, bytes.
pub const MAX_MESSAGE: u64 = 256 * 1024;

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: u8,
    pub payload_len: u64,
    /// Header bytes, the masking key included.
    pub header_len: usize,
}

/// Why a viewer's byte stream is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// RSV1-3 set: no extension was negotiated.
    ReservedBits,
    UnknownOpcode(u8),
    /// Client frames must be masked (§5.1).
    Unmasked,
    /// A control frame longer than 125 bytes or fragmented (§5.5).
    BadControlFrame,
    /// The 64-bit length with its top bit set, or a length in a longer form than needed.
    BadLength,
    FrameTooLarge(u64),
    MessageTooLarge(u64),
    /// A continuation without a message, or a new message inside a fragmented one.
    BadFragmentation,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::ReservedBits => write!(f, "reserved bits set (no extension negotiated)"),
            FrameError::UnknownOpcode(o) => write!(f, "unknown opcode {o:#x}"),
            FrameError::Unmasked => write!(f, "unmasked client frame"),
            FrameError::BadControlFrame => write!(f, "control frame fragmented or over 125 bytes"),
            FrameError::BadLength => write!(f, "invalid payload length encoding"),
            FrameError::FrameTooLarge(n) => {
                write!(f, "frame payload {n} bytes (limit {MAX_FRAME_PAYLOAD})")
            }
            FrameError::MessageTooLarge(n) => {
                write!(f, "message {n} bytes (limit {MAX_MESSAGE})")
            }
            FrameError::BadFragmentation => write!(f, "invalid fragmentation"),
        }
    }
}

/// Parse a client frame header at the start of `buf`: `Ok(None)` until it is complete.
pub fn parse_frame_header(buf: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
    if !matches!(opcode, 0x0..=0x2 | 0x8..=0xa) {
        return Err(FrameError::UnknownOpcode(opcode));
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let short = u64::from(b1 & 0x7f);
    let ext = match short {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let header_len = 2 + ext + 4;
    if opcode >= 0x8 && (short > 125 || !fin) {
        return Err(FrameError::BadControlFrame);
    }
    if buf.len() < 2 + ext {
        return Ok(None);
    }
    let payload_len = match ext {
        0 => short,
        2 => {
            let n = u64::from(u16::from_be_bytes([buf[2], buf[3]]));
            if n < 126 {
                return Err(FrameError::BadLength);
            }
            n
        }
        _ => {
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if n >> 63 != 0 || n <= 0xffff {
                return Err(FrameError::BadLength);
            }
            n
        }
    };
    if payload_len > MAX_FRAME_PAYLOAD {
        return Err(FrameError::FrameTooLarge(payload_len));
    }
    if buf.len() < header_len {
        return Ok(None);
    }
    Ok(Some(FrameHeader {
        fin,
        opcode,
        payload_len,
        header_len,
    }))
}

/// Checks a viewer's byte stream frame by frame as it passes.
#[derive(Debug, Default)]
pub struct ClientFrames {
    header: heapless::Vec<u8, 14>,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
    /// Bytes of the fragmented message so far, when one is open.
    message: Option<u64>,
    /// Frames seen, for the log.
    pub frames: u64,
    /// The client sent a close frame.
    pub closed: bool,
}

impl ClientFrames {
    /// Check the next `data` of the stream; an error ends the connection.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), FrameError> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len() as u64);
                self.remaining -= n;
                data = &data[n as usize..];
                continue;
            }
            let room = self.header.capacity() - self.header.len();
            let take = room.min(data.len());
            let before = self.header.len();
            self.header
                .extend_from_slice(&data[..take])
                .expect("within capacity");
            match parse_frame_header(&self.header)? {
                None => {
                    data = &data[take..];
                }
                Some(h) => {
                    self.frame(&h)?;
                    // Bytes past the header that were copied in belong to the payload (or
                    // the next frame): give them back to the stream.
                    data = &data[h.header_len - before..];
                    self.header.clear();
                    self.remaining = h.payload_len;
                }
            }
        }
        Ok(())
    }

    /// Fragmentation and size rules across frames.
    fn frame(&mut self, h: &FrameHeader) -> Result<(), FrameError> {
        self.frames += 1;
        if h.opcode >= 0x8 {
            self.closed |= h.opcode == 0x8;
            return Ok(());
        }
        let total = match (h.opcode, self.message) {
            (0, Some(so_far)) => so_far + h.payload_len,
            (0, None) | (1 | 2, Some(_)) => return Err(FrameError::BadFragmentation),
            _ => h.payload_len,
        };
        if total > MAX_MESSAGE {
            return Err(FrameError::MessageTooLarge(total));
        }
        self.message = if h.fin { None } else { Some(total) };
        Ok(())
    }
}

/// One masked client frame (for tests and the fuzzer's seeds).
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![u8::from(fin) << 7 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscribe_then_ping_then_close_pass_in_any_chunking() {
        let mut stream = client_frame(
            true,
            1,
            br#"{"op":"subscribe","subscriptions":[]}"#,
            [1, 2, 3, 4],
        );
        stream.extend(client_frame(false, 2, &[7; 300], [9, 9, 9, 9]));
        stream.extend(client_frame(true, 9, b"ping", [0, 0, 0, 0]));
        stream.extend(client_frame(true, 0, &[7; 60_000], [5, 6, 7, 8]));
        stream.extend(client_frame(true, 8, &[3, 232], [1, 1, 1, 1]));
        for chunk in [1, 2, 3, 7, 13, 14, 15, 1000, stream.len()] {
            let mut c = ClientFrames::default();
            for piece in stream.chunks(chunk) {
                c.feed(piece).unwrap();
            }
            assert_eq!(
                (c.frames, c.closed, c.remaining),
                (5, true, 0),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn hostile_frames_are_refused() {
        let big = client_frame(true, 2, &vec![0; MAX_FRAME_PAYLOAD as usize + 1], [0; 4]);
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (vec![0x81, 0x05, b'h', b'e'], FrameError::Unmasked),
            (vec![0xc1, 0x80, 0, 0, 0, 0], FrameError::ReservedBits),
            (vec![0x83, 0x80, 0, 0, 0, 0], FrameError::UnknownOpcode(3)),
            (vec![0x09, 0x80, 0, 0, 0, 0], FrameError::BadControlFrame),
            (
                vec![0x89, 0xfe, 0, 200, 0, 0, 0, 0],
                FrameError::BadControlFrame,
            ),
            (vec![0x82, 0xfe, 0, 5, 0, 0, 0, 0], FrameError::BadLength),
            (
                vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                FrameError::BadLength,
            ),
            (big, FrameError::FrameTooLarge(MAX_FRAME_PAYLOAD + 1)),
            (
                client_frame(true, 0, b"x", [0; 4]),
                FrameError::BadFragmentation,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                ClientFrames::default().feed(&bytes),
                Err(want),
                "{bytes:02x?}"
            );
        }
        let mut c = ClientFrames::default();
        let mut stream = Vec::new();
        for _ in 0..5 {
            stream.extend(client_frame(
                false,
                if stream.is_empty() { 2 } else { 0 },
                &[0; 60_000],
                [0; 4],
            ));
        }
        assert_eq!(c.feed(&stream), Err(FrameError::MessageTooLarge(300_000)));
    }
}
