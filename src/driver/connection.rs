//! One open websocket as the driver holds it: the outgoing queue, `poll_io` (take the
//! session's messages, write, read one frame), the grace after a write error or a
//! protocol violation, and retiring the connection in the background. The conversions
//! between the machine's payloads and websocket messages live here too: this is the edge.

use crate::classify::{Failure, NetworkKind};
use crate::machine::{Event, Payload, Text};
use crate::session;
use crate::transport::{failure_from_received_close, failure_from_ws_error, WireClose};
use futures_util::task::AtomicWaker;
use futures_util::{Sink, Stream};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// After a write or ping fails, keep reading this long for the server's real close frame.
pub const DRAIN_AFTER_WRITE_ERROR: Duration = Duration::from_millis(500);
/// A retired connection gets this long to finish its closing handshake in the background.
const RETIRE_GRACE: Duration = Duration::from_secs(1);
/// Messages waiting for the socket before the driver stops taking more from the session.
const SEND_QUEUE_MESSAGES: usize = 16;
/// How many times in a row a flush may wait for a session that is sending in bulk (see
/// [`Conn::poll_flush_after_burst`]) before it happens anyway.
const FLUSH_DEFERRALS: u8 = 8;

/// A message read from the connection, as the machine's event. The machine takes no
/// websocket types: this and [`message_of`] are the edge.
pub(super) fn inbound_event(message: Message) -> Event {
    match message {
        Message::Text(text) => {
            // SAFETY: tungstenite validated the frame as UTF-8 to make a `Utf8Bytes`.
            let text = unsafe { Text::from_utf8_unchecked(text.into()) };
            Event::Received(Payload::Text(text))
        }
        Message::Binary(bytes) => Event::Received(Payload::Binary(bytes)),
        Message::Ping(_) => Event::PingReceived,
        // A close frame is taken in `Conn::poll_io` (as `Closed`, with the wire's code),
        // and a raw frame is never read; both still prove the peer alive, like a pong.
        Message::Pong(_) | Message::Close(_) | Message::Frame(_) => Event::PongReceived,
    }
}

/// A payload from the machine as the message the connection or the session takes.
pub(super) fn message_of(payload: Payload) -> Message {
    match payload {
        Payload::Text(text) => {
            // SAFETY: a `Text` is valid UTF-8 by construction.
            Message::Text(unsafe { Utf8Bytes::from_bytes_unchecked(text.into_bytes()) })
        }
        Payload::Binary(bytes) => Message::Binary(bytes),
    }
}

/// An open websocket with its outgoing queue.
pub(super) struct Conn<S> {
    pub(super) ws: WebSocketStream<S>,
    /// The server's close frame as it was on the wire ([`super::Dialer::wire_close`]).
    wire_close: WireCloseOf<S>,
    pub(super) queue: VecDeque<Message>,
    needs_flush: bool,
    /// How many times in a row the flush waited for the session to send more (see
    /// [`Conn::poll_flush_after_burst`]).
    flush_deferrals: u8,
    /// Set when a write failed: the failure to report, unless the server's close frame
    /// arrives before the deadline.
    drain: Option<(Failure, Pin<Box<Sleep>>)>,
    /// Set when the server broke the protocol: reading has stopped, the session's answers
    /// to what it already got still go out, then our close frame.
    violation: Option<Violation>,
    /// Messages handed to the driver on this connection: with none, the session has
    /// nothing to answer and a violation closes at once.
    frames_read: u64,
    /// On-connect messages still at the front of `queue`: they are sent again by the next
    /// connection anyway, so they are not carried over to it.
    on_connect_queued: usize,
    /// The waker the websocket's reads get, and whether it fired: see [`ReadWake`].
    read_wake: Arc<ReadWake>,
    read_waker: Waker,
    /// The last read found nothing (the socket had no bytes, no whole frame was
    /// buffered): until `read_wake` fires, reading again cannot find more.
    read_idle: bool,
}

/// Tells a wake-up for the read side from the others (a message from the session, a
/// writable socket). tungstenite zero-fills its whole read buffer before every read
/// attempt, bytes or not (128 KiB for a tunnel): polled after every frame the session
/// sent, that was a 128 KiB `memset` per 64 KiB frame upstream, `port-forward`'s
/// largest user-space cost. Reads are now attempted only when something may have
/// arrived.
struct ReadWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A protocol violation the server committed, on its way to our close frame.
struct Violation {
    failure: Failure,
    /// Our close frame (1002/1007/1009 and a short reason) until it is queued.
    close: Option<CloseFrame>,
    /// End of the grace for the session's answers, then of the close frame's flush.
    deadline: Pin<Box<Sleep>>,
}

/// The close frame for a violation wsup detected in what the server sent (RFC 6455
/// §7.4.1: 1002 protocol error, 1007 invalid data, 1009 too big), or `None` when the
/// error is not the server breaking the protocol (I/O, a reset, our own state).
fn violation_close(failure: &Failure) -> Option<CloseFrame> {
    let Failure::Violation { code, detail } = failure else {
        return None;
    };
    // A close reason is at most 123 bytes (a control frame's 125 minus the code).
    let mut end = detail.len().min(123);
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    Some(CloseFrame {
        code: CloseCode::from(*code),
        reason: detail[..end].to_owned().into(),
    })
}

pub(super) type WireCloseOf<S> = for<'a> fn(&'a S) -> Option<&'a WireClose>;

pub(super) enum ConnEvent {
    Frame(Message),
    Closed(Failure),
    /// The session dropped its sender: everything it sent is in the queue.
    OutboundEnded,
}

/// Rounds of "take up to the queue bound, hand it to the websocket" in one `poll_io`, so
/// that a session that keeps the channel full cannot keep the driver from reading or
/// seeing a signal.
const OUTBOUND_ROUNDS_PER_POLL: usize = 8;

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn<S> {
    pub(super) fn new(ws: WebSocketStream<S>, wire_close: WireCloseOf<S>) -> Self {
        let read_wake = Arc::new(ReadWake {
            woken: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        Conn {
            ws,
            wire_close,
            queue: VecDeque::new(),
            needs_flush: false,
            flush_deferrals: 0,
            drain: None,
            violation: None,
            frames_read: 0,
            on_connect_queued: 0,
            read_waker: Waker::from(Arc::clone(&read_wake)),
            read_wake,
            read_idle: false,
        }
    }

    /// Put the on-connect messages at the front of the queue (called once, on a new
    /// connection, before anything else is queued).
    pub(super) fn queue_on_connect(&mut self, messages: &[Message]) {
        for message in messages.iter().rev() {
            self.queue.push_front(message.clone());
        }
        self.on_connect_queued += messages.len();
    }

    /// Take the session's messages (when `outbound` is given) while the queue has room,
    /// push queued writes forward, then read one frame. A burst of small messages goes
    /// out in one flush.
    pub(super) fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        read: bool,
        mut outbound: Option<&mut mpsc::Receiver<session::Outbound>>,
    ) -> Poll<ConnEvent> {
        let mut rounds = 0;
        let mut taken = 0;
        let mut outbound_ended = false;
        while self.drain.is_none() {
            // Whether a wake-up is due when the session sends more: the channel said
            // Pending (its waker is registered), or messages are not taken now.
            let mut channel_waits = true;
            if let Some(receiver) = outbound.as_deref_mut() {
                channel_waits = false;
                while self.queue.len() < SEND_QUEUE_MESSAGES {
                    match receiver.poll_recv(cx) {
                        Poll::Ready(Some(item)) => {
                            taken += 1;
                            self.queue.push_back(item.message);
                            // The session's byte budget is released once the socket has it.
                            drop(item.permit);
                        }
                        // After a violation, the session's end is the end of its answers.
                        Poll::Ready(None) if self.violation.is_some() => {
                            outbound_ended = true;
                            break;
                        }
                        Poll::Ready(None) => return Poll::Ready(ConnEvent::OutboundEnded),
                        Poll::Pending => {
                            channel_waits = true;
                            break;
                        }
                    }
                }
            }
            // Hand the queue to the websocket, which writes to the socket whenever its
            // buffer passes `write_buffer_size`; flush only once the session has nothing
            // more right now, so a burst of small messages costs a few syscalls, not one
            // per message.
            let sent = match self.poll_send_queue(cx) {
                Poll::Ready(Ok(())) if !channel_waits => {
                    // The queue was full: the session may have more, and nothing would
                    // wake us for it.
                    rounds += 1;
                    if rounds < OUTBOUND_ROUNDS_PER_POLL {
                        continue;
                    }
                    // Come back after the other arms had their turn.
                    cx.waker().wake_by_ref();
                    self.poll_flush(cx)
                }
                Poll::Ready(Ok(())) => self.poll_flush_after_burst(cx, taken),
                // The socket is full; its waker is registered.
                other => other,
            };
            if let Poll::Ready(Err(error)) = sent {
                self.drain = Some((
                    failure_from_ws_error(error),
                    Box::pin(tokio::time::sleep(DRAIN_AFTER_WRITE_ERROR)),
                ));
            }
            break;
        }
        if self.drain.is_none() && self.violation.is_some() {
            return self.poll_violation(cx, outbound_ended);
        }
        if read || self.drain.is_some() {
            self.read_wake.task.register(cx.waker());
            if self.read_idle && !self.read_wake.woken.load(Ordering::Acquire) {
                return self.poll_drain_deadline(cx);
            }
            self.read_wake.woken.store(false, Ordering::Release);
            self.read_idle = false;
            let mut read_cx = Context::from_waker(&self.read_waker);
            match Pin::new(&mut self.ws).poll_next(&mut read_cx) {
                Poll::Ready(Some(Ok(Message::Close(frame)))) => {
                    let wire = (self.wire_close)(self.ws.get_ref());
                    return Poll::Ready(ConnEvent::Closed(failure_from_received_close(
                        frame.as_ref(),
                        wire,
                    )));
                }
                Poll::Ready(Some(Ok(message))) => {
                    self.frames_read += 1;
                    return Poll::Ready(ConnEvent::Frame(message));
                }
                Poll::Ready(Some(Err(error))) => {
                    let failure = match self.drain.take() {
                        Some((write_failure, _)) => write_failure,
                        None => failure_from_ws_error(error),
                    };
                    if let Some(close) = violation_close(&failure) {
                        // What arrived before the violation was delivered; give the
                        // session a short grace to answer it (nothing to answer: none).
                        let grace = if self.frames_read == 0 {
                            Duration::ZERO
                        } else {
                            DRAIN_AFTER_WRITE_ERROR
                        };
                        self.violation = Some(Violation {
                            failure,
                            close: Some(close),
                            deadline: Box::pin(tokio::time::sleep(grace)),
                        });
                        return self.poll_violation(cx, false);
                    }
                    return Poll::Ready(ConnEvent::Closed(failure));
                }
                Poll::Ready(None) => {
                    let failure = match self.drain.take() {
                        Some((write_failure, _)) => write_failure,
                        None => Failure::Network {
                            kind: NetworkKind::Eof,
                            detail: String::new(),
                        },
                    };
                    return Poll::Ready(ConnEvent::Closed(failure));
                }
                Poll::Pending => self.read_idle = true,
            }
        }
        self.poll_drain_deadline(cx)
    }

    /// Closed with the write failure once the grace for the server's close frame is over.
    fn poll_drain_deadline(&mut self, cx: &mut Context<'_>) -> Poll<ConnEvent> {
        if let Some((failure, deadline)) = self.drain.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(ConnEvent::Closed(failure.clone()));
            }
        }
        Poll::Pending
    }

    /// Whether anything queued (the session's messages, our close frame) has not reached
    /// the socket yet.
    pub(super) fn has_unsent(&self) -> bool {
        !self.queue.is_empty() || self.needs_flush
    }

    /// The session's messages still in the queue (not pings, not close frames).
    pub(super) fn take_unsent_messages(&mut self) -> VecDeque<Message> {
        let on_connect = std::mem::take(&mut self.on_connect_queued);
        self.queue
            .drain(..)
            .skip(on_connect)
            .filter(|m| matches!(m, Message::Text(_) | Message::Binary(_)))
            .collect()
    }

    /// After a violation: the session's answers go out until the grace ends (or the
    /// session ends), then our close frame; Closed once it is flushed, or could not be
    /// within the same bound again.
    fn poll_violation(&mut self, cx: &mut Context<'_>, outbound_ended: bool) -> Poll<ConnEvent> {
        let Some(violation) = self.violation.as_mut() else {
            return Poll::Pending;
        };
        if violation.close.is_some() {
            if !outbound_ended && violation.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.queue.push_back(Message::Close(violation.close.take()));
            violation
                .deadline
                .as_mut()
                .reset(Instant::now() + DRAIN_AFTER_WRITE_ERROR);
        }
        let flushed = self.poll_flush_queue(cx).is_ready();
        let Some(violation) = self.violation.as_mut() else {
            return Poll::Pending;
        };
        if flushed || violation.deadline.as_mut().poll(cx).is_ready() {
            let failure = violation.failure.clone();
            self.violation = None;
            return Poll::Ready(ConnEvent::Closed(failure));
        }
        Poll::Pending
    }

    /// Ready(Ok) once everything queued is written and flushed.
    pub(super) fn poll_flush_queue(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tokio_tungstenite::tungstenite::Error>> {
        match self.poll_send_queue(cx) {
            Poll::Ready(Ok(())) => self.poll_flush(cx),
            other => other,
        }
    }

    /// Ready(Ok) once everything queued is in the websocket's write buffer (parts of it
    /// may already be on the socket).
    fn poll_send_queue(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tokio_tungstenite::tungstenite::Error>> {
        let mut ws = Pin::new(&mut self.ws);
        while !self.queue.is_empty() {
            match ws.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let message = self.queue.pop_front().expect("not empty");
                    self.on_connect_queued = self.on_connect_queued.saturating_sub(1);
                    ws.as_mut().start_send(message)?;
                    self.needs_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The flush once the session's channel is empty, unless the session is sending in
    /// bulk: this poll took a whole queue's worth of messages ([`SEND_QUEUE_MESSAGES`]).
    /// Then it probably has more on the way but has not run since (on one thread it
    /// cannot run while the driver does), so it gets a turn first: the driver yields and
    /// flushes when a poll takes fewer, or after [`FLUSH_DEFERRALS`] turns in a row. A
    /// message typed alone goes out at once, and so does a tunnel's 64 KiB frame (one
    /// per poll; counting messages across polls instead also held back the frames of a
    /// tunnel whose socket was full: one tunnel upstream 1,273 against 1,362 MiB/s for
    /// the build before, 8 repetitions; counted per poll, 1,259 against 1,274 in 10).
    /// The websocket writes to the socket by itself whenever its buffer passes
    /// `write_buffer_size`.
    ///
    /// 64-byte messages sent one-way, 40,000 at a time, one worker thread: the driver
    /// flushed every 64 messages (the link's capacity), 14,472 `sendto` per 1.2 million
    /// messages; with this, 4,122 (a bare tokio-tungstenite client that flushes once per
    /// batch: 661). docs/benchmarks.md has the CPU figures.
    fn poll_flush_after_burst(
        &mut self,
        cx: &mut Context<'_>,
        taken: usize,
    ) -> Poll<Result<(), tokio_tungstenite::tungstenite::Error>> {
        if self.needs_flush
            && taken >= SEND_QUEUE_MESSAGES
            && self.flush_deferrals < FLUSH_DEFERRALS
        {
            self.flush_deferrals += 1;
            // Woken again after the runtime's other ready tasks, the session first.
            let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
            return Poll::Ready(Ok(()));
        }
        self.poll_flush(cx)
    }

    /// Ready(Ok) once what the websocket buffered is on the socket.
    fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tokio_tungstenite::tungstenite::Error>> {
        if self.needs_flush {
            ready!(Pin::new(&mut self.ws).poll_flush(cx))?;
            self.needs_flush = false;
        }
        self.flush_deferrals = 0;
        Poll::Ready(Ok(()))
    }

    /// Finish the closing handshake in the background, bounded, then drop the socket.
    pub(super) fn retire(mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        tokio::spawn(async move {
            let _ = tokio::time::timeout(RETIRE_GRACE, async {
                let _ = poll_fn(|cx| self.poll_flush_queue(cx)).await;
                let _ = futures_util::SinkExt::close(&mut self.ws).await;
            })
            .await;
        });
    }
}

#[cfg(test)]
mod on_connect_tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// A connection, and the server's end of its socket (kept open: a write to a
    /// dropped peer fails).
    async fn conn() -> (Conn<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (socket, peer) = tokio::io::duplex(1 << 16);
        let ws = WebSocketStream::from_raw_socket(socket, Role::Client, None).await;
        (Conn::new(ws, |_| None), peer)
    }

    #[tokio::test]
    async fn unsent_on_connect_messages_are_not_carried_over_the_session_s_are() {
        let (mut conn, _peer) = conn().await;
        conn.queue_on_connect(&[Message::text("subscribe"), Message::text("again")]);
        conn.queue.push_back(Message::text("typed"));
        assert_eq!(
            conn.queue,
            [
                Message::text("subscribe"),
                Message::text("again"),
                Message::text("typed")
            ],
            "on-connect messages first"
        );
        // The next connection sends its own on-connect messages: only the session's
        // message is carried over.
        assert_eq!(conn.take_unsent_messages(), [Message::text("typed")]);
    }

    #[tokio::test]
    async fn on_connect_messages_handed_to_the_socket_no_longer_count() {
        let (mut conn, _peer) = conn().await;
        conn.queue_on_connect(&[Message::text("subscribe")]);
        poll_fn(|cx| conn.poll_flush_queue(cx)).await.unwrap();
        conn.queue.push_back(Message::text("typed"));
        assert_eq!(conn.take_unsent_messages(), [Message::text("typed")]);
    }
}

#[cfg(test)]
mod read_wake_tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// After a read found nothing, the next one waits for the read side's wake-up; a
    /// frame that arrives then is read, and frames already buffered behind a delivered
    /// one are read without one.
    #[tokio::test]
    async fn frames_arriving_after_an_idle_read_are_read() {
        let (socket, mut peer) = tokio::io::duplex(1 << 16);
        let ws = WebSocketStream::from_raw_socket(socket, Role::Client, None).await;
        let mut conn = Conn::new(ws, |_| None);
        let idle = poll_fn(|cx| Poll::Ready(conn.poll_io(cx, true, None))).await;
        assert!(idle.is_pending(), "nothing to read yet");
        assert!(conn.read_idle);
        // Two unmasked binary frames in one write: "a", then "b".
        peer.write_all(&[0x82, 1, b'a', 0x82, 1, b'b'])
            .await
            .unwrap();
        for expected in [b"a", b"b"] {
            let read = poll_fn(|cx| conn.poll_io(cx, true, None));
            let event = tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .expect("the frame is read once it arrives");
            let ConnEvent::Frame(Message::Binary(bytes)) = event else {
                panic!("expected a binary frame");
            };
            assert_eq!(&bytes[..], expected);
        }
    }
}
