//! HTTP header rules shared by the two HTTP clients in wsup: the websocket upgrade
//! (`transport`) and the token endpoint (`credentials`). Both refuse a value a header
//! cannot carry with the same words and read `Retry-After` the same way; keeping that here
//! lets neither import the other and keeps `classify` free of clocks.

use http::HeaderName;
use std::time::{Duration, SystemTime};

/// Headers that carry credentials: a `--header` with one of these names counts as sending
/// credentials for [`crate::transport::check_secure_for_credentials`].
pub fn is_credential_header(name: &HeaderName) -> bool {
    name == http::header::AUTHORIZATION
        || name == http::header::PROXY_AUTHORIZATION
        || name == http::header::COOKIE
}

/// Whether `text` can travel in an HTTP header value as wsup sends it: printable ASCII,
/// spaces and tabs only. Control characters are refused (CR or LF would end the header
/// and start another), and so is anything outside ASCII (the upgrade request is written
/// as ASCII text: such a value could not be sent at all).
pub fn is_header_safe(text: &str) -> bool {
    text.bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// The end of the one-line error for a scheme or token that fails [`is_header_safe`];
/// the value itself is never shown.
pub const NOT_HEADER_SAFE: &str = "contains characters an HTTP header cannot carry (control characters such as CR or LF, or non-ASCII characters); only printable ASCII is allowed";

/// `Retry-After` is seconds or an HTTP-date (RFC 9110 §10.2.3). `now` comes in from the
/// caller so this stays testable. A date in the past means "now"; garbage means "no hint".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn header_safe_values_are_printable_ascii() {
        assert!(is_header_safe("Bearer abc.DEF-123_~+/="));
        assert!(is_header_safe("a\tb c"));
        assert!(is_header_safe(""));
        for bad in ["a\rb", "a\nb", "a\0b", "a\u{7f}", "t\u{f6}k", "\u{2713}"] {
            assert!(!is_header_safe(bad), "{bad:?}");
        }
    }
}
