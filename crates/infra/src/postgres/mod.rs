//! PostgreSQL: configuration, connection pool and health check.

mod client;
mod config;
mod health;

pub use client::{PostgresClient, PostgresError};
pub use config::PostgresConfig;
pub use health::PostgresHealth;
