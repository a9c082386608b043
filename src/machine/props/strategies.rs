//! The random material: failures, frames, events, and the setup of one run.

use super::*;
use crate::classify::ProxyFailure;

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

pub(crate) fn close_failure() -> impl Strategy<Value = Failure> {
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
pub(crate) fn violation_failure() -> impl Strategy<Value = Failure> {
    prop::sample::select(vec![1002u16, 1007, 1009]).prop_map(|code| Failure::Violation {
        code,
        detail: "not authorized to break the protocol".into(),
    })
}

pub(crate) fn http_failure() -> impl Strategy<Value = Failure> {
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

pub(crate) fn network_failure() -> impl Strategy<Value = Failure> {
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

/// The proxy rows: unreachable, and its answers to `CONNECT` (407 and 401 auth, 403 and
/// 405 permanent, 502–504 transient with or without `Retry-After`).
pub(crate) fn proxy_failure() -> impl Strategy<Value = Failure> {
    let unreachable = prop::sample::select(vec![
        NetworkKind::Refused,
        NetworkKind::Eof,
        NetworkKind::ConnectTimeout,
    ])
    .prop_map(|kind| ProxyFailure::Unreachable {
        kind,
        detail: String::new(),
    });
    let answered = (
        prop::sample::select(vec![401u16, 403, 405, 407, 502, 503, 504]),
        any::<bool>(),
    )
        .prop_map(|(status, credentials_sent)| ProxyFailure::Status {
            status,
            credentials_sent,
        });
    let retry_after = prop::option::of((0u64..600_000).prop_map(Duration::from_millis));
    (prop_oneof![unreachable, answered], retry_after).prop_map(|(failure, retry_after)| {
        Failure::Proxy {
            proxy: "http://proxy.example:3128".into(),
            failure,
            retry_after,
        }
    })
}

/// Every row of the classification table (token endpoint rows excepted).
pub(crate) fn any_failure() -> impl Strategy<Value = Failure> {
    prop_oneof![
        1 => proxy_failure(),
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
pub(crate) fn connection_loss() -> impl Strategy<Value = Failure> {
    prop_oneof![3 => close_failure(), 1 => violation_failure(), 1 => network_failure()]
}

/// The server rejecting the token, at the handshake or with a close.
pub(crate) fn auth_failure() -> impl Strategy<Value = Failure> {
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
pub(crate) fn repertoire_failure() -> impl Strategy<Value = Failure> {
    prop_oneof![
        2 => any_failure(),
        1 => network_failure(),
        1 => auth_failure(),
    ]
}

pub(crate) fn repertoire_loss() -> impl Strategy<Value = Failure> {
    prop_oneof![
        2 => connection_loss(),
        1 => network_failure(),
        1 => auth_failure(),
    ]
}

pub(crate) fn refresh_result() -> impl Strategy<Value = Result<(), Failure>> {
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
pub(crate) fn close_frame() -> impl Strategy<Value = Failure> {
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
pub(crate) fn frame() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => Just(Event::Received(Payload::Text("hello".into()))),
        1 => Just(Event::Received(Payload::Binary(vec![1, 2, 3].into()))),
        2 => Just(Event::PingReceived),
        2 => Just(Event::PongReceived),
        1 => close_frame().prop_map(Event::Closed),
    ]
}

pub(crate) fn timer_kind() -> impl Strategy<Value = TimerKind> {
    prop::sample::select(TimerKind::ALL.to_vec())
}

pub(crate) fn signal() -> impl Strategy<Value = Sig> {
    prop_oneof![Just(Sig::Interrupt), Just(Sig::Terminate)]
}

/// Any event at all, sensible in the current state or not. Signals are rare so that
/// sequences get somewhere before one ends them.
pub(crate) fn any_event() -> impl Strategy<Value = Event> {
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
pub(crate) struct Setup {
    pub(crate) max_retries: Option<u32>,
    pub(crate) redial_after_connected: bool,
    pub(crate) retry_close_codes: Vec<u16>,
    pub(crate) stable_after: Duration,
    pub(crate) policy: BackoffPolicy,
    pub(crate) creds: CredentialState,
    /// Time passes during a run: a refreshable token may come close to expiry (or be
    /// fresh again) between any two events.
    pub(crate) expiry_drifts: bool,
    pub(crate) seed: u64,
    /// `--linger 0`: close at once at stdin EOF, or wait for the server to be quiet.
    pub(crate) linger: Duration,
}

impl Setup {
    /// A refreshable token that is not about to expire (and does not drift), a session
    /// that redials after a connection ends: the setting of issue #4 (an upgrade then a
    /// close 1008, again and again, must not refresh in a loop).
    pub(crate) fn refreshable_token_redialing(self) -> Setup {
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

    pub(crate) fn config(&self) -> MachineConfig {
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

    pub(crate) fn machine(&self) -> Machine {
        let backoff = Backoff::new(self.policy, Jitter::seeded(self.seed));
        let mut machine = Machine::new(self.config(), backoff);
        machine.set_credentials(self.creds);
        machine
    }

    /// The credential state the driver reports before an event.
    pub(crate) fn creds_at(&self, expiring_soon_now: bool) -> CredentialState {
        if self.expiry_drifts && self.creds.refreshable {
            CredentialState {
                refreshable: true,
                expiring_soon: expiring_soon_now,
            }
        } else {
            self.creds
        }
    }

    pub(crate) fn class_of(&self, failure: &Failure) -> Class {
        design_class(failure, &self.retry_close_codes)
    }
}

pub(crate) fn backoff_policy() -> impl Strategy<Value = BackoffPolicy> {
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
pub(crate) fn setups_with(
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

pub(crate) fn any_max_retries() -> BoxedStrategy<Option<u32>> {
    prop::option::of(0u32..5).boxed()
}

pub(crate) fn any_setup() -> impl Strategy<Value = Setup> {
    setups_with(any_max_retries(), any::<bool>().boxed())
}
