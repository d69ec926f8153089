//! What the two server flavours share around their accept loops: the lifecycle settings and
//! their builder methods, the start of the drain and the end of a run (the report and the
//! last log line). Each flavour keeps only its own loop.

use std::time::{Duration, Instant};

use crate::report::Report;
use crate::shutdown::{DEFAULT_DRAIN_TIMEOUT, Phase, Shutdown, instant_after};
use crate::tracker::Tracker;

/// The settings every server has.
#[derive(Clone, Debug)]
pub(crate) struct Lifecycle {
    /// The (possibly shared) handle the server runs on; see [`Shutdown::member`].
    pub(crate) shutdown: Shutdown,
    pub(crate) tracker: Tracker,
    pub(crate) drain_timeout: Duration,
    pub(crate) lame_duck: Duration,
    pub(crate) nodelay: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            shutdown: Shutdown::new(),
            tracker: Tracker::new(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            lame_duck: Duration::ZERO,
            nodelay: true,
        }
    }
}

impl Lifecycle {
    /// Enters `Draining` on `own` (the server's member lifecycle), once its listeners are
    /// closed, and logs it. Returns when the drain started and its deadline.
    pub(crate) fn begin_drain(&self, own: &Shutdown) -> (Instant, Instant) {
        let start = Instant::now();
        own.begin_drain(self.drain_timeout);
        let deadline = own
            .deadline()
            .unwrap_or_else(|| instant_after(start, self.drain_timeout));
        tracing::info!(phase = %own.phase(), active = self.tracker.active(), timeout = ?self.drain_timeout, "draining: listeners closed");
        (start, deadline)
    }

    /// Ends a run: the report, `Stopped` on `own`, and the last log line.
    pub(crate) fn finish(
        &self,
        own: &Shutdown,
        drain_start: Instant,
        panicked: u64,
        stuck: u64,
    ) -> Report {
        let report = Report {
            accepted: self.tracker.accepted(),
            completed: self.tracker.completed(),
            forced: self.tracker.forced(),
            panicked,
            stuck,
            drain_duration: drain_start.elapsed(),
        };
        own.finish();
        tracing::info!(phase = %Phase::Stopped, %report, "stopped");
        report
    }
}

/// The builder methods every server has, over its [`Lifecycle`] at `self.$field` (one field
/// name, or a path through a wrapped server).
macro_rules! lifecycle_methods {
    ($($field:ident).+) => {
        /// How long the drain may last before the remaining connections are cut
        /// (`Duration::MAX`: no deadline).
        pub fn drain_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.$($field).+.drain_timeout = timeout;
            self
        }

        /// How long to keep accepting and serving after shutdown is triggered, while
        /// readiness checks already fail, so load balancers can move traffic away first
        /// (`Duration::MAX`: until a second trigger).
        pub fn lame_duck(mut self, period: std::time::Duration) -> Self {
            self.$($field).+.lame_duck = period;
            self
        }

        /// Sets `TCP_NODELAY` on accepted sockets (default on).
        pub fn nodelay(mut self, on: bool) -> Self {
            self.$($field).+.nodelay = on;
            self
        }

        /// Runs this server on `shutdown`, a handle that other servers may share (an
        /// application and its admin endpoint, say): triggering it drains them all, each
        /// server keeps its own deadline, and the shared handle reaches `Stopped` when the
        /// last one stops.
        pub fn with_shutdown(mut self, shutdown: $crate::Shutdown) -> Self {
            self.$($field).+.shutdown = shutdown;
            self
        }

        /// The handle that triggers and observes this server's shutdown.
        pub fn shutdown_handle(&self) -> $crate::Shutdown {
            self.$($field).+.shutdown.clone()
        }

        /// The server's connection counts.
        pub fn tracker(&self) -> $crate::Tracker {
            self.$($field).+.tracker.clone()
        }
    };
}

pub(crate) use lifecycle_methods;
