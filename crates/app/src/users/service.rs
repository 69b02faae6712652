//! The use cases: what the API can do with users, written against the ports only.

use std::sync::Arc;

use super::{
    Email, FieldError, HashingLimits, Name, NewUser, Page, Password, PasswordHasher, SessionStore, SessionToken,
    StoredChanges, User, UserCache, UserError, UserId, UserRepository,
};

/// The most users one page may hold.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Users per page when the client does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// The most audit-trail entries returned at once.
pub const MAX_ACTIVITY: u32 = 1000;

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
}

/// The users use cases over their ports. Cheap to clone.
#[derive(Clone)]
pub struct Users {
    repository: Arc<dyn UserRepository>,
    cache: Arc<dyn UserCache>,
    sessions: Arc<dyn SessionStore>,
    hasher: PasswordHasher,
}

impl Users {
    /// Users stored in `repository`, read through `cache`, signed in through `sessions`.
    pub fn new(
        repository: Arc<dyn UserRepository>,
        cache: Arc<dyn UserCache>,
        sessions: Arc<dyn SessionStore>,
    ) -> Self {
        Users { repository, cache, sessions, hasher: PasswordHasher::new(HashingLimits::from_cpu_count()) }
    }

    /// Bounds password hashing by `limits` instead of the CPU count's default.
    pub fn with_hashing_limits(mut self, limits: HashingLimits) -> Self {
        self.hasher = PasswordHasher::new(limits);
        self
    }

    /// Registers a user; the email must not be in use (ignoring case).
    pub async fn register(&self, input: Credentials) -> Result<User, UserError> {
        let (name, email, password) = parse_registration(input).map_err(UserError::Invalid)?;
        let password_hash = self.hasher.hash(&password).await?;
        let user = self.repository.create(&NewUser { id: uuid::Uuid::now_v7(), name, email, password_hash }).await?;
        // A failed GET before the registration may have cached nothing, but a deleted user's id is never
        // reused, so there is nothing to invalidate here.
        Ok(user)
    }

    /// The user, from the cache when it holds it.
    pub async fn get(&self, id: UserId) -> Result<User, UserError> {
        let repository = self.repository.clone();
        let load = Box::pin(async move { repository.find(id).await?.ok_or(UserError::NotFound) });
        self.cache.get_or_load(id, load).await
    }

    /// Changes the given fields; at least one must be given.
    pub async fn update(&self, id: UserId, input: UserChanges) -> Result<User, UserError> {
        let mut errors = Vec::new();
        let name = input.name.and_then(|raw| field(&mut errors, "name", Some(raw), Name::try_from));
        let email = input.email.and_then(|raw| field(&mut errors, "email", Some(raw), Email::try_from));
        let password = input.password.and_then(|raw| field(&mut errors, "password", Some(raw), Password::parse));
        if !errors.is_empty() {
            return Err(UserError::Invalid(errors));
        }
        if name.is_none() && email.is_none() && password.is_none() {
            return Err(UserError::Invalid(vec![FieldError::new(
                "body",
                "give at least one of name, email, password",
            )]));
        }
        let password_hash = match password {
            // Hashing is the expensive part: a change for a user that does not exist costs no hash.
            Some(password) => {
                self.repository.find(id).await?.ok_or(UserError::NotFound)?;
                Some(self.hasher.hash(&password).await?)
            }
            None => None,
        };
        let changes = StoredChanges { name, email, password_hash };
        let updated = self.repository.update(id, &changes).await?;
        self.cache.invalidate(id).await;
        updated.ok_or(UserError::NotFound)
    }

    /// Deletes the user.
    pub async fn delete(&self, id: UserId) -> Result<(), UserError> {
        let deleted = self.repository.delete(id).await?;
        self.cache.invalidate(id).await;
        if deleted { Ok(()) } else { Err(UserError::NotFound) }
    }

    /// A page of users after `cursor` (the previous page's `next_cursor`).
    pub async fn list(&self, limit: Option<u32>, cursor: Option<&str>) -> Result<Page, UserError> {
        let mut errors = Vec::new();
        let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            errors.push(FieldError::new("limit", format!("must be from 1 to {MAX_PAGE_SIZE}")));
        }
        let after = cursor.and_then(|raw| match decode_cursor(raw) {
            Some(id) => Some(id),
            None => {
                errors.push(FieldError::new("cursor", "is not a cursor this API returned"));
                None
            }
        });
        if !errors.is_empty() {
            return Err(UserError::Invalid(errors));
        }
        // One more than asked tells whether another page follows without a COUNT.
        let mut items = self.repository.list(after, limit + 1).await?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|user| encode_cursor(user.id))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// The user's audit trail; [`UserError::NotFound`] when neither the user nor any trail exists.
    pub async fn activity(&self, id: UserId) -> Result<Vec<super::Activity>, UserError> {
        let entries = self.repository.activity(id, MAX_ACTIVITY).await?;
        // A deleted user keeps its trail; an id never seen has neither.
        if entries.is_empty() && self.repository.find(id).await?.is_none() {
            return Err(UserError::NotFound);
        }
        Ok(entries)
    }

    /// Checks email and password and starts a session. Unknown email and wrong password are the same error
    /// and take the same time.
    pub async fn login(&self, input: Credentials) -> Result<(User, SessionToken), UserError> {
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
        let token = self.sessions.create(user.id).await?;
        Ok((user, token))
    }

    /// The signed-in user of `token`. A session whose user was deleted is ended.
    pub async fn me(&self, token: Option<&SessionToken>) -> Result<User, UserError> {
        let token = token.ok_or(UserError::Unauthenticated)?;
        let id = self.sessions.user_of(token).await?.ok_or(UserError::Unauthenticated)?;
        match self.get(id).await {
            Err(UserError::NotFound) => {
                self.sessions.end(token).await?;
                Err(UserError::Unauthenticated)
            }
            other => other,
        }
    }

    /// Ends the session of `token`, if any.
    pub async fn logout(&self, token: Option<&SessionToken>) -> Result<(), UserError> {
        match token {
            Some(token) => self.sessions.end(token).await,
            None => Ok(()),
        }
    }
}

/// The registration's name, email and password, or every field's problem.
pub fn parse_registration(input: Credentials) -> Result<(Name, Email, Password), Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = field(&mut errors, "name", input.name, Name::try_from);
    let email = field(&mut errors, "email", input.email, Email::try_from);
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

/// Cursors are opaque to clients: the last id of the page, hex-encoded so nobody mistakes it for an id to
/// build URLs with.
fn encode_cursor(id: UserId) -> String {
    hex::encode(id.as_bytes())
}

fn decode_cursor(raw: &str) -> Option<UserId> {
    let bytes: [u8; 16] = hex::decode(raw).ok()?.try_into().ok()?;
    Some(UserId::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let id = uuid::Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(id)), Some(id));
        assert_eq!(decode_cursor("zz"), None);
        assert_eq!(decode_cursor("abcd"), None);
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
