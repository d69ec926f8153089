//! The `lameduck` command: `lameduck serve [DIR]`, a static-file server with a graceful,
//! bounded lifecycle, built on the lameduck library.
//!
//! Exit codes: 0 after a clean drain; 3 when the drain deadline (or a second signal) had to
//! cut connections; 1 for a configuration or start-up error, printed as one line; 2 when no
//! subcommand is given (the help is printed).

mod admin;
mod config;
mod files;
mod metrics;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use tracing::Instrument;

use crate::config::{LogFormat, OverloadArg, ServeArgs, Settings};
use crate::files::{Files, StaticService};
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
    /// on SIGINT/SIGTERM (a second signal forces).
    Serve(ServeArgs),
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
    match cli.command {
        Command::Serve(args) => match serve(args) {
            Ok(report) => report.exit_code(),
            Err(e) => {
                eprintln!("lameduck: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
    }
}

/// The first line of a clap error, without its `error: ` prefix.
fn one_line(msg: &str) -> &str {
    let first = msg.lines().next().unwrap_or(msg);
    first.strip_prefix("error: ").unwrap_or(first)
}

fn init_logging(settings: &Settings) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{Layer as _, filter::DynFilterFn, fmt};

    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level)
        .map_err(|e| format!("invalid --log-level {:?}: {e}", settings.log_level))?;
    // The admin endpoint is a lameduck server too; its own lifecycle lines would only confuse
    // the operator's log, so inside its span only warnings and errors pass.
    let quiet_admin = DynFilterFn::new(|meta, cx| {
        *meta.level() <= tracing::Level::WARN
            || cx
                .lookup_current()
                .is_none_or(|span| span.name() != "admin")
    });
    let layer = match settings.log_format {
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
    tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(quiet_admin))
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

fn serve(args: ServeArgs) -> Result<lameduck::Report, Box<dyn std::error::Error>> {
    let settings = Settings::resolve(args)?;
    let metrics = Arc::new(Metrics::new());
    let files = Files::new(
        settings.dir.as_deref(),
        settings.list_dirs,
        settings.dotfiles,
        Arc::clone(&metrics),
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
    })?;
    init_logging(&settings)?;
    raise_fd_limit();

    // Sockets handed over by systemd or a supervisor (LISTEN_FDS) take the place of --listen:
    // they stay open across restarts, so no client is ever refused.
    #[cfg(unix)]
    let mut listeners = lameduck::listen::inherited()?;
    #[cfg(not(unix))]
    let mut listeners = Vec::new();
    if listeners.is_empty() {
        for addr in &settings.listen {
            listeners.push(lameduck::listen::bind(*addr)?);
        }
    } else {
        tracing::info!(
            count = listeners.len(),
            "adopted inherited listening sockets (LISTEN_FDS); --listen is ignored"
        );
    }
    let admin_listener = settings.admin.map(lameduck::listen::bind).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let service = StaticService {
        files: Arc::new(files),
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
    let mut serve = lameduck::http::serve(first, service)
        .max_connections(settings.max_connections)
        .overload(match settings.overload {
            OverloadArg::Wait => lameduck::Overload::Wait,
            OverloadArg::Shed => lameduck::Overload::Shed,
        })
        .drain_timeout(settings.drain_timeout)
        .lame_duck(settings.lame_duck)
        .header_timeout(settings.header_timeout)
        .idle_timeout(settings.idle_timeout)
        .write_timeout(settings.write_timeout);
    for listener in listeners {
        serve = serve.listener(listener);
    }
    let shutdown = serve.shutdown_handle();
    let view = ServerView {
        shutdown: shutdown.clone(),
        tracker: serve.tracker(),
        admission: serve.admission(),
        metrics,
    };
    let _signals = lameduck::signals::install(&shutdown)?;

    let what = settings.dir.as_deref().map_or_else(
        || "the built-in page".to_owned(),
        |d| d.display().to_string(),
    );
    for addr in &bound {
        tracing::info!(%addr, serving = %what, max_connections = settings.max_connections, "serving");
    }
    if let Some(l) = &admin_listener {
        tracing::info!(addr = %l.local_addr()?, "admin endpoint: /live /ready /status /metrics");
    }

    let report = runtime.block_on(async move {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = admin_listener.map(|listener| {
            let stopped = async move {
                let _ = stopped.await;
            };
            tokio::spawn(
                admin::run(listener, view, stopped).instrument(tracing::info_span!("admin")),
            )
        });
        let report = serve.await;
        drop(stop);
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        report
    })?;
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
