//! The driver: the only async code around the machine.
//!
//! One biased `tokio::select!` loop turns signals, the socket, the dial and refresh in
//! progress, the session's messages and the timers into [`Event`]s, feeds them to the
//! [`Machine`] and carries out the [`Effect`]s it returns. It decides nothing: every
//! "retry or stop" lives in `machine.rs`.
//!
//! Every arm is cancel-safe: the socket is polled through a `poll_fn` that keeps its
//! state in `Conn`, the dial and refresh futures live across iterations, channel
//! receives and `reserve` lose nothing when another arm wins.
//!
//! Between the frames of a burst the loop skips the `select!`: right after a frame it
//! polls the connection directly, up to 32 frames in a row (`FRAMES_PER_WAKE`), and only
//! while no signal is pending, so signals still come first.

use crate::backoff::{Backoff, BackoffPolicy, Jitter};
use crate::classify::Failure;
use crate::credentials::{Anonymous, Credentials, Secret, EXPIRY_WINDOW};
use crate::machine::{
    CredentialState, Effect, Event, Machine, MachineConfig, Notice, Outcome, RefreshReason,
};
use crate::session::{self, LinkEnds, Session};
use crate::transport::{Transport, TransportConfig, WireClose, WsStream, WsTransportStream};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use url::Url;

mod connection;
mod finish;
mod record;
mod signals;
mod timers;

pub use connection::DRAIN_AFTER_WRITE_ERROR;
use connection::{inbound_event, message_of, Conn, ConnEvent};
pub use record::{rotated_path, RecordNotes, Recorder, DEFAULT_RECORD_MAX};
use signals::no_signals;
pub use signals::{process_signals, signal_arrives, SignalWatch};
use timers::Timers;

/// Frames taken one after another without going back to the `select!` loop: the other
/// arms (the session's controls, timers) wait at most this many frames.
const FRAMES_PER_WAKE: usize = 32;

/// Everything a supervisor needs to know, built by the CLI or by a library user.
#[derive(Debug, Clone)]
pub struct Config {
    pub url: Url,
    pub transport: TransportConfig,
    pub machine: MachineConfig,
    pub backoff: BackoffPolicy,
    /// Text frames sent first on every connection, before anything the session queued
    /// (`--on-connect`): subscriptions a server forgets when the connection drops.
    pub on_connect: Vec<String>,
}

impl Config {
    pub fn new(url: Url) -> Self {
        Config {
            url,
            transport: TransportConfig::default(),
            machine: MachineConfig::default(),
            backoff: BackoffPolicy::default(),
            on_connect: Vec::new(),
        }
    }
}

/// Receives the notices the user should see (failures, retry plans, refreshes).
pub type NoticeSink = Arc<dyn Fn(&Notice) + Send + Sync>;

/// Opens websocket connections for the driver. [`Transport`] is the real one (TCP, TLS,
/// HTTP upgrade); tests plug in an in-memory one so that the driver runs under paused
/// tokio time, with no sockets.
pub trait Dialer: Clone + Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn dial(
        &self,
        url: &Url,
        authorization: Option<&str>,
    ) -> impl Future<Output = Result<WebSocketStream<Self::Stream>, Failure>> + Send;

    /// The close frame the server sent, as it was on the wire, if the stream recorded one
    /// (see [`crate::transport::CloseObserver`]): tungstenite rewrites codes it does not
    /// allow into 1002. By default nothing is recorded and tungstenite's frame is used.
    fn wire_close(_stream: &Self::Stream) -> Option<&WireClose> {
        None
    }
}

impl Dialer for Transport {
    type Stream = WsTransportStream;

    fn dial(
        &self,
        url: &Url,
        authorization: Option<&str>,
    ) -> impl Future<Output = Result<WsStream, Failure>> + Send {
        Transport::dial(self, url, authorization)
    }

    fn wire_close(stream: &WsTransportStream) -> Option<&WireClose> {
        stream.received_close()
    }
}

/// Keeps one websocket session alive.
///
/// ```no_run
/// # async fn demo(config: wsup::Config, creds: std::sync::Arc<dyn wsup::credentials::Credentials>) {
/// let session = wsup::session::connect::ConnectSession::stdio();
/// match wsup::Supervisor::new(config).credentials(creds).run(session).await {
///     Ok(outcome) => std::process::exit(outcome.exit_code().into()),
///     Err(bad_settings) => {
///         eprintln!("{bad_settings}");
///         std::process::exit(wsup::exit::USAGE.into());
///     }
/// }
/// # }
/// ```
///
/// A clone is a template: [`crate::forward::Forwarder`] runs a clone per tunnel.
#[derive(Clone)]
pub struct Supervisor {
    config: Config,
    credentials: Arc<dyn Credentials>,
    transport: Option<Transport>,
    jitter: Option<Jitter>,
    notices: Option<NoticeSink>,
    signals: Option<SignalWatch>,
    drain_timeout: Option<Duration>,
    /// `--record`: taken by the first run (clones share the slot, so one port-forward
    /// template never interleaves tunnels in one file).
    recorder: Option<Arc<std::sync::Mutex<Option<Recorder>>>>,
}

impl Supervisor {
    pub fn new(config: Config) -> Self {
        Supervisor {
            config,
            credentials: Arc::new(Anonymous),
            transport: None,
            jitter: None,
            notices: None,
            signals: None,
            drain_timeout: None,
            recorder: None,
        }
    }

    /// Record every event fed to the machine and the effects it returned (`--record`):
    /// `wsup replay` re-runs the file. Only the first run of this supervisor (or of a
    /// clone of it) records.
    pub fn record(mut self, recorder: Recorder) -> Self {
        self.recorder = Some(Arc::new(std::sync::Mutex::new(Some(recorder))));
        self
    }

    /// After a normal end, how long the session may take to write what it received
    /// (`None`, the default: as long as its reader needs). Past it, the outcome is
    /// [`Outcome::OutputLost`] with the bytes not written. A signal ends the wait at once.
    pub fn drain_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.drain_timeout = timeout;
        self
    }

    pub fn credentials(mut self, credentials: Arc<dyn Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// Share one transport (TLS configuration) between many supervisors.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = Some(transport);
        self
    }

    /// A seeded jitter source makes the delays reproducible.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = Some(jitter);
        self
    }

    pub fn on_notice(mut self, sink: NoticeSink) -> Self {
        self.notices = Some(sink);
        self
    }

    /// Where SIGINT/SIGTERM come from. Without one the supervisor reacts to no signal and
    /// installs no handler: an embedding program keeps its own Ctrl+C behaviour. The CLI
    /// passes [`process_signals`].
    pub fn signals(mut self, signals: SignalWatch) -> Self {
        self.signals = Some(signals);
        self
    }

    /// The transport every run dials through: the one given, or built now from the config
    /// and kept, so that clones share it. `Err`: what [`Supervisor::run`] would return.
    pub(crate) fn shared_transport(&mut self) -> Result<Transport, crate::transport::UsageError> {
        let transport = match self.transport.take() {
            Some(t) => t,
            None => Transport::new(self.config.transport.clone())?,
        };
        self.transport = Some(transport.clone());
        Ok(transport)
    }

    /// Raises the websocket read buffer of the config's transport to at least `size`
    /// (used before [`Supervisor::shared_transport`] builds the transport; a transport
    /// given with [`Supervisor::transport`] is used as it is).
    pub(crate) fn read_buffer_at_least(&mut self, size: usize) {
        let transport = &mut self.config.transport;
        transport.read_buffer_size = transport.read_buffer_size.max(size);
    }

    /// The signal source given with [`Supervisor::signals`], if any.
    pub(crate) fn signal_source(&self) -> Option<&SignalWatch> {
        self.signals.as_ref()
    }

    /// Whether [`Supervisor::on_notice`] was given a sink.
    pub(crate) fn has_notice_sink(&self) -> bool {
        self.notices.is_some()
    }

    /// Supervise until the session ends; returns how it ended.
    ///
    /// Invalid transport settings (see [`Transport::new`]) come back as `Err` before
    /// anything runs: the session is not started and nothing is dialed.
    pub async fn run<S: Session>(
        mut self,
        session: S,
    ) -> Result<Outcome, crate::transport::UsageError> {
        let transport = match self.transport.take() {
            Some(t) => t,
            None => Transport::new(self.config.transport.clone())?,
        };
        Ok(self.run_with_dialer(transport, session).await)
    }

    /// Like [`Supervisor::run`], dialing through `dialer` instead of the network.
    pub async fn run_with_dialer<D: Dialer, S: Session>(self, dialer: D, session: S) -> Outcome {
        let jitter = self.jitter.unwrap_or_else(Jitter::from_entropy);
        // Boxed: only `--record` has one, and inline it would grow every connection's
        // task (the benches' 10,000 idle connections) by twice its size.
        let mut recorder = self.recorder.and_then(|slot| {
            slot.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
                .map(Box::new)
        });
        if let Some(recorder) = recorder.as_mut() {
            recorder.begin(&self.config.machine, &self.config.backoff, jitter.seed());
        }
        let backoff = Backoff::new(self.config.backoff, jitter);
        let (link, ends) = session::link(session.outbound_capacity(), session.inbound_bytes());
        let session_task = tokio::spawn(session.run(link));
        let mut driver = Driver {
            machine: Machine::new(self.config.machine.clone(), backoff),
            credentials: self.credentials,
            dialer,
            url: self.config.url,
            notices: self.notices.unwrap_or_else(|| Arc::new(log_notice)),
            signals: self.signals.unwrap_or_else(no_signals),
            ends,
            conn: None,
            dialing: None,
            refreshing: None,
            sent_authorization: None,
            timers: Timers::new(),
            pending_delivery: None,
            outbound_done: false,
            session_gone: false,
            reads_paused: false,
            effects: Vec::with_capacity(8),
            outcome: None,
            unsent_at_close: false,
            carried_over: VecDeque::new(),
            on_connect: self
                .config
                .on_connect
                .into_iter()
                .map(|text| Message::Text(text.into()))
                .collect(),
            recorder,
        };
        let outcome = driver.run().await;
        let recorder = driver.recorder.take();
        let outcome = driver
            .finish(session_task, outcome, self.drain_timeout)
            .await;
        if let Some(recorder) = recorder {
            // Waits for the writer thread: off the runtime's workers.
            let ended = outcome.clone();
            let _ = tokio::task::spawn_blocking(move || recorder.finish(&ended)).await;
        }
        outcome
    }
}

fn log_notice(notice: &Notice) {
    tracing::info!(target: "wsup::notice", "{notice:?}");
}

type DialFuture<S> = Pin<Box<dyn Future<Output = Result<WebSocketStream<S>, Failure>> + Send>>;
type RefreshFuture = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;

struct Driver<D: Dialer> {
    machine: Machine,
    credentials: Arc<dyn Credentials>,
    dialer: D,
    url: Url,
    notices: NoticeSink,
    signals: SignalWatch,
    ends: LinkEnds,
    conn: Option<Conn<D::Stream>>,
    dialing: Option<DialFuture<D::Stream>>,
    refreshing: Option<RefreshFuture>,
    /// What the last dial sent, so a refresh can tell whether someone else already
    /// replaced the rejected token.
    sent_authorization: Option<Secret>,
    timers: Timers,
    /// A message the session could not take yet: the socket is not read until it does.
    pending_delivery: Option<Message>,
    outbound_done: bool,
    session_gone: bool,
    /// Whether the machine was last told that reads are paused (see
    /// [`Event::ReadsPaused`]).
    reads_paused: bool,
    effects: Vec<Effect>,
    outcome: Option<Outcome>,
    /// Whether the last connection ended with messages or our close frame unwritten.
    unsent_at_close: bool,
    /// The session's messages the last connection never wrote: queued first on the next.
    carried_over: VecDeque<Message>,
    /// [`Config::on_connect`] as messages, queued first on every new connection.
    on_connect: Vec<Message>,
    /// `--record`: every event and its effects.
    recorder: Option<Box<Recorder>>,
}

impl<D: Dialer> Driver<D> {
    async fn run(&mut self) -> Outcome {
        self.feed(Event::Start);
        // A signal that arrived before we started still counts.
        let early_signal = *self.signals.borrow_and_update();
        if let Some(sig) = early_signal {
            self.feed(Event::Signal(sig));
        }
        let mut signals_open = true;
        let mut control_open = true;
        let mut frames_in_a_row = 0;
        'events: while self.outcome.is_none() {
            // The session's messages are taken inside `poll_io`, as many as the send queue
            // has room for, so that the bound is re-checked each time the socket drains
            // the queue (a guard on a select arm is evaluated only once per iteration:
            // a queue that drains while the arm is off would stall until some other event).
            let take_outbound = !self.outbound_done && self.machine_accepts_outbound();
            // Not while a message waits for room in the channel, nor while the session
            // has 64 KiB or more to take (unless it is gone: then read on, for the close
            // frame). Waiting for the session also returns the frame's memory before the
            // next read: its payload shares tungstenite's read buffer, which is then
            // reused instead of reallocated (and page-faulted in) for every frame.
            let inbound_full =
                !self.ends.inbound_budget.has_room() && !self.ends.inbound.is_closed();
            let read_enabled = self.pending_delivery.is_none() && !inbound_full;
            if read_enabled == self.reads_paused {
                // The machine decides what a pause means for the liveness deadline.
                self.reads_paused = !read_enabled;
                self.feed(if read_enabled {
                    Event::ReadsResumed
                } else {
                    Event::ReadsPaused
                });
            }
            // Right after a frame, the next one is often already buffered or on the
            // socket: take it without a trip through `select!`, whose eight arms cost
            // more than the frame itself (each re-registers its waker, and the signal and
            // closed-channel arms take a lock to do it). A pending signal, a full streak
            // or nothing ready sends the loop back to `select!`, signals first.
            let ready = if frames_in_a_row > 0
                && frames_in_a_row < FRAMES_PER_WAKE
                && read_enabled
                && !matches!(self.signals.has_changed(), Ok(true))
            {
                match self.conn.as_mut() {
                    Some(conn) => {
                        let mut outbound = take_outbound.then_some(&mut self.ends.outbound);
                        let polled = poll_fn(|cx| {
                            Poll::Ready(conn.poll_io(cx, true, outbound.as_deref_mut()))
                        });
                        match polled.await {
                            Poll::Ready(io) => Some(io),
                            Poll::Pending => None,
                        }
                    }
                    None => None,
                }
            } else {
                None
            };
            let direct = ready.is_some();
            if !direct {
                self.timers.new_turn();
            }
            // Every arm but the connection's breaks out with its event; the connection's
            // news needs all of `self`, which the arms' futures borrow until they drop.
            let event = 'next: {
                let io = match ready {
                    Some(io) => io,
                    None => tokio::select! {
                    biased;
                    changed = self.signals.changed(), if signals_open => {
                        break 'next match changed {
                            Ok(()) => match *self.signals.borrow_and_update() {
                                Some(sig) => Event::Signal(sig),
                                None => continue 'events,
                            },
                            Err(_) => {
                                signals_open = false;
                                continue 'events;
                            }
                        }
                    }
                    control = self.ends.control.recv(), if control_open => break 'next match control {
                        Some(session::Control::Interrupt) => Event::UserInterrupt,
                        Some(session::Control::LocalGone) => Event::LocalGone,
                        Some(session::Control::OutputFailed(error)) => Event::OutputFailed(error),
                        None => {
                            control_open = false;
                            continue 'events;
                        }
                    },
                    io = poll_fn(|cx| {
                        let outbound = take_outbound.then_some(&mut self.ends.outbound);
                        self.conn.as_mut().map_or(Poll::Pending, |c| c.poll_io(cx, read_enabled, outbound))
                    }), if self.conn.is_some() => io,
                    dialed = async { self.dialing.as_mut().expect("guarded").await }, if self.dialing.is_some() => {
                        self.dialing = None;
                        break 'next match dialed {
                            Ok(ws) => {
                                let mut conn = Conn::new(ws, D::wire_close);
                                // The on-connect messages go first, then what the last
                                // connection did not send; the session's new messages are
                                // taken from the channel only after these.
                                conn.queue_on_connect(&self.on_connect);
                                conn.queue.append(&mut self.carried_over);
                                self.conn = Some(conn);
                                self.unsent_at_close = false;
                                Event::DialSucceeded
                            }
                            Err(failure) => Event::DialFailed(failure),
                        }
                    }
                    refreshed = async { self.refreshing.as_mut().expect("guarded").await }, if self.refreshing.is_some() => {
                        self.refreshing = None;
                        break 'next Event::RefreshDone(refreshed);
                    }
                    permit = self.ends.inbound.reserve(), if self.pending_delivery.is_some() => {
                        match permit {
                            Ok(permit) => {
                                let message = self.pending_delivery.take().expect("guarded");
                                self.ends.inbound_budget.deliver(permit, message);
                                continue 'events;
                            }
                            Err(_) => {
                                self.pending_delivery = None;
                                self.session_gone = true;
                                break 'next Event::LocalEof;
                            }
                        }
                    }
                    () = self.ends.inbound_budget.room(), if inbound_full => continue 'events,
                    // The session dropped its inbound receiver (stdout closed, its task
                    // ended): wind down once connected, like a local EOF. Checked only while
                    // connected and not closing, so a session that vanished while offline is
                    // noticed as soon as there is a connection to close.
                    () = self.ends.inbound.closed(), if !self.session_gone && self.machine_accepts_outbound() => {
                        self.session_gone = true;
                        break 'next Event::LocalEof;
                    }
                    kind = poll_fn(|cx| self.timers.poll_expired(cx)) => break 'next Event::Timer(kind),
                    },
                };
                self.conn_event(io)
            };
            let frame = matches!(
                event,
                Event::Received(_) | Event::PingReceived | Event::PongReceived
            );
            // A frame taken by `select!` starts a streak; one taken directly extends it.
            frames_in_a_row = match (frame, direct) {
                (false, _) => 0,
                (true, false) => 1,
                (true, true) => frames_in_a_row + 1,
            };
            self.feed(event);
            // The session's input ended on an earlier connection (or the session went
            // away while offline): this connection winds down too.
            if self.outcome.is_none()
                && (self.outbound_done || self.session_gone)
                && self.machine_accepts_outbound()
            {
                self.feed(Event::LocalEof);
            }
        }
        self.outcome.clone().expect("loop ends with an outcome")
    }

    /// What the connection's news means to the machine.
    fn conn_event(&mut self, io: ConnEvent) -> Event {
        match io {
            ConnEvent::Frame(message) => inbound_event(message),
            ConnEvent::OutboundEnded => {
                self.outbound_done = true;
                // Everything the session sent before is in the queue by now.
                match self.ends.input_failure.take() {
                    Some(failure) => Event::InputRejected(failure),
                    None => Event::LocalEof,
                }
            }
            ConnEvent::Closed(failure) => {
                if let Some(mut conn) = self.conn.take() {
                    self.unsent_at_close = conn.has_unsent();
                    // Messages the socket never took go out on the next connection, if
                    // the machine redials.
                    self.carried_over = conn.take_unsent_messages();
                    conn.retire();
                }
                Event::Closed(failure)
            }
        }
    }

    fn machine_accepts_outbound(&self) -> bool {
        self.machine.accepts_outbound()
    }

    /// One event in, its effects carried out. Effects that fail at once (the session is
    /// gone) produce follow-up events, handled in order.
    fn feed(&mut self, event: Event) {
        let mut next = Some(event);
        while let Some(event) = next.take() {
            // Not on the data path: frames and read pauses come by the thousand.
            let data = matches!(
                event,
                Event::Received(_)
                    | Event::PingReceived
                    | Event::PongReceived
                    | Event::ReadsPaused
                    | Event::ReadsResumed
            );
            let creds = (!data).then(|| self.credential_state());
            if let Some(creds) = creds {
                self.machine.set_credentials(creds);
            }
            let unsent = self
                .conn
                .as_ref()
                .map_or(self.unsent_at_close, Conn::has_unsent);
            self.machine.set_outbound_pending(unsent);
            // The buffer is taken out and put back so that it is reused: no allocation
            // per event on the data path.
            let mut effects = std::mem::take(&mut self.effects);
            self.machine.handle_into(&event, &mut effects);
            if let Some(recorder) = self.recorder.as_mut() {
                recorder.step(&event, creds, unsent, &effects, data);
            }
            for effect in effects.drain(..) {
                if let Some(follow_up) = self.execute(effect) {
                    next = Some(follow_up);
                }
            }
            self.effects = effects;
            if !self.machine.is_connected() && self.outcome.is_none() {
                if let Some(conn) = self.conn.take() {
                    conn.retire();
                }
            }
        }
    }

    fn credential_state(&self) -> CredentialState {
        CredentialState {
            refreshable: self.credentials.can_refresh(),
            expiring_soon: self
                .credentials
                .expires_within(SystemTime::now(), EXPIRY_WINDOW),
        }
    }

    fn execute(&mut self, effect: Effect) -> Option<Event> {
        match effect {
            Effect::Dial => {
                if let Some(conn) = self.conn.take() {
                    conn.retire();
                }
                let url = self.dial_url();
                let authorization = self.credentials.authorization();
                self.sent_authorization = authorization.clone();
                let dialer = self.dialer.clone();
                tracing::debug!(target: "wsup::driver", host = url.host_str(), path = url.path(), "dialing");
                self.dialing = Some(Box::pin(async move {
                    dialer
                        .dial(&url, authorization.as_ref().map(Secret::expose))
                        .await
                }));
            }
            Effect::Send(payload) => {
                if let Some(conn) = self.conn.as_mut() {
                    conn.queue.push_back(message_of(payload));
                }
            }
            Effect::SendPing => {
                if let Some(conn) = self.conn.as_mut() {
                    conn.queue.push_back(Message::Ping(Default::default()));
                }
            }
            Effect::Deliver(payload) => {
                let message = message_of(payload);
                if self.session_gone {
                    return None;
                }
                match self.ends.inbound.try_reserve() {
                    Ok(permit) => self.ends.inbound_budget.deliver(permit, message),
                    Err(mpsc::error::TrySendError::Full(())) => {
                        self.pending_delivery = Some(message);
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => {
                        // The session stopped taking output (stdout closed): wind down.
                        self.session_gone = true;
                        return Some(Event::LocalEof);
                    }
                }
            }
            Effect::Close(code, reason) => {
                if let Some(conn) = self.conn.as_mut() {
                    conn.queue.push_back(Message::Close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    })));
                }
            }
            Effect::StartTimer(kind, after) => self.timers.start(kind, after),
            Effect::CancelTimer(kind) => self.timers.cancel(kind),
            Effect::Refresh(reason) => {
                let rejected = match reason {
                    RefreshReason::Rejected => self.sent_authorization.clone(),
                    RefreshReason::Proactive => None,
                };
                let credentials = self.credentials.clone();
                self.refreshing = Some(Box::pin(async move {
                    credentials.refresh(rejected.as_ref()).await
                }));
            }
            Effect::Notify(notice) => (self.notices)(&notice),
            Effect::Exit(outcome) => self.outcome = Some(outcome),
        }
        None
    }

    fn dial_url(&self) -> Url {
        let extra = self.ends.dial_query.get();
        let mut url = self.url.clone();
        if !extra.is_empty() {
            let mut query = url.query_pairs_mut();
            for (key, value) in &extra {
                query.append_pair(key, value);
            }
        }
        url
    }
}
