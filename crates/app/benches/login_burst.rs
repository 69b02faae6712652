//! Login bursts against the real binary: resident memory and time to answer.
//!
//! Run: `scripts/stack up && cargo bench -p app --bench login_burst`.
//!
//! Argon2id takes 19 MiB and tens of milliseconds per hash on purpose, which once made 450 concurrent logins
//! take the process to 9.8 GB resident (7.5 GB kept afterwards) — far past a pod's 512 MiB. This bench starts
//! `rust-app serve` as a child process against the local stack (its own Kafka topic and group, the per-IP and
//! login limits raised so only the hashing bound answers), measures its idle resident memory, then sends
//! BENCH_LOGINS (500) concurrent `POST /sessions` with unknown emails, each on its own connection, waits for
//! every answer, lets the process settle BENCH_SETTLE_SECONDS (5), and does it again (BENCH_BURSTS, 2 bursts).
//!
//! Reported: the time to answer each burst, its answers by status (401 = the password was checked against the
//! decoy, 503 = refused at once by the hashing bound), the resident memory after each burst (`VmRSS`) and the
//! peak over the whole run (`VmHWM`), all from `/proc/PID/status`. Targets (issue 14): peak under 256 MiB,
//! settled within 64 MiB of idle. Any answer other than 401 or 503 fails the bench, as does a burst with no 401
//! (the service must keep checking passwords while it refuses the overflow).
//!
//! BENCH_ENV adds variables to the child's environment (`NAME=value,NAME=value`), e.g.
//! `BENCH_ENV=PASSWORD_HASH_QUEUE=1000` to see the cost of a long queue.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let logins: usize = setting("BENCH_LOGINS", 500);
    let bursts: usize = setting("BENCH_BURSTS", 2);
    let settle = Duration::from_secs(setting("BENCH_SETTLE_SECONDS", 5));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let port = free_port();
    let mut server = Server::start(port);
    let base = format!("http://127.0.0.1:{port}");
    runtime.block_on(wait_ready(&base, &mut server));
    // Warm up: the decoy hash and the pools exist before idle is measured.
    runtime.block_on(burst(&base, 4, "warm-up"));
    std::thread::sleep(Duration::from_secs(1));
    let idle = server.memory();
    println!("login_burst: {logins} concurrent logins with unknown emails × {bursts} bursts, settle {settle:?}");
    println!("idle: {:.1} MiB resident", mib(idle.rss_kib));
    let mut settled = idle;
    for round in 1..=bursts {
        let started = Instant::now();
        let answers = runtime.block_on(burst(&base, logins, &format!("round{round}")));
        let elapsed = started.elapsed();
        let after_burst = server.memory();
        std::thread::sleep(settle);
        settled = server.memory();
        println!(
            "burst {round}: all {logins} answered in {:.2} s ({} × 401, {} × 503); resident {:.1} MiB right after, \
             {:.1} MiB settled",
            elapsed.as_secs_f64(),
            answers.unauthorized,
            answers.overloaded,
            mib(after_burst.rss_kib),
            mib(settled.rss_kib)
        );
        assert!(answers.unauthorized > 0, "no password was checked during the burst");
    }
    let peak = settled.hwm_kib;
    let growth = settled.rss_kib.saturating_sub(idle.rss_kib);
    println!(
        "peak {:.1} MiB (target < 256), settled {:.1} MiB = idle + {:.1} MiB (target < 64)",
        mib(peak),
        mib(settled.rss_kib),
        mib(growth)
    );
    server.stop();
}

/// Answers of one burst by status.
#[derive(Default)]
struct Answers {
    unauthorized: usize,
    overloaded: usize,
}

/// `count` concurrent logins with unknown emails, each on its own connection.
async fn burst(base: &str, count: usize, tag: &str) -> Answers {
    let attempts = (0..count).map(|i| {
        let url = format!("{base}/sessions");
        let body =
            serde_json::json!({"email": format!("nobody-{tag}-{i}@example.com"), "password": "not the password"});
        async move {
            // One client per login: a connection each, as a burst of separate clients would open.
            let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
            let response = client.post(url).json(&body).send().await.expect("login answered");
            response.status().as_u16()
        }
    });
    let mut answers = Answers::default();
    for status in futures::future::join_all(attempts).await {
        match status {
            401 => answers.unauthorized += 1,
            503 => answers.overloaded += 1,
            other => panic!("a login got {other}: only 401 or 503 are expected"),
        }
    }
    answers
}

async fn wait_ready(base: &str, server: &mut Server) {
    let deadline = Instant::now() + READY_TIMEOUT;
    let client = reqwest::Client::new();
    loop {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(server.child.try_wait().expect("child status").is_none(), "rust-app exited before it was ready");
        assert!(Instant::now() < deadline, "rust-app not ready within {READY_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `rust-app serve` as a child process.
struct Server {
    child: Child,
}

/// Resident memory now and at its peak, in KiB.
#[derive(Clone, Copy)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

impl Server {
    fn start(port: u16) -> Self {
        let run = format!("{}-{}", std::process::id(), port);
        let mut command = Command::new(env!("CARGO_BIN_EXE_rust-app"));
        command
            .arg("serve")
            .env("APP_HOST", "127.0.0.1")
            .env("APP_PORT", port.to_string())
            .env("KAFKA_TOPIC", format!("bench-login-{run}"))
            .env("KAFKA_CONSUMER_GROUP", format!("bench-login-group-{run}"))
            .env("RATE_LIMIT_RPS", "1000000")
            .env("RATE_LIMIT_BURST", "1000000")
            .env("LOGIN_RATE_LIMIT", "10000")
            .env("LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for pair in std::env::var("BENCH_ENV").unwrap_or_default().split(',').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').expect("BENCH_ENV entries are NAME=value");
            command.env(name, value);
        }
        Server { child: command.spawn().expect("rust-app starts") }
    }

    fn memory(&self) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc status"))
        };
        Memory { rss_kib: field("VmRSS:"), hwm_kib: field("VmHWM:") }
    }

    fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|raw| raw.parse().ok()).unwrap_or(default)
}
