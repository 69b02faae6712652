//! Health endpoints against the real stack, and against dependencies that are stopped, closed or hanging.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{BlackHole, RedisServer, free_port, spawn_app};

fn status_of(body: &Value) -> &str {
    body["status"].as_str().unwrap_or("missing")
}

#[tokio::test]
async fn everything_up_against_the_local_stack() {
    let app = spawn_app(&[]).await;
    // The event topic is created in the background at start; Kafka turns up once it exists.
    let (status, body) = app.eventually("/health", Duration::from_secs(15), |_, b| status_of(b) == "up").await;
    assert_eq!((status, status_of(&body)), (200, "up"), "{body:#}");
    for component in ["postgres", "redis", "kafka"] {
        let c = &body["components"][component];
        assert_eq!(c["status"], "up", "{component}: {c}");
        assert!(c["latency_ms"].as_f64().is_some(), "{component} has a latency");
        assert!(c["details"]["address"].is_string(), "{component} shows where it connects: {c}");
    }
    assert_eq!(body["components"]["kafka"]["details"]["partitions"], 3);

    for component in ["postgres", "redis", "kafka"] {
        let (status, body) = app.get_json(&format!("/health/{component}")).await;
        assert_eq!((status, status_of(&body)), (200, "up"), "{component}: {body}");
        assert_eq!(body["component"], component);
    }
    assert_eq!(app.get_json("/livez").await, (200, serde_json::json!({"status": "up"})));
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!((status, status_of(&body)), (200, "up"), "{body}");

    // The service's consumer joins its group and owns every partition of its topic.
    let member =
        |_: u16, b: &Value| b["details"]["consumer"]["assigned_partitions"].as_array().is_some_and(|p| p.len() == 3);
    let (_, body) = app.eventually("/health/kafka", Duration::from_secs(30), member).await;
    let consumer = &body["details"]["consumer"];
    assert_eq!(consumer["member"], true, "{body:#}");
    assert_eq!(consumer["assigned_partitions"], serde_json::json!([0, 1, 2]), "{body:#}");
    assert_eq!(consumer["total_lag"], 0, "{body:#}");
    app.stop().await;
}

#[tokio::test]
async fn unknown_component_and_unknown_route_are_problem_json_404s() {
    let app = spawn_app(&[]).await;
    for path in ["/health/mysql", "/nope"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["status"], 404);
        assert!(body["code"].is_string() && body["title"].is_string(), "{body}");
    }
    let response = app.client.post(format!("{}/health", app.address)).send().await.expect("sent");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    app.stop().await;
}

#[tokio::test]
async fn redis_stopped_degrades_the_service_but_it_stays_ready() {
    let mut redis = RedisServer::start();
    let addr = redis.addr();
    let app = spawn_app(&[("REDIS_ADDR", &addr), ("HEALTH_CACHE_TTL", "0")]).await;
    let (status, body) = app.get_json("/health/redis").await;
    assert_eq!((status, status_of(&body)), (200, "up"), "{body}");

    redis.kill();
    let (status, body) = app.get_json("/health/redis").await;
    assert_eq!((status, status_of(&body)), (503, "down"), "{body}");
    let error = body["error"].as_str().expect("an error message");
    assert!(error.starts_with(&addr), "names the address: {error}");

    let (status, body) = app.get_json("/health").await;
    assert_eq!((status, status_of(&body)), (200, "degraded"), "{body:#}");
    assert_eq!(body["components"]["redis"]["status"], "down");
    assert_eq!(body["components"]["postgres"]["status"], "up");
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!((status, status_of(&body)), (200, "up"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn postgres_unreachable_makes_the_service_down_and_not_ready() {
    let dsn = format!("postgres://rust_app_user:rust_app_password@127.0.0.1:{}/rust_app?sslmode=disable", free_port());
    let app =
        spawn_app(&[("POSTGRES_DSN", &dsn), ("HEALTH_CHECK_TIMEOUT", "1s"), ("POSTGRES_MIGRATE_ON_START", "false")])
            .await;
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!((status, status_of(&body)), (503, "down"), "{body}");
    assert!(body["components"]["postgres"]["error"].is_string(), "{body}");
    let (status, body) = app.get_json("/health").await;
    assert_eq!((status, status_of(&body)), (503, "down"), "{body}");
    assert!(!body.to_string().contains("rust_app_password"), "no password in health output: {body}");
    assert_eq!(app.get("/livez").await.status(), 200, "liveness never depends on dependencies");
    app.stop().await;
}

#[tokio::test]
async fn a_check_that_hangs_is_cut_at_its_timeout_and_reported_down() {
    let hole = BlackHole::start().await;
    let app = spawn_app(&[("REDIS_ADDR", &hole.addr.to_string()), ("HEALTH_CHECK_TIMEOUT", "500ms")]).await;
    let started = std::time::Instant::now();
    let (status, body) = app.get_json("/health/redis").await;
    let elapsed = started.elapsed();
    assert_eq!((status, status_of(&body)), (503, "down"), "{body}");
    assert_eq!(body["error"], "check timed out after 500ms");
    // Correctness bound, not a performance assertion: without the cut the request would wait for the
    // 5 s dial timeout.
    assert!(elapsed < Duration::from_secs(4), "cut at the timeout, took {elapsed:?}");
    app.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_health_requests_run_one_check_per_component_per_interval() {
    let redis = RedisServer::start();
    let app =
        spawn_app(&[("REDIS_ADDR", &redis.addr()), ("HEALTH_CACHE_TTL", "60s"), ("REDIS_MIN_IDLE_CONNS", "0")]).await;
    let pings_before = redis.calls("ping");
    let responses = futures::future::join_all((0..50).map(|_| app.get_json("/health/redis"))).await;
    assert!(responses.iter().all(|(status, _)| *status == 200), "{responses:?}");
    let responses = futures::future::join_all((0..50).map(|_| app.get_json("/health"))).await;
    assert!(responses.iter().all(|(status, _)| *status == 200), "{responses:?}");
    assert_eq!(redis.calls("ping") - pings_before, 1, "one PING for 100 probes within one cache interval");
    app.stop().await;
}
