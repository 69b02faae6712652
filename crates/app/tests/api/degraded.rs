//! The users API when a dependency is down: Redis (optional) degrades reads to PostgreSQL; PostgreSQL
//! (required) gives a quick 503 with Retry-After, never a hang. Each test runs its own private server.

use std::time::{Duration, Instant};

use app::users::postgres::PostgresUsers;
use app::users::redis::RedisUserCache;
use app::users::{CachedUserRepository, UserId, UserRepository};
use infra::config::Sources;
use infra::postgres::PostgresClient;
use infra::redis::RedisClient;
use infra::settings::Config;
use reqwest::Method;
use serde_json::{Value, json};
use test_support::fakes::RedisServer;
use test_support::postgres::PrivatePostgres;

use crate::helpers::{spawn_admin_app, spawn_app, unique};

/// How long the cache below the HTTP layer keeps a user (any: it is read once Redis is gone).
const CACHE_TTL: Duration = Duration::from_secs(60);

#[tokio::test]
async fn with_redis_stopped_a_user_is_still_read_from_postgresql() {
    let mut redis = RedisServer::start();
    let redis_addr = redis.addr();
    let env = [("REDIS_ADDR", redis_addr.as_str()), ("REDIS_DIAL_TIMEOUT", "1"), ("REDIS_READ_TIMEOUT", "1")];
    let app = spawn_app(&env).await;
    let account = app.sign_up("redisless").await;
    let path = format!("/users/{}", account.id);
    let read = || async { app.request_as(Some(&account), Method::GET, &path).send().await.expect("sent") };
    assert_eq!(read().await.status(), 200);
    // The users as GET /users/{id} reads them, through the cache in this Redis: every API route that reads a user
    // needs a session, and sessions live only in Redis, so the fallback is watched below the HTTP layer.
    let config = Config::from_sources(&Sources::from_env_pairs(&env)).expect("valid configuration");
    let postgres = PostgresClient::connect_lazy(&config.postgres).expect("PostgreSQL client");
    let cache = RedisUserCache::new(RedisClient::connect_lazy(&config.redis).expect("Redis client"), CACHE_TTL);
    let users = CachedUserRepository::new(PostgresUsers::new(postgres), cache);
    let id: UserId = account.id.parse().expect("user id");

    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let user = users.find(id).await.expect("degraded, not failed");
        assert_eq!(user.map(|user| user.id), Some(id));
        assert!(started.elapsed() < Duration::from_secs(10), "bounded by the Redis timeouts");
    }
    // Over HTTP the session cannot be checked: a quick 503 to retry, never a 401 that would sign the client out.
    for _ in 0..3 {
        let started = Instant::now();
        let response = read().await;
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["code"], "dependency-unavailable", "{body}");
        assert!(started.elapsed() < Duration::from_secs(10), "bounded by the Redis timeouts");
    }
    // What needs only PostgreSQL is still served: the rate limiter lets requests through without Redis.
    app.create_user("registered without Redis").await;
    let (_, health) = app.get_json("/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
}

#[tokio::test]
async fn with_postgresql_stopped_requests_get_a_503_with_retry_after_quickly() {
    let postgres = PrivatePostgres::start(&[], None);
    let dsn = postgres.dsn("");
    let app = spawn_admin_app(&[
        ("POSTGRES_DSN", &dsn),
        ("POSTGRES_ACQUIRE_TIMEOUT", "2"),
        ("POSTGRES_CONNECT_TIMEOUT", "1"),
    ])
    .await;
    let user = app.create_user("stranded").await;
    // The admin's own record is now cached: the read below reaches the handler's lookup, not just the caller's.
    let (status, _) = app.get_json(&format!("/users/{}", user["id"].as_str().expect("id"))).await;
    assert_eq!(status, 200);
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
