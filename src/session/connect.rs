//! `wsup connect`: stdin lines out as text frames, messages in to stdout.

use super::{report_output_error, Link, Outbound, OutputError, Session};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;

/// Lines read while offline wait in a queue of at most this many bytes; past it, input
/// is simply not read (back-pressure), so nothing is ever dropped.
pub const QUEUE_BYTES: usize = 1 << 20;

/// What a queued line costs against [`QUEUE_BYTES`] on top of its own bytes: its entry
/// in the queue (the message and its permit, 72 bytes on 64-bit targets) and the
/// allocator's share of its text (header and rounding). With it the 1 MiB bound holds
/// for the memory the queue really uses, empty lines included: at most 10,922 lines
/// wait at once.
pub const LINE_OVERHEAD: usize = 96;

/// The most lines that can wait at once (each costs at least [`LINE_OVERHEAD`]): the
/// room the session asks of its link, so that the byte budget alone decides when stdin
/// stops being read.
pub const QUEUE_LINES: usize = QUEUE_BYTES / LINE_OVERHEAD;

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
    fn outbound_capacity(&self) -> usize {
        QUEUE_LINES
    }

    async fn run(self, link: Link) {
        let Link {
            mut inbound,
            outbound,
            control,
            ..
        } = link;
        let reader = tokio::spawn(send_lines(self.input, outbound));
        let mut output = BufWriter::new(inbound.counted(self.output));
        let written: Result<(), OutputError> = async {
            while let Some(message) = inbound.recv().await {
                inbound.owe(output_len(&message));
                write_message(&mut output, &message).await?;
                // Flush when nothing else is waiting: one syscall per burst, not per message.
                if inbound.is_empty() {
                    output.flush().await?;
                }
            }
            Ok(output.flush().await?)
        }
        .await;
        // Reported before the input stops: the supervisor must hear "output failed"
        // before it sees the end of input, or it would close 1000 as for a normal end.
        if let Err(error) = written {
            report_output_error(&control, error).await;
        }
        reader.abort();
    }
}

/// The bytes [`write_message`] writes for `message`.
fn output_len(message: &Message) -> usize {
    match message {
        Message::Text(text) => text.len() + 1,
        Message::Binary(bytes) => bytes.len(),
        _ => 0,
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
        // Text frames must be UTF-8; a stray invalid byte becomes U+FFFD rather than
        // killing the session.
        let text = String::from_utf8_lossy(&line).into_owned();
        // A line larger than the whole budget takes all of it: it waits for an empty
        // queue, then goes alone.
        let cost = (text.len() + LINE_OVERHEAD).min(QUEUE_BYTES) as u32;
        let Ok(permit) = budget.clone().acquire_many_owned(cost).await else {
            return;
        };
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

    #[test]
    fn the_per_line_overhead_covers_a_queue_entry() {
        let entry = std::mem::size_of::<Outbound>();
        assert!(entry <= LINE_OVERHEAD, "{entry} bytes");
        // No more lines than that can ever hold their permits at once.
        const { assert!((QUEUE_LINES + 1) * LINE_OVERHEAD > QUEUE_BYTES) };
    }

    #[tokio::test]
    async fn empty_lines_fill_the_budget_at_their_overhead() {
        // QUEUE_LINES empty lines use the whole 1 MiB budget: the next one waits until
        // one of them is released, even though the link has room for more.
        let input = vec![b'\n'; QUEUE_LINES + 1];
        let (tx, mut rx) = mpsc::channel(QUEUE_LINES + 16);
        let reader = tokio::spawn(send_lines(std::io::Cursor::new(input), tx));
        let mut held = Vec::with_capacity(QUEUE_LINES);
        for _ in 0..QUEUE_LINES {
            held.push(rx.recv().await.unwrap());
        }
        // Single-threaded test runtime: give the reader every chance to run ahead.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(rx.try_recv().is_err(), "a line was read past the budget");
        held.pop();
        assert_eq!(rx.recv().await.unwrap().message, Message::text(""));
        assert!(rx.recv().await.is_none());
        reader.await.unwrap();
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
