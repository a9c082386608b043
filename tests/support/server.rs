//! An independent websocket server for the CLI tests, written directly on tokio and
//! tokio-tungstenite (`accept_hdr_async`); it shares no code with `wsup::serve`.
//!
//! Connection N (counted from 0, in TCP accept order) gets behaviour N of the script; the
//! last behaviour repeats. Every connection is recorded: when it was accepted, the request
//! path, query and headers, what the client sent and how the client closed. Tests wait for
//! a condition on the records with [`Server::wait_for`], which wakes on every change (no
//! polling, no sleeps) and is bounded by [`BOUND`](super::BOUND).
#![allow(clippy::result_large_err)] // the handshake callback returns tungstenite's own error type

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::BOUND;

/// How long a `Close` behaviour waits for the client's close reply.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);

/// What the server does with one connection.
#[derive(Clone)]
pub enum Behaviour {
    /// Upgrade, then echo every text and binary message until the client closes.
    Echo,
    /// Upgrade, send a close frame with this code and reason, wait for the reply.
    Close { code: u16, reason: String },
    /// Answer the upgrade request with this HTTP status and these headers (no upgrade).
    Http {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// Upgrade, send these messages, then a close frame with this code and reason, and
    /// wait for the reply.
    SendThenClose {
        messages: Vec<Message>,
        code: u16,
        reason: String,
    },
    /// Upgrade, then never read or write again: no pongs, a half-open connection.
    Silent,
    /// Accept the TCP connection and never answer anything (not even read the request).
    Hang,
    /// Upgrade, write these bytes as they are (a frame tungstenite would not build, such
    /// as a text frame that is not UTF-8), then read until the client goes.
    Raw(Vec<u8>),
    /// Upgrade, then echo every text and binary message `delay` after it arrived, like a
    /// server that takes time to answer; a close frame from the client is answered at
    /// once, and echoes not yet sent are lost (the connection is over). This is the
    /// server that cuts off a client which closes right behind its last message.
    DelayedEcho(Duration),
    /// Accept the TCP connection, wait until the gate is opened, then behave as `then`.
    Gated {
        gate: Arc<Notify>,
        then: Box<Behaviour>,
    },
}

impl Behaviour {
    pub fn close(code: u16, reason: &str) -> Self {
        Behaviour::Close {
            code,
            reason: reason.to_owned(),
        }
    }

    pub fn send_then_close(messages: Vec<Message>, code: u16, reason: &str) -> Self {
        Behaviour::SendThenClose {
            messages,
            code,
            reason: reason.to_owned(),
        }
    }

    pub fn http(status: u16) -> Self {
        Behaviour::Http {
            status,
            headers: Vec::new(),
        }
    }

    pub fn http_with(status: u16, headers: &[(&str, &str)]) -> Self {
        Behaviour::Http {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// `then`, once `gate.notify_one()` has been called (before or after the connection).
    pub fn gated(gate: &Arc<Notify>, then: Behaviour) -> Self {
        Behaviour::Gated {
            gate: gate.clone(),
            then: Box::new(then),
        }
    }
}

/// What the server saw of one connection.
#[derive(Debug, Clone)]
pub struct Connection {
    /// When the TCP connection was accepted.
    pub at: Instant,
    /// Whether the request head was read (false for `Hang`, or a client that sent nothing).
    pub requested: bool,
    pub path: String,
    pub query: Option<String>,
    /// Request headers, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// Whether the websocket upgrade completed.
    pub upgraded: bool,
    /// The text messages received, in order.
    pub texts: Vec<String>,
    /// The binary messages received, in order.
    pub binaries: Vec<Vec<u8>>,
    /// How many pings the client sent.
    pub pings: usize,
    /// The client's close frame: `Some((code, reason))`; code 1005 for a frame without one.
    pub client_close: Option<(u16, String)>,
    /// The connection is over (closed by either side, or the handshake failed).
    pub ended: bool,
}

impl Connection {
    fn new() -> Self {
        Connection {
            at: Instant::now(),
            requested: false,
            path: String::new(),
            query: None,
            headers: Vec::new(),
            upgraded: false,
            texts: Vec::new(),
            binaries: Vec::new(),
            pings: 0,
            client_close: None,
            ended: false,
        }
    }

    /// The value of the first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Every header value, for "this secret appears nowhere" checks.
    pub fn header_values(&self) -> impl Iterator<Item = &str> {
        self.headers.iter().map(|(_, value)| value.as_str())
    }
}

struct Shared {
    script: Vec<Behaviour>,
    connections: Mutex<Vec<Connection>>,
    /// Bumped on every change to `connections`.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn update(&self, index: usize, change: impl FnOnce(&mut Connection)) {
        {
            let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            change(&mut connections[index]);
        }
        self.changed.send_modify(|generation| *generation += 1);
    }

    fn accept(&self) -> (usize, Behaviour) {
        let index = {
            let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            connections.push(Connection::new());
            connections.len() - 1
        };
        self.changed.send_modify(|generation| *generation += 1);
        let behaviour = self.script[index.min(self.script.len() - 1)].clone();
        (index, behaviour)
    }
}

/// A running test server; stops (and drops every connection) when dropped.
pub struct Server {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Server {
    pub async fn start(script: Vec<Behaviour>) -> Server {
        assert!(!script.is_empty(), "a script needs at least one behaviour");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            script,
            connections: Mutex::new(Vec::new()),
            changed,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Server { addr, shared, task }
    }

    /// Shorthand for a server whose every connection gets `behaviour`.
    pub async fn always(behaviour: Behaviour) -> Server {
        Server::start(vec![behaviour]).await
    }

    /// `ws://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// `ws://127.0.0.1:PORT` followed by `path_and_query` (which starts with `/`).
    pub fn url_with(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.addr)
    }

    /// A snapshot of every connection so far.
    pub fn connections(&self) -> Vec<Connection> {
        self.shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn connection_count(&self) -> usize {
        self.shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Waits (event-driven, bounded by [`BOUND`]) until `check` returns `Some`.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        mut check: impl FnMut(&[Connection]) -> Option<T>,
    ) -> T {
        let mut changes = self.shared.changed.subscribe();
        let waited = tokio::time::timeout(BOUND, async {
            loop {
                changes.borrow_and_update();
                if let Some(value) = check(&self.connections()) {
                    return value;
                }
                if changes.changed().await.is_err() {
                    // The sender lives in `self`; this cannot happen while we borrow it.
                    unreachable!("server state dropped");
                }
            }
        })
        .await;
        match waited {
            Ok(value) => value,
            Err(_) => panic!(
                "timed out after {BOUND:?} waiting for {what}; connections: {:#?}",
                self.connections()
            ),
        }
    }

    /// Waits until at least `count` TCP connections were accepted.
    pub async fn wait_connections(&self, count: usize) -> Vec<Connection> {
        self.wait_for(&format!("{count} connection(s)"), |connections| {
            (connections.len() >= count).then(|| connections.to_vec())
        })
        .await
    }

    /// Waits until connection `index` received the client's close frame.
    pub async fn wait_client_close(&self, index: usize) -> (u16, String) {
        self.wait_for(
            &format!("a close frame from the client on connection {index}"),
            |connections| connections.get(index)?.client_close.clone(),
        )
        .await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut tasks = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (index, behaviour) = shared.accept();
        tasks.spawn(serve_connection(stream, index, behaviour, shared.clone()));
        while tasks.try_join_next().is_some() {}
    }
}

async fn serve_connection(
    stream: TcpStream,
    index: usize,
    mut behaviour: Behaviour,
    shared: Arc<Shared>,
) {
    while let Behaviour::Gated { gate, then } = behaviour {
        gate.notified().await;
        behaviour = *then;
    }
    match behaviour {
        Behaviour::Gated { .. } => unreachable!("unwrapped above"),
        Behaviour::Hang => {
            // Hold the socket open, answer nothing, until the server is dropped.
            let _stream = stream;
            std::future::pending::<()>().await;
        }
        Behaviour::Http { status, headers } => {
            let _ = handshake(stream, index, &shared, Some((status, headers))).await;
            shared.update(index, |c| c.ended = true);
        }
        Behaviour::Echo => {
            if let Some(mut ws) = handshake(stream, index, &shared, None).await {
                while let Some(Ok(message)) = ws.next().await {
                    if !record(&shared, index, &message) {
                        continue;
                    }
                    if matches!(message, Message::Text(_) | Message::Binary(_))
                        && ws.send(message).await.is_err()
                    {
                        break;
                    }
                }
            }
            shared.update(index, |c| c.ended = true);
        }
        Behaviour::Close { code, reason } => {
            close_after(stream, index, &shared, Vec::new(), code, reason).await;
        }
        Behaviour::SendThenClose {
            messages,
            code,
            reason,
        } => {
            close_after(stream, index, &shared, messages, code, reason).await;
        }
        Behaviour::Raw(bytes) => {
            if let Some(mut ws) = handshake(stream, index, &shared, None).await {
                use tokio::io::AsyncWriteExt;
                if ws.get_mut().write_all(&bytes).await.is_ok() {
                    while let Some(Ok(message)) = ws.next().await {
                        record(&shared, index, &message);
                    }
                }
            }
            shared.update(index, |c| c.ended = true);
        }
        Behaviour::DelayedEcho(delay) => {
            if let Some(ws) = handshake(stream, index, &shared, None).await {
                delayed_echo(ws, index, &shared, delay).await;
            }
            shared.update(index, |c| c.ended = true);
        }
        Behaviour::Silent => {
            if let Some(ws) = handshake(stream, index, &shared, None).await {
                // Never poll it again: pings go unanswered.
                let _ws = ws;
                std::future::pending::<()>().await;
            }
        }
    }
}

/// [`Behaviour::DelayedEcho`] on an upgraded connection.
async fn delayed_echo(
    mut ws: WebSocketStream<TcpStream>,
    index: usize,
    shared: &Arc<Shared>,
    delay: Duration,
) {
    let mut due: std::collections::VecDeque<(tokio::time::Instant, Message)> =
        std::collections::VecDeque::new();
    loop {
        let next_echo = due.front().map(|(at, _)| *at);
        tokio::select! {
            received = ws.next() => match received {
                Some(Ok(message)) => {
                    if matches!(message, Message::Close(_)) {
                        record(shared, index, &message);
                        // tungstenite queued the close reply: send it, drop the echoes.
                        let _ = ws.flush().await;
                        break;
                    }
                    if record(shared, index, &message) {
                        due.push_back((tokio::time::Instant::now() + delay, message));
                    }
                }
                _ => break,
            },
            () = tokio::time::sleep_until(next_echo.unwrap_or_else(tokio::time::Instant::now)), if next_echo.is_some() => {
                let (_, message) = due.pop_front().expect("an echo is due");
                if ws.send(message).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Upgrade, send `messages`, close with `code` and `reason`, wait for the reply.
async fn close_after(
    stream: TcpStream,
    index: usize,
    shared: &Arc<Shared>,
    messages: Vec<Message>,
    code: u16,
    reason: String,
) {
    if let Some(mut ws) = handshake(stream, index, shared, None).await {
        let mut sent = true;
        for message in messages {
            if ws.feed(message).await.is_err() {
                sent = false;
                break;
            }
        }
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        if sent && ws.send(Message::Close(Some(frame))).await.is_ok() {
            let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
                while let Some(Ok(message)) = ws.next().await {
                    record(shared, index, &message);
                }
            })
            .await;
        }
    }
    shared.update(index, |c| c.ended = true);
}

/// Records a received message; returns whether it carries data (text or binary).
fn record(shared: &Shared, index: usize, message: &Message) -> bool {
    match message {
        Message::Text(text) => {
            let text = text.to_string();
            shared.update(index, |c| c.texts.push(text));
            true
        }
        Message::Binary(bytes) => {
            let bytes = bytes.to_vec();
            shared.update(index, |c| c.binaries.push(bytes));
            true
        }
        Message::Close(frame) => {
            let close = match frame {
                Some(frame) => (u16::from(frame.code), frame.reason.to_string()),
                None => (1005, String::new()),
            };
            shared.update(index, |c| c.client_close = Some(close));
            false
        }
        Message::Ping(_) => {
            shared.update(index, |c| c.pings += 1);
            false
        }
        Message::Pong(_) | Message::Frame(_) => false,
    }
}

/// Reads the upgrade request (recording it), then upgrades, or answers with `refuse`.
async fn handshake(
    stream: TcpStream,
    index: usize,
    shared: &Arc<Shared>,
    refuse: Option<(u16, Vec<(String, String)>)>,
) -> Option<WebSocketStream<TcpStream>> {
    let recorder = shared.clone();
    let callback = move |request: &Request, response: Response| {
        let path = request.uri().path().to_owned();
        let query = request.uri().query().map(str::to_owned);
        let headers = request
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        recorder.update(index, |c| {
            c.requested = true;
            c.path = path;
            c.query = query;
            c.headers = headers;
        });
        answer(response, refuse)
    };
    match tokio_tungstenite::accept_hdr_async(stream, callback).await {
        Ok(ws) => {
            shared.update(index, |c| c.upgraded = true);
            Some(ws)
        }
        Err(_) => None,
    }
}

fn answer(
    response: Response,
    refuse: Option<(u16, Vec<(String, String)>)>,
) -> Result<Response, ErrorResponse> {
    let Some((status, headers)) = refuse else {
        return Ok(response);
    };
    let mut builder = http::Response::builder().status(status);
    for (name, value) in &headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    Err(builder
        .body(Some(format!("refused with HTTP {status}\n")))
        .expect("valid test response"))
}
