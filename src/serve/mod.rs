//! `wsup serve`: a scripted websocket + token server for the demo, tests and benches.
//!
//! One listener serves two things:
//!
//! - `/oauth/token` (query ignored): a refresh-token endpoint. `POST` with the form body
//!   `grant_type=refresh_token&refresh_token=R` issues `tok-<n>` / `rt-<n>` and makes
//!   `tok-<n>` the current token, so every older token becomes stale. The refresh token
//!   `revoked` is answered 400 `{"error":"invalid_grant"}`.
//! - every other path: the websocket endpoint. Connection N runs step N of the [`Script`]
//!   and the last step repeats.
//!
//! The server parses the request head itself (bounded, see [`MAX_HEAD_LEN`]) because it
//! must pick the endpoint, check the token and possibly never answer (`hang`) before any
//! websocket handshake happens; the bytes it read are then replayed into
//! `tokio_tungstenite::accept_hdr_async`, which does the real handshake.
//!
//! Tokens and `Authorization` header values are never logged.
//!
//! One file per job: this one holds the options, the handle and the accept loop;
//! `script.rs` the script language, `steps.rs` what each step does, `shell.rs` the fake
//! shell, `token.rs` the token endpoint, `http.rs` request heads and responses, `tls.rs`
//! `wss://`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{debug, info};

use crate::shards::{spawn_connection, RuntimeShards};

mod http;
mod script;
mod shell;
mod steps;
mod tls;
mod token;
use self::http::*;
pub use script::{Script, Step};
use shell::*;
use steps::*;
pub use tls::tls_acceptor;
use tls::*;
use token::*;

/// The path of the token endpoint; every other path is the websocket endpoint.
pub const TOKEN_PATH: &str = "/oauth/token";

/// `expires_in` of issued tokens unless [`ServeOptions::token_ttl`] says otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Longest request head (request line and headers) the server accepts; longer ones get 431.
pub const MAX_HEAD_LEN: usize = 16 * 1024;

/// Longest token request body the server accepts; longer ones get 413.
pub const MAX_TOKEN_BODY_LEN: usize = 64 * 1024;

/// How many received payloads and request targets [`Stats`] keeps: enough for any test,
/// bounded so that a benchmark pushing millions of messages does not grow memory.
pub const RECORD_LIMIT: usize = 1024;

/// A client that opened a connection but has not sent a complete request by then is dropped.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a `close` step waits for the client's close reply before dropping the socket.
const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// Close frame payloads are at most 125 bytes, two of which are the code.
const MAX_CLOSE_REASON_LEN: usize = 123;

/// How to run the server.
#[derive(Clone)]
pub struct ServeOptions {
    /// Address to bind; port 0 picks a free port (see [`ServerHandle::addr`]).
    pub listen: SocketAddr,
    pub script: Script,
    /// When set, a websocket request must carry `Authorization: Bearer <current token>`,
    /// where the current token starts as this one and is replaced by every token the token
    /// endpoint issues. Requests that fail the check are answered 401 and do not consume a
    /// step, so the step they would have got goes to the next request that passes —
    /// except when the next step is `auth-close`, which takes any request and handles a
    /// stale token itself.
    pub require_token: Option<String>,
    /// `expires_in` of the tokens the token endpoint issues.
    pub token_ttl: Duration,
    /// When not empty, a websocket request must offer one of these subprotocols
    /// (`--subprotocol`), and the first of them it offers is chosen; other requests are
    /// answered 400 and do not consume a step. When empty, the first subprotocol the
    /// client offers is chosen.
    pub subprotocols: Vec<String>,
    /// Where connections run: these threads ([`crate::shards`]; `wsup serve` gives two
    /// per core), or (`None`) the runtime the server was started on.
    pub shards: Option<Arc<RuntimeShards>>,
}

impl fmt::Debug for ServeOptions {
    /// Leaves the token out: options end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeOptions")
            .field("listen", &self.listen)
            .field("script", &self.script)
            .field(
                "require_token",
                &self.require_token.as_ref().map(|_| "<redacted>"),
            )
            .field("token_ttl", &self.token_ttl)
            .field("subprotocols", &self.subprotocols)
            .field("shards", &self.shards)
            .finish()
    }
}

impl ServeOptions {
    /// Options with no token required and the default token lifetime.
    pub fn new(listen: SocketAddr, script: Script) -> Self {
        ServeOptions {
            listen,
            script,
            require_token: None,
            token_ttl: DEFAULT_TOKEN_TTL,
            subprotocols: Vec::new(),
            shards: None,
        }
    }
}

/// A snapshot of what the server has seen, for tests and the demo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests on the websocket path, one per TCP connection, `hang` ones and rejected
    /// ones included.
    pub connections: usize,
    /// Websocket handshakes answered 101.
    pub upgrades: usize,
    /// Websocket requests answered 401 (missing or stale token).
    pub unauthorized: usize,
    /// Websocket requests that carried an `Authorization` header.
    pub auth_headers_seen: usize,
    /// Requests on the token endpoint, successful or not.
    pub token_requests: usize,
    /// Tokens the token endpoint issued.
    pub tokens_issued: usize,
    /// Messages (text and binary) that echoing steps sent back.
    pub messages_echoed: usize,
    /// The first [`RECORD_LIMIT`] text payloads echoing steps received, in order.
    pub received: Vec<String>,
    /// The first [`RECORD_LIMIT`] websocket request targets (path and query), in order.
    pub request_targets: Vec<String>,
}

/// A running server. Dropping it stops the server too, without waiting.
pub struct ServerHandle {
    /// The address actually bound.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept_loop: JoinHandle<()>,
    /// Serving `wss://` (see [`start_tls`]).
    tls: bool,
}

impl fmt::Debug for ServerHandle {
    /// Only the address: the shared state holds the current token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// A snapshot of the counters and recordings so far.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// `ws://ADDR/` (`wss://` with TLS), the websocket endpoint.
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/", self.addr)
    }

    /// `http://ADDR/oauth/token` (`https://` with TLS), the token endpoint.
    pub fn token_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{TOKEN_PATH}", self.addr)
    }

    /// Issues a new token as `/oauth/token` would, without HTTP: the in-process demo's
    /// token source. Returns the access token and its lifetime.
    pub fn issue_token(&self) -> (String, Duration) {
        (
            self.shared.issue_token().access_token,
            self.shared.token_ttl,
        )
    }

    /// Stops accepting, drops every open connection and returns once all of them are gone.
    pub async fn shutdown(self) {
        // A send error means the accept loop is already gone; awaiting it is still right.
        let _ = self.stop.send(true);
        if let Err(error) = self.accept_loop.await {
            debug!(%error, "the accept loop did not end cleanly");
        }
    }
}

/// Binds `opts.listen`, starts serving in the background and returns at once.
pub async fn start(opts: ServeOptions) -> io::Result<ServerHandle> {
    start_with(opts, None).await
}

/// [`start`], serving `wss://` (and the token endpoint over `https://`): every accepted
/// connection does the TLS handshake first, bounded like reading the request.
pub async fn start_tls(opts: ServeOptions, tls: TlsAcceptor) -> io::Result<ServerHandle> {
    start_with(opts, Some(tls)).await
}

async fn start_with(opts: ServeOptions, tls: Option<TlsAcceptor>) -> io::Result<ServerHandle> {
    opts.script
        .validate()
        .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
    let listener = TcpListener::bind(opts.listen).await?;
    let addr = listener.local_addr()?;
    let shards = opts.shards.clone();
    let shared = Arc::new(Shared::new(opts));
    let (stop, stop_requested) = watch::channel(false);
    let serves_tls = tls.is_some();
    let accept_loop = tokio::spawn(accept_loop(
        listener,
        Arc::clone(&shared),
        stop_requested,
        tls,
        shards,
    ));
    info!(%addr, script = %shared.script, tls = serves_tls, "serving");
    Ok(ServerHandle {
        addr,
        shared,
        stop,
        accept_loop,
        tls: serves_tls,
    })
}

/// State shared by the accept loop, every connection task and the handle. No `Debug`: it
/// holds the current token.
struct Shared {
    script: Script,
    require_token: bool,
    token_ttl: Duration,
    /// See [`ServeOptions::subprotocols`].
    subprotocols: Vec<String>,
    /// Base of the `created_at` of `logs` lines, fixed so that replays are identical.
    logs_epoch_ms: u64,
    state: Mutex<State>,
}

struct State {
    /// Index of the step the next admitted websocket request gets.
    next_step: usize,
    /// `None` only while no token was required and none was issued yet.
    current_token: Option<String>,
    stats: Stats,
}

/// What a websocket request gets, decided in one critical section so that concurrent
/// requests each consume their own step.
enum Admission {
    Unauthorized,
    Run {
        /// 1-based count of websocket requests, refused ones included.
        connection: usize,
        /// 1-based index of the step in the script (before the last step repeats).
        step_number: usize,
        step: Step,
        token_is_current: bool,
    },
}

impl Shared {
    fn new(opts: ServeOptions) -> Self {
        let logs_epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        Shared {
            script: opts.script,
            require_token: opts.require_token.is_some(),
            token_ttl: opts.token_ttl,
            subprotocols: opts.subprotocols,
            logs_epoch_ms,
            state: Mutex::new(State {
                next_step: 0,
                current_token: opts.require_token,
                stats: Stats::default(),
            }),
        }
    }

    /// The state stays usable even if a task panicked while holding the lock: every update
    /// under it is a single assignment or push.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn admit(&self, head: &RequestHead) -> Admission {
        let presented = head.bearer_token();
        let mut state = self.lock();
        let stats = &mut state.stats;
        stats.connections += 1;
        if head.header("authorization").is_some() {
            stats.auth_headers_seen += 1;
        }
        if stats.request_targets.len() < RECORD_LIMIT {
            stats.request_targets.push(head.target.clone());
        }
        let token_is_current = match &state.current_token {
            None => true,
            Some(current) => presented == Some(current.as_str()),
        };
        let step = self.script.step(state.next_step);
        // `auth-close` answers stale tokens itself, after upgrading.
        if self.require_token && !token_is_current && *step != Step::AuthClose {
            state.stats.unauthorized += 1;
            return Admission::Unauthorized;
        }
        let step = step.clone();
        state.next_step += 1;
        Admission::Run {
            connection: state.stats.connections,
            step_number: state.next_step.min(self.script.0.len()),
            step,
            token_is_current,
        }
    }

    fn record_upgrade(&self) {
        self.lock().stats.upgrades += 1;
    }

    fn record_echo(&self, message: &Message) {
        let mut state = self.lock();
        let stats = &mut state.stats;
        stats.messages_echoed += 1;
        if let Message::Text(text) = message {
            if stats.received.len() < RECORD_LIMIT {
                stats.received.push(text.as_str().to_owned());
            }
        }
    }

    fn record_token_request(&self) {
        self.lock().stats.token_requests += 1;
    }

    /// Makes the current token stale without issuing a new one.
    fn expire_token(&self) {
        let mut state = self.lock();
        let number = state.stats.tokens_issued;
        state.current_token = Some(format!("expired-{number}"));
    }

    /// Issues `tok-<n>`/`rt-<n>` and makes `tok-<n>` the only token accepted from now on.
    fn issue_token(&self) -> TokenGrant {
        let mut state = self.lock();
        state.stats.tokens_issued += 1;
        let number = state.stats.tokens_issued;
        let access_token = format!("tok-{number}");
        state.current_token = Some(access_token.clone());
        TokenGrant {
            number,
            access_token,
            refresh_token: format!("rt-{number}"),
        }
    }
}

struct TokenGrant {
    number: usize,
    access_token: String,
    refresh_token: String,
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop_requested: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
    shards: Option<Arc<RuntimeShards>>,
) {
    // Connection tasks live in the set so that shutdown can drop them all and wait for it.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            // Err means the handle was dropped: stop as well.
            _ = stop_requested.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (tls, shared) = (tls.clone(), Arc::clone(&shared));
                    spawn_connection(shards.as_deref(), &mut connections, stream, move |stream| {
                        handle_connection(stream, peer, shared, tls)
                    });
                }
                Err(error) => {
                    // Typically out of file descriptors: pause instead of spinning on it.
                    debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = finished {
                    debug!(%error, "a connection task failed");
                }
            }
        }
    }
    drop(listener);
    connections.shutdown().await;
    debug!("stopped serving");
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    WebSocket(#[from] tungstenite::Error),
    #[error("timed out reading the request")]
    ReadTimeout,
}

impl From<tokio::time::error::Elapsed> for ConnectionError {
    fn from(_: tokio::time::error::Elapsed) -> Self {
        ConnectionError::ReadTimeout
    }
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
) {
    let stream = match tls {
        None => ServerStream::Tcp(stream),
        Some(tls) => match timeout(REQUEST_READ_TIMEOUT, tls.accept(stream)).await {
            Ok(Ok(stream)) => ServerStream::Tls(Box::new(stream)),
            Ok(Err(error)) => return debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => return debug!(%peer, "timed out in the TLS handshake"),
        },
    };
    match serve_connection(stream, &shared).await {
        Ok(()) => debug!(%peer, "connection done"),
        Err(error) => debug!(%peer, %error, "connection ended with an error"),
    }
}

async fn serve_connection(
    mut stream: ServerStream,
    shared: &Arc<Shared>,
) -> Result<(), ConnectionError> {
    let head = match timeout(REQUEST_READ_TIMEOUT, read_request_head(&mut stream)).await? {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(()),
        Err(HeadError::Io(error)) => return Err(error.into()),
        Err(HeadError::Truncated) => return Ok(()),
        Err(HeadError::TooLarge) => {
            let body = "request head too large\n";
            return Ok(write_response(&mut stream, 431, &[], "text/plain", body).await?);
        }
        Err(HeadError::Malformed(why)) => {
            return Ok(
                write_response(&mut stream, 400, &[], "text/plain", &format!("{why}\n")).await?,
            );
        }
    };
    if head.path() == TOKEN_PATH {
        return serve_token_request(stream, head, shared).await;
    }
    let offered = head.header("sec-websocket-protocol");
    if !shared.subprotocols.is_empty()
        && chosen_subprotocol(offered, &shared.subprotocols).is_none()
    {
        debug!(
            offered,
            "websocket request without a required subprotocol: 400"
        );
        let body = format!(
            "this server requires the subprotocol {}\n",
            shared.subprotocols.join(" or ")
        );
        return Ok(write_response(&mut stream, 400, &[], "text/plain", &body).await?);
    }
    match shared.admit(&head) {
        Admission::Unauthorized => {
            debug!("websocket request without the current token: 401");
            let headers = [("WWW-Authenticate", "Bearer")];
            let body = "missing or stale bearer token\n";
            Ok(write_response(&mut stream, 401, &headers, "text/plain", body).await?)
        }
        Admission::Run {
            connection,
            step_number,
            step,
            token_is_current,
        } => {
            info!(connection, step_number, %step, "websocket request");
            run_step(
                stream,
                head.bytes_read,
                &head.target,
                step,
                token_is_current,
                shared,
            )
            .await
        }
    }
}

async fn run_step(
    mut stream: ServerStream,
    bytes_read: BytesMut,
    target: &str,
    step: Step,
    token_is_current: bool,
    shared: &Arc<Shared>,
) -> Result<(), ConnectionError> {
    match step {
        Step::Http {
            status,
            retry_after,
        } => {
            let retry_after_header = retry_after.as_deref().map(|text| ("Retry-After", text));
            let headers: Vec<_> = retry_after_header.into_iter().collect();
            let body = format!("scripted response {status}\n");
            Ok(write_response(&mut stream, status, &headers, "text/plain", &body).await?)
        }
        Step::Hang => hold_open(stream).await,
        step => {
            let read_buffer = match step {
                Step::Forward(_) => FORWARD_READ_BUFFER,
                _ => SERVER_READ_BUFFER,
            };
            let ws = upgrade(stream, bytes_read, shared, read_buffer).await?;
            match step {
                Step::Close { code, reason } => close_with(ws, code, reason).await,
                Step::Silent => hold_open(ws).await,
                Step::Logs { lines, close } => {
                    send_log_lines(ws, lines, close, shared.logs_epoch_ms).await
                }
                Step::Forward(target) => forward(ws, &target).await,
                Step::AuthClose if !token_is_current => {
                    close_with(ws, 1008, "token expired".to_owned()).await
                }
                Step::ExpireToken => {
                    shared.expire_token();
                    close_with(ws, 1008, "token expired".to_owned()).await
                }
                Step::Shell => fake_shell(ws, target, shared).await,
                Step::Echo | Step::AuthClose => echo(ws, shared).await,
                Step::Http { .. } | Step::Hang => unreachable!("answered without upgrading"),
            }
        }
    }
}
