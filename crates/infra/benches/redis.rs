//! infra::redis versus raw redis-rs (one multiplexed connection): GET and SET at concurrency 1 and 64.
//!
//! Run: `scripts/stack up && cargo bench -p infra --bench redis` (BENCH_SECONDS per case, default 10).
//!
//! Method (as in benches/postgres.rs): the two sides are measured paired — every task alternates one raw and
//! one infra operation (order swapped each iteration) and times each; a side's ops/s is its operation count
//! over its total latency divided by the concurrency. Both sides run with the service's JSON log layer and a
//! Prometheus recorder installed. redis-benchmark's figures for the same server are printed for scale.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use infra::config::Sources;
use infra::redis::RedisClient;
use infra::settings::Config;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

const ADDR: &str = "127.0.0.1:6379";

#[derive(Clone, Copy)]
enum Op {
    Get,
    Set,
}

async fn raw(conn: &mut MultiplexedConnection, op: Op, key: &str) {
    match op {
        Op::Get => {
            let _: Option<String> = conn.get(key).await.expect("raw GET");
        }
        Op::Set => {
            let _: () = conn.set(key, "value").await.expect("raw SET");
        }
    }
}

async fn infra(client: &RedisClient, op: Op, key: &str) {
    match op {
        Op::Get => {
            let _: Option<String> = client.get(key).await.expect("infra GET");
        }
        Op::Set => client.set(key, "value", Duration::ZERO).await.expect("infra SET"),
    }
}

async fn paired(
    client: &RedisClient,
    conn: &MultiplexedConnection,
    op: Op,
    concurrency: usize,
    seconds: f64,
) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let (client, mut conn, counter) = (client.clone(), conn.clone(), counter.clone());
            tokio::spawn(async move {
                let (mut raw_time, mut infra_time, mut ops) = (Duration::ZERO, Duration::ZERO, 0u64);
                while Instant::now() < deadline {
                    let key = format!("bench:{}", counter.fetch_add(1, Ordering::Relaxed) % 1000);
                    let raw_first = (ops + task as u64).is_multiple_of(2);
                    for side in if raw_first { [0, 1] } else { [1, 0] } {
                        let started = Instant::now();
                        if side == 0 {
                            raw(&mut conn, op, &key).await;
                            raw_time += started.elapsed();
                        } else {
                            infra(&client, op, &key).await;
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

fn redis_benchmark(clients: usize) -> String {
    let output = std::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", "6379", "-t", "get,set", "-n", "100000", "-q", "-c", &clients.to_string()])
        .output();
    match output {
        Ok(out) => {
            String::from_utf8_lossy(&out.stdout).rsplit('\r').next().unwrap_or_default().trim().replace('\n', "; ")
        }
        Err(err) => format!("redis-benchmark unavailable: {err}"),
    }
}

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10.0);
    // BENCH_TELEMETRY, as in the other benches (default: the service's JSON log layer).
    common::install_subscriber();
    common::install_recorder();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let pool_size = std::env::var("REDIS_POOL_SIZE").unwrap_or_else(|_| "10".into());
        let pairs = [("REDIS_ADDR", ADDR), ("REDIS_POOL_SIZE", pool_size.as_str())];
        let config = Config::from_sources(&Sources::from_env_pairs(&pairs)).expect("config").redis;
        let client = RedisClient::connect_lazy(&config).expect("infra client");
        let raw_client = redis::Client::open(format!("redis://{ADDR}")).expect("raw client");
        let conn = raw_client.get_multiplexed_async_connection().await.expect("raw connection");
        println!("Redis: infra::redis (pool of {}) vs raw redis-rs (one multiplexed connection), paired, {seconds}s per case", config.pool_size);
        println!("{:<4} {:>11} {:>14} {:>18} {:>7}", "op", "concurrency", "raw ops/s", "infra ops/s", "ratio");
        for (op, name) in [(Op::Get, "GET"), (Op::Set, "SET")] {
            for concurrency in [1, 64] {
                paired(&client, &conn, op, concurrency, 0.5).await; // warm-up
                let (raw_ops, infra_ops) = paired(&client, &conn, op, concurrency, seconds).await;
                println!("{name:<4} {concurrency:>11} {raw_ops:>14.0} {infra_ops:>18.0} {:>7.3}", infra_ops / raw_ops);
            }
        }
    });
    for clients in [1, 64] {
        println!("redis-benchmark -c {clients}: {}", redis_benchmark(clients));
    }
}
