//! The process exit codes, named as sysexits(3) names them.
//!
//! The bottom layer: it imports nothing, so that every module (the pure `classify` and
//! `machine` included) can name a code instead of writing its number. The man page's
//! exit table ([`crate::manual::EXIT_CODES`]) and `--help`'s ([`crate::cli::EXIT_CODES_HELP`])
//! list these.

/// The session ended normally.
pub const OK: u8 = 0;

/// A bug in wsup: nothing a user did or a server sent should end here.
pub const INTERNAL: u8 = 1;

/// Usage error: a bad flag, URL, header, credentials file or certificate. Found before
/// anything is dialed.
pub const USAGE: u8 = 2;

/// `EX_DATAERR`: the server rejected the data, or sent data a client must refuse.
pub const DATA: u8 = 65;

/// `EX_UNAVAILABLE`: a permanent failure, one retrying cannot help.
pub const UNAVAILABLE: u8 = 69;

/// `EX_CANTCREAT`: a file wsup must write cannot be created (the credentials file cannot
/// be replaced).
pub const CANT_CREATE: u8 = 73;

/// `EX_IOERR`: output lost, a write error other than a broken pipe.
pub const IO_ERROR: u8 = 74;

/// `EX_TEMPFAIL`: transient failures outlasted the retries.
pub const TEMP_FAIL: u8 = 75;

/// `EX_NOPERM`: authentication or permission refused.
pub const NO_PERM: u8 = 77;

/// SIGINT (or Ctrl+C while not connected): 128 + 2, as a shell reports it.
pub const SIGINT: u8 = 130;

/// SIGTERM: 128 + 15, as a shell reports it.
pub const SIGTERM: u8 = 143;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_signals_are_128_plus_the_signal() {
        let all = [
            OK,
            INTERNAL,
            USAGE,
            DATA,
            UNAVAILABLE,
            CANT_CREATE,
            IO_ERROR,
            TEMP_FAIL,
            NO_PERM,
            SIGINT,
            SIGTERM,
        ];
        let distinct: std::collections::BTreeSet<u8> = all.into_iter().collect();
        assert_eq!(distinct.len(), all.len());
        assert_eq!(i32::from(SIGINT), 128 + libc::SIGINT);
        assert_eq!(i32::from(SIGTERM), 128 + libc::SIGTERM);
    }
}
