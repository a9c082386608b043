//! `wsup::serve` against a real tokio-tungstenite client on loopback.

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};
use wsup::serve::{start, Script, ServeOptions, ServerHandle};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upper bound for anything that should happen at once, so that a broken server fails the
/// test instead of hanging it.
const PROMPTLY: Duration = Duration::from_secs(5);

/// How long a client waits before concluding that the server will never answer.
const NO_ANSWER: Duration = Duration::from_millis(300);

async fn promptly<F: Future>(future: F) -> F::Output {
    timeout(PROMPTLY, future)
        .await
        .expect("the server should have answered by now")
}

async fn serve(script: &str, require_token: Option<&str>) -> ServerHandle {
    let script: Script = script.parse().expect("valid script");
    let mut options = ServeOptions::new("127.0.0.1:0".parse().unwrap(), script);
    options.require_token = require_token.map(str::to_owned);
    start(options).await.expect("server starts")
}

async fn connect(server: &ServerHandle, token: Option<&str>) -> Result<Client, tungstenite::Error> {
    let mut request = server.ws_url().into_client_request().unwrap();
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        request.headers_mut().insert("Authorization", value);
    }
    promptly(connect_async(request))
        .await
        .map(|(client, _)| client)
}

/// The HTTP response that refused the upgrade.
fn refusal(
    result: Result<Client, tungstenite::Error>,
) -> tungstenite::http::Response<Option<Vec<u8>>> {
    match result {
        Err(tungstenite::Error::Http(response)) => *response,
        Err(other) => panic!("expected an HTTP refusal, got {other:?}"),
        Ok(_) => panic!("expected an HTTP refusal, got an upgrade"),
    }
}

/// The code and reason of the next message, which must be a close frame.
async fn expect_close(client: &mut Client) -> (CloseCode, String) {
    match promptly(client.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => (frame.code, frame.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

async fn expect_echo(client: &mut Client, text: &str) {
    client.send(Message::text(text)).await.unwrap();
    match promptly(client.next()).await {
        Some(Ok(Message::Text(echoed))) => assert_eq!(echoed.as_str(), text),
        other => panic!("expected the echo of {text:?}, got {other:?}"),
    }
}

/// Posts a form to the token endpoint; returns the status and the body.
async fn post_token_form(server: &ServerHandle, body: &str) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST /oauth/token HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        server.addr,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    // The server closes the connection after every token response.
    promptly(stream.read_to_string(&mut response))
        .await
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("complete response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .expect("status line");
    let body = serde_json::from_str(body).expect("JSON body");
    (status, body)
}

#[tokio::test]
async fn close_step_sends_its_code_and_reason() {
    let server = serve("close:1011:No shell-agent listening: cluster 7", None).await;
    let mut client = connect(&server, None).await.unwrap();
    let (code, reason) = expect_close(&mut client).await;
    assert_eq!(code, CloseCode::Error);
    assert_eq!(reason, "No shell-agent listening: cluster 7");
    // The client's close reply completes the handshake and the server ends the connection.
    assert!(promptly(client.next()).await.is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn close_1006_drops_the_connection_without_a_close_frame() {
    let server = serve("close:1006", None).await;
    let mut client = connect(&server, None).await.unwrap();
    match promptly(client.next()).await {
        Some(Err(_)) | None => {}
        other => panic!("expected the connection to end without a close frame, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn http_step_answers_with_its_status_and_retry_after() {
    let server = serve("http:503:7", None).await;
    let response = refusal(connect(&server, None).await);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(server.stats().upgrades, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn http_step_without_retry_after_sends_none() {
    let server = serve("http:404", None).await;
    let response = refusal(connect(&server, None).await);
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.headers().get("retry-after").is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn echo_step_echoes_text_and_binary_and_answers_a_close() {
    let server = serve("echo", None).await;
    let mut client = connect(&server, None).await.unwrap();
    expect_echo(&mut client, "hello").await;
    expect_echo(&mut client, "").await;
    client
        .send(Message::binary(vec![0u8, 1, 255]))
        .await
        .unwrap();
    match promptly(client.next()).await {
        Some(Ok(Message::Binary(data))) => assert_eq!(&data[..], &[0, 1, 255]),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    client.close(None).await.unwrap();
    // The server's close reply arrives, then the stream ends.
    loop {
        match promptly(client.next()).await {
            Some(Ok(Message::Close(_))) => {}
            None => break,
            other => panic!("expected the close reply, got {other:?}"),
        }
    }
    let stats = server.stats();
    assert_eq!(stats.received, vec!["hello".to_owned(), String::new()]);
    assert_eq!(stats.messages_echoed, 3);
    assert_eq!((stats.connections, stats.upgrades), (1, 1));
    server.shutdown().await;
}

#[tokio::test]
async fn the_last_step_repeats() {
    let server = serve("close:4001:first,http:503,close:4003:last", None).await;
    let mut first = connect(&server, None).await.unwrap();
    assert_eq!(expect_close(&mut first).await.1, "first");
    assert_eq!(refusal(connect(&server, None).await).status(), 503);
    for _ in 0..3 {
        let mut client = connect(&server, None).await.unwrap();
        assert_eq!(
            expect_close(&mut client).await,
            (CloseCode::from(4003), "last".to_owned())
        );
    }
    assert_eq!(server.stats().connections, 5);
    server.shutdown().await;
}

#[tokio::test]
async fn required_token_missing_or_wrong_is_401_and_consumes_no_step() {
    let server = serve("close:4001:first,echo", Some("secret")).await;
    let response = refusal(connect(&server, None).await);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = refusal(connect(&server, Some("wrong")).await);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // The refused requests did not use up the first step.
    let mut client = connect(&server, Some("secret")).await.unwrap();
    assert_eq!(expect_close(&mut client).await.1, "first");

    let stats = server.stats();
    assert_eq!(stats.connections, 3);
    assert_eq!(stats.unauthorized, 2);
    assert_eq!(stats.auth_headers_seen, 2);
    assert_eq!(stats.upgrades, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn an_issued_token_replaces_the_old_one() {
    let server = serve("echo", Some("initial")).await;
    let (status, body) =
        post_token_form(&server, "grant_type=refresh_token&refresh_token=rt-0").await;
    assert_eq!(status, 200);
    assert_eq!(body["access_token"], "tok-1");
    assert_eq!(body["refresh_token"], "rt-1");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["token_type"], "Bearer");

    let mut client = connect(&server, Some("tok-1")).await.unwrap();
    expect_echo(&mut client, "fresh").await;
    let response = refusal(connect(&server, Some("initial")).await);
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let stats = server.stats();
    assert_eq!((stats.token_requests, stats.tokens_issued), (1, 1));
    // The token endpoint does not consume steps: the only admitted request got step 1.
    assert_eq!(stats.connections, 2);
    server.shutdown().await;
}

#[tokio::test]
async fn token_ttl_is_the_expires_in() {
    let mut options = ServeOptions::new("127.0.0.1:0".parse().unwrap(), "echo".parse().unwrap());
    options.token_ttl = Duration::from_secs(90);
    let server = start(options).await.unwrap();
    let (status, body) = post_token_form(&server, "grant_type=refresh_token&refresh_token=x").await;
    assert_eq!(status, 200);
    assert_eq!(body["expires_in"], 90);
    server.shutdown().await;
}

#[tokio::test]
async fn revoked_or_malformed_refresh_is_400() {
    let server = serve("echo", Some("initial")).await;
    let (status, body) =
        post_token_form(&server, "grant_type=refresh_token&refresh_token=revoked").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, body) = post_token_form(&server, "nonsense").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body) = post_token_form(&server, "grant_type=password&refresh_token=x").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );

    // Nothing was issued: the initial token still works.
    assert_eq!(server.stats().tokens_issued, 0);
    let mut client = connect(&server, Some("initial")).await.unwrap();
    expect_echo(&mut client, "still here").await;
    server.shutdown().await;
}

#[tokio::test]
async fn auth_close_upgrades_then_closes_1008_on_a_stale_token() {
    let server = serve("auth-close", Some("initial")).await;
    let (status, _) = post_token_form(&server, "grant_type=refresh_token&refresh_token=r").await;
    assert_eq!(status, 200);

    let mut stale = connect(&server, Some("initial")).await.unwrap();
    assert_eq!(
        expect_close(&mut stale).await,
        (CloseCode::Policy, "token expired".to_owned())
    );
    let mut current = connect(&server, Some("tok-1")).await.unwrap();
    expect_echo(&mut current, "ok").await;
    assert_eq!(server.stats().unauthorized, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn hang_never_upgrades_but_consumes_its_step() {
    let server = serve("hang,echo", None).await;
    let request = server.ws_url().into_client_request().unwrap();
    let attempt = timeout(NO_ANSWER, connect_async(request)).await;
    assert!(attempt.is_err(), "a hanging server must not answer");

    let mut client = connect(&server, None).await.unwrap();
    expect_echo(&mut client, "after the hang").await;
    let stats = server.stats();
    assert_eq!((stats.connections, stats.upgrades), (2, 1));
    server.shutdown().await;
}

#[tokio::test]
async fn silent_upgrades_and_then_answers_nothing() {
    let server = serve("silent", None).await;
    let mut client = connect(&server, None).await.unwrap();
    assert_eq!(server.stats().upgrades, 1);
    client
        .send(Message::Ping(b"anyone?".to_vec().into()))
        .await
        .unwrap();
    let answer = timeout(NO_ANSWER, client.next()).await;
    assert!(
        answer.is_err(),
        "a silent server must not answer a ping, got {answer:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn logs_step_sends_json_lines() {
    let server = serve("logs:2", None).await;
    let mut client = connect(&server, None).await.unwrap();
    for line in 1..=2 {
        let Some(Ok(Message::Text(text))) = promptly(client.next()).await else {
            panic!("expected log line {line}");
        };
        let entry: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(entry["message"], format!("line {line}"));
        assert_eq!(entry["pod_name"], "pod-0");
        assert!(entry["created_at"].is_u64());
    }
    server.shutdown().await;
}

#[tokio::test]
async fn request_targets_are_recorded_with_their_query() {
    let server = serve("echo", None).await;
    let url = format!("ws://{}/shell?tty_width=80&tty_height=24", server.addr);
    let (mut client, _) = promptly(connect_async(url)).await.unwrap();
    expect_echo(&mut client, "x").await;
    assert_eq!(
        server.stats().request_targets,
        vec!["/shell?tty_width=80&tty_height=24"]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_drops_open_connections_and_stops_listening() {
    let server = serve("hang", None).await;
    let addr = server.addr;
    let mut hanging = TcpStream::connect(addr).await.unwrap();
    hanging
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    promptly(server.shutdown()).await;

    let mut buffer = [0u8; 16];
    match promptly(hanging.read(&mut buffer)).await {
        Ok(0) | Err(_) => {}
        Ok(count) => panic!("expected the connection to be closed, read {count} bytes"),
    }
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );
}

#[tokio::test]
async fn garbage_requests_get_400_and_the_server_keeps_serving() {
    let server = serve("echo", None).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"\x16\x03\x01 not http\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    promptly(stream.read_to_end(&mut response)).await.unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 400 "),
        "{:?}",
        String::from_utf8_lossy(&response)
    );

    let mut client = connect(&server, None).await.unwrap();
    expect_echo(&mut client, "fine").await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_tls_client_hello_is_answered_400_at_once() {
    // A `wss://` client on this plain port: the start of a TLS 1.2/1.3 ClientHello record.
    // The server must not wait for a request head that will never come.
    let server = serve("echo", None).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(&[
            0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0, 0x03, 0x03,
        ])
        .await
        .unwrap();
    let mut response = Vec::new();
    promptly(stream.read_to_end(&mut response)).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response}"
    );
    assert!(response.ends_with("not an HTTP request\n"), "{response}");
    assert_eq!(server.stats().upgrades, 0);
}
