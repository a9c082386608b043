//! `wsup replay FILE`: re-runs a recorded session (`--record`, format in
//! [`crate::record`]) through today's machine.
//!
//! A fresh [`Machine`] gets the recorded configuration and jitter seed; each recorded
//! event is fed with the inputs the driver had set beside it, under a virtual clock (the
//! recorded times: nothing waits, hours replay in milliseconds). The transitions are
//! printed as `-v` prints them, each with its recorded time, and every step's effects are
//! compared with the recorded ones: the first difference stops the replay with both
//! sides printed (exit 1). A release is checked against recorded incidents with
//! `wsup replay incident.jsonl && echo same`.
//!
//! The transitions are the machine's own `wsup::machine` trace events (the ones `-v`
//! prints), caught by a tracing layer for the duration of the replay.

use crate::backoff::{Backoff, Jitter};
use crate::driver::rotated_path;
use crate::machine::Machine;
use crate::record::{EffectRecord, EndLine, EventRecord, Header, Line, Step, FORMAT};
use crate::report::{self, CredentialKind};
pub use crate::timeline::Transition;
use crate::transport::MAX_MESSAGE_SIZE;
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// How `wsup replay` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplayFormat {
    /// The lines `-v` prints, each after its recorded time.
    Text,
    /// One JSON object per transition, then one for the result.
    Json,
}

/// A recording, read back.
#[derive(Debug, Clone)]
pub struct Recording {
    pub header: Header,
    pub steps: Vec<Step>,
    /// How the session ended, if it ended while recording.
    pub end: Option<EndLine>,
    /// What the reader skipped or joined, said before the replay.
    pub notes: Vec<String>,
}

/// Why a recording cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read (exit 2).
    #[error("cannot read {path}: {error}")]
    Unreadable { path: String, error: String },
    /// It is not a recording wsup can replay (exit 65).
    #[error("{0}")]
    Malformed(String),
}

impl LoadError {
    pub fn exit_code(&self) -> u8 {
        match self {
            LoadError::Unreadable { .. } => crate::exit::USAGE,
            LoadError::Malformed(_) => crate::exit::DATA,
        }
    }
}

/// One part of a recording: its header, steps and end.
fn read_part(path: &Path, notes: &mut Vec<String>) -> Result<Recording, LoadError> {
    let unreadable = |error: String| LoadError::Unreadable {
        path: path.display().to_string(),
        error,
    };
    // A recording is a file `--record` wrote: `/dev/zero` or a FIFO would be read without
    // end (and kept in memory), so only a regular file is read.
    let metadata = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?;
    if !metadata.is_file() {
        return Err(unreadable(
            "not a regular file (a recording is a file written by --record)".to_string(),
        ));
    }
    let text = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
    let text = String::from_utf8_lossy(&text);
    let shown = path.display();
    let mut lines = text.split_inclusive('\n').enumerate().peekable();
    let mut header = None;
    let mut steps = Vec::new();
    let mut end = None;
    while let Some((index, line)) = lines.next() {
        let number = index + 1;
        let complete = line.ends_with('\n');
        let parsed = serde_json::from_str::<Line>(line.trim_end());
        let line = match parsed {
            Ok(line) => line,
            // Only the last line can be cut short (a kill, a crash, a full disk).
            Err(_) if !complete && lines.peek().is_none() => {
                notes.push(format!(
                    "{shown}: line {number} was cut short (the recording stopped mid-line) and is ignored"
                ));
                break;
            }
            Err(e) if header.is_none() => {
                return Err(LoadError::Malformed(format!(
                    "{shown} is not a wsup recording (line {number}: {e})"
                )))
            }
            Err(e) => {
                return Err(LoadError::Malformed(format!(
                    "{shown}: line {number} is not a recorded event: {e}"
                )))
            }
        };
        match (line, &header) {
            (Line::Header(read), None) => {
                if read.format > FORMAT {
                    return Err(LoadError::Malformed(format!(
                        "{shown} was recorded by wsup {} in format {}; this wsup reads format {FORMAT}",
                        read.wsup, read.format
                    )));
                }
                header = Some(*read);
            }
            (_, None) => {
                return Err(LoadError::Malformed(format!(
                    "{shown} is not a wsup recording (line 1 is not its header)"
                )))
            }
            (Line::Header(_), Some(_)) => {
                return Err(LoadError::Malformed(format!(
                    "{shown}: line {number} is a second header"
                )))
            }
            (Line::Step(step), Some(_)) if end.is_none() => {
                // The replay feeds a message of the recorded length: no more than a
                // connection ever takes, whatever the file says.
                if let EventRecord::Received(payload) = &step.event {
                    if payload.len > MAX_MESSAGE_SIZE {
                        return Err(LoadError::Malformed(format!(
                            "{shown}: line {number} records a message of {} bytes, over the {MAX_MESSAGE_SIZE} a connection takes",
                            payload.len
                        )));
                    }
                }
                steps.push(step)
            }
            (Line::End(line), Some(_)) if end.is_none() => end = Some(line),
            (_, Some(_)) => {
                return Err(LoadError::Malformed(format!(
                    "{shown}: line {number} comes after the session's end"
                )))
            }
        }
    }
    let header = header
        .ok_or_else(|| LoadError::Malformed(format!("{shown} is empty: not a wsup recording")))?;
    Ok(Recording {
        header,
        steps,
        end,
        notes: Vec::new(),
    })
}

/// Reads a recording; a continuation after a rotation (`part: 2`) is joined to its
/// beginning in `FILE.1`.
pub fn load(path: &Path) -> Result<Recording, LoadError> {
    let mut notes = Vec::new();
    let mut recording = read_part(path, &mut notes)?;
    if recording.header.part > 1 {
        let first_path = rotated_path(path);
        let first = read_part(&first_path, &mut notes).map_err(|e| {
            LoadError::Malformed(format!(
                "{} continues a recording whose beginning was {} ({e}): a replay needs the session from its start",
                path.display(),
                first_path.display()
            ))
        })?;
        if first.header.part != 1 || first.header.config != recording.header.config {
            return Err(LoadError::Malformed(format!(
                "{} is not the beginning of {}",
                first_path.display(),
                path.display()
            )));
        }
        notes.push(format!(
            "{} was rotated: replaying {} first",
            path.display(),
            first_path.display()
        ));
        let mut steps = first.steps;
        steps.append(&mut recording.steps);
        recording.steps = steps;
    }
    recording.notes = notes;
    Ok(recording)
}

/// The first step whose effects differ from the recording's.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// 0-based index of the step.
    pub step: usize,
    pub t: u64,
    pub event: serde_json::Value,
    pub recorded: Vec<EffectRecord>,
    pub replayed: Vec<EffectRecord>,
}

/// What a replay found.
#[derive(Debug, Clone)]
pub struct Replayed {
    pub transitions: Vec<Transition>,
    /// What the machine's notices said, at their times (text output only).
    pub notices: Vec<(u64, usize, String)>,
    pub divergence: Option<Divergence>,
    /// The time of the last step replayed.
    pub last_t: u64,
}

/// Feeds the recording to a fresh machine; stops at the first divergence.
pub fn replay(recording: &Recording) -> Result<Replayed, LoadError> {
    let (machine_config, policy) = recording
        .header
        .config
        .to_config()
        .map_err(LoadError::Malformed)?;
    // Without a seed the delays cannot be the recorded ones: the first backoff differs.
    let jitter = Jitter::seeded(recording.header.seed.unwrap_or(0));
    let mut machine = Machine::new(machine_config, Backoff::new(policy, jitter));
    let caught = Arc::new(Mutex::new(Vec::new()));
    let subscriber = {
        use tracing_subscriber::layer::SubscriberExt;
        tracing_subscriber::registry().with(CatchTransitions(caught.clone()))
    };
    let mut replayed = Replayed {
        transitions: Vec::new(),
        notices: Vec::new(),
        divergence: None,
        last_t: 0,
    };
    tracing::subscriber::with_default(subscriber, || {
        let mut effects = Vec::new();
        for (index, step) in recording.steps.iter().enumerate() {
            if let Some(creds) = step.creds {
                machine.set_credentials(creds.into());
            }
            machine.set_outbound_pending(step.pending);
            effects.clear();
            machine.handle_into(&step.event.to_event(), &mut effects);
            replayed.last_t = step.t;
            let caught: Vec<Transition> =
                std::mem::take(&mut *caught.lock().unwrap_or_else(PoisonError::into_inner));
            replayed
                .transitions
                .extend(caught.into_iter().map(|t| Transition { t: step.t, ..t }));
            let effects: Vec<EffectRecord> = effects.iter().map(EffectRecord::from).collect();
            for effect in &effects {
                if let EffectRecord::Notify(notice) = effect {
                    let fields = report::notice_fields(notice);
                    if let Some(message) = fields.get("message").and_then(|m| m.as_str()) {
                        replayed.notices.push((
                            step.t,
                            replayed.transitions.len(),
                            format!("wsup: {message}"),
                        ));
                    }
                }
            }
            if effects != step.effects {
                replayed.divergence = Some(Divergence {
                    step: index,
                    t: step.t,
                    event: serde_json::to_value(&step.event).unwrap_or_default(),
                    recorded: step.effects.clone(),
                    replayed: effects,
                });
                break;
            }
        }
    });
    Ok(replayed)
}

/// `wsup replay`: prints the replay on `out`, writes the timeline if asked; returns the
/// exit code.
pub fn run(
    path: &Path,
    format: ReplayFormat,
    timeline: Option<&Path>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let recording = match load(path) {
        Ok(recording) => recording,
        Err(e) => {
            let _ = writeln!(err, "wsup replay: {e}");
            return e.exit_code();
        }
    };
    for note in &recording.notes {
        let _ = writeln!(err, "wsup replay: note: {note}");
    }
    if recording.header.seed.is_none() {
        let _ = writeln!(
            err,
            "wsup replay: note: the recording has no jitter seed: backoff delays will differ"
        );
    }
    let replayed = match replay(&recording) {
        Ok(replayed) => replayed,
        Err(e) => {
            let _ = writeln!(err, "wsup replay: {e}");
            return e.exit_code();
        }
    };
    let printed = match format {
        ReplayFormat::Text => print_text(&recording, &replayed, out),
        ReplayFormat::Json => print_json(&recording, &replayed, out),
    };
    if let Err(e) = printed.and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = writeln!(err, "wsup replay: cannot write to stdout: {e}");
            return crate::exit::IO_ERROR;
        }
    }
    if let Some(svg_path) = timeline {
        let end_t = recording.end.as_ref().map_or(replayed.last_t, |end| end.t);
        let svg = crate::timeline::render(
            &replayed.transitions,
            end_t,
            &timeline_title(path, &recording),
        );
        if let Err(e) = std::fs::write(svg_path, svg) {
            let _ = writeln!(
                err,
                "wsup replay: cannot write the timeline {}: {e}",
                svg_path.display()
            );
            return crate::exit::CANT_CREATE;
        }
    }
    if replayed.divergence.is_some() {
        // Exit 1: the machine does not do today what it did then.
        return crate::exit::INTERNAL;
    }
    crate::exit::OK
}

fn timeline_title(path: &Path, recording: &Recording) -> String {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    match &recording.end {
        Some(end) => format!("{name}: exit {}", end.end.exit_code),
        None => format!("{name}: recording ends before the session did"),
    }
}

/// `12.345678s`: a recorded time.
fn seconds(t: u64) -> String {
    format!("{:>4}.{:06}s", t / 1_000_000, t % 1_000_000)
}

fn print_text(
    recording: &Recording,
    replayed: &Replayed,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let mut notices = replayed.notices.iter().peekable();
    for (index, transition) in replayed.transitions.iter().enumerate() {
        // A step's notices come after its transitions, as in the live output.
        while let Some((t, _, line)) = notices.next_if(|(_, after, _)| *after <= index) {
            writeln!(out, "{} {line}", seconds(*t))?;
        }
        if transition.shown {
            writeln!(out, "{} {}", seconds(transition.t), transition.line)?;
        }
    }
    for (t, _, line) in notices {
        writeln!(out, "{} {line}", seconds(*t))?;
    }
    if let Some(divergence) = &replayed.divergence {
        let side = |effects: &[EffectRecord]| serde_json::to_string(effects).unwrap_or_default();
        writeln!(
            out,
            "wsup replay: diverged at event {} of {} (t={}, {}):",
            divergence.step + 1,
            recording.steps.len(),
            seconds(divergence.t).trim_start(),
            divergence.event
        )?;
        writeln!(out, "  recorded: {}", side(&divergence.recorded))?;
        writeln!(out, "  replayed: {}", side(&divergence.replayed))?;
        return Ok(());
    }
    let span = seconds(recording.end.as_ref().map_or(replayed.last_t, |e| e.t));
    match &recording.end {
        Some(end) => {
            let kind = CredentialKind::from(&recording.header.credentials);
            if let Some(line) = report::outcome_line(&end.end.outcome, &kind) {
                writeln!(out, "{} wsup: {line}", seconds(end.t))?;
            }
            writeln!(
                out,
                "wsup replay: same as recorded: {} events over {}; the session ended with exit code {}",
                recording.steps.len(),
                span.trim_start(),
                end.end.exit_code
            )
        }
        None => writeln!(
            out,
            "wsup replay: same as recorded: {} events over {}; the recording ends before the session did",
            recording.steps.len(),
            span.trim_start()
        ),
    }
}

fn print_json(
    recording: &Recording,
    replayed: &Replayed,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    for transition in replayed.transitions.iter().filter(|t| t.shown) {
        let object = json!({
            "t_us": transition.t,
            "from": transition.from,
            "to": transition.to,
            "event": transition.event,
            "attempt": transition.attempt,
            "delay_ms": transition.delay_ms,
            "reason": transition.reason,
        });
        writeln!(out, "{object}")?;
    }
    let result = match (&replayed.divergence, &recording.end) {
        (Some(d), _) => json!({
            "replay": "diverged",
            "event_index": d.step,
            "t_us": d.t,
            "event": d.event,
            "recorded": d.recorded,
            "replayed": d.replayed,
        }),
        (None, Some(end)) => json!({
            "replay": "same",
            "events": recording.steps.len(),
            "t_us": end.t,
            "outcome": end.end.outcome,
            "exit_code": end.end.exit_code,
        }),
        (None, None) => json!({
            "replay": "same",
            "events": recording.steps.len(),
            "t_us": replayed.last_t,
            "outcome": null,
            "exit_code": null,
        }),
    };
    writeln!(out, "{result}")
}

/// Catches the machine's transition events (target `wsup::machine`) with their fields.
struct CatchTransitions(Arc<Mutex<Vec<Transition>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CatchTransitions {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.metadata().target() != "wsup::machine" {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let field = |name: &str| {
            fields
                .values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        let text = |name: &str| {
            field(name).and_then(|v| match v {
                FieldValue::Str(s) => Some(s),
                _ => None,
            })
        };
        let number = |name: &str| {
            field(name).and_then(|v| match v {
                FieldValue::U64(n) => Some(n),
                _ => None,
            })
        };
        let transition = Transition {
            t: 0,
            from: text("from").unwrap_or_default(),
            to: text("to").unwrap_or_default(),
            event: text("event").unwrap_or_default(),
            attempt: number("attempt"),
            delay_ms: number("delay_ms"),
            reason: text("reason"),
            line: fields.line(),
            shown: *event.metadata().level() <= tracing::Level::DEBUG,
        };
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(transition);
    }
}

#[derive(Debug, Clone)]
enum FieldValue {
    Str(String),
    U64(u64),
    Other(String),
}

/// An event's fields in the order they were recorded.
#[derive(Default)]
struct Fields {
    message: String,
    values: Vec<(&'static str, FieldValue)>,
}

impl Fields {
    /// The line as tracing-subscriber's default text format writes it without time,
    /// level and target (what `-v` shows): the message, then `name=value` with strings
    /// quoted (their `Debug`).
    fn line(&self) -> String {
        let mut line = self.message.clone();
        for (name, value) in &self.values {
            let shown = match value {
                FieldValue::Str(s) => format!("{s:?}"),
                FieldValue::U64(n) => n.to_string(),
                FieldValue::Other(s) => s.clone(),
            };
            line.push_str(&format!(" {name}={shown}"));
        }
        line
    }
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.values
            .push((field.name(), FieldValue::Str(value.to_owned())));
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.values.push((field.name(), FieldValue::U64(value)));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.values
                .push((field.name(), FieldValue::Other(format!("{value:?}"))));
        }
    }
}
