//! The PostgreSQL layer against real servers: the shared stack (a fresh database per test) and private
//! servers for restarts and outages.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use infra::config::Sources;
use infra::health::HealthCheck;
use infra::postgres::{Isolation, PostgresClient, PostgresConfig, PostgresError, PostgresHealth, RetryPolicy, sql};
use infra::resilience::BreakerState;
use infra::settings::Config;
use test_support::postgres::{PrivatePostgres, TestDb};
use test_support::{CapturedLogs, eventually};

/// PostgreSQL settings with `POSTGRES_DSN = dsn` and `overrides`, validated like the service does.
fn config(dsn: &str, overrides: &[(&str, &str)]) -> PostgresConfig {
    let env: Vec<(&str, &str)> = [("POSTGRES_DSN", dsn)].into_iter().chain(overrides.iter().copied()).collect();
    Config::from_sources(&Sources::from_env_pairs(&env)).expect("valid test configuration").postgres
}

fn client(db: &TestDb, overrides: &[(&str, &str)]) -> PostgresClient {
    PostgresClient::connect_lazy(&config(&db.dsn(), overrides)).expect("client")
}

async fn people_table(client: &PostgresClient) {
    client.exec(sql("CREATE TABLE people (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL)")).await.expect("create table");
}

#[tokio::test]
async fn exec_and_queries_return_typed_rows() {
    let db = TestDb::create();
    let pg = client(&db, &[]);
    people_table(&pg).await;
    let inserted =
        pg.exec(sql("INSERT INTO people (name) VALUES ($1), ($2)").bind("Ada").bind("Grace")).await.expect("insert");
    assert_eq!(inserted, 2);
    let names: Vec<(String,)> = pg.query(sql("SELECT name FROM people ORDER BY name")).await.expect("query");
    assert_eq!(names, [("Ada".to_string(),), ("Grace".to_string(),)]);
    let (id, name): (i64, String) =
        pg.query_one(sql("SELECT id, name FROM people WHERE name = $1").bind("Grace")).await.expect("one");
    assert!(id > 0 && name == "Grace");
    let missing: Option<(i64,)> =
        pg.query_optional(sql("SELECT id FROM people WHERE name = $1").bind("Linus")).await.expect("optional");
    assert_eq!(missing, None);
    let err =
        pg.query_one::<(i64,)>(sql("SELECT id FROM people WHERE name = $1").bind("Linus")).await.expect_err("none");
    assert!(matches!(err, PostgresError::NotFound), "{err:?}");
    pg.close().await;
}

#[tokio::test]
async fn an_injection_string_passed_as_a_parameter_is_stored_as_data() {
    let db = TestDb::create();
    let pg = client(&db, &[]);
    people_table(&pg).await;
    let evil = "Robert'); DROP TABLE people; --";
    pg.exec(sql("INSERT INTO people (name) VALUES ($1)").bind(evil)).await.expect("insert");
    let (stored,): (String,) = pg.query_one(sql("SELECT name FROM people")).await.expect("table still there");
    assert_eq!(stored, evil);
    pg.close().await;
}

#[tokio::test]
async fn constraint_violations_carry_their_sqlstate_and_constraint() {
    let db = TestDb::create();
    let pg = client(&db, &[]);
    pg.exec(sql("CREATE TABLE emails (email TEXT CONSTRAINT emails_unique UNIQUE)")).await.expect("create");
    pg.exec(sql("INSERT INTO emails VALUES ($1)").bind("a@example.com")).await.expect("first");
    let err = pg.exec(sql("INSERT INTO emails VALUES ($1)").bind("a@example.com")).await.expect_err("duplicate");
    assert!(err.is_unique_violation(), "{err:?}");
    match err {
        PostgresError::Database { constraint, message, .. } => {
            assert_eq!(constraint.as_deref(), Some("emails_unique"));
            assert!(!message.contains("a@example.com"), "row data stays out of the message: {message}");
        }
        other => panic!("{other:?}"),
    }
    pg.close().await;
}

#[tokio::test]
async fn commit_persists_rollback_and_drop_discard() {
    let db = TestDb::create();
    let pg = client(&db, &[]);
    people_table(&pg).await;

    let mut tx = pg.begin().await.expect("begin");
    tx.exec(sql("INSERT INTO people (name) VALUES ($1)").bind("committed")).await.expect("insert");
    tx.commit().await.expect("commit");

    let mut tx = pg.begin().await.expect("begin");
    tx.exec(sql("INSERT INTO people (name) VALUES ($1)").bind("rolled back")).await.expect("insert");
    let failed = tx.exec(sql("INSERT INTO people (id, name) VALUES (NULL, 'x')")).await;
    assert!(failed.is_err(), "a failing statement");
    tx.rollback().await.expect("rollback");

    {
        let mut tx = pg.begin().await.expect("begin");
        tx.exec(sql("INSERT INTO people (name) VALUES ($1)").bind("dropped")).await.expect("insert");
        let seen: Vec<(String,)> = tx.query(sql("SELECT name FROM people ORDER BY id")).await.expect("inside");
        assert_eq!(seen.len(), 2, "the transaction sees its own row");
    } // dropped without commit

    let names: Vec<(String,)> = pg.query(sql("SELECT name FROM people ORDER BY id")).await.expect("query");
    assert_eq!(names, [("committed".to_string(),)]);
    pg.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transaction_helper_retries_a_real_serialization_conflict() {
    let db = TestDb::create();
    let pg = client(&db, &[]);
    pg.exec(sql("CREATE TABLE doctors (name TEXT PRIMARY KEY, on_call BOOLEAN NOT NULL)")).await.expect("create");
    pg.exec(sql("INSERT INTO doctors VALUES ('alice', true), ('bob', true)")).await.expect("seed");

    // Classic write skew: each transaction checks that another doctor is on call, then goes off call.
    // Under SERIALIZABLE one of them must fail with 40001 the first time; the helper retries it, and the
    // retry sees the other's commit and keeps its doctor on call.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let attempts = Arc::new(AtomicU32::new(0));
    let go_off_call = |name: &'static str| {
        let (pg, barrier, attempts) = (pg.clone(), barrier.clone(), attempts.clone());
        tokio::spawn(async move {
            pg.transaction(Isolation::Serializable, RetryPolicy::default(), move |tx| {
                let (barrier, attempts) = (barrier.clone(), attempts.clone());
                Box::pin(async move {
                    let attempt = attempts.fetch_add(1, Ordering::SeqCst);
                    let (on_call,): (i64,) = tx.query_one(sql("SELECT count(*) FROM doctors WHERE on_call")).await?;
                    if attempt < 2 {
                        barrier.wait().await; // both have read before either writes
                    }
                    if on_call >= 2 {
                        tx.exec(sql("UPDATE doctors SET on_call = false WHERE name = $1").bind(name)).await?;
                    }
                    Ok(on_call)
                })
            })
            .await
        })
    };
    let (a, b) = (go_off_call("alice"), go_off_call("bob"));
    let (a, b) =
        (a.await.expect("task").expect("alice's transaction"), b.await.expect("task").expect("bob's transaction"));
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "two first attempts and one retry");
    assert_eq!((a.min(b), a.max(b)), (1, 2), "the retried transaction saw the other's commit");
    let (on_call,): (i64,) = pg.query_one(sql("SELECT count(*) FROM doctors WHERE on_call")).await.expect("count");
    assert_eq!(on_call, 1, "invariant kept: someone is on call");
    pg.close().await;
}

#[tokio::test]
async fn exhausted_retries_say_how_many_attempts_were_made() {
    let db = TestDb::create();
    let pg = client(&db, &[]);
    let policy =
        RetryPolicy { max_attempts: 3, min_delay: Duration::from_millis(1), max_delay: Duration::from_millis(5) };
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let err = pg
        .transaction(Isolation::ReadCommitted, policy, move |tx| {
            let counted = counted.clone();
            Box::pin(async move {
                counted.fetch_add(1, Ordering::SeqCst);
                // Raise a real serialization failure from the server.
                tx.exec(sql("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$"))
                    .await?;
                Ok(())
            })
        })
        .await
        .expect_err("always conflicts");
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert!(matches!(err, PostgresError::RetriesExhausted { attempts: 3, .. }), "{err:?}");
    assert!(err.to_string().starts_with("transaction failed after 3 attempts"), "{err}");
    pg.close().await;
}

#[tokio::test]
async fn the_statement_timeout_fires_and_is_reported_as_such() {
    let db = TestDb::create();
    let pg = client(&db, &[("POSTGRES_STATEMENT_TIMEOUT", "200ms")]);
    let err = pg.exec(sql("SELECT pg_sleep(5)")).await.expect_err("cancelled");
    assert!(matches!(err, PostgresError::StatementTimeout), "{err:?}");
    assert_eq!(err.sqlstate(), Some("57014"));
    let (setting,): (String,) = pg.query_one(sql("SHOW statement_timeout")).await.expect("show");
    assert_eq!(setting, "200ms", "set on every connection");
    pg.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_server_connections_than_max_open() {
    let db = TestDb::create();
    let max = 3;
    let pg = client(&db, &[("POSTGRES_MAX_OPEN_CONNS", "3"), ("POSTGRES_MAX_IDLE_CONNS", "3")]);
    let queries: Vec<_> = (0..max + 5)
        .map(|_| {
            let pg = pg.clone();
            tokio::spawn(async move { pg.exec(sql("SELECT pg_sleep(0.3)")).await })
        })
        .collect();
    let mut peak = 0;
    for _ in 0..10 {
        peak = peak.max(db.server_connections());
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    for query in queries {
        query.await.expect("task").expect("every query eventually ran");
    }
    assert!(peak >= 1, "the poll saw the queries running");
    assert!(peak <= max, "saw {peak} server connections with POSTGRES_MAX_OPEN_CONNS={max}");
    pg.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_cap_are_closed() {
    let db = TestDb::create();
    let pg = client(&db, &[("POSTGRES_MAX_OPEN_CONNS", "6"), ("POSTGRES_MAX_IDLE_CONNS", "2")]);
    let queries: Vec<_> = (0..6)
        .map(|_| {
            let pg = pg.clone();
            tokio::spawn(async move { pg.exec(sql("SELECT pg_sleep(0.3)")).await })
        })
        .collect();
    for query in queries {
        query.await.expect("task").expect("query");
    }
    let settled =
        eventually(Duration::from_secs(5), async || pg.pool_stats().idle <= 2 && db.server_connections() <= 2).await;
    assert!(settled, "idle {:?}, server connections {}", pg.pool_stats(), db.server_connections());
    assert_eq!(pg.pool_stats().idle, 2, "up to the cap is kept");
    pg.close().await;
}

#[tokio::test]
async fn connections_older_than_the_lifetime_are_replaced() {
    let db = TestDb::create();
    let pg = client(&db, &[("POSTGRES_CONN_MAX_LIFETIME", "1s"), ("POSTGRES_MAX_OPEN_CONNS", "1")]);
    let (first,): (i32,) = pg.query_one(sql("SELECT pg_backend_pid()")).await.expect("pid");
    let (again,): (i32,) = pg.query_one(sql("SELECT pg_backend_pid()")).await.expect("pid");
    assert_eq!(first, again, "reused within its lifetime");
    // sqlx closes an expired connection when it is released or when its reaper (every lifetime) finds it idle.
    let replaced = eventually(Duration::from_secs(5), async || {
        let (pid,): (i32,) = pg.query_one(sql("SELECT pg_backend_pid()")).await.expect("pid");
        pid != first
    })
    .await;
    assert!(replaced, "the connection was replaced after its lifetime");
    pg.close().await;
}

#[tokio::test]
async fn the_pool_recovers_by_itself_after_a_server_restart() {
    let server = PrivatePostgres::start(&[], None);
    let pg = PostgresClient::connect_lazy(&config(&server.dsn(""), &[])).expect("client");
    let (before,): (i32,) = pg.query_one(sql("SELECT pg_backend_pid()")).await.expect("before restart");
    server.restart();
    let (after,): (i32,) =
        pg.query_one(sql("SELECT pg_backend_pid()")).await.expect("first query after the restart succeeds");
    assert_ne!(before, after, "a new connection replaced the broken one");
    pg.close().await;
}

#[tokio::test]
async fn an_outage_fails_fast_with_the_cause_and_recovery_is_automatic() {
    let server = PrivatePostgres::start(&[], None);
    let cfg = config(&server.dsn(""), &[("POSTGRES_ACQUIRE_TIMEOUT", "1s"), ("HEALTH_CHECK_TIMEOUT", "5s")]);
    let pg = PostgresClient::connect_lazy(&cfg).expect("client");
    let health = PostgresHealth::new(pg.clone());
    pg.exec(sql("SELECT 1")).await.expect("up");
    server.stop();

    let first = pg.exec(sql("SELECT 1")).await.expect_err("down");
    let PostgresError::Unavailable { cause, retry_in: None } = &first else { panic!("{first:?}") };
    assert!(cause.contains("refused"), "the real cause, not a pool timeout: {cause}");
    // The breaker is open now: the next call is refused without touching the network.
    let second = pg.exec(sql("SELECT 1")).await.expect_err("still down");
    assert!(
        matches!(&second, PostgresError::Unavailable { retry_in: Some(_), cause } if cause.contains("refused")),
        "{second:?}"
    );
    let down = health.check().await.expect_err("health is down");
    assert!(down.0.contains("unavailable") && down.0.contains("refused"), "{down}");

    server.start_again();
    let recovered = eventually(Duration::from_secs(15), async || pg.exec(sql("SELECT 1")).await.is_ok()).await;
    assert!(recovered, "calls succeed again once the server is back");
    let details = health.check().await.expect("up again");
    assert_eq!(details["address"], pg.address(), "the credential-free address, as Redis and Kafka report it");
    pg.close().await;
}

#[tokio::test]
async fn the_breaker_follows_the_postgres_breaker_settings() {
    let unreachable =
        format!("postgres://rust_app_user:rust_app_password@127.0.0.1:{}/rust_app", test_support::free_port());
    let settings = [("POSTGRES_ACQUIRE_TIMEOUT", "1s"), ("POSTGRES_BREAKER_FAILURES", "2")];
    let pg = PostgresClient::connect_lazy(&config(&unreachable, &settings)).expect("client");
    let refused = |err: &PostgresError| matches!(err, PostgresError::Unavailable { retry_in: Some(_), .. });

    let first = pg.exec(sql("SELECT 1")).await.expect_err("down");
    assert!(!refused(&first), "tried: {first:?}");
    assert_eq!(pg.breaker().state(), BreakerState::Closed, "one failure of the two POSTGRES_BREAKER_FAILURES");
    let second = pg.exec(sql("SELECT 1")).await.expect_err("down");
    assert!(!refused(&second), "tried again: {second:?}");
    assert_eq!(pg.breaker().state(), BreakerState::Open);
    let third = pg.exec(sql("SELECT 1")).await.expect_err("down");
    assert!(refused(&third), "refused at once: {third:?}");
}

#[tokio::test]
async fn passwords_never_reach_logs_errors_spans_or_debug_output() {
    let logs = CapturedLogs::default();
    let _guard = logs.install();
    let secret = "Recognisable-Pa55word";
    let mut shown = Vec::new();

    // Wrong password against the real server.
    let wrong = format!("postgres://rust_app_user:{secret}@127.0.0.1:5432/rust_app?sslmode=disable");
    let cfg = config(&wrong, &[("POSTGRES_ACQUIRE_TIMEOUT", "1s")]);
    shown.push(format!("{cfg:?}"));
    let pg = PostgresClient::connect_lazy(&cfg).expect("client");
    shown.push(format!("{pg:?}"));
    let err = pg.exec(sql("SELECT 1")).await.expect_err("authentication fails");
    assert!(err.to_string().contains("password authentication failed"), "{err}");
    shown.extend([err.to_string(), format!("{err:?}")]);
    shown.push(pg.probe().await.expect_err("probe fails too"));

    // Unreachable host.
    let unreachable = format!("postgres://rust_app_user:{secret}@127.0.0.1:1/rust_app?sslmode=disable");
    let pg =
        PostgresClient::connect_lazy(&config(&unreachable, &[("POSTGRES_ACQUIRE_TIMEOUT", "1s")])).expect("client");
    let err = pg.exec(sql("SELECT 1")).await.expect_err("refused");
    shown.extend([err.to_string(), format!("{err:?}")]);

    // Malformed DSN: rejected by configuration.
    let malformed = format!("postgres://rust_app_user:{secret}@127.0.0.1:99999/rust_app");
    let sources = infra::config::Sources::from_env_pairs(&[("POSTGRES_DSN", &malformed)]);
    let err = infra::settings::Config::from_sources(&sources).expect_err("malformed");
    shown.extend([err.to_string(), format!("{err:?}")]);

    shown.push(logs.text());
    assert!(logs.text().contains("PostgreSQL unavailable"), "the failures were logged");
    for text in shown {
        assert!(!text.contains(secret), "password leaked in: {text}");
    }
}

#[tokio::test]
async fn statements_are_spans_with_database_attributes_and_slow_ones_are_logged() {
    let logs = CapturedLogs::default();
    let _guard = logs.install();
    let db = TestDb::create();
    let pg = client(&db, &[("POSTGRES_SLOW_QUERY_THRESHOLD", "100")]);
    pg.exec(sql("SELECT pg_sleep(0.2), $1::text").bind("bound-value-never-recorded")).await.expect("slow query");
    let text = logs.text();
    let slow =
        text.lines().find(|l| l.contains("\"slow query\"")).unwrap_or_else(|| panic!("no slow-query warning:\n{text}"));
    let event: serde_json::Value = serde_json::from_str(slow).expect("json line");
    assert_eq!(event["level"], "WARN");
    assert_eq!(event["fields"]["db.query.text"], "SELECT pg_sleep(0.2), $1::text");
    let span = &event["span"];
    assert_eq!(span["db.system.name"], "postgresql");
    assert_eq!(span["db.operation.name"], "SELECT");
    assert_eq!(span["db.query.text"], "SELECT pg_sleep(0.2), $1::text");
    assert_eq!(span["db.namespace"], db.name.as_str());
    assert_eq!(span["server.address"], "127.0.0.1");
    assert_eq!(span["otel.name"], format!("SELECT {}", db.name));
    assert!(!text.contains("bound-value-never-recorded"), "bound values are never recorded:\n{text}");
    pg.close().await;
}

#[tokio::test]
async fn sslmode_from_the_dsn_is_honoured_with_rustls() {
    let (server, ca) = PrivatePostgres::start_tls_only();
    let ca = ca.display().to_string();
    let dsn = |host: &str, mode: &str| format!("postgres://postgres@{host}:{}/postgres?sslmode={mode}", server.port);
    let encrypted = async |dsn: String, extra: &[(&str, &str)]| -> Result<bool, PostgresError> {
        let mut overrides = vec![("POSTGRES_ACQUIRE_TIMEOUT", "2s")];
        overrides.extend_from_slice(extra);
        let pg = PostgresClient::connect_lazy(&config(&dsn, &overrides)).expect("client");
        let result = pg.query_one::<(bool,)>(sql("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).await;
        pg.close().await;
        result.map(|(ssl,)| ssl)
    };
    let with_ca = [("POSTGRES_SSL_ROOT_CERT", ca.as_str())];

    assert!(encrypted(dsn("127.0.0.1", "require"), &[]).await.expect("require: encrypted, not verified"));
    assert!(encrypted(dsn("127.0.0.1", "prefer"), &[]).await.expect("prefer: encrypted when offered"));
    assert!(encrypted(dsn("localhost", "verify-full"), &with_ca).await.expect("verify-full with the CA"));
    assert!(encrypted(dsn("127.0.0.1", "verify-ca"), &with_ca).await.expect("verify-ca with the CA"));

    let unknown_ca = encrypted(dsn("localhost", "verify-full"), &[]).await.expect_err("unknown CA refused");
    assert!(unknown_ca.is_unavailable(), "{unknown_ca:?}");
    let plain = encrypted(dsn("127.0.0.1", "disable"), &[]).await.expect_err("server refuses plaintext");
    assert!(plain.to_string().contains("no encryption"), "{plain}");
}
