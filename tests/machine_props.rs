//! Property and model tests for the supervisor's state machine (DESIGN.md, "Tests").
//!
//! Three kinds of input drive `wsup::machine::Machine` here:
//!
//! - a *plausible driver*: it remembers from the effects what is outstanding (a dial, a
//!   refresh, armed timers, an open connection) and answers only with events the real
//!   driver could produce in that situation, picking among them with a random index;
//! - *fully random* event sequences, for the invariants that must hold whatever the
//!   driver does (nothing leaves Terminated, a signal always wins, exactly one exit);
//! - a *reference model* (proptest-state-machine) written from DESIGN.md alone, compared
//!   with the machine after every event.
//!
//! The expected classes and exit codes are written out again from DESIGN.md's table
//! ([`design_class`], [`design_exit_code`]) rather than taken from `classify.rs`, so a
//! drift between the table and the code shows up here.
//!
//! Failures persist to `proptest-regressions/machine_props.txt`. proptest's default
//! (`SourceParallel`) cannot be used for an integration test: it looks for a `lib.rs` or
//! `main.rs` above the source file, finds none above `tests/`, and falls back to
//! `tests/machine_props.proptest-regressions`.

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{FileFailurePersistence, TestRunner};
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use std::collections::HashSet;
use std::time::Duration;
use wsup::backoff::{Backoff, BackoffPolicy, Jitter, RETRY_AFTER_CAP};
use wsup::classify::{Class, ClassifyRules, Failure, NetworkKind};
use wsup::machine::{
    state_name, CredentialState, Effect, Event, Guards, Machine, MachineConfig, Outcome, Payload,
    RefreshReason, Resume, Sig, State, TimerKind, CLOSE_GOING_AWAY,
};

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// Where failing seeds are kept (committed, per DESIGN.md). Absolute, so the working
/// directory the test runs in does not matter.
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/proptest-regressions/machine_props.txt"
);

/// Case counts are kept small enough for the whole file to run in a few seconds in a
/// debug build; every case drives up to [`MAX_STEPS`] events.
fn cases(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    }
}

const PLAUSIBLE_CASES: u32 = 512;
const RANDOM_CASES: u32 = 256;
const MODEL_CASES: u32 = 256;
const MAX_STEPS: usize = 60;

/// Application close codes the failure strategy draws from; `--retry-close-codes`
/// is drawn as a subset of the same list so that both classifications occur.
const APP_CODES: [u16; 4] = [4000, 4001, 4500, 4999];

// ---------------------------------------------------------------------------------------
// DESIGN.md's classification table, written out independently of classify.rs
// ---------------------------------------------------------------------------------------

/// The reasons DESIGN.md names for a 1007 that means "permission", not "bad data".
fn reason_says_permission(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    reason.contains("permission") || reason.contains("not authorized")
}

/// The class DESIGN.md's table gives a failure. Only rows the strategies draw from are
/// covered; anything else is a bug in this file.
fn design_class(failure: &Failure, retry_close_codes: &[u16]) -> Class {
    match failure {
        Failure::Close { code, reason } => match *code {
            1000 => Class::Done,
            1008 | 3000 | 3003 => Class::Auth,
            1007 if reason_says_permission(reason) => Class::Permission,
            1003 | 1007 | 1009 => Class::RejectedData,
            1002 | 1010 | 1015 => Class::Permanent,
            4000..=4999 if retry_close_codes.contains(code) => Class::Transient,
            4000..=4999 => Class::Permanent,
            // A close frame without a status code (see `close_frame`): the
            // connection ended, nothing says why.
            1005 => Class::Transient,
            1001 | 1011..=1014 | 3000..=3999 => Class::Transient,
            // Forbidden on the wire: 0–999, 1004, 1006, 1016–2999, 5000+.
            _ => Class::Permanent,
        },
        Failure::Http { status, .. } => match *status {
            401 | 403 => Class::Auth,
            408 | 429 | 500..=599 => Class::Transient,
            300..=499 => Class::Permanent,
            other => panic!("HTTP {other} is not a row of the table"),
        },
        Failure::Tls(_) => Class::Permanent,
        Failure::Network { .. } | Failure::Liveness => Class::Transient,
        Failure::Refresh { status, .. } => match status {
            Some(400 | 401) => Class::Auth,
            None | Some(429 | 500..=599) => Class::Transient,
            Some(other) => panic!("token endpoint {other} is not a row of the table"),
        },
        // Detected here, not sent: the class of the close code that names it (the
        // violations tungstenite reports are 1002, 1007 and 1009).
        Failure::Violation { code, .. } => match *code {
            1007 | 1009 => Class::RejectedData,
            1002 => Class::Permanent,
            other => panic!("violation {other} is not one wsup reports"),
        },
        Failure::Internal(_) => Class::Internal,
        Failure::InputRejected(_) => Class::RejectedData,
        Failure::CannotCreate(_) => Class::CannotCreate,
    }
}

/// DESIGN.md's exit column (and "1 internal error").
fn design_exit_code(class: Class) -> u8 {
    match class {
        Class::Done => 0,
        Class::Transient => 75,
        Class::Auth | Class::Permission => 77,
        Class::RejectedData => 65,
        Class::Permanent => 69,
        Class::Internal => 1,
        Class::CannotCreate => 73,
    }
}

fn signal_exit_code(sig: Sig) -> u8 {
    match sig {
        Sig::Interrupt => 130,
        Sig::Terminate => 143,
    }
}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

fn close_failure() -> impl Strategy<Value = Failure> {
    let code = prop_oneof![
        // done, transient (1005: no status code), registered but unlisted
        prop::sample::select(vec![1000u16, 1001, 1005, 1011, 1012, 1013, 1014, 3500]),
        // forbidden on the wire
        prop::sample::select(vec![0u16, 999, 1004, 1006, 1016, 2000, 2999, 5000]),
        // auth
        prop::sample::select(vec![1008u16, 3000, 3003]),
        // rejected data / permission (1007 twice as often: its class depends on the reason)
        prop::sample::select(vec![1003u16, 1007, 1007, 1009]),
        // permanent
        prop::sample::select(vec![1002u16, 1010, 1015]),
        prop::sample::select(APP_CODES.to_vec()),
    ];
    let reason = prop::sample::select(vec![
        "",
        "token expired",
        "No shell-agent listening for this cluster",
        "Invalid permission: Not authorized to websocket-gateway SHELL_EXEC",
        "missing permission logs:read",
        "invalid utf-8",
    ]);
    (code, reason).prop_map(|(code, reason)| Failure::Close {
        code,
        reason: reason.to_string(),
    })
}

/// What wsup detects itself when the server breaks the protocol.
fn violation_failure() -> impl Strategy<Value = Failure> {
    prop::sample::select(vec![1002u16, 1007, 1009]).prop_map(|code| Failure::Violation {
        code,
        detail: "not authorized to break the protocol".into(),
    })
}

fn http_failure() -> impl Strategy<Value = Failure> {
    let status = prop::sample::select(vec![
        301u16, 400, 401, 403, 404, 405, 408, 410, 426, 429, 500, 502, 503,
    ]);
    // Up to ten minutes, so that the five-minute cap on Retry-After is exercised.
    let retry_after = prop::option::of((0u64..600_000).prop_map(Duration::from_millis));
    (status, retry_after).prop_map(|(status, retry_after)| Failure::Http {
        status,
        retry_after,
    })
}

fn network_failure() -> impl Strategy<Value = Failure> {
    prop::sample::select(vec![
        NetworkKind::Refused,
        NetworkKind::Reset,
        NetworkKind::Eof,
        NetworkKind::Dns,
        NetworkKind::ConnectTimeout,
        NetworkKind::Other,
    ])
    .prop_map(|kind| Failure::Network {
        kind,
        detail: String::new(),
    })
}

/// Every row of the classification table (token endpoint rows excepted).
fn any_failure() -> impl Strategy<Value = Failure> {
    prop_oneof![
        4 => close_failure(),
        1 => violation_failure(),
        3 => http_failure(),
        1 => Just(Failure::Tls("invalid peer certificate: UnknownIssuer".into())),
        2 => network_failure(),
        1 => Just(Failure::Liveness),
        1 => Just(Failure::Internal("bug".into())),
    ]
}

/// How an established connection ends: a close frame, a protocol violation or the network.
fn connection_loss() -> impl Strategy<Value = Failure> {
    prop_oneof![3 => close_failure(), 1 => violation_failure(), 1 => network_failure()]
}

/// The server rejecting the token, at the handshake or with a close.
fn auth_failure() -> impl Strategy<Value = Failure> {
    prop_oneof![
        prop::sample::select(vec![401u16, 403]).prop_map(|status| Failure::Http {
            status,
            retry_after: None
        }),
        prop::sample::select(vec![1008u16, 3000, 3003]).prop_map(|code| Failure::Close {
            code,
            reason: "token expired".into()
        }),
    ]
}

/// A failure for a run's repertoire: every row can occur, but those that keep the
/// session going (transient, auth) are favoured, so that runs last long enough to meet
/// the streak guards and the retry budget.
fn repertoire_failure() -> impl Strategy<Value = Failure> {
    prop_oneof![
        2 => any_failure(),
        1 => network_failure(),
        1 => auth_failure(),
    ]
}

fn repertoire_loss() -> impl Strategy<Value = Failure> {
    prop_oneof![
        2 => connection_loss(),
        1 => network_failure(),
        1 => auth_failure(),
    ]
}

fn refresh_result() -> impl Strategy<Value = Result<(), Failure>> {
    prop_oneof![
        2 => Just(Ok(())),
        1 => prop::sample::select(vec![Some(400u16), Some(401), Some(429), Some(503), None])
            .prop_map(|status| Err(Failure::Refresh {
                status,
                detail: String::new(),
                retry_after: None,
            })),
    ]
}

/// The server's close frame, as the failure the driver reports for it (no status: 1005).
fn close_frame() -> impl Strategy<Value = Failure> {
    prop_oneof![
        Just(Failure::Close {
            code: 1005,
            reason: String::new(),
        }),
        close_failure(),
    ]
}

/// What an open connection delivers; a close frame now and then (which reaches the
/// machine as `Closed`, the one way a close does).
fn frame() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => Just(Event::Received(Payload::Text("hello".into()))),
        1 => Just(Event::Received(Payload::Binary(vec![1, 2, 3].into()))),
        2 => Just(Event::PingReceived),
        2 => Just(Event::PongReceived),
        1 => close_frame().prop_map(Event::Closed),
    ]
}

fn timer_kind() -> impl Strategy<Value = TimerKind> {
    prop::sample::select(TimerKind::ALL.to_vec())
}

fn signal() -> impl Strategy<Value = Sig> {
    prop_oneof![Just(Sig::Interrupt), Just(Sig::Terminate)]
}

/// Any event at all, sensible in the current state or not. Signals are rare so that
/// sequences get somewhere before one ends them.
fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        2 => Just(Event::Start),
        3 => Just(Event::DialSucceeded),
        3 => any_failure().prop_map(Event::DialFailed),
        3 => frame(),
        3 => any_failure().prop_map(Event::Closed),
        4 => timer_kind().prop_map(Event::Timer),
        3 => refresh_result().prop_map(Event::RefreshDone),
        1 => signal().prop_map(Event::Signal),
        1 => Just(Event::UserInterrupt),
        1 => Just(Event::LocalEof),
    ]
}

// ---------------------------------------------------------------------------------------
// Setup: configuration, credentials and the seeded jitter of one run
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Setup {
    max_retries: Option<u32>,
    redial_after_connected: bool,
    retry_close_codes: Vec<u16>,
    stable_after: Duration,
    policy: BackoffPolicy,
    creds: CredentialState,
    /// Time passes during a run: a refreshable token may come close to expiry (or be
    /// fresh again) between any two events.
    expiry_drifts: bool,
    seed: u64,
    /// `--linger 0`: close at once at stdin EOF, or wait for the server to be quiet.
    linger: Duration,
}

impl Setup {
    /// A refreshable token that is not about to expire (and does not drift), a session
    /// that redials after a connection ends: the setting of issue #4 (an upgrade then a
    /// close 1008, again and again, must not refresh in a loop).
    fn refreshable_token_redialing(self) -> Setup {
        Setup {
            redial_after_connected: true,
            creds: CredentialState {
                refreshable: true,
                expiring_soon: false,
            },
            expiry_drifts: false,
            ..self
        }
    }

    fn config(&self) -> MachineConfig {
        MachineConfig {
            rules: ClassifyRules {
                retry_close_codes: self.retry_close_codes.clone(),
            },
            max_retries: self.max_retries,
            stable_after: self.stable_after,
            redial_after_connected: self.redial_after_connected,
            linger: self.linger,
            ..MachineConfig::default()
        }
    }

    fn machine(&self) -> Machine {
        let backoff = Backoff::new(self.policy, Jitter::seeded(self.seed));
        let mut machine = Machine::new(self.config(), backoff);
        machine.set_credentials(self.creds);
        machine
    }

    /// The credential state the driver reports before an event.
    fn creds_at(&self, expiring_soon_now: bool) -> CredentialState {
        if self.expiry_drifts && self.creds.refreshable {
            CredentialState {
                refreshable: true,
                expiring_soon: expiring_soon_now,
            }
        } else {
            self.creds
        }
    }

    fn class_of(&self, failure: &Failure) -> Class {
        design_class(failure, &self.retry_close_codes)
    }
}

fn backoff_policy() -> impl Strategy<Value = BackoffPolicy> {
    (
        1u64..=2_000,
        prop::sample::select(vec![1.0f64, 1.5, 2.0, 3.0]),
        1u64..=60,
    )
        .prop_map(|(initial_ms, multiplier, max_s)| BackoffPolicy {
            initial: Duration::from_millis(initial_ms),
            multiplier,
            max: Duration::from_secs(max_s),
        })
}

/// A setup whose retry budget and credential kind come from the given strategies.
fn setups_with(
    max_retries: BoxedStrategy<Option<u32>>,
    refreshable: BoxedStrategy<bool>,
) -> impl Strategy<Value = Setup> {
    (
        max_retries,
        any::<bool>(),
        prop::sample::subsequence(APP_CODES.to_vec(), 0..=APP_CODES.len()),
        (1u64..3_600_000).prop_map(Duration::from_millis),
        backoff_policy(),
        refreshable,
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
        prop::sample::select(vec![Duration::ZERO, Duration::from_secs(1)]),
    )
        .prop_map(
            |(
                max_retries,
                redial_after_connected,
                retry_close_codes,
                stable_after,
                policy,
                refreshable,
                expiring_soon,
                expiry_drifts,
                seed,
                linger,
            )| Setup {
                max_retries,
                redial_after_connected,
                retry_close_codes,
                stable_after,
                policy,
                creds: CredentialState {
                    refreshable,
                    expiring_soon,
                },
                expiry_drifts,
                seed,
                linger,
            },
        )
}

fn any_max_retries() -> BoxedStrategy<Option<u32>> {
    prop::option::of(0u32..5).boxed()
}

fn any_setup() -> impl Strategy<Value = Setup> {
    setups_with(any_max_retries(), any::<bool>().boxed())
}

// ---------------------------------------------------------------------------------------
// Traces
// ---------------------------------------------------------------------------------------

/// One event handled by the machine, with what it saw and did.
#[derive(Debug, Clone)]
struct Dispatch {
    before: State,
    event: Event,
    effects: Vec<Effect>,
    after: State,
}

impl Dispatch {
    fn emits(&self, effect: &Effect) -> bool {
        self.effects.contains(effect)
    }

    fn count(&self, effect: &Effect) -> usize {
        self.effects.iter().filter(|e| *e == effect).count()
    }

    fn exit(&self) -> Option<&Outcome> {
        exit_of(&self.effects)
    }

    /// The failure this event confronts the machine with, if the event means one in the
    /// state it arrived in (a `DialFailed` while Dialing, a close while Connected, …).
    fn failure(&self) -> Option<Failure> {
        match (&self.before, &self.event) {
            (State::Dialing { .. }, Event::DialFailed(f)) => Some(f.clone()),
            (State::RefreshingToken { .. }, Event::RefreshDone(Err(f))) => Some(f.clone()),
            (State::Connected { .. }, Event::Closed(f)) => Some(f.clone()),
            (State::Connected { .. }, Event::Timer(TimerKind::Liveness)) => Some(Failure::Liveness),
            _ => None,
        }
    }

    /// The stable timer fired while connected: the guards reset and a new streak begins
    /// with the next event.
    fn ends_streak(&self) -> bool {
        matches!(self.before, State::Connected { .. })
            && self.event == Event::Timer(TimerKind::Stable)
    }

    fn enters_forced_refresh(&self) -> bool {
        self.effects.iter().any(is_refresh)
            && matches!(
                self.after,
                State::RefreshingToken {
                    reason: RefreshReason::Rejected,
                    ..
                }
            )
    }
}

fn is_refresh(effect: &Effect) -> bool {
    matches!(effect, Effect::Refresh(_))
}

fn exit_of(effects: &[Effect]) -> Option<&Outcome> {
    effects.iter().find_map(|e| match e {
        Effect::Exit(outcome) => Some(outcome),
        _ => None,
    })
}

fn exits_in_effects(effects: &[Effect]) -> usize {
    effects
        .iter()
        .filter(|e| matches!(e, Effect::Exit(_)))
        .count()
}

fn exits_in(trace: &[Dispatch]) -> usize {
    trace.iter().map(|s| exits_in_effects(&s.effects)).sum()
}

/// Splits a trace into failure streaks: a streak ends with a handled `Timer(Stable)`.
fn streaks(trace: &[Dispatch]) -> Vec<&[Dispatch]> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, step) in trace.iter().enumerate() {
        if step.ends_streak() {
            out.push(&trace[start..=i]);
            start = i + 1;
        }
    }
    out.push(&trace[start..]);
    out
}

fn handle(machine: &mut Machine, event: Event) -> Dispatch {
    let before = machine.state().clone();
    let effects = machine.handle(event.clone());
    Dispatch {
        before,
        event,
        effects,
        after: machine.state().clone(),
    }
}

/// Feeds a sequence as-is, whatever the state: the machine must cope with anything.
fn run_random(setup: &Setup, events: &[(Event, bool)]) -> (Vec<Dispatch>, Machine) {
    let mut machine = setup.machine();
    let trace = events
        .iter()
        .map(|(event, expiring_soon)| {
            machine.set_credentials(setup.creds_at(*expiring_soon));
            handle(&mut machine, event.clone())
        })
        .collect();
    (trace, machine)
}

fn random_events() -> impl Strategy<Value = Vec<(Event, bool)>> {
    prop::collection::vec((any_event(), any::<bool>()), 0..MAX_STEPS)
}

// ---------------------------------------------------------------------------------------
// The plausible driver
// ---------------------------------------------------------------------------------------

/// The random material for one driver step: which kind of event comes next, and the
/// payload for each kind (only the chosen one is used).
#[derive(Debug, Clone)]
struct DriverChoice {
    /// Out of 100: under the `*_ROLL` thresholds, a local event (signal, Ctrl+C, EOF);
    /// otherwise an answer to something outstanding, the one `pick` points at.
    roll: u8,
    pick: Index,
    dial_failure: Failure,
    loss: Failure,
    frame: Event,
    refresh: Result<(), Failure>,
    signal: Sig,
    expiring_soon: bool,
    /// Whether the stable timer has come due, if armed. Half the time it has not: longer
    /// streaks are where the per-streak guards matter.
    stable_due: bool,
}

/// Out of 100: a signal, a Ctrl+C byte, stdin EOF; the rest answer the machine.
const SIGNAL_ROLL: u8 = 2;
const INTERRUPT_ROLL: u8 = 5;
const EOF_ROLL: u8 = 8;

/// The failures and token-endpoint answers of a run come from a small repertoire, like
/// a scripted server that fails the same few ways again and again: that makes a second
/// rejection in one streak, a flaky refresh, or a retry budget running out, likely
/// rather than rare.
fn driver_choices() -> impl Strategy<Value = Vec<DriverChoice>> {
    let step = (
        0u8..100,
        any::<Index>(),
        (any::<Index>(), any::<Index>(), any::<Index>()),
        frame(),
        signal(),
        any::<bool>(),
        any::<bool>(),
    );
    (
        prop::collection::vec(repertoire_failure(), 1..4),
        prop::collection::vec(repertoire_loss(), 1..4),
        prop::collection::vec(refresh_result(), 1..4),
        prop::collection::vec(step, 0..MAX_STEPS),
    )
        .prop_map(|(dial_failures, losses, refreshes, steps)| {
            steps
                .into_iter()
                .map(
                    |(
                        roll,
                        pick,
                        (dial_pick, loss_pick, refresh_pick),
                        frame,
                        signal,
                        expiring_soon,
                        stable_due,
                    )| {
                        DriverChoice {
                            roll,
                            pick,
                            dial_failure: dial_pick.get(&dial_failures).clone(),
                            loss: loss_pick.get(&losses).clone(),
                            frame,
                            refresh: refresh_pick.get(&refreshes).clone(),
                            signal,
                            expiring_soon,
                            stable_due,
                        }
                    },
                )
                .collect()
        })
}

/// What the driver knows from the effects so far.
#[derive(Debug, Default)]
struct DriverView {
    started: bool,
    dial_pending: bool,
    refresh_pending: bool,
    armed: HashSet<TimerKind>,
    /// Requests the machine made while the same kind of request was still outstanding.
    overlapping_requests: Vec<Effect>,
}

impl DriverView {
    fn absorb(&mut self, event: &Event, effects: &[Effect]) {
        match event {
            Event::Start => self.started = true,
            Event::DialSucceeded | Event::DialFailed(_) => self.dial_pending = false,
            Event::RefreshDone(_) => self.refresh_pending = false,
            Event::Timer(kind) => {
                self.armed.remove(kind);
            }
            _ => {}
        }
        for effect in effects {
            match effect {
                Effect::Dial => {
                    if self.dial_pending || self.refresh_pending {
                        self.overlapping_requests.push(effect.clone());
                    }
                    self.dial_pending = true;
                }
                Effect::Refresh(_) => {
                    if self.dial_pending || self.refresh_pending {
                        self.overlapping_requests.push(effect.clone());
                    }
                    self.refresh_pending = true;
                }
                Effect::StartTimer(kind, _) => {
                    self.armed.insert(*kind);
                }
                Effect::CancelTimer(kind) => {
                    self.armed.remove(kind);
                }
                _ => {}
            }
        }
    }

    /// The answers the world could give now. The connection counts as open while the
    /// machine is Connected: the real driver drops it whenever the machine is not.
    fn answers(&self, connected: bool, choice: &DriverChoice) -> Vec<Event> {
        let mut answers = Vec::new();
        if !self.started {
            answers.push(Event::Start);
        }
        if self.dial_pending {
            answers.push(Event::DialSucceeded);
            answers.push(Event::DialFailed(choice.dial_failure.clone()));
        }
        if self.refresh_pending {
            answers.push(Event::RefreshDone(choice.refresh.clone()));
        }
        for kind in TimerKind::ALL {
            let due = kind != TimerKind::Stable || choice.stable_due;
            if self.armed.contains(&kind) && due {
                answers.push(Event::Timer(kind));
            }
        }
        if connected {
            answers.push(choice.frame.clone());
            answers.push(Event::Closed(choice.loss.clone()));
        }
        // A timer not yet due still comes due if nothing else can happen first.
        if answers.is_empty() && self.armed.contains(&TimerKind::Stable) {
            answers.push(Event::Timer(TimerKind::Stable));
        }
        answers
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The machine emitted `Exit`; the driver stops.
    Exited,
    /// The random material ran out first.
    StepsRanOut,
    /// The machine is not Terminated but waits for nothing the world could deliver.
    Stuck,
}

#[derive(Debug)]
struct Run {
    trace: Vec<Dispatch>,
    ending: Ending,
    overlapping_requests: Vec<Effect>,
    machine: Machine,
}

/// Drives the machine like the real driver would, until it exits.
fn run_plausible(setup: &Setup, choices: &[DriverChoice]) -> Run {
    let mut machine = setup.machine();
    let mut view = DriverView::default();
    let mut trace = Vec::new();
    let mut ending = Ending::StepsRanOut;
    for choice in choices {
        let answers = view.answers(machine.is_connected(), choice);
        if answers.is_empty() && !machine.is_terminated() {
            ending = Ending::Stuck;
            break;
        }
        let event = match choice.roll {
            r if r < SIGNAL_ROLL => Event::Signal(choice.signal),
            r if r < INTERRUPT_ROLL => Event::UserInterrupt,
            // The driver reports stdin EOF only while the machine takes outbound data.
            r if r < EOF_ROLL && machine.is_connected() => Event::LocalEof,
            _ => answers[choice.pick.index(answers.len())].clone(),
        };
        machine.set_credentials(setup.creds_at(choice.expiring_soon));
        let step = handle(&mut machine, event);
        view.absorb(&step.event, &step.effects);
        let exited = step.exit().is_some();
        trace.push(step);
        if exited {
            ending = Ending::Exited;
            break;
        }
    }
    Run {
        trace,
        ending,
        overlapping_requests: view.overlapping_requests,
        machine,
    }
}

fn plausible_run() -> impl Strategy<Value = (Setup, Vec<DriverChoice>)> {
    (any_setup(), driver_choices())
}

// ---------------------------------------------------------------------------------------
// Invariants over plausible runs
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(PLAUSIBLE_CASES))]

    /// One forced refresh per streak. A forced refresh whose token request failed
    /// transiently is retried after a backoff (DESIGN.md, credentials: "retried with
    /// backoff, staying in RefreshingToken/Backoff"); that retry is the same refresh,
    /// so only a refresh *decided* on a rejection counts as a new one. Independently,
    /// a streak may see at most one successful forced refresh.
    #[test]
    fn at_most_one_forced_refresh_per_streak((setup, choices) in plausible_run()) {
        let run = run_plausible(&setup, &choices);
        for streak in streaks(&run.trace) {
            let mut decided = 0;
            let mut succeeded = 0;
            let mut failed_refresh_awaits_retry = false;
            for step in streak {
                if step.enters_forced_refresh() {
                    if matches!(step.before, State::Backoff { .. }) {
                        prop_assert!(
                            failed_refresh_awaits_retry,
                            "a forced refresh out of a backoff that did not follow a failed one: {step:?}"
                        );
                        failed_refresh_awaits_retry = false;
                    } else {
                        decided += 1;
                    }
                }
                if matches!(step.before, State::RefreshingToken { reason: RefreshReason::Rejected, .. }) {
                    match &step.event {
                        Event::RefreshDone(Ok(())) => succeeded += 1,
                        Event::RefreshDone(Err(_)) => {
                            failed_refresh_awaits_retry = matches!(step.after, State::Backoff { .. });
                        }
                        _ => {}
                    }
                }
            }
            prop_assert!(decided <= 1, "{decided} forced refreshes in one streak: {streak:#?}");
            prop_assert!(succeeded <= 1, "{succeeded} successful forced refreshes in one streak: {streak:#?}");
        }
    }

    /// After a failure that retrying cannot fix, the machine stops at once.
    #[test]
    fn no_dial_after_a_failure_that_cannot_heal((setup, choices) in plausible_run()) {
        let run = run_plausible(&setup, &choices);
        for step in &run.trace {
            let Some(failure) = step.failure() else { continue };
            let class = setup.class_of(&failure);
            if matches!(class, Class::Permanent | Class::RejectedData | Class::Permission | Class::Internal) {
                prop_assert!(!step.emits(&Effect::Dial), "dialed after {failure:?}: {step:?}");
                prop_assert!(!step.effects.iter().any(is_refresh), "refreshed after {failure:?}: {step:?}");
                prop_assert!(
                    matches!(step.after, State::Terminated { .. }),
                    "{class:?} failure {failure:?} did not terminate: {step:?}"
                );
            }
        }
    }

    /// Every backoff delay is within the jitter window for its attempt, raised to the
    /// server's Retry-After (capped at 5 min) and never below it. `attempt` is counted
    /// here (backoffs so far in the streak), not read from the machine.
    #[test]
    fn backoff_delays_stay_within_the_window((setup, choices) in plausible_run()) {
        let run = run_plausible(&setup, &choices);
        for streak in streaks(&run.trace) {
            let mut attempt = 0u32;
            for step in streak {
                for effect in &step.effects {
                    let Effect::StartTimer(TimerKind::Backoff, delay) = *effect else { continue };
                    attempt += 1;
                    let floor = step
                        .failure()
                        .and_then(|f| f.retry_after())
                        .map_or(Duration::ZERO, |ra| ra.min(RETRY_AFTER_CAP));
                    let ceiling = setup.policy.ceiling(attempt).max(floor);
                    prop_assert!(delay <= ceiling, "attempt {attempt}: {delay:?} > {ceiling:?} ({step:?})");
                    prop_assert!(delay >= floor, "attempt {attempt}: {delay:?} < Retry-After {floor:?} ({step:?})");
                }
            }
        }
    }

    /// Exit codes follow DESIGN.md's table, judged from the event that ended the session.
    #[test]
    fn exit_codes_follow_the_design_table((setup, choices) in plausible_run()) {
        let run = run_plausible(&setup, &choices);
        for step in &run.trace {
            check_exit_code(&setup, step)?;
        }
    }

    /// The driver's side of the contract: one request at a time, and a running machine
    /// always waits for something the world can deliver (it never hangs).
    #[test]
    fn one_request_at_a_time_and_never_stuck((setup, choices) in plausible_run()) {
        let run = run_plausible(&setup, &choices);
        prop_assert!(run.overlapping_requests.is_empty(), "{:?} while a request was outstanding: {:#?}", run.overlapping_requests, run.trace);
        prop_assert_ne!(run.ending, Ending::Stuck, "stuck in {:?}", run.machine.state());
        prop_assert_eq!(exits_in(&run.trace), usize::from(run.ending == Ending::Exited));
    }
}

proptest! {
    #![proptest_config(cases(PLAUSIBLE_CASES))]

    /// `--max-retries N`: per streak, N+1 dials at most, not counting the free redial
    /// after a forced refresh; the failure that would need redial N+1 ends the session
    /// with RetriesExhausted (exit 75), and nothing else does.
    #[test]
    fn max_retries_is_respected(
        setup in setups_with((0u32..5).prop_map(Some).boxed(), any::<bool>().boxed()),
        choices in driver_choices(),
    ) {
        let n = setup.max_retries.expect("a budget");
        let run = run_plausible(&setup, &choices);
        for streak in streaks(&run.trace) {
            let dials: usize = streak.iter().map(|s| s.count(&Effect::Dial)).sum();
            let free: usize = streak
                .iter()
                .filter(|s| matches!(s.before, State::RefreshingToken { reason: RefreshReason::Rejected, .. }))
                .filter(|s| s.event == Event::RefreshDone(Ok(())))
                .map(|s| s.count(&Effect::Dial))
                .sum();
            prop_assert!(dials - free <= n as usize + 1, "{dials} dials ({free} free) with max_retries {n}: {streak:#?}");

            let mut retriable_failures = 0u32;
            for step in streak {
                let counted = step.failure().is_some_and(|failure| {
                    setup.class_of(&failure) == Class::Transient
                        && match step.before {
                            // A connection we are closing, or a tunnel's, is not redialed.
                            State::Connected { closing, .. } => {
                                !(closing && ends_a_finished_session(&setup, &failure))
                                    && setup.redial_after_connected
                            }
                            _ => true,
                        }
                });
                let exhausted = matches!(step.exit(), Some(Outcome::RetriesExhausted { .. }));
                if !counted {
                    prop_assert!(!exhausted, "retries exhausted without a retriable failure: {step:?}");
                    continue;
                }
                retriable_failures += 1;
                if retriable_failures > n {
                    let failure = step.failure().expect("counted");
                    prop_assert_eq!(
                        step.exit(),
                        Some(&Outcome::RetriesExhausted { failure, retries: n }),
                        "failure {} of a budget of {}", retriable_failures, n
                    );
                    prop_assert_eq!(step.exit().map(Outcome::exit_code), Some(75));
                } else {
                    prop_assert!(step.exit().is_none(), "stopped within the budget: {step:?}");
                    prop_assert!(
                        step.effects.iter().any(|e| matches!(e, Effect::StartTimer(TimerKind::Backoff, _))),
                        "no backoff after a retriable failure: {step:?}"
                    );
                }
            }
        }
    }

    /// `--token-env`: a static token is never refreshed, whatever happens.
    #[test]
    fn static_credentials_are_never_refreshed(
        setup in setups_with(any_max_retries(), Just(false).boxed()),
        choices in driver_choices(),
        events in random_events(),
    ) {
        let plausible = run_plausible(&setup, &choices).trace;
        let (random, _) = run_random(&setup, &events);
        for step in plausible.iter().chain(&random) {
            prop_assert!(!step.effects.iter().any(is_refresh), "{step:?}");
            prop_assert!(!matches!(step.after, State::RefreshingToken { .. }), "{step:?}");
        }
    }

    /// A signal wins from any state a plausible run can reach: the run is cut at a
    /// random point and a signal sent.
    #[test]
    fn a_signal_ends_the_session_from_any_reachable_state(
        (setup, choices) in plausible_run(),
        sig in signal(),
    ) {
        let mut run = run_plausible(&setup, &choices);
        let step = handle(&mut run.machine, Event::Signal(sig));
        check_signal(&step, sig)?;
        run.trace.push(step);
        prop_assert_eq!(exits_in(&run.trace), 1);
    }
}

/// An `Exit` must be the one DESIGN.md prescribes for the event that caused it.
fn check_exit_code(setup: &Setup, step: &Dispatch) -> Result<(), TestCaseError> {
    let Some(outcome) = step.exit() else {
        return Ok(());
    };
    let code = outcome.exit_code();
    match (&step.event, step.failure()) {
        (Event::Signal(sig), _) => {
            prop_assert_eq!(outcome, &Outcome::Signal(*sig));
            prop_assert_eq!(code, signal_exit_code(*sig));
        }
        (Event::UserInterrupt, _) => {
            prop_assert_eq!(outcome, &Outcome::Interrupted, "Ctrl+C while offline");
            prop_assert_eq!(code, 130);
        }
        (Event::Timer(TimerKind::CloseGrace), _) => {
            prop_assert_eq!(
                outcome,
                &Outcome::Done,
                "our close was not answered in time"
            );
            prop_assert_eq!(code, 0);
        }
        (_, Some(failure)) => {
            if matches!(step.before, State::Connected { closing: true, .. })
                && ends_a_finished_session(setup, &failure)
            {
                prop_assert_eq!(outcome, &Outcome::Done, "we were closing: {:?}", step);
                return Ok(());
            }
            let class = setup.class_of(&failure);
            prop_assert_eq!(
                code,
                design_exit_code(class),
                "{:?} is {:?}: {:?}",
                failure,
                class,
                step
            );
            match outcome {
                Outcome::Done => prop_assert_eq!(class, Class::Done),
                Outcome::Stopped {
                    class: stopped_as,
                    failure: stopped_by,
                } => {
                    prop_assert_eq!(*stopped_as, class, "{:?}", step);
                    prop_assert_eq!(stopped_by, &failure);
                }
                Outcome::RetriesExhausted { failure: last, .. } => {
                    prop_assert_eq!(class, Class::Transient);
                    prop_assert_eq!(last, &failure);
                }
                other => return Err(TestCaseError::fail(format!("{other:?} after {failure:?}"))),
            }
        }
        _ => {
            return Err(TestCaseError::fail(format!(
                "this event may not end the session: {step:?}"
            )))
        }
    }
    Ok(())
}

/// DESIGN.md, "The exit code is the truth about the session": while we are closing
/// (stdin EOF), a close 1000/1001 or without a code is done, and so is a transient end
/// (these runs never leave anything unsent); everything else keeps its class.
fn ends_a_finished_session(setup: &Setup, failure: &Failure) -> bool {
    matches!(
        failure,
        Failure::Close {
            code: 1000 | 1001 | 1005,
            ..
        }
    ) || matches!(setup.class_of(failure), Class::Done | Class::Transient)
}

/// A signal: nothing if already Terminated; otherwise Terminated with `Exit(Signal)` as
/// the last effect, after a close frame if a connection was open.
fn check_signal(step: &Dispatch, sig: Sig) -> Result<(), TestCaseError> {
    if matches!(step.before, State::Terminated { .. }) {
        prop_assert!(step.effects.is_empty(), "{step:?}");
        prop_assert_eq!(&step.after, &step.before);
        return Ok(());
    }
    prop_assert!(
        matches!(&step.after, State::Terminated { outcome } if *outcome == Outcome::Signal(sig)),
        "{step:?}"
    );
    prop_assert_eq!(
        step.effects.last(),
        Some(&Effect::Exit(Outcome::Signal(sig)))
    );
    prop_assert_eq!(exits_in(std::slice::from_ref(step)), 1);
    if matches!(
        step.before,
        State::Connected {
            close_sent: false,
            ..
        }
    ) {
        prop_assert!(
            step.effects
                .iter()
                .any(|e| matches!(e, Effect::Close(CLOSE_GOING_AWAY, _))),
            "no close frame before leaving: {step:?}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Invariants over fully random sequences
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(RANDOM_CASES))]

    /// Terminated is absorbing: no effects, same outcome, for any event. Also: handling
    /// any sequence does not panic (a panic fails the case).
    #[test]
    fn nothing_leaves_terminated(setup in any_setup(), events in random_events()) {
        let (trace, _) = run_random(&setup, &events);
        for step in &trace {
            if matches!(step.before, State::Terminated { .. }) {
                prop_assert!(step.effects.is_empty(), "{step:?}");
                prop_assert_eq!(&step.after, &step.before);
            }
        }
    }

    /// A signal ends the session from wherever a random sequence led.
    #[test]
    fn a_signal_always_reaches_terminated(setup in any_setup(), events in random_events(), sig in signal()) {
        let (trace, mut machine) = run_random(&setup, &events);
        for step in &trace {
            if let Event::Signal(sig) = step.event {
                check_signal(step, sig)?;
            }
        }
        check_signal(&handle(&mut machine, Event::Signal(sig)), sig)?;
    }

    /// Exactly one `Exit`, ever, and only once Terminated.
    #[test]
    fn exactly_one_exit(setup in any_setup(), events in random_events()) {
        let (trace, _) = run_random(&setup, &events);
        let terminated = trace.last().is_some_and(|s| matches!(s.after, State::Terminated { .. }));
        prop_assert_eq!(exits_in(&trace), usize::from(terminated));
        for step in &trace {
            let entered_terminated = !matches!(step.before, State::Terminated { .. })
                && matches!(step.after, State::Terminated { .. });
            prop_assert_eq!(step.exit().is_some(), entered_terminated, "{:?}", step);
            if let (Some(outcome), State::Terminated { outcome: kept }) = (step.exit(), &step.after) {
                prop_assert_eq!(outcome, kept);
            }
        }
    }

    /// The exit code table holds even for events a real driver would not send.
    #[test]
    fn exit_codes_follow_the_design_table_for_random_events(setup in any_setup(), events in random_events()) {
        for step in run_random(&setup, &events).0 {
            check_exit_code(&setup, &step)?;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Issue 4: a server that upgrades and then always closes 1008
// ---------------------------------------------------------------------------------------

/// What may happen on a connection before the server closes it, short of the stable
/// timer firing.
fn chatter() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        prop_oneof![
            Just(Event::Received(Payload::Text("motd".into()))),
            Just(Event::PingReceived),
            Just(Event::PongReceived),
            Just(Event::Timer(TimerKind::Ping)),
        ],
        0..4,
    )
}

proptest! {
    #![proptest_config(cases(64))]

    /// Start, then loop { DialSucceeded, Closed(1008) } answering every Refresh with
    /// success: exactly one refresh, then exit 77, whatever `stable_after` and the retry
    /// budget, as long as the stable timer never fires.
    #[test]
    fn upgrade_then_close_1008_refreshes_once_then_exits_77(
        setup in setups_with(any_max_retries(), Just(true).boxed()),
        chatter in chatter(),
    ) {
        let setup = setup.refreshable_token_redialing();
        let mut machine = setup.machine();
        let mut effects = machine.handle(Event::Start);
        let mut log = effects.clone();
        // Far more rounds than a correct machine needs; a looping one is caught here.
        for _ in 0..10 {
            if exit_of(&effects).is_some() {
                break;
            }
            let replies = if effects.iter().any(is_refresh) {
                vec![Event::RefreshDone(Ok(()))]
            } else if effects.contains(&Effect::Dial) {
                let mut replies = vec![Event::DialSucceeded];
                replies.extend(chatter.iter().cloned());
                replies.push(Event::Closed(Failure::Close { code: 1008, reason: "token expired".into() }));
                replies
            } else {
                return Err(TestCaseError::fail(format!("nothing to answer: {effects:?}")));
            };
            effects = replies.into_iter().flat_map(|e| machine.handle(e)).collect();
            log.extend(effects.iter().cloned());
        }
        prop_assert_eq!(log.iter().filter(|e| is_refresh(e)).count(), 1, "{:?}", log);
        prop_assert_eq!(exits_in_effects(&log), 1);
        let outcome = exit_of(&log).expect("the session ended");
        prop_assert!(matches!(outcome, Outcome::Stopped { class: Class::Auth, failure: Failure::Close { code: 1008, .. } }), "{outcome:?}");
        prop_assert_eq!(outcome.exit_code(), 77);
    }
}

/// How the server rejects the token: at the handshake, or by closing right after it.
fn rejection() -> impl Strategy<Value = Vec<Event>> {
    prop_oneof![
        prop::sample::select(vec![401u16, 403]).prop_map(|status| vec![Event::DialFailed(
            Failure::Http {
                status,
                retry_after: None
            }
        )]),
        prop::sample::select(vec![1008u16, 3000, 3003]).prop_map(|code| vec![
            Event::DialSucceeded,
            Event::Closed(Failure::Close {
                code,
                reason: "token expired".into()
            }),
        ]),
    ]
}

proptest! {
    #![proptest_config(cases(128))]

    /// Issue 4 with a flaky token endpoint: the server rejects every token, the token
    /// endpoint fails transiently a few times before answering. Retrying the failed
    /// refresh is allowed, but only one refresh may succeed in the streak, and the
    /// session ends with 77 (rejected again, or invalid_grant) or 75 (the retry budget
    /// ran out on the token endpoint).
    #[test]
    fn repeated_1008_with_a_flaky_token_endpoint_refreshes_once(
        setup in setups_with(any_max_retries(), Just(true).boxed()),
        rejection in rejection(),
        endpoint in prop::collection::vec(refresh_result(), 0..6),
    ) {
        let setup = setup.refreshable_token_redialing();
        let mut machine = setup.machine();
        // Once the scripted answers run out, the endpoint works.
        let mut endpoint = endpoint.into_iter().chain(std::iter::repeat(Ok(())));
        let mut trace = vec![handle(&mut machine, Event::Start)];
        for _ in 0..40 {
            let last = trace.last().expect("started");
            if last.exit().is_some() {
                break;
            }
            let replies = if last.effects.iter().any(is_refresh) {
                vec![Event::RefreshDone(endpoint.next().expect("endless"))]
            } else if last.emits(&Effect::Dial) {
                rejection.clone()
            } else if last.effects.iter().any(|e| matches!(e, Effect::StartTimer(TimerKind::Backoff, _))) {
                vec![Event::Timer(TimerKind::Backoff)]
            } else {
                return Err(TestCaseError::fail(format!("nothing to answer: {last:?}")));
            };
            for event in replies {
                trace.push(handle(&mut machine, event));
            }
        }
        let refreshed = trace
            .iter()
            .filter(|s| matches!(s.before, State::RefreshingToken { .. }) && s.event == Event::RefreshDone(Ok(())))
            .count();
        prop_assert!(refreshed <= 1, "{refreshed} successful refreshes: {trace:#?}");
        prop_assert_eq!(exits_in(&trace), 1, "{:#?}", trace);
        let code = trace.iter().find_map(Dispatch::exit).map(Outcome::exit_code);
        prop_assert!(matches!(code, Some(75 | 77)), "exit {code:?}: {trace:#?}");
    }
}

// ---------------------------------------------------------------------------------------
// The properties are not vacuous: the plausible driver reaches the situations they judge
// ---------------------------------------------------------------------------------------

/// Runs a deterministic sample of plausible runs and checks that each situation the
/// invariants above care about occurs at least once; otherwise a property could pass
/// by never meeting its case.
#[test]
fn plausible_driver_reaches_every_situation() {
    let mut runner = TestRunner::deterministic();
    let strategy = plausible_run();
    let mut seen: HashSet<&'static str> = HashSet::new();
    let mut exit_codes: HashSet<u8> = HashSet::new();
    for _ in 0..1000 {
        let (setup, choices) = strategy
            .new_tree(&mut runner)
            .expect("a scenario")
            .current();
        let run = run_plausible(&setup, &choices);
        for step in &run.trace {
            if let Some(outcome) = step.exit() {
                exit_codes.insert(outcome.exit_code());
                if matches!(outcome, Outcome::RetriesExhausted { .. }) {
                    seen.insert("retries exhausted");
                }
            }
            if step.enters_forced_refresh() {
                seen.insert(if matches!(step.before, State::Backoff { .. }) {
                    "forced refresh retried"
                } else {
                    "forced refresh"
                });
            }
            if matches!(
                step.after,
                State::RefreshingToken {
                    reason: RefreshReason::Proactive,
                    ..
                }
            ) {
                seen.insert("proactive refresh");
            }
            if step.ends_streak()
                && guards_of(&step.before).is_some_and(|(guards, _)| guards != Guards::default())
            {
                seen.insert("stable timer reset the guards");
            }
            if matches!(step.before, State::Connected { closing: true, .. }) {
                seen.insert("closing");
            }
            let rejected = step
                .failure()
                .is_some_and(|f| setup.class_of(&f) == Class::Auth);
            if rejected
                && setup.creds.refreshable
                && guards_of(&step.before).is_some_and(|(guards, _)| guards.refreshed_in_streak)
            {
                seen.insert("rejected again after a forced refresh");
            }
            if step
                .failure()
                .and_then(|f| f.retry_after())
                .is_some_and(|ra| ra > RETRY_AFTER_CAP)
                && step
                    .effects
                    .iter()
                    .any(|e| matches!(e, Effect::StartTimer(TimerKind::Backoff, _)))
            {
                seen.insert("retry-after capped");
            }
        }
        if run.ending == Ending::StepsRanOut {
            seen.insert("long run");
        }
    }
    for situation in [
        "retries exhausted",
        "forced refresh",
        "forced refresh retried",
        "rejected again after a forced refresh",
        "proactive refresh",
        "stable timer reset the guards",
        "closing",
        "retry-after capped",
        "long run",
    ] {
        assert!(seen.contains(situation), "never saw: {situation}");
    }
    for code in [0, 1, 65, 69, 75, 77, 130, 143] {
        assert!(exit_codes.contains(&code), "never saw exit {code}");
    }
}

// ---------------------------------------------------------------------------------------
// Model test: the machine against a reference model written from DESIGN.md
// ---------------------------------------------------------------------------------------

/// Why the model is fetching a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Expiring,
    Rejected,
}

/// What the model does when its backoff timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Dial,
    Refresh(Why),
}

/// Where the reference model is: the machine's states, as DESIGN.md draws them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelState {
    Idle,
    Dialing,
    Refreshing(Why),
    Backoff(Then),
    Connected {
        closing: bool,
        close_sent: bool,
        stable_pending: bool,
    },
    Terminated(u8),
}

impl ModelState {
    /// DESIGN.md's state names.
    fn name(self) -> &'static str {
        match self {
            ModelState::Idle => "Idle",
            ModelState::Dialing => "Dialing",
            ModelState::Refreshing(_) => "RefreshingToken",
            ModelState::Backoff(_) => "Backoff",
            ModelState::Connected { .. } => "Connected",
            ModelState::Terminated(_) => "Terminated",
        }
    }
}

#[derive(Debug, Clone)]
struct Model {
    setup: Setup,
    phase: ModelState,
    refreshed_in_streak: bool,
    failures_in_streak: u32,
}

impl Model {
    fn new(setup: Setup) -> Self {
        Model {
            setup,
            phase: ModelState::Idle,
            refreshed_in_streak: false,
            failures_in_streak: 0,
        }
    }

    fn terminate(&mut self, code: u8) {
        self.phase = ModelState::Terminated(code);
    }

    /// "Before dialing with refreshable credentials that expire within 60 s, the
    /// machine goes through RefreshingToken first."
    fn dial(&mut self) {
        let creds = self.setup.creds;
        self.phase = if creds.refreshable && creds.expiring_soon {
            ModelState::Refreshing(Why::Expiring)
        } else {
            ModelState::Dialing
        };
    }

    /// A transient failure counts against `--max-retries` (N redials since the last
    /// stable connection), then backs off.
    fn back_off(&mut self, then: Then) {
        self.failures_in_streak += 1;
        match self.setup.max_retries {
            Some(n) if self.failures_in_streak > n => self.terminate(75),
            _ => self.phase = ModelState::Backoff(then),
        }
    }

    /// The classification table's "what happens" column.
    fn fail(&mut self, failure: &Failure) {
        match self.setup.class_of(failure) {
            Class::Transient => self.back_off(Then::Dial),
            // Refresh once per streak, refreshable credentials only; redial at once.
            Class::Auth if self.setup.creds.refreshable && !self.refreshed_in_streak => {
                self.refreshed_in_streak = true;
                self.phase = ModelState::Refreshing(Why::Rejected);
            }
            class => self.terminate(design_exit_code(class)),
        }
    }

    /// An established connection went away.
    fn lose_connection(&mut self, failure: &Failure, closing: bool) {
        if closing && ends_a_finished_session(&self.setup, failure) {
            // stdin ended and the server ended normally: the session is done.
            self.terminate(0);
        } else if !self.setup.redial_after_connected {
            // A tunnel's byte stream cannot be resumed: stop with the failure's code.
            self.terminate(design_exit_code(self.setup.class_of(failure)));
        } else {
            self.fail(failure);
        }
    }

    fn on(mut self, event: &Event) -> Self {
        use ModelState::*;
        match (self.phase, event) {
            (Terminated(_), _) => {}
            (_, Event::Signal(sig)) => self.terminate(signal_exit_code(*sig)),
            (Idle, Event::Start) => self.dial(),
            // Ctrl+C while offline (or not yet started) quits.
            (Idle | Dialing | Refreshing(_) | Backoff(_), Event::UserInterrupt) => {
                self.terminate(130)
            }
            (Dialing, Event::DialSucceeded) => {
                self.phase = Connected {
                    closing: false,
                    close_sent: false,
                    stable_pending: true,
                }
            }
            (Dialing, Event::DialFailed(failure)) => self.fail(failure),
            (Refreshing(_), Event::RefreshDone(Ok(()))) => self.phase = Dialing,
            (Refreshing(why), Event::RefreshDone(Err(failure))) => {
                match self.setup.class_of(failure) {
                    Class::Transient => self.back_off(Then::Refresh(why)),
                    class => self.terminate(design_exit_code(class)),
                }
            }
            (Backoff(Then::Dial), Event::Timer(TimerKind::Backoff)) => self.dial(),
            (Backoff(Then::Refresh(why)), Event::Timer(TimerKind::Backoff)) => {
                self.phase = Refreshing(why)
            }
            (Connected { closing, .. }, Event::Closed(failure)) => {
                self.lose_connection(failure, closing)
            }
            (Connected { closing, .. }, Event::Timer(TimerKind::Liveness)) => {
                self.lose_connection(&Failure::Liveness, closing)
            }
            (
                Connected {
                    closing,
                    close_sent,
                    ..
                },
                Event::Timer(TimerKind::Stable),
            ) => {
                // The connection proved itself: a new streak.
                self.refreshed_in_streak = false;
                self.failures_in_streak = 0;
                self.phase = Connected {
                    closing,
                    close_sent,
                    stable_pending: false,
                };
            }
            (
                Connected {
                    close_sent: true, ..
                },
                Event::Timer(TimerKind::CloseGrace),
            ) => self.terminate(0),
            // stdin EOF: our close goes out at once with `--linger 0`, otherwise once the
            // server has been quiet for the linger time.
            (
                Connected {
                    closing: false,
                    stable_pending,
                    ..
                },
                Event::LocalEof,
            ) => {
                self.phase = Connected {
                    closing: true,
                    close_sent: self.setup.linger.is_zero(),
                    stable_pending,
                }
            }
            (
                Connected {
                    closing: true,
                    close_sent: false,
                    stable_pending,
                },
                Event::Timer(TimerKind::Linger),
            ) => {
                self.phase = Connected {
                    closing: true,
                    close_sent: true,
                    stable_pending,
                }
            }
            // Data, pings, a forwarded Ctrl+C, and stray events change nothing.
            _ => {}
        }
        self
    }

    fn guards(&self) -> Guards {
        Guards {
            refreshed_in_streak: self.refreshed_in_streak,
            failures_in_streak: self.failures_in_streak,
        }
    }
}

struct ReferenceModel;

impl ReferenceStateMachine for ReferenceModel {
    type State = Model;
    type Transition = Event;

    fn init_state() -> BoxedStrategy<Model> {
        any_setup().prop_map(Model::new).boxed()
    }

    /// Mostly what the world could answer in this phase; now and then a signal, a
    /// Ctrl+C, or a stray event (which must change nothing).
    fn transitions(model: &Model) -> BoxedStrategy<Event> {
        let stray = any_event().boxed();
        let local = prop_oneof![signal().prop_map(Event::Signal), Just(Event::UserInterrupt)];
        let expected: BoxedStrategy<Event> = match model.phase {
            ModelState::Idle => Just(Event::Start).boxed(),
            ModelState::Dialing => prop_oneof![
                Just(Event::DialSucceeded),
                any_failure().prop_map(Event::DialFailed),
            ]
            .boxed(),
            ModelState::Refreshing(_) => refresh_result().prop_map(Event::RefreshDone).boxed(),
            ModelState::Backoff(_) => Just(Event::Timer(TimerKind::Backoff)).boxed(),
            ModelState::Connected {
                closing,
                close_sent,
                stable_pending,
            } => {
                let mut timers = vec![TimerKind::Ping, TimerKind::Liveness];
                if stable_pending {
                    timers.push(TimerKind::Stable);
                }
                if close_sent {
                    timers.push(TimerKind::CloseGrace);
                } else if closing {
                    timers.push(TimerKind::Linger);
                }
                prop_oneof![
                    3 => frame(),
                    2 => connection_loss().prop_map(Event::Closed),
                    2 => prop::sample::select(timers).prop_map(Event::Timer),
                    1 => Just(Event::LocalEof),
                ]
                .boxed()
            }
            ModelState::Terminated(_) => return stray,
        };
        prop_oneof![10 => expected, 1 => local, 1 => stray].boxed()
    }

    fn apply(model: Model, event: &Event) -> Model {
        model.on(event)
    }
}

/// The machine under test, and the model's phase before the last event (to know which
/// state was just entered).
struct MachineUnderTest {
    machine: Machine,
    previous: ModelState,
}

fn guards_of(state: &State) -> Option<(Guards, u32)> {
    match state {
        State::Dialing { attempt, guards }
        | State::RefreshingToken {
            attempt, guards, ..
        }
        | State::Backoff {
            attempt, guards, ..
        } => Some((*guards, *attempt)),
        State::Connected { guards, .. } => Some((*guards, guards.failures_in_streak)),
        _ => None,
    }
}

impl StateMachineTest for MachineUnderTest {
    type SystemUnderTest = Self;
    type Reference = ReferenceModel;

    fn init_test(model: &Model) -> Self {
        MachineUnderTest {
            machine: model.setup.machine(),
            previous: model.phase,
        }
    }

    fn apply(mut sut: Self, model: &Model, event: Event) -> Self {
        let effects = sut.machine.handle(event.clone());
        let state = sut.machine.state();
        let context = format!(
            "after {event:?}: machine {state:?}, model {:?}",
            model.phase
        );

        assert_eq!(state_name(state), model.phase.name(), "{context}");
        match (state, model.phase) {
            (State::Terminated { outcome }, ModelState::Terminated(code)) => {
                assert_eq!(outcome.exit_code(), code, "{context}")
            }
            (State::Idle {}, _) => {}
            (state, _) => {
                let (guards, attempt) = guards_of(state).expect("a running state");
                assert_eq!(guards, model.guards(), "{context}");
                // The attempt number is the count of failures in the streak.
                assert_eq!(attempt, model.failures_in_streak, "{context}");
            }
        }
        match (state, model.phase) {
            (State::RefreshingToken { reason, .. }, ModelState::Refreshing(why)) => {
                let expected = match why {
                    Why::Expiring => RefreshReason::Proactive,
                    Why::Rejected => RefreshReason::Rejected,
                };
                assert_eq!(*reason, expected, "{context}");
            }
            (State::Backoff { resume, .. }, ModelState::Backoff(then)) => {
                let expected = match then {
                    Then::Dial => Resume::Dial,
                    Then::Refresh(Why::Expiring) => Resume::Refresh(RefreshReason::Proactive),
                    Then::Refresh(Why::Rejected) => Resume::Refresh(RefreshReason::Rejected),
                };
                assert_eq!(*resume, expected, "{context}");
            }
            (
                State::Connected {
                    closing,
                    close_sent,
                    ..
                },
                ModelState::Connected {
                    closing: expected,
                    close_sent: expected_close_sent,
                    ..
                },
            ) => {
                assert_eq!(*closing, expected, "{context}");
                assert_eq!(*close_sent, expected_close_sent, "{context}");
            }
            _ => {}
        }

        // Entering a state is what asks the driver for something: a dial, a refresh, a
        // backoff timer, the exit. Staying asks for none of them.
        let entered = std::mem::discriminant(&sut.previous) != std::mem::discriminant(&model.phase);
        let count = |wanted: fn(&Effect) -> bool| effects.iter().filter(|e| wanted(e)).count();
        let expect = |phase_matches: bool| usize::from(entered && phase_matches);
        assert_eq!(
            count(|e| *e == Effect::Dial),
            expect(model.phase == ModelState::Dialing),
            "Dial effects, {context}: {effects:?}"
        );
        assert_eq!(
            count(is_refresh),
            expect(matches!(model.phase, ModelState::Refreshing(_))),
            "Refresh effects, {context}: {effects:?}"
        );
        assert_eq!(
            count(|e| matches!(e, Effect::StartTimer(TimerKind::Backoff, _))),
            expect(matches!(model.phase, ModelState::Backoff(_))),
            "backoff timers, {context}: {effects:?}"
        );
        assert_eq!(
            count(|e| matches!(e, Effect::Exit(_))),
            expect(matches!(model.phase, ModelState::Terminated(_))),
            "Exit effects, {context}: {effects:?}"
        );

        sut.previous = model.phase;
        sut
    }
}

prop_state_machine! {
    #![proptest_config(cases(MODEL_CASES))]

    #[test]
    fn machine_matches_the_reference_model(sequential 1..MAX_STEPS => MachineUnderTest);
}

// ---------------------------------------------------------------------------------------
// Issue 10, item 1: the server's close racing our stdin EOF
// ---------------------------------------------------------------------------------------

/// Every close code DESIGN.md's table names, with a reason that keeps 1007 apart, plus
/// codes forbidden on the wire.
const TABLE_CLOSE_CODES: [u16; 30] = [
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015, 3000, 3003, 3001,
    3999, 4000, 4001, 4500, 4999, 0, 999, 1004, 1005, 1006, 1016, 2000, 2999, 5000,
];

/// After the race, the world is kind: every redial succeeds, the server answers our
/// close with 1000. Returns the exit code.
fn run_to_a_normal_end(machine: &mut Machine) -> u8 {
    for _ in 0..20 {
        let event = match machine.state() {
            State::Terminated { outcome } => return outcome.exit_code(),
            State::Backoff { .. } => Event::Timer(TimerKind::Backoff),
            State::RefreshingToken { .. } => Event::RefreshDone(Ok(())),
            State::Dialing { .. } => Event::DialSucceeded,
            // The driver feeds stdin EOF again on a new connection once it has ended.
            State::Connected { closing: false, .. } => Event::LocalEof,
            State::Connected {
                close_sent: false, ..
            } => Event::Timer(TimerKind::Linger),
            State::Connected { .. } => Event::Closed(Failure::Close {
                code: 1000,
                reason: String::new(),
            }),
            State::Idle {} => Event::Start,
        };
        machine.handle(event);
    }
    panic!("no end after 20 events: {:?}", machine.state());
}

proptest! {
    #![proptest_config(cases(RANDOM_CASES))]

    /// DESIGN.md: "While wsup is closing (stdin EOF), the server's close is still
    /// classified". Whether the server's close comes before or after our `LocalEof`, the
    /// exit code is the same.
    #[test]
    fn a_close_racing_stdin_eof_gives_the_same_exit_code_in_either_order(
        setup in any_setup(),
        code in prop::sample::select(TABLE_CLOSE_CODES.to_vec()),
        reason in prop::sample::select(vec!["", "token expired", "Not authorized to X", "bad"]),
    ) {
        let mut setup = Setup { expiry_drifts: false, ..setup };
        if setup.class_of(&Failure::Close { code, reason: reason.into() }) == Class::Transient {
            // A transient close that wins the race is a failure like any other: with no
            // redial allowed (a tunnel, `--max-retries 0`) it ends the session with 75,
            // while the same close after our EOF, with everything sent, is the normal
            // end. The orders agree whenever a redial is allowed.
            setup.redial_after_connected = true;
            setup.max_retries = setup.max_retries.map(|n| n.max(1));
        }
        let server_close = || Event::Closed(Failure::Close { code, reason: reason.into() });
        let connected = || {
            let mut machine = setup.machine();
            machine.handle(Event::Start);
            if matches!(machine.state(), State::RefreshingToken { .. }) {
                machine.handle(Event::RefreshDone(Ok(())));
            }
            machine.handle(Event::DialSucceeded);
            assert!(machine.is_connected());
            machine
        };

        let mut eof_first = connected();
        eof_first.handle(Event::LocalEof);
        eof_first.handle(server_close());
        let eof_first = run_to_a_normal_end(&mut eof_first);

        let mut close_first = connected();
        close_first.handle(server_close());
        // Offline or ended: the driver holds stdin EOF until the next connection.
        if close_first.is_connected() {
            close_first.handle(Event::LocalEof);
        }
        let close_first = run_to_a_normal_end(&mut close_first);

        prop_assert_eq!(eof_first, close_first, "close {} {:?}", code, reason);
        // And the code is the table's, when the close ends the session at once.
        let class = setup.class_of(&Failure::Close { code, reason: reason.into() });
        if matches!(class, Class::Permanent | Class::RejectedData | Class::Permission) {
            prop_assert_eq!(eof_first, design_exit_code(class));
        }
    }
}
