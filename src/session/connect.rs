//! `wsup connect`: stdin lines out as text frames, messages in to stdout.

use super::{Link, Outbound, Session};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;

/// Lines read while offline wait in a queue of at most this many bytes; past it, input
/// is simply not read (back-pressure), so nothing is ever dropped.
pub const QUEUE_BYTES: usize = 1 << 20;

/// A pipe between a byte stream of lines and the websocket.
pub struct ConnectSession<R, W> {
    input: R,
    output: W,
}

impl ConnectSession<tokio::io::Stdin, tokio::io::Stdout> {
    pub fn stdio() -> Self {
        ConnectSession::new(tokio::io::stdin(), tokio::io::stdout())
    }
}

impl<R, W> ConnectSession<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    pub fn new(input: R, output: W) -> Self {
        ConnectSession { input, output }
    }
}

impl<R, W> Session for ConnectSession<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    async fn run(self, link: Link) {
        let Link {
            mut inbound,
            outbound,
            ..
        } = link;
        let reader = tokio::spawn(send_lines(self.input, outbound));
        let mut output = BufWriter::new(self.output);
        while let Some(message) = inbound.recv().await {
            if write_message(&mut output, &message).await.is_err() {
                break;
            }
            // Flush when nothing else is waiting: one syscall per burst, not per message.
            if inbound.is_empty() && output.flush().await.is_err() {
                break;
            }
        }
        let _ = output.flush().await;
        reader.abort();
    }
}

async fn write_message<W: AsyncWrite + Unpin>(
    out: &mut W,
    message: &Message,
) -> std::io::Result<()> {
    match message {
        Message::Text(text) => {
            out.write_all(text.as_bytes()).await?;
            out.write_all(b"\n").await
        }
        Message::Binary(bytes) => out.write_all(bytes).await,
        _ => Ok(()),
    }
}

/// Reads lines and queues each as a text frame, without its line terminator.
/// Returning drops the sender, which tells the supervisor "local EOF".
async fn send_lines<R: AsyncRead + Unpin>(input: R, outbound: mpsc::Sender<Outbound>) {
    let budget = Arc::new(Semaphore::new(QUEUE_BYTES));
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        let cost = line.len().clamp(1, QUEUE_BYTES) as u32;
        let Ok(permit) = budget.clone().acquire_many_owned(cost).await else {
            return;
        };
        // Text frames must be UTF-8; a stray invalid byte becomes U+FFFD rather than
        // killing the session.
        let text = String::from_utf8_lossy(&line).into_owned();
        let item = Outbound {
            message: Message::text(text),
            permit: Some(permit),
        };
        if outbound.send(item).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_become_text_frames_without_terminators() {
        let (tx, mut rx) = mpsc::channel(16);
        send_lines(&b"one\r\ntwo\n\nlast"[..], tx).await;
        let mut got = Vec::new();
        while let Some(item) = rx.recv().await {
            got.push(item.message);
        }
        assert_eq!(
            got,
            vec![
                Message::text("one"),
                Message::text("two"),
                Message::text(""),
                Message::text("last")
            ]
        );
    }

    #[tokio::test]
    async fn text_is_printed_one_message_per_line_binary_raw() {
        let mut out = Vec::new();
        write_message(&mut out, &Message::text("hello"))
            .await
            .unwrap();
        write_message(&mut out, &Message::binary(&b"\x00\x01"[..]))
            .await
            .unwrap();
        write_message(&mut out, &Message::Ping(Default::default()))
            .await
            .unwrap();
        assert_eq!(out, b"hello\n\x00\x01");
    }

    #[tokio::test]
    async fn input_stops_being_read_when_the_queue_is_full() {
        // 3 lines of 600 KiB: the first fits the 1 MiB budget, the second must wait
        // until the first is released.
        let line = vec![b'x'; 600 * 1024];
        let mut input = Vec::new();
        for _ in 0..3 {
            input.extend_from_slice(&line);
            input.push(b'\n');
        }
        let (tx, mut rx) = mpsc::channel(16);
        let reader = tokio::spawn(send_lines(std::io::Cursor::new(input), tx));
        let first = rx.recv().await.unwrap();
        // Single-threaded test runtime: give the reader every chance to run ahead.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(rx.try_recv().is_err(), "second line read past the budget");
        drop(first);
        let second = rx.recv().await.unwrap();
        drop(second);
        assert!(rx.recv().await.is_some());
        reader.await.unwrap();
    }
}
