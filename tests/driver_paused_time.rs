//! The driver under paused tokio time: an in-memory dialer (websockets over
//! `tokio::io::duplex`, no sockets) lets minutes of virtual time pass in milliseconds,
//! so liveness deadlines, backoff delays and Retry-After are checked to the millisecond
//! without a single real sleep.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::WebSocketStream;
use url::Url;
use wsup::backoff::{BackoffPolicy, Jitter};
use wsup::classify::{Failure, NetworkKind};
use wsup::driver::{Dialer, SignalWatch};
use wsup::machine::{MachineConfig, Outcome, Sig};
use wsup::session::{Link, Session};
use wsup::tungstenite::Message;
use wsup::{Config, Supervisor};

type ServerEnd = WebSocketStream<DuplexStream>;

/// Each dial takes the next scripted answer (the last repeats): a failure, or a
/// connection whose server end is handed to the test.
#[derive(Clone)]
struct MemoryDialer {
    answers: Arc<Mutex<VecDeque<Option<Failure>>>>,
    dials: Arc<Mutex<Vec<Instant>>>,
    server_ends: mpsc::UnboundedSender<ServerEnd>,
}

impl MemoryDialer {
    fn new(answers: Vec<Option<Failure>>) -> (Self, mpsc::UnboundedReceiver<ServerEnd>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let dialer = MemoryDialer {
            answers: Arc::new(Mutex::new(answers.into())),
            dials: Arc::default(),
            server_ends: tx,
        };
        (dialer, rx)
    }

    fn dial_times(&self) -> Vec<Instant> {
        self.dials.lock().unwrap().clone()
    }
}

impl Dialer for MemoryDialer {
    type Stream = DuplexStream;

    fn dial(
        &self,
        _url: &Url,
        _authorization: Option<&str>,
    ) -> impl std::future::Future<Output = Result<WebSocketStream<DuplexStream>, Failure>> + Send
    {
        self.dials.lock().unwrap().push(Instant::now());
        let answer = {
            let mut answers = self.answers.lock().unwrap();
            if answers.len() > 1 {
                answers.pop_front().unwrap()
            } else {
                answers.front().cloned().flatten()
            }
        };
        let server_ends = self.server_ends.clone();
        async move {
            if let Some(failure) = answer {
                return Err(failure);
            }
            let (client, server) = tokio::io::duplex(256 * 1024);
            let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
            let _ = server_ends.send(server);
            Ok(client)
        }
    }
}

/// Sends `lines` (queued until connected), keeps its input open, reports what arrives.
struct Probe {
    lines: Vec<&'static str>,
    delivered: mpsc::UnboundedSender<Message>,
}

impl Session for Probe {
    async fn run(self, link: Link) {
        let Link {
            mut inbound,
            outbound,
            ..
        } = link;
        for line in self.lines {
            let _ = outbound.send(Message::text(line).into()).await;
        }
        while let Some(message) = inbound.recv().await {
            let _ = self.delivered.send(message);
        }
        drop(outbound);
    }
}

fn probe(lines: Vec<&'static str>) -> (Probe, mpsc::UnboundedReceiver<Message>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Probe {
            lines,
            delivered: tx,
        },
        rx,
    )
}

fn config(machine: MachineConfig) -> Config {
    Config {
        machine,
        backoff: BackoffPolicy::default(),
        ..Config::new(Url::parse("ws://memory.test/").unwrap())
    }
}

fn supervisor(machine: MachineConfig) -> (Supervisor, watch::Sender<Option<Sig>>) {
    let (signal_tx, signal_rx): (_, SignalWatch) = watch::channel(None);
    let supervisor = Supervisor::new(config(machine))
        .jitter(Jitter::seeded(5))
        .signals(signal_rx);
    (supervisor, signal_tx)
}

/// Waits for the supervisor, at most an hour of virtual time: a test that goes wrong
/// fails instead of reconnecting forever at the speed of paused time.
async fn bounded(run: tokio::task::JoinHandle<Outcome>) -> Outcome {
    tokio::time::timeout(Duration::from_secs(3600), run)
        .await
        .expect("the supervisor ends within an hour of virtual time")
        .unwrap()
}

fn refused() -> Option<Failure> {
    Some(Failure::Network {
        kind: NetworkKind::Refused,
        detail: String::new(),
    })
}

#[tokio::test(start_paused = true)]
async fn a_half_open_connection_is_declared_dead_after_ping_interval_plus_pong_timeout() {
    let (dialer, mut servers) = MemoryDialer::new(vec![None]);
    let (supervisor, _signals) = supervisor(MachineConfig {
        max_retries: Some(0),
        ..MachineConfig::default()
    });
    let (session, _delivered) = probe(vec![]);
    let started = Instant::now();
    let run = tokio::spawn(supervisor.run_with_dialer(dialer, session));
    // The server end is held and never read: no pong ever comes back.
    let _silent = servers.recv().await.unwrap();
    let outcome = bounded(run).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(
            outcome,
            Outcome::RetriesExhausted {
                failure: Failure::Liveness,
                ..
            }
        ),
        "{outcome:?}"
    );
    // Default ping 20 s + pong timeout 20 s: dead at 40 s, not before, not much after.
    assert!(elapsed >= Duration::from_secs(40), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(40_050), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn pongs_keep_an_idle_connection_alive_for_as_long_as_it_takes() {
    let (dialer, mut servers) = MemoryDialer::new(vec![None]);
    let (supervisor, signals) = supervisor(MachineConfig::default());
    let (session, _delivered) = probe(vec![]);
    let run = tokio::spawn(supervisor.run_with_dialer(dialer.clone(), session));
    let mut server = servers.recv().await.unwrap();
    // Reading makes tungstenite answer each ping with a pong.
    let pings = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut pings = 0;
        while let Some(Ok(message)) = server.next().await {
            if message.is_ping() {
                pings += 1;
            }
        }
        pings
    });
    tokio::time::sleep(Duration::from_secs(600)).await; // virtual: ten idle minutes
    signals.send_replace(Some(Sig::Terminate));
    assert_eq!(bounded(run).await, Outcome::Signal(Sig::Terminate));
    assert_eq!(dialer.dial_times().len(), 1, "never redialed");
    let pings = pings.await.unwrap();
    assert!((29..=31).contains(&pings), "one ping per 20 s: {pings}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_delays_the_next_dial_and_queued_lines_go_out_in_order() {
    let unavailable = Some(Failure::Http {
        status: 503,
        retry_after: Some(Duration::from_secs(7)),
    });
    let (dialer, mut servers) = MemoryDialer::new(vec![unavailable, None]);
    let (supervisor, _signals) = supervisor(MachineConfig::default());
    let (session, _delivered) = probe(vec!["one", "two", "three"]);
    let run = tokio::spawn(supervisor.run_with_dialer(dialer.clone(), session));
    let mut server = servers.recv().await.unwrap();
    use futures_util::StreamExt;
    let mut received = Vec::new();
    while received.len() < 3 {
        match server.next().await.unwrap().unwrap() {
            Message::Text(text) => received.push(text.to_string()),
            _ => continue,
        }
    }
    assert_eq!(received, ["one", "two", "three"]);
    server
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .await
        .unwrap();
    assert_eq!(bounded(run).await, Outcome::Done);
    let dials = dialer.dial_times();
    let gap = dials[1] - dials[0];
    // At least Retry-After; the jitter window at attempt 1 (500 ms) is below it.
    assert!(gap >= Duration::from_secs(7), "{gap:?}");
    assert!(gap < Duration::from_millis(7_010), "{gap:?}");
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_stay_in_their_full_jitter_windows() {
    let (dialer, _servers) = MemoryDialer::new(vec![refused()]);
    let (supervisor, _signals) = supervisor(MachineConfig {
        max_retries: Some(6),
        ..MachineConfig::default()
    });
    let (session, _delivered) = probe(vec![]);
    let outcome = bounded(tokio::spawn(
        supervisor.run_with_dialer(dialer.clone(), session),
    ))
    .await;
    assert!(matches!(
        outcome,
        Outcome::RetriesExhausted { retries: 6, .. }
    ));
    let dials = dialer.dial_times();
    assert_eq!(dials.len(), 7, "N + 1 attempts");
    let policy = BackoffPolicy::default();
    for (retry, pair) in dials.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let ceiling = policy.ceiling(retry as u32 + 1);
        assert!(
            gap <= ceiling + Duration::from_millis(2),
            "retry {retry}: {gap:?} > {ceiling:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_signal_during_a_long_backoff_ends_the_session_at_once() {
    let (dialer, _servers) = MemoryDialer::new(vec![refused()]);
    let (supervisor, signals) = supervisor(MachineConfig::default());
    let supervisor = Supervisor::jitter(supervisor, Jitter::seeded(1));
    let (session, _delivered) = probe(vec![]);
    let started = Instant::now();
    let run = tokio::spawn(supervisor.run_with_dialer(dialer.clone(), session));
    tokio::time::sleep(Duration::from_millis(100)).await;
    signals.send_replace(Some(Sig::Interrupt));
    assert_eq!(bounded(run).await, Outcome::Signal(Sig::Interrupt));
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn delivered_messages_reach_the_session_in_order() {
    let (dialer, mut servers) = MemoryDialer::new(vec![None]);
    let (supervisor, signals) = supervisor(MachineConfig::default());
    let (session, mut delivered) = probe(vec![]);
    let run = tokio::spawn(supervisor.run_with_dialer(dialer, session));
    let mut server = servers.recv().await.unwrap();
    use futures_util::SinkExt;
    for i in 0..500 {
        server.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..500 {
        assert_eq!(
            delivered.recv().await.unwrap(),
            Message::text(format!("m{i}"))
        );
    }
    signals.send_replace(Some(Sig::Terminate));
    assert_eq!(bounded(run).await, Outcome::Signal(Sig::Terminate));
}

/// Stops reading at once but keeps its outbound side open, like `wsup connect` whose
/// stdout was closed while stdin is still open.
struct StopsReading;

impl Session for StopsReading {
    async fn run(self, link: Link) {
        let Link {
            inbound, outbound, ..
        } = link;
        drop(inbound);
        let _still_open = outbound;
        std::future::pending::<()>().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_session_that_stopped_reading_while_offline_is_noticed_once_connected() {
    let (dialer, mut servers) = MemoryDialer::new(vec![refused(), None]);
    let (supervisor, _signals) = supervisor(MachineConfig::default());
    let run = tokio::spawn(supervisor.run_with_dialer(dialer.clone(), StopsReading));
    let mut server = servers.recv().await.unwrap();
    use futures_util::StreamExt;
    // The client closes with 1000 on its own; reading answers the close.
    let wait_for_close = async {
        loop {
            match server.next().await {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    };
    let close = tokio::time::timeout(Duration::from_secs(3600), wait_for_close)
        .await
        .expect("the client closes within an hour of virtual time");
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1000));
    while server.next().await.is_some() {}
    assert_eq!(bounded(run).await, Outcome::Done);
    assert_eq!(dialer.dial_times().len(), 2);
}

/// Takes nothing until told to, then reports every message.
struct WaitsBeforeReading {
    go: tokio::sync::oneshot::Receiver<()>,
    delivered: mpsc::UnboundedSender<Message>,
}

impl Session for WaitsBeforeReading {
    async fn run(self, link: Link) {
        let Link {
            mut inbound,
            outbound: _still_open,
            ..
        } = link;
        let _ = self.go.await;
        while let Some(message) = inbound.recv().await {
            let _ = self.delivered.send(message);
        }
    }
}

/// The session, the switch that lets it read, and what it delivered.
fn waits_before_reading() -> (
    WaitsBeforeReading,
    tokio::sync::oneshot::Sender<()>,
    mpsc::UnboundedReceiver<Message>,
) {
    let (go, go_rx) = tokio::sync::oneshot::channel();
    let (delivered_tx, delivered) = mpsc::unbounded_channel();
    let session = WaitsBeforeReading {
        go: go_rx,
        delivered: delivered_tx,
    };
    (session, go, delivered)
}

#[tokio::test(start_paused = true)]
async fn a_slow_session_stops_the_reading_at_its_byte_budget_not_at_sixty_four_messages() {
    const SIZE: usize = 256 << 10;
    const COUNT: usize = 40;
    let (dialer, mut servers) = MemoryDialer::new(vec![None]);
    let (supervisor, signals) = supervisor(MachineConfig::default());
    let (session, go, mut delivered) = waits_before_reading();
    let run = tokio::spawn(supervisor.run_with_dialer(dialer, session));
    let mut server = servers.recv().await.unwrap();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = sent.clone();
    let sender = tokio::spawn(async move {
        use futures_util::SinkExt;
        for i in 0..COUNT {
            server
                .send(Message::binary(vec![i as u8; SIZE]))
                .await
                .unwrap();
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        server
    });
    // Virtual time advances only once every task is idle: the server is then blocked
    // on a full pipe because the client stopped reading.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let held = sent.load(std::sync::atomic::Ordering::SeqCst);
    // One message waiting for the session (past the 64 KiB budget: one always passes),
    // one in tungstenite's read buffer, one in the 256 KiB pipe, one being written; with
    // a bound of 64 messages all 40 would have gone.
    const { assert!(wsup::session::INBOUND_BYTES < SIZE) };
    assert!(
        (1..=4).contains(&held),
        "the server got {held} messages of 256 KiB out while the session took none"
    );
    go.send(()).unwrap();
    for i in 0..COUNT {
        let message = delivered.recv().await.unwrap();
        assert_eq!(message.len(), SIZE);
        assert_eq!(message.into_data()[0], i as u8, "message {i} out of order");
    }
    let _server = sender.await.unwrap();
    signals.send_replace(Some(Sig::Terminate));
    assert_eq!(bounded(run).await, Outcome::Signal(Sig::Terminate));
}

#[tokio::test(start_paused = true)]
async fn a_session_that_is_behind_for_minutes_does_not_make_a_live_server_look_dead() {
    const SIZE: usize = 256 << 10;
    const COUNT: usize = 16;
    let (dialer, mut servers) = MemoryDialer::new(vec![None]);
    let (supervisor, signals) = supervisor(MachineConfig::default());
    let (session, go, mut delivered) = waits_before_reading();
    let run = tokio::spawn(supervisor.run_with_dialer(dialer.clone(), session));
    let server = servers.recv().await.unwrap();
    let (mut to_client, mut from_client) = futures_util::StreamExt::split(server);
    // The server keeps answering pings while it waits to send the rest.
    let answering = tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(Ok(_)) = from_client.next().await {}
    });
    let sender = tokio::spawn(async move {
        use futures_util::SinkExt;
        for i in 0..COUNT {
            to_client
                .send(Message::binary(vec![i as u8; SIZE]))
                .await
                .unwrap();
        }
        to_client
    });
    // Three liveness windows (ping 20 s + pong 20 s) with the session taking nothing:
    // wsup is not reading because its own session is behind, not because the server
    // went quiet.
    tokio::time::sleep(Duration::from_secs(120)).await;
    go.send(()).unwrap();
    let all_delivered = tokio::time::timeout(Duration::from_secs(3600), async {
        for i in 0..COUNT {
            let message = delivered.recv().await.unwrap();
            assert_eq!(message.into_data()[0], i as u8, "message {i}");
        }
    });
    let delivered_in_time = all_delivered.await.is_ok();
    assert_eq!(dialer.dial_times().len(), 1, "no redial");
    assert!(
        delivered_in_time,
        "every message within an hour of virtual time"
    );
    let _to_client = sender.await.unwrap();
    signals.send_replace(Some(Sig::Terminate));
    assert_eq!(bounded(run).await, Outcome::Signal(Sig::Terminate));
    answering.abort();
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_is_still_found_dead_one_window_after_the_session_catches_up() {
    let (dialer, mut servers) = MemoryDialer::new(vec![None]);
    let (supervisor, signals) = supervisor(MachineConfig::default());
    let (session, go, mut delivered) = waits_before_reading();
    let run = tokio::spawn(supervisor.run_with_dialer(dialer.clone(), session));
    let mut server = servers.recv().await.unwrap();
    {
        use futures_util::SinkExt;
        // Enough to stop the reading (past the 64 KiB budget), then silence: the
        // server never reads again, so pings go unanswered.
        server
            .send(Message::binary(vec![7u8; 256 << 10]))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(100)).await;
    let resumed = Instant::now();
    go.send(()).unwrap();
    assert_eq!(delivered.recv().await.unwrap().len(), 256 << 10);
    let redialed = tokio::time::timeout(Duration::from_secs(3600), servers.recv())
        .await
        .expect("a redial within an hour of virtual time");
    assert!(redialed.is_some());
    let dials = dialer.dial_times();
    assert_eq!(dials.len(), 2);
    // Declared dead one window (20 s ping + 20 s pong) after reading resumed, then a
    // first backoff of at most 500 ms.
    let after = dials[1] - resumed;
    assert!(
        after >= Duration::from_secs(40) && after <= Duration::from_millis(40_600),
        "redialed {after:?} after the session caught up"
    );
    signals.send_replace(Some(Sig::Terminate));
    assert_eq!(bounded(run).await, Outcome::Signal(Sig::Terminate));
    drop(server);
}

/// The client's end of an in-memory connection, observed: it hands over at most
/// `chunk` bytes per read (frames that arrive one per read), raises a signal once
/// `signal_after` reads returned bytes, and counts the writes that reached it.
struct Observed {
    inner: DuplexStream,
    chunk: usize,
    reads: usize,
    signal_after: Option<(usize, Arc<watch::Sender<Option<Sig>>>)>,
    writes: Arc<std::sync::atomic::AtomicUsize>,
}

impl tokio::io::AsyncRead for Observed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        let mut limited = buf.take(this.chunk);
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        let filled = limited.filled().len();
        if filled > 0 {
            // SAFETY: `limited` borrows `buf`'s unfilled part, which it initialised up to
            // `filled`.
            unsafe { buf.assume_init(filled) };
            buf.advance(filled);
            this.reads += 1;
            if let Some((after, signals)) = &this.signal_after {
                if this.reads == *after {
                    signals.send_replace(Some(Sig::Interrupt));
                }
            }
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Observed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Dials one [`Observed`] connection whose server end has already sent `frames`
/// one-byte binary frames (numbered from 0), and hands the server end to the test.
#[derive(Clone)]
struct ObservedDialer {
    frames: usize,
    chunk: usize,
    signal_after: Option<(usize, Arc<watch::Sender<Option<Sig>>>)>,
    writes: Arc<std::sync::atomic::AtomicUsize>,
    server_ends: mpsc::UnboundedSender<DuplexStream>,
}

impl ObservedDialer {
    fn new() -> (Self, mpsc::UnboundedReceiver<DuplexStream>) {
        let (server_ends, rx) = mpsc::unbounded_channel();
        let dialer = ObservedDialer {
            frames: 0,
            chunk: usize::MAX,
            signal_after: None,
            writes: Arc::default(),
            server_ends,
        };
        (dialer, rx)
    }
}

impl Dialer for ObservedDialer {
    type Stream = Observed;

    fn dial(
        &self,
        _url: &Url,
        _authorization: Option<&str>,
    ) -> impl std::future::Future<Output = Result<WebSocketStream<Observed>, Failure>> + Send {
        let dialer = self.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let (client, mut server) = tokio::io::duplex(1 << 20);
            // Unmasked server frames: FIN + binary, length 1, the payload.
            let burst: Vec<u8> = (0..dialer.frames)
                .flat_map(|i| [0x82, 1, i as u8])
                .collect();
            server.write_all(&burst).await.unwrap();
            let _ = dialer.server_ends.send(server);
            let client = Observed {
                inner: client,
                chunk: dialer.chunk,
                reads: 0,
                signal_after: dialer.signal_after,
                writes: dialer.writes,
            };
            Ok(WebSocketStream::from_raw_socket(client, Role::Client, None).await)
        }
    }
}

/// Frames already read are taken one after another without going back to the event
/// loop's `select!`, but never past a signal: SIGINT raised while the 40th of 100
/// buffered frames is read (in the second streak) stops delivery there, as it did
/// frame by frame.
#[tokio::test(start_paused = true)]
async fn a_signal_in_the_middle_of_a_burst_of_frames_stops_delivery_at_once() {
    let (signal_tx, signal_rx): (_, SignalWatch) = watch::channel(None);
    let (mut dialer, mut server_ends) = ObservedDialer::new();
    dialer.frames = 100;
    dialer.chunk = 3;
    dialer.signal_after = Some((40, Arc::new(signal_tx)));
    let supervisor = Supervisor::new(config(MachineConfig::default()))
        .jitter(Jitter::seeded(5))
        .signals(signal_rx);
    let (session, mut delivered) = probe(vec![]);
    let run = tokio::spawn(supervisor.run_with_dialer(dialer, session));
    let _server = server_ends.recv().await.unwrap();
    assert_eq!(bounded(run).await, Outcome::Signal(Sig::Interrupt));
    let mut payloads = Vec::new();
    while let Some(message) = delivered.recv().await {
        payloads.push(message.into_data()[0]);
    }
    assert_eq!(
        payloads,
        (0..40).collect::<Vec<u8>>(),
        "delivered up to the signal"
    );
}

/// Sends `count` small binary messages as fast as the link takes them, then keeps its
/// input open.
struct Bulk {
    count: usize,
}

impl Session for Bulk {
    async fn run(self, link: Link) {
        for i in 0..self.count {
            let payload = (i as u32).to_be_bytes().to_vec();
            if !link.send(Message::Binary(payload.into())).await {
                return;
            }
        }
        let _still_open = link;
        std::future::pending::<()>().await
    }
}

/// A session sending in bulk gets turns to add more before the driver flushes: 2,000
/// 64-byte messages reach the socket in a few writes, not one per link's worth
/// (64 messages: 32 writes), and the last of them leaves at once, not at the next
/// timer.
#[tokio::test(start_paused = true)]
async fn a_burst_from_the_session_leaves_in_a_few_writes_and_its_tail_at_once() {
    const COUNT: usize = 2000;
    let (dialer, mut server_ends) = ObservedDialer::new();
    let writes = dialer.writes.clone();
    let (supervisor, _signals) = supervisor(MachineConfig::default());
    let run = tokio::spawn(supervisor.run_with_dialer(dialer, Bulk { count: COUNT }));
    let server = server_ends.recv().await.unwrap();
    let mut server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
    let started = Instant::now();
    use futures_util::StreamExt;
    for i in 0..COUNT {
        let message = tokio::time::timeout(Duration::from_secs(1), server.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} still unsent after a second"));
        let Some(Ok(Message::Binary(bytes))) = message else {
            panic!("message {i}: {message:?}");
        };
        assert_eq!(bytes[..], (i as u32).to_be_bytes());
    }
    assert_eq!(started.elapsed(), Duration::ZERO, "no timer was needed");
    let writes = writes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(writes <= 8, "{COUNT} messages in {writes} writes");
    run.abort();
}
