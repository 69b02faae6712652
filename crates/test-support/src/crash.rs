//! Core dumps and backtraces of a crashed child process. A crash the fault tests see once in dozens of runs (a
//! SIGSEGV in native code, where no panic hook runs and nothing is logged) must leave more behind than
//! "signal: 11": the core file is kept under `target/artifacts/` and its backtrace printed.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// How many lines of gdb's output a report keeps (every thread's top frames fit).
const BACKTRACE_LINES: usize = 400;

/// A command that runs `program` with core dumps enabled: a shell raises its `ulimit -c` (ignoring a refusal)
/// and then execs `program` with the arguments added to the command, so the pid and the process are
/// `program`'s. Core files land in the working directory (`core_pattern` is `core` on these machines).
pub fn command_with_core_dumps(program: &Path) -> Command {
    let mut command = Command::new("sh");
    command.arg("-c").arg("ulimit -c unlimited 2>/dev/null; exec \"$0\" \"$@\"").arg(program);
    command
}

/// For a process that died of a signal: its core file from `workdir` (moved to `target/artifacts/`) and a
/// backtrace of every thread from gdb, or why there is none. Empty for any other exit.
pub fn report(status: ExitStatus, program: &Path, workdir: &Path) -> String {
    let Some(signal) = status.signal() else { return String::new() };
    let Some(core) = core_file(workdir) else {
        return format!("\nkilled by signal {signal}; no core file in {} (ulimit -c, core_pattern)", workdir.display());
    };
    let kept = artifacts().join(format!("core-{}", unique_suffix(&core)));
    let core = match std::fs::create_dir_all(artifacts()).and_then(|()| std::fs::rename(&core, &kept)) {
        Ok(()) => kept,
        Err(_) => core,
    };
    let backtrace = Command::new("gdb")
        // The crashed thread first (gdb selects it), then every thread: the report is cut at BACKTRACE_LINES.
        .args(["-batch", "-ex", "bt 30", "-ex", "thread apply all bt 30"])
        .arg(program)
        .arg(&core)
        .output()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout).lines().take(BACKTRACE_LINES).collect::<Vec<_>>().join("\n")
        })
        .unwrap_or_else(|err| {
            format!("gdb could not run ({err}): `gdb {} {}` by hand", program.display(), core.display())
        });
    format!("\nkilled by signal {signal}; core file: {}\n{backtrace}", core.display())
}

fn core_file(workdir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(workdir)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with("core")))
}

fn unique_suffix(core: &Path) -> String {
    let name = core.file_name().and_then(|name| name.to_str()).unwrap_or("core");
    format!("{}-{name}", std::process::id())
}

/// `target/artifacts` of this workspace (or of `CARGO_TARGET_DIR`): kept by CI.
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("artifacts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_normal_exit_has_no_report_and_a_signal_without_core_says_so() {
        let workdir = crate::fakes::TempDir::new();
        let ok = Command::new("true").status().expect("true runs");
        assert_eq!(report(ok, Path::new("/bin/true"), &workdir.0), "");
        let killed = Command::new("sh").args(["-c", "kill -KILL $$"]).status().expect("sh runs");
        let text = report(killed, Path::new("/bin/sh"), &workdir.0);
        assert!(text.contains("killed by signal 9; no core file"), "{text}");
    }

    #[test]
    fn the_wrapped_command_runs_the_program_with_its_arguments() {
        let output = command_with_core_dumps(Path::new("/bin/echo")).args(["one", "two"]).output().expect("runs");
        assert_eq!(String::from_utf8_lossy(&output.stdout), "one two\n");
    }
}
