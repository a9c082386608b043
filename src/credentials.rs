//! Credentials: where the `Authorization` header comes from, and how it is renewed.
//!
//! One trait, [`Credentials`], answers three questions: what to send now, whether a
//! refresh is possible, and (asynchronously) "please refresh". The machine only ever
//! asks "may I refresh?"; it never learns which implementation it has, nor a token.
//!
//! Refreshes are single-flight per credential: `refresh` is given the authorization
//! that the server rejected, and an implementation that finds it already replaced
//! (another supervisor refreshed meanwhile) returns at once without a second request.

use crate::classify::Failure;
use crate::headers::{is_header_safe, parse_retry_after, NOT_HEADER_SAFE};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A boxed future, so that `Credentials` can be a trait object shared by many tunnels.
pub type RefreshFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send + 'a>>;

/// A secret string (a token, or a whole `Authorization` value). Its `Debug` and
/// `Display` never show the value, so it cannot leak through a log line or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How early a token counts as "expiring": refresh before dialing inside this window.
pub const EXPIRY_WINDOW: Duration = Duration::from_secs(60);

pub trait Credentials: Send + Sync {
    /// The full `Authorization` header value to send on the next dial, if any.
    fn authorization(&self) -> Option<Secret>;

    /// Whether [`Credentials::refresh`] can produce a new token at all.
    fn can_refresh(&self) -> bool;

    /// Whether the current token expires before `now + window`.
    fn expires_within(&self, now: SystemTime, window: Duration) -> bool;

    /// Get a new token. `rejected` is the authorization the server refused (or `None`
    /// for a proactive refresh); if the current one already differs, another caller
    /// refreshed meanwhile and this returns `Ok` without a new request.
    fn refresh<'a>(&'a self, rejected: Option<&'a Secret>) -> RefreshFuture<'a>;
}

/// No credentials at all.
#[derive(Debug, Default, Clone, Copy)]
pub struct Anonymous;

impl Credentials for Anonymous {
    fn authorization(&self) -> Option<Secret> {
        None
    }
    fn can_refresh(&self) -> bool {
        false
    }
    fn expires_within(&self, _now: SystemTime, _window: Duration) -> bool {
        false
    }
    fn refresh<'a>(&'a self, _rejected: Option<&'a Secret>) -> RefreshFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

/// A fixed token (`--token-env`): never refreshed, so an auth failure stops with 77.
#[derive(Debug, Clone)]
pub struct StaticToken {
    authorization: Secret,
}

impl StaticToken {
    pub fn new(scheme: &str, token: &str) -> Self {
        StaticToken {
            authorization: Secret(format!("{scheme} {token}")),
        }
    }
}

impl Credentials for StaticToken {
    fn authorization(&self) -> Option<Secret> {
        Some(self.authorization.clone())
    }
    fn can_refresh(&self) -> bool {
        false
    }
    fn expires_within(&self, _now: SystemTime, _window: Duration) -> bool {
        false
    }
    fn refresh<'a>(&'a self, _rejected: Option<&'a Secret>) -> RefreshFuture<'a> {
        Box::pin(async {
            Err(Failure::Internal(
                "a static token cannot be refreshed".into(),
            ))
        })
    }
}

/// What a token source hands back on refresh.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: Secret,
    pub expires_at: Option<SystemTime>,
}

/// The function that fetches a new token, for [`InMemoryRefreshable`].
pub type TokenSource = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<IssuedToken, Failure>> + Send>> + Send + Sync,
>;

/// A refreshable token held in memory, renewed by calling a function: the demo and the
/// tests use it; a user's own CLI can plug its login flow in the same way.
pub struct InMemoryRefreshable {
    scheme: String,
    current: Mutex<IssuedToken>,
    source: TokenSource,
    /// Held across the whole refresh: concurrent callers queue here, and all but the
    /// first find the token already replaced.
    in_flight: tokio::sync::Mutex<()>,
    refreshes: std::sync::atomic::AtomicUsize,
}

impl fmt::Debug for InMemoryRefreshable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryRefreshable")
            .field("scheme", &self.scheme)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl InMemoryRefreshable {
    pub fn new(scheme: &str, initial: IssuedToken, source: TokenSource) -> Self {
        InMemoryRefreshable {
            scheme: scheme.to_string(),
            current: Mutex::new(initial),
            source,
            in_flight: tokio::sync::Mutex::new(()),
            refreshes: Default::default(),
        }
    }

    /// How many times the token source was actually called.
    pub fn refresh_count(&self) -> usize {
        self.refreshes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn current(&self) -> IssuedToken {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Credentials for InMemoryRefreshable {
    fn authorization(&self) -> Option<Secret> {
        Some(Secret(format!(
            "{} {}",
            self.scheme,
            self.current().token.0
        )))
    }

    fn can_refresh(&self) -> bool {
        true
    }

    fn expires_within(&self, now: SystemTime, window: Duration) -> bool {
        // A window past the end of time: every expiry is within it.
        self.current()
            .expires_at
            .is_some_and(|at| now.checked_add(window).is_none_or(|limit| at <= limit))
    }

    fn refresh<'a>(&'a self, rejected: Option<&'a Secret>) -> RefreshFuture<'a> {
        Box::pin(async move {
            let before = self.authorization();
            let _flight = self.in_flight.lock().await;
            let now = self.authorization();
            let already_replaced = match rejected {
                Some(rejected) => now.as_ref() != Some(rejected),
                // Proactive: someone else refreshed while we queued.
                None => now != before,
            };
            if already_replaced {
                return Ok(());
            }
            self.refreshes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let issued = (self.source)().await?;
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = issued;
            Ok(())
        })
    }
}

/// Why a credentials file cannot be used: a usage error (exit 2) that names the file.
#[derive(Debug, thiserror::Error)]
#[error("credentials file {path}: {reason}")]
pub struct CredentialsFileError {
    pub path: String,
    pub reason: String,
}

/// The largest credentials file wsup reads. It holds a few tokens; anything bigger is
/// the wrong file, and reading it whole would let it fill the memory.
pub const MAX_CREDENTIALS_FILE_BYTES: u64 = 1024 * 1024;
/// The largest token-endpoint answer wsup reads: a token answer is a few KiB, and a
/// broken or hostile endpoint must not be able to fill the memory.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// An `expires_in` beyond this is taken as this: no real token lives longer, and a
/// huge number must not overflow the clock arithmetic.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The on-disk JSON. Fields wsup does not know are kept, in order, on every rewrite.
#[derive(Clone, serde::Deserialize, serde::Serialize)]
struct StoredCredentials {
    access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token_expiration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_url: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
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

    fn expires_within(&self, now: SystemTime, window: Duration) -> bool {
        self.expires_at_unix()
            .is_some_and(|at| i128::from(at) <= unix_seconds(now) + i128::from(window.as_secs()))
    }

    fn expiring_soon(&self, now: SystemTime) -> bool {
        self.expires_within(now, EXPIRY_WINDOW)
    }
}

/// Seconds since the Unix epoch (negative before it), wide enough that no sum of a
/// time and a `Duration`'s seconds overflows.
fn unix_seconds(time: SystemTime) -> i128 {
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

/// `--credentials FILE`: a stored access token, refreshed over HTTP and written back
/// atomically under an advisory lock, safe to share between processes.
pub struct CredentialsFile {
    path: std::path::PathBuf,
    scheme: String,
    http: reqwest::Client,
    current: Mutex<StoredCredentials>,
    /// What the file held when this process last read or wrote it. It differs from
    /// `current` after a write failed: then the file's (spent) tokens are not "another
    /// process's refresh" to adopt, only a change of the file since then is.
    last_seen_on_disk: Mutex<StoredCredentials>,
    /// Set once the file could not be rewritten after a refresh: warned about once.
    store_failed: std::sync::atomic::AtomicBool,
    in_flight: tokio::sync::Mutex<()>,
    token_requests: std::sync::atomic::AtomicUsize,
}

impl fmt::Debug for CredentialsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialsFile")
            .field("path", &self.path)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl CredentialsFile {
    /// Reads and checks the file. It is never written here: a file wsup cannot read is
    /// left exactly as it is.
    pub fn load(path: &std::path::Path, scheme: &str) -> Result<Self, CredentialsFileError> {
        let stored = read_stored(path).map_err(|reason| CredentialsFileError {
            path: path.display().to_string(),
            reason,
        })?;
        let tls = crate::tls::client_config(Vec::new()).map_err(|reason| CredentialsFileError {
            path: path.display().to_string(),
            reason: format!("cannot set up TLS for the token endpoint: {reason}"),
        })?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(TOKEN_REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CredentialsFileError {
                path: path.display().to_string(),
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(CredentialsFile {
            path: path.to_path_buf(),
            scheme: scheme.to_string(),
            http,
            current: Mutex::new(stored.clone()),
            last_seen_on_disk: Mutex::new(stored),
            store_failed: Default::default(),
            in_flight: tokio::sync::Mutex::new(()),
            token_requests: Default::default(),
        })
    }

    /// How many requests this process sent to the token endpoint.
    pub fn token_requests(&self) -> usize {
        self.token_requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The token endpoint's URL, if the file names one.
    pub fn token_url(&self) -> Option<String> {
        self.stored().token_url
    }

    fn stored(&self) -> StoredCredentials {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn last_seen_on_disk(&self) -> StoredCredentials {
        self.last_seen_on_disk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Use credentials that are also what the file holds now.
    fn adopt_from_disk(&self, stored: StoredCredentials) {
        *self
            .last_seen_on_disk
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = stored.clone();
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = stored;
    }

    fn header_for(&self, token: &str) -> Secret {
        Secret(format!("{} {token}", self.scheme))
    }

    async fn refresh_now(&self, rejected: Option<&Secret>) -> Result<(), Failure> {
        let _flight = self.in_flight.lock().await;
        let before = self.stored();
        // Another supervisor in this process may have refreshed while we queued.
        let already_replaced = match rejected {
            Some(rejected) => self.header_for(&before.access_token) != *rejected,
            None => !before.expiring_soon(SystemTime::now()),
        };
        if already_replaced {
            return Ok(());
        }
        // A symlinked file is replaced at its target, where every other reader of the
        // link looks: renaming over the link would leave the target with spent tokens.
        let path = self.path.clone();
        let (target, lock) = tokio::task::spawn_blocking(move || {
            let target = std::fs::canonicalize(&path)?;
            let lock = FileLock::acquire(&target)?;
            Ok::<_, std::io::Error>((target, lock))
        })
        .await
        .map_err(|e| Failure::Internal(format!("lock task: {e}")))?
        .map_err(|e| {
            Failure::CannotCreate(format!(
                "cannot lock the credentials file {}: {e}",
                self.path.display()
            ))
        })?;
        let seen = self.last_seen_on_disk();
        // Another process may have refreshed while we waited for the lock.
        if let Ok(on_disk) = read_stored(&target) {
            let replaced = on_disk.access_token != seen.access_token
                && on_disk.access_token != before.access_token;
            let fresh = !on_disk.expiring_soon(SystemTime::now());
            if replaced && fresh {
                tracing::debug!(target: "wsup::credentials", "another process refreshed the token; using it");
                self.adopt_from_disk(on_disk);
                return Ok(());
            }
        }
        // The refresh token may be rotated by the answer, and then the old one is spent:
        // make sure the file can be replaced before asking. The temp file is the one
        // the new credentials go into.
        let dir = parent_dir(&target);
        let temp = tempfile::Builder::new()
            .prefix(".wsup-credentials")
            .tempfile_in(&dir)
            .map_err(|e| {
                Failure::CannotCreate(format!(
                    "cannot create a file in {} to update the credentials file ({e})",
                    dir.display()
                ))
            })?;
        let result = self.request_token(&before).await;
        let result = match result {
            Err(
                rejected @ Failure::Refresh {
                    status: Some(400 | 401),
                    ..
                },
            ) => {
                // The refresh token may have been rotated by another process between our
                // read and our request: one more look before giving up.
                match read_stored(&target) {
                    Ok(on_disk) if on_disk.refresh_token != seen.refresh_token => {
                        self.adopt_from_disk(on_disk);
                        return Ok(());
                    }
                    _ => Err(rejected),
                }
            }
            other => other,
        };
        let updated = result?;
        // Memory first: whatever happens to the file, this process has the new tokens.
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = updated.clone();
        match write_into(temp, &target, &updated) {
            Ok(()) => {
                *self
                    .last_seen_on_disk
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = updated;
            }
            Err(e) => {
                if !self
                    .store_failed
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        target: "wsup::credentials",
                        "the credentials file {} could not be updated after a refresh ({e}): \
                         this process keeps using the new tokens, but the file still holds the old ones, \
                         which the token endpoint may no longer accept; other tools using it may need a new login",
                        target.display()
                    );
                }
            }
        }
        drop(lock);
        Ok(())
    }

    /// `POST token_url` with the refresh token; the new credentials, not yet stored.
    async fn request_token(
        &self,
        before: &StoredCredentials,
    ) -> Result<StoredCredentials, Failure> {
        let (Some(token_url), Some(refresh_token)) = (&before.token_url, &before.refresh_token)
        else {
            return Err(Failure::Internal(
                "the credentials file has no refresh_token or token_url".into(),
            ));
        };
        self.token_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let response = self
            .http
            .post(token_url)
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.as_str()),
            ])
            .send()
            .await
            .map_err(|e| Failure::Refresh {
                status: None,
                // reqwest's error names the URL, never the form body.
                detail: e.without_url().to_string(),
                retry_after: None,
            })?;
        let status = response.status().as_u16();
        // "Retry-After raises the delay": for the token endpoint as for the handshake.
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let body = read_capped_body(response)
            .await
            .map_err(|e| Failure::Refresh {
                status: None,
                detail: e.without_url().to_string(),
                retry_after: None,
            })?;
        token_answer(
            status,
            retry_after,
            body.as_deref(),
            before,
            SystemTime::now(),
        )
    }
}

/// The body, or `None` when it is (or announces to be) larger than
/// [`MAX_TOKEN_RESPONSE_BYTES`]: read chunk by chunk, so memory stays bounded whatever
/// the endpoint sends.
async fn read_capped_body(
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
fn token_answer(
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

impl Credentials for CredentialsFile {
    fn authorization(&self) -> Option<Secret> {
        Some(self.header_for(&self.stored().access_token))
    }

    fn can_refresh(&self) -> bool {
        let stored = self.stored();
        stored.refresh_token.is_some() && stored.token_url.is_some()
    }

    fn expires_within(&self, now: SystemTime, window: Duration) -> bool {
        self.stored().expires_within(now, window)
    }

    fn refresh<'a>(&'a self, rejected: Option<&'a Secret>) -> RefreshFuture<'a> {
        Box::pin(self.refresh_now(rejected))
    }
}

/// The OAuth `error` code of an error response (`invalid_grant`), if it has one. Only
/// a short, known-shape code is kept: the body itself could echo a token.
fn oauth_error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = value.get("error")?.as_str()?;
    (code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| code.to_string())
}

/// Opens for reading without blocking: a FIFO (or a device) in place of the file must
/// not hang start-up waiting for a writer.
fn open_for_reading(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}

/// The file's bytes: only a regular file (symlinks followed), at most
/// [`MAX_CREDENTIALS_FILE_BYTES`]. `/dev/zero`, a FIFO or a huge file is refused before
/// it is read.
fn read_bounded(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let too_large = |size: u64| {
        format!(
            "it is larger than {} KiB ({size} bytes): not a credentials file",
            MAX_CREDENTIALS_FILE_BYTES / 1024
        )
    };
    let file = open_for_reading(path).map_err(|e| format!("cannot read it: {e}"))?;
    // Checked on the opened file, so that what is checked is what is read.
    let metadata = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?;
    if !metadata.is_file() {
        return Err(
            "it is not a regular file (a directory, FIFO or device cannot hold credentials)".into(),
        );
    }
    if metadata.len() > MAX_CREDENTIALS_FILE_BYTES {
        return Err(too_large(metadata.len()));
    }
    let mut bytes = Vec::new();
    // One byte past the cap tells a file that grew since the check.
    file.take(MAX_CREDENTIALS_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_CREDENTIALS_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

fn read_stored(path: &std::path::Path) -> Result<StoredCredentials, String> {
    let bytes = read_bounded(path)?;
    parse_stored(&bytes)
}

fn parse_stored(bytes: &[u8]) -> Result<StoredCredentials, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err("expected a JSON object with access_token".into());
    }
    match value.get("access_token") {
        Some(serde_json::Value::String(t)) if !t.trim().is_empty() => {}
        Some(_) => return Err("access_token must be a non-empty string".into()),
        None => return Err("it has no access_token".into()),
    }
    let mut stored: StoredCredentials = serde_json::from_value(value).map_err(|e| {
        // serde's message names the field and the expected type, never a value.
        format!("unexpected content: {e}")
    })?;
    // Surrounding whitespace (a trailing newline from `echo` or an editor) is not part
    // of the token: trimmed the same way as a token from --token-env.
    let trimmed = stored.access_token.trim();
    if trimmed.len() != stored.access_token.len() {
        stored.access_token = trimmed.to_owned();
    }
    if !is_header_safe(&stored.access_token) {
        return Err(format!("access_token {NOT_HEADER_SAFE}"));
    }
    if let Some(text) = &stored.access_token_expiration {
        if chrono::DateTime::parse_from_rfc3339(text).is_err() {
            return Err(format!(
                "access_token_expiration '{}' is not an RFC 3339 time",
                crate::classify::escape_untrusted(text)
            ));
        }
    }
    Ok(stored)
}

/// The directory a file lives in (`.` for a bare name).
fn parent_dir(path: &std::path::Path) -> std::path::PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    }
}

/// Into `temp` (created beforehand in `path`'s directory), fsync, mode 0600, rename over
/// the old file, fsync the directory: a crash at any moment leaves the old file or the
/// new one, complete.
fn write_into(
    mut temp: tempfile::NamedTempFile,
    path: &std::path::Path,
    stored: &StoredCredentials,
) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    let mut json = serde_json::to_vec_pretty(stored).map_err(std::io::Error::other)?;
    json.push(b'\n');
    temp.write_all(&json)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    if let Ok(dir) = std::fs::File::open(parent_dir(path)) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// An exclusive `flock` on the credentials file itself, released when dropped or when
/// the process dies: it can never go stale.
struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    fn acquire(path: &std::path::Path) -> std::io::Result<FileLock> {
        loop {
            let file = open_for_reading(path)?;
            file.lock()?;
            // A rename may have replaced the file while we waited: then we hold the lock
            // of an inode nobody else will look at. Lock the current one instead.
            if same_file(&file, path)? {
                return Ok(FileLock { _file: file });
            }
        }
    }
}

#[cfg(unix)]
fn same_file(file: &std::fs::File, path: &std::path::Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata()?;
    let now = std::fs::metadata(path)?;
    Ok(held.dev() == now.dev() && held.ino() == now.ino())
}

#[cfg(not(unix))]
fn same_file(_file: &std::fs::File, _path: &std::path::Path) -> std::io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting_source() -> TokenSource {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        Arc::new(move || {
            let n = n.clone();
            Box::pin(async move {
                let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                tokio::task::yield_now().await;
                Ok(IssuedToken {
                    token: Secret::new(format!("tok-{i}")),
                    expires_at: None,
                })
            })
        })
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        let t = StaticToken::new("Bearer", "hunter2");
        assert!(!format!("{t:?}").contains("hunter2"));
        let m = InMemoryRefreshable::new(
            "Bearer",
            IssuedToken {
                token: Secret::new("hunter2"),
                expires_at: None,
            },
            counting_source(),
        );
        assert!(!format!("{m:?}").contains("hunter2"));
    }

    #[test]
    fn static_token_uses_the_scheme_and_cannot_refresh() {
        let t = StaticToken::new("Token", "abc");
        assert_eq!(t.authorization().unwrap().expose(), "Token abc");
        assert!(!t.can_refresh());
    }

    #[tokio::test]
    async fn concurrent_refreshes_of_the_same_rejected_token_make_one_request() {
        let creds = Arc::new(InMemoryRefreshable::new(
            "Bearer",
            IssuedToken {
                token: Secret::new("tok-0"),
                expires_at: None,
            },
            counting_source(),
        ));
        let rejected = creds.authorization().unwrap();
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let creds = creds.clone();
            let rejected = rejected.clone();
            tasks.push(tokio::spawn(
                async move { creds.refresh(Some(&rejected)).await },
            ));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(creds.refresh_count(), 1);
        assert_eq!(creds.authorization().unwrap().expose(), "Bearer tok-1");
    }

    #[test]
    fn expiry_window() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let creds = InMemoryRefreshable::new(
            "Bearer",
            IssuedToken {
                token: Secret::new("t"),
                expires_at: Some(now + Duration::from_secs(30)),
            },
            counting_source(),
        );
        assert!(creds.expires_within(now, EXPIRY_WINDOW));
        assert!(!creds.expires_within(now, Duration::from_secs(10)));
    }

    /// Proptests over what the token endpoint and the credentials file can contain:
    /// never a panic, always an outcome from the exit-code table.
    mod hostile_input {
        use super::super::*;
        use crate::classify::ClassifyRules;
        use proptest::prelude::*;

        fn json_leaf() -> impl Strategy<Value = serde_json::Value> {
            use serde_json::Value;
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                prop_oneof![
                    Just(0i64),
                    Just(-1),
                    Just(60),
                    Just(3600),
                    Just(i64::MAX),
                    Just(i64::MIN)
                ]
                .prop_map(Value::from),
                any::<f64>().prop_map(
                    |f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                ),
                "[ -~]{0,24}".prop_map(Value::from),
                "-?[0-9]{1,25}(\\.[0-9]{1,3})?(e[0-9]{1,3})?".prop_map(Value::from),
                any::<String>().prop_map(Value::from),
                rfc3339_ish().prop_map(Value::from),
            ]
        }

        /// Mostly valid RFC 3339 times over all four-digit years and offsets.
        fn rfc3339_ish() -> impl Strategy<Value = String> {
            (
                0u32..10000,
                1u32..13,
                1u32..29,
                0u32..24,
                0u32..60,
                "Z|[+-](0[0-9]|1[0-9]|2[0-3]):[0-5][0-9]",
            )
                .prop_map(|(y, mo, d, h, mi, off)| {
                    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:00{off}")
                })
        }

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            json_leaf().prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                    prop::collection::vec(("[a-z_]{1,6}", inner), 0..4).prop_map(|pairs| {
                        serde_json::Value::Object(pairs.into_iter().collect())
                    }),
                ]
            })
        }

        /// An object with some of the fields that matter (and others), each of any shape.
        fn json_object(keys: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
            let key = prop_oneof![
                4 => prop::sample::select(keys).prop_map(str::to_string),
                1 => "[a-z_]{1,8}",
            ];
            prop::collection::vec((key, json_value()), 0..6).prop_map(|pairs| {
                let map: serde_json::Map<_, _> = pairs.into_iter().collect();
                serde_json::to_vec(&serde_json::Value::Object(map)).unwrap_or_default()
            })
        }

        /// Mostly well-typed fields (so that the success path is explored too), each
        /// sometimes of any shape, plus unknown fields.
        fn plausible_object(
            fields: Vec<(&'static str, BoxedStrategy<serde_json::Value>)>,
        ) -> impl Strategy<Value = Vec<u8>> {
            let fields: Vec<_> = fields
                .into_iter()
                .map(|(key, value)| {
                    prop_oneof![
                        1 => Just(None),
                        6 => value.prop_map(move |v| Some((key.to_string(), v))),
                        1 => json_value().prop_map(move |v| Some((key.to_string(), v))),
                    ]
                })
                .collect();
            (
                fields,
                prop::collection::vec(("[a-z_]{1,8}", json_value()), 0..3),
            )
                .prop_map(|(fields, extra)| {
                    let mut map: serde_json::Map<_, _> = extra.into_iter().collect();
                    map.extend(fields.into_iter().flatten());
                    serde_json::to_vec(&serde_json::Value::Object(map)).unwrap_or_default()
                })
        }

        fn token_text() -> BoxedStrategy<serde_json::Value> {
            prop_oneof![
                4 => "[!-~]{1,40}",
                1 => "[ -~]{0,40}",
                1 => any::<String>(),
            ]
            .prop_map(serde_json::Value::from)
            .boxed()
        }

        fn plausible_token_answer() -> impl Strategy<Value = Vec<u8>> {
            plausible_object(vec![
                ("access_token", token_text()),
                (
                    "expires_in",
                    prop_oneof![
                        4 => any::<i64>().prop_map(serde_json::Value::from),
                        2 => any::<u64>().prop_map(serde_json::Value::from),
                        2 => (-1e20f64..1e20).prop_map(serde_json::Value::from),
                        1 => "-?[0-9]{1,25}".prop_map(serde_json::Value::from),
                        2 => json_leaf(),
                    ]
                    .boxed(),
                ),
                ("refresh_token", token_text()),
            ])
        }

        fn plausible_file() -> impl Strategy<Value = Vec<u8>> {
            plausible_object(vec![
                ("access_token", token_text()),
                (
                    "access_token_expiration",
                    rfc3339_ish().prop_map(serde_json::Value::from).boxed(),
                ),
                ("refresh_token", token_text()),
                ("token_url", token_text()),
            ])
        }

        fn token_body() -> impl Strategy<Value = Option<Vec<u8>>> {
            prop_oneof![
                1 => Just(None),
                2 => prop::collection::vec(any::<u8>(), 0..256).prop_map(Some),
                2 => json_value().prop_map(|v| Some(serde_json::to_vec(&v).unwrap_or_default())),
                6 => json_object(&["access_token", "expires_in", "refresh_token", "token_type", "error"]).prop_map(Some),
                16 => plausible_token_answer().prop_map(Some),
            ]
        }

        fn file_body() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                1 => prop::collection::vec(any::<u8>(), 0..256),
                1 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
                4 => json_object(&["access_token", "access_token_expiration", "refresh_token", "token_url"]),
                6 => plausible_file(),
            ]
        }

        fn clock() -> impl Strategy<Value = SystemTime> {
            prop_oneof![
                Just(SystemTime::now()),
                Just(SystemTime::UNIX_EPOCH),
                (0u64..1 << 40).prop_map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
            ]
        }

        fn window() -> impl Strategy<Value = Duration> {
            prop_oneof![
                Just(Duration::ZERO),
                Just(EXPIRY_WINDOW),
                Just(Duration::MAX),
                any::<u64>().prop_map(Duration::from_secs),
            ]
        }

        fn before() -> StoredCredentials {
            StoredCredentials {
                access_token: "a0".into(),
                access_token_expiration: None,
                refresh_token: Some("r0".into()),
                token_url: Some("https://login.example.com/token".into()),
                other: Default::default(),
            }
        }

        proptest! {
            /// Any status and any body: new credentials that load again, or a failure whose
            /// class stops with 69, 75 or 77 (or refreshes).
            #[test]
            fn any_token_answer_is_credentials_or_a_classified_failure(
                status in prop_oneof![3 => Just(200u16), 1 => 100u16..600, 1 => any::<u16>()],
                body in token_body(),
                now in clock(),
                window in window(),
            ) {
                match token_answer(status, None, body.as_deref(), &before(), now) {
                    Ok(stored) => {
                        prop_assert!((200..300).contains(&status));
                        let mut json = serde_json::to_vec_pretty(&stored).unwrap();
                        json.push(b'\n');
                        let again = parse_stored(&json);
                        prop_assert!(again.is_ok(), "{:?}", again.err());
                        let again = again.unwrap();
                        prop_assert_eq!(&again.access_token, &stored.access_token);
                        let _ = again.expires_within(now, window);
                    }
                    Err(failure) => {
                        let code = ClassifyRules::default().classify(&failure).exit_code();
                        prop_assert!([69, 75, 77].contains(&code), "{failure:?} -> {code}");
                        let _ = failure.to_string();
                    }
                }
            }

            /// Any file content: loaded (and its expiry asked about at any time, with any
            /// window) or refused with a reason, which is a usage error (2).
            #[test]
            fn any_credentials_file_loads_or_is_refused(
                bytes in file_body(),
                now in clock(),
                window in window(),
            ) {
                match parse_stored(&bytes) {
                    Ok(stored) => {
                        prop_assert!(!stored.access_token.is_empty());
                        let _ = stored.expires_within(now, window);
                        let _ = stored.expiring_soon(now);
                    }
                    Err(reason) => prop_assert!(!reason.is_empty()),
                }
            }
        }

        /// The same through a real file: `read_stored` agrees with `parse_stored`.
        #[test]
        fn reading_a_file_agrees_with_parsing_its_bytes() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("credentials.json");
            let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
            runner
                .run(&file_body(), |bytes| {
                    std::fs::write(&path, &bytes).unwrap();
                    prop_assert_eq!(read_stored(&path).is_ok(), parse_stored(&bytes).is_ok());
                    Ok(())
                })
                .unwrap();
        }
    }
}
