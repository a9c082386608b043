//! `wsup man` and `wsup completions`: the manual page and the shell completion scripts,
//! generated from the clap definition in [`crate::cli`], so they list exactly the flags
//! `--help` lists.
//!
//! The page is clap_mangen's (name, synopsis, description, the common options), plus
//! what it cannot know: a section per subcommand with its own arguments, the exit
//! status table and the environment variables.

use crate::cli::Cli;
use crate::exit;
use clap::CommandFactory;
use roff::{bold, italic, roman, Inline, Roff};
use std::io::Write;

/// The exit status table, in the order a reader looks for them.
pub const EXIT_CODES: &[(u8, &str)] = &[
    (exit::OK, "the session ended normally (stdin closed, the server closed with 1000)"),
    (exit::INTERNAL, "an internal error (a bug in wsup); for wsup replay: the machine no longer does what the recording did"),
    (exit::USAGE, "usage error: a bad flag, URL, header, credentials file or certificate"),
    (exit::DATA, "the server rejected the data (close 1003, 1007 or 1009)"),
    (exit::UNAVAILABLE, "a permanent failure: retrying cannot help (HTTP 404, close 1002, an unlisted 4xxx close, TLS errors)"),
    (exit::CANT_CREATE, "the credentials file cannot be replaced (its directory is not writable, or it cannot be locked), or the --record file (or wsup replay --timeline) cannot be created"),
    (exit::IO_ERROR, "output lost: a write error on stdout other than a broken pipe, or --drain-timeout passed with bytes not written"),
    (exit::TEMP_FAIL, "transient failures (network, 5xx, close 1011, ...) exhausted --max-retries"),
    (exit::NO_PERM, "authentication or permission refused (HTTP 401/403, close 1008), even after a token refresh"),
    (exit::SIGINT, "SIGINT, or Ctrl+C while not connected"),
    (exit::SIGTERM, "SIGTERM"),
];

/// The environment variables wsup reads.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "WSUP_LOG",
        "A tracing filter for the log lines on stderr (wsup::machine=debug, trace, ...); \
         wins over RUST_LOG and -v/-q.",
    ),
    (
        "RUST_LOG",
        "Read when WSUP_LOG is not set, with the same syntax.",
    ),
    (
        "NO_COLOR",
        "When set, log lines carry no ANSI colours even on a terminal.",
    ),
    (
        "https_proxy, HTTPS_PROXY",
        "The HTTP proxy for wss:// targets and an https:// token endpoint (CONNECT; \
         http://USER:PASSWORD@HOST:PORT). Not read with --proxy or --no-proxy.",
    ),
    (
        "http_proxy, HTTP_PROXY",
        "The HTTP proxy for ws:// targets and an http:// token endpoint (HTTP_PROXY is \
         ignored when REQUEST_METHOD is set).",
    ),
    (
        "all_proxy, ALL_PROXY",
        "The proxy for a scheme whose own variable is not set.",
    ),
    (
        "no_proxy, NO_PROXY",
        "Targets that bypass the proxy: host names, domain suffixes, IP addresses, CIDR \
         ranges, or *. Loopback targets always do.",
    ),
    (
        "TOKIO_WORKER_THREADS",
        "Worker threads of the async runtime (default 1: wsup is I/O-bound). For \
         port-forward and serve, also the number of threads their connections are spread \
         over (default: two per core, at most 8).",
    ),
];

/// The clap command the page and the scripts describe.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Writes the completion script for `shell` to `out`.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn Write) -> std::io::Result<()> {
    // clap_complete panics when its writer fails (a closed pipe): it writes to memory,
    // and the error of the real write is returned.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "wsup", &mut script);
    out.write_all(&script)
}

/// Writes the manual page (roff, section 1) to `out`.
pub fn write_man_page(out: &mut dyn Write) -> std::io::Result<()> {
    let mut top = command();
    top.build();
    let man = clap_mangen::Man::new(top.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;

    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    // clap's own `help` subcommand is --help again.
    for sub in top
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
    {
        command_section(&mut roff, sub);
    }
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in EXIT_CODES {
        roff.control("TP", []);
        roff.text([bold(code.to_string())]);
        roff.text([roman(*meaning)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    for (name, meaning) in ENVIRONMENT {
        roff.control("TP", []);
        roff.text([bold(*name)]);
        roff.text([roman(*meaning)]);
    }
    roff.control("PP", []);
    roff.text([roman(
        "The variable named by --token-env holds a static token; it is never printed.",
    )]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "wsup --help, wsup COMMAND --help; the README of the source distribution.",
    )]);
    roff.to_writer(out)?;
    man.render_version_section(out)
}

/// One subcommand: its synopsis, its long description and its own arguments (the common
/// flags are in OPTIONS).
fn command_section(roff: &mut Roff, sub: &clap::Command) {
    roff.control("SS", [format!("wsup {}", sub.get_name()).as_str()]);
    let own: Vec<&clap::Arg> = sub
        .get_arguments()
        .filter(|arg| !arg.is_global_set() && !arg.is_hide_set())
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
        .collect();
    let mut synopsis = vec![bold(format!("wsup {}", sub.get_name()))];
    for arg in &own {
        synopsis.push(roman(" "));
        if arg.is_required_set() || arg.is_positional() {
            synopsis.extend(arg_usage(arg));
        } else {
            synopsis.push(roman("["));
            synopsis.extend(arg_usage(arg));
            synopsis.push(roman("]"));
        }
    }
    roff.text(synopsis);
    if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
        for paragraph in about.to_string().split("\n\n") {
            roff.control("PP", []);
            roff.text([roman(paragraph.replace('\n', " "))]);
        }
    }
    for arg in own {
        roff.control("TP", []);
        roff.text(arg_usage(arg));
        let mut help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|help| help.to_string().replace('\n', " "))
            .unwrap_or_default();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| value.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() && takes_value(arg) {
            help.push_str(&format!(" [default: {}]", defaults.join(",")));
        }
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|value| !value.is_hide_set())
            .map(|value| value.get_name().to_owned())
            .collect();
        if !values.is_empty() {
            help.push_str(&format!(" [possible values: {}]", values.join(", ")));
        }
        roff.text([roman(help)]);
    }
}

/// `<URL>`, `--listen <ADDR>`, `--raw`, as in the usage line.
fn arg_usage(arg: &clap::Arg) -> Vec<Inline> {
    let value = arg
        .get_value_names()
        .and_then(|names| names.first())
        .map(|name| name.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
    if arg.is_positional() {
        return vec![italic(format!("<{value}>"))];
    }
    let flag = match (arg.get_long(), arg.get_short()) {
        (Some(long), _) => format!("--{long}"),
        (None, Some(short)) => format!("-{short}"),
        (None, None) => value.clone(),
    };
    if takes_value(arg) {
        vec![bold(flag), roman(" "), italic(format!("<{value}>"))]
    } else {
        vec![bold(flag)]
    }
}

/// An option with a value, not a switch (whose "default" is merely "off").
fn takes_value(arg: &clap::Arg) -> bool {
    arg.get_num_args().is_some_and(|n| n.takes_values())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_page_and_help_list_every_exit_code() {
        let every = [
            exit::OK,
            exit::INTERNAL,
            exit::USAGE,
            exit::DATA,
            exit::UNAVAILABLE,
            exit::CANT_CREATE,
            exit::IO_ERROR,
            exit::TEMP_FAIL,
            exit::NO_PERM,
            exit::SIGINT,
            exit::SIGTERM,
        ];
        let listed: Vec<u8> = EXIT_CODES.iter().map(|(code, _)| *code).collect();
        for code in every {
            assert!(listed.contains(&code), "the man page lacks exit {code}");
            assert!(
                crate::cli::EXIT_CODES_HELP.contains(&format!(" {code} ")),
                "--help lacks exit {code}"
            );
        }
    }
}
