//! What each [`Step`] does with an upgraded connection: the upgrade itself, `hang`,
//! `close`, `echo`, `logs` and `forward` (the fake shell is in `shell.rs`).

use super::*;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::header::SEC_WEBSOCKET_PROTOCOL;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

pub(super) type ServerSocket = WebSocketStream<Replayed<ServerStream>>;

/// Runs the websocket handshake over the request bytes already read plus the rest of the
/// stream. Answers with [`chosen_subprotocol`]: without `--subprotocol`, the first one the
/// client asked for, because a client that asks for one fails the handshake when the
/// answer has none.
#[allow(clippy::result_large_err)] // the callback's error type is tungstenite's
pub(super) async fn upgrade(
    stream: ServerStream,
    bytes_read: BytesMut,
    shared: &Arc<Shared>,
    read_buffer: usize,
) -> Result<ServerSocket, tungstenite::Error> {
    let shared = Arc::clone(shared);
    let callback =
        move |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
            let offered = request
                .headers()
                .get(SEC_WEBSOCKET_PROTOCOL)
                .and_then(|offered| offered.to_str().ok());
            let chosen = chosen_subprotocol(offered, &shared.subprotocols)
                .and_then(|protocol| protocol.parse().ok());
            if let Some(protocol) = chosen {
                response
                    .headers_mut()
                    .insert(SEC_WEBSOCKET_PROTOCOL, protocol);
            }
            // Counted before the 101 is written, so a client that sees the upgrade sees it counted.
            shared.record_upgrade();
            Ok(response)
        };
    let stream = Replayed {
        already_read: bytes_read.freeze(),
        inner: stream,
    };
    let config = tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .max_message_size(Some(crate::transport::MAX_MESSAGE_SIZE))
        .max_frame_size(Some(crate::transport::MAX_MESSAGE_SIZE));
    tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
}

/// The subprotocol to answer with, given the client's `Sec-WebSocket-Protocol` (`offered`):
/// the first of `required` the client offered, or, when nothing is required, the first
/// one offered. `None`: answer without one.
pub(super) fn chosen_subprotocol(offered: Option<&str>, required: &[String]) -> Option<String> {
    let mut offered = offered
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty());
    if required.is_empty() {
        return offered.next().map(str::to_owned);
    }
    let offered: Vec<&str> = offered.collect();
    required
        .iter()
        .find(|name| offered.contains(&name.as_str()))
        .cloned()
}

/// Per-connection read buffer of the scripted server. Small: tungstenite zero-fills all
/// of it per connection, and the benchmarks hold 10,000 idle connections against this
/// server.
pub(super) const SERVER_READ_BUFFER: usize = 16 * 1024;

/// Read buffer of a `forward` step's connection: a tunnel moves bulk bytes, and
/// tungstenite never reads more than its read buffer at once. With 16 KiB, a 64 KiB
/// frame took four reads (and four zero-fills); with 128 KiB, about half a read.
/// Upstream through the wsup pair, `serve` spent 380–610 ms of CPU per GiB with 16 KiB
/// and 340–430 with 128 KiB (three 1 GiB runs each, interleaved, load average 3.5).
pub(super) const FORWARD_READ_BUFFER: usize = 128 * 1024;

/// Keeps the connection open, unread and unanswered, until shutdown drops the task.
pub(super) async fn hold_open<T>(_connection: T) -> Result<(), ConnectionError> {
    std::future::pending().await
}

pub(super) async fn close_with(
    mut ws: ServerSocket,
    code: u16,
    reason: String,
) -> Result<(), ConnectionError> {
    let frame = match code {
        // Abnormal closure: the connection ends without a close frame.
        1006 => return Ok(()),
        // No status: a close frame with an empty payload.
        1005 => None,
        _ => Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        }),
    };
    ws.close(frame).await?;
    // Read until the client's close reply ends the stream; a client that never replies
    // does not hold the connection beyond the timeout.
    let _ = timeout(CLOSE_REPLY_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}

pub(super) async fn echo(mut ws: ServerSocket, shared: &Shared) -> Result<(), ConnectionError> {
    // tungstenite answers pings and the client's close by itself while we read.
    while let Some(message) = ws.next().await {
        let message = message?;
        if message.is_text() || message.is_binary() {
            shared.record_echo(&message);
            ws.send(message).await?;
        }
    }
    Ok(())
}

pub(super) async fn send_log_lines(
    mut ws: ServerSocket,
    count: u32,
    close: Option<u16>,
    epoch_ms: u64,
) -> Result<(), ConnectionError> {
    for line in 1..=count {
        let entry = serde_json::json!({
            "created_at": epoch_ms + u64::from(line),
            "message": format!("line {line}"),
            "pod_name": "pod-0",
        });
        ws.send(Message::text(entry.to_string())).await?;
    }
    if let Some(code) = close {
        return close_with(ws, code, String::new()).await;
    }
    // Keep reading so that pings and the client's close are answered.
    while let Some(message) = ws.next().await {
        message?;
    }
    Ok(())
}

/// A `forward` step's TCP connection to its target must be up within this long.
pub(super) const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read from a `forward` target at once: each read becomes one binary frame.
pub(super) const FORWARD_CHUNK: usize = 64 * 1024;

/// Relays between the websocket and a new TCP connection to `target`, both directions at
/// once (one direction waiting on the other would deadlock against an echoing target).
pub(super) async fn forward(ws: ServerSocket, target: &str) -> Result<(), ConnectionError> {
    let tcp = match timeout(FORWARD_CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(error)) => {
            debug!(%target, %error, "forward target unreachable");
            return close_with(ws, 1011, "forward target unreachable".to_owned()).await;
        }
        Err(_) => {
            debug!(%target, "forward target: connect timed out");
            return close_with(ws, 1011, "forward target unreachable".to_owned()).await;
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut from_target, mut to_target) = tcp.into_split();
    let (mut to_client, mut from_client) = ws.split();

    // Client to target: until the client's close (tungstenite answers it while we read).
    let client_to_target = async move {
        while let Some(message) = from_client.next().await {
            match message? {
                Message::Binary(bytes) => to_target.write_all(&bytes).await?,
                Message::Text(text) => to_target.write_all(text.as_bytes()).await?,
                _ => {}
            }
        }
        // The client is done: the target reads EOF.
        to_target.shutdown().await?;
        Ok::<(), ConnectionError>(())
    };
    // Target to client: until the target closes, then close the websocket with 1000.
    let target_to_client = async move {
        // Read straight into the frame's buffer (no copy), and flush only when the
        // target has nothing more for now: one syscall per burst, not per frame.
        let mut buffer = BytesMut::with_capacity(FORWARD_CHUNK);
        loop {
            buffer.reserve(FORWARD_CHUNK);
            let read = match from_target.try_read_buf(&mut buffer) {
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    to_client.flush().await?;
                    from_target.read_buf(&mut buffer).await?
                }
                Err(e) => return Err(e.into()),
            };
            if read == 0 {
                break;
            }
            to_client
                .feed(Message::Binary(buffer.split().freeze()))
                .await?;
        }
        to_client.flush().await?;
        to_client
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await?;
        Ok::<(), ConnectionError>(())
    };
    tokio::pin!(client_to_target, target_to_client);
    tokio::select! {
        // The websocket is over: whatever the target still sends has nowhere to go.
        done = &mut client_to_target => done,
        sent = &mut target_to_client => {
            // Our close is sent (or the socket failed): wait, bounded, for the client's
            // close reply, forwarding what it sent before it.
            match timeout(CLOSE_REPLY_TIMEOUT, client_to_target).await {
                Ok(done) => sent.and(done),
                Err(_) => sent,
            }
        }
    }
}

/// A stream that first yields bytes already read from `inner`, then reads `inner`: the
/// handshake parser sees the request head that routing consumed.
pub(super) struct Replayed<S> {
    pub(super) already_read: Bytes,
    pub(super) inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replayed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.already_read.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let count = self.already_read.len().min(buf.remaining());
        buf.put_slice(&self.already_read[..count]);
        self.already_read.advance(count);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replayed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod subprotocol_tests {
    use super::chosen_subprotocol;

    #[test]
    fn without_a_requirement_the_first_offer_is_chosen() {
        assert_eq!(chosen_subprotocol(Some("b, a"), &[]), Some("b".into()));
        assert_eq!(chosen_subprotocol(None, &[]), None);
    }

    #[test]
    fn with_a_requirement_the_first_required_one_offered_is_chosen() {
        let required = ["x".to_string(), "a".to_string()];
        assert_eq!(
            chosen_subprotocol(Some("b,a ,x"), &required),
            Some("x".into())
        );
        assert_eq!(
            chosen_subprotocol(Some("b, a"), &required),
            Some("a".into())
        );
        assert_eq!(chosen_subprotocol(Some("b"), &required), None);
        assert_eq!(chosen_subprotocol(None, &required), None);
    }
}
