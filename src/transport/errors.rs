//! What went wrong, as a [`Failure`] for `classify`: tungstenite, IO and rustls errors,
//! and received close frames (with the close code as it was on the wire, see
//! [`CloseObserver`](super::CloseObserver)). Wire decoding lives here so that `classify`
//! never sees a frame.

use super::WireClose;
use std::io;
use std::time::SystemTime;

use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError, TlsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::classify::{Failure, NetworkKind};
use crate::headers::parse_retry_after;
// Re-exported: these were always reached as `transport::…`, and the CLI checks its own
// settings with them.

/// A failed TLS handshake. A server that answers the ClientHello with bytes that cannot
/// start a TLS record (an unknown record type or protocol version: "HTTP/1.1 400 …" starts
/// with `H`) does not speak TLS on this port: the URL should say `ws://`.
pub(super) fn tls_handshake_failure(err: &io::Error) -> Failure {
    use rustls::InvalidMessage;
    let not_tls = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| {
            matches!(
                tls,
                rustls::Error::InvalidMessage(
                    InvalidMessage::InvalidContentType | InvalidMessage::UnknownProtocolVersion
                )
            )
        });
    if not_tls {
        tracing::debug!(target: "wsup::transport", %err, "the TLS handshake was answered with something that is not TLS");
        return Failure::Network {
            kind: NetworkKind::PlainServer,
            detail: err.to_string(),
        };
    }
    io_failure(err)
}

/// A failed websocket upgrade. Over plain TCP, an answer that does not even start like an
/// HTTP response (httparse's version error: a TLS alert starts with 0x15 0x03) comes from a
/// server that speaks TLS on this port: the URL should say `wss://`. A malformed HTTP answer
/// stays a protocol violation.
pub(super) fn upgrade_failure(err: tungstenite::Error, plain: bool) -> Failure {
    if let tungstenite::Error::Protocol(ProtocolError::HttparseError(httparse::Error::Version)) =
        &err
    {
        if plain {
            tracing::debug!(target: "wsup::transport", %err, "the upgrade was answered with something that is not HTTP");
            return Failure::Network {
                kind: NetworkKind::TlsServer,
                detail: err.to_string(),
            };
        }
    }
    failure_from_ws_error(err)
}

/// Maps a tungstenite error (from dialing or from an established connection) to a Failure.
///
/// - refused / reset, broken pipe, aborted / unexpected EOF, a connection closed without a
///   close frame → `Network` (transient);
/// - a DNS failure → `Network { kind: Dns }`;
/// - a non-101 answer to the upgrade → `Http` with `Retry-After` converted to a delay;
/// - certificate errors, TLS alerts and any other rustls error → `Tls` (permanent);
/// - an incoming message over the size limit → `Close { code: 1009 }` (rejected data): the
///   server sent more than we accept, exactly what close 1009 means;
/// - the server breaking the websocket protocol → `Close { code: 1002 }` (permanent), and
///   invalid UTF-8 in a text message → `Close { code: 1007 }`: tungstenite answers both
///   with that close code itself;
/// - misuse of the connection or an unbuildable request → `Internal`.
pub fn failure_from_ws_error(err: tungstenite::Error) -> Failure {
    use tungstenite::Error;
    match err {
        Error::ConnectionClosed => eof("connection closed"),
        Error::AlreadyClosed => eof("connection already closed"),
        Error::Io(err) => io_failure(&err),
        Error::Tls(TlsError::Rustls(err)) => Failure::Tls(rustls_detail(&err)),
        Error::Tls(TlsError::InvalidDnsName) => {
            Failure::Tls("the host name is not a valid TLS server name".into())
        }
        Error::Tls(err) => Failure::Tls(err.to_string()),
        Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => Failure::Violation {
            code: 1009,
            detail: format!(
                "a message over the {} limit ({size} bytes)",
                size_label(max_size)
            ),
        },
        Error::Capacity(err) => Failure::Violation {
            code: 1002,
            detail: err.to_string(),
        },
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            eof("connection reset without a closing handshake")
        }
        Error::Protocol(ProtocolError::HandshakeIncomplete) => {
            eof("connection closed during the websocket upgrade")
        }
        Error::Protocol(
            err @ (ProtocolError::SendAfterClosing | ProtocolError::ReceivedAfterClosing),
        ) => Failure::Internal(err.to_string()),
        Error::Protocol(err) => Failure::Violation {
            code: 1002,
            detail: err.to_string(),
        },
        Error::Utf8(_) => Failure::Violation {
            code: 1007,
            detail: "a text message that is not valid UTF-8".into(),
        },
        Error::AttackAttempt => Failure::Violation {
            code: 1002,
            detail: "attack attempt detected".into(),
        },
        Error::WriteBufferFull(_) => Failure::Internal("websocket write buffer full".into()),
        Error::Url(err) => Failure::Internal(format!("bad websocket URL: {err}")),
        Error::HttpFormat(err) => Failure::Internal(format!("bad upgrade request: {err}")),
        Error::Http(response) => {
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| parse_retry_after(value, SystemTime::now()));
            Failure::Http {
                status: response.status().as_u16(),
                retry_after,
            }
        }
    }
}

/// The failure a received close frame stands for; a close without a status is 1005.
pub fn failure_from_close_frame(frame: Option<&CloseFrame>) -> Failure {
    failure_from_received_close(frame, None)
}

/// Like [`failure_from_close_frame`], knowing the close frame as it was on the wire
/// (when the stream was observed, see [`CloseObserver`](super::CloseObserver)).
///
/// tungstenite turns a close code it does not allow (1014, 1004, 1016–2999, 1–999,
/// 5000 and up, and 1005, 1006, 1015, which must never be sent) into `1002 "Protocol
/// violation"`. That is not what the server said: when `frame` is that rewrite and the
/// wire had such a code, the server's own code and reason are classified instead
/// (1014 transient as the table says; codes forbidden on the wire permanent, "server
/// sent an invalid close code N"). A 1005 on the wire becomes a violation: a bare
/// `Close { code: 1005 }` stands for a close frame without a status code. A genuine
/// 1002 from the server stays 1002 with its own reason.
pub fn failure_from_received_close(
    frame: Option<&CloseFrame>,
    wire: Option<&WireClose>,
) -> Failure {
    if let (Some(frame), Some(wire)) = (frame, wire) {
        let rewritten =
            frame.code == CloseCode::Protocol && frame.reason.as_str() == "Protocol violation";
        if rewritten && !CloseCode::from(wire.code).is_allowed() {
            if wire.code == 1005 {
                return Failure::Violation {
                    code: 1002,
                    detail: "server sent an invalid close code 1005".into(),
                };
            }
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

fn eof(detail: &str) -> Failure {
    Failure::Network {
        kind: NetworkKind::Eof,
        detail: detail.into(),
    }
}

fn size_label(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} byte")
    }
}

pub(super) fn io_failure(err: &io::Error) -> Failure {
    if let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return Failure::Tls(rustls_detail(tls));
    }
    let kind = match err.kind() {
        io::ErrorKind::ConnectionRefused => NetworkKind::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => NetworkKind::Reset,
        io::ErrorKind::UnexpectedEof => NetworkKind::Eof,
        _ => NetworkKind::Other,
    };
    Failure::Network {
        kind,
        detail: err.to_string(),
    }
}

fn rustls_detail(err: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    match err {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "{err} (the server's certificate is not signed by a trusted CA; pass --ca-cert FILE to trust a private CA)"
        ),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tungstenite::Error;

    fn network(kind: NetworkKind) -> impl Fn(Failure) -> bool {
        move |f| matches!(f, Failure::Network { kind: k, .. } if k == kind)
    }

    #[test]
    fn io_errors_map_to_network_kinds() {
        let cases = [
            (io::ErrorKind::ConnectionRefused, NetworkKind::Refused),
            (io::ErrorKind::ConnectionReset, NetworkKind::Reset),
            (io::ErrorKind::BrokenPipe, NetworkKind::Reset),
            (io::ErrorKind::ConnectionAborted, NetworkKind::Reset),
            (io::ErrorKind::UnexpectedEof, NetworkKind::Eof),
            (io::ErrorKind::PermissionDenied, NetworkKind::Other),
        ];
        for (io_kind, kind) in cases {
            let failure = failure_from_ws_error(Error::Io(io::Error::from(io_kind)));
            assert!(network(kind)(failure.clone()), "{io_kind:?} → {failure:?}");
        }
    }

    #[test]
    fn closed_connections_are_eof() {
        for err in [
            Error::ConnectionClosed,
            Error::AlreadyClosed,
            Error::Protocol(ProtocolError::ResetWithoutClosingHandshake),
            Error::Protocol(ProtocolError::HandshakeIncomplete),
        ] {
            assert!(network(NetworkKind::Eof)(failure_from_ws_error(err)));
        }
    }

    #[test]
    fn http_answers_keep_status_and_retry_after() {
        let response = http::Response::builder()
            .status(429)
            .header("retry-after", "12")
            .body(None)
            .unwrap();
        assert_eq!(
            failure_from_ws_error(Error::Http(Box::new(response))),
            Failure::Http {
                status: 429,
                retry_after: Some(Duration::from_secs(12))
            }
        );
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let response = http::Response::builder()
            .status(503)
            .header("retry-after", later)
            .body(None)
            .unwrap();
        match failure_from_ws_error(Error::Http(Box::new(response))) {
            Failure::Http {
                status: 503,
                retry_after: Some(delay),
            } => assert!(delay > Duration::from_secs(100) && delay <= Duration::from_secs(120)),
            other => panic!("{other:?}"),
        }
        let response = http::Response::builder()
            .status(401)
            .header("retry-after", "soon")
            .body(None)
            .unwrap();
        assert_eq!(
            failure_from_ws_error(Error::Http(Box::new(response))),
            Failure::Http {
                status: 401,
                retry_after: None
            }
        );
    }

    #[test]
    fn rustls_errors_are_tls() {
        let cert = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = io::Error::new(io::ErrorKind::InvalidData, cert.clone());
        match failure_from_ws_error(Error::Io(wrapped)) {
            Failure::Tls(detail) => {
                assert!(detail.contains("UnknownIssuer"), "{detail}");
                assert!(detail.contains("--ca-cert"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
        assert!(matches!(
            failure_from_ws_error(Error::Tls(TlsError::Rustls(Box::new(alert)))),
            Failure::Tls(_)
        ));
        assert!(matches!(
            failure_from_ws_error(Error::Tls(TlsError::InvalidDnsName)),
            Failure::Tls(_)
        ));
    }

    #[test]
    fn too_big_messages_are_close_1009() {
        let err = Error::Capacity(CapacityError::MessageTooLong {
            size: (64 << 20) + 1,
            max_size: 64 << 20,
        });
        match failure_from_ws_error(err) {
            Failure::Violation { code: 1009, detail } => {
                assert!(
                    detail.starts_with("a message over the 64 MiB limit"),
                    "{detail}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn protocol_violations_and_local_faults() {
        assert!(matches!(
            failure_from_ws_error(Error::Protocol(ProtocolError::MaskedFrameFromServer)),
            Failure::Violation { code: 1002, .. }
        ));
        assert!(matches!(
            failure_from_ws_error(Error::Utf8(String::new())),
            Failure::Violation { code: 1007, .. }
        ));
        assert!(matches!(
            failure_from_ws_error(Error::Url(tungstenite::error::UrlError::NoHostName)),
            Failure::Internal(_)
        ));
        assert!(matches!(
            failure_from_ws_error(Error::Protocol(ProtocolError::SendAfterClosing)),
            Failure::Internal(_)
        ));
    }

    #[test]
    fn size_labels() {
        assert_eq!(size_label(64 << 20), "64 MiB");
        assert_eq!(size_label(128 << 10), "128 KiB");
        assert_eq!(size_label(1000), "1000 byte");
    }

    #[test]
    fn the_wire_close_replaces_tungstenites_rewrite_only() {
        use crate::classify::{Class, ClassifyRules};
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
            (1004, Class::Permanent),
            (2999, Class::Permanent),
            (999, Class::Permanent),
            (5000, Class::Permanent),
            (1006, Class::Permanent),
            (1015, Class::Permanent),
        ] {
            let failure = failure_from_received_close(Some(&rewrite), Some(&wire(code, "why")));
            assert_eq!(failure, close(code, "why"), "code {code}");
            assert_eq!(
                ClassifyRules::default().classify(&failure),
                class,
                "code {code}"
            );
        }
        // 1005 on the wire is not "no status code": a protocol violation.
        let wire_1005 = failure_from_received_close(Some(&rewrite), Some(&wire(1005, "why")));
        assert_eq!(
            ClassifyRules::default().classify(&wire_1005),
            Class::Permanent
        );
        assert!(
            wire_1005
                .to_string()
                .contains("server sent an invalid close code 1005"),
            "{wire_1005}"
        );
        // A genuine 1002, even with tungstenite's words, stays as it is.
        let genuine =
            failure_from_received_close(Some(&rewrite), Some(&wire(1002, "Protocol violation")));
        assert_eq!(genuine, close(1002, "Protocol violation"));
        // A frame tungstenite did not rewrite is taken as it is.
        let own = frame(1011, "agent gone");
        assert_eq!(
            failure_from_received_close(Some(&own), Some(&wire(1011, "agent gone"))),
            close(1011, "agent gone")
        );
        // Nothing recorded (another stream type): tungstenite's frame.
        assert_eq!(
            failure_from_received_close(Some(&rewrite), None),
            close(1002, "Protocol violation")
        );
        assert_eq!(failure_from_received_close(None, None), close(1005, ""));
    }
}
