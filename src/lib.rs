//! wsup: a websocket connection supervisor.
//!
//! It keeps one long-lived websocket session alive through network faults, server
//! restarts and expiring credentials, and stops fast, with a clear message and a
//! meaningful exit code, when retrying cannot help. See `docs/architecture.md` for the
//! layers and the state machine.
pub mod backoff;
pub mod classify;
pub mod cli;
pub mod credentials;
#[cfg(feature = "serve")]
pub mod demo;
pub mod driver;
pub mod exit;
pub mod forward;
pub mod headers;
pub mod machine;
pub mod manual;
pub mod record;
pub mod replay;
pub mod report;
#[cfg(feature = "serve")]
pub mod serve;
pub mod session;
pub mod shards;
pub mod states;
pub mod timeline;
pub mod tls;
pub mod token_command;
pub mod transport;

pub use driver::{Config, Supervisor};
pub use machine::Outcome;
pub use session::Session;
pub use tokio_tungstenite::tungstenite;
