//! The command line: configuration errors exit 78 listing every problem; `config` shows sources and masks
//! secrets; one version everywhere; exit codes in `--help`; shell completions; `migrate` and `migrate status`;
//! `dlq replay` progress only on a terminal.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use infra::config::Sources;
use infra::kafka::{KafkaClient, KafkaProducer, dlq};
use infra::settings::Config;
use test_support::postgres::TestDb;
use test_support::unique;

use crate::helpers::{TempDir, binary};

/// The release version, as Cargo.toml's `[workspace.package] version` gives it to every crate.
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|err| panic!("{}: {err}", full.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(args: &[&str], env: &[(&str, &str)], workdir: &TempDir) -> Output {
    binary(env, &workdir.0).args(args).output().expect("run rust-app")
}

#[test]
fn bad_configuration_lists_every_problem_and_exits_78() {
    let workdir = TempDir::new();
    let env = [("POSTGRES_MAX_OPEN_CONNS", "abc"), ("REDIS_POOL_SIZE", "0"), ("KAFKA_SECURITY_PROTOCOL", "bogus")];
    let output = run(&[], &env, &workdir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end(),
        "rust-app: invalid configuration (3 problems):\n  \
         POSTGRES_MAX_OPEN_CONNS=\"abc\" (environment): must be a positive integer\n  \
         REDIS_POOL_SIZE=\"0\" (environment): must be a positive integer\n  \
         KAFKA_SECURITY_PROTOCOL=\"bogus\" (environment): must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
    );
    assert!(output.stdout.is_empty());
    // `config` validates the same way.
    assert_eq!(run(&["config"], &env, &workdir).status.code(), Some(78));
}

#[test]
fn a_bad_dsn_is_reported_with_its_password_masked() {
    let workdir = TempDir::new();
    let env = [("POSTGRES_DSN", "postgres://app:Hunter2-Secret@db:0/app")];
    let output = run(&[], &env, &workdir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78));
    assert!(stderr.contains("POSTGRES_DSN=\"postgres://app:***@db:0/app\""), "{stderr}");
    assert!(!stderr.contains("Hunter2-Secret"), "{stderr}");
}

#[test]
fn config_shows_each_value_with_its_source_and_masks_secrets() {
    let workdir = TempDir::new();
    std::fs::write(workdir.0.join(".env"), "REDIS_DB=3\nAPP_PORT=9100\nREDIS_PASSWORD=Dotenv-Secret\n").expect(".env");
    let env = [("APP_PORT", "9000"), ("POSTGRES_DSN", "postgres://app:Env-Secret@db:5432/app")];
    let output = run(&["config"], &env, &workdir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let row = |name: &str| -> Vec<String> {
        let line = stdout.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default();
        line.split_whitespace().map(String::from).collect()
    };
    assert_eq!(row("APP_PORT"), ["APP_PORT", "9000", "environment"]);
    assert_eq!(row("REDIS_DB"), ["REDIS_DB", "3", ".env"]);
    assert_eq!(row("REDIS_PASSWORD"), ["REDIS_PASSWORD", "***", ".env"]);
    assert_eq!(row("POSTGRES_DSN"), ["POSTGRES_DSN", "postgres://app:***@db:5432/app", "environment"]);
    assert_eq!(row("KAFKA_TOPIC"), ["KAFKA_TOPIC", "rust-app-events", "default"]);
    assert!(!stdout.contains("Secret"), "{stdout}");
}

#[test]
fn one_version_everywhere_binary_default_service_version_and_image_tags() {
    let workdir = TempDir::new();
    let output = run(&["--version"], &[], &workdir);
    assert_eq!(text(&output.stdout), format!("rust-app {VERSION}\n"));

    let output = run(&["config"], &[], &workdir);
    let row = text(&output.stdout).lines().find(|l| l.starts_with("OTEL_SERVICE_VERSION ")).map(String::from);
    let row: Vec<String> = row.unwrap_or_default().split_whitespace().map(String::from).collect();
    assert_eq!(row, ["OTEL_SERVICE_VERSION", VERSION, "default"], "the default service version is the binary's");

    // Every image reference to rust-app, in Compose and in the manifests, carries the version; nothing pins
    // another service version.
    let image = format!("rust-app:{VERSION}");
    let files = ["docker-compose.yml", "deploy/k8s/deployment.yaml", "deploy/k8s/migrate-job.yaml"];
    for file in files.into_iter().chain(["deploy/k8s/configmap.yaml", ".env.example"]) {
        let content = repo_file(file);
        for line in content.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            if let Some(reference) = line.strip_prefix("image: rust-app") {
                assert_eq!(format!("rust-app{reference}"), image, "{file}: {line}");
            }
            if line.starts_with("OTEL_SERVICE_VERSION") {
                assert!(line.ends_with(VERSION), "{file} pins another service version: {line}");
            }
        }
    }
    for file in files {
        assert!(repo_file(file).contains(&format!("image: {image}")), "{file} runs {image}");
    }
    let label = format!("org.opencontainers.image.version=\"{VERSION}\"");
    assert!(repo_file("Dockerfile").contains(&label), "the Dockerfile labels the image {VERSION}");
}

#[test]
fn help_lists_the_exit_codes_the_binary_uses() {
    let workdir = TempDir::new();
    let help = text(&run(&["--help"], &[], &workdir).stdout);
    let codes = help.split_once("Exit codes:").map(|(_, codes)| codes).unwrap_or_else(|| panic!("{help}"));
    for code in ["0", "1", "2", "78"] {
        assert!(codes.lines().any(|l| l.trim_start().starts_with(&format!("{code} "))), "exit code {code}: {codes}");
    }
    // What it says holds: a usage error exits 2 (a bad configuration exits 78: tested above).
    let output = run(&["no-such-command"], &[], &workdir);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
}

#[test]
fn completions_for_bash_zsh_and_fish_need_no_configuration() {
    let workdir = TempDir::new();
    // An invalid configuration does not stop completions (they are generated at install time).
    let env = [("POSTGRES_MAX_OPEN_CONNS", "abc")];
    let expected = [("bash", "complete -F"), ("zsh", "#compdef rust-app"), ("fish", "complete -c rust-app")];
    for (shell, marker) in expected {
        let output = run(&["completions", shell], &env, &workdir);
        let script = text(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{shell}: {}", text(&output.stderr));
        assert!(script.contains(marker), "{shell}: {script}");
        for subcommand in ["serve", "migrate", "dlq", "completions"] {
            assert!(script.contains(subcommand), "{shell} completes {subcommand}");
        }
    }
    // The bash script is valid bash.
    let path = workdir.0.join("rust-app.bash");
    std::fs::write(&path, run(&["completions", "bash"], &[], &workdir).stdout).expect("write");
    let check = std::process::Command::new("bash").arg("-n").arg(&path).output().expect("bash -n");
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert_eq!(run(&["completions", "tcsh"], &[], &workdir).status.code(), Some(2), "unknown shell: usage error");
}

#[test]
fn migrate_prints_each_migration_applied_and_status_lists_applied_and_pending() {
    let db = TestDb::create();
    let workdir = TempDir::new();
    let env = [("POSTGRES_DSN", db.dsn())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let embedded: Vec<(i64, String)> =
        app::migrations::MIGRATOR.iter().map(|m| (m.version, m.description.to_string())).collect();

    let status = run(&["migrate", "status"], &env, &workdir);
    let expected: String = embedded.iter().map(|(v, d)| format!("pending  {v} {d}\n")).collect();
    let summary = format!("0 applied, {} pending\n", embedded.len());
    assert_eq!(text(&status.stdout), format!("{expected}{summary}"), "{}", text(&status.stderr));

    let applied = run(&["migrate"], &env, &workdir);
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied.stderr));
    let expected: String = embedded.iter().map(|(v, d)| format!("applied {v} {d}\n")).collect();
    let summary = format!("{} migration(s) applied\n", embedded.len());
    assert_eq!(text(&applied.stdout), format!("{expected}{summary}"));

    // A version a newer release applied shows as such.
    db.query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99991231000001, 'from a newer release', true, '\\x00', 1)",
    );
    let status = run(&["migrate", "status"], &env, &workdir);
    let expected: String = embedded.iter().map(|(v, d)| format!("applied  {v} {d}\n")).collect();
    let newer = "newer    99991231000001 from a newer release\n";
    let summary = format!("{} applied, 0 pending\n", embedded.len());
    assert_eq!(text(&status.stdout), format!("{expected}{newer}{summary}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_shows_progress_only_on_a_terminal() {
    let topic = unique("replayed");
    let env = [("KAFKA_BROKERS", "127.0.0.1:9092"), ("KAFKA_TOPIC", topic.as_str())];
    let config = Config::from_sources(&Sources::from_env_pairs(&env)).expect("valid").kafka;
    let admin = KafkaClient::connect_lazy(&config).expect("admin");
    for name in [&config.topic, &config.dlq_topic] {
        admin.ensure_topic(name, 1, Duration::from_secs(10)).await.expect("topic");
    }
    let producer = KafkaProducer::connect_lazy(&config).expect("producer");
    for key in ["k1", "k2"] {
        let headers: [(&str, &[u8]); 1] = [(dlq::ORIGINAL_TOPIC, topic.as_bytes())];
        producer.produce(&config.dlq_topic, Some(key.as_bytes()), b"v", &headers).await.expect("dead letter");
    }
    let workdir = TempDir::new();

    // Piped (a log file, CI): no progress line, no carriage returns.
    let piped = run(&["dlq", "replay"], &env, &workdir);
    assert_eq!(piped.status.code(), Some(0), "{}", text(&piped.stderr));
    assert!(text(&piped.stdout).contains("replayed 2 record(s)"), "{}", text(&piped.stdout));
    let (stdout, stderr) = (text(&piped.stdout), text(&piped.stderr));
    assert!(!stdout.contains('\r') && !stderr.contains('\r'), "stdout {stdout:?}, stderr {stderr:?}");

    // On a terminal (a pseudo-terminal from script(1)), the progress line is rewritten in place.
    let command = format!("{} dlq replay", env!("CARGO_BIN_EXE_rust-app"));
    let on_terminal = std::process::Command::new("script")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .current_dir(&workdir.0)
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script(1), from util-linux");
    let shown = text(&on_terminal.stdout);
    assert_eq!(on_terminal.status.code(), Some(0), "{shown}");
    assert!(shown.contains("\rreplayed 2/2"), "progress on a terminal: {shown:?}");
}
