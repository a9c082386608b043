//! How the tests drive the machine: recorded dispatches (traces), fully random
//! sequences, and the plausible driver that answers only what the real driver could.

use super::*;

// ---------------------------------------------------------------------------------------
// Traces
// ---------------------------------------------------------------------------------------

/// One event handled by the machine, with what it saw and did.
#[derive(Debug, Clone)]
pub(crate) struct Dispatch {
    pub(crate) before: State,
    pub(crate) event: Event,
    pub(crate) effects: Vec<Effect>,
    pub(crate) after: State,
}

impl Dispatch {
    pub(crate) fn emits(&self, effect: &Effect) -> bool {
        self.effects.contains(effect)
    }

    pub(crate) fn count(&self, effect: &Effect) -> usize {
        self.effects.iter().filter(|e| *e == effect).count()
    }

    pub(crate) fn exit(&self) -> Option<&Outcome> {
        exit_of(&self.effects)
    }

    /// The failure this event confronts the machine with, if the event means one in the
    /// state it arrived in (a `DialFailed` while Dialing, a close while Connected, …).
    pub(crate) fn failure(&self) -> Option<Failure> {
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
    pub(crate) fn ends_streak(&self) -> bool {
        matches!(self.before, State::Connected { .. })
            && self.event == Event::Timer(TimerKind::Stable)
    }

    pub(crate) fn enters_forced_refresh(&self) -> bool {
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

pub(crate) fn is_refresh(effect: &Effect) -> bool {
    matches!(effect, Effect::Refresh(_))
}

pub(crate) fn exit_of(effects: &[Effect]) -> Option<&Outcome> {
    effects.iter().find_map(|e| match e {
        Effect::Exit(outcome) => Some(outcome),
        _ => None,
    })
}

pub(crate) fn exits_in_effects(effects: &[Effect]) -> usize {
    effects
        .iter()
        .filter(|e| matches!(e, Effect::Exit(_)))
        .count()
}

pub(crate) fn exits_in(trace: &[Dispatch]) -> usize {
    trace.iter().map(|s| exits_in_effects(&s.effects)).sum()
}

/// Splits a trace into failure streaks: a streak ends with a handled `Timer(Stable)`.
pub(crate) fn streaks(trace: &[Dispatch]) -> Vec<&[Dispatch]> {
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

pub(crate) fn handle(machine: &mut Machine, event: Event) -> Dispatch {
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
pub(crate) fn run_random(setup: &Setup, events: &[(Event, bool)]) -> (Vec<Dispatch>, Machine) {
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

pub(crate) fn random_events() -> impl Strategy<Value = Vec<(Event, bool)>> {
    prop::collection::vec((any_event(), any::<bool>()), 0..MAX_STEPS)
}

// ---------------------------------------------------------------------------------------
// The plausible driver
// ---------------------------------------------------------------------------------------

/// The random material for one driver step: which kind of event comes next, and the
/// payload for each kind (only the chosen one is used).
#[derive(Debug, Clone)]
pub(crate) struct DriverChoice {
    /// Out of 100: under the `*_ROLL` thresholds, a local event (signal, Ctrl+C, EOF);
    /// otherwise an answer to something outstanding, the one `pick` points at.
    pub(crate) roll: u8,
    pub(crate) pick: Index,
    pub(crate) dial_failure: Failure,
    pub(crate) loss: Failure,
    pub(crate) frame: Event,
    pub(crate) refresh: Result<(), Failure>,
    pub(crate) signal: Sig,
    pub(crate) expiring_soon: bool,
    /// Whether the stable timer has come due, if armed. Half the time it has not: longer
    /// streaks are where the per-streak guards matter.
    pub(crate) stable_due: bool,
}

/// Out of 100: a signal, a Ctrl+C byte, stdin EOF; the rest answer the machine.
pub(crate) const SIGNAL_ROLL: u8 = 2;
pub(crate) const INTERRUPT_ROLL: u8 = 5;
pub(crate) const EOF_ROLL: u8 = 8;

/// The failures and token-endpoint answers of a run come from a small repertoire, like
/// a scripted server that fails the same few ways again and again: that makes a second
/// rejection in one streak, a flaky refresh, or a retry budget running out, likely
/// rather than rare.
pub(crate) fn driver_choices() -> impl Strategy<Value = Vec<DriverChoice>> {
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
pub(crate) struct DriverView {
    pub(crate) started: bool,
    pub(crate) dial_pending: bool,
    pub(crate) refresh_pending: bool,
    pub(crate) armed: HashSet<TimerKind>,
    /// Requests the machine made while the same kind of request was still outstanding.
    pub(crate) overlapping_requests: Vec<Effect>,
}

impl DriverView {
    pub(crate) fn absorb(&mut self, event: &Event, effects: &[Effect]) {
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
    pub(crate) fn answers(&self, connected: bool, choice: &DriverChoice) -> Vec<Event> {
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
pub(crate) enum Ending {
    /// The machine emitted `Exit`; the driver stops.
    Exited,
    /// The random material ran out first.
    StepsRanOut,
    /// The machine is not Terminated but waits for nothing the world could deliver.
    Stuck,
}

#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) trace: Vec<Dispatch>,
    pub(crate) ending: Ending,
    pub(crate) overlapping_requests: Vec<Effect>,
    pub(crate) machine: Machine,
}

/// Drives the machine like the real driver would, until it exits.
pub(crate) fn run_plausible(setup: &Setup, choices: &[DriverChoice]) -> Run {
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

pub(crate) fn plausible_run() -> impl Strategy<Value = (Setup, Vec<DriverChoice>)> {
    (any_setup(), driver_choices())
}
