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
use wsup::Supervisor;

const EXIT_USAGE: u8 = 2;
const EXIT_INTERNAL: u8 = 1;

fn main() {
    let cli = Cli::parse();
    init_logging(&cli.common, matches!(cli.command, Command::Demo));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wsup: cannot start the async runtime: {e}");
            std::process::exit(EXIT_INTERNAL.into());
        }
    };
    let code = runtime.block_on(run(cli));
    let _ = std::io::stdout().flush();
    // Exit while the runtime is still alive: dropping it would wait for the blocking
    // thread that may be sitting in a stdin read forever.
    std::process::exit(code.into());
}

async fn run(cli: Cli) -> u8 {
    let common = cli.common;
    match cli.command {
        Command::Connect { url } => {
            let prepared = match common.prepare(&url) {
                Ok(p) => p,
                Err(e) => return usage_error(e),
            };
            let kind = credential_kind(&common);
            let outcome = Supervisor::new(prepared.config)
                .credentials(prepared.credentials)
                .on_notice(notice_printer(&common))
                .signals(process_signals())
                .run(ConnectSession::stdio())
                .await;
            finish(&outcome, &kind)
        }
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
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
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
