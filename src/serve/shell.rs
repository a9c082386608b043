//! The `shell` step: a fake login shell with a cooked-terminal line editor, so that
//! `wsup shell` can be tried and tested without a real one.

use super::*;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// The `shell` step; see [`Step::Shell`].
pub(super) async fn fake_shell(
    mut ws: ServerSocket,
    target: &str,
    shared: &Shared,
) -> Result<(), ConnectionError> {
    let greeting = match tty_size_in(target) {
        Some((cols, rows)) => format!("[tty {cols}x{rows}]\r\n$ "),
        None => "[tty unknown]\r\n$ ".to_owned(),
    };
    ws.send(Message::binary(greeting.into_bytes())).await?;
    let mut line = LineEditor::default();
    // tungstenite answers pings and the client's close by itself while we read.
    while let Some(message) = ws.next().await {
        let message = message?;
        let reply = match &message {
            Message::Binary(bytes) => line.feed(bytes),
            Message::Text(text) => match resize_in(text) {
                Some((cols, rows)) => format!("\r\n[resized to {cols}x{rows}]\r\n$ ").into_bytes(),
                None => line.feed(text.as_bytes()),
            },
            _ => continue,
        };
        shared.record_echo(&message);
        if !reply.is_empty() {
            ws.send(Message::binary(reply)).await?;
        }
        if line.exited {
            return close_with(ws, 1000, String::new()).await;
        }
    }
    Ok(())
}

/// `tty_width` and `tty_height` from a request target's query, when both are numbers.
pub(super) fn tty_size_in(target: &str) -> Option<(u16, u16)> {
    let (_, query) = target.split_once('?')?;
    let field = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.parse::<u16>().ok())
    };
    Some((field("tty_width")?, field("tty_height")?))
}

/// The size in a `{"type":"resize","cols":C,"rows":R}` text frame.
pub(super) fn resize_in(text: &str) -> Option<(u16, u16)> {
    #[derive(serde::Deserialize)]
    struct Resize {
        #[serde(rename = "type")]
        kind: String,
        cols: u16,
        rows: u16,
    }
    let resize: Resize = serde_json::from_str(text).ok()?;
    (resize.kind == "resize").then_some((resize.cols, resize.rows))
}

/// The fake shell's line discipline: what a terminal in cooked mode would echo.
#[derive(Default)]
pub(super) struct LineEditor {
    pub(super) line: Vec<u8>,
    /// The previous byte was `\r`: a `\n` right after it ends no second line.
    pub(super) after_cr: bool,
    /// The line `exit` was entered: the rest of the input is ignored.
    pub(super) exited: bool,
}

impl LineEditor {
    /// Takes typed bytes, returns what the terminal shows.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut reply = Vec::new();
        for &byte in bytes {
            if self.exited {
                break;
            }
            let after_cr = std::mem::replace(&mut self.after_cr, byte == b'\r');
            match byte {
                b'\n' if after_cr => {}
                b'\r' | b'\n' if self.line == b"exit" => {
                    reply.extend_from_slice(b"\r\nlogout\r\n");
                    self.exited = true;
                }
                b'\r' | b'\n' => {
                    reply.extend_from_slice(b"\r\nyou typed: ");
                    for &typed in &self.line {
                        show_byte(typed, &mut reply);
                    }
                    reply.extend_from_slice(b"\r\n$ ");
                    self.line.clear();
                }
                0x03 => {
                    reply.extend_from_slice(b"^C\r\n$ ");
                    self.line.clear();
                }
                0x7f | 0x08 => {
                    if let Some(erased) = self.line.pop() {
                        let width = if erased < 0x20 { 2 } else { 1 };
                        for _ in 0..width {
                            reply.extend_from_slice(b"\x08 \x08");
                        }
                    }
                }
                _ => {
                    self.line.push(byte);
                    show_byte(byte, &mut reply);
                }
            }
        }
        reply
    }
}

/// A byte as a terminal with `echoctl` shows it: control bytes as `^X`.
pub(super) fn show_byte(byte: u8, out: &mut Vec<u8>) {
    if byte < 0x20 {
        out.extend_from_slice(&[b'^', byte + 0x40]);
    } else {
        out.push(byte);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_shell_echoes_like_a_cooked_terminal() {
        let mut editor = LineEditor::default();
        assert_eq!(editor.feed(b"hel"), b"hel");
        assert_eq!(editor.feed(b"lo\r"), b"lo\r\nyou typed: hello\r\n$ ");
        assert_eq!(
            editor.feed(b"ab\x7fc\r\n"),
            b"ab\x08 \x08c\r\nyou typed: ac\r\n$ "
        );
        assert_eq!(editor.feed(b"x\x03"), b"x^C\r\n$ ");
        assert_eq!(editor.feed(b"\x1b[A\n"), b"^[[A\r\nyou typed: ^[[A\r\n$ ");
        assert_eq!(editor.feed(b"\x7f"), b"");
        assert_eq!(editor.feed(b"exit\rmore"), b"exit\r\nlogout\r\n");
        assert!(editor.exited);
    }

    #[test]
    fn fake_shell_reads_the_size_and_resizes() {
        assert_eq!(tty_size_in("/?tty_width=80&tty_height=24"), Some((80, 24)));
        assert_eq!(
            tty_size_in("/x?a=1&tty_height=30&tty_width=100"),
            Some((100, 30))
        );
        assert_eq!(tty_size_in("/?tty_width=80"), None);
        assert_eq!(tty_size_in("/"), None);
        assert_eq!(
            resize_in(r#"{"type":"resize","cols":120,"rows":40}"#),
            Some((120, 40))
        );
        assert_eq!(resize_in(r#"{"type":"other","cols":1,"rows":1}"#), None);
        assert_eq!(resize_in("ls"), None);
    }
}
