#![allow(clippy::result_large_err)] // tungstenite's handshake callback returns its own large error type
//! Transport: settings checks, and dials against real loopback servers.
//!
//! TLS fixtures (tests/fixtures/) were made once with the openssl CLI; the crate itself
//! never links OpenSSL:
//!
//! ```text
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500 \
//!   -subj "/CN=wsup test CA" -addext basicConstraints=critical,CA:TRUE \
//!   -addext keyUsage=critical,keyCertSign,cRLSign -keyout ca-key.pem -out ca.pem
//! openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
//!   -subj /CN=localhost -keyout localhost-key.pem -out localhost.csr
//! openssl x509 -req -in localhost.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
//!   -days 36500 -out localhost-cert.pem -extfile <(printf '%s\n' \
//!   basicConstraints=critical,CA:FALSE keyUsage=critical,digitalSignature \
//!   extendedKeyUsage=serverAuth subjectAltName=DNS:localhost,IP:127.0.0.1)
//! ```
//! (`ca-key.pem` was then deleted.) The server presents a certificate that no public or
//! system root trusts; `ca.pem` is what `--ca-cert` would be given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;
use wsup::classify::{Failure, NetworkKind};
use wsup::transport::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn transport(connect_timeout: Duration) -> Transport {
    Transport::new(TransportConfig {
        connect_timeout,
        ..TransportConfig::default()
    })
    .unwrap()
}

fn url(text: &str) -> url::Url {
    parse_ws_url(text).unwrap()
}

fn kind_of(failure: &Failure) -> Option<NetworkKind> {
    match failure {
        Failure::Network { kind, .. } => Some(*kind),
        _ => None,
    }
}

// ---------------------------------------------------------------- settings

#[test]
fn good_urls_parse() {
    let u = url("ws://example.com/socket?x=1");
    assert_eq!(u.scheme(), "ws");
    assert_eq!(u.host_str(), Some("example.com"));
    assert_eq!(u.port_or_known_default(), Some(80));
    let u = url("wss://gateway.example.com:8443/v1/shell");
    assert_eq!(u.scheme(), "wss");
    assert_eq!(u.port_or_known_default(), Some(8443));
    assert_eq!(url("wss://example.com").port_or_known_default(), Some(443));
    assert_eq!(url("ws://[::1]:9000/").host_str(), Some("[::1]"));
    assert_eq!(url("  ws://127.0.0.1:1/  ").as_str(), "ws://127.0.0.1:1/");
}

#[test]
fn other_schemes_are_rejected_by_name() {
    for (text, scheme) in [
        ("http://example.com/", "http"),
        ("https://example.com/", "https"),
        ("ftp://example.com/", "ftp"),
    ] {
        let err = parse_ws_url(text).unwrap_err();
        assert!(
            matches!(&err, UsageError::UnsupportedScheme { scheme: s, .. } if s == scheme),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(&format!("'{scheme}'")), "{message}");
        assert!(
            message.contains("ws://") && message.contains("wss://"),
            "{message}"
        );
    }
}

#[test]
fn garbage_and_hostless_urls_are_rejected() {
    for text in ["", "not a url", "example.com/socket", "ws://", "ws://:80/"] {
        let err = parse_ws_url(text).unwrap_err();
        assert!(
            matches!(err, UsageError::InvalidUrl { .. }),
            "{text}: {err:?}"
        );
        let message = err.to_string();
        assert!(message.starts_with("invalid URL '"), "{message}");
        assert!(
            message.contains("expected ws://host[:port]/path"),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }
}

#[test]
fn credentials_and_fragments_in_urls_are_rejected_without_echoing_the_password() {
    let err = parse_ws_url("wss://alice:hunter2@example.com/").unwrap_err();
    let message = err.to_string();
    assert!(message.contains("credentials in the URL"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(!format!("{err:?}").contains("hunter2"));
    let err = parse_ws_url("ws://example.com/a#b").unwrap_err();
    assert!(err.to_string().contains("#fragment"), "{err}");
}

#[test]
fn loopback_hosts() {
    for text in [
        "ws://localhost/",
        "ws://LOCALHOST:8080/",
        "ws://127.0.0.1/",
        "ws://127.0.0.5/",
        "ws://[::1]/",
    ] {
        assert!(is_loopback(&url(text)), "{text}");
    }
    for text in [
        "ws://example.com/",
        "ws://10.0.0.1/",
        "ws://128.0.0.1/",
        "ws://[::2]/",
        "ws://localhost.example.com/",
    ] {
        assert!(!is_loopback(&url(text)), "{text}");
    }
}

#[test]
fn credentials_need_wss_or_loopback_or_allow_insecure() {
    // (url, sends credentials, allow insecure, allowed)
    let matrix = [
        ("ws://example.com/", true, false, false),
        ("ws://10.0.0.1/", true, false, false),
        ("ws://example.com/", true, true, true),
        ("ws://example.com/", false, false, true),
        ("wss://example.com/", true, false, true),
        ("wss://10.0.0.1/", true, false, true),
        ("ws://localhost:8080/", true, false, true),
        ("ws://127.0.0.5/", true, false, true),
        ("ws://[::1]/", true, false, true),
    ];
    for (text, sends, insecure, allowed) in matrix {
        let result = check_secure_for_credentials(&url(text), sends, insecure);
        assert_eq!(
            result.is_ok(),
            allowed,
            "{text} {sends} {insecure}: {result:?}"
        );
        if let Err(err) = result {
            assert!(matches!(err, UsageError::InsecureCredentials { .. }));
            let message = err.to_string();
            assert!(message.contains("wss://"), "{message}");
            assert!(message.contains("--allow-insecure"), "{message}");
        }
    }
}

#[test]
fn headers_parse() {
    let (name, value) = parse_header("X-Request-Id: abc 123").unwrap();
    assert_eq!(name.as_str(), "x-request-id");
    assert_eq!(value, "abc 123");
    let (name, value) = parse_header("  Authorization:\tBearer tok  ").unwrap();
    assert_eq!(name, http::header::AUTHORIZATION);
    assert_eq!(value, "Bearer tok");
    assert!(value.is_sensitive());
    assert!(is_credential_header(&name));
    // Only the first colon separates.
    let (_, value) = parse_header("X-Url: http://a:b/").unwrap();
    assert_eq!(value, "http://a:b/");
    let (_, value) = parse_header("X-Empty:").unwrap();
    assert_eq!(value, "");
}

#[test]
fn bad_headers_are_rejected_without_echoing_the_value() {
    for text in [
        "no colon here",
        ": value",
        "Bad Name: v",
        "Bad\"Name: v",
        "X-Smuggle: secret\r\nX-Evil: 1",
        "Authorization: Bearer secret\nX-Evil: 1",
        "X-Nul: secret\0",
        "Connection: close",
        "Sec-WebSocket-Key: secret",
    ] {
        let err = parse_header(text).unwrap_err();
        assert!(
            matches!(err, UsageError::InvalidHeader { .. }),
            "{text:?}: {err:?}"
        );
        let message = err.to_string();
        assert!(!message.contains("secret"), "{message}");
        assert!(!message.contains("Evil"), "{message}");
        assert!(
            !message.contains('\n') && !message.contains('\r'),
            "{message}"
        );
        assert!(message.contains("'Name: value'"), "{message}");
    }
}

#[test]
fn ca_cert_errors_name_the_file() {
    let missing = Path::new("/nonexistent/wsup/ca.pem");
    let err = load_ca_certs(missing).unwrap_err();
    assert!(matches!(err, UsageError::CaCertFile { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/wsup/ca.pem"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-cert.txt");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let err = load_ca_certs(&not_pem).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("not-a-cert.txt"), "{message}");
    assert!(message.contains("no certificate"), "{message}");

    // A private key is PEM, but not a certificate.
    let err = load_ca_certs(&fixture("localhost-key.pem")).unwrap_err();
    assert!(err.to_string().contains("no certificate"), "{err}");

    assert_eq!(load_ca_certs(&fixture("ca.pem")).unwrap().len(), 1);
}

#[test]
fn debug_output_never_shows_header_values() {
    let config = TransportConfig {
        headers: vec![parse_header("Authorization: Bearer s3cr3t-token").unwrap()],
        ..TransportConfig::default()
    };
    let shown = format!("{config:?}");
    assert!(shown.contains("authorization"), "{shown}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    let transport = Transport::new(config).unwrap();
    let shown = format!("{transport:?}");
    assert!(shown.contains("authorization"), "{shown}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
}

// ---------------------------------------------------------------- dialing

/// A websocket server for one connection: reports the upgrade request's headers, then
/// echoes one message.
async fn recording_server() -> (SocketAddr, oneshot::Receiver<http::HeaderMap>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let record = |request: &Request, response: Response| {
            let _ = tx.send(request.headers().clone());
            Ok(response)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(stream, record)
            .await
            .unwrap();
        if let Some(Ok(message)) = ws.next().await {
            let _ = ws.send(message).await;
        }
    });
    (addr, rx)
}

/// Answers the upgrade with `status` and these headers.
async fn refusing_server(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let refuse = move |_: &Request, _: Response| {
            let mut response = ErrorResponse::new(None);
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            for (name, value) in headers {
                response
                    .headers_mut()
                    .insert(*name, http::HeaderValue::from_static(value));
            }
            Err(response)
        };
        let _ = tokio_tungstenite::accept_hdr_async(stream, refuse).await;
    });
    addr
}

async fn echo_once(ws: &mut WsStream, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply, Message::text(text));
}

#[tokio::test]
async fn dial_to_a_closed_port_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let failure = transport(Duration::from_secs(5))
        .dial(&url(&format!("ws://{addr}/")), None)
        .await
        .unwrap_err();
    assert_eq!(kind_of(&failure), Some(NetworkKind::Refused), "{failure:?}");
    assert!(failure.to_string().contains(&addr.to_string()), "{failure}");
}

#[tokio::test]
async fn dial_to_a_silent_listener_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (release, held) = oneshot::channel::<()>();
    tokio::spawn(async move {
        // Accept and hold the connection, never answering, until the test is done.
        let (_stream, _) = listener.accept().await.unwrap();
        let _ = held.await;
    });
    let started = Instant::now();
    let failure = transport(Duration::from_millis(300))
        .dial(&url(&format!("ws://{addr}/")), None)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    drop(release);
    assert_eq!(
        kind_of(&failure),
        Some(NetworkKind::ConnectTimeout),
        "{failure:?}"
    );
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    let message = failure.to_string();
    assert!(message.contains("300 ms"), "{message}");
    assert!(message.contains("websocket upgrade"), "{message}");
}

#[tokio::test]
async fn dial_sends_custom_headers_and_authorization() {
    let (addr, headers) = recording_server().await;
    let transport = Transport::new(TransportConfig {
        headers: vec![
            parse_header("X-Client: wsup-test").unwrap(),
            parse_header("Authorization: Basic overridden").unwrap(),
        ],
        ..TransportConfig::default()
    })
    .unwrap();
    let mut ws = transport
        .dial(
            &url(&format!("ws://{addr}/shell?tty_width=80")),
            Some("Bearer abc"),
        )
        .await
        .unwrap();
    let headers = headers.await.unwrap();
    assert_eq!(headers["x-client"], "wsup-test");
    assert_eq!(headers["authorization"], "Bearer abc");
    assert_eq!(headers.get_all("authorization").iter().count(), 1);
    echo_once(&mut ws, "hello").await;
}

#[tokio::test]
async fn dial_without_authorization_sends_the_user_header() {
    let (addr, headers) = recording_server().await;
    let transport = Transport::new(TransportConfig {
        headers: vec![parse_header("Authorization: Basic dXNlcjpwdw==").unwrap()],
        ..TransportConfig::default()
    })
    .unwrap();
    let mut ws = transport
        .dial(&url(&format!("ws://{addr}/")), None)
        .await
        .unwrap();
    assert_eq!(
        headers.await.unwrap()["authorization"],
        "Basic dXNlcjpwdw=="
    );
    echo_once(&mut ws, "hi").await;
}

#[tokio::test]
async fn http_503_with_retry_after() {
    let addr = refusing_server(503, &[("retry-after", "3")]).await;
    let failure = transport(Duration::from_secs(5))
        .dial(&url(&format!("ws://{addr}/")), None)
        .await
        .unwrap_err();
    assert_eq!(
        failure,
        Failure::Http {
            status: 503,
            retry_after: Some(Duration::from_secs(3))
        }
    );
}

#[tokio::test]
async fn http_401_never_leaks_the_token() {
    let addr = refusing_server(401, &[("www-authenticate", "Bearer")]).await;
    let failure = transport(Duration::from_secs(5))
        .dial(
            &url(&format!("ws://{addr}/")),
            Some("Bearer top-secret-token"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        failure,
        Failure::Http {
            status: 401,
            retry_after: None
        }
    );
    assert!(!format!("{failure:?} {failure}").contains("top-secret"));
}

#[tokio::test]
async fn unknown_host_is_host_not_found() {
    // `.invalid` never resolves (RFC 6761): the resolver answers NXDOMAIN (EAI_NONAME).
    // A machine with no reachable resolver at all would answer EAI_AGAIN instead (`Dns`).
    let failure = transport(Duration::from_secs(20))
        .dial(&url("ws://wsup-test.invalid/"), None)
        .await
        .unwrap_err();
    assert_eq!(
        kind_of(&failure),
        Some(NetworkKind::HostNotFound),
        "{failure:?}"
    );
    assert_eq!(
        failure.to_string(),
        "host not found: wsup-test.invalid \u{2014} check the URL"
    );
}

// ---------------------------------------------------------------- TLS

/// The test server's certificate (tests/fixtures), as `wsup serve --tls-cert` loads it.
fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    wsup::serve::tls_acceptor(
        &fixture("localhost-cert.pem"),
        &fixture("localhost-key.pem"),
    )
    .expect("the fixtures load")
}

/// A wss server for one connection: `serve` gets the websocket once the TLS and
/// websocket handshakes are done (nothing, when the client rejects our certificate).
async fn tls_server_once<F, Fut>(serve: F) -> SocketAddr
where
    F: FnOnce(
            tokio_tungstenite::WebSocketStream<
                tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
            >,
        ) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls_acceptor();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let Ok(tls) = acceptor.accept(stream).await else {
            return; // the client rejected our certificate
        };
        serve(tokio_tungstenite::accept_async(tls).await.unwrap()).await;
    });
    addr
}

/// A wss server for one connection that echoes one message.
async fn tls_echo_server() -> SocketAddr {
    tls_server_once(|mut ws| async move {
        if let Some(Ok(message)) = ws.next().await {
            let _ = ws.send(message).await;
        }
    })
    .await
}

#[tokio::test]
async fn untrusted_certificate_is_a_tls_failure() {
    let addr = tls_echo_server().await;
    let failure = transport(Duration::from_secs(5))
        .dial(&url(&format!("wss://{addr}/")), Some("Bearer abc"))
        .await
        .unwrap_err();
    match &failure {
        Failure::Tls(detail) => {
            assert!(detail.contains("UnknownIssuer"), "{detail}");
            assert!(detail.contains("--ca-cert"), "{detail}");
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
}

fn trusting_transport() -> Transport {
    Transport::new(TransportConfig {
        connect_timeout: Duration::from_secs(5),
        extra_ca_certs: load_ca_certs(&fixture("ca.pem")).unwrap(),
        ..TransportConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn extra_ca_certificate_is_trusted() {
    let addr = tls_echo_server().await;
    let mut ws = trusting_transport()
        .dial(&url(&format!("wss://{addr}/")), None)
        .await
        .unwrap();
    assert!(matches!(
        ws.get_ref().get_ref().get_ref(),
        tokio_tungstenite::MaybeTlsStream::Rustls(_)
    ));
    echo_once(&mut ws, "over tls").await;
}

#[tokio::test]
async fn wss_by_host_name_checks_the_name_and_tries_every_address() {
    // `localhost` may resolve to ::1 first, where nothing listens: the dial must go on to
    // 127.0.0.1, and the certificate must match the name.
    let addr = tls_echo_server().await;
    let mut ws = trusting_transport()
        .dial(&url(&format!("wss://localhost:{}/", addr.port())), None)
        .await
        .unwrap();
    echo_once(&mut ws, "by name").await;
}

/// A TLS server that sends a large message, then closes with `code` and `reason`.
async fn tls_closing_server(code: u16, reason: &'static str) -> SocketAddr {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    tls_server_once(move |mut ws| async move {
        let _ = ws.send(Message::binary(vec![0x88; 100_000])).await;
        let frame = CloseFrame {
            code: code.into(),
            reason: reason.into(),
        };
        let _ = ws.send(Message::Close(Some(frame))).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await
}

#[tokio::test]
async fn over_tls_the_close_code_the_server_sent_is_seen_through_tungstenites_rewrite() {
    let addr = tls_closing_server(1014, "r1014").await;
    let mut ws = trusting_transport()
        .dial(&url(&format!("wss://localhost:{}/", addr.port())), None)
        .await
        .unwrap();
    let frame = loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    // tungstenite's view: 1014 is not "allowed", so it says 1002.
    assert_eq!(frame.as_ref().map(|f| u16::from(f.code)), Some(1002));
    // The observer, on the decrypted side, saw what the server sent.
    let wire = ws.get_ref().received_close().cloned();
    assert_eq!(
        wire,
        Some(WireClose {
            code: 1014,
            reason: "r1014".into()
        })
    );
    assert_eq!(
        failure_from_received_close(frame.as_ref(), wire.as_ref()),
        Failure::Close {
            code: 1014,
            reason: "r1014".into()
        }
    );
}
