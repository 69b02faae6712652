//! Redis: configuration, a pool honouring every setting, traced commands with retries and a circuit breaker,
//! metrics and a health check.

mod client;
mod config;
mod error;
mod health;
pub mod metrics;

pub use client::RedisClient;
pub use config::RedisConfig;
pub use error::RedisError;
pub use health::RedisHealth;
