//! The `wsup` binary: a thin client of the library. Parses flags, picks a session,
//! prints notices and maps the outcome to an exit code.

use clap::Parser;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use tracing_subscriber::EnvFilter;
use wsup::cli::{Cli, Command, CommonArgs, LogFormat, ServeArgs};
use wsup::driver::{process_signals, NoticeSink};
use wsup::machine::{Outcome, Sig};
use wsup::report::{self, CredentialKind};
use wsup::session::connect::ConnectSession;
use wsup::session::forward::Forwarder;
use wsup::session::logs::LogsSession;
use wsup::session::shell::{self, ShellSession, TerminalStderr};
use wsup::{Session, Supervisor};

const EXIT_USAGE: u8 = 2;
const EXIT_INTERNAL: u8 = 1;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => exit_on_parse_error(e),
    };
    init_logging(&cli.common, matches!(cli.command, Command::Demo));
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // wsup is I/O-bound: with one worker, the driver and its session hand frames over on
    // the same thread instead of waking each other across cores (downstream port-forward
    // measured 1.19× faster in benches/e2e.rs). TOKIO_WORKER_THREADS still wins.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wsup: cannot start the async runtime: {e}");
            std::process::exit(EXIT_INTERNAL.into());
        }
    };
    // The supervisor runs as a spawned task, on a worker thread, next to its session:
    // polled from `block_on` on the main thread instead, every message would cross
    // threads (round trips measured 0.64× of the library's in benches/e2e.rs).
    let code = runtime
        .block_on(async { tokio::spawn(run(cli)).await })
        .unwrap_or(EXIT_INTERNAL);
    if [Sig::Interrupt, Sig::Terminate]
        .map(|sig| Outcome::Signal(sig).exit_code())
        .contains(&code)
    {
        // A signal wins (exit within 100 ms): stdout may be a pipe nobody reads any more
        // (a paused pager, a stuck consumer), and a flush, std's own at exit included,
        // would wait for its reader. What the session wrote before is out; the rest is
        // dropped, as it would be had the signal killed us.
        // SAFETY: `_exit` ends the process at once; nothing runs after it.
        unsafe { libc::_exit(code.into()) }
    }
    let _ = std::io::stdout().flush();
    // Exit while the runtime is still alive: dropping it would wait for the blocking
    // thread that may be sitting in a stdin read forever.
    std::process::exit(code.into());
}

/// `--help` and `--version` go to stdout with exit 0 (clap's defaults); a usage error is
/// one line on stderr with exit 2.
fn exit_on_parse_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
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
    eprintln!("wsup: {line} (see wsup --help)");
    std::process::exit(EXIT_USAGE.into());
}

async fn run(cli: Cli) -> u8 {
    let common = cli.common;
    match cli.command {
        Command::Connect { url } => {
            match supervise(
                &common,
                &url,
                notice_printer(&common),
                ConnectSession::stdio,
            )
            .await
            {
                Ok(outcome) => finish(&outcome, &credential_kind(&common)),
                Err(code) => code,
            }
        }
        Command::Shell { url } => {
            let quiet = common.quiet;
            // In raw mode "\n" does not return the carriage: notices end with "\r\n".
            let notices: NoticeSink = Arc::new(move |notice| {
                if !quiet {
                    let line = format!("wsup: {}", report::notice_line(notice));
                    let _ = std::io::stderr().write_all(shell::terminal_line(&line).as_bytes());
                }
            });
            let outcome = match supervise(&common, &url, notices, ShellSession::stdio).await {
                Ok(outcome) => outcome,
                Err(code) => return code,
            };
            // The session leaves raw mode when it ends; this covers a session that did not
            // end within the supervisor's exit budget. Either way, before the exit.
            shell::restore_terminal();
            if let Some(line) = report::outcome_line(&outcome, &credential_kind(&common)) {
                let line = shell::terminal_line(&format!("wsup: {line}"));
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
            outcome.exit_code()
        }
        Command::Logs { url, raw } => {
            let quiet = common.quiet;
            let warnings = Arc::new(move |warning: &str| {
                if !quiet {
                    eprint_line(&format!("wsup: warning: {warning}"));
                }
            });
            let session = || LogsSession::stdio(raw, warnings);
            match supervise(&common, &url, notice_printer(&common), session).await {
                Ok(outcome) => finish(&outcome, &credential_kind(&common)),
                Err(code) => code,
            }
        }
        Command::PortForward { url, listen } => port_forward(&common, &url, &listen).await,
        Command::Serve(args) => serve(args).await,
        Command::Demo => {
            match wsup::demo::run(notice_printer(&common), process_signals()).await {
                Ok(outcome) => {
                    let code = finish(&outcome, &CredentialKind::Refreshable);
                    if code == 0 {
                        eprintln!("wsup demo: the session survived every fault and ended cleanly (exit 0)");
                    }
                    code
                }
                Err(e) => {
                    eprintln!("wsup demo: {e}");
                    EXIT_INTERNAL
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
    let prepared = common.prepare(url).map_err(usage_error)?;
    Supervisor::new(prepared.config)
        .credentials(prepared.credentials)
        .on_notice(notices)
        .signals(process_signals())
        .run(session())
        .await
        .map_err(usage_error)
}

fn usage_error(e: impl std::fmt::Display) -> u8 {
    eprintln!("wsup: {e}");
    EXIT_USAGE
}

fn credential_kind(common: &CommonArgs) -> CredentialKind {
    match (&common.token_env, &common.credentials) {
        (Some(var), _) => CredentialKind::StaticEnv(var.clone()),
        (None, Some(path)) => CredentialKind::File(path.display().to_string()),
        (None, None) => CredentialKind::None,
    }
}

fn notice_printer(common: &CommonArgs) -> NoticeSink {
    let quiet = common.quiet;
    Arc::new(move |notice| {
        if !quiet {
            eprintln!("wsup: {}", report::notice_line(notice));
        }
    })
}

/// Prints the final reason (kept even with -q) and returns the exit code.
fn finish(outcome: &Outcome, kind: &CredentialKind) -> u8 {
    if let Some(line) = report::outcome_line(outcome, kind) {
        eprintln!("wsup: {line}");
    }
    outcome.exit_code()
}

async fn port_forward(common: &CommonArgs, url: &str, listen: &str) -> u8 {
    // The forwarder makes tunnels stop once connected (`redial_after_connected = false`)
    // and gives each tunnel's dial `DEFAULT_TUNNEL_RETRIES` without `--max-retries`.
    let prepared = match common.prepare(url) {
        Ok(p) => p,
        Err(e) => return usage_error(e),
    };
    // A bare port listens on loopback only.
    let listen = match listen.parse::<u16>() {
        Ok(port) => format!("127.0.0.1:{port}"),
        Err(_) => listen.to_owned(),
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("wsup: cannot listen on {listen}: {e}");
            return if e.kind() == std::io::ErrorKind::InvalidInput {
                EXIT_USAGE
            } else {
                69
            };
        }
    };
    let shown_url = redacted_url(&prepared.config.url);
    let forwarder = match Forwarder::new(listener, prepared.config) {
        Ok(f) => f,
        Err(e) => return usage_error(e),
    };
    match forwarder.local_addr() {
        Ok(addr) => eprint_line(&format!("wsup: forwarding {addr} -> {shown_url}")),
        Err(_) => eprint_line(&format!("wsup: forwarding {listen} -> {shown_url}")),
    }
    let quiet = common.quiet;
    let kind = credential_kind(common);
    let sig = forwarder
        .credentials(prepared.credentials)
        .signals(process_signals())
        .on_notice(Arc::new(move |peer, notice| {
            if !quiet {
                eprint_line(&format!("wsup: {peer}: {}", report::notice_line(notice)));
            }
        }))
        .on_tunnel_end(Arc::new(move |peer, outcome| {
            // A signal ends every tunnel at once: one final line for all, below.
            if matches!(outcome, Outcome::Signal(_)) {
                return;
            }
            if let Some(line) = report::outcome_line(outcome, &kind) {
                eprint_line(&format!("wsup: {peer}: tunnel closed: {line}"));
            }
        }))
        .run()
        .await;
    finish(&Outcome::Signal(sig), &CredentialKind::None)
}

/// One line on stderr in a single write, so that lines from concurrent tunnels never
/// interleave and a reader never sees half a line.
fn eprint_line(line: &str) {
    let mut buffer = String::with_capacity(line.len() + 1);
    buffer.push_str(line);
    buffer.push('\n');
    let _ = std::io::stderr().write_all(buffer.as_bytes());
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

async fn serve(args: ServeArgs) -> u8 {
    let script = match args.script.parse() {
        Ok(s) => s,
        Err(e) => return usage_error(format!("--script: {e}")),
    };
    let options = wsup::serve::ServeOptions {
        require_token: args.require_token,
        token_ttl: args.token_ttl,
        ..wsup::serve::ServeOptions::new(args.listen, script)
    };
    let mut signals = process_signals();
    let server = match wsup::serve::start(options).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wsup serve: cannot listen on {}: {e}", args.listen);
            return if e.kind() == std::io::ErrorKind::InvalidInput {
                EXIT_USAGE
            } else {
                69
            };
        }
    };
    // The URL on stdout lets a script that asked for port 0 find the server.
    println!("{}", server.ws_url());
    let _ = std::io::stdout().flush();
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
        (false, 0, true) | (false, 1, _) => "warn,wsup::machine=debug",
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
    let no_secrets = filter_fn(|meta| {
        !(*meta.level() == tracing::Level::TRACE && meta.target().contains("handshake"))
    });
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
