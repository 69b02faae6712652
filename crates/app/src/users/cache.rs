//! The user cache as a decorator of the repository: the use cases read and write one [`UserRepository`], and
//! whether reads come from a cache is decided where the repository is built.
//!
//! # Invalidation that survives a cache outage
//!
//! A write invalidates the cached copy right after its commit ([`CachedUserRepository`]). When that fails (Redis
//! down, or unreachable from the writing instance only), the old copy would be served until `USER_CACHE_TTL`.
//! So the write's event invalidates it again: the event consumer runs [`UserCacheInvalidation`] for every
//! `user_updated` and `user_deleted`, and a cache that does not answer is "unavailable" — the consumer waits and
//! retries the record until Redis answers, it never dead-letters it. The event is in the outbox in the write's
//! transaction, so the second invalidation is as durable as the write, whichever instance consumes it.
//!
//! Ordering: the event exists only once the write committed, so the consumer's invalidation comes after the
//! commit, like the writer's. The fill tickets of `infra::redis::Cache` then refuse any read that loaded the row
//! before the commit (it took its ticket before the commit, the invalidation deleted it), and a read that
//! began after the invalidation loads the new row. A redelivered or replayed event only costs one more miss.
//! What stays: after a cache outage, the old copy is served until the consumer's next retry reaches Redis (its
//! backoff, at most 30 s; seconds in practice) instead of until the TTL.
//!
//! Chosen over versioned entries: checking a version on every hit needs a source that survived the outage —
//! PostgreSQL on every read (no cache left) or a version key in Redis written by the writer (which fails in the
//! same outage). The outbox already is that source.

use std::sync::Arc;

use async_trait::async_trait;

use super::activity::{ActivityKind, user_event};
use super::{
    Activity, ActivityCursor, Email, NewUser, PasswordHash, Role, StoredChanges, User, UserCache, UserError, UserId,
    UserRepository,
};
use crate::events::{Applied, Event, EventProjection, ProjectionError};

/// The name of [`UserCacheInvalidation`] in logs and errors.
pub const INVALIDATION: &str = "user-cache";

/// `repository` with `cache` in front: [`UserRepository::find`] is cache-aside, `update`, `delete` and
/// `set_role` invalidate the cached copy once committed (a read that raced them cannot store the old copy back:
/// [`UserCache::invalidate`]). Every other operation goes straight to `repository`.
#[derive(Clone, Debug)]
pub struct CachedUserRepository<R, C> {
    repository: R,
    cache: C,
}

impl<R: UserRepository, C: UserCache> CachedUserRepository<R, C> {
    /// Reads `repository` through `cache`.
    pub fn new(repository: R, cache: C) -> Self {
        CachedUserRepository { repository, cache }
    }

    /// Drops the cached copy of the user, for writes made behind the repository's back. A failure is logged: the
    /// write's event invalidates the copy again once the cache answers ([`UserCacheInvalidation`]).
    pub async fn invalidate(&self, id: UserId) {
        if let Err(err) = self.cache.invalidate(id).await {
            tracing::warn!(user_id = %id, error = %err, "cannot invalidate the cached user now; the event consumer will");
        }
    }
}

#[async_trait]
impl<R: UserRepository, C: UserCache> UserRepository for CachedUserRepository<R, C> {
    async fn create(&self, user: &NewUser) -> Result<User, UserError> {
        // A deleted user's id is never reused, so no cached copy can exist for a new user.
        self.repository.create(user).await
    }

    async fn find(&self, id: UserId) -> Result<Option<User>, UserError> {
        self.cache.find_through(id, &self.repository).await
    }

    async fn find_credentials(&self, email: &Email) -> Result<Option<(User, PasswordHash)>, UserError> {
        self.repository.find_credentials(email).await
    }

    async fn password_hash(&self, id: UserId) -> Result<Option<PasswordHash>, UserError> {
        self.repository.password_hash(id).await
    }

    async fn set_role(&self, email: &Email, role: Role) -> Result<Option<User>, UserError> {
        let user = self.repository.set_role(email, role).await?;
        if let Some(user) = &user {
            self.invalidate(user.id).await;
        }
        Ok(user)
    }

    async fn update(&self, id: UserId, changes: &StoredChanges) -> Result<Option<User>, UserError> {
        let updated = self.repository.update(id, changes).await?;
        self.invalidate(id).await;
        Ok(updated)
    }

    async fn delete(&self, id: UserId) -> Result<bool, UserError> {
        let deleted = self.repository.delete(id).await?;
        self.invalidate(id).await;
        Ok(deleted)
    }

    async fn list(&self, after: Option<UserId>, limit: u32) -> Result<Vec<User>, UserError> {
        self.repository.list(after, limit).await
    }

    async fn activity(
        &self,
        id: UserId,
        before: Option<ActivityCursor>,
        limit: u32,
    ) -> Result<Vec<Activity>, UserError> {
        self.repository.activity(id, before, limit).await
    }
}

/// Invalidates the cached user again from each `user_updated` and `user_deleted` event, as the event consumer
/// applies it (see the module's doc): the durable half of the invalidation. Other events are ignored; a user event
/// that does not parse is poison (the audit trail's parser decides). A cache that does not answer fails the event
/// as "unavailable", so the consumer retries it until the cache is back.
pub struct UserCacheInvalidation {
    cache: Arc<dyn UserCache>,
}

impl UserCacheInvalidation {
    /// Invalidates entries of `cache`.
    pub fn new(cache: Arc<dyn UserCache>) -> Self {
        UserCacheInvalidation { cache }
    }
}

#[async_trait]
impl EventProjection for UserCacheInvalidation {
    fn name(&self) -> &'static str {
        INVALIDATION
    }

    async fn apply(&self, event: &Event) -> Result<Applied, ProjectionError> {
        match user_event(event)? {
            Some(entry) if matches!(entry.kind, ActivityKind::Updated | ActivityKind::Deleted) => {
                self.cache.invalidate(entry.user_id).await?;
                Ok(Applied::Applied)
            }
            // A new user's id was never cached (ids are not reused).
            _ => Ok(Applied::Ignored),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;
    use time::OffsetDateTime;
    use uuid::Uuid;

    use super::*;
    use crate::events::{EventKey, EventType};
    use crate::port::PortError;

    /// A cache that records invalidations, or fails them while `down`.
    #[derive(Default)]
    struct FakeCache {
        invalidated: Mutex<Vec<UserId>>,
        down: Mutex<bool>,
    }

    #[async_trait]
    impl UserCache for FakeCache {
        async fn find_through(&self, id: UserId, repository: &dyn UserRepository) -> Result<Option<User>, UserError> {
            repository.find(id).await
        }

        async fn invalidate(&self, id: UserId) -> Result<(), PortError> {
            if *self.down.lock().expect("lock") {
                return Err(PortError::unavailable("Redis is unavailable"));
            }
            self.invalidated.lock().expect("lock").push(id);
            Ok(())
        }
    }

    fn event(kind: &str, key: &str, data: serde_json::Value) -> Event {
        Event {
            id: Uuid::now_v7(),
            kind: EventType::try_from(kind.to_string()).expect("type"),
            key: EventKey::try_from(key.to_string()).expect("key"),
            data,
            occurred_at: OffsetDateTime::now_utc(),
            publisher: None,
        }
    }

    #[tokio::test]
    async fn updates_and_deletions_invalidate_the_user_and_other_events_do_not() {
        let cache = Arc::new(FakeCache::default());
        let projection = UserCacheInvalidation::new(cache.clone());
        let (renamed, deleted, created) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let update = event("user_updated", &renamed.to_string(), json!({"user_id": renamed, "changed": ["name"]}));
        assert_eq!(projection.apply(&update).await.expect("applies"), Applied::Applied);
        let delete = event("user_deleted", &deleted.to_string(), json!({"user_id": deleted}));
        assert_eq!(projection.apply(&delete).await.expect("applies"), Applied::Applied);
        let create = event("user_created", &created.to_string(), json!({"user_id": created}));
        assert_eq!(projection.apply(&create).await.expect("ignores"), Applied::Ignored);
        let other = event("order.placed", "order-1", json!({}));
        assert_eq!(projection.apply(&other).await.expect("ignores"), Applied::Ignored);
        assert_eq!(*cache.invalidated.lock().expect("lock"), [renamed, deleted]);
    }

    #[tokio::test]
    async fn a_cache_that_does_not_answer_fails_the_event_as_unavailable_and_poison_is_poison() {
        let cache = Arc::new(FakeCache::default());
        *cache.down.lock().expect("lock") = true;
        let projection = UserCacheInvalidation::new(cache.clone());
        let id = Uuid::now_v7();
        let update = event("user_updated", &id.to_string(), json!({"user_id": id, "changed": ["name"]}));
        match projection.apply(&update).await {
            Err(ProjectionError::Port(err)) => assert!(err.unavailable, "waited for, not dead-lettered: {err}"),
            other => panic!("expected an unavailable cache, got {other:?}"),
        }
        *cache.down.lock().expect("lock") = false;
        assert_eq!(projection.apply(&update).await.expect("the retry applies"), Applied::Applied);
        let poison = event("user_updated", "not-a-uuid", json!({"changed": ["name"]}));
        assert!(matches!(projection.apply(&poison).await, Err(ProjectionError::Poison(_))));
    }
}
