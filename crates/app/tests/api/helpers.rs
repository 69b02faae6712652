//! Test helpers: the app spawned in-process on a random port, and the binary spawned as a process. Private
//! servers and fakes come from the `test-support` crate.

use std::process::Command;
use std::time::{Duration, Instant};

use app::settings::Settings;
use app::startup::Application;
use infra::config::Sources;
use infra::postgres::PostgresConfig;
use infra::settings::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use test_support::fakes::{BlackHole, RedisServer, TempDir};
pub use test_support::{free_port, unique};

/// PostgreSQL settings with `POSTGRES_DSN = dsn` and `overrides`, validated like the service does.
pub fn postgres_config(dsn: &str, overrides: &[(&str, &str)]) -> PostgresConfig {
    let env: Vec<(&str, &str)> = [("POSTGRES_DSN", dsn)].into_iter().chain(overrides.iter().copied()).collect();
    Config::from_sources(&Sources::from_env_pairs(&env)).expect("valid test configuration").postgres
}

/// The service running in this process, stopped when dropped.
pub struct TestApp {
    pub address: String,
    /// Sends requests anonymously, or as the admin for [`spawn_admin_app`].
    pub client: reqwest::Client,
    /// The app's PostgreSQL settings, for tests that look behind its back.
    pub postgres: PostgresConfig,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts the service on a random loopback port against the local stack, with `overrides` applied on top of
/// the defaults. Every app gets its own Kafka topic unless the test names one.
pub async fn spawn_app(overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_with(overrides, |app| app).await
}

/// Like [`spawn_app`], with `customize` applied to the built application before it runs (an extra projection).
pub async fn spawn_app_with(overrides: &[(&str, &str)], customize: impl FnOnce(Application) -> Application) -> TestApp {
    let mut env: Vec<(String, String)> = vec![
        ("KAFKA_TOPIC".into(), unique("app-test")),
        ("KAFKA_CONSUMER_GROUP".into(), unique("app-test-group")),
        // tansu makes a group join wait half the session timeout.
        ("KAFKA_SESSION_TIMEOUT".into(), "6".into()),
        // Every test app shares 127.0.0.1's rate-limit bucket in Redis: only the rate-limit tests limit.
        ("RATE_LIMIT_RPS".into(), "1000000".into()),
        ("RATE_LIMIT_BURST".into(), "1000000".into()),
    ];
    env.extend(overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = Settings::from_sources(&Sources::from_maps(env, [])).expect("test configuration is valid");
    let postgres = settings.config.postgres.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = customize(Application::build_with_listener(settings, listener).await.expect("app builds"));
    let address = format!("http://{}", app.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp { address, client: reqwest::Client::new(), postgres, stop: Some(stop), handle: Some(handle) }
}

/// The password every test account gets.
pub const PASSWORD: &str = "correct horse battery";

/// A signed-in account of a test app.
#[derive(Clone, Debug)]
pub struct Account {
    pub id: String,
    pub email: String,
    /// The session id, for `Authorization: Bearer`.
    pub token: String,
}

/// Registers a user with a unique email and [`PASSWORD`] on the service at `address` (`http://host:port`);
/// returns the id and the email.
async fn register_at(address: &str, name: &str) -> (String, String) {
    let email = format!("{}@example.com", unique("user"));
    let body = serde_json::json!({"name": name, "email": email, "password": PASSWORD});
    let response = reqwest::Client::new().post(format!("{address}/users")).json(&body).send().await;
    let response = response.expect("request sent");
    assert_eq!(response.status(), 201, "user created");
    let user: serde_json::Value = response.json().await.expect("JSON user");
    (user["id"].as_str().expect("id").to_string(), email)
}

/// Registers a user with a unique email on the service at `address` (`http://host:port`) and signs them in.
pub async fn sign_up_at(address: &str, name: &str) -> Account {
    let (id, email) = register_at(address, name).await;
    let token = sign_in_at(address, &email, PASSWORD).await.expect("signed in");
    Account { id, email, token }
}

/// Signs in at the service at `address`; the session id, or the status of the refusal.
pub async fn sign_in_at(address: &str, email: &str, password: &str) -> Result<String, u16> {
    let body = serde_json::json!({"email": email, "password": password});
    let response = reqwest::Client::new().post(format!("{address}/sessions")).json(&body).send().await;
    let response = response.expect("request sent");
    if response.status() != 201 {
        return Err(response.status().as_u16());
    }
    let cookie = response.headers().get(reqwest::header::SET_COOKIE).expect("session cookie");
    let cookie = cookie.to_str().expect("ascii");
    let value = cookie.split(';').next().and_then(|pair| pair.split_once('=')).map(|(_, v)| v.to_string());
    Ok(value.expect("cookie value"))
}

/// Like [`spawn_app`], with `client` signed in as a fresh admin (Bearer token): for tests about what the API
/// does rather than who may call it.
pub async fn spawn_admin_app(overrides: &[(&str, &str)]) -> TestApp {
    as_admin(spawn_app(overrides).await).await
}

/// `app` with its `client` signed in as a fresh admin (Bearer token).
pub async fn as_admin(mut app: TestApp) -> TestApp {
    let admin = app.sign_up_admin().await;
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {}", admin.token);
    headers.insert(reqwest::header::AUTHORIZATION, bearer.parse().expect("header value"));
    app.client = reqwest::Client::builder().default_headers(headers).build().expect("client");
    app
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

    /// Sends `body` as JSON with `method` to `path`.
    pub async fn send_json(&self, method: reqwest::Method, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client.request(method, format!("{}{path}", self.address)).json(body).send().await.expect("request sent")
    }

    /// POST `body` as JSON to `path`.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.send_json(reqwest::Method::POST, path, body).await
    }

    /// Registers a user with a unique email; returns its JSON.
    pub async fn create_user(&self, name: &str) -> serde_json::Value {
        let email = format!("{}@example.com", unique("user"));
        let body = serde_json::json!({"name": name, "email": email, "password": "correct horse battery"});
        let response = self.post_json("/users", &body).await;
        assert_eq!(response.status(), 201, "user created");
        response.json().await.expect("JSON user")
    }

    /// Registers a user with a unique email and signs them in.
    pub async fn sign_up(&self, name: &str) -> Account {
        let (id, email) = register_at(&self.address, name).await;
        let token = self.sign_in(&email, PASSWORD).await.expect("signed in");
        Account { id, email, token }
    }

    /// Registers an admin (promoted in PostgreSQL, as `rust-app users create-admin --promote` does) and signs
    /// them in.
    pub async fn sign_up_admin(&self) -> Account {
        let account = self.sign_up("Admin").await;
        let postgres = infra::postgres::PostgresClient::connect_lazy(&self.postgres).expect("client");
        let promote =
            infra::postgres::sql("UPDATE users SET role = 'admin' WHERE id = $1::uuid").bind(account.id.clone());
        assert_eq!(postgres.exec(promote).await.expect("promoted"), 1);
        postgres.close().await;
        // The user was not read through the cache yet, so nothing stale holds the old role.
        account
    }

    /// Signs in; the session id, or the status of the refusal.
    pub async fn sign_in(&self, email: &str, password: &str) -> Result<String, u16> {
        sign_in_at(&self.address, email, password).await
    }

    /// A request with `method` to `path` as `account` (or anonymously).
    pub fn request_as(
        &self,
        account: Option<&Account>,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let request = reqwest::Client::new().request(method, format!("{}{path}", self.address));
        match account {
            Some(account) => request.bearer_auth(&account.token),
            None => request,
        }
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

/// `rust-app serve` running as a process of its own on a free loopback port, with its own Kafka topic and
/// consumer group; killed and reaped if the test ends before it exited.
pub struct ServeProcess {
    child: std::process::Child,
    pub address: String,
    _workdir: TempDir,
    /// Read while it runs, so a process that logs a lot never blocks on a full pipe.
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> Option<std::thread::JoinHandle<String>> {
    let mut pipe = pipe?;
    Some(std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }))
}

impl ServeProcess {
    /// Starts the binary with `env` on top of the test defaults and waits until it answers `/livez`.
    pub async fn start(env: &[(&str, &str)]) -> ServeProcess {
        let port = free_port().to_string();
        let (topic, group) = (unique("serve-test"), unique("serve-test-group"));
        let mut all = vec![
            ("APP_HOST", "127.0.0.1"),
            ("APP_PORT", port.as_str()),
            ("KAFKA_TOPIC", topic.as_str()),
            ("KAFKA_CONSUMER_GROUP", group.as_str()),
            // tansu makes a group join wait half the session timeout.
            ("KAFKA_SESSION_TIMEOUT", "6"),
            // 127.0.0.1's rate-limit bucket in Redis is shared by every test app.
            ("RATE_LIMIT_RPS", "1000000"),
            ("RATE_LIMIT_BURST", "1000000"),
        ];
        all.extend_from_slice(env);
        let workdir = TempDir::new();
        let mut child = binary(&all, &workdir.0)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn rust-app");
        let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
        let address = format!("http://127.0.0.1:{port}");
        let process = ServeProcess { child, address, _workdir: workdir, stdout, stderr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(format!("{}/livez", process.address)).await.is_ok_and(|r| r.status() == 200) {
            assert!(Instant::now() < deadline, "rust-app did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(status.success());
    }

    /// Waits for the exit, bounded: a shutdown that hangs fails the test instead of hanging it.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "rust-app did not exit within {limit:?} of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything it printed (stdout, then stderr); call after it exited.
    pub fn output(&mut self) -> String {
        let mut text = String::new();
        for reader in [self.stdout.take(), self.stderr.take()].into_iter().flatten() {
            text.push_str(&reader.join().unwrap_or_default());
        }
        text
    }

    /// SIGTERM, the exit (within 20 s), and everything it printed.
    pub async fn stop(mut self) -> String {
        self.terminate();
        self.wait_exit(Duration::from_secs(20)).await;
        self.output()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Asserts `response` is an RFC 9457 problem (`application/problem+json`) with this status and `code`; returns
/// its body.
pub async fn expect_problem(response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    let actual = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body: serde_json::Value = response.json().await.expect("JSON problem");
    assert_eq!(actual, status, "{body}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    body
}

impl TestApp {
    /// The status of `GET /me` with the session `token` sent as `Authorization: Bearer`: 200 while it is valid.
    pub async fn me_status(&self, token: &str) -> u16 {
        let request = reqwest::Client::new().get(format!("{}/me", self.address)).bearer_auth(token);
        request.send().await.expect("request sent").status().as_u16()
    }
}
