//! The login limits under attack: per account across every address, per IPv6 /64, and closed when Redis is
//! down.

use serde_json::{Value, json};
use test_support::fakes::RedisServer;

use crate::helpers::{PASSWORD, TestApp, spawn_app, unique};

/// A login for `email` as if sent by `client` (through a trusted proxy: the app trusts 127.0.0.1).
async fn login_from(app: &TestApp, client: &str, email: &str, password: &str) -> reqwest::Response {
    let body = json!({"email": email, "password": password});
    let request = reqwest::Client::new().post(format!("{}/sessions", app.address)).json(&body);
    request.header("x-forwarded-for", client).send().await.expect("sent")
}

/// A number of this run's own, so counters left in the shared Redis by other runs are not shared.
fn fresh() -> u32 {
    unique("n").bytes().fold(0u32, |acc, b| acc.wrapping_mul(31).wrapping_add(u32::from(b)))
}

/// A documentation-range IPv4 address.
fn ipv4(n: u32) -> String {
    format!("203.0.{}.{}", (n >> 8) % 256, n % 256)
}

#[tokio::test]
async fn guesses_from_many_addresses_are_limited_per_account() {
    let app = spawn_app(&[
        ("HTTP_TRUSTED_PROXIES", "127.0.0.1"),
        ("LOGIN_RATE_LIMIT", "5"),
        ("LOGIN_ACCOUNT_RATE_LIMIT", "5"),
    ])
    .await;
    // Signing up signs in once: one of the account's five attempts.
    let target = app.sign_up("stuffed").await;
    let base = fresh();
    for n in 0..4 {
        let response = login_from(&app, &ipv4(base + n), &target.email, "wrong guess").await;
        assert_eq!(response.status(), 401, "guess {n} from its own address");
    }
    let refused = login_from(&app, &ipv4(base + 100), &target.email, PASSWORD).await;
    assert_eq!(refused.status(), 429, "a fifth address is refused: the account's budget is spent");
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(refused.json::<Value>().await.expect("JSON")["code"], "rate-limited");

    let bystander = app.sign_up("bystander").await;
    let other = login_from(&app, &ipv4(base + 100), &bystander.email, PASSWORD).await;
    assert_eq!(other.status(), 201, "another account is not affected");
}

#[tokio::test]
async fn addresses_of_one_ipv6_64_share_one_budget() {
    let app = spawn_app(&[("HTTP_TRUSTED_PROXIES", "127.0.0.1"), ("LOGIN_RATE_LIMIT", "2")]).await;
    let email = format!("{}@example.com", unique("v6"));
    // A /64 of the documentation range of the run's own, so other runs' counters are not shared.
    let run = fresh();
    let prefix = format!("2001:db8:{:x}:{:x}", run % 0xffff, (run >> 16) % 0xffff);
    for host in ["::1", "::2"] {
        let response = login_from(&app, &format!("{prefix}{host}"), &email, "guess").await;
        assert_eq!(response.status(), 401);
    }
    let third = login_from(&app, &format!("{prefix}:abcd:ef01:2345:6789"), &email, "guess").await;
    assert_eq!(third.status(), 429, "a third address in the same /64 is the same client");
    let elsewhere = format!("2001:db8:{:x}:ffff::1", run % 0xffff);
    let response = login_from(&app, &elsewhere, &email, "guess").await;
    assert_eq!(response.status(), 401, "another /64 is another client");
}

#[tokio::test]
async fn with_redis_down_logins_fail_closed_with_a_503() {
    let mut redis = RedisServer::start();
    let app = spawn_app(&[
        ("REDIS_ADDR", &redis.addr()),
        ("REDIS_DIAL_TIMEOUT", "1"),
        ("REDIS_READ_TIMEOUT", "1"),
        // Even a service that lets API traffic through without its limiter keeps logins closed.
        ("REDIS_RATE_LIMIT_FAIL_OPEN", "true"),
    ])
    .await;
    let user = app.sign_up("closed").await;
    redis.kill();
    let response = reqwest::Client::new()
        .post(format!("{}/sessions", app.address))
        .json(&json!({"email": user.email, "password": PASSWORD}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 503, "no login without the limiter");
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: Value = response.json().await.expect("JSON");
    // Refused by the limiter before the password was checked, not by the session store after it.
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("login attempts")), "{problem}");
}
