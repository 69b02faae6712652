//! Users in PostgreSQL (table `users`), each write with its event appended to the outbox in the same
//! transaction.

use async_trait::async_trait;
use infra::postgres::{PostgresClient, PostgresError, Transaction, sql};
use time::OffsetDateTime;

use super::{
    Activity, ActivityCursor, Email, Name, NewUser, PasswordHash, Role, StoredChanges, User, UserError, UserEvent,
    UserId, UserRepository,
};
use crate::events::{Event, EventKey, EventType};
use crate::port::PortError;

/// The repository over the service's PostgreSQL pool.
#[derive(Clone, Debug)]
pub struct PostgresUsers {
    client: PostgresClient,
}

impl PostgresUsers {
    /// Uses `client`'s pool.
    pub fn new(client: PostgresClient) -> Self {
        PostgresUsers { client }
    }
}

type UserRow = (UserId, String, String, OffsetDateTime, OffsetDateTime, String);
type CredentialRow = (UserId, String, String, OffsetDateTime, OffsetDateTime, String, String);

#[async_trait]
impl UserRepository for PostgresUsers {
    async fn create(&self, user: &NewUser) -> Result<User, UserError> {
        let mut tx = self.client.begin().await.map_err(write_error)?;
        let row: UserRow = tx
            .query_one(
                sql("INSERT INTO users (id, name, email, password_hash, role) VALUES ($1, $2, $3, $4, $5) \
                     RETURNING id, name, email, created_at, updated_at, role")
                .bind(user.id)
                .bind(user.name.as_str().to_string())
                .bind(user.email.as_str().to_string())
                .bind(user.password_hash.as_str().to_string())
                .bind(user.role.as_str()),
            )
            .await
            .map_err(write_error)?;
        let created = to_user(row)?;
        append(&mut tx, &UserEvent::created(&created)).await?;
        tx.commit().await.map_err(write_error)?;
        Ok(created)
    }

    async fn find(&self, id: UserId) -> Result<Option<User>, UserError> {
        let statement = sql("SELECT id, name, email, created_at, updated_at, role FROM users WHERE id = $1").bind(id);
        let row: Option<UserRow> = self.client.query_optional(statement).await.map_err(read_error)?;
        row.map(to_user).transpose()
    }

    async fn find_credentials(&self, email: &Email) -> Result<Option<(User, PasswordHash)>, UserError> {
        let statement = sql("SELECT id, name, email, created_at, updated_at, role, password_hash FROM users \
             WHERE lower(email) = lower($1)")
        .bind(email.as_str().to_string());
        let row: Option<CredentialRow> = self.client.query_optional(statement).await.map_err(read_error)?;
        row.map(|(id, name, email, created, updated, role, hash)| {
            Ok((to_user((id, name, email, created, updated, role))?, PasswordHash::from_stored(hash)))
        })
        .transpose()
    }

    async fn password_hash(&self, id: UserId) -> Result<Option<PasswordHash>, UserError> {
        let statement = sql("SELECT password_hash FROM users WHERE id = $1").bind(id);
        let row: Option<(String,)> = self.client.query_optional(statement).await.map_err(read_error)?;
        Ok(row.map(|(hash,)| PasswordHash::from_stored(hash)))
    }

    async fn set_role(&self, email: &Email, role: Role) -> Result<Option<User>, UserError> {
        let statement = sql("UPDATE users SET role = $2, updated_at = now() WHERE lower(email) = lower($1) \
             RETURNING id, name, email, created_at, updated_at, role")
        .bind(email.as_str().to_string())
        .bind(role.as_str());
        let row: Option<UserRow> = self.client.query_optional(statement).await.map_err(write_error)?;
        row.map(to_user).transpose()
    }

    async fn update(&self, id: UserId, changes: &StoredChanges) -> Result<Option<User>, UserError> {
        let mut tx = self.client.begin().await.map_err(write_error)?;
        let statement = sql("UPDATE users SET name = COALESCE($2, name), email = COALESCE($3, email), \
             password_hash = COALESCE($4, password_hash), updated_at = now() WHERE id = $1 \
             RETURNING id, name, email, created_at, updated_at, role")
        .bind(id)
        .bind(changes.name.as_ref().map(|name| name.as_str().to_string()))
        .bind(changes.email.as_ref().map(|email| email.as_str().to_string()))
        .bind(changes.password_hash.as_ref().map(|hash| hash.as_str().to_string()));
        let Some(row) = tx.query_optional::<UserRow>(statement).await.map_err(write_error)? else {
            return Ok(None);
        };
        let updated = to_user(row)?;
        let changed: Vec<&str> = [
            ("name", changes.name.is_some()),
            ("email", changes.email.is_some()),
            ("password", changes.password_hash.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, given)| given.then_some(field))
        .collect();
        append(&mut tx, &UserEvent::updated(&updated, &changed)).await?;
        tx.commit().await.map_err(write_error)?;
        Ok(Some(updated))
    }

    async fn delete(&self, id: UserId) -> Result<bool, UserError> {
        let mut tx = self.client.begin().await.map_err(write_error)?;
        let deleted = tx.exec(sql("DELETE FROM users WHERE id = $1").bind(id)).await.map_err(write_error)?;
        if deleted == 0 {
            return Ok(false);
        }
        append(&mut tx, &UserEvent::deleted(id)).await?;
        scrub(&mut tx, id).await.map_err(write_error)?;
        tx.commit().await.map_err(write_error)?;
        Ok(true)
    }

    async fn list(&self, after: Option<UserId>, limit: u32) -> Result<Vec<User>, UserError> {
        let statement = sql("SELECT id, name, email, created_at, updated_at, role FROM users \
             WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2")
        .bind(after)
        .bind(i64::from(limit));
        let rows: Vec<UserRow> = self.client.query(statement).await.map_err(read_error)?;
        rows.into_iter().map(to_user).collect()
    }

    async fn activity(
        &self,
        id: UserId,
        before: Option<ActivityCursor>,
        limit: u32,
    ) -> Result<Vec<Activity>, UserError> {
        // Keyset: a backward scan of user_activity_user (user_id, occurred_at, event_id) from the cursor on.
        let statement = sql("SELECT event_id, event_type, occurred_at, details::text FROM user_activity \
             WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (occurred_at, event_id) < ($2, $3)) \
             ORDER BY occurred_at DESC, event_id DESC LIMIT $4")
        .bind(id)
        .bind(before.map(|cursor| cursor.occurred_at))
        .bind(before.map(|cursor| cursor.event_id))
        .bind(i64::from(limit));
        let rows: Vec<(uuid::Uuid, String, OffsetDateTime, String)> =
            self.client.query(statement).await.map_err(read_error)?;
        rows.into_iter()
            .map(|(event_id, kind, occurred_at, details)| {
                let details = serde_json::from_str(&details)
                    .map_err(|_| UserError::Internal(format!("user_activity row {event_id}: bad details")))?;
                Ok(Activity { event_id, kind, occurred_at, details })
            })
            .collect()
    }
}

/// Removes, in `tx`, what is stored about user `id` beyond ids, event types, times and changed field names:
/// the profile (`data.user`) in outbox rows an earlier version wrote, whatever else the event log holds in the
/// data of the user's `user_*` events, and the profile an early trail entry kept. The rows themselves stay,
/// for audit and until their retention (docs/security.md, "Personal data"). Runs when the user is deleted, and
/// again when the consumer applies the `user_deleted` event: by then every earlier event of the user has been
/// logged (one key, one partition, in order), also one published before the deletion but consumed after it.
pub(crate) async fn scrub(tx: &mut Transaction, id: UserId) -> Result<(), PostgresError> {
    let key = id.to_string();
    let statements = [
        sql("UPDATE outbox SET payload = jsonb_set(payload, '{data}', user_event_ids_only(payload -> 'data')) \
             WHERE key = $1 AND payload -> 'data' ? 'user'")
        .bind(key.clone()),
        sql("UPDATE event_log SET data = user_event_ids_only(data) \
             WHERE key = $1 AND type LIKE 'user\\_%' AND data IS DISTINCT FROM user_event_ids_only(data)")
        .bind(key),
        sql("UPDATE user_activity SET details = user_event_ids_only(details) \
             WHERE user_id = $1 AND details IS DISTINCT FROM user_event_ids_only(details)")
        .bind(id),
    ];
    for statement in statements {
        tx.exec(statement).await?;
    }
    Ok(())
}

/// Appends the user event to the outbox, in `tx`.
async fn append(tx: &mut Transaction, event: &UserEvent) -> Result<(), UserError> {
    crate::outbox::append(tx, &to_event(event)?).await.map_err(write_error)
}

/// The user event as published on the event topic: keyed by the user id, so one user's events stay in order.
fn to_event(event: &UserEvent) -> Result<Event, UserError> {
    let invalid = |what: String| UserError::Internal(format!("user event not publishable: {what}"));
    Ok(Event {
        id: event.id,
        kind: EventType::try_from(event.kind.to_string()).map_err(invalid)?,
        key: EventKey::try_from(event.user_id.to_string()).map_err(invalid)?,
        data: event.data.clone(),
        occurred_at: event.occurred_at,
        publisher: None,
    })
}

/// A row back into the domain; a row that does not parse was written by something else.
fn to_user((id, name, email, created_at, updated_at, role): UserRow) -> Result<User, UserError> {
    let corrupt = |what: &str| UserError::Internal(format!("users row {id}: {what}"));
    Ok(User {
        id,
        name: Name::try_from(name).map_err(|_| corrupt("bad name"))?,
        email: Email::try_from(email).map_err(|_| corrupt("bad email"))?,
        created_at,
        updated_at,
        role: Role::from_stored(&role),
    })
}

/// A failed write: a unique violation on the email index is the domain's "email taken".
fn write_error(err: PostgresError) -> UserError {
    if err.is_unique_violation() {
        return UserError::EmailTaken;
    }
    read_error(err)
}

fn read_error(err: PostgresError) -> UserError {
    PortError::from(err).into()
}
