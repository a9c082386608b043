//! HTTP proxies: which proxy (if any) a target goes through ([`Proxies`], from `--proxy`,
//! `--no-proxy` and the curl environment variables), and the tunnel through it (`CONNECT
//! host:port`, optionally over TLS to an `https://` proxy), which returns the byte stream
//! that the ordinary TLS and websocket upgrade then run over.
//!
//! The same [`Proxies::proxy_for`] decides for the websocket and for the token endpoint
//! (`credentials::file`), so that both legs always agree.
//!
//! Secrets: the proxy URL's userinfo becomes a `Proxy-Authorization: Basic` value kept in
//! [`ProxyUrl`] and written only on the wire; every message, notice and `Debug` output
//! shows the proxy as [`ProxyUrl::shown`] (scheme, host and port only).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use http::HeaderValue;
use ipnet::IpNet;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use url::{Host, Url};

use super::errors::io_failure;
use super::settings::{is_loopback, UsageError};
use crate::classify::{Failure, NetworkKind, ProxyFailure};
use crate::headers::parse_retry_after;

/// The largest response head accepted from a proxy: a hostile or broken proxy must not
/// make wsup buffer without bound.
pub const MAX_PROXY_HEAD_BYTES: usize = 16 << 10;
/// The most header lines accepted in a proxy's response head.
pub const MAX_PROXY_HEADERS: usize = 100;

/// The byte stream to the server's host: TCP, or TLS over TCP when the tunnel runs
/// through an `https://` proxy. The websocket's own TLS (for `wss://`) runs over it.
///
/// The TLS leg is boxed: it is rare, and inline it would make every connection's stream
/// (held in the driver's task) about 1 KiB larger, several times over.
#[derive(Debug)]
pub enum TunnelStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Either side of a [`TunnelStream`], for passing reads and writes through.
trait TunnelIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> TunnelIo for T {}

impl TunnelStream {
    fn io(self: Pin<&mut Self>) -> Pin<&mut dyn TunnelIo> {
        Pin::new(match self.get_mut() {
            TunnelStream::Plain(tcp) => tcp as &mut dyn TunnelIo,
            TunnelStream::Tls(tls) => &mut **tls,
        })
    }
}

impl tokio::io::AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            TunnelStream::Plain(tcp) => tcp.is_write_vectored(),
            TunnelStream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

/// A usable proxy: `http://` or `https://`, host, port, and the `Proxy-Authorization`
/// value made from the URL's userinfo.
#[derive(Clone)]
pub struct ProxyUrl {
    /// Scheme, host and port, never the credentials: what every message shows.
    shown: String,
    /// The URL with its (still percent-encoded) userinfo, for reqwest (token endpoint).
    full: Url,
    tls: bool,
    host: Host<String>,
    port: u16,
    /// Where the URL came from (`--proxy`, `https_proxy`, …), for advice.
    source: String,
    authorization: Option<HeaderValue>,
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyUrl")
            .field("url", &self.shown)
            .field("source", &self.source)
            .field("credentials", &self.authorization.is_some())
            .finish()
    }
}

impl ProxyUrl {
    /// Parses a proxy URL as curl does: no scheme means `http://`; the port defaults to
    /// 1080 for `http://` and 443 for `https://`; a path is ignored; `user:password@`
    /// (percent-encoded) becomes Basic credentials. `source` names where the text came
    /// from, for the error, which never repeats the text (it may hold a password).
    pub fn parse(text: &str, source: &str) -> Result<Self, UsageError> {
        let text = text.trim();
        let with_scheme = if text.contains("://") {
            text.to_string()
        } else {
            format!("http://{text}")
        };
        let invalid = |reason: &str| {
            UsageError::Invalid(format!(
                "invalid proxy URL in {source}: {reason}; expected http://[user:password@]host[:port] or https://…"
            ))
        };
        let url = Url::parse(&with_scheme).map_err(|err| invalid(&err.to_string()))?;
        let (tls, default_port) = match url.scheme() {
            "http" => (false, 1080),
            "https" => (true, 443),
            other => {
                return Err(invalid(&format!(
                    "unsupported scheme '{}' (wsup speaks HTTP CONNECT to http:// and https:// proxies only)",
                    crate::classify::escape_untrusted(other)
                )))
            }
        };
        let host = match url.host() {
            None | Some(Host::Domain("")) => return Err(invalid("no host")),
            Some(host) => host.to_owned(),
        };
        let port = url.port().unwrap_or(default_port);
        let authorization = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            let user = percent_encoding::percent_decode_str(url.username()).collect::<Vec<u8>>();
            let password = percent_encoding::percent_decode_str(url.password().unwrap_or(""))
                .collect::<Vec<u8>>();
            let mut pair = user;
            pair.push(b':');
            pair.extend_from_slice(&password);
            let encoded = base64::engine::general_purpose::STANDARD.encode(&pair);
            let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
                .map_err(|_| invalid("the credentials cannot be sent"))?;
            value.set_sensitive(true);
            Some(value)
        };
        let scheme = if tls { "https" } else { "http" };
        let host_text = match &host {
            Host::Ipv6(ip) => format!("[{ip}]"),
            other => other.to_string(),
        };
        let shown = format!("{scheme}://{host_text}:{port}");
        let mut full = url.clone();
        // reqwest's default proxy port is 80: the port is always spelled out for it.
        let _ = full.set_port(Some(port));
        full.set_path("");
        full.set_query(None);
        full.set_fragment(None);
        Ok(ProxyUrl {
            shown,
            full,
            tls,
            host,
            port,
            source: source.to_string(),
            authorization,
        })
    }

    /// `http(s)://host:port`, without credentials: for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Where the proxy URL came from: `--proxy` or the environment variable's name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the URL carried credentials (sent as `Proxy-Authorization: Basic`).
    pub fn has_credentials(&self) -> bool {
        self.authorization.is_some()
    }

    /// The URL with its credentials, for reqwest (which sends them as Basic itself).
    pub(crate) fn url_with_credentials(&self) -> Url {
        self.full.clone()
    }

    fn failure(&self, failure: ProxyFailure) -> Failure {
        Failure::Proxy {
            proxy: self.shown.clone(),
            failure,
            retry_after: None,
        }
    }
}

/// One `NO_PROXY` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NoProxyEntry {
    /// `*`: no target uses the proxy.
    All,
    /// A host name: matches itself and its subdomains (lowercase, no leading or trailing
    /// dot).
    Domain(String),
    /// An IP address or a CIDR range (a plain address is a /32 or /128).
    Net(IpNet),
}

/// `NO_PROXY` as curl reads it: a list separated by commas (or white space) of host
/// names, domain suffixes with or without a leading dot (`example.com` and
/// `.example.com` both match `example.com` and every subdomain), IP addresses, CIDR
/// ranges and `*` (everything). Case does not matter; a port on an entry is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    entries: Vec<NoProxyEntry>,
}

impl NoProxy {
    pub fn parse(text: &str) -> Self {
        let entries = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|entry| !entry.is_empty())
            .map(parse_no_proxy_entry)
            .collect();
        NoProxy { entries }
    }

    /// Whether `host` bypasses the proxy.
    pub fn matches(&self, host: &Host<&str>) -> bool {
        let ip = match host {
            Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
            Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
            Host::Domain(_) => None,
        };
        let name = match host {
            Host::Domain(name) => name.trim_end_matches('.').to_ascii_lowercase(),
            _ => String::new(),
        };
        self.entries.iter().any(|entry| match entry {
            NoProxyEntry::All => true,
            NoProxyEntry::Net(net) => ip.is_some_and(|ip| net.contains(&ip)),
            NoProxyEntry::Domain(domain) => {
                ip.is_none()
                    && (name == *domain
                        || name
                            .strip_suffix(domain.as_str())
                            .is_some_and(|rest| rest.ends_with('.')))
            }
        })
    }
}

fn parse_no_proxy_entry(entry: &str) -> NoProxyEntry {
    if entry == "*" {
        return NoProxyEntry::All;
    }
    if let Some(net) = parse_ip_or_net(entry) {
        return NoProxyEntry::Net(net);
    }
    // `[v6]` or `[v6]:port`, then `v4:port` / `name:port` (one colon: a bare IPv6
    // address has several and was parsed above).
    let without_port = if let Some(rest) = entry.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(inside, _)| inside)
    } else if entry.matches(':').count() == 1 {
        entry.split_once(':').map_or(entry, |(host, _)| host)
    } else {
        entry
    };
    if let Some(net) = parse_ip_or_net(without_port) {
        return NoProxyEntry::Net(net);
    }
    NoProxyEntry::Domain(
        without_port
            .trim_start_matches('.')
            .trim_end_matches('.')
            .to_ascii_lowercase(),
    )
}

fn parse_ip_or_net(text: &str) -> Option<IpNet> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<IpAddr>().ok().map(IpNet::from)
}

/// A proxy environment variable's value as read: a proxy, or why it cannot be used
/// (only an error when a target would go through it).
#[derive(Debug, Clone)]
enum Configured {
    Usable(ProxyUrl),
    Unusable(String),
}

/// Which proxy each target goes through: the decision both legs (websocket and token
/// endpoint) make with [`Proxies::proxy_for`]. The default is no proxy at all.
#[derive(Debug, Clone, Default)]
pub struct Proxies {
    /// `--proxy`: every target, loopback included; the environment is not read.
    forced: Option<Box<ProxyUrl>>,
    /// `ws://` and `http://` targets.
    http: Option<Box<Configured>>,
    /// `wss://` and `https://` targets.
    https: Option<Box<Configured>>,
    no_proxy: NoProxy,
}

impl Proxies {
    /// No proxy for any target (`--no-proxy`, and a library's default).
    pub fn direct() -> Self {
        Proxies::default()
    }

    /// `--proxy URL`: every target goes through it, loopback included, whatever the
    /// environment says.
    pub fn forced(url: &str) -> Result<Self, UsageError> {
        Ok(Proxies {
            forced: Some(Box::new(ProxyUrl::parse(url, "--proxy")?)),
            ..Proxies::default()
        })
    }

    /// The process environment, see [`Proxies::from_vars`].
    pub fn from_env() -> Self {
        Proxies::from_vars(|name| std::env::var(name).ok())
    }

    /// The curl environment variables, read through `var`: `http_proxy` for `ws://`
    /// (and `http://`), `https_proxy` for `wss://` (and `https://`), `all_proxy` for
    /// either when its own is not set, `no_proxy` for exceptions. Each is read lowercase
    /// first, then uppercase; an empty value counts as unset. Uppercase `HTTP_PROXY` is
    /// ignored when `REQUEST_METHOD` is set: in a CGI program it is the client's `Proxy:`
    /// request header ("httpoxy"), which is why curl never reads it.
    ///
    /// A value that is not a usable proxy URL is an error only for a target that would go
    /// through it (see [`Proxies::proxy_for`]).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let read = |names: &[&str]| {
            names.iter().find_map(|name| {
                var(name)
                    .filter(|value| !value.trim().is_empty())
                    .map(|value| (name.to_string(), value))
            })
        };
        let cgi = var("REQUEST_METHOD").is_some();
        let http_names: &[&str] = if cgi {
            &["http_proxy"]
        } else {
            &["http_proxy", "HTTP_PROXY"]
        };
        let configured = |found: Option<(String, String)>| {
            found.map(|(name, value)| {
                Box::new(match ProxyUrl::parse(&value, &name) {
                    Ok(url) => Configured::Usable(url),
                    Err(err) => Configured::Unusable(err.to_string()),
                })
            })
        };
        let all = configured(read(&["all_proxy", "ALL_PROXY"]));
        Proxies {
            forced: None,
            http: configured(read(http_names)).or_else(|| all.clone()),
            https: configured(read(&["https_proxy", "HTTPS_PROXY"])).or(all),
            no_proxy: read(&["no_proxy", "NO_PROXY"])
                .map(|(_, value)| NoProxy::parse(&value))
                .unwrap_or_default(),
        }
    }

    /// The proxy `target` (a `ws`, `wss`, `http` or `https` URL) goes through, or `None`
    /// to connect directly. `--proxy` applies to every target; otherwise a loopback
    /// target (`localhost`, 127.0.0.0/8, `::1`) and a target `NO_PROXY` names connect
    /// directly. The error (exit 2) is a proxy variable whose value cannot be used.
    pub fn proxy_for(&self, target: &Url) -> Result<Option<&ProxyUrl>, UsageError> {
        if let Some(forced) = &self.forced {
            return Ok(Some(&**forced));
        }
        let configured = match target.scheme() {
            "wss" | "https" => &self.https,
            "ws" | "http" => &self.http,
            _ => &None,
        };
        let Some(configured) = configured else {
            return Ok(None);
        };
        if is_loopback(target)
            || target
                .host()
                .is_some_and(|host| self.no_proxy.matches(&host))
        {
            return Ok(None);
        }
        match &**configured {
            Configured::Usable(proxy) => Ok(Some(proxy)),
            Configured::Unusable(error) => Err(UsageError::Invalid(error.clone())),
        }
    }
}

/// Opens a tunnel to `target` (`host:port`, an IPv6 host in brackets) through `proxy`:
/// TCP to the proxy (Happy Eyeballs, as for a server), TLS to an `https://` proxy,
/// `CONNECT`, and the proxy's answer read within [`MAX_PROXY_HEAD_BYTES`]. Every failure
/// names the proxy, never the credentials.
pub(super) async fn open_tunnel(
    proxy: &ProxyUrl,
    target: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<TunnelStream, Failure> {
    tracing::debug!(target: "wsup::transport::proxy", proxy = %proxy.shown, %target, credentials = proxy.has_credentials(), "opening a tunnel through the proxy");
    let unreachable = |failure: Failure| match failure {
        Failure::Network { kind, detail } => {
            proxy.failure(ProxyFailure::Unreachable { kind, detail })
        }
        Failure::Tls(detail) => proxy.failure(ProxyFailure::Tls(detail)),
        other => other,
    };
    let host = match &proxy.host {
        Host::Domain(domain) => Host::Domain(domain.as_str()),
        Host::Ipv4(ip) => Host::Ipv4(*ip),
        Host::Ipv6(ip) => Host::Ipv6(*ip),
    };
    let addrs = super::dial::resolve_host(host, proxy.port)
        .await
        .map_err(unreachable)?;
    let tcp = super::dial::connect_any(&addrs)
        .await
        .map_err(unreachable)?;
    let mut stream = if proxy.tls {
        let name = match &proxy.host {
            Host::Domain(domain) => rustls::pki_types::ServerName::try_from(domain.clone())
                .map_err(|_| {
                    proxy.failure(ProxyFailure::Tls(
                        "the proxy's host name is not a valid TLS server name".into(),
                    ))
                })?,
            Host::Ipv4(ip) => rustls::pki_types::ServerName::IpAddress(IpAddr::V4(*ip).into()),
            Host::Ipv6(ip) => rustls::pki_types::ServerName::IpAddress(IpAddr::V6(*ip).into()),
        };
        let tls = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|err| unreachable(io_failure(&err)))?;
        TunnelStream::Tls(Box::new(tls))
    } else {
        TunnelStream::Plain(tcp)
    };
    let request = connect_request(target, proxy.authorization.as_ref());
    stream
        .write_all(&request)
        .await
        .map_err(|err| unreachable(io_failure(&err)))?;
    stream
        .flush()
        .await
        .map_err(|err| unreachable(io_failure(&err)))?;
    let head = read_head(&mut stream)
        .await
        .map_err(|failure| match failure {
            HeadError::Io(err) => unreachable(io_failure(&err)),
            HeadError::Closed => proxy.failure(ProxyFailure::Unreachable {
                kind: NetworkKind::Eof,
                detail: "the proxy closed the connection before answering CONNECT".into(),
            }),
            HeadError::Malformed(detail) => proxy.failure(ProxyFailure::Malformed(detail)),
        })?;
    let answer =
        parse_answer(&head).map_err(|detail| proxy.failure(ProxyFailure::Malformed(detail)))?;
    tracing::debug!(target: "wsup::transport::proxy", proxy = %proxy.shown, status = answer.status, "the proxy answered CONNECT");
    if (200..300).contains(&answer.status) {
        return Ok(stream);
    }
    Err(Failure::Proxy {
        proxy: proxy.shown.clone(),
        failure: ProxyFailure::Status {
            status: answer.status,
            credentials_sent: proxy.has_credentials(),
        },
        retry_after: answer.retry_after,
    })
}

/// `CONNECT target HTTP/1.1` with `Host` and, when the proxy URL had credentials,
/// `Proxy-Authorization`.
fn connect_request(target: &str, authorization: Option<&HeaderValue>) -> Vec<u8> {
    let mut request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: wsup/{}\r\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes();
    if let Some(value) = authorization {
        request.extend_from_slice(b"Proxy-Authorization: ");
        request.extend_from_slice(value.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request
}

#[derive(Debug)]
enum HeadError {
    Io(std::io::Error),
    Closed,
    Malformed(String),
}

/// Reads the proxy's response head, one byte at a time so that nothing after it (the
/// tunnel's first bytes) is taken from the stream; at most [`MAX_PROXY_HEAD_BYTES`].
async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(256);
    loop {
        if head.len() >= MAX_PROXY_HEAD_BYTES {
            return Err(HeadError::Malformed(format!(
                "its answer's head is longer than {} KiB",
                MAX_PROXY_HEAD_BYTES >> 10
            )));
        }
        let byte = match stream.read_u8().await {
            Ok(byte) => byte,
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(HeadError::Closed)
            }
            Err(err) => return Err(HeadError::Io(err)),
        };
        head.push(byte);
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(head);
        }
    }
}

#[derive(Debug)]
struct ConnectAnswer {
    status: u16,
    retry_after: Option<std::time::Duration>,
}

/// The status and `Retry-After` of a complete response head.
fn parse_answer(head: &[u8]) -> Result<ConnectAnswer, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_PROXY_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("its answer is incomplete".into()),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!(
                "its answer has more than {MAX_PROXY_HEADERS} header lines"
            ))
        }
        Err(err) => return Err(format!("its answer is not HTTP ({err})")),
    }
    let status = response
        .code
        .ok_or_else(|| "its answer has no status".to_string())?;
    let retry_after = response
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("retry-after"))
        .and_then(|header| std::str::from_utf8(header.value).ok())
        .and_then(|value| parse_retry_after(value, SystemTime::now()));
    Ok(ConnectAnswer {
        status,
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    /// Every idle connection holds its stream and its config in its task, several times
    /// over: with the proxy's TLS leg inline and the proxy settings unboxed, the memory
    /// bench's idle connection grew from 34.5 to 38.8 KiB (docs/benchmarks.md).
    #[test]
    fn a_connection_without_a_proxy_pays_nothing_for_the_proxy_support() {
        use std::mem::size_of;
        let bare = size_of::<tokio_tungstenite::MaybeTlsStream<TcpStream>>();
        let ours = size_of::<super::super::WsTransportStream>();
        assert!(ours <= bare + 256, "{ours} bytes, a bare stream {bare}");
        assert!(size_of::<Proxies>() <= 64, "{} bytes", size_of::<Proxies>());
    }

    fn no_proxy_matches(list: &str, host: &str) -> bool {
        let url = Url::parse(&format!("wss://{host}:8443/")).unwrap();
        NoProxy::parse(list).matches(&url.host().unwrap())
    }

    #[test]
    fn no_proxy_names_match_the_domain_and_its_subdomains_with_or_without_a_dot() {
        for list in ["example.com", ".example.com", "EXAMPLE.com", "example.com."] {
            assert!(no_proxy_matches(list, "example.com"), "{list}");
            assert!(no_proxy_matches(list, "api.Example.COM"), "{list}");
            assert!(no_proxy_matches(list, "a.b.example.com."), "{list}");
            assert!(!no_proxy_matches(list, "notexample.com"), "{list}");
            assert!(!no_proxy_matches(list, "example.com.evil.org"), "{list}");
            assert!(!no_proxy_matches(list, "93.184.216.34"), "{list}");
        }
    }

    #[test]
    fn no_proxy_lists_star_ports_and_blanks() {
        assert!(no_proxy_matches("*", "anything.example"));
        assert!(no_proxy_matches("*", "10.1.2.3"));
        assert!(no_proxy_matches("foo.org, *", "bar.net"));
        assert!(no_proxy_matches(" foo.org ,, bar.net ", "bar.net"));
        assert!(no_proxy_matches("foo.org bar.net", "x.bar.net"));
        assert!(no_proxy_matches("example.com:8080", "example.com"));
        assert!(no_proxy_matches("10.0.0.1:443", "10.0.0.1"));
        assert!(no_proxy_matches("[2001:db8::1]:443", "[2001:db8::1]"));
        assert!(!no_proxy_matches("", "example.com"));
        assert!(!no_proxy_matches("foo.org,bar.net", "baz.com"));
    }

    #[test]
    fn no_proxy_ips_and_cidr_ranges_v4_and_v6() {
        assert!(no_proxy_matches("10.0.0.1", "10.0.0.1"));
        assert!(!no_proxy_matches("10.0.0.1", "10.0.0.2"));
        assert!(no_proxy_matches("192.168.0.0/16", "192.168.44.5"));
        assert!(!no_proxy_matches("192.168.0.0/16", "192.169.0.1"));
        assert!(no_proxy_matches("192.168.1.77/24", "192.168.1.3"));
        assert!(no_proxy_matches("2001:db8::/32", "[2001:db8:ffff::1]"));
        assert!(!no_proxy_matches("2001:db8::/32", "[2001:db9::1]"));
        assert!(no_proxy_matches("::1", "[::1]"));
        assert!(no_proxy_matches("[fd00::5]", "[fd00::5]"));
        // An address entry is no domain suffix of a name.
        assert!(!no_proxy_matches("10.0.0.1", "host.10.0.0.1.example"));
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn chosen(proxies: &Proxies, target: &str) -> Option<String> {
        proxies
            .proxy_for(&Url::parse(target).unwrap())
            .unwrap()
            .map(|proxy| format!("{} {}", proxy.shown(), proxy.source()))
    }

    #[test]
    fn schemes_pick_their_variable_and_all_proxy_is_the_fallback() {
        let proxies = Proxies::from_vars(vars(&[
            ("http_proxy", "http://plain:3128"),
            ("HTTPS_PROXY", "http://secure:3129"),
            ("ALL_PROXY", "http://every:3130"),
        ]));
        assert_eq!(
            chosen(&proxies, "ws://example.com/").as_deref(),
            Some("http://plain:3128 http_proxy")
        );
        assert_eq!(
            chosen(&proxies, "wss://example.com/").as_deref(),
            Some("http://secure:3129 HTTPS_PROXY")
        );
        assert_eq!(
            chosen(&proxies, "https://auth.example.com/token").as_deref(),
            Some("http://secure:3129 HTTPS_PROXY")
        );
        let only_all = Proxies::from_vars(vars(&[("all_proxy", "every:3130")]));
        assert_eq!(
            chosen(&only_all, "ws://example.com/").as_deref(),
            Some("http://every:3130 all_proxy")
        );
        assert_eq!(
            chosen(&only_all, "wss://example.com/").as_deref(),
            Some("http://every:3130 all_proxy")
        );
        assert_eq!(
            chosen(&Proxies::from_vars(vars(&[])), "wss://example.com/"),
            None
        );
    }

    #[test]
    fn lowercase_wins_over_uppercase_and_empty_counts_as_unset() {
        let proxies = Proxies::from_vars(vars(&[
            ("https_proxy", "http://lower:1"),
            ("HTTPS_PROXY", "http://upper:2"),
            ("http_proxy", ""),
            ("HTTP_PROXY", "http://upper-http:3"),
            ("no_proxy", "lower.example"),
            ("NO_PROXY", "upper.example"),
        ]));
        assert_eq!(
            chosen(&proxies, "wss://example.com/").as_deref(),
            Some("http://lower:1 https_proxy")
        );
        assert_eq!(
            chosen(&proxies, "ws://example.com/").as_deref(),
            Some("http://upper-http:3 HTTP_PROXY")
        );
        assert_eq!(chosen(&proxies, "wss://lower.example/"), None);
        assert!(chosen(&proxies, "wss://upper.example/").is_some());
    }

    #[test]
    fn uppercase_http_proxy_is_ignored_in_a_cgi_program() {
        let proxies = Proxies::from_vars(vars(&[
            ("REQUEST_METHOD", "GET"),
            ("HTTP_PROXY", "http://from-a-request-header:80"),
        ]));
        assert_eq!(chosen(&proxies, "ws://example.com/"), None);
    }

    #[test]
    fn loopback_targets_bypass_the_environment_but_not_the_flag() {
        let env = Proxies::from_vars(vars(&[("all_proxy", "http://proxy:3128")]));
        for target in [
            "ws://localhost:9/",
            "ws://LOCALHOST.:9/",
            "wss://127.0.0.1/",
            "wss://127.9.9.9/",
            "ws://[::1]:8/",
            "http://localhost/token",
        ] {
            assert_eq!(chosen(&env, target), None, "{target}");
        }
        let forced = Proxies::forced("http://proxy:3128").unwrap();
        assert_eq!(
            chosen(&forced, "ws://127.0.0.1:9/").as_deref(),
            Some("http://proxy:3128 --proxy")
        );
        // --proxy overrides the environment, NO_PROXY included.
        assert!(Proxies::direct()
            .proxy_for(&Url::parse("wss://example.com/").unwrap())
            .unwrap()
            .is_none());
    }

    #[test]
    fn no_proxy_applies_to_environment_proxies() {
        let proxies = Proxies::from_vars(vars(&[
            ("https_proxy", "http://proxy:3128"),
            ("no_proxy", ".internal.example,10.0.0.0/8"),
        ]));
        assert_eq!(chosen(&proxies, "wss://api.internal.example/"), None);
        assert_eq!(chosen(&proxies, "wss://10.2.3.4/"), None);
        assert!(chosen(&proxies, "wss://example.com/").is_some());
    }

    #[test]
    fn proxy_urls_parse_as_curl_does_and_hide_their_credentials() {
        let proxy = ProxyUrl::parse(
            "http://user%40corp:s3cret%21pw@proxy.example:3128/x",
            "--proxy",
        )
        .unwrap();
        assert_eq!(proxy.shown(), "http://proxy.example:3128");
        let expected = base64::engine::general_purpose::STANDARD.encode("user@corp:s3cret!pw");
        assert_eq!(
            proxy.authorization.as_ref().unwrap().to_str().unwrap(),
            format!("Basic {expected}")
        );
        assert!(proxy.authorization.as_ref().unwrap().is_sensitive());
        let debug = format!("{proxy:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains(&expected),
            "{debug}"
        );
        assert_eq!(
            proxy.url_with_credentials().as_str(),
            "http://user%40corp:s3cret%21pw@proxy.example:3128/"
        );

        assert_eq!(
            ProxyUrl::parse("proxy.example", "x").unwrap().shown(),
            "http://proxy.example:1080"
        );
        assert_eq!(
            ProxyUrl::parse("https://proxy.example", "x")
                .unwrap()
                .shown(),
            "https://proxy.example:443"
        );
        assert_eq!(
            ProxyUrl::parse("http://[::1]:8", "x").unwrap().shown(),
            "http://[::1]:8"
        );
        assert!(!ProxyUrl::parse("http://p:1", "x")
            .unwrap()
            .has_credentials());

        for bad in [
            "socks5://user:s3cret@p:1080",
            "http://user:s3cret@",
            "http://user:s3cret@:99999",
        ] {
            let err = ProxyUrl::parse(bad, "ALL_PROXY").unwrap_err().to_string();
            assert!(err.contains("ALL_PROXY"), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn an_unusable_variable_is_an_error_only_for_targets_that_would_use_it() {
        let proxies = Proxies::from_vars(vars(&[
            ("https_proxy", "socks5://user:s3cret@p:1080"),
            ("no_proxy", "internal.example"),
        ]));
        let err = proxies
            .proxy_for(&Url::parse("wss://example.com/").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("https_proxy") && err.contains("socks5"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        assert_eq!(chosen(&proxies, "ws://example.com/"), None);
        assert_eq!(chosen(&proxies, "wss://localhost/"), None);
        assert_eq!(chosen(&proxies, "wss://internal.example/"), None);
    }

    #[test]
    fn the_connect_request_names_the_target_and_carries_the_credentials() {
        let proxy = ProxyUrl::parse("http://u:p@proxy:1", "--proxy").unwrap();
        let request = connect_request("example.com:443", proxy.authorization.as_ref());
        let text = String::from_utf8(request).unwrap();
        assert!(
            text.starts_with("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\nProxy-Authorization: Basic dTpw\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"));
        let text = String::from_utf8(connect_request("[::1]:8", None)).unwrap();
        assert!(!text.contains("Proxy-Authorization"));
    }

    #[tokio::test]
    async fn response_heads_are_bounded_and_parsed() {
        let mut ok: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\ntunnel bytes";
        let head = read_head(&mut ok).await.ok().unwrap();
        assert_eq!(parse_answer(&head).unwrap().status, 200);
        assert_eq!(ok, b"tunnel bytes", "bytes after the head were taken");

        let busy =
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n";
        let answer = parse_answer(busy).unwrap();
        assert_eq!(answer.status, 503);
        assert_eq!(answer.retry_after, Some(Duration::from_secs(7)));

        let endless = vec![b'a'; MAX_PROXY_HEAD_BYTES * 4];
        let mut endless = endless.as_slice();
        assert!(matches!(
            read_head(&mut endless).await,
            Err(HeadError::Malformed(_))
        ));

        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for n in 0..=MAX_PROXY_HEADERS {
            many.extend_from_slice(format!("X-{n}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(parse_answer(&many).unwrap_err().contains("header lines"));

        assert!(parse_answer(b"\x15\x03\x03\x00\x02\x02\x0a\r\n\r\n")
            .unwrap_err()
            .contains("not HTTP"));
        let mut cut: &[u8] = b"HTTP/1.1 200 OK\r\n";
        assert!(matches!(read_head(&mut cut).await, Err(HeadError::Closed)));
    }
}
