//! Property and model tests for the supervisor's state machine (DESIGN.md, "Tests").
//! Test code only (`cfg(test)`): the properties themselves, about 750 lines, read best
//! together; the oracle, strategies, driver model and model test have files of their own.
//!
//! Three kinds of input drive [`Machine`] here:
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
//! Failures persist to `proptest-regressions/machine_props.txt`, named by an absolute
//! path ([`REGRESSIONS`]), so that the file stays where it is whichever module of this
//! directory test fails: proptest's default (`SourceParallel`) would derive a path from
//! each source file instead (`src/machine/props/<module>.proptest-regressions`).
//!
//! The modules: `oracle` (DESIGN.md's table), `strategies` (random material and the
//! setup of a run), `driver_model` (traces, random sequences, the plausible driver),
//! `model_test` (the reference model); the properties are here.

use crate::backoff::{Backoff, BackoffPolicy, Jitter, RETRY_AFTER_CAP};
use crate::classify::{Class, ClassifyRules, Failure, NetworkKind};
use crate::machine::{
    state_name, CredentialState, Effect, Event, Guards, Machine, MachineConfig, Outcome, Payload,
    RefreshReason, Resume, Sig, State, TimerKind, CLOSE_GOING_AWAY,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{FileFailurePersistence, TestRunner};
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use std::collections::HashSet;
use std::time::Duration;

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

mod driver_model;
mod model_test;
mod oracle;
mod strategies;

use driver_model::*;
use model_test::guards_of;
use oracle::*;
use strategies::*;

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
