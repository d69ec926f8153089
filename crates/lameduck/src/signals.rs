//! OS signals mapped onto a [`Shutdown`] handle (unix, feature `signals`).
//!
//! SIGINT and SIGTERM trigger a graceful shutdown; a second one forces it; a third, once the
//! shutdown is already forced, terminates the process the way the signal normally would, so a
//! wedged program can still be stopped from the keyboard. Signals are read on one dedicated
//! thread that sleeps in `read()` between signals: no polling, no wake-ups while idle.

use std::fmt;
use std::io;
use std::thread::JoinHandle;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use crate::shutdown::{Phase, Shutdown};

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
                let before = shutdown.phase();
                if before >= Phase::Forced {
                    tracing::warn!(signal = name, "shutdown already forced; terminating now");
                    // If emulating the default action fails, the only thing left is to exit.
                    let _ = signal_hook::low_level::emulate_default_handler(signal);
                    std::process::exit(128 + signal);
                }
                // Logged before the trigger: once triggered, the server may stop and log its
                // report before this thread runs again, and the report must stay the last line.
                if before == Phase::Running {
                    tracing::info!(signal = name, "signal received: shutting down gracefully");
                } else {
                    tracing::warn!(signal = name, "second signal: forcing shutdown");
                }
                shutdown.trigger();
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
