//! Credential headers that never pass through a traced path.
//!
//! tungstenite logs the whole upgrade request at trace level (`Request: "GET … Authorization:
//! Bearer …"`), and any program that forwards `log` records to a subscriber (the default of
//! `tracing_subscriber`'s `init()`) would print the token. So the request handed to
//! tungstenite carries no sensitive header at all: [`SecretHeaders`] sits under it and
//! writes those header lines into the byte stream right after the request line, where no
//! library looks at them.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A pass-through stream that adds header lines to the HTTP request written through it.
#[derive(Debug)]
pub struct SecretHeaders<S> {
    inner: S,
    state: Inject,
}

enum Inject {
    /// Waiting for the end of the request line; the header lines to add.
    RequestLine(Vec<u8>),
    /// The request line is out; the header lines go next.
    Lines { bytes: Vec<u8>, written: usize },
    /// Everything added: bytes pass through untouched.
    Done,
}

impl std::fmt::Debug for Inject {
    // Never the header values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inject::RequestLine(_) => f.write_str("RequestLine"),
            Inject::Lines { .. } => f.write_str("Lines"),
            Inject::Done => f.write_str("Done"),
        }
    }
}

impl<S> SecretHeaders<S> {
    /// Takes the sensitive headers (marked so, or credential headers by name) out of
    /// `headers`, to be written on `inner` after the request line of the upgrade request.
    pub fn take_from(headers: &mut HeaderMap, inner: S) -> Self {
        let mut lines = Vec::new();
        let names: Vec<_> = headers
            .iter()
            .filter(|(name, value)| value.is_sensitive() || super::is_credential_header(name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            for value in headers.get_all(&name) {
                lines.extend_from_slice(name.as_str().as_bytes());
                lines.extend_from_slice(b": ");
                lines.extend_from_slice(value.as_bytes());
                lines.extend_from_slice(b"\r\n");
            }
            headers.remove(&name);
        }
        let state = if lines.is_empty() {
            Inject::Done
        } else {
            Inject::RequestLine(lines)
        };
        SecretHeaders { inner, state }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> SecretHeaders<S> {
    /// Ready once the header lines (if due) are written.
    fn poll_lines(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Inject::Lines { bytes, written } = &mut self.state {
            while *written < bytes.len() {
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            self.state = Inject::Done;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SecretHeaders<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SecretHeaders<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_lines(cx))?;
        let Inject::RequestLine(lines) = &mut this.state else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..=end]))?;
        if n == end + 1 {
            this.state = Inject::Lines {
                bytes: std::mem::take(lines),
                written: 0,
            };
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_lines(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn sensitive_headers_go_after_the_request_line_and_leave_the_map() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example"));
        let mut secret = HeaderValue::from_static("Bearer s3cret");
        secret.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, secret);
        let mut stream = SecretHeaders::take_from(&mut headers, Vec::new());
        assert!(!headers.contains_key(http::header::AUTHORIZATION));
        assert!(headers.contains_key("host"));
        // Written in pieces, the request line split in two.
        for piece in ["GET / HT", "TP/1.1\r\nhost: example\r\n", "\r\n"] {
            stream.write_all(piece.as_bytes()).await.unwrap();
        }
        stream.flush().await.unwrap();
        assert_eq!(
            String::from_utf8(stream.inner).unwrap(),
            "GET / HTTP/1.1\r\nauthorization: Bearer s3cret\r\nhost: example\r\n\r\n"
        );
    }
}
