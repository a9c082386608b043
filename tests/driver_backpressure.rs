//! A session that sends faster than the socket drains: the driver's send queue fills,
//! the socket blocks, and when the server starts reading again everything must flow
//! without waiting for some unrelated event (a timer, a received frame).
//!
//! Regression: the session's messages were taken by a `select!` arm whose guard
//! ("the send queue has room") was evaluated once per loop iteration. When the queue was
//! full, the arm was off; the socket then drained the queue inside the I/O arm, which
//! returned `Pending` (no frame to read), so the loop never re-evaluated the guard and
//! the tunnel stalled until the next timer (a port-forward ran at 1–13 MiB/s against a
//! server that reads slower than loopback).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use wsup::machine::Sig;
use wsup::session::{Link, Session};
use wsup::{Config, Outcome, Supervisor};

const MESSAGES: usize = 400;
const SIZE: usize = 64 << 10;

/// Sends `MESSAGES` binary messages as fast as the link takes them, then idles.
struct Flood;

impl Session for Flood {
    async fn run(self, mut link: Link) {
        let payload = Bytes::from(vec![0x5A; SIZE]);
        for _ in 0..MESSAGES {
            if !link.send(Message::Binary(payload.clone())).await {
                return;
            }
        }
        while link.recv().await.is_some() {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_send_queue_resumes_as_soon_as_the_socket_drains() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        // Read nothing for a while: the socket buffers, the driver's queue and the link
        // all fill up, and the session blocks.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let resumed = Instant::now();
        let mut received = 0;
        while received < MESSAGES {
            match ws.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    assert_eq!(bytes.len(), SIZE);
                    received += 1;
                }
                Some(Ok(_)) => {}
                other => panic!("after {received} messages: {other:?}"),
            }
        }
        (resumed.elapsed(), ws)
    });

    let (stop, signals) = watch::channel(None);
    let supervisor = tokio::spawn(
        Supervisor::new(Config::new(url.parse().unwrap()))
            .signals(signals)
            .on_notice(std::sync::Arc::new(|_| {}))
            .run(Flood),
    );

    // 25 MiB over loopback takes well under a second; a stall waits for the 10 s
    // stable timer or the 20 s ping.
    let (took, _ws) = tokio::time::timeout(Duration::from_secs(8), server)
        .await
        .expect("the messages stopped flowing: the driver stalled with a drained queue")
        .unwrap();
    eprintln!("{MESSAGES} × {SIZE} bytes after the server resumed reading: {took:?}");

    stop.send_replace(Some(Sig::Terminate));
    let outcome = tokio::time::timeout(Duration::from_secs(5), supervisor)
        .await
        .expect("the supervisor stops on the signal")
        .unwrap();
    assert_eq!(outcome.unwrap(), Outcome::Signal(Sig::Terminate));
}
