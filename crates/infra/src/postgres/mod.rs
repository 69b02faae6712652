//! PostgreSQL: configuration, a pool honouring every setting, traced statements and transactions, retries of
//! serialization conflicts, a circuit breaker for outages, migrations, metrics and a health check.

mod client;
mod config;
mod error;
mod health;
mod isolation;
pub mod metrics;
mod query;
mod statement;
mod transaction;

pub use client::{PostgresClient, RetryPolicy};
pub use config::{DEFAULT_DSN, PostgresConfig};
pub use error::{DEADLOCK_DETECTED, PostgresError, SERIALIZATION_FAILURE, UNIQUE_VIOLATION};
pub use health::PostgresHealth;
pub use isolation::Isolation;
pub use statement::{Row, Statement, operation_of, sql};
pub use transaction::Transaction;
