//! `--subprotocol`: the real binary offers subprotocols in the upgrade, on loopback,
//! against `wsup serve --subprotocol` (a child process), the independent server in
//! `tests/support` (which answers without a subprotocol) and a tiny tokio-tungstenite
//! server in this file that answers with one that was not offered.

mod support;

use support::{connect, Behaviour, Server, Wsup};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[tokio::test]
async fn an_offered_subprotocol_the_server_requires_is_accepted_and_echo_works() {
    let serve = Wsup::spawn([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--script",
        "echo",
        "--subprotocol",
        "v2.echo",
    ]);
    let url = serve.first_stdout_line().await;

    let mut client = connect(
        &url,
        &["--subprotocol", "v1.echo", "--subprotocol", "v2.echo", "-v"],
    );
    client.write(b"hello\n").await;
    client.close_stdin();
    let done = client.finish().await;
    done.assert_code(0)
        .assert_stdout("hello\n")
        .assert_stderr_contains("subprotocol=v2.echo");
}

#[tokio::test]
async fn subprotocols_are_offered_in_the_order_given() {
    // The support server answers without a subprotocol, so the dial fails; what it
    // received is what matters here.
    let server = Server::always(Behaviour::Echo).await;
    let client = connect(&server.url(), &["--subprotocol", "b", "--subprotocol", "a"]);
    client.finish().await.assert_code(69);
    let connections = server.connections();
    assert_eq!(
        connections[0].header("sec-websocket-protocol"),
        Some("b, a")
    );
}

#[tokio::test]
async fn serve_requiring_a_subprotocol_the_client_did_not_offer_answers_400_and_exits_69() {
    let serve = Wsup::spawn([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--subprotocol",
        "graphql-transport-ws",
    ]);
    let url = serve.first_stdout_line().await;

    let client = connect(&url, &["--subprotocol", "stomp"]);
    client
        .finish()
        .await
        .assert_code(69)
        .assert_stderr_contains("HTTP 400");
}

#[tokio::test]
async fn a_server_choosing_no_subprotocol_when_one_was_offered_fails_with_69() {
    let server = Server::always(Behaviour::Echo).await;
    let client = connect(&server.url(), &["--subprotocol", "mqtt"]);
    client
        .finish()
        .await
        .assert_code(69)
        .assert_stderr_contains("answered the upgrade with no subprotocol; offered: mqtt");
    assert_eq!(
        server.connection_count(),
        1,
        "a permanent failure is not redialed"
    );
}

/// A server that upgrades every connection answering with subprotocol `answer`, whatever
/// was offered. Returns its URL.
async fn server_answering(answer: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                #[allow(clippy::result_large_err)] // tungstenite's callback type
                let callback =
                    |_: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
                        response
                            .headers_mut()
                            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(answer));
                        Ok(response)
                    };
                // The client refuses the answer; the server's side of it does not matter.
                let _ = tokio_tungstenite::accept_hdr_async(stream, callback).await;
            });
        }
    });
    url
}

#[tokio::test]
async fn a_server_choosing_a_subprotocol_that_was_not_offered_fails_with_69() {
    let url = server_answering("chat").await;
    let client = connect(&url, &["--subprotocol", "v1", "--subprotocol", "v2"]);
    client
        .finish()
        .await
        .assert_code(69)
        .assert_stderr_contains(
            "answered the upgrade with a subprotocol that was not offered; offered: v1, v2",
        );
}

#[tokio::test]
async fn a_server_choosing_a_subprotocol_when_none_was_offered_fails_with_69() {
    let url = server_answering("chat").await;
    let client = connect(&url, &[]);
    client
        .finish()
        .await
        .assert_code(69)
        .assert_stderr_contains(
            "answered the upgrade with a subprotocol although none was offered; offered: none",
        );
}

#[tokio::test]
async fn a_subprotocol_name_that_is_not_a_token_is_a_usage_error() {
    let client = Wsup::spawn(["connect", "ws://127.0.0.1:9/", "--subprotocol", "a b"]);
    client
        .finish()
        .await
        .assert_code(2)
        .assert_stderr_contains("invalid subprotocol 'a b'");
}
