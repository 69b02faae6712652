//! Redis health: PING through the pool (and so through the breaker).

use async_trait::async_trait;
use serde_json::json;

use super::client::RedisClient;
use crate::health::{CheckFailure, Details, HealthCheck};

/// Checks that Redis answers PING; details show the pool and the breaker.
#[derive(Debug)]
pub struct RedisHealth {
    client: RedisClient,
}

impl RedisHealth {
    /// A check over `client`.
    pub fn new(client: RedisClient) -> Self {
        RedisHealth { client }
    }
}

#[async_trait]
impl HealthCheck for RedisHealth {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn check(&self) -> Result<Details, CheckFailure> {
        self.client.ping().await.map_err(|err| CheckFailure::new(format!("{}: {err}", self.client.address())))?;
        let pool = self.client.pool_stats();
        let mut details = Details::new();
        details.insert("address".into(), json!(self.client.address()));
        details.insert("mode".into(), json!(format!("{:?}", self.client.mode()).to_lowercase()));
        details.insert("pool_connections".into(), json!(pool.size));
        details.insert("pool_idle".into(), json!(pool.idle));
        details.insert("breaker".into(), json!(self.client.breaker().state()));
        Ok(details)
    }
}
