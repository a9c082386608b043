//! The exit code and the output tell the truth (issue 10): lost output exits 74, a
//! reader that went away ends quietly, a failing stderr changes nothing, a normal end
//! writes every byte however slow the reader (`--drain-timeout` bounds it), a normal
//! close by the server is said, and `--log-format json` makes every stderr line JSON.
//!
//! The real binary on loopback, against the independent test server or `wsup serve`.

mod support;

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use support::{serve, stop_serve, Behaviour, Server, Wsup, FAST};
use tokio_tungstenite::tungstenite::Message;

/// A stdout (or stderr) on which every write fails with ENOSPC.
fn dev_full() -> Stdio {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full")
        .into()
}

/// `wsup ARGS` with stdout going to `stdout`.
fn spawn_with_stdout(args: &[&str], stdout: Stdio) -> Wsup {
    let mut command = support::wsup_command();
    command.args(args).args(FAST).stdout(stdout);
    Wsup::spawn_command(command)
}

/// Reads one line from a blocking pipe, off the async threads.
async fn read_line(reader: std::io::PipeReader) -> (std::io::PipeReader, String) {
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while reader.read_exact(&mut byte).is_ok() && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        (reader, String::from_utf8_lossy(&line).into_owned())
    })
    .await
    .expect("reader thread")
}

// ------------------------------------------------------------------ item 2: lost output

#[tokio::test]
async fn connect_to_a_full_disk_exits_74_with_one_line_and_closes_1001() {
    let server = Server::always(Behaviour::Echo).await;
    let url = server.url();
    let mut client = spawn_with_stdout(&["connect", &url], dev_full());
    client.write_line("hello").await;
    let (code, _) = server.wait_client_close(0).await;
    assert_eq!(code, 1001, "the server hears the client is going away");
    let done = client.finish().await;
    done.assert_code(74);
    let lines = support::diagnostic_lines(&done.stderr);
    assert_eq!(lines.len(), 1, "one line\n{}", done.dump());
    assert!(
        lines[0].starts_with("wsup: cannot write the output: No space left on device"),
        "{}",
        done.dump()
    );
}

#[tokio::test]
async fn logs_to_a_full_disk_exits_74_with_one_line() {
    let (serve, url) = serve("logs:3").await;
    let done = spawn_with_stdout(&["logs", &url], dev_full())
        .finish()
        .await;
    done.assert_code(74);
    let lines = support::diagnostic_lines(&done.stderr);
    assert_eq!(lines.len(), 1, "one line\n{}", done.dump());
    assert!(
        lines[0].contains("No space left on device"),
        "{}",
        done.dump()
    );
    stop_serve(serve).await;
}

#[tokio::test]
async fn shell_to_a_full_disk_exits_74() {
    let server = Server::always(Behaviour::Echo).await;
    let url = server.url();
    let mut client = spawn_with_stdout(&["shell", &url], dev_full());
    client.write(b"ls\r").await;
    let (code, _) = server.wait_client_close(0).await;
    assert_eq!(code, 1001);
    let done = client.finish().await;
    done.assert_code(74)
        .assert_stderr_contains("No space left on device");
}

#[tokio::test]
async fn connect_whose_reader_went_away_ends_quietly_with_0() {
    // `wsup connect URL | head -1`: the reader takes one line and goes.
    let server = Server::always(Behaviour::Echo).await;
    let url = server.url();
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut client = spawn_with_stdout(&["connect", &url], writer.into());
    client.write_line("one").await;
    let (reader, first) = read_line(reader).await;
    assert_eq!(first, "one");
    drop(reader);
    client.write_line("two").await;
    let done = client.finish().await;
    done.assert_code(0);
    assert_eq!(done.stderr, "", "nothing to say\n{}", done.dump());
}

#[tokio::test]
async fn logs_whose_reader_went_away_ends_quietly_with_0() {
    // `wsup logs URL | head -1` on a stream that goes on.
    let (serve, url) = serve("logs:100000").await;
    let (reader, writer) = std::io::pipe().expect("pipe");
    let client = spawn_with_stdout(&["logs", &url], writer.into());
    let (reader, first) = read_line(reader).await;
    assert!(first.ends_with("| pod-0 | line 1"), "{first:?}");
    drop(reader);
    let done = client.finish().await;
    done.assert_code(0);
    assert_eq!(done.stderr, "", "nothing to say\n{}", done.dump());
    stop_serve(serve).await;
}

#[tokio::test]
async fn a_failing_stderr_does_not_change_the_exit_status() {
    // A restart (a retry notice) and a normal end (its notice): both go to a full
    // stderr, and the session still ends with 0 and its output.
    let (serve, url) = serve("logs:2:1012,logs:2:1000").await;
    let mut command = support::wsup_command();
    command.args(["logs", &url]).args(FAST).stderr(dev_full());
    let done = Wsup::spawn_command(command).finish().await;
    assert_eq!(done.code(), 0, "{}", done.dump());
    assert_eq!(done.stdout_text().lines().count(), 2, "{}", done.dump());
    stop_serve(serve).await;
}

// ------------------------------------------------------------- item 3: drain, however slow

const BIG: usize = 8 << 20;

fn big_then_close() -> Behaviour {
    Behaviour::send_then_close(vec![Message::binary(vec![b'x'; BIG])], 1000, "")
}

#[tokio::test]
async fn a_big_last_message_is_written_whole_to_a_late_reader() {
    let server = Server::always(big_then_close()).await;
    let url = server.url();
    let (reader, writer) = std::io::pipe().expect("pipe");
    let client = spawn_with_stdout(&["connect", &url], writer.into());
    // The session is over (wsup answered the server's close) while most of the message
    // still waits for stdout's reader...
    server.wait_client_close(0).await;
    // ...and the reader is slow: it starts 1.5 s later. This delay is the scenario
    // under test (a slow consumer), not synchronisation.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let mut all = Vec::new();
        reader.read_to_end(&mut all).map(|_| all)
    });
    let done = client.finish().await;
    let received = received.await.expect("reader thread").expect("read stdout");
    done.assert_code(0);
    assert_eq!(received.len(), BIG, "every byte\n{}", done.dump());
}

#[tokio::test]
async fn drain_timeout_bounds_the_wait_and_says_how_many_bytes_were_not_written() {
    let server = Server::always(big_then_close()).await;
    let url = server.url();
    // A reader that never reads: the pipe stays open, full.
    let (_reader, writer) = std::io::pipe().expect("pipe");
    let client = spawn_with_stdout(
        &["connect", &url, "--drain-timeout", "200ms"],
        writer.into(),
    );
    let done = client.finish().await;
    done.assert_code(74)
        .assert_stderr_contains("--drain-timeout 200ms");
    let line = support::diagnostic_lines(&done.stderr)
        .into_iter()
        .find(|line| line.contains("not written"))
        .unwrap_or_else(|| panic!("a line with the byte count\n{}", done.dump()))
        .to_owned();
    let count: usize = line
        .trim_start_matches("wsup: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a byte count first: {line:?}"));
    // The pipe took at most its buffer; the rest was not written.
    assert!(count > 0 && count <= BIG, "{line}");
}

#[tokio::test]
async fn a_signal_ends_the_wait_for_a_reader_that_never_reads() {
    let server = Server::always(big_then_close()).await;
    let url = server.url();
    let (_reader, writer) = std::io::pipe().expect("pipe");
    let client = spawn_with_stdout(&["connect", &url], writer.into());
    // The session is over; wsup now waits, without bound, for a reader that never reads.
    server.wait_client_close(0).await;
    let sent = client.signal("INT");
    let done = client.finish().await;
    done.assert_code(130);
    let latency = done.exited_at - sent;
    assert!(
        latency < Duration::from_secs(2),
        "a signal wins at once, took {latency:?}"
    );
}

// ------------------------------------------------------------ item 9: a normal close is said

#[tokio::test]
async fn a_normal_close_by_the_server_is_said_once_and_quiet_hides_it() {
    let server = Server::always(Behaviour::close(1000, "bye\u{1b}[31m now")).await;
    let url = server.url();
    let done = Wsup::spawn(["connect", &url]).finish().await;
    done.assert_code(0);
    assert_eq!(
        done.stderr,
        "wsup: server closed the session (1000 bye\\u{1b}[31m now)\n",
        "{}",
        done.dump()
    );
    let done = Wsup::spawn(["connect", &url, "-q"]).finish().await;
    done.assert_code(0);
    assert_eq!(done.stderr, "", "{}", done.dump());
}

// ------------------------------------------------------ item 11: --log-format json, every line

#[tokio::test]
async fn json_log_format_makes_every_stderr_line_one_json_object() {
    let server = Server::always(Behaviour::close(1011, "agent\u{1b}[2J gone")).await;
    let url = server.url();
    let done = Wsup::spawn([
        "connect",
        &url,
        "--log-format",
        "json",
        "-v",
        "--max-retries",
        "1",
        "--backoff-initial",
        "10ms",
        "--backoff-max",
        "20ms",
    ])
    .finish()
    .await;
    done.assert_code(75);
    let objects: Vec<serde_json::Value> = done
        .stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{}", done.dump()))
        })
        .collect();
    let notices: Vec<&serde_json::Value> =
        objects.iter().filter(|o| o["kind"] == "notice").collect();
    let retry = notices
        .iter()
        .find(|o| o["message"].as_str().unwrap_or("").contains("retrying in"))
        .unwrap_or_else(|| panic!("a retry notice\n{}", done.dump()));
    assert_eq!(retry["class"], "transient");
    assert_eq!(retry["code"], 1011);
    assert_eq!(retry["reason"], "agent\\u{1b}[2J gone", "escaped");
    assert!(retry.get("exit_code").is_none(), "not final: {retry}");
    let last = notices.last().expect("a final notice");
    assert_eq!(last["exit_code"], 75, "{last}");
    assert_eq!(last["class"], "transient");
    assert_eq!(last["reason"], "agent\\u{1b}[2J gone");
    assert!(
        objects.iter().any(|o| o["target"] == "wsup::machine"),
        "-v adds the transitions, as JSON\n{}",
        done.dump()
    );

    // Usage errors too, whether the flags parsed or not.
    for args in [
        &["connect", "http://not-a-websocket/", "--log-format", "json"][..],
        &["connect", &url, "--log-format", "json", "--no-such-flag"][..],
    ] {
        let done = Wsup::spawn(args).finish().await;
        done.assert_code(2);
        for line in done.stderr.lines() {
            let object: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {line:?}"));
            assert_eq!(object["kind"], "notice", "{line}");
        }
    }
}
