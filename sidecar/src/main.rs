//! `meshgate`: the sidecar binary. Parses the command line and hands over to
//! [`meshgate::run`]; everything else lives in the library modules.
#![forbid(unsafe_code)]

use clap::Parser;
use meshgate::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Validate { file }) => meshgate::validate_file(&file),
        Some(Command::Demo { app_port }) => meshgate::demo::run(cli.run, app_port),
        Some(Command::Pause) => meshgate::pause::run(),
        None => meshgate::run(cli.run),
    }
}
