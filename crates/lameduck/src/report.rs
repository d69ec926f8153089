//! The report a server returns when it has stopped.

use std::fmt;
use std::time::Duration;

/// What happened over a server's life, returned by `run`/`serve` once everything it started
/// is gone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections that ended on their own.
    pub completed: u64,
    /// Connections the server closed at the deadline or on a forced shutdown.
    pub forced: u64,
    /// Handlers that panicked (their connection counts as completed or forced as well).
    pub panicked: u64,
    /// Handlers still running after the deadline and its grace, left behind (blocking
    /// flavour: a thread stuck in something that is not I/O cannot be stopped).
    pub stuck: u64,
    /// From the start of the drain to the last connection gone.
    pub drain_duration: Duration,
}

/// The process exit code lameduck's programs use when the drain had to cut connections (a
/// clean drain exits 0).
pub const EXIT_FORCED: u8 = 3;

impl Report {
    /// `true` if no connection had to be forced closed.
    pub fn is_clean(&self) -> bool {
        self.forced == 0 && self.stuck == 0
    }

    /// The exit code for a program whose server stopped with this report: 0 after a clean
    /// drain, [`EXIT_FORCED`] when connections had to be cut. Supervisors and CI can tell
    /// the two apart.
    pub fn exit_code(&self) -> std::process::ExitCode {
        if self.is_clean() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::from(EXIT_FORCED)
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted={} completed={} forced={} panicked={} stuck={} drain={:.3}s",
            self.accepted,
            self.completed,
            self.forced,
            self.panicked,
            self.stuck,
            self.drain_duration.as_secs_f64()
        )
    }
}
