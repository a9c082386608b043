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

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info};

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

/// What the scripted server does with the websocket connection it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `http:STATUS[:RETRY_AFTER]`: answer the upgrade request with this status (200–599, not
    /// 101), a `Retry-After` header carrying the text verbatim when given, and a short body.
    Http {
        status: u16,
        retry_after: Option<String>,
    },
    /// `close:CODE[:REASON]`: upgrade, send a close frame, wait up to 1 s for the reply.
    /// Two codes that never appear on the wire are acted out instead: `close:1005` sends a
    /// close frame without a status code, `close:1006` drops the TCP connection without
    /// any close frame.
    Close { code: u16, reason: String },
    /// `echo`: upgrade and send every text and binary message back until the client closes.
    Echo,
    /// `hang`: accept the TCP connection and the request, never answer anything.
    Hang,
    /// `silent`: upgrade, then never read or write again (no pongs): a half-open connection.
    Silent,
    /// `logs:N[:CODE]`: upgrade, send N JSON log lines `{created_at, message, pod_name}`
    /// (`message` is `line K`, `pod_name` is `pod-0`), then keep the connection open
    /// (answering pings and a close, sending nothing more), or, with a close code, close
    /// with it (`1005`/`1006` acted out as in `close`). `created_at` is the server's start
    /// time plus the line number in milliseconds, so every connection replays exactly the
    /// same history: `logs:3:1012,logs:5` is a log stream that restarts and continues.
    Logs { lines: u32, close: Option<u16> },
    /// `shell`: a line-echoing fake shell. Greets with the size from the request's query,
    /// `[tty CxR]` (from `tty_width`/`tty_height`, or `[tty unknown]`), and a prompt `$ `;
    /// echoes binary input as a terminal in cooked mode would (backspace erases, other
    /// control bytes shown as `^X`); a line ended by `\r` or `\n` is answered
    /// `you typed: LINE` and a new prompt; the byte 0x03 (Ctrl+C) is answered `^C` and a
    /// new prompt; the text frame `{"type":"resize","cols":C,"rows":R}` is answered
    /// `[resized to CxR]`. Other text frames are taken as typed input. The line `exit`
    /// ends the session: `logout`, then close 1000.
    Shell,
    /// `forward:HOST:PORT`: open a TCP connection to HOST:PORT, upgrade, then relay: binary
    /// (and text) frames are written to the TCP connection, what it sends comes back as
    /// binary frames. The target closing ends the websocket with 1000; the client closing
    /// the websocket closes the TCP connection. If the target cannot be reached, upgrade and
    /// close 1011 "forward target unreachable".
    Forward(String),
    /// `auth-close`: when the presented bearer token is not the current one (or missing),
    /// upgrade and close 1008 "token expired" instead of answering 401; otherwise `echo`.
    /// This is the "upgrades, then rejects the credentials" server.
    AuthClose,
    /// `expire-token`: upgrade, make the current token stale (as if it had just expired on
    /// the server's side) and close 1008 "token expired". Only a refreshed token is
    /// accepted afterwards: the scripted version of a token expiring mid-session.
    ExpireToken,
}

/// The steps that successive websocket connections get: connection N gets step N, and the
/// last step repeats for every later connection.
///
/// Text form (see [`FromStr`]): steps separated by commas, e.g.
/// `close:1011:No shell-agent listening,http:503:2,echo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script(pub Vec<Step>);

impl Script {
    /// The step for the connection with this zero-based index.
    ///
    /// Panics only if the script is empty, which [`FromStr`] and [`start`] reject.
    pub fn step(&self, index: usize) -> &Step {
        let last = self
            .0
            .len()
            .checked_sub(1)
            .expect("a script has at least one step");
        &self.0[index.min(last)]
    }

    /// Checks what parsing checks, for scripts built in code.
    pub fn validate(&self) -> Result<(), String> {
        if self.0.is_empty() {
            return Err("the script has no steps".to_owned());
        }
        for (index, step) in self.0.iter().enumerate() {
            step.validate()
                .map_err(|why| format!("invalid step {} ({step}): {why}", index + 1))?;
        }
        Ok(())
    }
}

impl FromStr for Script {
    type Err = String;

    /// Parses `STEP,STEP,...`. Whitespace around a step is ignored. A close reason may
    /// contain colons but not commas. The one comma that may appear inside a step is the
    /// one of an HTTP-date in `http:STATUS:RETRY_AFTER` (`http:503:Wed, 21 Oct 2015 07:28:00
    /// GMT`): a piece starting with a space and a digit right after an `http` step whose
    /// text ends in a day name continues that step.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut pieces: Vec<String> = Vec::new();
        for piece in text.split(',') {
            match pieces.last_mut() {
                Some(previous) if continues_http_date(previous, piece) => {
                    previous.push(',');
                    previous.push_str(piece);
                }
                _ => pieces.push(piece.to_owned()),
            }
        }
        let steps = pieces
            .iter()
            .enumerate()
            .map(|(index, piece)| {
                let piece = piece.trim();
                piece
                    .parse::<Step>()
                    .map_err(|why| format!("invalid step {} ({piece:?}): {why}", index + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Script(steps))
    }
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, step) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{step}")?;
        }
        Ok(())
    }
}

/// Whether `piece` is the rest of an IMF-fixdate (`Wed, 21 Oct ...`) that the comma split
/// away from the `http:STATUS:Wed` step before it.
fn continues_http_date(previous: &str, piece: &str) -> bool {
    const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let previous = previous.trim_start();
    let starts_with_space_digit =
        piece.starts_with(' ') && piece.trim_start().starts_with(|c: char| c.is_ascii_digit());
    starts_with_space_digit
        && previous.starts_with("http:")
        && previous
            .rsplit(':')
            .next()
            .is_some_and(|day| DAY_NAMES.contains(&day))
}

const STEP_SYNTAX: &str = "expected http:STATUS[:RETRY_AFTER], close:CODE[:REASON], echo, \
                           hang, silent, logs:N[:CODE], shell, forward:HOST:PORT, auth-close or expire-token";

impl FromStr for Step {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, argument) = match text.split_once(':') {
            Some((name, argument)) => (name, Some(argument)),
            None => (text, None),
        };
        let step = match (name, argument) {
            ("http", Some(argument)) => {
                let (status, retry_after) = match argument.split_once(':') {
                    Some((status, retry_after)) => (status, Some(retry_after.to_owned())),
                    None => (argument, None),
                };
                let status = status
                    .parse::<u16>()
                    .map_err(|_| format!("HTTP status {status:?} is not a number"))?;
                Step::Http {
                    status,
                    retry_after,
                }
            }
            ("close", Some(argument)) => {
                let (code, reason) = argument.split_once(':').unwrap_or((argument, ""));
                let code = code
                    .parse::<u16>()
                    .map_err(|_| format!("close code {code:?} is not a number"))?;
                Step::Close {
                    code,
                    reason: reason.to_owned(),
                }
            }
            ("logs", Some(argument)) => {
                let (count, close) = match argument.split_once(':') {
                    Some((count, code)) => (
                        count,
                        Some(
                            code.parse::<u16>()
                                .map_err(|_| format!("close code {code:?} is not a number"))?,
                        ),
                    ),
                    None => (argument, None),
                };
                Step::Logs {
                    lines: count.parse().map_err(|_| {
                        format!("line count {count:?} is not a non-negative number")
                    })?,
                    close,
                }
            }
            ("forward", Some(target)) => Step::Forward(target.to_owned()),
            ("http" | "close" | "logs" | "forward", None) => {
                return Err(format!("`{name}` needs an argument; {STEP_SYNTAX}"))
            }
            ("echo", None) => Step::Echo,
            ("hang", None) => Step::Hang,
            ("silent", None) => Step::Silent,
            ("shell", None) => Step::Shell,
            ("auth-close", None) => Step::AuthClose,
            ("expire-token", None) => Step::ExpireToken,
            ("echo" | "hang" | "silent" | "shell" | "auth-close" | "expire-token", Some(_)) => {
                return Err(format!("`{name}` takes no argument"))
            }
            ("", _) => return Err(format!("empty step; {STEP_SYNTAX}")),
            _ => return Err(format!("unknown step `{name}`; {STEP_SYNTAX}")),
        };
        step.validate()?;
        Ok(step)
    }
}

impl Step {
    /// The invariants the server relies on: statuses it can send, close codes that exist,
    /// header text that cannot inject headers, a forward target with a port.
    fn validate(&self) -> Result<(), String> {
        match self {
            Step::Http {
                status,
                retry_after,
            } => {
                if !(200..=599).contains(status) {
                    return Err(format!("HTTP status {status} is not between 200 and 599"));
                }
                if let Some(retry_after) = retry_after {
                    if retry_after.is_empty() {
                        return Err("Retry-After is empty".to_owned());
                    }
                    if retry_after.chars().any(|c| c.is_control()) {
                        return Err("Retry-After contains a control character".to_owned());
                    }
                }
            }
            Step::Close { code, reason } => {
                if !(1000..=4999).contains(code) {
                    return Err(format!("close code {code} is not between 1000 and 4999"));
                }
                if matches!(code, 1005 | 1006) && !reason.is_empty() {
                    return Err(format!(
                        "close code {code} sends no close reason, so it cannot have one"
                    ));
                }
                if reason.len() > MAX_CLOSE_REASON_LEN {
                    return Err(format!(
                        "close reason is {} bytes, at most {MAX_CLOSE_REASON_LEN} fit in a close frame",
                        reason.len()
                    ));
                }
            }
            Step::Logs {
                close: Some(code), ..
            } => {
                if !(1000..=4999).contains(code) {
                    return Err(format!("close code {code} is not between 1000 and 4999"));
                }
            }
            Step::Forward(target) => {
                let (host, port) = target
                    .rsplit_once(':')
                    .ok_or_else(|| format!("forward target {target:?} is not HOST:PORT"))?;
                if host.is_empty() {
                    return Err(format!("forward target {target:?} has no host"));
                }
                port.parse::<u16>()
                    .map_err(|_| format!("forward port {port:?} is not a port number"))?;
            }
            Step::Echo
            | Step::Hang
            | Step::Silent
            | Step::Logs { close: None, .. }
            | Step::Shell
            | Step::AuthClose
            | Step::ExpireToken => {}
        }
        Ok(())
    }
}

impl fmt::Display for Step {
    /// The script syntax, so that `step.to_string().parse()` gives the step back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Http {
                status,
                retry_after: None,
            } => write!(f, "http:{status}"),
            Step::Http {
                status,
                retry_after: Some(retry_after),
            } => write!(f, "http:{status}:{retry_after}"),
            Step::Close { code, reason } if reason.is_empty() => write!(f, "close:{code}"),
            Step::Close { code, reason } => write!(f, "close:{code}:{reason}"),
            Step::Echo => f.write_str("echo"),
            Step::Hang => f.write_str("hang"),
            Step::Silent => f.write_str("silent"),
            Step::Logs { lines, close: None } => write!(f, "logs:{lines}"),
            Step::Logs {
                lines,
                close: Some(code),
            } => write!(f, "logs:{lines}:{code}"),
            Step::Shell => f.write_str("shell"),
            Step::Forward(target) => write!(f, "forward:{target}"),
            Step::AuthClose => f.write_str("auth-close"),
            Step::ExpireToken => f.write_str("expire-token"),
        }
    }
}

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

/// A TLS acceptor from a PEM certificate chain (the server's certificate first) and a
/// PEM private key (`wsup serve --tls-cert FILE --tls-key FILE`). `Err` says which file
/// is wrong and why.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor, String> {
    let cert_pem = std::fs::read(cert)
        .map_err(|e| format!("--tls-cert {}: cannot read it: {e}", cert.display()))?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: not a valid PEM file: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key_pem = std::fs::read(key)
        .map_err(|e| format!("--tls-key {}: cannot read it: {e}", key.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("--tls-key {}: no usable private key: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn start_with(opts: ServeOptions, tls: Option<TlsAcceptor>) -> io::Result<ServerHandle> {
    opts.script
        .validate()
        .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
    let listener = TcpListener::bind(opts.listen).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared::new(opts));
    let (stop, stop_requested) = watch::channel(false);
    let serves_tls = tls.is_some();
    let accept_loop = tokio::spawn(accept_loop(
        listener,
        Arc::clone(&shared),
        stop_requested,
        tls,
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
                    let tls = tls.clone();
                    connections.spawn(handle_connection(stream, peer, Arc::clone(&shared), tls));
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
            let ws = upgrade(stream, bytes_read, shared).await?;
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

type ServerSocket = WebSocketStream<Replayed<ServerStream>>;

/// Runs the websocket handshake over the request bytes already read plus the rest of the
/// stream. Offers back the first subprotocol the client asked for, because a client that
/// asks for one fails the handshake when the answer has none.
#[allow(clippy::result_large_err)] // the callback's error type is tungstenite's
async fn upgrade(
    stream: ServerStream,
    bytes_read: BytesMut,
    shared: &Arc<Shared>,
) -> Result<ServerSocket, tungstenite::Error> {
    let shared = Arc::clone(shared);
    let callback =
        move |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
            let first_protocol = request
                .headers()
                .get(SEC_WEBSOCKET_PROTOCOL)
                .and_then(|offered| offered.to_str().ok())
                .and_then(|offered| offered.split(',').next())
                .and_then(|protocol| protocol.trim().parse().ok());
            if let Some(protocol) = first_protocol {
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
    // A small read buffer: tungstenite zero-fills all of it per connection, and the
    // benchmarks hold 10,000 idle connections against this server.
    let config = tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(SERVER_READ_BUFFER)
        .max_message_size(Some(crate::transport::MAX_MESSAGE_SIZE))
        .max_frame_size(Some(crate::transport::MAX_MESSAGE_SIZE));
    tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
}

/// Per-connection read buffer of the scripted server.
const SERVER_READ_BUFFER: usize = 16 * 1024;

/// Keeps the connection open, unread and unanswered, until shutdown drops the task.
async fn hold_open<T>(_connection: T) -> Result<(), ConnectionError> {
    std::future::pending().await
}

async fn close_with(
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

async fn echo(mut ws: ServerSocket, shared: &Shared) -> Result<(), ConnectionError> {
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

/// The `shell` step; see [`Step::Shell`].
async fn fake_shell(
    mut ws: ServerSocket,
    target: &str,
    shared: &Shared,
) -> Result<(), ConnectionError> {
    let greeting = match tty_size_in(target) {
        Some((cols, rows)) => format!("[tty {cols}x{rows}]\r\n$ "),
        None => "[tty unknown]\r\n$ ".to_owned(),
    };
    ws.send(Message::binary(greeting.into_bytes())).await?;
    let mut line = LineEditor::default();
    // tungstenite answers pings and the client's close by itself while we read.
    while let Some(message) = ws.next().await {
        let message = message?;
        let reply = match &message {
            Message::Binary(bytes) => line.feed(bytes),
            Message::Text(text) => match resize_in(text) {
                Some((cols, rows)) => format!("\r\n[resized to {cols}x{rows}]\r\n$ ").into_bytes(),
                None => line.feed(text.as_bytes()),
            },
            _ => continue,
        };
        shared.record_echo(&message);
        if !reply.is_empty() {
            ws.send(Message::binary(reply)).await?;
        }
        if line.exited {
            return close_with(ws, 1000, String::new()).await;
        }
    }
    Ok(())
}

/// `tty_width` and `tty_height` from a request target's query, when both are numbers.
fn tty_size_in(target: &str) -> Option<(u16, u16)> {
    let (_, query) = target.split_once('?')?;
    let field = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.parse::<u16>().ok())
    };
    Some((field("tty_width")?, field("tty_height")?))
}

/// The size in a `{"type":"resize","cols":C,"rows":R}` text frame.
fn resize_in(text: &str) -> Option<(u16, u16)> {
    #[derive(serde::Deserialize)]
    struct Resize {
        #[serde(rename = "type")]
        kind: String,
        cols: u16,
        rows: u16,
    }
    let resize: Resize = serde_json::from_str(text).ok()?;
    (resize.kind == "resize").then_some((resize.cols, resize.rows))
}

/// The fake shell's line discipline: what a terminal in cooked mode would echo.
#[derive(Default)]
struct LineEditor {
    line: Vec<u8>,
    /// The previous byte was `\r`: a `\n` right after it ends no second line.
    after_cr: bool,
    /// The line `exit` was entered: the rest of the input is ignored.
    exited: bool,
}

impl LineEditor {
    /// Takes typed bytes, returns what the terminal shows.
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut reply = Vec::new();
        for &byte in bytes {
            if self.exited {
                break;
            }
            let after_cr = std::mem::replace(&mut self.after_cr, byte == b'\r');
            match byte {
                b'\n' if after_cr => {}
                b'\r' | b'\n' if self.line == b"exit" => {
                    reply.extend_from_slice(b"\r\nlogout\r\n");
                    self.exited = true;
                }
                b'\r' | b'\n' => {
                    reply.extend_from_slice(b"\r\nyou typed: ");
                    for &typed in &self.line {
                        show_byte(typed, &mut reply);
                    }
                    reply.extend_from_slice(b"\r\n$ ");
                    self.line.clear();
                }
                0x03 => {
                    reply.extend_from_slice(b"^C\r\n$ ");
                    self.line.clear();
                }
                0x7f | 0x08 => {
                    if let Some(erased) = self.line.pop() {
                        let width = if erased < 0x20 { 2 } else { 1 };
                        for _ in 0..width {
                            reply.extend_from_slice(b"\x08 \x08");
                        }
                    }
                }
                _ => {
                    self.line.push(byte);
                    show_byte(byte, &mut reply);
                }
            }
        }
        reply
    }
}

/// A byte as a terminal with `echoctl` shows it: control bytes as `^X`.
fn show_byte(byte: u8, out: &mut Vec<u8>) {
    if byte < 0x20 {
        out.extend_from_slice(&[b'^', byte + 0x40]);
    } else {
        out.push(byte);
    }
}

async fn send_log_lines(
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
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read from a `forward` target at once: each read becomes one binary frame.
const FORWARD_CHUNK: usize = 64 * 1024;

/// Relays between the websocket and a new TCP connection to `target`, both directions at
/// once (one direction waiting on the other would deadlock against an echoing target).
async fn forward(ws: ServerSocket, target: &str) -> Result<(), ConnectionError> {
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

// ---------------------------------------------------------------------------------------
// Token endpoint

async fn serve_token_request(
    mut stream: ServerStream,
    head: RequestHead,
    shared: &Shared,
) -> Result<(), ConnectionError> {
    shared.record_token_request();
    let reply = match read_token_request_body(&mut stream, &head).await? {
        Ok(body) => exchange_refresh_token(&body, shared),
        Err(rejection) => rejection,
    };
    let json = reply.body.to_string();
    let headers = [("Cache-Control", "no-store")];
    Ok(write_response(
        &mut stream,
        reply.status,
        &headers,
        "application/json",
        &json,
    )
    .await?)
}

struct TokenReply {
    status: u16,
    body: serde_json::Value,
}

impl TokenReply {
    fn error(status: u16, code: &str) -> Self {
        TokenReply {
            status,
            body: serde_json::json!({ "error": code }),
        }
    }
}

/// The request body, or the reply that rejects the request before the body matters.
async fn read_token_request_body(
    stream: &mut ServerStream,
    head: &RequestHead,
) -> Result<Result<Vec<u8>, TokenReply>, ConnectionError> {
    if head.method != "POST" {
        return Ok(Err(TokenReply::error(405, "invalid_request")));
    }
    if head.header("transfer-encoding").is_some() {
        return Ok(Err(TokenReply::error(400, "invalid_request")));
    }
    let Some(Ok(length)) = head
        .header("content-length")
        .map(|value| value.parse::<usize>())
    else {
        return Ok(Err(TokenReply::error(400, "invalid_request")));
    };
    if length > MAX_TOKEN_BODY_LEN {
        return Ok(Err(TokenReply::error(413, "invalid_request")));
    }
    let mut body = head.bytes_read[head.head_len..].to_vec();
    body.truncate(length);
    let already = body.len();
    body.resize(length, 0);
    timeout(
        REQUEST_READ_TIMEOUT,
        stream.read_exact(&mut body[already..]),
    )
    .await??;
    Ok(Ok(body))
}

fn exchange_refresh_token(body: &[u8], shared: &Shared) -> TokenReply {
    let field = |name: &str| {
        url::form_urlencoded::parse(body)
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    let (Some(grant_type), Some(refresh_token)) = (field("grant_type"), field("refresh_token"))
    else {
        return TokenReply::error(400, "invalid_request");
    };
    if grant_type != "refresh_token" {
        return TokenReply::error(400, "unsupported_grant_type");
    }
    if refresh_token.is_empty() {
        return TokenReply::error(400, "invalid_request");
    }
    if refresh_token == "revoked" {
        info!("refresh token revoked: invalid_grant");
        return TokenReply::error(400, "invalid_grant");
    }
    let grant = shared.issue_token();
    info!(number = grant.number, "issued a new access token");
    TokenReply {
        status: 200,
        body: serde_json::json!({
            "access_token": grant.access_token,
            "expires_in": shared.token_ttl.as_secs(),
            "refresh_token": grant.refresh_token,
            "token_type": "Bearer",
        }),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 request heads and responses, just enough for routing and the token endpoint.

/// A parsed request head. No `Debug`: the headers hold credentials.
struct RequestHead {
    method: String,
    /// The request target as sent: path and query.
    target: String,
    headers: Vec<(String, String)>,
    /// Length of the head including its terminating empty line.
    head_len: usize,
    /// Everything read from the socket so far: the head and possibly the start of a body.
    bytes_read: BytesMut,
}

impl RequestHead {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The value of the first header with this name (ASCII case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn bearer_token(&self) -> Option<&str> {
        let (scheme, token) = self.header("authorization")?.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

#[derive(Debug)]
enum HeadError {
    Io(io::Error),
    /// The client closed before the head was complete.
    Truncated,
    TooLarge,
    Malformed(&'static str),
}

/// Reads up to the end of the request head. `Ok(None)`: the client closed without sending
/// anything.
async fn read_request_head(stream: &mut ServerStream) -> Result<Option<RequestHead>, HeadError> {
    let mut bytes_read = BytesMut::with_capacity(1024);
    let mut searched = 0;
    loop {
        // Resume the search a little before the end of the previous read, in case the
        // terminator was split across reads.
        if let Some(offset) = find(&bytes_read[searched..], b"\r\n\r\n") {
            let head_len = searched + offset + 4;
            return parse_request_head(bytes_read, head_len).map(Some);
        }
        if !could_start_http_request(&bytes_read) {
            return Err(HeadError::Malformed("not an HTTP request"));
        }
        searched = bytes_read.len().saturating_sub(3);
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
fn could_start_http_request(bytes: &[u8]) -> bool {
    let line = bytes.split(|&b| b == b'\r').next().unwrap_or_default();
    let method_len = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let is_token_char = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    line[..method_len].iter().all(is_token_char)
        && (bytes.is_empty() || method_len > 0)
        && line.iter().all(|b| (b' '..=b'~').contains(b))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn parse_request_head(bytes_read: BytesMut, head_len: usize) -> Result<RequestHead, HeadError> {
    let text = std::str::from_utf8(&bytes_read[..head_len - 4])
        .map_err(|_| HeadError::Malformed("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed("malformed request line"));
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(HeadError::Malformed("malformed request line"));
    }
    let headers = lines
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .ok_or(HeadError::Malformed("malformed header line"))?;
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect::<Result<Vec<_>, HeadError>>()?;
    Ok(RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        head_len,
        bytes_read,
    })
}

/// Writes a complete response and closes the sending side: every response here ends
/// the connection.
async fn write_response(
    stream: &mut ServerStream,
    status: u16,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    let reason = http::StatusCode::from_u16(status)
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

/// A stream that first yields bytes already read from `inner`, then reads `inner`: the
/// handshake parser sees the request head that routing consumed.
/// An accepted connection: plain TCP, or TLS when the server was started with
/// [`start_tls`].
enum ServerStream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Tcp(s) => s.is_write_vectored(),
            ServerStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

struct Replayed<S> {
    already_read: Bytes,
    inner: S,
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
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Step>, String> {
        text.parse::<Script>().map(|script| script.0)
    }

    #[test]
    fn parses_every_step_kind() {
        let script = "close:1011:No shell-agent listening,http:503:2,http:404,echo,hang,silent,\
                      logs:3,shell,forward:127.0.0.1:8080,auth-close,close:1000";
        assert_eq!(
            parse(script).unwrap(),
            vec![
                Step::Close {
                    code: 1011,
                    reason: "No shell-agent listening".into()
                },
                Step::Http {
                    status: 503,
                    retry_after: Some("2".into())
                },
                Step::Http {
                    status: 404,
                    retry_after: None
                },
                Step::Echo,
                Step::Hang,
                Step::Silent,
                Step::Logs {
                    lines: 3,
                    close: None
                },
                Step::Shell,
                Step::Forward("127.0.0.1:8080".into()),
                Step::AuthClose,
                Step::Close {
                    code: 1000,
                    reason: String::new()
                },
            ]
        );
    }

    #[test]
    fn close_reason_keeps_its_colons() {
        assert_eq!(
            parse("close:1007:Invalid permission: Not authorized: SHELL_EXEC").unwrap(),
            vec![Step::Close {
                code: 1007,
                reason: "Invalid permission: Not authorized: SHELL_EXEC".into()
            }]
        );
    }

    #[test]
    fn http_date_retry_after_keeps_its_comma() {
        assert_eq!(
            parse("http:503:Wed, 21 Oct 2015 07:28:00 GMT,echo").unwrap(),
            vec![
                Step::Http {
                    status: 503,
                    retry_after: Some("Wed, 21 Oct 2015 07:28:00 GMT".into())
                },
                Step::Echo
            ]
        );
    }

    #[test]
    fn whitespace_around_steps_is_ignored() {
        assert_eq!(parse(" echo , hang").unwrap(), vec![Step::Echo, Step::Hang]);
    }

    #[test]
    fn ipv6_forward_target_parses() {
        assert_eq!(
            parse("forward:[::1]:22").unwrap(),
            vec![Step::Forward("[::1]:22".into())]
        );
    }

    #[test]
    fn rejects_bad_steps_with_a_message_naming_them() {
        for (script, expected) in [
            (
                "echo,bogus",
                "invalid step 2 (\"bogus\"): unknown step `bogus`",
            ),
            ("", "invalid step 1 (\"\"): empty step"),
            ("echo,", "invalid step 2 (\"\"): empty step"),
            ("http:99", "HTTP status 99 is not between 200 and 599"),
            ("http:101", "HTTP status 101 is not between 200 and 599"),
            ("http:abc", "HTTP status \"abc\" is not a number"),
            ("http:503:", "Retry-After is empty"),
            ("http", "`http` needs an argument"),
            ("close:999:x", "close code 999 is not between 1000 and 4999"),
            ("close:5000", "close code 5000 is not between 1000 and 4999"),
            ("close:abc", "close code \"abc\" is not a number"),
            ("close:1006:gone", "close code 1006 sends no close reason"),
            ("close", "`close` needs an argument"),
            ("echo:1", "`echo` takes no argument"),
            ("logs:-1", "line count \"-1\" is not a non-negative number"),
            ("logs:3:x", "close code \"x\" is not a number"),
            ("logs:3:999", "close code 999 is not between 1000 and 4999"),
            (
                "forward:nowhere",
                "forward target \"nowhere\" is not HOST:PORT",
            ),
            (
                "forward:host:99999",
                "forward port \"99999\" is not a port number",
            ),
            ("forward::80", "forward target \":80\" has no host"),
        ] {
            let error = parse(script).expect_err(script);
            assert!(
                error.contains(expected),
                "{script:?}: {error:?} should contain {expected:?}"
            );
            assert!(!error.contains('\n'), "{script:?}: one line, got {error:?}");
        }
    }

    #[test]
    fn rejects_a_close_reason_too_long_for_a_close_frame() {
        let reason = "x".repeat(MAX_CLOSE_REASON_LEN);
        assert!(parse(&format!("close:1011:{reason}")).is_ok());
        let error = parse(&format!("close:1011:{reason}x")).unwrap_err();
        assert!(error.contains("at most 123"), "{error}");
    }

    #[test]
    fn display_round_trips() {
        let text = "close:1011:No agent: here,http:503:Wed, 21 Oct 2015 07:28:00 GMT,http:429,\
                    echo,hang,silent,logs:2,logs:3:1012,shell,forward:localhost:22,auth-close,close:1005";
        let script: Script = text.parse().unwrap();
        assert_eq!(script.to_string(), text);
        assert_eq!(script.to_string().parse::<Script>().unwrap(), script);
    }

    #[test]
    fn last_step_repeats() {
        let script: Script = "hang,echo".parse().unwrap();
        assert_eq!(script.step(0), &Step::Hang);
        assert_eq!(script.step(1), &Step::Echo);
        assert_eq!(script.step(7), &Step::Echo);
    }

    #[test]
    fn validate_rejects_scripts_built_in_code() {
        assert!(Script(vec![]).validate().is_err());
        let injected = Script(vec![Step::Http {
            status: 503,
            retry_after: Some("1\r\nSet-Cookie: x".into()),
        }]);
        assert!(injected
            .validate()
            .unwrap_err()
            .contains("control character"));
    }

    fn head(text: &str) -> Result<RequestHead, HeadError> {
        let bytes = BytesMut::from(text.as_bytes());
        let head_len = find(&bytes, b"\r\n\r\n").expect("complete head") + 4;
        parse_request_head(bytes, head_len)
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
    fn fake_shell_echoes_like_a_cooked_terminal() {
        let mut editor = LineEditor::default();
        assert_eq!(editor.feed(b"hel"), b"hel");
        assert_eq!(editor.feed(b"lo\r"), b"lo\r\nyou typed: hello\r\n$ ");
        assert_eq!(
            editor.feed(b"ab\x7fc\r\n"),
            b"ab\x08 \x08c\r\nyou typed: ac\r\n$ "
        );
        assert_eq!(editor.feed(b"x\x03"), b"x^C\r\n$ ");
        assert_eq!(editor.feed(b"\x1b[A\n"), b"^[[A\r\nyou typed: ^[[A\r\n$ ");
        assert_eq!(editor.feed(b"\x7f"), b"");
        assert_eq!(editor.feed(b"exit\rmore"), b"exit\r\nlogout\r\n");
        assert!(editor.exited);
    }

    #[test]
    fn fake_shell_reads_the_size_and_resizes() {
        assert_eq!(tty_size_in("/?tty_width=80&tty_height=24"), Some((80, 24)));
        assert_eq!(
            tty_size_in("/x?a=1&tty_height=30&tty_width=100"),
            Some((100, 30))
        );
        assert_eq!(tty_size_in("/?tty_width=80"), None);
        assert_eq!(tty_size_in("/"), None);
        assert_eq!(
            resize_in(r#"{"type":"resize","cols":120,"rows":40}"#),
            Some((120, 40))
        );
        assert_eq!(resize_in(r#"{"type":"other","cols":1,"rows":1}"#), None);
        assert_eq!(resize_in("ls"), None);
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
