//! (a) port-forward throughput: tunnels of each kind against direct TCP, both directions.

use crate::procs::{
    spawn_plain, spawn_websocat_client, spawn_websocat_client_tls, spawn_websocat_server,
    spawn_websocat_server_tls, spawn_wsup_forward, spawn_wsup_forward_tls, spawn_wsup_serve_tls,
    spawn_wsup_serve_with,
};
use crate::report::{median, ms, Report};
use crate::system::process_cpu_times;
use crate::{Settings, CHUNK, MIB};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

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
    /// The same with every connection on one thread (`TOKIO_WORKER_THREADS=1`, the
    /// default before connections were spread over two threads per core).
    WsupOneThread,
    /// `websocat -b tcp-l:… ws://…` or `websocat -b ws-l:… tcp:…`.
    Websocat,
    /// [`plain_tunnel_child`]: tokio-tungstenite and nothing else.
    Plain,
    /// [`relay_child`]: a plain TCP relay, no websocket; client and server side together
    /// make the relay chain, the ceiling of a tunnel with these hops.
    Relay,
    /// `wsup port-forward wss://… --ca-cert` or `wsup serve --tls-cert …`.
    WsupTls,
    /// `websocat -b -k tcp-l:… wss://…` or `websocat -b --pkcs12-der … wss-l:… tcp:…`.
    WebsocatTls,
}

/// How many connections a row of the forward section moves its bytes over at once.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Width {
    One,
    /// [`PARALLEL`].
    Parallel,
    /// `WSUP_BENCH_TUNNELS_MANY` (32 by default).
    Many,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Direction {
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
                Side::Wsup | Side::WsupOneThread => {
                    let workers = (server == Side::WsupOneThread).then_some(1);
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
                Side::Relay => {
                    let (p, addr) =
                        spawn_plain("relay", far.addr).ok_or("the second relay did not start")?;
                    procs.push(p);
                    addr
                }
                Side::WsupTls => {
                    let (p, addr) = spawn_wsup_serve_tls(&format!("forward:{}", far.addr), None);
                    procs.push(p);
                    addr
                }
                Side::WebsocatTls => {
                    let (p, addr) =
                        spawn_websocat_server_tls(websocat.ok_or("no websocat")?, far.addr)?;
                    procs.push(p);
                    addr
                }
            };
            match client {
                Side::Wsup | Side::WsupOneThread => {
                    let workers = (client == Side::WsupOneThread).then_some(1);
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
                Side::Relay => {
                    let (p, addr) =
                        spawn_plain("relay", ws).ok_or("the first relay did not start")?;
                    procs.push(p);
                    addr
                }
                Side::WsupTls => {
                    let (p, addr) = spawn_wsup_forward_tls(ws, None);
                    procs.push(p);
                    addr
                }
                Side::WebsocatTls => {
                    let (p, addr) = spawn_websocat_client_tls(websocat.ok_or("no websocat")?, ws)
                        .ok_or("websocat tcp-l (wss) did not start")?;
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

pub(crate) struct Combo {
    pub(crate) name: &'static str,
    pub(crate) direction: Direction,
    client: Option<Side>,
    server: Option<Side>,
    width: Width,
    connections: usize,
}

/// How many tunnels the parallel rows run at once through one tunnel pair.
const PARALLEL: usize = 4;

/// The tunnels of the forward section, in both directions: (name, client side, server
/// side, connections at once); `None` for both sides is direct TCP.
const TUNNELS: [(&str, Option<Side>, Option<Side>, Width); 16] = [
    ("direct TCP", None, None, Width::One),
    (
        "wsup port-forward → wsup serve",
        Some(Side::Wsup),
        Some(Side::Wsup),
        Width::One,
    ),
    (
        "wsup pair, one thread",
        Some(Side::WsupOneThread),
        Some(Side::WsupOneThread),
        Width::One,
    ),
    (
        "websocat → websocat",
        Some(Side::Websocat),
        Some(Side::Websocat),
        Width::One,
    ),
    (
        "plain tokio-tungstenite pair",
        Some(Side::Plain),
        Some(Side::Plain),
        Width::One,
    ),
    (
        "relay chain (two plain TCP relays)",
        Some(Side::Relay),
        Some(Side::Relay),
        Width::One,
    ),
    (
        "wsup port-forward → websocat",
        Some(Side::Wsup),
        Some(Side::Websocat),
        Width::One,
    ),
    (
        "websocat → wsup serve",
        Some(Side::Websocat),
        Some(Side::Wsup),
        Width::One,
    ),
    (
        "wss: wsup pair",
        Some(Side::WsupTls),
        Some(Side::WsupTls),
        Width::One,
    ),
    (
        "wss: websocat pair",
        Some(Side::WebsocatTls),
        Some(Side::WebsocatTls),
        Width::One,
    ),
    ("parallel: direct TCP", None, None, Width::Parallel),
    (
        "parallel: wsup pair",
        Some(Side::Wsup),
        Some(Side::Wsup),
        Width::Parallel,
    ),
    (
        "parallel: wsup pair, one thread",
        Some(Side::WsupOneThread),
        Some(Side::WsupOneThread),
        Width::Parallel,
    ),
    (
        "many: relay chain",
        Some(Side::Relay),
        Some(Side::Relay),
        Width::Many,
    ),
    (
        "many: wsup pair",
        Some(Side::Wsup),
        Some(Side::Wsup),
        Width::Many,
    ),
    (
        "many: wsup pair, one thread",
        Some(Side::WsupOneThread),
        Some(Side::WsupOneThread),
        Width::Many,
    ),
];

pub(crate) fn bench_forward(
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
                .map(move |&(name, client, server, width)| Combo {
                    name,
                    direction,
                    client,
                    server,
                    width,
                    connections: match width {
                        Width::One => 1,
                        Width::Parallel => PARALLEL,
                        Width::Many => settings.tunnels_many,
                    },
                })
        })
        .filter(|c| c.connections > 0 && settings.wants_tunnel(c))
        .collect();
    // Interleaved repetitions, so that a burst of load elsewhere on the machine hits
    // every configuration alike; the median of each is reported.
    let mut samples: Vec<Vec<TunnelRun>> = vec![Vec::new(); combos.len()];
    let mut errors: Vec<Option<String>> = vec![None; combos.len()];
    for rep in 0..settings.forward_reps {
        // The order changes every repetition (rotated, and reversed every other one),
        // so that no configuration always runs right after the same other one: with a
        // fixed order, two builds measured 8 % apart downstream in adjacent rows (6 of 6
        // repetitions) that measured 1 % apart in rotating order (docs/benchmarks.md).
        let mut order: Vec<usize> = (0..combos.len()).collect();
        order.rotate_left(rep % combos.len().max(1));
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let c = &combos[i];
            let websocat_side = |side| side == s || side == Some(Side::WebsocatTls);
            if (websocat_side(c.client) || websocat_side(c.server)) && ws.is_none() {
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
                width: Width| {
        combos
            .iter()
            .position(|c| {
                c.direction == direction
                    && c.client == client
                    && c.server == server
                    && c.width == width
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
        let rate = |client, server| find(&rates, direction, client, server, Width::One);
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
        // Issue #16: the pair ≥ 1.3× websocat's over ws://; each role on its own ≥ 1.0×.
        for (what, wsup, target) in [
            ("wsup pair vs websocat pair", pair, 1.3),
            (
                "client role: `port-forward` vs `websocat tcp-l:` (websocat server)",
                rate(w, s),
                1.0,
            ),
            (
                "server role: `serve forward:` vs `websocat ws-l:` (websocat client)",
                rate(s, w),
                1.0,
            ),
        ] {
            let r = ratio(wsup, websocat_pair);
            report.row(
                "forward",
                format!("{size} {dir}, {what}"),
                fmt(wsup),
                format!("{} websocat", fmt(websocat_pair)),
                r,
                format!("≥ {target:.1}×"),
                r.map(|r| r >= target),
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
        let relay = Some(Side::Relay);
        let relay_chain = rate(relay, relay);
        let r = ratio(pair, relay_chain);
        report.row(
            "forward",
            format!(
                "{size} {dir}, wsup pair vs relay chain (two plain TCP relays, 64 KiB buffers, same hops, no websocket)"
            ),
            fmt(pair),
            format!("{} relay chain", fmt(relay_chain)),
            r,
            "≥ 0.95×",
            r.map(|r| r >= 0.95),
        );
        let (wsup_tls, websocat_tls) = (Some(Side::WsupTls), Some(Side::WebsocatTls));
        let (wss_pair, wss_websocat) = (rate(wsup_tls, wsup_tls), rate(websocat_tls, websocat_tls));
        if wss_pair.is_some() {
            let r = ratio(wss_pair, wss_websocat);
            report.row(
                "forward",
                format!(
                    "{size} {dir}, wss://: wsup pair vs websocat pair (websocat client with -k)"
                ),
                fmt(wss_pair),
                format!("{} websocat", fmt(wss_websocat)),
                r,
                "≥ 1.0×",
                r.map(|r| r >= 1.0),
            );
        }
        // "820 ms (100 ms user)": all of it, and the part in user space.
        let cpu = |client, server| {
            let all = find(&cpus, direction, client, server, Width::One);
            match find(&user_cpus, direction, client, server, Width::One) {
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
            format!(
                "{} plain, {} websocat, {} relay chain",
                cpu(p, p),
                cpu(s, s),
                cpu(relay, relay)
            ),
            ratio(
                find(&cpus, direction, w, w, Width::One),
                find(&cpus, direction, p, p, Width::One),
            ),
            "(information)",
            None,
        );
        let w1 = Some(Side::WsupOneThread);
        if let Some(one_thread) = rate(w1, w1) {
            report.row(
                "forward",
                format!(
                    "{size} {dir}, one tunnel: wsup pair (two threads per core, the default) vs the same on one thread (`TOKIO_WORKER_THREADS=1`)"
                ),
                fmt(pair),
                format!("{} one thread", fmt(Some(one_thread))),
                ratio(pair, Some(one_thread)),
                "(information: about 1.0×)",
                None,
            );
        }
        let parallel = |client, server| find(&rates, direction, client, server, Width::Parallel);
        let (per_core, one_thread, direct) =
            (parallel(w, w), parallel(w1, w1), parallel(None, None));
        if per_core.is_some() {
            report.row(
                "forward",
                format!(
                    "{size} {dir} over {PARALLEL} tunnels at once (one port-forward, one serve), in all: two threads per core (the default) vs one thread"
                ),
                fmt(per_core),
                format!(
                    "{} on one thread, {} direct TCP ({PARALLEL} connections)",
                    fmt(one_thread),
                    fmt(direct)
                ),
                ratio(per_core, one_thread),
                "(information)",
                None,
            );
        }
        let many = |client, server| find(&rates, direction, client, server, Width::Many);
        let (per_core, one_thread, relays) = (many(w, w), many(w1, w1), many(relay, relay));
        let n = settings.tunnels_many;
        for (what, wsup, target) in [
            ("two threads per core (the default)", per_core, Some(0.9)),
            ("every tunnel on one thread", one_thread, None),
        ] {
            if wsup.is_none() {
                continue;
            }
            let r = ratio(wsup, relays);
            report.row(
                "forward",
                format!(
                    "{size} {dir} over {n} busy tunnels at once (one port-forward, one serve), in all: wsup pair with {what} vs {n} relay chains"
                ),
                fmt(wsup),
                format!("{} relay chains", fmt(relays)),
                r,
                target.map_or("(information)".to_owned(), |t| format!("≥ {t}×")),
                target.and_then(|t| r.map(|r| r >= t)),
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
                "connections": c.connections,
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
