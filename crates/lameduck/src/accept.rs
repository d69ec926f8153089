//! Sorting accept errors, and the bounded back-off used when the process runs out of
//! file descriptors. Shared by both server flavours.

use std::io;
use std::time::Duration;

/// What an accept error means for the accept loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AcceptError {
    /// The one connection failed (reset or aborted before we took it): skip it.
    Connection,
    /// The process or system is out of descriptors or memory: back off, then retry. The
    /// connection stays in the kernel backlog meanwhile.
    Resources,
    /// Anything else: log it and back off, so a persistent error cannot make the loop spin.
    Other,
}

pub(crate) fn classify(err: &io::Error) -> AcceptError {
    use io::ErrorKind::*;
    match err.kind() {
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock => {
            AcceptError::Connection
        }
        _ if is_resource_exhaustion(err) => AcceptError::Resources,
        _ => AcceptError::Other,
    }
}

#[cfg(unix)]
fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(not(unix))]
fn is_resource_exhaustion(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::OutOfMemory
}

/// Exponential back-off between 5 ms and 500 ms, reset by a successful accept.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_millis(500);

    pub(crate) fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    /// The delay to wait now; the following one doubles, up to the maximum.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_errors() {
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::ConnectionAborted)),
            AcceptError::Connection
        );
        #[cfg(unix)]
        assert_eq!(
            classify(&io::Error::from_raw_os_error(libc::EMFILE)),
            AcceptError::Resources
        );
        assert_eq!(classify(&io::Error::other("boom")), AcceptError::Other);
    }

    #[test]
    fn backoff_doubles_up_to_a_bound_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_millis(5));
        assert_eq!(delays[1], Duration::from_millis(10));
        assert_eq!(*delays.last().unwrap(), Duration::from_millis(500));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(5));
    }
}
