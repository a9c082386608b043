//! `--token-command CMD`: a token from a command, the way kubectl's credential plugins
//! and git's credential helpers work (`gcloud auth print-access-token`, a vault helper).
//! About 470 lines before its unit tests: running the command (process group, limits,
//! timeout), reading its three output shapes, and the refreshable credential around it.
//!
//! The command runs through `sh -c` in a session of its own (no controlling terminal,
//! stdin from /dev/null), within a time limit; its stdout is the token, bare or as JSON
//! with an expiry. Refreshing is running it again, single-flight like the other
//! refreshable credentials. Its stdout is never logged: it is the secret.

use crate::classify::{escape_untrusted, Failure};
use crate::credentials::{Credentials, IssuedToken, RefreshFuture, Secret, MAX_TOKEN_LIFETIME};
use crate::transport::{is_header_safe, NOT_HEADER_SAFE};
use std::fmt;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long one run of the command may take by default (`--token-command-timeout`).
pub const DEFAULT_TOKEN_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of the command's stdout that is read: a token answer is a few KiB, and a
/// command that prints without end must not fill the memory.
pub const MAX_TOKEN_COMMAND_STDOUT: usize = 64 * 1024;
/// The tail of the command's stderr that is kept, for its last line.
const MAX_TOKEN_COMMAND_STDERR: usize = 8 * 1024;
/// The longest stderr line shown in a message.
const MAX_SHOWN_STDERR_LINE: usize = 300;

/// Why one run of the command gave no token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// It ran and failed: what stands behind it (a login, typically) needs the user.
    Failed {
        exit_status: i32,
        last_stderr_line: String,
    },
    /// It did not finish within the limit (it was killed, with its process group).
    TimedOut(Duration),
    /// `sh` itself could not be started, or it could not start the program (exit status
    /// 126 or 127).
    CannotStart(String),
    /// It succeeded but printed nothing usable. The reason never contains the output.
    Unusable(String),
}

impl RunError {
    /// The message, naming the command (never its stdout).
    pub fn describe(&self, command: &str) -> String {
        let command = escape_untrusted(command);
        match self {
            RunError::Failed {
                exit_status,
                last_stderr_line,
            } if last_stderr_line.is_empty() => {
                format!("token command `{command}` failed (exit status {exit_status})")
            }
            RunError::Failed {
                exit_status,
                last_stderr_line,
            } => format!(
                "token command `{command}` failed (exit status {exit_status}): {}",
                escape_untrusted(last_stderr_line)
            ),
            RunError::TimedOut(limit) => format!(
                "token command `{command}` did not finish within {} (--token-command-timeout)",
                humantime::format_duration(*limit)
            ),
            RunError::CannotStart(why) => {
                format!(
                    "token command `{command}` could not be started: {}",
                    escape_untrusted(why)
                )
            }
            RunError::Unusable(why) => format!("token command `{command}` {why}"),
        }
    }

    /// Whether the command may well work next time (on a refresh: retried with backoff).
    fn may_heal(&self) -> bool {
        matches!(self, RunError::TimedOut(_) | RunError::CannotStart(_))
    }
}

/// Why the first run, before anything is dialed, gave no token: the exit code and the
/// message to stop with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstRunError {
    /// 77 when the command failed (auth), 2 (usage) when it timed out, could not start
    /// or printed nothing usable.
    pub exit_code: u8,
    pub message: String,
}

/// The credential: the current token and the command that renews it.
pub struct TokenCommand {
    command: String,
    scheme: String,
    timeout: Duration,
    /// `None` until the first run.
    current: Mutex<Option<IssuedToken>>,
    /// Held across a whole run: concurrent callers queue here, and all but the first find
    /// the token already replaced.
    in_flight: tokio::sync::Mutex<()>,
    runs: AtomicUsize,
}

impl fmt::Debug for TokenCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCommand")
            .field("command", &self.command)
            .field("scheme", &self.scheme)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TokenCommand {
    /// Not run yet: [`TokenCommand::first_run`] gets the first token.
    pub fn new(command: &str, scheme: &str, timeout: Duration) -> Self {
        TokenCommand {
            command: command.to_string(),
            scheme: scheme.to_string(),
            timeout,
            current: Mutex::new(None),
            in_flight: tokio::sync::Mutex::new(()),
            runs: AtomicUsize::new(0),
        }
    }

    /// The command as given.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// How many times the command was run.
    pub fn run_count(&self) -> usize {
        self.runs.load(Ordering::Relaxed)
    }

    /// Runs the command for the first token, before anything is dialed. A command that
    /// cannot work at all is the user's mistake (exit 2); one that fails is an auth
    /// failure (77), as it would be on any later run.
    pub async fn first_run(&self) -> Result<(), FirstRunError> {
        let _flight = self.in_flight.lock().await;
        match self.run().await {
            Ok(issued) => {
                self.store(issued);
                Ok(())
            }
            Err(error) => Err(FirstRunError {
                exit_code: match error {
                    RunError::Failed { .. } => crate::exit::NO_PERM,
                    _ => crate::exit::USAGE,
                },
                message: match error {
                    RunError::Failed { .. } => format!(
                        "{} [authentication]: fix what it reports (a login, typically), then run wsup again",
                        error.describe(&self.command)
                    ),
                    _ => error.describe(&self.command),
                },
            }),
        }
    }

    fn current(&self) -> Option<IssuedToken> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn store(&self, issued: IssuedToken) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(issued);
    }

    /// One run: its token, or why there is none.
    async fn run(&self) -> Result<IssuedToken, RunError> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "wsup::credentials", command = %escape_untrusted(&self.command), "running the token command");
        let stdout = run_command(&self.command, self.timeout).await?;
        // Checked after the run, so that what the user sees is about the command.
        parse_output(&stdout, SystemTime::now()).map_err(RunError::Unusable)
    }

    async fn refresh_now(&self, rejected: Option<&Secret>) -> Result<(), Failure> {
        let before = self.authorization();
        let _flight = self.in_flight.lock().await;
        if crate::credentials::replaced_while_queued(rejected, &before, &self.authorization()) {
            return Ok(());
        }
        match self.run().await {
            Ok(issued) => {
                self.store(issued);
                Ok(())
            }
            Err(error) => Err(Failure::TokenCommand {
                transient: error.may_heal(),
                detail: error.describe(&self.command),
            }),
        }
    }
}

impl Credentials for TokenCommand {
    fn authorization(&self) -> Option<Secret> {
        self.current()
            .map(|issued| Secret::new(format!("{} {}", self.scheme, issued.token.expose())))
    }

    fn can_refresh(&self) -> bool {
        true
    }

    fn expires_within(&self, now: SystemTime, window: Duration) -> bool {
        // A window past the end of time: every expiry is within it.
        self.current()
            .and_then(|issued| issued.expires_at)
            .is_some_and(|at| now.checked_add(window).is_none_or(|limit| at <= limit))
    }

    fn refresh<'a>(&'a self, rejected: Option<&'a Secret>) -> RefreshFuture<'a> {
        Box::pin(self.refresh_now(rejected))
    }
}

/// Runs `sh -c command` with no terminal and stdin from /dev/null; its stdout, or why
/// not. Killed, with every process it started, past `timeout`.
async fn run_command(command: &str, timeout: Duration) -> Result<Vec<u8>, RunError> {
    let mut child = tokio::process::Command::new("sh");
    child
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    // SAFETY: `setsid` is async-signal-safe and touches no memory of this process. A
    // session of its own has no controlling terminal (the command cannot prompt), and
    // is a process group that can be killed whole.
    unsafe {
        child.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = child
        .spawn()
        .map_err(|e| RunError::CannotStart(e.to_string()))?;
    // Whatever ends this run (done, timed out, or the caller gone on a signal), nothing
    // the command started outlives it.
    let _group = KillGroupOnDrop(child.id());
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let finished = async {
        let (stdout, stderr) = tokio::join!(
            read_head(stdout, MAX_TOKEN_COMMAND_STDOUT),
            read_tail(stderr, MAX_TOKEN_COMMAND_STDERR)
        );
        let status = child.wait().await;
        (stdout, stderr, status)
    };
    let outcome = tokio::time::timeout(timeout, finished).await;
    let Ok((stdout, stderr, status)) = outcome else {
        drop(_group);
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(RunError::TimedOut(timeout));
    };
    let status = status.map_err(|e| RunError::CannotStart(e.to_string()))?;
    let exit_status = exit_status(&status);
    // The shell's own "command not found" (127) and "not executable" (126): the program
    // did not start, which is no verdict on the credentials behind it.
    if matches!(exit_status, 126 | 127) {
        return Err(RunError::CannotStart(format!(
            "exit status {exit_status}: {}",
            last_line(&stderr)
        )));
    }
    if !status.success() {
        return Err(RunError::Failed {
            exit_status,
            last_stderr_line: last_line(&stderr),
        });
    }
    match stdout {
        Some(stdout) => Ok(stdout),
        None => Err(RunError::Unusable(format!(
            "printed more than {} KiB on stdout: not a token",
            MAX_TOKEN_COMMAND_STDOUT / 1024
        ))),
    }
}

/// The status as a shell reports it: the exit code, or 128 + the signal that killed it.
fn exit_status(status: &std::process::ExitStatus) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128 + signal;
        }
    }
    status.code().unwrap_or(-1)
}

/// Kills the command's process group (its session, see `setsid` above) when dropped:
/// a background process it left behind is not ours to keep.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pid) = self.0.and_then(|pid| libc::pid_t::try_from(pid).ok()) {
            // SAFETY: a plain system call; the group is the command's own session,
            // which holds nothing of ours.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
    }
}

/// The first `limit` bytes, or `None` when there were more (read to the end all the same,
/// so that the command never blocks on a full pipe).
async fn read_head(reader: Option<impl AsyncRead + Unpin>, limit: usize) -> Option<Vec<u8>> {
    let mut reader = reader?;
    let mut kept = Vec::new();
    let mut over = false;
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) if kept.len() + n <= limit => kept.extend_from_slice(&chunk[..n]),
            Ok(_) => over = true,
        }
    }
    (!over).then_some(kept)
}

/// The last `limit` bytes.
async fn read_tail(reader: Option<impl AsyncRead + Unpin>, limit: usize) -> Vec<u8> {
    let Some(mut reader) = reader else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&chunk[..n]);
                if kept.len() > limit {
                    kept.drain(..kept.len() - limit);
                }
            }
        }
    }
    kept
}

/// The last non-blank line, trimmed and shortened (escaped when shown).
fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .unwrap_or_default();
    match line.char_indices().nth(MAX_SHOWN_STDERR_LINE) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

/// What the command printed: a bare token, or JSON `{"access_token", "expires_in"}`,
/// `{"token", "expiration_timestamp"}` or kubectl's ExecCredential `{"status": {"token",
/// "expirationTimestamp"}}`. `Err` says why not, never quoting the output.
fn parse_output(stdout: &[u8], now: SystemTime) -> Result<IssuedToken, String> {
    let text = std::str::from_utf8(stdout)
        .map_err(|_| "printed something that is not UTF-8 text: not a token".to_string())?
        .trim();
    if text.is_empty() {
        return Err("printed nothing on stdout: no token".into());
    }
    let (token, expires_at) = if text.starts_with('{') {
        parse_json(text, now)?
    } else {
        (text.to_string(), None)
    };
    let token = token.trim();
    if token.is_empty() {
        return Err("printed an empty token".into());
    }
    if !is_header_safe(token) {
        return Err(format!("printed a token that {NOT_HEADER_SAFE}"));
    }
    Ok(IssuedToken {
        token: Secret::new(token),
        expires_at,
    })
}

fn parse_json(text: &str, now: SystemTime) -> Result<(String, Option<SystemTime>), String> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| "printed something that looks like JSON but does not parse".to_string())?;
    // kubectl's ExecCredential keeps the token under `status`.
    let object = match value.get("status") {
        Some(status @ serde_json::Value::Object(_))
            if value.get("kind").and_then(serde_json::Value::as_str) == Some("ExecCredential") =>
        {
            status
        }
        _ => &value,
    };
    let string = |key: &str| object.get(key).and_then(serde_json::Value::as_str);
    let Some(token) = string("access_token").or_else(|| string("token")) else {
        return Err("printed JSON without a string access_token or token".into());
    };
    let expires_at = if let Some(expires_in) = object.get("expires_in") {
        let lifetime = lifetime(expires_in)
            .ok_or_else(|| "printed JSON whose expires_in is not a number".to_string())?;
        Some(now.checked_add(lifetime).unwrap_or(now))
    } else if let Some(at) =
        string("expiration_timestamp").or_else(|| string("expirationTimestamp"))
    {
        let at = chrono::DateTime::parse_from_rfc3339(at).map_err(|_| {
            "printed JSON whose expiration timestamp is not an RFC 3339 time".to_string()
        })?;
        Some(system_time(at.timestamp()))
    } else {
        None
    };
    Ok((token.to_string(), expires_at))
}

/// `expires_in` as a number or a numeric string, clamped to `0..=MAX_TOKEN_LIFETIME`.
fn lifetime(value: &serde_json::Value) -> Option<Duration> {
    let seconds = match value {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    // NaN is not greater than zero either.
    if seconds.is_nan() || seconds <= 0.0 {
        return Some(Duration::ZERO);
    }
    Some(Duration::from_secs_f64(
        seconds.min(MAX_TOKEN_LIFETIME.as_secs_f64()),
    ))
}

/// Unix seconds as a time; before the epoch is the epoch (long expired either way).
fn system_time(unix_seconds: i64) -> SystemTime {
    let seconds = u64::try_from(unix_seconds).unwrap_or(0);
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(seconds))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const NOW: Duration = Duration::from_secs(1_700_000_000);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + NOW
    }

    #[test]
    fn a_bare_token_is_trimmed() {
        let issued = parse_output(b"  abc.def-123\n", now()).unwrap();
        assert_eq!(issued.token.expose(), "abc.def-123");
        assert_eq!(issued.expires_at, None);
    }

    #[test]
    fn the_json_shapes_give_the_token_and_its_expiry() {
        let issued = parse_output(br#"{"access_token": "a1", "expires_in": 3600}"#, now()).unwrap();
        assert_eq!(issued.token.expose(), "a1");
        assert_eq!(issued.expires_at, Some(now() + Duration::from_secs(3600)));
        let issued = parse_output(
            br#"{"token": "t2", "expiration_timestamp": "2023-11-14T22:30:00Z"}"#,
            now(),
        )
        .unwrap();
        assert_eq!(issued.token.expose(), "t2");
        assert_eq!(issued.expires_at, Some(now() + Duration::from_secs(1000)));
        let issued = parse_output(
            br#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","status":{"token":"k3","expirationTimestamp":"2023-11-14T22:13:20Z"}}"#,
            now(),
        )
        .unwrap();
        assert_eq!(issued.token.expose(), "k3");
        assert_eq!(issued.expires_at, Some(now()));
        let issued = parse_output(br#"{"access_token": "a4", "expires_in": "60"}"#, now()).unwrap();
        assert_eq!(issued.expires_at, Some(now() + Duration::from_secs(60)));
    }

    #[test]
    fn unusable_output_is_refused_without_quoting_it() {
        for (output, why) in [
            (&b""[..], "nothing"),
            (b"  \n\t", "nothing"),
            (b"line-one\nline-two", NOT_HEADER_SAFE),
            (b"\xff\xfe", "UTF-8"),
            (b"{\"access_token\": ", "does not parse"),
            (b"{\"access\": \"x\"}", "without"),
            (b"{\"access_token\": \"  \"}", "empty"),
            (
                b"{\"access_token\": \"x\", \"expires_in\": []}",
                "expires_in",
            ),
            (
                b"{\"token\": \"x\", \"expiration_timestamp\": \"tomorrow\"}",
                "RFC 3339",
            ),
        ] {
            let reason = parse_output(output, now()).unwrap_err();
            assert!(reason.contains(why), "{output:?}: {reason}");
            assert!(!reason.contains("line-one"), "{reason}");
        }
    }

    #[test]
    fn hostile_expiries_do_not_overflow() {
        for expires_in in ["1e300", "-5", "18446744073709551616", "\"NaN\""] {
            let output = format!(r#"{{"access_token": "x", "expires_in": {expires_in}}}"#);
            let issued = parse_output(output.as_bytes(), now()).unwrap();
            assert!(issued.expires_at.is_some());
        }
        let output = br#"{"token": "x", "expiration_timestamp": "0000-01-01T00:00:00Z"}"#;
        assert_eq!(
            parse_output(output, now()).unwrap().expires_at,
            Some(SystemTime::UNIX_EPOCH)
        );
    }

    #[test]
    fn the_last_stderr_line_is_the_last_non_blank_one() {
        assert_eq!(last_line(b"first\nsecond\n\n  \n"), "second");
        assert_eq!(last_line(b""), "");
        assert_eq!(
            last_line(&[b'x'; 1000]).chars().count(),
            MAX_SHOWN_STDERR_LINE + 1
        );
    }

    #[test]
    fn secrets_never_print() {
        let command = TokenCommand::new("echo x", "Bearer", DEFAULT_TOKEN_COMMAND_TIMEOUT);
        command.store(IssuedToken {
            token: Secret::new("hunter2"),
            expires_at: None,
        });
        assert!(!format!("{command:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn a_run_reads_stdout_and_a_failure_keeps_the_last_stderr_line() {
        let command = TokenCommand::new("printf 'tok-1\\n'", "Token", Duration::from_secs(10));
        assert_eq!(command.authorization(), None);
        command.first_run().await.unwrap();
        assert_eq!(command.authorization().unwrap().expose(), "Token tok-1");

        let failing = TokenCommand::new(
            "echo noise >&2; printf 'login required \\033[31m\\n' >&2; exit 3",
            "Bearer",
            Duration::from_secs(10),
        );
        let error = failing.first_run().await.unwrap_err();
        assert_eq!(error.exit_code, 77);
        assert!(
            error
                .message
                .contains("failed (exit status 3): login required \\u{1b}[31m ["),
            "{}",
            error.message
        );
    }

    #[test]
    fn expiry_is_exposed_for_the_proactive_refresh() {
        let command = TokenCommand::new("true", "Bearer", DEFAULT_TOKEN_COMMAND_TIMEOUT);
        assert!(!command.expires_within(now(), crate::credentials::EXPIRY_WINDOW));
        command.store(IssuedToken {
            token: Secret::new("t"),
            expires_at: Some(now() + Duration::from_secs(30)),
        });
        assert!(command.expires_within(now(), crate::credentials::EXPIRY_WINDOW));
        assert!(!command.expires_within(now(), Duration::from_secs(10)));
        assert!(command.expires_within(now(), Duration::MAX));
    }

    /// Whether `pid` is gone (or a zombie, dead but not yet reaped by its new parent).
    fn is_dead(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn a_command_past_its_limit_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let command = TokenCommand::new(&script, "Bearer", Duration::from_millis(300));
        let started = std::time::Instant::now();
        let error = command.first_run().await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(error.exit_code, 2);
        assert!(
            error.message.contains("did not finish within 300ms"),
            "{}",
            error.message
        );
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let pid = pid.trim();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !is_dead(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "the command's child {pid} outlived the limit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn later_failures_are_transient_or_auth() {
        let command = TokenCommand::new("exit 1", "Bearer", Duration::from_secs(10));
        match command.refresh(None).await {
            Err(Failure::TokenCommand {
                transient: false, ..
            }) => {}
            other => panic!("{other:?}"),
        }
        let command = TokenCommand::new("sleep 5", "Bearer", Duration::from_millis(100));
        match command.refresh(None).await {
            Err(Failure::TokenCommand {
                transient: true, ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn concurrent_refreshes_of_the_same_rejected_token_run_the_command_once() {
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("count");
        let script = format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; echo tok-$n",
            c = counter.display()
        );
        let command = Arc::new(TokenCommand::new(
            &script,
            "Bearer",
            Duration::from_secs(10),
        ));
        command.first_run().await.unwrap();
        let rejected = command.authorization().unwrap();
        assert_eq!(rejected.expose(), "Bearer tok-1");
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let command = command.clone();
            let rejected = rejected.clone();
            tasks.push(tokio::spawn(async move {
                command.refresh(Some(&rejected)).await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(command.run_count(), 2);
        assert_eq!(command.authorization().unwrap().expose(), "Bearer tok-2");
    }
}
