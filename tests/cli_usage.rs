//! Usage errors of the real `wsup` binary: exit 2, one line on stderr naming the
//! problem, nothing on stdout, no panic, and nothing dialed. Plus `--help` and
//! `--version` (stdout, exit 0).

mod support;

use std::path::Path;
use std::time::Duration;

use support::{Behaviour, Finished, Server, Wsup};

/// A usage error is found before anything is dialed or waited for.
const QUICKLY: Duration = Duration::from_secs(5);

/// Runs `wsup ARGS` (with `env` set and `WSUP_TEST_UNSET` unset) and checks the shape of
/// a usage error; returns the output for checks on the message.
async fn usage_error(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let mut command = support::wsup_command();
    command.args(args).env_remove("WSUP_TEST_UNSET");
    for (name, value) in env {
        command.env(name, value);
    }
    let done = Wsup::spawn_command(command).finish_within(QUICKLY).await;
    done.assert_code(2).assert_stdout("");
    let lines = support::diagnostic_lines(&done.stderr);
    assert_eq!(
        lines.len(),
        1,
        "a usage error is one line on stderr, got {lines:#?}\n{}",
        done.dump()
    );
    done
}

/// The single diagnostic line.
fn message(done: &Finished) -> String {
    support::diagnostic_lines(&done.stderr)[0].to_owned()
}

fn assert_mentions(done: &Finished, needles: &[&str]) {
    let line = message(done);
    for needle in needles {
        assert!(
            line.contains(needle),
            "the message should mention {needle:?}: {line}"
        );
    }
}

// ------------------------------------------------------------------------- URLs

#[tokio::test]
async fn malformed_urls_are_usage_errors() {
    for url in [
        "not a url",
        "ws://",
        "ws://:80/",
        "ws://127.0.0.1:99999/",
        "ws://user:hunter2@127.0.0.1/",
        "ws://127.0.0.1/#frag",
        "",
    ] {
        let done = usage_error(&["connect", url], &[]).await;
        assert_mentions(&done, &["invalid URL"]);
        assert!(
            !done.stderr.contains("hunter2"),
            "a password in the URL is never printed: {}",
            done.stderr
        );
    }
}

#[tokio::test]
async fn http_and_other_schemes_are_usage_errors() {
    for (url, scheme) in [
        ("http://127.0.0.1:1/", "'http'"),
        ("https://example.com/", "'https'"),
        ("ftp://example.com/", "'ftp'"),
    ] {
        let done = usage_error(&["connect", url], &[]).await;
        assert_mentions(&done, &["unsupported URL scheme", scheme, "ws://"]);
    }
}

// ------------------------------------------------------------------------ flags

#[tokio::test]
async fn a_missing_argument_or_unknown_flag_is_one_line_that_names_it() {
    for (args, needles) in [
        (&["connect"][..], &["required", "<URL>"][..]),
        (
            &["port-forward", "ws://127.0.0.1:9/"][..],
            &["--listen"][..],
        ),
        (
            &["connect", "ws://127.0.0.1:9/", "--bogus"][..],
            &["--bogus"][..],
        ),
        (
            &["connect", "ws://127.0.0.1:9/", "--max-retries", "many"][..],
            &["--max-retries", "many"][..],
        ),
    ] {
        let done = usage_error(args, &[]).await;
        assert_mentions(&done, needles);
    }
}

#[tokio::test]
async fn bad_durations_are_usage_errors() {
    let server = Server::always(Behaviour::Echo).await;
    let url = server.url();
    for (flag, value) in [
        ("--backoff-initial", "10parsecs"),
        ("--backoff-max", "soon"),
        ("--connect-timeout", "-1s"),
        ("--ping-interval", "0s"),
        ("--pong-timeout", "0ms"),
        ("--stable-after", "1x"),
    ] {
        let flag_value = format!("{flag}={value}");
        let done = usage_error(&["connect", &url, &flag_value], &[]).await;
        assert_mentions(&done, &[flag]);
    }
    // --backoff-initial above --backoff-max.
    let done = usage_error(
        &[
            "connect",
            &url,
            "--backoff-initial",
            "2s",
            "--backoff-max",
            "1s",
        ],
        &[],
    )
    .await;
    assert_mentions(&done, &["--backoff-initial", "--backoff-max"]);
    assert_eq!(server.connection_count(), 0, "nothing was dialed");
}

#[tokio::test]
async fn missing_or_empty_token_env_variable_is_a_usage_error() {
    let server = Server::always(Behaviour::Echo).await;
    let url = server.url();
    let done = usage_error(&["connect", &url, "--token-env", "WSUP_TEST_UNSET"], &[]).await;
    assert_mentions(&done, &["WSUP_TEST_UNSET", "not set"]);
    let done = usage_error(
        &["connect", &url, "--token-env", "WSUP_TEST_EMPTY"],
        &[("WSUP_TEST_EMPTY", "  ")],
    )
    .await;
    assert_mentions(&done, &["WSUP_TEST_EMPTY", "empty"]);
    assert_eq!(server.connection_count(), 0, "nothing was dialed");
}

/// Values an `Authorization` header cannot carry: a CR LF that would smuggle in another
/// header, another control character, and non-ASCII (which the handshake cannot write).
/// Each holds a marker that must never be echoed.
const NOT_HEADER_SAFE: [&str; 3] = [
    "s3cr3t\r\nX-Injected: 1",
    "s3cr3t\u{1}",
    "s3cr3t-t\u{f6}k\u{e9}n",
];

fn assert_not_echoed(done: &Finished) {
    for secret in ["s3cr3t", "X-Injected", "k\u{e9}n"] {
        assert!(
            !done.stderr.contains(secret),
            "the value is never printed ({secret:?}): {}",
            done.stderr
        );
    }
}

#[tokio::test]
async fn a_token_env_value_no_header_can_carry_is_a_usage_error_naming_the_variable() {
    let server = Server::always(Behaviour::Echo).await;
    let url = server.url();
    for token in NOT_HEADER_SAFE {
        let done = usage_error(
            &["connect", &url, "--token-env", "WSUP_TEST_BAD_TOKEN"],
            &[("WSUP_TEST_BAD_TOKEN", token)],
        )
        .await;
        assert_mentions(
            &done,
            &[
                "WSUP_TEST_BAD_TOKEN",
                "--token-env",
                "HTTP header cannot carry",
            ],
        );
        assert_not_echoed(&done);
    }
    assert_eq!(server.connection_count(), 0, "nothing was dialed");
}

#[tokio::test]
async fn an_auth_scheme_no_header_can_carry_is_a_usage_error_naming_the_flag() {
    let server = Server::always(Behaviour::Echo).await;
    let url = server.url();
    for scheme in NOT_HEADER_SAFE {
        let done = usage_error(
            &[
                "connect",
                &url,
                "--token-env",
                "WSUP_TEST_GOOD_TOKEN",
                "--auth-scheme",
                scheme,
            ],
            &[("WSUP_TEST_GOOD_TOKEN", "fine-token")],
        )
        .await;
        assert_mentions(&done, &["--auth-scheme", "HTTP header cannot carry"]);
        assert_not_echoed(&done);
        assert!(!done.stderr.contains("fine-token"), "{}", done.stderr);
    }
    assert_eq!(server.connection_count(), 0, "nothing was dialed");
}

#[tokio::test]
async fn a_credentials_file_token_no_header_can_carry_is_a_usage_error_naming_the_file() {
    let server = Server::always(Behaviour::Echo).await;
    let url = server.url();
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("bad-credentials.json");
    let shown = path.to_str().expect("UTF-8 path");
    for token in NOT_HEADER_SAFE {
        let content = serde_json::json!({ "access_token": token }).to_string();
        std::fs::write(&path, &content).expect("write the credentials file");
        let done = usage_error(&["connect", &url, "--credentials", shown], &[]).await;
        assert_mentions(&done, &[shown, "access_token", "HTTP header cannot carry"]);
        assert_not_echoed(&done);
        assert_eq!(
            std::fs::read_to_string(&path).expect("read it back"),
            content,
            "an unusable file is never rewritten"
        );
    }
    assert_eq!(server.connection_count(), 0, "nothing was dialed");
}

#[tokio::test]
async fn unreadable_or_invalid_ca_cert_is_a_usage_error() {
    let server = Server::always(Behaviour::Echo).await;
    let url = server.url();
    let missing = "/nonexistent/wsup-test/ca.pem";
    let done = usage_error(&["connect", &url, "--ca-cert", missing], &[]).await;
    assert_mentions(&done, &[missing, "cannot read"]);

    let not_pem = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let not_pem = not_pem.to_str().expect("UTF-8 path");
    let done = usage_error(&["connect", &url, "--ca-cert", not_pem], &[]).await;
    assert_mentions(&done, &["Cargo.toml", "no certificate"]);

    let directory = env!("CARGO_MANIFEST_DIR");
    let done = usage_error(&["connect", &url, "--ca-cert", directory], &[]).await;
    assert_mentions(&done, &[directory, "cannot read"]);
    assert_eq!(server.connection_count(), 0, "nothing was dialed");
}

#[tokio::test]
async fn bad_headers_are_usage_errors_that_never_show_the_value() {
    let server = Server::always(Behaviour::Echo).await;
    let url = server.url();
    for (header, needle) in [
        ("NoColonHere", "':'"),
        (": value", "empty"),
        ("Bad Name: x", "'Bad Name'"),
        ("X-Ctl: s3cr3t\u{1}value", "'x-ctl'"),
        ("Authorization: Bearer s3cr3t\u{7f}", "authorization"),
        (
            "Authorization: Bearer s3cr3t\r\nX-Injected: 1",
            "authorization",
        ),
        ("Connection: close", "handshake"),
    ] {
        let done = usage_error(&["connect", &url, "--header", header], &[]).await;
        assert_mentions(&done, &["header", needle]);
        assert!(
            !done.stderr.contains("s3cr3t"),
            "a header value is never printed: {}",
            done.stderr
        );
    }
    assert_eq!(server.connection_count(), 0, "nothing was dialed");
}

#[tokio::test]
async fn retry_close_codes_accepts_only_application_codes() {
    let server = Server::always(Behaviour::Echo).await;
    let url = server.url();
    for (codes, needle) in [
        ("1008", "1008 is not an application close code"),
        ("4001,1011", "1011 is not an application close code"),
        ("5000", "5000 is not an application close code"),
        ("abc", "'abc' is not a close code"),
    ] {
        let done = usage_error(&["connect", &url, "--retry-close-codes", codes], &[]).await;
        assert_mentions(&done, &[needle]);
    }
    assert_eq!(server.connection_count(), 0, "nothing was dialed");
}

// ----------------------------------------------- credentials over plain ws://

/// `ws://0.0.0.0:PORT` is not loopback by DESIGN.md's definition (localhost, 127/8,
/// ::1), yet on Linux a connection to it reaches a server bound to 127.0.0.1: the test
/// can tell "refused before dialing" from "dialed".
#[tokio::test]
async fn credentials_over_non_loopback_ws_are_refused_before_dialing() {
    let server = Server::always(Behaviour::close(1000, "")).await;
    let url = format!("ws://0.0.0.0:{}/", server.addr.port());
    let token = ("WSUP_TEST_INSECURE_TOKEN", "t0ken-insecure");

    let done = usage_error(
        &["connect", &url, "--token-env", "WSUP_TEST_INSECURE_TOKEN"],
        &[token],
    )
    .await;
    assert_mentions(&done, &["refusing to send credentials", "--allow-insecure"]);
    assert!(!done.stderr.contains(token.1), "{}", done.stderr);

    let done = usage_error(
        &["connect", &url, "--header", "Authorization: Basic s3cr3t"],
        &[],
    )
    .await;
    assert_mentions(&done, &["refusing to send credentials"]);
    assert!(!done.stderr.contains("s3cr3t"), "{}", done.stderr);

    // A hostname that is not loopback: refused before any DNS lookup.
    let done = usage_error(
        &[
            "connect",
            "ws://example.invalid/",
            "--token-env",
            "WSUP_TEST_INSECURE_TOKEN",
        ],
        &[token],
    )
    .await;
    assert_mentions(&done, &["refusing to send credentials"]);
    assert_eq!(server.connection_count(), 0, "nothing was dialed");
}

#[tokio::test]
async fn allow_insecure_sends_credentials_over_plain_ws() {
    // A refused non-loopback address: the dial fails and --max-retries 0 ends it (75).
    let url = format!("ws://0.0.0.0:{}/", support::refused_port());
    let mut command = support::wsup_command();
    command
        .args(["connect", &url, "--token-env", "WSUP_TEST_INSECURE_TOKEN"])
        .args(["--allow-insecure", "--max-retries", "0"])
        .env("WSUP_TEST_INSECURE_TOKEN", "t0ken-insecure");
    let done = Wsup::spawn_command(command).finish().await;
    done.assert_code(75)
        .assert_stdout("")
        .assert_stderr_contains("connection refused")
        .assert_stderr_lacks("t0ken-insecure");

    // And against a server: the token arrives.
    let server = Server::always(Behaviour::close(1000, "")).await;
    let url = format!("ws://0.0.0.0:{}/", server.addr.port());
    let mut command = support::wsup_command();
    command
        .args(["connect", &url, "--token-env", "WSUP_TEST_INSECURE_TOKEN"])
        .arg("--allow-insecure")
        .env("WSUP_TEST_INSECURE_TOKEN", "t0ken-insecure");
    let done = Wsup::spawn_command(command).finish().await;
    done.assert_code(0).assert_stdout("");
    let connections = server.connections();
    assert_eq!(connections.len(), 1);
    assert_eq!(
        connections[0].header("authorization"),
        Some("Bearer t0ken-insecure")
    );
}

/// `transport::is_credential_header` documents Cookie and Proxy-Authorization as
/// credential headers "for check_secure_for_credentials"; DESIGN.md says credentials of
/// any kind are only sent over wss:// or loopback ws://.
#[tokio::test]
async fn cookie_and_proxy_authorization_headers_count_as_credentials() {
    let server = Server::always(Behaviour::close(1000, "")).await;
    let url = format!("ws://0.0.0.0:{}/", server.addr.port());
    for header in [
        "Cookie: session=s3cr3t",
        "Proxy-Authorization: Basic s3cr3t",
    ] {
        let done = usage_error(&["connect", &url, "--header", header], &[]).await;
        assert_mentions(&done, &["refusing to send credentials"]);
    }
    assert_eq!(server.connection_count(), 0, "nothing was dialed");
}

// -------------------------------------------------------------- help, version

#[tokio::test]
async fn help_and_version_go_to_stdout_with_exit_0() {
    for args in [
        &["--help"][..],
        &["-h"][..],
        &["connect", "--help"][..],
        &["serve", "--help"][..],
    ] {
        let done = Wsup::spawn(args).finish_within(QUICKLY).await;
        done.assert_code(0);
        assert_eq!(done.stderr, "", "{args:?}: nothing on stderr");
        let help = done.stdout_text();
        assert!(help.contains("Usage:"), "{args:?}: {help}");
        assert!(
            help.contains("--max-retries"),
            "{args:?}: global flags listed"
        );
    }
    let top = Wsup::spawn(["--help"]).finish_within(QUICKLY).await;
    let help = top.stdout_text();
    for expected in ["connect", "serve", "Exit codes"] {
        assert!(help.contains(expected), "--help lacks {expected:?}: {help}");
    }

    for args in [
        &["--version"][..],
        &["-V"][..],
        // Before or after the subcommand, like every common flag.
        &["connect", "ws://127.0.0.1:9/", "--version"][..],
        &["logs", "--version"][..],
        &["port-forward", "-V"][..],
    ] {
        let done = Wsup::spawn(args).finish_within(QUICKLY).await;
        done.assert_code(0);
        // The program's name, not clap's "wsup-connect" for a subcommand.
        assert_eq!(
            done.stdout_text(),
            format!("wsup {}\n", env!("CARGO_PKG_VERSION")),
            "{args:?}"
        );
        assert_eq!(done.stderr, "", "{args:?}");
    }
}

#[tokio::test]
async fn every_supervising_subcommand_lists_the_exit_codes_in_its_help() {
    for subcommand in ["connect", "logs", "shell", "port-forward"] {
        for flag in ["--help", "-h"] {
            let done = Wsup::spawn([subcommand, flag]).finish_within(QUICKLY).await;
            done.assert_code(0);
            let help = done.stdout_text();
            for expected in ["Exit codes", "0 done", "69 ", "75 ", "77 ", "130 ", "143 "] {
                assert!(
                    help.contains(expected),
                    "{subcommand} {flag} lacks {expected:?}: {help}"
                );
            }
        }
    }
    // `--linger` is a common flag, documented with its default.
    let help = Wsup::spawn(["connect", "--help"])
        .finish_within(QUICKLY)
        .await
        .stdout_text();
    assert!(help.contains("--linger"), "{help}");
}

// ------------------------------------------------------------- hostile numbers

/// Values at or past the ends of what a flag takes: each is a usage error (exit 2, one
/// line naming the flag), never a panic. Huge durations used to panic with "overflow when
/// adding durations" once a timer was armed.
#[tokio::test]
async fn hostile_numbers_in_flags_are_usage_errors_not_panics() {
    let server = Server::always(Behaviour::Echo).await;
    let url = server.url();
    let connect = ["connect", url.as_str()];
    let forward = ["port-forward", url.as_str(), "--listen", "0"];
    let serve = ["serve", "--listen", "127.0.0.1:0"];
    // (subcommand and its arguments, flag, value): passed as `flag=value`.
    let mut cases: Vec<(&[&str], &str, &str)> = Vec::new();
    for flag in [
        "--ping-interval",
        "--pong-timeout",
        "--backoff-initial",
        "--backoff-max",
        "--connect-timeout",
        "--stable-after",
    ] {
        for value in [
            "18446744073709551615s",
            "2days",
            "25h",
            "99999999999999999999999y",
        ] {
            cases.push((&connect, flag, value));
            cases.push((&forward, flag, value));
        }
    }
    for value in ["18446744073709551615s", "2days"] {
        cases.push((&serve, "--token-ttl", value));
    }
    for value in [
        "0",
        "64MiB1",
        "65MiB",
        "99999999999999999999999GiB",
        "1XB",
        "-1",
        "1.5KiB",
    ] {
        cases.push((&connect, "--max-line", value));
    }
    for value in ["0", "65537", "99999999999999999999", "-1"] {
        cases.push((&forward, "--max-tunnels", value));
    }
    for value in ["4294967296", "99999999999999999999", "-1"] {
        cases.push((&connect, "--max-retries", value));
    }
    for (command, flag, value) in cases {
        let mut args = command.to_vec();
        let flag_value = format!("{flag}={value}");
        args.push(&flag_value);
        let done = usage_error(&args, &[]).await;
        done.assert_stderr_lacks("panicked");
        assert_mentions(&done, &[flag]);
    }
    let done = usage_error(&["port-forward", &url, "--listen", "99999"], &[]).await;
    done.assert_stderr_lacks("panicked");
    assert_mentions(&done, &["99999"]);
    assert_eq!(server.connection_count(), 0, "nothing was dialed");
}

/// The largest accepted values run: a day-long ping interval and backoff, and the
/// largest --max-line and --max-retries, against a server that closes at once.
#[tokio::test]
async fn the_largest_accepted_values_run_without_overflow() {
    let server = Server::always(Behaviour::close(1000, "bye")).await;
    let done = Wsup::spawn([
        "connect",
        &server.url(),
        "--ping-interval",
        "1day",
        "--pong-timeout",
        "24h",
        "--backoff-max",
        "1day",
        "--backoff-initial",
        "1day",
        "--connect-timeout",
        "1day",
        "--stable-after",
        "86400s",
        "--max-retries",
        "4294967295",
        "--max-line",
        "64MiB",
    ])
    .finish_within(QUICKLY)
    .await;
    done.assert_code(0).assert_stderr_lacks("panicked");
}

// ------------------------------------------------- flags that mean what they say

#[tokio::test]
async fn client_flags_on_serve_are_usage_errors_before_or_after_the_subcommand() {
    for args in [
        &["serve", "--ca-cert", "/nonexistent", "--token-env", "NOPE"][..],
        &["--header", "X-Team: a", "serve", "--listen", "127.0.0.1:0"][..],
        &["serve", "--listen", "127.0.0.1:0", "--max-retries", "3"][..],
        &["serve", "--allow-insecure"][..],
        &["completions", "bash", "--credentials", "creds.json"][..],
        &["man", "--ping-interval", "1s"][..],
    ] {
        let done = usage_error(args, &[]).await;
        assert_mentions(&done, &["does not take", "client flags belong to"]);
        let flag = args
            .iter()
            .find(|arg| arg.starts_with("--") && **arg != "--listen")
            .expect("a client flag");
        assert_mentions(&done, &[flag]);
    }
}

#[tokio::test]
async fn serve_takes_the_output_flags() {
    let server = Wsup::spawn([
        "-q",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ]);
    let url = server.first_stdout_line().await;
    assert!(url.starts_with("ws://127.0.0.1:"), "serve printed {url:?}");
}

#[tokio::test]
async fn demo_honours_max_retries_and_refuses_credentials_and_tls_flags() {
    // The tour's first fault is a transient close: with no retry allowed, it ends there.
    let done = Wsup::spawn(["demo", "--max-retries", "0"])
        .finish_within(support::BOUND)
        .await;
    done.assert_code(75)
        .assert_stderr_contains("No shell-agent listening")
        .assert_stderr_contains("giving up after 0 retries")
        .assert_stderr_lacks("attempt 1 of 10");

    for args in [
        &["demo", "--token-env", "NOPE"][..],
        &["demo", "--header", "X-Team: a"][..],
        &["--ca-cert", "/nonexistent", "demo"][..],
        &["demo", "--retry-close-codes", "4000"][..],
    ] {
        let done = usage_error(args, &[]).await;
        assert_mentions(&done, &["`wsup demo` does not take"]);
    }
    // Honoured flags are checked against the tour's settings.
    let done = usage_error(&["demo", "--backoff-initial", "1m"], &[]).await;
    assert_mentions(&done, &["--backoff-initial", "--backoff-max"]);
}

#[tokio::test]
async fn a_mistyped_subcommand_or_flag_gets_a_suggestion_on_its_one_line() {
    let done = usage_error(&["conect", "ws://127.0.0.1:9/"], &[]).await;
    assert_mentions(&done, &["'conect'", "did you mean connect?"]);
    let done = usage_error(&["connect", "ws://127.0.0.1:9/", "--max-retrys", "3"], &[]).await;
    assert_mentions(&done, &["--max-retrys", "did you mean --max-retries?"]);
}

#[tokio::test]
async fn a_host_and_port_without_a_scheme_gets_the_corrected_url() {
    for (url, corrected) in [
        ("127.0.0.1:8765", "ws://127.0.0.1:8765/"),
        // Parses as the scheme "localhost" without a check.
        ("localhost:8765", "ws://localhost:8765/"),
        ("localhost:8765/feed?x=1", "ws://localhost:8765/feed?x=1"),
        // Not loopback: TLS is the likely intent.
        ("example.org/feed", "wss://example.org/feed"),
    ] {
        let done = usage_error(&["connect", url], &[]).await;
        assert_mentions(
            &done,
            &["add ws:// or wss://", &format!("did you mean {corrected}?")],
        );
        assert!(
            !message(&done).contains("relative URL without a base"),
            "{}",
            message(&done)
        );
    }
}

#[tokio::test]
async fn every_duration_flag_says_its_default_and_unit_and_max_retries_says_unlimited() {
    let done = Wsup::spawn(["connect", "--help"])
        .finish_within(QUICKLY)
        .await;
    done.assert_code(0);
    let help = done.stdout_text();
    for (flag, default) in [
        ("--backoff-initial", "500ms"),
        ("--backoff-max", "30s"),
        ("--ping-interval", "20s"),
        ("--pong-timeout", "20s"),
        ("--connect-timeout", "10s"),
        ("--stable-after", "10s"),
    ] {
        let entry = help_entry(&help, flag);
        for needle in ["<DURATION>", &format!("[default: {default}]")] {
            assert!(entry.contains(needle), "{flag}: {needle:?} in {entry:?}");
        }
        let explained = entry
            .replace(&format!("[default: {default}]"), "")
            .replace(&format!("{flag} <DURATION>"), "");
        assert!(
            explained.split_whitespace().count() >= 4,
            "{flag} has no help text: {entry:?}"
        );
    }
    let entry = help_entry(&help, "--max-retries");
    assert!(entry.contains("default: unlimited"), "{entry:?}");
}

/// A flag's entry in `--help`: its line and the indented lines that continue it.
fn help_entry(help: &str, flag: &str) -> String {
    // Flags stand at most 6 columns in; their wrapped help is indented further.
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut lines = help.lines().skip_while(|line| {
        indent(line) > 6
            || !line
                .trim_start()
                .split(", ")
                .any(|name| name.starts_with(&format!("{flag} ")) || name == flag)
    });
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("{flag} is not in --help:\n{help}"));
    let mut entry = first.trim().to_owned();
    // An entry ends at an empty line; clap separates a long help's paragraphs (and the
    // `[default: …]`) by lines of indentation only.
    for line in lines.take_while(|line| !line.is_empty() && indent(line) > 6) {
        if line.trim().is_empty() {
            continue;
        }
        entry.push(' ');
        entry.push_str(line.trim());
    }
    entry
}

/// The rule behind the help test, for every flag of every subcommand, new ones included:
/// a help text, and for an option with a value, its default.
#[test]
fn every_flag_has_help_and_every_option_its_default() {
    let mut command = wsup::manual::command();
    command.build();
    for sub in std::iter::once(&command).chain(command.get_subcommands()) {
        for arg in sub.get_arguments() {
            let name = format!("{} {}", sub.get_name(), arg.get_id());
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(!help.trim().is_empty(), "{name} has no help");
            let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
            if takes_value && !arg.is_positional() && !arg.is_required_set() {
                assert!(
                    !arg.get_default_values().is_empty() || help.contains("default"),
                    "{name}: its help does not say the default: {help:?}"
                );
            }
        }
    }
}
