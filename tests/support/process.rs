//! Running the real `wsup` binary: piped stdin/stdout/stderr, output collected as it
//! arrives so tests can wait for a line (event-driven, bounded), signals via `kill`.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;

use super::BOUND;

/// Flags that keep retries quick, for every test that does not test them.
pub const FAST: &[&str] = &["--backoff-initial", "10ms", "--backoff-max", "50ms"];

/// Everything read from one of the child's output pipes so far.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub bytes: Vec<u8>,
    /// The pipe reached EOF (the process and everything holding the pipe are gone).
    pub eof: bool,
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

fn capture(mut pipe: impl AsyncRead + Unpin + Send + 'static) -> watch::Receiver<Captured> {
    let (tx, rx) = watch::channel(Captured::default());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => tx.send_modify(|c| c.bytes.extend_from_slice(&buf[..n])),
            }
        }
        tx.send_modify(|c| c.eof = true);
    });
    rx
}

fn not_captured() -> watch::Receiver<Captured> {
    watch::channel(Captured {
        bytes: Vec::new(),
        eof: true,
    })
    .1
}

/// The environment variables wsup reads for proxies.
pub const PROXY_VARIABLES: &[&str] = &[
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "REQUEST_METHOD",
];

/// The `wsup` binary built for these tests, with a clean logging and proxy environment.
pub fn wsup_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wsup"));
    // The machine's own proxy settings must not reach the tests; the proxy tests set
    // their own.
    for var in PROXY_VARIABLES {
        command.env_remove(var);
    }
    command
        .env_remove("RUST_LOG")
        .env_remove("WSUP_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A running `wsup` process.
pub struct Wsup {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: watch::Receiver<Captured>,
    stderr: watch::Receiver<Captured>,
    pub started: Instant,
}

impl Wsup {
    /// `wsup ARGS...`
    pub fn spawn<I, S>(args: I) -> Wsup
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = wsup_command();
        command.args(args);
        Wsup::spawn_command(command)
    }

    /// A command built from [`wsup_command`], for extra environment.
    pub fn spawn_command(mut command: Command) -> Wsup {
        let started = Instant::now();
        let mut child = command.spawn().expect("spawn the wsup binary");
        let stdin = child.stdin.take();
        // A pipe the test redirected elsewhere reads as empty and closed.
        let stdout = child.stdout.take().map_or_else(not_captured, capture);
        let stderr = child.stderr.take().map_or_else(not_captured, capture);
        Wsup {
            child,
            stdin,
            stdout,
            stderr,
            started,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child
            .id()
            .expect("the process has not been reaped yet")
    }

    /// Writes bytes to stdin.
    pub async fn write(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes).await.expect("write to wsup's stdin");
        stdin.flush().await.expect("flush wsup's stdin");
    }

    /// Writes `line` and a newline to stdin.
    pub async fn write_line(&mut self, line: &str) {
        self.write(format!("{line}\n").as_bytes()).await;
    }

    /// Closes stdin: wsup sees EOF.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn stdout_now(&self) -> Captured {
        self.stdout.borrow().clone()
    }

    pub fn stderr_now(&self) -> Captured {
        self.stderr.borrow().clone()
    }

    /// Waits until stdout contains `needle`; returns stdout so far.
    pub async fn wait_stdout(&self, needle: &str) -> String {
        wait_in(&self.stdout, &self.stderr, "stdout", needle).await
    }

    /// Waits until stderr contains `needle`; returns stderr so far.
    pub async fn wait_stderr(&self, needle: &str) -> String {
        wait_in(&self.stderr, &self.stdout, "stderr", needle).await
    }

    /// Waits for the first complete line on stdout (e.g. the URL `wsup serve` prints).
    pub async fn first_stdout_line(&self) -> String {
        let text = self.wait_stdout("\n").await;
        text.lines().next().unwrap_or_default().to_owned()
    }

    /// Sends `SIGNAL` (`"INT"`, `"TERM"`) with `kill -s`; returns the instant just before
    /// the signal was sent.
    pub fn signal(&self, signal: &str) -> Instant {
        send_signal(self.pid(), signal)
    }

    /// Waits for the process to exit (bounded by [`BOUND`]) and for its output pipes to
    /// close; kills it and panics with its output if it does not exit in time.
    pub async fn finish(self) -> Finished {
        self.finish_within(BOUND).await
    }

    pub async fn finish_within(mut self, bound: Duration) -> Finished {
        let status = match tokio::time::timeout(bound, self.child.wait()).await {
            Ok(status) => status.expect("wait for wsup"),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                panic!(
                    "wsup did not exit within {bound:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.stdout.borrow().text(),
                    self.stderr.borrow().text()
                );
            }
        };
        let exited_at = Instant::now();
        let mut outputs = Vec::new();
        for (name, pipe) in [("stdout", &mut self.stdout), ("stderr", &mut self.stderr)] {
            let captured = tokio::time::timeout(BOUND, pipe.wait_for(|c| c.eof))
                .await
                .unwrap_or_else(|_| panic!("wsup's {name} was not closed after it exited"))
                .expect("capture task alive")
                .clone();
            outputs.push(captured.bytes);
        }
        let stderr = String::from_utf8_lossy(&outputs.pop().expect("stderr")).into_owned();
        let stdout = outputs.pop().expect("stdout");
        Finished {
            status,
            stdout,
            stderr,
            elapsed: exited_at - self.started,
            exited_at,
        }
    }
}

async fn wait_in(
    pipe: &watch::Receiver<Captured>,
    other: &watch::Receiver<Captured>,
    name: &str,
    needle: &str,
) -> String {
    let mut pipe = pipe.clone();
    let waited = tokio::time::timeout(BOUND, async {
        let found = pipe
            .wait_for(|c| c.eof || c.text().contains(needle))
            .await
            .expect("capture task alive");
        (found.eof && !found.text().contains(needle), found.text())
    })
    .await;
    match waited {
        Ok((false, text)) => text,
        Ok((true, text)) => panic!(
            "wsup's {name} closed without {needle:?}\n--- {name} ---\n{text}\n--- the other pipe ---\n{}",
            other.borrow().text()
        ),
        Err(_) => panic!(
            "timed out after {BOUND:?} waiting for {needle:?} on wsup's {name}\n--- {name} ---\n{}\n--- the other pipe ---\n{}",
            pipe.borrow().text(),
            other.borrow().text()
        ),
    }
}

/// `wsup serve --script SCRIPT` on a free loopback port; returns it and its URL.
pub async fn serve(script: &str) -> (Wsup, String) {
    let serve = Wsup::spawn(["serve", "--listen", "127.0.0.1:0", "--script", script]);
    let url = serve.first_stdout_line().await;
    assert!(url.starts_with("ws://127.0.0.1:"), "serve printed {url:?}");
    (serve, url)
}

/// `wsup connect URL` with fast retries ([`FAST`]) and `extra` flags after the URL.
pub fn connect(url: &str, extra: &[&str]) -> Wsup {
    let mut args = vec!["connect", url];
    args.extend_from_slice(FAST);
    args.extend_from_slice(extra);
    Wsup::spawn(args)
}

/// A file of `tests/fixtures/` (the test CA and the `localhost` certificate and key).
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// [`serve`] over TLS: `wsup serve --tls-cert` with the `localhost` certificate of
/// `tests/fixtures/` (signed by `ca.pem`, which clients pass as `--ca-cert`); returns
/// the child and the `wss://` URL it printed.
pub async fn serve_tls(script: &str) -> (Wsup, String) {
    let serve = Wsup::spawn([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--script",
        script,
        "--tls-cert",
        &fixture("localhost-cert.pem"),
        "--tls-key",
        &fixture("localhost-key.pem"),
    ]);
    let url = serve.first_stdout_line().await;
    assert!(url.starts_with("wss://127.0.0.1:"), "serve printed {url:?}");
    (serve, url)
}

/// Stops a `wsup serve` from [`serve`] with SIGTERM: a clean shutdown, exit 143.
pub async fn stop_serve(serve: Wsup) {
    serve.signal("TERM");
    serve.finish().await.assert_code(143);
}

/// `kill -s SIGNAL PID`; returns the instant just before `kill` was started.
pub fn send_signal(pid: u32, signal: &str) -> Instant {
    let before = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {signal} {pid} failed: {status}");
    before
}

/// How a `wsup` process ended and what it printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// From spawn to the observed exit.
    pub elapsed: Duration,
    pub exited_at: Instant,
}

impl Finished {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The exit code; panics (with the output) if the process died by a signal.
    pub fn code(&self) -> i32 {
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => code,
            (None, signal) => panic!(
                "wsup died by signal {signal:?} instead of exiting\n{}",
                self.dump()
            ),
        }
    }

    /// Asserts a real exit code (not death by a signal).
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.status.signal(),
            None,
            "wsup died by a signal\n{}",
            self.dump()
        );
        assert_eq!(
            self.status.code(),
            Some(expected),
            "wrong exit status\n{}",
            self.dump()
        );
        assert!(
            !self.stderr.contains("panicked"),
            "wsup panicked\n{}",
            self.dump()
        );
        self
    }

    /// Asserts stdout is exactly `expected`: session data and nothing else.
    pub fn assert_stdout(&self, expected: &str) -> &Self {
        assert_eq!(
            self.stdout_text(),
            expected,
            "stdout must carry only session data\n{}",
            self.dump()
        );
        self
    }

    pub fn assert_stderr_contains(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr should contain {needle:?}\n{}",
            self.dump()
        );
        self
    }

    pub fn assert_stderr_lacks(&self, needle: &str) -> &Self {
        assert!(
            !self.stderr.contains(needle),
            "stderr must not contain {needle:?}\n{}",
            self.dump()
        );
        self
    }

    /// The output, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "status: {:?}, after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.elapsed,
            self.stdout_text(),
            self.stderr
        )
    }
}
