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

use crate::backoff::{Backoff, BackoffPolicy, Jitter};
use crate::classify::{Failure, NetworkKind};
use crate::credentials::{Anonymous, Credentials, Secret, EXPIRY_WINDOW};
use crate::machine::{
    CredentialState, Effect, Event, Machine, MachineConfig, Notice, Outcome, OutputLoss, Payload,
    RefreshReason, Sig, Text, TimerKind,
};
use crate::session::{self, LinkEnds, Session};
use crate::transport::{
    failure_from_ws_error, Transport, TransportConfig, WireClose, WsStream, WsTransportStream,
};
use futures_util::{Sink, Stream};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use url::Url;

/// After a write or ping fails, keep reading this long for the server's real close frame.
pub const DRAIN_AFTER_WRITE_ERROR: Duration = Duration::from_millis(500);
/// On exit, how long the close frame may take to leave. Keeps signal-to-exit fast.
const EXIT_FLUSH: Duration = Duration::from_millis(50);
/// A retired connection gets this long to finish its closing handshake in the background.
/// At exit, how long to wait for the server to answer our close frame.
const CLOSE_ANSWER_WAIT: Duration = Duration::from_millis(250);
const RETIRE_GRACE: Duration = Duration::from_secs(1);
/// Messages waiting for the socket before the driver stops taking more from the session.
const SEND_QUEUE_MESSAGES: usize = 16;

/// Everything a supervisor needs to know, built by the CLI or by a library user.
#[derive(Debug, Clone)]
pub struct Config {
    pub url: Url,
    pub transport: TransportConfig,
    pub machine: MachineConfig,
    pub backoff: BackoffPolicy,
}

impl Config {
    pub fn new(url: Url) -> Self {
        Config {
            url,
            transport: TransportConfig::default(),
            machine: MachineConfig::default(),
            backoff: BackoffPolicy::default(),
        }
    }
}

/// Receives the notices the user should see (failures, retry plans, refreshes).
pub type NoticeSink = Arc<dyn Fn(&Notice) + Send + Sync>;

/// A source of SIGINT/SIGTERM: `Some(sig)` once one arrived.
pub type SignalWatch = watch::Receiver<Option<Sig>>;

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
///         std::process::exit(2);
///     }
/// }
/// # }
/// ```
pub struct Supervisor {
    config: Config,
    credentials: Arc<dyn Credentials>,
    transport: Option<Transport>,
    jitter: Option<Jitter>,
    notices: Option<NoticeSink>,
    signals: Option<SignalWatch>,
    drain_timeout: Option<Duration>,
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
        }
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
        let backoff = Backoff::new(
            self.config.backoff,
            self.jitter.unwrap_or_else(Jitter::from_entropy),
        );
        let (link, ends) = session::link(session.outbound_capacity());
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
        };
        let outcome = driver.run().await;
        driver
            .finish(session_task, outcome, self.drain_timeout)
            .await
    }
}

fn log_notice(notice: &Notice) {
    tracing::info!(target: "wsup::notice", "{notice:?}");
}

/// A signal source that never fires (its sender is gone at once).
fn no_signals() -> SignalWatch {
    watch::channel(None).1
}

/// The process's SIGINT/SIGTERM, as a watch shared by every supervisor in the process.
///
/// Registered once, on a small thread of its own, so that it outlives any one tokio
/// runtime (tests and benchmarks create many). Once registered, the signals no longer
/// kill the process: the supervisors exit cleanly with 130/143 instead.
pub fn process_signals() -> SignalWatch {
    static SIGNALS: OnceLock<watch::Sender<Option<Sig>>> = OnceLock::new();
    SIGNALS
        .get_or_init(|| {
            let (tx, _) = watch::channel(None);
            let publisher = tx.clone();
            // Wait until the handlers are installed, so that a signal sent right after
            // this returns is not lost.
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("wsup-signals".into())
                .spawn(move || forward_signals(publisher, ready_tx));
            match spawned {
                Ok(_) => {
                    if let Ok(Err(e)) = ready_rx.recv() {
                        tracing::warn!("cannot listen for SIGINT/SIGTERM: {e}");
                    }
                }
                Err(e) => tracing::warn!("cannot start the signal thread: {e}"),
            }
            tx
        })
        .subscribe()
}

/// The body of the signal thread: its own small runtime, so that the signal stream is
/// registered with a reactor that lives as long as the process.
fn forward_signals(
    publisher: watch::Sender<Option<Sig>>,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    use futures_util::StreamExt;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let mut signals = match signal_hook_tokio::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ]) {
            Ok(signals) => signals,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        while let Some(signal) = signals.next().await {
            let sig = match signal {
                signal_hook::consts::SIGTERM => Sig::Terminate,
                _ => Sig::Interrupt,
            };
            publisher.send_replace(Some(sig));
        }
    });
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
        while self.outcome.is_none() {
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
            let event = tokio::select! {
                biased;
                changed = self.signals.changed(), if signals_open => {
                    match changed {
                        Ok(()) => match *self.signals.borrow_and_update() {
                            Some(sig) => Event::Signal(sig),
                            None => continue,
                        },
                        Err(_) => {
                            signals_open = false;
                            continue;
                        }
                    }
                }
                control = self.ends.control.recv(), if control_open => match control {
                    Some(session::Control::Interrupt) => Event::UserInterrupt,
                    Some(session::Control::LocalGone) => Event::LocalGone,
                    Some(session::Control::OutputFailed(error)) => Event::OutputFailed(error),
                    None => {
                        control_open = false;
                        continue;
                    }
                },
                io = poll_fn(|cx| {
                    let outbound = take_outbound.then_some(&mut self.ends.outbound);
                    self.conn.as_mut().map_or(Poll::Pending, |c| c.poll_io(cx, read_enabled, outbound))
                }), if self.conn.is_some() => match io {
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
                            // Messages the socket never took go out on the next
                            // connection, if the machine redials.
                            self.carried_over = conn.take_unsent_messages();
                            conn.retire();
                        }
                        Event::Closed(failure)
                    }
                },
                dialed = async { self.dialing.as_mut().expect("guarded").await }, if self.dialing.is_some() => {
                    self.dialing = None;
                    match dialed {
                        Ok(ws) => {
                            let mut conn = Conn::new(ws, D::wire_close);
                            conn.queue = std::mem::take(&mut self.carried_over);
                            self.conn = Some(conn);
                            self.unsent_at_close = false;
                            Event::DialSucceeded
                        }
                        Err(failure) => Event::DialFailed(failure),
                    }
                }
                refreshed = async { self.refreshing.as_mut().expect("guarded").await }, if self.refreshing.is_some() => {
                    self.refreshing = None;
                    Event::RefreshDone(refreshed)
                }
                permit = self.ends.inbound.reserve(), if self.pending_delivery.is_some() => {
                    match permit {
                        Ok(permit) => {
                            let message = self.pending_delivery.take().expect("guarded");
                            self.ends.inbound_budget.deliver(permit, message);
                            continue;
                        }
                        Err(_) => {
                            self.pending_delivery = None;
                            self.session_gone = true;
                            Event::LocalEof
                        }
                    }
                }
                () = self.ends.inbound_budget.room(), if inbound_full => continue,
                // The session dropped its inbound receiver (stdout closed, its task
                // ended): wind down once connected, like a local EOF. Checked only while
                // connected and not closing, so a session that vanished while offline is
                // noticed as soon as there is a connection to close.
                () = self.ends.inbound.closed(), if !self.session_gone && self.machine_accepts_outbound() => {
                    self.session_gone = true;
                    Event::LocalEof
                }
                kind = poll_fn(|cx| self.timers.poll_expired(cx)) => Event::Timer(kind),
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

    fn machine_accepts_outbound(&self) -> bool {
        self.machine.accepts_outbound()
    }

    /// One event in, its effects carried out. Effects that fail at once (the session is
    /// gone) produce follow-up events, handled in order.
    fn feed(&mut self, event: Event) {
        let mut next = Some(event);
        while let Some(event) = next.take() {
            // Not on the data path: frames and read pauses come by the thousand.
            if !matches!(
                event,
                Event::Received(_)
                    | Event::PingReceived
                    | Event::PongReceived
                    | Event::ReadsPaused
                    | Event::ReadsResumed
            ) {
                self.machine.set_credentials(self.credential_state());
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

    /// After the machine exited: let the close frame leave (briefly), hand the session
    /// what it is still owed and let it finish writing. Returns the outcome, which is
    /// [`Outcome::OutputLost`] instead of `Done` when the session could not write
    /// everything (a write error, or `drain_timeout` passed).
    async fn finish(
        &mut self,
        session_task: tokio::task::JoinHandle<()>,
        outcome: Outcome,
        drain_timeout: Option<Duration>,
    ) -> Outcome {
        let hurry = matches!(outcome, Outcome::Signal(_) | Outcome::Interrupted);
        if let Some(mut conn) = self.conn.take() {
            let _ = tokio::time::timeout(EXIT_FLUSH, poll_fn(|cx| conn.poll_flush_queue(cx))).await;
            // Our close frame is out: read (and drop) what the server still sends until its
            // own close, briefly. Exiting with its data unread in our receive buffer would
            // make the kernel answer with a reset, and the server could lose our close frame
            // (and its reason) to that reset. A server already declared dead is not waited
            // for, nor is anyone after a signal.
            let server_dead = matches!(
                &outcome,
                Outcome::RetriesExhausted {
                    failure: Failure::Liveness,
                    ..
                } | Outcome::Stopped {
                    failure: Failure::Liveness,
                    ..
                }
            );
            if !hurry && !server_dead {
                let _ = tokio::time::timeout(CLOSE_ANSWER_WAIT, async {
                    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut conn.ws).await {}
                })
                .await;
            }
        }
        // A session that already let go of its output (it dropped its receiver) owes
        // nothing: it gets a moment to finish, not an unbounded wait.
        let gave_up_output = self.ends.inbound.is_closed();
        if hurry || gave_up_output {
            // A signal wins: the session gets a moment, not its reader's pace.
            let deadline = Instant::now() + EXIT_FLUSH;
            if let Some(message) = self.pending_delivery.take() {
                if let Ok(Ok(permit)) =
                    tokio::time::timeout_at(deadline, self.ends.inbound.reserve()).await
                {
                    self.ends.inbound_budget.deliver(permit, message);
                }
            }
            close_inbound(&mut self.ends);
            let _ = tokio::time::timeout_at(deadline, session_task).await;
            if hurry {
                return outcome;
            }
            return self.output_failure_after(outcome);
        }
        // A normal end: every byte received is written, however slow the reader, unless
        // the user bounded the wait. A signal still ends it at once.
        let deadline = drain_timeout.map(|timeout| Instant::now() + timeout);
        let drained = {
            let signals = &mut self.signals;
            let ends = &mut self.ends;
            let pending = &mut self.pending_delivery;
            let drain = async move {
                // Taken only once there is room: a message still waiting when the timeout
                // passes is counted as not written.
                if pending.is_some() {
                    // An error means the session is gone; it reported why, if it had to,
                    // through its control channel.
                    if let Ok(permit) = ends.inbound.reserve().await {
                        if let Some(message) = pending.take() {
                            ends.inbound_budget.deliver(permit, message);
                        }
                    }
                }
                close_inbound(ends);
                let _ = session_task.await;
            };
            let bounded = async move {
                match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, drain).await.is_ok(),
                    None => {
                        drain.await;
                        true
                    }
                }
            };
            tokio::select! {
                biased;
                sig = signal_arrives(signals) => return Outcome::Signal(sig),
                drained = bounded => drained,
            }
        };
        let unwritten = self.ends.inbound_budget.unwritten()
            + self.pending_delivery.as_ref().map_or(0, Message::len);
        // Past the timeout with every byte out (the session was only winding down), the
        // output is whole: nothing to report.
        if !drained && unwritten > 0 {
            close_inbound(&mut self.ends);
            return match outcome {
                Outcome::Done => Outcome::OutputLost(OutputLoss::DrainTimeout {
                    unwritten: unwritten as u64,
                    timeout: drain_timeout.unwrap_or_default(),
                }),
                other => other,
            };
        }
        self.output_failure_after(outcome)
    }

    /// A write that failed as or after the machine stopped is only heard of here: it
    /// turns a normal end into lost output.
    fn output_failure_after(&mut self, outcome: Outcome) -> Outcome {
        while let Ok(control) = self.ends.control.try_recv() {
            if let (session::Control::OutputFailed(error), Outcome::Done) = (control, &outcome) {
                return Outcome::OutputLost(OutputLoss::WriteFailed(error));
            }
        }
        outcome
    }
}

/// A message read from the connection, as the machine's event. The machine takes no
/// websocket types: this and [`message_of`] are the edge.
fn inbound_event(message: Message) -> Event {
    match message {
        Message::Text(text) => {
            // SAFETY: tungstenite validated the frame as UTF-8 to make a `Utf8Bytes`.
            let text = unsafe { Text::from_utf8_unchecked(text.into()) };
            Event::Received(Payload::Text(text))
        }
        Message::Binary(bytes) => Event::Received(Payload::Binary(bytes)),
        Message::Ping(_) => Event::PingReceived,
        // A close frame is taken in `Conn::poll_io` (as `Closed`, with the wire's code),
        // and a raw frame is never read; both still prove the peer alive, like a pong.
        Message::Pong(_) | Message::Close(_) | Message::Frame(_) => Event::PongReceived,
    }
}

/// A payload from the machine as the message the connection or the session takes.
fn message_of(payload: Payload) -> Message {
    match payload {
        Payload::Text(text) => {
            // SAFETY: a `Text` is valid UTF-8 by construction.
            Message::Text(unsafe { Utf8Bytes::from_bytes_unchecked(text.into_bytes()) })
        }
        Payload::Binary(bytes) => Message::Binary(bytes),
    }
}

/// Closing the supervisor's end of the inbound channel tells the session that the
/// supervisor has stopped: it takes what is left, then `recv` returns `None`.
fn close_inbound(ends: &mut LinkEnds) {
    let (closed_tx, _) = mpsc::channel(1);
    drop(std::mem::replace(&mut ends.inbound, closed_tx));
}

/// Completes with the next SIGINT/SIGTERM (one that already arrived counts); never, if
/// the signal source is gone.
async fn signal_arrives(signals: &mut SignalWatch) -> Sig {
    loop {
        if let Some(sig) = *signals.borrow_and_update() {
            return sig;
        }
        if signals.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// An open websocket with its outgoing queue.
struct Conn<S> {
    ws: WebSocketStream<S>,
    /// The server's close frame as it was on the wire ([`Dialer::wire_close`]).
    wire_close: WireCloseOf<S>,
    queue: VecDeque<Message>,
    needs_flush: bool,
    /// Set when a write failed: the failure to report, unless the server's close frame
    /// arrives before the deadline.
    drain: Option<(Failure, Pin<Box<Sleep>>)>,
    /// Set when the server broke the protocol: reading has stopped, the session's answers
    /// to what it already got still go out, then our close frame.
    violation: Option<Violation>,
    /// Messages handed to the driver on this connection: with none, the session has
    /// nothing to answer and a violation closes at once.
    frames_read: u64,
}

/// A protocol violation the server committed, on its way to our close frame.
struct Violation {
    failure: Failure,
    /// Our close frame (1002/1007/1009 and a short reason) until it is queued.
    close: Option<CloseFrame>,
    /// End of the grace for the session's answers, then of the close frame's flush.
    deadline: Pin<Box<Sleep>>,
}

/// The close frame for a violation wsup detected in what the server sent (RFC 6455
/// §7.4.1: 1002 protocol error, 1007 invalid data, 1009 too big), or `None` when the
/// error is not the server breaking the protocol (I/O, a reset, our own state).
fn violation_close(failure: &Failure) -> Option<CloseFrame> {
    let Failure::Violation { code, detail } = failure else {
        return None;
    };
    // A close reason is at most 123 bytes (a control frame's 125 minus the code).
    let mut end = detail.len().min(123);
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    Some(CloseFrame {
        code: CloseCode::from(*code),
        reason: detail[..end].to_owned().into(),
    })
}

type WireCloseOf<S> = for<'a> fn(&'a S) -> Option<&'a WireClose>;

enum ConnEvent {
    Frame(Message),
    Closed(Failure),
    /// The session dropped its sender: everything it sent is in the queue.
    OutboundEnded,
}

/// Rounds of "take up to the queue bound, hand it to the websocket" in one `poll_io`, so
/// that a session that keeps the channel full cannot keep the driver from reading or
/// seeing a signal.
const OUTBOUND_ROUNDS_PER_POLL: usize = 8;

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn<S> {
    fn new(ws: WebSocketStream<S>, wire_close: WireCloseOf<S>) -> Self {
        Conn {
            ws,
            wire_close,
            queue: VecDeque::new(),
            needs_flush: false,
            drain: None,
            violation: None,
            frames_read: 0,
        }
    }

    /// Take the session's messages (when `outbound` is given) while the queue has room,
    /// push queued writes forward, then read one frame. A burst of small messages goes
    /// out in one flush.
    fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        read: bool,
        mut outbound: Option<&mut mpsc::Receiver<session::Outbound>>,
    ) -> Poll<ConnEvent> {
        let mut rounds = 0;
        let mut outbound_ended = false;
        while self.drain.is_none() {
            // Whether a wake-up is due when the session sends more: the channel said
            // Pending (its waker is registered), or messages are not taken now.
            let mut channel_waits = true;
            if let Some(receiver) = outbound.as_deref_mut() {
                channel_waits = false;
                while self.queue.len() < SEND_QUEUE_MESSAGES {
                    match receiver.poll_recv(cx) {
                        Poll::Ready(Some(item)) => {
                            self.queue.push_back(item.message);
                            // The session's byte budget is released once the socket has it.
                            drop(item.permit);
                        }
                        // After a violation, the session's end is the end of its answers.
                        Poll::Ready(None) if self.violation.is_some() => {
                            outbound_ended = true;
                            break;
                        }
                        Poll::Ready(None) => return Poll::Ready(ConnEvent::OutboundEnded),
                        Poll::Pending => {
                            channel_waits = true;
                            break;
                        }
                    }
                }
            }
            // Hand the queue to the websocket, which writes to the socket whenever its
            // buffer passes `write_buffer_size`; flush only once the session has nothing
            // more right now, so a burst of small messages costs a few syscalls, not one
            // per message.
            let sent = match self.poll_send_queue(cx) {
                Poll::Ready(Ok(())) if !channel_waits => {
                    // The queue was full: the session may have more, and nothing would
                    // wake us for it.
                    rounds += 1;
                    if rounds < OUTBOUND_ROUNDS_PER_POLL {
                        continue;
                    }
                    // Come back after the other arms had their turn.
                    cx.waker().wake_by_ref();
                    self.poll_flush(cx)
                }
                Poll::Ready(Ok(())) => self.poll_flush(cx),
                // The socket is full; its waker is registered.
                other => other,
            };
            if let Poll::Ready(Err(error)) = sent {
                self.drain = Some((
                    failure_from_ws_error(error),
                    Box::pin(tokio::time::sleep(DRAIN_AFTER_WRITE_ERROR)),
                ));
            }
            break;
        }
        if self.drain.is_none() && self.violation.is_some() {
            return self.poll_violation(cx, outbound_ended);
        }
        if read || self.drain.is_some() {
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Ready(Some(Ok(Message::Close(frame)))) => {
                    let wire = (self.wire_close)(self.ws.get_ref());
                    return Poll::Ready(ConnEvent::Closed(Failure::from_received_close(
                        frame.as_ref(),
                        wire,
                    )));
                }
                Poll::Ready(Some(Ok(message))) => {
                    self.frames_read += 1;
                    return Poll::Ready(ConnEvent::Frame(message));
                }
                Poll::Ready(Some(Err(error))) => {
                    let failure = match self.drain.take() {
                        Some((write_failure, _)) => write_failure,
                        None => failure_from_ws_error(error),
                    };
                    if let Some(close) = violation_close(&failure) {
                        // What arrived before the violation was delivered; give the
                        // session a short grace to answer it (nothing to answer: none).
                        let grace = if self.frames_read == 0 {
                            Duration::ZERO
                        } else {
                            DRAIN_AFTER_WRITE_ERROR
                        };
                        self.violation = Some(Violation {
                            failure,
                            close: Some(close),
                            deadline: Box::pin(tokio::time::sleep(grace)),
                        });
                        return self.poll_violation(cx, false);
                    }
                    return Poll::Ready(ConnEvent::Closed(failure));
                }
                Poll::Ready(None) => {
                    let failure = match self.drain.take() {
                        Some((write_failure, _)) => write_failure,
                        None => Failure::Network {
                            kind: NetworkKind::Eof,
                            detail: String::new(),
                        },
                    };
                    return Poll::Ready(ConnEvent::Closed(failure));
                }
                Poll::Pending => {}
            }
        }
        if let Some((failure, deadline)) = self.drain.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(ConnEvent::Closed(failure.clone()));
            }
        }
        Poll::Pending
    }

    /// Whether anything queued (the session's messages, our close frame) has not reached
    /// the socket yet.
    fn has_unsent(&self) -> bool {
        !self.queue.is_empty() || self.needs_flush
    }

    /// The session's messages still in the queue (not pings, not close frames).
    fn take_unsent_messages(&mut self) -> VecDeque<Message> {
        self.queue
            .drain(..)
            .filter(|m| matches!(m, Message::Text(_) | Message::Binary(_)))
            .collect()
    }

    /// After a violation: the session's answers go out until the grace ends (or the
    /// session ends), then our close frame; Closed once it is flushed, or could not be
    /// within the same bound again.
    fn poll_violation(&mut self, cx: &mut Context<'_>, outbound_ended: bool) -> Poll<ConnEvent> {
        let Some(violation) = self.violation.as_mut() else {
            return Poll::Pending;
        };
        if violation.close.is_some() {
            if !outbound_ended && violation.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.queue.push_back(Message::Close(violation.close.take()));
            violation
                .deadline
                .as_mut()
                .reset(Instant::now() + DRAIN_AFTER_WRITE_ERROR);
        }
        let flushed = self.poll_flush_queue(cx).is_ready();
        let Some(violation) = self.violation.as_mut() else {
            return Poll::Pending;
        };
        if flushed || violation.deadline.as_mut().poll(cx).is_ready() {
            let failure = violation.failure.clone();
            self.violation = None;
            return Poll::Ready(ConnEvent::Closed(failure));
        }
        Poll::Pending
    }

    /// Ready(Ok) once everything queued is written and flushed.
    fn poll_flush_queue(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tokio_tungstenite::tungstenite::Error>> {
        match self.poll_send_queue(cx) {
            Poll::Ready(Ok(())) => self.poll_flush(cx),
            other => other,
        }
    }

    /// Ready(Ok) once everything queued is in the websocket's write buffer (parts of it
    /// may already be on the socket).
    fn poll_send_queue(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tokio_tungstenite::tungstenite::Error>> {
        let mut ws = Pin::new(&mut self.ws);
        while !self.queue.is_empty() {
            match ws.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let message = self.queue.pop_front().expect("not empty");
                    ws.as_mut().start_send(message)?;
                    self.needs_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Ready(Ok) once what the websocket buffered is on the socket.
    fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tokio_tungstenite::tungstenite::Error>> {
        if self.needs_flush {
            ready!(Pin::new(&mut self.ws).poll_flush(cx))?;
            self.needs_flush = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Finish the closing handshake in the background, bounded, then drop the socket.
    fn retire(mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        tokio::spawn(async move {
            let _ = tokio::time::timeout(RETIRE_GRACE, async {
                let _ = poll_fn(|cx| self.poll_flush_queue(cx)).await;
                let _ = futures_util::SinkExt::close(&mut self.ws).await;
            })
            .await;
        });
    }
}

/// The machine's timers on one tokio `Sleep`. Re-arming a timer to a later deadline
/// (liveness, on every frame) only stores an `Instant`; the sleep is reset only when the
/// earliest deadline changes, so the data path does no timer-wheel work.
struct Timers {
    deadlines: [Option<Instant>; TimerKind::ALL.len()],
    sleep: Pin<Box<Sleep>>,
    armed_for: Option<Instant>,
}

impl Timers {
    fn new() -> Self {
        Timers {
            deadlines: [None; TimerKind::ALL.len()],
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed_for: None,
        }
    }

    fn start(&mut self, kind: TimerKind, after: Duration) {
        self.deadlines[kind.index()] = Some(Instant::now() + after);
    }

    fn cancel(&mut self, kind: TimerKind) {
        self.deadlines[kind.index()] = None;
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<TimerKind> {
        loop {
            let Some(earliest) = self.deadlines.iter().flatten().min().copied() else {
                self.armed_for = None;
                return Poll::Pending;
            };
            if self.armed_for != Some(earliest) {
                self.sleep.as_mut().reset(earliest);
                self.armed_for = Some(earliest);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.armed_for = None;
            let now = Instant::now();
            if let Some(slot) = self
                .deadlines
                .iter()
                .position(|d| d.is_some_and(|d| d <= now))
            {
                self.deadlines[slot] = None;
                return Poll::Ready(TimerKind::ALL[slot]);
            }
        }
    }
}
