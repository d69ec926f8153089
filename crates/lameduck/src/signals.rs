//! OS signals mapped onto a [`Shutdown`] handle (feature `signals`).
//!
//! On unix, SIGINT and SIGTERM trigger a graceful shutdown; a second one forces it; a third,
//! once the shutdown is already forced, terminates the process the way the signal normally
//! would, so a wedged program can still be stopped from the keyboard. Signals are read on one
//! dedicated thread that sleeps in `read()` between signals: no polling, no wake-ups while
//! idle. On Windows, Ctrl-C and Ctrl-Break (through the `ctrlc` crate, on the console control
//! handler's own thread) do the same.

use crate::shutdown::{Phase, Shutdown};

/// What one signal does to `shutdown`: trigger it (the first drains, the second forces), or,
/// when it is already forced, tell the caller to terminate the process.
fn deliver(shutdown: &Shutdown, name: &str) -> bool {
    let before = shutdown.phase();
    if before >= Phase::Forced {
        tracing::warn!(signal = name, "shutdown already forced; terminating now");
        return false;
    }
    // Logged before the trigger: once triggered, the server may stop and log its report
    // before this thread runs again, and the report must stay the last line.
    if before == Phase::Running {
        tracing::info!(signal = name, "signal received: shutting down gracefully");
    } else {
        tracing::warn!(signal = name, "second signal: forcing shutdown");
    }
    shutdown.trigger();
    true
}

#[cfg(unix)]
pub use unix::{SignalHandler, install};
#[cfg(windows)]
pub use windows::{SignalHandler, install};

#[cfg(unix)]
mod unix {
    use std::fmt;
    use std::io;
    use std::thread::JoinHandle;

    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::iterator::{Handle, Signals};

    use crate::shutdown::Shutdown;

    /// The installed signal handling; dropping it stops listening for signals and joins its
    /// thread.
    #[must_use = "signals are only handled while the handler is alive"]
    pub struct SignalHandler {
        handle: Handle,
        thread: Option<JoinHandle<()>>,
    }

    impl fmt::Debug for SignalHandler {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("SignalHandler")
                .field("closed", &self.handle.is_closed())
                .finish()
        }
    }

    /// Routes SIGINT and SIGTERM to `shutdown` until the returned handler is dropped.
    pub fn install(shutdown: &Shutdown) -> io::Result<SignalHandler> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        let shutdown = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("lameduck-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    let name = if signal == SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    if !super::deliver(&shutdown, name) {
                        // If emulating the default action fails, the only thing left is to exit.
                        let _ = signal_hook::low_level::emulate_default_handler(signal);
                        std::process::exit(128 + signal);
                    }
                }
            })?;
        Ok(SignalHandler {
            handle,
            thread: Some(thread),
        })
    }

    impl Drop for SignalHandler {
        fn drop(&mut self) {
            self.handle.close();
            if let Some(thread) = self.thread.take() {
                // The thread only loops over the closed iterator; a panic there has already been
                // reported by the panic hook, and there is nothing more to do with it.
                let _ = thread.join();
            }
        }
    }
}

#[cfg(windows)]
mod windows {
    use std::fmt;
    use std::io;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock, PoisonError};

    use crate::shutdown::Shutdown;

    /// The handles Ctrl-C is routed to. The console control handler can be set only once per
    /// process, so it is set on the first `install` and serves every registration.
    static ROUTES: Mutex<Vec<(u64, Shutdown)>> = Mutex::new(Vec::new());
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    static HANDLER: OnceLock<Result<(), String>> = OnceLock::new();

    /// The installed Ctrl-C handling; dropping it stops routing Ctrl-C to its handle.
    #[must_use = "signals are only handled while the handler is alive"]
    pub struct SignalHandler {
        id: u64,
    }

    impl fmt::Debug for SignalHandler {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("SignalHandler")
                .field("id", &self.id)
                .finish()
        }
    }

    /// Routes Ctrl-C and Ctrl-Break to `shutdown` until the returned handler is dropped.
    pub fn install(shutdown: &Shutdown) -> io::Result<SignalHandler> {
        let installed = HANDLER.get_or_init(|| {
            ctrlc::set_handler(|| {
                let routes: Vec<Shutdown> = ROUTES
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .map(|(_, s)| s.clone())
                    .collect();
                let mut carry_on = true;
                for shutdown in &routes {
                    carry_on &= super::deliver(shutdown, "Ctrl-C");
                }
                if !carry_on {
                    // 0xC000013A: STATUS_CONTROL_C_EXIT, what Windows reports for Ctrl-C.
                    std::process::exit(0xC000_013A_u32 as i32);
                }
            })
            .map_err(|e| e.to_string())
        });
        if let Err(e) = installed {
            return Err(io::Error::other(format!("cannot handle Ctrl-C: {e}")));
        }
        // Relaxed: the id only has to be unique.
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        ROUTES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, shutdown.clone()));
        Ok(SignalHandler { id })
    }

    impl Drop for SignalHandler {
        fn drop(&mut self) {
            ROUTES
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|(id, _)| *id != self.id);
        }
    }
}
