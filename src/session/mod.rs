//! Sessions: the application side of a supervised connection.
//!
//! A session decides where payloads come from and go to (stdin/stdout, a terminal, a
//! TCP socket). It never decides anything about reconnecting: it talks to the
//! supervisor through a [`Link`] and keeps working across redials.

pub mod connect;
pub mod forward;
pub mod logs;
pub mod shell;

use crate::classify::Failure;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::Message;

/// The application side of a supervised connection.
///
/// ```no_run
/// use wsup::session::{Link, Session};
/// struct Printer;
/// impl Session for Printer {
///     async fn run(self, mut link: Link) {
///         while let Some(message) = link.recv().await {
///             println!("{message}");
///         }
///     }
/// }
/// ```
pub trait Session: Send + 'static {
    /// Runs for the life of the supervisor, as its own task. It should return soon
    /// after [`Link::recv`] returns `None` (the supervisor has stopped).
    ///
    /// The supervisor calls `run` before its first dial and spawns the future right
    /// after, so the first dial may come before the future is first polled. Setup the
    /// first dial depends on (such as [`Link::dial_query`]) belongs in `run`'s body
    /// before it returns the future, not inside it: `wsup shell` sets the terminal size
    /// that way.
    fn run(self, link: Link) -> impl Future<Output = ()> + Send + 'static;

    /// How many messages to the server may wait in the link at once: queued while
    /// offline, or not yet taken by the supervisor. Past it, [`Link::send`] waits.
    ///
    /// The default, [`LINK_CAPACITY`], suits a session that sends as it goes. A session
    /// that queues input while offline under its own byte budget (see
    /// [`Outbound::permit`]) asks for enough room that the budget, not this count, is
    /// what stops it: `wsup connect` queues up to 1 MiB of lines, however short. The
    /// supervisor asks once, before [`Session::run`]; room is not allocated up front.
    fn outbound_capacity(&self) -> usize {
        LINK_CAPACITY
    }

    /// Bytes of server payloads that may wait for the session before the supervisor
    /// stops reading the websocket (see [`Inbound`]). The default, [`INBOUND_BYTES`],
    /// keeps one large frame in flight; `port-forward`'s tunnels ask for more. The
    /// supervisor asks once, before [`Session::run`].
    fn inbound_bytes(&self) -> usize {
        INBOUND_BYTES
    }
}

/// A message on its way to the server. It may carry a permit from the session's own
/// byte budget, released once the message has been handed to the socket: that is how a
/// session bounds what it queues while offline.
#[derive(Debug)]
pub struct Outbound {
    pub message: Message,
    pub permit: Option<OwnedSemaphorePermit>,
}

impl From<Message> for Outbound {
    fn from(message: Message) -> Self {
        Outbound {
            message,
            permit: None,
        }
    }
}

/// Out-of-band requests from the session to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The user pressed Ctrl+C: forwarded while connected, quits (130) while offline.
    Interrupt,
    /// The local side left before the connection was up (a port-forward client that
    /// closed while its tunnel was dialing): nobody wants this connection any more, so
    /// stop at once instead of dialing or backing off. Ignored once connected, where
    /// dropping [`Link::outbound`] closes normally.
    LocalGone,
    /// Writing the output failed with this error: the session ends with exit 74, the
    /// server gets close 1001. Not for a broken pipe (see [`OutputError`]).
    OutputFailed(String),
}

/// How a session's output write failed, as the supervisor should see it.
#[derive(Debug)]
pub enum OutputError {
    /// The reader went away (`wsup logs URL | head -1`): it chose to stop reading, so
    /// the session ends quietly, as a local end of input would.
    ReaderGone,
    /// Anything else (a full disk, an I/O error): the output is lost.
    Failed(std::io::Error),
}

impl From<std::io::Error> for OutputError {
    fn from(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            OutputError::ReaderGone
        } else {
            OutputError::Failed(error)
        }
    }
}

/// Tells the supervisor why the output stopped, if it must know: a failed write ends
/// the session with exit 74, a reader that went away needs nothing (the session ending
/// is enough). Call it before the session returns.
pub async fn report_output_error(control: &mpsc::Sender<Control>, error: OutputError) {
    if let OutputError::Failed(error) = error {
        let _ = control.send(Control::OutputFailed(error.to_string())).await;
    }
}

/// Query parameters added to the URL on every dial (the shell's terminal size).
#[derive(Debug, Clone, Default)]
pub struct DialQuery(Arc<Mutex<Vec<(String, String)>>>);

impl DialQuery {
    pub fn set(&self, pairs: Vec<(String, String)>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = pairs;
    }

    pub fn get(&self) -> Vec<(String, String)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Why the session stopped sending, when its input did not simply end: a failure set
/// here before [`Link::outbound`] is dropped stops the supervisor with that failure's
/// class (exit 65 for [`Failure::InputRejected`]) instead of closing normally, once
/// everything sent before has been handed to the connection.
#[derive(Debug, Clone, Default)]
pub struct InputFailure(Arc<Mutex<Option<Failure>>>);

impl InputFailure {
    pub fn set(&self, failure: Failure) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure);
    }

    pub fn take(&self) -> Option<Failure> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Payloads from the server, in order, as the session takes them.
///
/// The supervisor stops reading the websocket while the messages waiting here add up
/// to [`INBOUND_BYTES`] or more (or number [`LINK_CAPACITY`]): a session that consumes
/// slowly slows the server down instead of filling memory. One message is always let
/// through, whatever its size (up to the 64 MiB message limit).
#[derive(Debug)]
pub struct Inbound {
    receiver: mpsc::Receiver<Message>,
    budget: Arc<InboundBudget>,
}

impl Inbound {
    /// The next message; `None` once the supervisor has stopped and everything it
    /// delivered has been taken.
    pub async fn recv(&mut self) -> Option<Message> {
        let message = self.receiver.recv().await?;
        self.budget.taken(message.len());
        Some(message)
    }

    /// Whether no message is waiting right now (time to flush what was written).
    pub fn is_empty(&self) -> bool {
        self.receiver.is_empty()
    }

    /// The session took on `bytes` of output (what it is about to write for a message
    /// it received). Written bytes are counted by the writer from [`Inbound::counted`];
    /// what is still owed when the drain timeout passes is reported as lost.
    pub fn owe(&self, bytes: usize) {
        self.budget.owed.fetch_add(bytes, Ordering::AcqRel);
    }

    /// `output`, counting every byte it accepts against what [`Inbound::owe`] added.
    /// Put it under any buffering, so that only bytes that really left count.
    pub fn counted<W>(&self, output: W) -> CountedOutput<W> {
        CountedOutput {
            inner: output,
            budget: self.budget.clone(),
        }
    }
}

/// How a session that prints what it receives turns one message into output: at most
/// two pieces (a message and its line end need no copy into one buffer).
pub trait RenderOutput {
    fn render<'a>(&'a mut self, message: &'a Message) -> [&'a [u8]; 2];
}

/// The output loop of a session that prints what it receives (`connect`, `logs`): each
/// message is rendered, owed (see [`Inbound::owe`]) and written through a counted buffer,
/// flushed once per burst (when nothing else is waiting), not once per message. Ends
/// when the supervisor closes the inbound channel, or with the first write error.
pub async fn write_received<W: AsyncWrite + Unpin>(
    inbound: &mut Inbound,
    output: W,
    renderer: &mut impl RenderOutput,
) -> Result<(), OutputError> {
    let mut output = BufWriter::new(inbound.counted(output));
    while let Some(message) = inbound.recv().await {
        let pieces = renderer.render(&message);
        inbound.owe(pieces.iter().map(|piece| piece.len()).sum());
        for piece in pieces {
            output.write_all(piece).await?;
        }
        if inbound.is_empty() {
            output.flush().await?;
        }
    }
    Ok(output.flush().await?)
}

/// A writer that counts the bytes it accepted as paid off (see [`Inbound::counted`]).
#[derive(Debug)]
pub struct CountedOutput<W> {
    inner: W,
    budget: Arc<InboundBudget>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CountedOutput<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        // Saturating: bytes a session wrote without owing them first are not "lost".
        let _ = self
            .budget
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                Some(owed.saturating_sub(written))
            });
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Payload bytes delivered to the session and not yet taken, shared by the driver
/// (which adds) and [`Inbound`] (which takes).
#[derive(Debug)]
pub(crate) struct InboundBudget {
    /// Reading pauses while this many bytes or more wait ([`Session::inbound_bytes`]).
    limit: usize,
    waiting: AtomicUsize,
    room: Notify,
    /// Output the session took on and has not written yet (see [`Inbound::owe`]).
    owed: AtomicUsize,
}

impl InboundBudget {
    fn new(limit: usize) -> Self {
        InboundBudget {
            limit,
            waiting: AtomicUsize::new(0),
            room: Notify::new(),
            owed: AtomicUsize::new(0),
        }
    }

    pub(crate) fn has_room(&self) -> bool {
        self.waiting.load(Ordering::Acquire) < self.limit
    }

    /// Bytes received and not yet written out: waiting in the link, plus what the
    /// session took and still owes its output.
    pub(crate) fn unwritten(&self) -> usize {
        self.waiting
            .load(Ordering::Acquire)
            .saturating_add(self.owed.load(Ordering::Acquire))
    }

    /// Hands `message` to the session, counted before it can be taken: every delivery
    /// goes through here, so what [`Inbound::recv`] subtracts was always added.
    pub(crate) fn deliver(&self, permit: mpsc::Permit<'_, Message>, message: Message) {
        self.waiting.fetch_add(message.len(), Ordering::AcqRel);
        permit.send(message);
    }

    fn taken(&self, bytes: usize) {
        let before = self.waiting.fetch_sub(bytes, Ordering::AcqRel);
        if before >= self.limit && before.saturating_sub(bytes) < self.limit {
            // Stored if the driver is not waiting yet: it then wakes at once.
            self.room.notify_one();
        }
    }

    /// Completes after the session took enough to bring the total under the budget
    /// (or spuriously: re-check [`InboundBudget::has_room`]).
    pub(crate) async fn room(&self) {
        self.room.notified().await;
    }
}

/// The session's end of the connection to the supervisor.
#[derive(Debug)]
pub struct Link {
    /// Payloads from the server, in order. `None` once the supervisor has stopped.
    pub inbound: Inbound,
    /// Payloads to the server. Sent while connected, queued (in this channel, up to
    /// [`Session::outbound_capacity`] messages) while offline. Dropping it means
    /// "nothing more to send": close 1000 once sent.
    pub outbound: mpsc::Sender<Outbound>,
    pub control: mpsc::Sender<Control>,
    pub dial_query: DialQuery,
    /// Set before dropping `outbound` when the input ended in a failure.
    pub input_failure: InputFailure,
}

impl Link {
    pub async fn recv(&mut self) -> Option<Message> {
        self.inbound.recv().await
    }

    /// Queue a message for the server; waits while the queue is full.
    /// Returns `false` once the supervisor has stopped.
    pub async fn send(&self, message: impl Into<Outbound>) -> bool {
        self.outbound.send(message.into()).await.is_ok()
    }
}

/// The supervisor's end of a [`Link`].
#[derive(Debug)]
pub(crate) struct LinkEnds {
    pub inbound: mpsc::Sender<Message>,
    pub inbound_budget: Arc<InboundBudget>,
    pub outbound: mpsc::Receiver<Outbound>,
    pub control: mpsc::Receiver<Control>,
    pub dial_query: DialQuery,
    pub input_failure: InputFailure,
}

/// How many messages may wait in each direction between driver and session, unless a
/// session asks for more outbound room ([`Session::outbound_capacity`]). The byte budget
/// for queued input is the session's (see [`Outbound::permit`]).
pub const LINK_CAPACITY: usize = 64;

/// Bytes of server payloads that may wait for the session before the supervisor stops
/// reading the websocket (see [`Inbound`]). Small on purpose: a large frame is written
/// out by the session before the next one is read, which lets tungstenite reuse its read
/// buffer (docs/benchmarks.md); small messages are bounded by [`LINK_CAPACITY`] first.
pub const INBOUND_BYTES: usize = 64 << 10;

/// A link whose outbound side holds up to `outbound_capacity` messages (at least one)
/// and whose inbound side pauses reading at `inbound_bytes` waiting.
pub(crate) fn link(outbound_capacity: usize, inbound_bytes: usize) -> (Link, LinkEnds) {
    let (inbound_tx, inbound_rx) = mpsc::channel(LINK_CAPACITY);
    let (outbound_tx, outbound_rx) = mpsc::channel(outbound_capacity.max(1));
    let (control_tx, control_rx) = mpsc::channel(8);
    let dial_query = DialQuery::default();
    let inbound_budget = Arc::new(InboundBudget::new(inbound_bytes));
    let input_failure = InputFailure::default();
    (
        Link {
            inbound: Inbound {
                receiver: inbound_rx,
                budget: inbound_budget.clone(),
            },
            outbound: outbound_tx,
            control: control_tx,
            dial_query: dial_query.clone(),
            input_failure: input_failure.clone(),
        },
        LinkEnds {
            inbound: inbound_tx,
            inbound_budget,
            outbound: outbound_rx,
            control: control_rx,
            dial_query,
            input_failure,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Delivers a binary message of `len` bytes through the link's driver end.
    async fn deliver(ends: &LinkEnds, len: usize) {
        let permit = ends.inbound.reserve().await.expect("the session is there");
        let message = Message::Binary(Bytes::from(vec![0u8; len]));
        ends.inbound_budget.deliver(permit, message);
    }

    #[tokio::test]
    async fn reading_pauses_at_the_sessions_inbound_budget_and_resumes_below_it() {
        for limit in [INBOUND_BYTES, crate::session::forward::TUNNEL_INBOUND_BYTES] {
            let (mut link, ends) = link(LINK_CAPACITY, limit);
            let frame = 64 << 10;
            for _ in 0..limit / frame {
                assert!(ends.inbound_budget.has_room(), "paused before {limit}");
                deliver(&ends, frame).await;
            }
            assert!(
                !ends.inbound_budget.has_room(),
                "{limit} waiting and no pause"
            );
            link.inbound.recv().await.expect("a message");
            assert!(ends.inbound_budget.has_room(), "still paused below {limit}");
        }
    }
}
