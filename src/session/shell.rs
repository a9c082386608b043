//! `wsup shell`: an interactive terminal through the websocket.
//!
//! About 530 lines of session and 130 of unit tests: raw mode, the status line, resizes
//! and restoring the terminal on every exit path belong together.
//!
//! - The terminal is put in raw mode (crossterm) when stdin is a terminal: every key
//!   goes out as it is typed, as binary frames; escape sequences pass through untouched.
//!   With stdin not a terminal (piped input) the session works the same, without raw mode.
//! - Received binary (and text) frames are written raw to stdout.
//! - The terminal size goes in the dial query (`tty_width`, `tty_height`) before the
//!   first dial and after every resize, so a redial carries the current size; a resize
//!   (SIGWINCH) also sends the text frame `{"type":"resize","cols":C,"rows":R}`.
//! - Ctrl+C (the byte 0x03 in raw mode) is not sent as data: it becomes
//!   [`Control::Interrupt`], which the supervisor forwards as a binary `[0x03]` frame while
//!   connected and turns into exit 130 while offline.
//! - The terminal is restored on every exit path: a guard whose `Drop` leaves raw mode,
//!   a panic hook that restores it before the panic message is printed, and
//!   [`restore_terminal`] for the CLI to call before the process exits.
//! - While raw mode is on, `"\n"` does not return the carriage: diagnostics printed
//!   meanwhile go through [`terminal_line`] (notices) or [`TerminalStderr`] (logs), which
//!   end lines with `"\r\n"` and start them at the beginning of a line.

use super::{report_output_error, Control, Link, Outbound, OutputError, Session};
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc::OwnedPermit;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;

/// The byte a terminal in raw mode sends for Ctrl+C (one definition, the machine's).
pub use crate::machine::CTRL_C;

/// Input read while offline waits in a queue of at most this many bytes; past it, stdin
/// is not read (back-pressure), so nothing typed is dropped.
pub const SHELL_INPUT_QUEUE_BYTES: usize = 1 << 20;

/// Bytes read from stdin at once: one read, one binary frame.
const READ_CHUNK: usize = 4096;

/// When Ctrl+C follows bytes still waiting to be sent, the interrupt waits at most this
/// long for them to reach the socket first, so that the remote sees them in the order they
/// were typed. While offline they never will: the interrupt goes anyway after this bound.
const INTERRUPT_ORDER_WAIT: Duration = Duration::from_millis(200);

/// The query parameters that carry the terminal size on every dial.
pub fn size_query(cols: u16, rows: u16) -> Vec<(String, String)> {
    vec![
        ("tty_width".to_owned(), cols.to_string()),
        ("tty_height".to_owned(), rows.to_string()),
    ]
}

/// The text frame sent when the terminal is resized.
pub fn resize_message(cols: u16, rows: u16) -> Message {
    // Written by hand to keep the documented key order (`json!` sorts its keys), for
    // servers that match the frame as text.
    Message::text(format!(
        r#"{{"type":"resize","cols":{cols},"rows":{rows}}}"#
    ))
}

/// The current size of the controlling terminal, `(cols, rows)`, when stdin or stdout is
/// a terminal and it reports a usable size.
pub fn terminal_size() -> Option<(u16, u16)> {
    if !std::io::stdin().is_terminal() && !std::io::stdout().is_terminal() {
        return None;
    }
    crossterm::terminal::size()
        .ok()
        .filter(|&(cols, rows)| cols > 0 && rows > 0)
}

/// Where new terminal sizes come from.
enum Resizes {
    /// No resizes (not a terminal).
    Never,
    /// SIGWINCH, then the terminal's size.
    Sigwinch(tokio::signal::unix::Signal),
    /// Sizes pushed by the caller (tests, library users with their own terminal).
    Channel(mpsc::Receiver<(u16, u16)>),
    /// Registered when the session starts (needs the runtime).
    SigwinchLater,
}

impl Resizes {
    async fn next(&mut self) -> Option<(u16, u16)> {
        match self {
            Resizes::Never | Resizes::SigwinchLater => std::future::pending().await,
            Resizes::Sigwinch(signal) => loop {
                signal.recv().await?;
                if let Some(size) = terminal_size() {
                    return Some(size);
                }
            },
            Resizes::Channel(sizes) => sizes.recv().await,
        }
    }
}

/// An interactive terminal session; see the module documentation.
pub struct ShellSession<R, W> {
    input: R,
    output: W,
    raw_mode: bool,
    size: Option<(u16, u16)>,
    resizes: Resizes,
    /// Output goes to the user's terminal: track whether it ended a line, so that
    /// diagnostics start on a line of their own.
    tracks_terminal: bool,
}

impl ShellSession<tokio::io::Stdin, tokio::io::Stdout> {
    /// The process's terminal: raw mode when stdin is a terminal, the size and SIGWINCH
    /// when stdin or stdout is one.
    pub fn stdio() -> Self {
        let size = terminal_size();
        ShellSession {
            input: tokio::io::stdin(),
            output: tokio::io::stdout(),
            raw_mode: std::io::stdin().is_terminal(),
            size,
            resizes: if size.is_some() {
                Resizes::SigwinchLater
            } else {
                Resizes::Never
            },
            tracks_terminal: true,
        }
    }
}

impl<R, W> ShellSession<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    /// A session over any byte streams: no raw mode, no size, no resizes.
    pub fn new(input: R, output: W) -> Self {
        ShellSession {
            input,
            output,
            raw_mode: false,
            size: None,
            resizes: Resizes::Never,
            tracks_terminal: false,
        }
    }

    /// The terminal size to send with the first dial.
    pub fn size(mut self, cols: u16, rows: u16) -> Self {
        self.size = Some((cols, rows));
        self
    }

    /// New sizes, each sent as a resize frame and carried by later dials.
    pub fn resizes(mut self, sizes: mpsc::Receiver<(u16, u16)>) -> Self {
        self.resizes = Resizes::Channel(sizes);
        self
    }
}

impl<R, W> Session for ShellSession<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    /// The setup happens here, synchronously, before the returned future is spawned:
    /// the supervisor calls `run` before its first dial, so that dial already carries the
    /// terminal size, and raw mode and the SIGWINCH handler are in place by then.
    fn run(self, link: Link) -> impl Future<Output = ()> + Send + 'static {
        if let Some((cols, rows)) = self.size {
            link.dial_query.set(size_query(cols, rows));
        }
        let guard = if self.raw_mode {
            match RawModeGuard::enable() {
                Ok(guard) => Some(guard),
                Err(e) => {
                    tracing::warn!("cannot put the terminal in raw mode: {e}");
                    None
                }
            }
        } else {
            None
        };
        let resizes = match self.resizes {
            Resizes::SigwinchLater => {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                {
                    Ok(signal) => Resizes::Sigwinch(signal),
                    Err(e) => {
                        tracing::debug!("cannot listen for SIGWINCH: {e}");
                        Resizes::Never
                    }
                }
            }
            other => other,
        };
        let pump = Pump {
            input: self.input,
            output: self.output,
            size: self.size,
            resizes,
            tracks_terminal: self.tracks_terminal,
        };
        async move {
            pump.run(link).await;
            // Leave raw mode only after the last output was flushed.
            drop(guard);
        }
    }
}

/// The running half of a [`ShellSession`].
struct Pump<R, W> {
    input: R,
    output: W,
    size: Option<(u16, u16)>,
    resizes: Resizes,
    tracks_terminal: bool,
}

impl<R, W> Pump<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    async fn run(mut self, link: Link) {
        let Link {
            mut inbound,
            outbound,
            control,
            dial_query,
            ..
        } = link;
        let output_control = control.clone();
        let mut reader = AbortOnDrop(tokio::spawn(send_input(
            self.input,
            outbound.clone(),
            control,
        )));
        // Kept for resize frames while input is open; dropped with the input (EOF means
        // "nothing more to send").
        let mut outbound = Some(outbound);
        let mut pending_resize: Option<(u16, u16)> = None;
        let mut output = BufWriter::new(inbound.counted(self.output));
        let mut failed: Option<OutputError> = None;
        loop {
            tokio::select! {
                message = inbound.recv() => {
                    let Some(message) = message else { break };
                    let bytes: &[u8] = match &message {
                        Message::Binary(bytes) => bytes,
                        Message::Text(text) => text.as_bytes(),
                        _ => continue,
                    };
                    inbound.owe(bytes.len());
                    // The output starts below a status line ("wsup: connected"), not
                    // after it.
                    if self.tracks_terminal && STATUS_ON_LINE.swap(false, Ordering::Relaxed) {
                        let end: &[u8] = if raw_mode_active() { b"\r\n" } else { b"\n" };
                        if let Err(error) = output.write_all(end).await {
                            failed = Some(error.into());
                            break;
                        }
                    }
                    if let Err(error) = output.write_all(bytes).await {
                        failed = Some(error.into());
                        break;
                    }
                    if self.tracks_terminal {
                        note_output(bytes);
                    }
                    // Flush when nothing else is waiting: one syscall per burst.
                    if inbound.is_empty() {
                        if let Err(error) = output.flush().await {
                            failed = Some(error.into());
                            break;
                        }
                    }
                }
                size = self.resizes.next() => {
                    let Some(size) = size else {
                        self.resizes = Resizes::Never;
                        continue;
                    };
                    if self.size != Some(size) {
                        self.size = Some(size);
                        dial_query.set(size_query(size.0, size.1));
                        pending_resize = Some(size);
                    }
                }
                permit = reserve(outbound.clone()), if pending_resize.is_some() => {
                    if let (Some(permit), Some((cols, rows))) = (permit, pending_resize.take()) {
                        permit.send(Outbound::from(resize_message(cols, rows)));
                    }
                }
                _ = &mut reader.0, if outbound.is_some() => {
                    // Input ended: the supervisor sees the outbound channel close.
                    outbound = None;
                    pending_resize = None;
                }
            }
        }
        if failed.is_none() {
            if let Err(error) = output.flush().await {
                failed = Some(error.into());
            }
        }
        if let Some(error) = failed {
            report_output_error(&output_control, error).await;
        }
    }
}

/// A slot in the outbound queue, `None` once input ended or the supervisor stopped.
async fn reserve(outbound: Option<mpsc::Sender<Outbound>>) -> Option<OwnedPermit<Outbound>> {
    outbound?.reserve_owned().await.ok()
}

/// Aborts the task when dropped (the session ending, or unwinding).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads raw input and queues it as binary frames; a Ctrl+C byte becomes
/// [`Control::Interrupt`] instead. Returning drops the sender: "local EOF".
async fn send_input<R: AsyncRead + Unpin>(
    mut input: R,
    outbound: mpsc::Sender<Outbound>,
    control: mpsc::Sender<Control>,
) {
    let budget = Arc::new(Semaphore::new(SHELL_INPUT_QUEUE_BYTES));
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        let read = match input.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let mut rest = &buffer[..read];
        loop {
            let (data, interrupt) = match rest.iter().position(|&b| b == CTRL_C) {
                Some(at) => (&rest[..at], true),
                None => (rest, false),
            };
            if !data.is_empty() {
                let Ok(permit) = budget.clone().acquire_many_owned(data.len() as u32).await else {
                    return;
                };
                let item = Outbound {
                    message: Message::binary(data.to_vec()),
                    permit: Some(permit),
                };
                if outbound.send(item).await.is_err() {
                    return;
                }
            }
            if !interrupt {
                break;
            }
            // What was typed before Ctrl+C goes first (when connected, the supervisor
            // releases the permits as it hands the bytes to the socket).
            let _ = tokio::time::timeout(
                INTERRUPT_ORDER_WAIT,
                budget.acquire_many(SHELL_INPUT_QUEUE_BYTES as u32),
            )
            .await;
            if control.send(Control::Interrupt).await.is_err() {
                return;
            }
            rest = &rest[data.len() + 1..];
            if rest.is_empty() {
                break;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The terminal: raw mode, its restoration, and diagnostics while it is raw.

/// Raw mode is on (set by [`RawModeGuard`]).
static RAW_MODE: AtomicBool = AtomicBool::new(false);

/// The last byte the session wrote to the terminal ended a line (or nothing was written).
static AT_LINE_START: AtomicBool = AtomicBool::new(true);

/// The current terminal line is a [`status_line`] and nothing else (no line end yet).
static STATUS_ON_LINE: AtomicBool = AtomicBool::new(false);

fn note_output(bytes: &[u8]) {
    if let Some(&last) = bytes.last() {
        AT_LINE_START.store(last == b'\n', Ordering::Relaxed);
        STATUS_ON_LINE.store(false, Ordering::Relaxed);
    }
}

/// Whether a shell session has the terminal in raw mode right now.
pub fn raw_mode_active() -> bool {
    RAW_MODE.load(Ordering::SeqCst)
}

/// Leaves raw mode if a shell session entered it; does nothing otherwise. Safe to call
/// any number of times, from any thread (the panic hook, the CLI before it exits).
pub fn restore_terminal() {
    if RAW_MODE.swap(false, Ordering::SeqCst) {
        if let Err(e) = crossterm::terminal::disable_raw_mode() {
            let _ = writeln!(
                std::io::stderr(),
                "wsup: cannot restore the terminal settings: {e} (run `stty sane`)"
            );
        }
    }
}

/// Raw mode for as long as it lives.
struct RawModeGuard(());

impl RawModeGuard {
    fn enable() -> std::io::Result<Self> {
        install_panic_hook();
        crossterm::terminal::enable_raw_mode()?;
        RAW_MODE.store(true, Ordering::SeqCst);
        Ok(RawModeGuard(()))
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Restores the terminal before any panic message is printed (and before the process
/// possibly aborts), then runs the previous hook.
fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}

/// A diagnostic line for stderr during or right after a shell session: it starts at the
/// beginning of a line (a line break first if the session's output left the cursor
/// mid-line on the terminal) and ends with `"\r\n"` while raw mode is on, `"\n"` otherwise.
pub fn terminal_line(line: &str) -> String {
    let raw = raw_mode_active();
    STATUS_ON_LINE.store(false, Ordering::Relaxed);
    let mid_line = !AT_LINE_START.swap(true, Ordering::Relaxed);
    let break_first = mid_line && (raw || std::io::stderr().is_terminal());
    format_line(line, raw, break_first)
}

/// A status that replaces the previous one (the reconnect progress: "retrying in 2 s,
/// attempt 3"): on a terminal, carriage return, clear the line, the text, and no line end,
/// so that the next status rewrites it in place; the line it replaces is only ever a
/// status, never the session's output (that gets a line break first). On a stderr that is
/// not a terminal (a log file, a pipe), one [`terminal_line`] per status.
pub fn status_line(line: &str) -> String {
    if !std::io::stderr().is_terminal() {
        return terminal_line(line);
    }
    let raw = raw_mode_active();
    let replaces_status = STATUS_ON_LINE.swap(true, Ordering::Relaxed);
    let mid_line = !AT_LINE_START.swap(false, Ordering::Relaxed);
    format_status(line, raw, mid_line && !replaces_status)
}

fn format_status(line: &str, raw: bool, break_first: bool) -> String {
    use crossterm::terminal::{Clear, ClearType};
    let mut text = String::with_capacity(line.len() + 8);
    if break_first {
        text.push_str(if raw { "\r\n" } else { "\n" });
    }
    text.push('\r');
    // Writing to a String cannot fail.
    let _ = crossterm::Command::write_ansi(&Clear(ClearType::CurrentLine), &mut text);
    text.push_str(line);
    text
}

fn format_line(line: &str, raw: bool, break_first: bool) -> String {
    let end = if raw { "\r\n" } else { "\n" };
    let mut text = String::with_capacity(line.len() + 4);
    if break_first {
        text.push_str(end);
    }
    text.push_str(line);
    text.push_str(end);
    text
}

/// Stderr for log output: while raw mode is on, every `"\n"` becomes `"\r\n"`.
/// `tracing_subscriber`'s writer for the CLI (`with_writer(TerminalStderr::default)`).
#[derive(Debug, Default, Clone, Copy)]
pub struct TerminalStderr;

impl Write for TerminalStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !raw_mode_active() {
            return std::io::stderr().write(buf);
        }
        std::io::stderr().write_all(&crlf(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `"\n"` not already preceded by `"\r"` becomes `"\r\n"`.
fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 8);
    let mut previous = 0u8;
    for &byte in bytes {
        if byte == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(byte);
        previous = byte;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_frame_and_size_query() {
        assert_eq!(
            resize_message(120, 40),
            Message::text(r#"{"type":"resize","cols":120,"rows":40}"#)
        );
        let Message::Text(text) = resize_message(80, 24) else {
            panic!("a text frame")
        };
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type": "resize", "cols": 80, "rows": 24})
        );
        assert_eq!(
            size_query(80, 24),
            vec![
                ("tty_width".to_owned(), "80".to_owned()),
                ("tty_height".to_owned(), "24".to_owned())
            ]
        );
    }

    #[test]
    fn lines_end_with_crlf_only_in_raw_mode() {
        assert_eq!(format_line("wsup: x", false, false), "wsup: x\n");
        assert_eq!(format_line("wsup: x", true, false), "wsup: x\r\n");
        assert_eq!(format_line("wsup: x", true, true), "\r\nwsup: x\r\n");
        assert_eq!(format_line("wsup: x", false, true), "\nwsup: x\n");
        assert_eq!(format_status("wsup: x", true, false), "\r\x1b[2Kwsup: x");
        assert_eq!(format_status("wsup: x", true, true), "\r\n\r\x1b[2Kwsup: x");
        assert_eq!(format_status("wsup: x", false, true), "\n\r\x1b[2Kwsup: x");
        assert_eq!(crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
    }

    #[test]
    fn the_size_is_in_the_dial_query_before_the_session_is_polled() {
        let (link, ends) =
            super::super::link(super::super::LINK_CAPACITY, super::super::INBOUND_BYTES);
        let session = ShellSession::new(tokio::io::empty(), tokio::io::sink()).size(100, 30);
        let future = session.run(link);
        assert_eq!(ends.dial_query.get(), size_query(100, 30));
        drop(future);
    }

    async fn next_item(rx: &mut mpsc::Receiver<Outbound>) -> Outbound {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an item in time")
            .expect("an item")
    }

    #[tokio::test]
    async fn input_is_sent_raw_and_ctrl_c_becomes_an_interrupt_in_order() {
        let (tx, mut rx) = mpsc::channel(16);
        let (control_tx, mut control_rx) = mpsc::channel(8);
        let reader = tokio::spawn(send_input(&b"ls -l\r\x1b[A\x03\x03q"[..], tx, control_tx));
        let first = next_item(&mut rx).await;
        assert_eq!(first.message, Message::binary(&b"ls -l\r\x1b[A"[..]));
        // The interrupt waits until the bytes before it were taken by the supervisor.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(control_rx.try_recv().is_err(), "Ctrl+C overtook the input");
        drop(first);
        assert_eq!(control_rx.recv().await, Some(Control::Interrupt));
        assert_eq!(control_rx.recv().await, Some(Control::Interrupt));
        assert_eq!(next_item(&mut rx).await.message, Message::binary(&b"q"[..]));
        reader.await.unwrap();
        assert!(rx.recv().await.is_none(), "EOF closes the outbound channel");
    }

    #[tokio::test(start_paused = true)]
    async fn ctrl_c_is_not_held_back_forever_by_unsent_input() {
        // Offline: the queued bytes are never taken, the interrupt goes anyway.
        let (tx, mut rx) = mpsc::channel(16);
        let (control_tx, mut control_rx) = mpsc::channel(8);
        let reader = tokio::spawn(send_input(&b"typed ahead\x03"[..], tx, control_tx));
        let held = next_item(&mut rx).await;
        assert_eq!(control_rx.recv().await, Some(Control::Interrupt));
        drop(held);
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn frames_are_written_raw_resizes_are_sent_and_redials_carry_the_size() {
        let (link, mut ends) =
            super::super::link(super::super::LINK_CAPACITY, super::super::INBOUND_BYTES);
        let (out_tx, mut out_rx) = tokio::io::duplex(1 << 16);
        let (in_tx, in_rx) = tokio::io::duplex(1 << 16);
        let (resize_tx, resize_rx) = mpsc::channel(4);
        let session = ShellSession::new(in_rx, out_tx)
            .size(80, 24)
            .resizes(resize_rx);
        let task = tokio::spawn(session.run(link));

        ends.inbound
            .send(Message::binary(&b"$ \x1b[1m"[..]))
            .await
            .unwrap();
        ends.inbound.send(Message::text("text\r\n")).await.unwrap();
        let expected = b"$ \x1b[1mtext\r\n";
        let mut printed = vec![0u8; expected.len()];
        tokio::time::timeout(Duration::from_secs(5), out_rx.read_exact(&mut printed))
            .await
            .expect("output in time")
            .unwrap();
        assert_eq!(printed, expected);

        resize_tx.send((100, 30)).await.unwrap();
        let resize = ends.outbound.recv().await.unwrap();
        assert_eq!(resize.message, resize_message(100, 30));
        assert_eq!(ends.dial_query.get(), size_query(100, 30));
        // The same size again sends nothing.
        resize_tx.send((100, 30)).await.unwrap();

        let mut in_tx = in_tx;
        in_tx.write_all(b"x").await.unwrap();
        assert_eq!(
            ends.outbound.recv().await.unwrap().message,
            Message::binary(&b"x"[..])
        );
        // Input EOF: the outbound channel closes (the supervisor sends close 1000).
        drop(in_tx);
        assert!(ends.outbound.recv().await.is_none());
        // The supervisor stopping ends the session.
        drop(ends);
        task.await.unwrap();
    }
}
