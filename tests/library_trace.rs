//! A library user who forwards every log record at trace level (tungstenite's included)
//! never sees a credential: tungstenite traces the whole upgrade request, so wsup hands it
//! none of the credential headers.
//!
//! One test in this binary: it installs the process-wide subscriber.
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use wsup::credentials::StaticToken;
use wsup::session::{Link, Session};
use wsup::tungstenite::protocol::frame::coding::CloseCode;
use wsup::tungstenite::protocol::CloseFrame;
use wsup::{Config, Outcome, Supervisor};

const TOKEN: &str = "tok-3f9a1c-never-logged";
const COOKIE: &str = "session=cookie-77e2b0-never-logged";

/// Everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Idle;

impl Session for Idle {
    async fn run(self, link: Link) {
        let Link { mut inbound, .. } = link;
        while inbound.recv().await.is_some() {}
    }
}

#[tokio::test]
async fn trace_level_logs_hold_no_token_or_cookie() {
    let captured = Captured::default();
    let writer = captured.clone();
    // `init` also forwards `log` records (tungstenite's) to the subscriber.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut seen = None;
        #[allow(clippy::result_large_err)] // the callback's error type is tungstenite's
        let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
            let header = |name| {
                request
                    .headers()
                    .get(name)
                    .map(|v: &http::HeaderValue| v.to_str().unwrap().to_owned())
            };
            seen = Some((header("authorization"), header("cookie")));
            Ok(response)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
            .await
            .unwrap();
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .await
        .unwrap();
        seen
    });

    let mut config = Config::new(url.parse().unwrap());
    config.machine.max_retries = Some(0);
    // A credential header the library user set up without marking it sensitive.
    config
        .transport
        .headers
        .push((http::header::COOKIE, http::HeaderValue::from_static(COOKIE)));
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        Supervisor::new(config)
            .credentials(Arc::new(StaticToken::new("Bearer", TOKEN)))
            .run(Idle),
    )
    .await
    .expect("the server closes at once")
    .expect("valid settings");
    assert_eq!(outcome, Outcome::Done);

    let seen = server.await.unwrap();
    assert_eq!(
        seen,
        Some((Some(format!("Bearer {TOKEN}")), Some(COOKIE.to_owned()))),
        "the server got the credentials"
    );
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("Request:"),
        "tungstenite's request trace was captured: {logs}"
    );
    assert!(!logs.contains(TOKEN), "the token was logged:\n{logs}");
    assert!(
        !logs.contains("never-logged"),
        "a credential was logged:\n{logs}"
    );
}
