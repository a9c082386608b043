//! A library supervisor (and a port-forward listener) without a signal source installs no
//! process-wide SIGINT/SIGTERM handler: a program that embeds wsup keeps dying on Ctrl+C.
//!
//! One test in this binary on purpose: a handler, once installed, stays for the life of
//! the process and would hide the next test's answer.
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use wsup::forward::Forwarder;
use wsup::session::{Link, Session};
use wsup::{Config, Outcome, Supervisor};

/// The current disposition of `signal`, read without changing it.
fn disposition(signal: libc::c_int) -> libc::sighandler_t {
    // SAFETY: a null new action only queries; `old` is a valid, zeroed sigaction.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(signal, std::ptr::null(), &mut old), 0);
        old.sa_sigaction
    }
}

fn assert_default_dispositions(when: &str) {
    for (name, signal) in [("SIGINT", libc::SIGINT), ("SIGTERM", libc::SIGTERM)] {
        assert_eq!(
            disposition(signal),
            libc::SIG_DFL,
            "{name} has a handler {when}"
        );
    }
}

struct Idle;

impl Session for Idle {
    async fn run(self, link: Link) {
        let Link { mut inbound, .. } = link;
        while inbound.recv().await.is_some() {}
    }
}

/// A URL nothing listens on: the port of a listener that is closed again.
async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("ws://127.0.0.1:{port}/")
}

#[tokio::test]
async fn library_supervisor_and_forwarder_leave_sigint_and_sigterm_alone() {
    // A test runner started in the background (`cmd &` from a script, nohup) inherits
    // SIGINT ignored: start from the default dispositions, then check wsup keeps them.
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: restoring the default disposition; this test binary runs one test.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
    assert_default_dispositions("before anything ran");

    let mut config = Config::new(dead_url().await.parse().unwrap());
    config.machine.max_retries = Some(0);
    let outcome = Supervisor::new(config)
        .on_notice(Arc::new(|_| {}))
        .run(Idle)
        .await
        .expect("valid settings");
    assert!(
        matches!(outcome, Outcome::RetriesExhausted { .. }),
        "{outcome:?}"
    );
    assert_default_dispositions("after a library Supervisor ran");

    let mut config = Config::new(dead_url().await.parse().unwrap());
    config.machine.max_retries = Some(0);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let forwarder = Forwarder::new(
        listener,
        Supervisor::new(config).on_notice(Arc::new(|_| {})),
    )
    .expect("valid settings")
    .on_tunnel_end(Arc::new(move |_, outcome| {
        let _ = ended_tx.send(outcome.clone());
    }));
    let addr = forwarder.local_addr().unwrap();
    let running = tokio::spawn(forwarder.run());
    // One tunnel through it: once it ended, the listener has been running for a while.
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), ended.recv())
        .await
        .expect("the tunnel ends: nothing listens upstream")
        .unwrap();
    assert!(
        matches!(outcome, Outcome::RetriesExhausted { .. }),
        "{outcome:?}"
    );
    assert_default_dispositions("after a library Forwarder ran");
    running.abort();
}
