//! The machine's timers, as one table indexed by [`TimerKind::index`].

use crate::machine::TimerKind;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The machine's timers on one tokio `Sleep`. Re-arming a timer to a later deadline
/// (liveness, on every frame) only stores an `Instant`; the sleep is reset only when the
/// earliest deadline changes, so the data path does no timer-wheel work.
pub(super) struct Timers {
    deadlines: [Option<Instant>; TimerKind::ALL.len()],
    sleep: Pin<Box<Sleep>>,
    armed_for: Option<Instant>,
    /// The time timers started now count from, read once per wake-up of the driver
    /// (see [`Timers::new_turn`]): re-arming liveness on every frame of a burst read
    /// the clock per frame, 4 % of a one-worker client's CPU with 64-byte messages.
    now: Option<Instant>,
}

impl Timers {
    pub(super) fn new() -> Self {
        Timers {
            deadlines: [None; TimerKind::ALL.len()],
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed_for: None,
            now: None,
        }
    }

    /// The driver may have waited: the next timer started reads the clock again. Not
    /// called between the frames of a burst, which the driver takes without waiting.
    pub(super) fn new_turn(&mut self) {
        self.now = None;
    }

    pub(super) fn start(&mut self, kind: TimerKind, after: Duration) {
        let now = *self.now.get_or_insert_with(Instant::now);
        self.deadlines[kind.index()] = Some(now + after);
    }

    pub(super) fn cancel(&mut self, kind: TimerKind) {
        self.deadlines[kind.index()] = None;
    }

    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<TimerKind> {
        loop {
            let Some(earliest) = self.deadlines.iter().flatten().min().copied() else {
                self.armed_for = None;
                return Poll::Pending;
            };
            if self.armed_for != Some(earliest) {
                self.sleep.as_mut().reset(earliest);
                self.armed_for = Some(earliest);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.armed_for = None;
            let now = Instant::now();
            if let Some(slot) = self
                .deadlines
                .iter()
                .position(|d| d.is_some_and(|d| d <= now))
            {
                self.deadlines[slot] = None;
                return Poll::Ready(TimerKind::ALL[slot]);
            }
        }
    }
}
