//! Sessions: the application side of a supervised connection.
//!
//! A session decides where payloads come from and go to (stdin/stdout, a terminal, a
//! TCP socket). It never decides anything about reconnecting: it talks to the
//! supervisor through a [`Link`] and keeps working across redials.

pub mod connect;
pub mod forward;
pub mod logs;
pub mod shell;

use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The user pressed Ctrl+C: forwarded while connected, quits (130) while offline.
    Interrupt,
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

/// The session's end of the connection to the supervisor.
#[derive(Debug)]
pub struct Link {
    /// Payloads from the server, in order. `None` once the supervisor has stopped.
    pub inbound: mpsc::Receiver<Message>,
    /// Payloads to the server. Sent while connected, queued (in this channel) while
    /// offline. Dropping it means "nothing more to send": close 1000 once sent.
    pub outbound: mpsc::Sender<Outbound>,
    pub control: mpsc::Sender<Control>,
    pub dial_query: DialQuery,
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
    pub outbound: mpsc::Receiver<Outbound>,
    pub control: mpsc::Receiver<Control>,
    pub dial_query: DialQuery,
}

/// How many messages may wait in each direction between driver and session. The byte
/// budget for queued input is the session's (see [`Outbound::permit`]).
pub(crate) const LINK_CAPACITY: usize = 64;

pub(crate) fn link() -> (Link, LinkEnds) {
    let (inbound_tx, inbound_rx) = mpsc::channel(LINK_CAPACITY);
    let (outbound_tx, outbound_rx) = mpsc::channel(LINK_CAPACITY);
    let (control_tx, control_rx) = mpsc::channel(8);
    let dial_query = DialQuery::default();
    (
        Link {
            inbound: inbound_rx,
            outbound: outbound_tx,
            control: control_tx,
            dial_query: dial_query.clone(),
        },
        LinkEnds {
            inbound: inbound_tx,
            outbound: outbound_rx,
            control: control_rx,
            dial_query,
        },
    )
}
