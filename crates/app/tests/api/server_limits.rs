//! The HTTP server's limits against the real service over raw loopback sockets: a slowloris client is cut off
//! at the header read timeout, an idle kept-alive connection at the keep-alive timeout, thousands of idle
//! sockets do not keep a new client out (the cap reaps idle connections), and an oversized header block gets 431.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, spawn_app};

/// Bound on every wait for the server in these tests; far above the configured timeouts.
const PATIENCE: Duration = Duration::from_secs(20);
const LIVEZ: &[u8] = b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n";

/// The service with `limits`, not migrating: these tests never touch PostgreSQL, whose schema other branches
/// sharing the local stack may have moved ahead.
async fn spawn_with(limits: &[(&str, &str)]) -> TestApp {
    let mut env = vec![("POSTGRES_MIGRATE_ON_START", "false")];
    env.extend_from_slice(limits);
    spawn_app(&env).await
}

async fn connect(app: &TestApp) -> TcpStream {
    let address = app.address.trim_start_matches("http://");
    TcpStream::connect(address).await.expect("connect")
}

/// Reads one response (head and a `content-length` body) from `stream`; returns the head.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_string();
            if received.len() >= end + 4 + content_length(&head) {
                return head;
            }
        }
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await.expect("a response in time");
        let n = read.expect("read");
        assert!(n > 0, "connection closed mid-response after {:?}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .map_or(0, |v| v.parse().expect("content-length"))
}

/// Waits for the server to close `stream` (end of stream or reset); returns the bytes it sent before.
async fn closed_by_server(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await.expect("the server closed in time") {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn assert_serves(app: &TestApp) {
    let response = tokio::time::timeout(PATIENCE, app.get("/livez")).await.expect("answered in time");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_slowloris_client_trickling_its_headers_is_cut_off_after_the_header_read_timeout() {
    let app = spawn_with(&[("HTTP_HEADER_READ_TIMEOUT", "1s")]).await;
    let stream = connect(&app).await;
    let opened = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let closed = tokio::spawn(async move {
        let mut received = Vec::new();
        let outcome = tokio::time::timeout(PATIENCE, reader.read_to_end(&mut received)).await;
        (outcome.is_ok(), received, opened.elapsed())
    });
    writer.write_all(b"GET /livez HTTP/1.1\r\nHost: test\r\n").await.expect("request line");
    // A header line every 200 ms, for up to 10 s: ten times the timeout. The server must not wait for the end.
    for _ in 0..50 {
        if closed.is_finished() || writer.write_all(b"X-Slow: 1\r\n").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ended, received, after) = closed.await.expect("reader");
    assert!(ended, "the trickling connection was still open after {PATIENCE:?}");
    assert!(received.is_empty(), "cut off without an answer, got {:?}", String::from_utf8_lossy(&received));
    assert!(after >= Duration::from_secs(1), "cut off only once the header read timeout passed, not after {after:?}");
    assert!(after < Duration::from_secs(10), "cut off while still trickling, not after {after:?}");
    assert_serves(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_kept_alive_connection_serves_requests_then_is_closed_when_idle_past_the_keep_alive_timeout() {
    let app = spawn_with(&[("HTTP_HEADER_READ_TIMEOUT", "30s"), ("HTTP_KEEP_ALIVE_TIMEOUT", "1s")]).await;
    let mut stream = connect(&app).await;
    stream.write_all(LIVEZ).await.expect("first request");
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(LIVEZ).await.expect("second request on the same connection");
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"), "kept alive between requests");
    let idle_since = Instant::now();
    let received = closed_by_server(&mut stream).await;
    let idle = idle_since.elapsed();
    assert!(received.is_empty(), "{:?}", String::from_utf8_lossy(&received));
    assert!(idle >= Duration::from_millis(900), "closed after the keep-alive timeout, not after {idle:?}");
    assert!(idle < Duration::from_secs(15), "closed long before the 30 s header read timeout, not after {idle:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_header_block_past_the_limit_gets_431_and_the_connection_closed() {
    const LIMIT: usize = 8192;
    let app = spawn_with(&[("HTTP_MAX_HEADER_BYTES", "8192")]).await;

    // Just under the limit: answered.
    let mut stream = connect(&app).await;
    let header = "a".repeat(7000);
    stream
        .write_all(format!("GET /livez HTTP/1.1\r\nHost: test\r\nX-Big: {header}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"), "a header block under the limit is served");

    // Exactly the limit without the blank line ending it: the server reads it all, answers 431 and closes.
    let mut stream = connect(&app).await;
    let start = "GET /livez HTTP/1.1\r\nHost: test\r\nX-Big: ";
    let block = format!("{start}{}", "a".repeat(LIMIT - start.len()));
    stream.write_all(block.as_bytes()).await.expect("write");
    let answer = String::from_utf8_lossy(&closed_by_server(&mut stream).await).to_string();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

    // Far past the limit through a client: 431, or a reset when the server closes with the client's surplus
    // still unread (TCP discards the answer then). Either way the service keeps serving.
    let oversized = "a".repeat(64 * 1024);
    let sent = app.client.get(format!("{}/livez", app.address)).header("x-big", oversized).send().await;
    if let Ok(response) = sent {
        assert_eq!(response.status(), 431);
    }
    assert_serves(&app).await;
    app.stop().await;
}
