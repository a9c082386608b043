//! (b) message rate: a supervised client against a bare tokio-tungstenite client.

use crate::fleet::{quiet_signals, recv_binary};
use crate::procs::spawn_wsup_serve;
use crate::report::{median, Report};
use crate::{Settings, MIB};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc as mpsc_async, oneshot};
use tokio_tungstenite::tungstenite::Message;
use wsup::backoff::Jitter;
use wsup::driver::Recorder;
use wsup::machine::Notice;
use wsup::report::CredentialKind;
use wsup::session::{Link, Outbound, Session};
use wsup::{Config, Outcome, Supervisor};

/// One batch of work for a rate client; the reply is how long it took.
#[derive(Clone, Copy, Debug)]
enum Batch {
    /// Send one message, wait for its echo, n times.
    RoundTrips(usize),
    /// Send n messages as fast as the client takes them while counting n echoes.
    OneWay(usize),
}

type Job = (Batch, oneshot::Sender<Duration>);

async fn next_binary<S>(rx: &mut S)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match rx.next().await {
            Some(Ok(Message::Binary(_))) => return,
            Some(Ok(_)) => continue,
            other => panic!("bare client: {other:?}"),
        }
    }
}

/// The baseline: a bare tokio-tungstenite client, one task, default settings. One-way
/// batches feed the socket (tungstenite batches writes up to its write buffer) and flush
/// once: the best case for a bare client.
async fn bare_client(url: String, payload: Bytes, mut jobs: mpsc_async::Receiver<Job>) {
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("bare client connects");
    let (mut tx, mut rx) = ws.split();
    for _ in 0..100 {
        tx.send(Message::Binary(payload.clone()))
            .await
            .expect("send");
        next_binary(&mut rx).await;
    }
    while let Some((batch, reply)) = jobs.recv().await {
        let start = Instant::now();
        match batch {
            Batch::RoundTrips(n) => {
                for _ in 0..n {
                    tx.send(Message::Binary(payload.clone()))
                        .await
                        .expect("send");
                    next_binary(&mut rx).await;
                }
            }
            Batch::OneWay(n) => {
                let send = async {
                    for _ in 0..n {
                        tx.feed(Message::Binary(payload.clone()))
                            .await
                            .expect("feed");
                    }
                    tx.flush().await.expect("flush");
                };
                let receive = async {
                    for _ in 0..n {
                        next_binary(&mut rx).await;
                    }
                };
                tokio::join!(send, receive);
            }
        }
        let _ = reply.send(start.elapsed());
    }
    let _ = tx.close().await;
}

/// The same batches as a wsup session.
struct RateSession {
    payload: Bytes,
    jobs: mpsc_async::Receiver<Job>,
}

impl Session for RateSession {
    async fn run(mut self, mut link: Link) {
        for _ in 0..100 {
            link.send(Message::Binary(self.payload.clone())).await;
            if !recv_binary(&mut link).await {
                return;
            }
        }
        while let Some((batch, reply)) = self.jobs.recv().await {
            let start = Instant::now();
            match batch {
                Batch::RoundTrips(n) => {
                    for _ in 0..n {
                        link.send(Message::Binary(self.payload.clone())).await;
                        if !recv_binary(&mut link).await {
                            return;
                        }
                    }
                }
                Batch::OneWay(n) => {
                    let outbound = link.outbound.clone();
                    let payload = self.payload.clone();
                    let send = async move {
                        for _ in 0..n {
                            let message = Outbound::from(Message::Binary(payload.clone()));
                            if outbound.send(message).await.is_err() {
                                return;
                            }
                        }
                    };
                    let receive = async {
                        for _ in 0..n {
                            if !recv_binary(&mut link).await {
                                return;
                            }
                        }
                    };
                    tokio::join!(send, receive);
                }
            }
            let _ = reply.send(start.elapsed());
        }
        // Returning drops the link: the supervisor closes with 1000 and ends.
    }
}

async fn supervised(url: String, session: RateSession) -> Outcome {
    supervised_recording(url, session, None).await
}

/// [`supervised`], recording every event into `record` (`--record`) when given.
async fn supervised_recording(
    url: String,
    session: RateSession,
    record: Option<&std::path::Path>,
) -> Outcome {
    let (_keep, signals) = quiet_signals();
    let mut supervisor = Supervisor::new(Config::new(url.parse().expect("url")))
        .signals(signals)
        .jitter(Jitter::seeded(1))
        .on_notice(Arc::new(|_: &Notice| {}));
    if let Some(path) = record {
        // No bound: the cost measured is that of recording every message.
        let recorder = Recorder::create(
            path,
            u64::MAX,
            &CredentialKind::None,
            Arc::new(|note: &str| eprintln!("rate: {note}")),
        )
        .expect("create the recording");
        supervisor = supervisor.record(recorder);
    }
    supervisor
        .run(session)
        .await
        .expect("default transport settings are valid")
}

fn size_name(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

const RATE_CLIENTS: [&str; 4] = ["bare", "wsup", "wsup_block_on", "wsup_record"];

/// Rates (per second) of each client for each batch kind: `[client][kind]` holds one
/// sample per repetition.
type RateSamples = Vec<[Vec<f64>; 2]>;

/// Three clients against the same echo server, alternating batch by batch so that load
/// elsewhere on the machine hits them alike: the bare client and a supervisor, each a
/// task on the runtime's workers, and a supervisor polled by `block_on` on the calling
/// thread, the shape of the `wsup` binary (its session is still a worker task).
async fn rate_size(url: String, size: usize, plan: (usize, usize), reps: usize) -> RateSamples {
    let payload = Bytes::from(vec![0x5Au8; size]);
    let (bare_tx, bare_rx) = mpsc_async::channel(1);
    let (wsup_tx, wsup_rx) = mpsc_async::channel(1);
    let (main_tx, main_rx) = mpsc_async::channel(1);
    let (record_tx, record_rx) = mpsc_async::channel(1);
    let bare = tokio::spawn(bare_client(url.clone(), payload.clone(), bare_rx));
    // `--record`'s cost: a supervisor like `wsup`, recording every event to a file.
    let record_dir = tempfile::tempdir().expect("a temp dir for the recording");
    let record_path = record_dir.path().join("rate.jsonl");
    let recording = {
        let (url, payload, path) = (url.clone(), payload.clone(), record_path.clone());
        tokio::spawn(async move {
            let session = RateSession {
                payload,
                jobs: record_rx,
            };
            supervised_recording(url, session, Some(&path)).await
        })
    };
    let wsup = tokio::spawn(supervised(
        url.clone(),
        RateSession {
            payload: payload.clone(),
            jobs: wsup_rx,
        },
    ));
    let main = supervised(
        url.clone(),
        RateSession {
            payload,
            jobs: main_rx,
        },
    );
    let coordinate = async move {
        let clients = [bare_tx, wsup_tx, main_tx, record_tx];
        let mut samples: RateSamples = vec![[Vec::new(), Vec::new()]; clients.len()];
        for rep in 0..reps {
            for (kind, batch) in [Batch::RoundTrips(plan.0), Batch::OneWay(plan.1)]
                .into_iter()
                .enumerate()
            {
                for k in 0..clients.len() {
                    // Rotate who goes first.
                    let i = (k + rep) % clients.len();
                    let (reply, took) = oneshot::channel();
                    if clients[i].send((batch, reply)).await.is_err() {
                        continue;
                    }
                    let Ok(took) = took.await else { continue };
                    let n = match batch {
                        Batch::RoundTrips(n) | Batch::OneWay(n) => n,
                    };
                    samples[i][kind].push(n as f64 / took.as_secs_f64());
                }
            }
        }
        samples
    };
    let (_, samples) = tokio::join!(main, coordinate);
    let _ = bare.await;
    let _ = wsup.await;
    let _ = recording.await;
    let recorded = std::fs::metadata(&record_path).map_or(0, |m| m.len());
    eprintln!(
        "rate {}: the recording took {:.1} MiB",
        size_name(size),
        recorded as f64 / MIB
    );
    samples
}

pub(crate) fn bench_rate(settings: &Settings, rt: &tokio::runtime::Runtime, report: &mut Report) {
    let (_server, addr) = spawn_wsup_serve("echo");
    let url = format!("ws://{addr}/");
    let mut data = Vec::new();
    for &(size, round_trips, one_way) in &settings.rate_sizes {
        let samples = rt.block_on(rate_size(
            url.clone(),
            size,
            (round_trips, one_way),
            settings.rate_reps,
        ));
        let med: Vec<[f64; 2]> = samples
            .iter()
            .map(|s| [median(&mut s[0].clone()), median(&mut s[1].clone())])
            .collect();
        eprintln!(
            "rate {}: round trips/s bare {:.0} wsup {:.0} block_on {:.0}; one-way msgs/s bare {:.0} wsup {:.0} block_on {:.0}",
            size_name(size),
            med[0][0], med[1][0], med[2][0], med[0][1], med[1][1], med[2][1]
        );
        let (bare, wsup, main) = (med[0], med[1], med[2]);
        // The ratio is the median of per-repetition ratios: each repetition runs the
        // clients back to back, so a slow phase of the machine (the rates are bimodal on
        // a shared 2-core machine) hits both sides of a pair.
        let paired = |client: usize, kind: usize| {
            let mut ratios: Vec<f64> = samples[client][kind]
                .iter()
                .zip(&samples[0][kind])
                .map(|(w, b)| w / b)
                .collect();
            median(&mut ratios)
        };
        for (kind, what) in [(0, "round trips/s"), (1, "one-way msgs/s (echoes counted)")] {
            let r = paired(1, kind);
            report.row(
                "rate",
                format!(
                    "{what}, {} binary, {} batches",
                    size_name(size),
                    samples[0][kind].len()
                ),
                format!("{:.0}/s", wsup[kind]),
                format!("{:.0}/s bare", bare[kind]),
                Some(r),
                // Issue #16: at least 0.95× the bare client.
                "≥ 0.95×",
                Some(r >= 0.95),
            );
        }
        report.row(
            "rate",
            format!(
                "{}, supervisor polled in `block_on` (for reference): round trips/s; one-way msgs/s",
                size_name(size)
            ),
            format!(
                "{:.0}/s ({:.2}×); {:.0}/s ({:.2}×)",
                main[0],
                paired(2, 0),
                main[1],
                paired(2, 1)
            ),
            format!("{:.0}/s; {:.0}/s bare", bare[0], bare[1]),
            None,
            "(information)",
            None,
        );
        // The recording's cost against the same supervisor without one, both measured
        // in the same repetitions (interleaved with the others).
        let against_wsup = |kind: usize| {
            let mut ratios: Vec<f64> = samples[3][kind]
                .iter()
                .zip(&samples[1][kind])
                .map(|(r, w)| r / w)
                .collect();
            median(&mut ratios)
        };
        let record = med[3];
        for (kind, what) in [(0, "round trips/s"), (1, "one-way msgs/s")] {
            let r = against_wsup(kind);
            report.row(
                "rate",
                format!(
                    "{what} with --record (every event to a file), {}",
                    size_name(size)
                ),
                format!("{:.0}/s", record[kind]),
                format!("{:.0}/s wsup", wsup[kind]),
                Some(r),
                "≥ 0.95×",
                Some(r >= 0.95),
            );
        }
        let per_client: serde_json::Map<String, Value> = RATE_CLIENTS
            .iter()
            .zip(&samples)
            .map(|(name, s)| {
                (
                    (*name).to_owned(),
                    json!({"round_trips_per_s": s[0], "one_way_per_s": s[1]}),
                )
            })
            .collect();
        data.push(json!({
            "size": size,
            "round_trips_per_batch": round_trips,
            "one_way_per_batch": one_way,
            "clients": per_client,
        }));
    }
    report.data.insert("rate".into(), Value::Array(data));
}
