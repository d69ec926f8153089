//! The `serve` subcommand's settings: command-line flags, an optional TOML file whose keys are
//! the long flag names, and the defaults. A flag given on the command line wins over the file,
//! and the file over the default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Default address served when neither a flag nor the file names one.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// `lameduck serve` flags. Each is optional here so that the file can fill what is missing;
/// the defaults are applied by [`Settings::resolve`] and shown in `--help`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Directory to serve. Without one, a built-in page about lameduck is served.
    pub(crate) dir: Option<PathBuf>,
    /// Read settings from this TOML file (keys are the long flag names; flags win).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on; repeat for several. [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Vec<SocketAddr>,
    /// Most connections held at once. [default: 10000]
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// Past the limit: wait (clients queue in the kernel backlog) or shed (503 at once). [default: wait]
    #[arg(long, value_enum)]
    pub(crate) overload: Option<OverloadArg>,
    /// How long connections may take to finish after SIGTERM before they are cut. [default: 30s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) drain_timeout: Option<Duration>,
    /// After SIGTERM, keep serving this long while /ready says 503. [default: 0s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) lame_duck: Option<Duration>,
    /// Time a client has to send its request head. [default: 10s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) header_timeout: Option<Duration>,
    /// Time an idle keep-alive connection is kept open. [default: 60s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) idle_timeout: Option<Duration>,
    /// Time a write may stall on a client that does not read. [default: 60s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) write_timeout: Option<Duration>,
    /// Address of the admin endpoint (/live, /ready, /status, /metrics). [default: none]
    #[arg(long, value_name = "ADDR")]
    pub(crate) admin: Option<SocketAddr>,
    /// Log format. [default: text]
    #[arg(long, value_enum)]
    pub(crate) log_format: Option<LogFormat>,
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter). [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub(crate) log_level: Option<String>,
    /// List the contents of directories that have no index.html.
    #[arg(long)]
    pub(crate) list_dirs: bool,
    /// Serve files and directories whose names start with a dot.
    #[arg(long)]
    pub(crate) dotfiles: bool,
    /// Accept a connection only once its client has sent data, for up to --header-timeout
    /// (Linux's TCP_DEFER_ACCEPT, nginx's `listen … deferred`): the request is readable at
    /// once, and a client that sends nothing waits in the kernel, not in a connection slot.
    #[arg(long)]
    pub(crate) defer_accept: bool,
    /// Run as one process, without the supervisor that makes SIGHUP reloads and crash
    /// restarts refuse no client.
    #[arg(long)]
    pub(crate) no_supervisor: bool,
    /// Write the supervisor's pid here (`kill -HUP $(cat FILE)` reloads). [default: none]
    #[arg(long, value_name = "FILE")]
    pub(crate) pid_file: Option<PathBuf>,
    /// Time a new worker has to be ready on a reload before it is killed and the old one
    /// keeps serving. [default: 30s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) ready_timeout: Option<Duration>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first: certbot's fullchain.pem).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Also listen on this address for plain HTTP, answering 308 to the https:// URL.
    #[arg(long, value_name = "ADDR")]
    pub(crate) redirect_http: Option<SocketAddr>,
    /// Memory for small files kept in memory (files up to 256 KiB; a change on disk is
    /// served within 200 ms); 0 turns it off. [default: 64MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub(crate) cache_size: Option<usize>,
}

/// `lameduck run` flags.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Address to listen on, handed to the program as LISTEN_FDS; repeat for several.
    #[arg(long, value_name = "ADDR", required = true)]
    pub(crate) listen: Vec<SocketAddr>,
    /// Time a new instance has to be ready (sd_notify READY=1, or --ready-delay) before it is
    /// killed and the old one keeps serving.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "30s")]
    pub(crate) ready_timeout: Duration,
    /// For programs that never notify: take an instance as ready once it has run this long.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) ready_delay: Option<Duration>,
    /// Write the supervisor's pid here.
    #[arg(long, value_name = "FILE")]
    pub(crate) pid_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
    /// Log level or filter.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub(crate) log_level: String,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub(crate) command: Vec<std::ffi::OsString>,
}

/// The overload policy, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OverloadArg {
    /// Clients wait in the kernel backlog.
    Wait,
    /// Clients get 503 with Retry-After at once.
    Shed,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Default memory for the small-file cache.
pub(crate) const DEFAULT_CACHE_SIZE: usize = 64 << 20;

/// Parses a size: `0`, `65536`, `512KiB`, `64MiB`, `1GiB` (also `K`, `M`, `G`, `KB`, `MB`,
/// `GB`, all powers of 1024).
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?} (sizes look like 0, 512KiB, 64MiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => {
            return Err(format!(
                "invalid size {s:?} (sizes look like 0, 512KiB, 64MiB)"
            ));
        }
    };
    n.checked_mul(1usize << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Parses `500ms`, `30s`, `2m`, `1h`, …
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (durations look like 500ms, 30s, 2m)"))
}

/// The TOML file: the same names as the long flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    dir: Option<PathBuf>,
    listen: Option<OneOrMany>,
    max_connections: Option<usize>,
    overload: Option<OverloadArg>,
    drain_timeout: Option<String>,
    lame_duck: Option<String>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    write_timeout: Option<String>,
    admin: Option<String>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    list_dirs: Option<bool>,
    dotfiles: Option<bool>,
    defer_accept: Option<bool>,
    no_supervisor: Option<bool>,
    pid_file: Option<PathBuf>,
    ready_timeout: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    redirect_http: Option<String>,
    cache_size: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A configuration problem, said in one line.
#[derive(Debug)]
pub(crate) struct ConfigError(pub(crate) String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Everything `serve` needs, resolved.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) dir: Option<PathBuf>,
    pub(crate) listen: Vec<SocketAddr>,
    pub(crate) max_connections: usize,
    pub(crate) overload: OverloadArg,
    pub(crate) drain_timeout: Duration,
    pub(crate) lame_duck: Duration,
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) admin: Option<SocketAddr>,
    pub(crate) log_format: LogFormat,
    pub(crate) log_level: String,
    pub(crate) list_dirs: bool,
    pub(crate) dotfiles: bool,
    pub(crate) defer_accept: bool,
    pub(crate) no_supervisor: bool,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) ready_timeout: Duration,
    /// Certificate chain and key files, for HTTPS.
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    pub(crate) redirect_http: Option<SocketAddr>,
    pub(crate) cache_size: usize,
}

impl Settings {
    /// Flags over file over defaults.
    pub(crate) fn resolve(args: ServeArgs) -> Result<Settings, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let origin = args
            .config
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let file_duration =
            |key: &str, value: &Option<String>| -> Result<Option<Duration>, ConfigError> {
                value
                    .as_deref()
                    .map(|v| {
                        parse_duration(v).map_err(|e| {
                            ConfigError(format!(
                                "config {origin}: {key}: invalid duration {v:?}: {e}"
                            ))
                        })
                    })
                    .transpose()
            };
        let file_addr = |key: &str, value: &str| -> Result<SocketAddr, ConfigError> {
            value.parse().map_err(|_| {
                ConfigError(format!(
                    "config {origin}: {key}: invalid address {value:?} (expected IP:PORT)"
                ))
            })
        };
        let listen = if !args.listen.is_empty() {
            args.listen
        } else {
            match &file.listen {
                Some(OneOrMany::One(a)) => vec![file_addr("listen", a)?],
                Some(OneOrMany::Many(list)) => list
                    .iter()
                    .map(|a| file_addr("listen", a))
                    .collect::<Result<_, _>>()?,
                None => vec![DEFAULT_LISTEN.parse().expect("the default address parses")],
            }
        };
        if listen.is_empty() {
            return Err(ConfigError(format!(
                "config {origin}: listen: no address given"
            )));
        }
        let admin = match args.admin {
            Some(a) => Some(a),
            None => file
                .admin
                .as_deref()
                .map(|a| file_addr("admin", a))
                .transpose()?,
        };
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(10_000);
        if max_connections == 0 {
            return Err(ConfigError("max-connections must be at least 1".into()));
        }
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(ConfigError(
                    "tls-cert and tls-key go together: give both or neither".into(),
                ));
            }
        };
        let redirect_http = match args.redirect_http {
            Some(a) => Some(a),
            None => file
                .redirect_http
                .as_deref()
                .map(|a| file_addr("redirect-http", a))
                .transpose()?,
        };
        if redirect_http.is_some() && tls.is_none() {
            return Err(ConfigError(
                "redirect-http needs tls-cert and tls-key: it sends clients to https://".into(),
            ));
        }
        Ok(Settings {
            dir: args.dir.or(file.dir),
            listen,
            max_connections,
            overload: args.overload.or(file.overload).unwrap_or(OverloadArg::Wait),
            drain_timeout: args
                .drain_timeout
                .or(file_duration("drain-timeout", &file.drain_timeout)?)
                .unwrap_or(lameduck::DEFAULT_DRAIN_TIMEOUT),
            lame_duck: args
                .lame_duck
                .or(file_duration("lame-duck", &file.lame_duck)?)
                .unwrap_or(Duration::ZERO),
            header_timeout: args
                .header_timeout
                .or(file_duration("header-timeout", &file.header_timeout)?)
                .unwrap_or(lameduck::http::DEFAULT_HEADER_TIMEOUT),
            idle_timeout: args
                .idle_timeout
                .or(file_duration("idle-timeout", &file.idle_timeout)?)
                .unwrap_or(lameduck::http::DEFAULT_IDLE_TIMEOUT),
            write_timeout: args
                .write_timeout
                .or(file_duration("write-timeout", &file.write_timeout)?)
                .unwrap_or(lameduck::http::DEFAULT_WRITE_TIMEOUT),
            admin,
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            log_level: args
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            list_dirs: args.list_dirs || file.list_dirs.unwrap_or(false),
            dotfiles: args.dotfiles || file.dotfiles.unwrap_or(false),
            defer_accept: args.defer_accept || file.defer_accept.unwrap_or(false),
            no_supervisor: args.no_supervisor || file.no_supervisor.unwrap_or(false),
            pid_file: args.pid_file.or(file.pid_file),
            ready_timeout: args
                .ready_timeout
                .or(file_duration("ready-timeout", &file.ready_timeout)?)
                .unwrap_or(Duration::from_secs(30)),
            tls,
            redirect_http,
            cache_size: match args.cache_size {
                Some(n) => n,
                None => match file.cache_size.as_deref() {
                    Some(v) => parse_size(v)
                        .map_err(|e| ConfigError(format!("config {origin}: cache-size: {e}")))?,
                    None => DEFAULT_CACHE_SIZE,
                },
            },
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "cannot read config {}: {}",
            path.display(),
            lower(&e)
        ))
    })?;
    toml::from_str(&text).map_err(|e| {
        // toml's message spans several lines (with a caret under the spot); keep the gist.
        let msg = e.message().trim().to_owned();
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        ConfigError(format!("cannot read config {}: {msg}{at}", path.display()))
    })
}

/// An I/O error's message without the OS error number, lower-case first letter.
pub(crate) fn lower(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn settings(argv: &[&str]) -> Result<Settings, ConfigError> {
        let mut all = vec!["serve"];
        all.extend_from_slice(argv);
        Settings::resolve(Wrap::try_parse_from(all).unwrap().args)
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("65536"), Ok(65_536));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn defaults() {
        let s = settings(&[]).unwrap();
        assert_eq!(
            s.listen,
            vec![DEFAULT_LISTEN.parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(s.drain_timeout, Duration::from_secs(30));
        assert_eq!(s.lame_duck, Duration::ZERO);
        assert_eq!(s.overload, OverloadArg::Wait);
        assert!(s.dir.is_none() && !s.list_dirs && !s.dotfiles && !s.defer_accept);
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("lameduck-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("lameduck.toml");
        std::fs::write(
            &file,
            "listen = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\ndrain-timeout = \"5s\"\nlame-duck = \"2s\"\nlist-dirs = true\noverload = \"shed\"\ndefer-accept = true\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let s = settings(&["--config", path, "--drain-timeout", "500ms"]).unwrap();
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.drain_timeout, Duration::from_millis(500));
        assert_eq!(s.lame_duck, Duration::from_secs(2));
        assert!(s.list_dirs && s.defer_accept);
        assert_eq!(s.overload, OverloadArg::Shed);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_errors_are_one_line() {
        let dir = std::env::temp_dir().join(format!("lameduck-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "drain-timeout = \"soon\"\n").unwrap();
        let err = settings(&["--config", file.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("drain-timeout") && !err.contains('\n'),
            "{err}"
        );
        std::fs::write(&file, "no-such-key = 1\n").unwrap();
        let err = settings(&["--config", file.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-such-key") && !err.contains('\n'), "{err}");
        let err = settings(&["--config", "/nonexistent/lameduck.toml"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "cannot read config /nonexistent/lameduck.toml: no such file or directory"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
