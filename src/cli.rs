//! Command-line flags (clap derive) and their translation into a [`Config`].
//!
//! Nothing here touches a socket or a timer: it parses, validates and builds. About 640
//! lines before its unit tests: one flag list (clap derive, each flag with its help and
//! bound) and the checks that go with it.

use crate::backoff::BackoffPolicy;
use crate::classify::ClassifyRules;
use crate::credentials::{Anonymous, Credentials, CredentialsFile, StaticToken};
use crate::driver::Config;
use crate::machine::MachineConfig;
use crate::token_command::TokenCommand;
use crate::transport::{self, is_header_safe, TransportConfig, UsageError, NOT_HEADER_SAFE};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The exit codes ([`crate::exit`]), shown by `--help` of wsup and of every supervising
/// subcommand.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 done (the server closed 1000/1001, or \
    stdin ended and the server closed normally), 2 usage, 65 data rejected, 69 permanent \
    failure (including a close code forbidden on the wire), 73 credentials file cannot be \
    replaced or --record file cannot be created, 74 output lost, 75 retries \
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
        /// Longest stdin line sent: bytes, or with a unit (1KiB, 16MiB); at most and by
        /// default 64MiB, the largest message. A longer line stops wsup with exit 65.
        #[arg(long, value_name = "SIZE", value_parser = parse_max_line, default_value = "64MiB")]
        max_line: usize,
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
        /// Tunnels open at once (1 to 65536); further connections wait in the listen
        /// queue until a tunnel ends.
        #[arg(long, value_name = "N", default_value_t = crate::forward::DEFAULT_MAX_TUNNELS,
              value_parser = clap::value_parser!(u32).range(1..=65536))]
        max_tunnels: u32,
    },
    /// Run the scripted websocket + token server (for demos, tests, benchmarks).
    ///
    /// Of the common flags it takes only -v, -q and --log-format; the client flags are a
    /// usage error here.
    Serve(ServeArgs),
    /// A one-command tour: supervise a connection through a series of faults.
    ///
    /// Honours --max-retries, --backoff-initial, --backoff-max, --connect-timeout,
    /// --ping-interval, --pong-timeout, --stable-after, --record, --record-max, -v, -q
    /// and --log-format; the
    /// other client flags (credentials, headers, TLS) are a usage error here.
    Demo,
    /// Print a shell completion script on stdout.
    ///
    /// bash: `wsup completions bash > ~/.local/share/bash-completion/completions/wsup`;
    /// zsh: into a directory on $fpath as `_wsup`; fish:
    /// `~/.config/fish/completions/wsup.fish`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout: `wsup man > ~/.local/share/man/man1/wsup.1`.
    Man,
    /// Print the supervisor's state machine, explored from the machine itself.
    ///
    /// Every event (failures of every class) is fed to every reachable state; the
    /// transitions that occur are drawn with their conditions, superstates as clusters.
    States {
        /// mermaid (stateDiagram-v2) or dot (graphviz: `wsup states --format dot | dot -Tsvg`)
        #[arg(long, value_enum, default_value = "mermaid")]
        format: crate::states::DiagramFormat,
    },
    /// Re-run a session recorded with --record through this wsup's machine.
    ///
    /// Prints the transitions as -v does, with the recorded times, and the outcome and
    /// exit code the session had. Exit 0 when every step's effects match the recording;
    /// 1 at the first divergence (both sides printed): `wsup replay incident.jsonl && echo
    /// same`. 2 when the file cannot be read, 65 when it is not a recording, 73 when
    /// --timeline cannot be written.
    Replay {
        /// The recording (a JSON-lines file written by --record).
        file: PathBuf,
        /// text (the -v lines) or json (one object per transition).
        #[arg(long, value_enum, default_value = "text")]
        format: crate::replay::ReplayFormat,
        /// Also draw the session as an SVG timeline: one lane per state, each failure
        /// marked, each backoff a bar [default: none].
        #[arg(long, value_name = "FILE.svg")]
        timeline: Option<PathBuf>,
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
    /// Accept only `Authorization: Bearer <current token>` (rotated by /oauth/token)
    /// [default: no token required].
    #[arg(long, value_name = "TOKEN")]
    pub require_token: Option<String>,
    /// `expires_in` of the tokens issued by /oauth/token (at most 1 day).
    #[arg(long, value_parser = parse_bounded_duration, default_value = "1h")]
    pub token_ttl: Duration,
    /// Serve wss:// (and https:// tokens) with this PEM certificate chain [default: plain
    /// ws:// and http://].
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert [default: none, with no --tls-cert].
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags every subcommand takes, before or after the subcommand's name.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Extra request header, 'Name: value' (repeatable) [default: none].
    #[arg(long = "header", short = 'H', global = true, value_name = "'K: V'")]
    pub headers: Vec<String>,
    /// Read a static token from this environment variable [default: no token].
    #[arg(
        long,
        global = true,
        value_name = "VAR",
        conflicts_with = "credentials"
    )]
    pub token_env: Option<String>,
    /// A JSON credentials file {access_token, access_token_expiration, refresh_token,
    /// token_url}: refreshed before it expires and once when rejected, rewritten atomically
    /// [default: none].
    #[arg(long, global = true, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Scheme of the Authorization header sent with --token-env, --credentials or
    /// --token-command.
    #[arg(long, global = true, default_value = "Bearer")]
    pub auth_scheme: String,
    /// Redials allowed after failures since the last stable connection (0 = never)
    /// [default: unlimited; 5 per port-forward tunnel].
    #[arg(long, global = true, value_name = "N")]
    pub max_retries: Option<u32>,
    /// Delay before the first redial (a duration: 500ms, 2s, 1m; at most 1 day); doubles,
    /// with jitter, up to --backoff-max.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_bounded_duration, default_value = "500ms")]
    pub backoff_initial: Duration,
    /// Longest delay between redials (a duration: 500ms, 2s, 1m).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_bounded_duration, default_value = "30s")]
    pub backoff_max: Duration,
    /// Time allowed for one dial (a duration): TCP, TLS and the HTTP upgrade together.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_bounded_duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// Send a ping this often while connected (a duration: 500ms, 2s, 1m).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_bounded_duration, default_value = "20s")]
    pub ping_interval: Duration,
    /// Connection dead when nothing at all arrived for --ping-interval plus this (a duration).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_bounded_duration, default_value = "20s")]
    pub pong_timeout: Duration,
    /// A connection up this long (a duration) resets the retry and refresh budgets.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_bounded_duration, default_value = "10s")]
    pub stable_after: Duration,
    /// Application close codes (4000-4999) to retry, comma-separated [default: none:
    /// every 4xxx close is permanent].
    #[arg(long, global = true, value_delimiter = ',', value_parser = parse_app_close_code)]
    pub retry_close_codes: Vec<u16>,
    /// Allow credentials over plain ws:// to a non-loopback host [default: refused].
    #[arg(long, global = true)]
    pub allow_insecure: bool,
    /// Also trust this PEM CA certificate, for private CAs [default: the system's and
    /// Mozilla's roots only].
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Format of everything on stderr: text, or one JSON object per line (notices too).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// More output: -v adds state transitions, -vv debug logs, -vvv trace [default:
    /// notices only].
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only the final reason for stopping [default: every notice].
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// After the session ends, how long wsup may wait for stdout's reader to take what
    /// was received (default: as long as it takes for connect and logs, 2s for shell);
    /// past it, exit 74 with the number of bytes not written.
    #[arg(long, global = true, value_parser = parse_bounded_duration, value_name = "DURATION")]
    pub drain_timeout: Option<Duration>,
    /// At stdin EOF, keep the connection open until the server has been quiet this long
    /// (so replies are not cut off), then close; 0 closes at once.
    #[arg(long, global = true, value_parser = parse_bounded_duration, default_value = "1s")]
    pub linger: Duration,
    /// Get the token from this shell command (run with `sh -c`, no terminal, stdin
    /// closed): its stdout is the token, bare or JSON {access_token, expires_in}, {token,
    /// expiration_timestamp} or kubectl's ExecCredential; run again before the token
    /// expires and once when it is rejected [default: none].
    #[arg(long, global = true, value_name = "CMD", conflicts_with_all = ["token_env", "credentials"])]
    pub token_command: Option<String>,
    /// How long one run of --token-command may take (a duration); past it, the command
    /// and everything it started are killed.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_bounded_duration,
          default_value = "30s", requires = "token_command")]
    pub token_command_timeout: Duration,
    /// A text frame to send right after every successful dial, before anything else
    /// (repeatable, in order): a subscription that must be renewed on every connection
    /// [default: none].
    #[arg(long, global = true, value_name = "TEXT")]
    pub on_connect: Vec<String>,
    /// Send each line of this file (at most 1 MiB, UTF-8; blank lines skipped) as a text
    /// frame after every successful dial, after the --on-connect texts; read once at
    /// start-up [default: none].
    #[arg(long, global = true, value_name = "FILE")]
    pub on_connect_file: Option<PathBuf>,
    /// Offer this websocket subprotocol in the upgrade (`Sec-WebSocket-Protocol`);
    /// repeatable, offered in order. A server that chooses none of them, or one not
    /// offered, fails the connection (exit 69). On `wsup serve`: accept only a client that
    /// offers it [default: none offered].
    #[arg(long = "subprotocol", global = true, value_name = "NAME", value_parser = parse_subprotocol)]
    pub subprotocols: Vec<String>,
    /// Reach the server (and the token endpoint) through this HTTP proxy, with CONNECT:
    /// http://USER:PASSWORD@HOST:PORT (credentials optional, port 1080 by default), or
    /// https://… for TLS to the proxy. Overrides HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and
    /// NO_PROXY, and applies to loopback targets too [default: from those variables, as
    /// curl reads them].
    #[arg(long, global = true, value_name = "URL", conflicts_with = "no_proxy")]
    pub proxy: Option<String>,
    /// Connect directly: ignore HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY.
    #[arg(long, global = true)]
    pub no_proxy: bool,
    /// Record every event the supervisor handles (never payloads or tokens) into FILE as
    /// JSON lines, for `wsup replay FILE` [default: no recording]. Not with port-forward.
    #[arg(long, global = true, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Largest --record file; past it, the file is renamed FILE.1 once and a new FILE is
    /// started; past it again, recording stops.
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_record_max,
          default_value = "64MiB", requires = "record")]
    pub record_max: u64,
    /// Seed the backoff jitter (reproducible delays, for tests and re-recording
    /// tests/replays) [default: from the OS].
    #[arg(long, global = true, value_name = "N", hide = true)]
    pub jitter_seed: Option<u64>,
}

/// `--record-max`: at least 1 KiB, so that a header and some events fit.
fn parse_record_max(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes < 1024 {
        return Err(format!("'{text}' is less than 1KiB"));
    }
    Ok(bytes as u64)
}

/// The largest `--on-connect-file` read: the messages are kept in memory and resent on
/// every connection, so the file is meant to be a few subscriptions, not a data set.
pub const MAX_ON_CONNECT_FILE: u64 = 1 << 20;

/// The largest value a duration flag takes: 1 day (the error message says so). Far
/// beyond any useful timeout or interval, and small enough that every sum and deadline built from these flags stays
/// representable (a deadline is `now + ping_interval + pong_timeout`, for instance).
pub const MAX_FLAG_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// A humantime duration (`500ms`, `10s`, `2m`, `1h`) of at most [`MAX_FLAG_DURATION`].
fn parse_bounded_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration > MAX_FLAG_DURATION {
        return Err(format!(
            "'{text}' is longer than 1 day (the largest duration a flag takes)"
        ));
    }
    Ok(duration)
}

/// A `--subprotocol` name: an HTTP token, see [`transport::check_subprotocol`].
fn parse_subprotocol(text: &str) -> Result<String, String> {
    transport::check_subprotocol(text).map_err(|e| e.to_string())?;
    Ok(text.to_string())
}

/// A byte size: a plain number of bytes, or one with a unit (`B`, `KiB`, `MiB`, `GiB`,
/// any case).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kib" => 10,
        "mib" => 20,
        "gib" => 30,
        _ => {
            return Err(format!(
                "'{text}' is not a size (bytes, or a number with B, KiB, MiB or GiB)"
            ))
        }
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| {
            format!("'{text}' is not a size (bytes, or a number with B, KiB, MiB or GiB)")
        })
}

/// `--max-line`: from 1 byte to the largest message (64 MiB).
fn parse_max_line(text: &str) -> Result<usize, String> {
    let bytes = parse_size(text)?;
    let max = crate::session::connect::DEFAULT_MAX_LINE;
    if bytes == 0 || bytes > max {
        return Err(format!(
            "'{text}' is not between 1 byte and {} (the largest message)",
            crate::session::connect::format_size(max)
        ));
    }
    Ok(bytes)
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

impl CommonArgs {
    /// `--ca-cert`'s certificates, trusted by the websocket and the token endpoint alike.
    pub fn extra_ca_certs(
        &self,
    ) -> Result<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>, UsageError> {
        match &self.ca_cert {
            Some(path) => transport::load_ca_certs(path),
            None => Ok(Vec::new()),
        }
    }

    /// The proxy decision of `--proxy`, `--no-proxy` or the environment: one for the
    /// websocket and the token endpoint alike.
    pub fn proxies(&self) -> Result<transport::Proxies, UsageError> {
        if self.no_proxy {
            return Ok(transport::Proxies::direct());
        }
        match &self.proxy {
            Some(url) => transport::Proxies::forced(url),
            None => Ok(transport::Proxies::from_env()),
        }
    }
}

/// What a supervised subcommand needs, validated.
pub struct Prepared {
    pub config: Config,
    pub credentials: Arc<dyn Credentials>,
    /// `--token-command`, also in `credentials`: run it once with
    /// [`TokenCommand::first_run`] before anything is dialed.
    pub token_command: Option<Arc<TokenCommand>>,
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
                    let proxies = self.proxies()?;
                    let settings = crate::credentials::TokenEndpointSettings {
                        extra_ca_certs: self.extra_ca_certs()?,
                        proxies: proxies.clone(),
                    };
                    let file = CredentialsFile::load_with(path, &self.auth_scheme, settings)
                        .map_err(|e| UsageError::Invalid(e.to_string()))?;
                    check_token_url(path, file.token_url().as_deref(), self.allow_insecure)?;
                    if let Some(token_url) = file.token_url() {
                        // Checked by check_token_url to be an http(s) URL.
                        if let Ok(token_url) = url::Url::parse(&token_url) {
                            proxies.proxy_for(&token_url)?;
                        }
                    }
                    Arc::new(file)
                }
                None => Arc::new(Anonymous),
            },
        };
        let token_command = self.token_command()?;
        let credentials = match &token_command {
            Some(command) => command.clone() as Arc<dyn Credentials>,
            None => credentials,
        };
        let sends_credentials = token_command.is_some()
            || credentials.authorization().is_some()
            || headers
                .iter()
                .any(|(name, _)| transport::is_credential_header(name));
        transport::check_secure_for_credentials(&url, sends_credentials, self.allow_insecure)?;
        let extra_ca_certs = self.extra_ca_certs()?;
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
        let on_connect = self.on_connect_messages()?;
        let proxies = self.proxies()?;
        // A proxy variable that cannot be used is a usage error only for a target that
        // would go through it; checked here, before anything is dialed.
        proxies.proxy_for(&url)?;
        let config = Config {
            url,
            on_connect,
            transport: TransportConfig {
                headers,
                connect_timeout: self.connect_timeout,
                extra_ca_certs,
                subprotocols: self.subprotocols.clone(),
                proxies,
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
            token_command,
        })
    }

    /// The `--on-connect` texts, then the lines of `--on-connect-file` (blank lines
    /// skipped, a trailing `\r` dropped): a file that cannot be read, is larger than
    /// [`MAX_ON_CONNECT_FILE`] or is not UTF-8 is a usage error naming it.
    fn on_connect_messages(&self) -> Result<Vec<String>, UsageError> {
        let mut messages = self.on_connect.clone();
        let Some(path) = &self.on_connect_file else {
            return Ok(messages);
        };
        let unreadable = |why: String| {
            UsageError::Invalid(format!("--on-connect-file {}: {why}", path.display()))
        };
        let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
        let mut bytes = Vec::new();
        // One byte past the limit is enough to know the file is too large.
        std::io::Read::read_to_end(
            &mut std::io::Read::take(file, MAX_ON_CONNECT_FILE + 1),
            &mut bytes,
        )
        .map_err(|e| unreadable(e.to_string()))?;
        if bytes.len() as u64 > MAX_ON_CONNECT_FILE {
            return Err(unreadable("larger than 1 MiB".into()));
        }
        let text = String::from_utf8(bytes).map_err(|_| unreadable("not UTF-8 text".into()))?;
        messages.extend(
            text.lines()
                .filter(|line| !line.trim().is_empty())
                .map(str::to_owned),
        );
        Ok(messages)
    }

    /// `--token-command`, checked but not run yet (clap refuses it with --token-env and
    /// --credentials).
    fn token_command(&self) -> Result<Option<Arc<TokenCommand>>, UsageError> {
        let Some(command) = &self.token_command else {
            return Ok(None);
        };
        if command.trim().is_empty() {
            return Err(UsageError::Invalid("--token-command is empty".into()));
        }
        if self.token_command_timeout.is_zero() {
            return Err(UsageError::Invalid(
                "--token-command-timeout must be more than 0".into(),
            ));
        }
        Ok(Some(Arc::new(TokenCommand::new(
            command,
            &self.auth_scheme,
            self.token_command_timeout,
        ))))
    }
}

/// Redials a port-forward tunnel's dial gets when `--max-retries` is not given.
pub const DEFAULT_TUNNEL_RETRIES: u32 = 5;

/// Port-forward's reconnect policy, built into each tunnel's config: a tunnel redials only
/// until its websocket is up, because once bytes flow a lost websocket cannot be resumed
/// (the TCP connection is closed instead), and its dial gets [`DEFAULT_TUNNEL_RETRIES`]
/// redials unless `--max-retries` gave a number.
pub fn tunnel_reconnect_policy(machine: &mut MachineConfig) {
    machine.redial_after_connected = false;
    machine.max_retries.get_or_insert(DEFAULT_TUNNEL_RETRIES);
}

/// The common flags alone, as clap sees them.
fn common_args() -> clap::Command {
    CommonArgs::augment_args(clap::Command::new("common"))
}

/// Refuses the common flags that `command` would silently ignore: client flags on `serve`,
/// `completions` and `man`, and on `demo` those it does not honour. `given` comes from
/// [`explicit_common_flags`].
pub fn check_common_flags(command: &Command, given: &[clap::Id]) -> Result<(), UsageError> {
    let (name, honoured): (&str, &[&str]) = match command {
        Command::Connect { .. } | Command::Shell { .. } | Command::Logs { .. } => return Ok(()),
        Command::PortForward { .. } => return refuse_on_connect_for_port_forward(given),
        Command::Replay { .. } => ("replay", &[]),
        Command::Demo => ("demo", DEMO_FLAGS),
        Command::Serve(_) => ("serve", &["subprotocols"]),
        Command::Completions { .. } => ("completions", &[]),
        Command::Man => ("man", &[]),
        Command::States { .. } => ("states", &[]),
    };
    let refused: Vec<String> = given
        .iter()
        .filter(|id| !OUTPUT_FLAGS.contains(&id.as_str()) && !honoured.contains(&id.as_str()))
        .map(flag_name)
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    let (flags, them) = match refused.len() {
        1 => (refused[0].clone(), "it"),
        _ => (refused.join(", "), "them"),
    };
    Err(UsageError::Invalid(format!(
        "{flags}: `wsup {name}` does not take {them} (client flags belong to connect, shell, logs and port-forward)"
    )))
}

/// Port-forward carries a TCP byte stream: a text frame of our own would corrupt it, so
/// `--on-connect` and `--on-connect-file` are refused rather than ignored.
fn refuse_on_connect_for_port_forward(given: &[clap::Id]) -> Result<(), UsageError> {
    // One recording holds one machine's events; a port-forward runs one per tunnel.
    if let Some(id) = given.iter().find(|id| id.as_str() == "record") {
        return Err(UsageError::Invalid(format!(
            "{}: `wsup port-forward` does not take it (a recording holds one session; a port-forward runs one per tunnel)",
            flag_name(id)
        )));
    }
    match given
        .iter()
        .find(|id| matches!(id.as_str(), "on_connect" | "on_connect_file"))
    {
        Some(id) => Err(UsageError::Invalid(format!(
            "{}: `wsup port-forward` does not take it (a tunnel carries a byte stream, not text frames)",
            flag_name(id)
        ))),
        None => Ok(()),
    }
}

/// `--long-name` (or `-s`) of a common flag, for messages.
fn flag_name(id: &clap::Id) -> String {
    let command = common_args();
    let arg = command.get_arguments().find(|arg| arg.get_id() == id);
    match arg.and_then(|arg| arg.get_long().map(|long| format!("--{long}"))) {
        Some(long) => long,
        None => match arg.and_then(clap::Arg::get_short) {
            Some(short) => format!("-{short}"),
            None => id.to_string(),
        },
    }
}

impl CommonArgs {
    /// Applies the flags `wsup demo` honours (the supervision flags) that were `given` on the
    /// command line to the demo's own `config`; the demo's defaults stay otherwise (a
    /// one-second liveness window, ten retries, short backoff).
    pub fn tune_demo(&self, given: &[clap::Id], config: &mut Config) -> Result<(), UsageError> {
        let given = |name: &str| given.iter().any(|id| id.as_str() == name);
        if given("max_retries") {
            config.machine.max_retries = self.max_retries;
        }
        if given("backoff_initial") {
            config.backoff.initial = self.backoff_initial;
        }
        if given("backoff_max") {
            config.backoff.max = self.backoff_max;
        }
        if given("connect_timeout") {
            config.transport.connect_timeout = self.connect_timeout;
        }
        if given("ping_interval") {
            config.machine.ping_interval = self.ping_interval;
        }
        if given("pong_timeout") {
            config.machine.pong_timeout = self.pong_timeout;
        }
        if given("stable_after") {
            config.machine.stable_after = self.stable_after;
        }
        if config.backoff.initial > config.backoff.max {
            return Err(UsageError::Invalid(format!(
                "--backoff-initial ({}) is larger than the demo's --backoff-max ({})",
                humantime::format_duration(config.backoff.initial),
                humantime::format_duration(config.backoff.max)
            )));
        }
        for (flag, value) in [
            ("--ping-interval", config.machine.ping_interval),
            ("--pong-timeout", config.machine.pong_timeout),
            ("--connect-timeout", config.transport.connect_timeout),
        ] {
            if value.is_zero() {
                return Err(UsageError::Invalid(format!("{flag} must be more than 0")));
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------
// Which common flags a subcommand takes.

/// Common flags every subcommand takes: they only change what is printed on stderr.
const OUTPUT_FLAGS: &[&str] = &["verbose", "quiet", "log_format"];

/// Common flags `wsup demo` honours besides [`OUTPUT_FLAGS`]: the supervision knobs, which
/// change how the tour's faults are handled. Credentials, headers and TLS do not apply to
/// the demo's own in-process server.
const DEMO_FLAGS: &[&str] = &[
    "max_retries",
    "backoff_initial",
    "backoff_max",
    "connect_timeout",
    "ping_interval",
    "pong_timeout",
    "stable_after",
    "record",
    "record_max",
    "jitter_seed",
];

/// The ids of the [`CommonArgs`] given on the command line (not defaults), in the order
/// they are declared. Read from clap's own list of the common flags, so that a flag added
/// to [`CommonArgs`] is covered without a change here.
pub fn explicit_common_flags(matches: &clap::ArgMatches) -> Vec<clap::Id> {
    use clap::parser::ValueSource;
    let given = |matches: &clap::ArgMatches, id: &clap::Id| {
        matches.value_source(id.as_str()) == Some(ValueSource::CommandLine)
    };
    common_args()
        .get_arguments()
        .map(|arg| arg.get_id().clone())
        .filter(|id| {
            // Global flags given after the subcommand's name are recorded there too.
            given(matches, id) || matches.subcommand().is_some_and(|(_, sub)| given(sub, id))
        })
        .collect()
}

#[cfg(test)]
mod size_and_duration_tests {
    use super::*;

    #[test]
    fn sizes_take_bytes_or_binary_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("7B"), Ok(7));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("2 mib"), Ok(2 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        for bad in [
            "",
            "KiB",
            "1KB",
            "1.5KiB",
            "-1",
            "1 KiB x",
            "99999999999999999999GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_max_line("64MiB"), Ok(64 << 20));
        assert!(parse_max_line("0").is_err());
        assert!(parse_max_line("64MiB1").is_err());
    }

    #[test]
    fn durations_stop_at_one_day() {
        assert_eq!(parse_bounded_duration("1day"), Ok(MAX_FLAG_DURATION));
        assert!(parse_bounded_duration("86401s").is_err());
        assert!(parse_bounded_duration("18446744073709551615s").is_err());
    }
}
