//! Issue 10, items 6 and 7: a host name that does not exist, and `ws://` / `wss://`
//! mix-ups, stop at once with exit 69 and words that say what to change in the URL.
//!
//! The real binary against servers on loopback: `wsup serve` as a child process, a raw
//! plain-HTTP server and a TLS websocket server (the localhost fixtures).

mod support;

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::{Wsup, BOUND, FAST};

fn connect(url: &str) -> Wsup {
    let mut args = vec!["connect", url];
    args.extend_from_slice(FAST);
    Wsup::spawn(args)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

// ---------------------------------------------------------------- host not found

#[tokio::test]
async fn a_host_that_does_not_exist_stops_at_once_with_69() {
    // `.invalid` never resolves (RFC 6761): this machine's resolver answers NXDOMAIN
    // (getaddrinfo: EAI_NONAME). A machine with no reachable resolver at all answers
    // EAI_AGAIN instead, which stays transient by design.
    let finished = connect("ws://no-such-host.invalid/")
        .finish_within(BOUND)
        .await;
    finished
        .assert_code(69)
        .assert_stderr_contains("host not found: no-such-host.invalid \u{2014} check the URL")
        .assert_stderr_lacks("retrying in");
}

// ---------------------------------------------------------------- wss:// to plain HTTP

#[tokio::test]
async fn wss_to_wsup_serve_says_use_ws() {
    let serve = Wsup::spawn(["serve", "--listen", "127.0.0.1:0", "--script", "echo"]);
    let url = serve.first_stdout_line().await;
    let wss = url.replacen("ws://", "wss://", 1);
    assert!(wss.starts_with("wss://127.0.0.1:"), "serve printed {url:?}");

    let finished = connect(&wss).finish_within(BOUND).await;
    finished
        .assert_code(69)
        .assert_stderr_contains("the server speaks plain HTTP here: use ws://")
        .assert_stderr_lacks("--ca-cert")
        .assert_stderr_lacks("retrying in");
    serve.signal("TERM");
    serve.finish().await.assert_code(143);
}

#[tokio::test]
async fn wss_to_a_plain_http_server_answering_400_says_use_ws() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        // Whatever arrived (a ClientHello), a plain HTTP server answers 400 and closes.
        let mut buffer = [0u8; 1024];
        let _ = stream.read(&mut buffer).await;
        let _ = stream
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
                  Content-Length: 12\r\nConnection: close\r\n\r\nbad request\n",
            )
            .await;
        let _ = stream.shutdown().await;
    });

    let finished = connect(&format!("wss://{addr}/"))
        .finish_within(BOUND)
        .await;
    finished
        .assert_code(69)
        .assert_stderr_contains("the server speaks plain HTTP here: use ws://")
        .assert_stderr_lacks("--ca-cert");
    server.await.unwrap();
}

// ---------------------------------------------------------------- ws:// to TLS

/// The test server's certificate (tests/fixtures), as `wsup serve --tls-cert` loads it.
fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    wsup::serve::tls_acceptor(
        &fixture("localhost-cert.pem"),
        &fixture("localhost-key.pem"),
    )
    .expect("the fixtures load")
}

#[tokio::test]
async fn ws_to_a_tls_websocket_server_says_use_wss() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls_acceptor();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // rustls answers the plain "GET / HTTP/1.1" with a TLS alert and fails.
        let accepted = acceptor.accept(stream).await;
        assert!(accepted.is_err(), "a plain HTTP request passed as TLS");
    });

    let finished = connect(&format!("ws://{addr}/")).finish_within(BOUND).await;
    finished
        .assert_code(69)
        .assert_stderr_contains("the server speaks TLS here: use wss://")
        .assert_stderr_lacks("retrying in");
    server.await.unwrap();
}
