//! The supervisor (unix, feature `supervisor`): a parent process that holds the listening
//! sockets for its whole life and runs the server in worker processes that come and go, so a
//! reload or a crash never refuses a client.
//!
//! Workers get the sockets by the systemd protocol (`LISTEN_FDS`, `LISTEN_FDNAMES`, and
//! `LISTEN_PID` equal to the worker's own pid) and say they are ready by sd_notify on a
//! socket the supervisor owns (`NOTIFY_SOCKET`, `READY=1`); see [`crate::listen::inherited`]
//! and [`crate::notify`]. A program that never notifies can be taken as ready after a delay.
//!
//! - SIGHUP reloads: a new worker starts from the program's path (a binary replaced on disk
//!   is picked up); once it is ready the old one gets SIGTERM and drains. If the new one exits
//!   or is not ready in time it is killed and the old one keeps serving. One reload at a time;
//!   a SIGHUP during a reload is queued. At most [`max_draining`](Supervisor::max_draining)
//!   old workers drain at once; past it the oldest is forced (a second SIGTERM).
//! - SIGTERM/SIGINT are passed to the workers (a second one forces them); the supervisor
//!   exits with the serving worker's status once every worker is gone.
//! - A worker that dies is started again with a back-off; the sockets stay open meanwhile, so
//!   new clients wait in the kernel backlog.
//! - Every child is reaped, so the supervisor can be PID 1 in a container. With systemd's
//!   own `NOTIFY_SOCKET`, it reports `READY=1`, `RELOADING=1`, `STOPPING=1` and `STATUS=`.
//!
//! Between fork and exec the child runs only async-signal-safe calls (`getpid`, `fcntl`,
//! `dup2`, `setpgid`, `prctl`, `execve`), with every string and pointer prepared before the
//! fork. Each worker gets a process group of its own (a Ctrl-C at the terminal reaches the
//! supervisor, which passes it on once) and, on Linux, SIGTERM if the supervisor dies.

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mio::net::UnixDatagram;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::accept::Backoff;
use crate::error::Error;
use crate::notify;

/// Default time a new worker has to say it is ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default most old workers draining at once.
pub const DEFAULT_MAX_DRAINING: usize = 4;

/// Environment variable naming the supervisor's pid, set for workers.
pub const ENV_SUPERVISOR_PID: &str = "LAMEDUCK_SUPERVISOR_PID";
/// Environment variable naming the file where the supervisor keeps its status (generation,
/// last reload), set for workers.
pub const ENV_STATUS_FILE: &str = "LAMEDUCK_STATUS_FILE";

const WAKER: Token = Token(0);

/// What the supervisor reports about itself; workers read it from [`ENV_STATUS_FILE`] with
/// [`SupervisorStatus::read`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SupervisorStatus {
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// The serving worker's pid (0 before the first one is ready).
    pub worker_pid: u32,
    /// Successful reloads so far.
    pub generation: u64,
    /// `ok`, or the line that says why the last reload failed (empty before any reload).
    pub last_reload: String,
}

impl SupervisorStatus {
    /// Reads the status the supervisor keeps at `path` (see [`ENV_STATUS_FILE`]).
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn read(path: &Path) -> io::Result<SupervisorStatus> {
        let text = std::fs::read_to_string(path)?;
        let mut status = SupervisorStatus::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "supervisor_pid" => status.supervisor_pid = value.parse().unwrap_or(0),
                "worker_pid" => status.worker_pid = value.parse().unwrap_or(0),
                "generation" => status.generation = value.parse().unwrap_or(0),
                "last_reload" => status.last_reload = value.to_owned(),
                _ => {}
            }
        }
        Ok(status)
    }

    /// The status of the supervisor this process runs under, if it runs under one.
    pub fn current() -> Option<SupervisorStatus> {
        let path = std::env::var_os(ENV_STATUS_FILE)?;
        SupervisorStatus::read(Path::new(&path)).ok()
    }

    fn write(&self, path: &Path) -> io::Result<()> {
        let text = format!(
            "supervisor_pid={}\nworker_pid={}\ngeneration={}\nlast_reload={}\n",
            self.supervisor_pid,
            self.worker_pid,
            self.generation,
            self.last_reload.replace('\n', " ")
        );
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, path)
    }
}

/// How the supervised program ended: the exit code the supervisor should exit with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// The last serving worker's exit code (128 + the signal if a signal killed it); 1 if no
    /// worker ever became ready.
    pub exit_code: u8,
}

/// A parent process that holds listening sockets and runs a program in worker processes.
#[must_use = "a supervisor does nothing until `run` is called"]
pub struct Supervisor {
    program: PathBuf,
    args: Vec<OsString>,
    listeners: Vec<(String, TcpListener)>,
    ready_timeout: Duration,
    ready_delay: Option<Duration>,
    max_draining: usize,
    pid_file: Option<PathBuf>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("listeners", &self.listeners.len())
            .field("ready_timeout", &self.ready_timeout)
            .field("ready_delay", &self.ready_delay)
            .field("max_draining", &self.max_draining)
            .field("pid_file", &self.pid_file)
            .finish()
    }
}

impl Supervisor {
    /// Runs `program` (a path, or a name looked up in `PATH` now, once: each reload runs
    /// whatever is at that path then).
    ///
    /// # Errors
    /// The program cannot be found.
    pub fn new(program: impl AsRef<OsStr>) -> Result<Supervisor, Error> {
        let program = resolve_program(program.as_ref())?;
        Ok(Supervisor {
            program,
            args: Vec::new(),
            listeners: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            ready_delay: None,
            max_draining: DEFAULT_MAX_DRAINING,
            pid_file: None,
        })
    }

    /// The program's path as resolved.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Arguments for the program (without the program name).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// A listening socket handed to every worker, named `name` in `LISTEN_FDNAMES`.
    pub fn listener(mut self, name: &str, listener: TcpListener) -> Self {
        self.listeners.push((name.replace(':', "_"), listener));
        self
    }

    /// How long a new worker has to say `READY=1` (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// For programs that never notify: take a worker as ready once it has run this long.
    pub fn ready_delay(mut self, delay: Option<Duration>) -> Self {
        self.ready_delay = delay;
        self
    }

    /// Most old workers draining at once (default 4, at least 1); past it the oldest is
    /// forced, which cuts its remaining connections.
    pub fn max_draining(mut self, n: usize) -> Self {
        self.max_draining = n.max(1);
        self
    }

    /// Writes the supervisor's pid to `path` once its signal handlers are in place (so a
    /// SIGHUP sent to the pid read there always reloads, never kills), and removes the file
    /// when the supervisor ends.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// Runs until SIGTERM or SIGINT and every worker has exited.
    ///
    /// # Errors
    /// The signal handlers, the poller, the status file or the pid file cannot be set up
    /// (the pid file's error names it). Worker failures
    /// are logged and handled, never returned.
    pub fn run(self) -> Result<Outcome, Error> {
        Run::new(self)?.run()
    }
}

/// Finds `program` as a shell would, once: a name with a slash is a path (made absolute
/// against the current directory, so a reload after a `chdir` still finds it), otherwise
/// the first match in `PATH`.
fn resolve_program(program: &OsStr) -> Result<PathBuf, Error> {
    let not_found = || {
        Error::Io(io::Error::new(
            io::ErrorKind::NotFound,
            format!("cannot run {}: not found", Path::new(program).display()),
        ))
    };
    let as_path = Path::new(program);
    if program.as_bytes().contains(&b'/') {
        let absolute = if as_path.is_absolute() {
            as_path.to_path_buf()
        } else {
            std::env::current_dir().map_err(Error::Io)?.join(as_path)
        };
        return if absolute.is_file() {
            Ok(absolute)
        } else {
            Err(not_found())
        };
    }
    let path = std::env::var_os("PATH").ok_or_else(not_found)?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(as_path))
        .find(|candidate| candidate.is_file())
        .ok_or_else(not_found)
}

/// One worker process.
#[derive(Debug)]
struct Worker {
    pid: i32,
    generation: u64,
    started: Instant,
    /// Its notify socket, while it is starting.
    notify: Option<UnixDatagram>,
    token: Token,
    /// SIGTERMs sent to it.
    terms: u8,
}

/// Why the candidate worker did not take over.
enum Failure {
    Exited(String),
    NotReady,
}

struct Run {
    sup: Supervisor,
    poll: Poll,
    signals_handle: signal_hook::iterator::Handle,
    signals_thread: Option<std::thread::JoinHandle<()>>,
    pending_signals: Arc<Mutex<Vec<i32>>>,
    status_dir: PathBuf,
    /// Locked while this supervisor lives: how the next one tells this directory is in use.
    _status_lock: std::fs::File,
    /// The pid file written, removed on the way out.
    pid_file: Option<PathBuf>,
    status_file: PathBuf,
    status: SupervisorStatus,
    /// The serving worker.
    current: Option<Worker>,
    /// A worker starting (first start, reload, or restart after a crash).
    candidate: Option<Worker>,
    /// Old workers draining, oldest first.
    draining: Vec<Worker>,
    stopping: bool,
    reload_queued: bool,
    restart_at: Option<Instant>,
    restarts: Backoff,
    next_token: usize,
    /// Exit code of the last serving worker, once it exited.
    exit_code: Option<u8>,
    ever_ready: bool,
}

impl Run {
    fn new(sup: Supervisor) -> Result<Run, Error> {
        let poll = Poll::new().map_err(Error::Io)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(Error::Io)?);
        let pending_signals = Arc::new(Mutex::new(Vec::new()));
        let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT, SIGCHLD]).map_err(Error::Io)?;
        let signals_handle = signals.handle();
        let signals_thread = {
            let pending = Arc::clone(&pending_signals);
            std::thread::Builder::new()
                .name("lameduck-supervisor-signals".into())
                .spawn(move || {
                    for signal in signals.forever() {
                        pending
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(signal);
                        // A failed wake means the loop is gone: nothing to tell.
                        let _ = waker.wake();
                    }
                })
                .map_err(Error::Io)?
        };
        let tmp = std::env::temp_dir();
        remove_stale_status_dirs(&tmp);
        let (status_dir, status_lock) = create_status_dir(&tmp).map_err(Error::Io)?;
        let status_file = status_dir.join("status");
        let status = SupervisorStatus {
            supervisor_pid: std::process::id(),
            ..SupervisorStatus::default()
        };
        status.write(&status_file).map_err(Error::Io)?;
        // Only now, with SIGHUP and SIGTERM handled, may anyone find the pid to signal.
        let pid_file = match &sup.pid_file {
            Some(path) => {
                write_pid_file(path).map_err(|e| {
                    Error::Io(io::Error::other(format!(
                        "cannot write the pid file {}: {}",
                        path.display(),
                        crate::error::describe(&e)
                    )))
                })?;
                Some(path.clone())
            }
            None => None,
        };
        Ok(Run {
            sup,
            poll,
            signals_handle,
            signals_thread: Some(signals_thread),
            pending_signals,
            status_dir,
            _status_lock: status_lock,
            pid_file,
            status_file,
            status,
            current: None,
            candidate: None,
            draining: Vec::new(),
            stopping: false,
            reload_queued: false,
            restart_at: None,
            restarts: Backoff::new(),
            next_token: 1,
            exit_code: None,
            ever_ready: false,
        })
    }

    fn run(mut self) -> Result<Outcome, Error> {
        tracing::info!(pid = std::process::id(), program = %self.sup.program.display(), listeners = self.sup.listeners.len(), "supervisor: started (SIGHUP reloads, SIGTERM stops); starting the first worker");
        self.start_candidate();
        let mut events = Events::with_capacity(16);
        loop {
            if self.stopping
                && self.current.is_none()
                && self.candidate.is_none()
                && self.draining.is_empty()
            {
                break;
            }
            let now = Instant::now();
            self.check_timers(now);
            let timeout = self
                .next_timer()
                .map(|at| at.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(Error::Io(e));
                }
            }
            let mut notified = Vec::new();
            for event in events.iter() {
                if event.token() != WAKER {
                    notified.push(event.token());
                }
            }
            for token in notified {
                self.read_notify(token);
            }
            let signals: Vec<i32> = std::mem::take(
                &mut *self
                    .pending_signals
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            for signal in signals {
                self.on_signal(signal);
            }
        }
        let exit_code = self
            .exit_code
            .unwrap_or(if self.ever_ready { 0 } else { 1 });
        tracing::debug!(exit_code, "supervisor: every worker has exited");
        Ok(Outcome { exit_code })
    }

    fn next_timer(&self) -> Option<Instant> {
        let mut at = self.restart_at;
        if let Some(c) = &self.candidate {
            let deadline = crate::shutdown::instant_after(c.started, self.sup.ready_timeout);
            at = Some(at.map_or(deadline, |a| a.min(deadline)));
            if let Some(delay) = self.sup.ready_delay {
                let ready = crate::shutdown::instant_after(c.started, delay);
                at = Some(at.map_or(ready, |a| a.min(ready)));
            }
        }
        at
    }

    fn check_timers(&mut self, now: Instant) {
        if self.restart_at.is_some_and(|at| at <= now) {
            self.restart_at = None;
            if !self.stopping && self.candidate.is_none() {
                self.start_candidate();
            }
        }
        let Some(c) = &self.candidate else {
            return;
        };
        let age = now.saturating_duration_since(c.started);
        if self.sup.ready_delay.is_some_and(|d| age >= d) {
            self.candidate_ready();
        } else if age >= self.sup.ready_timeout {
            self.candidate_failed(Failure::NotReady);
        }
    }

    fn on_signal(&mut self, signal: i32) {
        match signal {
            SIGCHLD => self.reap(),
            SIGHUP => {
                if self.stopping {
                    return;
                }
                if self.candidate.is_some() || self.restart_at.is_some() {
                    tracing::info!("supervisor: SIGHUP during a reload; queued");
                    self.reload_queued = true;
                } else {
                    self.reload();
                }
            }
            SIGTERM | SIGINT => {
                let name = if signal == SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                if !self.stopping {
                    tracing::info!(signal = name, "supervisor: stopping; the workers drain");
                    self.stopping = true;
                    self.restart_at = None;
                    self.reload_queued = false;
                    // No worker will start again: the supervisor's copies of the sockets
                    // go, so once the workers close theirs (after any lame-duck period),
                    // new clients are refused at once instead of queueing for nobody.
                    self.sup.listeners.clear();
                    let _ = notify::stopping();
                } else {
                    tracing::warn!(
                        signal = name,
                        "supervisor: second signal; forcing the workers"
                    );
                }
                let workers = self
                    .current
                    .iter_mut()
                    .chain(self.candidate.iter_mut())
                    .chain(self.draining.iter_mut());
                for w in workers {
                    terminate(w);
                }
            }
            _ => {}
        }
    }

    fn reload(&mut self) {
        tracing::info!(
            generation = self.status.generation + 1,
            "supervisor: SIGHUP; starting a new worker"
        );
        let _ = notify::reloading();
        self.start_candidate();
    }

    fn start_candidate(&mut self) {
        let token = Token(self.next_token);
        self.next_token += 1;
        match self.spawn(token) {
            Ok(worker) => {
                tracing::info!(
                    pid = worker.pid,
                    generation = worker.generation,
                    "supervisor: worker started"
                );
                self.candidate = Some(worker);
            }
            Err(e) => {
                let line = format!("cannot start a worker: {e}");
                tracing::error!("supervisor: {line}");
                self.finish_failed_start(line);
            }
        }
    }

    /// Forks and execs one worker with the listeners at descriptors 3, 4, …
    #[allow(unsafe_code)]
    fn spawn(&mut self, token: Token) -> io::Result<Worker> {
        let generation = self.status.generation + u64::from(self.current.is_some());
        // The worker's own notify socket: a message on it can only come from that worker.
        let (notify_socket, notify_name) = bind_notify_socket(&self.status_dir, token.0)?;
        let mut notify_socket = notify_socket;
        self.poll
            .registry()
            .register(&mut notify_socket, token, Interest::READABLE)?;

        let names: Vec<&str> = self.sup.listeners.iter().map(|(n, _)| n.as_str()).collect();
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| {
                !matches!(
                    k.to_str(),
                    Some(
                        "LISTEN_FDS"
                            | "LISTEN_PID"
                            | "LISTEN_FDNAMES"
                            | "NOTIFY_SOCKET"
                            | ENV_SUPERVISOR_PID
                            | ENV_STATUS_FILE
                    )
                )
            })
            .filter_map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok()
            })
            .collect();
        let assign = |k: &str, v: &OsStr| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).map_err(|_| io::Error::other("a NUL byte in the environment"))
        };
        env.push(assign(
            "LISTEN_FDS",
            OsStr::new(&self.sup.listeners.len().to_string()),
        )?);
        env.push(assign("LISTEN_FDNAMES", OsStr::new(&names.join(":")))?);
        env.push(assign("NOTIFY_SOCKET", OsStr::new(&notify_name))?);
        env.push(assign(
            ENV_SUPERVISOR_PID,
            OsStr::new(&std::process::id().to_string()),
        )?);
        env.push(assign(ENV_STATUS_FILE, self.status_file.as_os_str())?);
        let program = CString::new(self.sup.program.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("a NUL byte in the program's path"))?;
        let mut argv = vec![program.clone()];
        for a in &self.sup.args {
            argv.push(
                CString::new(a.as_bytes())
                    .map_err(|_| io::Error::other("a NUL byte in an argument"))?,
            );
        }
        let fds: Vec<RawFd> = self
            .sup
            .listeners
            .iter()
            .map(|(_, l)| l.as_raw_fd())
            .collect();
        let mut plan = ExecPlan::new(program, argv, env, fds);

        let mut cmd = std::process::Command::new(&self.sup.program);
        // SAFETY: the closure runs in the child between fork and exec. It only writes into
        // memory the plan owns (the child's copy of it) and calls getpid, fcntl, dup2 and
        // execve, which are async-signal-safe; it allocates nothing.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(move || plan.exec_in_child());
        }
        let child = cmd.spawn()?;
        let pid = i32::try_from(child.id()).map_err(|_| io::Error::other("pid out of range"))?;
        // Reaped with waitpid(-1) on SIGCHLD, as PID 1 must; the handle is not needed.
        drop(child);
        Ok(Worker {
            pid,
            generation,
            started: Instant::now(),
            notify: Some(notify_socket),
            token,
            terms: 0,
        })
    }

    fn read_notify(&mut self, token: Token) {
        let Some(c) = self.candidate.as_mut().filter(|c| c.token == token) else {
            return;
        };
        let Some(socket) = c.notify.as_ref() else {
            return;
        };
        let mut buf = [0u8; 4096];
        let mut ready = false;
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if text.lines().any(|l| l.trim() == "READY=1") {
                        ready = true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if ready {
            self.candidate_ready();
        }
    }

    fn candidate_ready(&mut self) {
        let Some(mut new) = self.candidate.take() else {
            return;
        };
        self.close_notify(&mut new);
        let reload = self.current.is_some();
        // The status names the new worker before the old one hears of it: a worker that is
        // told to stop can tell "replaced" from "the service stops".
        self.status.worker_pid = u32::try_from(new.pid).unwrap_or(0);
        if reload {
            self.status.generation += 1;
            self.status.last_reload = "ok".to_owned();
        }
        self.write_status();
        if let Some(mut old) = self.current.take() {
            tracing::info!(
                old = old.pid,
                new = new.pid,
                "supervisor: new worker ready; the old one drains"
            );
            terminate(&mut old);
            self.draining.push(old);
        } else {
            tracing::info!(pid = new.pid, "supervisor: worker ready");
        }
        self.restarts.reset();
        self.ever_ready = true;
        self.current = Some(new);
        let _ = notify::send(&format!(
            "READY=1\nSTATUS=serving (worker {}, generation {})",
            self.status.worker_pid, self.status.generation
        ));
        // Bound what is left draining: the oldest is forced.
        while self.draining.iter().filter(|w| w.terms < 2).count() > self.sup.max_draining {
            if let Some(oldest) = self.draining.iter_mut().find(|w| w.terms < 2) {
                tracing::warn!(
                    pid = oldest.pid,
                    max = self.sup.max_draining,
                    "supervisor: too many workers draining; forcing the oldest"
                );
                terminate(oldest);
            }
        }
        // A SIGHUP while this worker started (the first one, a reload, or a restart after a
        // crash) asked for a worker started after it: one starts now.
        if self.reload_queued && !self.stopping {
            self.reload_queued = false;
            self.reload();
        }
    }

    fn candidate_failed(&mut self, why: Failure) {
        let Some(mut c) = self.candidate.take() else {
            return;
        };
        self.close_notify(&mut c);
        let line = match why {
            Failure::NotReady => {
                send_signal(c.pid, libc::SIGKILL);
                let line = format!(
                    "the new worker (pid {}) was not ready within {:?}; it was killed",
                    c.pid, self.sup.ready_timeout
                );
                // Still to be reaped: kept with the draining ones until it is.
                c.terms = 2;
                self.draining.push(c);
                line
            }
            Failure::Exited(status) => {
                format!(
                    "the new worker (pid {}) {status} before it was ready",
                    c.pid
                )
            }
        };
        self.finish_failed_start(line);
    }

    /// After a worker failed to start: keep the old one, or retry, or give up.
    fn finish_failed_start(&mut self, line: String) {
        if let Some(current) = &self.current {
            tracing::error!(
                serving = current.pid,
                "supervisor: reload failed: {line}; the old worker keeps serving"
            );
            self.status.last_reload = format!("failed: {line}");
            self.write_status();
            let _ = notify::send(&format!("READY=1\nSTATUS=reload failed: {line}"));
            if self.reload_queued && !self.stopping {
                self.reload_queued = false;
                self.reload();
            }
        } else if !self.ever_ready {
            // The very first worker could not start: a configuration error, most likely.
            tracing::error!("supervisor: {line}; giving up");
            self.stopping = true;
            if self.exit_code.is_none() {
                self.exit_code = Some(1);
            }
        } else if !self.stopping {
            let delay = self.restarts.next_delay();
            tracing::error!(retry_in = ?delay, "supervisor: {line}; starting another");
            self.restart_at = Some(Instant::now() + delay);
        }
    }

    fn close_notify(&mut self, w: &mut Worker) {
        if let Some(mut socket) = w.notify.take() {
            let _ = self.poll.registry().deregister(&mut socket);
        }
    }

    /// Reaps every exited child (orphans too, as PID 1 must).
    #[allow(unsafe_code)]
    fn reap(&mut self) {
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid writes the status into the int we own.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let (code, described) = describe(status);
            self.on_exit(pid, code, described);
        }
    }

    fn on_exit(&mut self, pid: i32, code: u8, described: String) {
        if self.candidate.as_ref().is_some_and(|c| c.pid == pid) {
            if self.stopping {
                let mut c = self.candidate.take().expect("checked");
                self.close_notify(&mut c);
                if self.current.is_none() && self.exit_code.is_none() {
                    self.exit_code = Some(code);
                }
            } else {
                self.candidate_failed(Failure::Exited(described));
            }
            return;
        }
        if self.current.as_ref().is_some_and(|c| c.pid == pid) {
            self.current = None;
            if self.stopping {
                // Debug: the worker's own report stays the last line an operator reads.
                tracing::debug!(pid, status = %described, "supervisor: worker exited");
                self.exit_code = Some(code);
            } else {
                // A crash, or someone killed it: the sockets stay open, clients wait in the
                // backlog, and a new worker starts at once (then with a back-off).
                let delay = if self.restarts_recent() {
                    self.restarts.next_delay()
                } else {
                    Duration::ZERO
                };
                tracing::error!(pid, status = %described, retry_in = ?delay, "supervisor: worker died; starting another");
                self.status.worker_pid = 0;
                self.write_status();
                if self.candidate.is_none() {
                    self.restart_at = Some(Instant::now() + delay);
                }
            }
            return;
        }
        if let Some(i) = self.draining.iter().position(|w| w.pid == pid) {
            let w = self.draining.remove(i);
            tracing::info!(pid, generation = w.generation, status = %described, "supervisor: old worker exited");
        }
    }

    /// Whether a restart happened lately (then the next one backs off).
    fn restarts_recent(&self) -> bool {
        self.current
            .as_ref()
            .is_none_or(|c| c.started.elapsed() < Duration::from_secs(10))
    }

    fn write_status(&self) {
        if let Err(e) = self.status.write(&self.status_file) {
            tracing::warn!(error = %e, "supervisor: cannot write its status file");
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.signals_handle.close();
        if let Some(t) = self.signals_thread.take() {
            // The thread only loops over the closed iterator.
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.status_dir);
        if let Some(path) = &self.pid_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Writes this process's pid and a newline to `path`.
fn write_pid_file(path: &Path) -> io::Result<()> {
    std::fs::write(path, format!("{}\n", std::process::id()))
}

/// How a supervisor's status directory (its status file and workers' notify sockets) is
/// named in the temporary directory: this, the supervisor's pid, a dash, a timestamp.
const STATUS_DIR_PREFIX: &str = "lameduck-supervisor-";
/// The file in a status directory its supervisor holds locked (`flock`) while it lives.
const STATUS_LOCK: &str = "lock";

/// Creates this supervisor's status directory with its lock file already locked: made under
/// a name no cleanup considers (`…new-PID-TIME`), locked, then renamed into place.
fn create_status_dir(tmp: &Path) -> io::Result<(PathBuf, std::fs::File)> {
    let id = format!("{}-{}", std::process::id(), notify::monotonic_usec());
    let staging = tmp.join(format!("{STATUS_DIR_PREFIX}new-{id}"));
    std::fs::create_dir_all(&staging)?;
    let lock = std::fs::File::create(staging.join(STATUS_LOCK))?;
    if !try_lock(&lock)? {
        return Err(io::Error::other("a new status directory is locked already"));
    }
    let dir = tmp.join(format!("{STATUS_DIR_PREFIX}{id}"));
    std::fs::rename(&staging, &dir)?;
    Ok((dir, lock))
}

/// Removes the status directories of supervisors that are gone. A supervisor removes its own
/// when it stops, but one killed with SIGKILL cannot; the next one to start cleans up after
/// it. "Gone" is told by the directory's lock file, which its supervisor holds locked while it
/// lives and the kernel unlocks when it dies: not by its pid, which means another process in
/// another PID namespace (a container sharing `/tmp`, or `unshare --pid`). A directory with
/// no lock file (an older lameduck's) is left alone, as is anything this user may not remove.
fn remove_stale_status_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_status_dir = name
            .to_str()
            .and_then(|n| n.strip_prefix(STATUS_DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(pid, time)| pid.parse::<u32>().is_ok() && time.parse::<u64>().is_ok());
        if !is_status_dir {
            continue;
        }
        let Ok(lock) = std::fs::File::open(entry.path().join(STATUS_LOCK)) else {
            continue;
        };
        if try_lock(&lock).unwrap_or(false) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Takes an exclusive `flock` on `file` without waiting: `Ok(false)` if another holds it.
#[allow(unsafe_code)]
fn try_lock(file: &std::fs::File) -> io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock(2) on a descriptor this function borrows for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(err)
}

/// Sends SIGTERM (the first drains, a second forces).
fn terminate(w: &mut Worker) {
    w.terms = w.terms.saturating_add(1);
    send_signal(w.pid, libc::SIGTERM);
}

#[allow(unsafe_code)]
fn send_signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a child of ours that has
    // not been reaped yet, so the pid cannot have been reused.
    let _ = unsafe { libc::kill(pid, signal) };
}

/// An exit status as an exit code and words.
fn describe(status: libc::c_int) -> (u8, String) {
    if libc::WIFEXITED(status) {
        let code = libc::WEXITSTATUS(status);
        (
            u8::try_from(code).unwrap_or(1),
            format!("exited with code {code}"),
        )
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (
            u8::try_from(128 + sig).unwrap_or(255),
            format!("was killed by signal {sig}"),
        )
    } else {
        (1, "ended".to_owned())
    }
}

/// A datagram socket for one worker's sd_notify messages: in Linux's abstract namespace (no
/// file to clean up), or a path in the supervisor's private directory elsewhere.
fn bind_notify_socket(dir: &Path, n: usize) -> io::Result<(UnixDatagram, String)> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = dir;
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!(
            "lameduck-{}-{}-{n}",
            std::process::id(),
            notify::monotonic_usec()
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let std_socket = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
        std_socket.set_nonblocking(true)?;
        Ok((UnixDatagram::from_std(std_socket), format!("@{name}")))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let path = dir.join(format!("notify-{n}"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        Ok((socket, path.display().to_string()))
    }
}

/// Most listeners a worker can be handed (the child moves them with a fixed-size scratch
/// array, since it may not allocate).
pub const MAX_LISTENERS: usize = 64;

/// Everything `execve` needs, built before the fork so that the child allocates nothing.
struct ExecPlan {
    _program: CString,
    _argv: Vec<CString>,
    _env: Vec<CString>,
    program_ptr: *const libc::c_char,
    argv_ptrs: Vec<*const libc::c_char>,
    env_ptrs: Vec<*const libc::c_char>,
    /// `LISTEN_PID=` followed by room for the digits, which the child fills in; owned (from
    /// `Box::into_raw`), freed on drop. Written and read only through this pointer.
    listen_pid: *mut [u8; 32],
    fds: Vec<RawFd>,
}

// SAFETY: the raw pointers point into the CStrings and the buffer that the plan owns, which
// the parent never touches after building it; the plan is used in the forked child, which is
// single-threaded until it execs, and dropped in the parent.
#[allow(unsafe_code)]
unsafe impl Send for ExecPlan {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for ExecPlan {}

impl ExecPlan {
    fn new(program: CString, argv: Vec<CString>, env: Vec<CString>, fds: Vec<RawFd>) -> Self {
        let mut buf = [0u8; 32];
        buf[..11].copy_from_slice(b"LISTEN_PID=");
        let listen_pid = Box::into_raw(Box::new(buf));
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        env_ptrs.push(listen_pid.cast::<libc::c_char>().cast_const());
        env_ptrs.push(std::ptr::null());
        ExecPlan {
            program_ptr: program.as_ptr(),
            _program: program,
            _argv: argv,
            _env: env,
            argv_ptrs,
            env_ptrs,
            listen_pid,
            fds,
        }
    }

    /// In the forked child: `LISTEN_PID` = our pid, the listeners at 3, 4, …, then exec.
    /// Returns only on failure.
    #[allow(unsafe_code)]
    fn exec_in_child(&mut self) -> io::Result<()> {
        let count = self.fds.len();
        if count > MAX_LISTENERS {
            return Err(io::Error::other("too many listeners"));
        }
        // SAFETY: this runs in the child after fork, where this process is single-threaded
        // and owns its copy of the plan; `listen_pid` points to the plan's own live buffer;
        // every call is async-signal-safe and nothing allocates.
        unsafe {
            let pid = libc::getpid();
            let buf = self.listen_pid.cast::<u8>();
            let mut digits = [0u8; 20];
            let mut n = 0;
            let mut v = pid as u64;
            loop {
                digits[n] = b'0' + (v % 10) as u8;
                n += 1;
                v /= 10;
                if v == 0 {
                    break;
                }
            }
            for i in 0..n {
                *buf.add(11 + i) = digits[n - 1 - i];
            }
            *buf.add(11 + n) = 0;
            // First out of the way (above the target range), then into place: a listener
            // already sitting at 3.. must not be overwritten before it is moved.
            let mut tmp = [-1 as RawFd; MAX_LISTENERS];
            for (i, &fd) in self.fds.iter().enumerate() {
                let t = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3 + count as RawFd);
                if t == -1 {
                    return Err(io::Error::last_os_error());
                }
                tmp[i] = t;
            }
            for (i, &t) in tmp.iter().take(count).enumerate() {
                // dup2 clears close-on-exec on the new descriptor, as LISTEN_FDS wants.
                if libc::dup2(t, 3 + i as RawFd) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            // A process group of its own: a Ctrl-C at the terminal reaches the supervisor
            // alone, which passes it on once (the worker would take a second copy as "force").
            libc::setpgid(0, 0);
            // And if the supervisor dies without a word, the worker drains rather than lingers.
            #[cfg(any(target_os = "linux", target_os = "android"))]
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            libc::execve(
                self.program_ptr,
                self.argv_ptrs.as_ptr(),
                self.env_ptrs.as_ptr(),
            );
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for ExecPlan {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: `listen_pid` came from `Box::into_raw` in `new` and is freed only here.
        drop(unsafe { Box::from_raw(self.listen_pid) });
    }
}
