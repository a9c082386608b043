//! `wsup logs`: JSON log frames `{created_at, message, pod_name}` rendered one per line.
//!
//! A frame is rendered as `TIMESTAMP | POD | MESSAGE`, the timestamp in local time,
//! RFC 3339 with milliseconds; `--raw` prints the frame's JSON as received. A server
//! that replays its history after a reconnect does not get lines printed twice: a line
//! whose `created_at` and message were already printed is skipped. A frame that is not
//! the expected JSON is printed as one line, with one warning (the first time only).
//! Rendered output escapes control characters from the server (ESC, CR, LF and the rest,
//! as notices do with close reasons): a hostile server cannot forge lines or drive the
//! terminal. `--raw` keeps the bytes as received.

use super::{report_output_error, write_received, Link, RenderOutput, Session};
use crate::classify::escape_untrusted;
use chrono::{DateTime, Local, SecondsFormat, TimeZone};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite::Message;

/// How many printed lines are remembered for de-duplication: enough for any replayed
/// history a log endpoint sends on reconnect, bounded so that a stream that runs for
/// days does not grow memory (about 3 MiB at most).
pub const REMEMBERED_LINES: usize = 64 * 1024;

/// Receives the one-off warning about frames that are not the expected JSON.
pub type WarningSink = Arc<dyn Fn(&str) + Send + Sync>;

/// The warning given once, the first time a frame is not a JSON log line.
pub const NOT_JSON_WARNING: &str =
    "a frame is not a JSON log line {created_at, message, pod_name}: printing such frames as they are (control characters escaped; --raw prints them untouched)";

/// Prints log frames; see the module documentation.
pub struct LogsSession<W> {
    output: W,
    raw: bool,
    warnings: WarningSink,
}

impl LogsSession<tokio::io::Stdout> {
    /// Prints to stdout; warnings go to `warnings` (the CLI prints them on stderr).
    pub fn stdio(raw: bool, warnings: WarningSink) -> Self {
        LogsSession::new(tokio::io::stdout(), raw, warnings)
    }
}

impl<W> LogsSession<W>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    pub fn new(output: W, raw: bool, warnings: WarningSink) -> Self {
        LogsSession {
            output,
            raw,
            warnings,
        }
    }
}

impl<W> Session for LogsSession<W>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    async fn run(self, link: Link) {
        // The outbound sender stays alive for the whole session: dropping it would mean
        // "nothing more to send" and close the connection.
        let Link {
            mut inbound,
            outbound: _keep_open,
            control,
            ..
        } = link;
        let mut renderer = LogLines {
            printer: Printer::new(self.raw, Local),
            line: Vec::with_capacity(256),
            warnings: self.warnings,
        };
        let written = write_received(&mut inbound, self.output, &mut renderer).await;
        if let Err(error) = written {
            report_output_error(&control, error).await;
        }
    }
}

/// `logs`' output: one rendered line per frame, and the not-JSON warning said once.
struct LogLines {
    printer: Printer<Local>,
    line: Vec<u8>,
    warnings: WarningSink,
}

impl RenderOutput for LogLines {
    fn render<'a>(&'a mut self, message: &'a Message) -> [&'a [u8]; 2] {
        self.line.clear();
        if self.printer.render(message, &mut self.line) == Rendered::NotJson && !self.printer.warned
        {
            self.printer.warned = true;
            (self.warnings)(NOT_JSON_WARNING);
        }
        [&self.line, b""]
    }
}

/// What [`Printer::render`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rendered {
    Printed,
    /// Already printed (a replay): nothing written.
    Duplicate,
    /// Not a JSON log line: written as it is.
    NotJson,
    /// Ping, pong, close: nothing to print.
    Ignored,
}

/// The frame-to-line logic, separate from IO so it can be tested directly.
struct Printer<Tz> {
    raw: bool,
    zone: Tz,
    seen: Seen,
    warned: bool,
}

impl<Tz: TimeZone> Printer<Tz>
where
    Tz::Offset: std::fmt::Display,
{
    fn new(raw: bool, zone: Tz) -> Self {
        Printer {
            raw,
            zone,
            seen: Seen::new(REMEMBERED_LINES),
            warned: false,
        }
    }

    /// Appends the output for `message` to `out` (a complete line, or nothing).
    fn render(&mut self, message: &Message, out: &mut Vec<u8>) -> Rendered {
        let payload: &[u8] = match message {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(bytes) => bytes,
            _ => return Rendered::Ignored,
        };
        let Some(entry) = parse_entry(payload) else {
            if self.raw {
                out.extend_from_slice(payload);
                if !payload.ends_with(b"\n") {
                    out.push(b'\n');
                }
            } else {
                // Rendered output is one line per frame that cannot drive the terminal.
                let text = String::from_utf8_lossy(trim_line_end(payload));
                out.extend_from_slice(escape_untrusted(&text).as_bytes());
                out.push(b'\n');
            }
            return Rendered::NotJson;
        };
        if !self.seen.insert(entry.created_at, &entry.message) {
            return Rendered::Duplicate;
        }
        if self.raw {
            out.extend_from_slice(trim_line_end(payload));
        } else {
            let timestamp = match self.zone.timestamp_millis_opt(entry.created_at) {
                chrono::LocalResult::Single(time) => rfc3339_millis(&time),
                // Out of chrono's range: show the number rather than lose the line.
                _ => entry.created_at.to_string(),
            };
            out.extend_from_slice(timestamp.as_bytes());
            out.extend_from_slice(b" | ");
            // The server's text is escaped: a CR, LF or ESC in it must not forge a line
            // or drive the terminal (`--raw` keeps the bytes as received).
            out.extend_from_slice(escape_untrusted(&entry.pod_name).as_bytes());
            out.extend_from_slice(b" | ");
            let message = entry.message.strip_suffix('\n').unwrap_or(&entry.message);
            let message = message.strip_suffix('\r').unwrap_or(message);
            out.extend_from_slice(escape_untrusted(message).as_bytes());
        }
        out.push(b'\n');
        Rendered::Printed
    }
}

fn rfc3339_millis<Tz: TimeZone>(time: &DateTime<Tz>) -> String
where
    Tz::Offset: std::fmt::Display,
{
    time.to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// A log message usually ends its own line; one terminator is dropped so that each
/// frame gives exactly one line.
fn trim_line_end(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

#[derive(Debug, PartialEq)]
struct Entry {
    created_at: i64,
    message: String,
    pod_name: String,
}

/// The expected JSON object, or `None` for anything else.
fn parse_entry(payload: &[u8]) -> Option<Entry> {
    #[derive(serde::Deserialize)]
    struct Wire {
        created_at: serde_json::Number,
        message: String,
        pod_name: String,
    }
    let wire: Wire = serde_json::from_slice(payload).ok()?;
    let created_at = wire
        .created_at
        .as_i64()
        .or_else(|| wire.created_at.as_f64().map(|ms| ms as i64))?;
    Some(Entry {
        created_at,
        message: wire.message,
        pod_name: wire.pod_name,
    })
}

/// The most recent printed lines, by `created_at` and a hash of the message, evicted
/// oldest first.
struct Seen {
    set: HashSet<(i64, u64)>,
    order: VecDeque<(i64, u64)>,
    capacity: usize,
}

impl Seen {
    fn new(capacity: usize) -> Self {
        Seen {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// `true` if this line was not seen yet (and is now remembered).
    fn insert(&mut self, created_at: i64, message: &str) -> bool {
        let mut hasher = DefaultHasher::new();
        message.hash(&mut hasher);
        let key = (created_at, hasher.finish());
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    fn utc_printer(raw: bool) -> Printer<FixedOffset> {
        Printer::new(raw, FixedOffset::east_opt(0).unwrap())
    }

    fn render(printer: &mut Printer<FixedOffset>, text: &str) -> (Rendered, String) {
        let mut out = Vec::new();
        let rendered = printer.render(&Message::text(text), &mut out);
        (rendered, String::from_utf8(out).unwrap())
    }

    const LINE: &str = r#"{"created_at":1700000000123,"message":"started\n","pod_name":"api-7"}"#;

    #[test]
    fn renders_timestamp_pod_and_message() {
        let mut printer = utc_printer(false);
        assert_eq!(
            render(&mut printer, LINE),
            (
                Rendered::Printed,
                "2023-11-14T22:13:20.123+00:00 | api-7 | started\n".into()
            )
        );
    }

    #[test]
    fn local_offset_is_shown() {
        let mut printer = Printer::new(false, FixedOffset::east_opt(5 * 3600 + 1800).unwrap());
        let mut out = Vec::new();
        printer.render(&Message::text(LINE), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2023-11-15T03:43:20.123+05:30 | api-7 | started\n"
        );
    }

    #[test]
    fn raw_prints_the_json_as_received() {
        let mut printer = utc_printer(true);
        assert_eq!(
            render(&mut printer, LINE),
            (Rendered::Printed, format!("{LINE}\n"))
        );
    }

    #[test]
    fn replayed_lines_are_skipped_new_ones_printed() {
        let mut printer = utc_printer(false);
        assert_eq!(render(&mut printer, LINE).0, Rendered::Printed);
        assert_eq!(render(&mut printer, LINE).0, Rendered::Duplicate);
        let same_time_other_message =
            r#"{"created_at":1700000000123,"message":"other","pod_name":"api-7"}"#;
        assert_eq!(
            render(&mut printer, same_time_other_message).0,
            Rendered::Printed
        );
        let same_message_later =
            r#"{"created_at":1700000000124,"message":"started\n","pod_name":"api-7"}"#;
        assert_eq!(
            render(&mut printer, same_message_later).0,
            Rendered::Printed
        );
    }

    #[test]
    fn frames_that_are_not_log_lines_are_printed_as_they_are() {
        let mut printer = utc_printer(false);
        for text in [
            "plain text",
            "{\"created_at\":\"yesterday\",\"message\":\"m\",\"pod_name\":\"p\"}",
            "{\"message\":\"m\"}",
            "[1,2]",
            "",
        ] {
            assert_eq!(
                render(&mut printer, text),
                (Rendered::NotJson, format!("{text}\n")),
                "{text:?}"
            );
        }
        let mut out = Vec::new();
        let binary = Message::binary(&b"\xff\xfe bytes\n"[..]);
        assert_eq!(printer.render(&binary, &mut out), Rendered::NotJson);
        assert_eq!(out, "\u{fffd}\u{fffd} bytes\n".as_bytes());
        // --raw: the bytes as received.
        let mut out = Vec::new();
        assert_eq!(
            utc_printer(true).render(&binary, &mut out),
            Rendered::NotJson
        );
        assert_eq!(out, b"\xff\xfe bytes\n");
    }

    #[test]
    fn control_characters_from_the_server_are_escaped_unless_raw() {
        let hostile = r#"{"created_at":1700000000123,"message":"ok\r\u001b[2Jforged\nline\n","pod_name":"api\u001b]0;pwned\u0007"}"#;
        let mut printer = utc_printer(false);
        assert_eq!(
            render(&mut printer, hostile),
            (
                Rendered::Printed,
                "2023-11-14T22:13:20.123+00:00 | api\\u{1b}]0;pwned\\u{7} | ok\\r\\u{1b}[2Jforged\\nline\n".into()
            )
        );
        assert_eq!(
            render(&mut utc_printer(false), "not json\u{1b}[31m\r\nsecond"),
            (
                Rendered::NotJson,
                "not json\\u{1b}[31m\\r\\nsecond\n".into()
            )
        );
        assert_eq!(
            render(&mut utc_printer(true), hostile),
            (Rendered::Printed, format!("{hostile}\n"))
        );
    }

    #[test]
    fn binary_json_is_a_log_line_and_control_frames_print_nothing() {
        let mut printer = utc_printer(false);
        let mut out = Vec::new();
        let binary = Message::binary(LINE.as_bytes().to_vec());
        assert_eq!(printer.render(&binary, &mut out), Rendered::Printed);
        out.clear();
        let ping = Message::Ping(Default::default());
        assert_eq!(printer.render(&ping, &mut out), Rendered::Ignored);
        assert!(out.is_empty());
    }

    #[test]
    fn memory_for_de_duplication_is_bounded() {
        let mut seen = Seen::new(3);
        for at in 0..10 {
            assert!(seen.insert(at, "m"));
        }
        assert_eq!(seen.set.len(), 3);
        assert_eq!(seen.order.len(), 3);
        assert!(!seen.insert(9, "m"));
        assert!(seen.insert(0, "m"), "the oldest lines are forgotten first");
    }

    #[tokio::test]
    async fn session_warns_once_and_keeps_printing() {
        use std::sync::Mutex;
        let warnings = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = {
            let warnings = warnings.clone();
            Arc::new(move |w: &str| warnings.lock().unwrap().push(w.to_owned())) as WarningSink
        };
        let (link, ends) =
            super::super::link(super::super::LINK_CAPACITY, super::super::INBOUND_BYTES);
        let (out_tx, mut out_rx) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(LogsSession::new(out_tx, true, sink).run(link));
        for text in ["bad 1", LINE, "bad 2", LINE] {
            ends.inbound.send(Message::text(text)).await.unwrap();
        }
        drop(ends);
        task.await.unwrap();
        let mut printed = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut out_rx, &mut printed)
            .await
            .unwrap();
        assert_eq!(printed, format!("bad 1\n{LINE}\nbad 2\n"));
        assert_eq!(*warnings.lock().unwrap(), vec![NOT_JSON_WARNING.to_owned()]);
    }
}
