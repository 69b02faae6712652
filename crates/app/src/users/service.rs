//! The use cases: what the API can do with users, written against the ports only.

use std::sync::Arc;

use time::OffsetDateTime;

use super::{
    Activity, ActivityCursor, Actor, Email, FieldError, HashingLimits, Name, NewUser, Page, Password, PasswordHasher,
    Role, SessionStore, SessionToken, StoredChanges, User, UserError, UserId, UserRepository,
};

/// The most users one page may hold.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Users per page when the client does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// What a cursor of the users list looks like (JSON Schema `pattern`): any such value is a valid position.
pub const USERS_CURSOR_PATTERN: &str = "^[0-9A-Fa-f]{32}$";
/// What a cursor of an activity trail looks like (JSON Schema `pattern`): any such value is a valid position.
pub const ACTIVITY_CURSOR_PATTERN: &str = "^[0-9A-Fa-f]{48}$";

/// Raw input of a registration or a login, as it arrived (every field optional so that all missing or bad
/// fields are reported together).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// `name` (registration only).
    pub name: Option<String>,
    /// `email`.
    pub email: Option<String>,
    /// `password`.
    pub password: Option<String>,
}

/// Raw input of a profile change.
#[derive(Clone, Debug, Default)]
pub struct UserChanges {
    /// New `name`.
    pub name: Option<String>,
    /// New `email`.
    pub email: Option<String>,
    /// New `password`.
    pub password: Option<String>,
    /// The acting user's current password: required to change `email` or `password` (someone who found a
    /// signed-in browser cannot take the account over).
    pub current_password: Option<String>,
}

/// The users use cases over their ports. Cheap to clone.
#[derive(Clone)]
pub struct Users {
    repository: Arc<dyn UserRepository>,
    sessions: Arc<dyn SessionStore>,
    hasher: PasswordHasher,
}

impl Users {
    /// Users stored in `repository` (cached or not: see [`super::CachedUserRepository`]), signed in through
    /// `sessions`.
    pub fn new(repository: Arc<dyn UserRepository>, sessions: Arc<dyn SessionStore>) -> Self {
        Users { repository, sessions, hasher: PasswordHasher::new(HashingLimits::from_cpu_count()) }
    }

    /// Bounds password hashing by `limits` instead of the CPU count's default.
    pub fn with_hashing_limits(mut self, limits: HashingLimits) -> Self {
        self.hasher = PasswordHasher::new(limits);
        self
    }

    /// Registers a user; the email must not be in use (ignoring case).
    pub async fn register(&self, input: Credentials) -> Result<User, UserError> {
        self.register_as(input, Role::User).await
    }

    /// Registers the first (or another) admin, for `rust-app users create-admin`: there is no default admin
    /// password, and no HTTP route grants the role.
    pub async fn register_admin(&self, input: Credentials) -> Result<User, UserError> {
        self.register_as(input, Role::Admin).await
    }

    async fn register_as(&self, input: Credentials, role: Role) -> Result<User, UserError> {
        let (name, email, password) = parse_registration(input).map_err(UserError::Invalid)?;
        let password_hash = self.hasher.hash(&password).await?;
        self.repository.create(&NewUser { id: uuid::Uuid::now_v7(), name, email, password_hash, role }).await
    }

    /// Makes the registered user with `email` an admin, for `rust-app users create-admin --promote`.
    pub async fn promote(&self, email: &str) -> Result<User, UserError> {
        let email =
            Email::try_from(email.to_string()).map_err(|m| UserError::Invalid(vec![FieldError::new("email", m)]))?;
        self.repository.set_role(&email, Role::Admin).await?.ok_or(UserError::NotFound)
    }

    /// The user.
    pub async fn get(&self, id: UserId) -> Result<User, UserError> {
        self.repository.find(id).await?.ok_or(UserError::NotFound)
    }

    /// Changes the given fields of user `id` on behalf of `actor` (who manages it); at least one must be given.
    /// A new email or password needs the actor's current password, and ends every session of the user.
    pub async fn update(&self, actor: Actor, id: UserId, input: UserChanges) -> Result<User, UserError> {
        let mut errors = Vec::new();
        let name = input.name.and_then(|raw| field(&mut errors, "name", Some(raw), Name::try_from));
        let email = input.email.and_then(|raw| field(&mut errors, "email", Some(raw), Email::parse_new));
        let password = input.password.and_then(|raw| field(&mut errors, "password", Some(raw), Password::parse));
        let sensitive = email.is_some() || password.is_some();
        let current = match input.current_password {
            Some(raw) => field(&mut errors, "current_password", Some(raw), Password::candidate),
            None if sensitive => field(&mut errors, "current_password", None, Password::candidate),
            None => None,
        };
        if !errors.is_empty() {
            return Err(UserError::Invalid(errors));
        }
        if name.is_none() && !sensitive {
            return Err(UserError::Invalid(vec![FieldError::new(
                "body",
                "give at least one of name, email, password",
            )]));
        }
        if let Some(current) = current.filter(|_| sensitive) {
            // Hashing is the expensive part: nothing is hashed for a user that does not exist.
            self.repository.find(id).await?.ok_or(UserError::NotFound)?;
            self.confirm_password(actor.id, &current).await?;
        }
        let password_hash = match password {
            Some(password) => Some(self.hasher.hash(&password).await?),
            None => None,
        };
        let changes = StoredChanges { name, email, password_hash };
        let updated = self.repository.update(id, &changes).await?.ok_or(UserError::NotFound)?;
        if sensitive {
            self.sessions.end_all(id).await?;
        }
        Ok(updated)
    }

    /// Checks `password` against the stored hash of `user`.
    async fn confirm_password(&self, user: UserId, password: &Password) -> Result<(), UserError> {
        let hash = self.repository.password_hash(user).await?.ok_or(UserError::Unauthenticated)?;
        if self.hasher.verify(&hash, password).await? { Ok(()) } else { Err(UserError::WrongCurrentPassword) }
    }

    /// Deletes the user and ends every session of theirs.
    pub async fn delete(&self, id: UserId) -> Result<(), UserError> {
        if !self.repository.delete(id).await? {
            return Err(UserError::NotFound);
        }
        self.sessions.end_all(id).await
    }

    /// A page of users after `cursor` (the previous page's `next_cursor`).
    pub async fn list(&self, limit: Option<u32>, cursor: Option<&str>) -> Result<Page, UserError> {
        let (limit, after) = page_request(limit, cursor, decode_cursor)?;
        // One more than asked tells whether another page follows without a COUNT.
        let items = self.repository.list(after, limit + 1).await?;
        Ok(page(items, limit, |user| encode_cursor(user.id)))
    }

    /// A page of the user's audit trail, newest first, older than `cursor` (the previous page's
    /// `next_cursor`); [`UserError::NotFound`] when neither the user nor any trail exists.
    pub async fn activity(
        &self,
        id: UserId,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Page<Activity>, UserError> {
        let (limit, before) = page_request(limit, cursor, decode_activity_cursor)?;
        let items = self.repository.activity(id, before, limit + 1).await?;
        // A deleted user keeps its trail; an id never seen has neither. A later page may be empty.
        if cursor.is_none() && items.is_empty() && self.repository.find(id).await?.is_none() {
            return Err(UserError::NotFound);
        }
        Ok(page(items, limit, encode_activity_cursor))
    }

    /// Checks email and password and starts a new session, ending `previous` (the session the client
    /// carried, if any: a fresh id at every login, so an id planted before login is worth nothing). Unknown
    /// email and wrong password are the same error and take the same time.
    pub async fn login(
        &self,
        input: Credentials,
        previous: Option<&SessionToken>,
    ) -> Result<(User, SessionToken), UserError> {
        let mut errors = Vec::new();
        let email = field(&mut errors, "email", input.email, Email::try_from);
        let password = field(&mut errors, "password", input.password, Password::candidate);
        let (Some(email), Some(password)) = (email, password) else {
            return Err(UserError::Invalid(errors));
        };
        let Some((user, hash)) = self.repository.find_credentials(&email).await? else {
            self.hasher.verify_decoy(&password).await?;
            return Err(UserError::InvalidCredentials);
        };
        if !self.hasher.verify(&hash, &password).await? {
            return Err(UserError::InvalidCredentials);
        }
        if let Some(previous) = previous {
            self.sessions.end(previous).await?;
        }
        let token = self.sessions.create(user.id).await?;
        Ok((user, token))
    }

    /// The signed-in user of `token`, or `None` when the session is unknown, expired or its user deleted (that
    /// session is then ended).
    pub async fn authenticate(&self, token: &SessionToken) -> Result<Option<User>, UserError> {
        let Some(id) = self.sessions.user_of(token).await? else {
            return Ok(None);
        };
        match self.repository.find(id).await? {
            Some(user) => Ok(Some(user)),
            None => {
                self.sessions.end(token).await?;
                Ok(None)
            }
        }
    }

    /// Ends the session of `token`, if any.
    pub async fn logout(&self, token: Option<&SessionToken>) -> Result<(), UserError> {
        match token {
            Some(token) => self.sessions.end(token).await,
            None => Ok(()),
        }
    }

    /// Ends every session of `user`, on every device.
    pub async fn logout_everywhere(&self, user: UserId) -> Result<(), UserError> {
        self.sessions.end_all(user).await
    }
}

/// The registration's name, email and password, or every field's problem.
pub fn parse_registration(input: Credentials) -> Result<(Name, Email, Password), Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = field(&mut errors, "name", input.name, Name::try_from);
    let email = field(&mut errors, "email", input.email, Email::parse_new);
    let password = field(&mut errors, "password", input.password, Password::parse);
    match (name, email, password) {
        (Some(name), Some(email), Some(password)) => Ok((name, email, password)),
        _ => Err(errors),
    }
}

/// Parses a required field, recording why it is missing or bad.
fn field<T>(
    errors: &mut Vec<FieldError>,
    name: &str,
    raw: Option<String>,
    parse: impl FnOnce(String) -> Result<T, String>,
) -> Option<T> {
    let Some(raw) = raw else {
        errors.push(FieldError::new(name, "is required"));
        return None;
    };
    parse(raw).map_err(|message| errors.push(FieldError::new(name, message))).ok()
}

/// The page size (default [`DEFAULT_PAGE_SIZE`], at most [`MAX_PAGE_SIZE`]) and the decoded cursor, or every
/// problem with them.
fn page_request<C>(
    limit: Option<u32>,
    cursor: Option<&str>,
    decode: impl FnOnce(&str) -> Option<C>,
) -> Result<(u32, Option<C>), UserError> {
    let mut errors = Vec::new();
    let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        errors.push(FieldError::new("limit", format!("must be from 1 to {MAX_PAGE_SIZE}")));
    }
    let decoded = cursor.and_then(|raw| {
        let decoded = decode(raw);
        if decoded.is_none() {
            errors.push(FieldError::new("cursor", "is not a cursor this API returned"));
        }
        decoded
    });
    if errors.is_empty() { Ok((limit, decoded)) } else { Err(UserError::Invalid(errors)) }
}

/// The page of `items` (fetched one more than `limit`, to tell whether another page follows without a
/// COUNT), with the cursor of its last entry when one does.
fn page<T>(mut items: Vec<T>, limit: u32, cursor_of: impl FnOnce(&T) -> String) -> Page<T> {
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(cursor_of)
    } else {
        None
    };
    Page { items, next_cursor }
}

/// Cursors are opaque to clients: the last id of the page, hex-encoded so nobody mistakes it for an id to
/// build URLs with.
fn encode_cursor(id: UserId) -> String {
    hex::encode(id.as_bytes())
}

fn decode_cursor(raw: &str) -> Option<UserId> {
    let bytes: [u8; 16] = hex::decode(raw).ok()?.try_into().ok()?;
    Some(UserId::from_bytes(bytes))
}

/// An activity cursor: the last entry's time (microseconds since the epoch, PostgreSQL's precision, 8 bytes)
/// and event id (16 bytes), hex-encoded.
fn encode_activity_cursor(entry: &Activity) -> String {
    let micros = (entry.occurred_at.unix_timestamp_nanos() / 1000) as i64;
    let mut bytes = micros.to_be_bytes().to_vec();
    bytes.extend_from_slice(entry.event_id.as_bytes());
    hex::encode(bytes)
}

/// A time outside years 1–9999 (only a forged cursor has one; PostgreSQL and the clock type hold less than
/// an `i64` of microseconds) is the nearest one inside: the page then starts before everything, or is empty,
/// instead of being refused or failing in the query.
fn decode_activity_cursor(raw: &str) -> Option<ActivityCursor> {
    let bytes: [u8; 24] = hex::decode(raw).ok()?.try_into().ok()?;
    let (micros, id) = bytes.split_at(8);
    let micros = i128::from(i64::from_be_bytes(micros.try_into().ok()?));
    let earliest = time::macros::datetime!(0001-01-01 0:00 UTC).unix_timestamp_nanos();
    let latest = time::macros::datetime!(9999-12-31 23:59:59.999999 UTC).unix_timestamp_nanos();
    let nanos = (micros * 1000).clamp(earliest, latest);
    let occurred_at = OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    Some(ActivityCursor { occurred_at, event_id: uuid::Uuid::from_slice(id).ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_cursors_round_trip_to_the_microsecond_and_reject_garbage() {
        let occurred_at = OffsetDateTime::from_unix_timestamp_nanos(1_790_000_000_123_456_000).expect("time");
        let entry = Activity {
            event_id: uuid::Uuid::now_v7(),
            kind: "user_updated".into(),
            occurred_at,
            details: serde_json::json!({}),
        };
        let cursor = decode_activity_cursor(&encode_activity_cursor(&entry)).expect("decodes");
        assert_eq!(cursor, ActivityCursor { occurred_at, event_id: entry.event_id });
        assert_eq!(decode_activity_cursor(&encode_cursor(entry.event_id)), None, "a users cursor is not one");
        assert_eq!(decode_activity_cursor("zz"), None);
        let pattern = regex::Regex::new(ACTIVITY_CURSOR_PATTERN).expect("pattern");
        assert!(pattern.is_match(&encode_activity_cursor(&entry)));
        for forged in ["7fffffffffffffff", "8000000000000000"] {
            assert!(decode_activity_cursor(&format!("{forged}{}", "0".repeat(32))).is_some(), "any match is a cursor");
        }
    }

    #[test]
    fn a_page_has_a_cursor_only_when_more_entries_follow() {
        let full = page(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!((full.items, full.next_cursor), (vec![1, 2], Some("2".to_string())));
        let last = page(vec![1, 2], 2, |n| n.to_string());
        assert_eq!((last.items, last.next_cursor), (vec![1, 2], None));
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let id = uuid::Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(id)), Some(id));
        assert_eq!(decode_cursor("zz"), None);
        assert_eq!(decode_cursor("abcd"), None);
        assert!(regex::Regex::new(USERS_CURSOR_PATTERN).expect("pattern").is_match(&encode_cursor(id)));
        assert!(decode_cursor(&"F".repeat(32)).is_some(), "any match is a cursor");
    }

    #[test]
    fn every_bad_field_is_reported() {
        let mut errors = Vec::new();
        let name: Option<Name> = field(&mut errors, "name", None, Name::try_from);
        let email = field(&mut errors, "email", Some("nope".into()), Email::try_from);
        assert!(name.is_none() && email.is_none());
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "email"]);
    }
}
