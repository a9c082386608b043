//! The `wsup` binary: a thin client of the library. Parses flags, picks a session,
//! prints notices and maps the outcome to an exit code.
//!
//! Longer than the 600 lines we aim for: it is one job (the process: runtime, logging,
//! one stderr writer that never fails the exit status, and one small function per
//! subcommand), and splitting it would put the binary's plumbing beside the library.

use clap::{CommandFactory, FromArgMatches};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use wsup::cli::{Cli, Command, CommonArgs, LogFormat, ServeArgs};
use wsup::driver::{process_signals, NoticeSink};
use wsup::exit;
use wsup::forward::Forwarder;
use wsup::machine::{Notice, Outcome, Sig};
use wsup::report::{self, CredentialKind};
use wsup::session::connect::ConnectSession;
use wsup::session::logs::LogsSession;
use wsup::session::shell::{self, ShellSession, TerminalStderr};
use wsup::{Session, Supervisor};

/// `wsup shell`'s default `--drain-timeout`.
const SHELL_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

fn main() {
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(e) => exit_on_parse_error(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => exit_on_parse_error(e),
    };
    JSON_STDERR.store(cli.common.log_format == LogFormat::Json, Ordering::Relaxed);
    // Flags a subcommand would ignore are refused rather than silently dropped.
    let given = wsup::cli::explicit_common_flags(&matches);
    if let Err(e) = wsup::cli::check_common_flags(&cli.command, &given) {
        std::process::exit(usage_error(e).into());
    }
    match cli.command {
        Command::Completions { shell } => {
            let written = wsup::manual::write_completions(shell, &mut std::io::stdout());
            exit_after_printing(written);
        }
        Command::Man => {
            let written = wsup::manual::write_man_page(&mut std::io::stdout());
            exit_after_printing(written);
        }
        Command::Replay {
            file,
            format,
            timeline,
        } => {
            // No runtime, no logging: the replay is synchronous and prints its own lines.
            let mut stdout = std::io::stdout().lock();
            let mut stderr = std::io::stderr();
            let code =
                wsup::replay::run(&file, format, timeline.as_deref(), &mut stdout, &mut stderr);
            std::process::exit(code.into());
        }
        _ => {}
    }
    init_logging(&cli.common, matches!(cli.command, Command::Demo));
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // wsup is I/O-bound: with one worker, the driver and its session hand frames over on
    // the same thread instead of waking each other across cores (downstream port-forward
    // measured 1.19× faster in benches/e2e/). TOKIO_WORKER_THREADS still wins.
    // port-forward's tunnels and serve's connections run on their own threads (two per
    // core, `wsup::shards`), each connection on one, so that many of them use every core.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprint_message(
                "wsup",
                "error",
                &format!("cannot start the async runtime: {e}"),
            );
            std::process::exit(exit::INTERNAL.into());
        }
    };
    // The supervisor runs as a spawned task, on a worker thread, next to its session:
    // polled from `block_on` on the main thread instead, every message would cross
    // threads (round trips measured 0.64× of the library's in benches/e2e/).
    let code = runtime
        .block_on(async { tokio::spawn(run(cli, given)).await })
        .unwrap_or(exit::INTERNAL);
    if [exit::SIGINT, exit::SIGTERM].contains(&code) {
        // A signal wins (exit within 100 ms): stdout may be a pipe nobody reads any more
        // (a paused pager, a stuck consumer), and a flush, std's own at exit included,
        // would wait for its reader. What the session wrote before is out; the rest is
        // dropped, as it would be had the signal killed us.
        // SAFETY: `_exit` ends the process at once; nothing runs after it.
        unsafe { libc::_exit(code.into()) }
    }
    // Not after lost output: a write still blocked on a reader that never reads (past
    // --drain-timeout) holds stdout's lock, and a flush would wait for it forever.
    // (std's own flush at exit only tries the lock.)
    if code != exit::IO_ERROR {
        let _ = std::io::stdout().flush();
    }
    // Exit while the runtime is still alive: dropping it would wait for the blocking
    // thread that may be sitting in a stdin read forever.
    std::process::exit(code.into());
}

/// Exit 0 once stdout has everything, 74 (output lost) when it could not take it (a
/// closed pipe, a full disk).
fn exit_after_printing(written: std::io::Result<()>) -> ! {
    match written.and_then(|()| std::io::stdout().flush()) {
        Ok(()) => std::process::exit(exit::OK.into()),
        // The reader went away (`wsup man | head`): it chose to stop, as for a session.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(exit::OK.into()),
        Err(e) => {
            eprint_message("wsup", "error", &format!("cannot write to stdout: {e}"));
            std::process::exit(exit::IO_ERROR.into());
        }
    }
}

/// `--help` and `--version` go to stdout with exit 0 (clap's defaults); a usage error is
/// one line on stderr with exit 2, with clap's "did you mean" suggestion if it has one.
fn exit_on_parse_error(e: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() == ErrorKind::DisplayVersion {
        // clap names a subcommand's version "wsup-connect 0.1.0": the program is wsup.
        let written = writeln!(std::io::stdout(), "wsup {}", env!("CARGO_PKG_VERSION"));
        exit_after_printing(written);
    }
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    // The suggestion is a "tip:" paragraph of its own, below the one kept here.
    let suggestions: Vec<String> = [
        ContextKind::SuggestedSubcommand,
        ContextKind::SuggestedArg,
        ContextKind::SuggestedValue,
    ]
    .into_iter()
    .filter_map(|kind| match e.get(kind) {
        Some(ContextValue::String(one)) => Some(vec![one.clone()]),
        Some(ContextValue::Strings(many)) => Some(many.clone()),
        _ => None,
    })
    .flatten()
    .collect();
    // clap's first paragraph, on one line: "the following required arguments were not
    // provided:" is followed by the names on lines of their own.
    let rendered = e.render().to_string();
    let paragraph: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .collect();
    let line = match paragraph.join(" ") {
        joined if joined.is_empty() => "invalid arguments".to_owned(),
        joined => joined,
    };
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    // The flags did not parse, so `--log-format json` is looked for by hand.
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--log-format=json")
        || args
            .windows(2)
            .any(|pair| pair[0] == "--log-format" && pair[1] == "json");
    JSON_STDERR.store(json, Ordering::Relaxed);
    let tip = match suggestions.as_slice() {
        [] => String::new(),
        names => format!("; did you mean {}?", names.join(" or ")),
    };
    eprint_message("wsup", "error", &format!("{line}{tip} (see wsup --help)"));
    std::process::exit(exit::USAGE.into());
}

async fn run(cli: Cli, given: Vec<clap::Id>) -> u8 {
    let common = cli.common;
    match cli.command {
        Command::Connect { url, max_line } => {
            match supervise(&common, &url, notice_printer(&common), || {
                ConnectSession::stdio().max_line(max_line)
            })
            .await
            {
                Ok(outcome) => finish(&outcome, &credential_kind(&common)),
                Err(code) => code,
            }
        }
        Command::Shell { url } => {
            let quiet = common.quiet;
            // In raw mode "\n" does not return the carriage: notices end with "\r\n". On
            // a terminal, the retry plans and "connected" rewrite one status line in place.
            let notices: NoticeSink = Arc::new(move |notice| {
                if !quiet {
                    let line = stderr_line("wsup", "info", report::notice_fields(notice));
                    // On a terminal (text, not JSON), the retry plans and "connected"
                    // rewrite one status line in place.
                    let text = match notice {
                        Notice::Retrying { .. } | Notice::Reconnected
                            if !JSON_STDERR.load(Ordering::Relaxed) =>
                        {
                            shell::status_line(&line)
                        }
                        _ => shell::terminal_line(&line),
                    };
                    let mut stderr = std::io::stderr();
                    let _ = stderr.write_all(text.as_bytes());
                    // A status line has no line end to flush it.
                    let _ = stderr.flush();
                }
            });
            // A terminal reads as fast as it can: an unread shell output is a stuck
            // terminal, not a slow consumer worth waiting for.
            let drain = common.drain_timeout.or(Some(SHELL_DRAIN_TIMEOUT));
            let session = ShellSession::stdio;
            let outcome = match supervise_draining(&common, &url, notices, session, drain).await {
                Ok(outcome) => outcome,
                Err(code) => return code,
            };
            // The session leaves raw mode when it ends; this covers a session that did not
            // end within the supervisor's exit budget. Either way, before the exit.
            shell::restore_terminal();
            if let Some(fields) = report::outcome_fields(&outcome, &credential_kind(&common)) {
                let line = stderr_line("wsup", final_level(&outcome), fields);
                let _ = std::io::stderr().write_all(shell::terminal_line(&line).as_bytes());
            }
            outcome.exit_code()
        }
        Command::Logs { url, raw } => {
            let quiet = common.quiet;
            let warnings = Arc::new(move |warning: &str| {
                if !quiet {
                    eprint_message("wsup", "warn", &format!("warning: {warning}"));
                }
            });
            let session = || LogsSession::stdio(raw, warnings);
            match supervise(&common, &url, notice_printer(&common), session).await {
                Ok(outcome) => finish(&outcome, &credential_kind(&common)),
                Err(code) => code,
            }
        }
        Command::PortForward {
            url,
            listen,
            max_tunnels,
        } => port_forward(&common, &url, &listen, max_tunnels).await,
        Command::Serve(args) => serve(args, common.subprotocols).await,
        // Printed and exited in main, before the runtime starts.
        Command::Completions { .. } | Command::Man | Command::Replay { .. } => exit::OK,
        Command::Demo => {
            // The flags are applied to the tour's settings and checked before the server
            // starts; the URL is the server's, known only once it listens.
            let Ok(placeholder) = "ws://127.0.0.1/".parse() else {
                return exit::INTERNAL;
            };
            let mut tuned = wsup::demo::tour_config(placeholder);
            if let Err(e) = common.tune_demo(&given, &mut tuned) {
                return usage_error(e);
            }
            let adjust = move |config: &mut wsup::driver::Config| {
                config.machine = tuned.machine;
                config.backoff = tuned.backoff;
                config.transport.connect_timeout = tuned.transport.connect_timeout;
            };
            let recorder = match recorder(&common, &CredentialKind::Refreshable) {
                Ok(recorder) => recorder,
                Err(code) => return code,
            };
            let seed = common.jitter_seed;
            let supervise = move |mut supervisor: Supervisor| {
                if let Some(recorder) = recorder {
                    supervisor = supervisor.record(recorder);
                }
                if let Some(seed) = seed {
                    supervisor = supervisor.jitter(wsup::backoff::Jitter::seeded(seed));
                }
                supervisor
            };
            let tour = wsup::demo::run_supervised(
                notice_printer(&common),
                process_signals(),
                adjust,
                supervise,
            );
            match tour.await {
                Ok(outcome) => {
                    let code = finish(&outcome, &CredentialKind::Refreshable);
                    if code == exit::OK {
                        eprint_message(
                            "wsup demo",
                            "info",
                            "the session survived every fault and ended cleanly (exit 0)",
                        );
                    }
                    code
                }
                Err(e) => {
                    eprint_message("wsup demo", "error", &e.to_string());
                    exit::INTERNAL
                }
            }
        }
        Command::States { format } => {
            let diagram = wsup::states::render(format);
            match std::io::stdout().write_all(diagram.as_bytes()) {
                Ok(()) => exit::OK,
                // The reader went away (`wsup states | head`): it chose to stop.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
                Err(e) => {
                    eprint_message(
                        "wsup states",
                        "error",
                        &format!("cannot write the diagram: {e}"),
                    );
                    exit::IO_ERROR
                }
            }
        }
    }
}

/// Validates the common flags for `url` (a usage error is `Err(2)`, printed), then
/// supervises the session until it ends. The session is built only once the flags are
/// known to be good.
async fn supervise<S: Session>(
    common: &CommonArgs,
    url: &str,
    notices: NoticeSink,
    session: impl FnOnce() -> S,
) -> Result<Outcome, u8> {
    supervise_draining(common, url, notices, session, common.drain_timeout).await
}

/// [`supervise`], giving the session `drain_timeout` to write what it received once the
/// session is over (`None`: as long as the reader needs).
async fn supervise_draining<S: Session>(
    common: &CommonArgs,
    url: &str,
    notices: NoticeSink,
    session: impl FnOnce() -> S,
    drain_timeout: Option<Duration>,
) -> Result<Outcome, u8> {
    let prepared = common.prepare(url).map_err(usage_error)?;
    // Before anything is dialed: an unwritable --record path is exit 73.
    let recorder = recorder(common, &credential_kind(common))?;
    first_token(&prepared).await?;
    let mut supervisor = Supervisor::new(prepared.config)
        .credentials(prepared.credentials)
        .on_notice(notices)
        .signals(process_signals())
        .drain_timeout(drain_timeout);
    if let Some(recorder) = recorder {
        supervisor = supervisor.record(recorder);
    }
    if let Some(seed) = common.jitter_seed {
        supervisor = supervisor.jitter(wsup::backoff::Jitter::seeded(seed));
    }
    supervisor.run(session()).await.map_err(usage_error)
}

/// `--record FILE`, created now: `Err(73)` (printed) when it cannot be.
fn recorder(
    common: &CommonArgs,
    kind: &CredentialKind,
) -> Result<Option<wsup::driver::Recorder>, u8> {
    let Some(path) = &common.record else {
        return Ok(None);
    };
    let quiet = common.quiet;
    let notes: wsup::driver::RecordNotes = Arc::new(move |note: &str| {
        if !quiet {
            let mut fields = serde_json::Map::new();
            fields.insert("kind".into(), "notice".into());
            fields.insert("message".into(), note.into());
            // A shell's terminal may be in raw mode: "\r\n" then (plain "\n" otherwise).
            let line = shell::terminal_line(&stderr_line("wsup", "warn", fields));
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    });
    wsup::driver::Recorder::create(path, common.record_max, kind, notes)
        .map(Some)
        .map_err(|e| {
            eprint_message(
                "wsup",
                "error",
                &format!("cannot create the recording {}: {e}", path.display()),
            );
            exit::CANT_CREATE
        })
}

fn usage_error(e: impl std::fmt::Display) -> u8 {
    eprint_message("wsup", "error", &e.to_string());
    exit::USAGE
}

/// `--token-command`'s first run, before anything is dialed: `Err` with the exit code
/// (2 when it cannot work at all, 77 when it failed), the reason printed. SIGINT or
/// SIGTERM meanwhile stops it (and the command) at once, as in any other state.
async fn first_token(prepared: &wsup::cli::Prepared) -> Result<(), u8> {
    let Some(command) = &prepared.token_command else {
        return Ok(());
    };
    let mut signals = process_signals();
    tokio::select! {
        result = command.first_run() => result.map_err(|e| {
            eprint_message("wsup", "error", &e.message);
            e.exit_code
        }),
        sig = wsup::driver::signal_arrives(&mut signals) => {
            Err(finish(&Outcome::Signal(sig), &CredentialKind::Refreshable))
        }
    }
}

fn credential_kind(common: &CommonArgs) -> CredentialKind {
    if common.token_command.is_some() {
        return CredentialKind::Refreshable;
    }
    match (&common.token_env, &common.credentials) {
        (Some(var), _) => CredentialKind::StaticEnv(var.clone()),
        (None, Some(path)) => CredentialKind::File(path.display().to_string()),
        (None, None) if has_credential_header(common) => CredentialKind::Header,
        (None, None) => CredentialKind::None,
    }
}

/// An `Authorization` (or similar) header given with `--header`: credentials were sent.
fn has_credential_header(common: &CommonArgs) -> bool {
    common.headers.iter().any(|header| {
        wsup::transport::parse_header(header)
            .is_ok_and(|(name, _)| wsup::transport::is_credential_header(&name))
    })
}

fn notice_printer(common: &CommonArgs) -> NoticeSink {
    let quiet = common.quiet;
    Arc::new(move |notice| {
        if !quiet {
            eprint_line(&stderr_line("wsup", "info", report::notice_fields(notice)));
        }
    })
}

/// Prints the final reason (kept even with -q) and returns the exit code.
fn finish(outcome: &Outcome, kind: &CredentialKind) -> u8 {
    if let Some(fields) = report::outcome_fields(outcome, kind) {
        eprint_line(&stderr_line("wsup", final_level(outcome), fields));
    }
    outcome.exit_code()
}

async fn port_forward(common: &CommonArgs, url: &str, listen: &str, max_tunnels: u32) -> u8 {
    let mut prepared = match common.prepare(url) {
        Ok(p) => p,
        Err(e) => return usage_error(e),
    };
    wsup::cli::tunnel_reconnect_policy(&mut prepared.config.machine);
    if let Err(code) = first_token(&prepared).await {
        return code;
    }
    // A bare port listens on loopback only.
    let listen = match listen.parse::<u16>() {
        Ok(port) => format!("127.0.0.1:{port}"),
        Err(_) => listen.to_owned(),
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprint_message("wsup", "error", &format!("cannot listen on {listen}: {e}"));
            return if e.kind() == std::io::ErrorKind::InvalidInput {
                exit::USAGE
            } else {
                exit::UNAVAILABLE
            };
        }
    };
    let shown_url = redacted_url(&prepared.config.url);
    let quiet = common.quiet;
    let tunnels = Supervisor::new(prepared.config)
        .credentials(prepared.credentials)
        .signals(process_signals());
    let forwarder = match Forwarder::new(listener, tunnels) {
        Ok(f) => f,
        Err(e) => return usage_error(e),
    };
    match forwarder.local_addr() {
        Ok(addr) => eprint_message("wsup", "info", &format!("forwarding {addr} -> {shown_url}")),
        Err(_) => eprint_message(
            "wsup",
            "info",
            &format!("forwarding {listen} -> {shown_url}"),
        ),
    }
    let kind = credential_kind(common);
    let forwarder = match connection_threads() {
        Some(shards) => forwarder.spread_over(shards),
        None => forwarder,
    };
    let sig = forwarder
        .max_tunnels(max_tunnels as usize)
        .on_tunnel_limit(Arc::new(move |max| {
            if !quiet {
                eprint_line(&format!(
                    "wsup: {max} tunnels open (--max-tunnels): further connections wait until one closes"
                ));
            }
        }))
        .on_tunnel_notice(Arc::new(move |peer, notice| {
            if !quiet {
                let mut fields = report::notice_fields(notice);
                fields.insert("peer".into(), peer.to_string().into());
                if let Some(serde_json::Value::String(message)) = fields.get_mut("message") {
                    *message = format!("{peer}: {message}");
                }
                eprint_line(&stderr_line("wsup", "info", fields));
            }
        }))
        .on_tunnel_end(Arc::new(move |peer, outcome| {
            // A signal ends every tunnel at once: one final line for all, below.
            if matches!(outcome, Outcome::Signal(_)) {
                return;
            }
            if let Some(mut fields) = report::outcome_fields(outcome, &kind) {
                // A tunnel's end is not the process's: its exit code is not final.
                fields.remove("final");
                fields.remove("exit_code");
                fields.insert("peer".into(), peer.to_string().into());
                if let Some(serde_json::Value::String(message)) = fields.get_mut("message") {
                    *message = format!("{peer}: tunnel closed: {message}");
                }
                eprint_line(&stderr_line("wsup", "warn", fields));
            }
        }))
        .run()
        .await;
    finish(&Outcome::Signal(sig), &CredentialKind::None)
}

/// `--log-format json`: every stderr line is one JSON object, notices included. Set
/// once, right after the flags are parsed.
static JSON_STDERR: AtomicBool = AtomicBool::new(false);

/// One line on stderr in a single write, so that lines from concurrent tunnels never
/// interleave and a reader never sees half a line. A failing stderr is ignored (never
/// `eprintln!`, which panics): it must not change the exit status.
fn eprint_line(line: &str) {
    let mut buffer = String::with_capacity(line.len() + 1);
    buffer.push_str(line);
    buffer.push('\n');
    let _ = std::io::stderr().write_all(buffer.as_bytes());
}

/// A plain diagnostic, "PREFIX: MESSAGE" or its JSON object.
fn eprint_message(prefix: &str, level: &str, message: &str) {
    let mut fields = serde_json::Map::new();
    fields.insert("kind".into(), "notice".into());
    fields.insert("message".into(), message.into());
    eprint_line(&stderr_line(prefix, level, fields));
}

/// The text of one diagnostic line (no line end): "PREFIX: MESSAGE" as text, or, with
/// `--log-format json`, one JSON object with the fields, a timestamp, the level and
/// the target, as the log lines have.
fn stderr_line(
    prefix: &str,
    level: &str,
    fields: serde_json::Map<String, serde_json::Value>,
) -> String {
    if !JSON_STDERR.load(Ordering::Relaxed) {
        let message = fields
            .get("message")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        return format!("{prefix}: {message}");
    }
    let mut object = serde_json::Map::new();
    object.insert(
        "timestamp".into(),
        chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .into(),
    );
    object.insert("level".into(), level.to_ascii_uppercase().into());
    object.insert("target".into(), prefix.replace(' ', "::").into());
    object.extend(fields);
    serde_json::Value::Object(object).to_string()
}

/// The final line is an error unless the session ended well.
fn final_level(outcome: &Outcome) -> &'static str {
    if outcome.exit_code() == exit::OK {
        "info"
    } else {
        "error"
    }
}

/// The URL without a password or query string (either may carry a secret).
fn redacted_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    if shown.query().is_some() {
        shown.set_query(None);
        return format!("{shown}?...");
    }
    shown.to_string()
}

/// Threads (two per core) for `port-forward`'s tunnels and `serve`'s connections
/// ([`wsup::shards`]); without them (no thread could be started), they share the main
/// runtime's one worker.
fn connection_threads() -> Option<Arc<wsup::shards::RuntimeShards>> {
    match wsup::shards::RuntimeShards::per_core() {
        Ok(shards) => Some(Arc::new(shards)),
        Err(error) => {
            tracing::warn!(%error, "cannot start connection threads: connections share one thread");
            None
        }
    }
}

async fn serve(args: ServeArgs, subprotocols: Vec<String>) -> u8 {
    let script = match args.script.parse() {
        Ok(s) => s,
        Err(e) => return usage_error(format!("--script: {e}")),
    };
    let options = wsup::serve::ServeOptions {
        require_token: args.require_token,
        token_ttl: args.token_ttl,
        subprotocols,
        shards: connection_threads(),
        ..wsup::serve::ServeOptions::new(args.listen, script)
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match wsup::serve::tls_acceptor(cert, key) {
            Ok(tls) => Some(tls),
            Err(e) => return usage_error(e),
        },
        _ => None,
    };
    let mut signals = process_signals();
    let started = match tls {
        Some(tls) => wsup::serve::start_tls(options, tls).await,
        None => wsup::serve::start(options).await,
    };
    let server = match started {
        Ok(s) => s,
        Err(e) => {
            eprint_message(
                "wsup serve",
                "error",
                &format!("cannot listen on {}: {e}", args.listen),
            );
            return if e.kind() == std::io::ErrorKind::InvalidInput {
                exit::USAGE
            } else {
                exit::UNAVAILABLE
            };
        }
    };
    // The URL on stdout lets a script that asked for port 0 find the server.
    // Written, not `println!`: a reader that went away must not panic the server.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{}", server.ws_url()).and_then(|()| stdout.flush());
    let sig = loop {
        if signals.changed().await.is_err() {
            break Sig::Terminate;
        }
        if let Some(sig) = *signals.borrow_and_update() {
            break sig;
        }
    };
    server.shutdown().await;
    Outcome::Signal(sig).exit_code()
}

fn init_logging(common: &CommonArgs, demo: bool) {
    use tracing_subscriber::filter::{filter_fn, FilterExt};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let default = match (common.quiet, common.verbose, demo) {
        (true, _, _) => "error",
        (false, 0, false) => "warn",
        // The chosen subprotocol is part of what -v tells about a connection.
        (false, 0, true) | (false, 1, _) => {
            "warn,wsup::machine=debug,wsup::transport::subprotocol=debug"
        }
        (false, 2, _) => "info,wsup=debug",
        (false, _, _) => "trace",
    };
    let filter = std::env::var("WSUP_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    // tungstenite traces the whole upgrade request, Authorization header included: its
    // handshake trace events are dropped whatever the user asked for, so that no token
    // is ever logged.
    // The hint says this filter lets every level through: without one, the combined
    // filter has no hint, so the `log` crate's max level stays at TRACE and every trace
    // record of tungstenite (several per frame) went through the log bridge and the
    // filters; `perf` showed a fifth of `port-forward`'s user time there.
    let no_secrets = filter_fn(|meta| {
        !(*meta.level() == tracing::Level::TRACE && meta.target().contains("handshake"))
    })
    .with_max_level_hint(tracing_subscriber::filter::LevelFilter::TRACE);
    let filter = filter.and(no_secrets);
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // Log lines end with "\r\n" while `wsup shell` has the terminal in raw mode.
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(TerminalStderr::default)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry();
    match common.log_format {
        LogFormat::Json => registry.with(layer.json().with_filter(filter)).init(),
        LogFormat::Text if demo || common.verbose == 1 => registry
            .with(
                layer
                    .without_time()
                    .with_target(false)
                    .with_level(false)
                    .with_filter(filter),
            )
            .init(),
        LogFormat::Text => registry.with(layer.with_filter(filter)).init(),
    }
}
