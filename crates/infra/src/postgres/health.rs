//! PostgreSQL health: a `SELECT 1` through the pool (and so through the circuit breaker).

use async_trait::async_trait;
use serde_json::json;

use super::client::PostgresClient;
use super::statement::sql;
use crate::health::{CheckFailure, Details, HealthCheck};

/// Checks that a pooled connection can run a query; details show the pool and the breaker.
#[derive(Debug)]
pub struct PostgresHealth {
    client: PostgresClient,
}

impl PostgresHealth {
    /// A check over `client`'s pool.
    pub fn new(client: PostgresClient) -> Self {
        PostgresHealth { client }
    }
}

#[async_trait]
impl HealthCheck for PostgresHealth {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn check(&self) -> Result<Details, CheckFailure> {
        let (one,): (i32,) = self
            .client
            .query_one(sql("SELECT 1"))
            .await
            .map_err(|err| CheckFailure::new(format!("{}: {err}", self.client.address())))?;
        if one != 1 {
            return Err(CheckFailure::new(format!("SELECT 1 returned {one}")));
        }
        let pool = self.client.pool_stats();
        let mut details = Details::new();
        details.insert("address".into(), json!(self.client.address()));
        details.insert("pool_size".into(), json!(pool.size));
        details.insert("pool_idle".into(), json!(pool.idle));
        details.insert("pool_max".into(), json!(pool.max_size));
        details.insert("breaker".into(), json!(self.client.breaker().state()));
        Ok(details)
    }
}
