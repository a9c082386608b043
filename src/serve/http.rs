//! HTTP/1.1 request heads and responses, just enough for routing and the token endpoint.
//! The head is parsed by `httparse`; this file bounds the read and shapes the answer.

use super::*;
use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A parsed request head. No `Debug`: the headers hold credentials.
pub(super) struct RequestHead {
    pub(super) method: String,
    /// The request target as sent: path and query.
    pub(super) target: String,
    pub(super) headers: Vec<(String, String)>,
    /// Length of the head including its terminating empty line.
    pub(super) head_len: usize,
    /// Everything read from the socket so far: the head and possibly the start of a body.
    pub(super) bytes_read: BytesMut,
}

impl RequestHead {
    pub(super) fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The value of the first header with this name (ASCII case-insensitive).
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub(super) fn bearer_token(&self) -> Option<&str> {
        let (scheme, token) = self.header("authorization")?.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

#[derive(Debug)]
pub(super) enum HeadError {
    Io(io::Error),
    /// The client closed before the head was complete.
    Truncated,
    TooLarge,
    Malformed(&'static str),
}

/// Reads up to the end of the request head. `Ok(None)`: the client closed without sending
/// anything.
pub(super) async fn read_request_head(
    stream: &mut ServerStream,
) -> Result<Option<RequestHead>, HeadError> {
    let mut bytes_read = BytesMut::with_capacity(1024);
    loop {
        let parsed = parse_request_head(&mut bytes_read);
        if !could_start_http_request(&bytes_read) && !matches!(parsed, Ok(Some(_))) {
            return Err(HeadError::Malformed("not an HTTP request"));
        }
        if let Some(head) = parsed? {
            return Ok(Some(head));
        }
        if bytes_read.len() >= MAX_HEAD_LEN {
            return Err(HeadError::TooLarge);
        }
        bytes_read.reserve(4096);
        if stream
            .read_buf(&mut bytes_read)
            .await
            .map_err(HeadError::Io)?
            == 0
        {
            return if bytes_read.is_empty() {
                Ok(None)
            } else {
                Err(HeadError::Truncated)
            };
        }
    }
}

/// Whether the bytes read so far can be the start of an HTTP/1 request: a method token,
/// then printable ASCII up to the end of the request line. A TLS ClientHello (a `wss://`
/// client on this plain port) starts with 0x16 and fails at the first byte, so it gets its
/// 400 at once instead of waiting [`REQUEST_READ_TIMEOUT`] for a head that never comes;
/// the client's TLS stack then sees plain HTTP and can say so.
pub(super) fn could_start_http_request(bytes: &[u8]) -> bool {
    let line = bytes.split(|&b| b == b'\r').next().unwrap_or_default();
    let method_len = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let is_token_char = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    line[..method_len].iter().all(is_token_char)
        && (bytes.is_empty() || method_len > 0)
        && line.iter().all(|b| (b' '..=b'~').contains(b))
}

/// Parses the request head at the start of `bytes_read` with httparse; on success the
/// head takes `bytes_read` (the start of a body may follow the head). `Ok(None)`: the head
/// is not complete yet.
pub(super) fn parse_request_head(
    bytes_read: &mut BytesMut,
) -> Result<Option<RequestHead>, HeadError> {
    // As many header slots as there can be header lines: httparse needs them up front, and
    // the head is bounded by MAX_HEAD_LEN, so no request is refused for its header count.
    let lines = bytes_read.iter().filter(|&&b| b == b'\n').count();
    let mut slots = vec![httparse::EMPTY_HEADER; lines + 1];
    let mut request = httparse::Request::new(&mut slots);
    let head_len = match request.parse(bytes_read) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::HeaderName | httparse::Error::HeaderValue) => {
            return Err(HeadError::Malformed("malformed header line"))
        }
        Err(_) => return Err(HeadError::Malformed("malformed request line")),
    };
    if std::str::from_utf8(&bytes_read[..head_len]).is_err() {
        return Err(HeadError::Malformed("request head is not UTF-8"));
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Err(HeadError::Malformed("malformed request line"));
    };
    if !target.starts_with('/') {
        return Err(HeadError::Malformed("malformed request line"));
    }
    let headers = request
        .headers
        .iter()
        .map(|header| {
            // UTF-8 was checked above for the whole head.
            let value = String::from_utf8_lossy(header.value);
            (header.name.to_owned(), value.trim().to_owned())
        })
        .collect();
    let (method, target) = (method.to_owned(), target.to_owned());
    Ok(Some(RequestHead {
        method,
        target,
        headers,
        head_len,
        bytes_read: std::mem::take(bytes_read),
    }))
}

/// Writes a complete response and closes the sending side: every response here ends
/// the connection.
pub(super) async fn write_response(
    stream: &mut ServerStream,
    status: u16,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    let reason = ::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|status| status.canonical_reason())
        .unwrap_or("Unknown");
    let mut response = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    for (name, value) in headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    // 204 and 304 responses have no body by definition.
    let body = if matches!(status, 204 | 304) {
        ""
    } else {
        response.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ));
        body
    };
    response.push_str("\r\n");
    response.push_str(body);
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<RequestHead, HeadError> {
        let mut bytes = BytesMut::from(text.as_bytes());
        parse_request_head(&mut bytes).map(|head| head.expect("complete head"))
    }

    #[test]
    fn request_head_parsing() {
        let parsed = head(
            "GET /shell?tty_width=80 HTTP/1.1\r\nHost: x\r\nauthorization: bearer  abc \r\n\r\n",
        )
        .ok()
        .unwrap();
        assert_eq!(parsed.method, "GET");
        assert_eq!(parsed.path(), "/shell");
        assert_eq!(parsed.target, "/shell?tty_width=80");
        assert_eq!(parsed.bearer_token(), Some("abc"));
        assert_eq!(parsed.header("HOST"), Some("x"));

        for malformed in [
            "GET\r\n\r\n",
            "GET / HTTP/1.1 extra\r\n\r\n",
            "GET nopath HTTP/1.1\r\n\r\n",
            "GET / SPDY/3\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        ] {
            assert!(
                matches!(head(malformed), Err(HeadError::Malformed(_))),
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn basic_auth_is_not_a_bearer_token() {
        let parsed = head("GET / HTTP/1.1\r\nAuthorization: Basic abc\r\n\r\n")
            .ok()
            .unwrap();
        assert_eq!(parsed.bearer_token(), None);
    }

    #[test]
    fn only_what_can_start_an_http_request_waits_for_more() {
        for start in [
            &b""[..],
            b"G",
            b"GET",
            b"GET /shell HTTP/1.1",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            b"POST /oauth/token HTTP/1.1\r\n",
        ] {
            assert!(
                could_start_http_request(start),
                "{:?}",
                String::from_utf8_lossy(start)
            );
        }
        for start in [
            &[0x16, 0x03, 0x01, 0x00, 0xf4][..],
            &[0x15, 0x03, 0x03, 0x00, 0x02],
            b" GET / HTTP/1.1",
            b"GE\x00T",
            b"GET /\x1b[2J HTTP/1.1",
        ] {
            assert!(
                !could_start_http_request(start),
                "{:?}",
                String::from_utf8_lossy(start)
            );
        }
    }
}
