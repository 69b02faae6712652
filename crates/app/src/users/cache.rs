//! The user cache as a decorator of the repository: the use cases read and write one [`UserRepository`], and
//! whether reads come from a cache is decided where the repository is built.

use async_trait::async_trait;

use super::{
    Activity, ActivityCursor, Email, NewUser, PasswordHash, Role, StoredChanges, User, UserCache, UserError, UserId,
    UserRepository,
};

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

    /// Drops the cached copy of the user, for writes made behind the repository's back.
    pub async fn invalidate(&self, id: UserId) {
        self.cache.invalidate(id).await;
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
