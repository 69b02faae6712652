//! `rust-app`: the command-line entry point. It parses the arguments; `app::cli` runs the command.

use std::process::ExitCode;

use app::cli::Cli;
use clap::Parser;

/// mimalloc instead of glibc's malloc: fewer cycles per allocation on the request path, and memory freed after a
/// burst (a login burst's Argon2 blocks) goes back to the system instead of staying in glibc's arenas. Measured in
/// docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    app::cli::run(Cli::parse())
}
