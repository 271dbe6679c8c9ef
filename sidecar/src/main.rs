//! `meshgate`: the sidecar binary. Parses the command line and hands over to
//! [`meshgate::run`]; everything else lives in the library modules.
#![forbid(unsafe_code)]

use clap::Parser;
use meshgate::cli::{Cli, Command};

/// jemalloc, because it hands memory freed after a burst of connections back
/// to the system within about a second (glibc's allocator keeps it); its
/// settings are compiled in from `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Validate { file }) => meshgate::validate_file(&file),
        Some(Command::Demo { app_port }) => meshgate::demo::run(cli.run, app_port),
        Some(Command::Pause) => meshgate::pause::run(),
        None => meshgate::run(cli.run),
    }
}
