//! Failure → class: the policy half of "should we retry?".
//!
//! Pure functions over plain data. The table here is DESIGN.md's classification
//! table; every row has a unit test below. The machine decides what to *do* with a
//! class; this module only names it.

use std::fmt;
use std::time::{Duration, SystemTime};

/// Something that ended (or prevented) a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server sent a close frame.
    Close { code: u16, reason: String },
    /// The server broke the websocket protocol or its limits, as detected here (the
    /// server sent no close frame): `code` is the close code that names the violation
    /// (1002 protocol error, 1007 invalid UTF-8, 1009 too big) and decides the class, as
    /// if the server had closed with it; `detail` is wsup's description.
    Violation { code: u16, detail: String },
    /// The HTTP upgrade was answered with a non-101 status.
    Http {
        status: u16,
        /// `Retry-After`, already converted to a delay by the transport (which has a clock).
        retry_after: Option<Duration>,
    },
    /// TLS failed: certificate not trusted, expired, wrong name. Retrying cannot help.
    Tls(String),
    /// The network failed below the websocket: refused, reset, EOF, DNS, timeout.
    Network { kind: NetworkKind, detail: String },
    /// Nothing at all was received for `ping_interval + pong_timeout`.
    Liveness,
    /// The token endpoint refused or failed a refresh.
    Refresh {
        /// `None` for a network failure (no HTTP answer at all).
        status: Option<u16>,
        detail: String,
        /// The endpoint's `Retry-After` (429, 503), already converted to a delay.
        retry_after: Option<Duration>,
    },
    /// A local failure that is not the network's or the server's fault.
    Internal(String),
    /// A file wsup must replace (the credentials file) cannot be: its directory is not
    /// writable, or the file cannot be locked. Found before a refresh token is spent.
    CannotCreate(String),
}

/// Which part of the network failed; all of them are transient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkKind {
    Refused,
    Reset,
    Eof,
    Dns,
    ConnectTimeout,
    Other,
}

/// What kind of failure it is, which decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// A normal end of the session.
    Done,
    /// May heal by itself: back off and redial.
    Transient,
    /// The credentials were rejected: refresh once if possible, otherwise stop.
    Auth,
    /// Authenticated but not allowed: stop.
    Permission,
    /// The server refused what we sent: stop.
    RejectedData,
    /// Retrying cannot help: stop.
    Permanent,
    /// A bug or local fault.
    Internal,
    /// A file that must be written cannot be created (EX_CANTCREAT): stop.
    CannotCreate,
}

impl Class {
    /// The process exit code for a session that stopped with this class.
    pub fn exit_code(self) -> u8 {
        match self {
            Class::Done => 0,
            Class::Transient => 75,
            Class::Auth | Class::Permission => 77,
            Class::RejectedData => 65,
            Class::Permanent => 69,
            Class::Internal => 1,
            Class::CannotCreate => 73,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Class::Done => "done",
            Class::Transient => "transient",
            Class::Auth => "authentication",
            Class::Permission => "permission",
            Class::RejectedData => "rejected data",
            Class::Permanent => "permanent",
            Class::Internal => "internal",
            Class::CannotCreate => "cannot create",
        }
    }
}

/// The classification rules that the user can tune.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassifyRules {
    /// Application close codes (4000–4999) to treat as transient (`--retry-close-codes`).
    pub retry_close_codes: Vec<u16>,
}

impl ClassifyRules {
    pub fn classify(&self, failure: &Failure) -> Class {
        match failure {
            Failure::Close { code, reason } => self.classify_close(*code, reason),
            // No server reason: a violation is never read as a permission denial.
            Failure::Violation { code, .. } => self.classify_close(*code, ""),
            Failure::Http { status, .. } => classify_http(*status),
            Failure::Tls(_) => Class::Permanent,
            Failure::Network { .. } | Failure::Liveness => Class::Transient,
            Failure::Refresh { status, .. } => classify_token_endpoint(*status),
            Failure::Internal(_) => Class::Internal,
            Failure::CannotCreate(_) => Class::CannotCreate,
        }
    }

    pub fn classify_close(&self, code: u16, reason: &str) -> Class {
        match code {
            1000 => Class::Done,
            1001 | 1005 | 1006 | 1011 | 1012 | 1013 | 1014 => Class::Transient,
            1008 | 3000 | 3003 => Class::Auth,
            1007 if reason_denies_permission(reason) => Class::Permission,
            1003 | 1007 | 1009 => Class::RejectedData,
            1002 | 1010 | 1015 => Class::Permanent,
            4000..=4999 if self.retry_close_codes.contains(&code) => Class::Transient,
            4000..=4999 => Class::Permanent,
            _ => Class::Transient,
        }
    }
}

/// A 1007 close is "invalid payload data" by the RFC, but gateways reuse it for
/// authorization failures ("Invalid permission: Not authorized to …"): tell them apart by
/// the reason so the user hears "permission", not "bad data".
fn reason_denies_permission(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    [
        "permission",
        "not authorized",
        "unauthorized",
        "forbidden",
        "access denied",
    ]
    .iter()
    .any(|needle| reason.contains(needle))
}

pub fn classify_http(status: u16) -> Class {
    match status {
        401 | 403 => Class::Auth,
        408 | 429 | 500..=599 => Class::Transient,
        300..=499 => Class::Permanent,
        // 1xx other than 101, 2xx: the server did not upgrade and never will.
        _ => Class::Permanent,
    }
}

/// The token endpoint: 400/401 means the refresh token is dead (`invalid_grant`); other
/// 4xx are our request's fault and will not heal; 429, 5xx and no answer may heal.
pub fn classify_token_endpoint(status: Option<u16>) -> Class {
    match status {
        None => Class::Transient,
        Some(400 | 401 | 403) => Class::Auth,
        Some(408 | 429 | 500..=599) => Class::Transient,
        Some(_) => Class::Permanent,
    }
}

/// `Retry-After` is seconds or an HTTP-date (RFC 9110 §10.2.3). `now` comes in from the
/// caller so this stays pure. A date in the past means "now"; garbage means "no hint".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Escapes control characters (and the escape character itself) so that a hostile close
/// reason cannot move the cursor, change colours or retitle the user's terminal.
pub fn escape_untrusted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if ch.is_control() || ch == '\u{7f}' {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}

/// The standard name of a close code, for messages.
pub fn close_code_name(code: u16) -> &'static str {
    match code {
        1000 => "normal closure",
        1001 => "going away",
        1002 => "protocol error",
        1003 => "unsupported data",
        1005 => "no status",
        1006 => "abnormal closure",
        1007 => "invalid payload",
        1008 => "policy violation",
        1009 => "message too big",
        1010 => "missing extension",
        1011 => "internal server error",
        1012 => "service restart",
        1013 => "try again later",
        1014 => "bad gateway",
        1015 => "TLS handshake failure",
        3000 => "unauthorized",
        3003 => "forbidden",
        _ => "application code",
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Close { code, reason } if reason.is_empty() => {
                write!(f, "server closed {code} ({})", close_code_name(*code))
            }
            Failure::Close { code, reason } => {
                write!(f, "server closed {code} ({})", escape_untrusted(reason))
            }
            Failure::Violation { code, detail } => write!(
                f,
                "server broke the protocol: {} ({code}, {})",
                escape_untrusted(detail),
                close_code_name(*code)
            ),
            Failure::Http { status, .. } => write!(
                f,
                "server answered HTTP {status} {} to the websocket upgrade",
                http::StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("")
            ),
            Failure::Tls(detail) => write!(f, "TLS failed: {}", escape_untrusted(detail)),
            Failure::Network { kind, detail } => {
                let what = match kind {
                    NetworkKind::Refused => "connection refused",
                    NetworkKind::Reset => "connection reset",
                    NetworkKind::Eof => "connection closed without a close frame",
                    NetworkKind::Dns => "name resolution failed",
                    NetworkKind::ConnectTimeout => "connect timed out",
                    NetworkKind::Other => "network error",
                };
                if detail.is_empty() {
                    f.write_str(what)
                } else {
                    write!(f, "{what}: {}", escape_untrusted(detail))
                }
            }
            Failure::Liveness => f.write_str(
                "no data received before the liveness deadline (connection looks half-open)",
            ),
            Failure::Refresh {
                status: Some(status),
                detail,
                ..
            } => {
                write!(f, "token endpoint answered HTTP {status}")?;
                if !detail.is_empty() {
                    write!(f, " ({})", escape_untrusted(detail))?;
                }
                Ok(())
            }
            Failure::Refresh {
                status: None,
                detail,
                ..
            } => {
                write!(
                    f,
                    "token endpoint unreachable: {}",
                    escape_untrusted(detail)
                )
            }
            Failure::Internal(detail) => write!(f, "internal error: {}", escape_untrusted(detail)),
            Failure::CannotCreate(detail) => f.write_str(&escape_untrusted(detail)),
        }
    }
}

impl Failure {
    /// The failure a received close frame stands for; a close without a status is 1005.
    pub fn from_close_frame(
        frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>,
    ) -> Failure {
        Failure::from_received_close(frame, None)
    }

    /// Like [`Failure::from_close_frame`], knowing the close frame as it was on the wire
    /// (when the stream was observed, see [`crate::transport::CloseObserver`]).
    ///
    /// tungstenite turns a close code it does not allow (1014, 1004, 1016–2999, 1–999,
    /// 5000 and up, and 1005, 1006, 1015, which must never be sent) into `1002 "Protocol
    /// violation"`. That is not what the server said: when `frame` is that rewrite and the
    /// wire had such a code, the server's own code and reason are classified instead
    /// (1014 and unknown codes transient, 1005 and 1006 transient, 1015 permanent, as the
    /// table says). A genuine 1002 from the server stays 1002 with its own reason.
    pub fn from_received_close(
        frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>,
        wire: Option<&crate::transport::WireClose>,
    ) -> Failure {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        if let (Some(frame), Some(wire)) = (frame, wire) {
            let rewritten =
                frame.code == CloseCode::Protocol && frame.reason.as_str() == "Protocol violation";
            if rewritten && !CloseCode::from(wire.code).is_allowed() {
                return Failure::Close {
                    code: wire.code,
                    reason: wire.reason.clone(),
                };
            }
        }
        match frame {
            Some(frame) => Failure::Close {
                code: frame.code.into(),
                reason: frame.reason.to_string(),
            },
            None => Failure::Close {
                code: 1005,
                reason: String::new(),
            },
        }
    }

    /// The server's own words, if it sent any: used by notices to name what is missing.
    pub fn server_reason(&self) -> Option<&str> {
        match self {
            Failure::Close { reason, .. } if !reason.is_empty() => Some(reason),
            _ => None,
        }
    }

    /// A floor for the next backoff delay the server asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Http { retry_after, .. } | Failure::Refresh { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// A short label for logs (`reason` field of a transition).
    pub fn label(&self) -> String {
        match self {
            Failure::Close { code, .. } => format!("close {code}"),
            Failure::Violation { code, .. } => format!("violation {code}"),
            Failure::Http { status, .. } => format!("http {status}"),
            Failure::Tls(_) => "tls".into(),
            Failure::Network { kind, .. } => format!("{kind:?}").to_ascii_lowercase(),
            Failure::Liveness => "liveness timeout".into(),
            Failure::Refresh {
                status: Some(s), ..
            } => format!("token endpoint {s}"),
            Failure::Refresh { status: None, .. } => "token endpoint unreachable".into(),
            Failure::Internal(_) => "internal".into(),
            Failure::CannotCreate(_) => "cannot create".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(code: u16, reason: &str) -> Class {
        ClassifyRules::default().classify(&Failure::Close {
            code,
            reason: reason.into(),
        })
    }

    fn http(status: u16) -> Class {
        ClassifyRules::default().classify(&Failure::Http {
            status,
            retry_after: None,
        })
    }

    #[test]
    fn close_1000_is_done() {
        assert_eq!(close(1000, ""), Class::Done);
        assert_eq!(Class::Done.exit_code(), 0);
    }

    #[test]
    fn transient_close_codes_and_unknown_codes_are_transient() {
        for code in [
            1001, 1005, 1006, 1012, 1013, 1014, 1004, 2000, 2999, 3500, 5000,
        ] {
            assert_eq!(close(code, ""), Class::Transient, "code {code}");
        }
        assert_eq!(Class::Transient.exit_code(), 75);
    }

    #[test]
    fn close_1011_is_transient_and_keeps_the_reason() {
        let failure = Failure::Close {
            code: 1011,
            reason: "No shell-agent listening for this cluster".into(),
        };
        assert_eq!(
            ClassifyRules::default().classify(&failure),
            Class::Transient
        );
        assert_eq!(
            failure.to_string(),
            "server closed 1011 (No shell-agent listening for this cluster)"
        );
        assert_eq!(
            failure.server_reason(),
            Some("No shell-agent listening for this cluster")
        );
    }

    #[test]
    fn auth_close_codes_and_http_401_403_are_auth() {
        for code in [1008, 3000, 3003] {
            assert_eq!(close(code, "token expired"), Class::Auth, "code {code}");
        }
        assert_eq!(http(401), Class::Auth);
        assert_eq!(http(403), Class::Auth);
        assert_eq!(Class::Auth.exit_code(), 77);
    }

    #[test]
    fn close_1007_with_permission_reason_is_permission() {
        assert_eq!(
            close(
                1007,
                "Invalid permission: Not authorized to websocket-gateway SHELL_EXEC"
            ),
            Class::Permission
        );
        assert_eq!(close(1007, "user is UNAUTHORIZED"), Class::Permission);
        assert_eq!(Class::Permission.exit_code(), 77);
    }

    #[test]
    fn other_1007_and_1003_1009_are_rejected_data() {
        assert_eq!(close(1007, "invalid utf-8"), Class::RejectedData);
        assert_eq!(close(1007, ""), Class::RejectedData);
        assert_eq!(close(1003, ""), Class::RejectedData);
        assert_eq!(close(1009, "too big"), Class::RejectedData);
        assert_eq!(Class::RejectedData.exit_code(), 65);
    }

    #[test]
    fn protocol_close_codes_are_permanent() {
        for code in [1002, 1010, 1015] {
            assert_eq!(close(code, ""), Class::Permanent, "code {code}");
        }
        assert_eq!(Class::Permanent.exit_code(), 69);
    }

    #[test]
    fn application_codes_are_permanent_unless_chosen() {
        assert_eq!(close(4000, ""), Class::Permanent);
        assert_eq!(close(4999, ""), Class::Permanent);
        let rules = ClassifyRules {
            retry_close_codes: vec![4001, 4500],
        };
        let class = |code| rules.classify_close(code, "");
        assert_eq!(class(4001), Class::Transient);
        assert_eq!(class(4500), Class::Transient);
        assert_eq!(class(4002), Class::Permanent);
        // Only application codes can be made transient: 1008 stays auth.
        let rules = ClassifyRules {
            retry_close_codes: vec![1008],
        };
        assert_eq!(rules.classify_close(1008, ""), Class::Auth);
    }

    #[test]
    fn http_statuses() {
        for status in [400, 404, 405, 410, 426, 418, 451, 301, 302, 307, 200] {
            assert_eq!(http(status), Class::Permanent, "status {status}");
        }
        for status in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(http(status), Class::Transient, "status {status}");
        }
    }

    #[test]
    fn tls_errors_are_permanent() {
        let f = Failure::Tls("invalid peer certificate: UnknownIssuer".into());
        assert_eq!(ClassifyRules::default().classify(&f), Class::Permanent);
    }

    #[test]
    fn network_failures_and_liveness_are_transient() {
        for kind in [
            NetworkKind::Refused,
            NetworkKind::Reset,
            NetworkKind::Eof,
            NetworkKind::Dns,
            NetworkKind::ConnectTimeout,
            NetworkKind::Other,
        ] {
            let f = Failure::Network {
                kind,
                detail: String::new(),
            };
            assert_eq!(ClassifyRules::default().classify(&f), Class::Transient);
        }
        assert_eq!(
            ClassifyRules::default().classify(&Failure::Liveness),
            Class::Transient
        );
    }

    #[test]
    fn token_endpoint_statuses() {
        assert_eq!(classify_token_endpoint(Some(400)), Class::Auth);
        assert_eq!(classify_token_endpoint(Some(401)), Class::Auth);
        assert_eq!(classify_token_endpoint(Some(500)), Class::Transient);
        assert_eq!(classify_token_endpoint(Some(503)), Class::Transient);
        assert_eq!(classify_token_endpoint(Some(429)), Class::Transient);
        assert_eq!(classify_token_endpoint(None), Class::Transient);
        assert_eq!(classify_token_endpoint(Some(404)), Class::Permanent);
    }

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn retry_after_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    }

    #[test]
    fn the_wire_close_replaces_tungstenites_rewrite_only() {
        use crate::transport::WireClose;
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let frame = |code: u16, reason: &str| CloseFrame {
            code: code.into(),
            reason: reason.to_owned().into(),
        };
        let wire = |code: u16, reason: &str| WireClose {
            code,
            reason: reason.into(),
        };
        let close = |code: u16, reason: &str| Failure::Close {
            code,
            reason: reason.into(),
        };
        let rewrite = frame(1002, "Protocol violation");
        // Codes tungstenite rewrites: the server's own code and reason.
        for (code, class) in [
            (1014, Class::Transient),
            (1004, Class::Transient),
            (2999, Class::Transient),
            (999, Class::Transient),
            (5000, Class::Transient),
            (1005, Class::Transient),
            (1006, Class::Transient),
            (1015, Class::Permanent),
        ] {
            let failure = Failure::from_received_close(Some(&rewrite), Some(&wire(code, "why")));
            assert_eq!(failure, close(code, "why"), "code {code}");
            assert_eq!(
                ClassifyRules::default().classify(&failure),
                class,
                "code {code}"
            );
        }
        // A genuine 1002, even with tungstenite's words, stays as it is.
        let genuine =
            Failure::from_received_close(Some(&rewrite), Some(&wire(1002, "Protocol violation")));
        assert_eq!(genuine, close(1002, "Protocol violation"));
        // A frame tungstenite did not rewrite is taken as it is.
        let own = frame(1011, "agent gone");
        assert_eq!(
            Failure::from_received_close(Some(&own), Some(&wire(1011, "agent gone"))),
            close(1011, "agent gone")
        );
        // Nothing recorded (another stream type): tungstenite's frame.
        assert_eq!(
            Failure::from_received_close(Some(&rewrite), None),
            close(1002, "Protocol violation")
        );
        assert_eq!(Failure::from_received_close(None, None), close(1005, ""));
    }

    #[test]
    fn hostile_reasons_are_escaped() {
        let f = Failure::Close {
            code: 1011,
            reason: "agent\u{1b}]0;pwned\u{7}\r\nfake prompt$ ".into(),
        };
        let shown = f.to_string();
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert!(shown.contains("\\u{1b}]0;pwned"), "{shown}");
    }

    #[test]
    fn a_credentials_file_that_cannot_be_replaced_is_cannot_create_73() {
        let f = Failure::CannotCreate("cannot create a file in /etc/wsup".into());
        let class = ClassifyRules::default().classify(&f);
        assert_eq!(class, Class::CannotCreate);
        assert_eq!(class.exit_code(), 73);
        assert_eq!(f.to_string(), "cannot create a file in /etc/wsup");
    }
}
