//! `--credentials FILE` ([`CredentialsFile`]): the stored credentials file. Reading it
//! with its caps (only a regular file, at most [`MAX_CREDENTIALS_FILE_BYTES`], never
//! blocking on a FIFO), checking it, and writing it back after a refresh: under an
//! advisory lock, atomically replaced, at a symlink's target. Kept apart because all of
//! this is filesystem work; what the token endpoint's answer means is in `refresh.rs`.

use super::refresh::{read_capped_body, token_answer, StoredCredentials, TOKEN_REQUEST_TIMEOUT};
use super::{Credentials, RefreshFuture, Secret};
use crate::classify::Failure;
use crate::headers::{is_header_safe, parse_retry_after, NOT_HEADER_SAFE};
use crate::transport::Proxies;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio_rustls::rustls::pki_types::CertificateDer;

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

/// How the token endpoint is reached: with the websocket's extra CA certificates
/// (`--ca-cert`) and the same proxy decision ([`Proxies::proxy_for`]), so that both legs
/// trust the same servers and take the same route. The default: the base roots, no proxy.
#[derive(Debug, Clone, Default)]
pub struct TokenEndpointSettings {
    pub extra_ca_certs: Vec<CertificateDer<'static>>,
    pub proxies: Proxies,
}

impl CredentialsFile {
    /// Reads and checks the file, with the default [`TokenEndpointSettings`]; see
    /// [`CredentialsFile::load_with`].
    pub fn load(path: &std::path::Path, scheme: &str) -> Result<Self, CredentialsFileError> {
        Self::load_with(path, scheme, TokenEndpointSettings::default())
    }

    /// Reads and checks the file. It is never written here: a file wsup cannot read is
    /// left exactly as it is.
    pub fn load_with(
        path: &std::path::Path,
        scheme: &str,
        settings: TokenEndpointSettings,
    ) -> Result<Self, CredentialsFileError> {
        let stored = read_stored(path).map_err(|reason| CredentialsFileError {
            path: path.display().to_string(),
            reason,
        })?;
        let proxies = settings.proxies;
        // reqwest asks for every request: the token URL gets the very decision the
        // websocket's URL gets (and reqwest's own reading of the environment is off).
        let proxy = reqwest::Proxy::custom(move |url| {
            proxies
                .proxy_for(url)
                .ok()
                .flatten()
                .map(|proxy| proxy.url_with_credentials())
        });
        let tls = crate::tls::client_config(settings.extra_ca_certs).map_err(|reason| {
            CredentialsFileError {
                path: path.display().to_string(),
                reason: format!("cannot set up TLS for the token endpoint: {reason}"),
            }
        })?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(TOKEN_REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .proxy(proxy)
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
            .map_err(unanswered)?;
        let status = response.status().as_u16();
        // "Retry-After raises the delay": for the token endpoint as for the handshake.
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let body = read_capped_body(response).await.map_err(unanswered)?;
        token_answer(
            status,
            retry_after,
            body.as_deref(),
            before,
            SystemTime::now(),
        )
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
        self.stored().expires_within(now, window)
    }

    fn refresh<'a>(&'a self, rejected: Option<&'a Secret>) -> RefreshFuture<'a> {
        Box::pin(self.refresh_now(rejected))
    }
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

pub(super) fn read_stored(path: &std::path::Path) -> Result<StoredCredentials, String> {
    let bytes = read_bounded(path)?;
    parse_stored(&bytes)
}

pub(super) fn parse_stored(bytes: &[u8]) -> Result<StoredCredentials, String> {
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

/// The token endpoint did not (completely) answer: a network failure, no HTTP status.
fn unanswered(error: reqwest::Error) -> Failure {
    Failure::Refresh {
        status: None,
        // reqwest's error names the URL, never the form body: without it, nothing of the
        // request is shown.
        detail: error.without_url().to_string(),
        retry_after: None,
    }
}
