//! The human words: notices while running and the final reason for stopping.
//!
//! Every line says what happened, how wsup classified it and what happens next; the
//! final line says what the user can do. Server-supplied text is escaped (see
//! [`crate::classify::escape_untrusted`]) by `Failure`'s `Display`.

use crate::classify::escape_untrusted;
use crate::classify::{Class, Failure, ProxyFailure};
use crate::machine::{Notice, Outcome, OutputLoss, RefreshReason, Sig};
use std::time::Duration;

/// What kind of credentials the user gave, for advice on an auth failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    None,
    /// `--token-env VAR`
    StaticEnv(String),
    /// `--credentials FILE`
    File(String),
    /// A library user's own refreshable source.
    Refreshable,
    /// Only an `Authorization` (or other credential) header from `--header`.
    Header,
}

/// One line for a notice, or `None` for notices not shown at this verbosity.
pub fn notice_line(notice: &Notice) -> String {
    match notice {
        Notice::Retrying {
            failure,
            delay,
            attempt,
            max_retries,
        } => {
            let of = match max_retries {
                Some(max) => format!(" of {max}"),
                None => String::new(),
            };
            format!(
                "{failure} [{}]: retrying in {}, attempt {attempt}{of}",
                Class::Transient.describe(),
                seconds(*delay)
            )
        }
        Notice::Refreshing {
            reason: RefreshReason::Rejected,
            failure: Some(failure),
        } => format!(
            "{failure} [{}]: refreshing the token, then redialing",
            Class::Auth.describe()
        ),
        Notice::Refreshing { reason, .. } => match reason {
            RefreshReason::Proactive => "token expires soon: refreshing it before dialing".into(),
            RefreshReason::Rejected => "token rejected: refreshing it, then redialing".into(),
        },
        Notice::Reconnected => "connected".into(),
        Notice::ServerClosed { code, reason } if reason.is_empty() => {
            format!("server closed the session ({code})")
        }
        Notice::ServerClosed { code, reason } => {
            format!(
                "server closed the session ({code} {})",
                crate::classify::escape_untrusted(reason)
            )
        }
    }
}

/// The final line, or `None` when the session simply finished.
pub fn outcome_line(outcome: &Outcome, creds: &CredentialKind) -> Option<String> {
    Some(match outcome {
        Outcome::Done => return None,
        Outcome::Signal(Sig::Interrupt) => "interrupted (SIGINT)".into(),
        Outcome::Signal(Sig::Terminate) => "terminated (SIGTERM)".into(),
        Outcome::Interrupted => "interrupted (Ctrl+C while not connected)".into(),
        Outcome::RetriesExhausted { failure, retries } => format!(
            "{failure} [{}]: giving up after {retries} {}; the {} may be down or unreachable: try again later, or raise --max-retries",
            Class::Transient.describe(),
            if *retries == 1 { "retry" } else { "retries" },
            if matches!(failure, Failure::Proxy { .. }) { "proxy" } else { "server" },
        ),
        Outcome::Stopped {
            class: Class::Auth,
            failure,
        } if is_policy_not_credentials(failure, creds) => format!(
            "{failure} [policy violation]: giving up; the server refused the session for the reason it gave"
        ),
        Outcome::Stopped { class, failure } => format!(
            "{failure} [{}]: giving up; {}",
            class.describe(),
            advice(*class, failure, creds)
        ),
        Outcome::OutputLost(OutputLoss::WriteFailed(error)) => format!(
            "cannot write the output: {}; what the server sent is incomplete",
            escape_untrusted(error)
        ),
        Outcome::OutputLost(OutputLoss::DrainTimeout { unwritten, timeout }) => format!(
            "{unwritten} {} received from the server not written: the output was not read within --drain-timeout {}",
            if *unwritten == 1 { "byte" } else { "bytes" },
            humantime::format_duration(*timeout)
        ),
    })
}

/// A 1008 "policy violation" is the table's auth class (gateways close 1008 on an expired
/// token), but servers also use it for rate limits and quotas ("message too frequent",
/// "subscription limit"). Credentials advice is only given when the reason is empty or
/// talks about credentials, or when credentials were sent.
fn is_policy_not_credentials(failure: &Failure, creds: &CredentialKind) -> bool {
    let Failure::Close { code: 1008, reason } = failure else {
        return false;
    };
    if *creds != CredentialKind::None || reason.trim().is_empty() {
        return false;
    }
    let reason = reason.to_ascii_lowercase();
    !["token", "auth", "login", "log in", "expir", "credential"]
        .iter()
        .any(|word| reason.contains(word))
}
/// A notice as the fields of one JSON log line (`--log-format json`): `kind` "notice",
/// the human `message`, and, where there is one, the `class`, the server's close `code`
/// and its `reason` (escaped as in text).
pub fn notice_fields(notice: &Notice) -> serde_json::Map<String, serde_json::Value> {
    let mut fields = base_fields(notice_line(notice));
    let (class, failure) = match notice {
        Notice::Retrying { failure, .. } => (Some(Class::Transient), Some(failure)),
        Notice::Refreshing { failure, .. } => (Some(Class::Auth), failure.as_ref()),
        Notice::Reconnected => (None, None),
        Notice::ServerClosed { code, reason } => {
            fields.insert("class".into(), Class::Done.describe().into());
            fields.insert("code".into(), (*code).into());
            fields.insert("reason".into(), escape_untrusted(reason).into());
            return fields;
        }
    };
    if let Some(class) = class {
        fields.insert("class".into(), class.describe().into());
    }
    if let Some(failure) = failure {
        add_failure(&mut fields, failure);
    }
    fields
}

/// The final line as JSON fields (see [`notice_fields`]), with the `exit_code`; `None`
/// when the session simply finished, as for [`outcome_line`].
pub fn outcome_fields(
    outcome: &Outcome,
    creds: &CredentialKind,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut fields = base_fields(outcome_line(outcome, creds)?);
    let class = match outcome {
        Outcome::Done => Some(Class::Done),
        Outcome::Stopped { class, failure } => {
            add_failure(&mut fields, failure);
            Some(*class)
        }
        Outcome::RetriesExhausted { failure, .. } => {
            add_failure(&mut fields, failure);
            Some(Class::Transient)
        }
        Outcome::Signal(_) | Outcome::Interrupted | Outcome::OutputLost(_) => None,
    };
    match class {
        Some(class) => fields.insert("class".into(), class.describe().into()),
        None if matches!(outcome, Outcome::OutputLost(_)) => {
            fields.insert("class".into(), "output lost".into())
        }
        None => fields.insert("class".into(), "interrupted".into()),
    };
    fields.insert("final".into(), true.into());
    fields.insert("exit_code".into(), outcome.exit_code().into());
    Some(fields)
}

fn base_fields(message: String) -> serde_json::Map<String, serde_json::Value> {
    let mut fields = serde_json::Map::new();
    fields.insert("kind".into(), "notice".into());
    fields.insert("message".into(), message.into());
    fields
}

fn add_failure(fields: &mut serde_json::Map<String, serde_json::Value>, failure: &Failure) {
    if let Failure::Close { code, .. } = failure {
        fields.insert("code".into(), (*code).into());
    }
    if let Some(reason) = failure.server_reason() {
        fields.insert("reason".into(), escape_untrusted(reason).into());
    }
}

fn advice(class: Class, failure: &Failure, creds: &CredentialKind) -> String {
    match (class, failure) {
        (Class::Auth, Failure::TokenCommand { .. }) => {
            "the token command gave no token: fix what it reports (a login, typically), then run wsup again".into()
        }
        (
            Class::Auth,
            Failure::Proxy {
                proxy,
                failure: ProxyFailure::Status {
                    credentials_sent, ..
                },
                ..
            },
        ) => {
            let proxy = escape_untrusted(proxy);
            if *credentials_sent {
                format!("the proxy {proxy} rejected the credentials in the proxy URL: check the user and password in http://USER:PASSWORD@HOST:PORT (--proxy, or HTTPS_PROXY / HTTP_PROXY / ALL_PROXY)")
            } else {
                format!("the proxy {proxy} wants credentials and none were sent: put them in the proxy URL, http://USER:PASSWORD@HOST:PORT (--proxy, or HTTPS_PROXY / HTTP_PROXY / ALL_PROXY)")
            }
        }
        (Class::Auth, Failure::Refresh { .. }) => match creds {
            CredentialKind::File(path) => format!(
                "the refresh token in {path} is no longer accepted: log in again to get new credentials"
            ),
            _ => "the refresh token is no longer accepted: log in again".into(),
        },
        (Class::Auth, _) => match creds {
            CredentialKind::None => {
                "the server wants credentials: pass --token-env VAR or --credentials FILE".into()
            }
            CredentialKind::StaticEnv(var) => format!(
                "the server rejected the token from ${var}: check it, or use --credentials FILE so wsup can refresh it"
            ),
            CredentialKind::File(path) => format!(
                "the server rejected the token even after a refresh: log in again to renew {path}"
            ),
            CredentialKind::Refreshable => {
                "the server rejected the token even after a refresh: log in again".into()
            }
            CredentialKind::Header => {
                "the server rejected the credentials in --header: check them, or use --credentials FILE so wsup can refresh them".into()
            }
        },
        (Class::Permission, failure) => match failure.server_reason().and_then(missing_right) {
            Some(right) => format!(
                "you are signed in but lack the right {right}: ask an administrator to grant it"
            ),
            None => "you are signed in but not allowed to do this: ask an administrator for the missing role".into(),
        },
        (Class::RejectedData | Class::Permanent, Failure::Violation { .. }) => {
            "the server sent what a websocket client must refuse; retrying will not help: check that the URL is the right endpoint, or report it to the server's owners".into()
        }
        (Class::RejectedData, Failure::InputRejected(_)) => {
            "it was not sent, nor anything after it (what came before was): split the input, or raise the limit".into()
        }
        (Class::RejectedData, _) => {
            "the server refused what was sent: check the data (text must be what the server expects)".into()
        }
        (Class::Permanent, Failure::Http { status, .. }) => match status {
            404 | 410 => "check the URL's path".into(),
            400 | 405 | 426 => "is this URL a websocket endpoint? check the URL".into(),
            300..=399 => "the server redirects: use the final URL".into(),
            _ => "retrying will not help: check the URL and the server".into(),
        },
        (Class::Permanent, Failure::Refresh { .. }) => match creds {
            CredentialKind::File(path) => format!(
                "retrying will not help: check token_url in {path}, or report the token endpoint's answer to its owners"
            ),
            _ => "retrying will not help: report the token endpoint's answer to its owners".into(),
        },
        (Class::Permanent, Failure::Subprotocol { .. }) => {
            "the server does not speak what was offered; retrying will not help: check --subprotocol against what the server expects".into()
        }
        (Class::Permanent, Failure::Tls(_)) => {
            "the server's certificate is not trusted: pass --ca-cert FILE for a private CA, or fix the server's certificate".into()
        }
        (Class::Permanent, Failure::Close { code, .. })
            if *code != 1005 && !crate::classify::close_code_valid_on_wire(*code) =>
        {
            "a close code that may not be sent is a protocol violation; retrying will not help: report it to the server's owners".into()
        }
        (Class::Permanent, Failure::Close { code, .. }) if (4000..=4999).contains(code) => {
            format!("application close code; pass --retry-close-codes {code} if it is worth retrying")
        }
        (Class::Permanent, Failure::Proxy { failure, .. }) => match failure {
            ProxyFailure::Tls(_) => "the proxy's certificate is not trusted: pass --ca-cert FILE for a private CA, or check the proxy URL".into(),
            ProxyFailure::Status { .. } => "the proxy refused the tunnel; retrying will not help: ask its owners to allow CONNECT to this host and port, or bypass it (NO_PROXY, --no-proxy)".into(),
            _ => "retrying will not help: check the proxy URL (--proxy, or HTTPS_PROXY / HTTP_PROXY / ALL_PROXY)".into(),
        },
        // A permanent network failure (host not found, ws:// vs wss://) already says
        // what to change in the URL.
        (Class::Permanent, Failure::Network { .. }) => "retrying will not help".into(),
        (Class::Permanent, _) => "retrying will not help: check the URL and the server".into(),
        (Class::Transient, _) => {
            "the connection ended and this session does not redial once data has flowed".into()
        }
        (Class::Internal, _) => {
            "wsup could not continue; run with -vv for details (and report it if it looks like a bug)".into()
        }
        (Class::Done, _) => "the server ended the session".into(),
        (Class::CannotCreate, _) => {
            "the refresh token was not spent: make that directory writable (or move the credentials file to one that is), then run wsup again".into()
        }
    }
}

/// "Invalid permission: Not authorized to websocket-gateway SHELL_EXEC" →
/// "websocket-gateway SHELL_EXEC".
fn missing_right(reason: &str) -> Option<String> {
    let lower = reason.to_ascii_lowercase();
    let marker = "not authorized to ";
    let at = lower.find(marker)? + marker.len();
    let right = reason.get(at..)?.trim().trim_end_matches('.');
    (!right.is_empty()).then(|| crate::classify::escape_untrusted(right))
}

/// "1.2 s"; short delays in milliseconds, so that 30 ms does not read as "0.0 s".
fn seconds(d: Duration) -> String {
    if d < Duration::from_millis(100) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_plan_names_failure_class_delay_and_attempt() {
        let line = notice_line(&Notice::Retrying {
            failure: Failure::Close {
                code: 1011,
                reason: "No shell-agent listening for this cluster".into(),
            },
            delay: Duration::from_millis(1234),
            attempt: 3,
            max_retries: Some(5),
        });
        assert_eq!(
            line,
            "server closed 1011 (No shell-agent listening for this cluster) [transient]: retrying in 1.2 s, attempt 3 of 5"
        );
    }

    #[test]
    fn permission_stop_names_the_missing_right() {
        let line = outcome_line(
            &Outcome::Stopped {
                class: Class::Permission,
                failure: Failure::Close {
                    code: 1007,
                    reason: "Invalid permission: Not authorized to websocket-gateway SHELL_EXEC"
                        .into(),
                },
            },
            &CredentialKind::None,
        )
        .unwrap();
        assert!(
            line.contains("lack the right websocket-gateway SHELL_EXEC"),
            "{line}"
        );
    }

    #[test]
    fn static_token_rejection_names_the_variable() {
        let line = outcome_line(
            &Outcome::Stopped {
                class: Class::Auth,
                failure: Failure::Http {
                    status: 401,
                    retry_after: None,
                },
            },
            &CredentialKind::StaticEnv("API_TOKEN".into()),
        )
        .unwrap();
        assert!(line.contains("$API_TOKEN"), "{line}");
    }

    #[test]
    fn short_delays_are_shown_in_milliseconds() {
        assert_eq!(seconds(Duration::from_millis(37)), "37 ms");
        assert_eq!(seconds(Duration::from_millis(100)), "0.1 s");
        assert_eq!(seconds(Duration::from_secs(300)), "300.0 s");
    }

    fn stopped_by_1008(reason: &str, creds: &CredentialKind) -> String {
        outcome_line(
            &Outcome::Stopped {
                class: Class::Auth,
                failure: Failure::Close {
                    code: 1008,
                    reason: reason.into(),
                },
            },
            creds,
        )
        .unwrap()
    }

    #[test]
    fn a_1008_about_something_else_quotes_the_reason_without_credentials_advice() {
        for reason in ["message too frequent", "subscription limit"] {
            let line = stopped_by_1008(reason, &CredentialKind::None);
            assert!(
                line.starts_with(&format!("server closed 1008 ({reason})")),
                "{line}"
            );
            assert!(!line.contains("--token-env"), "{line}");
            assert!(!line.contains("authentication"), "{line}");
        }
    }

    #[test]
    fn a_1008_about_credentials_or_with_credentials_sent_gets_the_advice() {
        for reason in ["", "token expired", "Auth failed", "please LOGIN", "expiry"] {
            let line = stopped_by_1008(reason, &CredentialKind::None);
            assert!(line.contains("--token-env"), "{reason:?}: {line}");
        }
        let line = stopped_by_1008(
            "message too frequent",
            &CredentialKind::StaticEnv("API_TOKEN".into()),
        );
        assert!(line.starts_with("server closed 1008 (message too frequent)"));
        assert!(line.contains("$API_TOKEN"), "{line}");
    }

    #[test]
    fn a_normal_close_is_said_with_its_reason_escaped() {
        let notice = Notice::ServerClosed {
            code: 1000,
            reason: "bye\u{1b}[2J".into(),
        };
        assert_eq!(
            notice_line(&notice),
            "server closed the session (1000 bye\\u{1b}[2J)"
        );
        let fields = notice_fields(&notice);
        assert_eq!(fields["kind"], "notice");
        assert_eq!(fields["class"], "done");
        assert_eq!(fields["code"], 1000);
        assert_eq!(fields["reason"], "bye\\u{1b}[2J");
        let silent = Notice::ServerClosed {
            code: 1000,
            reason: String::new(),
        };
        assert_eq!(notice_line(&silent), "server closed the session (1000)");
    }

    #[test]
    fn the_final_json_line_carries_the_exit_code() {
        let fields = outcome_fields(
            &Outcome::OutputLost(OutputLoss::DrainTimeout {
                unwritten: 1,
                timeout: Duration::from_millis(200),
            }),
            &CredentialKind::None,
        )
        .unwrap();
        assert_eq!(fields["exit_code"], 74);
        assert_eq!(fields["final"], true);
        assert_eq!(
            fields["message"],
            "1 byte received from the server not written: the output was not read within --drain-timeout 200ms"
        );
        assert!(outcome_fields(&Outcome::Done, &CredentialKind::None).is_none());
    }

    #[test]
    fn done_prints_nothing() {
        assert_eq!(outcome_line(&Outcome::Done, &CredentialKind::None), None);
    }
}
