//! Data to stdout without panicking: `println!` panics when the reader has
//! gone (`support audit --json | head -1`: `EPIPE`, as Rust ignores
//! `SIGPIPE`). Every command writes through [`line`] or [`outln!`] and
//! returns [`Error::Stdout`] with `?`; `main` exits 0 quietly on a closed
//! pipe and 1 on any other write error (a full disk).

use std::fmt;
use std::io::Write as _;

use crate::Error;

/// Writes `args` and a newline to stdout.
///
/// # Errors
/// [`Error::Stdout`] when stdout cannot be written, `BrokenPipe` included.
pub(crate) fn line(args: fmt::Arguments<'_>) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.write_all(b"\n")).map_err(Error::Stdout)
}

/// Writes `bytes` to stdout as they are, flushed (an interactive
/// session's terminal output in `support watch`).
///
/// # Errors
/// As [`line`].
pub(crate) fn raw(bytes: &[u8]) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush()).map_err(Error::Stdout)
}

/// `println!` that returns `Result<(), Error>` instead of panicking; see [`line`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;
