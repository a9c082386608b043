//! Transport: dial a websocket (DNS, TCP, TLS, HTTP upgrade, headers) under one timeout,
//! and turn what goes wrong into a [`Failure`](crate::classify::Failure) for `classify.rs`.
//!
//! This layer never retries and never decides anything: it dials once when asked and
//! reports exactly what happened. It also owns the checks on the transport settings the
//! user typed (URL, `--header`, `--ca-cert`, the credentials-over-plaintext rule), which
//! fail with a [`UsageError`] (exit 2) before anything is dialed.
//!
//! Secrets: header values (user `Authorization` headers included) and the `authorization`
//! argument of [`Transport::dial`] never appear in any error, `Debug` or `Display` output
//! produced here. `tungstenite` errors do not carry request headers, and only the status
//! and `Retry-After` are taken from an HTTP error response.
//!
//! One file per job: `settings.rs` (what the user typed), `dial.rs` (DNS, TCP, TLS, the
//! upgrade), `proxy.rs` (which proxy, and the `CONNECT` tunnel through it), `errors.rs` (error and close frame → `Failure`), `observe.rs` (the close
//! frame as sent), `resolve.rs` (the resolver), `secret_headers.rs` (credential headers
//! kept out of tungstenite's trace).

use std::time::Duration;

use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

// Re-exported: these were always reached as `transport::…`, and the CLI checks its own
// settings with them.
pub use crate::headers::{is_credential_header, is_header_safe, NOT_HEADER_SAFE};

mod dial;
mod errors;
mod observe;
mod proxy;
mod resolve;
mod secret_headers;
mod settings;
pub use dial::Transport;
pub use errors::{failure_from_close_frame, failure_from_received_close, failure_from_ws_error};
pub use observe::{CloseObserver, WireClose};
pub use proxy::{
    NoProxy, Proxies, ProxyUrl, TunnelStream, MAX_PROXY_HEADERS, MAX_PROXY_HEAD_BYTES,
};
pub use secret_headers::SecretHeaders;
pub use settings::{
    check_secure_for_credentials, check_subprotocol, is_loopback, load_ca_certs, parse_header,
    parse_ws_url, TransportConfig, UsageError,
};

/// The byte stream under an established websocket: TCP (or a proxy's tunnel, see
/// [`TunnelStream`]), or TLS over it, seen through a [`CloseObserver`] (on the decrypted
/// side) that keeps the server's close frame as sent, over [`SecretHeaders`], which writes
/// the credential headers of the upgrade request.
pub type WsTransportStream = CloseObserver<SecretHeaders<MaybeTlsStream<TunnelStream>>>;

/// An established websocket, plain or TLS.
pub type WsStream = WebSocketStream<WsTransportStream>;

/// The largest message (and frame) accepted in either direction: 64 MiB.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;
/// `--connect-timeout` default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default read buffer of a connection. tungstenite zero-fills the whole buffer on the
/// first read, so all of it is resident for as long as the connection lives; it grows by
/// itself to hold a larger frame. 16 KiB keeps an idle connection small (the 128 KiB
/// default made it ~150 KiB of RSS, see docs/benchmarks.md) without costing throughput.
pub const DEFAULT_READ_BUFFER_SIZE: usize = 16 << 10;
/// Default write buffer of a connection (bytes gathered before a write to the socket).
pub const DEFAULT_WRITE_BUFFER_SIZE: usize = 128 << 10;
