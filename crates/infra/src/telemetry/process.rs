//! The process's own metrics under the names every Prometheus client library uses (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_start_time_seconds`, …),
//! read from Linux's `/proc` at each scrape and rendered as exposition text.
//!
//! Rendered directly rather than through the `metrics` facade: its counters are integers, and CPU time is
//! fractional seconds. Nothing is rendered where `/proc/self` cannot be read (not Linux).

use std::fmt::Write;

/// Clock ticks per second of `/proc/*/stat` times (Linux's `USER_HZ`: 100 on every architecture this service
/// is built for; reading `sysconf(_SC_CLK_TCK)` would need `unsafe`).
const TICKS_PER_SECOND: f64 = 100.0;

/// One sample of the process metrics.
#[derive(Clone, Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    threads: f64,
    start_time_seconds: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

/// The process metrics as exposition text (`# HELP`, `# TYPE` and the sample of each), or nothing when
/// `/proc/self/stat` cannot be read.
pub(crate) fn render() -> String {
    let Some(sample) = read() else { return String::new() };
    let mut text = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
        }
    };
    family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        Some(sample.cpu_seconds),
    );
    family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", Some(sample.resident_bytes));
    family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", Some(sample.virtual_bytes));
    family("process_threads", "gauge", "Number of OS threads in the process.", Some(sample.threads));
    family("process_open_fds", "gauge", "Number of open file descriptors.", sample.open_fds);
    family("process_max_fds", "gauge", "Maximum number of open file descriptors.", sample.max_fds);
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        sample.start_time_seconds,
    );
    text
}

fn read() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut sample = parse_stat(&stat)?;
    sample.resident_bytes = resident_bytes(&status).unwrap_or(sample.resident_bytes);
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|text| boot_time(&text));
    sample.start_time_seconds = sample.start_time_seconds.zip(boot_time).map(|(since_boot, boot)| boot + since_boot);
    sample.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|entries| entries.count() as f64);
    sample.max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|text| max_open_files(&text));
    Some(sample)
}

/// CPU time, threads, virtual size and the start time since boot (`start_time_seconds`, completed by `read`)
/// from `/proc/self/stat`. The command name (field 2) may hold spaces and parentheses: fields are counted
/// from the last `)`.
fn parse_stat(stat: &str) -> Option<Sample> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `fields[0]` is field 3 of proc(5) (state).
    let field = |number: usize| fields.get(number - 3).and_then(|value| value.parse::<f64>().ok());
    let (utime, stime) = (field(14)?, field(15)?);
    Some(Sample {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        threads: field(20)?,
        start_time_seconds: field(22).map(|ticks| ticks / TICKS_PER_SECOND),
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * 4096.0,
        open_fds: None,
        max_fds: None,
    })
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn resident_bytes(status: &str) -> Option<f64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// `btime` of `/proc/stat`: when the machine booted, in seconds since the epoch.
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines().find_map(|line| line.strip_prefix("btime "))?.trim().parse().ok()
}

/// The soft limit of `Max open files` in `/proc/self/limits` (none when unlimited).
fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 7 0 12345 104857600 2560 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let sample = parse_stat(stat).expect("parsed");
        assert_eq!(sample.cpu_seconds, 3.0, "(250 + 50) ticks");
        assert_eq!(sample.threads, 7.0);
        assert_eq!(sample.start_time_seconds, Some(123.45));
        assert_eq!(sample.virtual_bytes, 104_857_600.0);
        assert_eq!(sample.resident_bytes, 2560.0 * 4096.0);
    }

    #[test]
    fn status_limits_and_boot_time_are_read() {
        assert_eq!(resident_bytes("Name:\tx\nVmRSS:\t   2048 kB\n"), Some(2_097_152.0));
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1796114947\n"), Some(1_796_114_947.0));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024.0));
        assert_eq!(max_open_files("Max open files            unlimited            unlimited            files\n"), None);
    }

    #[test]
    fn this_process_is_measured() {
        let text = render();
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("# HELP {family} ")), "{family} missing:\n{text}");
        }
        let sample = read().expect("/proc/self is readable");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
        let started = sample.start_time_seconds.expect("start time");
        assert!(started <= now + 5.0 && started > now - 86_400.0, "started {started}, now {now}");
        assert!(sample.resident_bytes > 1_000_000.0 && sample.open_fds.is_some_and(|fds| fds >= 3.0), "{sample:?}");
    }
}
