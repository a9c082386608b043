//! `wsup connect`: stdin lines out as text frames, messages in to stdout.

use super::{report_output_error, write_received, Link, Outbound, RenderOutput, Session};
use crate::classify::Failure;
use std::sync::Arc;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;

/// Lines read while offline wait in a queue of at most this many bytes; past it, input
/// is simply not read (back-pressure), so nothing is ever dropped.
pub const OFFLINE_QUEUE_BYTES: usize = 1 << 20;

/// What a queued line costs against [`OFFLINE_QUEUE_BYTES`] on top of its own bytes: its
/// entry in the queue (the message and its permit, 72 bytes on 64-bit targets) and the
/// allocator's share of its text (header and rounding). With it the 1 MiB bound holds
/// for the memory the queue really uses, empty lines included: at most 10,922 lines
/// wait at once.
pub const LINE_OVERHEAD: usize = 96;

/// The most lines that can wait at once (each costs at least [`LINE_OVERHEAD`]): the
/// room the session asks of its link, so that the byte budget alone decides when stdin
/// stops being read.
pub const OFFLINE_QUEUE_LINES: usize = OFFLINE_QUEUE_BYTES / LINE_OVERHEAD;

/// The longest line sent unless the session is told otherwise: the largest message the
/// connection takes ([`crate::transport::MAX_MESSAGE_SIZE`], 64 MiB).
pub const DEFAULT_MAX_LINE: usize = crate::transport::MAX_MESSAGE_SIZE;

/// A pipe between a byte stream of lines and the websocket.
pub struct ConnectSession<R, W> {
    input: R,
    output: W,
    max_line: usize,
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
        ConnectSession {
            input,
            output,
            max_line: DEFAULT_MAX_LINE,
        }
    }

    /// The longest line (in bytes, without its terminator) that is sent; a longer one
    /// stops the session with [`Failure::InputRejected`] (exit 65) and is never held in
    /// memory whole. At most [`DEFAULT_MAX_LINE`], the largest message the connection
    /// takes.
    pub fn max_line(mut self, bytes: usize) -> Self {
        self.max_line = bytes.min(DEFAULT_MAX_LINE);
        self
    }
}

impl<R, W> Session for ConnectSession<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    fn outbound_capacity(&self) -> usize {
        OFFLINE_QUEUE_LINES
    }

    async fn run(self, link: Link) {
        let Link {
            mut inbound,
            outbound,
            input_failure,
            control,
            ..
        } = link;
        let max_line = self.max_line;
        let reader = tokio::spawn(async move {
            if let Err(failure) = send_lines(self.input, &outbound, max_line).await {
                // Set before the sender drops: the supervisor reads it once it sees
                // the end of the input.
                input_failure.set(failure);
            }
            drop(outbound);
        });
        let written = write_received(&mut inbound, self.output, &mut LinePerText).await;
        // Reported before the input stops: the supervisor must hear "output failed"
        // before it sees the end of input, or it would close 1000 as for a normal end.
        if let Err(error) = written {
            report_output_error(&control, error).await;
        }
        reader.abort();
    }
}

/// `connect`'s output: each text message on a line of its own, binary messages raw.
struct LinePerText;

impl RenderOutput for LinePerText {
    fn render<'a>(&'a mut self, message: &'a Message) -> [&'a [u8]; 2] {
        match message {
            Message::Text(text) => [text.as_bytes(), b"\n"],
            Message::Binary(bytes) => [bytes, b""],
            _ => [b"", b""],
        }
    }
}

/// Reads lines and queues each as a text frame, without its line terminator. A line
/// longer than `max_line` is an error, found after reading at most `max_line` + 2 bytes
/// of it: nothing from it on is sent. Once it returns, the caller drops the sender,
/// which tells the supervisor "local EOF" (or, with the error set first, why not).
async fn send_lines<R: AsyncRead + Unpin>(
    input: R,
    outbound: &mpsc::Sender<Outbound>,
    max_line: usize,
) -> Result<(), Failure> {
    let budget = Arc::new(Semaphore::new(OFFLINE_QUEUE_BYTES));
    let mut input = BufReader::with_capacity(READ_CHUNK, input);
    let mut line = Vec::new();
    let too_long = || {
        Failure::InputRejected(format!(
            "a stdin line is longer than {} (--max-line)",
            format_size(max_line)
        ))
    };
    loop {
        line.clear();
        match read_line_bounded(&mut input, &mut line, max_line).await {
            Ok(LineRead::Eof) | Err(_) => return Ok(()),
            Ok(LineRead::TooLong) => return Err(too_long()),
            Ok(LineRead::Line) => {}
        }
        // Text frames must be UTF-8; a stray invalid byte becomes U+FFFD rather than
        // killing the session. That can make the text longer than the bytes were: the
        // limit holds for what is sent.
        let text = String::from_utf8_lossy(&line).into_owned();
        if text.len() > max_line {
            return Err(too_long());
        }
        // A line larger than the whole budget takes all of it: it waits for an empty
        // queue, then goes alone.
        let cost = (text.len() + LINE_OVERHEAD).min(OFFLINE_QUEUE_BYTES) as u32;
        let Ok(permit) = budget.clone().acquire_many_owned(cost).await else {
            return Ok(());
        };
        let item = Outbound {
            message: Message::text(text),
            permit: Some(permit),
        };
        if outbound.send(item).await.is_err() {
            return Ok(());
        }
    }
}

/// Bytes taken from stdin per read.
const READ_CHUNK: usize = 64 << 10;

#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// Nothing more to read.
    Eof,
    /// `line` holds one line, its terminator (`\n` or `\r\n`) removed.
    Line,
    /// The line is longer than the limit; `line` holds a part of it.
    TooLong,
}

/// Reads one line into `line`, holding at most `max_line` + 2 bytes of it (room for
/// the terminator): unlike `read_until`, a line with no end cannot grow without bound.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    input: &mut R,
    line: &mut Vec<u8>,
    max_line: usize,
) -> std::io::Result<LineRead> {
    let room = max_line.saturating_add(2);
    loop {
        let available = input.fill_buf().await?;
        if available.is_empty() {
            // The last line may lack its terminator.
            if line.is_empty() {
                return Ok(LineRead::Eof);
            }
            return Ok(if line.len() > max_line {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let wanted = newline.map_or(available.len(), |at| at + 1);
        let taken = wanted.min(room - line.len());
        line.extend_from_slice(&available[..taken]);
        input.consume(taken);
        if newline.is_some() && taken == wanted {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(if line.len() > max_line {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
        if line.len() >= room {
            return Ok(LineRead::TooLong);
        }
    }
}

/// `1024` → "1 KiB", `1000` → "1000 bytes": the limit as the user probably wrote it.
pub fn format_size(bytes: usize) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_become_text_frames_without_terminators() {
        let (tx, mut rx) = mpsc::channel(16);
        send_lines(&b"one\r\ntwo\n\nlast"[..], &tx, DEFAULT_MAX_LINE)
            .await
            .unwrap();
        drop(tx);
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

    async fn lines_up_to(limit: usize, input: &[u8]) -> (Vec<Message>, Result<(), Failure>) {
        let (tx, mut rx) = mpsc::channel(16);
        let result = send_lines(input, &tx, limit).await;
        drop(tx);
        let mut got = Vec::new();
        while let Some(item) = rx.recv().await {
            got.push(item.message);
        }
        (got, result)
    }

    #[tokio::test]
    async fn a_line_over_the_limit_stops_the_input_after_the_lines_before_it() {
        let (got, result) = lines_up_to(4, b"abcd\r\nab\nabcde\nafter\n").await;
        assert_eq!(got, vec![Message::text("abcd"), Message::text("ab")]);
        assert_eq!(
            result,
            Err(Failure::InputRejected(
                "a stdin line is longer than 4 bytes (--max-line)".into()
            ))
        );
        // Without a terminator too, and a last line at the limit passes.
        assert!(lines_up_to(4, b"abcde").await.1.is_err());
        assert_eq!(
            lines_up_to(4, b"abcd").await,
            (vec![Message::text("abcd")], Ok(()))
        );
    }

    #[tokio::test]
    async fn invalid_bytes_count_as_the_text_they_become() {
        // Each invalid byte becomes U+FFFD, three bytes of UTF-8.
        let (got, result) = lines_up_to(4, b"\xff\xff\n").await;
        assert!(got.is_empty());
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn an_endless_line_is_read_only_up_to_the_limit() {
        // An input that never ends and has no newline: reading stops at the limit.
        let endless = tokio::io::repeat(b'x');
        let mut reader = BufReader::with_capacity(READ_CHUNK, endless);
        let mut line = Vec::new();
        let read = read_line_bounded(&mut reader, &mut line, 100_000)
            .await
            .unwrap();
        assert_eq!(read, LineRead::TooLong);
        assert!(line.len() <= 100_002, "{} bytes held", line.len());
    }

    #[test]
    fn sizes_are_shown_in_the_largest_exact_unit() {
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(1024), "1 KiB");
        assert_eq!(format_size(1000), "1000 bytes");
    }

    #[test]
    fn text_is_printed_one_message_per_line_binary_raw() {
        let mut out = Vec::new();
        for message in [
            Message::text("hello"),
            Message::binary(&b"\x00\x01"[..]),
            Message::Ping(Default::default()),
        ] {
            out.extend(LinePerText.render(&message).concat());
        }
        assert_eq!(out, b"hello\n\x00\x01");
    }

    #[test]
    fn the_per_line_overhead_covers_a_queue_entry() {
        let entry = std::mem::size_of::<Outbound>();
        assert!(entry <= LINE_OVERHEAD, "{entry} bytes");
        // No more lines than that can ever hold their permits at once.
        const { assert!((OFFLINE_QUEUE_LINES + 1) * LINE_OVERHEAD > OFFLINE_QUEUE_BYTES) };
    }

    #[tokio::test]
    async fn empty_lines_fill_the_budget_at_their_overhead() {
        // OFFLINE_QUEUE_LINES empty lines use the whole 1 MiB budget: the next one waits
        // until one of them is released, even though the link has room for more.
        let input = vec![b'\n'; OFFLINE_QUEUE_LINES + 1];
        let (tx, mut rx) = mpsc::channel(OFFLINE_QUEUE_LINES + 16);
        let reader = tokio::spawn(async move {
            send_lines(std::io::Cursor::new(input), &tx, DEFAULT_MAX_LINE).await
        });
        let mut held = Vec::with_capacity(OFFLINE_QUEUE_LINES);
        for _ in 0..OFFLINE_QUEUE_LINES {
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
        reader.await.unwrap().unwrap();
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
        let reader = tokio::spawn(async move {
            send_lines(std::io::Cursor::new(input), &tx, DEFAULT_MAX_LINE).await
        });
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
        reader.await.unwrap().unwrap();
    }
}
