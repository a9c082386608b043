//! `--record FILE`: the driver's recorder. Every event fed to the machine becomes one
//! line (format in [`crate::record`]), with the effects the machine returned.
//!
//! Off the hot path: the driver formats a line into an in-memory buffer (no system call,
//! no allocation for a frame); full buffers go to a writer thread, so a slow disk never
//! stalls the async driver. The buffer is handed over at every event that is not data
//! (a transition, a timer, a signal: what an incident is made of) and whenever it holds
//! 64 KiB, and every hand-over ends at a line's end. A kill, a crash or a full disk can
//! therefore only cut the file's last line, which a replay ignores with a note.
//!
//! Bounded: past `max_bytes` the file is renamed `FILE.1` once and a new `FILE` starts
//! (its header says `part: 2`; a replay of `FILE` reads `FILE.1` first). Past the bound
//! a second time, recording stops. Any write error stops recording too, with one note:
//! the session itself never fails because of its recording.

use crate::backoff::BackoffPolicy;
use crate::machine::{CredentialState, Effect, Event, MachineConfig, Outcome};
use crate::record::{
    write_data_step, ConfigRecord, CredentialRecord, EffectRecord, End, EndLine, EventRecord,
    Header, StepRef, FORMAT,
};
use crate::report::CredentialKind;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// `--record-max`'s default: 64 MiB.
pub const DEFAULT_RECORD_MAX: u64 = 64 << 20;

/// A buffer is handed to the writer once it holds this much.
const HAND_OVER_AT: usize = 64 << 10;

/// Buffers waiting for the writer. A disk that falls this far behind stops the recording
/// (with a note) rather than stall the session or grow memory without bound.
const QUEUED_BUFFERS: usize = 64;

/// Receives the recorder's notes ("rotated", "stopped: disk full").
pub type RecordNotes = Arc<dyn Fn(&str) + Send + Sync>;

enum ToWriter {
    /// The header, kept to start the file again after a rotation.
    Header(Vec<u8>, Vec<u8>),
    Lines(Vec<u8>),
}

/// Records one supervised session into a file. Create it before the session starts
/// (so an unwritable path is found before anything is dialed) and give it to
/// [`crate::Supervisor::record`].
pub struct Recorder {
    path: PathBuf,
    credentials: CredentialRecord,
    started: Instant,
    buffer: Vec<u8>,
    effects: Vec<EffectRecord>,
    to_writer: Option<SyncSender<ToWriter>>,
    writer: Option<JoinHandle<()>>,
    /// Set by the writer when it stops for good (an error, the bound reached twice).
    stopped: Arc<AtomicBool>,
    notes: RecordNotes,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .finish()
    }
}

impl Recorder {
    /// Creates (or truncates) `path` and starts the writer. `Err`: the file cannot be
    /// created (exit 73 in the CLI).
    pub fn create(
        path: &Path,
        max_bytes: u64,
        credentials: &CredentialKind,
        notes: RecordNotes,
    ) -> std::io::Result<Recorder> {
        let file = File::create(path)?;
        let stopped = Arc::new(AtomicBool::new(false));
        let (to_writer, from_driver) = sync_channel(QUEUED_BUFFERS);
        let writer = {
            let path = path.to_owned();
            let stopped = stopped.clone();
            let notes = notes.clone();
            std::thread::Builder::new()
                .name("wsup-record".into())
                .spawn(move || write_lines(file, path, max_bytes, from_driver, stopped, notes))?
        };
        Ok(Recorder {
            path: path.to_owned(),
            credentials: credentials.into(),
            started: Instant::now(),
            buffer: Vec::with_capacity(HAND_OVER_AT + 1024),
            effects: Vec::with_capacity(8),
            to_writer: Some(to_writer),
            writer: Some(writer),
            stopped,
            notes,
        })
    }

    fn micros(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The header, before the first event: what a fresh machine needs to behave the same.
    pub(crate) fn begin(
        &mut self,
        machine: &MachineConfig,
        backoff: &BackoffPolicy,
        seed: Option<u64>,
    ) {
        self.started = Instant::now();
        let header = Header {
            wsup: env!("CARGO_PKG_VERSION").to_owned(),
            format: FORMAT,
            part: 1,
            config: ConfigRecord::new(machine, backoff),
            seed,
            credentials: self.credentials.clone(),
        };
        let mut first = Vec::new();
        let mut second = Vec::new();
        let written = serde_json::to_writer(&mut first, &header).and_then(|()| {
            serde_json::to_writer(
                &mut second,
                &Header {
                    part: 2,
                    ..header.clone()
                },
            )
        });
        if written.is_err() {
            return self.stop("cannot format the header");
        }
        first.push(b'\n');
        second.push(b'\n');
        self.send(ToWriter::Header(first, second));
    }

    /// One event and the effects the machine returned for it. `creds` is what the driver
    /// set before it (`None` on the data path: the last one holds).
    pub(crate) fn step(
        &mut self,
        event: &Event,
        creds: Option<CredentialState>,
        pending: bool,
        effects: &[Effect],
        data: bool,
    ) {
        if self.to_writer.is_none() {
            return;
        }
        if self.stopped.load(Ordering::Relaxed) {
            self.to_writer = None;
            return;
        }
        let t = self.micros();
        if data && write_data_step(&mut self.buffer, t, event, pending, effects) {
            self.buffer.push(b'\n');
            if self.buffer.len() >= HAND_OVER_AT {
                self.hand_over();
            }
            return;
        }
        let event = EventRecord::from(event);
        self.effects.clear();
        self.effects.extend(effects.iter().map(EffectRecord::from));
        let line = StepRef {
            t,
            event: &event,
            creds: creds.map(Into::into),
            pending,
            effects: &self.effects,
        };
        let mark = self.buffer.len();
        if serde_json::to_writer(&mut self.buffer, &line).is_err() {
            self.buffer.truncate(mark);
            return self.stop("cannot format an event");
        }
        self.buffer.push(b'\n');
        if !data || self.buffer.len() >= HAND_OVER_AT {
            self.hand_over();
        }
    }

    /// The session's end (after the driver's own: a drain timeout shows as lost output);
    /// waits until the writer has written everything.
    pub(crate) fn finish(mut self, outcome: &Outcome) {
        if self.to_writer.is_some() && !self.stopped.load(Ordering::Relaxed) {
            let line = EndLine {
                t: self.micros(),
                end: End {
                    outcome: outcome.clone(),
                    exit_code: outcome.exit_code(),
                },
            };
            if serde_json::to_writer(&mut self.buffer, &line).is_ok() {
                self.buffer.push(b'\n');
            }
            self.hand_over();
        }
        self.to_writer = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }

    fn hand_over(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let full = std::mem::replace(&mut self.buffer, Vec::with_capacity(HAND_OVER_AT + 1024));
        self.send(ToWriter::Lines(full));
    }

    fn send(&mut self, message: ToWriter) {
        let Some(to_writer) = &self.to_writer else {
            return;
        };
        match to_writer.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stop("the disk does not keep up with the session");
            }
            // The writer stopped and said why.
            Err(TrySendError::Disconnected(_)) => self.to_writer = None,
        }
    }

    fn stop(&mut self, why: &str) {
        self.to_writer = None;
        if !self.stopped.swap(true, Ordering::Relaxed) {
            (self.notes)(&format!(
                "recording stopped: {why}; {} holds the session up to here",
                self.path.display()
            ));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // A session dropped before its end (a cancelled future): what was formatted still
        // goes out; the writer ends when the channel closes.
        self.hand_over();
    }
}

/// The writer thread: appends each buffer to the file, rotates once, stops on an error.
fn write_lines(
    mut file: File,
    path: PathBuf,
    max_bytes: u64,
    from_driver: Receiver<ToWriter>,
    stopped: Arc<AtomicBool>,
    notes: RecordNotes,
) {
    let mut written: u64 = 0;
    let mut rotated = false;
    let mut continuation = Vec::new();
    let stop = |why: String| {
        if !stopped.swap(true, Ordering::Relaxed) {
            notes(&format!("recording stopped: {why}"));
        }
    };
    for message in from_driver {
        let lines = match message {
            ToWriter::Header(first, second) => {
                continuation = second;
                first
            }
            ToWriter::Lines(lines) => lines,
        };
        if written > 0 && written + lines.len() as u64 > max_bytes {
            if rotated {
                stop(format!(
                    "{} reached --record-max again ({} holds the beginning)",
                    path.display(),
                    rotated_path(&path).display()
                ));
                return;
            }
            rotated = true;
            match rotate(&path, &continuation) {
                Ok(new_file) => {
                    file = new_file;
                    written = continuation.len() as u64;
                    notes(&format!(
                        "recording rotated: {} reached --record-max; its beginning is now {}",
                        path.display(),
                        rotated_path(&path).display()
                    ));
                }
                Err(e) => {
                    stop(format!("cannot rotate {}: {e}", path.display()));
                    return;
                }
            }
        }
        if let Err(e) = file.write_all(&lines) {
            stop(format!("cannot write {}: {e}", path.display()));
            return;
        }
        written += lines.len() as u64;
    }
}

/// `FILE.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

fn rotate(path: &Path, header: &[u8]) -> std::io::Result<File> {
    std::fs::rename(path, rotated_path(path))?;
    let mut file = File::create(path)?;
    file.write_all(header)?;
    Ok(file)
}
