//! The relay: publishes the outbox's pending events to Kafka in `seq` order and marks them sent, prunes sent
//! events after OUTBOX_RETENTION, and measures the backlog.
//!
//! Guarantees, and what they rest on:
//! - **Nothing is lost.** A row is marked sent only after Kafka acknowledged it (acks=all). While Kafka or
//!   PostgreSQL is down, rows simply wait; the relay backs off and retries for as long as it takes.
//! - **At least once, in practice once.** A row is published again only when its acknowledgement could not be
//!   recorded (PostgreSQL failed after Kafka acked, or the process died in between). Consumers deduplicate by
//!   event id (`processed_events`).
//! - **One relay at a time.** Each round runs in one transaction that first takes a transaction-scoped advisory
//!   lock; among several instances only the holder publishes, the others wait for the next poll. So no row is
//!   published twice by two relays, and events of one key leave in `seq` order. Within a key `seq` order is the
//!   commit order: every write of a user locks its row before appending its event.
//! - **Order per key, even across failures.** A round sends the events of each key one after the other, each
//!   once the previous one was acknowledged, and the keys concurrently. When an event fails, the later events
//!   of its key wait for the next round: no event overtakes an earlier one of its key.
//! - **Poison events are parked, not retried forever.** An event Kafka rejects for its own sake (too large,
//!   malformed: [`ProduceError::is_record_rejected`]) is parked once it failed OUTBOX_MAX_ATTEMPTS times: kept
//!   with its last error, no longer sent, counted in `outbox_parked_events` — so its key moves on. Outages,
//!   timeouts and a missing topic never park anything.
//! - **A broker that lost its topics gets them back.** After failed sends the relay looks the topic up and, when
//!   the broker does not know it, re-creates it (KAFKA_CREATE_TOPICS) or reports it (see [`EventTopics`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use infra::kafka::{KafkaProducer, ProduceError};
use infra::postgres::{PostgresClient, PostgresError, sql};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::metrics::OutboxMetrics;
use super::topics::{EventTopics, TopicState};
use crate::settings::OutboxSettings;

/// The advisory lock only the publishing relay holds: "outbox" in ASCII. Any other user of advisory locks in
/// this database must stay clear of this key.
pub const RELAY_LOCK_KEY: i64 = 0x6f75_7462_6f78;
/// The longest wait between two attempts while Kafka or PostgreSQL is failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A round never legitimately takes this long (its sends are bounded by KAFKA_DELIVERY_TIMEOUT, its statements
/// by POSTGRES_STATEMENT_TIMEOUT): only a connection that hangs without an error gets here, and is cut.
const ROUND_TIMEOUT: Duration = Duration::from_secs(300);
/// When asked to stop in the middle of a round, how long the round may still take, so the records Kafka
/// already acknowledged get marked sent. Past it the round is abandoned: its rows stay pending and are
/// published again later (the consumers deduplicate).
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How often sent events older than the retention are looked for (more often when the retention is shorter).
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Rows deleted per pruning statement: a big backlog of expired rows is removed in short statements, not one
/// long one that holds locks and bloats the WAL at once.
const PRUNE_BATCH: i64 = 5_000;
/// The backlog measurement runs at most this often (and at the poll interval when that is longer).
const MIN_BACKLOG_INTERVAL: Duration = Duration::from_secs(1);
/// A backlog whose oldest event waits this long may be stuck on a topic the broker lost: sends to a topic the
/// producer knew fail only at KAFKA_DELIVERY_TIMEOUT, so the topic is looked up meanwhile, at most this often.
const STUCK_BACKLOG: Duration = Duration::from_secs(5);

/// Why a relay round, a pruning or a backlog measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A statement failed; `doing` says which step.
    #[error("outbox relay: {doing}: {source}")]
    Postgres {
        /// The step that failed.
        doing: &'static str,
        /// PostgreSQL's error.
        #[source]
        source: PostgresError,
    },
    /// Some events of the round were not acknowledged by Kafka; they stay pending.
    #[error("outbox relay: {failed} of {attempted} event(s) not acknowledged by Kafka: {first}")]
    Publish {
        /// Events sent this round.
        attempted: usize,
        /// Events not acknowledged.
        failed: usize,
        /// The first failure, in `seq` order.
        first: ProduceError,
    },
    /// The round took longer than any bounded step can: a hung connection.
    #[error("outbox relay: the round did not finish within {0:?}; abandoned (its events stay pending)")]
    TimedOut(Duration),
}

impl RelayError {
    fn postgres(doing: &'static str) -> impl FnOnce(PostgresError) -> RelayError {
        move |source| RelayError::Postgres { doing, source }
    }
}

/// What one round did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Round {
    /// Another relay holds the lock: it does the publishing.
    LockBusy,
    /// This relay published `published` events; `full` when it found a whole batch (more may be waiting).
    Published { published: usize, full: bool },
}

/// The outbox backlog as the relay last measured it, shared with the health check so `/health/kafka` shows it
/// without a query of its own.
#[derive(Clone, Debug, Default)]
pub struct Backlog(Arc<Mutex<Option<BacklogSnapshot>>>);

/// Pending events and the oldest one's time, at one measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BacklogSnapshot {
    /// Events not yet acknowledged by Kafka, parked ones aside.
    pub pending: i64,
    /// When the oldest of them happened; `None` when nothing is pending.
    pub oldest_occurred_at: Option<OffsetDateTime>,
    /// Events parked after OUTBOX_MAX_ATTEMPTS rejections: they wait for an operator (docs/architecture.md).
    pub parked: i64,
}

impl BacklogSnapshot {
    /// How long the oldest pending event has been waiting at `now` (zero when none is): the relay's delay as
    /// the consumers feel it.
    pub fn oldest_age(&self, now: OffsetDateTime) -> Duration {
        self.oldest_occurred_at
            .map(|oldest| Duration::try_from(now - oldest).unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::ZERO)
    }
}

impl Backlog {
    /// The last measurement; `None` before the first one and after a failed one (PostgreSQL unreachable): the
    /// backlog is unknown then, and an old number would mislead.
    pub fn snapshot(&self) -> Option<BacklogSnapshot> {
        self.0.lock().map(|snapshot| *snapshot).unwrap_or(None)
    }

    fn set(&self, snapshot: Option<BacklogSnapshot>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = snapshot;
        }
    }
}

/// Publishes the outbox to the event topic. Build it with the service's clients; [`OutboxRelay::run`] until
/// told to stop. Several instances of the service may each run one: they take turns (see the module docs).
pub struct OutboxRelay {
    postgres: PostgresClient,
    producer: KafkaProducer,
    topic: String,
    settings: OutboxSettings,
    backlog: Backlog,
    metrics: OutboxMetrics,
    topics: Option<Arc<EventTopics>>,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay").field("topic", &self.topic).field("settings", &self.settings).finish()
    }
}

/// A pending row as the relay reads it: seq, event type, key, payload (JSON text), traceparent, tracestate.
type PendingRow = (i64, String, String, String, Option<String>, Option<String>);

/// What the sends of one round came to.
#[derive(Debug, Default)]
struct Sends {
    /// Acknowledged events.
    sent: Vec<i64>,
    /// Failed events: `seq`, the error, and whether Kafka rejected the event for its own sake.
    failed: Vec<(i64, String, bool)>,
    /// The failure of the lowest `seq`.
    first_error: Option<(i64, ProduceError)>,
}

impl OutboxRelay {
    /// A relay publishing to `topic` through `producer`. Registers the outbox metrics at zero, so they are
    /// exported from the start.
    pub fn new(postgres: PostgresClient, producer: KafkaProducer, topic: String, settings: OutboxSettings) -> Self {
        let (backlog, metrics) = (Backlog::default(), OutboxMetrics::new());
        OutboxRelay { postgres, producer, topic, settings, backlog, metrics, topics: None }
    }

    /// After failed sends, looks `topics` up and re-creates or reports a topic the broker lost.
    pub fn with_topics(mut self, topics: Arc<EventTopics>) -> Self {
        self.topics = Some(topics);
        self
    }

    /// The backlog this relay measures, for the health check.
    pub fn backlog(&self) -> Backlog {
        self.backlog.clone()
    }

    /// Publishes, measures and prunes until `stop` is cancelled. Never fails: outages are logged (once each)
    /// and waited out. Returns within [`STOP_GRACE`] of the cancellation, plus one statement at most.
    pub async fn run(&self, stop: CancellationToken) {
        tracing::info!(topic = %self.topic, batch = self.settings.batch_size, poll = ?self.settings.poll_interval, "outbox relay started");
        tokio::join!(self.publish_loop(&stop), self.upkeep_loop(&stop));
        tracing::info!("outbox relay stopped");
    }

    async fn publish_loop(&self, stop: &CancellationToken) {
        let mut outage = Outage::default();
        let mut backoff = self.backoff();
        while !stop.is_cancelled() {
            let round = tokio::time::timeout(ROUND_TIMEOUT, self.round());
            tokio::pin!(round);
            let outcome = tokio::select! {
                outcome = &mut round => outcome,
                () = stop.cancelled() => match tokio::time::timeout(STOP_GRACE, &mut round).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        tracing::info!(grace = ?STOP_GRACE, "outbox relay round abandoned at shutdown; its events stay pending");
                        return;
                    }
                },
            };
            let wait = match outcome.unwrap_or(Err(RelayError::TimedOut(ROUND_TIMEOUT))) {
                Ok(Round::Published { full: true, .. }) => {
                    outage.over();
                    backoff = self.backoff();
                    continue;
                }
                Ok(Round::Published { .. }) => {
                    outage.over();
                    backoff = self.backoff();
                    self.settings.poll_interval
                }
                // Another instance publishes; whether this one could is unknown, so the outage state stays.
                Ok(Round::LockBusy) => self.settings.poll_interval,
                Err(err) => {
                    outage.failed(&err);
                    let delay = backoff.next().unwrap_or(MAX_BACKOFF).min(MAX_BACKOFF);
                    if self.recover_from(&err).await { self.settings.poll_interval } else { delay }
                }
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Exponential from the poll interval up to [`MAX_BACKOFF`], with jitter so instances do not retry in step.
    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.settings.poll_interval)
            .with_max_delay(MAX_BACKOFF)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// One round in one transaction: the lock, the batch, the sends, the marks.
    async fn round(&self) -> Result<Round, RelayError> {
        let mut tx = self.postgres.begin().await.map_err(RelayError::postgres("beginning the round"))?;
        let (locked,): (bool,) = tx
            .query_one(sql("SELECT pg_try_advisory_xact_lock($1)").bind(RELAY_LOCK_KEY))
            .await
            .map_err(RelayError::postgres("taking the relay lock"))?;
        if !locked {
            let _ = tx.rollback().await;
            return Ok(Round::LockBusy);
        }
        let batch = i64::from(self.settings.batch_size);
        let rows: Vec<PendingRow> = tx
            .query(
                sql("SELECT seq, event_type, key, payload::text, traceparent, tracestate FROM outbox \
                     WHERE sent_at IS NULL AND parked_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED")
                .bind(batch),
            )
            .await
            .map_err(RelayError::postgres("reading pending events"))?;
        if rows.is_empty() {
            tx.commit().await.map_err(RelayError::postgres("ending an empty round"))?;
            return Ok(Round::Published { published: 0, full: false });
        }
        let sends = self.publish_in_key_order(&rows).await;
        self.metrics.published.increment(sends.sent.len() as u64);
        self.metrics.publish_failures.increment(sends.failed.len() as u64);
        if !sends.sent.is_empty() {
            tx.exec(sql("UPDATE outbox SET sent_at = now() WHERE seq = ANY($1)").bind(sends.sent.as_slice()))
                .await
                .map_err(RelayError::postgres("marking acknowledged events sent"))?;
        }
        let parked = self.record_failures(&mut tx, &sends).await?;
        tx.commit().await.map_err(RelayError::postgres("committing the round"))?;
        for (seq, event_type, error) in &parked {
            tracing::warn!(seq, %event_type, %error, attempts = self.settings.max_attempts, "outbox event parked: Kafka rejects it; the later events of its key go on (see docs/architecture.md to inspect or un-park it)");
        }
        self.metrics.parked.increment(parked.len() as u64);
        match sends.first_error {
            // Nothing went through: an outage (or only poison events left), worth a backoff.
            Some((_, first)) if sends.sent.is_empty() => {
                Err(RelayError::Publish { attempted: sends.failed.len(), failed: sends.failed.len(), first })
            }
            _ => Ok(Round::Published { published: sends.sent.len(), full: rows.len() as i64 >= batch }),
        }
    }

    /// Sends `rows` (in `seq` order) key by key: the events of one key one after the other, each once the
    /// previous one was acknowledged, the keys concurrently. A key's first failure ends its turn: its later
    /// events are not sent this round, so none overtakes the failed one.
    async fn publish_in_key_order<'r>(&self, rows: &'r [PendingRow]) -> Sends {
        let mut chains: Vec<Vec<&'r PendingRow>> = Vec::new();
        let mut chain_of: HashMap<&'r str, usize> = HashMap::new();
        for row in rows {
            let index = *chain_of.entry(row.2.as_str()).or_insert_with(|| {
                chains.push(Vec::new());
                chains.len() - 1
            });
            chains[index].push(row);
        }
        let turns = futures::future::join_all(chains.iter().map(|chain| self.publish_chain(chain))).await;
        let mut sends = Sends::default();
        for (sent, failure) in turns {
            sends.sent.extend(sent);
            if let Some((seq, err)) = failure {
                sends.failed.push((seq, err.to_string(), err.is_record_rejected()));
                sends.first_error = match sends.first_error.take() {
                    Some((first_seq, first)) if first_seq < seq => Some((first_seq, first)),
                    _ => Some((seq, err)),
                };
            }
        }
        sends
    }

    /// One key's turn: its events in order until one fails. The sent `seq`s, and the failed one with its error.
    async fn publish_chain(&self, chain: &[&PendingRow]) -> (Vec<i64>, Option<(i64, ProduceError)>) {
        let mut sent = Vec::with_capacity(chain.len());
        for row in chain {
            match self.publish(row).await {
                Ok(()) => sent.push(row.0),
                Err(err) => return (sent, Some((row.0, err))),
            }
        }
        (sent, None)
    }

    /// Counts the failed sends and their errors, and parks the events Kafka rejected for their own sake once
    /// they reached OUTBOX_MAX_ATTEMPTS. Returns the parked ones: `seq`, event type, error.
    async fn record_failures(
        &self,
        tx: &mut infra::postgres::Transaction,
        sends: &Sends,
    ) -> Result<Vec<(i64, String, String)>, RelayError> {
        if sends.failed.is_empty() {
            return Ok(Vec::new());
        }
        let seqs: Vec<i64> = sends.failed.iter().map(|(seq, _, _)| *seq).collect();
        let errors: Vec<String> = sends.failed.iter().map(|(_, error, _)| error.clone()).collect();
        tx.exec(
            sql("UPDATE outbox SET attempts = attempts + 1, last_error = failed.error \
                 FROM unnest($1::bigint[], $2::text[]) AS failed(seq, error) WHERE outbox.seq = failed.seq")
            .bind(seqs)
            .bind(errors),
        )
        .await
        .map_err(RelayError::postgres("counting failed attempts"))?;
        let rejected: Vec<i64> =
            sends.failed.iter().filter(|(_, _, rejected)| *rejected).map(|(seq, _, _)| *seq).collect();
        if rejected.is_empty() {
            return Ok(Vec::new());
        }
        let max_attempts = i32::try_from(self.settings.max_attempts).unwrap_or(i32::MAX);
        tx.query(
            sql("UPDATE outbox SET parked_at = now() WHERE seq = ANY($1) AND attempts >= $2 \
                 RETURNING seq, event_type, coalesce(last_error, '')")
            .bind(rejected)
            .bind(max_attempts),
        )
        .await
        .map_err(RelayError::postgres("parking rejected events"))
    }

    /// Sends one row: key and value as stored, the event type as a header, and the trace context of the
    /// request that wrote it, so the consumer's work joins that request's trace rather than the relay's.
    async fn publish(&self, row: &PendingRow) -> Result<(), ProduceError> {
        let (_, event_type, key, payload, traceparent, tracestate) = row;
        let mut headers: Vec<(&str, &[u8])> = vec![("event-type", event_type.as_bytes())];
        if let Some(traceparent) = traceparent {
            headers.push(("traceparent", traceparent.as_bytes()));
        }
        if let Some(tracestate) = tracestate {
            headers.push(("tracestate", tracestate.as_bytes()));
        }
        self.producer.produce(&self.topic, Some(key.as_bytes()), payload.as_bytes(), &headers).await?;
        Ok(())
    }

    /// Measures the backlog regularly (also while a round waits for an unreachable broker) and prunes once a
    /// minute, or every OUTBOX_RETENTION when that is shorter.
    async fn upkeep_loop(&self, stop: &CancellationToken) {
        let mut measure = tokio::time::interval(self.settings.poll_interval.max(MIN_BACKLOG_INTERVAL));
        measure.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let prune_every = prune_interval(self.settings.retention);
        let mut next_prune = Instant::now();
        let mut next_topic_check = Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = measure.tick() => {}
            }
            let prune = Instant::now() >= next_prune;
            if prune {
                next_prune = Instant::now() + prune_every;
            }
            // A statement in progress is dropped at shutdown: both are harmless to interrupt.
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.upkeep(prune, stop) => {}
            }
            if Instant::now() >= next_topic_check && self.backlog_stuck() {
                next_topic_check = Instant::now() + STUCK_BACKLOG;
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = self.restore_topics() => {}
                }
            }
        }
    }

    /// After a round whose sends failed: brings back a topic the broker lost, and replaces a producer whose sends
    /// time out while the broker answers (an idempotent producer can hang after a broker restarted without its
    /// state, see docs/reliability.md). Whether something was repaired, so the next round need not wait the
    /// backoff out.
    async fn recover_from(&self, err: &RelayError) -> bool {
        let RelayError::Publish { first, .. } = err else { return false };
        match self.restore_topics().await {
            TopicState::Created => true,
            TopicState::Present if matches!(first, ProduceError::TimedOut { .. }) => {
                self.producer.replace("sends timed out while the broker answers");
                true
            }
            _ => false,
        }
    }

    /// Whether the oldest pending event has waited [`STUCK_BACKLOG`] or longer.
    fn backlog_stuck(&self) -> bool {
        let now = OffsetDateTime::now_utc();
        self.backlog
            .snapshot()
            .is_some_and(|snapshot| snapshot.pending > 0 && snapshot.oldest_age(now) >= STUCK_BACKLOG)
    }

    /// Re-creates or reports a topic the broker lost (see [`EventTopics::restore`]).
    async fn restore_topics(&self) -> TopicState {
        match &self.topics {
            Some(topics) => topics.restore().await,
            None => TopicState::Unknown,
        }
    }

    async fn upkeep(&self, prune: bool, stop: &CancellationToken) {
        if let Err(err) = self.measure_backlog().await {
            tracing::debug!(error = %err, "outbox backlog not measured");
        }
        if prune {
            match self.prune(stop).await {
                Ok(0) => {}
                Ok(pruned) => tracing::debug!(pruned, "sent outbox events pruned"),
                Err(err) if is_unavailable(&err) => tracing::debug!(error = %err, "outbox not pruned"),
                Err(err) => tracing::warn!(error = %err, "outbox not pruned; trying again later"),
            }
        }
    }

    /// Counts the pending events and finds the oldest (one statement on the partial `outbox_pending` index),
    /// updates the gauges and the health check's view.
    async fn measure_backlog(&self) -> Result<BacklogSnapshot, RelayError> {
        let measured = self
            .postgres
            .query_one::<(i64, Option<OffsetDateTime>, i64)>(sql(
                "SELECT count(*) FILTER (WHERE parked_at IS NULL), min(occurred_at) FILTER (WHERE parked_at IS NULL), \
                 count(*) FILTER (WHERE parked_at IS NOT NULL) FROM outbox WHERE sent_at IS NULL",
            ))
            .await
            .map_err(RelayError::postgres("measuring the backlog"));
        let (pending, oldest_occurred_at, parked) = match measured {
            Ok(measured) => measured,
            Err(err) => {
                self.backlog.set(None);
                return Err(err);
            }
        };
        let snapshot = BacklogSnapshot { pending, oldest_occurred_at, parked };
        self.metrics.pending.set(pending as f64);
        self.metrics.parked_now.set(parked as f64);
        self.metrics.oldest_pending_age.set(snapshot.oldest_age(OffsetDateTime::now_utc()).as_secs_f64());
        self.backlog.set(Some(snapshot));
        Ok(snapshot)
    }

    /// Deletes sent events older than the retention, [`PRUNE_BATCH`] per statement, until none is left or
    /// `stop` is cancelled. Returns how many were deleted.
    async fn prune(&self, stop: &CancellationToken) -> Result<u64, RelayError> {
        let retention = self.settings.retention.as_secs_f64();
        let mut total = 0;
        while !stop.is_cancelled() {
            let deleted = self
                .postgres
                .exec(
                    sql("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox \
                         WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1) \
                         ORDER BY sent_at LIMIT $2 FOR UPDATE SKIP LOCKED)")
                    .bind(retention)
                    .bind(PRUNE_BATCH),
                )
                .await
                .map_err(RelayError::postgres("pruning sent events"))?;
            total += deleted;
            self.metrics.pruned.increment(deleted);
            if deleted < PRUNE_BATCH as u64 {
                break;
            }
        }
        Ok(total)
    }
}

fn is_unavailable(err: &RelayError) -> bool {
    matches!(err, RelayError::Postgres { source, .. } if source.is_unavailable())
}

/// Pruning runs every minute, or every `retention` when shorter (at least once a second).
fn prune_interval(retention: Duration) -> Duration {
    retention.clamp(Duration::from_secs(1), PRUNE_INTERVAL)
}

/// Logs an outage once: a warning at the first failed round, an info line when a round succeeds again — not a
/// line per retry (the retries are at debug level).
#[derive(Debug, Default)]
struct Outage {
    /// When the outage began and how many rounds failed since.
    since: Option<(Instant, u32)>,
}

impl Outage {
    fn failed(&mut self, err: &RelayError) {
        match &mut self.since {
            None => {
                tracing::warn!(error = %err, "outbox relay cannot publish; events wait in the outbox, retrying with backoff");
                self.since = Some((Instant::now(), 1));
            }
            Some((_, rounds)) => {
                *rounds += 1;
                tracing::debug!(error = %err, failed_rounds = *rounds, "outbox relay still failing");
            }
        }
    }

    fn over(&mut self) {
        if let Some((since, rounds)) = self.since.take() {
            tracing::info!(failed_rounds = rounds, outage = ?since.elapsed(), "outbox relay publishing again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_age_is_zero_without_pending_events_and_never_negative() {
        let now = OffsetDateTime::now_utc();
        let none = BacklogSnapshot { pending: 0, oldest_occurred_at: None, parked: 0 };
        assert_eq!(none.oldest_age(now), Duration::ZERO);
        let old =
            BacklogSnapshot { pending: 3, oldest_occurred_at: Some(now - time::Duration::seconds(90)), parked: 0 };
        assert_eq!(old.oldest_age(now), Duration::from_secs(90));
        let future =
            BacklogSnapshot { pending: 1, oldest_occurred_at: Some(now + time::Duration::seconds(5)), parked: 0 };
        assert_eq!(future.oldest_age(now), Duration::ZERO, "another instance's clock may run ahead");
    }

    #[test]
    fn pruning_runs_every_minute_or_every_retention_when_shorter() {
        assert_eq!(prune_interval(Duration::from_secs(7 * 24 * 3600)), Duration::from_secs(60));
        assert_eq!(prune_interval(Duration::from_secs(10)), Duration::from_secs(10));
        assert_eq!(prune_interval(Duration::from_millis(10)), Duration::from_secs(1));
    }

    // The only test reaching these log lines: tracing caches whether a line is wanted where it is first reached,
    // so an integration test capturing them beside apps of other tests on other threads would be flaky.
    #[test]
    fn an_outage_is_logged_once_when_it_begins_and_once_when_it_ends() {
        let logs = test_support::CapturedLogs::default();
        let _guard = logs.install();
        let mut outage = Outage::default();
        outage.over();
        assert!(outage.since.is_none());
        let err = RelayError::TimedOut(ROUND_TIMEOUT);
        for _ in 0..3 {
            outage.failed(&err);
        }
        assert_eq!(outage.since.map(|(_, rounds)| rounds), Some(3));
        outage.over();
        assert!(outage.since.is_none());
        outage.failed(&err);

        let text = logs.text();
        let lines = |level: &str, message: &str| {
            text.lines().filter(|line| line.contains(&format!("\"{level}\"")) && line.contains(message)).count()
        };
        assert_eq!(lines("WARN", "outbox relay cannot publish"), 2, "one warning per outage:\n{text}");
        assert_eq!(lines("DEBUG", "outbox relay still failing"), 2, "the retries at debug level:\n{text}");
        assert_eq!(lines("INFO", "outbox relay publishing again"), 1, "one line at the recovery:\n{text}");
        assert!(text.contains("\"failed_rounds\":3"), "{text}");
    }

    #[test]
    fn the_backlog_is_unknown_until_measured() {
        let backlog = Backlog::default();
        assert_eq!(backlog.snapshot(), None);
        let snapshot = BacklogSnapshot { pending: 2, oldest_occurred_at: None, parked: 1 };
        backlog.set(Some(snapshot));
        assert_eq!(backlog.clone().snapshot(), Some(snapshot));
    }
}
