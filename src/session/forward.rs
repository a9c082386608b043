//! `wsup port-forward`'s tunnel: one TCP connection piped through a supervised websocket.
//!
//! [`ForwardSession`] is the byte pump of one tunnel: bytes read from the TCP connection
//! go out as binary frames, and every frame received is written to the TCP connection as
//! it is. It decides nothing about reconnecting: port-forward's policy (no redial once
//! bytes flow, because a byte stream cannot be resumed) is in the supervisor's config,
//! built by the CLI, and the listener that starts one supervisor per accepted connection
//! is [`crate::forward::Forwarder`].
//!
//! Back-pressure: a tunnel reads at most [`CHUNK`] bytes at a time and holds at most
//! [`TUNNEL_READ_AHEAD_BYTES`] of them waiting for the websocket; frames from the server
//! are written to the TCP connection before the next one is taken, and the supervisor
//! stops reading the websocket while [`TUNNEL_INBOUND_BYTES`] of them wait. A slow TCP
//! reader therefore slows the websocket instead of filling memory.

use super::{Control, Link, Outbound, Session};
use bytes::{BufMut, BytesMut};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;

/// Bytes read from the TCP connection at once: each read becomes one binary frame.
pub const CHUNK: usize = 64 * 1024;

/// Bytes read from the TCP connection that may wait for the websocket (while dialing,
/// or while the server reads slowly); past it, the TCP connection is not read. One read:
/// the next read waits until the supervisor has taken the previous frame, so the
/// frame's buffer is reused (docs/benchmarks.md). The kernel's socket buffers hold the
/// rest.
pub const TUNNEL_READ_AHEAD_BYTES: usize = CHUNK;

/// Bytes from the server that may wait for the TCP connection before the supervisor
/// stops reading the websocket (other sessions: [`super::INBOUND_BYTES`], 64 KiB, one
/// large frame). With one frame in flight, the supervisor and the tunnel took turns
/// frame by frame; with four, one tunnel downstream moved 1,549 against 1,474 MiB/s
/// (CPU 880 against 935 ms per GiB) in 8 interleaved repetitions, 1,476 against 1,388
/// (915 against 965) in 10, and 1,390 against 1,447 in 6 under load: faster in 17 of
/// 24 repetitions. The cost: a tunnel whose TCP client reads slowly holds up to
/// 256 KiB of its frames (64 MiB at the default 256 tunnels).
pub const TUNNEL_INBOUND_BYTES: usize = 256 << 10;

/// One tunnel: a TCP connection piped through the supervised websocket.
pub struct ForwardSession {
    tcp: TcpStream,
}

impl ForwardSession {
    pub fn new(tcp: TcpStream) -> Self {
        ForwardSession { tcp }
    }
}

impl Session for ForwardSession {
    fn inbound_bytes(&self) -> usize {
        TUNNEL_INBOUND_BYTES
    }

    async fn run(self, link: Link) {
        let Link {
            mut inbound,
            outbound,
            control,
            ..
        } = link;
        let (read_half, mut write_half) = self.tcp.into_split();
        let reader = tokio::spawn(async move {
            if send_chunks(read_half, outbound).await == ReadEnd::ClientGone {
                // Ignored once the websocket is up; before, it ends the tunnel at once
                // (the sender is already dropped: nothing queued is left to send).
                let _ = control.send(Control::LocalGone).await;
            }
        });
        let mut failed = false;
        while let Some(message) = inbound.recv().await {
            let written = match &message {
                Message::Binary(bytes) => write_half.write_all(bytes).await,
                Message::Text(text) => write_half.write_all(text.as_bytes()).await,
                _ => Ok(()),
            };
            if written.is_err() {
                // The local side is gone: returning drops the link, which tells the
                // supervisor to close the websocket.
                failed = true;
                break;
            }
        }
        if !failed {
            // The supervisor stopped: the server closed, or the tunnel failed. Tell the
            // local side there is nothing more to read.
            let _ = write_half.shutdown().await;
        }
        // Dropping both halves closes the TCP connection.
        reader.abort();
    }
}

/// How the TCP connection's reading side ended.
#[derive(Debug, PartialEq, Eq)]
enum ReadEnd {
    /// EOF after some bytes: the client may still wait for the answer (a half-close).
    Finished,
    /// EOF before a single byte, or a read error (reset): the client has left, nobody
    /// wants the tunnel (a port scan, a health check that only connects).
    ClientGone,
    /// The supervisor stopped taking frames.
    SupervisorGone,
}

/// Reads the TCP connection straight into the frames' buffers and queues each read as a
/// binary frame: no copy between the socket and the websocket's writer (which masks the
/// payload into its own buffer). Returning drops the sender: the supervisor sends close
/// 1000 once everything queued has left.
async fn send_chunks(mut tcp: OwnedReadHalf, outbound: mpsc::Sender<Outbound>) -> ReadEnd {
    let budget = Arc::new(Semaphore::new(TUNNEL_READ_AHEAD_BYTES));
    let mut buffer = BytesMut::new();
    let mut read_any = false;
    loop {
        // Room for a whole read first: once the supervisor has taken the previous
        // frame (and copied it into the websocket's buffer), `reserve` reuses that
        // frame's allocation instead of making a new one for every read.
        let Ok(mut permit) = budget.clone().acquire_many_owned(CHUNK as u32).await else {
            return ReadEnd::SupervisorGone;
        };
        buffer.reserve(CHUNK);
        let read = match tcp.read_buf(&mut (&mut buffer).limit(CHUNK)).await {
            Ok(0) if read_any => return ReadEnd::Finished,
            Ok(0) | Err(_) => return ReadEnd::ClientGone,
            Ok(read) => read,
        };
        read_any = true;
        // The frame holds what it uses; the rest of the room is given back.
        let permit = permit.split(read);
        let item = Outbound {
            message: Message::Binary(buffer.split().freeze()),
            permit,
        };
        if outbound.send(item).await.is_err() {
            return ReadEnd::SupervisorGone;
        }
    }
}

#[cfg(test)]
mod tests {
    /// Sessions never make reconnect decisions: the tunnel's policy is the config's, built
    /// by the CLI, and the supervisor that applies it is run by `crate::forward`.
    #[test]
    fn the_byte_pump_depends_on_no_supervision_layer() {
        let source = include_str!("forward.rs");
        let code = &source[..source.find("#[cfg(test)]").unwrap_or(source.len())];
        for forbidden in [
            "crate::driver",
            "crate::machine",
            "crate::transport",
            "redial_after_connected",
            "max_retries",
        ] {
            assert!(
                !code.contains(forbidden),
                "session/forward.rs uses {forbidden}"
            );
        }
    }
}
