//! The HTTP/1.1 request head, parsed strictly and within fixed bounds, from whatever bytes a
//! client has sent so far. Both endpoints read requests only through it: `/metrics` and
//! `/healthz`, and the Foxglove WebSocket upgrade.
//!
//! Bounds: the head (request line and headers, up to the blank line) is at most [`MAX_HEAD`]
//! bytes with at most [`MAX_HEADERS`] header lines. No request may carry a body (both endpoints
//! only read), so `Content-Length` other than 0 and any `Transfer-Encoding` are refused. Line
//! ends are CRLF; obsolete line folding, control characters and bytes above 0x7e are refused.

/// Longest request head accepted, bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 32;
/// Longest method token.
const MAX_METHOD: usize = 16;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Origin-form target, e.g. `/metrics?x=1`.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(String, String)>,
    /// Bytes of the buffer the head took, the blank line included.
    pub len: usize,
}

impl RequestHead {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Whether a header holds `token` in its comma-separated list (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Why a request head is refused; [`HttpError::status`] is the response code to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// More than [`MAX_HEAD`] bytes without the blank line that ends a head.
    HeadTooLarge,
    TooManyHeaders,
    Malformed(&'static str),
    /// A request body, or an HTTP version other than 1.0 and 1.1.
    Unsupported(&'static str),
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::Malformed(_) => 400,
            HttpError::Unsupported(_) => 501,
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::HeadTooLarge => write!(f, "request head over {MAX_HEAD} bytes"),
            HttpError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} header lines"),
            HttpError::Malformed(why) => write!(f, "malformed request: {why}"),
            HttpError::Unsupported(why) => write!(f, "unsupported request: {why}"),
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parse the head at the start of `buf`: `Ok(None)` while its blank line has not arrived yet
/// (and `buf` is still under [`MAX_HEAD`]).
pub fn parse_head(buf: &[u8]) -> Result<Option<RequestHead>, HttpError> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() >= MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
        // Refuse early what can never become a head, so a client cannot hold a connection
        // open with garbage until the size limit.
        check_partial(window)?;
        return Ok(None);
    };
    // Every line with its CRLF, the blank one left out.
    let head = &window[..end + 1];
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r"));
    let request_line = lines
        .next()
        .flatten()
        .ok_or(HttpError::Malformed("bare LF in the request line"))?;
    let (method, target, minor_version) = parse_request_line(request_line)?;
    let mut headers = Vec::new();
    for line in lines {
        let line = line.ok_or(HttpError::Malformed("bare LF in a header line"))?;
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        headers.push(parse_header_line(line)?);
    }
    let head = RequestHead {
        method,
        target,
        minor_version,
        headers,
        len: end + 4,
    };
    refuse_body(&head)?;
    Ok(Some(head))
}

/// The bytes so far must be able to start a request line.
fn check_partial(buf: &[u8]) -> Result<(), HttpError> {
    let first = buf.split(|&b| b == b' ').next().unwrap_or(&[]);
    if first.len() > MAX_METHOD || !first.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::Malformed("not an HTTP request"));
    }
    if buf
        .iter()
        .any(|&b| (b < 0x20 && b != b'\r' && b != b'\n' && b != b'\t') || b > 0x7e)
    {
        return Err(HttpError::Malformed("control or non-ASCII byte"));
    }
    Ok(())
}

fn parse_request_line(line: &[u8]) -> Result<(String, String, u8), HttpError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed(
            "request line is not METHOD SP TARGET SP VERSION",
        ));
    };
    if method.is_empty() || method.len() > MAX_METHOD || !method.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::Malformed("method is not a token"));
    }
    if target.first() != Some(&b'/') || !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err(HttpError::Malformed("target is not an absolute path"));
    }
    let minor = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        v if v.starts_with(b"HTTP/") => return Err(HttpError::Unsupported("HTTP version")),
        _ => return Err(HttpError::Malformed("no HTTP version")),
    };
    // Every byte was checked to be ASCII above.
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((text(method), text(target), minor))
}

fn parse_header_line(line: &[u8]) -> Result<(String, String), HttpError> {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return Err(HttpError::Malformed("obsolete line folding"));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(HttpError::Malformed("header line without ':'"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::Malformed("header name is not a token"));
    }
    if !value
        .iter()
        .all(|&b| b == b'\t' || (0x20..=0x7e).contains(&b))
    {
        return Err(HttpError::Malformed(
            "control or non-ASCII byte in a header",
        ));
    }
    let value = value.trim_ascii();
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

fn refuse_body(head: &RequestHead) -> Result<(), HttpError> {
    if head.header("transfer-encoding").is_some() {
        return Err(HttpError::Unsupported("a request body (Transfer-Encoding)"));
    }
    for (n, v) in &head.headers {
        if n.eq_ignore_ascii_case("content-length") && v != "0" {
            return Err(HttpError::Unsupported("a request body (Content-Length)"));
        }
    }
    Ok(())
}

/// A complete response with `Connection: close` (every connection serves one request).
pub fn response(status: u16, content_type: &str, body: &[u8], extra_headers: &str) -> Vec<u8> {
    let reason = match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_parses_and_partial_heads_wait() {
        let req = b"GET /metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9090\r\nAccept: text/plain, */*\r\n\r\nrest";
        let h = parse_head(req).unwrap().unwrap();
        assert_eq!(
            (h.method.as_str(), h.path(), h.minor_version),
            ("GET", "/metrics", 1)
        );
        assert_eq!(h.header("host"), Some("127.0.0.1:9090"));
        assert_eq!(h.len, req.len() - 4);
        for cut in 0..req.len() - 4 {
            assert_eq!(parse_head(&req[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn hostile_heads_are_refused_with_the_right_status() {
        let cases: [(&[u8], u16); 9] = [
            (b"GET /\r\n\r\n", 400),
            (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 501),
            (b"GET / HTTP/1.1\r\n folded\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 501),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                501,
            ),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01", 400),
            (b"GET / HTTP/1.1\nHost: x\n\n\r\n\r\n", 400),
        ];
        for (req, status) in cases {
            let e = parse_head(req).expect_err(&String::from_utf8_lossy(req));
            assert_eq!(
                e.status(),
                status,
                "{e} for {:?}",
                String::from_utf8_lossy(req)
            );
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X{i}: y\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_head(req.as_bytes()), Err(HttpError::TooManyHeaders));
        let big = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse_head(big.as_bytes()), Err(HttpError::HeadTooLarge));
    }
}
