//! Login sessions, rate limits and client attribution over HTTP against the real stack.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, unique};

const PASSWORD: &str = "correct horse battery";

fn login_body(email: &str, password: &str) -> Value {
    json!({"email": email, "password": password})
}

/// A made-up client address (TEST-NET-2) of this test's own, so its rate-limit bucket is fresh.
fn client_address() -> String {
    let n = unique("ip").bytes().fold(0u32, |acc, b| acc.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!("198.51.{}.{}", (n >> 8) % 256, n % 256)
}

async fn login(app: &TestApp, client: &reqwest::Client, email: &str, password: &str) -> reqwest::Response {
    client.post(format!("{}/sessions", app.address)).json(&login_body(email, password)).send().await.expect("sent")
}

fn cookie_client() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).build().expect("client")
}

#[tokio::test]
async fn login_sets_an_http_only_lax_cookie_and_me_follows_it_until_logout() {
    let app = spawn_app(&[]).await;
    let user = app.create_user("login").await;
    let email = user["email"].as_str().expect("email").to_uppercase();
    let client = cookie_client();

    let response = login(&app, &client, &email, PASSWORD).await;
    assert_eq!(response.status(), 201);
    let cookie = response.headers()["set-cookie"].to_str().expect("ascii").to_string();
    for part in ["rust_app_session=", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(part), "{cookie} lacks {part}");
    }
    assert!(!cookie.contains("Secure"), "not Secure unless SESSION_COOKIE_SECURE is set");
    assert_eq!(response.headers()["ratelimit-limit"], "5");

    let me = client.get(format!("{}/me", app.address)).send().await.expect("sent");
    assert_eq!(me.status(), 200);
    assert_eq!(me.json::<Value>().await.expect("JSON")["id"], user["id"]);

    let logout = client.delete(format!("{}/sessions", app.address)).send().await.expect("sent");
    assert_eq!(logout.status(), 204);
    let me = client.get(format!("{}/me", app.address)).send().await.expect("sent");
    assert_eq!(me.status(), 401);
    assert_eq!(me.json::<Value>().await.expect("JSON")["code"], "unauthenticated");
}

#[tokio::test]
async fn a_stolen_cookie_stops_working_at_logout_and_junk_cookies_are_401() {
    let app = spawn_app(&[("SESSION_COOKIE_SECURE", "true")]).await;
    let user = app.create_user("logout").await;
    let response = login(&app, &app.client, user["email"].as_str().expect("email"), PASSWORD).await;
    let cookie = response.headers()["set-cookie"].to_str().expect("ascii").to_string();
    assert!(cookie.contains("Secure"));
    let pair = cookie.split(';').next().expect("name=value").to_string();
    let me = |pair: String| {
        let request = app.client.get(format!("{}/me", app.address)).header("cookie", pair);
        async move { request.send().await.expect("sent").status() }
    };
    assert_eq!(me(pair.clone()).await, 200);
    let logout = app.client.delete(format!("{}/sessions", app.address)).header("cookie", &pair).send().await;
    assert_eq!(logout.expect("sent").status(), 204);
    assert_eq!(me(pair).await, 401, "the session is gone server-side, not just the cookie");
    assert_eq!(me("rust_app_session=junk".into()).await, 401);
    assert_eq!(me(format!("rust_app_session={}", "a".repeat(64))).await, 401);
}

#[tokio::test]
async fn wrong_password_and_unknown_email_are_the_same_401() {
    let app = spawn_app(&[]).await;
    let user = app.create_user("guarded").await;
    let wrong = login(&app, &app.client, user["email"].as_str().expect("email"), "wrong password").await;
    let unknown = login(&app, &app.client, &format!("{}@example.com", unique("nobody")), PASSWORD).await;
    for response in [wrong, unknown] {
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["code"], "invalid-credentials");
    }
    let missing = app.post_json("/sessions", &json!({"email": "x@example.com"})).await;
    assert_eq!(missing.status(), 422);
}

#[tokio::test]
async fn login_brute_force_is_limited_per_account_with_rate_limit_headers() {
    let app = spawn_app(&[("LOGIN_RATE_LIMIT", "3")]).await;
    let user = app.create_user("target").await;
    let email = user["email"].as_str().expect("email");
    for attempt in 1..=3 {
        let response = login(&app, &app.client, email, "guess").await;
        assert_eq!(response.status(), 401, "attempt {attempt}");
        assert_eq!(response.headers()["ratelimit-remaining"], (3 - attempt).to_string().as_str());
    }
    let refused = login(&app, &app.client, email, PASSWORD).await;
    assert_eq!(refused.status(), 429, "even the right password is refused once limited");
    let headers = refused.headers().clone();
    assert_eq!(headers["ratelimit-limit"], "3");
    assert_eq!(headers["ratelimit-remaining"], "0");
    let retry_after: u64 = headers["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(headers.contains_key("ratelimit-reset"));
    assert_eq!(refused.json::<Value>().await.expect("JSON")["code"], "rate-limited");

    let other = app.create_user("bystander").await;
    let response = login(&app, &app.client, other["email"].as_str().expect("email"), PASSWORD).await;
    assert_eq!(response.status(), 201, "another account from the same address is not locked out");
}

#[tokio::test]
async fn every_api_route_is_limited_per_client_address_but_probes_are_not() {
    // GET /users is for admins. The admin signs up through an app with the usual limits: this app's tiny limit
    // would otherwise apply to the signing up's requests from 127.0.0.1, whose budget every other test shares.
    // Sessions live in the shared Redis, so the admin's session is good on this app too.
    let admin = spawn_app(&[]).await.sign_up_admin().await;
    let app =
        spawn_app(&[("RATE_LIMIT_RPS", "1"), ("RATE_LIMIT_BURST", "3"), ("HTTP_TRUSTED_PROXIES", "127.0.0.1")]).await;
    let client = client_address();
    let get = |path: &'static str, client: String| {
        let request = app.request_as(Some(&admin), Method::GET, path).header("x-forwarded-for", client);
        async move { request.send().await.expect("sent") }
    };
    for _ in 0..3 {
        let response = get("/users?limit=1", client.clone()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-limit"], "3");
    }
    let refused = get("/users?limit=1", client.clone()).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    assert_eq!(get("/openapi.json", client.clone()).await.status(), 429, "every API route shares the limit");
    assert_eq!(get("/livez", client.clone()).await.status(), 200, "probes are never limited");
    assert_eq!(get("/metrics", client.clone()).await.status(), 200, "scrapes are never limited");
    assert_eq!(get("/users?limit=1", client_address()).await.status(), 200, "another client has its own budget");
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    // Without trusted proxies every request here comes from 127.0.0.1, whatever the header says: forging it
    // does not buy a fresh budget. This app's limit is tiny, and its Redis prefix is shared with the other
    // tests' 127.0.0.1 bucket, so the test uses its own login account limit instead of the per-IP one.
    let app = spawn_app(&[("LOGIN_RATE_LIMIT", "2")]).await;
    let email = format!("{}@example.com", unique("forger"));
    for _ in 0..2 {
        let request = app.client.post(format!("{}/sessions", app.address)).json(&login_body(&email, "x"));
        let response = request.header("x-forwarded-for", client_address()).send().await.expect("sent");
        assert_eq!(response.status(), 401);
    }
    let request = app.client.post(format!("{}/sessions", app.address)).json(&login_body(&email, "x"));
    let response = request.header("x-forwarded-for", client_address()).send().await.expect("sent");
    assert_eq!(response.status(), 429, "a forged X-Forwarded-For did not make a new client");
}

#[tokio::test]
async fn passwords_and_session_ids_never_reach_the_logs() {
    use crate::helpers::ServeProcess;
    let serve = ServeProcess::start(&[("LOG_LEVEL", "trace")]).await;
    let client = reqwest::Client::new();
    let email = format!("{}@example.com", unique("secretive"));
    let password = "hunter2-but-longer";
    let body = json!({"name": "Secretive", "email": email, "password": password});
    let created = client.post(format!("{}/users", serve.address)).json(&body).send().await.expect("sent");
    assert_eq!(created.status(), 201);
    let login = client.post(format!("{}/sessions", serve.address)).json(&login_body(&email, password)).send().await;
    let login = login.expect("sent");
    assert_eq!(login.status(), 201);
    let cookie = login.headers()["set-cookie"].to_str().expect("ascii").to_string();
    let pair = cookie.split(';').next().expect("pair").to_string();
    let session_id = pair.split_once('=').expect("name=value").1.to_string();
    assert_eq!(session_id.len(), 64);
    let me = client.get(format!("{}/me", serve.address)).header("cookie", &pair).send().await.expect("sent");
    assert_eq!(me.status(), 200);
    let logout = client.delete(format!("{}/sessions", serve.address)).header("cookie", &pair).send().await;
    assert_eq!(logout.expect("sent").status(), 204);

    let output = serve.stop().await;
    assert!(output.contains("/sessions"), "the requests were logged at all:\n{output}");
    assert!(!output.contains(password), "a password leaked into the logs");
    assert!(!output.contains(&session_id), "a session id leaked into the logs");
    assert!(!output.contains("$argon2"), "a password hash leaked into the logs");
}
