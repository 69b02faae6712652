//! The Redis side of users: the read cache (`user:{<id>}`, cache-aside through `infra::redis::Cache`) and login
//! sessions (`session:{sha256(id)}`, `infra::redis::RedisSessionStore`).

use std::time::Duration;

use async_trait::async_trait;
use infra::redis::{Cache, ClientCache, RedisClient, RedisError, SessionId};

use super::{SessionStore, SessionToken, User, UserCache, UserError, UserId, UserRepository};
use crate::port::PortError;

/// Users cached in Redis under `user:{<id>}` for a TTL. Writes invalidate the entry through
/// [`Cache::invalidate`], which also refuses the fill of any read that loaded the row before the write (see
/// `infra::redis::Cache`: a read racing a PATCH or DELETE cannot put the old user back); the event consumer
/// invalidates it again from the write's event, until Redis answers (`super::cache::UserCacheInvalidation`).
#[derive(Clone, Debug)]
pub struct RedisUserCache {
    cache: Cache,
    ttl: Duration,
}

impl RedisUserCache {
    /// Caches users in `redis` for `ttl`.
    pub fn new(redis: RedisClient, ttl: Duration) -> Self {
        RedisUserCache { cache: Cache::new(redis), ttl }
    }

    /// Serves hits from `client_cache` (process memory), which must track [`USER_KEY_PREFIX`].
    pub fn with_client_cache(self, client_cache: ClientCache) -> Self {
        RedisUserCache { cache: self.cache.with_client_cache(client_cache), ttl: self.ttl }
    }
}

/// The prefix of every cached user's key (and of its fill ticket), for the client cache's tracking.
pub const USER_KEY_PREFIX: &str = "user:";
/// The prefix of every session's key, for the client cache's tracking.
pub const SESSION_KEY_PREFIX: &str = "session:";

/// The cache key of a user: the id is a hash tag, so in a Redis Cluster the entry and its fill ticket
/// (`user:{<id>}:ticket`) share a slot, as the cache's scripts need.
pub fn cache_key(id: UserId) -> String {
    format!("user:{{{id}}}")
}

#[async_trait]
impl UserCache for RedisUserCache {
    async fn find_through(&self, id: UserId, repository: &dyn UserRepository) -> Result<Option<User>, UserError> {
        let key = cache_key(id);
        if let Some(user) = self.cache.get_from_memory(&key) {
            return Ok(Some(user));
        }
        // Boxed: this method's own future stays small for the hit above (see `Cache::get_from_memory`).
        Box::pin(self.load_through(key, id, repository)).await
    }

    async fn invalidate(&self, id: UserId) -> Result<(), PortError> {
        // A DEL fails only when Redis cannot serve it now (unreachable, breaker open, READONLY or LOADING during a
        // failover, CLUSTERDOWN), never because of the user: every failure is "unavailable", worth waiting for.
        self.cache
            .invalidate(&cache_key(id))
            .await
            .map_err(|err| PortError::unavailable(format!("cannot invalidate the cached user {id}: {err}")))
    }
}

impl RedisUserCache {
    /// The user from Redis, or from `repository` (then cached).
    async fn load_through(
        &self,
        key: String,
        id: UserId,
        repository: &dyn UserRepository,
    ) -> Result<Option<User>, UserError> {
        // An unknown id is an error to the cache, so that it is not stored; to the caller it is no user.
        let load = || async move { repository.find(id).await?.ok_or(UserError::NotFound) };
        match self.cache.get_or_load(&key, self.ttl, load).await {
            Ok(user) => Ok(Some(user)),
            Err(UserError::NotFound) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

/// Login sessions in Redis: a sliding TTL (`SESSION_TTL`, renewed by each use) within an absolute lifetime
/// (`SESSION_MAX_LIFETIME` from sign-in, renewals or not), indexed by user so that all of a user's sessions can
/// be ended at once.
#[derive(Clone, Debug)]
pub struct RedisSessions {
    store: infra::redis::RedisSessionStore,
    max_lifetime: Duration,
}

/// What a session holds.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct SessionData {
    /// The signed-in user.
    user: UserId,
    /// When they signed in (Unix seconds): the absolute lifetime counts from here.
    started: i64,
}

impl RedisSessions {
    /// Sessions in `redis` that expire `ttl` after their last use, and `max_lifetime` after sign-in at the latest.
    pub fn new(redis: RedisClient, ttl: Duration, max_lifetime: Duration) -> Self {
        RedisSessions { store: infra::redis::RedisSessionStore::new(redis, "session", ttl), max_lifetime }
    }

    /// Keeps sessions in `client_cache` (process memory), which must track [`SESSION_KEY_PREFIX`].
    pub fn with_client_cache(self, client_cache: ClientCache) -> Self {
        RedisSessions { store: self.store.with_client_cache(client_cache), max_lifetime: self.max_lifetime }
    }

    fn expired(&self, data: &SessionData) -> bool {
        let age = time::OffsetDateTime::now_utc().unix_timestamp().saturating_sub(data.started);
        u64::try_from(age).map_or(true, |age| age >= self.max_lifetime.as_secs())
    }
}

#[async_trait]
impl SessionStore for RedisSessions {
    async fn create(&self, user: UserId) -> Result<SessionToken, UserError> {
        let data = SessionData { user, started: time::OffsetDateTime::now_utc().unix_timestamp() };
        let id = self.store.create_for(&user.to_string(), &data, self.max_lifetime).await.map_err(session_error)?;
        Ok(SessionToken::new(id.expose().to_string()))
    }

    async fn user_of(&self, token: &SessionToken) -> Result<Option<UserId>, UserError> {
        // A token that does not even look like one never reaches Redis.
        let Some(id) = SessionId::parse(token.expose()) else {
            return Ok(None);
        };
        // A session from before the absolute lifetime existed does not parse: it is simply over.
        // Its sliding TTL is renewed as it is read (at most once per renewal interval). From memory first, Redis
        // (boxed) then: this method's own future stays small for the first (see `resume_from_memory`).
        let resumed = match self.store.resume_from_memory::<SessionData>(&id) {
            Some(data) => Ok(Some(data)),
            None => Box::pin(self.store.resume::<SessionData>(&id)).await,
        };
        let data = match resumed {
            Ok(Some(data)) => data,
            Ok(None) | Err(RedisError::Conversion(_)) => return Ok(None),
            Err(err) => return Err(session_error(err)),
        };
        if self.expired(&data) {
            Box::pin(self.store.delete(&id)).await.map_err(session_error)?;
            return Ok(None);
        }
        Ok(Some(data.user))
    }

    async fn end(&self, token: &SessionToken) -> Result<(), UserError> {
        if let Some(id) = SessionId::parse(token.expose()) {
            self.store.delete(&id).await.map_err(session_error)?;
        }
        Ok(())
    }

    async fn end_all(&self, user: UserId) -> Result<(), UserError> {
        self.store.delete_all_of(&user.to_string()).await.map_err(session_error).map(drop)
    }
}

/// Sessions live only in Redis: without it nobody can sign in, which is "unavailable", not "unauthorized".
fn session_error(err: RedisError) -> UserError {
    UserError::Unavailable(format!("session store: {err}"))
}
