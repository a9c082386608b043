//! The credentials file: loading, refresh over HTTP, atomic storage, single-flight,
//! two processes on one file, a kill -9 mid-write, and no token in any output.
//!
//! The token endpoint here is written by hand on a raw TCP listener, independent of
//! `wsup serve`, so that the refresh code is checked against a server it did not shape.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wsup::classify::Failure;
use wsup::credentials::{Credentials, CredentialsFile};
use wsup::serve::{self, ServeOptions};

const WSUP: &str = env!("CARGO_BIN_EXE_wsup");

/// A token endpoint answering each request with the next scripted reply (the last one
/// repeats) and recording the form bodies it received.
struct TokenEndpoint {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
    served: tokio::sync::watch::Receiver<usize>,
}

impl TokenEndpoint {
    async fn start(replies: Vec<(u16, String)>) -> TokenEndpoint {
        let replies = replies
            .into_iter()
            .map(|(status, body)| (status, body, String::new()))
            .collect();
        TokenEndpoint::start_with_headers(replies).await
    }

    /// Each reply with extra header lines (each ending in `\r\n`).
    async fn start_with_headers(replies: Vec<(u16, String, String)>) -> TokenEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let recorded = bodies.clone();
        let (served_tx, served) = tokio::sync::watch::channel(0usize);
        tokio::spawn(async move {
            let mut served = 0usize;
            while let Ok((mut stream, _)) = listener.accept().await {
                let (status, body, headers) = replies[served.min(replies.len() - 1)].clone();
                served += 1;
                let recorded = recorded.clone();
                let served_tx = served_tx.clone();
                tokio::spawn(async move {
                    let request = read_request_body(&mut stream).await;
                    recorded.lock().unwrap().push(request);
                    served_tx.send_modify(|n| *n += 1);
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        TokenEndpoint {
            url,
            bodies,
            served,
        }
    }

    /// Waits until `n` requests have been received.
    async fn wait_for_requests(&self, n: usize) {
        let mut served = self.served.clone();
        let wait = served.wait_for(|served| *served >= n);
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("token requests arrive within 20 s")
            .unwrap();
    }

    fn requests(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }
}

async fn read_request_body(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text[end + 4..end + 4 + length].to_string();
            }
        }
    }
    String::new()
}

fn write_file(dir: &tempfile::TempDir, json: &str) -> std::path::PathBuf {
    let path = dir.path().join("credentials.json");
    std::fs::write(&path, json).unwrap();
    path
}

fn creds_json(access: &str, expiration: &str, refresh: &str, token_url: &str) -> String {
    serde_json::json!({
        "access_token": access,
        "access_token_expiration": expiration,
        "refresh_token": refresh,
        "token_url": token_url,
        "account": {"id": 42, "region": "eu"},
    })
    .to_string()
}

/// A credentials file (`a1`, expiring in 2099, refresh token `r1`) in a fresh directory,
/// which lives as long as the returned guard.
fn long_lived_file(token_url: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        &dir,
        &creds_json("a1", "2099-01-01T00:00:00Z", "r1", token_url),
    );
    (dir, path)
}

fn ok_reply(token: &str, expires_in: u64, refresh: Option<&str>) -> (u16, String) {
    let mut body = serde_json::json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"});
    if let Some(r) = refresh {
        body["refresh_token"] = r.into();
    }
    (200, body.to_string())
}

#[test]
fn unusable_files_are_usage_errors_naming_the_file_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("not json at all", "not valid JSON"),
        ("[1,2]", "JSON object"),
        (r#"{"refresh_token":"r"}"#, "no access_token"),
        (r#"{"access_token":""}"#, "non-empty"),
        (r#"{"access_token":" \n "}"#, "non-empty"),
        (
            r#"{"access_token":"abc\r\nX-Injected: 1"}"#,
            "HTTP header cannot carry",
        ),
        (
            r#"{"access_token":"t\u00f6k\u00e9n"}"#,
            "HTTP header cannot carry",
        ),
        (
            r#"{"access_token":"a","access_token_expiration":"tomorrow"}"#,
            "RFC 3339",
        ),
    ];
    for (content, expected) in cases {
        let path = write_file(&dir, content);
        let err = CredentialsFile::load(&path, "Bearer")
            .unwrap_err()
            .to_string();
        assert!(err.contains("credentials.json"), "{err}");
        assert!(err.contains(expected), "{content}: {err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
    }
    let missing = dir.path().join("nope.json");
    let err = CredentialsFile::load(&missing, "Bearer")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.json") && err.contains("cannot read"),
        "{err}"
    );
}

/// The same trimming as for `--token-env`: a trailing newline (from `echo` into the
/// file, or an editor) is not part of the token.
#[test]
fn the_stored_token_is_trimmed_like_a_token_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, r#"{"access_token":"  abc\n"}"#);
    let creds = CredentialsFile::load(&path, "Bearer").unwrap();
    assert_eq!(creds.authorization().unwrap().expose(), "Bearer abc");
}

/// A token the endpoint issues that no header can carry is a failure of the endpoint's
/// answer, like one without access_token: it does not heal by retrying (permanent, 69),
/// the token is never stored nor printed.
#[tokio::test]
async fn cli_a_refreshed_token_no_header_can_carry_stops_with_69_and_is_never_stored() {
    let server = scripted_server("expire-token", "A0").await;
    let endpoint = TokenEndpoint::start(vec![ok_reply(
        "NEW-SECRET\r\nX-Injected: 1",
        3600,
        Some("NEW-REFRESH"),
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let content = creds_json("A0", "2099-01-01T00:00:00Z", "R0", &endpoint.url);
    let path = write_file(&dir, &content);
    let out = connect_with_credentials(&server, &path, &[], Input::Open).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert_eq!(endpoint.requests(), 1, "{stderr}");
    assert!(stderr.contains("HTTP header cannot carry"), "{stderr}");
    assert!(stderr.contains("token_url"), "{stderr}");
    for secret in ["NEW-SECRET", "X-Injected", "NEW-REFRESH"] {
        assert!(!stderr.contains(secret), "{secret} leaked: {stderr}");
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
}

#[tokio::test]
async fn cli_a_credentials_file_token_with_a_trailing_newline_connects() {
    let server = scripted_server("echo", "A0").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, r#"{"access_token": "A0\n"}"#);
    let out = connect_with_credentials(&server, &path, &[], Input::Eof(b"hello\n")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    let stats = server.stats();
    assert_eq!(stats.upgrades, 1);
    assert_eq!(stats.unauthorized, 0);
    assert_eq!(stats.received, vec!["hello".to_string()]);
}

#[tokio::test]
async fn refresh_rewrites_the_file_atomically_keeping_unknown_fields() {
    let endpoint =
        TokenEndpoint::start(vec![ok_reply("new-access", 3600, Some("new-refresh"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        &dir,
        &creds_json(
            "old-access",
            "2000-01-01T00:00:00Z",
            "old-refresh",
            &endpoint.url,
        ),
    );
    let creds = CredentialsFile::load(&path, "Bearer").unwrap();
    assert!(creds.can_refresh());
    assert!(creds.expires_within(SystemTime::now(), Duration::from_secs(60)));
    let before = SystemTime::now();
    creds.refresh(None).await.unwrap();

    assert_eq!(creds.authorization().unwrap().expose(), "Bearer new-access");
    let body = endpoint.bodies.lock().unwrap()[0].clone();
    assert_eq!(body, "grant_type=refresh_token&refresh_token=old-refresh");

    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(stored["access_token"], "new-access");
    assert_eq!(stored["refresh_token"], "new-refresh");
    assert_eq!(stored["token_url"], endpoint.url.as_str());
    assert_eq!(stored["account"]["id"], 42, "unknown fields survive");
    let expiry: SystemTime =
        chrono::DateTime::parse_from_rfc3339(stored["access_token_expiration"].as_str().unwrap())
            .unwrap()
            .into();
    // now + expires_in - 60 s, stored to the second.
    let expected = before + Duration::from_secs(3600 - 60);
    let skew = expiry
        .duration_since(expected)
        .unwrap_or_else(|e| e.duration());
    assert!(skew <= Duration::from_secs(2), "{skew:?}");
    assert!(stored["access_token_expiration"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temp file left behind: {leftovers:?}"
    );
}

#[tokio::test]
async fn a_refresh_without_a_new_refresh_token_keeps_the_old_one() {
    let endpoint = TokenEndpoint::start(vec![ok_reply("a2", 600, None)]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        &dir,
        &creds_json("a1", "2000-01-01T00:00:00Z", "r1", &endpoint.url),
    );
    let creds = CredentialsFile::load(&path, "Bearer").unwrap();
    creds.refresh(None).await.unwrap();
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(stored["refresh_token"], "r1");
}

/// Each failure of the token endpoint: the file stays byte for byte as it was.
#[tokio::test]
async fn failed_refreshes_never_touch_the_file() {
    let cases: Vec<((u16, String), Option<u16>, &str)> = vec![
        (
            (400, r#"{"error":"invalid_grant"}"#.into()),
            Some(400),
            "invalid_grant",
        ),
        (
            (401, r#"{"error":"invalid_client"}"#.into()),
            Some(401),
            "invalid_client",
        ),
        ((503, "busy".into()), Some(503), ""),
        (
            (200, r#"{"expires_in":60}"#.into()),
            Some(200),
            "no access_token",
        ),
        ((200, "<html>".into()), Some(200), "not the expected JSON"),
        (
            ok_reply("NEW-SECRET\r\nX-Injected: 1", 3600, Some("r2")),
            Some(200),
            "HTTP header cannot carry",
        ),
        (
            ok_reply("NEW-SECRET-t\u{f6}k\u{e9}n", 3600, Some("r2")),
            Some(200),
            "HTTP header cannot carry",
        ),
    ];
    for (reply, status, detail) in cases {
        let endpoint = TokenEndpoint::start(vec![reply.clone()]).await;
        let dir = tempfile::tempdir().unwrap();
        let content = creds_json("a1", "2099-01-01T00:00:00Z", "r1", &endpoint.url);
        let path = write_file(&dir, &content);
        let creds = CredentialsFile::load(&path, "Bearer").unwrap();
        let rejected = creds.authorization().unwrap();
        let err = creds.refresh(Some(&rejected)).await.unwrap_err();
        match &err {
            Failure::Refresh {
                status: s,
                detail: d,
                ..
            } => {
                assert_eq!(*s, status, "{reply:?}");
                assert!(d.contains(detail), "{reply:?}: {d}");
                assert!(!err.to_string().contains("NEW-SECRET"), "{err}");
            }
            other => panic!("{reply:?}: {other:?}"),
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            content,
            "{reply:?}"
        );
        assert_eq!(creds.authorization().unwrap(), rejected);
    }
}

#[tokio::test]
async fn the_token_endpoints_retry_after_comes_with_its_failure() {
    for (status, header, expected) in [
        (429, "retry-after: 3\r\n", Some(Duration::from_secs(3))),
        (503, "Retry-After: 2\r\n", Some(Duration::from_secs(2))),
        (503, "", None),
    ] {
        let endpoint =
            TokenEndpoint::start_with_headers(vec![(status, "busy".into(), header.into())]).await;
        let (_dir, path) = long_lived_file(&endpoint.url);
        let creds = CredentialsFile::load(&path, "Bearer").unwrap();
        let rejected = creds.authorization().unwrap();
        let err = creds.refresh(Some(&rejected)).await.unwrap_err();
        assert!(
            matches!(err, Failure::Refresh { status: Some(s), .. } if s == status),
            "{err:?}"
        );
        // What the machine's backoff takes as its floor.
        assert_eq!(err.retry_after(), expected, "{status} {header:?}");
    }
}

#[tokio::test]
async fn an_unreachable_token_endpoint_is_a_transient_network_failure() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", closed.local_addr().unwrap());
    drop(closed);
    let (_dir, path) = long_lived_file(&url);
    let creds = CredentialsFile::load(&path, "Bearer").unwrap();
    let err = creds.refresh(None).await;
    // A proactive refresh of a token that is not expiring is a no-op...
    assert!(err.is_ok());
    let rejected = creds.authorization().unwrap();
    let err = creds.refresh(Some(&rejected)).await.unwrap_err();
    assert!(
        matches!(err, Failure::Refresh { status: None, .. }),
        "{err:?}"
    );
    assert_eq!(
        wsup::classify::ClassifyRules::default().classify(&err),
        wsup::classify::Class::Transient
    );
}

#[tokio::test]
async fn concurrent_refreshes_in_one_process_make_one_token_request() {
    let endpoint = TokenEndpoint::start(vec![ok_reply("a2", 3600, Some("r2"))]).await;
    let (_dir, path) = long_lived_file(&endpoint.url);
    let creds = Arc::new(CredentialsFile::load(&path, "Bearer").unwrap());
    let rejected = creds.authorization().unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let creds = creds.clone();
            let rejected = rejected.clone();
            tokio::spawn(async move { creds.refresh(Some(&rejected)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(endpoint.requests(), 1);
    assert_eq!(creds.token_requests(), 1);
    assert_eq!(creds.authorization().unwrap().expose(), "Bearer a2");
}

#[tokio::test]
async fn a_token_refreshed_by_another_process_is_reused() {
    let endpoint = TokenEndpoint::start(vec![ok_reply("a2", 3600, Some("r2"))]).await;
    let (_dir, path) = long_lived_file(&endpoint.url);
    let first = CredentialsFile::load(&path, "Bearer").unwrap();
    let second = CredentialsFile::load(&path, "Bearer").unwrap();
    let rejected = first.authorization().unwrap();
    first.refresh(Some(&rejected)).await.unwrap();
    // `second` still holds a1 in memory; the file has a2 now.
    second.refresh(Some(&rejected)).await.unwrap();
    assert_eq!(endpoint.requests(), 1);
    assert_eq!(second.authorization().unwrap().expose(), "Bearer a2");
}

#[tokio::test]
async fn invalid_grant_after_another_process_rotated_the_refresh_token_is_not_fatal() {
    // The other process refreshed between our load and our request: our refresh token
    // is dead, but the file holds a new one.
    let endpoint = TokenEndpoint::start(vec![(400, r#"{"error":"invalid_grant"}"#.into())]).await;
    let (_dir, path) = long_lived_file(&endpoint.url);
    let creds = CredentialsFile::load(&path, "Bearer").unwrap();
    let rejected = creds.authorization().unwrap();
    // Same access token, rotated refresh token: the first re-read does not adopt it,
    // the re-read after invalid_grant must.
    std::fs::write(
        &path,
        creds_json("a1", "2099-01-01T00:00:00Z", "r2", &endpoint.url),
    )
    .unwrap();
    creds.refresh(Some(&rejected)).await.unwrap();
    assert_eq!(endpoint.requests(), 1);
}

fn wsup_command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(WSUP);
    cmd.args(args)
        .env_remove("WSUP_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// What a test feeds to wsup's stdin.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// These bytes, then EOF at once.
    Eof(&'a [u8]),
    /// Nothing, and stdin stays open (no local EOF) until wsup exits.
    Open,
    /// These bytes, then EOF, once wsup said "connected" after a refresh or a redial:
    /// a line sent earlier could go to the connection the server is about to reject.
    AfterReconnect(&'a [u8]),
}

/// Runs wsup to its exit, at most 20 s.
async fn run_wsup(args: &[&str], envs: &[(&str, &str)], input: Input<'_>) -> std::process::Output {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = wsup_command(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().expect("running");
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let late_input = match input {
        Input::Eof(bytes) => {
            let mut stdin = stdin.take().unwrap();
            stdin.write_all(bytes).await.unwrap();
            None
        }
        Input::Open => None,
        Input::AfterReconnect(bytes) => Some(bytes.to_vec()),
    };
    let stderr_task = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut text = String::new();
        let mut late_input = late_input;
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("wsup: connected") {
                // Only `AfterReconnect` gives up stdin here; `Open` keeps it to the end.
                if let Some(bytes) = late_input.take() {
                    if let Some(mut input) = stdin.take() {
                        let _ = input.write_all(&bytes).await;
                    }
                }
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let stdout_task = tokio::spawn(async move {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes).await;
        bytes
    });
    let status = match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            panic!("wsup {args:?} did not finish within 20 s");
        }
    };
    std::process::Output {
        status,
        stdout: stdout_task.await.unwrap(),
        stderr: stderr_task.await.unwrap().into_bytes(),
    }
}

/// `wsup connect` to the scripted server with a credentials file.
async fn connect_with_credentials(
    server: &serve::ServerHandle,
    path: &std::path::Path,
    envs: &[(&str, &str)],
    input: Input<'_>,
) -> std::process::Output {
    let url = server.ws_url();
    let args = ["connect", &url, "--credentials", path.to_str().unwrap()];
    run_wsup(&args, envs, input).await
}

async fn scripted_server(script: &str, require_token: &str) -> serve::ServerHandle {
    let options = ServeOptions {
        require_token: Some(require_token.into()),
        ..ServeOptions::new(([127, 0, 0, 1], 0).into(), script.parse().unwrap())
    };
    serve::start(options).await.unwrap()
}

#[tokio::test]
async fn cli_refreshes_once_on_1008_and_never_logs_a_token_even_at_trace() {
    let server = scripted_server("expire-token,echo", "ACCESS-0-SECRET").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        &dir,
        &creds_json(
            "ACCESS-0-SECRET",
            "2099-01-01T00:00:00Z",
            "REFRESH-0-SECRET",
            &server.token_url(),
        ),
    );
    let out = connect_with_credentials(
        &server,
        &path,
        &[("WSUP_LOG", "trace")],
        Input::AfterReconnect(b"after refresh\n"),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after refresh\n");
    let stats = server.stats();
    assert_eq!(stats.token_requests, 1);
    assert_eq!(stats.received, vec!["after refresh".to_string()]);
    assert!(stderr.contains("refreshing the token"), "{stderr}");
    assert!(stderr.contains("TRACE"), "trace logging was on");
    for secret in ["ACCESS-0-SECRET", "REFRESH-0-SECRET", "tok-1", "rt-1"] {
        assert!(!stderr.contains(secret), "{secret} leaked into stderr");
    }
    let stored = std::fs::read_to_string(&path).unwrap();
    assert!(stored.contains("\"tok-1\"") && stored.contains("\"rt-1\""));
}

#[tokio::test]
async fn cli_a_server_that_always_closes_1008_gets_exactly_one_refresh() {
    let server = scripted_server("expire-token", "A0").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        &dir,
        &creds_json("A0", "2099-01-01T00:00:00Z", "R0", &server.token_url()),
    );
    let out = connect_with_credentials(&server, &path, &[], Input::Open).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert_eq!(server.stats().token_requests, 1);
    assert_eq!(server.stats().upgrades, 2);
    assert!(stderr.contains("log in again"), "{stderr}");
}

#[tokio::test]
async fn cli_proactive_refresh_before_dialing_an_expiring_token() {
    let server = scripted_server("echo", "A0").await;
    let dir = tempfile::tempdir().unwrap();
    let soon = chrono::Utc::now() + chrono::Duration::seconds(20);
    let path = write_file(
        &dir,
        &creds_json(
            "A0",
            &soon.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "R0",
            &server.token_url(),
        ),
    );
    let out = connect_with_credentials(&server, &path, &[], Input::Eof(b"x\n")).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = server.stats();
    assert_eq!(stats.token_requests, 1);
    assert_eq!(stats.unauthorized, 0, "the old token was never sent");
    assert_eq!(stats.upgrades, 1);
}

#[tokio::test]
async fn cli_invalid_grant_stops_with_77_and_leaves_the_file_alone() {
    let server = scripted_server("expire-token", "A0").await;
    let dir = tempfile::tempdir().unwrap();
    // `wsup serve` answers the refresh token `revoked` with 400 invalid_grant.
    let content = creds_json("A0", "2099-01-01T00:00:00Z", "revoked", &server.token_url());
    let path = write_file(&dir, &content);
    let out = connect_with_credentials(&server, &path, &[], Input::Open).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("log in again"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
}

#[tokio::test]
async fn cli_malformed_credentials_file_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "{\"access_token\": ");
    let out = run_wsup(
        &[
            "connect",
            "ws://127.0.0.1:9/",
            "--credentials",
            path.to_str().unwrap(),
        ],
        &[],
        Input::Open,
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("credentials.json"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"access_token\": "
    );
}

#[tokio::test]
async fn two_processes_on_one_file_spend_one_refresh_and_both_connect() {
    // `auth-close` upgrades and closes 1008 for a stale token: both processes start with
    // one, both need a refresh at about the same time.
    let server = scripted_server("auth-close", "CURRENT-0").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        &dir,
        &creds_json("STALE", "2099-01-01T00:00:00Z", "R0", &server.token_url()),
    );
    let args = [
        "connect",
        &server.ws_url(),
        "--credentials",
        path.to_str().unwrap(),
    ];
    let (a, b) = tokio::join!(
        run_wsup(&args, &[], Input::AfterReconnect(b"from a\n")),
        run_wsup(&args, &[], Input::AfterReconnect(b"from b\n"))
    );
    for out in [&a, &b] {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(String::from_utf8_lossy(&a.stdout), "from a\n");
    assert_eq!(String::from_utf8_lossy(&b.stdout), "from b\n");
    assert_eq!(server.stats().token_requests, 1, "one refresh for both");
}

/// The child side of the kill test: refresh forever. Runs only when the parent test
/// re-executes this test binary with the environment set.
#[test]
fn refresh_forever_child() {
    let (Ok(path), Ok(_)) = (
        std::env::var("WSUP_TEST_CHILD_CREDS"),
        std::env::var("WSUP_TEST_CHILD"),
    ) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let creds = CredentialsFile::load(std::path::Path::new(&path), "Bearer").unwrap();
        loop {
            let rejected = creds.authorization().unwrap();
            let _ = creds.refresh(Some(&rejected)).await;
        }
    });
}

#[tokio::test]
async fn kill_9_during_refreshes_leaves_a_complete_file() {
    // Every reply carries a large unknown-to-the-server field so that the write takes
    // long enough to be hit. The parent kills the child right after the endpoint has
    // answered, which is when the child writes.
    let mut replies = Vec::new();
    for i in 0..2000 {
        replies.push(ok_reply(
            &format!("access-{i}"),
            3600,
            Some(&format!("refresh-{i}")),
        ));
    }
    let endpoint = TokenEndpoint::start(replies).await;
    let dir = tempfile::tempdir().unwrap();
    let padding = "p".repeat(256 * 1024);
    let initial = serde_json::json!({
        "access_token": "access-initial",
        "access_token_expiration": "2099-01-01T00:00:00Z",
        "refresh_token": "refresh-initial",
        "token_url": endpoint.url,
        "padding": padding,
    })
    .to_string();
    let path = write_file(&dir, &initial);
    for round in 0..8u64 {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "refresh_forever_child", "--nocapture"])
            .env("WSUP_TEST_CHILD", "1")
            .env("WSUP_TEST_CHILD_CREDS", &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Wait for a few refreshes (a different number each round), then kill -9.
        let target = endpoint.requests() + 1 + (round as usize % 4);
        endpoint.wait_for_requests(target).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let stored: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let token = stored["access_token"].as_str().unwrap();
        assert!(token.starts_with("access-"), "round {round}: {token}");
        assert_eq!(stored["padding"].as_str().map(str::len), Some(256 * 1024));
    }
}

#[tokio::test]
async fn cli_refuses_a_plain_http_token_url_to_a_remote_host() {
    let dir = tempfile::tempdir().unwrap();
    let content = creds_json(
        "A0",
        "2099-01-01T00:00:00Z",
        "R0",
        "http://login.example.com/oauth/token",
    );
    let path = write_file(&dir, &content);
    let args = [
        "connect",
        "ws://127.0.0.1:9/",
        "--credentials",
        path.to_str().unwrap(),
    ];
    let out = run_wsup(&args, &[], Input::Eof(b"")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("token_url") && stderr.contains("--allow-insecure"),
        "{stderr}"
    );
    assert!(!stderr.contains("R0"));
    // With --allow-insecure it proceeds to dial (and fails on the closed port).
    let mut insecure = args.to_vec();
    insecure.extend(["--allow-insecure", "--max-retries", "0"]);
    let out = run_wsup(&insecure, &[], Input::Open).await;
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- Hostile token endpoints and hostile files (issue 11) ----

/// A token endpoint that answers each request with one raw HTTP response (status line,
/// headers and as much body as it likes, written by `answer`), counting the requests.
struct RawTokenEndpoint {
    url: String,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl RawTokenEndpoint {
    async fn start<F, Fut>(answer: F) -> RawTokenEndpoint
    where
        F: Fn(usize, tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counted = counted.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    read_request_body(&mut stream).await;
                    let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    answer(n, stream).await;
                });
            }
        });
        RawTokenEndpoint { url, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A 200 whose body never ends (no length, spaces forever: a valid JSON prefix, so only
/// a size cap stops the reader).
async fn endless_answer(_n: usize, mut stream: tokio::net::TcpStream) {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let chunk = vec![b' '; 64 * 1024];
    while stream.write_all(&chunk).await.is_ok() {}
}

/// The stored expiry, in Unix seconds.
fn stored_expiry(path: &std::path::Path) -> i64 {
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    chrono::DateTime::parse_from_rfc3339(stored["access_token_expiration"].as_str().unwrap())
        .unwrap()
        .timestamp()
}

const TEN_YEARS_SECS: i64 = 10 * 365 * 24 * 3600;

/// `expires_in` of any size or sign, or as a string: no panic, the answer (with its
/// rotated refresh token) is stored, and the expiry is clamped to now..now + 10 years.
#[tokio::test]
async fn any_expires_in_is_clamped_and_the_rotated_refresh_token_is_stored() {
    let cases: [(&str, i64, i64); 7] = [
        // (expires_in as JSON, lowest and highest stored expiry, relative to now)
        ("10000000000000", TEN_YEARS_SECS - 62, TEN_YEARS_SECS),
        ("9223372036854775807", TEN_YEARS_SECS - 62, TEN_YEARS_SECS),
        ("18446744073709551615", TEN_YEARS_SECS - 62, TEN_YEARS_SECS),
        ("1e300", TEN_YEARS_SECS - 62, TEN_YEARS_SECS),
        ("\"3600\"", 3600 - 62, 3600),
        ("0", -2, 2),
        ("-9223372036854775808", -2, 2),
    ];
    for (expires_in, low, high) in cases {
        let body =
            format!(r#"{{"access_token":"a2","expires_in":{expires_in},"refresh_token":"r2"}}"#);
        let endpoint = TokenEndpoint::start(vec![(200, body)]).await;
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(
            &dir,
            &creds_json("a1", "2000-01-01T00:00:00Z", "r1", &endpoint.url),
        );
        let creds = CredentialsFile::load(&path, "Bearer").unwrap();
        let now = chrono::Utc::now().timestamp();
        creds
            .refresh(None)
            .await
            .unwrap_or_else(|e| panic!("{expires_in}: {e}"));
        assert_eq!(creds.authorization().unwrap().expose(), "Bearer a2");
        let stored: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(stored["refresh_token"], "r2", "{expires_in}");
        let expiry = stored_expiry(&path) - now;
        assert!(
            (low..=high).contains(&expiry),
            "{expires_in}: expiry now{expiry:+}s"
        );
        // What was stored loads again.
        CredentialsFile::load(&path, "Bearer").unwrap();
    }
}

/// RFC 3339 allows years 0000 to 9999 (and offsets that push them further): none of
/// them may overflow the expiry arithmetic, whatever window is asked about.
#[test]
fn stored_expirations_at_the_ends_of_time_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    for (expiration, expired) in [
        ("9999-12-31T23:59:59Z", false),
        ("9999-12-31T23:59:59-23:59", false),
        ("0000-01-01T00:00:00Z", true),
        ("0000-01-01T00:00:00+23:59", true),
    ] {
        let path = write_file(
            &dir,
            &creds_json("a1", expiration, "r1", "http://127.0.0.1:9/"),
        );
        let creds = CredentialsFile::load(&path, "Bearer").unwrap();
        assert_eq!(
            creds.expires_within(now, Duration::from_secs(60)),
            expired,
            "{expiration}"
        );
        assert!(creds.expires_within(now, Duration::MAX), "{expiration}");
        assert!(creds.expires_within(SystemTime::UNIX_EPOCH, Duration::MAX));
    }
}

/// A body that never ends stops at 64 KiB: the same failure as a garbage answer
/// (permanent, 69), at once, not after the request timeout or out of memory.
#[tokio::test]
async fn cli_an_endless_token_answer_stops_at_64_kib_with_69() {
    let server = scripted_server("expire-token", "A0").await;
    let endpoint = RawTokenEndpoint::start(endless_answer).await;
    let dir = tempfile::tempdir().unwrap();
    let content = creds_json("A0", "2099-01-01T00:00:00Z", "R0", &endpoint.url);
    let path = write_file(&dir, &content);
    let started = std::time::Instant::now();
    let out = connect_with_credentials(&server, &path, &[], Input::Open).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("larger than 64 KiB"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(endpoint.requests(), 1);
    // The token request timeout is 30 s: this did not wait for it.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
}

/// A `Content-Length` over the cap is refused before any of the body is read (here it
/// never comes); an error status keeps its own class whatever its body's size.
#[tokio::test]
async fn an_announced_oversized_token_answer_is_refused_without_reading_it() {
    for (status, class) in [
        (200, wsup::classify::Class::Permanent),
        (503, wsup::classify::Class::Transient),
    ] {
        let endpoint = RawTokenEndpoint::start(move |_n, mut stream| async move {
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n{{"
            );
            let _ = stream.write_all(head.as_bytes()).await;
            // Hold the connection open: only the header can end this request early.
            let mut sink = [0u8; 64];
            let _ = stream.read(&mut sink).await;
        })
        .await;
        let (_dir, path) = long_lived_file(&endpoint.url);
        let creds = CredentialsFile::load(&path, "Bearer").unwrap();
        let rejected = creds.authorization().unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), creds.refresh(Some(&rejected)))
            .await
            .expect("refused at the header, not after the request timeout")
            .unwrap_err();
        assert!(
            matches!(&err, Failure::Refresh { status: Some(s), .. } if *s == status),
            "{err:?}"
        );
        assert_eq!(
            wsup::classify::ClassifyRules::default().classify(&err),
            class,
            "{err}"
        );
        if status == 200 {
            assert!(err.to_string().contains("larger than 64 KiB"), "{err}");
        }
    }
}

/// `--credentials` must name a regular file of at most 1 MiB: /dev/zero, a FIFO with no
/// writer and a 2 MiB file are usage errors naming the file, at once.
#[tokio::test]
async fn cli_a_device_a_fifo_or_a_huge_credentials_file_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("credentials.fifo");
    let fifo_c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) }, 0);
    let huge = dir.path().join("huge.json");
    let padding = "p".repeat(2 * 1024 * 1024);
    std::fs::write(
        &huge,
        serde_json::json!({"access_token": "A0", "padding": padding}).to_string(),
    )
    .unwrap();
    let link_to_zero = dir.path().join("zero-link.json");
    std::os::unix::fs::symlink("/dev/zero", &link_to_zero).unwrap();
    for (path, expected) in [
        (std::path::PathBuf::from("/dev/zero"), "not a regular file"),
        (link_to_zero, "not a regular file"),
        (fifo, "not a regular file"),
        (huge, "larger than 1024 KiB"),
    ] {
        let path_text = path.to_str().unwrap();
        let started = std::time::Instant::now();
        let out = run_wsup(
            &["connect", "ws://127.0.0.1:9/", "--credentials", path_text],
            &[],
            Input::Open,
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path_text}: {stderr}");
        assert!(stderr.contains(path_text), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(10), "{path_text}");
    }
}

/// A credentials directory wsup cannot write to: it refuses with 73, naming the
/// directory, before the refresh token is spent (the endpoint hears nothing).
///
/// Root writes anywhere, so as root the wsup child runs as `nobody` (the file stays
/// readable to it, the directory is not writable by it).
#[tokio::test]
async fn cli_a_read_only_credentials_directory_is_73_before_spending_the_refresh_token() {
    use std::os::unix::fs::PermissionsExt;
    let endpoint = TokenEndpoint::start(vec![ok_reply("A1", 3600, Some("R1"))]).await;
    let dir = tempfile::tempdir().unwrap();
    // Expired: wsup refreshes before dialing.
    let content = creds_json("A0", "2000-01-01T00:00:00Z", "R0", &endpoint.url);
    let path = write_file(&dir, &content);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let mut cmd = wsup_command(&[
        "connect",
        "ws://127.0.0.1:9/",
        "--credentials",
        path.to_str().unwrap(),
    ]);
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        // SAFETY: between fork and exec only async-signal-safe calls (setgid, setuid).
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    // Stdin stays open: only the refusal ends this run.
    let _stdin = child.stdin.take();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("wsup finishes")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(73), "{stderr}");
    assert!(
        stderr.contains(dir.path().to_str().unwrap()),
        "names the directory: {stderr}"
    );
    assert!(stderr.contains("not spent"), "{stderr}");
    assert_eq!(endpoint.requests(), 0, "the refresh token was not spent");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
}

/// A `tracing` writer into a shared buffer, to see what the library warns about.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The file cannot be replaced after the endpoint answered (here: it became a directory
/// meanwhile). The new tokens are used in memory, the next refresh spends the rotated
/// refresh token, and the failure is said once, without a token in it.
#[tokio::test]
async fn a_write_that_fails_after_the_refresh_keeps_the_new_tokens_and_warns_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials.json");
    let bodies = Arc::new(Mutex::new(Vec::<String>::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    {
        let path = path.clone();
        let bodies = bodies.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                n += 1;
                let body = read_request_body(&mut stream).await;
                bodies.lock().unwrap().push(body);
                if n == 1 {
                    // The file turns into a directory while the answer is on its way.
                    std::fs::remove_file(&path).unwrap();
                    std::fs::create_dir(&path).unwrap();
                }
                let body = format!(
                    r#"{{"access_token":"SECRET-A{n}","expires_in":3600,"refresh_token":"SECRET-R{n}"}}"#
                );
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
    }
    std::fs::write(
        &path,
        creds_json("SECRET-A0", "2099-01-01T00:00:00Z", "SECRET-R0", &url),
    )
    .unwrap();
    let log = CapturedLog::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let creds = CredentialsFile::load(&path, "Bearer").unwrap();
    for n in 1..=2 {
        let rejected = creds.authorization().unwrap();
        creds.refresh(Some(&rejected)).await.unwrap();
        assert_eq!(
            creds.authorization().unwrap().expose(),
            format!("Bearer SECRET-A{n}")
        );
    }
    let bodies = bodies.lock().unwrap().clone();
    assert_eq!(
        bodies,
        [
            "grant_type=refresh_token&refresh_token=SECRET-R0",
            "grant_type=refresh_token&refresh_token=SECRET-R1",
        ],
        "the second refresh spends the rotated refresh token held in memory"
    );
    let log = String::from_utf8_lossy(&log.0.lock().unwrap()).to_string();
    assert_eq!(log.matches("could not be updated").count(), 1, "{log}");
    assert!(
        log.contains("WARN") && log.contains("credentials.json"),
        "{log}"
    );
    assert!(!log.contains("SECRET"), "{log}");
}

/// A symlinked credentials file: the target gets the new tokens, the link stays a link
/// (and the temp file was made next to the target, not next to the link).
#[tokio::test]
async fn a_symlinked_credentials_file_is_replaced_at_its_target() {
    let endpoint =
        TokenEndpoint::start(vec![ok_reply("new-access", 3600, Some("new-refresh"))]).await;
    let link_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let target = write_file(
        &target_dir,
        &creds_json(
            "old-access",
            "2000-01-01T00:00:00Z",
            "old-refresh",
            &endpoint.url,
        ),
    );
    let link = link_dir.path().join("linked.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let creds = CredentialsFile::load(&link, "Bearer").unwrap();
    creds.refresh(None).await.unwrap();
    assert_eq!(creds.authorization().unwrap().expose(), "Bearer new-access");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&target).unwrap()).unwrap();
    assert_eq!(stored["access_token"], "new-access");
    assert_eq!(stored["refresh_token"], "new-refresh");
    assert_eq!(std::fs::read_dir(link_dir.path()).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(target_dir.path()).unwrap().count(), 1);
}

/// The binary on the answer that used to panic ("expires_in": 10^13, with a rotated
/// refresh token): no panic, the session runs, and the rotated token is in the file.
#[tokio::test]
async fn cli_a_huge_expires_in_connects_and_keeps_the_rotated_refresh_token() {
    let server = scripted_server("echo", "A1").await;
    let endpoint = TokenEndpoint::start(vec![(
        200,
        r#"{"access_token":"A1","expires_in":10000000000000,"refresh_token":"R1"}"#.into(),
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Expired: refreshed before dialing.
    let path = write_file(
        &dir,
        &creds_json("A0", "2000-01-01T00:00:00Z", "R0", &endpoint.url),
    );
    let out = connect_with_credentials(&server, &path, &[], Input::Eof(b"x\n")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(endpoint.requests(), 1);
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(stored["refresh_token"], "R1");
    let expiry = stored_expiry(&path) - chrono::Utc::now().timestamp();
    assert!(expiry <= TEN_YEARS_SECS, "{expiry}");
}
