//! The `lameduck` command: `lameduck serve [DIR]`, a static-file server with a graceful,
//! bounded lifecycle, and `lameduck run -- CMD`, the same supervisor for any program that
//! takes its sockets by systemd's socket activation. Built on the lameduck library.
//!
//! `serve` runs supervised by default: the process you start keeps the listening sockets and
//! runs the server in a worker process, so SIGHUP reloads (a new worker takes over once it is
//! ready) and a crashed worker is replaced, and no client is ever refused meanwhile.
//!
//! Exit codes: 0 after a clean drain; 3 when the drain deadline (or a second signal) had to
//! cut connections; 1 for a configuration or start-up error, printed as one line; 2 when no
//! subcommand is given (the help is printed).

mod admin;
mod cache;
mod config;
mod files;
mod metrics;
mod redirect;

use std::future::IntoFuture as _;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use tracing::Instrument;

use crate::config::{LogFormat, OverloadArg, ServeArgs, Settings};
use crate::files::{FileShortcut, Files, StaticService};
use crate::metrics::{Metrics, ServerView};

/// Exit code for a configuration or start-up error.
const EXIT_CONFIG: u8 = 1;

/// Servers with a correct lifecycle: stop accepting at once, finish what is in flight under a
/// deadline, bound connections.
#[derive(Debug, Parser)]
#[command(name = "lameduck", version, about, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a directory (or a built-in page) over HTTP/1.1 and HTTP/2, draining gracefully
    /// on SIGINT/SIGTERM (a second signal forces) and reloading with no refused client on
    /// SIGHUP.
    Serve(Box<ServeArgs>),
    /// Supervise any program that takes its listening sockets by systemd's socket
    /// activation (LISTEN_FDS): SIGHUP replaces it with no refused client, SIGTERM is passed
    /// on, a crashed one is restarted.
    Run(config::RunArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::from(2)
                }
                _ => {
                    eprintln!("lameduck: {}", one_line(&e.to_string()));
                    ExitCode::from(EXIT_CONFIG)
                }
            };
        }
    };
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Run(args) => run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lameduck: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The first line of a clap error, without its `error: ` prefix.
fn one_line(msg: &str) -> &str {
    let first = msg.lines().next().unwrap_or(msg);
    first.strip_prefix("error: ").unwrap_or(first)
}

fn init_logging(log_level: &str, log_format: LogFormat) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{Layer as _, filter::DynFilterFn, fmt};

    let filter = tracing_subscriber::EnvFilter::try_new(log_level)
        .map_err(|e| format!("invalid --log-level {log_level:?}: {e}"))?;
    // The admin endpoint is a lameduck server too; its own lifecycle lines would only confuse
    // the operator's log, so inside its span only warnings and errors pass.
    let quiet_admin = DynFilterFn::new(|meta, cx| {
        *meta.level() <= tracing::Level::WARN
            || cx
                .lookup_current()
                .is_none_or(|span| span.name() != "admin")
    });
    let layer = match log_format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    };
    // The level filter is global, not per layer: then a disabled callsite (h2's trace spans,
    // one per frame) is rejected once, when it registers, instead of being built and filtered
    // on every call. As a per-layer filter it cost 40% of the CPU under HTTP/2 load.
    tracing_subscriber::registry()
        .with(filter)
        .with(layer.with_filter(quiet_admin))
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))
}

/// Raises the soft limit on open files to the hard limit, as a server holding thousands of
/// connections needs (the usual soft default is 1024). Failure only means a lower ceiling;
/// running out is then handled by backing off, and logged.
#[cfg(unix)]
#[allow(unsafe_code)]
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur >= lim.rlim_max
    {
        return;
    }
    let before = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit only reads the struct we pass, which lives across the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        tracing::debug!(
            from = before,
            to = lim.rlim_cur,
            "raised the open-files limit"
        );
    }
}

#[cfg(not(unix))]
fn raise_fd_limit() {}

type BoxError = Box<dyn std::error::Error>;

fn serve(args: ServeArgs) -> Result<ExitCode, BoxError> {
    let settings = Settings::resolve(args)?;
    // A process that does not supervise never ends on SIGHUP: from here until the server
    // handles it (`HupHandler`), one is dropped; the supervisor handles its own.
    #[cfg(unix)]
    if settings.no_supervisor
        || std::env::var_os(lameduck::supervisor::ENV_SUPERVISOR_PID).is_some()
    {
        signal_hook::flag::register(
            signal_hook::consts::SIGHUP,
            Arc::new(std::sync::atomic::AtomicBool::new(false)),
        )?;
    }
    // Checked here, in every mode, so that a bad directory is a one-line error at once.
    let metrics = Arc::new(Metrics::new());
    let files = open_files(&settings, &metrics)?;
    init_logging(&settings.log_level, settings.log_format)?;
    // Loaded here in every mode too: a missing or mismatched certificate stops the start
    // (or, in a new worker, the reload) with one line.
    let tls = load_tls(&settings)?;
    raise_fd_limit();
    #[cfg(unix)]
    {
        if std::env::var_os(lameduck::supervisor::ENV_SUPERVISOR_PID).is_some() {
            return Ok(serve_here(settings, files, metrics, tls, Mode::Worker)?.exit_code());
        }
        if !settings.no_supervisor {
            return supervise_serve(&settings);
        }
    }
    Ok(serve_here(settings, files, metrics, tls, Mode::Alone)?.exit_code())
}

fn open_files(settings: &Settings, metrics: &Arc<Metrics>) -> Result<Files, String> {
    Files::new(
        settings.dir.as_deref(),
        settings.list_dirs,
        settings.dotfiles,
        Arc::clone(metrics),
        settings.cache_size,
    )
    .map_err(|e| {
        let dir = settings
            .dir
            .as_deref()
            .unwrap_or(std::path::Path::new(""))
            .display();
        match e.kind() {
            std::io::ErrorKind::NotFound => format!("cannot serve {dir}: no such directory"),
            std::io::ErrorKind::NotADirectory => format!("cannot serve {dir}: not a directory"),
            _ => format!("cannot serve {dir}: {}", config::lower(&e)),
        }
    })
}

/// How this process serves: alone (no supervisor), or as a supervisor's worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Alone,
    Worker,
}

/// The listening sockets of `serve`.
struct Sockets {
    http: Vec<std::net::TcpListener>,
    admin: Option<std::net::TcpListener>,
    redirect: Option<std::net::TcpListener>,
}

/// The listening sockets: those handed over (by a supervisor, or systemd's socket
/// activation), split by name into HTTP, `admin` and `redirect`; otherwise bound here.
fn listeners(settings: &Settings) -> Result<Sockets, BoxError> {
    #[cfg(unix)]
    let inherited = lameduck::listen::inherited_named()?;
    #[cfg(not(unix))]
    let inherited: Vec<(String, std::net::TcpListener)> = Vec::new();
    let mut sockets = Sockets {
        http: Vec::new(),
        admin: None,
        redirect: None,
    };
    if inherited.is_empty() {
        for addr in &settings.listen {
            sockets.http.push(lameduck::listen::bind(*addr)?);
        }
    } else {
        for (name, listener) in inherited {
            match name.as_str() {
                "admin" => sockets.admin = Some(listener),
                "redirect" => sockets.redirect = Some(listener),
                _ => sockets.http.push(listener),
            }
        }
        if sockets.http.is_empty() {
            return Err("the inherited sockets (LISTEN_FDS) hold none to serve HTTP on".into());
        }
        tracing::debug!(
            count = sockets.http.len(),
            "adopted inherited listening sockets (LISTEN_FDS); --listen is ignored"
        );
    }
    // Set on inherited sockets too (a worker sets it again on its supervisor's: harmless).
    if settings.defer_accept {
        for listener in &sockets.http {
            lameduck::listen::defer_accept(listener, settings.header_timeout)
                .map_err(|e| format!("--defer-accept: cannot defer accepting connections: {e}"))?;
        }
    }
    // Configured but not handed over (systemd socket activation without them): bound here.
    if sockets.admin.is_none() {
        sockets.admin = settings.admin.map(lameduck::listen::bind).transpose()?;
    }
    if sockets.redirect.is_none() {
        sockets.redirect = settings
            .redirect_http
            .map(lameduck::listen::bind)
            .transpose()?;
    }
    Ok(sockets)
}

/// Loads the TLS certificate and key named in the settings (a one-line error if they do
/// not load or do not match), and warns when the certificate has expired.
fn load_tls(settings: &Settings) -> Result<Option<lameduck::tls::CertResolver>, BoxError> {
    let Some((cert, key)) = &settings.tls else {
        return Ok(None);
    };
    let certified = lameduck::tls::load_pem(cert, key).map_err(|e| e.to_string())?;
    warn_if_expired(&certified, cert);
    Ok(Some(lameduck::tls::CertResolver::new(certified)))
}

fn warn_if_expired(key: &lameduck::tls::rustls::sign::CertifiedKey, path: &std::path::Path) {
    if let Some(at) = lameduck::tls::not_after(key) {
        if at < std::time::SystemTime::now() {
            tracing::warn!(cert = %path.display(), expired = %httpdate::fmt_http_date(at), "the TLS certificate has expired; clients will refuse it");
        }
    }
}

/// Supervises `lameduck serve` itself: binds (or adopts) the sockets and runs this same
/// command line, from the same executable path, in worker processes.
#[cfg(unix)]
fn supervise_serve(settings: &Settings) -> Result<ExitCode, BoxError> {
    let Sockets {
        http,
        admin,
        redirect,
    } = listeners(settings)?;
    let mut args = std::env::args_os();
    let exe = args.next().ok_or("cannot tell this program's path")?;
    let mut sup = lameduck::supervisor::Supervisor::new(&exe)?
        .args(args)
        .ready_timeout(settings.ready_timeout);
    for listener in http {
        tracing::info!(addr = %listener.local_addr()?, "supervisor: listening");
        sup = sup.listener("http", listener);
    }
    if let Some(admin) = admin {
        sup = sup.listener("admin", admin);
    }
    if let Some(redirect) = redirect {
        sup = sup.listener("redirect", redirect);
    }
    supervise(sup, settings.pid_file.as_deref())
}

/// Runs a supervisor to the end; its pid file (written by the supervisor once it handles
/// signals) lives as long as it does.
#[cfg(unix)]
fn supervise(
    mut sup: lameduck::supervisor::Supervisor,
    pid_file: Option<&std::path::Path>,
) -> Result<ExitCode, BoxError> {
    if let Some(path) = pid_file {
        sup = sup.pid_file(path);
    }
    let outcome = sup.run()?;
    Ok(ExitCode::from(outcome.exit_code))
}

/// A pid file, removed when dropped.
struct PidFile(std::path::PathBuf);

impl PidFile {
    fn write(path: &std::path::Path) -> Result<PidFile, String> {
        std::fs::write(path, format!("{}\n", std::process::id())).map_err(|e| {
            format!(
                "cannot write the pid file {}: {}",
                path.display(),
                config::lower(&e)
            )
        })?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `lameduck run`: the supervisor for any program.
fn run(args: config::RunArgs) -> Result<ExitCode, BoxError> {
    init_logging(&args.log_level, args.log_format)?;
    #[cfg(unix)]
    {
        let mut command = args.command.into_iter();
        let program = command.next().ok_or("no command given after --")?;
        let mut sup = lameduck::supervisor::Supervisor::new(&program)?
            .args(command)
            .ready_timeout(args.ready_timeout)
            .ready_delay(args.ready_delay);
        for addr in &args.listen {
            let listener = lameduck::listen::bind(*addr)?;
            tracing::info!(addr = %listener.local_addr()?, "supervisor: listening");
            sup = sup.listener("http", listener);
        }
        supervise(sup, args.pid_file.as_deref())
    }
    #[cfg(not(unix))]
    {
        let _ = args;
        Err("lameduck run needs a unix system".into())
    }
}

/// SIGHUP in a process that is not the supervisor. Serving HTTPS alone, the certificate and
/// key are read again and swapped in (a bad pair is refused with one log line and the old one
/// stays); otherwise there is nothing to reload in place, and the signal is logged and
/// ignored instead of ending the process by its default action (a `kill -HUP` aimed at the
/// wrong process, out of habit from servers that reload on it, must not stop the server).
#[cfg(unix)]
struct HupHandler {
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a SIGHUP does where [`HupHandler`] handles it.
#[cfg(unix)]
enum OnHup {
    /// Re-read this certificate and key into the resolver.
    Cert(
        lameduck::tls::CertResolver,
        std::path::PathBuf,
        std::path::PathBuf,
    ),
    /// Nothing: log this and carry on.
    Ignore(&'static str),
}

#[cfg(unix)]
impl HupHandler {
    fn install(on_hup: OnHup) -> std::io::Result<HupHandler> {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("lameduck-sighup".into())
            .spawn(move || {
                for _ in signals.forever() {
                    match &on_hup {
                        OnHup::Cert(resolver, cert, key) => match lameduck::tls::load_pem(cert, key) {
                            Ok(certified) => {
                                warn_if_expired(&certified, cert);
                                resolver.set(certified);
                                tracing::info!(cert = %cert.display(), "SIGHUP: TLS certificate reloaded");
                            }
                            Err(e) => {
                                tracing::error!("SIGHUP: {e}; the old certificate stays");
                            }
                        },
                        OnHup::Ignore(why) => tracing::warn!("SIGHUP ignored: {why}"),
                    }
                }
            })?;
        Ok(HupHandler {
            handle,
            thread: Some(thread),
        })
    }
}

#[cfg(unix)]
impl Drop for HupHandler {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            // The thread only loops over the closed iterator.
            let _ = t.join();
        }
    }
}

/// Resolves when this worker has been replaced by a new one (a reload): once shut down, if
/// the supervisor's status names another worker as serving. Never, when not supervised.
async fn replaced(shutdown: lameduck::Shutdown, mode: Mode) {
    #[cfg(unix)]
    if mode == Mode::Worker {
        shutdown.reached(lameduck::Phase::LameDuck).await;
        let me = std::process::id();
        if lameduck::supervisor::SupervisorStatus::current()
            .is_some_and(|s| s.worker_pid != 0 && s.worker_pid != me)
        {
            return;
        }
    }
    let _ = (shutdown, mode);
    std::future::pending().await
}

/// Most threads in the blocking pool, where file-system work that may wait runs.
const BLOCKING_THREADS: usize = 64;

/// Serves in this process: alone, or as a supervisor's worker.
fn serve_here(
    settings: Settings,
    files: Files,
    metrics: Arc<Metrics>,
    tls: Option<lameduck::tls::CertResolver>,
    mode: Mode,
) -> Result<lameduck::Report, BoxError> {
    let Sockets {
        http: listeners,
        admin: admin_listener,
        redirect: redirect_listener,
    } = listeners(&settings)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // File-system work that may wait on the disk runs in the blocking pool (see
        // `files::StaticService`): at most this many reads wait on a slow disk at once, and
        // further ones queue behind them, while hot files are still answered.
        .max_blocking_threads(BLOCKING_THREADS)
        .build()?;

    let files = Arc::new(files);
    let service = StaticService {
        files: Arc::clone(&files),
        metrics: Arc::clone(&metrics),
    };
    let bound: Vec<std::net::SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;
    let mut listeners = listeners.into_iter();
    let first = listeners
        .next()
        .expect("settings hold at least one address");
    let shortcut = FileShortcut {
        files: Arc::clone(&files),
        metrics: Arc::clone(&metrics),
    };
    let mut serve = lameduck::http::serve(first, service)
        // A cached file's plain GET is answered from its prepared bytes before hyper is
        // involved (see `files::FileShortcut`); everything else goes to the service.
        .shortcut(shortcut)
        .max_connections(settings.max_connections)
        .overload(match settings.overload {
            OverloadArg::Wait => lameduck::Overload::Wait,
            OverloadArg::Shed => lameduck::Overload::Shed,
        })
        .drain_timeout(settings.drain_timeout)
        .lame_duck(settings.lame_duck)
        .header_timeout(settings.header_timeout)
        .idle_timeout(settings.idle_timeout)
        .write_timeout(settings.write_timeout)
        // Large files go out by `sendfile` on plain HTTP/1 (see `files::Source::SendFile`).
        .sendfile(true);
    for listener in listeners {
        serve = serve.listener(listener);
    }
    let tls_stats = match &tls {
        Some(resolver) => {
            serve = serve.tls(lameduck::tls::server_config(resolver.clone())?);
            Some(serve.tls_stats())
        }
        None => None,
    };
    let shutdown = serve.shutdown_handle();
    let view = ServerView {
        shutdown: shutdown.clone(),
        tracker: serve.tracker(),
        admission: serve.admission(),
        metrics,
        tls: tls_stats,
        files: Arc::clone(&files),
    };
    let _signals = lameduck::signals::install(&shutdown)?;
    // Alone, SIGHUP re-reads the certificate in place (a supervisor starts a new worker
    // instead, which reads it at start), or is ignored with a warning: its default action
    // would end the process.
    #[cfg(unix)]
    let _sighup = HupHandler::install(match (&tls, &settings.tls, mode) {
        (Some(resolver), Some((cert, key)), Mode::Alone) => {
            OnHup::Cert(resolver.clone(), cert.clone(), key.clone())
        }
        (_, _, Mode::Alone) => OnHup::Ignore(
            "with --no-supervisor there is nothing to reload in place (the supervisor reloads with no refused client; restart to apply changes)",
        ),
        (_, _, Mode::Worker) => OnHup::Ignore(
            "this is a worker; send SIGHUP to its supervisor (the parent process) to reload",
        ),
    })?;
    // Written only now, with the sockets bound and the signals handled: whoever reads the
    // pid from it can signal a server that is ready for it.
    let _pid_file = match (mode, settings.pid_file.as_deref()) {
        (Mode::Alone, Some(path)) => Some(PidFile::write(path)?),
        _ => None,
    };
    // `--redirect-http`: plain HTTP answering 308 to https://, on the same lifecycle.
    let redirect = match redirect_listener {
        Some(listener) => {
            tracing::info!(addr = %listener.local_addr()?, "redirecting plain HTTP to https://");
            let https_port = bound.first().map_or(443, |a| a.port());
            Some(
                lameduck::http::serve(listener, redirect::RedirectService { https_port })
                    .with_shutdown(shutdown.clone())
                    .drain_timeout(settings.drain_timeout)
                    .lame_duck(settings.lame_duck)
                    .header_timeout(settings.header_timeout)
                    .idle_timeout(settings.idle_timeout),
            )
        }
        None => None,
    };

    let what = settings.dir.as_deref().map_or_else(
        || "the built-in page".to_owned(),
        |d| d.display().to_string(),
    );
    for addr in &bound {
        tracing::info!(%addr, serving = %what, max_connections = settings.max_connections, pid = std::process::id(), "serving");
    }
    if let Some(l) = &admin_listener {
        tracing::info!(addr = %l.local_addr()?, "admin endpoint: /live /ready /status /metrics");
    }

    let report = runtime.block_on(async move {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = admin_listener.map(|listener| {
            let replaced = replaced(shutdown.clone(), mode);
            let stopped = async move {
                // The admin endpoint answers until the server has stopped (so probes see
                // `/ready` fail through lame duck and drain), unless a new worker has taken
                // over: then the shared admin socket is the new worker's alone, and probes
                // must not reach this one, draining, and read "not ready".
                tokio::select! {
                    _ = stopped => {}
                    _ = replaced => {}
                }
            };
            tokio::spawn(
                admin::run(listener, view, stopped).instrument(tracing::info_span!("admin")),
            )
        });
        // The listeners are open and about to be accepted on: a supervisor (or systemd with
        // `Type=notify`) may send traffic this way now, and retire the old worker.
        #[cfg(unix)]
        {
            if let Err(e) = lameduck::notify::ready() {
                tracing::warn!(error = %e, "cannot tell the supervisor this worker is ready");
            }
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.reached(lameduck::Phase::LameDuck).await;
                let _ = lameduck::notify::stopping();
            });
        }
        let redirect = redirect.map(|r| tokio::spawn(r.into_future()));
        let report = serve.await;
        if let Some(redirect) = redirect {
            let _ = redirect.await;
        }
        drop(stop);
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        report
    })?;
    // A file read still waiting on a hung disk must not hold the exit: the blocking pool is
    // given a moment, then left behind.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    tracing::info!(
        accepted = report.accepted,
        completed = report.completed,
        forced = report.forced,
        drain_s = format_args!("{:.3}", report.drain_duration.as_secs_f64()),
        clean = report.is_clean(),
        "lameduck stopped"
    );
    Ok(report)
}
