//! `wsup shell` in a real pseudo-terminal, against `wsup serve --script shell` (a
//! line-echoing fake shell): the size in the query, typing and output, Ctrl+C forwarded
//! while connected and quitting (130) while offline, resizes, and the terminal settings
//! equal before and after on every exit path (normal close, failure, Ctrl+C, SIGTERM).
//!
//! The pty is opened with rustix (`openpt`, `grantpt`, `unlockpt`); wsup runs as a session
//! leader with the pty as its controlling terminal and as stdin, stdout and stderr, as
//! under a terminal emulator. Everything it writes is collected from the master side;
//! every wait is for expected output, bounded by [`BOUND`].

mod support;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{ExitStatus, Stdio};

use rustix::termios::{self, LocalModes, Winsize};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use support::{serve, Wsup, BOUND};

/// A pseudo-terminal: the master (the emulator's side) and the slave (wsup's terminal).
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Pty {
    fn open(cols: u16, rows: u16) -> Pty {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .expect("open a pty master");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let slave = rustix::fs::open(
            name.as_c_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .expect("open the pty slave");
        let pty = Pty { master, slave };
        pty.resize(cols, rows);
        pty
    }

    /// Like a terminal window resized: the kernel sends SIGWINCH to the foreground group.
    fn resize(&self, cols: u16, rows: u16) {
        termios::tcsetwinsize(
            &self.master,
            Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .expect("set the pty size");
    }

    /// The terminal settings, as `stty -g` would show them (every field).
    fn settings(&self) -> String {
        format!(
            "{:?}",
            termios::tcgetattr(&self.slave).expect("read the terminal settings")
        )
    }

    fn local_modes(&self) -> LocalModes {
        termios::tcgetattr(&self.slave)
            .expect("read the terminal settings")
            .local_modes
    }
}

/// Everything the terminal has received, and whether that is all (every slave closed).
#[derive(Default)]
struct Screen {
    bytes: Vec<u8>,
    closed: bool,
}

impl Screen {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// How a `wsup shell` in a pty ended.
struct Ended {
    status: ExitStatus,
    /// Everything it showed, up to its last byte.
    screen: String,
    /// The terminal settings after it exited.
    settings: String,
}

/// `wsup ARGS...` running in its own pty.
struct PtyWsup {
    child: Child,
    pty: Pty,
    screen: watch::Receiver<Screen>,
}

impl PtyWsup {
    fn spawn(args: &[&str], cols: u16, rows: u16) -> (PtyWsup, String) {
        let pty = Pty::open(cols, rows);
        let settings_before = pty.settings();
        let stdio = || Stdio::from(pty.slave.try_clone().expect("dup the pty slave"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_wsup"));
        command
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("WSUP_LOG")
            .env("NO_COLOR", "1")
            .env("TERM", "xterm")
            .stdin(stdio())
            .stdout(stdio())
            .stderr(stdio())
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // A new session whose controlling terminal is the pty (stdin): what a
                // terminal emulator does for the program it runs.
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(BorrowedFd::borrow_raw(0))?;
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn wsup in the pty");
        drop(command);
        let screen = read_screen(pty.master.try_clone().expect("dup the pty master"));
        (PtyWsup { child, pty, screen }, settings_before)
    }

    /// Keys typed on the terminal.
    fn type_keys(&self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let written = rustix::io::write(&self.pty.master, rest).expect("write to the pty");
            rest = &rest[written..];
        }
    }

    fn screen_text(&self) -> String {
        self.screen.borrow().text()
    }

    /// Waits until the terminal has shown `needle`; returns everything shown so far.
    async fn wait_for(&self, needle: &str) -> String {
        let mut screen = self.screen.clone();
        let found = tokio::time::timeout(
            BOUND,
            screen.wait_for(|shown| shown.text().contains(needle)),
        )
        .await;
        match found {
            Ok(Ok(_)) => self.screen_text(),
            _ => panic!(
                "the terminal did not show {needle:?} within {BOUND:?}; it shows:\n{:?}",
                self.screen_text()
            ),
        }
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().expect("poll wsup").is_none()
    }

    /// Waits for the exit (bounded), reads the terminal settings, then closes the slave
    /// and collects the output up to its last byte.
    async fn finish(mut self) -> Ended {
        let status = match tokio::time::timeout(BOUND, self.child.wait()).await {
            Ok(status) => status.expect("wait for wsup"),
            Err(_) => panic!(
                "wsup did not exit within {BOUND:?}; the terminal shows:\n{:?}",
                self.screen_text()
            ),
        };
        let settings = self.pty.settings();
        drop(self.pty.slave);
        let drained = tokio::time::timeout(BOUND, self.screen.wait_for(|s| s.closed)).await;
        let screen = match drained {
            Ok(Ok(shown)) => shown.text(),
            _ => panic!("the pty was not closed after wsup exited"),
        };
        Ended {
            status,
            screen,
            settings,
        }
    }
}

impl PtyWsup {
    /// Waits for the exit and checks what every run must leave behind: exit `code`, no
    /// bare "\n" on the raw terminal, the terminal settings as they were. Returns the
    /// screen for the test's own checks.
    async fn finish_restored(self, code: i32, settings_before: &str) -> String {
        let Ended {
            status,
            screen,
            settings,
        } = self.finish().await;
        assert_exit(status, code, &screen);
        assert_no_bare_newline(&screen);
        assert_eq!(settings, settings_before, "terminal settings changed");
        screen
    }
}

/// Everything the terminal receives, collected by a thread reading the master. The read
/// ends (EIO) once every slave descriptor is closed and what they wrote was read.
fn read_screen(master: OwnedFd) -> watch::Receiver<Screen> {
    let (tx, rx) = watch::channel(Screen::default());
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        loop {
            match rustix::io::read(master.as_fd(), &mut buffer) {
                Ok(0) => break,
                Ok(read) => tx.send_modify(|shown| shown.bytes.extend_from_slice(&buffer[..read])),
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
            }
        }
        tx.send_modify(|shown| shown.closed = true);
    });
    rx
}

fn assert_raw(pty: &Pty) {
    let modes = pty.local_modes();
    for (flag, name) in [
        (LocalModes::ICANON, "ICANON"),
        (LocalModes::ECHO, "ECHO"),
        (LocalModes::ISIG, "ISIG"),
    ] {
        assert!(
            !modes.contains(flag),
            "raw mode: {name} should be off, got {modes:?}"
        );
    }
}

fn assert_exit(status: ExitStatus, code: i32, screen: &str) {
    assert_eq!(
        status.code(),
        Some(code),
        "exit status {status:?}; the terminal shows:\n{screen:?}"
    );
    assert!(!screen.contains("panicked"), "wsup panicked:\n{screen:?}");
}

/// In raw mode `"\n"` alone would not return the carriage (a staircase); after raw mode
/// the terminal turns `"\n"` into `"\r\n"` itself. Either way the master sees only `\r\n`.
fn assert_no_bare_newline(screen: &str) {
    let bytes = screen.as_bytes();
    for (at, &byte) in bytes.iter().enumerate() {
        if byte == b'\n' {
            assert!(
                at > 0 && bytes[at - 1] == b'\r',
                "a bare \\n at byte {at} (printed in raw mode without \\r):\n{screen:?}"
            );
        }
    }
}

#[tokio::test]
async fn typing_ctrl_c_and_resize_while_connected_then_sigterm_restores_the_terminal() {
    let (_server, url) = serve("shell").await;
    let (mut wsup, settings_before) = PtyWsup::spawn(&["shell", &url], 100, 30);

    // The first dial carried the pty's size.
    wsup.wait_for("[tty 100x30]\r\n$ ").await;
    assert_raw(&wsup.pty);

    // Raw keys: the server echoes them, the terminal itself does not (no "hello" twice).
    wsup.type_keys(b"hello\r");
    let shown = wsup.wait_for("you typed: hello\r\n$ ").await;
    assert_eq!(shown.matches("hello").count(), 2, "{shown:?}");

    // Ctrl+C while connected goes to the remote (which answers ^C); wsup keeps running.
    wsup.type_keys(b"par\x03");
    wsup.wait_for("par^C\r\n$ ").await;
    assert!(wsup.still_running(), "Ctrl+C while connected must not quit");

    // A resize: SIGWINCH, then the resize frame.
    wsup.pty.resize(120, 40);
    wsup.wait_for("[resized to 120x40]\r\n$ ").await;
    wsup.type_keys(b"still here\r");
    wsup.wait_for("you typed: still here\r\n$ ").await;

    support::send_signal(wsup.child.id().expect("running"), "TERM");
    let screen = wsup.finish_restored(143, &settings_before).await;
    assert!(screen.contains("terminated (SIGTERM)"), "{screen:?}");
    // The final line starts on a line of its own, not after the prompt.
    assert!(
        screen.contains("$ \r\nwsup: terminated (SIGTERM)\r\n"),
        "{screen:?}"
    );
}

#[tokio::test]
async fn ctrl_c_while_reconnecting_exits_130_and_restores_the_terminal() {
    let (_server, url) = serve("close:1011:No shell-agent listening").await;
    let (wsup, settings_before) =
        PtyWsup::spawn(&["shell", &url, "--backoff-initial", "30s"], 80, 24);

    // The status line while reconnecting: on a line of its own (cleared first, to be
    // rewritten in place), with the server's reason.
    let shown = wsup.wait_for("retrying in").await;
    assert!(
        shown.starts_with("\r\x1b[2Kwsup: ") && shown.contains("No shell-agent listening"),
        "{shown:?}"
    );
    assert_raw(&wsup.pty);

    wsup.type_keys(b"\x03");
    let screen = wsup.finish_restored(130, &settings_before).await;
    assert!(
        screen.contains("interrupted (Ctrl+C while not connected)"),
        "{screen:?}"
    );
}

#[tokio::test]
async fn exit_closes_normally_and_restores_the_terminal() {
    let (_server, url) = serve("shell").await;
    let (wsup, settings_before) = PtyWsup::spawn(&["shell", &url], 80, 24);
    wsup.wait_for("[tty 80x24]\r\n$ ").await;
    wsup.type_keys(b"exit\r");
    let screen = wsup.finish_restored(0, &settings_before).await;
    assert!(screen.contains("exit\r\nlogout\r\n"), "{screen:?}");
}

#[tokio::test]
async fn a_permanent_failure_exits_69_and_restores_the_terminal() {
    let (_server, url) = serve("http:404").await;
    let (wsup, settings_before) = PtyWsup::spawn(&["shell", &url], 80, 24);
    let screen = wsup.finish_restored(69, &settings_before).await;
    assert!(screen.contains("404"), "{screen:?}");
}

#[tokio::test]
async fn piped_input_works_without_a_terminal() {
    let (_server, url) = serve("shell").await;
    let mut wsup = Wsup::spawn(["shell", url.as_str()]);
    // No terminal: no size in the query, no raw mode.
    wsup.wait_stdout("[tty unknown]\r\n$ ").await;
    wsup.write(b"one\ntwo\x03").await;
    wsup.wait_stdout("you typed: one\r\n$ two^C\r\n$ ").await;
    wsup.close_stdin();
    let done = wsup.finish().await;
    done.assert_code(0)
        .assert_stdout("[tty unknown]\r\n$ one\r\nyou typed: one\r\n$ two^C\r\n$ ");
}

/// The same protocol against the independent server of `tests/support` (an echo server
/// that records what it receives), so the frames are checked on the wire, not through
/// wsup's own fake shell.
#[tokio::test]
async fn frames_on_the_wire_against_an_independent_server() {
    let server = support::Server::always(support::Behaviour::Echo).await;
    let url = server.url();
    let (mut wsup, settings_before) = PtyWsup::spawn(&["shell", &url], 90, 20);
    let connection = server
        .wait_for("the upgrade", |connections| {
            connections.first().filter(|c| c.upgraded).cloned()
        })
        .await;
    let query = connection.query.clone().unwrap_or_default();
    assert!(
        query.contains("tty_width=90") && query.contains("tty_height=20"),
        "{query}"
    );

    // Keys go out raw, as binary frames; the echo comes back to the screen.
    wsup.type_keys(b"ls -l\r");
    wsup.wait_for("ls -l").await;
    // Ctrl+C while connected: a binary frame holding the single byte 0x03.
    wsup.type_keys(b"\x03");
    server
        .wait_for("the Ctrl+C frame", |connections| {
            connections[0]
                .binaries
                .iter()
                .any(|b| b.as_slice() == [0x03])
                .then_some(())
        })
        .await;
    assert!(wsup.still_running(), "Ctrl+C while connected must not quit");
    let typed: Vec<u8> = server.connections()[0]
        .binaries
        .iter()
        .flatten()
        .copied()
        .collect();
    assert_eq!(
        typed, b"ls -l\r\x03",
        "the server received the keys as typed"
    );

    // A resize: a JSON text frame with the new size.
    wsup.pty.resize(132, 43);
    server
        .wait_for("the resize frame", |connections| {
            connections[0]
                .texts
                .iter()
                .any(|t| t == r#"{"type":"resize","cols":132,"rows":43}"#)
                .then_some(())
        })
        .await;

    support::send_signal(wsup.child.id().expect("running"), "INT");
    let Ended {
        status,
        screen,
        settings,
    } = wsup.finish().await;
    assert_exit(status, 130, &screen);
    assert_eq!(server.wait_client_close(0).await.0, 1001);
    assert_eq!(settings, settings_before, "terminal settings changed");
}

/// On a terminal, the reconnect status is one line rewritten in place: each retry plan
/// returns the carriage and clears the line instead of starting a new one; the final
/// reason gets a line of its own.
#[tokio::test]
async fn retry_notices_rewrite_one_status_line_on_the_terminal() {
    let (_server, url) = serve("close:1011:No shell-agent listening").await;
    let (wsup, settings_before) = PtyWsup::spawn(
        &[
            "shell",
            &url,
            "--max-retries",
            "3",
            "--backoff-initial",
            "10ms",
            "--backoff-max",
            "20ms",
        ],
        80,
        24,
    );
    let screen = wsup.finish_restored(75, &settings_before).await;
    let clear_line = "\r\x1b[2K";
    for attempt in 1..=3 {
        assert!(
            screen.contains(&format!("{clear_line}wsup: "))
                && screen.contains(&format!("attempt {attempt} of 3")),
            "attempt {attempt} is not a rewritten status line: {screen:?}"
        );
    }
    // The server accepts, then closes: "connected" is part of the same status line.
    for attempt in 1..=2 {
        assert!(
            screen.contains(&format!(
                "attempt {attempt} of 3{clear_line}wsup: connected{clear_line}wsup: "
            )),
            "attempt {attempt} is followed by a new line instead of a rewrite: {screen:?}"
        );
    }
    assert_eq!(
        screen.matches("retrying in").count(),
        3,
        "one status per retry: {screen:?}"
    );
    assert!(
        screen.contains("connected\r\nwsup: ") && screen.contains("giving up after 3 retries"),
        "the final reason starts a line of its own: {screen:?}"
    );
}

/// With stderr not a terminal (a log file, a pipe), one line per retry, as before.
#[tokio::test]
async fn retry_notices_are_one_line_each_when_stderr_is_not_a_terminal() {
    let (_server, url) = serve("close:1011:No shell-agent listening").await;
    let done = Wsup::spawn([
        "shell",
        url.as_str(),
        "--max-retries",
        "2",
        "--backoff-initial",
        "10ms",
        "--backoff-max",
        "20ms",
    ])
    .finish()
    .await;
    done.assert_code(75).assert_stderr_lacks("\x1b[");
    let retries: Vec<&str> = done
        .stderr
        .lines()
        .filter(|line| line.contains("retrying in"))
        .collect();
    assert_eq!(retries.len(), 2, "{}", done.dump());
    assert!(retries[0].starts_with("wsup: ") && retries[0].ends_with("attempt 1 of 2"));
    assert!(retries[1].starts_with("wsup: ") && retries[1].ends_with("attempt 2 of 2"));
}
