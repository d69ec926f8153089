//! Sorting accept errors, and the bounded, per-listener back-off that follows them. Shared by
//! both server flavours.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
        _ if is_per_connection(err) => AcceptError::Connection,
        _ if is_resource_exhaustion(err) => AcceptError::Resources,
        _ => AcceptError::Other,
    }
}

/// Errors that belong to the one connection being accepted. accept(2): "Linux accept()
/// passes already-pending network errors on the new socket as an error code from accept()
/// ... For TCP/IP, these are ENETDOWN, EPROTO, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH,
/// EOPNOTSUPP, and ENETUNREACH", to be retried like EAGAIN; and EPERM means "firewall rules
/// forbid connection" (that one).
#[cfg(unix)]
fn is_per_connection(err: &io::Error) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if err.raw_os_error() == Some(libc::ENONET) {
        return true;
    }
    matches!(
        err.raw_os_error(),
        Some(
            libc::EPROTO
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::EHOSTUNREACH
                | libc::EHOSTDOWN
                | libc::ENOPROTOOPT
                | libc::EOPNOTSUPP
                | libc::EPERM
        )
    )
}

#[cfg(not(unix))]
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NetworkDown
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::HostUnreachable
    )
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

/// The address a connection was accepted on: the listener's, unless the listener is bound to
/// a wildcard (`0.0.0.0`, `::`), where only the socket knows (one `getsockname`).
pub(crate) fn accepted_on(
    listener: SocketAddr,
    socket: impl FnOnce() -> io::Result<SocketAddr>,
) -> SocketAddr {
    if listener.ip().is_unspecified() {
        socket().unwrap_or(listener)
    } else {
        listener
    }
}

/// One listener's pause after a failed accept.
#[derive(Clone, Copy, Debug)]
struct Pause {
    until: Instant,
    /// Out of descriptors or memory: any returned permit (a closed socket) may end it early.
    resources: bool,
}

/// What both flavours do with accept errors, listener by listener: skip a failed connection,
/// pause every listener when the process is out of descriptors or memory (that is
/// process-wide), and pause only the failing listener for anything else, so one broken
/// listener cannot starve the others. Pauses double from 5 ms to 500 ms while failures repeat.
#[derive(Debug)]
pub(crate) struct AcceptBackoff {
    backoff: Vec<Backoff>,
    paused: Vec<Option<Pause>>,
}

impl AcceptBackoff {
    pub(crate) fn new(listeners: usize) -> Self {
        AcceptBackoff {
            backoff: (0..listeners).map(|_| Backoff::new()).collect(),
            paused: vec![None; listeners],
        }
    }

    /// Listener `idx` accepted a connection.
    pub(crate) fn accepted(&mut self, idx: usize) {
        self.backoff[idx].reset();
    }

    /// Sorts and logs an accept error on listener `idx`.
    pub(crate) fn failed(
        &mut self,
        idx: usize,
        addr: SocketAddr,
        err: &io::Error,
        active: usize,
        now: Instant,
    ) {
        match classify(err) {
            AcceptError::Connection => {
                tracing::debug!(%addr, error = %err, "accept: connection failed before it was taken");
            }
            AcceptError::Resources => {
                let delay = self.backoff[idx].next_delay();
                tracing::warn!(%addr, error = %err, retry_in = ?delay, active, "accept: out of resources; backing off");
                let pause = Some(Pause {
                    until: now + delay,
                    resources: true,
                });
                self.paused.iter_mut().for_each(|p| *p = pause);
            }
            AcceptError::Other => {
                let delay = self.backoff[idx].next_delay();
                tracing::error!(%addr, error = %err, retry_in = ?delay, "accept failed; backing off this listener");
                self.paused[idx] = Some(Pause {
                    until: now + delay,
                    resources: false,
                });
            }
        }
    }

    /// Whether listener `idx` may be tried at `now`.
    pub(crate) fn may_accept(&self, idx: usize, now: Instant) -> bool {
        self.paused[idx].is_none_or(|p| p.until <= now)
    }

    /// When the next pause still running at `now` ends.
    pub(crate) fn next_resume(&self, now: Instant) -> Option<Instant> {
        self.paused
            .iter()
            .flatten()
            .map(|p| p.until)
            .filter(|&until| until > now)
            .min()
    }

    /// Whether some listener waits, at `now`, for descriptors or memory to come back.
    pub(crate) fn waiting_for_resources(&self, now: Instant) -> bool {
        self.paused
            .iter()
            .flatten()
            .any(|p| p.resources && p.until > now)
    }

    /// A permit came back (a socket closed): pauses for lack of resources end now.
    pub(crate) fn resources_freed(&mut self) {
        for p in &mut self.paused {
            if p.is_some_and(|p| p.resources) {
                *p = None;
            }
        }
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

    #[cfg(unix)]
    #[test]
    fn network_errors_passed_on_by_accept_belong_to_the_connection() {
        for errno in [
            libc::EPROTO,
            libc::ENETDOWN,
            libc::ENETUNREACH,
            libc::EHOSTUNREACH,
            libc::EHOSTDOWN,
            libc::ENOPROTOOPT,
            libc::EOPNOTSUPP,
            libc::EPERM,
        ] {
            assert_eq!(
                classify(&io::Error::from_raw_os_error(errno)),
                AcceptError::Connection,
                "{}",
                io::Error::from_raw_os_error(errno)
            );
        }
        assert_eq!(
            classify(&io::Error::from_raw_os_error(libc::EINVAL)),
            AcceptError::Other
        );
    }

    #[test]
    fn one_failing_listener_pauses_alone_but_exhaustion_pauses_all() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let now = Instant::now();
        let mut b = AcceptBackoff::new(2);
        b.failed(0, addr, &io::Error::other("broken"), 0, now);
        assert!(!b.may_accept(0, now));
        assert!(b.may_accept(1, now));
        assert!(!b.waiting_for_resources(now));
        assert!(b.may_accept(0, now + Duration::from_millis(5)));
        #[cfg(unix)]
        {
            b.failed(1, addr, &io::Error::from_raw_os_error(libc::EMFILE), 0, now);
            assert!(!b.may_accept(0, now) && !b.may_accept(1, now));
            assert!(b.waiting_for_resources(now));
            b.resources_freed();
            assert!(b.may_accept(0, now) && b.may_accept(1, now));
        }
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
