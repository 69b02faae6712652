//! Redis: configuration, connection pool and health check.

mod client;
mod config;
mod health;

pub use client::{RedisClient, RedisConnector, RedisError};
pub use config::RedisConfig;
pub use health::RedisHealth;
