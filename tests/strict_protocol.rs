//! A server that breaks the protocol: what it sent before the violation reaches the
//! session, the session's answer goes out, and then wsup's close frame with the RFC 6455
//! code for the violation (1002 protocol error, 1007 invalid UTF-8, 1009 too big) and a
//! short reason.
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use wsup::session::{Link, Session};
use wsup::tungstenite::protocol::frame::coding::CloseCode;
use wsup::tungstenite::Message;
use wsup::{Config, Outcome, Supervisor};

/// Sends every message back unchanged.
struct Echo;

impl Session for Echo {
    async fn run(self, link: Link) {
        let Link {
            mut inbound,
            outbound,
            ..
        } = link;
        while let Some(message) = inbound.recv().await {
            if outbound.send(message.into()).await.is_err() {
                break;
            }
        }
    }
}

/// Serves one connection: the upgrade, then `raw` bytes as they are (an unmasked server
/// frame stream), then returns every message the client sent until it closed.
async fn one_connection(listener: TcpListener, raw: Vec<u8>) -> Vec<Message> {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    // Past tungstenite's writer, which would not send a broken frame.
    ws.get_mut().write_all(&raw).await.unwrap();
    let mut got = Vec::new();
    while let Some(Ok(message)) = ws.next().await {
        let close = message.is_close();
        got.push(message);
        if close {
            break;
        }
    }
    got
}

/// Runs an echo session under a supervisor (no retries) against a server that sends
/// `raw` after the upgrade; returns the outcome and what the server received.
async fn echo_against(raw: Vec<u8>, max_message_size: Option<usize>) -> (Outcome, Vec<Message>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(one_connection(listener, raw));
    let mut config = Config::new(url.parse().unwrap());
    config.machine.max_retries = Some(0);
    if let Some(max) = max_message_size {
        config.transport.max_message_size = max;
    }
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        Supervisor::new(config)
            .on_notice(Arc::new(|_| {}))
            .run(Echo),
    )
    .await
    .expect("the supervisor stops after the violation")
    .expect("valid settings");
    let got = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the client closes")
        .unwrap();
    (outcome, got)
}

fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut bytes = vec![first, payload.len() as u8];
    bytes.extend_from_slice(payload);
    bytes
}

fn assert_close(message: Option<&Message>, code: CloseCode) {
    match message {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(frame.code, code, "{frame:?}");
            assert!(!frame.reason.is_empty(), "no reason in {frame:?}");
        }
        other => panic!("expected a close frame with {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn message_before_a_bad_frame_is_echoed_then_closed_with_1002() {
    // A valid text message, then a frame with a reserved bit set.
    let mut raw = frame(0x81, b"hello");
    raw.extend(frame(0x81 | 0x40, b"bad"));
    let (outcome, got) = echo_against(raw, None).await;
    assert_eq!(got.first(), Some(&Message::text("hello")), "{got:?}");
    assert_close(got.get(1), CloseCode::Protocol);
    assert!(
        matches!(
            outcome,
            Outcome::Stopped { .. } | Outcome::RetriesExhausted { .. }
        ),
        "{outcome:?}"
    );
    assert_ne!(outcome.exit_code(), 1, "{outcome:?}");
}

#[tokio::test]
async fn invalid_utf8_text_is_closed_with_1007() {
    let mut raw = frame(0x82, b"ok");
    raw.extend(frame(0x81, &[0xce, 0xba, 0xff, 0xfe]));
    let (_, got) = echo_against(raw, None).await;
    assert_eq!(got.first(), Some(&Message::binary(&b"ok"[..])), "{got:?}");
    assert_close(got.get(1), CloseCode::Invalid);
}

#[tokio::test]
async fn message_over_the_limit_is_closed_with_1009() {
    let raw = frame(0x82, &[7; 64]);
    let (_, got) = echo_against(raw, Some(16)).await;
    assert_close(got.first(), CloseCode::Size);
}
