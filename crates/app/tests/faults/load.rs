//! The load the faults run under: workers registering, reading, renaming and signing in through both instances,
//! and the ledger of what the service acknowledged — the truth the checks compare PostgreSQL, the reads and the
//! activity trail with.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// Every load account's password.
pub const PASSWORD: &str = "correct horse battery";
/// A request without an answer by then counts as unanswered: longer than the instances' HTTP_REQUEST_TIMEOUT
/// ([`crate::deployment`]), so that they answer first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(12);
/// The pause between two requests of a worker: the load stays light on two shared cores.
const PACE: Duration = Duration::from_millis(60);
/// Concurrent workers.
const WORKERS: usize = 4;

/// What a request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Register,
    Read,
    Rename,
    Login,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Ok,
    /// 4xx: refused, nothing written (a 401 once Redis lost the sessions, say).
    Refused(u16),
    /// 5xx: the service answered that it could not.
    Failed(u16),
    /// The connection was refused: nothing listened, nothing was accepted.
    NotAccepted,
    /// Sent, but no complete answer came (reset, closed, timed out).
    NoAnswer,
}

impl Outcome {
    /// Whether the request failed (anything but a 2xx).
    pub fn is_error(self) -> bool {
        self != Outcome::Ok
    }

    /// Whether a write may have happened without being acknowledged.
    fn uncertain(self) -> bool {
        matches!(self, Outcome::Failed(_) | Outcome::NoAnswer)
    }
}

/// One request.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// When it was sent.
    pub at: Instant,
    /// How long its answer (or its failure) took.
    pub took: Duration,
    pub kind: Kind,
    pub instance: usize,
    pub outcome: Outcome,
}

/// What the service acknowledged about one user.
#[derive(Clone, Debug)]
pub struct UserRecord {
    pub email: String,
    /// A session, while it is known to be valid.
    pub token: Option<String>,
    /// The name of the last acknowledged registration or rename.
    pub acked: String,
    /// Renames sent without an answer: PostgreSQL may hold any of them (one held in a partition may commit late).
    pub unanswered: Vec<String>,
}

impl UserRecord {
    /// Whether `name` is one PostgreSQL may hold.
    pub fn allows(&self, name: &str) -> bool {
        self.acked == name || self.unanswered.iter().any(|candidate| candidate == name)
    }
}

/// The load's record of everything.
#[derive(Default)]
pub struct Ledger {
    /// By user id.
    pub users: Mutex<HashMap<String, UserRecord>>,
    /// Emails of registrations without an answer: those users may exist.
    pub unanswered_registrations: Mutex<Vec<String>>,
    pub samples: Mutex<Vec<Sample>>,
    /// Reads that returned a name PostgreSQL could not hold any more, with when.
    pub stale_reads: Mutex<Vec<(Instant, String)>>,
    /// Users registered or renamed (answered or not) since [`Ledger::take_touched`] was last called.
    touched: Mutex<HashSet<String>>,
}

impl Ledger {
    fn record(&self, sent: Instant, kind: Kind, instance: usize, outcome: Outcome) {
        let sample = Sample { at: sent, took: sent.elapsed(), kind, instance, outcome };
        self.samples.lock().expect("samples").push(sample);
    }

    /// The users registered or renamed since the last call.
    pub fn take_touched(&self) -> HashSet<String> {
        std::mem::take(&mut *self.touched.lock().expect("touched"))
    }

    fn touch(&self, id: &str) {
        self.touched.lock().expect("touched").insert(id.to_string());
    }

    /// A copy of one user's record.
    pub fn user(&self, id: &str) -> Option<UserRecord> {
        self.users.lock().expect("users").get(id).cloned()
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut UserRecord)) {
        if let Some(record) = self.users.lock().expect("users").get_mut(id) {
            change(record);
        }
    }

    /// The requests sent from `from` on (until `to`).
    pub fn samples_between(&self, from: Instant, to: Option<Instant>) -> Vec<Sample> {
        let samples = self.samples.lock().expect("samples");
        samples.iter().filter(|s| s.at >= from && to.is_none_or(|to| s.at < to)).copied().collect()
    }
}

/// The HTTP client of the load: a fresh connection per request, so "accepted" is well defined (a refused
/// connection was never accepted; a sent request on an accepted connection must be answered).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).timeout(REQUEST_TIMEOUT).build().expect("HTTP client")
}

/// Talks to the instances on behalf of the workers and the checks, recording every request.
#[derive(Clone)]
pub struct Api {
    pub addresses: Vec<String>,
    pub ledger: Arc<Ledger>,
    client: reqwest::Client,
}

impl Api {
    pub fn new(addresses: Vec<String>, ledger: Arc<Ledger>) -> Self {
        Api { addresses, ledger, client: client() }
    }

    async fn send(&self, kind: Kind, instance: usize, request: reqwest::RequestBuilder) -> (Outcome, Option<Value>) {
        let sent = Instant::now();
        let answer = match request.send().await {
            Ok(response) => {
                let status = response.status();
                let cookie = session_cookie(&response);
                match response.json::<Value>().await {
                    Ok(mut body) => {
                        if let Some(cookie) = cookie {
                            body["session"] = json!(cookie);
                        }
                        (classify(status), Some(body))
                    }
                    Err(err) if err.is_decode() || status == StatusCode::NO_CONTENT => (classify(status), None),
                    Err(_) => (Outcome::NoAnswer, None),
                }
            }
            Err(err) if err.is_connect() => (Outcome::NotAccepted, None),
            Err(_) => (Outcome::NoAnswer, None),
        };
        self.ledger.record(sent, kind, instance, answer.0);
        answer
    }

    /// POST /users; the new user's id when acknowledged.
    pub async fn register(&self, instance: usize, name: &str) -> Option<String> {
        let email = format!("{}@example.com", test_support::unique("faults"));
        let body = json!({"name": name, "email": email, "password": PASSWORD});
        let request = self.client.post(format!("{}/users", self.addresses[instance])).json(&body);
        let (outcome, body) = self.send(Kind::Register, instance, request).await;
        match (outcome, body) {
            (Outcome::Ok, Some(user)) => {
                let id = user["id"].as_str().expect("the new user's id").to_string();
                let record = UserRecord { email, token: None, acked: name.to_string(), unanswered: Vec::new() };
                self.ledger.users.lock().expect("users").insert(id.clone(), record);
                self.ledger.touch(&id);
                Some(id)
            }
            (outcome, _) => {
                if outcome.uncertain() {
                    self.ledger.unanswered_registrations.lock().expect("registrations").push(email);
                }
                None
            }
        }
    }

    /// POST /sessions for user `id`; stores and returns the session.
    pub async fn login(&self, instance: usize, id: &str) -> Option<String> {
        let email = self.ledger.user(id)?.email;
        let body = json!({"email": email, "password": PASSWORD});
        let request = self.client.post(format!("{}/sessions", self.addresses[instance])).json(&body);
        let (outcome, body) = self.send(Kind::Login, instance, request).await;
        let token = body.filter(|_| outcome == Outcome::Ok)?["session"].as_str()?.to_string();
        self.ledger.update(id, |record| record.token = Some(token.clone()));
        Some(token)
    }

    async fn session(&self, instance: usize, id: &str) -> Option<String> {
        match self.ledger.user(id)?.token {
            Some(token) => Some(token),
            None => self.login(instance, id).await,
        }
    }

    /// GET /users/{id} as the user; the outcome and the name answered.
    pub async fn read(&self, instance: usize, id: &str) -> (Outcome, Option<String>) {
        let Some(token) = self.session(instance, id).await else { return (Outcome::Refused(401), None) };
        let request = self.client.get(format!("{}/users/{id}", self.addresses[instance])).bearer_auth(token);
        let (outcome, body) = self.send(Kind::Read, instance, request).await;
        if outcome == Outcome::Refused(401) {
            self.ledger.update(id, |record| record.token = None);
        }
        let name = body.filter(|_| outcome == Outcome::Ok).and_then(|user| user["name"].as_str().map(str::to_string));
        (outcome, name)
    }

    /// PATCH /users/{id} {name} as the user, recorded in the ledger as acknowledged or not.
    pub async fn rename(&self, instance: usize, id: &str, name: &str) -> Outcome {
        let Some(token) = self.session(instance, id).await else { return Outcome::Refused(401) };
        let request = self
            .client
            .patch(format!("{}/users/{id}", self.addresses[instance]))
            .bearer_auth(token)
            .json(&json!({"name": name}));
        let (outcome, _) = self.send(Kind::Rename, instance, request).await;
        self.ledger.touch(id);
        self.ledger.update(id, |record| match outcome {
            // Unanswered renames stay possible: one held in a partition may still commit after a later one.
            Outcome::Ok => record.acked = name.to_string(),
            Outcome::Refused(401) => record.token = None,
            outcome if outcome.uncertain() => record.unanswered.push(name.to_string()),
            _ => {}
        });
        outcome
    }
}

fn classify(status: StatusCode) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Ok,
        code @ 400..=499 => Outcome::Refused(code),
        code => Outcome::Failed(code),
    }
}

fn session_cookie(response: &reqwest::Response) -> Option<String> {
    let cookie = response.headers().get(reqwest::header::SET_COOKIE)?.to_str().ok()?;
    let (_, value) = cookie.split(';').next()?.split_once('=')?;
    Some(value.to_string())
}

/// The load, running until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: JoinSet<()>,
}

impl Load {
    /// Starts the workers on `api`.
    pub fn start(api: &Api) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = JoinSet::new();
        for worker in 0..WORKERS {
            workers.spawn(work(worker, api.clone(), stop.clone()));
        }
        Load { stop, workers }
    }

    /// Stops the workers once their request in hand is answered.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(ended) = self.workers.join_next().await {
            ended.expect("a load worker panicked");
        }
    }
}

/// A small deterministic generator: the mix of requests, not its randomness, matters.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % sides as u64) as usize
    }
}

/// One worker: registers users of its own (their renames are then sequential, so "the last acknowledged name" is
/// well defined), reads and renames them and signs them in again, alternating between the instances.
async fn work(worker: usize, api: Api, stop: Arc<AtomicBool>) {
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15 ^ (worker as u64 + 1));
    let mut mine: Vec<String> = Vec::new();
    let mut step = 0usize;
    while !stop.load(Ordering::Relaxed) {
        step += 1;
        let instance = (worker + step) % api.addresses.len();
        let roll = dice.roll(20);
        if mine.len() < 2 || roll < 3 {
            if let Some(id) = api.register(instance, &format!("w{worker}-{step}")).await {
                mine.push(id);
            }
        } else {
            let id = &mine[dice.roll(mine.len())];
            match roll {
                3..=11 => {
                    let (_, name) = api.read(instance, id).await;
                    let record = api.ledger.user(id).expect("own user");
                    if let Some(name) = name.filter(|name| !record.allows(name)) {
                        api.ledger.stale_reads.lock().expect("stale").push((Instant::now(), format!("{id}: {name}")));
                    }
                }
                12..=17 => {
                    api.rename(instance, id, &format!("w{worker}-{step}-renamed")).await;
                }
                _ => {
                    api.login(instance, id).await;
                }
            }
        }
        tokio::time::sleep(PACE).await;
    }
}
