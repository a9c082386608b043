//! `--on-connect` and `--on-connect-file` end to end: the real binary against the test
//! server on loopback. The messages go first on every connection, before anything typed
//! on stdin, and again after every redial; bad inputs are usage errors (exit 2).

mod support;

use std::sync::Arc;

use support::{connect, Behaviour, Server, Wsup};
use tokio::sync::Notify;

const SUBSCRIBE: &str = r#"{"op":"subscribe","channel":"trades"}"#;
const SUBSCRIBE_TOO: &str = r#"{"op":"subscribe","channel":"quotes"}"#;

#[tokio::test]
async fn on_connect_texts_arrive_first_and_in_order() {
    let server = Server::always(Behaviour::Echo).await;
    let mut client = connect(
        &server.url(),
        &["--on-connect", SUBSCRIBE, "--on-connect", SUBSCRIBE_TOO],
    );
    client.write_line("typed").await;
    client.close_stdin();

    let done = client.finish().await;
    done.assert_code(0)
        .assert_stdout(&format!("{SUBSCRIBE}\n{SUBSCRIBE_TOO}\ntyped\n"));
    let connections = server.connections();
    assert_eq!(connections.len(), 1, "{connections:#?}");
    assert_eq!(connections[0].texts, [SUBSCRIBE, SUBSCRIBE_TOO, "typed"]);
}

#[tokio::test]
async fn the_subscription_is_sent_again_after_a_reconnect_before_lines_queued_offline() {
    // Connection 0 is closed with 1012 (restarting: transient); connection 1 is held
    // before its upgrade (wsup is offline, dialing) until a line has been typed, then
    // echoes.
    let gate = Arc::new(Notify::new());
    let server = Server::start(vec![
        Behaviour::close(1012, "restarting"),
        Behaviour::gated(&gate, Behaviour::Echo),
    ])
    .await;
    let mut client = connect(&server.url(), &["--on-connect", SUBSCRIBE]);
    server.wait_connections(2).await;
    client.write_line("typed while offline").await;
    gate.notify_one();
    client.wait_stdout("typed while offline").await;
    client.close_stdin();

    let done = client.finish().await;
    done.assert_code(0)
        .assert_stdout(&format!("{SUBSCRIBE}\ntyped while offline\n"))
        .assert_stderr_contains("1012");
    let connections = server.connections();
    assert_eq!(connections.len(), 2, "{connections:#?}");
    assert!(
        !connections[0]
            .texts
            .iter()
            .any(|t| t == "typed while offline"),
        "{connections:#?}"
    );
    assert_eq!(
        connections[1].texts,
        [SUBSCRIBE, "typed while offline"],
        "the subscription again, before the queued line"
    );
}

#[tokio::test]
async fn on_connect_file_lines_are_sent_in_order_after_the_on_connect_texts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("subscriptions.txt");
    std::fs::write(&file, format!("{SUBSCRIBE}\n\n{SUBSCRIBE_TOO}\r\n")).unwrap();
    let server = Server::always(Behaviour::Echo).await;
    let mut client = connect(
        &server.url(),
        &[
            "--on-connect",
            "hello",
            "--on-connect-file",
            file.to_str().unwrap(),
        ],
    );
    client.close_stdin();

    let done = client.finish().await;
    done.assert_code(0);
    assert_eq!(
        server.connections()[0].texts,
        ["hello", SUBSCRIBE, SUBSCRIBE_TOO],
        "blank lines skipped, CRLF trimmed"
    );
}

#[tokio::test]
async fn a_missing_on_connect_file_is_a_usage_error_naming_it() {
    let server = Server::always(Behaviour::Echo).await;
    let done = connect(
        &server.url(),
        &["--on-connect-file", "/nonexistent/subscriptions.txt"],
    )
    .finish()
    .await;
    done.assert_code(2)
        .assert_stdout("")
        .assert_stderr_contains("--on-connect-file /nonexistent/subscriptions.txt");
    assert_eq!(server.connection_count(), 0, "nothing dialed");
}

#[tokio::test]
async fn an_on_connect_file_over_1_mib_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.txt");
    std::fs::write(&file, vec![b'x'; (1 << 20) + 1]).unwrap();
    let server = Server::always(Behaviour::Echo).await;
    let done = connect(
        &server.url(),
        &["--on-connect-file", file.to_str().unwrap()],
    )
    .finish()
    .await;
    done.assert_code(2)
        .assert_stderr_contains("larger than 1 MiB");
    assert_eq!(server.connection_count(), 0, "nothing dialed");
}

#[tokio::test]
async fn port_forward_refuses_on_connect() {
    let server = Server::always(Behaviour::Echo).await;
    let done = Wsup::spawn([
        "port-forward",
        &server.url(),
        "--listen",
        "0",
        "--on-connect",
        "x",
    ])
    .finish()
    .await;
    done.assert_code(2)
        .assert_stdout("")
        .assert_stderr_contains("--on-connect");
    assert_eq!(server.connection_count(), 0, "nothing dialed");
}
