//! A command's results on stdout, for a reader that may stop reading.
//!
//! `println!` panics when stdout is a pipe whose reader has gone
//! (`runner jobs list --limit 1000 | head -3`: a panic message and exit
//! 101). A line printed with `outln!` returns that as
//! [`PrintError::Closed`] instead; the command stops printing its results
//! and returns it (`?`), and `cli::main` ends it quietly with exit 0
//! ([`reader_gone`]). Any other write error (a full disk under `> file`)
//! is an error, said, with exit 1: nothing is dropped silently.

use std::io::Write as _;
use std::process::ExitCode;

use super::client::{CallError, report};

/// Like `println!`, but returns `Result<(), PrintError>` instead of
/// panicking when stdout cannot be written.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// stdout could not take a line.
#[derive(Debug, thiserror::Error)]
pub enum PrintError {
    /// The reader closed the pipe (`| head`): not a failure, the command
    /// just stops printing.
    #[error("stdout was closed by its reader")]
    Closed,
    #[error("cannot write to stdout: {0}")]
    Failed(std::io::Error),
}

impl From<std::io::Error> for PrintError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::BrokenPipe => PrintError::Closed,
            _ => PrintError::Failed(e),
        }
    }
}

/// Writes `args` and a newline to stdout (what `outln!` calls).
pub fn line(args: std::fmt::Arguments<'_>) -> Result<(), PrintError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    // stdout is line-buffered: the newline sends what waits, so a reader
    // that has gone is found by this line at the latest.
    out.write_all(b"\n")?;
    Ok(())
}

/// Whether `e` is, or was caused by, stdout closed by its reader: the
/// command ends quietly and successfully.
pub fn reader_gone(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| matches!(c.downcast_ref::<PrintError>(), Some(PrintError::Closed)))
}

/// How a command that asks the API and prints what it answers can fail.
#[derive(Debug)]
pub enum ListError {
    /// The API refused or could not be reached.
    Call(CallError),
    Print(PrintError),
}

impl From<CallError> for ListError {
    fn from(e: CallError) -> Self {
        ListError::Call(e)
    }
}

impl From<PrintError> for ListError {
    fn from(e: PrintError) -> Self {
        ListError::Print(e)
    }
}

/// The end of such a command: success, a call error reported with its
/// exit code ([`report`]), or the print error for `cli::main`.
pub fn exit_code(result: Result<(), ListError>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(ListError::Call(e)) => Ok(report(e)),
        Err(ListError::Print(e)) => Err(e.into()),
    }
}
