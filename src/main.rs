//! The `lameduck` command-line tool.

use clap::Parser;

/// Servers with a correct lifecycle: stop accepting at once, drain in-flight work under a
/// deadline, bound connections, restart without refusing clients.
#[derive(Debug, Parser)]
#[command(name = "lameduck", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
