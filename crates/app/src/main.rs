//! `rust-app`: the command-line entry point. It parses the arguments; `app::cli` runs the command.

use std::process::ExitCode;

use app::cli::Cli;
use clap::Parser;

fn main() -> ExitCode {
    app::cli::run(Cli::parse())
}
