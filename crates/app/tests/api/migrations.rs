//! Embedded migrations: `rust-app migrate`, concurrent runs, and migrate-on-start.

use std::process::Output;

use test_support::postgres::TestDb;

use crate::helpers::{TempDir, binary, spawn_app};

fn migrate(dsn: &str, workdir: &TempDir) -> std::process::Child {
    binary(&[("POSTGRES_DSN", dsn)], &workdir.0)
        .arg("migrate")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn rust-app migrate")
}

fn finished(child: std::process::Child) -> Output {
    child.wait_with_output().expect("rust-app migrate finishes")
}

fn applied_versions(db: &TestDb) -> Vec<i64> {
    db.query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .lines()
        .map(|line| line.parse().expect("a version"))
        .collect()
}

fn embedded_versions() -> Vec<i64> {
    app::migrations::MIGRATOR.iter().map(|m| m.version).collect()
}

#[test]
fn migrate_applies_the_embedded_migrations_once() {
    let db = TestDb::create();
    let workdir = TempDir::new();
    let first = finished(migrate(&db.dsn(), &workdir));
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(
        String::from_utf8_lossy(&first.stdout).starts_with("applied "),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    assert_eq!(applied_versions(&db), embedded_versions());
    assert_eq!(db.query("SELECT to_regclass('users')::text"), "users");

    let again = finished(migrate(&db.dsn(), &workdir));
    assert!(again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), "database is up to date");
}

#[test]
fn a_database_migrated_by_a_newer_release_still_starts_an_older_one() {
    let db = TestDb::create();
    let workdir = TempDir::new();
    assert!(finished(migrate(&db.dsn(), &workdir)).status.success());
    // What a later release's migration leaves behind: a version this binary does not know.
    db.query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99991231000001, 'from a newer release', true, '\\x00', 1)",
    );
    let output = finished(migrate(&db.dsn(), &workdir));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "database is up to date");
}

#[test]
fn two_instances_migrating_at_once_apply_each_migration_once() {
    let db = TestDb::create();
    let workdir = TempDir::new();
    let (a, b) = (migrate(&db.dsn(), &workdir), migrate(&db.dsn(), &workdir));
    for output in [finished(a), finished(b)] {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(applied_versions(&db), embedded_versions(), "each version recorded once");
    assert_eq!(db.query("SELECT count(*) FROM pg_indexes WHERE tablename = 'users'"), "2", "schema intact");
}

#[test]
fn a_failing_migrate_exits_non_zero_without_showing_the_password() {
    let workdir = TempDir::new();
    let dsn = "postgres://rust_app_user:Wrong-Pa55-Shown-Nowhere@127.0.0.1:5432/rust_app?sslmode=disable";
    let output = binary(&[("POSTGRES_DSN", dsn), ("POSTGRES_ACQUIRE_TIMEOUT", "1s")], &workdir.0)
        .arg("migrate")
        .output()
        .expect("run");
    let all = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(all.contains("password authentication failed"), "{all}");
    assert!(!all.contains("Wrong-Pa55-Shown-Nowhere"), "{all}");
}

#[tokio::test]
async fn serve_applies_migrations_at_start_by_default() {
    let db = TestDb::create();
    let app = spawn_app(&[("POSTGRES_DSN", &db.dsn())]).await;
    assert_eq!(applied_versions(&db), embedded_versions());
    app.stop().await;
}

#[test]
fn migrations_are_not_cut_short_by_the_services_statement_timeout() {
    let db = TestDb::create();
    let workdir = TempDir::new();
    // A statement timeout no migration statement fits in: it is for the service's statements, not for DDL.
    let output = binary(&[("POSTGRES_DSN", &db.dsn()), ("POSTGRES_STATEMENT_TIMEOUT", "1ms")], &workdir.0)
        .arg("migrate")
        .output()
        .expect("run rust-app migrate");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(applied_versions(&db), embedded_versions());
}
