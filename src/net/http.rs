//! The least of HTTP/1.x a metrics scrape needs, as a third framing of the
//! event loop (see `frame`): a request line and its headers in, one reply
//! out, then the connection closes (`Connection: close`). No bodies, no
//! keep-alive, no chunking: Prometheus and `curl` need nothing more.

/// The longest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 * 1024;

/// A request's method and target, as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The request target, `/metrics`.
    pub path: String,
}

/// Why a request head is not HTTP/1.x; answered 400 and closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// No blank line within [`MAX_HEAD`].
    HeadTooLong,
    /// The request line is not `METHOD TARGET HTTP/1.x`.
    BadRequestLine,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::HeadTooLong => write!(f, "request head over {MAX_HEAD} bytes"),
            HttpError::BadRequestLine => write!(f, "malformed request line"),
        }
    }
}

impl std::error::Error for HttpError {}

/// The request at the start of `buf` and the bytes of its head, or `None`
/// until the blank line that ends the head has arrived.
pub fn decode(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    let scan = &buf[..buf.len().min(MAX_HEAD)];
    let end = scan.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4).or_else(|| {
        // Bare LFs, as some hand-typed requests have.
        scan.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
    });
    let Some(end) = end else {
        return if buf.len() >= MAX_HEAD { Err(HttpError::HeadTooLong) } else { Ok(None) };
    };
    let head = &buf[..end];
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| HttpError::BadRequestLine)?;
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(path), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequestLine);
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !token(method) || !token(path) || !version.starts_with("HTTP/1.") {
        return Err(HttpError::BadRequestLine);
    }
    Ok(Some((Request { method: method.into(), path: path.into() }, end)))
}

/// A whole reply: status line, the headers a scraper needs, and `body`.
pub fn reply(status: u16, reason: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
    fn a_scrape_request_is_read_once_its_head_is_complete() {
        let wire = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
        for cut in 0..wire.len() {
            assert_eq!(decode(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        let (r, n) = decode(wire).unwrap().unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str(), n), ("GET", "/metrics", wire.len()));
        assert_eq!(decode(b"GET / HTTP/1.0\n\n").unwrap().unwrap().0.path, "/");
    }

    #[test]
    fn bad_heads_are_refused() {
        assert_eq!(decode(b"GET /metrics\r\n\r\n"), Err(HttpError::BadRequestLine));
        assert_eq!(decode(b"GET /a b HTTP/1.1\r\n\r\n"), Err(HttpError::BadRequestLine));
        assert_eq!(decode(b"\x16\x03\x01 x HTTP/1.1\r\n\r\n"), Err(HttpError::BadRequestLine));
        assert_eq!(decode(&[b'a'; MAX_HEAD]), Err(HttpError::HeadTooLong));
    }

    #[test]
    fn a_reply_says_its_length_and_closes() {
        let r = reply(200, "OK", "text/plain", b"abc");
        assert_eq!(
            r,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
                .to_vec()
        );
    }
}
