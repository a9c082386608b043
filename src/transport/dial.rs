//! Dialing: DNS, TCP with Happy Eyeballs (RFC 8305), TLS and the websocket upgrade, under
//! one connect timeout. Dials once when asked and never retries.

#![allow(unused_imports)]
use super::errors::{io_failure, tls_handshake_failure, upgrade_failure};
use super::settings::{is_handshake_header, HeaderNames};
use super::*;
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
use tokio_tungstenite::tungstenite::error::{
    CapacityError, ProtocolError, SubProtocolError, TlsError,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::{Host, Url};

use super::proxy::{Proxies, ProxyUrl};
use crate::classify::{escape_untrusted, Failure, NetworkKind, ProxyFailure};
use crate::headers::parse_retry_after;
// Re-exported: these were always reached as `transport::…`, and the CLI checks its own
// settings with them.
pub use crate::headers::{is_credential_header, is_header_safe, NOT_HEADER_SAFE};

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
    /// Offered in this order; see [`TransportConfig::subprotocols`].
    subprotocols: Vec<String>,
    proxies: Proxies,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("headers", &HeaderNames(&self.inner.headers))
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("ws_config", &self.inner.ws_config)
            .field("subprotocols", &self.inner.subprotocols)
            .field("proxies", &self.inner.proxies)
            .finish_non_exhaustive()
    }
}

/// How far a dial got, for the timeout message.
#[derive(Clone, Copy)]
#[repr(u8)]
enum DialStage {
    Resolving = 0,
    Connecting = 1,
    Upgrading = 2,
    /// Connecting to the proxy and waiting for its answer to `CONNECT`.
    Tunnelling = 3,
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

        for name in &cfg.subprotocols {
            check_subprotocol(name)?;
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
                subprotocols: cfg.subprotocols,
                proxies: cfg.proxies,
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
        // The CLI checks the proxy settings for the URL before the first dial (exit 2);
        // this guards a library user's own `Proxies`.
        let proxy = self
            .inner
            .proxies
            .proxy_for(url)
            .map_err(|err| Failure::Internal(err.to_string()))?;
        let phase = AtomicU8::new(DialStage::Resolving as u8);
        let timeout = self.inner.connect_timeout;
        match tokio::time::timeout(timeout, self.dial_within(url, proxy, request, &phase)).await {
            Ok(result) => result,
            Err(_) => {
                let during = match phase.load(Ordering::Relaxed) {
                    0 => "resolving the host name",
                    1 => "connecting over TCP",
                    3 => {
                        // The proxy leg is what hung: the notice names the proxy.
                        let proxy = proxy.map_or("", |proxy| proxy.shown());
                        return Err(Failure::Proxy {
                            proxy: proxy.to_string(),
                            failure: ProxyFailure::Unreachable {
                                kind: NetworkKind::ConnectTimeout,
                                detail: format!(
                                    "no tunnel to {} within {}",
                                    host_port(url),
                                    humanize(timeout)
                                ),
                            },
                            retry_after: None,
                        });
                    }
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
        if !self.inner.subprotocols.is_empty() {
            // Checked as tokens in `new`, so the joined list is a valid header value.
            let offered =
                HeaderValue::from_str(&self.inner.subprotocols.join(", ")).map_err(|err| {
                    Failure::Internal(format!("cannot offer the subprotocols: {err}"))
                })?;
            headers.insert(http::header::SEC_WEBSOCKET_PROTOCOL, offered);
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
        proxy: Option<&ProxyUrl>,
        mut request: tungstenite::handshake::client::Request,
        phase: &AtomicU8,
    ) -> Result<WsStream, Failure> {
        let stream = match proxy {
            None => {
                let addrs = resolve(url).await?;
                phase.store(DialStage::Connecting as u8, Ordering::Relaxed);
                super::proxy::TunnelStream::Plain(connect_any(&addrs).await?)
            }
            Some(proxy) => {
                phase.store(DialStage::Tunnelling as u8, Ordering::Relaxed);
                super::proxy::open_tunnel(proxy, &host_port(url), &self.inner.tls).await?
            }
        };
        phase.store(DialStage::Upgrading as u8, Ordering::Relaxed);
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
        let (ws, response) = tokio_tungstenite::client_async_with_config(
            request,
            CloseObserver::new(stream),
            Some(self.inner.ws_config),
        )
        .await
        .map_err(|err| match err {
            tungstenite::Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(why)) => {
                subprotocol_failure(&why, &self.inner.subprotocols)
            }
            err => upgrade_failure(err, plain),
        })?;
        if let Some(chosen) = response.headers().get(http::header::SEC_WEBSOCKET_PROTOCOL) {
            let chosen = escape_untrusted(&String::from_utf8_lossy(chosen.as_bytes()));
            // Its own target, so that -v shows it without the rest of the transport's debug.
            tracing::debug!(target: "wsup::transport::subprotocol", subprotocol = %chosen, "the server chose a subprotocol");
        }
        Ok(ws)
    }
}

/// The handshake failure for a response tungstenite refused because of its
/// `Sec-WebSocket-Protocol`. tungstenite drops the response, so what the server chose is
/// said in words, not quoted.
fn subprotocol_failure(why: &SubProtocolError, offered: &[String]) -> Failure {
    let answer = match why {
        SubProtocolError::NoSubProtocol => "no subprotocol",
        SubProtocolError::InvalidSubProtocol => "a subprotocol that was not offered",
        SubProtocolError::ServerSentSubProtocolNoneRequested => {
            "a subprotocol although none was offered"
        }
    };
    Failure::Subprotocol {
        offered: offered.to_vec(),
        answer: answer.into(),
    }
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
        Some(host) => resolve_host(host, port).await,
        None => Err(Failure::Internal("the URL has no host".into())),
    }
}

/// The addresses of `host` (a server's or a proxy's), `port` set on each.
pub(super) async fn resolve_host(host: Host<&str>, port: u16) -> Result<Vec<SocketAddr>, Failure> {
    match host {
        Host::Ipv4(ip) => Ok(vec![SocketAddr::new(ip.into(), port)]),
        Host::Ipv6(ip) => Ok(vec![SocketAddr::new(ip.into(), port)]),
        Host::Domain(domain) => {
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
    }
}

/// How long a connection attempt has before the next address is tried alongside it
/// (RFC 8305 §5, "Connection Attempt Delay").
pub(crate) const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Happy Eyeballs (RFC 8305): the addresses in [`interleave_families`] order, the next one
/// started 250 ms after the previous (at once when the previous failed); the first to
/// connect wins and the others are dropped. A dead address costs 250 ms, not the whole
/// connect timeout.
pub(super) async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream, Failure> {
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
}
