//! infra::postgres versus raw sqlx: point SELECT by primary key and single-row INSERT, at concurrency 1 and 32.
//!
//! Run: `scripts/stack up && cargo bench -p infra --bench postgres` (BENCH_SECONDS per case, default 10).
//!
//! Method: on a 2-core machine, throughput swings by ±20 % between runs depending on which core the
//! PostgreSQL backend lands on relative to the client, which drowns a 3 % difference if the two sides run one
//! after the other. So the two sides are measured *paired*: both use the same pool (same size, same
//! connections), and every task alternates one raw operation and one infra operation (order swapped each
//! iteration), timing each. A side's ops/s is its operation count divided by its total latency over the
//! concurrency (Little's law), so both sides see the same backends, caches and machine load.
//!
//! Both sides run as in production: the service's JSON log layer at INFO (output discarded) and a Prometheus
//! recorder, so the cost of our spans and metrics is what is measured (BENCH_TELEMETRY=registry: a bare
//! span registry; off: no subscriber).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use infra::config::Sources;
use infra::postgres::{PostgresClient, PostgresConfig, sql};
use infra::settings::Config;
use sqlx::PgPool;
use test_support::postgres::TestDb;

/// PostgreSQL settings with `POSTGRES_DSN = dsn` and `overrides`, validated like the service does.
fn config(dsn: &str, overrides: &[(&str, &str)]) -> PostgresConfig {
    let env: Vec<(&str, &str)> = [("POSTGRES_DSN", dsn)].into_iter().chain(overrides.iter().copied()).collect();
    Config::from_sources(&Sources::from_env_pairs(&env)).expect("valid test configuration").postgres
}

const ROWS: i64 = 10_000;
const POOL_SIZE: &str = "32";

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Select,
    Insert,
}

async fn raw(pool: &PgPool, workload: Workload, n: i64) {
    match workload {
        Workload::Select => {
            let _: (i64, String) = sqlx::query_as("SELECT id, payload FROM items WHERE id = $1")
                .bind(n % ROWS + 1)
                .fetch_one(pool)
                .await
                .expect("raw select");
        }
        Workload::Insert => {
            sqlx::query("INSERT INTO inserted (id, payload) VALUES ($1, $2)")
                .bind(n)
                .bind("payload")
                .execute(pool)
                .await
                .expect("raw insert");
        }
    }
}

async fn infra(client: &PostgresClient, workload: Workload, n: i64) {
    match workload {
        Workload::Select => {
            let _: (i64, String) = client
                .query_one(sql("SELECT id, payload FROM items WHERE id = $1").bind(n % ROWS + 1))
                .await
                .expect("infra select");
        }
        Workload::Insert => {
            client
                .exec(sql("INSERT INTO inserted (id, payload) VALUES ($1, $2)").bind(n).bind("payload"))
                .await
                .expect("infra insert");
        }
    }
}

/// Total (raw, infra) latency and operations per side, over `seconds` with `concurrency` tasks.
async fn paired(
    client: &PostgresClient,
    workload: Workload,
    concurrency: usize,
    seconds: f64,
    ids: &Arc<AtomicI64>,
) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let (client, ids) = (client.clone(), ids.clone());
            tokio::spawn(async move {
                let (mut raw_time, mut infra_time, mut ops) = (Duration::ZERO, Duration::ZERO, 0u64);
                while Instant::now() < deadline {
                    let raw_first = (ops + task as u64).is_multiple_of(2);
                    for side in if raw_first { [0, 1] } else { [1, 0] } {
                        let n = ids.fetch_add(1, Ordering::Relaxed);
                        let started = Instant::now();
                        if side == 0 {
                            raw(client.pool(), workload, n).await;
                            raw_time += started.elapsed();
                        } else {
                            infra(&client, workload, n).await;
                            infra_time += started.elapsed();
                        }
                    }
                    ops += 1;
                }
                (raw_time, infra_time, ops)
            })
        })
        .collect();
    common::paired_rates(tasks, concurrency).await
}

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10.0);
    let telemetry = common::install_subscriber();
    common::install_recorder();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let db = TestDb::create();
        let cfg = config(&db.dsn(), &[("POSTGRES_MAX_OPEN_CONNS", POOL_SIZE), ("POSTGRES_MAX_IDLE_CONNS", POOL_SIZE)]);
        let client = PostgresClient::connect_lazy(&cfg).expect("infra client");
        for ddl in [
            "CREATE TABLE items (id BIGINT PRIMARY KEY, payload TEXT NOT NULL)",
            "CREATE TABLE inserted (id BIGINT PRIMARY KEY, payload TEXT NOT NULL)",
            "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 10000) g",
        ] {
            client.exec(sql(ddl)).await.expect("setup");
        }
        let ids = Arc::new(AtomicI64::new(1));
        println!("PostgreSQL: infra::postgres vs raw sqlx, one pool of {POOL_SIZE}, paired, {seconds}s per case, telemetry {telemetry}");
        println!("{:<8} {:>11} {:>14} {:>18} {:>7}", "workload", "concurrency", "raw ops/s", "infra ops/s", "ratio");
        for (workload, name) in [(Workload::Select, "SELECT"), (Workload::Insert, "INSERT")] {
            for concurrency in [1, 32] {
                paired(&client, workload, concurrency, 0.5, &ids).await; // warm-up
                let (raw_ops, infra_ops) = paired(&client, workload, concurrency, seconds, &ids).await;
                println!("{name:<8} {concurrency:>11} {raw_ops:>14.0} {infra_ops:>18.0} {:>7.3}", infra_ops / raw_ops);
            }
        }
        client.close().await;
    });
}
