//! `wsup logs` end to end: the real binary against `wsup serve` (a child process) and
//! against a small independent log server written below on tokio-tungstenite, on
//! loopback, in real time. Every wait is event-driven and bounded.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use support::{serve, stop_serve, Wsup, BOUND, FAST};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// `created_at` of line 1 in the independent server's history: 2023-11-14T22:13:20.001Z.
const EPOCH_MS: u64 = 1_700_000_000_000;

/// The JSON log frame for line `k` of the independent server's history.
fn log_frame(k: u64) -> String {
    serde_json::json!({
        "created_at": EPOCH_MS + k,
        "message": format!("line {k}"),
        "pod_name": "api-7",
    })
    .to_string()
}

/// How line `k` must be printed in UTC.
fn rendered_utc(k: u64) -> String {
    format!("2023-11-14T22:13:20.{k:03}+00:00 | api-7 | line {k}\n")
}

// ------------------------------------------------------------- the independent server

/// What one connection of the independent server does: upgrade, send these text frames,
/// then close with this code (or, with `None`, keep the connection open, reading).
#[derive(Clone)]
struct Conn {
    frames: Vec<String>,
    close: Option<u16>,
}

fn conn(frames: Vec<String>, close: Option<u16>) -> Conn {
    Conn { frames, close }
}

/// Connection N gets `script[N]`; the last entry repeats. Counts upgrades.
struct LogServer {
    addr: SocketAddr,
    upgrades: watch::Receiver<usize>,
}

impl LogServer {
    async fn start(script: Vec<Conn>) -> LogServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (count_tx, upgrades) = watch::channel(0usize);
        let script = Arc::new(script);
        tokio::spawn(async move {
            let mut index = 0;
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let behaviour = script[index.min(script.len() - 1)].clone();
                index += 1;
                let count_tx = count_tx.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    count_tx.send_modify(|n| *n += 1);
                    for frame in behaviour.frames {
                        if ws.send(Message::text(frame)).await.is_err() {
                            return;
                        }
                    }
                    if let Some(code) = behaviour.close {
                        let _ = ws
                            .close(Some(CloseFrame {
                                code: CloseCode::from(code),
                                reason: "".into(),
                            }))
                            .await;
                    }
                    // Answer pings and the client's close until the client goes.
                    while let Some(Ok(_)) = ws.next().await {}
                });
            }
        });
        LogServer { addr, upgrades }
    }

    fn url(&self) -> String {
        format!("ws://{}/logs", self.addr)
    }

    fn upgrades(&self) -> usize {
        *self.upgrades.borrow()
    }
}

// -------------------------------------------------------------------------- helpers

/// `wsup logs URL` with fast retries, in UTC (or the given `TZ`), plus `extra` flags.
fn logs(url: &str, tz: &str, extra: &[&str]) -> Wsup {
    let mut command = support::wsup_command();
    command.args(["logs", url]).args(FAST).args(extra);
    command.env("TZ", tz);
    Wsup::spawn_command(command)
}

// ----------------------------------------------------------- against `wsup serve`

#[tokio::test]
async fn serve_replay_after_a_1012_restart_prints_each_line_once() {
    // Connection 1: lines 1-3, then close 1012 (service restart). Connection 2 replays
    // lines 1-3 with the same created_at, adds 4-5, then closes 1000.
    let (serve, url) = serve("logs:3:1012,logs:5:1000").await;
    let done = logs(&url, "UTC", &[]).finish().await;
    done.assert_code(0)
        .assert_stderr_contains("1012")
        .assert_stderr_contains("retrying in");
    let stdout = done.stdout_text();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "exactly 5 lines\n{}", done.dump());
    for (index, line) in lines.iter().enumerate() {
        let (timestamp, rest) = line.split_once(" | ").expect("TIME | POD | MESSAGE");
        assert_eq!(
            rest,
            format!("pod-0 | line {}", index + 1),
            "{}",
            done.dump()
        );
        let parsed = chrono::DateTime::parse_from_rfc3339(timestamp)
            .unwrap_or_else(|e| panic!("{timestamp:?} is not RFC 3339: {e}"));
        assert_eq!(
            parsed.offset().local_minus_utc(),
            0,
            "local time is UTC here"
        );
        assert_eq!(timestamp.len(), "2023-11-14T22:13:20.001+00:00".len());
    }
    stop_serve(serve).await;
}

#[tokio::test]
async fn serve_raw_prints_the_json_frames() {
    let (serve, url) = serve("logs:2:1000").await;
    let done = logs(&url, "UTC", &["--raw"]).finish().await;
    done.assert_code(0);
    let stdout = done.stdout_text();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", done.dump());
    let first: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
    let second: serde_json::Value = serde_json::from_str(lines[1]).expect("JSON");
    assert_eq!(first["message"], "line 1");
    assert_eq!(first["pod_name"], "pod-0");
    assert_eq!(second["message"], "line 2");
    assert_eq!(
        second["created_at"].as_u64().unwrap(),
        first["created_at"].as_u64().unwrap() + 1
    );
    assert_eq!(
        done.stderr,
        "wsup: server closed the session (1000)\n",
        "only the normal close is said\n{}",
        done.dump()
    );
    stop_serve(serve).await;
}

#[tokio::test]
async fn serve_logs_keeps_the_connection_open_until_sigint() {
    let (serve, url) = serve("logs:3").await;
    let client = logs(&url, "UTC", &[]);
    client.wait_stdout("| pod-0 | line 3\n").await;
    client.signal("INT");
    let done = client.finish().await;
    done.assert_code(130)
        .assert_stderr_contains("interrupted (SIGINT)");
    assert_eq!(done.stdout_text().lines().count(), 3, "{}", done.dump());
    stop_serve(serve).await;
}

// ------------------------------------------------------ against the independent server

#[tokio::test]
async fn independent_replay_after_a_1012_restart_prints_exactly_five_lines() {
    let server = LogServer::start(vec![
        conn((1..=3).map(log_frame).collect(), Some(1012)),
        conn((1..=5).map(log_frame).collect(), Some(1000)),
    ])
    .await;
    let done = logs(&server.url(), "UTC", &[]).finish().await;
    let expected: String = (1..=5).map(rendered_utc).collect();
    done.assert_code(0)
        .assert_stdout(&expected)
        .assert_stderr_contains("1012");
    assert_eq!(server.upgrades(), 2);
}

#[tokio::test]
async fn independent_timestamps_are_in_local_time() {
    // A POSIX TZ string: UTC+05:30 with no daylight saving, no zoneinfo file needed.
    let server = LogServer::start(vec![conn(vec![log_frame(7)], Some(1000))]).await;
    let done = logs(&server.url(), "IST-5:30", &[]).finish().await;
    done.assert_code(0)
        .assert_stdout("2023-11-15T03:43:20.007+05:30 | api-7 | line 7\n");
}

#[tokio::test]
async fn independent_frames_that_are_not_log_json_are_printed_as_is_with_one_warning() {
    let frames = vec![
        log_frame(1),
        "plain text, not JSON".to_owned(),
        log_frame(2),
        r#"{"level":"info","msg":"another shape"}"#.to_owned(),
        "{broken".to_owned(),
        log_frame(3),
    ];
    let server = LogServer::start(vec![conn(frames, Some(1000))]).await;
    let done = logs(&server.url(), "UTC", &[]).finish().await;
    let expected = format!(
        "{}plain text, not JSON\n{}{{\"level\":\"info\",\"msg\":\"another shape\"}}\n{{broken\n{}",
        rendered_utc(1),
        rendered_utc(2),
        rendered_utc(3)
    );
    done.assert_code(0).assert_stdout(&expected);
    assert_eq!(
        done.stderr.matches("warning").count(),
        1,
        "one warning, however many bad frames\n{}",
        done.dump()
    );
    done.assert_stderr_contains("not a JSON log line");
}

#[tokio::test]
async fn independent_raw_prints_frames_verbatim_and_still_skips_replays() {
    let server = LogServer::start(vec![
        conn(vec![log_frame(1), log_frame(2)], Some(1012)),
        conn(
            vec![log_frame(1), log_frame(2), "not json".into(), log_frame(3)],
            Some(1000),
        ),
    ])
    .await;
    let done = logs(&server.url(), "UTC", &["--raw"]).finish().await;
    let expected = format!(
        "{}\n{}\nnot json\n{}\n",
        log_frame(1),
        log_frame(2),
        log_frame(3)
    );
    done.assert_code(0).assert_stdout(&expected);
    assert_eq!(done.stderr.matches("warning").count(), 1, "{}", done.dump());
}

#[tokio::test]
async fn independent_retries_run_out_with_75_and_nothing_is_lost_before() {
    // One good connection, then a server that keeps restarting: the printed lines stay,
    // the exit code says retries ran out.
    let server = LogServer::start(vec![
        conn(vec![log_frame(1)], Some(1012)),
        conn(vec![log_frame(1)], Some(1012)),
    ])
    .await;
    let done = logs(&server.url(), "UTC", &["--max-retries", "2"])
        .finish_within(BOUND)
        .await;
    done.assert_code(75).assert_stdout(&rendered_utc(1));
    assert_eq!(server.upgrades(), 3, "1 attempt + 2 retries");
}

#[tokio::test]
async fn independent_control_characters_are_escaped_unless_raw() {
    // A hostile server: a CR that would overwrite the line, an LF that would forge a
    // second log line, ESC sequences that clear the screen and retitle the terminal.
    let hostile = serde_json::json!({
        "created_at": EPOCH_MS + 1,
        "message": "ok\r\u{1b}[2J\n2023-11-14T22:13:20.999+00:00 | api-7 | forged",
        "pod_name": "api-7\u{1b}]0;pwned\u{7}",
    })
    .to_string();
    let frames = vec![hostile.clone(), "plain\u{1b}[31m\nsecond".to_owned()];
    let server = LogServer::start(vec![conn(frames.clone(), Some(1000))]).await;
    let done = logs(&server.url(), "UTC", &[]).finish().await;
    done.assert_code(0).assert_stdout(concat!(
        "2023-11-14T22:13:20.001+00:00 | api-7\\u{1b}]0;pwned\\u{7} | ",
        "ok\\r\\u{1b}[2J\\n2023-11-14T22:13:20.999+00:00 | api-7 | forged\n",
        "plain\\u{1b}[31m\\nsecond\n"
    ));
    assert!(!done.stdout.contains(&0x1b), "{}", done.dump());

    let server = LogServer::start(vec![conn(frames, Some(1000))]).await;
    let done = logs(&server.url(), "UTC", &["--raw"]).finish().await;
    done.assert_code(0)
        .assert_stdout(&format!("{hostile}\nplain\u{1b}[31m\nsecond\n"));
}
