//! PostgreSQL health: a `SELECT 1` through the pool.

use async_trait::async_trait;
use serde_json::json;

use super::PostgresClient;
use crate::health::{CheckFailure, Details, HealthCheck};

/// Checks that a pooled connection can run a query.
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
        let pool = self.client.pool();
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(pool)
            .await
            .map_err(|err| CheckFailure::new(format!("{}: {err}", self.client.target())))?;
        if one != 1 {
            return Err(CheckFailure::new(format!("SELECT 1 returned {one}")));
        }
        let mut details = Details::new();
        details.insert("target".into(), json!(self.client.target()));
        details.insert("pool_size".into(), json!(pool.size()));
        details.insert("pool_idle".into(), json!(pool.num_idle()));
        details.insert("pool_max".into(), json!(pool.options().get_max_connections()));
        Ok(details)
    }
}
