//! Server-side sessions in Redis: 256-bit random ids, a TTL that slides on use, values as JSON.
//!
//! The id is the bearer secret (it goes in the cookie). It is never logged, traced or stored as-is: the Redis
//! key is the SHA-256 of the id, so neither command spans (which record keys) nor a Redis dump reveal a usable id.

use std::fmt;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::client::RedisClient;
use super::client_cache::ClientCache;
use super::error::RedisError;
use super::script::LuaScript;

/// A session and its remaining time to live, in one round trip (read-only: no invalidation is caused).
/// KEYS: the session. Returns {value or nil, PTTL in ms (-2 missing, -1 no expiry)}.
static LOAD_WITH_TTL: LazyLock<LuaScript> = LazyLock::new(|| {
    LuaScript::new("EVAL session_load", "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}")
});

/// The longest a session goes without its TTL being renewed while it is used (see [`RedisSessionStore::resume`]).
const MAX_RENEWAL_INTERVAL: Duration = Duration::from_secs(60);

/// A session kept in process memory by the client cache.
#[derive(Clone)]
struct Resumed<T> {
    data: T,
    /// When its TTL was last renewed (by any instance), as far as this process knows.
    renewed: Instant,
    /// When it expires in Redis unless renewed.
    expires: Instant,
}

/// A session id: 32 random bytes as 64 hex characters. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh id from the operating system's CSPRNG.
    fn generate() -> Result<Self, RedisError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|err| RedisError::Conversion(format!("no randomness: {err}")))?;
        Ok(SessionId(hex::encode(bytes)))
    }

    /// Parses an id received from a client (a cookie); `None` unless it has the exact shape of an id, so junk
    /// never reaches Redis.
    pub fn parse(raw: &str) -> Option<Self> {
        (raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .then(|| SessionId(raw.to_string()))
    }

    /// The id itself, for the cookie. The only way to read it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(***)")
    }
}

/// Sessions stored in Redis under `{prefix}:{sha256(id)}` with a sliding TTL.
#[derive(Clone, Debug)]
pub struct RedisSessionStore {
    redis: RedisClient,
    prefix: String,
    ttl: Duration,
    client_cache: ClientCache,
}

impl RedisSessionStore {
    /// A store whose sessions expire `ttl` after their last use.
    pub fn new(redis: RedisClient, prefix: impl Into<String>, ttl: Duration) -> Self {
        RedisSessionStore { redis, prefix: prefix.into(), ttl, client_cache: ClientCache::disabled() }
    }

    /// Keeps resumed sessions in `client_cache` (which must track this store's prefix followed by `:`).
    pub fn with_client_cache(mut self, client_cache: ClientCache) -> Self {
        self.client_cache = client_cache;
        self
    }

    /// How long a used session may go without a renewal of its TTL: a tenth of the TTL, at most a minute. So a
    /// session expires between `ttl - renewal interval` and `ttl` after its last use, and a busy session costs
    /// one PEXPIRE per interval instead of one per request.
    pub fn renewal_interval(&self) -> Duration {
        (self.ttl / 10).min(MAX_RENEWAL_INTERVAL)
    }

    /// The session's data, its sliding TTL renewed when due; `None` when it does not exist or expired. With a
    /// client cache, a session used again is answered from memory (a logout anywhere deletes the key, and
    /// Redis' invalidation drops it here), and its TTL is renewed once per [`Self::renewal_interval`].
    pub async fn resume<T>(&self, id: &SessionId) -> Result<Option<T>, RedisError>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        if let Some(data) = self.resume_from_memory(id) {
            return Ok(Some(data));
        }
        let key = self.key(id);
        let now = Instant::now();
        if let Some(resumed) = self.client_cache.get::<Resumed<T>>(&key).filter(|resumed| now < resumed.expires) {
            if now.duration_since(resumed.renewed) >= self.renewal_interval() {
                self.renew(&key).await?;
            }
            return Ok(Some(resumed.data));
        }
        let ticket = self.client_cache.ticket();
        let (value, ttl_ms): (Option<Vec<u8>>, i64) =
            self.redis.eval(&LOAD_WITH_TTL, &[&key], &Vec::<String>::new()).await?;
        let Some(bytes) = value else { return Ok(None) };
        let data: T = serde_json::from_slice(&bytes).map_err(|err| RedisError::Conversion(err.to_string()))?;
        let left = u64::try_from(ttl_ms).map_or(self.ttl, Duration::from_millis);
        let renewed = now.checked_sub(self.ttl.saturating_sub(left)).unwrap_or(now);
        if now.duration_since(renewed) >= self.renewal_interval() {
            // Renewed now: the renewal invalidates the key, so it is not kept (the next use reads it again).
            return Ok(self.renew(&key).await?.then_some(data));
        }
        self.client_cache.fill(ticket, &key, Resumed { data: data.clone(), renewed, expires: now + left });
        Ok(Some(data))
    }

    /// The session's data when the client cache holds it and its TTL needs no renewal yet: the answer
    /// [`Self::resume`] gives without Redis, without its `async` machinery. A caller on a hot path tries this
    /// first and awaits `resume` (boxed) only when it answers `None`: `resume`'s future is large (it holds the
    /// Redis calls'), and every `async` layer that awaits it copies all of it — a cost measured on each request.
    pub fn resume_from_memory<T>(&self, id: &SessionId) -> Option<T>
    where
        T: Clone + Send + Sync + 'static,
    {
        let now = Instant::now();
        let resumed = self.client_cache.get::<Resumed<T>>(&self.key(id)).filter(|resumed| now < resumed.expires)?;
        (now.duration_since(resumed.renewed) < self.renewal_interval()).then_some(resumed.data)
    }

    /// Restarts the TTL of `key`; `false` when it no longer exists.
    async fn renew(&self, key: &str) -> Result<bool, RedisError> {
        self.client_cache.forget(key);
        self.redis.expire(key, self.ttl).await
    }

    /// Creates a session holding `data`; returns its new id.
    pub async fn create<T: Serialize>(&self, data: &T) -> Result<SessionId, RedisError> {
        let id = SessionId::generate()?;
        self.redis.set_json(&self.key(&id), data, self.ttl).await?;
        Ok(id)
    }

    /// Creates a session holding `data` for `owner` (a user id, say), recorded in the owner's index so that
    /// [`RedisSessionStore::delete_all_of`] can end every session of theirs (password changed, account deleted, "sign
    /// out everywhere"). `max_lifetime` is the absolute lifetime the caller enforces on its sessions: the index
    /// (a sorted set scored by creation time) forgets sessions older than that at every creation, so an owner who
    /// signs in every day does not grow it forever; it holds at most the sessions of the last `max_lifetime`.
    pub async fn create_for<T: Serialize>(
        &self,
        owner: &str,
        data: &T,
        max_lifetime: Duration,
    ) -> Result<SessionId, RedisError> {
        let id = SessionId::generate()?;
        let digest = digest(&id);
        let index = self.index_key(owner);
        let now_ms = unix_millis();
        let lifetime_ms = i64::try_from(max_lifetime.as_millis()).unwrap_or(i64::MAX);
        // Indexed first: a session that exists is always findable by its owner.
        self.redis.zadd(&index, now_ms, &digest).await?;
        self.redis.zremrangebyscore_upto(&index, now_ms.saturating_sub(lifetime_ms)).await?;
        self.redis.expire(&index, max_lifetime.max(self.ttl)).await?;
        self.redis.set_json(&self.key_of_digest(&digest), data, self.ttl).await?;
        Ok(id)
    }

    /// Ends every session created for `owner` with [`RedisSessionStore::create_for`]; the number ended.
    pub async fn delete_all_of(&self, owner: &str) -> Result<u64, RedisError> {
        let index = self.index_key(owner);
        let mut ended = 0;
        // One key per command: the sessions may live on different nodes of a Redis Cluster.
        for digest in self.redis.zrange_all(&index).await? {
            let key = self.key_of_digest(&digest);
            self.client_cache.forget(&key);
            ended += self.redis.del(&[&key]).await?;
            self.client_cache.forget(&key);
        }
        self.redis.del(&[&index]).await?;
        Ok(ended)
    }

    /// The session's data, or `None` when it does not exist or expired.
    pub async fn load<T: DeserializeOwned>(&self, id: &SessionId) -> Result<Option<T>, RedisError> {
        self.redis.get_json(&self.key(id)).await
    }

    /// Restarts the session's TTL (sliding expiry); `false` when it no longer exists.
    pub async fn touch(&self, id: &SessionId) -> Result<bool, RedisError> {
        self.redis.expire(&self.key(id), self.ttl).await
    }

    /// Ends the session; `false` when it did not exist.
    pub async fn delete(&self, id: &SessionId) -> Result<bool, RedisError> {
        let key = self.key(id);
        self.client_cache.forget(&key);
        let deleted = self.redis.del(&[&key]).await? > 0;
        self.client_cache.forget(&key);
        Ok(deleted)
    }

    /// `prefix:digest` built in one allocation: every signed-in request derives it.
    fn key(&self, id: &SessionId) -> String {
        let mut hex_digest = [0_u8; 64];
        let digest = Sha256::digest(id.0.as_bytes());
        let mut key = String::with_capacity(self.prefix.len() + 1 + hex_digest.len());
        key.push_str(&self.prefix);
        key.push(':');
        if hex::encode_to_slice(digest, &mut hex_digest).is_ok() {
            key.extend(hex_digest.iter().map(|&byte| char::from(byte)));
        }
        key
    }

    fn key_of_digest(&self, digest: &str) -> String {
        format!("{}:{digest}", self.prefix)
    }

    /// The owner's index holds digests of ids, never ids: a dump of it gives nobody a usable session.
    fn index_key(&self, owner: &str) -> String {
        format!("{}-of:{owner}", self.prefix)
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_millis() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// The SHA-256 of the id, hex-encoded: what Redis keys and indexes hold instead of the id.
fn digest(id: &SessionId) -> String {
    hex::encode(Sha256::digest(id.0.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_256_bit_hex_and_never_printed() {
        let id = SessionId::generate().expect("randomness");
        assert_eq!(id.expose().len(), 64);
        assert_ne!(id, SessionId::generate().expect("randomness"));
        assert_eq!(format!("{id:?}"), "SessionId(***)");
        assert_eq!(SessionId::parse(id.expose()), Some(id));
        for junk in ["", "abc", &"g".repeat(64), &"A".repeat(64)] {
            assert_eq!(SessionId::parse(junk), None, "{junk}");
        }
    }
}
