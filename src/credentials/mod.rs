//! Credentials: where the `Authorization` header comes from, and how it is renewed.
//!
//! One trait, [`Credentials`], answers three questions: what to send now, whether a
//! refresh is possible, and (asynchronously) "please refresh". The machine only ever
//! asks "may I refresh?"; it never learns which implementation it has, nor a token.
//!
//! Refreshes are single-flight per credential: `refresh` is given the authorization
//! that the server rejected, and an implementation that finds it already replaced
//! (another supervisor refreshed meanwhile) returns at once without a second request.
//!
//! The parts live one job a file: this file the trait and the two fixed kinds
//! ([`Anonymous`], [`StaticToken`]); `in_memory.rs` the token renewed by a function;
//! `file.rs` the stored credentials file (`--credentials`); `refresh.rs` the token
//! endpoint's answer and the expiry arithmetic. Every public item is re-exported here,
//! so `wsup::credentials::X` is the one path to use.

mod file;
#[cfg(test)]
mod hostile_input;
mod in_memory;
mod refresh;

pub use file::{
    CredentialsFile, CredentialsFileError, TokenEndpointSettings, MAX_CREDENTIALS_FILE_BYTES,
};
pub use in_memory::{InMemoryRefreshable, IssuedToken, TokenSource};
pub use refresh::{MAX_TOKEN_LIFETIME, MAX_TOKEN_RESPONSE_BYTES, TOKEN_REQUEST_TIMEOUT};

use crate::classify::Failure;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

/// A boxed future, so that `Credentials` can be a trait object shared by many tunnels.
pub type RefreshFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send + 'a>>;

/// Whether another refresh replaced the credentials while this one queued for its turn
/// (single-flight): the rejected authorization is no longer the current one, or, for a
/// proactive refresh (`rejected` is `None`), the current one changed since `before`.
/// Then this refresh has nothing left to do and must not spend another token.
pub(crate) fn replaced_while_queued(
    rejected: Option<&Secret>,
    before: &Option<Secret>,
    now: &Option<Secret>,
) -> bool {
    match rejected {
        Some(rejected) => now.as_ref() != Some(rejected),
        None => now != before,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_token_uses_the_scheme_and_cannot_refresh() {
        let t = StaticToken::new("Token", "abc");
        assert_eq!(t.authorization().unwrap().expose(), "Token abc");
        assert!(!t.can_refresh());
    }
}
