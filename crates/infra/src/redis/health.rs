//! Redis health: PING through the pool.

use async_trait::async_trait;
use serde_json::json;

use super::RedisClient;
use crate::health::{CheckFailure, Details, HealthCheck};

/// Checks that a pooled connection answers PING.
#[derive(Debug)]
pub struct RedisHealth {
    client: RedisClient,
}

impl RedisHealth {
    /// A check over `client`'s pool.
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
        let failure = |err: &dyn std::fmt::Display| CheckFailure::new(format!("{}: {err}", self.client.addr()));
        let mut conn = self.client.connection().await.map_err(|e| failure(&e))?;
        let pong: String = redis::cmd("PING").query_async(&mut *conn).await.map_err(|e| failure(&e))?;
        if pong != "PONG" {
            return Err(CheckFailure::new(format!("PING answered {pong:?}")));
        }
        let (connections, idle) = self.client.pool_state();
        let mut details = Details::new();
        details.insert("addr".into(), json!(self.client.addr()));
        details.insert("pool_connections".into(), json!(connections));
        details.insert("pool_idle".into(), json!(idle));
        Ok(details)
    }
}
