//! Users: registration, profile reads and edits, deletion, login sessions — and the events each write emits.
//!
//! The domain speaks through its ports ([`UserRepository`], [`UserCache`], [`SessionStore`],
//! [`activity::ActivityRecorder`]); the adapters
//! in [`postgres`] and [`redis`] implement them with `infra`, and [`CachedUserRepository`] puts the cache in
//! front of the repository. Nothing here names sqlx, redis or rdkafka.

pub mod activity;
pub mod cache;
pub mod fields;
pub mod password;
pub mod postgres;
pub mod redis;
mod service;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub use cache::CachedUserRepository;
pub use fields::{Email, Name, Password};
pub use password::{HashingLimits, PasswordHash, PasswordHasher};
pub use service::{
    ACTIVITY_CURSOR_PATTERN, Credentials, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, USERS_CURSOR_PATTERN, UserChanges, Users,
    parse_registration,
};

use crate::port::PortError;

/// A user's id: a UUIDv7, so ids sort in creation order and keyset pagination needs no second column.
pub type UserId = Uuid;

/// A user as the API shows it (never the password hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Assigned at registration.
    pub id: UserId,
    /// Display name.
    pub name: Name,
    /// Email address, unique ignoring case.
    pub email: Email,
    /// When the user registered.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the user last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// What the user may do beyond their own account (entries cached before roles existed read as `user`).
    #[serde(default)]
    pub role: Role,
}

/// What a user may do. Stored in PostgreSQL (`users.role`); the first admin is made with
/// `rust-app users create-admin`, never by a default password.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manages their own account, publishes and reads their own events.
    #[default]
    User,
    /// Manages every account and reads every event.
    Admin,
}

impl Role {
    /// The role as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// The stored role; anything unknown grants nothing.
    pub fn from_stored(raw: &str) -> Self {
        if raw == "admin" { Role::Admin } else { Role::User }
    }
}

/// Who is acting: the signed-in user behind a request. Authorization questions about a resource are answered
/// here, so the HTTP layer and the use cases ask the same thing the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Actor {
    /// The signed-in user.
    pub id: UserId,
    /// Their role.
    pub role: Role,
}

impl Actor {
    /// The actor of a signed-in user.
    pub fn of(user: &User) -> Self {
        Actor { id: user.id, role: user.role }
    }

    /// Whether they may see and change the account `id` (their own, or any as an admin).
    pub fn manages(&self, id: UserId) -> bool {
        self.id == id || self.is_admin()
    }

    /// Whether they are an admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// A user to store: parsed input plus the hash of the password.
#[derive(Clone, Debug)]
pub struct NewUser {
    /// Assigned by the domain before storing.
    pub id: UserId,
    /// Display name.
    pub name: Name,
    /// Email address.
    pub email: Email,
    /// The password's hash.
    pub password_hash: PasswordHash,
    /// The role it starts with ([`Role::User`] for every registration over HTTP).
    pub role: Role,
}

/// A change to store: `None` leaves the field as it is.
#[derive(Clone, Debug, Default)]
pub struct StoredChanges {
    /// New name.
    pub name: Option<Name>,
    /// New email.
    pub email: Option<Email>,
    /// New password hash.
    pub password_hash: Option<PasswordHash>,
}

/// One page of a keyset-paginated list: users in id (= creation) order, or a user's trail newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Page<T = User> {
    /// The entries of this page.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// An entry of a user's audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Activity {
    /// The event that caused it.
    pub event_id: Uuid,
    /// `user_created`, `user_updated` or `user_deleted`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// What changed (field names for an update; never the password).
    pub details: serde_json::Value,
}

/// Where a page of a user's trail starts: just older than the entry that ended the previous page. The trail is
/// ordered by `(occurred_at, event_id)`, so two entries of the same microsecond are neither skipped nor repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivityCursor {
    /// The last entry's time.
    pub occurred_at: OffsetDateTime,
    /// The last entry's event id.
    pub event_id: Uuid,
}

/// A field that failed to parse, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The JSON field name.
    pub field: String,
    /// Why it was refused.
    pub message: String,
}

impl FieldError {
    /// `field` is refused because of `message`.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError { field: field.to_string(), message: message.into() }
    }
}

/// Everything a user operation can fail with. Each variant has a stable [`UserError::code`] that the HTTP
/// layer turns into the problem's `code`.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The input does not parse; one entry per bad field.
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// No such user.
    #[error("user not found")]
    NotFound,
    /// Another user has this email (ignoring case).
    #[error("email already registered")]
    EmailTaken,
    /// Wrong email or password (deliberately not saying which).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The current password given to confirm a change of email or password is wrong.
    #[error("wrong current password")]
    WrongCurrentPassword,
    /// No valid session.
    #[error("not signed in")]
    Unauthenticated,
    /// Too many password hashes are running and waiting: retry after the given number of seconds.
    #[error("overloaded: too many password hashes in progress")]
    Overloaded {
        /// When a retry has a fair chance.
        retry_after_secs: u64,
    },
    /// A required dependency is down: worth retrying later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else; the message is for logs.
    #[error("internal error: {0}")]
    Internal(String),
}

impl UserError {
    /// The stable machine-readable code of the error.
    pub fn code(&self) -> &'static str {
        match self {
            UserError::Invalid(_) => "validation-failed",
            UserError::NotFound => "user-not-found",
            UserError::EmailTaken => "email-taken",
            UserError::InvalidCredentials => "invalid-credentials",
            UserError::WrongCurrentPassword => "wrong-current-password",
            UserError::Unauthenticated => "unauthenticated",
            UserError::Overloaded { .. } => "overloaded",
            UserError::Unavailable(_) => "dependency-unavailable",
            UserError::Internal(_) => "internal",
        }
    }
}

impl From<PortError> for UserError {
    fn from(err: PortError) -> Self {
        if err.unavailable { UserError::Unavailable(err.message) } else { UserError::Internal(err.message) }
    }
}

/// What a user write emits, stored in the outbox in the same transaction as the write. Events carry ids and the
/// names of changed fields only, never a name, email or password: they are copied to Kafka, the outbox and the
/// event log, where a deletion could not reach every copy (docs/security.md, "Personal data").
#[derive(Clone, Debug, PartialEq)]
pub struct UserEvent {
    /// Unique id: consumers deduplicate on it.
    pub id: Uuid,
    /// `user_created`, `user_updated` or `user_deleted`.
    pub kind: &'static str,
    /// The user it is about (the record key: one user's events stay in order).
    pub user_id: UserId,
    /// When the write happened.
    pub occurred_at: OffsetDateTime,
    /// The event's details: `{"user_id"}`, plus for an update the names of the changed fields.
    pub data: serde_json::Value,
}

impl UserEvent {
    /// `user_created`: who registered (a consumer wanting the profile asks the API, which checks access).
    pub fn created(user: &User) -> Self {
        Self::new("user_created", user.id, serde_json::json!({ "user_id": user.id }))
    }

    /// `user_updated`, with the names of the changed fields (never their values).
    pub fn updated(user: &User, changed: &[&str]) -> Self {
        Self::new("user_updated", user.id, serde_json::json!({ "user_id": user.id, "changed": changed }))
    }

    /// `user_deleted`.
    pub fn deleted(id: UserId) -> Self {
        Self::new("user_deleted", id, serde_json::json!({ "user_id": id }))
    }

    fn new(kind: &'static str, user_id: UserId, data: serde_json::Value) -> Self {
        UserEvent { id: Uuid::now_v7(), kind, user_id, occurred_at: OffsetDateTime::now_utc(), data }
    }
}

/// Where users live. Every write also stores its [`UserEvent`] in the same transaction, so an event exists
/// exactly when its write committed.
#[async_trait]
pub trait UserRepository: Send + Sync {
    /// Stores a new user and its `user_created` event; [`UserError::EmailTaken`] when the email is in use.
    async fn create(&self, user: &NewUser) -> Result<User, UserError>;
    /// The user with this id.
    async fn find(&self, id: UserId) -> Result<Option<User>, UserError>;
    /// The user with this email (ignoring case) and its password hash, for login.
    async fn find_credentials(&self, email: &Email) -> Result<Option<(User, PasswordHash)>, UserError>;
    /// The password hash of the user with this id, to confirm a sensitive change.
    async fn password_hash(&self, id: UserId) -> Result<Option<PasswordHash>, UserError>;
    /// Gives the user with this email (ignoring case) `role`; `None` when there is no such user.
    async fn set_role(&self, email: &Email, role: Role) -> Result<Option<User>, UserError>;
    /// Applies `changes` and stores a `user_updated` event; `None` when there is no such user.
    async fn update(&self, id: UserId, changes: &StoredChanges) -> Result<Option<User>, UserError>;
    /// Deletes the user and stores a `user_deleted` event; `false` when there was no such user.
    async fn delete(&self, id: UserId) -> Result<bool, UserError>;
    /// Up to `limit` users with ids after `after`, in id order.
    async fn list(&self, after: Option<UserId>, limit: u32) -> Result<Vec<User>, UserError>;
    /// The user's audit trail, newest first, at most `limit` entries older than `before` (from the newest when
    /// `None`).
    async fn activity(
        &self,
        id: UserId,
        before: Option<ActivityCursor>,
        limit: u32,
    ) -> Result<Vec<Activity>, UserError>;
}

/// A read-through cache of users, put in front of a repository by [`CachedUserRepository`]. It degrades
/// instead of failing: when the cache is down, reads go to the repository.
#[async_trait]
pub trait UserCache: Send + Sync {
    /// The cached user, or the one `repository` finds (then cached; an unknown id is not cached).
    async fn find_through(&self, id: UserId, repository: &dyn UserRepository) -> Result<Option<User>, UserError>;
    /// Forgets the user after a write, once it is committed, and keeps any read that loaded the user before from
    /// storing that copy afterwards. An error means the cached copy may still be the old one: the write path
    /// logs it and goes on, the event consumer retries until the cache answers ([`cache::UserCacheInvalidation`]).
    async fn invalidate(&self, id: UserId) -> Result<(), PortError>;
}

/// An opaque session token, as carried by the cookie. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(***)")
    }
}

impl SessionToken {
    /// Wraps a token issued by a [`SessionStore`] or read from a cookie.
    pub fn new(token: String) -> Self {
        SessionToken(token)
    }

    /// The token, for the cookie only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Login sessions.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Starts a session for `user`.
    async fn create(&self, user: UserId) -> Result<SessionToken, UserError>;
    /// The user of a live session (renewing it), or `None` when unknown or expired.
    async fn user_of(&self, token: &SessionToken) -> Result<Option<UserId>, UserError>;
    /// Ends the session; ending an unknown one is not an error.
    async fn end(&self, token: &SessionToken) -> Result<(), UserError>;
    /// Ends every session of `user` (password or email changed, account deleted, "sign out everywhere").
    async fn end_all(&self, user: UserId) -> Result<(), UserError>;
}
