//! After the machine exited: the close frame leaves (briefly), the session gets what it
//! is still owed and finishes writing, and a write that failed late turns a normal end
//! into lost output.

use super::signals::signal_arrives;
use super::{Dialer, Driver};
use crate::classify::Failure;
use crate::machine::{Outcome, OutputLoss};
use crate::session::{self, LinkEnds};
use std::future::poll_fn;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// On exit, how long the close frame may take to leave. Keeps signal-to-exit fast.
const EXIT_FLUSH: Duration = Duration::from_millis(50);
/// At exit, how long to wait for the server to answer our close frame.
const CLOSE_ANSWER_WAIT: Duration = Duration::from_millis(250);

impl<D: Dialer> Driver<D> {
    /// After the machine exited: let the close frame leave (briefly), hand the session
    /// what it is still owed and let it finish writing. Returns the outcome, which is
    /// [`Outcome::OutputLost`] instead of `Done` when the session could not write
    /// everything (a write error, or `drain_timeout` passed).
    pub(super) async fn finish(
        &mut self,
        session_task: tokio::task::JoinHandle<()>,
        outcome: Outcome,
        drain_timeout: Option<Duration>,
    ) -> Outcome {
        let hurry = matches!(outcome, Outcome::Signal(_) | Outcome::Interrupted);
        if let Some(mut conn) = self.conn.take() {
            let _ = tokio::time::timeout(EXIT_FLUSH, poll_fn(|cx| conn.poll_flush_queue(cx))).await;
            // Our close frame is out: read (and drop) what the server still sends until its
            // own close, briefly. Exiting with its data unread in our receive buffer would
            // make the kernel answer with a reset, and the server could lose our close frame
            // (and its reason) to that reset. A server already declared dead is not waited
            // for, nor is anyone after a signal.
            let server_dead = matches!(
                &outcome,
                Outcome::RetriesExhausted {
                    failure: Failure::Liveness,
                    ..
                } | Outcome::Stopped {
                    failure: Failure::Liveness,
                    ..
                }
            );
            if !hurry && !server_dead {
                let _ = tokio::time::timeout(CLOSE_ANSWER_WAIT, async {
                    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut conn.ws).await {}
                })
                .await;
            }
        }
        // A session that already let go of its output (it dropped its receiver) owes
        // nothing: it gets a moment to finish, not an unbounded wait.
        let gave_up_output = self.ends.inbound.is_closed();
        if hurry || gave_up_output {
            // A signal wins: the session gets a moment, not its reader's pace.
            let deadline = Instant::now() + EXIT_FLUSH;
            if let Some(message) = self.pending_delivery.take() {
                if let Ok(Ok(permit)) =
                    tokio::time::timeout_at(deadline, self.ends.inbound.reserve()).await
                {
                    self.ends.inbound_budget.deliver(permit, message);
                }
            }
            close_inbound(&mut self.ends);
            let _ = tokio::time::timeout_at(deadline, session_task).await;
            if hurry {
                return outcome;
            }
            return self.output_failure_after(outcome);
        }
        // A normal end: every byte received is written, however slow the reader, unless
        // the user bounded the wait. A signal still ends it at once.
        let deadline = drain_timeout.map(|timeout| Instant::now() + timeout);
        let drained = {
            let signals = &mut self.signals;
            let ends = &mut self.ends;
            let pending = &mut self.pending_delivery;
            let drain = async move {
                // Taken only once there is room: a message still waiting when the timeout
                // passes is counted as not written.
                if pending.is_some() {
                    // An error means the session is gone; it reported why, if it had to,
                    // through its control channel.
                    if let Ok(permit) = ends.inbound.reserve().await {
                        if let Some(message) = pending.take() {
                            ends.inbound_budget.deliver(permit, message);
                        }
                    }
                }
                close_inbound(ends);
                let _ = session_task.await;
            };
            let bounded = async move {
                match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, drain).await.is_ok(),
                    None => {
                        drain.await;
                        true
                    }
                }
            };
            tokio::select! {
                biased;
                sig = signal_arrives(signals) => return Outcome::Signal(sig),
                drained = bounded => drained,
            }
        };
        let unwritten = self.ends.inbound_budget.unwritten()
            + self.pending_delivery.as_ref().map_or(0, Message::len);
        // Past the timeout with every byte out (the session was only winding down), the
        // output is whole: nothing to report.
        if !drained && unwritten > 0 {
            close_inbound(&mut self.ends);
            return match outcome {
                Outcome::Done => Outcome::OutputLost(OutputLoss::DrainTimeout {
                    unwritten: unwritten as u64,
                    timeout: drain_timeout.unwrap_or_default(),
                }),
                other => other,
            };
        }
        self.output_failure_after(outcome)
    }

    /// A write that failed as or after the machine stopped is only heard of here: it
    /// turns a normal end into lost output.
    fn output_failure_after(&mut self, outcome: Outcome) -> Outcome {
        while let Ok(control) = self.ends.control.try_recv() {
            if let (session::Control::OutputFailed(error), Outcome::Done) = (control, &outcome) {
                return Outcome::OutputLost(OutputLoss::WriteFailed(error));
            }
        }
        outcome
    }
}

/// Closing the supervisor's end of the inbound channel tells the session that the
/// supervisor has stopped: it takes what is left, then `recv` returns `None`.
fn close_inbound(ends: &mut LinkEnds) {
    let (closed_tx, _) = mpsc::channel(1);
    drop(std::mem::replace(&mut ends.inbound, closed_tx));
}
