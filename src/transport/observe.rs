//! The close frame as the server really sent it.
//!
//! tungstenite rewrites a received close frame whose code it does not "allow" (1014,
//! 1004, 1016–2999, 1..=999, 5000 and up; also 1005, 1006 and 1015, which RFC 6455 says
//! never travel in a frame) into `1002 "Protocol violation"` before anyone sees it. The
//! server's code and reason are lost, and a transient 1014 ("bad gateway") would be
//! reported as a permanent protocol error. tungstenite 0.30 still does this
//! (`CloseCode::is_allowed` in `WebSocketContext::do_close`; upstream issue
//! snapview/tungstenite-rs#502, open), so the observer stays.
//!
//! [`CloseObserver`] sits between tungstenite and the (decrypted) byte stream. It passes
//! every byte through untouched and, after the HTTP upgrade response, follows the
//! server→client frame headers to record the code and reason of the first close frame it
//! sees. Only headers (2 to 14 bytes) and a close frame's payload (at most 125 bytes) are
//! looked at; the payload of data frames is skipped by counting, never copied.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A close frame as it was on the wire: the code and the reason (invalid UTF-8 replaced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireClose {
    pub code: u16,
    pub reason: String,
}

/// A pass-through stream that records the first close frame the server sends.
#[derive(Debug)]
pub struct CloseObserver<S> {
    inner: S,
    scanner: FrameScanner,
}

impl<S> CloseObserver<S> {
    /// Wraps a stream on which the HTTP upgrade is about to be made.
    pub fn new(inner: S) -> Self {
        CloseObserver {
            inner,
            scanner: FrameScanner::new(),
        }
    }

    /// The first close frame (with a status code) the server sent, once it was read.
    pub fn received_close(&self) -> Option<&WireClose> {
        self.scanner.close.as_ref()
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CloseObserver<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.scanner.scan(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CloseObserver<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

const OPCODE_CLOSE: u8 = 0x8;
/// The largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
const END_OF_HEAD: &[u8; 4] = b"\r\n\r\n";

/// Follows the server→client byte stream: the HTTP response head, then frame after frame.
#[derive(Debug)]
pub(crate) struct FrameScanner {
    state: ScanState,
    close: Option<WireClose>,
}

#[derive(Debug)]
enum ScanState {
    /// In the HTTP response head: how much of "\r\n\r\n" was just seen.
    Head { matched: usize },
    /// In a frame header: the bytes so far (at most 14).
    Header { bytes: [u8; 14], have: usize },
    /// In a payload that is not looked at.
    Skip { remaining: u64 },
    /// In a close frame's payload (at most 125 bytes), kept to be decoded.
    Close {
        payload: [u8; MAX_CONTROL_PAYLOAD],
        len: usize,
        have: usize,
        mask: Option<[u8; 4]>,
    },
    /// A close frame was read (or the stream no longer makes sense): nothing more to do.
    Done,
}

impl FrameScanner {
    pub(crate) fn new() -> Self {
        FrameScanner {
            state: ScanState::Head { matched: 0 },
            close: None,
        }
    }

    /// A scanner for a stream that starts with the first frame (no HTTP head).
    #[cfg(test)]
    fn after_handshake() -> Self {
        FrameScanner {
            state: ScanState::Header {
                bytes: [0; 14],
                have: 0,
            },
            close: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn close(&self) -> Option<&WireClose> {
        self.close.as_ref()
    }

    /// Takes the next bytes read from the server, in order.
    pub(crate) fn scan(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                ScanState::Done => return,
                ScanState::Skip { remaining } => {
                    let n = (*remaining).min(data.len() as u64) as usize;
                    data = &data[n..];
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = header_start();
                    }
                }
                ScanState::Head { matched } => {
                    let mut used = data.len();
                    for (i, &byte) in data.iter().enumerate() {
                        *matched = if byte == END_OF_HEAD[*matched] {
                            *matched + 1
                        } else if byte == b'\r' {
                            1
                        } else {
                            0
                        };
                        if *matched == END_OF_HEAD.len() {
                            used = i + 1;
                            self.state = header_start();
                            break;
                        }
                    }
                    data = &data[used..];
                }
                ScanState::Header { bytes, have } => {
                    let need = if *have < 2 { 2 } else { header_len(bytes[1]) };
                    let n = (need - *have).min(data.len());
                    bytes[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have < 2 || *have < header_len(bytes[1]) {
                        // Wait for the rest of the header (the length said how long).
                        continue;
                    }
                    self.state = match parse_header(&bytes[..*have]) {
                        Ok(Some(header)) => after_header(&header),
                        // A reserved opcode: tungstenite fails the connection there.
                        Err(InvalidOpcode(_)) => ScanState::Done,
                        // Not reached: `have` is the whole header's length.
                        Ok(None) => ScanState::Done,
                    };
                }
                ScanState::Close {
                    payload,
                    len,
                    have,
                    mask,
                } => {
                    let n = (*len - *have).min(data.len());
                    payload[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == *len {
                        let mut payload = payload[..*len].to_vec();
                        if let Some(key) = mask {
                            for (i, byte) in payload.iter_mut().enumerate() {
                                *byte ^= key[i % 4];
                            }
                        }
                        self.record_close(&payload);
                        self.state = ScanState::Done;
                    }
                }
            }
        }
    }
}

/// A frame header as the observer reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) fin: bool,
    /// RSV1, RSV2, RSV3.
    pub(crate) rsv: [bool; 3],
    pub(crate) opcode: u8,
    pub(crate) mask: Option<[u8; 4]>,
    /// The payload length.
    pub(crate) length: u64,
    /// How many bytes the header took.
    pub(crate) len: usize,
}

/// A frame with a reserved opcode (3–7, 11–15): not a frame anyone can read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InvalidOpcode(pub(crate) u8);

/// Reads the frame header at the start of `bytes`: `Ok(None)` while it is incomplete. Same
/// verdict as tungstenite's `FrameHeader::parse` (a property test holds them together).
pub(crate) fn parse_header(bytes: &[u8]) -> Result<Option<Header>, InvalidOpcode> {
    let (Some(&first), Some(&second)) = (bytes.first(), bytes.get(1)) else {
        return Ok(None);
    };
    let len = header_len(second);
    if bytes.len() < len {
        return Ok(None);
    }
    let (length, at) = match second & 0x7f {
        126 => (u64::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
        127 => {
            let mut be = [0; 8];
            be.copy_from_slice(&bytes[2..10]);
            (u64::from_be_bytes(be), 10)
        }
        short => (u64::from(short), 2),
    };
    let mask =
        (second & 0x80 != 0).then(|| [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let opcode = first & 0x0f;
    if matches!(opcode, 3..=7 | 11..=15) {
        return Err(InvalidOpcode(opcode));
    }
    Ok(Some(Header {
        fin: first & 0x80 != 0,
        rsv: [first & 0x40 != 0, first & 0x20 != 0, first & 0x10 != 0],
        opcode,
        mask,
        length,
        len,
    }))
}

/// The state after a complete frame header.
fn after_header(header: &Header) -> ScanState {
    let Header {
        opcode,
        mask,
        length,
        ..
    } = *header;
    if opcode == OPCODE_CLOSE {
        if length == 0 {
            // No status code: tungstenite reports that faithfully (1005).
            return ScanState::Done;
        }
        if length as usize > MAX_CONTROL_PAYLOAD {
            // Not a valid control frame; tungstenite fails the connection.
            return ScanState::Done;
        }
        return ScanState::Close {
            payload: [0; MAX_CONTROL_PAYLOAD],
            len: length as usize,
            have: 0,
            mask,
        };
    }
    if length == 0 {
        header_start()
    } else {
        ScanState::Skip { remaining: length }
    }
}

impl FrameScanner {
    fn record_close(&mut self, payload: &[u8]) {
        // One byte is not a valid close payload; tungstenite fails the connection.
        if payload.len() >= 2 {
            self.close = Some(WireClose {
                code: u16::from_be_bytes([payload[0], payload[1]]),
                reason: String::from_utf8_lossy(&payload[2..]).into_owned(),
            });
        }
    }
}

fn header_start() -> ScanState {
    ScanState::Header {
        bytes: [0; 14],
        have: 0,
    }
}

/// The length of a frame header, from its second byte.
fn header_len(second: u8) -> usize {
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (FIN set, unmasked) with the shortest length encoding, or the one
    /// asked for (`force` = 126 or 127).
    fn frame(opcode: u8, payload: &[u8], force: Option<u8>) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        let len = payload.len();
        match force {
            Some(127) => {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
            Some(126) => {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ if len < 126 => out.push(len as u8),
            _ if len <= 0xffff => {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    fn close_frame(code: u16, reason: &str) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        frame(OPCODE_CLOSE, &payload, None)
    }

    const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

    fn wire(code: u16, reason: &str) -> Option<WireClose> {
        Some(WireClose {
            code,
            reason: reason.into(),
        })
    }

    /// Feeds `bytes` in pieces of `step` bytes.
    fn scan_in_steps(mut scanner: FrameScanner, bytes: &[u8], step: usize) -> FrameScanner {
        for piece in bytes.chunks(step) {
            scanner.scan(piece);
        }
        scanner
    }

    #[test]
    fn a_close_frame_right_after_the_http_head_is_recorded() {
        let mut bytes = HEAD.to_vec();
        bytes.extend(close_frame(1014, "r1014"));
        let mut scanner = FrameScanner::new();
        scanner.scan(&bytes);
        assert_eq!(scanner.close().cloned(), wire(1014, "r1014"));
    }

    #[test]
    fn every_split_across_reads_gives_the_same_close() {
        let mut bytes = HEAD.to_vec();
        bytes.extend(frame(0x1, b"hello", None));
        bytes.extend(frame(0x2, &[7; 300], None));
        bytes.extend(frame(0x9, b"", None));
        bytes.extend(close_frame(2999, "unknown code \u{2713}"));
        for step in 1..=bytes.len() {
            let scanner = scan_in_steps(FrameScanner::new(), &bytes, step);
            assert_eq!(
                scanner.close().cloned(),
                wire(2999, "unknown code \u{2713}"),
                "reads of {step} bytes"
            );
        }
    }

    #[test]
    fn sixteen_bit_lengths_are_skipped() {
        for len in [126usize, 1000, 0xffff] {
            let mut bytes = frame(0x2, &vec![0x88; len], None);
            assert_eq!(bytes[1], 126, "16-bit length for {len}");
            bytes.extend(close_frame(1014, "after 16-bit"));
            for step in [1, 3, 7, 4096, bytes.len()] {
                let scanner = scan_in_steps(FrameScanner::after_handshake(), &bytes, step);
                assert_eq!(
                    scanner.close().cloned(),
                    wire(1014, "after 16-bit"),
                    "{len} bytes in reads of {step}"
                );
            }
        }
    }

    #[test]
    fn sixty_four_bit_lengths_are_skipped() {
        // A short payload with the 64-bit encoding, then a large one that needs it.
        let mut bytes = frame(0x2, &[0x88; 10], Some(127));
        let second = bytes.len();
        bytes.extend(frame(0x1, &vec![b'a'; 70_000], None));
        assert_eq!(bytes[second + 1], 127, "64-bit length for 70 000 bytes");
        bytes.extend(close_frame(1004, "after 64-bit"));
        for step in [1, 2, 9, 16 << 10, bytes.len()] {
            let scanner = scan_in_steps(FrameScanner::after_handshake(), &bytes, step);
            assert_eq!(
                scanner.close().cloned(),
                wire(1004, "after 64-bit"),
                "reads of {step}"
            );
        }
    }

    #[test]
    fn a_close_after_a_large_binary_frame_whose_payload_looks_like_a_close() {
        // The payload is full of close-frame look-alikes: they must be skipped, not read.
        let decoy = close_frame(1000, "decoy");
        let payload: Vec<u8> = decoy.iter().copied().cycle().take(3 << 20).collect();
        let mut bytes = HEAD.to_vec();
        bytes.extend(frame(0x2, &payload, None));
        bytes.extend(close_frame(1014, "r1014"));
        for step in [1 << 10, 16 << 10, 65_537] {
            let scanner = scan_in_steps(FrameScanner::new(), &bytes, step);
            assert_eq!(
                scanner.close().cloned(),
                wire(1014, "r1014"),
                "reads of {step}"
            );
        }
    }

    #[test]
    fn only_the_first_close_counts_and_an_empty_close_records_nothing() {
        let mut scanner = FrameScanner::after_handshake();
        scanner.scan(&close_frame(1000, "first"));
        scanner.scan(&close_frame(1014, "second"));
        assert_eq!(scanner.close().cloned(), wire(1000, "first"));

        let mut scanner = FrameScanner::after_handshake();
        scanner.scan(&frame(OPCODE_CLOSE, b"", None));
        scanner.scan(&close_frame(1014, "after an empty close"));
        assert_eq!(scanner.close(), None);
    }

    #[test]
    fn a_masked_close_is_unmasked_and_bad_utf8_is_replaced() {
        let key = [1, 2, 3, 4];
        let mut payload = 1015u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"tls\xff");
        let mut bytes = vec![0x88, 0x80 | payload.len() as u8];
        bytes.extend_from_slice(&key);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        let scanner = scan_in_steps(FrameScanner::after_handshake(), &bytes, 1);
        assert_eq!(scanner.close().cloned(), wire(1015, "tls\u{fffd}"));
    }

    #[test]
    fn a_head_split_inside_its_final_crlf_crlf_is_found() {
        // "\r\n\r" then "\r\n\r\n": the stray '\r' must restart the match, not lose it.
        let mut bytes = b"HTTP/1.1 101 OK\r\nA: b\r\n\r".to_vec();
        bytes.truncate(bytes.len() - 3);
        bytes.extend_from_slice(b"\r\n\r\r\n\r\n");
        bytes.extend(close_frame(1014, "x"));
        for step in 1..=bytes.len() {
            let scanner = scan_in_steps(FrameScanner::new(), &bytes, step);
            assert_eq!(scanner.close().cloned(), wire(1014, "x"), "reads of {step}");
        }
    }

    mod against_tungstenite {
        use super::super::{parse_header, Header, InvalidOpcode};
        use proptest::prelude::*;
        use std::io::Cursor;
        use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

        /// tungstenite's reading of the same bytes, in the observer's terms.
        fn tungstenite_reads(bytes: &[u8]) -> Result<Option<Header>, InvalidOpcode> {
            let mut cursor = Cursor::new(bytes);
            match FrameHeader::parse(&mut cursor) {
                Ok(None) => Ok(None),
                Ok(Some((header, length))) => Ok(Some(Header {
                    fin: header.is_final,
                    rsv: [header.rsv1, header.rsv2, header.rsv3],
                    opcode: header.opcode.into(),
                    mask: header.mask,
                    length,
                    len: cursor.position() as usize,
                })),
                // Reading from memory fails only on a reserved opcode.
                Err(_) => Err(InvalidOpcode(bytes[0] & 0x0f)),
            }
        }

        /// Byte streams that reach every length encoding and the mask: the second byte
        /// is often 126/127 (with or without the mask bit), the rest random, cut anywhere.
        fn stream() -> impl Strategy<Value = Vec<u8>> {
            let second = prop_oneof![
                any::<u8>(),
                Just(126u8),
                Just(127u8),
                Just(126u8 | 0x80),
                Just(127u8 | 0x80),
            ];
            (
                any::<u8>(),
                second,
                proptest::collection::vec(any::<u8>(), 0..16),
                0..20usize,
            )
                .prop_map(|(first, second, rest, cut)| {
                    let mut bytes = vec![first, second];
                    bytes.extend(rest);
                    bytes.truncate(cut);
                    bytes
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn same_header_length_and_verdict_as_tungstenite(bytes in stream()) {
                prop_assert_eq!(parse_header(&bytes), tungstenite_reads(&bytes), "{:02x?}", bytes);
            }

            #[test]
            fn any_bytes_same_verdict_as_tungstenite(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
                prop_assert_eq!(parse_header(&bytes), tungstenite_reads(&bytes), "{:02x?}", bytes);
            }
        }
    }
}
