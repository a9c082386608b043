//! (c) memory: RSS and idle CPU per supervised connection, in a child process of the bench.

use crate::fleet::{quiet_signals, start_fleet, stop_fleet, Ready};
use crate::procs::spawn_wsup_serve;
use crate::report::Report;
use crate::system::{cpu_time, raise_nofile_limit, rss_bytes};
use crate::Settings;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use wsup::Config;

/// Runs in a child process (`WSUP_BENCH_CHILD=memory KIND N WINDOW_MS URL`): opens N
/// idle connections, prints `RESULT {json}`.
pub(crate) fn memory_child(spec: &str) {
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

pub(crate) fn bench_memory(settings: &Settings, report: &mut Report) {
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
                // Issue #16: at most 40 KiB.
                "≤ 40 KiB",
                Some(pw <= 40.0 * 1024.0),
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
