//! Command-line flags (clap derive) and their translation into a [`Config`].
//!
//! Nothing here touches a socket or a timer: it parses, validates and builds.

use crate::backoff::BackoffPolicy;
use crate::classify::ClassifyRules;
use crate::credentials::{Anonymous, Credentials, CredentialsFile, StaticToken};
use crate::driver::Config;
use crate::machine::MachineConfig;
use crate::transport::{self, is_header_safe, TransportConfig, UsageError, NOT_HEADER_SAFE};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The exit codes, shown by `--help` of wsup and of every supervising subcommand.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 done (the server closed 1000/1001, or \
    stdin ended and the server closed normally), 2 usage, 65 data rejected, 69 permanent \
    failure (including a close code forbidden on the wire), 74 output lost, 75 retries \
    exhausted, 77 auth/permission (also when the server rejects us after stdin ended), \
    130 SIGINT or Ctrl+C, 143 SIGTERM, 1 internal error.";

#[derive(Debug, Parser)]
#[command(
    name = "wsup",
    version,
    // Common flags are global, before or after the subcommand: `--version` too.
    propagate_version = true,
    about = "Keep a websocket session alive through dropped networks, server restarts and expiring tokens; stop fast when retrying cannot help.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pipe stdin lines to the server as text frames; print what it sends.
    ///
    /// At stdin EOF, what is queued is sent, then wsup waits until the server has been
    /// quiet for --linger before it closes (1000), and prints what still arrives.
    #[command(after_help = EXIT_CODES_HELP)]
    Connect {
        /// ws:// or wss:// URL
        url: String,
    },
    /// An interactive terminal: keys out as binary frames, output in, raw mode.
    ///
    /// The terminal size goes in the query (tty_width, tty_height) and a
    /// {"type":"resize","cols":C,"rows":R} text frame follows every resize. Ctrl+C is
    /// forwarded while connected and quits (exit 130) while reconnecting. The terminal is
    /// restored on every exit.
    #[command(after_help = EXIT_CODES_HELP)]
    Shell {
        /// ws:// or wss:// URL
        url: String,
    },
    /// Print JSON log frames {created_at, message, pod_name} as `TIME | POD | MESSAGE`.
    ///
    /// Reconnects after transient failures; lines the server replays after a reconnect
    /// are not printed twice.
    #[command(after_help = EXIT_CODES_HELP)]
    Logs {
        /// ws:// or wss:// URL
        url: String,
        /// Print each frame's JSON as received instead of rendering it.
        #[arg(long)]
        raw: bool,
    },
    /// Forward local TCP connections, each through its own supervised websocket.
    ///
    /// A tunnel redials only until its websocket is up (--max-retries per tunnel,
    /// default 5); once bytes flow, a lost websocket closes that TCP connection. The
    /// listener survives every tunnel's failure.
    #[command(after_help = EXIT_CODES_HELP)]
    PortForward {
        /// ws:// or wss:// URL
        url: String,
        /// Local address to listen on: HOST:PORT, or a bare PORT on 127.0.0.1 (port 0
        /// picks a free port; the address is printed on stderr).
        #[arg(long, value_name = "ADDR")]
        listen: String,
    },
    /// Run the scripted websocket + token server (for demos, tests, benchmarks).
    Serve(ServeArgs),
    /// A one-command tour: supervise a connection through a series of faults.
    Demo,
    /// Print the supervisor's state machine, explored from the machine itself.
    ///
    /// Every event (failures of every class) is fed to every reachable state; the
    /// transitions that occur are drawn with their conditions, superstates as clusters.
    States {
        /// mermaid (stateDiagram-v2) or dot (graphviz: `wsup states --format dot | dot -Tsvg`)
        #[arg(long, value_enum, default_value = "mermaid")]
        format: crate::states::DiagramFormat,
    },
}

const SCRIPT_HELP: &str = "Comma-separated steps; connection N gets step N, the last one \
    repeats. Steps: http:STATUS[:RETRY_AFTER], close:CODE[:REASON], echo, logs:N[:CODE], \
    shell, forward:HOST:PORT, hang, silent, auth-close, expire-token";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the URL is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8765")]
    pub listen: SocketAddr,
    /// Comma-separated steps; connection N gets step N, the last one repeats.
    // The help is a string, not this doc comment: rustdoc reads `[:CODE]` as a link.
    #[arg(long, default_value = "echo", help = SCRIPT_HELP)]
    pub script: String,
    /// Accept only `Authorization: Bearer <current token>` (rotated by /oauth/token).
    #[arg(long, value_name = "TOKEN")]
    pub require_token: Option<String>,
    /// `expires_in` of the tokens issued by /oauth/token.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub token_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags every subcommand takes, before or after the subcommand's name.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Extra request header, 'Name: value' (repeatable).
    #[arg(long = "header", short = 'H', global = true, value_name = "'K: V'")]
    pub headers: Vec<String>,
    /// Read a static token from this environment variable.
    #[arg(
        long,
        global = true,
        value_name = "VAR",
        conflicts_with = "credentials"
    )]
    pub token_env: Option<String>,
    /// A JSON credentials file {access_token, access_token_expiration, refresh_token,
    /// token_url}: refreshed before it expires and once when rejected, rewritten atomically.
    #[arg(long, global = true, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Scheme of the Authorization header.
    #[arg(long, global = true, default_value = "Bearer")]
    pub auth_scheme: String,
    /// Redials allowed after failures since the last stable connection (0 = never).
    #[arg(long, global = true, value_name = "N")]
    pub max_retries: Option<u32>,
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "500ms")]
    pub backoff_initial: Duration,
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "30s")]
    pub backoff_max: Duration,
    /// Covers TCP, TLS and the HTTP upgrade together.
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "20s")]
    pub ping_interval: Duration,
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "20s")]
    pub pong_timeout: Duration,
    /// A connection up this long resets the retry and refresh budgets.
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "10s")]
    pub stable_after: Duration,
    /// Application close codes (4000-4999) to retry, comma-separated.
    #[arg(long, global = true, value_delimiter = ',', value_parser = parse_app_close_code)]
    pub retry_close_codes: Vec<u16>,
    /// Allow credentials over plain ws:// to a non-loopback host.
    #[arg(long, global = true)]
    pub allow_insecure: bool,
    /// Trust this PEM CA certificate (for private CAs).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// More output: -v adds state transitions, -vv debug logs, -vvv trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only the final reason for stopping.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// At stdin EOF, keep the connection open until the server has been quiet this long
    /// (so replies are not cut off), then close; 0 closes at once.
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "1s")]
    pub linger: Duration,
}

fn parse_app_close_code(text: &str) -> Result<u16, String> {
    let code: u16 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a close code"))?;
    if (4000..=4999).contains(&code) {
        Ok(code)
    } else {
        Err(format!(
            "{code} is not an application close code (only 4000-4999 can be made retryable)"
        ))
    }
}

/// The refresh token travels to `token_url`: the same rule as for the websocket, https
/// or loopback http unless `--allow-insecure`.
fn check_token_url(
    path: &std::path::Path,
    token_url: Option<&str>,
    allow_insecure: bool,
) -> Result<(), UsageError> {
    let Some(text) = token_url else {
        return Ok(());
    };
    let invalid = |why: &str| {
        UsageError::Invalid(format!(
            "credentials file {}: token_url {why}",
            path.display()
        ))
    };
    let url = url::Url::parse(text).map_err(|_| invalid("is not a URL"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure || transport::is_loopback(&url) => Ok(()),
        "http" => Err(invalid(
            "is plain http to a non-loopback host: the refresh token would travel in clear text; use https, or pass --allow-insecure",
        )),
        _ => Err(invalid("must be an http(s) URL")),
    }
}

/// What a supervised subcommand needs, validated.
pub struct Prepared {
    pub config: Config,
    pub credentials: Arc<dyn Credentials>,
}

impl CommonArgs {
    /// Validate the flags for a supervised session to `url`: every user mistake becomes
    /// a [`UsageError`] (exit 2) before anything is dialed.
    pub fn prepare(&self, url: &str) -> Result<Prepared, UsageError> {
        let url = transport::parse_ws_url(url)?;
        let headers = self
            .headers
            .iter()
            .map(|h| transport::parse_header(h))
            .collect::<Result<Vec<_>, _>>()?;
        // The scheme and the token are checked before anything is dialed: a value an
        // HTTP header cannot carry is the user's mistake (exit 2), named by where it came
        // from, never shown.
        if !is_header_safe(&self.auth_scheme) {
            return Err(UsageError::Invalid(format!(
                "--auth-scheme {NOT_HEADER_SAFE}"
            )));
        }
        let credentials: Arc<dyn Credentials> = match &self.token_env {
            Some(var) => {
                let token = std::env::var(var).map_err(|_| {
                    UsageError::Invalid(format!(
                        "environment variable {var} (from --token-env) is not set or not valid UTF-8"
                    ))
                })?;
                let token = token.trim();
                if token.is_empty() {
                    return Err(UsageError::Invalid(format!(
                        "environment variable {var} (from --token-env) is empty"
                    )));
                }
                if !is_header_safe(token) {
                    return Err(UsageError::Invalid(format!(
                        "environment variable {var} (from --token-env) {NOT_HEADER_SAFE}"
                    )));
                }
                Arc::new(StaticToken::new(&self.auth_scheme, token))
            }
            None => match &self.credentials {
                Some(path) => {
                    let file = CredentialsFile::load(path, &self.auth_scheme)
                        .map_err(|e| UsageError::Invalid(e.to_string()))?;
                    check_token_url(path, file.token_url().as_deref(), self.allow_insecure)?;
                    Arc::new(file)
                }
                None => Arc::new(Anonymous),
            },
        };
        let sends_credentials = credentials.authorization().is_some()
            || headers
                .iter()
                .any(|(name, _)| transport::is_credential_header(name));
        transport::check_secure_for_credentials(&url, sends_credentials, self.allow_insecure)?;
        let extra_ca_certs = match &self.ca_cert {
            Some(path) => transport::load_ca_certs(path)?,
            None => Vec::new(),
        };
        if self.backoff_initial > self.backoff_max {
            return Err(UsageError::Invalid(format!(
                "--backoff-initial ({}) is larger than --backoff-max ({})",
                humantime::format_duration(self.backoff_initial),
                humantime::format_duration(self.backoff_max)
            )));
        }
        for (flag, value) in [
            ("--ping-interval", self.ping_interval),
            ("--pong-timeout", self.pong_timeout),
            ("--connect-timeout", self.connect_timeout),
        ] {
            if value.is_zero() {
                return Err(UsageError::Invalid(format!("{flag} must be more than 0")));
            }
        }
        let config = Config {
            url,
            transport: TransportConfig {
                headers,
                connect_timeout: self.connect_timeout,
                extra_ca_certs,
                ..TransportConfig::default()
            },
            machine: MachineConfig {
                rules: ClassifyRules {
                    retry_close_codes: self.retry_close_codes.clone(),
                },
                max_retries: self.max_retries,
                ping_interval: self.ping_interval,
                pong_timeout: self.pong_timeout,
                stable_after: self.stable_after,
                linger: self.linger,
                ..MachineConfig::default()
            },
            backoff: BackoffPolicy {
                initial: self.backoff_initial,
                max: self.backoff_max,
                ..BackoffPolicy::default()
            },
        };
        Ok(Prepared {
            config,
            credentials,
        })
    }
}
