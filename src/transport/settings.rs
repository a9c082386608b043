//! The transport settings the user typed, checked before anything is dialed: the URL,
//! `--header`, `--ca-cert`, the credentials-over-plaintext rule, and the
//! [`TransportConfig`] they end up in. Every refusal is a [`UsageError`] (exit 2).

use super::proxy::Proxies;
use super::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_BUFFER_SIZE, DEFAULT_WRITE_BUFFER_SIZE, MAX_MESSAGE_SIZE,
};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use url::{Host, Url};

use crate::classify::escape_untrusted;
// Re-exported: these were always reached as `transport::…`, and the CLI checks its own
// settings with them.
pub use crate::headers::is_credential_header;

const EXPECTED_URL: &str = "expected ws://host[:port]/path or wss://host[:port]/path";

/// A user error in the transport settings: printed as one line, exit code 2.
///
/// No variant ever holds a header value or a password.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("invalid URL '{text}': {reason}; {EXPECTED_URL}")]
    InvalidUrl { text: String, reason: String },
    #[error("unsupported URL scheme '{scheme}' in '{text}': websocket URLs start with ws:// (or wss:// for TLS); {EXPECTED_URL}")]
    UnsupportedScheme { text: String, scheme: String },
    #[error("refusing to send credentials to {url} over unencrypted ws://: use wss://, or pass --allow-insecure to send them in clear text anyway")]
    InsecureCredentials { url: String },
    /// `shown` is the header name at most, never its value.
    #[error("invalid header {shown}: {reason}; expected --header 'Name: value'")]
    InvalidHeader { shown: String, reason: String },
    #[error("CA certificate file '{}': {reason}; expected a PEM file with one or more '-----BEGIN CERTIFICATE-----' blocks", path.display())]
    CaCertFile { path: PathBuf, reason: String },
    #[error("cannot set up TLS: {0}")]
    TlsSetup(String),
    #[error("invalid transport setting: {0}")]
    InvalidSetting(String),
    /// Any other bad flag or input, already phrased for the user.
    #[error("{0}")]
    Invalid(String),
}

/// Parses a `ws://` or `wss://` URL with a host.
///
/// Other schemes (`http`, `https`, `ftp`, …) are rejected with a message naming the scheme;
/// so are user info (`user:pass@`: send credentials with `--header` or a token flag instead,
/// so that they are never printed as part of the URL) and `#fragment` (not allowed in
/// websocket URLs by RFC 6455).
pub fn parse_ws_url(text: &str) -> Result<Url, UsageError> {
    let shown = || escape_untrusted(text.trim());
    let parsed = Url::parse(text.trim());
    // `127.0.0.1:8765` does not parse ("relative URL without a base") and `localhost:8765`
    // parses with the scheme "localhost": both are a host and port without a scheme.
    let misparsed_host = match &parsed {
        Err(_) => true,
        Ok(url) => !matches!(url.scheme(), "ws" | "wss") && !text.contains("://"),
    };
    if misparsed_host {
        if let Some(guess) = with_ws_scheme(text.trim()) {
            return Err(UsageError::InvalidUrl {
                text: shown(),
                reason: format!(
                    "no scheme: add ws:// or wss:// (did you mean {}?)",
                    escape_untrusted(guess.as_str())
                ),
            });
        }
    }
    let url = parsed.map_err(|err| UsageError::InvalidUrl {
        text: shown(),
        reason: err.to_string(),
    })?;
    match url.scheme() {
        "ws" | "wss" => {}
        scheme => {
            return Err(UsageError::UnsupportedScheme {
                text: redact_url(&url),
                scheme: escape_untrusted(scheme),
            })
        }
    }
    let invalid = |reason: &str| UsageError::InvalidUrl {
        text: redact_url(&url),
        reason: reason.into(),
    };
    match url.host() {
        None => return Err(invalid("no host")),
        Some(Host::Domain("")) => return Err(invalid("empty host")),
        Some(_) => {}
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "credentials in the URL are not supported (pass them with --header 'Authorization: …' or a token flag)",
        ));
    }
    if url.fragment().is_some() {
        return Err(invalid("websocket URLs cannot have a #fragment"));
    }
    Ok(url)
}

/// `host:port/path` with the scheme it most likely lacks: ws:// for a loopback host (a
/// local server rarely has TLS), wss:// otherwise. `None` when even that is not a valid
/// websocket URL with a host (then the text was not just missing a scheme).
fn with_ws_scheme(text: &str) -> Option<Url> {
    if text.is_empty() || text.contains("://") {
        return None;
    }
    let plain = Url::parse(&format!("ws://{text}")).ok()?;
    match plain.host() {
        None | Some(Host::Domain("")) => return None,
        Some(_) => {}
    }
    if !plain.username().is_empty() || plain.password().is_some() {
        return None;
    }
    if is_loopback(&plain) {
        return Some(plain);
    }
    Url::parse(&format!("wss://{text}")).ok()
}

/// The URL for messages: any password replaced by `***`.
fn redact_url(url: &Url) -> String {
    if url.password().is_some() {
        let mut shown = url.clone();
        let _ = shown.set_password(Some("***"));
        escape_untrusted(shown.as_str())
    } else {
        escape_untrusted(url.as_str())
    }
}

/// True for `localhost`, 127.0.0.0/8 and `::1` (also `::ffff:127.x.y.z`).
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(domain)) => {
            let domain = domain.trim_end_matches('.');
            domain.eq_ignore_ascii_case("localhost")
        }
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        None => false,
    }
}

/// Credentials of any kind only over wss:// or loopback ws:// unless allow_insecure.
pub fn check_secure_for_credentials(
    url: &Url,
    sends_credentials: bool,
    allow_insecure: bool,
) -> Result<(), UsageError> {
    if !sends_credentials || allow_insecure || url.scheme() == "wss" || is_loopback(url) {
        return Ok(());
    }
    Err(UsageError::InsecureCredentials {
        url: redact_url(url),
    })
}

/// Headers the websocket handshake writes itself; a user value would break the upgrade.
pub(super) fn is_handshake_header(name: &HeaderName) -> bool {
    [
        http::header::CONNECTION,
        http::header::UPGRADE,
        http::header::SEC_WEBSOCKET_KEY,
        http::header::SEC_WEBSOCKET_VERSION,
        http::header::SEC_WEBSOCKET_ACCEPT,
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
    ]
    .contains(name)
}

/// Parses `--header 'Name: value'`. Surrounding spaces and tabs are trimmed; an empty value
/// is allowed. Control characters (CR, LF, NUL, …) and non-ASCII bytes in the value are
/// rejected, so no header can be smuggled in. The value never appears in the error.
/// Credential headers (`Authorization`, `Cookie`, …) are marked sensitive.
pub fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), UsageError> {
    let Some((name, value)) = text.split_once(':') else {
        return Err(UsageError::InvalidHeader {
            shown: "(no ':' in it)".into(),
            reason: "missing ':' between name and value".into(),
        });
    };
    let name = name.trim_matches([' ', '\t']);
    let shown_name = || format!("'{}'", escape_untrusted(name));
    if name.is_empty() {
        return Err(UsageError::InvalidHeader {
            shown: "(empty name)".into(),
            reason: "the header name is empty".into(),
        });
    }
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| UsageError::InvalidHeader {
        shown: shown_name(),
        reason: "a header name may contain only letters, digits and !#$%&'*+-.^_`|~".into(),
    })?;
    if is_handshake_header(&name) {
        return Err(UsageError::InvalidHeader {
            shown: format!("'{name}'"),
            reason: "this header is written by the websocket handshake itself".into(),
        });
    }
    let value = value.trim_matches([' ', '\t']);
    let mut value = HeaderValue::from_str(value).map_err(|_| UsageError::InvalidHeader {
        shown: format!("'{name}'"),
        reason: "the value may contain only printable ASCII characters (no CR, LF or other control characters)".into(),
    })?;
    if is_credential_header(&name) {
        value.set_sensitive(true);
    }
    Ok((name, value))
}

/// Loads every certificate from a PEM file (`--ca-cert FILE`).
pub fn load_ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, UsageError> {
    let error = |reason: String| UsageError::CaCertFile {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|err| error(format!("cannot read it: {err}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| error(format!("not a valid PEM file: {err}")))?;
    if certs.is_empty() {
        return Err(error("no certificate in it".into()));
    }
    Ok(certs)
}

/// Checks a `--subprotocol` name: RFC 6455 wants an HTTP token (letters, digits and
/// ``!#$%&'*+-.^_`|~``), which also keeps the comma-separated header unambiguous.
pub fn check_subprotocol(name: &str) -> Result<(), UsageError> {
    const TOKEN_SYMBOLS: &[u8] = b"!#$%&'*+-.^_`|~";
    let is_token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || TOKEN_SYMBOLS.contains(&b));
    if is_token {
        return Ok(());
    }
    Err(UsageError::Invalid(format!(
        "invalid subprotocol '{}': a subprotocol name may contain only letters, digits and !#$%&'*+-.^_`|~",
        escape_untrusted(name)
    )))
}

/// What [`Transport::new`](super::Transport::new) is built from.
#[derive(Clone)]
pub struct TransportConfig {
    /// `--header` values, sent on every upgrade request in this order.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Bounds DNS, TCP, TLS and the HTTP upgrade together (`--connect-timeout`).
    pub connect_timeout: Duration,
    /// `--ca-cert` certificates, trusted in addition to the web PKI and system roots.
    pub extra_ca_certs: Vec<CertificateDer<'static>>,
    /// Largest message (and frame) accepted; 64 MiB by default.
    pub max_message_size: usize,
    pub read_buffer_size: usize,
    pub write_buffer_size: usize,
    /// `--subprotocol` names, offered in this order in `Sec-WebSocket-Protocol` (none:
    /// the header is not sent).
    pub subprotocols: Vec<String>,
    /// Which proxy each target goes through (`--proxy`, `--no-proxy`, the environment);
    /// by default none: a library user opts in, e.g. with [`Proxies::from_env`].
    pub proxies: Proxies,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            headers: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            extra_ca_certs: Vec::new(),
            max_message_size: MAX_MESSAGE_SIZE,
            read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            write_buffer_size: DEFAULT_WRITE_BUFFER_SIZE,
            subprotocols: Vec::new(),
            proxies: Proxies::direct(),
        }
    }
}

impl fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportConfig")
            .field("headers", &HeaderNames(&self.headers))
            .field("connect_timeout", &self.connect_timeout)
            .field("extra_ca_certs", &self.extra_ca_certs.len())
            .field("max_message_size", &self.max_message_size)
            .field("read_buffer_size", &self.read_buffer_size)
            .field("write_buffer_size", &self.write_buffer_size)
            .field("subprotocols", &self.subprotocols)
            .field("proxies", &self.proxies)
            .finish()
    }
}

/// Shows header names only: values may be secrets.
pub(super) struct HeaderNames<'a>(pub(super) &'a [(HeaderName, HeaderValue)]);

impl fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name.as_str()))
            .finish()
    }
}

#[cfg(test)]
mod subprotocol_tests {
    use super::check_subprotocol;

    #[test]
    fn subprotocol_names_are_http_tokens() {
        for good in [
            "graphql-transport-ws",
            "v1.stomp",
            "mqtt",
            "a!#$%&'*+-.^_`|~z",
        ] {
            assert!(check_subprotocol(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "a b",
            "a,b",
            "caf\u{e9}",
            "a\r\nX-Injected: 1",
            "\"quoted\"",
        ] {
            let err = check_subprotocol(bad).expect_err(bad).to_string();
            assert!(err.starts_with("invalid subprotocol"), "{err}");
        }
    }
}
