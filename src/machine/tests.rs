//! The machine's unit tests: one transition or policy rule each (the property tests in
//! `props` cover sequences).

use super::*;
use crate::backoff::{BackoffPolicy, Jitter};
use crate::classify::NetworkKind;

fn machine(config: MachineConfig) -> Machine {
    Machine::new(
        config,
        Backoff::new(BackoffPolicy::default(), Jitter::seeded(9)),
    )
}

/// A machine that has started and whose first dial succeeded (its effects dropped).
fn connected(config: MachineConfig) -> Machine {
    let mut m = machine(config);
    m.handle(Event::Start);
    m.handle(Event::DialSucceeded);
    m
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
    let mut m = connected(MachineConfig::default());
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
    let mut m = connected(MachineConfig::default());
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
    let mut m = connected(MachineConfig::default());
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
    let mut m = connected(MachineConfig::default());
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
fn a_proxy_407_stops_with_77_without_spending_a_token_refresh() {
    // The proxy wants the proxy URL's credentials: a new token for the server cannot help.
    let mut m = machine(MachineConfig::default());
    m.set_credentials(refreshable());
    m.handle(Event::Start);
    let fx = m.handle(Event::DialFailed(Failure::Proxy {
        proxy: "http://proxy.example:3128".into(),
        failure: crate::classify::ProxyFailure::Status {
            status: 407,
            credentials_sent: false,
        },
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
    assert!(fx.iter().any(
        |e| matches!(e, Effect::StartTimer(TimerKind::Backoff, d) if *d >= Duration::from_secs(2))
    ));
}

#[test]
fn liveness_timeout_closes_and_backs_off() {
    let mut m = connected(MachineConfig::default());
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
    let mut m = connected(MachineConfig::default());
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
    let mut m = connected(MachineConfig::default());
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
    let mut m = connected(MachineConfig::default());
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
        let mut m = connected(MachineConfig::default());
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
    let mut m = connected(no_linger());
    m.handle(Event::LocalEof);
    let fx = m.handle(Event::Closed(close(1012, "restart")));
    assert_eq!(exit_of(&fx), Some(&Outcome::Done));

    let mut m = connected(no_linger());
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
    let mut m = connected(no_linger());
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
    let mut m = connected(no_linger());
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
    let mut m = connected(MachineConfig::default());
    m.handle(Event::LocalEof);
    m.handle(Event::Timer(TimerKind::Linger));
    let fx = m.handle(Event::Timer(TimerKind::CloseGrace));
    assert_eq!(exit_of(&fx), Some(&Outcome::Done));
}

#[test]
fn output_failure_closes_1001_and_exits_74() {
    let lost = Outcome::OutputLost(OutputLoss::WriteFailed("disk full".into()));
    let mut m = connected(MachineConfig::default());
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
    let mut m = connected(MachineConfig {
        linger: Duration::ZERO,
        ..MachineConfig::default()
    });
    m.handle(Event::LocalEof);
    let fx = m.handle(Event::OutputFailed("disk full".into()));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Close(..))), "{fx:?}");
    assert_eq!(exit_of(&fx), Some(&lost));
}

#[test]
fn a_normal_close_by_the_server_is_said_but_not_the_answer_to_ours() {
    let mut m = connected(MachineConfig::default());
    let fx = m.handle(Event::Closed(close(1000, "bye")));
    assert!(fx.contains(&Effect::Notify(Notice::ServerClosed {
        code: 1000,
        reason: "bye".into()
    })));
    let mut m = connected(MachineConfig::default());
    m.handle(Event::LocalEof);
    let fx = m.handle(Event::Closed(close(1000, "")));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Notify(_))), "{fx:?}");
}

#[test]
fn tunnel_mode_does_not_redial_after_connected() {
    let mut m = connected(MachineConfig {
        redial_after_connected: false,
        ..MachineConfig::default()
    });
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
    let mut m = connected(MachineConfig::default());
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
    let mut m = connected(MachineConfig::default());
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
    let mut m = connected(MachineConfig::default());
    m.handle(Event::Closed(close(1012, "")));
    m.handle(Event::Timer(TimerKind::Backoff));
    let fx = m.handle(Event::DialFailed(not_found));
    assert_eq!(exit_of(&fx), None, "{fx:?}");
    assert_eq!(state_name(m.state()), "Backoff");
}
