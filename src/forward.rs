//! `wsup port-forward`'s listener: one supervised websocket per accepted TCP connection.
//!
//! [`Forwarder`] accepts, starts a [`Supervisor`] per connection running a
//! [`ForwardSession`] (all sharing one [`Transport`] and one [`Credentials`](crate::credentials::Credentials), so a
//! rejected token causes one refresh however many tunnels hit it), survives every
//! tunnel's failure and, on SIGINT/SIGTERM, stops accepting, lets every tunnel close and
//! returns the signal. It is not a session: it runs supervisors, as the CLI does.
//!
//! It makes no reconnect decision either: each tunnel follows the config it is given.
//! `wsup port-forward` builds port-forward's policy into it
//! ([`crate::cli::tunnel_reconnect_policy`]: no redial once bytes flow, a few dial
//! retries).

use crate::driver::{signal_arrives, NoticeSink, Supervisor};
use crate::machine::{Notice, Outcome, Sig};
use crate::session::forward::ForwardSession;
use crate::shards::{spawn_connection, RuntimeShards};
use crate::transport::{Transport, UsageError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Tunnels open at once unless [`Forwarder::max_tunnels`] says otherwise.
pub const DEFAULT_MAX_TUNNELS: u32 = 256;

/// A tunnel's websocket read buffer, at least (the default for other sessions is
/// [`crate::transport::DEFAULT_READ_BUFFER_SIZE`], 16 KiB). tungstenite never reads
/// more than its read buffer at once and zero-fills it before every read, so with
/// 16 KiB a 64 KiB frame took four `recv`s. With 32 busy tunnels downstream,
/// `port-forward` spent 620–860 ms of CPU per GiB with 16 KiB, 530–690 with 64 KiB,
/// 430–570 with 128 KiB and 430–570 with 256 KiB (interleaved runs, load average 5).
/// The cost: an idle tunnel keeps 128 KiB resident instead of 16 (tungstenite's zero
/// fill touches all of it), 32 MiB for the default 256 tunnels; the 10,000 idle
/// supervised connections of other sessions keep their 16 KiB.
pub const TUNNEL_READ_BUFFER: usize = 128 << 10;

/// After a signal, how long the listener waits for its tunnels to close.
const TUNNELS_CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// After a failed `accept` (typically out of file descriptors), pause this long rather
/// than spin on the error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Called when a tunnel's supervisor stops, with the TCP peer and how it ended.
pub type TunnelEndSink = Arc<dyn Fn(SocketAddr, &Outcome) + Send + Sync>;

/// Notices of one tunnel, with its TCP peer.
pub type TunnelNoticeSink = Arc<dyn Fn(SocketAddr, &Notice) + Send + Sync>;

/// Called once, the first time the tunnel limit is reached, with the limit.
pub type TunnelLimitSink = Arc<dyn Fn(usize) + Send + Sync>;

/// The port-forward listener: a supervised tunnel per accepted connection.
///
/// Supervision settings (credentials, signals, notices, transport, jitter) are the
/// [`Supervisor`]'s own builder: the forwarder takes one as a template and runs a clone
/// of it per tunnel. Only what is about the listener is set here.
///
/// ```no_run
/// # async fn demo(
/// #     mut config: wsup::Config,
/// #     creds: std::sync::Arc<dyn wsup::credentials::Credentials>,
/// # ) -> std::io::Result<()> {
/// // A byte stream cannot be resumed on a new websocket: the CLI's policy.
/// wsup::cli::tunnel_reconnect_policy(&mut config.machine);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let tunnels = wsup::Supervisor::new(config).credentials(creds);
/// let signal = wsup::forward::Forwarder::new(listener, tunnels)
///     .expect("valid transport settings")
///     .max_tunnels(16)
///     .run()
///     .await;
/// std::process::exit(wsup::Outcome::Signal(signal).exit_code().into());
/// # }
/// ```
pub struct Forwarder {
    listener: TcpListener,
    /// Cloned for every tunnel.
    template: Supervisor,
    /// The template's, built once by [`Forwarder::new`].
    transport: Transport,
    notices: Option<TunnelNoticeSink>,
    on_tunnel_end: Option<TunnelEndSink>,
    max_tunnels: usize,
    on_tunnel_limit: Option<TunnelLimitSink>,
    /// Where tunnels run: these threads, or (`None`) the runtime `run` is awaited on.
    shards: Option<Arc<RuntimeShards>>,
}

impl Forwarder {
    /// Every tunnel runs a clone of `template`: its config (reconnect policy included:
    /// for tunnels that must not redial once bytes flow, build it with
    /// [`crate::cli::tunnel_reconnect_policy`], as `wsup port-forward` does), and one
    /// shared transport and credentials, so refreshes are single-flight across tunnels.
    /// The template's signal source also stops the listener; without one, the listener
    /// reacts to no signal and installs no handler.
    ///
    /// Tunnels read the websocket with at least a [`TUNNEL_READ_BUFFER`] (unless the
    /// template was given a built transport).
    ///
    /// Invalid transport settings come back as `Err` before anything is accepted.
    pub fn new(listener: TcpListener, mut template: Supervisor) -> Result<Self, UsageError> {
        template.read_buffer_at_least(TUNNEL_READ_BUFFER);
        let transport = template.shared_transport()?;
        Ok(Forwarder {
            listener,
            template,
            transport,
            notices: None,
            on_tunnel_end: None,
            max_tunnels: DEFAULT_MAX_TUNNELS as usize,
            on_tunnel_limit: None,
            shards: None,
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

    /// Every tunnel's notices with its TCP peer, instead of the template's notice sink.
    /// With neither, notices are logged with the peer.
    pub fn on_tunnel_notice(mut self, sink: TunnelNoticeSink) -> Self {
        self.notices = Some(sink);
        self
    }

    pub fn on_tunnel_end(mut self, sink: TunnelEndSink) -> Self {
        self.on_tunnel_end = Some(sink);
        self
    }

    /// Runs every tunnel on the least-loaded of `shards` (each tunnel stays on one
    /// thread for its life) instead of on the runtime `run` is awaited on. `wsup
    /// port-forward` gives two shards per core ([`RuntimeShards::per_core`]).
    pub fn spread_over(mut self, shards: Arc<RuntimeShards>) -> Self {
        self.shards = Some(shards);
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
            template,
            transport,
            notices,
            on_tunnel_end,
            max_tunnels,
            on_tunnel_limit,
            shards,
        } = self;
        // The template's own sink, if it has one and no per-peer sink was given.
        let notices = match notices {
            None if template.has_notice_sink() => None,
            notices => Some(notices.unwrap_or_else(|| Arc::new(log_tunnel_notice))),
        };
        let mut on_tunnel_limit = Some(on_tunnel_limit.unwrap_or_else(|| {
            Arc::new(|max| {
                tracing::warn!(target: "wsup::forward", max, "tunnel limit reached: further connections wait")
            })
        }));
        let mut signals = match template.signal_source() {
            Some(signals) => signals.clone(),
            None => tokio::sync::watch::channel(None).1,
        };
        let mut tunnels = JoinSet::new();
        let sig = loop {
            tokio::select! {
                biased;
                // A signal source that is gone never fires: only the process's end stops us.
                sig = signal_arrives(&mut signals) => break sig,
                Some(_) = tunnels.join_next(), if !tunnels.is_empty() => {}
                accepted = listener.accept(), if tunnels.len() < max_tunnels => match accepted {
                    Ok((tcp, peer)) => {
                        let mut supervisor = template.clone();
                        if let Some(sink) = &notices {
                            supervisor = supervisor.on_notice(tunnel_notices(sink.clone(), peer));
                        }
                        let (transport, on_end) = (transport.clone(), on_tunnel_end.clone());
                        spawn_connection(shards.as_deref(), &mut tunnels, tcp, move |tcp| {
                            tunnel(supervisor, transport, tcp, peer, on_end)
                        });
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
                            sig = signal_arrives(&mut signals) => break sig,
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
fn tunnel_notices(sink: TunnelNoticeSink, peer: SocketAddr) -> NoticeSink {
    Arc::new(move |notice: &Notice| sink(peer, notice))
}

/// Where a tunnel's notices go when nobody asked for them.
fn log_tunnel_notice(peer: SocketAddr, notice: &Notice) {
    tracing::info!(target: "wsup::notice", %peer, "{notice:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> crate::Config {
        crate::Config::new("ws://127.0.0.1:9/".parse().unwrap())
    }

    #[tokio::test]
    async fn tunnels_read_with_the_larger_buffer_unless_the_config_asks_for_more() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let forwarder = Forwarder::new(listener, Supervisor::new(config()))
            .expect("default settings are valid");
        assert_eq!(
            forwarder.transport.ws_config().read_buffer_size,
            TUNNEL_READ_BUFFER
        );

        let mut config = config();
        config.transport.read_buffer_size = 4 * TUNNEL_READ_BUFFER;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let forwarder = Forwarder::new(listener, Supervisor::new(config)).unwrap();
        assert_eq!(
            forwarder.transport.ws_config().read_buffer_size,
            4 * TUNNEL_READ_BUFFER
        );
    }
}
