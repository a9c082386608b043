//! An in-process HTTP `CONNECT` proxy for the proxy tests: it records each request line
//! and its headers, and answers connection N with step N of its script (the last step
//! repeats): open the tunnel and relay, answer a status (407, 403, 502 with
//! `Retry-After`, …), send raw bytes, or never answer.
//!
//! Host names ending in `.invalid` (which no resolver knows, RFC 6761) are reached at
//! 127.0.0.1: a target only this proxy can resolve proves that the CONNECT named the
//! host and that wsup did not try to resolve it itself.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::BOUND;

/// What the proxy does with one connection.
#[derive(Debug, Clone)]
pub enum ProxyStep {
    /// `200 Connection established`, then relay bytes both ways.
    Tunnel,
    /// Answer with this status and these headers, then close.
    Status(u16, Vec<(&'static str, String)>),
    /// Send these bytes as the answer, then close.
    Raw(Vec<u8>),
    /// Read the request, never answer.
    Hang,
}

/// One request the proxy received: its request line and headers (names lowercase).
#[derive(Debug, Clone)]
pub struct ProxyRequest {
    pub line: String,
    pub headers: Vec<(String, String)>,
}

impl ProxyRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Proxy {
    port: u16,
    scheme: &'static str,
    requests: watch::Receiver<Vec<ProxyRequest>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Proxy {
    pub async fn start(script: Vec<ProxyStep>) -> Proxy {
        Proxy::start_with(script, None).await
    }

    /// An `https://` proxy: TLS (the `localhost` test certificate, signed by
    /// `tests/fixtures/ca.pem`) before the `CONNECT`.
    pub async fn start_tls(script: Vec<ProxyStep>) -> Proxy {
        let fixture = |name: &str| {
            std::path::PathBuf::from(format!(
                "{}/tests/fixtures/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
        };
        let acceptor = wsup::serve::tls_acceptor(
            &fixture("localhost-cert.pem"),
            &fixture("localhost-key.pem"),
        )
        .expect("the test certificate");
        Proxy::start_with(script, Some(acceptor)).await
    }

    async fn start_with(script: Vec<ProxyStep>, tls: Option<tokio_rustls::TlsAcceptor>) -> Proxy {
        assert!(!script.is_empty());
        let tls_used = tls.is_some();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let (record, requests) = watch::channel(Vec::new());
        let record = Arc::new(record);
        let next = Arc::new(Mutex::new(0usize));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let step = {
                    let mut n = next.lock().unwrap();
                    let step = script[(*n).min(script.len() - 1)].clone();
                    *n += 1;
                    step
                };
                let record = record.clone();
                match tls.clone() {
                    None => drop(tokio::spawn(serve_one(client, step, record))),
                    Some(acceptor) => drop(tokio::spawn(async move {
                        if let Ok(client) = acceptor.accept(client).await {
                            serve_one(client, step, record).await;
                        }
                    })),
                }
            }
        });
        Proxy {
            port,
            scheme: if tls_used { "https" } else { "http" },
            requests,
            accept,
        }
    }

    pub async fn always(step: ProxyStep) -> Proxy {
        Proxy::start(vec![step]).await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` (`https://` for [`Proxy::start_tls`])
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// `http://USERINFO@127.0.0.1:PORT`
    pub fn url_with_userinfo(&self, userinfo: &str) -> String {
        format!("{}://{userinfo}@127.0.0.1:{}", self.scheme, self.port)
    }

    pub fn requests(&self) -> Vec<ProxyRequest> {
        self.requests.borrow().clone()
    }

    /// Waits until `count` requests have arrived.
    pub async fn wait_requests(&self, count: usize) -> Vec<ProxyRequest> {
        let mut requests = self.requests.clone();
        let reached = tokio::time::timeout(BOUND, requests.wait_for(|r| r.len() >= count)).await;
        match reached {
            Ok(Ok(seen)) => seen.clone(),
            _ => panic!(
                "the proxy did not get {count} requests within {BOUND:?}: {:?}",
                self.requests()
            ),
        }
    }
}

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    step: ProxyStep,
    record: Arc<watch::Sender<Vec<ProxyRequest>>>,
) {
    let Some(request) = read_request(&mut client).await else {
        return;
    };
    let target = request
        .line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_string();
    record.send_modify(|all| all.push(request));
    match step {
        ProxyStep::Tunnel => {
            let Some(mut upstream) = connect_target(&target).await else {
                let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                return;
            };
            if client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        ProxyStep::Status(status, headers) => {
            let mut answer = format!("HTTP/1.1 {status} Proxy Says No\r\n");
            for (name, value) in headers {
                answer.push_str(&format!("{name}: {value}\r\n"));
            }
            answer.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = client.write_all(answer.as_bytes()).await;
        }
        ProxyStep::Raw(bytes) => {
            let _ = client.write_all(&bytes).await;
        }
        ProxyStep::Hang => {
            let mut sink = [0u8; 1024];
            while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    }
}

/// The request head, up to 64 KiB.
async fn read_request<S: AsyncRead + Unpin>(client: &mut S) -> Option<ProxyRequest> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 << 10 || client.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let line = lines.next()?.to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(ProxyRequest { line, headers })
}

/// `host:port` from a CONNECT line; `.invalid` names go to 127.0.0.1.
async fn connect_target(target: &str) -> Option<TcpStream> {
    let (host, port) = target.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.ends_with(".invalid") {
        "127.0.0.1"
    } else {
        host
    };
    TcpStream::connect((host, port)).await.ok()
}
