//! The client-side cache (`REDIS_CLIENT_CACHE`): users and sessions served from process memory stay coherent
//! across instances — Redis' invalidations reach the other instance before the writer has answered, and an instance
//! that cannot hear Redis stops serving from memory.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use test_support::proxy::{Mode, TcpProxy};

use crate::helpers::{Account, TestApp, spawn_app};

/// `GET /users/{id}` as `caller` through `app`: the status and the name (if any).
async fn name_through(app: &TestApp, caller: &Account) -> (u16, Option<String>) {
    let response = app.request_as(Some(caller), Method::GET, &format!("/users/{}", caller.id)).send().await;
    let response = response.expect("GET sent");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["name"].as_str().map(str::to_string))
}

async fn rename_through(app: &TestApp, caller: &Account, name: &str) {
    let path = format!("/users/{}", caller.id);
    let response = app.request_as(Some(caller), Method::PATCH, &path).json(&json!({"name": name})).send().await;
    assert_eq!(response.expect("PATCH sent").status(), 200, "renamed to {name}");
}

/// The sum of `redis_client_cache_lookups_total{result="hit"}` in `app`'s scrape (the recorder is global to the
/// test process: every app in it counts there).
async fn client_cache_hits(app: &TestApp) -> f64 {
    let page = app.get("/metrics").await.text().await.expect("metrics page");
    page.lines()
        .filter(|line| line.starts_with("redis_client_cache_lookups_total{") && line.contains("result=\"hit\""))
        .filter_map(|line| line.rsplit(' ').next().and_then(|value| value.parse::<f64>().ok()))
        .sum()
}

#[tokio::test]
async fn a_patch_through_one_instance_is_read_through_the_other_at_once() {
    let (a, b) = (spawn_app(&[]).await, spawn_app(&[]).await);
    let account = a.sign_up("Coherent 0").await;
    let hits_before = client_cache_hits(&a).await;
    for round in 1..=60 {
        // B holds the user in memory (the second read is a hit)...
        for _ in 0..2 {
            let (status, name) = name_through(&b, &account).await;
            assert_eq!((status, name.as_deref()), (200, Some(format!("Coherent {}", round - 1).as_str())));
        }
        // ...A renames, and the very next read through B sees it.
        let renamed = format!("Coherent {round}");
        rename_through(&a, &account, &renamed).await;
        let (status, name) = name_through(&b, &account).await;
        assert_eq!((status, name.as_deref()), (200, Some(renamed.as_str())), "round {round}: B served a stale name");
    }
    // The reads were served from memory (session, caller and user: three hits per second read at least).
    let hits = client_cache_hits(&a).await - hits_before;
    assert!(hits >= 60.0 * 3.0, "only {hits} client-cache hits: the memory path was not exercised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_redis_stops_serving_from_memory() {
    let proxy = TcpProxy::start("127.0.0.1:6379".parse().expect("address")).await;
    let through_proxy = proxy.addr.to_string();
    let cut_off = spawn_app(&[
        ("REDIS_ADDR", through_proxy.as_str()),
        ("REDIS_READ_TIMEOUT", "1"),
        ("REDIS_WRITE_TIMEOUT", "1"),
        ("REDIS_MAX_RETRIES", "0"),
    ])
    .await;
    let writer = spawn_app(&[]).await;
    let account = writer.sign_up("Before the cut").await;
    for _ in 0..3 {
        assert_eq!(name_through(&cut_off, &account).await, (200, Some("Before the cut".to_string())));
    }

    proxy.set(Mode::Cut);
    // The other instance renames: its invalidation cannot reach the cut-off one.
    rename_through(&writer, &account, "During the cut").await;
    // Past the tracking connection's PING interval and timeout, the cut-off instance has emptied its memory: it
    // answers from PostgreSQL or not at all (its sessions are in Redis), never the old name.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, name) = name_through(&cut_off, &account).await;
    assert!(
        name.as_deref() != Some("Before the cut"),
        "the cut-off instance served the old name from memory ({status})"
    );

    proxy.set(Mode::Forward);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, name) = name_through(&cut_off, &account).await;
        assert_ne!(name.as_deref(), Some("Before the cut"), "stale after healing ({status})");
        if name.as_deref() == Some("During the cut") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not recovered 20 s after healing: {status} {name:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
