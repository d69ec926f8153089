//! An echo server with a connection limit and a graceful, bounded shutdown: the tokio blog's
//! semaphore-limited listener done right.
//!
//! ```text
//! cargo run --example echo_limit -- --listen 127.0.0.1:7878 --max-connections 100 --drain-timeout 5s
//! ```
//!
//! Each line a client sends is echoed back. At the limit, further clients wait in the kernel
//! backlog (they are not accepted and dropped) and are served as slots free. SIGINT/SIGTERM
//! stop accepting at once; open sessions keep echoing until they close or the deadline
//! passes. Exit code 0 after a clean drain, 3 if connections had to be closed at the deadline,
//! 1 if the server could not start.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Echo each line back, with a connection limit and a graceful shutdown.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Most connections served at once; more wait in the kernel backlog.
    #[arg(long, default_value_t = 100)]
    max_connections: usize,
    /// How long open sessions may go on after a shutdown signal (e.g. 500ms, 2s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
}

async fn echo(stream: TcpStream, _conn: lameduck::Connection) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        write.write_all(&line).await?;
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(report) => report.exit_code(),
        Err(e) => {
            eprintln!("echo_limit: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<lameduck::Report, Box<dyn std::error::Error>> {
    let listener = lameduck::listen::bind(args.listen)?;
    let server = lameduck::Server::new()
        .listener(listener)
        .max_connections(args.max_connections)
        .drain_timeout(args.drain_timeout);
    let _signals = lameduck::signals::install(&server.shutdown_handle())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(server.serve(echo))?)
}
