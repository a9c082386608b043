//! `wsup demo`: the one-command tour. Starts the scripted server in-process and
//! supervises a connection through a series of faults, each visible as a notice and a
//! state transition:
//!
//! 1. close 1011 "No shell-agent listening for this cluster" → transient, backoff;
//! 2. HTTP 503 with `Retry-After: 1` → backoff of at least a second;
//! 3. a silent (half-open) connection → liveness deadline, backoff;
//! 4. the token expires on the server (close 1008) → one refresh, immediate redial;
//! 5. a clean close 1000 → exit 0.

use crate::backoff::BackoffPolicy;
use crate::credentials::{InMemoryRefreshable, IssuedToken, Secret, TokenSource};
use crate::driver::{Config, NoticeSink, SignalWatch, Supervisor};
use crate::machine::{MachineConfig, Outcome};
use crate::serve::{self, ServeOptions};
use crate::session::{Link, Session};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const DEMO_SCRIPT: &str = "close:1011:No shell-agent listening for this cluster,\
http:503:1,silent,expire-token,close:1000:tour complete";

const INITIAL_TOKEN: &str = "demo-token-0";

/// Prints what the server sends, like `wsup connect` would.
struct PrintSession;

impl Session for PrintSession {
    async fn run(self, mut link: Link) {
        while let Some(message) = link.recv().await {
            if let Ok(text) = message.to_text() {
                if writeln!(std::io::stdout(), "{text}").is_err() {
                    // Nobody reads the tour any more (`wsup demo | head`): stop quietly.
                    return;
                }
            }
        }
    }
}

pub async fn run(notices: NoticeSink, signals: SignalWatch) -> Result<Outcome, String> {
    run_adjusted(notices, signals, |_| {}).await
}

/// The supervision settings of the tour, for the demo server at `url`.
pub fn tour_config(url: url::Url) -> Config {
    Config {
        machine: MachineConfig {
            // Short enough that the half-open step is found in two seconds.
            ping_interval: Duration::from_secs(1),
            pong_timeout: Duration::from_secs(1),
            max_retries: Some(10),
            ..MachineConfig::default()
        },
        backoff: BackoffPolicy {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(2),
            ..BackoffPolicy::default()
        },
        ..Config::new(url)
    }
}

/// [`run`], with `adjust` applied to [`tour_config`] before the first dial (`wsup demo
/// --max-retries 0` and the other supervision flags the demo honours).
pub async fn run_adjusted(
    notices: NoticeSink,
    signals: SignalWatch,
    adjust: impl FnOnce(&mut Config),
) -> Result<Outcome, String> {
    run_supervised(notices, signals, adjust, |supervisor| supervisor).await
}

/// [`run_adjusted`], with `supervise` applied to the supervisor before it runs (`wsup
/// demo --record FILE`: a recorder; a seeded jitter for a reproducible recording).
pub async fn run_supervised(
    notices: NoticeSink,
    signals: SignalWatch,
    adjust: impl FnOnce(&mut Config),
    supervise: impl FnOnce(Supervisor) -> Supervisor,
) -> Result<Outcome, String> {
    let script = DEMO_SCRIPT.parse().map_err(|e: String| e)?;
    let options = ServeOptions {
        require_token: Some(INITIAL_TOKEN.into()),
        ..ServeOptions::new(([127, 0, 0, 1], 0).into(), script)
    };
    let server = Arc::new(
        serve::start(options)
            .await
            .map_err(|e| format!("cannot start the demo server on 127.0.0.1: {e}"))?,
    );
    // Written, not `eprintln!`: a failing stderr must not panic (nor change the exit).
    let _ = writeln!(
        std::io::stderr(),
        "wsup demo: scripted server on {} with steps: {DEMO_SCRIPT}",
        server.ws_url()
    );

    let issuer = server.clone();
    let source: TokenSource = Arc::new(move || {
        let (token, ttl) = issuer.issue_token();
        Box::pin(async move {
            Ok(IssuedToken {
                token: Secret::new(token),
                expires_at: Some(SystemTime::now() + ttl),
            })
        })
    });
    let credentials = Arc::new(InMemoryRefreshable::new(
        "Bearer",
        IssuedToken {
            token: Secret::new(INITIAL_TOKEN),
            expires_at: None,
        },
        source,
    ));
    let url = server
        .ws_url()
        .parse()
        .map_err(|e| format!("demo server URL: {e}"))?;
    let mut config = tour_config(url);
    adjust(&mut config);
    let supervisor = Supervisor::new(config)
        .credentials(credentials)
        .on_notice(notices)
        .signals(signals);
    let outcome = supervise(supervisor)
        .run(PrintSession)
        .await
        .map_err(|e| e.to_string())?;
    Ok(outcome)
}
