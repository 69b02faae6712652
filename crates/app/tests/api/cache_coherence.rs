//! A `GET /users/{id}` racing a PATCH or DELETE must not put the old user back into Redis. The race is forced:
//! the reader is a second instance of the read path (`Users` over the cached repository, sharing the service's
//! PostgreSQL and Redis) whose repository pauses after reading the row; the write goes through the service's API.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::users::postgres::PostgresUsers;
use app::users::redis::{RedisSessions, RedisUserCache, cache_key};
use app::users::{
    Activity, ActivityCursor, CachedUserRepository, Email, NewUser, PasswordHash, Role, StoredChanges, User, UserError,
    UserId, UserRepository, Users,
};
use async_trait::async_trait;
use infra::config::Sources;
use infra::postgres::PostgresClient;
use infra::redis::RedisClient;
use infra::settings::Config;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::helpers::{Account, TestApp, spawn_app};

/// The real repository's `find`, except that the first call stops after reading the row, says so, and returns it
/// only when told to: a read paused between PostgreSQL and its cache fill. The reader only reads, so nothing else
/// of the port is implemented.
struct PausedFind {
    repository: PostgresUsers,
    pause: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

#[async_trait]
impl UserRepository for PausedFind {
    async fn create(&self, _: &NewUser) -> Result<User, UserError> {
        unimplemented!("writes go through the service under test")
    }

    async fn find(&self, id: UserId) -> Result<Option<User>, UserError> {
        let row = self.repository.find(id).await?;
        let pause = self.pause.lock().expect("lock").take();
        if let Some((loaded, resume)) = pause {
            loaded.send(()).expect("the test waits for the read");
            resume.await.expect("the test resumes the read");
        }
        Ok(row)
    }

    async fn find_credentials(&self, _: &Email) -> Result<Option<(User, PasswordHash)>, UserError> {
        unimplemented!("the paused reader only reads users by id")
    }

    async fn password_hash(&self, _: UserId) -> Result<Option<PasswordHash>, UserError> {
        unimplemented!("the paused reader only reads users by id")
    }

    async fn set_role(&self, _: &Email, _: Role) -> Result<Option<User>, UserError> {
        unimplemented!("the paused reader only reads users by id")
    }

    async fn update(&self, _: UserId, _: &StoredChanges) -> Result<Option<User>, UserError> {
        unimplemented!("writes go through the service under test")
    }

    async fn delete(&self, _: UserId) -> Result<bool, UserError> {
        unimplemented!("writes go through the service under test")
    }

    async fn list(&self, _: Option<UserId>, _: u32) -> Result<Vec<User>, UserError> {
        unimplemented!("the paused reader only reads users by id")
    }

    async fn activity(&self, _: UserId, _: Option<ActivityCursor>, _: u32) -> Result<Vec<Activity>, UserError> {
        unimplemented!("the paused reader only reads users by id")
    }
}

fn redis() -> RedisClient {
    let config = Config::from_sources(&Sources::from_env_pairs(&[("REDIS_ADDR", "127.0.0.1:6379")])).expect("config");
    RedisClient::connect_lazy(&config.redis).expect("Redis client")
}

/// Starts `GET` of `id` on a second instance of the read path; returns once it has read PostgreSQL, with the
/// sender that lets it go on to fill the cache and the task answering what it read.
async fn paused_read(app: &TestApp, id: UserId) -> (oneshot::Sender<()>, tokio::task::JoinHandle<User>) {
    let (loaded_tx, loaded) = oneshot::channel();
    let (resume, resume_rx) = oneshot::channel();
    let postgres = PostgresClient::connect_lazy(&app.postgres).expect("PostgreSQL client");
    let repository =
        PausedFind { repository: PostgresUsers::new(postgres), pause: Mutex::new(Some((loaded_tx, resume_rx))) };
    let cached = CachedUserRepository::new(repository, RedisUserCache::new(redis(), Duration::from_secs(60)));
    let sessions = RedisSessions::new(redis(), Duration::from_secs(60), Duration::from_secs(60));
    let users = Users::new(Arc::new(cached), Arc::new(sessions));
    let reader = tokio::spawn(async move { users.get(id).await.expect("the user, as read before the write") });
    loaded.await.expect("the reader read PostgreSQL");
    (resume, reader)
}

async fn cached_name(id: UserId) -> Option<String> {
    let cached: Option<Value> = redis().get_json(&cache_key(id)).await.expect("GET");
    cached.map(|user| user["name"].as_str().expect("name").to_string())
}

async fn get(app: &TestApp, caller: &Account, id: UserId) -> (u16, Value) {
    let response = app.request_as(Some(caller), Method::GET, &format!("/users/{id}")).send().await.expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn id_of(account: &Account) -> UserId {
    account.id.parse().expect("uuid")
}

#[tokio::test]
async fn a_read_racing_a_patch_does_not_put_the_old_name_back_into_redis() {
    let app = spawn_app(&[]).await;
    let owner = app.sign_up("Before").await;
    let id = id_of(&owner);

    let (resume, reader) = paused_read(&app, id).await;
    let patch = app.request_as(Some(&owner), Method::PATCH, &format!("/users/{id}"));
    let patched = patch.json(&json!({"name": "After"})).send().await.expect("sent");
    assert_eq!(patched.status(), 200);
    resume.send(()).expect("reader waiting");
    assert_eq!(reader.await.expect("reader").name.as_str(), "Before", "the racing read answers what it read");

    assert_eq!(cached_name(id).await, None, "the racing read's fill was refused");
    assert_eq!(get(&app, &owner, id).await.1["name"], "After", "the next GET shows the new name");
    assert_eq!(cached_name(id).await.as_deref(), Some("After"), "and caches it");
    assert_eq!(get(&app, &owner, id).await.1["name"], "After", "also when served from Redis");
}

#[tokio::test]
async fn a_read_racing_a_delete_does_not_resurrect_the_user() {
    let app = spawn_app(&[]).await;
    let admin = app.sign_up_admin().await;
    let owner = app.sign_up("Doomed").await;
    let id = id_of(&owner);

    let (resume, reader) = paused_read(&app, id).await;
    let deleted = app.request_as(Some(&owner), Method::DELETE, &format!("/users/{id}")).send().await.expect("sent");
    assert_eq!(deleted.status(), 204);
    resume.send(()).expect("reader waiting");
    assert_eq!(reader.await.expect("reader").id, id, "the racing read found the user before the delete");

    assert_eq!(cached_name(id).await, None, "the deleted user was not stored back");
    for attempt in ["first", "second"] {
        let (status, body) = get(&app, &admin, id).await;
        assert_eq!(status, 404, "{attempt} GET after the delete: {body}");
    }
}
