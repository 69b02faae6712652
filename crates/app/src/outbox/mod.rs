//! The transactional outbox: an event is written to the `outbox` table in the same transaction as the change
//! it describes, so it exists exactly when the change committed — no "saved but never published", no
//! "published but rolled back". The relay publishes pending rows to Kafka afterwards.

pub mod health;
pub mod metrics;
pub mod relay;
pub mod topics;

use std::collections::HashMap;

use infra::postgres::{PostgresError, Transaction, sql};

use crate::events::Event;

/// Appends `event` to the outbox inside `tx`, with the current span's trace context so the consumer's work
/// joins the trace of the request that caused it.
pub async fn append(tx: &mut Transaction, event: &Event) -> Result<(), PostgresError> {
    let mut context: HashMap<String, String> = HashMap::new();
    infra::telemetry::propagation::inject(&tracing::Span::current(), &mut context);
    let payload = serde_json::to_string(event).map_err(|err| PostgresError::Conversion(err.to_string()))?;
    let statement = sql("INSERT INTO outbox (id, event_type, key, payload, traceparent, tracestate, occurred_at) \
         VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)")
    .bind(event.id)
    .bind(event.kind.as_str().to_string())
    .bind(event.key.as_str().to_string())
    .bind(payload)
    .bind(context.remove("traceparent"))
    .bind(context.remove("tracestate"))
    .bind(event.occurred_at);
    tx.exec(statement).await?;
    Ok(())
}
