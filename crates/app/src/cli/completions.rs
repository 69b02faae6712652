//! `rust-app completions bash|zsh|fish`: a completion script generated from the command definitions, so it
//! cannot drift from them.

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// Writes the completion script for `shell` to stdout.
pub fn print(shell: Shell) {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "rust-app", &mut std::io::stdout());
}
