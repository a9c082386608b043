//! `wsup port-forward`: one supervised websocket per accepted TCP connection.
//!
//! [`ForwardSession`] is one tunnel: bytes read from the TCP connection go out as binary
//! frames, and every frame received is written to the TCP connection as it is. The
//! tunnel's supervisor dials when the connection is accepted and redials only until the
//! websocket is up (`redial_after_connected = false`): once bytes flow, a lost
//! websocket closes the TCP connection, because a byte stream cannot be resumed.
//!
//! [`Forwarder`] is the listener: it accepts, starts a supervisor per connection (all
//! sharing one [`Transport`] and one [`Credentials`], so a rejected token causes one
//! refresh however many tunnels hit it), survives every tunnel's failure and, on
//! SIGINT/SIGTERM, stops accepting, lets every tunnel close and returns the signal.
//!
//! Back-pressure: a tunnel reads at most [`CHUNK`] bytes at a time and holds at most
//! [`QUEUE_BYTES`] of them waiting for the websocket; frames from the server are written
//! to the TCP connection before the next one is taken, and the supervisor stops reading
//! the websocket while the session has a full inbound queue. A slow TCP reader therefore
//! slows the websocket instead of filling memory.

use super::{Control, Link, Outbound, Session};
use crate::credentials::{Anonymous, Credentials};
use crate::driver::{Config, NoticeSink, SignalWatch, Supervisor};
use crate::machine::{Notice, Outcome, Sig};
use crate::transport::Transport;
use bytes::{BufMut, BytesMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

/// Bytes read from the TCP connection at once: each read becomes one binary frame.
pub const CHUNK: usize = 64 * 1024;

/// Bytes read from the TCP connection that may wait for the websocket (while dialing,
/// or while the server reads slowly); past it, the TCP connection is not read. One read:
/// the next read waits until the supervisor has taken the previous frame, so the
/// frame's buffer is reused (docs/benchmarks.md). The kernel's socket buffers hold the
/// rest.
pub const QUEUE_BYTES: usize = CHUNK;

/// Tunnels open at once unless [`Forwarder::max_tunnels`] says otherwise.
pub const DEFAULT_MAX_TUNNELS: u32 = 256;

/// Redials a tunnel's dial gets when `--max-retries` is not given.
pub const DEFAULT_TUNNEL_RETRIES: u32 = 5;

/// After a signal, how long the listener waits for its tunnels to close.
const TUNNELS_CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// After a failed `accept` (typically out of file descriptors), pause this long rather
/// than spin on the error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

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
    let budget = Arc::new(Semaphore::new(QUEUE_BYTES));
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

/// Called when a tunnel's supervisor stops, with the TCP peer and how it ended.
pub type TunnelEndSink = Arc<dyn Fn(SocketAddr, &Outcome) + Send + Sync>;

/// Notices of one tunnel, with its TCP peer.
pub type TunnelNoticeSink = Arc<dyn Fn(SocketAddr, &Notice) + Send + Sync>;

/// Called once, the first time the tunnel limit is reached, with the limit.
pub type TunnelLimitSink = Arc<dyn Fn(usize) + Send + Sync>;

/// The port-forward listener: a supervised tunnel per accepted connection.
///
/// ```no_run
/// # async fn demo(config: wsup::Config) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let signal = wsup::session::forward::Forwarder::new(listener, config)
///     .expect("valid transport settings")
///     .run()
///     .await;
/// std::process::exit(wsup::Outcome::Signal(signal).exit_code().into());
/// # }
/// ```
pub struct Forwarder {
    listener: TcpListener,
    config: Config,
    credentials: Arc<dyn Credentials>,
    transport: Transport,
    signals: Option<SignalWatch>,
    notices: Option<TunnelNoticeSink>,
    on_tunnel_end: Option<TunnelEndSink>,
    max_tunnels: usize,
    on_tunnel_limit: Option<TunnelLimitSink>,
}

impl Forwarder {
    /// Tunnels never redial once connected, whatever `config` says: a byte stream
    /// cannot be resumed on a new websocket. `config.machine.max_retries` applies to each
    /// tunnel's dial; `None` means [`DEFAULT_TUNNEL_RETRIES`].
    pub fn new(
        listener: TcpListener,
        mut config: Config,
    ) -> Result<Self, crate::transport::UsageError> {
        config.machine.redial_after_connected = false;
        config
            .machine
            .max_retries
            .get_or_insert(DEFAULT_TUNNEL_RETRIES);
        let transport = Transport::new(config.transport.clone())?;
        Ok(Forwarder {
            listener,
            config,
            credentials: Arc::new(Anonymous),
            transport,
            signals: None,
            notices: None,
            on_tunnel_end: None,
            max_tunnels: DEFAULT_MAX_TUNNELS as usize,
            on_tunnel_limit: None,
        })
    }

    /// Tunnels open at once (at least 1; default [`DEFAULT_MAX_TUNNELS`]). At the limit
    /// the listener stops accepting until a tunnel ends: further clients wait in the
    /// kernel's listen queue (back-pressure) instead of each costing a websocket.
    pub fn max_tunnels(mut self, max: usize) -> Self {
        self.max_tunnels = max.max(1);
        self
    }

    /// Told once, the first time the limit is reached (by default, a warning is logged).
    pub fn on_tunnel_limit(mut self, sink: TunnelLimitSink) -> Self {
        self.on_tunnel_limit = Some(sink);
        self
    }

    /// Shared by every tunnel: refreshes are single-flight across all of them.
    pub fn credentials(mut self, credentials: Arc<dyn Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// Where SIGINT/SIGTERM come from. Without one the listener reacts to no signal and
    /// installs no handler (the CLI passes [`crate::driver::process_signals`]).
    pub fn signals(mut self, signals: SignalWatch) -> Self {
        self.signals = Some(signals);
        self
    }

    pub fn on_notice(mut self, sink: TunnelNoticeSink) -> Self {
        self.notices = Some(sink);
        self
    }

    pub fn on_tunnel_end(mut self, sink: TunnelEndSink) -> Self {
        self.on_tunnel_end = Some(sink);
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accept and forward until SIGINT/SIGTERM; returns the signal once the listener is
    /// closed and every tunnel has closed (or had a second to).
    pub async fn run(self) -> Sig {
        let Forwarder {
            listener,
            config,
            credentials,
            transport,
            signals,
            notices,
            on_tunnel_end,
            max_tunnels,
            on_tunnel_limit,
        } = self;
        let mut on_tunnel_limit = Some(on_tunnel_limit.unwrap_or_else(|| {
            Arc::new(|max| {
                tracing::warn!(target: "wsup::forward", max, "tunnel limit reached: further connections wait")
            })
        }));
        let mut signals = signals.unwrap_or_else(|| tokio::sync::watch::channel(None).1);
        let mut tunnels = JoinSet::new();
        let mut signals_open = true;
        let sig = loop {
            if let Some(sig) = *signals.borrow_and_update() {
                break sig;
            }
            tokio::select! {
                biased;
                changed = signals.changed(), if signals_open => {
                    // Err: the signal source is gone; only the process's end stops us.
                    signals_open = changed.is_ok();
                }
                Some(_) = tunnels.join_next(), if !tunnels.is_empty() => {}
                accepted = listener.accept(), if tunnels.len() < max_tunnels => match accepted {
                    Ok((tcp, peer)) => {
                        let supervisor = Supervisor::new(config.clone())
                            .credentials(credentials.clone())
                            .signals(signals.clone())
                            .on_notice(tunnel_notices(notices.clone(), peer));
                        tunnels.spawn(tunnel(
                            supervisor,
                            transport.clone(),
                            tcp,
                            peer,
                            on_tunnel_end.clone(),
                        ));
                        if tunnels.len() >= max_tunnels {
                            // Once, not per waiting client: a flood of clients must not
                            // become a flood of lines.
                            if let Some(sink) = on_tunnel_limit.take() {
                                sink(max_tunnels);
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(target: "wsup::forward", %error, "accept failed");
                        tokio::select! {
                            _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                            changed = signals.changed(), if signals_open => {
                                signals_open = changed.is_ok();
                            }
                        }
                    }
                },
            }
        };
        // Stop accepting at once; every tunnel's supervisor saw the same signal and is
        // closing its websocket (1001) and its TCP connection.
        drop(listener);
        let _ = tokio::time::timeout(TUNNELS_CLOSE_WITHIN, async {
            while tunnels.join_next().await.is_some() {}
        })
        .await;
        tunnels.abort_all();
        sig
    }
}

/// One tunnel's life: supervise it, then report how it ended.
async fn tunnel(
    supervisor: Supervisor,
    transport: Transport,
    tcp: TcpStream,
    peer: SocketAddr,
    on_end: Option<TunnelEndSink>,
) {
    let _ = tcp.set_nodelay(true);
    tracing::debug!(target: "wsup::forward", %peer, "tunnel opened");
    // The transport was validated once, by `Forwarder::new`.
    let outcome = supervisor
        .run_with_dialer(transport, ForwardSession::new(tcp))
        .await;
    tracing::debug!(target: "wsup::forward", %peer, ?outcome, "tunnel closed");
    if let Some(on_end) = on_end {
        on_end(peer, &outcome);
    }
}

/// A tunnel's notices, with its TCP peer.
fn tunnel_notices(sink: Option<TunnelNoticeSink>, peer: SocketAddr) -> NoticeSink {
    match sink {
        Some(sink) => Arc::new(move |notice: &Notice| sink(peer, notice)),
        None => Arc::new(
            move |notice: &Notice| tracing::info!(target: "wsup::notice", %peer, "{notice:?}"),
        ),
    }
}
