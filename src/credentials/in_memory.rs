//! A refreshable token held in memory and renewed by calling a function
//! ([`InMemoryRefreshable`]): what the demo, the tests and a user's own login flow plug
//! in. Kept apart from the credentials file, which has its own storage and locking.

use super::{Credentials, RefreshFuture, Secret};
use crate::classify::Failure;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

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
            if super::replaced_while_queued(rejected, &before, &self.authorization()) {
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
    use crate::credentials::{StaticToken, EXPIRY_WINDOW};

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
