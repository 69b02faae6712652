//! The PostgreSQL layer's metrics, read back from a recorder installed for this test binary alone.

use std::collections::HashMap;

use infra::config::Sources;
use infra::postgres::metrics::names;
use infra::postgres::{Isolation, PostgresClient, PostgresConfig, RetryPolicy, sql};
use infra::resilience::names::BREAKER_STATE;
use infra::settings::Config;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use test_support::postgres::TestDb;

/// PostgreSQL settings with `POSTGRES_DSN = dsn` and `overrides`, validated like the service does.
fn config(dsn: &str, overrides: &[(&str, &str)]) -> PostgresConfig {
    let env: Vec<(&str, &str)> = [("POSTGRES_DSN", dsn)].into_iter().chain(overrides.iter().copied()).collect();
    Config::from_sources(&Sources::from_env_pairs(&env)).expect("valid test configuration").postgres
}

/// (name, sorted labels) → value.
fn read(snapshotter: &Snapshotter) -> HashMap<(String, Vec<(String, String)>), DebugValue> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<(String, String)> =
                key.labels().map(|l| (l.key().to_string(), l.value().to_string())).collect();
            labels.sort();
            ((key.name().to_string(), labels), value)
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn queries_errors_pool_and_retries_are_measured() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("the only recorder of this test binary");

    let db = TestDb::create();
    let pg = PostgresClient::connect_lazy(&config(&db.dsn(), &[("POSTGRES_MAX_OPEN_CONNS", "4")])).expect("client");
    pg.exec(sql("CREATE TABLE t (k TEXT PRIMARY KEY)")).await.expect("create");
    pg.exec(sql("INSERT INTO t VALUES ('a')")).await.expect("insert");
    pg.exec(sql("INSERT INTO t VALUES ('a')")).await.expect_err("duplicate");
    let _: Vec<(String,)> = pg.query(sql("SELECT k FROM t")).await.expect("select");
    let mut first = true;
    pg.transaction(Isolation::ReadCommitted, RetryPolicy::default(), move |tx| {
        let conflict = std::mem::take(&mut first);
        Box::pin(async move {
            if conflict {
                tx.exec(sql("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = 'serialization_failure'; END $$")).await?;
            }
            Ok(())
        })
    })
    .await
    .expect("second attempt succeeds");

    let metrics = read(&snapshotter);
    let histogram_count = |name: &str, l: &[(&str, &str)]| match metrics.get(&(name.to_string(), labels(l))) {
        Some(DebugValue::Histogram(values)) => values.len(),
        other => panic!("{name} {l:?}: {other:?}"),
    };
    assert_eq!(histogram_count(names::QUERY_DURATION, &[("operation", "INSERT"), ("outcome", "ok")]), 1);
    assert_eq!(histogram_count(names::QUERY_DURATION, &[("operation", "INSERT"), ("outcome", "error")]), 1);
    assert_eq!(histogram_count(names::QUERY_DURATION, &[("operation", "SELECT"), ("outcome", "ok")]), 1);
    assert!(histogram_count(names::ACQUIRE_DURATION, &[]) >= 4);
    let value = |name: &str, l: &[(&str, &str)]| metrics.get(&(name.to_string(), labels(l)));
    assert_eq!(value(names::ERRORS, &[("class", "23")]), Some(&DebugValue::Counter(1)), "unique violation");
    assert_eq!(value(names::ERRORS, &[("class", "40")]), Some(&DebugValue::Counter(1)), "serialization failure");
    assert_eq!(value(names::TRANSACTION_RETRIES, &[]), Some(&DebugValue::Counter(1)));
    assert_eq!(value(names::POOL_MAX, &[]), Some(&DebugValue::Gauge(4.0.into())));
    assert_eq!(value(names::POOL_WAITING, &[]), Some(&DebugValue::Gauge(0.0.into())));
    for (state, expected) in [("closed", 1.0), ("open", 0.0), ("half_open", 0.0)] {
        let series = value(BREAKER_STATE, &[("name", "postgres"), ("state", state)]);
        assert_eq!(series, Some(&DebugValue::Gauge(expected.into())), "one series per state, 1 for closed");
    }
    let Some(&DebugValue::Gauge(idle)) = value(names::POOL_CONNECTIONS, &[("state", "idle")]) else {
        panic!("idle gauge")
    };
    let Some(&DebugValue::Gauge(in_use)) = value(names::POOL_CONNECTIONS, &[("state", "in_use")]) else {
        panic!("in-use gauge")
    };
    assert!(idle.0 + in_use.0 >= 1.0 && in_use.0 <= 4.0, "idle {idle} in use {in_use}");
    pg.close().await;
}
