//! DESIGN.md's classification table and exit codes, written out again from the table
//! rather than taken from `classify.rs`, so that a drift between the two shows up.

use super::*;
use crate::classify::ProxyFailure;

// ---------------------------------------------------------------------------------------
// DESIGN.md's classification table, written out independently of classify.rs
// ---------------------------------------------------------------------------------------

/// The reasons DESIGN.md names for a 1007 that means "permission", not "bad data".
pub(crate) fn reason_says_permission(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    reason.contains("permission") || reason.contains("not authorized")
}

/// The class DESIGN.md's table gives a failure. Only rows the strategies draw from are
/// covered; anything else is a bug in this file.
pub(crate) fn design_class(failure: &Failure, retry_close_codes: &[u16]) -> Class {
    match failure {
        Failure::Close { code, reason } => match *code {
            1000 => Class::Done,
            1008 | 3000 | 3003 => Class::Auth,
            1007 if reason_says_permission(reason) => Class::Permission,
            1003 | 1007 | 1009 => Class::RejectedData,
            1002 | 1010 | 1015 => Class::Permanent,
            4000..=4999 if retry_close_codes.contains(code) => Class::Transient,
            4000..=4999 => Class::Permanent,
            // A close frame without a status code (see `close_frame`): the
            // connection ended, nothing says why.
            1005 => Class::Transient,
            1001 | 1011..=1014 | 3000..=3999 => Class::Transient,
            // Forbidden on the wire: 0–999, 1004, 1006, 1016–2999, 5000+.
            _ => Class::Permanent,
        },
        Failure::Http { status, .. } => match *status {
            401 | 403 => Class::Auth,
            408 | 429 | 500..=599 => Class::Transient,
            300..=499 => Class::Permanent,
            other => panic!("HTTP {other} is not a row of the table"),
        },
        Failure::Tls(_) => Class::Permanent,
        Failure::Network { .. } | Failure::Liveness => Class::Transient,
        Failure::Refresh { status, .. } => match status {
            Some(400 | 401) => Class::Auth,
            None | Some(429 | 500..=599) => Class::Transient,
            Some(other) => panic!("token endpoint {other} is not a row of the table"),
        },
        // Detected here, not sent: the class of the close code that names it (the
        // violations tungstenite reports are 1002, 1007 and 1009).
        Failure::Violation { code, .. } => match *code {
            1007 | 1009 => Class::RejectedData,
            1002 => Class::Permanent,
            other => panic!("violation {other} is not one wsup reports"),
        },
        Failure::Internal(_) => Class::Internal,
        Failure::InputRejected(_) => Class::RejectedData,
        Failure::CannotCreate(_) => Class::CannotCreate,
        Failure::TokenCommand {
            transient: true, ..
        } => Class::Transient,
        Failure::TokenCommand { .. } => Class::Auth,
        Failure::Subprotocol { .. } => Class::Permanent,
        Failure::Proxy { failure, .. } => match failure {
            ProxyFailure::Unreachable { kind, .. } if *kind != NetworkKind::HostNotFound => {
                Class::Transient
            }
            ProxyFailure::Status {
                status: 401 | 407, ..
            } => Class::Auth,
            ProxyFailure::Status {
                status: 502..=504, ..
            } => Class::Transient,
            ProxyFailure::Status {
                status: 400..=499, ..
            } => Class::Permanent,
            other => panic!("proxy {other:?} is not a row of the table"),
        },
    }
}

/// DESIGN.md's exit column (and "1 internal error").
pub(crate) fn design_exit_code(class: Class) -> u8 {
    match class {
        Class::Done => 0,
        Class::Transient => 75,
        Class::Auth | Class::Permission => 77,
        Class::RejectedData => 65,
        Class::Permanent => 69,
        Class::Internal => 1,
        Class::CannotCreate => 73,
    }
}

pub(crate) fn signal_exit_code(sig: Sig) -> u8 {
    match sig {
        Sig::Interrupt => 130,
        Sig::Terminate => 143,
    }
}
