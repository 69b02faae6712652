//! `Cache` against the shared Redis when a load races a write: the interleaving is forced with channels inside
//! the loader, so each test sees the race every time. The loader's "database" is a value in the test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use infra::config::Sources;
use infra::redis::{Cache, RedisClient};
use infra::settings::Config;
use test_support::fakes::RedisServer;
use test_support::unique;
use tokio::sync::oneshot;

const TTL: Duration = Duration::from_secs(60);

fn client(addr: &str) -> RedisClient {
    let config = Config::from_sources(&Sources::from_env_pairs(&[("REDIS_ADDR", addr)])).expect("valid configuration");
    RedisClient::connect_lazy(&config.redis).expect("client")
}

/// The row the loader reads: what PostgreSQL is in the service.
#[derive(Clone)]
struct Database(Arc<Mutex<String>>);

impl Database {
    fn new(value: &str) -> Self {
        Database(Arc::new(Mutex::new(value.to_string())))
    }

    fn read(&self) -> String {
        self.0.lock().expect("lock").clone()
    }

    fn write(&self, value: &str) {
        *self.0.lock().expect("lock") = value.to_string();
    }
}

/// Starts a lookup of `key` whose loader reads `db`, says so on the first channel, and returns what it read
/// only once the second channel fires: a reader paused between its database read and its fill.
fn paused_reader(
    cache: &Cache,
    key: &str,
    db: &Database,
) -> (oneshot::Receiver<()>, oneshot::Sender<()>, tokio::task::JoinHandle<String>) {
    let (loaded_tx, loaded) = oneshot::channel();
    let (resume, resume_rx) = oneshot::channel::<()>();
    let (cache, key, db) = (cache.clone(), key.to_string(), db.clone());
    let reader = tokio::spawn(async move {
        let load = || async move {
            let row = db.read();
            loaded_tx.send(()).expect("the test waits for the load");
            resume_rx.await.expect("the test resumes the reader");
            Ok::<_, std::io::Error>(row)
        };
        cache.get_or_load(&key, TTL, load).await.expect("loaded")
    });
    (loaded, resume, reader)
}

async fn read_through(cache: &Cache, key: &str, db: &Database) -> String {
    let db = db.clone();
    cache.get_or_load(key, TTL, || async move { Ok::<_, std::io::Error>(db.read()) }).await.expect("loaded")
}

async fn cached(redis: &RedisClient, key: &str) -> Option<String> {
    redis.get_json::<String>(key).await.expect("GET")
}

/// A read of `key` that loaded "old" and is paused before its fill, while "new" was written and `key`
/// invalidated: the race, forced.
struct Race {
    redis: RedisClient,
    cache: Cache,
    key: String,
    db: Database,
    resume: oneshot::Sender<()>,
    stale_read: tokio::task::JoinHandle<String>,
}

async fn a_read_overtaken_by_a_write(name: &str) -> Race {
    let redis = client("127.0.0.1:6379");
    let cache = Cache::new(redis.clone());
    let key = format!("coherence:{{{}}}", unique(name));
    let db = Database::new("old");
    let (loaded, resume, stale_read) = paused_reader(&cache, &key, &db);
    loaded.await.expect("the reader read the old row");
    db.write("new");
    cache.invalidate(&key).await.expect("invalidated after the write");
    Race { redis, cache, key, db, resume, stale_read }
}

#[tokio::test]
async fn a_load_that_read_before_a_write_does_not_store_its_value_after_the_invalidation() {
    let race = a_read_overtaken_by_a_write("race").await;
    race.resume.send(()).expect("reader waiting");
    assert_eq!(race.stale_read.await.expect("reader"), "old", "the racing read answers what it read");

    assert_eq!(cached(&race.redis, &race.key).await, None, "its fill was refused: Redis does not hold the old value");
    assert_eq!(read_through(&race.cache, &race.key, &race.db).await, "new", "the next read loads the new value");
    assert_eq!(cached(&race.redis, &race.key).await.as_deref(), Some("new"), "and stores it: filling still works");
    race.cache.invalidate(&race.key).await.expect("cleanup");
}

#[tokio::test]
async fn a_miss_after_an_invalidation_loads_afresh_instead_of_joining_the_load_that_began_before() {
    let race = a_read_overtaken_by_a_write("join").await;
    // Same process, same key, the first load still in flight: a reader that started after the write must not
    // wait for it and take its old value.
    let fresh = tokio::time::timeout(Duration::from_secs(10), read_through(&race.cache, &race.key, &race.db))
        .await
        .expect("did not wait for the paused load");
    assert_eq!(fresh, "new");

    race.resume.send(()).expect("reader waiting");
    assert_eq!(race.stale_read.await.expect("reader"), "old");
    let cached = cached(&race.redis, &race.key).await;
    assert_eq!(cached.as_deref(), Some("new"), "the late fill of the old value was refused");
    race.cache.invalidate(&race.key).await.expect("cleanup");
}

#[tokio::test]
async fn an_invalidation_deletes_the_entry_and_the_next_read_refills_it() {
    let redis = client("127.0.0.1:6379");
    let cache = Cache::new(redis.clone());
    let key = format!("coherence:{{{}}}", unique("plain"));
    let db = Database::new("first");
    assert_eq!(read_through(&cache, &key, &db).await, "first");
    db.write("second");
    assert_eq!(read_through(&cache, &key, &db).await, "first", "a hit until the write invalidates");
    cache.invalidate(&key).await.expect("invalidate");
    assert_eq!(cached(&redis, &key).await, None);
    assert_eq!(read_through(&cache, &key, &db).await, "second");
    assert_eq!(cached(&redis, &key).await.as_deref(), Some("second"));
    cache.invalidate(&key).await.expect("cleanup");
}

#[tokio::test]
async fn scripts_the_server_does_not_know_are_sent_whole() {
    // A fresh server knows no script: the first fill goes by EVALSHA, is told NOSCRIPT, and is sent with EVAL.
    let server = RedisServer::start();
    let redis = client(&server.addr());
    let cache = Cache::new(redis.clone());
    let db = Database::new("value");
    assert_eq!(read_through(&cache, "k", &db).await, "value");
    assert_eq!(cached(&redis, "k").await.as_deref(), Some("value"), "stored on a server that lacked the scripts");

    let _: String = server.command(redis::cmd("SCRIPT").arg("FLUSH")).expect("SCRIPT FLUSH");
    cache.invalidate("k").await.expect("invalidate");
    assert_eq!(read_through(&cache, "k", &db).await, "value");
    assert_eq!(cached(&redis, "k").await.as_deref(), Some("value"), "stored again after the scripts were flushed");
}
