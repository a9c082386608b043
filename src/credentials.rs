//! Credentials: where the `Authorization` header comes from, and how it is renewed.
//!
//! One trait, [`Credentials`], answers three questions: what to send now, whether a
//! refresh is possible, and (asynchronously) "please refresh". The machine only ever
//! asks "may I refresh?"; it never learns which implementation it has, nor a token.
//!
//! Refreshes are single-flight per credential: `refresh` is given the authorization
//! that the server rejected, and an implementation that finds it already replaced
//! (another supervisor refreshed meanwhile) returns at once without a second request.

use crate::classify::{parse_retry_after, Failure};
use crate::transport::{is_header_safe, NOT_HEADER_SAFE};
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
        self.current()
            .expires_at
            .is_some_and(|at| at <= now + window)
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
    fn expires_at(&self) -> Option<SystemTime> {
        let text = self.access_token_expiration.as_deref()?;
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(SystemTime::from)
    }

    fn expiring_soon(&self, now: SystemTime) -> bool {
        self.expires_at()
            .is_some_and(|at| at <= now + EXPIRY_WINDOW)
    }
}

/// What the token endpoint answers on success.
#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<u64>,
    refresh_token: Option<String>,
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
            current: Mutex::new(stored),
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

    fn adopt(&self, stored: StoredCredentials) {
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
        let path = self.path.clone();
        let lock = tokio::task::spawn_blocking(move || FileLock::acquire(&path))
            .await
            .map_err(|e| Failure::Internal(format!("lock task: {e}")))?
            .map_err(|e| Failure::Internal(format!("cannot lock {}: {e}", self.path.display())))?;
        // Another process may have refreshed while we waited for the lock.
        if let Ok(on_disk) = read_stored(&self.path) {
            let replaced = on_disk.access_token != before.access_token;
            let fresh = !on_disk.expiring_soon(SystemTime::now());
            if replaced && fresh {
                tracing::debug!(target: "wsup::credentials", "another process refreshed the token; using it");
                self.adopt(on_disk);
                return Ok(());
            }
        }
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
                match read_stored(&self.path) {
                    Ok(on_disk) if on_disk.refresh_token != before.refresh_token => {
                        self.adopt(on_disk);
                        return Ok(());
                    }
                    _ => Err(rejected),
                }
            }
            other => other,
        };
        let updated = result?;
        write_atomically(&self.path, &updated)
            .map_err(|e| Failure::Internal(format!("cannot write {}: {e}", self.path.display())))?;
        self.adopt(updated);
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
        let body = response.bytes().await.map_err(|e| Failure::Refresh {
            status: None,
            detail: e.without_url().to_string(),
            retry_after: None,
        })?;
        if !(200..300).contains(&status) {
            return Err(Failure::Refresh {
                status: Some(status),
                detail: oauth_error_code(&body).unwrap_or_default(),
                retry_after,
            });
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|_| Failure::Refresh {
                status: Some(status),
                detail: "the response is not the expected JSON".into(),
                retry_after: None,
            })?;
        // Trimmed like a token read from the file or from --token-env.
        let Some(access_token) = parsed
            .access_token
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
        else {
            return Err(Failure::Refresh {
                status: Some(status),
                detail: "the response has no access_token".into(),
                retry_after: None,
            });
        };
        // A token that cannot be sent is as useless as no token: the same failure, never
        // stored (the file keeps the old credentials).
        if !is_header_safe(&access_token) {
            return Err(Failure::Refresh {
                status: Some(status),
                detail: format!("the response's access_token {NOT_HEADER_SAFE}"),
                retry_after: None,
            });
        }
        let expiration = parsed.expires_in.map(|secs| {
            let at = SystemTime::now() + Duration::from_secs(secs).saturating_sub(EXPIRY_MARGIN);
            chrono::DateTime::<chrono::Utc>::from(at)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        });
        Ok(StoredCredentials {
            access_token,
            access_token_expiration: expiration,
            refresh_token: parsed
                .refresh_token
                .or_else(|| before.refresh_token.clone()),
            token_url: before.token_url.clone(),
            other: before.other.clone(),
        })
    }
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
        self.stored()
            .expires_at()
            .is_some_and(|at| at <= now + window)
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

fn read_stored(path: &std::path::Path) -> Result<StoredCredentials, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("not valid JSON: {e}"))?;
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

/// Temp file in the same directory, fsync, mode 0600, rename over the old file, fsync
/// the directory: a crash at any moment leaves the old file or the new one, complete.
fn write_atomically(path: &std::path::Path, stored: &StoredCredentials) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".wsup-credentials")
        .tempfile_in(&dir)?;
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
    if let Ok(dir) = std::fs::File::open(&dir) {
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
            let file = std::fs::File::open(path)?;
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
}
