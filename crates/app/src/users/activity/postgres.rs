//! The audit trail in PostgreSQL (table `user_activity`), each entry stored in the same transaction as the
//! record that its event was applied (table `processed_events`), so an event is applied exactly once however
//! often it is delivered. Applying a user event also keeps personal data out of the event log: the event's
//! logged copy is reduced to ids and field names, and a `user_deleted` scrubs what remains about the user.

use async_trait::async_trait;
use infra::postgres::{PostgresClient, PostgresError, sql};

use super::{ActivityKind, ActivityRecorder, CONSUMER, UserActivityEvent};
use crate::port::PortError;

/// The trail over the service's PostgreSQL pool.
#[derive(Clone, Debug)]
pub struct PostgresActivityRecorder {
    client: PostgresClient,
}

impl PostgresActivityRecorder {
    /// Uses `client`'s pool.
    pub fn new(client: PostgresClient) -> Self {
        PostgresActivityRecorder { client }
    }
}

#[async_trait]
impl ActivityRecorder for PostgresActivityRecorder {
    async fn apply(&self, entry: &UserActivityEvent) -> Result<bool, PortError> {
        // The caller names the event; the message says which step failed.
        let failed = |step: &'static str| move |err: PostgresError| PortError::from(err).during(step);
        let mut tx = self.client.begin().await.map_err(failed("beginning the transaction"))?;
        // Claims the event first: a concurrent delivery of the same event waits on this row and then finds it.
        let claim = sql("INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(CONSUMER)
            .bind(entry.event_id);
        if tx.exec(claim).await.map_err(failed("claiming the event in processed_events"))? == 0 {
            tx.commit().await.map_err(failed("committing"))?;
            return Ok(false);
        }
        let insert = sql("INSERT INTO user_activity (event_id, user_id, event_type, occurred_at, details) \
             VALUES ($1, $2, $3, $4, $5::jsonb)")
        .bind(entry.event_id)
        .bind(entry.user_id)
        .bind(entry.kind.as_str())
        .bind(entry.occurred_at)
        .bind(entry.details.to_string());
        tx.exec(insert).await.map_err(failed("inserting into user_activity"))?;
        // The event's copy in the event log (logged just before) keeps ids and field names only, also when an
        // earlier version published it with the user's profile.
        let log_copy = sql("UPDATE event_log SET data = user_event_ids_only(data) \
             WHERE id = $1 AND data IS DISTINCT FROM user_event_ids_only(data)")
        .bind(entry.event_id);
        tx.exec(log_copy).await.map_err(failed("reducing the event's copy in event_log"))?;
        if entry.kind == ActivityKind::Deleted {
            crate::users::postgres::scrub(&mut tx, entry.user_id)
                .await
                .map_err(failed("scrubbing the deleted user"))?;
        }
        tx.commit().await.map_err(failed("committing"))?;
        Ok(true)
    }
}
