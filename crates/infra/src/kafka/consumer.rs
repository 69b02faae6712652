//! The consumer: a group member that hands records to a [`Handler`] one at a time, retries failures with
//! backoff, dead-letters what still fails, and stores a record's offset only once it is handled or
//! dead-lettered (at-least-once). Offsets are committed every second and on shutdown.
//!
//! Records are handled one at a time, in order, across the assigned partitions: records with the same key
//! (same partition) are handled in the order they were produced, and a record being retried holds back the
//! records after it — for at most KAFKA_MAX_RETRIES backoffs, after which it goes to the dead-letter topic and
//! consumption moves on.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use opentelemetry_semantic_conventions::attribute::ERROR_TYPE;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::client::base_client_config;
use super::config::KafkaConfig;
use super::connectivity::{Connectivity, is_connection_error, is_missing_topic};
use super::dlq::dead_letter_headers;
use super::error::{ConsumeError, FailureKind, HandlerError};
use super::metrics::ConsumerMetrics;
use super::producer::KafkaProducer;
use super::record::headers::{CORRELATION_ID, TRACEPARENT};
use super::record::{Record, RecordHeaders};
use super::spans;
use super::state::{ConsumerState, LagReport};
use crate::telemetry::propagation;

/// How often librdkafka reports statistics (lag, group state) and commits stored offsets.
const STATS_AND_COMMIT_EVERY: Duration = Duration::from_secs(1);
/// How often the consumer refreshes topic metadata, so a topic created after it subscribed is consumed soon.
const METADATA_REFRESH: Duration = Duration::from_secs(10);

/// The longest delay between two handler attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// The longest delay between two attempts while waiting for an unavailable dependency: once it is back, the
/// consumer resumes within this time.
const MAX_WAIT_DELAY: Duration = Duration::from_secs(5);

/// The application's work on one record.
#[async_trait]
pub trait Handler: Send + Sync {
    /// Handles `record`. `Ok` stores its offset; an error is retried or dead-lettered.
    async fn handle(&self, record: &Record) -> Result<(), HandlerError>;
}

/// Feeds librdkafka's statistics and rebalances into the shared [`ConsumerState`]; its connection errors and
/// log lines go through [`Connectivity`] (one WARN per outage, not one per reconnect).
struct StateContext {
    state: ConsumerState,
    connectivity: Connectivity,
}

impl ClientContext for StateContext {
    fn stats(&self, statistics: Statistics) {
        self.connectivity.stats(&statistics);
        self.state.update_from(&statistics);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.connectivity.log(level, facility, message);
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        self.connectivity.error(&error, reason);
    }
}

impl ConsumerContext for StateContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assignment) => {
                let topic = self.state.snapshot().topic;
                let partitions =
                    assignment.elements().iter().filter(|e| e.topic() == topic).map(|e| e.partition()).collect();
                self.state.assigned(partitions);
            }
            Rebalance::Revoke(_) => self.state.assigned(Vec::new()),
            Rebalance::Error(err) => tracing::warn!(target: "infra::kafka", error = %err, "Kafka rebalance failed"),
        }
    }
}

/// A group member of KAFKA_CONSUMER_GROUP reading KAFKA_TOPIC.
pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer<StateContext>>,
    dead_letters: KafkaProducer,
    topic: String,
    dlq_topic: String,
    max_retries: u32,
    backoff: ExponentialBuilder,
    state: ConsumerState,
    metrics: ConsumerMetrics,
    address: String,
    server: spans::Server,
    group: String,
}

impl fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConsumer").field("topic", &self.topic).finish_non_exhaustive()
    }
}

/// What became of one record.
enum Outcome {
    /// Handled, or dead-lettered, `at` that instant: its offset may be stored.
    Done { at: Instant },
    /// Shutdown came first: the record stays unacknowledged and is redelivered later.
    Interrupted,
}

impl KafkaConsumer {
    /// Subscribes to KAFKA_TOPIC; dead letters go through `dead_letters` to KAFKA_DLQ_TOPIC. librdkafka joins the
    /// group in the background, so this succeeds with brokers down.
    pub fn connect_lazy(config: &KafkaConfig, dead_letters: KafkaProducer) -> Result<Self, ConsumeError> {
        Self::connect_lazy_reporting_to(config, dead_letters, ConsumerState::new(&config.topic))
    }

    /// Like [`KafkaConsumer::connect_lazy`], for a consumer replacing an earlier one (restarted after it
    /// ended or panicked): it reports to the earlier one's `state`, reset, so health checks holding that
    /// state follow the new consumer.
    pub fn connect_lazy_reporting_to(
        config: &KafkaConfig,
        dead_letters: KafkaProducer,
        state: ConsumerState,
    ) -> Result<Self, ConsumeError> {
        state.reset();
        let consumer: StreamConsumer<StateContext> = base_client_config(config)
            .set("group.id", &config.consumer_group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", STATS_AND_COMMIT_EVERY.as_millis().to_string())
            // Offsets are stored by hand once a record is handled: at-least-once.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", config.session_timeout.as_millis().to_string())
            .set("statistics.interval.ms", STATS_AND_COMMIT_EVERY.as_millis().to_string())
            .set("allow.auto.create.topics", "false")
            // A subscribed topic that does not exist yet (created a moment after the consumer subscribed) is only
            // seen at the next metadata refresh: every 5 minutes by default, 10 s here.
            .set("topic.metadata.refresh.interval.ms", METADATA_REFRESH.as_millis().to_string())
            .create_with_context(StateContext {
                state: state.clone(),
                connectivity: Connectivity::new(&config.bootstrap_servers(), "consumer"),
            })
            .map_err(ConsumeError::Start)?;
        consumer.subscribe(&[&config.topic]).map_err(ConsumeError::Start)?;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(config.retry_backoff)
            .with_max_delay(MAX_RETRY_DELAY)
            .with_max_times(config.max_retries as usize)
            .with_jitter();
        Ok(KafkaConsumer {
            consumer: Arc::new(consumer),
            dead_letters,
            topic: config.topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            max_retries: config.max_retries,
            backoff,
            state,
            metrics: ConsumerMetrics::new(&config.topic),
            address: config.bootstrap_servers(),
            server: spans::Server::first_of(&config.bootstrap_servers()),
            group: config.consumer_group.clone(),
        })
    }

    /// The bootstrap brokers (KAFKA_BROKERS), safe to log.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Group membership, assignment and lag, for health checks.
    pub fn state(&self) -> ConsumerState {
        self.state.clone()
    }

    /// Consumes until `shutdown` is cancelled, then commits what was handled and leaves the group, within
    /// `close_timeout`. The record in hand is finished first; one waiting for a retry is left for redelivery.
    #[doc(alias = "consume_with_tracing")]
    pub async fn consume(self, handler: &dyn Handler, shutdown: CancellationToken, close_timeout: Duration) {
        // Records polled while a slow handler call ran (see `process_polling`), handled next, in order.
        let mut polled = VecDeque::new();
        let mut lag = LagReport::new(self.state.clone());
        loop {
            // The message stays borrowed until its offset is stored: storing through the message's own topic
            // handle saves librdkafka a topic look-up (and a C string) per record.
            let (record, message) = match polled.pop_front() {
                Some(record) => (record, None),
                None => {
                    // Checked first, then awaited only while nothing is ready: registering a waiter on the token
                    // for every record cost more than the check.
                    if shutdown.is_cancelled() {
                        break;
                    }
                    let recv = self.consumer.recv();
                    tokio::pin!(recv);
                    let message = match poll_once(recv.as_mut()).await {
                        Poll::Ready(message) => message,
                        Poll::Pending => {
                            // Nothing more to read for now: the lag reported becomes exact.
                            lag.report();
                            tokio::select! {
                                biased;
                                message = &mut recv => message,
                                () = shutdown.cancelled() => break,
                                // Nothing to read may mean a position past the end of a re-created log.
                                () = self.state.rewind_requested() => {
                                    self.rewind();
                                    continue;
                                }
                            }
                        }
                    };
                    match message {
                        Ok(message) => (Record::from_message(&message), Some(message)),
                        Err(err) => {
                            self.consumer_error(&err);
                            continue;
                        }
                    }
                }
            };
            let (outcome, more) = self.process_polling(handler, &record, &shutdown).await;
            polled.extend(more);
            match outcome {
                Outcome::Done { at } => {
                    self.store_offset(&record, message.as_ref());
                    lag.handled(record.partition, record.offset, at);
                }
                Outcome::Interrupted => break,
            }
        }
        lag.report();
        self.close(close_timeout).await;
    }

    /// Runs `process` while librdkafka's callbacks keep being served. They are served only while the consumer
    /// polls, so a handler call that outlasts a statistics interval would freeze the lag and group state (and
    /// delay rebalances). Past that interval, fetching is paused and polling goes on alongside the handler;
    /// a record polled meanwhile (from a partition assigned in between) pauses its partition too and is
    /// returned, to be handled next. Resuming restarts each partition after the last record polled from it,
    /// so nothing is skipped or reordered.
    async fn process_polling(
        &self,
        handler: &dyn Handler,
        record: &Record,
        shutdown: &CancellationToken,
    ) -> (Outcome, Vec<Record>) {
        let work = self.process(handler, record, shutdown);
        tokio::pin!(work);
        // Most records are handled without waiting: those need no timer (creating and dropping one takes the
        // runtime's timer lock).
        if let Poll::Ready(outcome) = poll_once(work.as_mut()).await {
            return (outcome, Vec::new());
        }
        if let Ok(outcome) = tokio::time::timeout(STATS_AND_COMMIT_EVERY, &mut work).await {
            return (outcome, Vec::new());
        }
        let mut paused = self.consumer.assignment().unwrap_or_default();
        self.pause(&paused);
        let mut polled = Vec::new();
        let outcome = loop {
            tokio::select! {
                outcome = &mut work => break outcome,
                message = self.consumer.recv() => match message {
                    Ok(message) => {
                        let record = Record::from_message(&message);
                        let mut partition = TopicPartitionList::new();
                        partition.add_partition(&record.topic, record.partition);
                        self.pause(&partition);
                        paused.add_partition(&record.topic, record.partition);
                        polled.push(record);
                    }
                    Err(err) => self.consumer_error(&err),
                },
            }
        };
        if let Err(err) = self.consumer.resume(&paused) {
            // A partition revoked meanwhile cannot be resumed; its new assignment starts unpaused anyway.
            tracing::debug!(target: "infra::kafka", topic = %self.topic, error = %err, "cannot resume every paused partition");
        }
        (outcome, polled)
    }

    /// Consumes again from the start of its log each partition whose position stayed past the log's end
    /// ([`ConsumerState::take_rewinds`] says when and why): `auto.offset.reset=earliest`, applied by hand for a
    /// broker that does not answer OFFSET_OUT_OF_RANGE. A re-created log holds only what was written since, so
    /// this hands the handler nothing it has seen (and handlers are idempotent anyway: at-least-once).
    fn rewind(&self) {
        for partition in self.state.take_rewinds() {
            tracing::warn!(
                target: "infra::kafka", topic = %self.topic, partition,
                "Kafka partition position is past the end of its log (the topic was re-created or the broker lost \
                 its data); consuming it from the beginning"
            );
            // No timeout: the seek is queued and done by librdkafka's own thread.
            if let Err(err) = self.consumer.seek(&self.topic, partition, Offset::Beginning, Duration::ZERO) {
                tracing::warn!(target: "infra::kafka", topic = %self.topic, partition, error = %err, "cannot seek a Kafka partition");
            }
        }
    }

    /// An error polling returned. Connection errors were already counted, and a missing topic already logged,
    /// by the client's context (they come through its error callback too): logged here at DEBUG only.
    fn consumer_error(&self, err: &RdKafkaError) {
        if is_connection_error(err) || is_missing_topic(err) {
            tracing::debug!(target: "infra::kafka", topic = %self.topic, error = %err, "Kafka consumer error");
        } else {
            tracing::warn!(target: "infra::kafka", topic = %self.topic, error = %err, "Kafka consumer error");
        }
    }

    fn pause(&self, partitions: &TopicPartitionList) {
        if let Err(err) = self.consumer.pause(partitions) {
            tracing::debug!(target: "infra::kafka", topic = %self.topic, error = %err, "cannot pause partitions");
        }
    }

    /// Handles one record: attempts with backoff, then the dead-letter topic.
    async fn process(&self, handler: &dyn Handler, record: &Record, shutdown: &CancellationToken) -> Outcome {
        let span = spans::process(record, &self.group, &self.server);
        // Most records carry no trace context: no propagator (and no context look-up) for those.
        if record.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case(TRACEPARENT)) {
            propagation::continue_trace(&span, &RecordHeaders(record));
        }
        let correlation =
            record.header(CORRELATION_ID).and_then(|id| std::str::from_utf8(id).ok()).map(Arc::<str>::from);
        if let Some(id) = &correlation {
            span.record("correlation_id", id.as_ref());
        }
        self.metrics.consumed();
        let started = Instant::now();
        let attempts = self.attempts(handler, record, shutdown).instrument(span.clone());
        let outcome = match correlation {
            Some(id) => propagation::with_correlation_id(id, attempts).await,
            None => attempts.await,
        };
        let (outcome, dead_lettered) = match outcome {
            Attempts::Handled(attempts) => {
                span.record("attempts", attempts);
                (Outcome::Done { at: Instant::now() }, false)
            }
            Attempts::Failed { attempts, error } => {
                span.record("attempts", attempts);
                span.record("otel.status_code", "ERROR");
                span.record(ERROR_TYPE, "handler_failed");
                span.record("dead_lettered", true);
                match self.dead_letter(record, &error, attempts, shutdown).instrument(span.clone()).await {
                    true => (Outcome::Done { at: Instant::now() }, true),
                    false => (Outcome::Interrupted, false),
                }
            }
            Attempts::Interrupted => (Outcome::Interrupted, false),
        };
        if let Outcome::Done { at } = outcome {
            self.metrics.processed(at.saturating_duration_since(started), dead_lettered);
        }
        outcome
    }

    /// Calls the handler until it succeeds, fails permanently, or runs out of retries. A dependency reported
    /// unavailable is waited for ([`Wait`]): those attempts spend none of the record's KAFKA_MAX_RETRIES.
    async fn attempts(&self, handler: &dyn Handler, record: &Record, shutdown: &CancellationToken) -> Attempts {
        let mut delays = self.backoff.build();
        let mut wait: Option<Wait> = None;
        let mut attempts = 0;
        let outcome = loop {
            attempts += 1;
            let error = match handler.handle(record).await {
                Ok(()) => break Attempts::Handled(attempts),
                Err(error) => error,
            };
            self.metrics.handler_failed();
            if error.kind == FailureKind::Unavailable {
                let wait = wait.get_or_insert_with(|| Wait::begin(self, record, &error));
                let delay = wait.next_delay();
                tracing::debug!(target: "infra::kafka", attempt = attempts, error = %error, ?delay, "Kafka handler still waiting for a dependency");
                tokio::select! {
                    () = shutdown.cancelled() => break Attempts::Interrupted,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
            if let Some(wait) = wait.take() {
                wait.end(self, record, "the dependency answered with another failure");
            }
            let delay = match error.kind {
                FailureKind::Transient => delays.next(),
                FailureKind::Permanent | FailureKind::Unavailable => None,
            };
            let Some(delay) = delay else { break Attempts::Failed { attempts, error } };
            tracing::warn!(
                target: "infra::kafka",
                topic = %record.topic, partition = record.partition, offset = record.offset,
                attempt = attempts, max_retries = self.max_retries, error = %error, ?delay,
                "Kafka handler failed; retrying"
            );
            tokio::select! {
                () = shutdown.cancelled() => break Attempts::Interrupted,
                () = tokio::time::sleep(delay) => {}
            }
        };
        if let Some(wait) = wait {
            let how = if matches!(outcome, Attempts::Interrupted) { "shutdown" } else { "the dependency is back" };
            wait.end(self, record, how);
        }
        outcome
    }

    /// Publishes `record` to the dead-letter topic, unchanged plus headers saying where it came from and why.
    /// Keeps trying (with backoff) until it is stored or shutdown comes: a record is never dropped.
    async fn dead_letter(
        &self,
        record: &Record,
        error: &HandlerError,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> bool {
        let extra = dead_letter_headers(record, &error.to_string(), attempts);
        let mut all: Vec<(&str, &[u8])> = record.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        all.extend(extra.iter().map(|(k, v)| (*k, v.as_bytes())));
        let value = record.value.as_deref().unwrap_or_default();
        let mut delays = self.backoff.without_max_times().build();
        loop {
            match self.dead_letters.produce(&self.dlq_topic, record.key.as_deref(), value, &all).await {
                Ok(_) => {
                    tracing::error!(
                        target: "infra::kafka",
                        topic = %record.topic, partition = record.partition, offset = record.offset,
                        dlq_topic = %self.dlq_topic, attempts, error = %error,
                        "Kafka record dead-lettered"
                    );
                    return true;
                }
                Err(err) => {
                    let delay = delays.next().unwrap_or(MAX_RETRY_DELAY);
                    tracing::error!(target: "infra::kafka", dlq_topic = %self.dlq_topic, error = %err, ?delay, "cannot dead-letter a Kafka record; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Stores `record`'s offset, through `message` (the same record, still borrowed from librdkafka) when there
    /// is one, else by topic name (a record polled while an earlier one was being handled).
    fn store_offset(&self, record: &Record, message: Option<&BorrowedMessage<'_>>) {
        // Both end in librdkafka's rd_kafka_offset_store, which takes the handled record's offset and commits
        // the next one; by name costs a topic handle (created and destroyed) per call.
        let stored = match message {
            Some(message) => self.consumer.store_offset_from_message(message),
            None => self.consumer.store_offset(&record.topic, record.partition, record.offset),
        };
        if let Err(err) = stored {
            // Happens when the partition was revoked meanwhile: its new owner will see the record again.
            tracing::warn!(target: "infra::kafka", topic = %record.topic, partition = record.partition, error = %err, "cannot store a Kafka offset");
        }
    }

    /// Commits the stored offsets and leaves the group, all within `timeout`: librdkafka's close can hang
    /// (rust-rdkafka #453), so it runs on the blocking pool and is abandoned past the deadline.
    async fn close(self, timeout: Duration) {
        let consumer = self.consumer;
        let closing = tokio::task::spawn_blocking(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => {}
                // Nothing stored since the last commit.
                Err(RdKafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                Err(err) => tracing::warn!(target: "infra::kafka", error = %err, "final Kafka offset commit failed"),
            }
            consumer.unsubscribe();
            drop(consumer);
        });
        match tokio::time::timeout(timeout, closing).await {
            Ok(_) => tracing::info!(target: "infra::kafka", topic = %self.topic, "Kafka consumer closed"),
            Err(_) => {
                tracing::warn!(target: "infra::kafka", topic = %self.topic, ?timeout, "Kafka consumer did not close in time; abandoned")
            }
        }
        self.state.left();
    }
}

/// The consumer waiting for a dependency a handler reported unavailable: one WARN when it starts, one INFO when
/// it ends, the `kafka_consumer_waiting` gauge and the consumer state's `waiting` in between; each attempt is
/// logged at DEBUG only (a long outage would otherwise log a line per attempt).
struct Wait {
    since: Instant,
    delays: backon::ExponentialBackoff,
    attempts: u32,
}

impl Wait {
    fn begin(consumer: &KafkaConsumer, record: &Record, error: &HandlerError) -> Self {
        tracing::warn!(
            target: "infra::kafka",
            topic = %record.topic, partition = record.partition, offset = record.offset, error = %error,
            max_delay = ?MAX_WAIT_DELAY,
            "Kafka consumer waiting for an unavailable dependency; the record is retried until it answers, not dead-lettered"
        );
        consumer.state.waiting(true);
        let delays = consumer.backoff.with_max_delay(MAX_WAIT_DELAY).without_max_times().build();
        Wait { since: Instant::now(), delays, attempts: 0 }
    }

    fn next_delay(&mut self) -> Duration {
        self.attempts += 1;
        self.delays.next().unwrap_or(MAX_WAIT_DELAY)
    }

    fn end(self, consumer: &KafkaConsumer, record: &Record, how: &str) {
        consumer.state.waiting(false);
        tracing::info!(
            target: "infra::kafka",
            topic = %record.topic, partition = record.partition, offset = record.offset,
            waited = ?self.since.elapsed(), failed_attempts = self.attempts,
            "Kafka consumer stopped waiting: {how}"
        );
    }
}

/// Polls `future` once: its output if it is ready, without waiting.
async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

enum Attempts {
    Handled(u32),
    Failed { attempts: u32, error: HandlerError },
    Interrupted,
}
