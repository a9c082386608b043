//! The human words: notices while running and the final reason for stopping.
//!
//! Every line says what happened, how wsup classified it and what happens next; the
//! final line says what the user can do. Server-supplied text is escaped (see
//! [`crate::classify::escape_untrusted`]) by `Failure`'s `Display`.

use crate::classify::{Class, Failure};
use crate::machine::{Notice, Outcome, RefreshReason, Sig};
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
            "{failure} [{}]: giving up after {retries} {}; the server may be down or unreachable: try again later, or raise --max-retries",
            Class::Transient.describe(),
            if *retries == 1 { "retry" } else { "retries" },
        ),
        Outcome::Stopped { class, failure } => format!(
            "{failure} [{}]: giving up; {}",
            class.describe(),
            advice(*class, failure, creds)
        ),
    })
}

fn advice(class: Class, failure: &Failure, creds: &CredentialKind) -> String {
    match (class, failure) {
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
        (Class::Permanent, Failure::Tls(_)) => {
            "the server's certificate is not trusted: pass --ca-cert FILE for a private CA, or fix the server's certificate".into()
        }
        (Class::Permanent, Failure::Close { code, .. }) if (4000..=4999).contains(code) => {
            format!("application close code; pass --retry-close-codes {code} if it is worth retrying")
        }
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

    #[test]
    fn done_prints_nothing() {
        assert_eq!(outcome_line(&Outcome::Done, &CredentialKind::None), None);
    }
}
