//! The machine against a reference model written from DESIGN.md alone
//! (proptest-state-machine), compared after every event.

use super::*;

// ---------------------------------------------------------------------------------------
// Model test: the machine against a reference model written from DESIGN.md
// ---------------------------------------------------------------------------------------

/// Why the model is fetching a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    Expiring,
    Rejected,
}

/// What the model does when its backoff timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Then {
    Dial,
    Refresh(Why),
}

/// Where the reference model is: the machine's states, as DESIGN.md draws them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModelState {
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
    pub(crate) fn name(self) -> &'static str {
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
pub(crate) struct Model {
    pub(crate) setup: Setup,
    pub(crate) phase: ModelState,
    pub(crate) refreshed_in_streak: bool,
    pub(crate) failures_in_streak: u32,
}

impl Model {
    pub(crate) fn new(setup: Setup) -> Self {
        Model {
            setup,
            phase: ModelState::Idle,
            refreshed_in_streak: false,
            failures_in_streak: 0,
        }
    }

    pub(crate) fn terminate(&mut self, code: u8) {
        self.phase = ModelState::Terminated(code);
    }

    /// "Before dialing with refreshable credentials that expire within 60 s, the
    /// machine goes through RefreshingToken first."
    pub(crate) fn dial(&mut self) {
        let creds = self.setup.creds;
        self.phase = if creds.refreshable && creds.expiring_soon {
            ModelState::Refreshing(Why::Expiring)
        } else {
            ModelState::Dialing
        };
    }

    /// A transient failure counts against `--max-retries` (N redials since the last
    /// stable connection), then backs off.
    pub(crate) fn back_off(&mut self, then: Then) {
        self.failures_in_streak += 1;
        match self.setup.max_retries {
            Some(n) if self.failures_in_streak > n => self.terminate(75),
            _ => self.phase = ModelState::Backoff(then),
        }
    }

    /// The classification table's "what happens" column.
    pub(crate) fn fail(&mut self, failure: &Failure) {
        match self.setup.class_of(failure) {
            Class::Transient => self.back_off(Then::Dial),
            // Refresh once per streak, refreshable credentials only; redial at once. A
            // proxy's 407 is about the proxy URL's credentials: it stops at once.
            Class::Auth
                if self.setup.creds.refreshable
                    && !self.refreshed_in_streak
                    && !matches!(failure, Failure::Proxy { .. }) =>
            {
                self.refreshed_in_streak = true;
                self.phase = ModelState::Refreshing(Why::Rejected);
            }
            class => self.terminate(design_exit_code(class)),
        }
    }

    /// An established connection went away.
    pub(crate) fn lose_connection(&mut self, failure: &Failure, closing: bool) {
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

    pub(crate) fn on(mut self, event: &Event) -> Self {
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

    pub(crate) fn guards(&self) -> Guards {
        Guards {
            refreshed_in_streak: self.refreshed_in_streak,
            failures_in_streak: self.failures_in_streak,
        }
    }
}

pub(crate) struct ReferenceModel;

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
pub(crate) struct MachineUnderTest {
    pub(crate) machine: Machine,
    pub(crate) previous: ModelState,
}

pub(crate) fn guards_of(state: &State) -> Option<(Guards, u32)> {
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
