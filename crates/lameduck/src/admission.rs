//! Admission: a bounded pool of permits, one taken *before* each `accept()`.
//!
//! At the limit the server does not poll its listener at all, so extra clients wait in the
//! kernel's backlog (TCP backpressure) and are accepted as permits come back, instead of being
//! accepted and then dropped.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use event_listener::{Event, Listener};

use crate::hooks::{HookRegistration, Hooks};

/// A limit on concurrent connections. Cloning gives another handle to the same pool.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    limit: usize,
    in_use: AtomicUsize,
    rejected: AtomicU64,
    released: Event,
    /// Fired when an acceptor at the limit would like idle connections to make room (only
    /// HTTP connections know when they are idle).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    room_wanted: Event,
    /// Set while the acceptor waits at the limit; a level, so that a connection that goes
    /// idle later (or starts listening late) still sees it.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    room_wanted_now: AtomicBool,
    hooks: Arc<Hooks>,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("limit", &self.limit())
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl Admission {
    /// A pool of `limit` permits. A limit of 0 is raised to 1: a server that may hold no
    /// connection at all could never serve.
    pub fn new(limit: usize) -> Self {
        Admission {
            inner: Arc::new(Inner {
                limit: limit.max(1),
                in_use: AtomicUsize::new(0),
                rejected: AtomicU64::new(0),
                released: Event::new(),
                room_wanted: Event::new(),
                room_wanted_now: AtomicBool::new(false),
                hooks: Arc::new(Hooks::default()),
            }),
        }
    }

    /// A pool with no practical limit (`usize::MAX` permits).
    pub fn unlimited() -> Self {
        Self::new(usize::MAX)
    }

    /// The number of permits.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Permits currently held.
    pub fn in_use(&self) -> usize {
        self.inner.in_use.load(Ordering::Acquire)
    }

    /// Connections turned away by a shedding overload policy (see [`record_rejected`]).
    ///
    /// [`record_rejected`]: Self::record_rejected
    pub fn rejected(&self) -> u64 {
        self.inner.rejected.load(Ordering::Relaxed)
    }

    /// Counts one connection turned away because no permit was free.
    pub fn record_rejected(&self) {
        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a permit if one is free.
    pub fn try_acquire(&self) -> Option<Permit> {
        // Acquire on success pairs with the release in `Permit::drop`; Relaxed on failure is
        // enough because the loop re-reads the value.
        self.inner
            .in_use
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                (n < self.inner.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                inner: Arc::clone(&self.inner),
            })
    }

    /// Blocks the calling thread until a permit is free.
    pub fn acquire_blocking(&self) -> Permit {
        loop {
            let listener = self.inner.released.listen();
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            listener.wait();
        }
    }

    /// Resolves with a permit once one is free.
    ///
    /// # Cancel safety
    /// Cancel safe: a permit is only taken in the poll that returns it.
    pub fn acquire(&self) -> impl Future<Output = Permit> + Send + 'static {
        let this = self.clone();
        async move {
            loop {
                let listener = this.inner.released.listen();
                if let Some(permit) = this.try_acquire() {
                    return permit;
                }
                listener.await;
            }
        }
    }

    /// Resolves the next time any permit is returned. An accept loop backing off from
    /// file-descriptor exhaustion waits on this: a returned permit means a closed socket.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub fn released(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.released.listen()
    }

    /// Asks connections that are idle (an HTTP keep-alive connection between requests) to
    /// close and make room: the acceptor is at the limit and clients are waiting. This is what
    /// nginx does when it runs out of connections; without it, a few hundred idle keep-alive
    /// clients can hold every slot until their idle timeout.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn ask_for_room(&self) {
        // SeqCst, with the SeqCst load in `room_is_wanted` after a listener is registered:
        // a connection either sees the flag or is woken by this notification.
        self.inner.room_wanted_now.store(true, Ordering::SeqCst);
        self.inner.room_wanted.notify(usize::MAX);
    }

    /// The acceptor got a permit: no more room is needed.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn room_made(&self) {
        self.inner.room_wanted_now.store(false, Ordering::SeqCst);
    }

    /// Whether the acceptor is waiting at the limit right now.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn room_is_wanted(&self) -> bool {
        self.inner.room_wanted_now.load(Ordering::SeqCst)
    }

    /// Resolves the next time [`ask_for_room`](Self::ask_for_room) is called. Register it,
    /// then check [`room_is_wanted`](Self::room_is_wanted), to miss nothing.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn room_wanted(&self) -> event_listener::EventListener {
        self.inner.room_wanted.listen()
    }

    /// Runs `callback` every time a permit is returned, until the registration is dropped.
    pub(crate) fn on_release(&self, callback: Arc<dyn Fn() + Send + Sync>) -> HookRegistration {
        self.inner.hooks.register(callback)
    }
}

/// One admitted connection's slot; dropping it frees the slot.
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct Permit {
    inner: Arc<Inner>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Release: pairs with the acquire in `try_acquire`.
        self.inner.in_use.fetch_sub(1, Ordering::Release);
        self.inner.released.notify(usize::MAX);
        self.inner.hooks.fire();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn never_hands_out_more_than_the_limit() {
        let a = Admission::new(2);
        let p1 = a.try_acquire().unwrap();
        let _p2 = a.try_acquire().unwrap();
        assert!(a.try_acquire().is_none());
        assert_eq!(a.in_use(), 2);
        let waiter = {
            let a = a.clone();
            thread::spawn(move || a.acquire_blocking())
        };
        // Let the waiter block first, so the release must wake it (not merely be found by its
        // first look); it cannot get a permit until then.
        thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished());
        assert_eq!(a.in_use(), 2);
        drop(p1);
        let _p3 = waiter.join().unwrap();
        assert_eq!(a.in_use(), 2);
    }

    #[test]
    fn zero_limit_is_raised_to_one() {
        assert_eq!(Admission::new(0).limit(), 1);
    }

    #[tokio::test]
    async fn async_acquire_waits_for_a_release() {
        let a = Admission::new(1);
        let p = a.acquire().await;
        let next = tokio::spawn(a.acquire());
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        drop(p);
        let _p = next.await.unwrap();
        assert_eq!(a.in_use(), 1);
    }
}
