//! The life of a session against the real stack: a new id at every login, every session of a user ended when
//! their password or email changes and when they are deleted, logout everywhere, the absolute lifetime, and the
//! `Authorization: Bearer` form of the session.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Account, PASSWORD, RedisServer, TestApp, expect_problem, spawn_app, unique};

/// The session cookie's name (SESSION_COOKIE_NAME's default).
const COOKIE: &str = "rust_app_session";

/// Signs `email` in with `PASSWORD`, carrying `header` (a cookie or an Authorization header); the new session id.
async fn login_carrying(app: &TestApp, email: &str, header: (&str, String)) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/sessions", app.address))
        .header(header.0, header.1)
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    let cookie = response.headers()["set-cookie"].to_str().expect("ascii");
    let value = cookie.split(';').next().and_then(|pair| pair.strip_prefix(&format!("{COOKIE}=")));
    value.expect("the session cookie").to_string()
}

/// The status of `GET /me` with the session `token` in the cookie.
async fn me_with_cookie(app: &TestApp, token: &str) -> u16 {
    let request =
        reqwest::Client::new().get(format!("{}/me", app.address)).header("cookie", format!("{COOKIE}={token}"));
    request.send().await.expect("sent").status().as_u16()
}

/// PATCHes the account's own user with `body` over its session.
async fn patch_self(app: &TestApp, account: &Account, body: &Value) -> reqwest::Response {
    let path = format!("/users/{}", account.id);
    app.request_as(Some(account), Method::PATCH, &path).json(body).send().await.expect("sent")
}

/// A new account signed in twice, as from two devices: the account (with the first session) and the second
/// session.
async fn signed_in_twice(app: &TestApp, name: &str) -> (Account, String) {
    let account = app.sign_up(name).await;
    let second = app.sign_in(&account.email, PASSWORD).await.expect("a second session");
    (account, second)
}

/// Asserts that every one of `tokens` is refused now.
async fn assert_ended(app: &TestApp, tokens: &[&str], why: &str) {
    for (n, token) in tokens.iter().enumerate() {
        assert_eq!(app.me_status(token).await, 401, "{why}: session {n} still valid");
    }
}

#[tokio::test]
async fn login_issues_a_new_id_and_ends_the_session_it_carried() {
    let app = spawn_app(&[]).await;
    let (account, elsewhere) = signed_in_twice(&app, "Rotated").await;

    let rotated = login_carrying(&app, &account.email, ("cookie", format!("{COOKIE}={}", account.token))).await;
    assert_ne!(rotated, account.token);
    assert_eq!(me_with_cookie(&app, &account.token).await, 401, "the id carried into the login is over");
    assert_eq!(me_with_cookie(&app, &rotated).await, 200);

    let again = login_carrying(&app, &account.email, ("authorization", format!("Bearer {rotated}"))).await;
    assert_ne!(again, rotated);
    assert_eq!(app.me_status(&rotated).await, 401, "a carried Bearer session is ended too");
    assert_eq!(app.me_status(&again).await, 200);
    assert_eq!(app.me_status(&elsewhere).await, 200, "a session the login did not carry stays");
    app.stop().await;
}

#[tokio::test]
async fn changing_the_password_or_the_email_ends_every_session_and_the_new_one_signs_in() {
    let app = spawn_app(&[]).await;
    for change in ["password", "email"] {
        let (account, second) = signed_in_twice(&app, "Changer").await;
        // Only the one field changes: each alone must end the sessions.
        let (email, password, body) = match change {
            "password" => {
                let password = "a brand new passphrase";
                (account.email.clone(), password, json!({"password": password, "current_password": PASSWORD}))
            }
            _ => {
                let email = format!("{}@example.com", unique("moved"));
                (email.clone(), PASSWORD, json!({"email": email, "current_password": PASSWORD}))
            }
        };
        let response = patch_self(&app, &account, &body).await;
        assert_eq!(response.status(), 200, "{change}");
        assert_ended(&app, &[&account.token, &second], change).await;
        assert_eq!(app.sign_in(&account.email, PASSWORD).await, Err(401), "{change}: the old credentials");
        let token = app.sign_in(&email, password).await.expect("the new credentials sign in");
        assert_eq!(app.me_status(&token).await, 200, "{change}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_name_change_keeps_the_sessions() {
    let app = spawn_app(&[]).await;
    let account = app.sign_up("Renamed").await;
    let response = patch_self(&app, &account, &json!({"name": "Renamed Again"})).await;
    assert_eq!(response.status(), 200, "no current password needed for the name");
    assert_eq!(app.me_status(&account.token).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_current_password_is_403_and_changes_nothing() {
    let app = spawn_app(&[]).await;
    let account = app.sign_up("Guarded").await;
    let new_email = format!("{}@example.com", unique("hijack"));
    let attempts = [
        json!({"password": "attacker chosen pw", "current_password": "not the password"}),
        json!({"email": new_email, "current_password": "not the password"}),
        json!({"name": "Hijacked", "email": new_email, "password": "attacker chosen pw", "current_password": "guess guess"}),
    ];
    for body in &attempts {
        expect_problem(patch_self(&app, &account, body).await, 403, "wrong-current-password").await;
    }
    assert_eq!(app.me_status(&account.token).await, 200, "the session stays");
    let (status, user) = read_self(&app, &account).await;
    assert_eq!(status, 200);
    assert_eq!((user["email"].as_str(), user["name"].as_str()), (Some(account.email.as_str()), Some("Guarded")));
    assert!(app.sign_in(&account.email, PASSWORD).await.is_ok(), "the password is unchanged");
    assert_eq!(app.sign_in(&account.email, "attacker chosen pw").await, Err(401));
    app.stop().await;
}

async fn read_self(app: &TestApp, account: &Account) -> (u16, Value) {
    let path = format!("/users/{}", account.id);
    let response = app.request_as(Some(account), Method::GET, &path).send().await.expect("sent");
    (response.status().as_u16(), response.json().await.expect("JSON"))
}

#[tokio::test]
async fn a_missing_current_password_is_422_naming_it() {
    let app = spawn_app(&[]).await;
    let account = app.sign_up("Forgetful").await;
    let new_email = format!("{}@example.com", unique("forgot"));
    for body in [json!({"password": "another passphrase"}), json!({"email": new_email})] {
        let problem = expect_problem(patch_self(&app, &account, &body).await, 422, "validation-failed").await;
        let fields: Vec<&str> =
            problem["errors"].as_array().expect("errors").iter().filter_map(|e| e["field"].as_str()).collect();
        assert_eq!(fields, ["current_password"], "{problem}");
    }
    assert_eq!(app.me_status(&account.token).await, 200);
    assert!(app.sign_in(&account.email, PASSWORD).await.is_ok(), "nothing changed");
    app.stop().await;
}

/// The Redis key of the session `token` (its SHA-256 under `session:`): sessions are stored under digests.
fn session_key(token: &str) -> String {
    format!("session:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

#[tokio::test]
async fn deleting_a_user_ends_their_sessions() {
    // A Redis of this test's own, to see the sessions themselves are gone (not just refused because the user
    // is): a deleted user's session would otherwise linger until its TTL.
    let redis = RedisServer::start();
    let app = spawn_app(&[("REDIS_ADDR", &redis.addr())]).await;
    let (account, second) = signed_in_twice(&app, "Leaving").await;
    let stored = |token: &str| -> i64 { redis.command(redis::cmd("EXISTS").arg(session_key(token))).expect("EXISTS") };
    assert_eq!((stored(&account.token), stored(&second)), (1, 1), "the sessions are stored as expected");

    let path = format!("/users/{}", account.id);
    let response = app.request_as(Some(&account), Method::DELETE, &path).send().await.expect("sent");
    assert_eq!(response.status(), 204);
    assert_eq!((stored(&account.token), stored(&second)), (0, 0), "both sessions ended with the user");
    let index: i64 = redis.command(redis::cmd("EXISTS").arg(format!("session-of:{}", account.id))).expect("EXISTS");
    assert_eq!(index, 0, "the user's session index is gone too");
    assert_ended(&app, &[&account.token, &second], "a deleted user's").await;
    app.stop().await;
}

#[tokio::test]
async fn logout_everywhere_ends_every_session_of_the_caller_and_no_one_elses() {
    let app = spawn_app(&[]).await;
    let (account, second) = signed_in_twice(&app, "Everywhere").await;
    let bystander = app.sign_up("Bystander").await;

    let response = app.request_as(Some(&account), Method::DELETE, "/sessions?all=true").send().await.expect("sent");
    assert_eq!(response.status(), 204);
    assert_ended(&app, &[&account.token, &second], "the caller's").await;
    assert_eq!(app.me_status(&bystander.token).await, 200, "another user's session stays valid");

    let anonymous = app.request_as(None, Method::DELETE, "/sessions?all=true").send().await.expect("sent");
    expect_problem(anonymous, 401, "unauthenticated").await;
    let ended = app.request_as(Some(&account), Method::DELETE, "/sessions?all=true").send().await.expect("sent");
    expect_problem(ended, 401, "unauthenticated").await;
    app.stop().await;
}

#[tokio::test]
async fn the_absolute_lifetime_ends_a_session_even_while_it_is_used() {
    // A sliding TTL of a minute, renewed by every request below, inside an absolute lifetime of 2 seconds.
    let app = spawn_app(&[("SESSION_TTL", "1"), ("SESSION_MAX_LIFETIME", "2s")]).await;
    let before_sign_in = Instant::now();
    let account = app.sign_up("Mortal").await;
    let mut used = 0;
    let ended_after = loop {
        let status = app.me_status(&account.token).await;
        if status != 200 {
            assert_eq!(status, 401);
            break before_sign_in.elapsed();
        }
        used += 1;
        assert!(before_sign_in.elapsed() < Duration::from_secs(15), "still valid after 15 s of use");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(used >= 3, "the session was used (and its TTL renewed) {used} times before it ended");
    // Counted in whole seconds from sign-in: it ends between 1 and 2 s (plus a request) after it began.
    assert!(ended_after >= Duration::from_secs(1), "ended after only {ended_after:?}");
    let token = app.sign_in(&account.email, PASSWORD).await.expect("signing in again starts a new lifetime");
    assert_eq!(app.me_status(&token).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_bearer_token_works_like_the_cookie() {
    let app = spawn_app(&[]).await;
    let account = app.sign_up("Bearer").await;
    let me = app.request_as(Some(&account), Method::GET, "/me").send().await.expect("sent");
    assert_eq!(me.status(), 200);
    assert_eq!(me.json::<Value>().await.expect("JSON")["id"], account.id.as_str());
    assert_eq!(me_with_cookie(&app, &account.token).await, 200, "the same id works as the cookie");

    let response = patch_self(&app, &account, &json!({"name": "Bearer Renamed"})).await;
    assert_eq!(response.status(), 200);
    let logout = app.request_as(Some(&account), Method::DELETE, "/sessions").send().await.expect("sent");
    assert_eq!(logout.status(), 204);
    assert_eq!(me_with_cookie(&app, &account.token).await, 401, "signing out by Bearer ends the session");
    app.stop().await;
}

#[tokio::test]
async fn a_junk_bearer_token_is_401_even_beside_a_valid_cookie() {
    let app = spawn_app(&[]).await;
    let account = app.sign_up("Junk").await;
    for junk in ["junk".to_string(), "a".repeat(64), format!("{}x", account.token)] {
        let response = reqwest::Client::new().get(format!("{}/me", app.address)).bearer_auth(&junk).send().await;
        expect_problem(response.expect("sent"), 401, "unauthenticated").await;
    }
    // The Bearer token wins over the cookie: a bad one is not rescued by a good cookie.
    let response = reqwest::Client::new()
        .get(format!("{}/me", app.address))
        .bearer_auth("junk")
        .header("cookie", format!("{COOKIE}={}", account.token))
        .send()
        .await;
    expect_problem(response.expect("sent"), 401, "unauthenticated").await;
    app.stop().await;
}
