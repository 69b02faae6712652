//! Test helpers: the app spawned in-process on a random port, and the binary spawned as a process. Private
//! servers and fakes come from the `test-support` crate.

use std::process::Command;
use std::time::{Duration, Instant};

use app::startup::Application;
use infra::config::{Config, Sources};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use test_support::fakes::{BlackHole, RedisServer, TempDir};
pub use test_support::{free_port, unique};

/// The service running in this process, stopped when dropped.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts the service on a random loopback port against the local stack, with `overrides` applied on top of
/// the defaults. Every app gets its own Kafka topic unless the test names one.
pub async fn spawn_app(overrides: &[(&str, &str)]) -> TestApp {
    let mut env: Vec<(String, String)> = vec![
        ("KAFKA_TOPIC".into(), unique("app-test")),
        ("KAFKA_CONSUMER_GROUP".into(), unique("app-test-group")),
        // tansu makes a group join wait half the session timeout.
        ("KAFKA_SESSION_TIMEOUT".into(), "6".into()),
    ];
    env.extend(overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::from_sources(&Sources::from_maps(env, [])).expect("test configuration is valid");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = Application::build_with_listener(config, listener).await.expect("app builds");
    let address = format!("http://{}", app.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp { address, client: reqwest::Client::new(), stop: Some(stop), handle: Some(handle) }
}

impl TestApp {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.address)).send().await.expect("request sent")
    }

    /// GET `path` and decode the JSON body, returning the status too.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// Polls `path` until `done` accepts the answer, for at most `limit`.
    pub async fn eventually<F>(&self, path: &str, limit: Duration, done: F) -> (u16, serde_json::Value)
    where
        F: Fn(u16, &serde_json::Value) -> bool,
    {
        let deadline = Instant::now() + limit;
        loop {
            let (status, body) = self.get_json(path).await;
            if done(status, &body) || Instant::now() >= deadline {
                return (status, body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the app the way SIGTERM would and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("app task").expect("app stopped cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The `rust-app` binary with a clean environment (only PATH and HOME kept) and a private working directory,
/// so neither the developer's environment nor a `.env` in the repository leaks into the test.
pub fn binary(env: &[(&str, &str)], workdir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rust-app"));
    command.env_clear().current_dir(workdir);
    for keep in ["PATH", "HOME"] {
        if let Ok(value) = std::env::var(keep) {
            command.env(keep, value);
        }
    }
    command.envs(env.iter().copied());
    command
}
