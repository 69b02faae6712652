//! Redis: configuration, a pool honouring every setting, traced commands with retries and a circuit breaker,
//! cache-aside with single-flight, metrics and a health check.

mod cache;
mod client;
mod client_cache;
mod config;
mod error;
mod health;
pub mod metrics;
mod pool;
mod rate_lease;
mod rate_limit;
mod script;
mod session;

pub use cache::Cache;
pub use client::RedisClient;
pub use client_cache::{ClientCache, FillTicket};
pub use config::{ClientCacheConfig, RedisConfig, RedisMode};
pub use error::RedisError;
pub use health::RedisHealth;
pub use rate_lease::{DEFAULT_CAPACITY, LeasePolicy, LeasedRateLimiter};
pub use rate_limit::{Decision, Grant, Limit, RateLimiter, WhenUnavailable};
pub use session::{RedisSessionStore, SessionId};
