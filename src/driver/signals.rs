//! Where SIGINT/SIGTERM come from: the process's signals (for the CLI), a source that
//! never fires (the library default), and waiting for one.

use crate::machine::Sig;
use std::sync::OnceLock;
use tokio::sync::watch;

/// A source of SIGINT/SIGTERM: `Some(sig)` once one arrived.
pub type SignalWatch = watch::Receiver<Option<Sig>>;

/// A signal source that never fires (its sender is gone at once).
pub(super) fn no_signals() -> SignalWatch {
    watch::channel(None).1
}

/// The process's SIGINT/SIGTERM, as a watch shared by every supervisor in the process.
///
/// Registered once, on a small thread of its own, so that it outlives any one tokio
/// runtime (tests and benchmarks create many). Once registered, the signals no longer
/// kill the process: the supervisors exit cleanly with 130/143 instead.
pub fn process_signals() -> SignalWatch {
    static SIGNALS: OnceLock<watch::Sender<Option<Sig>>> = OnceLock::new();
    SIGNALS
        .get_or_init(|| {
            let (tx, _) = watch::channel(None);
            let publisher = tx.clone();
            // Wait until the handlers are installed, so that a signal sent right after
            // this returns is not lost.
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("wsup-signals".into())
                .spawn(move || forward_signals(publisher, ready_tx));
            match spawned {
                Ok(_) => {
                    if let Ok(Err(e)) = ready_rx.recv() {
                        tracing::warn!("cannot listen for SIGINT/SIGTERM: {e}");
                    }
                }
                Err(e) => tracing::warn!("cannot start the signal thread: {e}"),
            }
            tx
        })
        .subscribe()
}

/// The body of the signal thread: its own small runtime, so that the signal stream is
/// registered with a reactor that lives as long as the process.
fn forward_signals(
    publisher: watch::Sender<Option<Sig>>,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    use futures_util::StreamExt;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let mut signals = match signal_hook_tokio::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ]) {
            Ok(signals) => signals,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        while let Some(signal) = signals.next().await {
            let sig = match signal {
                signal_hook::consts::SIGTERM => Sig::Terminate,
                _ => Sig::Interrupt,
            };
            publisher.send_replace(Some(sig));
        }
    });
}

/// Completes with the next SIGINT/SIGTERM (one that already arrived counts); never, if
/// the signal source is gone.
pub async fn signal_arrives(signals: &mut SignalWatch) -> Sig {
    loop {
        if let Some(sig) = *signals.borrow_and_update() {
            return sig;
        }
        if signals.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
