//! (d) reconnect: the server restarts on the same port; time to connected minus the backoff.

use crate::fleet::{quiet_signals, start_fleet, stop_fleet, Events, Seen};
use crate::report::{ms, percentile, Report};
use crate::Settings;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wsup::backoff::BackoffPolicy;
use wsup::serve::{ServeOptions, ServerHandle};
use wsup::Config;

pub(crate) async fn start_server(listen: SocketAddr, script: &str) -> ServerHandle {
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

pub(crate) fn bench_reconnect(
    settings: &Settings,
    rt: &tokio::runtime::Runtime,
    report: &mut Report,
) {
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
