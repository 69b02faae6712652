//! The event log in PostgreSQL (table `event_log`): one row per event id, so redeliveries change nothing.

use async_trait::async_trait;
use infra::postgres::{PostgresClient, sql};

use super::{Event, EventKey, EventLog, EventType, LoggedEvent, Origin, PortError};

/// The event log over the service's PostgreSQL pool.
#[derive(Clone, Debug)]
pub struct PostgresEventLog {
    client: PostgresClient,
}

impl PostgresEventLog {
    /// Uses `client`'s pool.
    pub fn new(client: PostgresClient) -> Self {
        PostgresEventLog { client }
    }
}

type Row = (String, String, String, String, String, i32, i64, time::OffsetDateTime, Option<uuid::Uuid>);

#[async_trait]
impl EventLog for PostgresEventLog {
    async fn record(&self, entry: &LoggedEvent) -> Result<bool, PortError> {
        let statement =
            sql("INSERT INTO event_log (id, type, key, data, topic, partition, \"offset\", occurred_at, publisher) \
             VALUES ($1::uuid, $2, $3, $4::jsonb, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING")
            .bind(entry.event.id.to_string())
            .bind(entry.event.kind.as_str().to_string())
            .bind(entry.event.key.as_str().to_string())
            .bind(entry.event.data.to_string())
            .bind(entry.origin.topic.clone())
            .bind(entry.origin.partition)
            .bind(entry.origin.offset)
            .bind(entry.event.occurred_at)
            .bind(entry.event.publisher);
        let inserted = self.client.exec(statement).await?;
        Ok(inserted == 1)
    }

    async fn find(&self, id: uuid::Uuid) -> Result<Option<LoggedEvent>, PortError> {
        let statement = sql(
            "SELECT id::text, type, key, data::text, topic, partition, \"offset\", COALESCE(occurred_at, recorded_at), \
             publisher FROM event_log WHERE id = $1::uuid",
        )
        .bind(id.to_string());
        let row: Option<Row> = self.client.query_optional(statement).await?;
        row.map(logged_event).transpose()
    }
}

/// A row back into the domain; a row that does not parse means the table was written by something else.
fn logged_event(
    (id, kind, key, data, topic, partition, offset, occurred_at, publisher): Row,
) -> Result<LoggedEvent, PortError> {
    let corrupt = |what: &str| PortError::failed(format!("event_log row {id}: {what}"));
    let event = Event {
        id: id.parse().map_err(|_| corrupt("bad id"))?,
        kind: EventType::try_from(kind).map_err(|_| corrupt("bad type"))?,
        key: EventKey::try_from(key).map_err(|_| corrupt("bad key"))?,
        data: serde_json::from_str(&data).map_err(|_| corrupt("bad data"))?,
        occurred_at,
        publisher,
    };
    Ok(LoggedEvent { event, origin: Origin { topic, partition, offset } })
}
