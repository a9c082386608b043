//! Transport: dial a websocket (DNS, TCP, TLS, HTTP upgrade, headers) under one timeout,
//! and turn what goes wrong into a [`Failure`] for `classify.rs`.
//!
//! This layer never retries and never decides anything: it dials once when asked and
//! reports exactly what happened. It also owns the checks on the transport settings the
//! user typed (URL, `--header`, `--ca-cert`, the credentials-over-plaintext rule), which
//! fail with a [`UsageError`] (exit 2) before anything is dialed.
//!
//! Secrets: header values (user `Authorization` headers included) and the `authorization`
//! argument of [`Transport::dial`] never appear in any error, `Debug` or `Display` output
//! produced here. `tungstenite` errors do not carry request headers, and only the status
//! and `Retry-After` are taken from an HTTP error response.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError, TlsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::{Host, Url};

use crate::classify::{escape_untrusted, Failure, NetworkKind};
use crate::headers::parse_retry_after;
// Re-exported: these were always reached as `transport::…`, and the CLI checks its own
// settings with them.
pub use crate::headers::{is_credential_header, is_header_safe, NOT_HEADER_SAFE};

mod observe;
mod resolve;
mod secret_headers;
pub use observe::{CloseObserver, WireClose};
pub use secret_headers::SecretHeaders;

/// The byte stream under an established websocket: TCP, or TLS over TCP, seen through a
/// [`CloseObserver`] (on the decrypted side) that keeps the server's close frame as sent,
/// over [`SecretHeaders`], which writes the credential headers of the upgrade request.
pub type WsTransportStream = CloseObserver<SecretHeaders<MaybeTlsStream<TcpStream>>>;

/// An established websocket, plain or TLS.
pub type WsStream = WebSocketStream<WsTransportStream>;

/// The largest message (and frame) accepted in either direction: 64 MiB.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;
/// `--connect-timeout` default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default read buffer of a connection. tungstenite zero-fills the whole buffer on the
/// first read, so all of it is resident for as long as the connection lives; it grows by
/// itself to hold a larger frame. 16 KiB keeps an idle connection small (the 128 KiB
/// default made it ~150 KiB of RSS, see docs/benchmarks.md) without costing throughput.
pub const DEFAULT_READ_BUFFER_SIZE: usize = 16 << 10;
/// Default write buffer of a connection (bytes gathered before a write to the socket).
pub const DEFAULT_WRITE_BUFFER_SIZE: usize = 128 << 10;

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
fn is_handshake_header(name: &HeaderName) -> bool {
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

/// What [`Transport::new`] is built from.
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
            .finish()
    }
}

/// Shows header names only: values may be secrets.
struct HeaderNames<'a>(&'a [(HeaderName, HeaderValue)]);

impl fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name.as_str()))
            .finish()
    }
}

/// Dials websockets. Built once, cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    tls: Arc<rustls::ClientConfig>,
    headers: Vec<(HeaderName, HeaderValue)>,
    connect_timeout: Duration,
    ws_config: WebSocketConfig,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("headers", &HeaderNames(&self.inner.headers))
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("ws_config", &self.inner.ws_config)
            .finish_non_exhaustive()
    }
}

/// How far a dial got, for the timeout message.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Phase {
    Resolving = 0,
    Connecting = 1,
    Upgrading = 2,
}

impl Transport {
    pub fn new(cfg: TransportConfig) -> Result<Self, UsageError> {
        if cfg.connect_timeout.is_zero() {
            return Err(UsageError::InvalidSetting(
                "the connect timeout must be greater than zero".into(),
            ));
        }
        if cfg.max_message_size == 0 {
            return Err(UsageError::InvalidSetting(
                "the maximum message size must be greater than zero".into(),
            ));
        }
        for (name, _) in &cfg.headers {
            if is_handshake_header(name) {
                return Err(UsageError::InvalidHeader {
                    shown: format!("'{name}'"),
                    reason: "this header is written by the websocket handshake itself".into(),
                });
            }
        }

        let tls = crate::tls::client_config(cfg.extra_ca_certs).map_err(UsageError::TlsSetup)?;

        let write_buffer_size = cfg.write_buffer_size;
        // The write buffer grows past `write_buffer_size` only while the socket is not
        // accepting writes; room for one whole maximal message (plus frame header) on top
        // keeps `WriteBufferFull` from ever firing for a legal message.
        let max_write_buffer_size = write_buffer_size
            .saturating_add(cfg.max_message_size)
            .saturating_add(64 << 10);
        if max_write_buffer_size <= write_buffer_size {
            return Err(UsageError::InvalidSetting(
                "the write buffer size is too large".into(),
            ));
        }
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(cfg.read_buffer_size)
            .write_buffer_size(write_buffer_size)
            .max_write_buffer_size(max_write_buffer_size)
            .max_message_size(Some(cfg.max_message_size))
            .max_frame_size(Some(cfg.max_message_size));

        Ok(Transport {
            inner: Arc::new(Inner {
                tls: Arc::new(tls),
                headers: cfg.headers,
                connect_timeout: cfg.connect_timeout,
                ws_config,
            }),
        })
    }

    /// The websocket settings every dialed connection uses (also handy for a server).
    pub fn ws_config(&self) -> WebSocketConfig {
        self.inner.ws_config
    }

    pub fn connect_timeout(&self) -> Duration {
        self.inner.connect_timeout
    }

    /// Dial: TCP connect, TLS for wss, HTTP upgrade with the configured headers plus
    /// `authorization` (the full header value, e.g. "Bearer abc") when given. The whole of it
    /// is bounded by connect_timeout.
    ///
    /// `authorization` overrides an `Authorization` header given in the configuration. The
    /// caller is responsible for [`check_secure_for_credentials`] before dialing.
    pub async fn dial(&self, url: &Url, authorization: Option<&str>) -> Result<WsStream, Failure> {
        let request = self.build_request(url, authorization)?;
        let phase = AtomicU8::new(Phase::Resolving as u8);
        let timeout = self.inner.connect_timeout;
        match tokio::time::timeout(timeout, self.dial_within(url, request, &phase)).await {
            Ok(result) => result,
            Err(_) => {
                let during = match phase.load(Ordering::Relaxed) {
                    0 => "resolving the host name",
                    1 => "connecting over TCP",
                    _ if url.scheme() == "wss" => "in the TLS handshake or websocket upgrade",
                    _ => "in the websocket upgrade",
                };
                Err(Failure::Network {
                    kind: NetworkKind::ConnectTimeout,
                    detail: format!(
                        "no connection to {} within {} ({during})",
                        host_port(url),
                        humanize(timeout)
                    ),
                })
            }
        }
    }

    fn build_request(
        &self,
        url: &Url,
        authorization: Option<&str>,
    ) -> Result<tungstenite::handshake::client::Request, Failure> {
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|err| Failure::Internal(format!("cannot build the upgrade request: {err}")))?;
        let headers = request.headers_mut();
        // A user header replaces a generated one of the same name (`Host`); repeated user
        // headers are all sent.
        for (name, _) in &self.inner.headers {
            headers.remove(name);
        }
        for (name, value) in &self.inner.headers {
            headers.append(name.clone(), value.clone());
        }
        if let Some(authorization) = authorization {
            // The CLI refuses such a value before the first dial (exit 2); this guards a
            // library user's own `Credentials`. `HeaderValue` alone would accept
            // non-ASCII bytes that the handshake then fails to write.
            let unsafe_value = || {
                Failure::Internal(format!(
                    "the authorization value from the credentials {NOT_HEADER_SAFE}"
                ))
            };
            if !is_header_safe(authorization) {
                return Err(unsafe_value());
            }
            let mut value = HeaderValue::from_str(authorization).map_err(|_| unsafe_value())?;
            value.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, value);
        }
        Ok(request)
    }

    async fn dial_within(
        &self,
        url: &Url,
        mut request: tungstenite::handshake::client::Request,
        phase: &AtomicU8,
    ) -> Result<WsStream, Failure> {
        let addrs = resolve(url).await?;
        phase.store(Phase::Connecting as u8, Ordering::Relaxed);
        let stream = connect_any(&addrs).await?;
        phase.store(Phase::Upgrading as u8, Ordering::Relaxed);
        // TLS is done here rather than by tokio-tungstenite so that the observer sees the
        // decrypted frames.
        let stream = if url.scheme() == "wss" {
            let name = server_name(url)?;
            let tls = tokio_rustls::TlsConnector::from(self.inner.tls.clone())
                .connect(name, stream)
                .await
                .map_err(|err| tls_handshake_failure(&err))?;
            MaybeTlsStream::Rustls(tls)
        } else {
            MaybeTlsStream::Plain(stream)
        };
        let plain = matches!(stream, MaybeTlsStream::Plain(_));
        // tungstenite traces the request it is given: it gets none of the credentials.
        let stream = SecretHeaders::take_from(request.headers_mut(), stream);
        let (ws, _response) = tokio_tungstenite::client_async_with_config(
            request,
            CloseObserver::new(stream),
            Some(self.inner.ws_config),
        )
        .await
        .map_err(|err| upgrade_failure(err, plain))?;
        Ok(ws)
    }
}

/// A failed TLS handshake. A server that answers the ClientHello with bytes that cannot
/// start a TLS record (an unknown record type or protocol version: "HTTP/1.1 400 …" starts
/// with `H`) does not speak TLS on this port: the URL should say `ws://`.
fn tls_handshake_failure(err: &io::Error) -> Failure {
    use rustls::InvalidMessage;
    let not_tls = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| {
            matches!(
                tls,
                rustls::Error::InvalidMessage(
                    InvalidMessage::InvalidContentType | InvalidMessage::UnknownProtocolVersion
                )
            )
        });
    if not_tls {
        tracing::debug!(target: "wsup::transport", %err, "the TLS handshake was answered with something that is not TLS");
        return Failure::Network {
            kind: NetworkKind::PlainServer,
            detail: err.to_string(),
        };
    }
    io_failure(err)
}

/// A failed websocket upgrade. Over plain TCP, an answer that does not even start like an
/// HTTP response (httparse's version error: a TLS alert starts with 0x15 0x03) comes from a
/// server that speaks TLS on this port: the URL should say `wss://`. A malformed HTTP answer
/// stays a protocol violation.
fn upgrade_failure(err: tungstenite::Error, plain: bool) -> Failure {
    if let tungstenite::Error::Protocol(ProtocolError::HttparseError(httparse::Error::Version)) =
        &err
    {
        if plain {
            tracing::debug!(target: "wsup::transport", %err, "the upgrade was answered with something that is not HTTP");
            return Failure::Network {
                kind: NetworkKind::TlsServer,
                detail: err.to_string(),
            };
        }
    }
    failure_from_ws_error(err)
}

/// The name the server's certificate must match: the URL's host (an IP address as such).
fn server_name(url: &Url) -> Result<ServerName<'static>, Failure> {
    let invalid = || Failure::Tls("the host name is not a valid TLS server name".into());
    match url.host() {
        Some(Host::Domain(domain)) => {
            ServerName::try_from(domain.to_owned()).map_err(|_| invalid())
        }
        Some(Host::Ipv4(ip)) => Ok(ServerName::IpAddress(std::net::IpAddr::V4(ip).into())),
        Some(Host::Ipv6(ip)) => Ok(ServerName::IpAddress(std::net::IpAddr::V6(ip).into())),
        None => Err(invalid()),
    }
}

fn host_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

fn humanize(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

async fn resolve(url: &Url) -> Result<Vec<SocketAddr>, Failure> {
    let port = url
        .port_or_known_default()
        .ok_or_else(|| Failure::Internal(format!("no port for scheme '{}'", url.scheme())))?;
    match url.host() {
        Some(Host::Ipv4(ip)) => Ok(vec![SocketAddr::new(ip.into(), port)]),
        Some(Host::Ipv6(ip)) => Ok(vec![SocketAddr::new(ip.into(), port)]),
        Some(Host::Domain(domain)) => {
            let dns_failure = |detail: String| Failure::Network {
                kind: NetworkKind::Dns,
                detail,
            };
            // The resolver's own error code decides: a name that does not exist may be a
            // typo (permanent until a connection has succeeded), anything else may heal.
            let addrs = resolve::resolve_host(domain, port)
                .await
                .map_err(|err| match err {
                    resolve::ResolveError::NotFound => Failure::Network {
                        kind: NetworkKind::HostNotFound,
                        detail: domain.to_owned(),
                    },
                    resolve::ResolveError::Failed(text) => dns_failure(format!("{domain}: {text}")),
                })?;
            if addrs.is_empty() {
                return Err(dns_failure(format!("{domain}: no addresses")));
            }
            Ok(addrs)
        }
        None => Err(Failure::Internal("the URL has no host".into())),
    }
}

/// How long a connection attempt has before the next address is tried alongside it
/// (RFC 8305 §5, "Connection Attempt Delay").
pub(crate) const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Happy Eyeballs (RFC 8305): the addresses in [`interleave_families`] order, the next one
/// started 250 ms after the previous (at once when the previous failed); the first to
/// connect wins and the others are dropped. A dead address costs 250 ms, not the whole
/// connect timeout.
async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream, Failure> {
    let addrs = interleave_families(addrs);
    match race_connects(&addrs, TcpStream::connect).await {
        Ok(stream) => {
            // Small frames (keystrokes, pings) must not wait for Nagle.
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(target: "wsup::transport", %err, "cannot set TCP_NODELAY");
            }
            Ok(stream)
        }
        Err(Some((addr, err))) => {
            let mut failure = io_failure(&err);
            if let Failure::Network { kind, detail } = &mut failure {
                if *kind == NetworkKind::Other && err.kind() == io::ErrorKind::TimedOut {
                    *kind = NetworkKind::ConnectTimeout;
                }
                *detail = format!("{addr}: {detail}");
            }
            Err(failure)
        }
        Err(None) => Err(Failure::Network {
            kind: NetworkKind::Dns,
            detail: "no addresses".into(),
        }),
    }
}

/// The resolver's order, with the address families alternating from the first address's
/// family on (RFC 8305 §4), so that a dead family costs one attempt delay, not one per
/// address.
fn interleave_families(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let (preferred, other): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs
        .iter()
        .partition(|addr| addr.is_ipv6() == first.is_ipv6());
    let mut out = Vec::with_capacity(addrs.len());
    let (mut preferred, mut other) = (preferred.into_iter(), other.into_iter());
    loop {
        match (preferred.next(), other.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Starts `connect` on each address in turn, the next one [`CONNECTION_ATTEMPT_DELAY`]
/// after the previous or as soon as it failed; the first success wins and the attempts
/// still running are dropped. With every attempt failed: the last failure (`None` for no
/// addresses).
async fn race_connects<T, F, Fut>(
    addrs: &[SocketAddr],
    connect: F,
) -> Result<T, Option<(SocketAddr, io::Error)>>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut waiting = addrs.iter().copied();
    let mut attempts = FuturesUnordered::new();
    let mut last = None;
    while let Some(addr) = waiting.next() {
        let attempt = connect(addr);
        attempts.push(async move { (addr, attempt.await) });
        let delay = tokio::time::sleep(CONNECTION_ATTEMPT_DELAY);
        tokio::pin!(delay);
        loop {
            tokio::select! {
                Some((addr, result)) = attempts.next() => match result {
                    Ok(stream) => return Ok(stream),
                    Err(err) => {
                        tracing::debug!(target: "wsup::transport", %addr, %err, "TCP connect failed");
                        last = Some((addr, err));
                        // Start the next address now, if any.
                        if waiting.len() > 0 {
                            break;
                        }
                    }
                },
                () = &mut delay, if waiting.len() > 0 => break,
                else => return Err(last),
            }
        }
    }
    Err(last)
}

/// Maps a tungstenite error (from dialing or from an established connection) to a Failure.
///
/// - refused / reset, broken pipe, aborted / unexpected EOF, a connection closed without a
///   close frame → `Network` (transient);
/// - a DNS failure → `Network { kind: Dns }`;
/// - a non-101 answer to the upgrade → `Http` with `Retry-After` converted to a delay;
/// - certificate errors, TLS alerts and any other rustls error → `Tls` (permanent);
/// - an incoming message over the size limit → `Close { code: 1009 }` (rejected data): the
///   server sent more than we accept, exactly what close 1009 means;
/// - the server breaking the websocket protocol → `Close { code: 1002 }` (permanent), and
///   invalid UTF-8 in a text message → `Close { code: 1007 }`: tungstenite answers both
///   with that close code itself;
/// - misuse of the connection or an unbuildable request → `Internal`.
pub fn failure_from_ws_error(err: tungstenite::Error) -> Failure {
    use tungstenite::Error;
    match err {
        Error::ConnectionClosed => eof("connection closed"),
        Error::AlreadyClosed => eof("connection already closed"),
        Error::Io(err) => io_failure(&err),
        Error::Tls(TlsError::Rustls(err)) => Failure::Tls(rustls_detail(&err)),
        Error::Tls(TlsError::InvalidDnsName) => {
            Failure::Tls("the host name is not a valid TLS server name".into())
        }
        Error::Tls(err) => Failure::Tls(err.to_string()),
        Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => Failure::Violation {
            code: 1009,
            detail: format!(
                "a message over the {} limit ({size} bytes)",
                size_label(max_size)
            ),
        },
        Error::Capacity(err) => Failure::Violation {
            code: 1002,
            detail: err.to_string(),
        },
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            eof("connection reset without a closing handshake")
        }
        Error::Protocol(ProtocolError::HandshakeIncomplete) => {
            eof("connection closed during the websocket upgrade")
        }
        Error::Protocol(
            err @ (ProtocolError::SendAfterClosing | ProtocolError::ReceivedAfterClosing),
        ) => Failure::Internal(err.to_string()),
        Error::Protocol(err) => Failure::Violation {
            code: 1002,
            detail: err.to_string(),
        },
        Error::Utf8(_) => Failure::Violation {
            code: 1007,
            detail: "a text message that is not valid UTF-8".into(),
        },
        Error::AttackAttempt => Failure::Violation {
            code: 1002,
            detail: "attack attempt detected".into(),
        },
        Error::WriteBufferFull(_) => Failure::Internal("websocket write buffer full".into()),
        Error::Url(err) => Failure::Internal(format!("bad websocket URL: {err}")),
        Error::HttpFormat(err) => Failure::Internal(format!("bad upgrade request: {err}")),
        Error::Http(response) => {
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| parse_retry_after(value, SystemTime::now()));
            Failure::Http {
                status: response.status().as_u16(),
                retry_after,
            }
        }
    }
}

/// The failure a received close frame stands for; a close without a status is 1005.
pub fn failure_from_close_frame(frame: Option<&CloseFrame>) -> Failure {
    failure_from_received_close(frame, None)
}

/// Like [`failure_from_close_frame`], knowing the close frame as it was on the wire
/// (when the stream was observed, see [`CloseObserver`]).
///
/// tungstenite turns a close code it does not allow (1014, 1004, 1016–2999, 1–999,
/// 5000 and up, and 1005, 1006, 1015, which must never be sent) into `1002 "Protocol
/// violation"`. That is not what the server said: when `frame` is that rewrite and the
/// wire had such a code, the server's own code and reason are classified instead
/// (1014 transient as the table says; codes forbidden on the wire permanent, "server
/// sent an invalid close code N"). A 1005 on the wire becomes a violation: a bare
/// `Close { code: 1005 }` stands for a close frame without a status code. A genuine
/// 1002 from the server stays 1002 with its own reason.
pub fn failure_from_received_close(
    frame: Option<&CloseFrame>,
    wire: Option<&WireClose>,
) -> Failure {
    if let (Some(frame), Some(wire)) = (frame, wire) {
        let rewritten =
            frame.code == CloseCode::Protocol && frame.reason.as_str() == "Protocol violation";
        if rewritten && !CloseCode::from(wire.code).is_allowed() {
            if wire.code == 1005 {
                return Failure::Violation {
                    code: 1002,
                    detail: "server sent an invalid close code 1005".into(),
                };
            }
            return Failure::Close {
                code: wire.code,
                reason: wire.reason.clone(),
            };
        }
    }
    match frame {
        Some(frame) => Failure::Close {
            code: frame.code.into(),
            reason: frame.reason.to_string(),
        },
        None => Failure::Close {
            code: 1005,
            reason: String::new(),
        },
    }
}

fn eof(detail: &str) -> Failure {
    Failure::Network {
        kind: NetworkKind::Eof,
        detail: detail.into(),
    }
}

fn size_label(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} byte")
    }
}

fn io_failure(err: &io::Error) -> Failure {
    if let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return Failure::Tls(rustls_detail(tls));
    }
    let kind = match err.kind() {
        io::ErrorKind::ConnectionRefused => NetworkKind::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => NetworkKind::Reset,
        io::ErrorKind::UnexpectedEof => NetworkKind::Eof,
        _ => NetworkKind::Other,
    };
    Failure::Network {
        kind,
        detail: err.to_string(),
    }
}

fn rustls_detail(err: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    match err {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "{err} (the server's certificate is not signed by a trusted CA; pass --ca-cert FILE to trust a private CA)"
        ),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{interleave_families, race_connects, CONNECTION_ATTEMPT_DELAY};
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use tokio::time::Instant;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// Dials `addrs` with a fake connect: `hangs` never answers, `fails` is refused at
    /// once, any other address connects at once. Returns the winner and when each attempt
    /// started, relative to the start.
    async fn race(
        addrs: &[SocketAddr],
        hangs: &[SocketAddr],
        fails: &[SocketAddr],
    ) -> (
        Result<SocketAddr, Option<SocketAddr>>,
        Vec<(SocketAddr, std::time::Duration)>,
    ) {
        let start = Instant::now();
        let started = Mutex::new(Vec::new());
        let result = race_connects(addrs, |addr| {
            started.lock().unwrap().push((addr, start.elapsed()));
            let (hang, fail) = (hangs.contains(&addr), fails.contains(&addr));
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                if fail {
                    return Err(std::io::ErrorKind::ConnectionRefused.into());
                }
                Ok(addr)
            }
        })
        .await
        .map_err(|last| last.map(|(addr, _)| addr));
        (result, started.into_inner().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_first_address_costs_one_attempt_delay() {
        let (dead, alive) = (addr("[2001:db8::1]:443"), addr("192.0.2.1:443"));
        let (result, started) = race(&[dead, alive], &[dead], &[]).await;
        assert_eq!(result, Ok(alive));
        assert_eq!(
            started,
            vec![
                (dead, std::time::Duration::ZERO),
                (alive, CONNECTION_ATTEMPT_DELAY)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_address_starts_the_next_at_once() {
        let (refused, alive) = (addr("192.0.2.1:443"), addr("192.0.2.2:443"));
        let (result, started) = race(&[refused, alive], &[], &[refused]).await;
        assert_eq!(result, Ok(alive));
        assert_eq!(started[1], (alive, std::time::Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_address_wins_when_it_answers_in_time() {
        let (first, second) = (addr("192.0.2.1:443"), addr("192.0.2.2:443"));
        let (result, started) = race(&[first, second], &[], &[]).await;
        assert_eq!(result, Ok(first));
        assert_eq!(
            started.len(),
            1,
            "the second address was dialed: {started:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn all_refused_reports_the_last_and_hangs_run_on_to_the_caller_timeout() {
        let addrs = [addr("192.0.2.1:443"), addr("192.0.2.2:443")];
        let (result, _) = race(&addrs, &[], &addrs).await;
        assert_eq!(result, Err(Some(addrs[1])));
        let (result, _) = race(&[], &[], &[]).await;
        assert_eq!(result, Err(None));
        // One hanging, one refused: the race waits for the hanging one.
        let raced = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            race(&addrs, &addrs[..1], &addrs[1..]),
        )
        .await;
        assert!(raced.is_err(), "a hanging attempt was given up early");
    }

    #[test]
    fn families_alternate_from_the_first_address_family() {
        let v6 = |n| addr(&format!("[2001:db8::{n}]:443"));
        let v4 = |n| addr(&format!("192.0.2.{n}:443"));
        assert_eq!(
            interleave_families(&[v6(1), v6(2), v6(3), v4(1), v4(2)]),
            vec![v6(1), v4(1), v6(2), v4(2), v6(3)]
        );
        assert_eq!(interleave_families(&[v4(1), v4(2)]), vec![v4(1), v4(2)]);
        assert!(interleave_families(&[]).is_empty());
    }

    use super::*;
    use tungstenite::Error;

    fn network(kind: NetworkKind) -> impl Fn(Failure) -> bool {
        move |f| matches!(f, Failure::Network { kind: k, .. } if k == kind)
    }

    #[test]
    fn io_errors_map_to_network_kinds() {
        let cases = [
            (io::ErrorKind::ConnectionRefused, NetworkKind::Refused),
            (io::ErrorKind::ConnectionReset, NetworkKind::Reset),
            (io::ErrorKind::BrokenPipe, NetworkKind::Reset),
            (io::ErrorKind::ConnectionAborted, NetworkKind::Reset),
            (io::ErrorKind::UnexpectedEof, NetworkKind::Eof),
            (io::ErrorKind::PermissionDenied, NetworkKind::Other),
        ];
        for (io_kind, kind) in cases {
            let failure = failure_from_ws_error(Error::Io(io::Error::from(io_kind)));
            assert!(network(kind)(failure.clone()), "{io_kind:?} → {failure:?}");
        }
    }

    #[test]
    fn closed_connections_are_eof() {
        for err in [
            Error::ConnectionClosed,
            Error::AlreadyClosed,
            Error::Protocol(ProtocolError::ResetWithoutClosingHandshake),
            Error::Protocol(ProtocolError::HandshakeIncomplete),
        ] {
            assert!(network(NetworkKind::Eof)(failure_from_ws_error(err)));
        }
    }

    #[test]
    fn http_answers_keep_status_and_retry_after() {
        let response = http::Response::builder()
            .status(429)
            .header("retry-after", "12")
            .body(None)
            .unwrap();
        assert_eq!(
            failure_from_ws_error(Error::Http(Box::new(response))),
            Failure::Http {
                status: 429,
                retry_after: Some(Duration::from_secs(12))
            }
        );
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let response = http::Response::builder()
            .status(503)
            .header("retry-after", later)
            .body(None)
            .unwrap();
        match failure_from_ws_error(Error::Http(Box::new(response))) {
            Failure::Http {
                status: 503,
                retry_after: Some(delay),
            } => assert!(delay > Duration::from_secs(100) && delay <= Duration::from_secs(120)),
            other => panic!("{other:?}"),
        }
        let response = http::Response::builder()
            .status(401)
            .header("retry-after", "soon")
            .body(None)
            .unwrap();
        assert_eq!(
            failure_from_ws_error(Error::Http(Box::new(response))),
            Failure::Http {
                status: 401,
                retry_after: None
            }
        );
    }

    #[test]
    fn rustls_errors_are_tls() {
        let cert = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = io::Error::new(io::ErrorKind::InvalidData, cert.clone());
        match failure_from_ws_error(Error::Io(wrapped)) {
            Failure::Tls(detail) => {
                assert!(detail.contains("UnknownIssuer"), "{detail}");
                assert!(detail.contains("--ca-cert"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
        assert!(matches!(
            failure_from_ws_error(Error::Tls(TlsError::Rustls(Box::new(alert)))),
            Failure::Tls(_)
        ));
        assert!(matches!(
            failure_from_ws_error(Error::Tls(TlsError::InvalidDnsName)),
            Failure::Tls(_)
        ));
    }

    #[test]
    fn too_big_messages_are_close_1009() {
        let err = Error::Capacity(CapacityError::MessageTooLong {
            size: (64 << 20) + 1,
            max_size: 64 << 20,
        });
        match failure_from_ws_error(err) {
            Failure::Violation { code: 1009, detail } => {
                assert!(
                    detail.starts_with("a message over the 64 MiB limit"),
                    "{detail}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn protocol_violations_and_local_faults() {
        assert!(matches!(
            failure_from_ws_error(Error::Protocol(ProtocolError::MaskedFrameFromServer)),
            Failure::Violation { code: 1002, .. }
        ));
        assert!(matches!(
            failure_from_ws_error(Error::Utf8(String::new())),
            Failure::Violation { code: 1007, .. }
        ));
        assert!(matches!(
            failure_from_ws_error(Error::Url(tungstenite::error::UrlError::NoHostName)),
            Failure::Internal(_)
        ));
        assert!(matches!(
            failure_from_ws_error(Error::Protocol(ProtocolError::SendAfterClosing)),
            Failure::Internal(_)
        ));
    }

    #[test]
    fn size_labels() {
        assert_eq!(size_label(64 << 20), "64 MiB");
        assert_eq!(size_label(128 << 10), "128 KiB");
        assert_eq!(size_label(1000), "1000 byte");
    }

    #[test]
    fn request_carries_headers_and_authorization_overrides() {
        let (name, value) = parse_header("Authorization: Basic user-given").unwrap();
        let transport = Transport::new(TransportConfig {
            headers: vec![
                (name, value),
                parse_header("X-Team: a").unwrap(),
                parse_header("X-Team: b").unwrap(),
                parse_header("Host: example.org").unwrap(),
            ],
            ..TransportConfig::default()
        })
        .unwrap();
        let url = parse_ws_url("ws://127.0.0.1:9/x?y=1").unwrap();
        let request = transport.build_request(&url, Some("Bearer abc")).unwrap();
        let headers = request.headers();
        assert_eq!(headers["authorization"], "Bearer abc");
        assert_eq!(headers.get_all("authorization").iter().count(), 1);
        assert!(headers["authorization"].is_sensitive());
        let teams: Vec<_> = headers.get_all("x-team").iter().collect();
        assert_eq!(teams, ["a", "b"]);
        assert_eq!(headers.get_all("host").iter().count(), 1);
        assert_eq!(headers["host"], "example.org");
        assert_eq!(request.uri(), "ws://127.0.0.1:9/x?y=1");

        let request = transport.build_request(&url, None).unwrap();
        assert_eq!(request.headers()["authorization"], "Basic user-given");

        for unsafe_value in ["Bearer a\r\nX-Evil: 1", "Bearer t\u{f6}k\u{e9}n-Evil"] {
            match transport.build_request(&url, Some(unsafe_value)) {
                Err(Failure::Internal(detail)) => assert!(!detail.contains("Evil"), "{detail}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn ws_config_uses_the_limits() {
        let transport = Transport::new(TransportConfig::default()).unwrap();
        let config = transport.ws_config();
        assert_eq!(config.max_message_size, Some(64 << 20));
        assert_eq!(config.max_frame_size, Some(64 << 20));
        assert_eq!(config.read_buffer_size, DEFAULT_READ_BUFFER_SIZE);
        assert_eq!(config.write_buffer_size, 128 << 10);
        assert!(config.max_write_buffer_size > config.write_buffer_size + (64 << 20));
    }

    #[test]
    fn bad_settings_are_usage_errors() {
        let zero = TransportConfig {
            connect_timeout: Duration::ZERO,
            ..TransportConfig::default()
        };
        assert!(matches!(
            Transport::new(zero),
            Err(UsageError::InvalidSetting(_))
        ));
        let handshake_header = TransportConfig {
            headers: vec![(
                http::header::SEC_WEBSOCKET_KEY,
                HeaderValue::from_static("x"),
            )],
            ..TransportConfig::default()
        };
        assert!(matches!(
            Transport::new(handshake_header),
            Err(UsageError::InvalidHeader { .. })
        ));
    }

    #[test]
    fn the_wire_close_replaces_tungstenites_rewrite_only() {
        use crate::classify::{Class, ClassifyRules};
        let frame = |code: u16, reason: &str| CloseFrame {
            code: code.into(),
            reason: reason.to_owned().into(),
        };
        let wire = |code: u16, reason: &str| WireClose {
            code,
            reason: reason.into(),
        };
        let close = |code: u16, reason: &str| Failure::Close {
            code,
            reason: reason.into(),
        };
        let rewrite = frame(1002, "Protocol violation");
        // Codes tungstenite rewrites: the server's own code and reason.
        for (code, class) in [
            (1014, Class::Transient),
            (1004, Class::Permanent),
            (2999, Class::Permanent),
            (999, Class::Permanent),
            (5000, Class::Permanent),
            (1006, Class::Permanent),
            (1015, Class::Permanent),
        ] {
            let failure = failure_from_received_close(Some(&rewrite), Some(&wire(code, "why")));
            assert_eq!(failure, close(code, "why"), "code {code}");
            assert_eq!(
                ClassifyRules::default().classify(&failure),
                class,
                "code {code}"
            );
        }
        // 1005 on the wire is not "no status code": a protocol violation.
        let wire_1005 = failure_from_received_close(Some(&rewrite), Some(&wire(1005, "why")));
        assert_eq!(
            ClassifyRules::default().classify(&wire_1005),
            Class::Permanent
        );
        assert!(
            wire_1005
                .to_string()
                .contains("server sent an invalid close code 1005"),
            "{wire_1005}"
        );
        // A genuine 1002, even with tungstenite's words, stays as it is.
        let genuine =
            failure_from_received_close(Some(&rewrite), Some(&wire(1002, "Protocol violation")));
        assert_eq!(genuine, close(1002, "Protocol violation"));
        // A frame tungstenite did not rewrite is taken as it is.
        let own = frame(1011, "agent gone");
        assert_eq!(
            failure_from_received_close(Some(&own), Some(&wire(1011, "agent gone"))),
            close(1011, "agent gone")
        );
        // Nothing recorded (another stream type): tungstenite's frame.
        assert_eq!(
            failure_from_received_close(Some(&rewrite), None),
            close(1002, "Protocol violation")
        );
        assert_eq!(failure_from_received_close(None, None), close(1005, ""));
    }
}
