//! The script language of `wsup serve`: one [`Step`] per connection, parsed from and
//! shown as `step,step,…` (the last step repeats).

use super::*;
use std::fmt;
use std::str::FromStr;

/// What the scripted server does with the websocket connection it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `http:STATUS[:RETRY_AFTER]`: answer the upgrade request with this status (200–599, not
    /// 101), a `Retry-After` header carrying the text verbatim when given, and a short body.
    Http {
        status: u16,
        retry_after: Option<String>,
    },
    /// `close:CODE[:REASON]`: upgrade, send a close frame, wait up to 1 s for the reply.
    /// Two codes that never appear on the wire are acted out instead: `close:1005` sends a
    /// close frame without a status code, `close:1006` drops the TCP connection without
    /// any close frame.
    Close { code: u16, reason: String },
    /// `echo`: upgrade and send every text and binary message back until the client closes.
    Echo,
    /// `hang`: accept the TCP connection and the request, never answer anything.
    Hang,
    /// `silent`: upgrade, then never read or write again (no pongs): a half-open connection.
    Silent,
    /// `logs:N[:CODE]`: upgrade, send N JSON log lines `{created_at, message, pod_name}`
    /// (`message` is `line K`, `pod_name` is `pod-0`), then keep the connection open
    /// (answering pings and a close, sending nothing more), or, with a close code, close
    /// with it (`1005`/`1006` acted out as in `close`). `created_at` is the server's start
    /// time plus the line number in milliseconds, so every connection replays exactly the
    /// same history: `logs:3:1012,logs:5` is a log stream that restarts and continues.
    Logs { lines: u32, close: Option<u16> },
    /// `shell`: a line-echoing fake shell. Greets with the size from the request's query,
    /// `[tty CxR]` (from `tty_width`/`tty_height`, or `[tty unknown]`), and a prompt `$ `;
    /// echoes binary input as a terminal in cooked mode would (backspace erases, other
    /// control bytes shown as `^X`); a line ended by `\r` or `\n` is answered
    /// `you typed: LINE` and a new prompt; the byte 0x03 (Ctrl+C) is answered `^C` and a
    /// new prompt; the text frame `{"type":"resize","cols":C,"rows":R}` is answered
    /// `[resized to CxR]`. Other text frames are taken as typed input. The line `exit`
    /// ends the session: `logout`, then close 1000.
    Shell,
    /// `forward:HOST:PORT`: open a TCP connection to HOST:PORT, upgrade, then relay: binary
    /// (and text) frames are written to the TCP connection, what it sends comes back as
    /// binary frames. The target closing ends the websocket with 1000; the client closing
    /// the websocket closes the TCP connection. If the target cannot be reached, upgrade and
    /// close 1011 "forward target unreachable".
    Forward(String),
    /// `auth-close`: when the presented bearer token is not the current one (or missing),
    /// upgrade and close 1008 "token expired" instead of answering 401; otherwise `echo`.
    /// This is the "upgrades, then rejects the credentials" server.
    AuthClose,
    /// `expire-token`: upgrade, make the current token stale (as if it had just expired on
    /// the server's side) and close 1008 "token expired". Only a refreshed token is
    /// accepted afterwards: the scripted version of a token expiring mid-session.
    ExpireToken,
}

/// The steps that successive websocket connections get: connection N gets step N, and the
/// last step repeats for every later connection.
///
/// Text form (see [`FromStr`]): steps separated by commas, e.g.
/// `close:1011:No shell-agent listening,http:503:2,echo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script(pub Vec<Step>);

impl Script {
    /// The step for the connection with this zero-based index.
    ///
    /// Panics only if the script is empty, which [`FromStr`] and [`start`] reject.
    pub fn step(&self, index: usize) -> &Step {
        let last = self
            .0
            .len()
            .checked_sub(1)
            .expect("a script has at least one step");
        &self.0[index.min(last)]
    }

    /// Checks what parsing checks, for scripts built in code.
    pub fn validate(&self) -> Result<(), String> {
        if self.0.is_empty() {
            return Err("the script has no steps".to_owned());
        }
        for (index, step) in self.0.iter().enumerate() {
            step.validate()
                .map_err(|why| format!("invalid step {} ({step}): {why}", index + 1))?;
        }
        Ok(())
    }
}

impl FromStr for Script {
    type Err = String;

    /// Parses `STEP,STEP,...`. Whitespace around a step is ignored. A close reason may
    /// contain colons but not commas. The one comma that may appear inside a step is the
    /// one of an HTTP-date in `http:STATUS:RETRY_AFTER` (`http:503:Wed, 21 Oct 2015 07:28:00
    /// GMT`): a piece starting with a space and a digit right after an `http` step whose
    /// text ends in a day name continues that step.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut pieces: Vec<String> = Vec::new();
        for piece in text.split(',') {
            match pieces.last_mut() {
                Some(previous) if continues_http_date(previous, piece) => {
                    previous.push(',');
                    previous.push_str(piece);
                }
                _ => pieces.push(piece.to_owned()),
            }
        }
        let steps = pieces
            .iter()
            .enumerate()
            .map(|(index, piece)| {
                let piece = piece.trim();
                piece
                    .parse::<Step>()
                    .map_err(|why| format!("invalid step {} ({piece:?}): {why}", index + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Script(steps))
    }
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, step) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{step}")?;
        }
        Ok(())
    }
}

/// Whether `piece` is the rest of an IMF-fixdate (`Wed, 21 Oct ...`) that the comma split
/// away from the `http:STATUS:Wed` step before it.
pub(super) fn continues_http_date(previous: &str, piece: &str) -> bool {
    const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let previous = previous.trim_start();
    let starts_with_space_digit =
        piece.starts_with(' ') && piece.trim_start().starts_with(|c: char| c.is_ascii_digit());
    starts_with_space_digit
        && previous.starts_with("http:")
        && previous
            .rsplit(':')
            .next()
            .is_some_and(|day| DAY_NAMES.contains(&day))
}

pub(super) const STEP_SYNTAX: &str = "expected http:STATUS[:RETRY_AFTER], close:CODE[:REASON], echo, \
                           hang, silent, logs:N[:CODE], shell, forward:HOST:PORT, auth-close or expire-token";

impl FromStr for Step {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, argument) = match text.split_once(':') {
            Some((name, argument)) => (name, Some(argument)),
            None => (text, None),
        };
        let step = match (name, argument) {
            ("http", Some(argument)) => {
                let (status, retry_after) = match argument.split_once(':') {
                    Some((status, retry_after)) => (status, Some(retry_after.to_owned())),
                    None => (argument, None),
                };
                let status = status
                    .parse::<u16>()
                    .map_err(|_| format!("HTTP status {status:?} is not a number"))?;
                Step::Http {
                    status,
                    retry_after,
                }
            }
            ("close", Some(argument)) => {
                let (code, reason) = argument.split_once(':').unwrap_or((argument, ""));
                let code = code
                    .parse::<u16>()
                    .map_err(|_| format!("close code {code:?} is not a number"))?;
                Step::Close {
                    code,
                    reason: reason.to_owned(),
                }
            }
            ("logs", Some(argument)) => {
                let (count, close) = match argument.split_once(':') {
                    Some((count, code)) => (
                        count,
                        Some(
                            code.parse::<u16>()
                                .map_err(|_| format!("close code {code:?} is not a number"))?,
                        ),
                    ),
                    None => (argument, None),
                };
                Step::Logs {
                    lines: count.parse().map_err(|_| {
                        format!("line count {count:?} is not a non-negative number")
                    })?,
                    close,
                }
            }
            ("forward", Some(target)) => Step::Forward(target.to_owned()),
            ("http" | "close" | "logs" | "forward", None) => {
                return Err(format!("`{name}` needs an argument; {STEP_SYNTAX}"))
            }
            ("echo", None) => Step::Echo,
            ("hang", None) => Step::Hang,
            ("silent", None) => Step::Silent,
            ("shell", None) => Step::Shell,
            ("auth-close", None) => Step::AuthClose,
            ("expire-token", None) => Step::ExpireToken,
            ("echo" | "hang" | "silent" | "shell" | "auth-close" | "expire-token", Some(_)) => {
                return Err(format!("`{name}` takes no argument"))
            }
            ("", _) => return Err(format!("empty step; {STEP_SYNTAX}")),
            _ => return Err(format!("unknown step `{name}`; {STEP_SYNTAX}")),
        };
        step.validate()?;
        Ok(step)
    }
}

impl Step {
    /// The invariants the server relies on: statuses it can send, close codes that exist,
    /// header text that cannot inject headers, a forward target with a port.
    pub(super) fn validate(&self) -> Result<(), String> {
        match self {
            Step::Http {
                status,
                retry_after,
            } => {
                if !(200..=599).contains(status) {
                    return Err(format!("HTTP status {status} is not between 200 and 599"));
                }
                if let Some(retry_after) = retry_after {
                    if retry_after.is_empty() {
                        return Err("Retry-After is empty".to_owned());
                    }
                    if retry_after.chars().any(|c| c.is_control()) {
                        return Err("Retry-After contains a control character".to_owned());
                    }
                }
            }
            Step::Close { code, reason } => {
                if !(1000..=4999).contains(code) {
                    return Err(format!("close code {code} is not between 1000 and 4999"));
                }
                if matches!(code, 1005 | 1006) && !reason.is_empty() {
                    return Err(format!(
                        "close code {code} sends no close reason, so it cannot have one"
                    ));
                }
                if reason.len() > MAX_CLOSE_REASON_LEN {
                    return Err(format!(
                        "close reason is {} bytes, at most {MAX_CLOSE_REASON_LEN} fit in a close frame",
                        reason.len()
                    ));
                }
            }
            Step::Logs {
                close: Some(code), ..
            } => {
                if !(1000..=4999).contains(code) {
                    return Err(format!("close code {code} is not between 1000 and 4999"));
                }
            }
            Step::Forward(target) => {
                let (host, port) = target
                    .rsplit_once(':')
                    .ok_or_else(|| format!("forward target {target:?} is not HOST:PORT"))?;
                if host.is_empty() {
                    return Err(format!("forward target {target:?} has no host"));
                }
                port.parse::<u16>()
                    .map_err(|_| format!("forward port {port:?} is not a port number"))?;
            }
            Step::Echo
            | Step::Hang
            | Step::Silent
            | Step::Logs { close: None, .. }
            | Step::Shell
            | Step::AuthClose
            | Step::ExpireToken => {}
        }
        Ok(())
    }
}

impl fmt::Display for Step {
    /// The script syntax, so that `step.to_string().parse()` gives the step back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Http {
                status,
                retry_after: None,
            } => write!(f, "http:{status}"),
            Step::Http {
                status,
                retry_after: Some(retry_after),
            } => write!(f, "http:{status}:{retry_after}"),
            Step::Close { code, reason } if reason.is_empty() => write!(f, "close:{code}"),
            Step::Close { code, reason } => write!(f, "close:{code}:{reason}"),
            Step::Echo => f.write_str("echo"),
            Step::Hang => f.write_str("hang"),
            Step::Silent => f.write_str("silent"),
            Step::Logs { lines, close: None } => write!(f, "logs:{lines}"),
            Step::Logs {
                lines,
                close: Some(code),
            } => write!(f, "logs:{lines}:{code}"),
            Step::Shell => f.write_str("shell"),
            Step::Forward(target) => write!(f, "forward:{target}"),
            Step::AuthClose => f.write_str("auth-close"),
            Step::ExpireToken => f.write_str("expire-token"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Step>, String> {
        text.parse::<Script>().map(|script| script.0)
    }

    #[test]
    fn parses_every_step_kind() {
        let script = "close:1011:No shell-agent listening,http:503:2,http:404,echo,hang,silent,\
                      logs:3,shell,forward:127.0.0.1:8080,auth-close,close:1000";
        assert_eq!(
            parse(script).unwrap(),
            vec![
                Step::Close {
                    code: 1011,
                    reason: "No shell-agent listening".into()
                },
                Step::Http {
                    status: 503,
                    retry_after: Some("2".into())
                },
                Step::Http {
                    status: 404,
                    retry_after: None
                },
                Step::Echo,
                Step::Hang,
                Step::Silent,
                Step::Logs {
                    lines: 3,
                    close: None
                },
                Step::Shell,
                Step::Forward("127.0.0.1:8080".into()),
                Step::AuthClose,
                Step::Close {
                    code: 1000,
                    reason: String::new()
                },
            ]
        );
    }

    #[test]
    fn close_reason_keeps_its_colons() {
        assert_eq!(
            parse("close:1007:Invalid permission: Not authorized: SHELL_EXEC").unwrap(),
            vec![Step::Close {
                code: 1007,
                reason: "Invalid permission: Not authorized: SHELL_EXEC".into()
            }]
        );
    }

    #[test]
    fn http_date_retry_after_keeps_its_comma() {
        assert_eq!(
            parse("http:503:Wed, 21 Oct 2015 07:28:00 GMT,echo").unwrap(),
            vec![
                Step::Http {
                    status: 503,
                    retry_after: Some("Wed, 21 Oct 2015 07:28:00 GMT".into())
                },
                Step::Echo
            ]
        );
    }

    #[test]
    fn whitespace_around_steps_is_ignored() {
        assert_eq!(parse(" echo , hang").unwrap(), vec![Step::Echo, Step::Hang]);
    }

    #[test]
    fn ipv6_forward_target_parses() {
        assert_eq!(
            parse("forward:[::1]:22").unwrap(),
            vec![Step::Forward("[::1]:22".into())]
        );
    }

    #[test]
    fn rejects_bad_steps_with_a_message_naming_them() {
        for (script, expected) in [
            (
                "echo,bogus",
                "invalid step 2 (\"bogus\"): unknown step `bogus`",
            ),
            ("", "invalid step 1 (\"\"): empty step"),
            ("echo,", "invalid step 2 (\"\"): empty step"),
            ("http:99", "HTTP status 99 is not between 200 and 599"),
            ("http:101", "HTTP status 101 is not between 200 and 599"),
            ("http:abc", "HTTP status \"abc\" is not a number"),
            ("http:503:", "Retry-After is empty"),
            ("http", "`http` needs an argument"),
            ("close:999:x", "close code 999 is not between 1000 and 4999"),
            ("close:5000", "close code 5000 is not between 1000 and 4999"),
            ("close:abc", "close code \"abc\" is not a number"),
            ("close:1006:gone", "close code 1006 sends no close reason"),
            ("close", "`close` needs an argument"),
            ("echo:1", "`echo` takes no argument"),
            ("logs:-1", "line count \"-1\" is not a non-negative number"),
            ("logs:3:x", "close code \"x\" is not a number"),
            ("logs:3:999", "close code 999 is not between 1000 and 4999"),
            (
                "forward:nowhere",
                "forward target \"nowhere\" is not HOST:PORT",
            ),
            (
                "forward:host:99999",
                "forward port \"99999\" is not a port number",
            ),
            ("forward::80", "forward target \":80\" has no host"),
        ] {
            let error = parse(script).expect_err(script);
            assert!(
                error.contains(expected),
                "{script:?}: {error:?} should contain {expected:?}"
            );
            assert!(!error.contains('\n'), "{script:?}: one line, got {error:?}");
        }
    }

    #[test]
    fn rejects_a_close_reason_too_long_for_a_close_frame() {
        let reason = "x".repeat(MAX_CLOSE_REASON_LEN);
        assert!(parse(&format!("close:1011:{reason}")).is_ok());
        let error = parse(&format!("close:1011:{reason}x")).unwrap_err();
        assert!(error.contains("at most 123"), "{error}");
    }

    #[test]
    fn display_round_trips() {
        let text = "close:1011:No agent: here,http:503:Wed, 21 Oct 2015 07:28:00 GMT,http:429,\
                    echo,hang,silent,logs:2,logs:3:1012,shell,forward:localhost:22,auth-close,close:1005";
        let script: Script = text.parse().unwrap();
        assert_eq!(script.to_string(), text);
        assert_eq!(script.to_string().parse::<Script>().unwrap(), script);
    }

    #[test]
    fn last_step_repeats() {
        let script: Script = "hang,echo".parse().unwrap();
        assert_eq!(script.step(0), &Step::Hang);
        assert_eq!(script.step(1), &Step::Echo);
        assert_eq!(script.step(7), &Step::Echo);
    }

    #[test]
    fn validate_rejects_scripts_built_in_code() {
        assert!(Script(vec![]).validate().is_err());
        let injected = Script(vec![Step::Http {
            status: 503,
            retry_after: Some("1\r\nSet-Cookie: x".into()),
        }]);
        assert!(injected
            .validate()
            .unwrap_err()
            .contains("control character"));
    }
}
