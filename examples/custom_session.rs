//! A custom session on top of the supervisor: a ticker that sends the time every second
//! and prints what comes back. Run it against the scripted server:
//!
//!     cargo run -- serve --listen 127.0.0.1:8765 --script echo &
//!     cargo run --example custom_session -- ws://127.0.0.1:8765/
use std::time::Duration;
use wsup::session::{Link, Session};
use wsup::tungstenite::Message;

/// Sends `tick N` every second (queued while offline), prints every reply.
struct Ticker {
    ticks: u32,
}

impl Session for Ticker {
    async fn run(self, link: Link) {
        let Link {
            mut inbound,
            outbound,
            ..
        } = link;
        let sender = tokio::spawn(async move {
            for n in 1..=self.ticks {
                if outbound
                    .send(Message::text(format!("tick {n}")).into())
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // Dropping `outbound` means "nothing more to send": wsup closes with 1000.
        });
        while let Some(message) = inbound.recv().await {
            println!("server says: {message}");
        }
        sender.abort();
    }
}

#[tokio::main]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or("ws://127.0.0.1:8765/".into());
    let url = match wsup::transport::parse_ws_url(&url) {
        Ok(url) => url,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let outcome = match wsup::Supervisor::new(wsup::Config::new(url))
        .run(Ticker { ticks: 3 })
        .await
    {
        Ok(outcome) => outcome,
        Err(bad_settings) => {
            eprintln!("{bad_settings}");
            std::process::exit(2);
        }
    };
    eprintln!("session ended: {outcome:?}");
    std::process::exit(outcome.exit_code().into());
}
