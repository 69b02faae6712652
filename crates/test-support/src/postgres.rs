//! PostgreSQL for tests: a fresh database per test on the shared stack, and private servers for tests that
//! stop or restart one. Plain DSNs only: this crate does not depend on the crates it helps test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{free_port, unique};

const ADMIN_DSN: &str = "postgres://rust_app_user:rust_app_password@127.0.0.1:5432/rust_app?sslmode=disable";

fn psql(dsn: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args([dsn, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql (scripts/stack up installs it)");
    assert!(output.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A database created for one test on the shared server, dropped (with its connections) at the end.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub fn create() -> Self {
        let name = unique("t");
        psql(ADMIN_DSN, &format!("CREATE DATABASE {name}"));
        TestDb { name }
    }

    pub fn dsn(&self) -> String {
        format!("postgres://rust_app_user:rust_app_password@127.0.0.1:5432/{}?sslmode=disable", self.name)
    }

    /// Connections the server has open to this database (seen from another database).
    pub fn server_connections(&self) -> i64 {
        psql(ADMIN_DSN, &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'", self.name))
            .parse()
            .expect("a count")
    }
}

impl TestDb {
    /// Runs SQL in this database outside the code under test; returns psql's unaligned output.
    pub fn query(&self, sql: &str) -> String {
        psql(&self.dsn(), sql)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([ADMIN_DSN, "-X", "-q", "-c", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn pg_bin(tool: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server installed (scripts/stack up)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    versions.last().expect("a PostgreSQL version").join("bin").join(tool)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// `tool` run as the `postgres` user when the tests run as root (PostgreSQL's tools refuse root).
fn as_postgres(tool: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(tool);
        command
    } else {
        Command::new(tool)
    }
}

/// A PostgreSQL server of the test's own on a free port (trust authentication), for tests that stop or
/// restart the server: the shared stack is never touched. Stopped and deleted when dropped.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
}

impl PrivatePostgres {
    /// Initialises and starts a server; `conf` lines are appended to postgresql.conf and `hba` replaces
    /// pg_hba.conf when given.
    pub fn start(conf: &[&str], hba: Option<&str>) -> Self {
        let dir = std::env::temp_dir().join(unique("pgtest"));
        std::fs::create_dir_all(&dir).expect("dir");
        let server = PrivatePostgres { port: free_port(), dir };
        if is_root() {
            Command::new("chown").args(["-R", "postgres:postgres"]).arg(&server.dir).status().expect("chown");
        }
        server.run(
            &pg_bin("initdb"),
            &["-D", &server.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(Path::new(&server.data()).join("postgresql.conf"))
            .expect("conf");
        writeln!(
            file,
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = off",
            server.port,
            server.dir.display()
        )
        .expect("write conf");
        for line in conf {
            writeln!(file, "{line}").expect("write conf");
        }
        if let Some(hba) = hba {
            std::fs::write(Path::new(&server.data()).join("pg_hba.conf"), hba).expect("hba");
        }
        server.start_again();
        server
    }

    /// A server that accepts only TLS connections, with a certificate for `localhost` / 127.0.0.1 signed by a
    /// test CA. Returns the server and the CA certificate's path.
    pub fn start_tls_only() -> (Self, PathBuf) {
        let certs = std::env::temp_dir().join(unique("pgcerts"));
        std::fs::create_dir_all(&certs).expect("dir");
        make_certificates(&certs);
        let cert = certs.join("server.crt").display().to_string();
        let key = certs.join("server.key").display().to_string();
        if is_root() {
            Command::new("chown").args(["-R", "postgres:postgres"]).arg(&certs).status().expect("chown");
        }
        let conf = ["ssl = on".to_string(), format!("ssl_cert_file = '{cert}'"), format!("ssl_key_file = '{key}'")];
        let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
        let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n";
        let server = Self::start(&conf, Some(hba));
        let ca = server.dir.join("ca.pem");
        std::fs::copy(certs.join("ca.pem"), &ca).expect("copy CA");
        let _ = std::fs::remove_dir_all(&certs);
        (server, ca)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn run<S: AsRef<std::ffi::OsStr>>(&self, tool: &Path, args: &[S]) {
        let mut command = as_postgres(tool);
        let output = command.args(args).output().expect("run PostgreSQL tool");
        assert!(output.status.success(), "{tool:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn pg_ctl(&self, args: &[&str]) {
        let log = self.dir.join("log").display().to_string();
        let mut all: Vec<String> = ["-D", &self.data(), "-l", &log, "-w", "-t", "30"].map(String::from).to_vec();
        all.extend(args.iter().map(|a| a.to_string()));
        self.run(&pg_bin("pg_ctl"), &all);
    }

    pub fn dsn(&self, extra: &str) -> String {
        format!("postgres://postgres:not-used@127.0.0.1:{}/postgres?sslmode=disable{extra}", self.port)
    }

    pub fn restart(&self) {
        self.pg_ctl(&["-m", "fast", "restart"]);
    }

    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "stop"]);
    }

    pub fn start_again(&self) {
        self.pg_ctl(&["start"]);
    }

    /// SIGKILL to the postmaster, as an OOM killer or a crash would: no shutdown checkpoint, the next start
    /// recovers from the WAL. Its backends notice and exit on their own.
    pub fn kill9(&self) {
        let pid_file = Path::new(&self.data()).join("postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file).expect("postmaster.pid: the server runs");
        let pid = pid.lines().next().expect("the postmaster's pid").trim().to_string();
        let status = Command::new("kill").args(["-KILL", &pid]).status().expect("kill");
        assert!(status.success(), "kill -KILL {pid}");
    }

    /// Starts the server after [`PrivatePostgres::kill9`]: the killed server's backends may hold its shared memory
    /// for a moment, so the start is retried for up to 30 s.
    pub fn start_after_kill(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let log = self.dir.join("log").display().to_string();
        loop {
            let mut command = as_postgres(&pg_bin("pg_ctl"));
            let args = ["-D", &self.data(), "-l", &log, "-w", "-t", "30", "start"];
            let output = command.args(args).output().expect("pg_ctl");
            if output.status.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "PostgreSQL does not start after a kill: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

/// A CA and a server certificate it signed, for localhost and 127.0.0.1 (openssl's command line).
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=rust-app test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    let key = dir.join("server.key");
    let mut permissions = std::fs::metadata(&key).expect("key").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
    std::fs::set_permissions(&key, permissions).expect("chmod key");
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let log = self.dir.join("log").display().to_string();
        let data = self.data();
        let args = ["-D", data.as_str(), "-l", log.as_str(), "-m", "immediate", "stop"];
        let _ = as_postgres(&pg_bin("pg_ctl")).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
