//! The users API when a dependency is down: Redis (optional) degrades reads to PostgreSQL; PostgreSQL
//! (required) gives a quick 503 with Retry-After, never a hang. Each test runs its own private server.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::fakes::RedisServer;
use test_support::postgres::PrivatePostgres;

use crate::helpers::{spawn_app, unique};

#[tokio::test]
async fn with_redis_stopped_a_user_is_still_read_from_postgresql() {
    let mut redis = RedisServer::start();
    let app =
        spawn_app(&[("REDIS_ADDR", &redis.addr()), ("REDIS_DIAL_TIMEOUT", "1"), ("REDIS_READ_TIMEOUT", "1")]).await;
    let user = app.create_user("redisless").await;
    let path = format!("/users/{}", user["id"].as_str().expect("id"));
    assert_eq!(app.get_json(&path).await.0, 200);

    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = app.get_json(&path).await;
        assert_eq!(status, 200, "degraded, not failed: {body}");
        assert_eq!(body["id"], user["id"]);
        assert!(started.elapsed() < Duration::from_secs(10), "bounded by the Redis timeouts");
    }
    let (_, health) = app.get_json("/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
}

#[tokio::test]
async fn with_postgresql_stopped_requests_get_a_503_with_retry_after_quickly() {
    let postgres = PrivatePostgres::start(&[], None);
    let dsn = postgres.dsn("");
    let app =
        spawn_app(&[("POSTGRES_DSN", &dsn), ("POSTGRES_ACQUIRE_TIMEOUT", "2"), ("POSTGRES_CONNECT_TIMEOUT", "1")])
            .await;
    let user = app.create_user("stranded").await;
    postgres.stop();

    let uncached = format!("/users/{}", uuid::Uuid::now_v7());
    let create = json!({"name": "Late", "email": format!("{}@example.com", unique("late")), "password": "correct horse battery"});
    for attempt in 0..2 {
        let started = Instant::now();
        let responses = [app.post_json("/users", &create).await, app.get(&uncached).await];
        for response in responses {
            assert_eq!(response.status(), 503, "attempt {attempt}");
            assert!(response.headers().contains_key("retry-after"));
            assert_eq!(response.headers()["content-type"], "application/problem+json");
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(body["code"], "dependency-unavailable");
            assert!(!body.to_string().contains(&postgres.port.to_string()), "no internals: {body}");
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no hang: {:?}", started.elapsed());
    }
    let (status, _) = app.get_json("/readyz").await;
    assert_eq!(status, 503);
    drop(user);
}
