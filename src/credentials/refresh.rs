//! The token endpoint's side of a refresh: reading its answer under the
//! [`MAX_TOKEN_RESPONSE_BYTES`] cap, what the answer means (new credentials or a
//! classified failure), and the expiry arithmetic (`expires_in` clamped to
//! [`MAX_TOKEN_LIFETIME`], stored times clamped to what RFC 3339 can write). Pure but for
//! the body read, so that the proptests can reach every answer. The stored credentials
//! (the file's JSON shape) are defined here too: an answer becomes them, and `file.rs`
//! reads and writes them.

use super::EXPIRY_WINDOW;
use crate::classify::Failure;
use crate::headers::{is_header_safe, NOT_HEADER_SAFE};
use std::time::{Duration, SystemTime};

/// The on-disk JSON. Fields wsup does not know are kept, in order, on every rewrite.
#[derive(Clone, serde::Deserialize, serde::Serialize)]
pub(super) struct StoredCredentials {
    pub(super) access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) access_token_expiration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) token_url: Option<String>,
    #[serde(flatten)]
    pub(super) other: serde_json::Map<String, serde_json::Value>,
}

impl StoredCredentials {
    /// The expiry in Unix seconds. Compared as plain integers: an expiry in year 9999
    /// or year 0 is a valid RFC 3339 time, and must not overflow a `SystemTime`.
    fn expires_at_unix(&self) -> Option<i64> {
        let text = self.access_token_expiration.as_deref()?;
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|at| at.timestamp())
    }

    pub(super) fn expires_within(&self, now: SystemTime, window: Duration) -> bool {
        self.expires_at_unix()
            .is_some_and(|at| i128::from(at) <= unix_seconds(now) + i128::from(window.as_secs()))
    }

    pub(super) fn expiring_soon(&self, now: SystemTime) -> bool {
        self.expires_within(now, EXPIRY_WINDOW)
    }
}

/// The largest token-endpoint answer wsup reads: a token answer is a few KiB, and a
/// broken or hostile endpoint must not be able to fill the memory.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// An `expires_in` beyond this is taken as this: no real token lives longer, and a
/// huge number must not overflow the clock arithmetic.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Seconds since the Unix epoch (negative before it), wide enough that no sum of a
/// time and a `Duration`'s seconds overflows.
pub(super) fn unix_seconds(time: SystemTime) -> i128 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i128::from(after.as_secs()),
        Err(before) => -i128::from(before.duration().as_secs()),
    }
}

/// What the token endpoint answers on success.
#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    /// Any JSON: endpoints send numbers, floats and numeric strings; see [`token_lifetime`].
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
}

/// How long a token lives by its `expires_in`: clamped to `0..=MAX_TOKEN_LIFETIME` (zero
/// or negative means "already expired"). `Err` for a value that is no number at all.
fn token_lifetime(expires_in: &serde_json::Value) -> Result<Duration, ()> {
    let seconds = match expires_in {
        serde_json::Value::Number(n) => n.as_f64().ok_or(())?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().map_err(|_| ())?,
        _ => return Err(()),
    };
    // NaN is not greater than zero either.
    if seconds.is_nan() || seconds <= 0.0 {
        return Ok(Duration::ZERO);
    }
    Ok(Duration::from_secs_f64(
        seconds.min(MAX_TOKEN_LIFETIME.as_secs_f64()),
    ))
}

/// The stored expiry for a token living `lifetime` from `now`, `EXPIRY_MARGIN` early.
fn expiration_text(now: SystemTime, lifetime: Duration) -> Option<String> {
    // RFC 3339 has four-digit years: a clock set beyond year 9999 (or before year 0)
    // stores the last (first) time it can write, which loads again.
    const RFC_3339_FIRST: i128 = -62_167_219_200; // 0000-01-01T00:00:00Z
    const RFC_3339_LAST: i128 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let at = unix_seconds(now) + i128::from(lifetime.saturating_sub(EXPIRY_MARGIN).as_secs());
    let at = at.clamp(RFC_3339_FIRST, RFC_3339_LAST);
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp(i64::try_from(at).ok()?, 0)?;
    Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// How long a token request may take before it counts as a network failure.
pub const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Stored expiry is this much earlier than the server's, so that a token is never sent
/// in its last minute.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// The body, or `None` when it is (or announces to be) larger than
/// [`MAX_TOKEN_RESPONSE_BYTES`]: read chunk by chunk, so memory stays bounded whatever
/// the endpoint sends.
pub(super) async fn read_capped_body(
    mut response: reqwest::Response,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let limit = MAX_TOKEN_RESPONSE_BYTES;
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// What a token endpoint's answer means: the new credentials (built on `before`), or
/// the failure it is. `body` is `None` when it was over the size cap. Pure, and total:
/// any status and any bytes give one or the other, never a panic.
pub(super) fn token_answer(
    status: u16,
    retry_after: Option<Duration>,
    body: Option<&[u8]>,
    before: &StoredCredentials,
    now: SystemTime,
) -> Result<StoredCredentials, Failure> {
    let garbage = |detail: &str| Failure::Refresh {
        status: Some(status),
        detail: detail.to_string(),
        retry_after: None,
    };
    if !(200..300).contains(&status) {
        // An error's body only lends its OAuth code; too big, it lends nothing, and the
        // status still decides (a 503 is retried whatever page came with it).
        return Err(Failure::Refresh {
            status: Some(status),
            detail: body.and_then(oauth_error_code).unwrap_or_default(),
            retry_after,
        });
    }
    let Some(body) = body else {
        return Err(garbage(&format!(
            "the response is larger than {} KiB",
            MAX_TOKEN_RESPONSE_BYTES / 1024
        )));
    };
    let parsed: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| garbage("the response is not the expected JSON"))?;
    // Trimmed like a token read from the file or from --token-env.
    let Some(access_token) = parsed
        .access_token
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
    else {
        return Err(garbage("the response has no access_token"));
    };
    // A token that cannot be sent is as useless as no token: the same failure, never
    // stored (the file keeps the old credentials).
    if !is_header_safe(&access_token) {
        return Err(garbage(&format!(
            "the response's access_token {NOT_HEADER_SAFE}"
        )));
    }
    let lifetime = match &parsed.expires_in {
        None => None,
        Some(value) => Some(
            token_lifetime(value)
                .map_err(|()| garbage("the response's expires_in is not a number"))?,
        ),
    };
    Ok(StoredCredentials {
        access_token,
        access_token_expiration: lifetime.and_then(|lifetime| expiration_text(now, lifetime)),
        refresh_token: parsed
            .refresh_token
            .or_else(|| before.refresh_token.clone()),
        token_url: before.token_url.clone(),
        other: before.other.clone(),
    })
}

/// The OAuth `error` code of an error response (`invalid_grant`), if it has one. Only
/// a short, known-shape code is kept: the body itself could echo a token.
fn oauth_error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = value.get("error")?.as_str()?;
    (code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| code.to_string())
}
