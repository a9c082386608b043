//! `wsup connect` end to end: the real binary against `wsup serve` (as a child process)
//! and against the independent server in `tests/support`, on loopback, in real time.
//!
//! Every test asserts the exit code, how many connections the server saw, what it
//! received, and what the user saw: stdout carries only session data, stderr the
//! diagnostics.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{connect, Behaviour, Server, Wsup, FAST};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

/// `wsup connect` with a static token in `var`.
fn connect_with_token(url: &str, var: &str, token: &str, extra: &[&str]) -> Wsup {
    let mut command = support::wsup_command();
    command.args(["connect", url]).args(FAST).args(extra);
    command.env(var, token);
    Wsup::spawn_command(command)
}

/// Lines as typed (with their terminators) and as they must arrive (without).
const TYPED: &str = "hello\nsecond line with  spaces\n\ncrlf line\r\nh\u{e9}llo \u{2713}\n";
const SENT: [&str; 5] = [
    "hello",
    "second line with  spaces",
    "",
    "crlf line",
    "h\u{e9}llo \u{2713}",
];

fn echoed(lines: &[&str]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

// ------------------------------------------------------------------------ data path

#[tokio::test]
async fn echo_through_wsup_serve_child_process() {
    let serve = Wsup::spawn(["serve", "--listen", "127.0.0.1:0", "--script", "echo"]);
    let url = serve.first_stdout_line().await;
    assert!(url.starts_with("ws://127.0.0.1:"), "serve printed {url:?}");

    let mut client = connect(&url, &[]);
    client.write(TYPED.as_bytes()).await;
    client.close_stdin();
    let done = client.finish().await;
    done.assert_code(0).assert_stdout(&echoed(&SENT));
    assert_eq!(
        done.stderr,
        "",
        "a clean session prints no diagnostics\n{}",
        done.dump()
    );

    serve.signal("TERM");
    let served = serve.finish().await;
    served.assert_code(143);
    assert_eq!(
        served.stdout_text(),
        format!("{url}\n"),
        "serve prints only its URL"
    );
}

#[tokio::test]
async fn echo_through_independent_server_frames_arrive_in_order_without_terminators() {
    let server = Server::always(Behaviour::Echo).await;
    let mut client = connect(&server.url(), &[]);
    client.write(TYPED.as_bytes()).await;
    // Not yet EOF: the echo of every line comes back while the session is open.
    client.wait_stdout(&echoed(&SENT)).await;
    client.close_stdin();
    let done = client.finish().await;
    done.assert_code(0).assert_stdout(&echoed(&SENT));
    assert_eq!(done.stderr, "", "{}", done.dump());

    let connections = server.connections();
    assert_eq!(connections.len(), 1, "{connections:#?}");
    assert_eq!(connections[0].texts, SENT, "text frames, in order");
    assert!(connections[0].binaries.is_empty());
    assert_eq!(
        server.wait_client_close(0).await,
        (1000, String::new()),
        "stdin EOF closes with 1000"
    );
}

#[tokio::test]
async fn lines_typed_before_the_server_is_up_are_queued_and_sent_once_connected() {
    // Connection 0 is held (wsup is offline, dialing) until the lines are typed and
    // stdin is closed, then refused with 503; connection 1 echoes.
    let gate = Arc::new(Notify::new());
    let server = Server::start(vec![
        Behaviour::gated(&gate, Behaviour::http(503)),
        Behaviour::Echo,
    ])
    .await;
    let mut client = connect(&server.url(), &[]);
    server.wait_connections(1).await;
    client.write(TYPED.as_bytes()).await;
    client.close_stdin();
    gate.notify_one();

    let done = client.finish().await;
    done.assert_code(0)
        .assert_stdout(&echoed(&SENT))
        .assert_stderr_contains("503")
        .assert_stderr_contains("retrying in");

    let connections = server.connections();
    assert_eq!(connections.len(), 2, "{connections:#?}");
    assert!(!connections[0].upgraded);
    assert!(connections[0].texts.is_empty());
    assert_eq!(connections[1].texts, SENT, "queued lines, in order");
    assert_eq!(server.wait_client_close(1).await.0, 1000);
}

#[tokio::test]
async fn thousands_of_short_lines_are_read_and_queued_while_offline() {
    // The offline queue is bounded by bytes (1 MiB, each line charged its length plus
    // 96 bytes), not by a count of lines: 7,400 short lines (~300 KB, ~1 MB charged)
    // are all read from stdin while the first dial is held, then
    // arrive in order once connected. The first dial is held past the default connect
    // timeout so that wsup stays offline until the gate opens.
    let gate = Arc::new(Notify::new());
    let server = Server::start(vec![
        Behaviour::gated(&gate, Behaviour::http(503)),
        Behaviour::Echo,
    ])
    .await;
    let mut client = connect(&server.url(), &["--connect-timeout", "60s"]);
    server.wait_connections(1).await;

    let lines: Vec<String> = (0..7_400)
        .map(|i| format!("offline line {i:05} with a little padding"))
        .collect();
    let typed: String = lines.iter().map(|line| format!("{line}\n")).collect();
    // A pipe holds 64 KiB and wsup's reader 8 KiB more: the last 2,400 lines (~98 KB)
    // are more than both, so a completed write proves that at least the first 5,000
    // lines were taken from stdin and queued, all while offline.
    assert!(lines[5_000..].iter().map(|l| l.len() + 1).sum::<usize>() > 90_000);
    tokio::time::timeout(support::BOUND, client.write(typed.as_bytes()))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "stdin stopped being read while offline, long before 1 MiB was queued\n{}",
                client.stderr_now().text()
            )
        });
    assert_eq!(
        server.connection_count(),
        1,
        "still offline, first dial held"
    );
    assert!(!server.connections()[0].upgraded);
    client.close_stdin();
    gate.notify_one();

    let done = client.finish().await;
    done.assert_code(0).assert_stdout(&echoed(
        &lines.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let connections = server.connections();
    assert_eq!(connections.len(), 2, "{} connections", connections.len());
    assert_eq!(connections[1].texts, lines, "queued lines, all, in order");
}

#[tokio::test]
async fn server_close_1000_ends_the_session_with_exit_0() {
    let server = Server::always(Behaviour::close(1000, "bye")).await;
    // Stdin stays open: the server's close alone ends the session.
    let client = connect(&server.url(), &[]);
    let done = client.finish().await;
    done.assert_code(0).assert_stdout("");
    assert_eq!(server.connection_count(), 1);
}

#[tokio::test]
async fn everything_the_server_sends_before_its_close_1000_is_printed() {
    let lines: Vec<String> = (0..2000).map(|n| format!("line {n}")).collect();
    let binary = vec![0u8, 1, 2, 0xff, b'\n', b'x'];
    let mut messages: Vec<Message> = lines.iter().map(|l| Message::text(l.as_str())).collect();
    messages.push(Message::binary(binary.clone()));
    let server = Server::always(Behaviour::send_then_close(messages, 1000, "done")).await;
    let client = connect(&server.url(), &[]);
    let done = client.finish().await;
    done.assert_code(0);
    let mut expected = lines.join("\n").into_bytes();
    expected.push(b'\n');
    expected.extend_from_slice(&binary);
    assert!(
        done.stdout == expected,
        "text one message per line, binary raw, nothing lost: got {} bytes, expected {}; \
         last 40 bytes {:?}",
        done.stdout.len(),
        expected.len(),
        &done.stdout[done.stdout.len().saturating_sub(40)..]
    );
    assert_eq!(
        done.stderr,
        "wsup: server closed the session (1000 done)\n",
        "only the normal close is said\n{}",
        done.dump()
    );
    assert_eq!(server.connection_count(), 1);
}

#[tokio::test]
async fn stdin_eof_against_a_server_that_never_answers_the_close_exits_0_after_the_grace() {
    let server = Server::always(Behaviour::Silent).await;
    let mut client = connect(&server.url(), &[]);
    server
        .wait_for("the upgrade", |c| c.first()?.upgraded.then_some(()))
        .await;
    client.write_line("anyone?").await;
    client.close_stdin();
    let done = client.finish().await;
    eprintln!("no close reply: exit after {:?}", done.elapsed);
    done.assert_code(0).assert_stdout("");
    assert!(
        done.elapsed >= Duration::from_millis(1500) && done.elapsed < Duration::from_secs(5),
        "the close grace is 2 s; exit after {:?}",
        done.elapsed
    );
    assert_eq!(server.connection_count(), 1);
}

#[tokio::test]
async fn pongs_keep_a_quiet_connection_alive() {
    let server = Server::always(Behaviour::Echo).await;
    let mut client = connect(
        &server.url(),
        &["--ping-interval", "100ms", "--pong-timeout", "100ms"],
    );
    // Five pings answered: well past the 200 ms liveness deadline with no data at all.
    server
        .wait_for("5 pings", |c| (c.first()?.pings >= 5).then_some(()))
        .await;
    client.write_line("still here").await;
    client.wait_stdout("still here\n").await;
    client.close_stdin();
    let done = client.finish().await;
    done.assert_code(0).assert_stdout("still here\n");
    assert_eq!(done.stderr, "", "{}", done.dump());
    assert_eq!(server.connection_count(), 1, "never redialed");
}

#[tokio::test]
async fn invalid_utf8_on_stdin_becomes_replacement_characters() {
    let server = Server::always(Behaviour::Echo).await;
    let mut client = connect(&server.url(), &[]);
    client.write(b"\xff\xfe ok\nplain\n").await;
    client.close_stdin();
    let done = client.finish().await;
    done.assert_code(0)
        .assert_stdout("\u{fffd}\u{fffd} ok\nplain\n");
    assert_eq!(
        server.connections()[0].texts,
        ["\u{fffd}\u{fffd} ok", "plain"]
    );
}

/// `wsup connect URL | head -1`: once stdout is gone, wsup winds down by itself (close
/// 1000, exit 0) instead of hanging or dying of SIGPIPE.
#[tokio::test]
async fn closed_stdout_ends_the_session_cleanly() {
    let server = Server::always(Behaviour::Echo).await;
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut command = support::wsup_command();
    command
        .args(["connect", &server.url()])
        .args(FAST)
        .stdout(std::process::Stdio::from(writer));
    let mut client = Wsup::spawn_command(command);
    client.write_line("into the void").await;
    let done = client.finish().await;
    done.assert_code(0);
    assert_eq!(server.connections()[0].texts, ["into the void"]);
    assert_eq!(server.wait_client_close(0).await.0, 1000);
    assert_eq!(server.connection_count(), 1);
}

// ------------------------------------------------------------------ close codes

#[tokio::test]
async fn close_1011_is_retried_until_max_retries_then_exit_75() {
    let reason = "No shell-agent listening for this cluster";
    let server = Server::always(Behaviour::close(1011, reason)).await;
    let client = connect(&server.url(), &["--max-retries", "2"]);
    let done = client.finish().await;
    done.assert_code(75)
        .assert_stdout("")
        .assert_stderr_contains(reason)
        .assert_stderr_contains("attempt 1 of 2")
        .assert_stderr_contains("attempt 2 of 2")
        .assert_stderr_lacks("attempt 3");
    assert_eq!(server.connection_count(), 3, "1 dial + 2 redials");
}

#[tokio::test]
async fn close_1008_with_a_static_token_stops_with_77_after_one_connection() {
    let token = "s3cr3t-t0ken-1008-xyz";
    let server = Server::always(Behaviour::close(1008, "token expired")).await;
    // Whatever the verbosity or log format, even with every target at trace level.
    let runs: [(&[&str], Option<&str>); 5] = [
        (&[], None),
        (&["-vv"], None),
        (&["-vvv"], None),
        (&["-vvv", "--log-format", "json"], None),
        (&[], Some("trace")),
    ];
    for (verbosity, wsup_log) in runs {
        let before = server.connection_count();
        let mut command = support::wsup_command();
        command
            .args(["connect", &server.url(), "--token-env", "WSUP_TEST_TOKEN"])
            .args(verbosity)
            .env("WSUP_TEST_TOKEN", token);
        if let Some(spec) = wsup_log {
            command.env("WSUP_LOG", spec);
        }
        let done = Wsup::spawn_command(command).finish().await;
        done.assert_code(77)
            .assert_stdout("")
            .assert_stderr_contains("1008")
            .assert_stderr_contains("WSUP_TEST_TOKEN")
            .assert_stderr_lacks(token);
        let connections = server.connections();
        assert_eq!(
            connections.len() - before,
            1,
            "a static token is never refreshed or retried ({verbosity:?}, {wsup_log:?})"
        );
        assert_eq!(
            connections[before].header("authorization"),
            Some(format!("Bearer {token}").as_str())
        );
    }
}

#[tokio::test]
async fn auth_scheme_flag_sets_the_scheme_of_the_authorization_header() {
    let server = Server::always(Behaviour::close(1000, "")).await;
    let client = connect_with_token(
        &server.url(),
        "WSUP_TEST_SCHEME_TOKEN",
        "abc123",
        &[
            "--token-env",
            "WSUP_TEST_SCHEME_TOKEN",
            "--auth-scheme",
            "Token",
        ],
    );
    let done = client.finish().await;
    done.assert_code(0).assert_stdout("");
    let connections = server.connections();
    assert_eq!(connections.len(), 1);
    assert_eq!(connections[0].header("authorization"), Some("Token abc123"));
}

#[tokio::test]
async fn close_1007_permission_stops_with_77_and_names_the_missing_right() {
    let server = Server::always(Behaviour::close(
        1007,
        "Invalid permission: Not authorized to websocket-gateway SHELL_EXEC",
    ))
    .await;
    let client = connect(&server.url(), &[]);
    let done = client.finish().await;
    done.assert_code(77)
        .assert_stdout("")
        .assert_stderr_contains("permission")
        .assert_stderr_contains("lack the right websocket-gateway SHELL_EXEC");
    assert_eq!(server.connection_count(), 1);
}

/// A close code that stops at once: `code` exit, one connection, the code on stderr.
async fn stops_at_once(code: u16, reason: &str, exit: i32, class: &str) {
    let server = Server::always(Behaviour::close(code, reason)).await;
    let client = connect(&server.url(), &[]);
    let done = client.finish().await;
    done.assert_code(exit)
        .assert_stdout("")
        .assert_stderr_contains(&format!("server closed {code}"))
        .assert_stderr_contains(class)
        .assert_stderr_lacks("retrying in");
    assert_eq!(server.connection_count(), 1, "{}", done.dump());
}

#[tokio::test]
async fn close_1003_is_rejected_data_exit_65() {
    stops_at_once(1003, "binary only", 65, "[rejected data]").await;
}

#[tokio::test]
async fn close_1002_is_permanent_exit_69() {
    stops_at_once(1002, "", 69, "[permanent]").await;
}

/// A server that breaks the protocol sent no close frame: the words say so, and the
/// exit code is that of the close code that names the violation.
async fn stops_at_a_violation(frame: &[u8], exit: i32, words: &str) {
    let server = Server::always(Behaviour::Raw(frame.to_vec())).await;
    let client = connect(&server.url(), &[]);
    let done = client.finish().await;
    done.assert_code(exit)
        .assert_stderr_contains(words)
        .assert_stderr_contains("server broke the protocol")
        .assert_stderr_lacks("server closed")
        .assert_stderr_lacks("refused what was sent")
        .assert_stderr_lacks("retrying in");
    assert_eq!(server.connection_count(), 1, "{}", done.dump());
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_stops_with_65_and_blames_the_server() {
    // FIN + text, 2 bytes, unmasked: 0xC3 0x28 is not UTF-8.
    stops_at_a_violation(&[0x81, 0x02, 0xC3, 0x28], 65, "not valid UTF-8 (1007").await;
}

#[tokio::test]
async fn a_masked_frame_from_the_server_stops_with_69() {
    // FIN + binary, masked (servers must not mask), 1 byte.
    stops_at_a_violation(
        &[0x82, 0x81, 1, 2, 3, 4, 0x41],
        69,
        "(1002, protocol error)",
    )
    .await;
}

/// A close code tungstenite does not "allow" (it rewrites them into 1002 "Protocol
/// violation"): wsup must report and classify the code and reason the server sent.
async fn disallowed_code_is_classified_as_sent(code: u16, reason: &str, exit: i32) {
    let server = Server::always(Behaviour::close(code, reason)).await;
    let client = connect(&server.url(), &["--max-retries", "1"]);
    let done = client.finish().await;
    // 1014 is registered (bad gateway); the others are forbidden on the wire.
    let words = if code == 1014 {
        format!("server closed {code} ({reason})")
    } else {
        format!("server sent an invalid close code {code} ({reason})")
    };
    done.assert_code(exit)
        .assert_stdout("")
        .assert_stderr_contains(&words)
        .assert_stderr_lacks("1002")
        .assert_stderr_lacks("Protocol violation");
    let dials = if exit == 75 { 2 } else { 1 };
    assert_eq!(server.connection_count(), dials, "{}", done.dump());
}

#[tokio::test]
async fn close_1014_is_transient_and_keeps_the_servers_code_and_reason() {
    disallowed_code_is_classified_as_sent(1014, "r1014", 75).await;
}

#[tokio::test]
async fn unassigned_close_codes_are_a_protocol_violation_exit_69_at_once() {
    for code in [2999, 1004, 1016, 999, 5000] {
        disallowed_code_is_classified_as_sent(code, &format!("unknown {code}"), 69).await;
    }
}

#[tokio::test]
async fn close_codes_that_must_never_be_sent_are_a_protocol_violation() {
    // 1005, 1006 and 1015 only report what happened locally: on the wire they are a
    // protocol violation (69), not a lost connection.
    disallowed_code_is_classified_as_sent(1006, "abnormal on the wire", 69).await;
    disallowed_code_is_classified_as_sent(1015, "tls on the wire", 69).await;
    let server = Server::always(Behaviour::close(1005, "no status on the wire")).await;
    let done = connect(&server.url(), &["--max-retries", "1"])
        .finish()
        .await;
    done.assert_code(69)
        .assert_stderr_contains("server sent an invalid close code 1005");
    assert_eq!(server.connection_count(), 1, "{}", done.dump());
}

#[tokio::test]
async fn registered_close_codes_keep_their_class() {
    // 3000–3999 not listed in the table: transient (redialed, then 75).
    let server = Server::always(Behaviour::close(3500, "registered")).await;
    let done = connect(&server.url(), &["--max-retries", "1"])
        .finish()
        .await;
    done.assert_code(75)
        .assert_stderr_contains("server closed 3500 (registered)")
        .assert_stderr_lacks("invalid close code");
    assert_eq!(server.connection_count(), 2, "{}", done.dump());
}

#[tokio::test]
async fn wsup_serve_close_1016_is_an_invalid_close_code_exit_69() {
    let serve = Wsup::spawn([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--script",
        "close:1016:nonsense",
    ]);
    let url = serve.first_stdout_line().await;
    let done = connect(&url, &[]).finish().await;
    done.assert_code(69)
        .assert_stdout("")
        .assert_stderr_contains("server sent an invalid close code 1016 (nonsense)")
        .assert_stderr_lacks("retrying in");
}

#[tokio::test]
async fn close_1014_after_large_messages_keeps_the_servers_code() {
    // 16-bit and 64-bit frame lengths before the close, read in many pieces.
    let medium = "m".repeat(300);
    let large = "l".repeat(200_000);
    let server = Server::always(Behaviour::send_then_close(
        vec![
            Message::text(medium.clone()),
            Message::text(large.clone()),
            Message::binary(vec![0x88; 70_000]),
            Message::text("last"),
        ],
        1014,
        "r1014",
    ))
    .await;
    let client = connect(&server.url(), &["--max-retries", "0"]);
    let done = client.finish().await;
    done.assert_code(75)
        .assert_stderr_contains("server closed 1014 (r1014)")
        .assert_stderr_lacks("1002");
    let stdout = done.stdout_text();
    assert!(stdout.contains(&medium), "{}", done.dump());
    assert!(stdout.contains(&large), "the large message arrived whole");
    assert!(stdout.contains("last"), "{}", done.dump());
    assert_eq!(server.connection_count(), 1);
}

#[tokio::test]
async fn a_genuine_close_1002_keeps_its_own_reason_and_stops_with_69() {
    // Even with the very reason tungstenite uses for its rewrite.
    for reason in ["bad framing", "Protocol violation"] {
        let server = Server::always(Behaviour::close(1002, reason)).await;
        let client = connect(&server.url(), &["--max-retries", "1"]);
        let done = client.finish().await;
        done.assert_code(69)
            .assert_stderr_contains(&format!("server closed 1002 ({reason})"))
            .assert_stderr_contains("[permanent]")
            .assert_stderr_lacks("retrying in");
        assert_eq!(server.connection_count(), 1, "{}", done.dump());
    }
}

#[tokio::test]
async fn close_4001_is_permanent_by_default_exit_69() {
    stops_at_once(4001, "app says no", 69, "--retry-close-codes 4001").await;
}

#[tokio::test]
async fn close_4001_with_retry_close_codes_is_retried_then_exit_75() {
    let server = Server::always(Behaviour::close(4001, "app busy")).await;
    let client = connect(
        &server.url(),
        &["--retry-close-codes", "4001", "--max-retries", "1"],
    );
    let done = client.finish().await;
    done.assert_code(75)
        .assert_stdout("")
        .assert_stderr_contains("app busy")
        .assert_stderr_contains("attempt 1 of 1");
    assert_eq!(server.connection_count(), 2);
}

// ------------------------------------------------------------- HTTP at the upgrade

#[tokio::test]
async fn http_404_is_permanent_exit_69() {
    let server = Server::always(Behaviour::http(404)).await;
    let client = connect(&server.url(), &[]);
    let done = client.finish().await;
    done.assert_code(69)
        .assert_stdout("")
        .assert_stderr_contains("HTTP 404")
        .assert_stderr_lacks("retrying in");
    assert_eq!(server.connection_count(), 1);
}

#[tokio::test]
async fn http_401_is_auth_exit_77() {
    let server = Server::always(Behaviour::http(401)).await;
    let client = connect(&server.url(), &[]);
    let done = client.finish().await;
    done.assert_code(77)
        .assert_stdout("")
        .assert_stderr_contains("HTTP 401")
        .assert_stderr_contains("--token-env");
    assert_eq!(server.connection_count(), 1);
}

#[tokio::test]
async fn http_503_retry_after_delays_the_next_dial_by_at_least_that_long() {
    let server = Server::start(vec![
        Behaviour::http_with(503, &[("Retry-After", "1")]),
        Behaviour::close(1000, ""),
    ])
    .await;
    // Backoff alone would redial within 50 ms.
    let client = connect(&server.url(), &[]);
    let done = client.finish().await;
    done.assert_code(0)
        .assert_stdout("")
        .assert_stderr_contains("HTTP 503")
        .assert_stderr_contains("retrying in 1.0 s");
    let connections = server.connections();
    assert_eq!(connections.len(), 2);
    let spacing = connections[1].at - connections[0].at;
    eprintln!("Retry-After: 1 -> second connection {spacing:?} after the first");
    assert!(spacing >= Duration::from_secs(1), "spacing {spacing:?}");
    assert!(spacing < Duration::from_secs(5), "spacing {spacing:?}");
}

// --------------------------------------------------------------------- liveness

#[tokio::test]
async fn silent_server_is_detected_as_half_open_and_exits_75() {
    let server = Server::always(Behaviour::Silent).await;
    let client = connect(
        &server.url(),
        &[
            "--ping-interval",
            "200ms",
            "--pong-timeout",
            "200ms",
            "--max-retries",
            "0",
        ],
    );
    let done = client.finish().await;
    eprintln!("silent server: exit after {:?}", done.elapsed);
    done.assert_code(75)
        .assert_stdout("")
        .assert_stderr_contains("half-open");
    assert!(
        done.elapsed < Duration::from_secs(3),
        "liveness deadline is 400 ms; took {:?}",
        done.elapsed
    );
    let connections = server.connections();
    assert_eq!(connections.len(), 1);
    assert!(connections[0].upgraded);
}

#[tokio::test]
async fn connect_timeout_covers_an_unanswered_upgrade() {
    let server = Server::always(Behaviour::Hang).await;
    let client = connect(
        &server.url(),
        &["--connect-timeout", "200ms", "--max-retries", "1"],
    );
    let done = client.finish().await;
    done.assert_code(75)
        .assert_stdout("")
        .assert_stderr_contains("connect timed out")
        .assert_stderr_contains("attempt 1 of 1");
    assert!(done.elapsed < Duration::from_secs(5), "{:?}", done.elapsed);
    assert_eq!(server.connection_count(), 2);
}

// ---------------------------------------------------------------- untrusted text

#[tokio::test]
async fn hostile_close_reason_is_escaped_on_stderr() {
    let reason = "\u{1b}[2J\u{1b}]0;owned\u{7}evil\nwsup: forged line\r";
    let server = Server::always(Behaviour::close(1011, reason)).await;
    // One retry: the reason appears in the retry notice and in the final line.
    let client = connect(&server.url(), &["--max-retries", "1"]);
    let done = client.finish().await;
    done.assert_code(75)
        .assert_stdout("")
        .assert_stderr_contains("attempt 1 of 1");
    for byte in [0x1b_u8, 0x07, b'\r'] {
        assert!(
            !done.stderr.as_bytes().contains(&byte),
            "raw control byte {byte:#04x} on stderr\n{}",
            done.dump()
        );
    }
    assert!(
        !done
            .stderr
            .lines()
            .any(|line| line.starts_with("wsup: forged line")),
        "a newline in the reason must not start a new line\n{}",
        done.dump()
    );
    assert_eq!(
        done.stderr.matches("evil").count(),
        2,
        "the reason, escaped, in the retry notice and the final line\n{}",
        done.dump()
    );
    assert_eq!(server.connection_count(), 2);
}

// -------------------------------------------------------------------- verbosity

#[tokio::test]
async fn quiet_keeps_only_the_final_reason_and_verbose_adds_transitions() {
    let server = Server::always(Behaviour::close(1011, "agent gone")).await;

    let quiet = connect(&server.url(), &["--max-retries", "1", "-q"])
        .finish()
        .await;
    quiet.assert_code(75).assert_stdout("");
    let lines: Vec<&str> = quiet.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "-q: only the final reason\n{}",
        quiet.dump()
    );
    assert!(lines[0].contains("agent gone") && lines[0].contains("giving up"));

    let verbose = connect(&server.url(), &["--max-retries", "1", "-v"])
        .finish()
        .await;
    verbose
        .assert_code(75)
        .assert_stdout("")
        // The diagram's states only: leaving the pre-start `Idle` is traced lower.
        .assert_stderr_lacks("Idle")
        .assert_stderr_contains("Dialing -> Connected")
        .assert_stderr_contains("Connected -> Backoff")
        .assert_stderr_contains("attempt 1 of 1")
        .assert_stderr_contains("giving up");
    assert_eq!(server.connection_count(), 4);
}

// ---------------------------------------------------------------- request shape

#[tokio::test]
async fn custom_headers_and_the_url_query_reach_the_server() {
    let server = Server::always(Behaviour::close(1000, "")).await;
    let client = connect(
        &server.url_with("/gateway/shell?cluster=c1&x=a%20b"),
        &["--header", "X-Test: 1", "-H", "X-Other:  two words  "],
    );
    let done = client.finish().await;
    done.assert_code(0).assert_stdout("");
    let connections = server.connections();
    assert_eq!(connections.len(), 1);
    let request = &connections[0];
    assert_eq!(request.path, "/gateway/shell");
    assert_eq!(request.query.as_deref(), Some("cluster=c1&x=a%20b"));
    assert_eq!(request.header("x-test"), Some("1"));
    assert_eq!(request.header("x-other"), Some("two words"));
    assert_eq!(request.header("authorization"), None);
}

/// The same flags before and after the subcommand give the same behaviour.
async fn global_flags(before_subcommand: bool) {
    let server = Server::always(Behaviour::close(1011, "agent gone")).await;
    let url = server.url();
    let flags = [
        "--max-retries",
        "1",
        "--backoff-initial",
        "10ms",
        "--backoff-max",
        "50ms",
        "--header",
        "X-Test: 1",
        "--token-env",
        "WSUP_TEST_GLOBAL_TOKEN",
    ];
    let mut command = support::wsup_command();
    if before_subcommand {
        command.args(flags).args(["connect", &url]);
    } else {
        command.args(["connect", &url]).args(flags);
    }
    command.env("WSUP_TEST_GLOBAL_TOKEN", "gl0bal");
    let done = Wsup::spawn_command(command).finish().await;
    done.assert_code(75)
        .assert_stdout("")
        .assert_stderr_contains("agent gone")
        .assert_stderr_contains("attempt 1 of 1")
        .assert_stderr_lacks("gl0bal");
    let connections = server.connections();
    assert_eq!(connections.len(), 2, "--max-retries 1: two connections");
    for connection in &connections {
        assert_eq!(connection.header("x-test"), Some("1"));
        assert_eq!(connection.header("authorization"), Some("Bearer gl0bal"));
    }
}

#[tokio::test]
async fn global_flags_work_before_the_subcommand() {
    global_flags(true).await;
}

#[tokio::test]
async fn global_flags_work_after_the_subcommand() {
    global_flags(false).await;
}

// ------------------------------------------------ issue 10: the exit code tells the truth

/// `wsup connect` with stdin already at EOF (`</dev/null`), or given one line and closed
/// at once (`echo hi |`), against a server that closes with `code` right after the
/// upgrade. Each run is a race between the server's close and our stdin EOF.
async fn rejection_races_stdin_eof(code: u16, reason: &str, exit: i32) {
    let server = Server::always(Behaviour::close(code, reason)).await;
    for run in 0..20 {
        let mut command = support::wsup_command();
        command.args(["connect", &server.url()]).args(FAST);
        let done = if run % 2 == 0 {
            command.stdin(std::process::Stdio::null());
            Wsup::spawn_command(command).finish().await
        } else {
            let mut client = Wsup::spawn_command(command);
            client.write(b"hi\n").await;
            client.close_stdin();
            client.finish().await
        };
        done.assert_code(exit)
            .assert_stderr_contains(&format!("server closed {code}"));
    }
}

#[tokio::test]
async fn a_1008_right_after_the_upgrade_exits_77_even_when_stdin_already_ended() {
    rejection_races_stdin_eof(1008, "token expired", 77).await;
}

#[tokio::test]
async fn a_4001_right_after_the_upgrade_exits_69_even_when_stdin_already_ended() {
    rejection_races_stdin_eof(4001, "go away", 69).await;
}

#[tokio::test]
async fn at_stdin_eof_wsup_lingers_for_the_servers_reply() {
    // The server answers 300 ms late and answers a close at once: closing right behind
    // the last line would lose the reply.
    let server = Server::always(Behaviour::DelayedEcho(Duration::from_millis(300))).await;
    let mut client = connect(&server.url(), &[]);
    client.write(b"hello\n").await;
    client.close_stdin();
    let done = client.finish().await;
    done.assert_code(0).assert_stdout("hello\n");
    let close = server.wait_client_close(0).await;
    assert_eq!(close.0, 1000, "{}", done.dump());
    assert_eq!(server.connection_count(), 1);
}

#[tokio::test]
async fn linger_0_closes_at_once_at_stdin_eof() {
    let server = Server::always(Behaviour::DelayedEcho(Duration::from_millis(500))).await;
    let mut client = connect(&server.url(), &["--linger", "0"]);
    client.write(b"hello\n").await;
    client.close_stdin();
    let done = client.finish().await;
    // The server got the line and our close, and never sent the echo.
    done.assert_code(0).assert_stdout("");
    assert_eq!(server.wait_client_close(0).await.0, 1000);
    assert_eq!(server.connections()[0].texts, vec!["hello".to_owned()]);
}

#[tokio::test]
async fn a_1008_about_something_else_gets_no_credentials_advice() {
    let server = Server::always(Behaviour::close(1008, "message too frequent")).await;
    let done = connect(&server.url(), &[]).finish().await;
    done.assert_code(77)
        .assert_stderr_contains("server closed 1008 (message too frequent)")
        .assert_stderr_lacks("--token-env")
        .assert_stderr_lacks("credentials");
}

#[tokio::test]
async fn a_1008_about_an_expired_token_gets_the_credentials_advice() {
    let server = Server::always(Behaviour::close(1008, "token expired")).await;
    let done = connect(&server.url(), &[]).finish().await;
    done.assert_code(77)
        .assert_stderr_contains("server closed 1008 (token expired)")
        .assert_stderr_contains("--token-env");
}

// ------------------------------------------------------------------ --max-line

/// A stdin line longer than `--max-line` is the user's data refused (65) with its own
/// message, not an internal error; the lines before it reach the server, nothing from it
/// on is sent, and the connection is closed by us (1001).
#[tokio::test]
async fn a_stdin_line_over_max_line_stops_with_65_after_the_lines_before_it() {
    let server = Server::always(Behaviour::Echo).await;
    let mut client = connect(&server.url(), &["--max-line", "1KiB"]);
    let at_the_limit = "y".repeat(1024);
    let too_long = "x".repeat(2048);
    client
        .write(format!("short\n{at_the_limit}\n{too_long}\nafter\n").as_bytes())
        .await;
    let done = client.finish().await;
    done.assert_code(65)
        .assert_stderr_contains("a stdin line is longer than 1 KiB (--max-line)")
        .assert_stderr_lacks("internal error")
        .assert_stderr_lacks("panicked");
    assert_eq!(server.wait_client_close(0).await.0, 1001);
    assert_eq!(
        server.connections()[0].texts,
        ["short", at_the_limit.as_str()]
    );
    assert_eq!(server.connection_count(), 1);
}

/// Without `--max-line`, the limit is the 64 MiB message limit: a longer line with no
/// newline at all is refused once 64 MiB of it were read (it used to be read whole, then
/// fail as "internal error: websocket write buffer full"), and memory stays near that.
#[tokio::test]
async fn a_line_over_64mib_without_a_newline_stops_with_65_not_an_internal_error() {
    let server = Server::always(Behaviour::Echo).await;
    let mut client = connect(&server.url(), &[]);
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..64 {
        client.write(&chunk).await;
    }
    // A few bytes more, in one write that the pipe takes whether or not wsup reads it:
    // wsup stops reading 2 bytes past the limit (room for a CR LF) and exits.
    client.write(&[b'x'; 16]).await;
    client.close_stdin();
    let done = client.finish().await;
    done.assert_code(65)
        .assert_stderr_contains("a stdin line is longer than 64 MiB")
        .assert_stderr_lacks("internal error")
        .assert_stderr_lacks("panicked");
    assert!(server.connections()[0].texts.is_empty());
}
