//! (f) storm: many supervisors, the server restarts; reconnections per 100 ms.

use crate::fleet::{quiet_signals, start_fleet, stop_fleet, Events, Seen};
use crate::reconnect::start_server;
use crate::report::{ms, Report};
use crate::Settings;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wsup::backoff::BackoffPolicy;
use wsup::Config;

pub(crate) async fn storm(n: usize) -> Result<Value, String> {
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

pub(crate) fn bench_storm(settings: &Settings, rt: &tokio::runtime::Runtime, report: &mut Report) {
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
