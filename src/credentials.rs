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
