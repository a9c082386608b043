//! Shared helpers for the CLI tests (`cli_connect`, `cli_signals`, `cli_usage`).
//!
//! - [`server`]: an independent, hand-written websocket server with per-connection
//!   behaviours and recordings.
//! - [`process`]: the real `wsup` binary with piped stdio, output captured as it arrives.
//! - [`proxy`]: an HTTP `CONNECT` proxy with scripted answers and recorded requests.
//!
//! Every wait is event-driven (a watch channel woken on each change) and bounded by
//! [`BOUND`]; nothing sleeps to synchronise.
#![allow(dead_code)] // each test crate uses a different part of the helpers

pub mod process;
pub mod proxy;
pub mod server;

use std::time::Duration;

#[allow(unused_imports)]
pub use process::{
    connect, fixture, send_signal, serve, serve_tls, stop_serve, wsup_command, Finished, Wsup, FAST,
};
#[allow(unused_imports)]
pub use server::{Behaviour, Connection, Server};

/// Upper bound for any single wait: generous for a loaded 2-core CI machine; the normal
/// case takes milliseconds.
pub const BOUND: Duration = Duration::from_secs(15);

/// A loopback port that refuses connections: bound once to get a free port, then
/// released. (Another process could take it in between; on a test machine that is rare
/// and would show up as a failed assertion, not a hang.)
pub fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// The non-empty lines of a diagnostic output, without clap's trailing
/// "For more information, try '--help'." hint.
pub fn diagnostic_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .filter(|line| !line.starts_with("For more information, try"))
        .collect()
}
