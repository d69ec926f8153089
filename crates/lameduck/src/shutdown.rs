//! The shutdown handle: the server's lifecycle phase, how it is triggered, and the drain deadline.
//!
//! ```text
//! Running ──trigger──▶ LameDuck ──period over──▶ Draining ──all done──▶ Stopped
//!    │                                                ▲
//!    └──────── second trigger / deadline ──▶ Forced ──┘
//! ```
//!
//! A [`Shutdown`] is a cheap, cloneable handle. Any thread may [`trigger`](Shutdown::trigger)
//! it; the server that owns it drives the later phases. Threads wait on it with blocking calls
//! ([`wait_for`](Shutdown::wait_for)), tasks with futures ([`reached`](Shutdown::reached)),
//! and nothing in here needs a runtime.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use event_listener::{Event, Listener};

use crate::hooks::{HookRegistration, Hooks};

/// Default time a drain may take before the remaining connections are closed, in both server
/// flavours.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a server is in its lifecycle. Phases only move forward, in declaration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Accepting and serving; readiness checks pass.
    Running,
    /// Shutdown was requested: readiness checks fail so load balancers move traffic away,
    /// but the server still accepts and serves for the lame-duck period.
    LameDuck,
    /// The listeners are closed; connections in flight finish, until the drain deadline.
    Draining,
    /// The deadline passed or a second trigger came: remaining connections are being closed.
    Forced,
    /// Every connection, task and thread the server started is gone.
    Stopped,
}

impl Phase {
    fn from_u8(n: u8) -> Phase {
        const PHASES: [Phase; 5] = [
            Phase::Running,
            Phase::LameDuck,
            Phase::Draining,
            Phase::Forced,
            Phase::Stopped,
        ];
        PHASES[usize::from(n)]
    }

    /// A short lower-case name, as used in logs and status documents (`"lame_duck"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::LameDuck => "lame_duck",
            Phase::Draining => "draining",
            Phase::Forced => "forced",
            Phase::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// About thirty years: far enough to mean "never", near enough for `Instant` and every timer.
const NEVER: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `at + d`, saturated at [`NEVER`]: `Duration::MAX` as a timeout means "no limit", never an
/// overflow panic.
pub(crate) fn instant_after(at: Instant, d: Duration) -> Instant {
    at + d.min(NEVER)
}

/// A cloneable handle to one server's lifecycle.
///
/// # Invariants
/// - The phase only moves forward ([`Phase`] is ordered); each phase is entered at most once
///   and recorded in [`history`](Shutdown::history).
/// - A server sets [`Phase::Draining`] only after its listeners are closed, so once a
///   waiter sees `Draining`, new connections are refused.
/// - The deadline is set once, when draining begins.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    /// The phase, readable without the lock (hot paths ask "draining?" per request); written
    /// only under the `state` lock, right after `state.phase`.
    phase: AtomicU8,
    state: Mutex<State>,
    changed: Event,
    hooks: Arc<Hooks>,
    /// The servers running on this handle, each with a lifecycle of its own (see
    /// [`Shutdown::member`]). Weak: a server's lifecycle ends with the server.
    members: Mutex<Vec<Weak<Inner>>>,
    /// For a server's own lifecycle: the shared handle it was started on.
    group: Option<Arc<Inner>>,
}

struct State {
    phase: Phase,
    history: Vec<(Phase, Instant)>,
    deadline: Option<Instant>,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Shutdown")
            .field("phase", &state.phase)
            .field("deadline", &state.deadline)
            .finish()
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A new handle in [`Phase::Running`].
    pub fn new() -> Self {
        Self::with_group(None)
    }

    fn with_group(group: Option<Arc<Inner>>) -> Self {
        Shutdown {
            inner: Arc::new(Inner {
                phase: AtomicU8::new(Phase::Running as u8),
                state: Mutex::new(State {
                    phase: Phase::Running,
                    history: vec![(Phase::Running, Instant::now())],
                    deadline: None,
                }),
                changed: Event::new(),
                hooks: Arc::new(Hooks::default()),
                members: Mutex::new(Vec::new()),
                group,
            }),
        }
    }

    /// A lifecycle of its own for one server started on this (shared) handle.
    ///
    /// Several servers can share one handle (an application and its admin endpoint, say):
    /// each runs on a member of it. A trigger or a force given to the shared handle reaches
    /// every member; what a server does on its own (closing its listeners, cutting its
    /// connections at *its* deadline, stopping) changes only its member. The shared handle
    /// follows its members: it is `Draining` once every member is, `Stopped` once every
    /// member has stopped. So the first server to finish never cuts another one's
    /// connections.
    pub(crate) fn member(&self) -> Shutdown {
        let member = Shutdown::with_group(Some(Arc::clone(&self.inner)));
        {
            let mut members = self
                .inner
                .members
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            members.retain(|m| m.strong_count() > 0);
            members.push(Arc::downgrade(&member.inner));
        }
        // Registered first, then caught up: a trigger in between reaches it either way, and
        // `raise_to` does not count it twice.
        match self.phase() {
            Phase::Running => {}
            Phase::LameDuck | Phase::Draining => {
                member.raise_to(Phase::LameDuck);
            }
            Phase::Forced | Phase::Stopped => {
                member.raise_to(Phase::Forced);
            }
        }
        member
    }

    /// Moves to `next` if the phase is earlier; returns the phase after the call.
    fn raise_to(&self, next: Phase) -> Phase {
        let state = self.lock();
        if state.phase >= next {
            return state.phase;
        }
        self.advance(state, next, None)
    }

    fn live_members(&self) -> Vec<Shutdown> {
        self.inner
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .map(|inner| Shutdown { inner })
            .collect()
    }

    /// A shared handle catches up with its members: the phase every one of them has reached,
    /// through each phase on the way that a member entered. A member moved on two threads at
    /// once (forced on one, stopped on another) may already be two phases on when this runs,
    /// and its handle still records both.
    fn follow_members(&self) {
        let members = self.live_members();
        let Some(least) = members.iter().map(Shutdown::phase).min() else {
            return;
        };
        let mut steps: Vec<Phase> = members
            .iter()
            .flat_map(|m| m.history().into_iter().map(|(p, _)| p))
            .filter(|p| *p <= least)
            .collect();
        steps.sort_unstable();
        steps.dedup();
        let deadline = members.iter().filter_map(Shutdown::deadline).max();
        for step in steps {
            let state = self.lock();
            if step <= state.phase {
                continue;
            }
            self.advance(state, step, deadline);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-written: every
        // critical section writes whole fields, so a poisoned lock is still consistent.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        // Acquire: pairs with the release store in `advance`, so a waiter that sees a phase
        // also sees the deadline and history written before it.
        Phase::from_u8(self.inner.phase.load(Ordering::Acquire))
    }

    /// Every phase entered so far, with when, oldest first.
    pub fn history(&self) -> Vec<(Phase, Instant)> {
        self.lock().history.clone()
    }

    /// When the drain must end, once draining has begun.
    pub fn deadline(&self) -> Option<Instant> {
        self.lock().deadline
    }

    /// `true` while the server accepts and passes readiness checks ([`Phase::Running`]).
    pub fn is_running(&self) -> bool {
        self.phase() == Phase::Running
    }

    /// `true` once draining has begun: long-lived sessions should finish up and close.
    pub fn is_draining(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// Asks for a shutdown, as SIGINT or SIGTERM does.
    ///
    /// The first call moves [`Phase::Running`] to [`Phase::LameDuck`]; a later call, while the
    /// server is still in lame duck or draining, moves it to [`Phase::Forced`]. Returns the
    /// phase after the call.
    pub fn trigger(&self) -> Phase {
        let state = self.lock();
        let next = match state.phase {
            Phase::Running => Phase::LameDuck,
            Phase::LameDuck | Phase::Draining => Phase::Forced,
            other => return other,
        };
        self.advance(state, next, None)
    }

    /// Forces the shutdown: remaining connections are closed now.
    pub fn force(&self) -> Phase {
        let state = self.lock();
        if state.phase >= Phase::Forced {
            return state.phase;
        }
        self.advance(state, Phase::Forced, None)
    }

    /// Enters [`Phase::Draining`] with a deadline `timeout` from now (`Duration::MAX` and
    /// its kin saturate: no deadline in practice). A server calls this once its
    /// listeners are closed; it does nothing if draining has already begun.
    pub(crate) fn begin_drain(&self, timeout: Duration) -> Phase {
        let state = self.lock();
        if state.phase >= Phase::Draining {
            return state.phase;
        }
        let deadline = instant_after(Instant::now(), timeout);
        self.advance(state, Phase::Draining, Some(deadline))
    }

    /// Enters [`Phase::Stopped`]. A server calls this when everything it started is gone.
    pub(crate) fn finish(&self) -> Phase {
        let state = self.lock();
        if state.phase == Phase::Stopped {
            return Phase::Stopped;
        }
        self.advance(state, Phase::Stopped, None)
    }

    /// Moves forward to `next` (which must be later than the current phase), then wakes
    /// every waiter. Returns `next`.
    fn advance(
        &self,
        mut state: MutexGuard<'_, State>,
        next: Phase,
        deadline: Option<Instant>,
    ) -> Phase {
        debug_assert!(next > state.phase);
        let now = Instant::now();
        // Phases may be skipped (Running → Forced); the history records only those entered.
        state.phase = next;
        self.inner.phase.store(next as u8, Ordering::Release);
        state.history.push((next, now));
        if next == Phase::Draining {
            state.deadline = deadline;
        }
        drop(state);
        self.inner.changed.notify(usize::MAX);
        self.inner.hooks.fire();
        // A trigger or a force given to a shared handle reaches every server on it.
        if matches!(next, Phase::LameDuck | Phase::Forced) {
            for member in self.live_members() {
                member.raise_to(next);
            }
        }
        // And a shared handle follows its servers.
        if let Some(group) = &self.inner.group {
            Shutdown {
                inner: Arc::clone(group),
            }
            .follow_members();
        }
        next
    }

    /// Blocks the calling thread until the phase is `phase` or later; returns the phase seen.
    pub fn wait_for(&self, phase: Phase) -> Phase {
        loop {
            let listener = self.inner.changed.listen();
            let now = self.phase();
            if now >= phase {
                return now;
            }
            listener.wait();
        }
    }

    /// Like [`wait_for`](Self::wait_for) but gives up at `deadline`, returning `None`.
    pub fn wait_for_deadline(&self, phase: Phase, deadline: Instant) -> Option<Phase> {
        loop {
            let listener = self.inner.changed.listen();
            let now = self.phase();
            if now >= phase {
                return Some(now);
            }
            listener.wait_deadline(deadline)?;
        }
    }

    /// Resolves once the phase is `phase` or later, with the phase seen.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future loses nothing.
    pub fn reached(&self, phase: Phase) -> impl Future<Output = Phase> + Send + 'static {
        let this = self.clone();
        async move {
            loop {
                let listener = this.inner.changed.listen();
                let now = this.phase();
                if now >= phase {
                    return now;
                }
                listener.await;
            }
        }
    }

    /// Resolves at the next phase change after `from`, with the new phase.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub fn changed(&self, from: Phase) -> impl Future<Output = Phase> + Send + 'static {
        let this = self.clone();
        async move {
            loop {
                let listener = this.inner.changed.listen();
                let now = this.phase();
                if now != from {
                    return now;
                }
                listener.await;
            }
        }
    }

    /// Runs `callback` on the changing thread after every phase change, until the
    /// registration is dropped. Used to wake pollers.
    pub(crate) fn on_change(&self, callback: Arc<dyn Fn() + Send + Sync>) -> HookRegistration {
        self.inner.hooks.register(callback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn phases(s: &Shutdown) -> Vec<Phase> {
        s.history().into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn first_trigger_is_lame_duck_and_second_forces() {
        let s = Shutdown::new();
        assert!(s.is_running());
        assert_eq!(s.trigger(), Phase::LameDuck);
        assert!(!s.is_running() && !s.is_draining());
        assert_eq!(s.begin_drain(Duration::from_secs(5)), Phase::Draining);
        assert!(s.deadline().is_some());
        assert_eq!(s.trigger(), Phase::Forced);
        assert_eq!(s.finish(), Phase::Stopped);
        assert_eq!(s.trigger(), Phase::Stopped);
        assert_eq!(
            phases(&s),
            [
                Phase::Running,
                Phase::LameDuck,
                Phase::Draining,
                Phase::Forced,
                Phase::Stopped
            ]
        );
    }

    #[test]
    fn phases_never_move_backwards() {
        let s = Shutdown::new();
        s.force();
        assert_eq!(s.begin_drain(Duration::from_secs(1)), Phase::Forced);
        assert_eq!(s.deadline(), None);
        assert_eq!(phases(&s), [Phase::Running, Phase::Forced]);
    }

    #[test]
    fn blocking_wait_wakes_on_trigger_from_another_thread() {
        let s = Shutdown::new();
        let t = {
            let s = s.clone();
            thread::spawn(move || s.wait_for(Phase::LameDuck))
        };
        s.trigger();
        assert_eq!(t.join().unwrap(), Phase::LameDuck);
    }

    #[test]
    fn blocking_wait_with_deadline_gives_up() {
        let s = Shutdown::new();
        let got = s.wait_for_deadline(Phase::LameDuck, Instant::now() + Duration::from_millis(20));
        assert_eq!(got, None);
    }

    #[tokio::test]
    async fn async_waiters_see_the_change() {
        let s = Shutdown::new();
        let reached = tokio::spawn(s.reached(Phase::Draining));
        let changed = tokio::spawn(s.changed(Phase::Running));
        // Both waiters are polled and parked before anything changes: the trigger must wake
        // them, not merely be found by their first look.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(!changed.is_finished() && !reached.is_finished());
        s.trigger();
        assert_eq!(changed.await.unwrap(), Phase::LameDuck);
        tokio::task::yield_now().await;
        assert!(!reached.is_finished());
        s.begin_drain(Duration::from_secs(1));
        assert_eq!(reached.await.unwrap(), Phase::Draining);
    }

    /// A member forced on one thread and stopped on another (a dropped `serve` future and its
    /// task's own drop) may be Stopped before the forcing thread updates the shared handle:
    /// the handle still records Forced, then Stopped.
    #[test]
    fn a_shared_handle_records_every_phase_of_a_member_moved_from_two_threads() {
        for _ in 0..500 {
            let group = Shutdown::new();
            let member = group.member();
            let forcer = {
                let member = member.clone();
                thread::spawn(move || {
                    member.force();
                })
            };
            let end = Instant::now() + Duration::from_secs(10);
            while member.phase() < Phase::Forced {
                assert!(Instant::now() < end, "the other thread never forced");
                std::hint::spin_loop();
            }
            member.finish();
            forcer.join().unwrap();
            assert_eq!(
                phases(&group),
                [Phase::Running, Phase::Forced, Phase::Stopped]
            );
        }
    }
}
