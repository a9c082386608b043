//! SIGINT and SIGTERM against the real `wsup connect` in each phase of a session:
//! connected, dialing and backing off. A signal always wins: the process exits with a
//! real exit code (130 / 143, not death by the signal) within 100 ms. The tests assert
//! < 1 s to stay robust on a loaded machine and print the measured latency
//! (`cargo test --test cli_signals -- --nocapture` shows it).

mod support;

use std::time::{Duration, Instant};

use support::{connect, Behaviour, Finished, Server, Wsup, FAST};

/// The target is 100 ms; this bound only catches a signal that is not acted upon.
const SIGNAL_EXIT_BOUND: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
enum Sig {
    Int,
    Term,
}

impl Sig {
    fn name(self) -> &'static str {
        match self {
            Sig::Int => "INT",
            Sig::Term => "TERM",
        }
    }

    fn exit_code(self) -> i32 {
        match self {
            Sig::Int => 130,
            Sig::Term => 143,
        }
    }

    /// The final line wsup prints for it.
    fn final_words(self) -> &'static str {
        match self {
            Sig::Int => "interrupted (SIGINT)",
            Sig::Term => "terminated (SIGTERM)",
        }
    }
}

/// Sends `sig`, waits for the exit, checks the exit code and the latency.
async fn signal_and_finish(client: Wsup, sig: Sig, phase: &str) -> Finished {
    let sent_at: Instant = client.signal(sig.name());
    let done = client.finish().await;
    let latency = done.exited_at - sent_at;
    eprintln!("SIG{} while {phase}: exit after {latency:?}", sig.name());
    done.assert_code(sig.exit_code())
        .assert_stderr_contains(sig.final_words());
    assert!(
        latency < SIGNAL_EXIT_BOUND,
        "SIG{} while {phase}: exit took {latency:?} (target 100 ms)\n{}",
        sig.name(),
        done.dump()
    );
    done
}

// --------------------------------------------------------------------- connected

async fn while_connected(sig: Sig) {
    let server = Server::always(Behaviour::Echo).await;
    let mut client = connect(&server.url(), &[]);
    // The echo proves the session is connected.
    client.write_line("are you there").await;
    client.wait_stdout("are you there\n").await;

    let done = signal_and_finish(client, sig, "connected").await;
    done.assert_stdout("are you there\n");
    let (code, _) = server.wait_client_close(0).await;
    assert_eq!(code, 1001, "a clean shutdown says 'going away'");
    assert_eq!(server.connection_count(), 1);
}

#[tokio::test]
async fn sigint_while_connected_exits_130_after_a_close_frame() {
    while_connected(Sig::Int).await;
}

#[tokio::test]
async fn sigterm_while_connected_exits_143_after_a_close_frame() {
    while_connected(Sig::Term).await;
}

// ----------------------------------------------------------------------- dialing

async fn while_dialing(sig: Sig) {
    // The server accepts TCP and never answers the upgrade request.
    let server = Server::always(Behaviour::Hang).await;
    let client = connect(&server.url(), &["--connect-timeout", "30s"]);
    server.wait_connections(1).await;

    let done = signal_and_finish(client, sig, "dialing").await;
    done.assert_stdout("");
    assert_eq!(server.connection_count(), 1, "no redial after a signal");
}

#[tokio::test]
async fn sigint_while_dialing_exits_130() {
    while_dialing(Sig::Int).await;
}

#[tokio::test]
async fn sigterm_while_dialing_exits_143() {
    while_dialing(Sig::Term).await;
}

// -------------------------------------------------------------------- backing off

async fn while_backing_off(sig: Sig) {
    let url = format!("ws://127.0.0.1:{}/", support::refused_port());
    let client = Wsup::spawn([
        "connect",
        &url,
        "--backoff-initial",
        "30s",
        "--backoff-max",
        "30s",
    ]);
    client.wait_stderr("retrying in").await;

    let done = signal_and_finish(client, sig, "backing off").await;
    done.assert_stdout("")
        .assert_stderr_contains("connection refused");
}

#[tokio::test]
async fn sigint_while_backing_off_exits_130() {
    while_backing_off(Sig::Int).await;
}

#[tokio::test]
async fn sigterm_while_backing_off_exits_143() {
    while_backing_off(Sig::Term).await;
}

/// A server-imposed wait is a backoff that jitter cannot cut short: the signal still
/// wins. (Retry-After: 100000 also shows the 5-minute cap.)
#[tokio::test]
async fn sigterm_while_waiting_out_retry_after_exits_143() {
    let server = Server::always(Behaviour::http_with(503, &[("Retry-After", "100000")])).await;
    let client = connect(&server.url(), &[]);
    client.wait_stderr("retrying in 300.0 s").await;

    let done = signal_and_finish(client, Sig::Term, "waiting out Retry-After").await;
    done.assert_stdout("");
    assert_eq!(server.connection_count(), 1);
}

// ------------------------------------------------------------ stdout not read

/// Bytes waiting in a pipe, from its read end.
fn pipe_fill(reader: &std::io::PipeReader) -> usize {
    use std::os::fd::AsRawFd;
    let mut waiting: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(reader.as_raw_fd(), libc::FIONREAD, &mut waiting) };
    assert_eq!(rc, 0, "ioctl(FIONREAD) on the stdout pipe");
    waiting as usize
}

/// A signal wins even when stdout is a pipe nobody reads (a paused pager, a stuck
/// consumer): wsup must not sit in a write to it, nor in a flush at exit.
async fn while_stdout_is_full(sig: Sig) {
    let flood: Vec<_> = (0..1000)
        .map(|i| {
            tokio_tungstenite::tungstenite::Message::text(format!(
                "{i:05} {}",
                "x".repeat(16 << 10)
            ))
        })
        .collect();
    let server = Server::always(Behaviour::send_then_close(flood, 1000, "")).await;
    let (reader, writer) = std::io::pipe().expect("a pipe for stdout");
    let mut command = support::wsup_command();
    command
        .args(["connect", &server.url()])
        .args(FAST)
        .stdout(writer);
    let client = Wsup::spawn_command(command);
    // Wait (bounded) until the pipe is three quarters full (the kernel may call a pipe
    // full before every byte of it is used): wsup, flooded, blocks in a write soon after.
    let capacity = {
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETPIPE_SZ takes no pointer.
        unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_GETPIPE_SZ) as usize }
    };
    let deadline = Instant::now() + support::BOUND;
    while pipe_fill(&reader) < capacity / 4 * 3 {
        assert!(Instant::now() < deadline, "the stdout pipe never filled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal_and_finish(client, sig, "blocked on a full stdout").await;
    drop(reader);
}

#[tokio::test]
async fn sigint_while_stdout_is_full_exits_130() {
    while_stdout_is_full(Sig::Int).await;
}

#[tokio::test]
async fn sigterm_while_stdout_is_full_exits_143() {
    while_stdout_is_full(Sig::Term).await;
}
