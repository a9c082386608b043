//! The Autobahn|Testsuite client driver: every case runs under wsup's [`Supervisor`] with a
//! session that echoes each message back (same opcode, same payload). It measures the
//! supervised client against the suite's fuzzing server; `docs/conformance.md` has the
//! results and the one command that repeats them
//! (`bash ../shared/conformance/autobahn/run.sh` from the project root).
//!
//!     cargo run --release --example autobahn_client -- [BASE_URL] [AGENT]
//!
//! BASE_URL defaults to ws://127.0.0.1:9002, AGENT to "wsup". Asks `/getCaseCount`, runs
//! `/runCase?case=N&agent=AGENT` for N = 1..=count, each under its own supervisor with
//! `max_retries = Some(0)` (the case ends when the server closes), then
//! `/updateReports?agent=AGENT`. Prints one line per case: the case number and the outcome.
//!
//! [`Supervisor`]: wsup::Supervisor
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wsup::session::{Link, Session};
use wsup::tungstenite::Message;

/// Sends every text/binary message back unchanged.
struct Echo;

impl Session for Echo {
    async fn run(self, link: Link) {
        let Link {
            mut inbound,
            outbound,
            ..
        } = link;
        while let Some(message) = inbound.recv().await {
            if outbound.send(message.into()).await.is_err() {
                break;
            }
        }
        // `outbound` is dropped only after the supervisor has stopped: dropping it earlier
        // would mean "nothing more to send" and close the case from our side.
    }
}

/// Keeps every message received (the answer of `/getCaseCount`).
struct Collect(Arc<Mutex<Vec<Message>>>);

impl Session for Collect {
    async fn run(self, link: Link) {
        let Link {
            mut inbound,
            outbound,
            ..
        } = link;
        while let Some(message) = inbound.recv().await {
            if let Ok(mut got) = self.0.lock() {
                got.push(message);
            }
        }
        drop(outbound);
    }
}

fn config(url: &str) -> Result<wsup::Config, String> {
    let url = wsup::transport::parse_ws_url(url).map_err(|e| e.to_string())?;
    let mut config = wsup::Config::new(url);
    config.machine.max_retries = Some(0);
    Ok(config)
}

/// Wall-clock guard per case, so that one stuck case cannot stall the run.
const CASE_LIMIT: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "ws://127.0.0.1:9002".into());
    let agent = args.next().unwrap_or_else(|| "wsup".into());

    let got = Arc::new(Mutex::new(Vec::new()));
    let outcome = wsup::Supervisor::new(config(&format!("{base}/getCaseCount"))?)
        .run(Collect(got.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let first = got.lock().map_err(|e| e.to_string())?.first().cloned();
    let count: u32 = match first {
        Some(Message::Text(text)) => text
            .as_str()
            .trim()
            .parse()
            .map_err(|e| format!("case count {text:?}: {e}"))?,
        other => return Err(format!("no case count ({other:?}); outcome {outcome:?}")),
    };
    eprintln!("case count: {count}");

    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        let run = wsup::Supervisor::new(config(&url)?).run(Echo);
        match tokio::time::timeout(CASE_LIMIT, run).await {
            Ok(Ok(outcome)) => println!("case {case}: exit {} {outcome:?}", outcome.exit_code()),
            Ok(Err(bad_settings)) => return Err(bad_settings.to_string()),
            Err(_) => println!("case {case}: client gave up after {CASE_LIMIT:?}"),
        }
    }

    let outcome = wsup::Supervisor::new(config(&format!("{base}/updateReports?agent={agent}"))?)
        .run(Collect(Arc::new(Mutex::new(Vec::new()))))
        .await;
    eprintln!("updateReports: {outcome:?}");
    Ok(())
}
