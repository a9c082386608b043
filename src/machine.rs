//! The supervisor's state machine: every decision wsup makes lives here.
//!
//! ```text
//! Idle ── Start ──▶ Running
//! Running (superstate: SIGINT/SIGTERM → Terminated)
//! ├── Offline (superstate: user Ctrl+C byte → Terminated(130))
//! │   ├── Dialing { attempt, guards }
//! │   ├── RefreshingToken { reason, attempt, guards }
//! │   └── Backoff { attempt, delay, resume, guards }
//! └── Connected { since_stable, closing, close_sent, guards }
//! Terminated { outcome }   (absorbing)
//! ```
//!
//! Sans-IO, in the manner of quinn-proto and rustls: [`Machine::handle`] takes an
//! [`Event`] and returns [`Effect`]s. There is no clock, socket, task or thread in here;
//! time arrives as `Timer` events, randomness through the injected [`Backoff`], and the
//! credentials' state through [`CredentialState`]. That makes every transition sequence
//! reproducible in microseconds, which is what the property tests lean on.
//!
//! The guards (`refreshed_in_streak`, `failures_in_streak`) are state data carried from
//! state to state, and are reset only once a connection has stayed up for
//! `stable_after`: a server that upgrades and then immediately closes 1008 must not be
//! able to drive an endless refresh loop.
//!
//! The file is about 1,000 lines on purpose: statig's state machine is one `impl` block,
//! and the states, their handlers and the policy helpers they call read best together
//! (the unit tests are in `machine/tests.rs`).

use crate::backoff::Backoff;
use crate::classify::{Class, ClassifyRules, Failure};
use bytes::Bytes;
use statig::blocking::state_machine;
use statig::blocking::{InitializedStateMachine, IntoStateMachineExt};
use statig::Outcome as Handling;
use statig::Outcome::{Handled, Super, Transition};
use std::fmt;
use std::time::Duration;

/// A message's content. The machine only passes it on; it is its own type so that the
/// machine depends on no websocket library (the driver converts at its edge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Text(Text),
    Binary(Bytes),
}

/// UTF-8 text held as shared bytes, so that a text message crosses the machine without
/// a copy or a second validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(Bytes);

impl Text {
    /// # Safety
    /// `bytes` must be valid UTF-8 (the driver builds it from a text frame the
    /// websocket layer already validated).
    pub unsafe fn from_utf8_unchecked(bytes: Bytes) -> Self {
        Text(bytes)
    }

    /// The text's bytes, valid UTF-8.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The text's length in bytes (what `--record` writes instead of the text).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&'static str> for Text {
    fn from(text: &'static str) -> Self {
        Text(Bytes::from_static(text.as_bytes()))
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Text(Bytes::from(text))
    }
}

/// Everything that can happen to a supervised connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Begin supervising.
    Start,
    DialSucceeded,
    DialFailed(Failure),
    /// A message arrived on the open connection.
    Received(Payload),
    /// The server pinged us (the websocket layer answers it).
    PingReceived,
    /// The server answered a ping.
    PongReceived,
    /// The open connection ended (the server's close frame, a reset, EOF): the one way a
    /// close reaches the machine.
    Closed(Failure),
    Timer(TimerKind),
    RefreshDone(Result<(), Failure>),
    Signal(Sig),
    /// The user pressed Ctrl+C inside the session (a raw terminal's 0x03 byte).
    UserInterrupt,
    /// The local side has nothing more to send (stdin EOF).
    LocalEof,
    /// The local side gave the session something it cannot send (a stdin line over
    /// `--max-line`), after everything before it was handed to the connection: the
    /// session stops with the failure's class.
    InputRejected(Failure),
    /// The local side left while offline (a port-forward client that closed before its
    /// tunnel was up): stop at once, nothing more to dial for.
    LocalGone,
    /// The session could not write what it received (stdout failed with an error other
    /// than a broken pipe): the output is lost, the session ends.
    OutputFailed(String),
    /// The driver stopped reading the connection because the session is behind (a paused
    /// pager, a slow disk). "Nothing received" means nothing then: that is our own
    /// back-pressure, not a dead server, so the liveness deadline is held.
    ReadsPaused,
    /// Reading again: the server gets a whole liveness window from now to be heard.
    ReadsResumed,
}

/// What the driver must do on the machine's behalf.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Open a new connection; answer with `DialSucceeded` or `DialFailed`.
    Dial,
    /// Queue a message on the connection.
    Send(Payload),
    /// Queue a ping on the connection.
    SendPing,
    /// Hand a message to the session.
    Deliver(Payload),
    /// Send a close frame; the connection is dropped once the machine leaves Connected.
    Close(u16, String),
    /// (Re)arm a timer; answer with `Timer(kind)` when it fires.
    StartTimer(TimerKind, Duration),
    CancelTimer(TimerKind),
    /// Refresh the credentials; answer with `RefreshDone`. With
    /// [`RefreshReason::Rejected`], the token the last dial sent is the one the server
    /// rejected (a refresh can then tell whether someone else already replaced it).
    Refresh(RefreshReason),
    Notify(Notice),
    /// Stop: the session is over.
    Exit(Outcome),
}

/// The machine's timers. The discriminants are `0..ALL.len()`, so a table of timers is
/// an array indexed by [`TimerKind::index`] (as quinn-proto's `TimerTable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
// The recording format (`--record`, src/record.rs) writes these as they are.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// The backoff delay has passed: redial.
    Backoff,
    /// Time to send a ping.
    Ping,
    /// Nothing was received for `ping_interval + pong_timeout`: the connection is dead.
    Liveness,
    /// The connection has stayed up `stable_after`: reset the guards.
    Stable,
    /// We sent our close frame; stop waiting for the server's.
    CloseGrace,
    /// The local side finished and the server has been quiet for `linger`: send our
    /// close frame. Re-armed by every message received while lingering, so that replies
    /// to the last thing we sent are not cut off.
    Linger,
}

impl TimerKind {
    /// Every timer, in discriminant order: `ALL[kind.index()] == kind`.
    pub const ALL: [TimerKind; 6] = [
        TimerKind::Backoff,
        TimerKind::Ping,
        TimerKind::Liveness,
        TimerKind::Stable,
        TimerKind::CloseGrace,
        TimerKind::Linger,
    ];

    /// The timer's name in logs and in `wsup states`.
    pub const fn name(self) -> &'static str {
        match self {
            TimerKind::Backoff => "timer(backoff)",
            TimerKind::Ping => "timer(ping)",
            TimerKind::Liveness => "timer(liveness)",
            TimerKind::Stable => "timer(stable)",
            TimerKind::CloseGrace => "timer(close_grace)",
            TimerKind::Linger => "timer(linger)",
        }
    }

    /// This timer's slot in a table of [`TimerKind::ALL`]`.len()` entries.
    pub const fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
// The recording format (`--record`, src/record.rs) writes these as they are.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sig {
    Interrupt,
    Terminate,
}

/// Why the machine is fetching a new token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// The recording format (`--record`, src/record.rs) writes these as they are.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshReason {
    /// The token expires soon: refresh before dialing.
    Proactive,
    /// The server rejected the token: refresh once, then redial at once.
    Rejected,
}

/// After a backoff, what to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    Dial,
    Refresh(RefreshReason),
}

/// The per-streak guards, carried as state data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Guards {
    /// A forced refresh already happened in this streak: a second auth failure stops.
    pub(crate) refreshed_in_streak: bool,
    /// Failures since the last stable connection: drives backoff and `max_retries`.
    pub(crate) failures_in_streak: u32,
}

/// How a supervised session ended.
#[derive(Debug, Clone, PartialEq)]
// The recording format (`--record`, src/record.rs) writes these as they are.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The server closed normally, or the local side finished.
    Done,
    /// A failure that retrying cannot fix (or that we may not retry).
    Stopped {
        class: Class,
        failure: Failure,
    },
    /// Transient failures outlasted `max_retries`.
    RetriesExhausted {
        failure: Failure,
        retries: u32,
    },
    Signal(Sig),
    /// Ctrl+C while offline.
    Interrupted,
    /// What the server sent could not all be written out (exit 74, EX_IOERR).
    OutputLost(OutputLoss),
}

/// Why output was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
// The recording format (`--record`, src/record.rs) writes these as they are.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputLoss {
    /// Writing failed with this error (never a broken pipe: a reader that went away
    /// chose to stop reading, and that ends the session quietly).
    WriteFailed(String),
    /// The session's output was still not written when the drain timeout passed.
    DrainTimeout {
        /// Bytes received and not written.
        unwritten: u64,
        timeout: std::time::Duration,
    },
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Done => crate::exit::OK,
            Outcome::Stopped { class, .. } => class.exit_code(),
            Outcome::RetriesExhausted { .. } => crate::exit::TEMP_FAIL,
            Outcome::Signal(Sig::Interrupt) | Outcome::Interrupted => crate::exit::SIGINT,
            Outcome::Signal(Sig::Terminate) => crate::exit::SIGTERM,
            Outcome::OutputLost(_) => crate::exit::IO_ERROR,
        }
    }
}

/// Things the user should hear about before the session ends.
#[derive(Debug, Clone, PartialEq)]
// The recording format (`--record`, src/record.rs) writes these as they are.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notice {
    /// A transient failure; the next attempt comes after `delay`.
    Retrying {
        failure: Failure,
        delay: Duration,
        attempt: u32,
        max_retries: Option<u32>,
    },
    /// Fetching a new token.
    Refreshing {
        reason: RefreshReason,
        failure: Option<Failure>,
    },
    /// Connected again after at least one failure.
    Reconnected,
    /// The server ended the session normally (a close it started, not the answer to
    /// ours): said once, so that a normal end is not silent.
    ServerClosed { code: u16, reason: String },
}

/// What the machine knows about the credentials, refreshed by the driver before each
/// event. The machine never sees a token; it only asks "may I refresh?".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CredentialState {
    pub refreshable: bool,
    /// The token expires within 60 s: refresh before dialing.
    pub expiring_soon: bool,
}

/// The tunables of the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineConfig {
    pub rules: ClassifyRules,
    /// Redials allowed after failures since the last stable connection; `None` = unlimited.
    pub max_retries: Option<u32>,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub stable_after: Duration,
    /// After our close frame, how long to wait for the server's.
    pub close_grace: Duration,
    /// After the local side finished (stdin EOF), how long the server must stay quiet
    /// before we send our close frame; zero closes at once.
    pub linger: Duration,
    /// Whether a connection lost after it was established is redialed. A port-forward
    /// tunnel carries a byte stream that cannot be resumed, so it stops instead.
    pub redial_after_connected: bool,
}

impl MachineConfig {
    /// How long the server may stay silent before the connection is declared dead:
    /// `ping_interval + pong_timeout`.
    pub fn liveness_window(&self) -> Duration {
        self.ping_interval + self.pong_timeout
    }
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            rules: ClassifyRules::default(),
            max_retries: None,
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(20),
            stable_after: Duration::from_secs(10),
            close_grace: Duration::from_secs(2),
            linger: Duration::from_secs(1),
            redial_after_connected: true,
        }
    }
}

/// The close code we send when we leave on our own (signal, liveness): "going away".
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// The byte a raw terminal sends for Ctrl+C.
pub const CTRL_C: u8 = 0x03;

/// What the supervision keeps across all states (statig's shared storage, the `self` of
/// every state handler): the configuration, the jitter source, and the few facts about
/// the session that outlive any one state.
#[derive(Debug)]
pub(crate) struct Supervision {
    config: MachineConfig,
    backoff: Backoff,
    /// A connection of this session has succeeded: from then on a host name that is not
    /// found is a DNS hiccup (transient), not a typo in the URL (permanent).
    has_connected: bool,
    /// The driver is not reading the connection (see [`Event::ReadsPaused`]): the
    /// liveness timer is held until reads resume. Kept here, not in `Connected`, because
    /// a pause can outlast a connection (the session is still behind on the last one's
    /// messages when the next one opens).
    reads_paused: bool,
}

/// The context of one dispatch (statig's per-call context): what goes in (credential
/// state, which event, whether writes are pending) and what comes out (the effects, the
/// reason for a transition, for the log line).
#[derive(Debug, Default)]
pub(crate) struct DispatchContext {
    effects: Vec<Effect>,
    creds: CredentialState,
    event: &'static str,
    reason: Option<String>,
    /// Messages or our close frame were still waiting to be written when this event
    /// came in (set by the driver, like `creds`).
    outbound_pending: bool,
}

impl DispatchContext {
    fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }
}

#[state_machine(
    initial = "State::idle()",
    after_transition = "Self::after_transition",
    // `State` and `Superstate` are internals: the public view is `Machine::state_name`.
    visibility = "pub(crate)",
    state(derive(Debug, Clone, PartialEq)),
    superstate(derive(Debug))
)]
impl Supervision {
    /// Before `Start`: nothing has been dialed yet.
    #[state]
    fn idle(&mut self, context: &mut DispatchContext, event: &Event) -> Handling<State> {
        match event {
            Event::Start => Transition(self.dial_or_refresh(context, 0, Guards::default())),
            Event::Signal(sig) => Transition(State::terminated(Outcome::Signal(*sig))),
            Event::UserInterrupt => Transition(State::terminated(Outcome::Interrupted)),
            _ => Handled,
        }
    }

    #[superstate]
    fn running(&mut self, event: &Event) -> Handling<State> {
        match event {
            Event::ReadsPaused => {
                self.reads_paused = true;
                Handled
            }
            Event::ReadsResumed => {
                self.reads_paused = false;
                Handled
            }
            Event::Signal(sig) => Transition(State::terminated(Outcome::Signal(*sig))),
            Event::InputRejected(failure) => Transition(State::terminated(Outcome::Stopped {
                class: self.config.rules.classify(failure),
                failure: failure.clone(),
            })),
            Event::OutputFailed(error) => Transition(State::terminated(Outcome::OutputLost(
                OutputLoss::WriteFailed(error.clone()),
            ))),
            // Stray events (a frame from a connection already given up on, a timer
            // that raced its cancellation) are ignored.
            _ => Handled,
        }
    }

    #[superstate(superstate = "running")]
    fn offline(event: &Event) -> Handling<State> {
        match event {
            Event::UserInterrupt => Transition(State::terminated(Outcome::Interrupted)),
            Event::LocalGone => Transition(State::terminated(Outcome::Done)),
            _ => Super,
        }
    }

    #[state(superstate = "offline", entry_action = "enter_dialing")]
    fn dialing(
        &mut self,
        context: &mut DispatchContext,
        attempt: &mut u32,
        guards: &mut Guards,
        event: &Event,
    ) -> Handling<State> {
        match event {
            Event::DialSucceeded => {
                self.has_connected = true;
                if *attempt > 0 || guards.refreshed_in_streak {
                    context.push(Effect::Notify(Notice::Reconnected));
                }
                Transition(State::connected(false, false, false, *guards))
            }
            Event::DialFailed(failure) => {
                Transition(self.after_failure(context, failure.clone(), *guards))
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_dialing(context: &mut DispatchContext) {
        context.push(Effect::Dial);
    }

    #[state(superstate = "offline", entry_action = "enter_refreshing_token")]
    fn refreshing_token(
        &mut self,
        context: &mut DispatchContext,
        reason: &mut RefreshReason,
        attempt: &mut u32,
        guards: &mut Guards,
        event: &Event,
    ) -> Handling<State> {
        match event {
            Event::RefreshDone(Ok(())) => Transition(State::dialing(*attempt, *guards)),
            Event::RefreshDone(Err(failure)) => {
                context.reason = Some(failure.label());
                Transition(match self.config.rules.classify(failure) {
                    Class::Transient => self.retry_later(
                        context,
                        failure.clone(),
                        *guards,
                        Resume::Refresh(*reason),
                    ),
                    class => State::terminated(Outcome::Stopped {
                        class,
                        failure: failure.clone(),
                    }),
                })
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_refreshing_token(context: &mut DispatchContext, reason: &mut RefreshReason) {
        context.push(Effect::Refresh(*reason));
    }

    #[state(
        superstate = "offline",
        entry_action = "enter_backoff",
        exit_action = "exit_backoff"
    )]
    fn backoff(
        &mut self,
        context: &mut DispatchContext,
        attempt: &mut u32,
        delay: &mut Duration,
        resume: &mut Resume,
        guards: &mut Guards,
        event: &Event,
    ) -> Handling<State> {
        let _ = delay;
        match event {
            Event::Timer(TimerKind::Backoff) => Transition(match resume {
                Resume::Dial => self.dial_or_refresh(context, *attempt, *guards),
                Resume::Refresh(reason) => State::refreshing_token(*reason, *attempt, *guards),
            }),
            _ => Super,
        }
    }

    #[action]
    fn enter_backoff(context: &mut DispatchContext, delay: &mut Duration) {
        context.push(Effect::StartTimer(TimerKind::Backoff, *delay));
    }

    #[action]
    fn exit_backoff(context: &mut DispatchContext) {
        context.push(Effect::CancelTimer(TimerKind::Backoff));
    }

    #[state(
        superstate = "running",
        entry_action = "enter_connected",
        exit_action = "exit_connected"
    )]
    fn connected(
        &mut self,
        context: &mut DispatchContext,
        since_stable: &mut bool,
        closing: &mut bool,
        close_sent: &mut bool,
        guards: &mut Guards,
        event: &Event,
    ) -> Handling<State> {
        match event {
            Event::Received(payload) => {
                // Anything at all proves the peer is alive.
                self.rearm_liveness(context);
                if *closing && !*close_sent {
                    // The server is still answering: keep lingering.
                    context.push(Effect::StartTimer(TimerKind::Linger, self.config.linger));
                }
                context.push(Effect::Deliver(payload.clone()));
                Handled
            }
            Event::PingReceived | Event::PongReceived => {
                self.rearm_liveness(context);
                Handled
            }
            Event::Closed(failure) => {
                Transition(self.after_disconnect(context, failure.clone(), *closing, *guards))
            }
            Event::Timer(TimerKind::Ping) => {
                context.push(Effect::SendPing);
                context.push(Effect::StartTimer(
                    TimerKind::Ping,
                    self.config.ping_interval,
                ));
                Handled
            }
            Event::ReadsPaused => {
                self.reads_paused = true;
                context.push(Effect::CancelTimer(TimerKind::Liveness));
                Handled
            }
            Event::ReadsResumed => {
                self.reads_paused = false;
                self.rearm_liveness(context);
                Handled
            }
            // Held while reads are paused; a timer that raced its cancellation is stray.
            Event::Timer(TimerKind::Liveness) if self.reads_paused => Handled,
            Event::Timer(TimerKind::Liveness) => {
                // Once our close frame is on its way, do not queue a second one.
                if !*close_sent {
                    context.push(Effect::Close(
                        CLOSE_GOING_AWAY,
                        "no data received before the liveness deadline".into(),
                    ));
                }
                Transition(self.after_disconnect(context, Failure::Liveness, *closing, *guards))
            }
            Event::Timer(TimerKind::Stable) => {
                // The connection proved itself: a new streak starts.
                *since_stable = true;
                *guards = Guards::default();
                Handled
            }
            Event::Timer(TimerKind::CloseGrace) if *close_sent => {
                Transition(State::terminated(Outcome::Done))
            }
            Event::Timer(TimerKind::Linger) if *closing && !*close_sent => {
                *close_sent = true;
                self.send_close(context);
                Handled
            }
            Event::LocalEof if !*closing => {
                *closing = true;
                if self.config.linger.is_zero() {
                    *close_sent = true;
                    self.send_close(context);
                } else {
                    // What the session queued goes out first; replies to it may follow.
                    context.push(Effect::StartTimer(TimerKind::Linger, self.config.linger));
                }
                Handled
            }
            Event::UserInterrupt => {
                // After our close frame nothing more may be sent.
                if !*closing {
                    context.push(Effect::Send(Payload::Binary(Bytes::from_static(&[CTRL_C]))));
                }
                Handled
            }
            Event::Signal(_) => {
                if !*close_sent {
                    context.push(Effect::Close(CLOSE_GOING_AWAY, String::new()));
                }
                Super
            }
            Event::InputRejected(_) => {
                // We leave on our own: what was queued before goes out, then our close.
                if !*close_sent {
                    context.push(Effect::Close(
                        CLOSE_GOING_AWAY,
                        "local input cannot be sent".into(),
                    ));
                }
                Super
            }
            Event::OutputFailed(_) => {
                // Nobody can see what the server sends any more: tell it we are going.
                if !*close_sent {
                    context.push(Effect::Close(CLOSE_GOING_AWAY, "output lost".into()));
                }
                Super
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_connected(&mut self, context: &mut DispatchContext, since_stable: &mut bool) {
        context.push(Effect::StartTimer(
            TimerKind::Ping,
            self.config.ping_interval,
        ));
        self.rearm_liveness(context);
        if !*since_stable {
            context.push(Effect::StartTimer(
                TimerKind::Stable,
                self.config.stable_after,
            ));
        }
    }

    #[action]
    fn exit_connected(context: &mut DispatchContext) {
        // Every timer but the backoff's belongs to the connection.
        for kind in TimerKind::ALL {
            if kind != TimerKind::Backoff {
                context.push(Effect::CancelTimer(kind));
            }
        }
    }

    /// Absorbing: every event is ignored.
    #[state(entry_action = "enter_terminated")]
    fn terminated(outcome: &mut Outcome) -> Handling<State> {
        let _ = outcome;
        Handled
    }

    #[action]
    fn enter_terminated(context: &mut DispatchContext, outcome: &mut Outcome) {
        context.push(Effect::Exit(outcome.clone()));
    }
}

impl Supervision {
    /// A whole liveness window from now, unless reads are paused (then the deadline is
    /// held until they resume).
    fn rearm_liveness(&self, context: &mut DispatchContext) {
        if !self.reads_paused {
            context.push(Effect::StartTimer(
                TimerKind::Liveness,
                self.config.liveness_window(),
            ));
        }
    }

    /// Dial next, unless the token is about to expire and can be refreshed first.
    fn dial_or_refresh(&self, context: &DispatchContext, attempt: u32, guards: Guards) -> State {
        if context.creds.refreshable && context.creds.expiring_soon {
            State::refreshing_token(RefreshReason::Proactive, attempt, guards)
        } else {
            State::dialing(attempt, guards)
        }
    }

    /// Our close frame (normal closure), then wait `close_grace` for the server's.
    fn send_close(&self, context: &mut DispatchContext) {
        context.push(Effect::Close(1000, String::new()));
        context.push(Effect::StartTimer(
            TimerKind::CloseGrace,
            self.config.close_grace,
        ));
    }

    /// The connection went away after it was established.
    fn after_disconnect(
        &mut self,
        context: &mut DispatchContext,
        failure: Failure,
        closing: bool,
        guards: Guards,
    ) -> State {
        if closing && self.ends_a_finished_session(context, &failure) {
            context.reason = Some(failure.label());
            return State::terminated(Outcome::Done);
        }
        if !self.config.redial_after_connected {
            context.reason = Some(failure.label());
            let class = self.config.rules.classify(&failure);
            return State::terminated(match class {
                Class::Done => Outcome::Done,
                class => Outcome::Stopped { class, failure },
            });
        }
        self.after_failure(context, failure, guards)
    }

    /// While we are closing (the local side finished), whether the connection's end is
    /// the normal end of the session: a close 1000 or 1001 or one without a code, or a
    /// transient end once everything we queued was written. Anything else (auth,
    /// permission, rejected data, permanent, or a transient end that lost data) is
    /// classified as if we were not closing, so the exit code does not depend on whether
    /// the server's close raced our stdin EOF.
    fn ends_a_finished_session(&self, context: &DispatchContext, failure: &Failure) -> bool {
        if let Failure::Close {
            code: 1000 | 1001 | 1005,
            ..
        } = failure
        {
            return true;
        }
        match self.config.rules.classify(failure) {
            Class::Done => true,
            Class::Transient => !context.outbound_pending,
            _ => false,
        }
    }

    /// The heart of the policy: what a failure leads to.
    fn after_failure(
        &mut self,
        context: &mut DispatchContext,
        failure: Failure,
        mut guards: Guards,
    ) -> State {
        context.reason = Some(failure.label());
        let class = self
            .config
            .rules
            .classify_in_session(&failure, self.has_connected);
        match class {
            Class::Done => {
                if let Failure::Close { code, reason } = failure {
                    context.push(Effect::Notify(Notice::ServerClosed { code, reason }));
                }
                State::terminated(Outcome::Done)
            }
            Class::Transient => self.retry_later(context, failure, guards, Resume::Dial),
            Class::Auth
                if context.creds.refreshable
                    && !guards.refreshed_in_streak
                    && failure.refresh_may_help() =>
            {
                guards.refreshed_in_streak = true;
                context.push(Effect::Notify(Notice::Refreshing {
                    reason: RefreshReason::Rejected,
                    failure: Some(failure),
                }));
                // The redial after a forced refresh is free: it does not count.
                State::refreshing_token(RefreshReason::Rejected, guards.failures_in_streak, guards)
            }
            class => State::terminated(Outcome::Stopped { class, failure }),
        }
    }

    /// Count a transient failure against the budget and back off, or give up.
    fn retry_later(
        &mut self,
        context: &mut DispatchContext,
        failure: Failure,
        mut guards: Guards,
        resume: Resume,
    ) -> State {
        guards.failures_in_streak = guards.failures_in_streak.saturating_add(1);
        let attempt = guards.failures_in_streak;
        if let Some(max) = self.config.max_retries {
            if attempt > max {
                return State::terminated(Outcome::RetriesExhausted {
                    failure,
                    retries: max,
                });
            }
        }
        let delay = self.backoff.delay(attempt, failure.retry_after());
        context.push(Effect::Notify(Notice::Retrying {
            failure,
            delay,
            attempt,
            max_retries: self.config.max_retries,
        }));
        State::backoff(attempt, delay, resume, guards)
    }

    fn after_transition(&mut self, source: &State, target: &State, context: &mut DispatchContext) {
        let (attempt, delay_ms) = match target {
            State::Dialing { attempt, .. } | State::RefreshingToken { attempt, .. } => {
                (Some(*attempt), None)
            }
            State::Backoff { attempt, delay, .. } => {
                (Some(*attempt), Some(delay.as_millis() as u64))
            }
            _ => (None, None),
        };
        let reason = context.reason.take();
        // Leaving `Idle` (the state before `Start`, not in DESIGN.md's diagram) is traced
        // one level lower, so `-v` and `wsup demo` show the diagram's states only.
        macro_rules! transition {
            ($level:expr) => {
                tracing::event!(
                    target: "wsup::machine",
                    $level,
                    from = state_name(source),
                    to = state_name(target),
                    event = context.event,
                    attempt,
                    delay_ms,
                    reason = reason.as_deref(),
                    "{} -> {}",
                    state_name(source),
                    state_name(target),
                )
            };
        }
        if matches!(source, State::Idle {}) {
            transition!(tracing::Level::TRACE);
        } else {
            transition!(tracing::Level::DEBUG);
        }
    }
}

/// The names used in logs, notices and docs.
pub(crate) fn state_name(state: &State) -> &'static str {
    match state {
        State::Idle {} => "Idle",
        State::Dialing { .. } => "Dialing",
        State::RefreshingToken { .. } => "RefreshingToken",
        State::Backoff { .. } => "Backoff",
        State::Connected { .. } => "Connected",
        State::Terminated { .. } => "Terminated",
    }
}

fn event_name(event: &Event) -> &'static str {
    match event {
        Event::Start => "start",
        Event::DialSucceeded => "dial_succeeded",
        Event::DialFailed(_) => "dial_failed",
        Event::Received(_) => "received",
        Event::PingReceived => "ping_received",
        Event::PongReceived => "pong_received",
        Event::Closed(_) => "closed",
        Event::Timer(TimerKind::Backoff) => "timer_backoff",
        Event::Timer(TimerKind::Ping) => "timer_ping",
        Event::Timer(TimerKind::Liveness) => "timer_liveness",
        Event::Timer(TimerKind::Stable) => "timer_stable",
        Event::Timer(TimerKind::CloseGrace) => "timer_close_grace",
        Event::Timer(TimerKind::Linger) => "timer_linger",
        Event::RefreshDone(Ok(())) => "refresh_ok",
        Event::RefreshDone(Err(_)) => "refresh_failed",
        Event::Signal(Sig::Interrupt) => "sigint",
        Event::Signal(Sig::Terminate) => "sigterm",
        Event::UserInterrupt => "user_interrupt",
        Event::LocalEof => "local_eof",
        Event::InputRejected(_) => "input_rejected",
        Event::LocalGone => "local_gone",
        Event::OutputFailed(_) => "output_failed",
        Event::ReadsPaused => "reads_paused",
        Event::ReadsResumed => "reads_resumed",
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(state_name(self))
    }
}

/// The supervisor's state machine with its per-dispatch context.
pub struct Machine {
    inner: InitializedStateMachine<Supervision>,
    context: DispatchContext,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("state", self.state())
            .finish()
    }
}

impl Machine {
    pub fn new(config: MachineConfig, backoff: Backoff) -> Self {
        let mut context = DispatchContext::default();
        let inner = Supervision {
            config,
            backoff,
            has_connected: false,
            reads_paused: false,
        }
        .uninitialized_state_machine()
        .init_with_context(&mut context);
        Machine { inner, context }
    }

    /// Tell the machine what it may do with the credentials (refreshed by the driver).
    pub fn set_credentials(&mut self, creds: CredentialState) {
        self.context.creds = creds;
    }

    /// Tell the machine whether messages (or our close frame) still wait to be written
    /// (refreshed by the driver before each event): a transient end while closing is the
    /// session's normal end only when nothing was left unsent.
    pub fn set_outbound_pending(&mut self, pending: bool) {
        self.context.outbound_pending = pending;
    }

    /// Feed one event; returns the effects the driver must carry out, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Effect> {
        let mut out = Vec::new();
        self.handle_into(&event, &mut out);
        out
    }

    /// Like [`Machine::handle`], appending to a buffer the caller reuses: no allocation
    /// per event on the data path.
    pub fn handle_into(&mut self, event: &Event, out: &mut Vec<Effect>) {
        self.context.event = event_name(event);
        self.inner.handle_with_context(event, &mut self.context);
        out.append(&mut self.context.effects);
    }

    /// The current state's name, for logs ("Dialing", "Connected", …).
    pub fn state_name(&self) -> &'static str {
        state_name(self.state())
    }

    pub(crate) fn state(&self) -> &State {
        self.inner.state()
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.state(), State::Connected { .. })
    }

    /// Whether the session's messages are wanted now: connected and not closing.
    pub fn accepts_outbound(&self) -> bool {
        matches!(self.state(), State::Connected { closing: false, .. })
    }

    pub fn is_terminated(&self) -> bool {
        matches!(self.state(), State::Terminated { .. })
    }

    pub fn config(&self) -> &MachineConfig {
        &self.inner.config
    }
}

// Make sure the machine can move into a spawned tokio task.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Machine>();
};

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
