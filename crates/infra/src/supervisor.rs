//! Supervision of the service's background tasks (the event consumer, the outbox relay, upkeep loops): a task
//! that ends or panics before shutdown is restarted in-process after a capped exponential backoff (1 s doubling
//! to 30 s), logged once per restart at ERROR, counted in `background_task_restarts_total{task}`, and reported
//! by the `tasks` health component, down while a task waits to be restarted. The process keeps serving
//! meanwhile; shutdown (the task's cancellation token) stops a task for good.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use metrics::counter;
use serde::Serialize;
use serde_json::json;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::{CheckFailure, Details, HealthCheck};

/// Metric names.
pub mod names {
    /// Counter: restarts of a background task that ended or panicked before shutdown, by `task`.
    pub const RESTARTS: &str = "background_task_restarts_total";
}

/// The delay before the first restart.
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
/// The longest delay between two restarts.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A task that ran this long before failing counts as having recovered: its next restart waits the first delay
/// again instead of the doubled one.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Panic messages are cut to this many characters in logs and health.
const MAX_REASON_CHARS: usize = 300;

/// Where a supervised task stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Running.
    Running,
    /// Ended or panicked before shutdown; waiting for its restart.
    Restarting,
    /// Stopped by shutdown.
    Stopped,
}

/// One supervised task, as `/health` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskStatus {
    /// Running, restarting or stopped.
    pub state: TaskState,
    /// Restarts since the process started.
    pub restarts: u64,
    /// How the task last ended unexpectedly (`ended`, `panicked: ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// While restarting: milliseconds until the restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_in_ms: Option<u64>,
    #[serde(skip)]
    restart_at: Option<Instant>,
}

/// Starts background tasks and restarts those that end or panic before their shutdown. Cheap to clone; clones
/// share the tasks' statuses.
#[derive(Clone, Debug, Default)]
pub struct Supervisor {
    tasks: Arc<Mutex<BTreeMap<&'static str, TaskStatus>>>,
}

impl Supervisor {
    /// A supervisor with no tasks yet.
    pub fn new() -> Self {
        Supervisor::default()
    }

    /// Spawns `start()` as the task `name` and restarts it (calling `start` again) whenever it ends or panics
    /// while `stop` is not cancelled. The returned handle ends once the task ended after `stop` was cancelled;
    /// aborting it aborts the task too.
    pub fn spawn<F, Fut>(&self, name: &'static str, stop: CancellationToken, start: F) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        counter!(names::RESTARTS, "task" => name).increment(0);
        self.set(name, |status| status.state = TaskState::Running);
        tokio::spawn(self.clone().supervise(name, stop, start))
    }

    /// Every task's status, by name.
    pub fn statuses(&self) -> BTreeMap<&'static str, TaskStatus> {
        let mut tasks = self.lock().clone();
        let now = Instant::now();
        for status in tasks.values_mut() {
            status.restart_in_ms = status
                .restart_at
                .map(|at| at.saturating_duration_since(now).as_millis().try_into().unwrap_or(u64::MAX));
        }
        tasks
    }

    async fn supervise<F, Fut>(self, name: &'static str, stop: CancellationToken, mut start: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut delay = FIRST_RESTART_DELAY;
        loop {
            self.set(name, |status| {
                status.state = TaskState::Running;
                status.restart_at = None;
            });
            let started = Instant::now();
            let ended = AbortOnDrop(tokio::spawn(start())).await;
            if stop.is_cancelled() {
                break;
            }
            if started.elapsed() >= HEALTHY_RUN {
                delay = FIRST_RESTART_DELAY;
            }
            let reason = failure(ended);
            tracing::error!(task = name, reason = %reason, restart_in = ?delay, "background task stopped unexpectedly; restarting it");
            counter!(names::RESTARTS, "task" => name).increment(1);
            self.set(name, |status| {
                status.state = TaskState::Restarting;
                status.restarts += 1;
                status.last_failure = Some(reason);
                status.restart_at = Some(Instant::now() + delay);
            });
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RESTART_DELAY);
        }
        self.set(name, |status| {
            status.state = TaskState::Stopped;
            status.restart_at = None;
        });
    }

    fn set(&self, name: &'static str, change: impl FnOnce(&mut TaskStatus)) {
        let mut tasks = self.lock();
        let status = tasks.entry(name).or_insert(TaskStatus {
            state: TaskState::Running,
            restarts: 0,
            last_failure: None,
            restart_in_ms: None,
            restart_at: None,
        });
        change(status);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, TaskStatus>> {
        self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How a task ended: by returning, by panicking (with the panic's message) or by being cancelled.
fn failure(ended: Result<(), JoinError>) -> String {
    let reason = match ended {
        Ok(()) => "ended".to_string(),
        Err(err) if err.is_panic() => format!("panicked: {}", panic_message(err.into_panic())),
        Err(_) => "cancelled".to_string(),
    };
    reason.chars().take(MAX_REASON_CHARS).collect()
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(|| "(no message)".to_string(), |m| m.to_string()),
    }
}

/// A spawned task aborted when its supervisor is dropped or aborted (shutdown gave up waiting for it).
struct AbortOnDrop(JoinHandle<()>);

impl Future for AbortOnDrop {
    type Output = Result<(), JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The `tasks` health component: down while a supervised task waits to be restarted (register it as optional:
/// the service is then degraded, still ready); details list every task's state and restarts.
#[derive(Clone, Debug)]
pub struct TasksHealth {
    supervisor: Supervisor,
}

impl TasksHealth {
    /// Reports `supervisor`'s tasks.
    pub fn new(supervisor: Supervisor) -> Self {
        TasksHealth { supervisor }
    }
}

#[async_trait]
impl HealthCheck for TasksHealth {
    fn name(&self) -> &'static str {
        "tasks"
    }

    async fn check(&self) -> Result<Details, CheckFailure> {
        let tasks = self.supervisor.statuses();
        let restarting: Vec<String> = tasks
            .iter()
            .filter(|(_, status)| status.state == TaskState::Restarting)
            .map(|(name, status)| {
                let why = status.last_failure.as_deref().unwrap_or("ended");
                format!("{name} restarting in {} ms ({why})", status.restart_in_ms.unwrap_or(0))
            })
            .collect();
        if !restarting.is_empty() {
            return Err(CheckFailure::new(restarting.join("; ")));
        }
        let mut details = Details::new();
        for (name, status) in tasks {
            details.insert(name.to_string(), json!(status));
        }
        Ok(details)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Lets the supervisor and its task run until they are all idle (the clock is paused in these tests).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// A task that panics on its first `panics` starts, then runs until `stop`; counts its starts.
    fn flaky(
        starts: Arc<AtomicU32>,
        panics: u32,
        stop: CancellationToken,
    ) -> impl FnMut() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static {
        move || {
            let (starts, stop) = (starts.clone(), stop.clone());
            Box::pin(async move {
                if starts.fetch_add(1, Ordering::SeqCst) < panics {
                    panic!("test hook: boom");
                }
                stop.cancelled().await;
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_with_doubling_delays_and_reported_meanwhile() {
        let supervisor = Supervisor::new();
        let health = TasksHealth::new(supervisor.clone());
        let (stop, starts) = (CancellationToken::new(), Arc::new(AtomicU32::new(0)));
        let task = supervisor.spawn("flaky", stop.clone(), flaky(starts.clone(), 3, stop.clone()));
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        let status = &supervisor.statuses()["flaky"];
        assert_eq!(status.state, TaskState::Restarting);
        assert_eq!(status.last_failure.as_deref(), Some("panicked: test hook: boom"));
        let failure = health.check().await.expect_err("down while restarting");
        assert!(failure.0.contains("flaky restarting in 1000 ms (panicked: test hook: boom)"), "{failure}");

        // Restarts after 1 s, then 2 s, then 4 s.
        for (delay, starts_after) in [(1, 2), (2, 3), (4, 4)] {
            tokio::time::advance(Duration::from_millis(delay * 1000 - 10)).await;
            settle().await;
            assert_eq!(starts.load(Ordering::SeqCst), starts_after - 1, "not before {delay} s");
            tokio::time::advance(Duration::from_millis(10)).await;
            settle().await;
            assert_eq!(starts.load(Ordering::SeqCst), starts_after, "after {delay} s");
        }
        let status = &supervisor.statuses()["flaky"];
        assert_eq!((status.state, status.restarts), (TaskState::Running, 3));
        let details = health.check().await.expect("up once running again");
        assert_eq!(details["flaky"]["state"], "running");
        assert_eq!(details["flaky"]["restarts"], 3);

        stop.cancel();
        task.await.expect("the supervisor ends with its task");
        assert_eq!(supervisor.statuses()["flaky"].state, TaskState::Stopped);
        assert_eq!(starts.load(Ordering::SeqCst), 4, "not restarted after shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_returns_early_is_restarted_and_delays_stop_doubling_at_30_s() {
        let supervisor = Supervisor::new();
        let stop = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        let task = supervisor.spawn("quitter", stop.clone(), move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {}
        });
        // Restarts at 1, 3, 7, 15, 31, 61 and 91 s (delays 1, 2, 4, 8, 16, 30, 30 s): eight starts.
        for _ in 0..95 {
            tokio::time::advance(Duration::from_secs(1)).await;
            settle().await;
        }
        assert_eq!(starts.load(Ordering::SeqCst), 8);
        let status = &supervisor.statuses()["quitter"];
        assert_eq!(status.last_failure.as_deref(), Some("ended"));
        assert_eq!(status.restarts, 8);
        assert!(status.restart_in_ms.is_some_and(|ms| ms <= 30_000), "{status:?}");
        stop.cancel();
        task.await.expect("a task waiting for its restart stops at once");
        assert_eq!(supervisor.statuses()["quitter"].state, TaskState::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_stopped_by_shutdown_is_not_restarted() {
        let supervisor = Supervisor::new();
        let stop = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let task = supervisor.spawn("worker", stop.clone(), flaky(starts.clone(), 0, stop.clone()));
        settle().await;
        stop.cancel();
        task.await.expect("stopped");
        tokio::time::advance(Duration::from_secs(60)).await;
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        let status = &supervisor.statuses()["worker"];
        assert_eq!((status.state, status.restarts), (TaskState::Stopped, 0));
    }
}
