//! `--token-command`: the real binary on loopback, the token from a shell command.
//!
//! Each test asserts the exit code, what the server received (the Authorization header,
//! how many connections) and what the user saw; no token ever reaches stderr.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{Behaviour, Server, Wsup, FAST};

/// `wsup connect URL --token-command COMMAND` with fast retries and `extra` flags.
fn connect_with_command(url: &str, command: &str, extra: &[&str]) -> Wsup {
    let mut args = vec!["connect", url, "--token-command", command];
    args.extend_from_slice(FAST);
    args.extend_from_slice(extra);
    Wsup::spawn(args)
}

/// A command that prints `tok-N` (or `format` with N in it), N counting its runs in a
/// file in `dir`.
fn counting_command(dir: &Path, format: &str) -> String {
    let counter = dir.join("runs");
    format!(
        "n=$(cat '{c}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{c}'; printf '{format}\\n' \"$n\"",
        c = counter.display()
    )
}

fn runs(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("runs"))
        .map(|text| text.trim().parse().expect("a run count"))
        .unwrap_or(0)
}

fn authorizations(server: &Server) -> Vec<Option<String>> {
    server
        .connections()
        .iter()
        .map(|c| c.header("authorization").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_bare_token_from_the_command_reaches_the_server_as_bearer() {
    let server = Server::always(Behaviour::close(1000, "")).await;
    let done = connect_with_command(&server.url(), "printf '  c0mmand-t0ken-bare \\n'", &[])
        .finish()
        .await;
    done.assert_code(0)
        .assert_stderr_lacks("c0mmand-t0ken-bare");
    assert_eq!(
        authorizations(&server),
        vec![Some("Bearer c0mmand-t0ken-bare".to_owned())]
    );
}

#[tokio::test]
async fn the_json_forms_give_the_token_and_auth_scheme_applies() {
    for (output, token) in [
        (
            r#"{"access_token": "json-at-1", "expires_in": 3600}"#,
            "json-at-1",
        ),
        (
            r#"{"token": "json-t-2", "expiration_timestamp": "2999-01-01T00:00:00Z"}"#,
            "json-t-2",
        ),
        (
            r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","status":{"token":"k8s-t-3","expirationTimestamp":"2999-01-01T00:00:00Z"}}"#,
            "k8s-t-3",
        ),
    ] {
        let server = Server::always(Behaviour::close(1000, "")).await;
        let command = format!("cat <<'EOF'\n{output}\nEOF");
        let done = connect_with_command(&server.url(), &command, &["--auth-scheme", "Token"])
            .finish()
            .await;
        done.assert_code(0).assert_stderr_lacks(token);
        assert_eq!(
            authorizations(&server),
            vec![Some(format!("Token {token}"))],
            "{output}"
        );
    }
}

#[tokio::test]
async fn a_rejected_token_runs_the_command_again_and_the_redial_carries_the_new_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(vec![
        Behaviour::close(1008, "token expired"),
        Behaviour::close(1000, ""),
    ])
    .await;
    let command = counting_command(dir.path(), "rotating-tok-%s");
    let done = connect_with_command(&server.url(), &command, &[])
        .finish()
        .await;
    done.assert_code(0)
        .assert_stderr_contains("refreshing the token")
        .assert_stderr_lacks("rotating-tok");
    assert_eq!(runs(dir.path()), 2, "the first run, then one refresh");
    assert_eq!(
        authorizations(&server),
        vec![
            Some("Bearer rotating-tok-1".to_owned()),
            Some("Bearer rotating-tok-2".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_token_rejected_again_after_the_refresh_stops_with_77() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::always(Behaviour::close(1008, "token expired")).await;
    let command = counting_command(dir.path(), "again-tok-%s");
    let done = connect_with_command(&server.url(), &command, &[])
        .finish()
        .await;
    done.assert_code(77).assert_stderr_lacks("again-tok");
    assert_eq!(runs(dir.path()), 2, "one forced refresh per streak");
    assert_eq!(server.connection_count(), 2);
}

#[tokio::test]
async fn a_token_about_to_expire_is_renewed_before_the_dial() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(vec![
        Behaviour::close(1011, "restarting"),
        Behaviour::close(1000, ""),
    ])
    .await;
    // 30 s is inside the minute before expiry in which wsup renews ahead of a dial.
    let command = counting_command(
        dir.path(),
        r#"{"access_token": "short-%s", "expires_in": 30}"#,
    );
    let done = connect_with_command(&server.url(), &command, &[])
        .finish()
        .await;
    done.assert_code(0).assert_stderr_lacks("short-");
    assert_eq!(
        authorizations(&server),
        vec![
            Some("Bearer short-2".to_owned()),
            Some("Bearer short-3".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_failing_command_stops_with_77_and_its_last_stderr_line_escaped() {
    let server = Server::always(Behaviour::close(1000, "")).await;
    // Octal escapes: the command's text (which the message names) lacks what it prints.
    let command = "printf 's\\157me pr\\157gress\\n' >&2; printf 'reauth required \\033[2J now\\n' >&2; exit 1";
    let done = connect_with_command(&server.url(), command, &[])
        .finish()
        .await;
    done.assert_code(77)
        .assert_stderr_contains("failed (exit status 1): reauth required \\u{1b}[2J now")
        .assert_stderr_contains("[authentication]")
        .assert_stderr_lacks("\u{1b}")
        .assert_stderr_lacks("some progress");
    assert_eq!(
        server.connection_count(),
        0,
        "nothing is dialed without a token"
    );
}

#[tokio::test]
async fn a_command_past_the_timeout_is_a_usage_error_at_once() {
    let server = Server::always(Behaviour::close(1000, "")).await;
    let done = connect_with_command(
        &server.url(),
        "sleep 60",
        &["--token-command-timeout", "200ms"],
    )
    .finish()
    .await;
    done.assert_code(2)
        .assert_stderr_contains("token command `sleep 60` did not finish within 200ms");
    assert!(
        done.elapsed < Duration::from_secs(10),
        "took {:?}",
        done.elapsed
    );
    assert_eq!(server.connection_count(), 0);
}

#[tokio::test]
async fn a_command_that_does_not_exist_is_a_usage_error() {
    let server = Server::always(Behaviour::close(1000, "")).await;
    let done = connect_with_command(&server.url(), "wsup-no-such-helper --print-token", &[])
        .finish()
        .await;
    done.assert_code(2).assert_stderr_contains(
        "token command `wsup-no-such-helper --print-token` could not be started: exit status 127",
    );
    assert_eq!(server.connection_count(), 0);
}

#[tokio::test]
async fn unusable_output_is_a_usage_error_naming_the_command_never_the_value() {
    let server = Server::always(Behaviour::close(1000, "")).await;
    for (command, why) in [
        ("true", "printed nothing on stdout"),
        (
            "printf 'sec\\055line-1\\nsec\\055line-2\\n'",
            "printed a token that",
        ),
        (
            "echo '{\"token\": 5}'",
            "printed JSON without a string access_token or token",
        ),
    ] {
        let done = connect_with_command(&server.url(), command, &[])
            .finish()
            .await;
        done.assert_code(2)
            .assert_stderr_contains(&format!("token command `{command}` {why}"))
            .assert_stderr_lacks("sec-line");
    }
    let done = connect_with_command(&server.url(), "  ", &[])
        .finish()
        .await;
    done.assert_code(2)
        .assert_stderr_contains("--token-command is empty");
    assert_eq!(server.connection_count(), 0);
}

#[tokio::test]
async fn token_command_excludes_the_other_token_sources() {
    for other in [
        ["--token-env", "WSUP_SOME_TOKEN"],
        ["--credentials", "/nonexistent/creds.json"],
    ] {
        let mut args = vec!["connect", "ws://127.0.0.1:9/", "--token-command", "echo x"];
        args.extend_from_slice(&other);
        let done = Wsup::spawn(args).finish().await;
        done.assert_code(2)
            .assert_stderr_contains("--token-command")
            .assert_stderr_contains(other[0]);
    }
    let done = Wsup::spawn([
        "connect",
        "ws://127.0.0.1:9/",
        "--token-command-timeout",
        "1s",
    ])
    .finish()
    .await;
    done.assert_code(2)
        .assert_stderr_contains("--token-command");
}

#[tokio::test]
async fn a_token_command_is_refused_over_plain_ws_to_another_host_before_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let command = counting_command(dir.path(), "tok-%s");
    let done = Wsup::spawn([
        "connect",
        "ws://example.invalid/",
        "--token-command",
        &command,
    ])
    .finish()
    .await;
    done.assert_code(2)
        .assert_stderr_contains("--allow-insecure");
    assert_eq!(runs(dir.path()), 0, "the command did not run");
}

#[tokio::test]
async fn neither_the_token_nor_the_command_output_is_logged_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(vec![
        Behaviour::close(1008, "token expired"),
        Behaviour::close(1000, ""),
    ])
    .await;
    let command = counting_command(
        dir.path(),
        // Octal escapes: the text of the command (logged at debug level) lacks what it prints.
        r#"{"access_token": "tr4ce\055secret-%s", "expires_in": 3600, "note": "out\055put-marker"}"#,
    );
    let verbosities = [
        (&["-vvv"][..], None),
        (&["-vvv", "--log-format", "json"][..], None),
        (&[][..], Some("trace")),
    ];
    for (verbosity, wsup_log) in verbosities {
        let mut wsup = support::wsup_command();
        wsup.args(["connect", &server.url(), "--token-command", &command])
            .args(FAST)
            .args(verbosity);
        if let Some(spec) = wsup_log {
            wsup.env("WSUP_LOG", spec);
        }
        let done = Wsup::spawn_command(wsup).finish().await;
        done.assert_stderr_lacks("tr4ce-secret")
            .assert_stderr_lacks("out-put-marker");
        assert!(
            ["TRACE", "DEBUG"]
                .iter()
                .any(|level| done.stderr.contains(level)),
            "the logs were on: {}",
            done.dump()
        );
    }
    assert!(
        authorizations(&server).iter().any(|a| a
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer tr4ce-secret-"))),
        "the token was sent"
    );
}

/// A command that prints `later-tok-1` on its first run and does `then` on every later
/// one.
fn first_run_only_command(dir: &Path, then: &str) -> String {
    let counter = dir.join("runs");
    format!(
        "n=$(cat '{c}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{c}'; \
         if [ $n -ge 2 ]; then {then}; fi; printf 'later\\055tok-%s\\n' $n",
        c = counter.display()
    )
}

#[tokio::test]
async fn a_later_run_past_the_timeout_is_transient_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::always(Behaviour::close(1008, "token expired")).await;
    let command = first_run_only_command(dir.path(), "sleep 60");
    let done = connect_with_command(
        &server.url(),
        &command,
        &["--token-command-timeout", "300ms", "--max-retries", "2"],
    )
    .finish()
    .await;
    done.assert_code(75)
        .assert_stderr_contains("did not finish within 300ms")
        .assert_stderr_contains("[transient]")
        .assert_stderr_lacks("later-tok");
    assert_eq!(
        runs(dir.path()),
        4,
        "the first run, the refresh and 2 retries of it"
    );
    assert_eq!(server.connection_count(), 1);
}

#[tokio::test]
async fn a_later_run_that_fails_stops_with_77_and_its_stderr_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::always(Behaviour::close(1008, "token expired")).await;
    let command = first_run_only_command(dir.path(), "printf 'sess\\151on revoked\\n' >&2; exit 4");
    let done = connect_with_command(&server.url(), &command, &[])
        .finish()
        .await;
    done.assert_code(77)
        .assert_stderr_contains("failed (exit status 4): session revoked")
        .assert_stderr_contains("fix what it reports")
        .assert_stderr_lacks("later-tok");
    assert_eq!(runs(dir.path()), 2);
    assert_eq!(server.connection_count(), 1);
}

#[tokio::test]
async fn sigint_during_the_first_run_exits_130_at_once_and_kills_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let pid_file = dir.path().join("sleep.pid");
    // The command says when it runs (and which process is its sleep), then hangs.
    let command = format!(
        "sleep 60 & echo $! > '{p}'; touch '{s}'; wait",
        p = pid_file.display(),
        s = started.display()
    );
    let wsup = connect_with_command("ws://127.0.0.1:9/", &command, &[]);
    let deadline = std::time::Instant::now() + support::BOUND;
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = wsup.signal("INT");
    let done = wsup.finish().await;
    done.assert_code(130).assert_stderr_contains("interrupted");
    assert!(
        done.exited_at - signalled < Duration::from_secs(2),
        "exited {:?} after the signal",
        done.exited_at - signalled
    );
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let stat_path = format!("/proc/{}/stat", pid.trim());
    // Gone, or a zombie (dead, not yet reaped by its new parent).
    let is_dead = || {
        std::fs::read_to_string(&stat_path).map_or(true, |stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    };
    let deadline = std::time::Instant::now() + support::BOUND;
    while !is_dead() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command's sleep outlived wsup"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
