//! Invalid transport settings given to `Supervisor::run` come back as a typed error before
//! anything runs: no session started, nothing dialed.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use wsup::session::{Link, Session};
use wsup::transport::UsageError;
use wsup::{Config, Supervisor};

struct Flag(Arc<AtomicBool>);

impl Session for Flag {
    async fn run(self, _link: Link) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn settings_error(mut config: Config) -> (UsageError, bool, bool) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.url = format!("ws://{}/", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let result = Supervisor::new(config)
        .on_notice(Arc::new(|_| {}))
        .run(Flag(started.clone()))
        .await;
    let error = match result {
        Err(error) => error,
        Ok(outcome) => panic!("bad settings ran to {outcome:?}"),
    };
    // Anything dialed would be waiting in the backlog by now.
    let dialed = tokio::time::timeout(Duration::from_millis(100), listener.accept())
        .await
        .is_ok();
    (error, started.load(Ordering::SeqCst), dialed)
}

#[tokio::test]
async fn zero_connect_timeout_is_a_typed_error_before_anything_runs() {
    let mut config = Config::new("ws://127.0.0.1:9/".parse().unwrap());
    config.transport.connect_timeout = Duration::ZERO;
    let (error, started, dialed) = settings_error(config).await;
    assert!(matches!(error, UsageError::InvalidSetting(_)), "{error:?}");
    assert!(error.to_string().contains("connect timeout"), "{error}");
    assert!(!started, "the session was started");
    assert!(!dialed, "the server was dialed");
}

#[tokio::test]
async fn handshake_header_is_a_typed_error_before_anything_runs() {
    let mut config = Config::new("ws://127.0.0.1:9/".parse().unwrap());
    config.transport.headers.push((
        http::HeaderName::from_static("sec-websocket-key"),
        http::HeaderValue::from_static("x"),
    ));
    let (error, started, dialed) = settings_error(config).await;
    assert!(
        matches!(error, UsageError::InvalidHeader { .. }),
        "{error:?}"
    );
    assert!(!started, "the session was started");
    assert!(!dialed, "the server was dialed");
}
