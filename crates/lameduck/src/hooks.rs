//! Wake-up callbacks that let a foreign waiter (a poller's waker) hear a core event.
//!
//! The core types wake async and blocking waiters through `event-listener`; a thread parked in
//! a poller cannot wait on such an event, so it registers a hook instead (for example
//! `move || poller.notify()`), which runs every time the event fires.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

type Callback = Arc<dyn Fn() + Send + Sync>;

/// A list of callbacks run on every occurrence of an event.
#[derive(Default)]
pub(crate) struct Hooks {
    next_id: AtomicU64,
    list: Mutex<Vec<(u64, Callback)>>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self
            .list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("Hooks").field("len", &len).finish()
    }
}

impl Hooks {
    /// Registers `callback`; it runs until the returned registration is dropped.
    pub(crate) fn register(self: &Arc<Self>, callback: Callback) -> HookRegistration {
        // Relaxed: the id only has to be unique, it orders nothing.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, callback));
        HookRegistration {
            hooks: Arc::downgrade(self),
            id,
        }
    }

    /// Runs every registered callback. The list is copied first, so a callback may register
    /// or drop hooks without deadlocking.
    pub(crate) fn fire(&self) {
        let callbacks: Vec<Callback> = {
            let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
            if list.is_empty() {
                return;
            }
            list.iter().map(|(_, cb)| Arc::clone(cb)).collect()
        };
        for callback in callbacks {
            callback();
        }
    }
}

/// Keeps a hook registered; dropping it removes the hook.
#[must_use = "the hook is removed when the registration is dropped"]
pub(crate) struct HookRegistration {
    hooks: Weak<Hooks>,
    id: u64,
}

impl fmt::Debug for HookRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookRegistration")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for HookRegistration {
    fn drop(&mut self) {
        if let Some(hooks) = self.hooks.upgrade() {
            hooks
                .list
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|(id, _)| *id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn hooks_run_until_their_registration_is_dropped() {
        let hooks = Arc::new(Hooks::default());
        let count = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&count);
        let reg = hooks.register(Arc::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        hooks.fire();
        hooks.fire();
        assert_eq!(count.load(Ordering::SeqCst), 2);
        drop(reg);
        hooks.fire();
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}
