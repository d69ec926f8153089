//! Counters the admin endpoint reports, and their Prometheus text rendering.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::StatusCode;
use lameduck::{Admission, Phase, Shutdown, Tracker};

/// Responses by status class, plus what the admin endpoint reads from the server.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// 1xx … 5xx.
    responses: [AtomicU64; 5],
    /// Files that could not be read: for lack of descriptors or memory (answered 503), and
    /// other I/O errors (answered 500).
    file_errors: [AtomicU64; 2],
    /// Requests that needed the file system, by where they were answered: on the async
    /// worker (nothing had to wait), in the blocking pool.
    lookups: [AtomicU64; 2],
    /// Requests the HTTP/1.1 shortcut answered (`crate::files::FileShortcut`).
    shortcut: AtomicU64,
    started: Instant,
}

/// Where a request that needed the file system was answered, as counted in
/// `lameduck_file_lookups_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// On the async worker: the kernel's caches held everything.
    Worker = 0,
    /// In the blocking pool.
    Pool = 1,
}

/// Why a file could not be served, as counted in `lameduck_file_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileError {
    /// Out of file descriptors or memory: `503` with `Retry-After`.
    Unavailable = 0,
    /// Any other I/O error: `500`.
    Io = 1,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Metrics {
            responses: Default::default(),
            file_errors: Default::default(),
            lookups: Default::default(),
            shortcut: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    pub(crate) fn count_response(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        // Relaxed: independent counters, read for reporting only.
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_file_error(&self, kind: FileError) {
        // Relaxed: an independent counter.
        self.file_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_lookup(&self, at: Lookup) {
        // Relaxed: an independent counter.
        self.lookups[at as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_shortcut(&self) {
        // Relaxed: an independent counter.
        self.shortcut.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

/// The live view of one server the admin endpoint reports on.
#[derive(Clone, Debug)]
pub(crate) struct ServerView {
    pub(crate) shutdown: Shutdown,
    pub(crate) tracker: Tracker,
    pub(crate) admission: Admission,
    pub(crate) metrics: std::sync::Arc<Metrics>,
    /// Handshake counts, when serving HTTPS.
    pub(crate) tls: Option<lameduck::tls::TlsStats>,
    /// The files served, for the cache's figures.
    pub(crate) files: std::sync::Arc<crate::files::Files>,
}

impl ServerView {
    /// Seconds spent draining: from the start of the drain to its end, or to now.
    pub(crate) fn drain_seconds(&self) -> f64 {
        let history = self.shutdown.history();
        let at = |phase: Phase| history.iter().find(|(p, _)| *p == phase).map(|(_, t)| *t);
        match at(Phase::Draining).or(at(Phase::Forced)) {
            Some(start) => at(Phase::Stopped)
                .unwrap_or_else(Instant::now)
                .duration_since(start)
                .as_secs_f64(),
            None => 0.0,
        }
    }

    pub(crate) fn status_json(&self) -> String {
        let supervisor = supervisor_fields();
        format!(
            concat!(
                "{{\"phase\":\"{}\",\"pid\":{},\"active_connections\":{},\"accepted_connections\":{},",
                "\"completed_connections\":{},\"forced_connections\":{},\"rejected_connections\":{},",
                "\"max_connections\":{},\"uptime_s\":{},\"drain_seconds\":{:.3}{}}}\n"
            ),
            self.shutdown.phase(),
            std::process::id(),
            self.tracker.active(),
            self.tracker.accepted(),
            self.tracker.completed(),
            self.tracker.forced(),
            self.admission.rejected(),
            self.admission.limit(),
            self.metrics.uptime_s(),
            self.drain_seconds(),
            supervisor,
        )
    }

    pub(crate) fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "lameduck_connections_active",
            "gauge",
            "Connections open now.",
            &[("", self.tracker.active().to_string())],
        );
        metric(
            "lameduck_connections_accepted_total",
            "counter",
            "Connections accepted.",
            &[("", self.tracker.accepted().to_string())],
        );
        metric(
            "lameduck_connections_rejected_total",
            "counter",
            "Connections shed at the connection limit.",
            &[("", self.admission.rejected().to_string())],
        );
        metric(
            "lameduck_connections_forced_total",
            "counter",
            "Connections cut at the drain deadline or on a forced shutdown.",
            &[("", self.tracker.forced().to_string())],
        );
        metric(
            "lameduck_connections_max",
            "gauge",
            "The connection limit.",
            &[("", self.admission.limit().to_string())],
        );
        let classes: Vec<(String, String)> = self
            .metrics
            .responses
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    format!("{{class=\"{}xx\"}}", i + 1),
                    n.load(Ordering::Relaxed).to_string(),
                )
            })
            .collect();
        let classes: Vec<(&str, String)> = classes
            .iter()
            .map(|(l, v)| (l.as_str(), v.clone()))
            .collect();
        metric(
            "lameduck_requests_total",
            "counter",
            "Responses sent, by status class.",
            &classes,
        );
        let load = |k: FileError| self.metrics.file_errors[k as usize].load(Ordering::Relaxed);
        metric(
            "lameduck_file_errors_total",
            "counter",
            "Files that could not be read: unavailable (out of descriptors or memory, answered 503) or io (answered 500).",
            &[
                (
                    "{kind=\"unavailable\"}",
                    load(FileError::Unavailable).to_string(),
                ),
                ("{kind=\"io\"}", load(FileError::Io).to_string()),
            ],
        );
        let lookups = |at: Lookup| self.metrics.lookups[at as usize].load(Ordering::Relaxed);
        metric(
            "lameduck_file_lookups_total",
            "counter",
            "Requests that needed the file system, by where they were answered: worker (the kernel's caches held everything) or pool (the blocking pool).",
            &[
                ("{at=\"worker\"}", lookups(Lookup::Worker).to_string()),
                ("{at=\"pool\"}", lookups(Lookup::Pool).to_string()),
            ],
        );
        if let Some(cache) = &self.files.cache {
            metric(
                "lameduck_cache_hits_total",
                "counter",
                "Requests answered from the small-file cache.",
                &[("", cache.hits().to_string())],
            );
            metric(
                "lameduck_cache_misses_total",
                "counter",
                "Requests that looked in the small-file cache and went to the disk.",
                &[("", cache.misses().to_string())],
            );
            metric(
                "lameduck_cache_shortcut_total",
                "counter",
                "Cache hits answered by the HTTP/1.1 shortcut, from a prepared head before hyper parsed the request (a plain GET or HEAD, or its revalidation).",
                &[(
                    "",
                    self.metrics.shortcut.load(Ordering::Relaxed).to_string(),
                )],
            );
            metric(
                "lameduck_cache_bytes",
                "gauge",
                "Memory held by the small-file cache.",
                &[("", cache.used().to_string())],
            );
            metric(
                "lameduck_cache_capacity_bytes",
                "gauge",
                "The small-file cache's limit (--cache-size).",
                &[("", cache.capacity().to_string())],
            );
            metric(
                "lameduck_cache_entries",
                "gauge",
                "Files in the small-file cache.",
                &[("", cache.entries().to_string())],
            );
        }
        if let Some(tls) = &self.tls {
            metric(
                "lameduck_tls_handshakes_total",
                "counter",
                "TLS handshakes completed.",
                &[("", tls.handshakes().to_string())],
            );
            metric(
                "lameduck_tls_handshake_failures_total",
                "counter",
                "TLS handshakes that failed or timed out (the connection was closed).",
                &[("", tls.failures().to_string())],
            );
        }
        metric(
            "lameduck_drain_seconds",
            "gauge",
            "Time spent draining so far (0 before the drain).",
            &[("", format!("{:.3}", self.drain_seconds()))],
        );
        let phase = self.shutdown.phase();
        let phases: Vec<(String, String)> =
            ["running", "lame_duck", "draining", "forced", "stopped"]
                .iter()
                .map(|p| {
                    (
                        format!("{{phase=\"{p}\"}}"),
                        u8::from(phase.as_str() == *p).to_string(),
                    )
                })
                .collect();
        let phases: Vec<(&str, String)> = phases
            .iter()
            .map(|(l, v)| (l.as_str(), v.clone()))
            .collect();
        metric(
            "lameduck_phase",
            "gauge",
            "1 for the lifecycle phase the server is in.",
            &phases,
        );
        metric(
            "lameduck_uptime_seconds",
            "gauge",
            "Seconds since the process started.",
            &[("", self.metrics.uptime_s().to_string())],
        );
        out
    }
}

/// The supervisor's part of `/status`, when this process is a supervised worker:
/// `supervisor_pid`, `generation` (successful reloads) and `last_reload` (`ok`, or why it
/// failed; empty before any).
#[cfg(unix)]
fn supervisor_fields() -> String {
    match lameduck::supervisor::SupervisorStatus::current() {
        Some(s) => format!(
            ",\"supervisor_pid\":{},\"generation\":{},\"last_reload\":{}",
            s.supervisor_pid,
            s.generation,
            json_string(&s.last_reload)
        ),
        None => ",\"supervisor_pid\":null,\"generation\":0,\"last_reload\":\"\"".to_owned(),
    }
}

#[cfg(not(unix))]
fn supervisor_fields() -> String {
    ",\"supervisor_pid\":null,\"generation\":0,\"last_reload\":\"\"".to_owned()
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
