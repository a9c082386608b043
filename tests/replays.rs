//! `--record` and `wsup replay`: the committed recordings in `tests/replays/` are part of
//! the contract (what the machine does on the demo's faults), live runs replay to the
//! same transitions, and a changed machine is caught at the first divergence.
//!
//! Re-record the committed sessions (after a deliberate change of behaviour) with
//!
//! ```text
//! WSUP_BLESS=1 cargo test --test replays
//! ```
//!
//! which runs each scenario against `wsup serve` (or `wsup demo`) with a fixed jitter
//! seed: the transitions, delays and outcomes come out the same every time. What real
//! time decides may differ between re-recordings: the recorded times (microseconds), a
//! ping timer that fires or not before the demo's half-open connection is declared dead,
//! whether a write was still pending when stdin ended.

mod support;

use std::path::{Path, PathBuf};
use support::{serve, stop_serve, wsup_command, Finished, Wsup, FAST};

const REPLAYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/replays");
const TOKEN: &str = "replay-test-token-never-recorded";

/// One recorded session of a fault.
struct Scenario {
    /// `tests/replays/NAME.jsonl`
    name: &'static str,
    /// `wsup serve --script`; `None`: the session is `wsup demo`.
    script: Option<&'static str>,
    /// Extra flags for `wsup connect`.
    args: &'static [&'static str],
    /// Lines written to stdin before it is closed; `None` keeps stdin open.
    stdin: Option<&'static [&'static str]>,
    /// The exit code the live session had (and the replay reports).
    exit_code: i32,
    /// Words of the final line or of the outcome the replay prints.
    says: &'static str,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "demo",
        script: None,
        args: &[],
        stdin: None,
        exit_code: 0,
        says: "server closed the session (1000 tour complete)",
    },
    Scenario {
        name: "close-1011-retries-exhausted",
        script: Some("close:1011:No shell-agent listening for this cluster"),
        args: &["--max-retries", "3"],
        stdin: None,
        exit_code: 75,
        says: "No shell-agent listening for this cluster",
    },
    Scenario {
        name: "http-503-retry-after-then-close-1000",
        script: Some("http:503:1,close:1000:bye"),
        args: &[],
        stdin: None,
        exit_code: 0,
        says: "server closed the session (1000 bye)",
    },
    Scenario {
        name: "static-token-http-401",
        script: Some("http:401"),
        args: &["--token-env", "WSUP_REPLAY_TOKEN"],
        stdin: None,
        exit_code: 77,
        says: "401",
    },
    Scenario {
        name: "close-1007-permission",
        script: Some(
            "close:1007:Invalid permission: Not authorized to websocket-gateway SHELL_EXEC",
        ),
        args: &[],
        stdin: None,
        exit_code: 77,
        says: "SHELL_EXEC",
    },
    Scenario {
        name: "echo-then-stdin-eof",
        script: Some("echo"),
        args: &["--linger", "100ms"],
        stdin: Some(&["hello", "world"]),
        exit_code: 0,
        says: "the session ended with exit code 0",
    },
];

fn committed(name: &str) -> PathBuf {
    Path::new(REPLAYS).join(format!("{name}.jsonl"))
}

/// Runs the scenario live with `-v --record path`; returns how it ended.
async fn record(scenario: &Scenario, path: &Path) -> Finished {
    let path = path.to_str().expect("UTF-8 path");
    let Some(script) = scenario.script else {
        return Wsup::spawn(["demo", "-v", "--record", path, "--jitter-seed", "1"])
            .finish()
            .await;
    };
    let (server, url) = serve(script).await;
    let mut command = wsup_command();
    command
        .args([
            "connect",
            &url,
            "-v",
            "--record",
            path,
            "--jitter-seed",
            "1",
        ])
        .args(FAST)
        .args(scenario.args)
        .env("WSUP_REPLAY_TOKEN", TOKEN);
    let mut wsup = Wsup::spawn_command(command);
    if let Some(lines) = scenario.stdin {
        for line in lines {
            wsup.write_line(line).await;
        }
        wsup.close_stdin();
    }
    let finished = wsup.finish().await;
    stop_serve(server).await;
    finished
}

/// `wsup replay ARGS…`: (exit code, stdout, stderr).
async fn replay(args: &[&str]) -> (i32, String, String) {
    let output = wsup_command()
        .arg("replay")
        .args(args)
        .output()
        .await
        .expect("run wsup replay");
    (
        output.status.code().expect("an exit code"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The transition lines of `-v` output (`Dialing -> Connected from=…`).
fn transitions(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|line| line.contains(" -> ") && line.contains(" from=\""))
        .map(|line| {
            // A replay's line starts with its recorded time: "   1.205011s Dialing -> …".
            let line = line.trim_start();
            match line.split_once(' ') {
                Some((time, rest))
                    if time.ends_with('s') && time.starts_with(|c: char| c.is_ascii_digit()) =>
                {
                    rest.to_owned()
                }
                _ => line.to_owned(),
            }
        })
        .collect()
}

/// Every scenario, run live now: its replay prints the very transitions the live `-v`
/// run printed, and ends with the live exit code. With `WSUP_BLESS=1` the recordings
/// replace the committed ones.
#[tokio::test]
async fn live_sessions_replay_to_the_same_transitions_and_exit_code() {
    let bless = std::env::var_os("WSUP_BLESS").is_some();
    let dir = tempfile::tempdir().expect("temp dir");
    for scenario in SCENARIOS {
        let path = if bless {
            committed(scenario.name)
        } else {
            dir.path().join(format!("{}.jsonl", scenario.name))
        };
        let live = record(scenario, &path).await;
        live.assert_code(scenario.exit_code);
        let recorded = std::fs::read_to_string(&path).expect("the recording");
        assert!(
            !recorded.contains(TOKEN),
            "{}: the token was recorded",
            scenario.name
        );
        let (code, stdout, stderr) = replay(&[path.to_str().unwrap()]).await;
        assert_eq!(code, 0, "{}: {stdout}{stderr}", scenario.name);
        let live_lines = transitions(&live.stderr);
        assert!(
            !live_lines.is_empty(),
            "{}: no transitions\n{}",
            scenario.name,
            live.dump()
        );
        assert_eq!(
            transitions(&stdout),
            live_lines,
            "{}:\n{stdout}",
            scenario.name
        );
        assert!(
            stdout.contains(&format!(
                "the session ended with exit code {}",
                scenario.exit_code
            )),
            "{}: {stdout}",
            scenario.name
        );
    }
}

/// The committed recordings are the contract: today's machine does what it did then.
#[tokio::test]
async fn committed_recordings_replay_the_same_with_their_outcome() {
    for scenario in SCENARIOS {
        let path = committed(scenario.name);
        let (code, stdout, stderr) = replay(&[path.to_str().unwrap()]).await;
        assert_eq!(
            code, 0,
            "{} no longer replays the same (re-record with WSUP_BLESS=1 cargo test --test replays if the change is deliberate):\n{stdout}{stderr}",
            scenario.name
        );
        assert!(
            stdout.contains(&format!(
                "the session ended with exit code {}",
                scenario.exit_code
            )),
            "{}: {stdout}",
            scenario.name
        );
        assert!(
            stdout.contains(scenario.says),
            "{}: {stdout}",
            scenario.name
        );
        // --format json: one object per transition, then the result.
        let (code, json, _) = replay(&["--format", "json", path.to_str().unwrap()]).await;
        assert_eq!(code, 0);
        let objects: Vec<serde_json::Value> = json
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
            .collect();
        let (result, transitions) = objects.split_last().expect("a result");
        assert_eq!(result["replay"], "same");
        assert_eq!(result["exit_code"], scenario.exit_code);
        assert!(transitions
            .iter()
            .all(|t| t["from"].is_string() && t["t_us"].is_u64()));
    }
}

#[test]
fn every_committed_recording_is_a_scenario() {
    for entry in std::fs::read_dir(REPLAYS).expect("tests/replays") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
        assert!(
            SCENARIOS.iter().any(|s| s.name == stem),
            "tests/replays/{name} is not in SCENARIOS: nothing replays it"
        );
    }
}

/// The demo's timeline names every state that occurred and marks every fault.
#[tokio::test]
async fn the_timeline_is_svg_naming_every_state_and_fault() {
    let dir = tempfile::tempdir().expect("temp dir");
    let svg_path = dir.path().join("demo.svg");
    let demo = committed("demo");
    let (code, json, stderr) = replay(&[
        "--format",
        "json",
        "--timeline",
        svg_path.to_str().unwrap(),
        demo.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    let svg = std::fs::read_to_string(&svg_path).expect("the timeline");
    let doc = roxmltree::Document::parse(&svg).expect("the timeline is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    let occurred: Vec<String> = json
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|t| t["to"].as_str().map(str::to_owned))
        .collect();
    assert!(occurred.len() > 5, "{json}");
    for state in &occurred {
        assert!(texts.contains(&state.as_str()), "{state} not in {texts:?}");
    }
    for fault in ["close 1011", "http 503", "liveness timeout", "close 1008"] {
        assert!(texts.contains(&fault), "{fault} not in {texts:?}");
    }
}

/// A different machine (here: the recording's backoff multiplier changed, which moves
/// every jittered delay) is reported at the first step whose effects differ, both sides
/// printed, exit 1.
#[tokio::test]
async fn a_changed_machine_is_reported_at_the_first_divergence() {
    let recorded = std::fs::read_to_string(committed("demo")).expect("demo recording");
    let tweaked = recorded.replacen(
        r#""backoff_multiplier":"2""#,
        r#""backoff_multiplier":"3""#,
        1,
    );
    assert_ne!(tweaked, recorded, "the header names the multiplier");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tweaked.jsonl");
    std::fs::write(&path, tweaked).expect("write");
    let (code, stdout, _) = replay(&[path.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("wsup replay: diverged at event"),
        "{stdout}"
    );
    assert!(stdout.contains("  recorded: ["), "{stdout}");
    assert!(stdout.contains("  replayed: ["), "{stdout}");
    assert!(!stdout.contains("same as recorded"), "{stdout}");
}

/// A recording cut mid-line (kill -9, full disk) replays up to its last whole line.
#[tokio::test]
async fn a_cut_last_line_is_ignored_with_a_note() {
    let recorded = std::fs::read_to_string(committed("demo")).expect("demo recording");
    let cut = &recorded[..recorded.len() - 20];
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cut.jsonl");
    std::fs::write(&path, cut).expect("write");
    let (code, stdout, stderr) = replay(&[path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("was cut short"), "{stderr}");
    assert!(
        stdout.contains("the recording ends before the session did"),
        "{stdout}"
    );
}

#[tokio::test]
async fn what_is_not_a_recording_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.jsonl");
    let (code, _, stderr) = replay(&[missing.to_str().unwrap()]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
    let garbage = dir.path().join("garbage.jsonl");
    std::fs::write(&garbage, "{\"hello\":1}\n{}\n").expect("write");
    let (code, _, stderr) = replay(&[garbage.to_str().unwrap()]).await;
    assert_eq!(code, 65, "{stderr}");
    assert!(stderr.contains("not a wsup recording"), "{stderr}");
    // An endless input is refused before it is read, not read into memory.
    let (code, _, stderr) = replay(&["/dev/zero"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
    // A recorded length no connection takes is refused, not allocated.
    let echo = std::fs::read_to_string(committed("echo-then-stdin-eof")).expect("read");
    assert!(
        echo.contains(r#""received":{"kind":"text","len":5}"#),
        "{echo}"
    );
    let hostile = dir.path().join("hostile.jsonl");
    let huge = echo.replacen(
        r#""received":{"kind":"text","len":5}"#,
        r#""received":{"kind":"text","len":900000000000000}"#,
        1,
    );
    std::fs::write(&hostile, huge).expect("write");
    let (code, _, stderr) = replay(&[hostile.to_str().unwrap()]).await;
    assert_eq!(code, 65, "{stderr}");
    assert!(stderr.contains("900000000000000 bytes"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A timeline that cannot be written: 73.
    let demo = committed("demo");
    let (code, _, stderr) = replay(&[
        "--timeline",
        "/nonexistent-dir/t.svg",
        demo.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 73, "{stderr}");
}

/// An unwritable --record path stops before anything is dialed: exit 73.
#[tokio::test]
async fn an_unwritable_recording_is_exit_73_before_dialing() {
    let port = support::refused_port();
    let finished = Wsup::spawn([
        "connect",
        &format!("ws://127.0.0.1:{port}/"),
        "--record",
        "/nonexistent-dir/session.jsonl",
    ])
    .finish()
    .await;
    finished.assert_code(73);
    finished.assert_stderr_contains("cannot create the recording /nonexistent-dir/session.jsonl");
    finished.assert_stderr_lacks("retrying");
}

#[tokio::test]
async fn port_forward_refuses_to_record() {
    let finished = Wsup::spawn([
        "port-forward",
        "ws://127.0.0.1:1/",
        "--listen",
        "0",
        "--record",
        "x.jsonl",
    ])
    .finish()
    .await;
    finished.assert_code(2);
    finished.assert_stderr_contains("--record: `wsup port-forward` does not take it");
    assert!(!Path::new("x.jsonl").exists());
}

/// A full disk stops the recording with one notice; the session goes on and ends well.
#[tokio::test]
async fn a_full_disk_stops_recording_not_the_session() {
    let (server, url) = serve("echo").await;
    let mut wsup = Wsup::spawn(["connect", &url, "--linger", "0", "--record", "/dev/full"]);
    wsup.write_line("hello").await;
    wsup.wait_stdout("hello").await;
    wsup.close_stdin();
    let finished = wsup.finish().await;
    finished.assert_code(0).assert_stdout("hello\n");
    assert_eq!(
        finished.stderr.matches("recording stopped").count(),
        1,
        "{}",
        finished.dump()
    );
    finished.assert_stderr_contains("cannot write /dev/full");
    stop_serve(server).await;
}

/// Past --record-max the file is rotated once to FILE.1 (a notice says so); a replay of
/// FILE reads FILE.1 first.
#[tokio::test]
async fn a_recording_past_its_bound_is_rotated_once_and_still_replays() {
    let (server, url) = serve("echo").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("big.jsonl");
    let mut wsup = Wsup::spawn([
        "connect",
        &url,
        "--linger",
        "0",
        "--record",
        path.to_str().unwrap(),
        "--record-max",
        "2KiB",
    ]);
    for i in 0..20 {
        wsup.write_line(&format!("line {i}")).await;
        wsup.wait_stdout(&format!("line {i}\n")).await;
    }
    wsup.close_stdin();
    let finished = wsup.finish().await;
    finished.assert_code(0);
    finished.assert_stderr_contains("recording rotated");
    let first = dir.path().join("big.jsonl.1");
    assert!(first.exists(), "{}", finished.dump());
    assert!(std::fs::metadata(&first).unwrap().len() <= 2048);
    let (code, stdout, stderr) = replay(&[path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("replaying"), "{stderr}");
    stop_serve(server).await;
}

/// `kill -9` in the middle of a session: what was written replays, whole lines only.
#[tokio::test]
async fn a_session_killed_with_sigkill_leaves_a_replayable_recording() {
    let (server, url) = serve("echo").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("killed.jsonl");
    let mut wsup = Wsup::spawn(["connect", &url, "-v", "--record", path.to_str().unwrap()]);
    wsup.write_line("hello").await;
    wsup.wait_stdout("hello\n").await;
    support::send_signal(wsup.pid(), "KILL");
    let finished = wsup.finish().await;
    assert_eq!(finished.status.code(), None, "killed, not exited");
    let (code, stdout, stderr) = replay(&[path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("Dialing -> Connected"),
        "the transitions before the kill were written: {stdout}"
    );
    assert!(
        stdout.contains("the recording ends before the session did"),
        "{stdout}"
    );
    stop_serve(server).await;
}
