//! What must hold after a fault: the instances alive and without a panic, every acknowledged write in PostgreSQL,
//! reads through both instances returning what PostgreSQL holds (no stale cache), and every user's `user_created`
//! in the activity trail exactly once. Each check waits, bounded, for the service to catch up, and says how long
//! it took.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::deployment::Deployment;
use crate::load::{Api, Outcome};

/// How long the service may take to be consistent again after a fault ended.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(45);
/// Users read through both instances besides those written during the scenario.
const SAMPLE_OF_OTHERS: usize = 20;

/// Both instances are running, answer `/livez`, and printed no panic.
pub async fn alive(deployment: &mut Deployment) -> Result<(), String> {
    for (n, instance) in deployment.instances.iter_mut().enumerate() {
        if let Some(status) = instance.exited() {
            return Err(format!("instance {n} exited: {status}{}", instance.crash_report(status)));
        }
        let output = instance.output();
        if let Some(line) = output.lines().find(|line| line.contains("panicked")) {
            return Err(format!("instance {n} panicked: {line}"));
        }
        let live = test_support::eventually(Duration::from_secs(10), async || {
            reqwest::get(format!("{}/livez", instance.address)).await.is_ok_and(|r| r.status() == 200)
        });
        if !live.await {
            return Err(format!("instance {n} does not answer /livez"));
        }
    }
    Ok(())
}

/// Every user of PostgreSQL: id → (name, email).
async fn stored_users(deployment: &Deployment) -> Result<HashMap<String, (String, String)>, String> {
    let rows = deployment.sql("SELECT id::text, name, email FROM users").await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let mut fields = row.splitn(3, '|');
            Some((fields.next()?.to_string(), (fields.next()?.to_string(), fields.next()?.to_string())))
        })
        .collect())
}

/// Every acknowledged registration is in PostgreSQL, with the last acknowledged name (or a rename that got no
/// answer), and no user exists that the load did not ask for. Waits for PostgreSQL to answer.
pub async fn writes_durable(deployment: &Deployment, api: &Api) -> Result<HashMap<String, String>, String> {
    let deadline = Instant::now() + CATCH_UP_WITHIN;
    let stored = loop {
        match stored_users(deployment).await {
            Ok(stored) => break stored,
            Err(err) if Instant::now() >= deadline => return Err(format!("PostgreSQL does not answer: {err}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let users = api.ledger.users.lock().expect("users").clone();
    let unanswered: HashSet<String> =
        api.ledger.unanswered_registrations.lock().expect("registrations").iter().cloned().collect();
    let mut problems = Vec::new();
    for (id, record) in &users {
        match stored.get(id) {
            None => problems.push(format!("acknowledged user {id} is not in PostgreSQL")),
            Some((name, _)) if !record.allows(name) => problems.push(format!(
                "user {id}: PostgreSQL holds {name:?}, the last acknowledged name is {:?}",
                record.acked
            )),
            Some(_) => {}
        }
    }
    for (id, (_, email)) in &stored {
        if !users.contains_key(id) && !unanswered.contains(email) {
            problems.push(format!("user {id} ({email}) is in PostgreSQL but was never registered"));
        }
    }
    if problems.is_empty() {
        Ok(stored.into_iter().map(|(id, (name, _))| (id, name)).collect())
    } else {
        Err(summarize(&problems))
    }
}

/// Reads of `ids` through every instance return the name PostgreSQL holds (`truth`), within [`CATCH_UP_WITHIN`].
/// Returns when they all did.
pub async fn reads_fresh(api: &Api, truth: &HashMap<String, String>, ids: &[String]) -> Result<Instant, String> {
    let deadline = Instant::now() + CATCH_UP_WITHIN;
    let mut pending: Vec<(usize, String)> =
        ids.iter().flat_map(|id| (0..api.addresses.len()).map(move |instance| (instance, id.clone()))).collect();
    let mut last_seen: HashMap<(usize, String), String> = HashMap::new();
    loop {
        let mut still = Vec::new();
        for (instance, id) in pending {
            let expected = &truth[&id];
            match api.read(instance, &id).await {
                (Outcome::Ok, Some(name)) if &name == expected => {}
                (outcome, name) => {
                    last_seen.insert((instance, id.clone()), name.unwrap_or_else(|| format!("{outcome:?}")));
                    still.push((instance, id));
                }
            }
        }
        if still.is_empty() {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            let problems: Vec<String> = still
                .iter()
                .map(|(instance, id)| {
                    let seen = &last_seen[&(*instance, id.clone())];
                    format!("user {id} through instance {instance}: {seen:?}, PostgreSQL holds {:?}", truth[id])
                })
                .collect();
            return Err(format!("stale or failing reads after {CATCH_UP_WITHIN:?}: {}", summarize(&problems)));
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The users to read back: those written during the scenario and a sample of the others.
pub fn to_read(truth: &HashMap<String, String>, api: &Api, touched: &HashSet<String>) -> Vec<String> {
    let known = api.ledger.users.lock().expect("users").keys().cloned().collect::<HashSet<_>>();
    let mut ids: Vec<String> =
        touched.iter().filter(|id| known.contains(*id) && truth.contains_key(*id)).cloned().collect();
    let others = truth.keys().filter(|id| known.contains(*id) && !touched.contains(*id)).take(SAMPLE_OF_OTHERS);
    ids.extend(others.cloned());
    ids
}

/// Counts of `user_created` in the activity trail by user.
async fn created_counts(deployment: &Deployment) -> Result<HashMap<String, u32>, String> {
    let rows = deployment
        .sql("SELECT user_id::text, count(*) FROM user_activity WHERE event_type = 'user_created' GROUP BY user_id")
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| row.split_once('|').and_then(|(id, count)| Some((id.to_string(), count.parse().ok()?))))
        .collect())
}

/// Every user in `expected` has exactly one `user_created` in the activity trail, and no user has more than one,
/// within [`CATCH_UP_WITHIN`]; returns when.
pub async fn created_once(deployment: &Deployment, expected: &HashSet<String>) -> Result<Instant, String> {
    let deadline = Instant::now() + CATCH_UP_WITHIN;
    loop {
        let counts = created_counts(deployment).await.unwrap_or_default();
        let doubled: Vec<String> =
            counts.iter().filter(|(_, count)| **count > 1).map(|(id, count)| format!("user {id}: {count}")).collect();
        if !doubled.is_empty() {
            return Err(format!("user_created recorded more than once: {}", summarize(&doubled)));
        }
        let missing: Vec<String> = expected.iter().filter(|id| !counts.contains_key(*id)).cloned().collect();
        if missing.is_empty() {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} of {} users have no user_created after {CATCH_UP_WITHIN:?}: {}",
                missing.len(),
                expected.len(),
                summarize(&missing)
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The outbox has nothing pending (the relay published everything), within [`CATCH_UP_WITHIN`]; returns when.
pub async fn outbox_drained(deployment: &Deployment) -> Result<Instant, String> {
    let deadline = Instant::now() + CATCH_UP_WITHIN;
    let mut pending = String::from("?");
    loop {
        if let Ok(rows) = deployment.sql("SELECT count(*) FROM outbox WHERE sent_at IS NULL").await {
            pending = rows.first().cloned().unwrap_or_default();
            if pending == "0" {
                return Ok(Instant::now());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("{pending} outbox events still pending after {CATCH_UP_WITHIN:?}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The error of the last line an instance printed at WARN or ERROR that mentions `topic`, shortened: what to read
/// first when a check about it failed.
pub fn last_complaint(deployment: &Deployment, topic: &str) -> Option<String> {
    deployment.instances.iter().find_map(|instance| {
        let output = instance.output();
        let line = output
            .lines()
            .rev()
            .find(|line| line.contains(topic) && (line.contains("WARN") || line.contains("ERROR")))?;
        // A JSON log line: its error says it best.
        let parsed: Option<serde_json::Value> = serde_json::from_str(line).ok();
        let error = parsed.as_ref().and_then(|fields| fields["error"].as_str().or(fields["message"].as_str()));
        Some(error.unwrap_or(line).chars().take(300).collect())
    })
}

/// The first few problems and how many there were.
fn summarize(problems: &[String]) -> String {
    let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
    if problems.len() > shown.len() {
        format!("{} (and {} more)", shown.join("; "), problems.len() - shown.len())
    } else {
        shown.join("; ")
    }
}
