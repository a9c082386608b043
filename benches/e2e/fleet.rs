//! Shared by memory, reconnect and storm: fleets of idle supervised connections.

use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use wsup::backoff::Jitter;
use wsup::machine::{Notice, Sig};
use wsup::session::{Link, Session};
use wsup::transport::Transport;
use wsup::{Config, Outcome, Supervisor};

/// A signal source that never fires (the bench's own process signals stay untouched).
pub(crate) fn quiet_signals() -> (watch::Sender<Option<Sig>>, watch::Receiver<Option<Sig>>) {
    watch::channel(None)
}

/// Counts sessions whose probe came back (their connection is up).
#[derive(Default)]
pub(crate) struct Ready(pub(crate) AtomicUsize);

impl Ready {
    pub(crate) async fn wait_for(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.0.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

/// Sends one probe message, counts its echo as "connected", then idles until the
/// supervisor stops (holding its link, so the supervisor does not see local EOF).
struct Probe {
    ready: Arc<Ready>,
}

impl Session for Probe {
    async fn run(self, mut link: Link) {
        if !link.send(Message::Binary(Bytes::from_static(b"p"))).await {
            return;
        }
        if recv_binary(&mut link).await {
            self.ready.0.fetch_add(1, Ordering::Relaxed);
        }
        while link.recv().await.is_some() {}
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Seen {
    Retrying(Duration),
    Reconnected,
}

pub(crate) type Events = Arc<Mutex<Vec<(Instant, usize, Seen)>>>;

fn recording_sink(events: &Events, id: usize) -> wsup::driver::NoticeSink {
    let events = events.clone();
    Arc::new(move |notice: &Notice| {
        let seen = match notice {
            Notice::Retrying { delay, .. } => Seen::Retrying(*delay),
            Notice::Reconnected => Seen::Reconnected,
            _ => return,
        };
        let now = Instant::now();
        events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((now, id, seen));
    })
}

/// Starts `n` supervised idle connections to `url`, `batch` at a time (a burst of 10,000
/// SYNs overflows the server's accept backlog), each connected before the next batch.
pub(crate) async fn start_fleet(
    n: usize,
    url: &str,
    config: &Config,
    signals: &watch::Receiver<Option<Sig>>,
    events: Option<&Events>,
    batch: usize,
) -> Result<(Vec<tokio::task::JoinHandle<Outcome>>, Duration), String> {
    let transport = Transport::new(config.transport.clone()).map_err(|e| e.to_string())?;
    let ready = Arc::new(Ready::default());
    let mut handles = Vec::with_capacity(n);
    let start = Instant::now();
    let mut config = config.clone();
    config.url = url.parse().map_err(|e| format!("{e}"))?;
    for id in 0..n {
        let mut supervisor = Supervisor::new(config.clone())
            .signals(signals.clone())
            .jitter(Jitter::seeded(id as u64 + 1));
        supervisor = match events {
            Some(events) => supervisor.on_notice(recording_sink(events, id)),
            None => supervisor.on_notice(Arc::new(|_: &Notice| {})),
        };
        handles.push(tokio::spawn(supervisor.run_with_dialer(
            transport.clone(),
            Probe {
                ready: ready.clone(),
            },
        )));
        if ((id + 1) % batch == 0 || id + 1 == n)
            && !ready.wait_for(id + 1, Duration::from_secs(60)).await
        {
            return Err(format!(
                "only {} of {} connections came up within 60 s",
                ready.0.load(Ordering::Relaxed),
                id + 1
            ));
        }
    }
    Ok((handles, start.elapsed()))
}

pub(crate) async fn stop_fleet(
    handles: Vec<tokio::task::JoinHandle<Outcome>>,
    signals: &watch::Sender<Option<Sig>>,
) -> Duration {
    let start = Instant::now();
    signals.send_replace(Some(Sig::Terminate));
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    start.elapsed()
}

/// Waits for the next binary message (the echo of a probe or of a rate batch); false once
/// the supervisor has stopped.
pub(crate) async fn recv_binary(link: &mut Link) -> bool {
    while let Some(message) = link.recv().await {
        if message.is_binary() {
            return true;
        }
    }
    false
}
