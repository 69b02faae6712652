//! `/health/kafka` with the outbox backlog: events written but not yet on the topic are Kafka's business as
//! operators see it, yet `infra` knows nothing of the outbox — so the service wraps infra's check.

use std::time::Duration;

use async_trait::async_trait;
use infra::health::{CheckFailure, Details, HealthCheck};
use infra::kafka::KafkaHealth;
use serde_json::json;
use time::OffsetDateTime;

use super::relay::{Backlog, BacklogSnapshot};

/// [`KafkaHealth`] plus `outbox_pending`, `outbox_oldest_pending_age_seconds` and `outbox_parked` (events
/// parked after OUTBOX_MAX_ATTEMPTS rejections) in its details (all `null`
/// while the backlog is unknown: before the relay's first measurement, or PostgreSQL unreachable). A backlog,
/// however large, does not fail the check: it is the relay doing its job, or waiting for Kafka — which the
/// wrapped check reports on its own. When Kafka is down, the registry keeps only the failure's message, so the
/// backlog is appended to it — which is when it matters most.
#[derive(Debug)]
pub struct KafkaWithOutboxHealth {
    kafka: KafkaHealth,
    backlog: Backlog,
    kafka_timeout: Duration,
}

impl KafkaWithOutboxHealth {
    /// Reports `kafka`'s result with `backlog` (from [`super::relay::OutboxRelay::backlog`]). `check_timeout` is
    /// HEALTH_CHECK_TIMEOUT: the Kafka check is cut a little before it, so an unreachable broker (whose metadata
    /// request waits the whole timeout) is reported with the backlog rather than as a bare registry timeout.
    pub fn new(kafka: KafkaHealth, backlog: Backlog, check_timeout: Duration) -> Self {
        KafkaWithOutboxHealth { kafka, backlog, kafka_timeout: check_timeout.saturating_sub(check_timeout / 10) }
    }
}

#[async_trait]
impl HealthCheck for KafkaWithOutboxHealth {
    fn name(&self) -> &'static str {
        self.kafka.name()
    }

    async fn check(&self) -> Result<Details, CheckFailure> {
        let result = match tokio::time::timeout(self.kafka_timeout, self.kafka.check()).await {
            Ok(result) => result,
            Err(_) => Err(CheckFailure::new(format!("Kafka did not answer within {:?}", self.kafka_timeout))),
        };
        let backlog = self.backlog.snapshot();
        let now = OffsetDateTime::now_utc();
        match result {
            Ok(mut details) => {
                let (pending, age, parked) = match backlog {
                    Some(snapshot) => {
                        (json!(snapshot.pending), json!(age_seconds(&snapshot, now)), json!(snapshot.parked))
                    }
                    None => (json!(null), json!(null), json!(null)),
                };
                details.insert("outbox_pending".into(), pending);
                details.insert("outbox_oldest_pending_age_seconds".into(), age);
                details.insert("outbox_parked".into(), parked);
                Ok(details)
            }
            Err(failure) => Err(CheckFailure::new(match backlog {
                Some(snapshot) => format!(
                    "{failure}; outbox_pending={}, outbox_oldest_pending_age_seconds={}, outbox_parked={}",
                    snapshot.pending,
                    age_seconds(&snapshot, now),
                    snapshot.parked
                ),
                None => format!("{failure}; outbox backlog unknown"),
            })),
        }
    }
}

/// Whole seconds: the health output is read by people, and sub-second precision says nothing here.
fn age_seconds(snapshot: &BacklogSnapshot, now: OffsetDateTime) -> u64 {
    snapshot.oldest_age(now).as_secs()
}
