//! Micro-benchmarks of the pure parts: machine dispatch per event, classification,
//! backoff. Run with `cargo bench --bench machine`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use std::hint::black_box;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use wsup::backoff::{Backoff, BackoffPolicy, Jitter};
use wsup::classify::{ClassifyRules, Failure};
use wsup::machine::{Event, Machine, MachineConfig, Payload, TimerKind};

fn connected_machine() -> Machine {
    let mut m = Machine::new(
        MachineConfig::default(),
        Backoff::new(BackoffPolicy::default(), Jitter::seeded(1)),
    );
    m.handle(Event::Start);
    m.handle(Event::DialSucceeded);
    m
}

/// The payload of the frame benchmarks (a clone shares the bytes: no copy).
fn frame_payload() -> bytes::Bytes {
    static PAYLOAD: std::sync::OnceLock<bytes::Bytes> = std::sync::OnceLock::new();
    PAYLOAD.get_or_init(|| vec![0u8; 64].into()).clone()
}

fn machine_dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("machine");
    // The data path: one received frame → re-arm liveness + deliver.
    let frame = Event::Received(Payload::Binary(frame_payload()));
    let mut m = connected_machine();
    let mut effects = Vec::with_capacity(8);
    group.bench_function("frame_event", |b| {
        b.iter(|| {
            effects.clear();
            m.handle_into(black_box(&frame), &mut effects);
        })
    });
    // The baseline in the same run: what the driver pays anyway to hand that frame to
    // the session (a bounded tokio channel, send and receive, no waiting).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(64);
    group.bench_function("baseline_channel_handoff", |b| {
        b.iter(|| {
            tx.try_send(black_box(Message::Binary(frame_payload())))
                .expect("room");
            black_box(rx.try_recv().expect("sent"))
        })
    });
    let ping = Event::Timer(TimerKind::Ping);
    group.bench_function("ping_timer_event", |b| {
        b.iter(|| {
            effects.clear();
            m.handle_into(black_box(&ping), &mut effects);
        })
    });
    // A whole failure cycle: closed 1011 → backoff → timer → dial → connected.
    let closed = Event::Closed(Failure::Close {
        code: 1011,
        reason: "No shell-agent listening for this cluster".into(),
    });
    group.bench_function("reconnect_cycle_4_events", |b| {
        b.iter_batched(
            connected_machine,
            |mut m| {
                let mut effects = Vec::with_capacity(8);
                for e in [
                    &closed,
                    &Event::Timer(TimerKind::Backoff),
                    &Event::DialSucceeded,
                    &Event::Timer(TimerKind::Stable),
                ] {
                    m.handle_into(e, &mut effects);
                }
                effects
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn classify(c: &mut Criterion) {
    let rules = ClassifyRules {
        retry_close_codes: vec![4001, 4002],
    };
    let permission = Failure::Close {
        code: 1007,
        reason: "Invalid permission: Not authorized to websocket-gateway SHELL_EXEC".into(),
    };
    let http = Failure::Http {
        status: 503,
        retry_after: Some(Duration::from_secs(2)),
    };
    c.bench_function("classify/close_1007_permission", |b| {
        b.iter(|| rules.classify(black_box(&permission)))
    });
    c.bench_function("classify/http_503", |b| {
        b.iter(|| rules.classify(black_box(&http)))
    });
}

fn backoff(c: &mut Criterion) {
    let mut backoff = Backoff::new(BackoffPolicy::default(), Jitter::seeded(7));
    let mut attempt = 0u32;
    c.bench_function("backoff/delay", |b| {
        b.iter(|| {
            attempt = attempt.wrapping_add(1) % 12;
            backoff.delay(black_box(attempt), None)
        })
    });
}

criterion_group!(benches, machine_dispatch, classify, backoff);
criterion_main!(benches);
