//! `wsup completions SHELL` and `wsup man`: what they print is a valid script for each
//! shell and a manual page that `man` renders without a warning.

mod support;

use std::process::Command as StdCommand;
use std::time::Duration;

use support::Wsup;

const QUICKLY: Duration = Duration::from_secs(5);

/// `wsup ARGS`: exit 0, nothing on stderr; returns stdout.
async fn printed(args: &[&str]) -> String {
    let done = Wsup::spawn(args).finish_within(QUICKLY).await;
    done.assert_code(0);
    assert_eq!(done.stderr, "", "{args:?}: nothing on stderr");
    done.stdout_text()
}

/// Writes `text` to a file in a fresh temporary directory (kept alive by the returned
/// handle).
fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write the temporary file");
    (dir, path)
}

#[tokio::test]
async fn every_shell_gets_a_completion_script_and_bash_parses_it() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let script = printed(&["completions", shell]).await;
        assert!(
            script.contains("wsup") && script.contains("port-forward"),
            "{shell}: {script}"
        );
        assert!(
            script.contains("max-retries"),
            "{shell}: the common flags complete too"
        );
    }
    let (_dir, path) = temp_file("wsup.bash", &printed(&["completions", "bash"]).await);
    let checked = StdCommand::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("run bash -n");
    assert!(
        checked.status.success() && checked.stderr.is_empty(),
        "bash -n: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[tokio::test]
async fn an_unknown_shell_is_a_usage_error_listing_the_shells() {
    let done = Wsup::spawn(["completions", "tcsh"])
        .finish_within(QUICKLY)
        .await;
    done.assert_code(2)
        .assert_stdout("")
        .assert_stderr_contains("'tcsh'")
        .assert_stderr_contains("bash");
}

#[tokio::test]
async fn the_man_page_has_every_subcommand_the_exit_codes_and_the_environment() {
    let page = printed(&["man"]).await;
    assert!(
        page.starts_with(".ie") || page.starts_with(".TH"),
        "roff: {page}"
    );
    for needle in [
        ".SH SYNOPSIS",
        ".SH OPTIONS",
        ".SH COMMANDS",
        ".SH \"EXIT STATUS\"",
        ".SH ENVIRONMENT",
    ] {
        assert!(page.contains(needle), "the page lacks {needle:?}");
    }
    for sub in [
        "connect",
        "shell",
        "logs",
        "port-forward",
        "serve",
        "demo",
        "completions",
        "man",
    ] {
        assert!(
            page.contains(&format!(".SS \"wsup {sub}\"")),
            "the page lacks `wsup {sub}`"
        );
    }
    for code in ["0", "1", "2", "65", "69", "75", "77", "130", "143"] {
        assert!(
            page.contains(&format!("\n.TP\n\\fB{code}\\fR\n")),
            "exit code {code} is not in the table"
        );
    }
    for variable in ["WSUP_LOG", "RUST_LOG", "NO_COLOR", "TOKIO_WORKER_THREADS"] {
        assert!(page.contains(variable), "{variable} is not described");
    }
}

/// `man -l` renders the page without a warning. In CI (`.ci/run` installs man-db and sets
/// `WSUP_REQUIRE_MAN`) a missing `man` fails the test; elsewhere the test says loudly
/// that it did not run.
#[tokio::test]
async fn man_renders_the_page_without_warnings() {
    let man_present = StdCommand::new("man")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !man_present {
        if std::env::var_os("WSUP_REQUIRE_MAN").is_some() {
            panic!("`man` is missing but WSUP_REQUIRE_MAN is set: install man-db");
        }
        eprintln!(
            "SKIPPED man_renders_the_page_without_warnings: `man` is not installed \
             (apt-get install man-db); the page was not rendered"
        );
        return;
    }
    let (_dir, path) = temp_file("wsup.1", &printed(&["man"]).await);
    let rendered = StdCommand::new("man")
        .args(["--warnings", "-l"])
        .arg(&path)
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .expect("run man -l");
    let warnings = String::from_utf8_lossy(&rendered.stderr);
    assert!(
        rendered.status.success() && warnings.is_empty(),
        "man -l: {:?}\n{warnings}",
        rendered.status
    );
    let text = String::from_utf8_lossy(&rendered.stdout);
    for needle in ["wsup connect", "EXIT STATUS", "--max-retries", "WSUP_LOG"] {
        assert!(
            text.contains(needle),
            "rendered page lacks {needle:?}:\n{text}"
        );
    }
}

/// A reader that went away (`wsup man | head -0`): exit 74 (output lost), no panic.
#[test]
fn a_reader_that_went_away_is_quiet_and_a_failing_stdout_is_output_lost() {
    use std::os::fd::{FromRawFd, OwnedFd};
    for args in [
        &["man"][..],
        &["completions", "bash"][..],
        &["--version"][..],
    ] {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe(2)");
        // SAFETY: both descriptors were just returned by pipe(2) and are owned here only.
        let (reader, writer) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // The reader is gone before wsup writes a byte: every write is EPIPE, which ends
        // quietly with 0 (the reader chose to stop), like `wsup logs URL | head -1`.
        drop(reader);
        let done = StdCommand::new(env!("CARGO_BIN_EXE_wsup"))
            .args(args)
            .stdout(std::process::Stdio::from(writer))
            .output()
            .expect("run wsup");
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        // Any other write error is output lost: 74, one line, never a panic.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let done = StdCommand::new(env!("CARGO_BIN_EXE_wsup"))
            .args(args)
            .stdout(full)
            .output()
            .expect("run wsup");
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(74), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.starts_with("wsup: "), "{args:?}: {stderr}");
    }
}
