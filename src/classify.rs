//! Failure → class: the policy half of "should we retry?". About 420 lines before its
//! unit tests, one per table row.
//!
//! Pure functions over plain data. The table here is DESIGN.md's classification
//! table; every row has a unit test below. The machine decides what to *do* with a
//! class; this module only names it.

use std::fmt;
use std::time::Duration;

/// Something that ended (or prevented) a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
// The recording format (`--record`, src/record.rs) writes these as they are.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The server sent a close frame.
    Close { code: u16, reason: String },
    /// The server broke the websocket protocol or its limits, as detected here (the
    /// server sent no close frame): `code` is the close code that names the violation
    /// (1002 protocol error, 1007 invalid UTF-8, 1009 too big) and decides the class, as
    /// if the server had closed with it; `detail` is wsup's description. A close frame
    /// with code 1005 on the wire is also kept as a violation (1002), because a bare
    /// `Close { code: 1005 }` means "no status code".
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
    /// The local side gave the session something it cannot send (a stdin line longer
    /// than `--max-line`): retrying cannot help. `detail` says what, in the user's terms.
    InputRejected(String),
    /// A file wsup must replace (the credentials file) cannot be: its directory is not
    /// writable, or the file cannot be locked. Found before a refresh token is spent.
    CannotCreate(String),
    /// `--token-command` gave no token on a refresh. `transient`: it timed out or could
    /// not start, and may work next time; otherwise it failed (or printed no usable
    /// token), which only the user can fix, as a rejected refresh token. `detail` names
    /// the command and carries its last stderr line.
    TokenCommand { transient: bool, detail: String },
    /// The upgrade's answer broke the subprotocol negotiation (`--subprotocol`): the server
    /// chose none although some were offered, or one that was not offered. `offered` is
    /// what was sent, in order (empty when none was); `answer` says, in wsup's words, what
    /// came back (tungstenite rejects the response before its value can be read).
    Subprotocol {
        offered: Vec<String>,
        answer: String,
    },
    /// The HTTP proxy did not open the tunnel (`CONNECT`) to the server. `proxy` is the
    /// proxy's URL without its credentials: notices name the proxy, not the target.
    Proxy {
        proxy: String,
        failure: ProxyFailure,
        /// The proxy's `Retry-After` (502, 503, 504), already converted to a delay.
        retry_after: Option<Duration>,
    },
}

/// How the proxy leg of a dial failed (see [`Failure::Proxy`]).
#[derive(Debug, Clone, PartialEq, Eq)]
// The recording format (`--record`, src/record.rs) writes these as they are.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyFailure {
    /// No tunnel because the proxy could not be reached or went away: refused, reset,
    /// closed, timed out, its name not resolved. Transient, except a proxy host name that
    /// does not exist before any connection of the session succeeded (as for the server).
    Unreachable { kind: NetworkKind, detail: String },
    /// TLS to an `https://` proxy failed (its certificate is not trusted, …): permanent.
    Tls(String),
    /// The proxy answered `CONNECT` with a status other than 2xx: 407 is auth (the proxy
    /// URL's credentials, which a token refresh cannot fix; so is 401, which some proxies
    /// send instead), 5xx transient, anything else permanent. `credentials_sent`: whether a `Proxy-Authorization` was sent.
    Status { status: u16, credentials_sent: bool },
    /// The proxy's answer is not HTTP, or its head is over the size limit: permanent.
    Malformed(String),
}

/// Which part of the network failed. All of them are transient except the last three: a
/// host name that does not exist (until a connection of the session has succeeded) and a
/// URL scheme that does not match what the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// The recording format (`--record`, src/record.rs) writes these as they are.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    Refused,
    Reset,
    Eof,
    /// The resolver failed or could not be reached (EAI_AGAIN, EAI_FAIL, …): may heal.
    Dns,
    ConnectTimeout,
    Other,
    /// The resolver answered that the name does not exist (NXDOMAIN: EAI_NONAME,
    /// EAI_NODATA). `detail` is the host name. Permanent before any connection of the
    /// session has succeeded (a typo in the URL), transient after (a name that resolved
    /// once is more likely a DNS hiccup than a typo).
    HostNotFound,
    /// A `wss://` URL, and the server answered the TLS handshake with something that is not
    /// TLS (plain HTTP, typically): the URL should say `ws://`.
    PlainServer,
    /// A `ws://` URL, and the server answered the HTTP upgrade with something that is not
    /// HTTP (a TLS alert, typically): the URL should say `wss://`.
    TlsServer,
}

/// What kind of failure it is, which decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
// The recording format (`--record`, src/record.rs) writes these as they are.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
            Class::Done => crate::exit::OK,
            Class::Transient => crate::exit::TEMP_FAIL,
            Class::Auth | Class::Permission => crate::exit::NO_PERM,
            Class::RejectedData => crate::exit::DATA,
            Class::Permanent => crate::exit::UNAVAILABLE,
            Class::Internal => crate::exit::INTERNAL,
            Class::CannotCreate => crate::exit::CANT_CREATE,
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
    /// The class of `failure` in a session where no connection has succeeded yet; see
    /// [`ClassifyRules::classify_in_session`].
    pub fn classify(&self, failure: &Failure) -> Class {
        self.classify_in_session(failure, false)
    }

    /// The class of `failure`, knowing whether a connection of this session has succeeded
    /// before (`has_connected`): a host name that is not found is permanent only before.
    pub fn classify_in_session(&self, failure: &Failure, has_connected: bool) -> Class {
        match failure {
            Failure::Close { code, reason } => self.classify_close(*code, reason),
            // No server reason: a violation is never read as a permission denial.
            Failure::Violation { code, .. } => self.classify_close(*code, ""),
            Failure::Http { status, .. } => classify_http(*status),
            Failure::Tls(_) => Class::Permanent,
            Failure::Network {
                kind: NetworkKind::HostNotFound,
                ..
            } if !has_connected => Class::Permanent,
            Failure::Network {
                kind: NetworkKind::PlainServer | NetworkKind::TlsServer,
                ..
            } => Class::Permanent,
            Failure::Network { .. } | Failure::Liveness => Class::Transient,
            Failure::Refresh { status, .. } => classify_token_endpoint(*status),
            Failure::Internal(_) => Class::Internal,
            Failure::InputRejected(_) => Class::RejectedData,
            Failure::CannotCreate(_) => Class::CannotCreate,
            Failure::TokenCommand {
                transient: true, ..
            } => Class::Transient,
            Failure::TokenCommand { .. } => Class::Auth,
            Failure::Subprotocol { .. } => Class::Permanent,
            Failure::Proxy { failure, .. } => classify_proxy(failure, has_connected),
        }
    }

    pub fn classify_close(&self, code: u16, reason: &str) -> Class {
        match code {
            1000 => Class::Done,
            // 1005 here is a close frame without a status code (legal on the wire): a
            // 1005 *on the wire* never gets here, see `Failure::from_received_close`.
            1001 | 1005 | 1011 | 1012 | 1013 | 1014 => Class::Transient,
            1008 | 3000 | 3003 => Class::Auth,
            1007 if reason_denies_permission(reason) => Class::Permission,
            1003 | 1007 | 1009 => Class::RejectedData,
            1002 | 1010 | 1015 => Class::Permanent,
            4000..=4999 if self.retry_close_codes.contains(&code) => Class::Transient,
            4000..=4999 => Class::Permanent,
            // Registered and private codes this table does not list.
            3000..=3999 => Class::Transient,
            // A code RFC 6455 and the IANA registry forbid on the wire: the server broke
            // the protocol, and a server that does so will do it again.
            _ => Class::Permanent,
        }
    }
}

/// Whether RFC 6455 (§7.4) and the IANA registry allow `code` in a close frame: 1000–1003,
/// 1007–1014 and 3000–4999. 1004 is reserved; 1005, 1006 and 1015 only report what
/// happened locally and must never be sent; 0–999, 1016–2999 and 5000+ are unassigned.
pub fn close_code_valid_on_wire(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
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

/// The proxy leg: DESIGN.md's proxy rows.
fn classify_proxy(failure: &ProxyFailure, has_connected: bool) -> Class {
    match failure {
        ProxyFailure::Unreachable {
            kind: NetworkKind::HostNotFound,
            ..
        } if !has_connected => Class::Permanent,
        ProxyFailure::Unreachable { .. } => Class::Transient,
        // The server never saw the request: a 401 from the proxy (tinyproxy 1.11 sends it
        // instead of 407 when its BasicAuth fails) is about the proxy's credentials too.
        ProxyFailure::Status {
            status: 401 | 407, ..
        } => Class::Auth,
        ProxyFailure::Status {
            status: 500..=599, ..
        } => Class::Transient,
        ProxyFailure::Status { .. } | ProxyFailure::Tls(_) | ProxyFailure::Malformed(_) => {
            Class::Permanent
        }
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
            // 1005 is how a close frame without a status code is kept; any other invalid
            // code was on the wire.
            Failure::Close { code, reason }
                if *code != 1005 && !close_code_valid_on_wire(*code) =>
            {
                write!(f, "server sent an invalid close code {code}")?;
                if !reason.is_empty() {
                    write!(f, " ({})", escape_untrusted(reason))?;
                }
                Ok(())
            }
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
            Failure::Network {
                kind: NetworkKind::HostNotFound,
                detail,
            } => write!(
                f,
                "host not found: {} \u{2014} check the URL",
                escape_untrusted(detail)
            ),
            // The advice is the message: what the server answered is in the debug log.
            Failure::Network {
                kind: NetworkKind::PlainServer,
                ..
            } => f.write_str("the server speaks plain HTTP here: use ws://"),
            Failure::Network {
                kind: NetworkKind::TlsServer,
                ..
            } => f.write_str("the server speaks TLS here: use wss://"),
            Failure::Network { kind, detail } => {
                let what = match kind {
                    NetworkKind::Refused => "connection refused",
                    NetworkKind::Reset => "connection reset",
                    NetworkKind::Eof => "connection closed without a close frame",
                    NetworkKind::Dns => "name resolution failed",
                    NetworkKind::ConnectTimeout => "connect timed out",
                    NetworkKind::Other => "network error",
                    NetworkKind::HostNotFound => "host not found",
                    NetworkKind::PlainServer => "the server speaks plain HTTP",
                    NetworkKind::TlsServer => "the server speaks TLS",
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
            Failure::InputRejected(detail) => f.write_str(detail),
            Failure::CannotCreate(detail) => f.write_str(&escape_untrusted(detail)),
            Failure::TokenCommand { detail, .. } => f.write_str(&escape_untrusted(detail)),
            Failure::Subprotocol { offered, answer } => {
                let offered = if offered.is_empty() {
                    "none".to_string()
                } else {
                    offered.join(", ")
                };
                write!(
                    f,
                    "subprotocol mismatch: the server answered the upgrade with {answer}; offered: {}",
                    escape_untrusted(&offered)
                )
            }
            Failure::Proxy { proxy, failure, .. } => {
                let proxy = escape_untrusted(proxy);
                match failure {
                    ProxyFailure::Unreachable {
                        kind: NetworkKind::HostNotFound,
                        detail,
                    } => write!(
                        f,
                        "proxy {proxy}: host not found: {}",
                        escape_untrusted(detail)
                    ),
                    ProxyFailure::Unreachable { kind, detail } => write!(
                        f,
                        "proxy {proxy} unreachable: {}",
                        Failure::Network {
                            kind: *kind,
                            detail: detail.clone()
                        }
                    ),
                    ProxyFailure::Tls(detail) => write!(
                        f,
                        "TLS to proxy {proxy} failed: {}",
                        escape_untrusted(detail)
                    ),
                    ProxyFailure::Status { status, .. } => write!(
                        f,
                        "proxy {proxy} answered HTTP {status} {} to CONNECT",
                        http::StatusCode::from_u16(*status)
                            .ok()
                            .and_then(|s| s.canonical_reason())
                            .unwrap_or("")
                    ),
                    ProxyFailure::Malformed(detail) => write!(
                        f,
                        "proxy {proxy} did not answer CONNECT as an HTTP proxy: {}",
                        escape_untrusted(detail)
                    ),
                }
            }
        }
    }
}

impl Failure {
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
            Failure::Http { retry_after, .. }
            | Failure::Refresh { retry_after, .. }
            | Failure::Proxy { retry_after, .. } => *retry_after,
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
            Failure::InputRejected(_) => "input rejected".into(),
            Failure::CannotCreate(_) => "cannot create".into(),
            Failure::TokenCommand { .. } => "token command".into(),
            Failure::Subprotocol { .. } => "subprotocol".into(),
            Failure::Proxy { failure, .. } => match failure {
                ProxyFailure::Unreachable { kind, .. } => {
                    format!("proxy {}", format!("{kind:?}").to_ascii_lowercase())
                }
                ProxyFailure::Tls(_) => "proxy tls".into(),
                ProxyFailure::Status { status, .. } => format!("proxy {status}"),
                ProxyFailure::Malformed(_) => "proxy malformed".into(),
            },
        }
    }

    /// Whether refreshing the token can cure this failure: not a proxy's 407, which is
    /// about the proxy URL's credentials, not the server's token.
    pub fn refresh_may_help(&self) -> bool {
        !matches!(self, Failure::Proxy { .. })
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
    fn proxy_rows_name_the_proxy() {
        let proxy = |failure: ProxyFailure, retry_after: Option<Duration>| Failure::Proxy {
            proxy: "http://proxy.example:3128".into(),
            failure,
            retry_after,
        };
        let status = |status: u16| {
            proxy(
                ProxyFailure::Status {
                    status,
                    credentials_sent: true,
                },
                None,
            )
        };
        let rules = ClassifyRules::default();
        let refused = proxy(
            ProxyFailure::Unreachable {
                kind: NetworkKind::Refused,
                detail: "127.0.0.1:3128: refused".into(),
            },
            None,
        );
        assert_eq!(rules.classify(&refused), Class::Transient);
        assert!(
            refused
                .to_string()
                .starts_with("proxy http://proxy.example:3128 unreachable: connection refused"),
            "{refused}"
        );
        assert_eq!(rules.classify(&status(407)), Class::Auth);
        assert_eq!(rules.classify(&status(401)), Class::Auth);
        assert_eq!(Class::Auth.exit_code(), 77);
        assert!(!status(407).refresh_may_help());
        assert_eq!(
            status(407).to_string(),
            "proxy http://proxy.example:3128 answered HTTP 407 Proxy Authentication Required to CONNECT"
        );
        for permanent in [400, 403, 404, 405, 302] {
            assert_eq!(
                rules.classify(&status(permanent)),
                Class::Permanent,
                "{permanent}"
            );
        }
        for transient in [500, 502, 503, 504] {
            assert_eq!(
                rules.classify(&status(transient)),
                Class::Transient,
                "{transient}"
            );
        }
        let busy = proxy(
            ProxyFailure::Status {
                status: 503,
                credentials_sent: false,
            },
            Some(Duration::from_secs(7)),
        );
        assert_eq!(busy.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(busy.label(), "proxy 503");
        let unknown = proxy(
            ProxyFailure::Unreachable {
                kind: NetworkKind::HostNotFound,
                detail: "proxy.example".into(),
            },
            None,
        );
        assert_eq!(rules.classify_in_session(&unknown, false), Class::Permanent);
        assert_eq!(rules.classify_in_session(&unknown, true), Class::Transient);
        assert_eq!(
            rules.classify(&proxy(ProxyFailure::Tls("x".into()), None)),
            Class::Permanent
        );
        assert_eq!(
            rules.classify(&proxy(ProxyFailure::Malformed("x".into()), None)),
            Class::Permanent
        );
    }

    #[test]
    fn close_1000_is_done() {
        assert_eq!(close(1000, ""), Class::Done);
        assert_eq!(Class::Done.exit_code(), 0);
    }

    #[test]
    fn transient_close_codes_and_unlisted_registered_codes_are_transient() {
        // 1005: a close frame without a status code.
        for code in [1001, 1005, 1011, 1012, 1013, 1014, 3001, 3500, 3999] {
            assert_eq!(close(code, ""), Class::Transient, "code {code}");
        }
        assert_eq!(Class::Transient.exit_code(), 75);
    }

    #[test]
    fn close_codes_forbidden_on_the_wire_are_permanent_and_named_invalid() {
        for code in [0, 1, 999, 1004, 1006, 1015, 1016, 2000, 2999, 5000, 65535] {
            assert!(!close_code_valid_on_wire(code), "code {code}");
            assert_eq!(close(code, ""), Class::Permanent, "code {code}");
            let shown = Failure::Close {
                code,
                reason: "why".into(),
            }
            .to_string();
            assert_eq!(
                shown,
                format!("server sent an invalid close code {code} (why)")
            );
        }
        for code in [1000, 1003, 1007, 1014, 3000, 4999] {
            assert!(close_code_valid_on_wire(code), "code {code}");
        }
        assert!(!close_code_valid_on_wire(1005));
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
    fn host_not_found_is_permanent_only_before_a_connection_succeeded() {
        let rules = ClassifyRules::default();
        let not_found = Failure::Network {
            kind: NetworkKind::HostNotFound,
            detail: "no-such-host.invalid".into(),
        };
        assert_eq!(rules.classify(&not_found), Class::Permanent);
        assert_eq!(
            rules.classify_in_session(&not_found, false),
            Class::Permanent
        );
        assert_eq!(
            rules.classify_in_session(&not_found, true),
            Class::Transient
        );
        assert_eq!(
            not_found.to_string(),
            "host not found: no-such-host.invalid \u{2014} check the URL"
        );
        // The resolver itself failing (EAI_AGAIN) stays transient either way.
        let unreachable = Failure::Network {
            kind: NetworkKind::Dns,
            detail: String::new(),
        };
        for has_connected in [false, true] {
            assert_eq!(
                rules.classify_in_session(&unreachable, has_connected),
                Class::Transient
            );
        }
    }

    #[test]
    fn scheme_mix_ups_are_permanent_and_name_the_scheme() {
        for (kind, words) in [
            (NetworkKind::PlainServer, "plain HTTP here: use ws://"),
            (NetworkKind::TlsServer, "TLS here: use wss://"),
        ] {
            let f = Failure::Network {
                kind,
                detail: "received corrupt message".into(),
            };
            for has_connected in [false, true] {
                assert_eq!(
                    ClassifyRules::default().classify_in_session(&f, has_connected),
                    Class::Permanent
                );
            }
            assert!(f.to_string().contains(words), "{f}");
        }
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

    #[test]
    fn a_failed_token_command_is_auth_and_one_that_did_not_run_is_transient() {
        let rules = ClassifyRules::default();
        let failed = Failure::TokenCommand {
            transient: false,
            detail: "token command `x` failed (exit status 1): \u{1b}[2J".into(),
        };
        assert_eq!(rules.classify(&failed), Class::Auth);
        assert!(!failed.to_string().chars().any(char::is_control));
        let timed_out = Failure::TokenCommand {
            transient: true,
            detail: "token command `x` did not finish within 30s".into(),
        };
        assert_eq!(rules.classify(&timed_out), Class::Transient);
    }
}
