//! The recording format shared by `--record` (the driver's recorder,
//! `driver/record.rs`) and `wsup replay` (`replay.rs`): JSON lines.
//!
//! ```text
//! {"wsup":"0.1.0","format":1,"part":1,"config":{…},"seed":123,"credentials":{"kind":"file",…}}
//! {"t":12,"event":"start","creds":{"refreshable":true,"expiring_soon":false},"effects":["dial"]}
//! {"t":981,"event":{"received":{"kind":"text","len":5}},"effects":[…,{"deliver":{"kind":"text","len":5}}]}
//! {"t":40211,"end":{"outcome":"done","exit_code":0}}
//! ```
//!
//! The first line is the header (the machine's configuration and the jitter seed: what a
//! fresh machine needs to behave the same); then one line per event the driver fed the
//! machine, with the two inputs it set beside the event (the credentials' state and
//! whether writes were pending) and the effects the machine returned; then, if the
//! session ended while recording, its outcome. `t` is microseconds since the recording
//! began, on a monotonic clock.
//!
//! Payloads are never written: a message is its kind and length (`PayloadRecord`), in
//! events and in effects alike, and a replay compares effects through the same lossy
//! form. Tokens never reach the machine, so they cannot reach a recording.

use crate::backoff::BackoffPolicy;
use crate::classify::{ClassifyRules, Failure};
use crate::machine::{
    CredentialState, Effect, Event, MachineConfig, Notice, Outcome, Payload, RefreshReason, Sig,
    Text, TimerKind,
};
use crate::report::CredentialKind;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The version of this format, in every header: a replay refuses a newer one.
pub const FORMAT: u32 = 1;

/// The first line of a recording (and of its continuation after a rotation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The version of wsup that recorded.
    pub wsup: String,
    pub format: u32,
    /// 1 for the file that starts with the session; 2 for the one that continues it
    /// after a rotation (the first part is then in `FILE.1`).
    pub part: u32,
    pub config: ConfigRecord,
    /// The jitter seed (`None`: the source had none, delays cannot be reproduced).
    pub seed: Option<u64>,
    pub credentials: CredentialRecord,
}

/// The machine's configuration and the backoff policy, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigRecord {
    pub retry_close_codes: Vec<u16>,
    pub max_retries: Option<u32>,
    #[serde(with = "nanos")]
    pub ping_interval: Duration,
    #[serde(with = "nanos")]
    pub pong_timeout: Duration,
    #[serde(with = "nanos")]
    pub stable_after: Duration,
    #[serde(with = "nanos")]
    pub close_grace: Duration,
    #[serde(with = "nanos")]
    pub linger: Duration,
    pub redial_after_connected: bool,
    #[serde(with = "nanos")]
    pub backoff_initial: Duration,
    /// Written as Rust prints an `f64` (the shortest text that reads back to the same
    /// bits), so the replayed delays are the recorded ones to the nanosecond.
    pub backoff_multiplier: String,
    #[serde(with = "nanos")]
    pub backoff_max: Duration,
}

impl ConfigRecord {
    pub fn new(machine: &MachineConfig, backoff: &BackoffPolicy) -> Self {
        ConfigRecord {
            retry_close_codes: machine.rules.retry_close_codes.clone(),
            max_retries: machine.max_retries,
            ping_interval: machine.ping_interval,
            pong_timeout: machine.pong_timeout,
            stable_after: machine.stable_after,
            close_grace: machine.close_grace,
            linger: machine.linger,
            redial_after_connected: machine.redial_after_connected,
            backoff_initial: backoff.initial,
            backoff_multiplier: backoff.multiplier.to_string(),
            backoff_max: backoff.max,
        }
    }

    /// The configuration to replay with; `Err` names a multiplier that is not a number.
    pub fn to_config(&self) -> Result<(MachineConfig, BackoffPolicy), String> {
        let multiplier: f64 = self.backoff_multiplier.parse().map_err(|_| {
            format!(
                "backoff_multiplier {:?} is not a number",
                self.backoff_multiplier
            )
        })?;
        let machine = MachineConfig {
            rules: ClassifyRules {
                retry_close_codes: self.retry_close_codes.clone(),
            },
            max_retries: self.max_retries,
            ping_interval: self.ping_interval,
            pong_timeout: self.pong_timeout,
            stable_after: self.stable_after,
            close_grace: self.close_grace,
            linger: self.linger,
            redial_after_connected: self.redial_after_connected,
        };
        let backoff = BackoffPolicy {
            initial: self.backoff_initial,
            multiplier,
            max: self.backoff_max,
        };
        Ok((machine, backoff))
    }
}

/// Which kind of credentials the session had (never a token): the final message's
/// advice depends on it. The variable's name and the file's path are not secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CredentialRecord {
    None,
    Env { var: String },
    File { path: String },
    Refreshable,
    Header,
}

impl From<&CredentialKind> for CredentialRecord {
    fn from(kind: &CredentialKind) -> Self {
        match kind {
            CredentialKind::None => CredentialRecord::None,
            CredentialKind::StaticEnv(var) => CredentialRecord::Env { var: var.clone() },
            CredentialKind::File(path) => CredentialRecord::File { path: path.clone() },
            CredentialKind::Refreshable => CredentialRecord::Refreshable,
            CredentialKind::Header => CredentialRecord::Header,
        }
    }
}

impl From<&CredentialRecord> for CredentialKind {
    fn from(record: &CredentialRecord) -> Self {
        match record {
            CredentialRecord::None => CredentialKind::None,
            CredentialRecord::Env { var } => CredentialKind::StaticEnv(var.clone()),
            CredentialRecord::File { path } => CredentialKind::File(path.clone()),
            CredentialRecord::Refreshable => CredentialKind::Refreshable,
            CredentialRecord::Header => CredentialKind::Header,
        }
    }
}

/// A message without its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadRecord {
    pub kind: PayloadKind,
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadKind {
    Text,
    Binary,
}

impl From<&Payload> for PayloadRecord {
    fn from(payload: &Payload) -> Self {
        match payload {
            Payload::Text(text) => PayloadRecord {
                kind: PayloadKind::Text,
                len: text.len(),
            },
            Payload::Binary(bytes) => PayloadRecord {
                kind: PayloadKind::Binary,
                len: bytes.len(),
            },
        }
    }
}

impl PayloadRecord {
    /// A payload of the recorded kind and length, all zero bytes (valid UTF-8): the
    /// machine passes payloads on without looking inside.
    pub fn zeroed(self) -> Payload {
        let bytes = Bytes::from(vec![0u8; self.len]);
        match self.kind {
            PayloadKind::Binary => Payload::Binary(bytes),
            // SAFETY: zero bytes are valid UTF-8.
            PayloadKind::Text => Payload::Text(unsafe { Text::from_utf8_unchecked(bytes) }),
        }
    }
}

/// An [`Event`], payloads as [`PayloadRecord`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventRecord {
    Start,
    DialSucceeded,
    DialFailed(Failure),
    Received(PayloadRecord),
    PingReceived,
    PongReceived,
    Closed(Failure),
    Timer(TimerKind),
    RefreshDone(Result<(), Failure>),
    Signal(Sig),
    UserInterrupt,
    LocalEof,
    InputRejected(Failure),
    LocalGone,
    OutputFailed(String),
    ReadsPaused,
    ReadsResumed,
}

impl From<&Event> for EventRecord {
    fn from(event: &Event) -> Self {
        match event {
            Event::Start => EventRecord::Start,
            Event::DialSucceeded => EventRecord::DialSucceeded,
            Event::DialFailed(f) => EventRecord::DialFailed(f.clone()),
            Event::Received(p) => EventRecord::Received(p.into()),
            Event::PingReceived => EventRecord::PingReceived,
            Event::PongReceived => EventRecord::PongReceived,
            Event::Closed(f) => EventRecord::Closed(f.clone()),
            Event::Timer(kind) => EventRecord::Timer(*kind),
            Event::RefreshDone(result) => EventRecord::RefreshDone(result.clone()),
            Event::Signal(sig) => EventRecord::Signal(*sig),
            Event::UserInterrupt => EventRecord::UserInterrupt,
            Event::LocalEof => EventRecord::LocalEof,
            Event::InputRejected(f) => EventRecord::InputRejected(f.clone()),
            Event::LocalGone => EventRecord::LocalGone,
            Event::OutputFailed(e) => EventRecord::OutputFailed(e.clone()),
            Event::ReadsPaused => EventRecord::ReadsPaused,
            Event::ReadsResumed => EventRecord::ReadsResumed,
        }
    }
}

impl EventRecord {
    /// The event to feed a replaying machine.
    pub fn to_event(&self) -> Event {
        match self {
            EventRecord::Start => Event::Start,
            EventRecord::DialSucceeded => Event::DialSucceeded,
            EventRecord::DialFailed(f) => Event::DialFailed(f.clone()),
            EventRecord::Received(p) => Event::Received(p.zeroed()),
            EventRecord::PingReceived => Event::PingReceived,
            EventRecord::PongReceived => Event::PongReceived,
            EventRecord::Closed(f) => Event::Closed(f.clone()),
            EventRecord::Timer(kind) => Event::Timer(*kind),
            EventRecord::RefreshDone(result) => Event::RefreshDone(result.clone()),
            EventRecord::Signal(sig) => Event::Signal(*sig),
            EventRecord::UserInterrupt => Event::UserInterrupt,
            EventRecord::LocalEof => Event::LocalEof,
            EventRecord::InputRejected(f) => Event::InputRejected(f.clone()),
            EventRecord::LocalGone => Event::LocalGone,
            EventRecord::OutputFailed(e) => Event::OutputFailed(e.clone()),
            EventRecord::ReadsPaused => Event::ReadsPaused,
            EventRecord::ReadsResumed => Event::ReadsResumed,
        }
    }
}

/// An [`Effect`], payloads as [`PayloadRecord`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectRecord {
    Dial,
    Send(PayloadRecord),
    SendPing,
    Deliver(PayloadRecord),
    Close(u16, String),
    StartTimer(TimerKind, #[serde(with = "nanos")] Duration),
    CancelTimer(TimerKind),
    Refresh(RefreshReason),
    Notify(Notice),
    Exit(Outcome),
}

impl From<&Effect> for EffectRecord {
    fn from(effect: &Effect) -> Self {
        match effect {
            Effect::Dial => EffectRecord::Dial,
            Effect::Send(p) => EffectRecord::Send(p.into()),
            Effect::SendPing => EffectRecord::SendPing,
            Effect::Deliver(p) => EffectRecord::Deliver(p.into()),
            Effect::Close(code, reason) => EffectRecord::Close(*code, reason.clone()),
            Effect::StartTimer(kind, after) => EffectRecord::StartTimer(*kind, *after),
            Effect::CancelTimer(kind) => EffectRecord::CancelTimer(*kind),
            Effect::Refresh(reason) => EffectRecord::Refresh(*reason),
            Effect::Notify(notice) => EffectRecord::Notify(notice.clone()),
            Effect::Exit(outcome) => EffectRecord::Exit(outcome.clone()),
        }
    }
}

/// What the machine knew about the credentials when the event came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredsRecord {
    pub refreshable: bool,
    pub expiring_soon: bool,
}

impl From<CredentialState> for CredsRecord {
    fn from(state: CredentialState) -> Self {
        CredsRecord {
            refreshable: state.refreshable,
            expiring_soon: state.expiring_soon,
        }
    }
}

impl From<CredsRecord> for CredentialState {
    fn from(record: CredsRecord) -> Self {
        CredentialState {
            refreshable: record.refreshable,
            expiring_soon: record.expiring_soon,
        }
    }
}

/// One event line, as read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Microseconds since the recording began.
    pub t: u64,
    pub event: EventRecord,
    /// Set when the driver told the machine the credentials' state before this event
    /// (it does before every event but the data path's); otherwise the last one holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds: Option<CredsRecord>,
    /// Messages or our close frame were waiting to be written.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pending: bool,
    pub effects: Vec<EffectRecord>,
}

/// One event line, as written: borrows the recorder's buffers, so that recording a
/// frame allocates nothing. Serializes exactly as [`Step`].
#[derive(Serialize)]
pub struct StepRef<'a> {
    pub t: u64,
    pub event: &'a EventRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds: Option<CredsRecord>,
    #[serde(skip_serializing_if = "is_false")]
    pub pending: bool,
    pub effects: &'a [EffectRecord],
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The last line: how the session ended (after the driver's own end, so a drain
/// timeout shows here as lost output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndLine {
    pub t: u64,
    pub end: End,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct End {
    pub outcome: Outcome,
    pub exit_code: u8,
}

/// Any line of a recording.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Line {
    Header(Box<Header>),
    Step(Step),
    End(EndLine),
}

/// Writes the line of a data-path event (a message, a ping or pong, a read pause) whose
/// effects carry no text, exactly as [`StepRef`] serializes it, without serde: recording
/// every frame must cost next to nothing (issue #15 asks for under 5 % of the message
/// rate). `false`: not such an event, nothing written; use [`StepRef`].
pub fn write_data_step(
    buffer: &mut Vec<u8>,
    t: u64,
    event: &Event,
    pending: bool,
    effects: &[Effect],
) -> bool {
    let simple = effects.iter().all(|effect| {
        matches!(
            effect,
            Effect::Dial
                | Effect::Send(_)
                | Effect::SendPing
                | Effect::Deliver(_)
                | Effect::StartTimer(..)
                | Effect::CancelTimer(_)
        )
    });
    let event_json: &[u8] = match event {
        Event::Received(_) => b"",
        Event::PingReceived => b"\"ping_received\"",
        Event::PongReceived => b"\"pong_received\"",
        Event::ReadsPaused => b"\"reads_paused\"",
        Event::ReadsResumed => b"\"reads_resumed\"",
        _ => return false,
    };
    if !simple {
        return false;
    }
    buffer.extend_from_slice(b"{\"t\":");
    write_u64(buffer, t);
    buffer.extend_from_slice(b",\"event\":");
    match event {
        Event::Received(payload) => {
            buffer.extend_from_slice(b"{\"received\":");
            write_payload(buffer, payload);
            buffer.push(b'}');
        }
        _ => buffer.extend_from_slice(event_json),
    }
    if pending {
        buffer.extend_from_slice(b",\"pending\":true");
    }
    buffer.extend_from_slice(b",\"effects\":[");
    for (i, effect) in effects.iter().enumerate() {
        if i > 0 {
            buffer.push(b',');
        }
        match effect {
            Effect::Dial => buffer.extend_from_slice(b"\"dial\""),
            Effect::SendPing => buffer.extend_from_slice(b"\"send_ping\""),
            Effect::Send(payload) => {
                buffer.extend_from_slice(b"{\"send\":");
                write_payload(buffer, payload);
                buffer.push(b'}');
            }
            Effect::Deliver(payload) => {
                buffer.extend_from_slice(b"{\"deliver\":");
                write_payload(buffer, payload);
                buffer.push(b'}');
            }
            Effect::StartTimer(kind, after) => {
                buffer.extend_from_slice(b"{\"start_timer\":[\"");
                buffer.extend_from_slice(timer_name(*kind).as_bytes());
                buffer.extend_from_slice(b"\",");
                write_u64(buffer, u64::try_from(after.as_nanos()).unwrap_or(u64::MAX));
                buffer.extend_from_slice(b"]}");
            }
            Effect::CancelTimer(kind) => {
                buffer.extend_from_slice(b"{\"cancel_timer\":\"");
                buffer.extend_from_slice(timer_name(*kind).as_bytes());
                buffer.extend_from_slice(b"\"}");
            }
            // Not simple: excluded above.
            Effect::Close(..) | Effect::Refresh(_) | Effect::Notify(_) | Effect::Exit(_) => {}
        }
    }
    buffer.extend_from_slice(b"]}");
    true
}

/// A timer's name as serde writes [`TimerKind`] (snake case).
fn timer_name(kind: TimerKind) -> &'static str {
    match kind {
        TimerKind::Backoff => "backoff",
        TimerKind::Ping => "ping",
        TimerKind::Liveness => "liveness",
        TimerKind::Stable => "stable",
        TimerKind::CloseGrace => "close_grace",
        TimerKind::Linger => "linger",
    }
}

fn write_payload(buffer: &mut Vec<u8>, payload: &Payload) {
    let (kind, len): (&[u8], usize) = match payload {
        Payload::Text(text) => (b"{\"kind\":\"text\",\"len\":", text.len()),
        Payload::Binary(bytes) => (b"{\"kind\":\"binary\",\"len\":", bytes.len()),
    };
    buffer.extend_from_slice(kind);
    write_u64(buffer, len as u64);
    buffer.push(b'}');
}

/// Decimal digits of `n`.
fn write_u64(buffer: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buffer.extend_from_slice(&digits[at..]);
}

/// Durations as whole nanoseconds: exact, and shorter than serde's `{secs, nanos}`.
mod nanos {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        // Every duration the machine handles is below a day; saturate rather than fail.
        serializer.serialize_u64(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::NetworkKind;

    fn round_trip(step: &Step) -> Step {
        let line = serde_json::to_string(&StepRef {
            t: step.t,
            event: &step.event,
            creds: step.creds,
            pending: step.pending,
            effects: &step.effects,
        })
        .unwrap();
        match serde_json::from_str::<Line>(&line).unwrap() {
            Line::Step(read) => read,
            other => panic!("{line} read back as {other:?}"),
        }
    }

    #[test]
    fn a_step_reads_back_as_written() {
        let step = Step {
            t: 42,
            event: EventRecord::DialFailed(Failure::Http {
                status: 503,
                retry_after: Some(Duration::from_secs(1)),
            }),
            creds: Some(CredsRecord {
                refreshable: true,
                expiring_soon: false,
            }),
            pending: true,
            effects: vec![
                EffectRecord::StartTimer(TimerKind::Backoff, Duration::from_nanos(123_456_789)),
                EffectRecord::Notify(Notice::Retrying {
                    failure: Failure::Network {
                        kind: NetworkKind::Refused,
                        detail: "refused".into(),
                    },
                    delay: Duration::from_millis(1500),
                    attempt: 2,
                    max_retries: None,
                }),
                EffectRecord::Exit(Outcome::Done),
            ],
        };
        assert_eq!(round_trip(&step), step);
    }

    #[test]
    fn payloads_are_recorded_as_kind_and_length_only() {
        let event = Event::Received(Payload::Text(Text::from("secret token in a frame")));
        let line = serde_json::to_string(&EventRecord::from(&event)).unwrap();
        assert_eq!(line, r#"{"received":{"kind":"text","len":23}}"#);
        let effect = Effect::Send(Payload::Binary(Bytes::from_static(b"hunter2")));
        let line = serde_json::to_string(&EffectRecord::from(&effect)).unwrap();
        assert!(!line.contains("hunter2"), "{line}");
    }

    #[test]
    fn data_lines_are_written_as_serde_writes_them() {
        let binary = Payload::Binary(Bytes::from_static(&[7; 300]));
        let text = Payload::Text(Text::from("héllo"));
        let cases: Vec<(Event, bool, Vec<Effect>)> = vec![
            (
                Event::Received(binary.clone()),
                false,
                vec![
                    Effect::StartTimer(TimerKind::Liveness, Duration::from_secs(40)),
                    Effect::Deliver(binary.clone()),
                ],
            ),
            (
                Event::Received(text.clone()),
                true,
                vec![Effect::Deliver(text.clone())],
            ),
            (Event::PingReceived, false, vec![]),
            (
                Event::PongReceived,
                false,
                vec![Effect::StartTimer(
                    TimerKind::Liveness,
                    Duration::from_nanos(1),
                )],
            ),
            (
                Event::ReadsPaused,
                true,
                vec![Effect::CancelTimer(TimerKind::Liveness)],
            ),
            (
                Event::ReadsResumed,
                false,
                vec![
                    Effect::SendPing,
                    Effect::Send(text),
                    Effect::Dial,
                    Effect::StartTimer(TimerKind::CloseGrace, Duration::ZERO),
                ],
            ),
        ];
        for (t, (event, pending, effects)) in [0u64, 9, 10, 1_234_567_890, u64::MAX]
            .into_iter()
            .zip(cases)
        {
            let mut fast = Vec::new();
            assert!(write_data_step(&mut fast, t, &event, pending, &effects));
            let records: Vec<EffectRecord> = effects.iter().map(EffectRecord::from).collect();
            let slow = serde_json::to_vec(&StepRef {
                t,
                event: &EventRecord::from(&event),
                creds: None,
                pending,
                effects: &records,
            })
            .unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(slow).unwrap()
            );
        }
        let mut untouched = Vec::new();
        assert!(!write_data_step(
            &mut untouched,
            1,
            &Event::Start,
            false,
            &[]
        ));
        assert!(!write_data_step(
            &mut untouched,
            1,
            &Event::PingReceived,
            false,
            &[Effect::Close(1000, String::new())]
        ));
        assert!(untouched.is_empty());
    }

    #[test]
    fn the_configuration_reads_back_exactly() {
        let machine = MachineConfig {
            max_retries: Some(3),
            ..MachineConfig::default()
        };
        let backoff = BackoffPolicy {
            multiplier: 1.1,
            ..BackoffPolicy::default()
        };
        let record = ConfigRecord::new(&machine, &backoff);
        let line = serde_json::to_string(&record).unwrap();
        let read: ConfigRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(read.to_config().unwrap(), (machine, backoff));
    }
}
