//! The connection tracker: counts live connections through RAII guards and waits for zero.
//!
//! The accept loop calls [`Tracker::track`] *before* it hands a connection to a task or a
//! thread, and the [`ConnectionGuard`] travels with the connection; its `Drop` means "done".
//! Counting and waiting therefore cannot race: by the time the accept loop has stopped, every
//! connection it accepted is already counted, and "drained" is simply "the count is zero".

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use event_listener::{Event, Listener};

/// Counts the connections of one server. Cloning gives another handle to the same counts.
#[derive(Clone, Default)]
pub struct Tracker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    active: AtomicUsize,
    accepted: AtomicU64,
    completed: AtomicU64,
    forced: AtomicU64,
    idle: Event,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("active", &self.active())
            .field("accepted", &self.accepted())
            .field("completed", &self.completed())
            .field("forced", &self.forced())
            .finish()
    }
}

impl Tracker {
    /// A tracker with no connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers one connection. Call it before the connection's handler starts, and keep
    /// the guard alive exactly as long as the connection.
    pub fn track(&self) -> ConnectionGuard {
        // Relaxed: ids only need to be unique; `accepted` is a statistic.
        let id = self.inner.accepted.fetch_add(1, Ordering::Relaxed);
        // Relaxed is enough for the increment: it happens-before the guard's drop on the same
        // connection, and a waiter that sees the count only ever waits for it to fall.
        self.inner.active.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            inner: Arc::clone(&self.inner),
            id,
            forced: false,
        }
    }

    /// Connections registered and not yet done.
    pub fn active(&self) -> usize {
        // Acquire: pairs with the guard's release decrement.
        self.inner.active.load(Ordering::Acquire)
    }

    /// Connections ever registered.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Connections that ended on their own.
    pub fn completed(&self) -> u64 {
        self.inner.completed.load(Ordering::Relaxed)
    }

    /// Connections closed by the server at the deadline or on a forced shutdown.
    pub fn forced(&self) -> u64 {
        self.inner.forced.load(Ordering::Relaxed)
    }

    /// Blocks until no connection is active.
    pub fn wait_idle(&self) {
        loop {
            let listener = self.inner.idle.listen();
            if self.active() == 0 {
                return;
            }
            listener.wait();
        }
    }

    /// Blocks until no connection is active or `deadline` passes; `true` if idle.
    pub fn wait_idle_deadline(&self, deadline: Instant) -> bool {
        loop {
            let listener = self.inner.idle.listen();
            if self.active() == 0 {
                return true;
            }
            if listener.wait_deadline(deadline).is_none() {
                return self.active() == 0;
            }
        }
    }

    /// Resolves when no connection is active.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub fn idle(&self) -> impl Future<Output = ()> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            loop {
                let listener = inner.idle.listen();
                if inner.active.load(Ordering::Acquire) == 0 {
                    return;
                }
                listener.await;
            }
        }
    }
}

/// One tracked connection; dropping it marks the connection done.
#[must_use = "the connection counts as done as soon as its guard is dropped"]
pub struct ConnectionGuard {
    inner: Arc<Inner>,
    id: u64,
    forced: bool,
}

impl fmt::Debug for ConnectionGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionGuard")
            .field("id", &self.id)
            .field("forced", &self.forced)
            .finish()
    }
}

impl ConnectionGuard {
    /// The connection's number, unique within its tracker (0, 1, 2, …).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Counts this connection as forced (closed by the server) rather than completed.
    pub fn mark_forced(&mut self) {
        self.forced = true;
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let counter = if self.forced {
            &self.inner.forced
        } else {
            &self.inner.completed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Release: the work done on this connection happens-before a waiter seeing zero.
        if self.inner.active.fetch_sub(1, Ordering::Release) == 1 {
            self.inner.idle.notify(usize::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn counts_and_waits_for_zero() {
        let t = Tracker::new();
        let a = t.track();
        let mut b = t.track();
        assert_eq!((a.id(), b.id()), (0, 1));
        assert_eq!(t.active(), 2);
        b.mark_forced();
        let waiter = {
            let t = t.clone();
            thread::spawn(move || t.wait_idle())
        };
        drop(a);
        assert!(!t.wait_idle_deadline(Instant::now() + Duration::from_millis(10)));
        drop(b);
        waiter.join().unwrap();
        assert_eq!(
            (t.active(), t.accepted(), t.completed(), t.forced()),
            (0, 2, 1, 1)
        );
    }

    #[tokio::test]
    async fn idle_future_resolves_when_last_guard_drops() {
        let t = Tracker::new();
        let g = t.track();
        let idle = tokio::spawn(t.idle());
        tokio::task::yield_now().await;
        assert!(!idle.is_finished());
        drop(g);
        idle.await.unwrap();
    }

    #[test]
    fn idle_tracker_is_idle_at_once() {
        let t = Tracker::new();
        t.wait_idle();
        assert!(t.wait_idle_deadline(Instant::now()));
    }
}
