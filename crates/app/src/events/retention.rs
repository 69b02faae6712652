//! The event log's retention: events recorded more than EVENT_LOG_RETENTION ago are deleted, so the log — and
//! whatever personal data clients put into events — does not grow forever. Like the outbox's pruning: a
//! periodic job in every instance, deleting a bounded batch per statement, harmless to run concurrently.

use std::time::Duration;

use infra::postgres::{PostgresClient, PostgresError, sql};
use metrics::{Counter, counter};
use tokio_util::sync::CancellationToken;

/// Counter: events deleted from the event log once older than EVENT_LOG_RETENTION (docs/metrics.md).
pub const PRUNED_METRIC: &str = "event_log_pruned_total";
/// The longest time between two prunings (shorter when the retention is).
const LONGEST_INTERVAL: Duration = Duration::from_secs(60);
/// Events deleted per statement: a large expired backlog goes in short statements that hold few locks.
const BATCH: i64 = 5_000;

/// Deletes expired events from `event_log` until told to stop.
#[derive(Clone)]
pub struct EventLogRetention {
    postgres: PostgresClient,
    retention: Duration,
    pruned: Counter,
}

impl std::fmt::Debug for EventLogRetention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLogRetention").field("retention", &self.retention).finish()
    }
}

impl EventLogRetention {
    /// Keeps events for `retention` after they were recorded. Registers the counter at zero, so it is exported
    /// from the start.
    pub fn new(postgres: PostgresClient, retention: Duration) -> Self {
        let pruned = counter!(PRUNED_METRIC);
        pruned.increment(0);
        EventLogRetention { postgres, retention, pruned }
    }

    /// Prunes at once, then every minute (or every retention when shorter), until `stop` is cancelled.
    /// Failures are logged and retried at the next turn: an expired event waits a little longer, nothing else.
    pub async fn run(self, stop: CancellationToken) {
        let mut every = tokio::time::interval(self.retention.clamp(Duration::from_secs(1), LONGEST_INTERVAL));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            match self.prune(&stop).await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, "expired events deleted from the event log"),
                Err(err) if err.is_unavailable() => tracing::debug!(error = %err, "event log not pruned"),
                Err(err) => tracing::warn!(error = %err, "event log not pruned; trying again later"),
            }
        }
    }

    /// Deletes events recorded before the retention, [`BATCH`] per statement, until none is left or `stop` is
    /// cancelled; returns how many.
    pub async fn prune(&self, stop: &CancellationToken) -> Result<u64, PostgresError> {
        let mut deleted = 0;
        loop {
            let expired = sql("DELETE FROM event_log WHERE id IN (SELECT id FROM event_log \
                 WHERE recorded_at < now() - make_interval(secs => $1) LIMIT $2 FOR UPDATE SKIP LOCKED)")
            .bind(self.retention.as_secs_f64())
            .bind(BATCH);
            let batch = tokio::select! {
                () = stop.cancelled() => return Ok(deleted),
                batch = self.postgres.exec(expired) => batch?,
            };
            deleted += batch;
            self.pruned.increment(batch);
            if batch < BATCH as u64 {
                return Ok(deleted);
            }
        }
    }
}
