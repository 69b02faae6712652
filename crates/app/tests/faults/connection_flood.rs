//! Abuse from the client side: 2000 sockets opened and left idle against a server capped at 64 connections. The
//! cap must hold and a new client must still be served (idle ones are reaped). It runs here, one test at a time,
//! rather than beside the API suite: the server must work through the whole burst (each socket past the cap waits
//! for a reaped one to close), and beside 120 parallel tests on two cores it fell a listen backlog behind for
//! minutes — slow, not stuck, but no bound on "slow" is meaningful there.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::deployment::Instance;

/// The burst and the request after it, together.
const BURST_WITHIN: Duration = Duration::from_secs(120);

#[tokio::test]
async fn two_thousand_idle_sockets_do_not_keep_a_new_client_out() {
    const CAP: usize = 64;
    const IDLE_SOCKETS: usize = 2000;
    let _alone = crate::ONE_AT_A_TIME.lock().await;
    // A process of its own against the shared stack: `http_connections_open` is this server's count. The header
    // read timeout is far beyond the test's patience: only reaping at the cap can free a slot.
    let port = test_support::free_port().to_string();
    let env = [
        ("APP_HOST", "127.0.0.1"),
        ("APP_PORT", port.as_str()),
        ("POSTGRES_MIGRATE_ON_START", "false"),
        ("LOG_LEVEL", "warn"),
        ("HTTP_MAX_CONNECTIONS", "64"),
        ("HTTP_HEADER_READ_TIMEOUT", "300s"),
    ];
    let serve = Instance::start(env.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()).await;
    let address = serve.address.trim_start_matches("http://").to_string();
    let deadline = tokio::time::Instant::now() + BURST_WITHIN;
    let mut idle = Vec::with_capacity(IDLE_SOCKETS);
    for _ in 0..IDLE_SOCKETS {
        let connected =
            tokio::time::timeout_at(deadline, TcpStream::connect(&address)).await.expect("connected in time");
        idle.push(connected.expect("connect"));
    }

    let livez = tokio::time::timeout_at(deadline, reqwest::get(format!("{}/livez", serve.address))).await;
    assert_eq!(livez.expect("answered in time").expect("sent").status(), 200, "a new client is served");

    let metrics = reqwest::get(format!("{}/metrics", serve.address)).await.expect("sent").text().await.expect("text");
    let value = |family: &str| -> f64 {
        let line = metrics.lines().find(|line| line.starts_with(family)).unwrap_or_else(|| panic!("{family} missing"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number")
    };
    assert!(value("http_connections_open ") <= CAP as f64, "never more than the cap open");
    assert!(value("http_connections_closed_total{reason=\"reaped\"}") >= 1.0, "idle connections were reaped");
    let mut closed = 0;
    for socket in &mut idle {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::ZERO, socket.read(&mut byte)).await {
            closed += 1;
        }
    }
    assert!(closed >= IDLE_SOCKETS / 2, "only {closed} of {IDLE_SOCKETS} idle sockets were closed by the server");
}
