//! (e) signals: SIGINT/SIGTERM to `wsup connect` → process exit, in three phases.

use crate::procs::{first_line, wsup_command};
use crate::reconnect::start_server;
use crate::report::{median, ms, percentile, Report};
use crate::system::send_signal;
use crate::Settings;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The state of the `wsup connect` process when the signal is sent.
#[derive(Clone, Copy, Debug)]
enum SupervisorState {
    Connected,
    Dialing,
    BackingOff,
}

/// Spawns `wsup connect` in `phase`, signals it, returns the time from kill(2) to the
/// reaped exit and the exit code. `None` when the phase could not be set up.
fn signal_once(
    rt: &tokio::runtime::Runtime,
    phase: SupervisorState,
    sig: libc::c_int,
) -> Result<(f64, i32), String> {
    let script = match phase {
        SupervisorState::Connected => "echo",
        SupervisorState::Dialing => "hang",
        SupervisorState::BackingOff => "close:1011:bench",
    };
    let server = rt.block_on(start_server("127.0.0.1:0".parse().expect("addr"), script));
    let url = server.ws_url();
    let mut args = vec!["connect".to_owned(), url];
    match phase {
        SupervisorState::Connected => {}
        SupervisorState::Dialing => args.extend(["--connect-timeout".into(), "60s".into()]),
        SupervisorState::BackingOff => args.extend([
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
        SupervisorState::Connected => {
            let (mut stdin, stdout) = (stdin.expect("piped"), stdout.expect("piped"));
            let ok = stdin.write_all(b"are you there\n").is_ok();
            let echoed = ok
                && first_line(stdout, |l| (l.trim() == "are you there").then(String::new))
                    .is_some();
            // Keep stdin open: its EOF would end the session on its own.
            std::mem::forget(stdin);
            echoed
        }
        SupervisorState::Dialing => {
            let ok = wait_until(&|| server.stats().connections >= 1);
            // The upgrade request is out; the server never answers it.
            std::thread::sleep(Duration::from_millis(20));
            ok
        }
        SupervisorState::BackingOff => {
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
    if matches!(phase, SupervisorState::BackingOff) && redialed {
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

pub(crate) fn bench_signals(
    settings: &Settings,
    rt: &tokio::runtime::Runtime,
    report: &mut Report,
) {
    let mut data = serde_json::Map::new();
    let mut base = Vec::new();
    for _ in 0..settings.signal_samples.max(3) {
        base.push(signal_baseline(libc::SIGTERM));
    }
    let base50 = median(&mut base.clone());
    for phase in [
        SupervisorState::Connected,
        SupervisorState::Dialing,
        SupervisorState::BackingOff,
    ] {
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
            SupervisorState::Connected => "connected",
            SupervisorState::Dialing => "dialing (server never answers)",
            SupervisorState::BackingOff => "backing off (60 s window)",
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
