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

use crate::backoff::Backoff;
use crate::classify::{Class, ClassifyRules, Failure};
use bytes::Bytes;
use statig::blocking::state_machine;
use statig::blocking::{InitializedStateMachine, IntoStateMachineExt};
use statig::Outcome as Response;
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
pub enum Sig {
    Interrupt,
    Terminate,
}

/// Why the machine is fetching a new token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshReason {
    /// The token expires soon: refresh before dialing.
    Proactive,
    /// The server rejected the token: refresh once, then redial at once.
    Rejected,
}

/// After a backoff, what to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    Dial,
    Refresh(RefreshReason),
}

/// The per-streak guards, carried as state data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Guards {
    /// A forced refresh already happened in this streak: a second auth failure stops.
    pub refreshed_in_streak: bool,
    /// Failures since the last stable connection: drives backoff and `max_retries`.
    pub failures_in_streak: u32,
}

/// How a supervised session ended.
#[derive(Debug, Clone, PartialEq)]
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
            Outcome::Done => 0,
            Outcome::Stopped { class, .. } => class.exit_code(),
            Outcome::RetriesExhausted { .. } => 75,
            Outcome::Signal(Sig::Interrupt) | Outcome::Interrupted => 130,
            Outcome::Signal(Sig::Terminate) => 143,
            Outcome::OutputLost(_) => 74,
        }
    }
}

/// Things the user should hear about before the session ends.
#[derive(Debug, Clone, PartialEq)]
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

/// The statig shared storage: configuration and the jitter source.
#[derive(Debug)]
pub struct Core {
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

/// Per-dispatch context: what goes in (credential state, which event) and what comes
/// out (effects, the reason for a transition, for the log line).
#[derive(Debug, Default)]
pub struct Step {
    effects: Vec<Effect>,
    creds: CredentialState,
    event: &'static str,
    reason: Option<String>,
    /// Messages or our close frame were still waiting to be written when this event
    /// came in (set by the driver, like `creds`).
    outbound_pending: bool,
}

impl Step {
    fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }
}

#[state_machine(
    initial = "State::idle()",
    after_transition = "Self::after_transition",
    state(derive(Debug, Clone, PartialEq)),
    superstate(derive(Debug))
)]
impl Core {
    /// Before `Start`: nothing has been dialed yet.
    #[state]
    fn idle(&mut self, context: &mut Step, event: &Event) -> Response<State> {
        match event {
            Event::Start => Transition(self.dial_or_refresh(context, 0, Guards::default())),
            Event::Signal(sig) => Transition(State::terminated(Outcome::Signal(*sig))),
            Event::UserInterrupt => Transition(State::terminated(Outcome::Interrupted)),
            _ => Handled,
        }
    }

    #[superstate]
    fn running(&mut self, event: &Event) -> Response<State> {
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
    fn offline(event: &Event) -> Response<State> {
        match event {
            Event::UserInterrupt => Transition(State::terminated(Outcome::Interrupted)),
            Event::LocalGone => Transition(State::terminated(Outcome::Done)),
            _ => Super,
        }
    }

    #[state(superstate = "offline", entry_action = "enter_dialing")]
    fn dialing(
        &mut self,
        context: &mut Step,
        attempt: &mut u32,
        guards: &mut Guards,
        event: &Event,
    ) -> Response<State> {
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
    fn enter_dialing(context: &mut Step) {
        context.push(Effect::Dial);
    }

    #[state(superstate = "offline", entry_action = "enter_refreshing_token")]
    fn refreshing_token(
        &mut self,
        context: &mut Step,
        reason: &mut RefreshReason,
        attempt: &mut u32,
        guards: &mut Guards,
        event: &Event,
    ) -> Response<State> {
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
    fn enter_refreshing_token(context: &mut Step, reason: &mut RefreshReason) {
        context.push(Effect::Refresh(*reason));
    }

    #[state(
        superstate = "offline",
        entry_action = "enter_backoff",
        exit_action = "exit_backoff"
    )]
    fn backoff(
        &mut self,
        context: &mut Step,
        attempt: &mut u32,
        delay: &mut Duration,
        resume: &mut Resume,
        guards: &mut Guards,
        event: &Event,
    ) -> Response<State> {
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
    fn enter_backoff(context: &mut Step, delay: &mut Duration) {
        context.push(Effect::StartTimer(TimerKind::Backoff, *delay));
    }

    #[action]
    fn exit_backoff(context: &mut Step) {
        context.push(Effect::CancelTimer(TimerKind::Backoff));
    }

    #[state(
        superstate = "running",
        entry_action = "enter_connected",
        exit_action = "exit_connected"
    )]
    fn connected(
        &mut self,
        context: &mut Step,
        since_stable: &mut bool,
        closing: &mut bool,
        close_sent: &mut bool,
        guards: &mut Guards,
        event: &Event,
    ) -> Response<State> {
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
    fn enter_connected(&mut self, context: &mut Step, since_stable: &mut bool) {
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
    fn exit_connected(context: &mut Step) {
        // Every timer but the backoff's belongs to the connection.
        for kind in TimerKind::ALL {
            if kind != TimerKind::Backoff {
                context.push(Effect::CancelTimer(kind));
            }
        }
    }

    /// Absorbing: every event is ignored.
    #[state(entry_action = "enter_terminated")]
    fn terminated(outcome: &mut Outcome) -> Response<State> {
        let _ = outcome;
        Handled
    }

    #[action]
    fn enter_terminated(context: &mut Step, outcome: &mut Outcome) {
        context.push(Effect::Exit(outcome.clone()));
    }
}

impl Core {
    /// A whole liveness window from now, unless reads are paused (then the deadline is
    /// held until they resume).
    fn rearm_liveness(&self, context: &mut Step) {
        if !self.reads_paused {
            context.push(Effect::StartTimer(
                TimerKind::Liveness,
                self.config.liveness_window(),
            ));
        }
    }

    /// Dial next, unless the token is about to expire and can be refreshed first.
    fn dial_or_refresh(&self, context: &Step, attempt: u32, guards: Guards) -> State {
        if context.creds.refreshable && context.creds.expiring_soon {
            State::refreshing_token(RefreshReason::Proactive, attempt, guards)
        } else {
            State::dialing(attempt, guards)
        }
    }

    /// Our close frame (normal closure), then wait `close_grace` for the server's.
    fn send_close(&self, context: &mut Step) {
        context.push(Effect::Close(1000, String::new()));
        context.push(Effect::StartTimer(
            TimerKind::CloseGrace,
            self.config.close_grace,
        ));
    }

    /// The connection went away after it was established.
    fn after_disconnect(
        &mut self,
        context: &mut Step,
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
    fn ends_a_finished_session(&self, context: &Step, failure: &Failure) -> bool {
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
    fn after_failure(&mut self, context: &mut Step, failure: Failure, mut guards: Guards) -> State {
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
            Class::Auth if context.creds.refreshable && !guards.refreshed_in_streak => {
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
        context: &mut Step,
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

    fn after_transition(&mut self, source: &State, target: &State, context: &mut Step) {
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
pub fn state_name(state: &State) -> &'static str {
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
    inner: InitializedStateMachine<Core>,
    step: Step,
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
        let mut step = Step::default();
        let inner = Core {
            config,
            backoff,
            has_connected: false,
            reads_paused: false,
        }
        .uninitialized_state_machine()
        .init_with_context(&mut step);
        Machine { inner, step }
    }

    /// Tell the machine what it may do with the credentials (refreshed by the driver).
    pub fn set_credentials(&mut self, creds: CredentialState) {
        self.step.creds = creds;
    }

    /// Tell the machine whether messages (or our close frame) still wait to be written
    /// (refreshed by the driver before each event): a transient end while closing is the
    /// session's normal end only when nothing was left unsent.
    pub fn set_outbound_pending(&mut self, pending: bool) {
        self.step.outbound_pending = pending;
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
        self.step.event = event_name(event);
        self.inner.handle_with_context(event, &mut self.step);
        out.append(&mut self.step.effects);
    }

    pub fn state(&self) -> &State {
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
mod tests {
    use super::*;
    use crate::backoff::{BackoffPolicy, Jitter};
    use crate::classify::NetworkKind;

    fn machine(config: MachineConfig) -> Machine {
        Machine::new(
            config,
            Backoff::new(BackoffPolicy::default(), Jitter::seeded(9)),
        )
    }

    fn refused() -> Failure {
        Failure::Network {
            kind: NetworkKind::Refused,
            detail: String::new(),
        }
    }

    fn close(code: u16, reason: &str) -> Failure {
        Failure::Close {
            code,
            reason: reason.into(),
        }
    }

    fn exit_of(effects: &[Effect]) -> Option<&Outcome> {
        effects.iter().find_map(|e| match e {
            Effect::Exit(o) => Some(o),
            _ => None,
        })
    }

    fn refreshes(effects: &[Effect]) -> bool {
        effects.iter().any(|e| matches!(e, Effect::Refresh(_)))
    }

    fn refreshable() -> CredentialState {
        CredentialState {
            refreshable: true,
            expiring_soon: false,
        }
    }

    #[test]
    fn every_timer_kind_is_in_all_at_its_index() {
        for (slot, kind) in TimerKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), slot);
        }
    }

    #[test]
    fn start_dials() {
        let mut m = machine(MachineConfig::default());
        assert_eq!(m.handle(Event::Start), vec![Effect::Dial]);
        assert_eq!(state_name(m.state()), "Dialing");
    }

    #[test]
    fn connected_arms_ping_liveness_and_stable_timers() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        let fx = m.handle(Event::DialSucceeded);
        assert_eq!(
            fx,
            vec![
                Effect::StartTimer(TimerKind::Ping, Duration::from_secs(20)),
                Effect::StartTimer(TimerKind::Liveness, Duration::from_secs(40)),
                Effect::StartTimer(TimerKind::Stable, Duration::from_secs(10)),
            ]
        );
        assert!(m.is_connected());
    }

    #[test]
    fn frames_are_delivered_and_feed_liveness() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        let fx = m.handle(Event::Received(Payload::Text("hi".into())));
        assert_eq!(
            fx,
            vec![
                Effect::StartTimer(TimerKind::Liveness, Duration::from_secs(40)),
                Effect::Deliver(Payload::Text("hi".into())),
            ]
        );
        let fx = m.handle(Event::PongReceived);
        assert_eq!(
            fx,
            vec![Effect::StartTimer(
                TimerKind::Liveness,
                Duration::from_secs(40)
            )]
        );
    }

    #[test]
    fn liveness_is_held_while_reads_are_paused_and_rearmed_whole_on_resume() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        assert_eq!(
            m.handle(Event::ReadsPaused),
            vec![Effect::CancelTimer(TimerKind::Liveness)]
        );
        // A frame read while paused (draining after a write error) does not re-arm it,
        // and a liveness timer that raced its cancellation is ignored.
        let fx = m.handle(Event::Received(Payload::Text("hi".into())));
        assert_eq!(fx, vec![Effect::Deliver(Payload::Text("hi".into()))]);
        assert_eq!(m.handle(Event::Timer(TimerKind::Liveness)), vec![]);
        assert!(m.is_connected());
        assert_eq!(
            m.handle(Event::ReadsResumed),
            vec![Effect::StartTimer(
                TimerKind::Liveness,
                Duration::from_secs(40)
            )]
        );
    }

    #[test]
    fn a_pause_that_outlasts_the_connection_holds_the_next_ones_liveness() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::ReadsPaused);
        let fx = m.handle(Event::DialSucceeded);
        assert!(
            !fx.iter()
                .any(|e| matches!(e, Effect::StartTimer(TimerKind::Liveness, _))),
            "{fx:?}"
        );
        assert!(m.handle(Event::ReadsResumed).contains(&Effect::StartTimer(
            TimerKind::Liveness,
            Duration::from_secs(40)
        )));
    }

    #[test]
    fn ping_timer_sends_a_ping_and_rearms() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        let fx = m.handle(Event::Timer(TimerKind::Ping));
        assert_eq!(
            fx,
            vec![
                Effect::SendPing,
                Effect::StartTimer(TimerKind::Ping, Duration::from_secs(20)),
            ]
        );
    }

    #[test]
    fn transient_failure_backs_off_within_the_window_then_redials() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        let fx = m.handle(Event::DialFailed(refused()));
        let delay = fx
            .iter()
            .find_map(|e| match e {
                Effect::StartTimer(TimerKind::Backoff, d) => Some(*d),
                _ => None,
            })
            .expect("a backoff timer");
        assert!(delay <= Duration::from_millis(500));
        assert!(matches!(
            m.state(),
            State::Backoff {
                attempt: 1,
                resume: Resume::Dial,
                ..
            }
        ));
        let fx = m.handle(Event::Timer(TimerKind::Backoff));
        assert_eq!(
            fx,
            vec![Effect::CancelTimer(TimerKind::Backoff), Effect::Dial]
        );
    }

    #[test]
    fn close_1000_ends_with_exit_0() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        let fx = m.handle(Event::Closed(close(1000, "bye")));
        assert_eq!(exit_of(&fx), Some(&Outcome::Done));
        assert_eq!(Outcome::Done.exit_code(), 0);
    }

    #[test]
    fn max_retries_allows_n_redials_then_exits_75() {
        let config = MachineConfig {
            max_retries: Some(2),
            ..MachineConfig::default()
        };
        let mut m = machine(config);
        let mut dials = m
            .handle(Event::Start)
            .iter()
            .filter(|e| **e == Effect::Dial)
            .count();
        loop {
            let fx = m.handle(Event::DialFailed(refused()));
            if let Some(outcome) = exit_of(&fx) {
                assert_eq!(outcome.exit_code(), 75);
                assert!(matches!(
                    outcome,
                    Outcome::RetriesExhausted { retries: 2, .. }
                ));
                break;
            }
            let fx = m.handle(Event::Timer(TimerKind::Backoff));
            dials += fx.iter().filter(|e| **e == Effect::Dial).count();
        }
        assert_eq!(dials, 3, "N+1 attempts in all");
    }

    #[test]
    fn max_retries_zero_never_redials() {
        let mut m = machine(MachineConfig {
            max_retries: Some(0),
            ..MachineConfig::default()
        });
        m.handle(Event::Start);
        let fx = m.handle(Event::DialFailed(refused()));
        assert_eq!(exit_of(&fx).map(Outcome::exit_code), Some(75));
        assert!(!fx.contains(&Effect::Dial));
    }

    #[test]
    fn static_token_rejected_stops_with_77_without_refreshing() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        let fx = m.handle(Event::DialFailed(Failure::Http {
            status: 401,
            retry_after: None,
        }));
        assert!(!refreshes(&fx));
        assert_eq!(exit_of(&fx).map(Outcome::exit_code), Some(77));
    }

    #[test]
    fn rejected_token_is_refreshed_once_then_redialed_at_once_for_free() {
        let mut m = machine(MachineConfig {
            max_retries: Some(0),
            ..MachineConfig::default()
        });
        m.set_credentials(refreshable());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        let fx = m.handle(Event::Closed(close(1008, "token expired")));
        assert!(fx.contains(&Effect::Refresh(RefreshReason::Rejected)));
        let fx = m.handle(Event::RefreshDone(Ok(())));
        assert!(
            fx.contains(&Effect::Dial),
            "redial at once, even with max_retries 0"
        );
        m.handle(Event::DialSucceeded);
        // The server upgrades and closes 1008 again before the connection is stable:
        // no second refresh in the same streak.
        let fx = m.handle(Event::Closed(close(1008, "token expired")));
        assert!(!refreshes(&fx));
        assert_eq!(exit_of(&fx).map(Outcome::exit_code), Some(77));
    }

    #[test]
    fn guards_reset_only_after_the_connection_is_stable() {
        let mut m = machine(MachineConfig::default());
        m.set_credentials(refreshable());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        m.handle(Event::Closed(close(1008, "")));
        m.handle(Event::RefreshDone(Ok(())));
        m.handle(Event::DialSucceeded);
        m.handle(Event::Timer(TimerKind::Stable));
        // A new streak: one more refresh is allowed.
        let fx = m.handle(Event::Closed(close(1008, "")));
        assert!(fx.contains(&Effect::Refresh(RefreshReason::Rejected)));
    }

    #[test]
    fn proactive_refresh_before_dialing_an_expiring_token() {
        let mut m = machine(MachineConfig::default());
        m.set_credentials(CredentialState {
            refreshable: true,
            expiring_soon: true,
        });
        assert_eq!(
            m.handle(Event::Start),
            vec![Effect::Refresh(RefreshReason::Proactive)]
        );
        assert!(matches!(
            m.state(),
            State::RefreshingToken {
                reason: RefreshReason::Proactive,
                ..
            }
        ));
        assert_eq!(m.handle(Event::RefreshDone(Ok(()))), vec![Effect::Dial]);
    }

    #[test]
    fn failed_refresh_backs_off_and_retries_the_refresh() {
        let mut m = machine(MachineConfig::default());
        m.set_credentials(refreshable());
        m.handle(Event::Start);
        m.handle(Event::DialFailed(Failure::Http {
            status: 403,
            retry_after: None,
        }));
        // The token endpoint's Retry-After raises the delay, as the handshake's does.
        let fx = m.handle(Event::RefreshDone(Err(Failure::Refresh {
            status: Some(503),
            detail: String::new(),
            retry_after: Some(Duration::from_secs(7)),
        })));
        assert!(
            fx.iter().any(|e| matches!(
                e,
                Effect::StartTimer(TimerKind::Backoff, delay) if *delay >= Duration::from_secs(7)
            )),
            "{fx:?}"
        );
        let fx = m.handle(Event::Timer(TimerKind::Backoff));
        assert!(
            fx.contains(&Effect::Refresh(RefreshReason::Rejected)),
            "{fx:?}"
        );
    }

    #[test]
    fn invalid_grant_stops_with_77() {
        let mut m = machine(MachineConfig::default());
        m.set_credentials(refreshable());
        m.handle(Event::Start);
        m.handle(Event::DialFailed(Failure::Http {
            status: 401,
            retry_after: None,
        }));
        let fx = m.handle(Event::RefreshDone(Err(Failure::Refresh {
            status: Some(400),
            detail: "invalid_grant".into(),
            retry_after: None,
        })));
        assert_eq!(exit_of(&fx).map(Outcome::exit_code), Some(77));
    }

    #[test]
    fn retry_after_sets_the_floor() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        let fx = m.handle(Event::DialFailed(Failure::Http {
            status: 503,
            retry_after: Some(Duration::from_secs(2)),
        }));
        assert!(fx.iter().any(|e| matches!(e, Effect::StartTimer(TimerKind::Backoff, d) if *d >= Duration::from_secs(2))));
    }

    #[test]
    fn liveness_timeout_closes_and_backs_off() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        let fx = m.handle(Event::Timer(TimerKind::Liveness));
        assert!(matches!(
            fx.first(),
            Some(Effect::Close(CLOSE_GOING_AWAY, _))
        ));
        assert!(matches!(m.state(), State::Backoff { .. }));
    }

    #[test]
    fn signals_terminate_from_every_state_with_their_exit_codes() {
        let prefixes: Vec<Vec<Event>> = vec![
            vec![],
            vec![Event::Start],
            vec![Event::Start, Event::DialSucceeded],
            vec![Event::Start, Event::DialFailed(refused())],
        ];
        for prefix in prefixes {
            for (sig, code) in [(Sig::Interrupt, 130), (Sig::Terminate, 143)] {
                let mut m = machine(MachineConfig::default());
                for e in &prefix {
                    m.handle(e.clone());
                }
                let fx = m.handle(Event::Signal(sig));
                assert_eq!(
                    exit_of(&fx).map(Outcome::exit_code),
                    Some(code),
                    "{prefix:?}"
                );
                assert!(m.is_terminated());
            }
        }
    }

    #[test]
    fn signal_while_connected_sends_a_close_frame_first() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        let fx = m.handle(Event::Signal(Sig::Terminate));
        assert_eq!(
            fx.first(),
            Some(&Effect::Close(CLOSE_GOING_AWAY, String::new()))
        );
        assert_eq!(
            fx.last(),
            Some(&Effect::Exit(Outcome::Signal(Sig::Terminate)))
        );
    }

    #[test]
    fn ctrl_c_is_forwarded_while_connected_and_quits_while_offline() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        let fx = m.handle(Event::UserInterrupt);
        assert_eq!(fx, vec![Effect::Send(Payload::Binary(vec![CTRL_C].into()))]);
        m.handle(Event::Closed(close(1011, "agent gone")));
        let fx = m.handle(Event::UserInterrupt);
        assert_eq!(exit_of(&fx), Some(&Outcome::Interrupted));
        assert_eq!(Outcome::Interrupted.exit_code(), 130);
    }

    fn no_linger() -> MachineConfig {
        MachineConfig {
            linger: Duration::ZERO,
            ..MachineConfig::default()
        }
    }

    #[test]
    fn local_eof_lingers_while_the_server_answers_then_closes() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        let fx = m.handle(Event::LocalEof);
        assert_eq!(
            fx,
            vec![Effect::StartTimer(
                TimerKind::Linger,
                Duration::from_secs(1)
            )]
        );
        // A reply re-arms the linger timer and is delivered.
        let fx = m.handle(Event::Received(Payload::Text("reply".into())));
        assert!(fx.contains(&Effect::StartTimer(
            TimerKind::Linger,
            Duration::from_secs(1)
        )));
        assert!(fx.contains(&Effect::Deliver(Payload::Text("reply".into()))));
        // Quiet for the whole linger: our close, then wait for the server's.
        let fx = m.handle(Event::Timer(TimerKind::Linger));
        assert_eq!(
            fx,
            vec![
                Effect::Close(1000, String::new()),
                Effect::StartTimer(TimerKind::CloseGrace, Duration::from_secs(2)),
            ]
        );
        // After our close, frames no longer re-arm the linger.
        let fx = m.handle(Event::Received(Payload::Text("late".into())));
        assert!(!fx
            .iter()
            .any(|e| matches!(e, Effect::StartTimer(TimerKind::Linger, _))));
        let fx = m.handle(Event::Closed(close(1000, "")));
        assert_eq!(exit_of(&fx), Some(&Outcome::Done));
    }

    #[test]
    fn a_rejection_while_closing_keeps_its_class() {
        for (failure, code) in [
            (close(1008, "token expired"), 77),
            (close(4001, ""), 69),
            (close(1003, ""), 65),
            (close(2000, ""), 69),
            (close(1000, ""), 0),
            (close(1001, ""), 0),
            (close(1005, ""), 0),
        ] {
            let mut m = machine(MachineConfig::default());
            m.handle(Event::Start);
            m.handle(Event::DialSucceeded);
            m.handle(Event::LocalEof);
            let fx = m.handle(Event::Closed(failure.clone()));
            assert_eq!(
                exit_of(&fx).map(Outcome::exit_code),
                Some(code),
                "{failure:?}"
            );
        }
    }

    #[test]
    fn a_transient_end_while_closing_is_done_only_when_nothing_was_left_unsent() {
        let mut m = machine(no_linger());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        m.handle(Event::LocalEof);
        let fx = m.handle(Event::Closed(close(1012, "restart")));
        assert_eq!(exit_of(&fx), Some(&Outcome::Done));

        let mut m = machine(no_linger());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        m.handle(Event::LocalEof);
        m.set_outbound_pending(true);
        let fx = m.handle(Event::Closed(close(1012, "restart")));
        assert_eq!(exit_of(&fx), None);
        assert!(
            matches!(m.state(), State::Backoff { .. }),
            "redial to send the rest"
        );
    }

    #[test]
    fn local_eof_without_linger_closes_then_waits_for_the_server() {
        let mut m = machine(no_linger());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        let fx = m.handle(Event::LocalEof);
        assert_eq!(
            fx,
            vec![
                Effect::Close(1000, String::new()),
                Effect::StartTimer(TimerKind::CloseGrace, Duration::from_secs(2)),
            ]
        );
        // Messages still arriving are delivered.
        let fx = m.handle(Event::Received(Payload::Text("late".into())));
        assert!(fx.contains(&Effect::Deliver(Payload::Text("late".into()))));
        let fx = m.handle(Event::Closed(close(1000, "")));
        assert_eq!(exit_of(&fx), Some(&Outcome::Done));
    }

    #[test]
    fn nothing_more_is_sent_after_our_close_frame() {
        let mut m = machine(no_linger());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        m.handle(Event::LocalEof);
        assert!(m.handle(Event::UserInterrupt).is_empty());
        let fx = m.handle(Event::Timer(TimerKind::Liveness));
        assert!(
            !fx.iter()
                .any(|e| matches!(e, Effect::Close(..) | Effect::Send(_))),
            "{fx:?}"
        );
        assert_eq!(exit_of(&fx), Some(&Outcome::Done));
    }

    #[test]
    fn local_eof_without_an_answer_ends_after_the_grace_period() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        m.handle(Event::LocalEof);
        m.handle(Event::Timer(TimerKind::Linger));
        let fx = m.handle(Event::Timer(TimerKind::CloseGrace));
        assert_eq!(exit_of(&fx), Some(&Outcome::Done));
    }

    #[test]
    fn output_failure_closes_1001_and_exits_74() {
        let lost = Outcome::OutputLost(OutputLoss::WriteFailed("disk full".into()));
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        let fx = m.handle(Event::OutputFailed("disk full".into()));
        assert_eq!(
            fx.first(),
            Some(&Effect::Close(CLOSE_GOING_AWAY, "output lost".into()))
        );
        assert_eq!(exit_of(&fx), Some(&lost));
        assert_eq!(lost.exit_code(), 74);
        // Offline, or while closing: no close frame to send, the same outcome.
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialFailed(refused()));
        let fx = m.handle(Event::OutputFailed("disk full".into()));
        assert_eq!(fx.last(), Some(&Effect::Exit(lost.clone())));
        // (Our close already sent: `--linger 0` sends it at stdin EOF.)
        let mut m = machine(MachineConfig {
            linger: Duration::ZERO,
            ..MachineConfig::default()
        });
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        m.handle(Event::LocalEof);
        let fx = m.handle(Event::OutputFailed("disk full".into()));
        assert!(!fx.iter().any(|e| matches!(e, Effect::Close(..))), "{fx:?}");
        assert_eq!(exit_of(&fx), Some(&lost));
    }

    #[test]
    fn a_normal_close_by_the_server_is_said_but_not_the_answer_to_ours() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        let fx = m.handle(Event::Closed(close(1000, "bye")));
        assert!(fx.contains(&Effect::Notify(Notice::ServerClosed {
            code: 1000,
            reason: "bye".into()
        })));
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        m.handle(Event::LocalEof);
        let fx = m.handle(Event::Closed(close(1000, "")));
        assert!(!fx.iter().any(|e| matches!(e, Effect::Notify(_))), "{fx:?}");
    }

    #[test]
    fn tunnel_mode_does_not_redial_after_connected() {
        let mut m = machine(MachineConfig {
            redial_after_connected: false,
            ..MachineConfig::default()
        });
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        let fx = m.handle(Event::Closed(close(1011, "")));
        assert!(!fx.contains(&Effect::Dial));
        assert_eq!(exit_of(&fx).map(Outcome::exit_code), Some(75));
    }

    #[test]
    fn terminated_ignores_everything() {
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Signal(Sig::Interrupt));
        for e in [
            Event::Start,
            Event::DialSucceeded,
            Event::Signal(Sig::Terminate),
            Event::Timer(TimerKind::Backoff),
        ] {
            assert!(m.handle(e).is_empty());
            assert!(m.is_terminated());
        }
    }

    #[test]
    fn permanent_failures_stop_with_their_codes() {
        for (failure, code) in [
            (close(1002, ""), 69),
            (
                close(
                    1007,
                    "Invalid permission: Not authorized to websocket-gateway SHELL_EXEC",
                ),
                77,
            ),
            (close(1009, ""), 65),
            (
                Failure::Http {
                    status: 404,
                    retry_after: None,
                },
                69,
            ),
            (Failure::Tls("bad cert".into()), 69),
        ] {
            let mut m = machine(MachineConfig::default());
            m.handle(Event::Start);
            let fx = m.handle(Event::DialFailed(failure.clone()));
            assert_eq!(
                exit_of(&fx).map(Outcome::exit_code),
                Some(code),
                "{failure:?}"
            );
            assert!(!fx.contains(&Effect::Dial));
        }
    }

    #[test]
    fn input_rejected_closes_1001_and_stops_with_65_in_any_running_state() {
        let rejected = Failure::InputRejected("a stdin line is longer than 1 KiB".into());
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        let fx = m.handle(Event::InputRejected(rejected.clone()));
        assert!(
            matches!(fx.first(), Some(Effect::Close(CLOSE_GOING_AWAY, _))),
            "{fx:?}"
        );
        let outcome = exit_of(&fx).expect("stops");
        assert_eq!(
            outcome,
            &Outcome::Stopped {
                class: Class::RejectedData,
                failure: rejected.clone()
            }
        );
        assert_eq!(outcome.exit_code(), 65);
        // Offline there is no connection to close: it stops all the same.
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        let fx = m.handle(Event::InputRejected(rejected));
        assert!(!fx.iter().any(|e| matches!(e, Effect::Close(..))));
        assert_eq!(exit_of(&fx).map(Outcome::exit_code), Some(65));
    }

    #[test]
    fn local_gone_ends_at_once_while_offline_and_is_ignored_once_connected() {
        // Dialing and backing off: done, no further dial.
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        let fx = m.handle(Event::LocalGone);
        assert_eq!(exit_of(&fx), Some(&Outcome::Done));
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialFailed(close(1011, "")));
        assert!(matches!(m.state(), State::Backoff { .. }));
        let fx = m.handle(Event::LocalGone);
        assert_eq!(exit_of(&fx), Some(&Outcome::Done));
        assert!(!fx.contains(&Effect::Dial));
        // Connected: the session's end of input closes normally instead.
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        assert!(m.handle(Event::LocalGone).is_empty());
        assert!(m.is_connected());
    }

    #[test]
    fn host_not_found_stops_before_a_connection_and_is_retried_after_one() {
        let not_found = Failure::Network {
            kind: NetworkKind::HostNotFound,
            detail: "no-such-host.invalid".into(),
        };
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        let fx = m.handle(Event::DialFailed(not_found.clone()));
        assert_eq!(exit_of(&fx).map(Outcome::exit_code), Some(69), "{fx:?}");

        // Once a connection has succeeded, the same failure of a redial backs off.
        let mut m = machine(MachineConfig::default());
        m.handle(Event::Start);
        m.handle(Event::DialSucceeded);
        m.handle(Event::Closed(close(1012, "")));
        m.handle(Event::Timer(TimerKind::Backoff));
        let fx = m.handle(Event::DialFailed(not_found));
        assert_eq!(exit_of(&fx), None, "{fx:?}");
        assert_eq!(state_name(m.state()), "Backoff");
    }
}
